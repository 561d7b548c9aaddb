//! The sandbox: synthetic workspaces (`workspace`) and executors for the default tool set
//! (`tools` for Read/Write/Edit/Grep/Glob, `bash` for the Bash allowlist and the emulated test
//! runner). Everything runs in memory against the workspace's files: nothing can read or write
//! outside it, and the same calls on the same seed always give the same results. Bootstrap uses
//! it to produce true traces; RL rewards and evaluation replay model calls against it.

mod bash;
mod tools;
pub mod workspace;

pub use workspace::Workspace;

/// What a tool call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: String,
    /// The call failed (missing file, refused command, bad arguments...).
    pub is_error: bool,
}

impl ToolOutput {
    pub fn ok(content: impl Into<String>) -> ToolOutput {
        ToolOutput { content: content.into(), is_error: false }
    }

    pub fn error(content: impl Into<String>) -> ToolOutput {
        ToolOutput { content: content.into(), is_error: true }
    }
}

impl Workspace {
    /// Run one tool call. Unknown tools and malformed arguments are errors, not panics.
    pub fn execute(&mut self, name: &str, arguments: &serde_json::Value) -> ToolOutput {
        match name {
            "Read" => self.read(arguments),
            "Write" => self.write(arguments),
            "Edit" => self.edit(arguments),
            "Grep" => self.grep(arguments),
            "Glob" => self.glob(arguments),
            "Bash" => self.bash(arguments),
            other => {
                ToolOutput::error(format!("Unknown tool {other:?}; available: Read, Write, Edit, Grep, Glob, Bash"))
            }
        }
    }

    /// Run the workspace's test suite (as `python -m pytest` would) and say whether it passed.
    pub fn tests_pass(&self) -> bool {
        bash::run_tests(self, &[]).1
    }

    /// Map a user-supplied path to a workspace-relative one; `None` when it leaves the workspace.
    pub fn resolve(&self, raw: &str) -> Option<String> {
        let raw = raw.trim();
        let relative = if let Some(rest) = raw.strip_prefix(&self.root) {
            rest.trim_start_matches('/')
        } else if raw.starts_with('/') || raw.starts_with('~') {
            return None;
        } else {
            raw
        };
        let mut parts: Vec<&str> = Vec::new();
        for part in relative.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop()?;
                }
                other => parts.push(other),
            }
        }
        Some(parts.join("/"))
    }

    pub fn is_dir(&self, relative: &str) -> bool {
        relative.is_empty()
            || self.files.keys().any(|p| p.starts_with(relative) && p[relative.len()..].starts_with('/'))
    }

    /// Files under a directory (or the file itself), in path order.
    pub fn files_under(&self, relative: &str) -> Vec<String> {
        if self.files.contains_key(relative) {
            return vec![relative.to_string()];
        }
        self.files
            .keys()
            .filter(|p| relative.is_empty() || (p.starts_with(relative) && p[relative.len()..].starts_with('/')))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_workspace() {
        let w = Workspace::generate(1);
        assert_eq!(w.resolve("src/../README.md").as_deref(), Some("README.md"));
        assert_eq!(w.resolve(&format!("{}/README.md", w.root)).as_deref(), Some("README.md"));
        assert_eq!(w.resolve("../../etc/passwd"), None);
        assert_eq!(w.resolve("/etc/passwd"), None);
        assert_eq!(w.resolve("~/.ssh/id_rsa"), None);
    }
}
