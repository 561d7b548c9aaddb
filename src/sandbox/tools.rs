//! Read, Write, Edit, Grep and Glob against a workspace's files, with Claude Code's output
//! shapes and failure messages (numbered lines from Read, Edit refusing a missing or ambiguous
//! old_string, ripgrep-style Grep with the three output modes).

use globset::GlobBuilder;
use regex::RegexBuilder;
use serde_json::Value;

use super::{ToolOutput, Workspace};

const MAX_GREP_LINES: usize = 200;
const DEFAULT_READ_LIMIT: usize = 2000;

fn string_arg<'a>(args: &'a Value, key: &str) -> Result<&'a str, ToolOutput> {
    match args.get(key) {
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(ToolOutput::error(format!("InputValidationError: {key} must be a string"))),
        None => Err(ToolOutput::error(format!("InputValidationError: the required parameter `{key}` is missing"))),
    }
}

fn optional_string<'a>(args: &'a Value, key: &str) -> Result<Option<&'a str>, ToolOutput> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(ToolOutput::error(format!("InputValidationError: {key} must be a string"))),
    }
}

fn optional_usize(args: &Value, key: &str) -> Result<Option<usize>, ToolOutput> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| ToolOutput::error(format!("InputValidationError: {key} must be a non-negative integer"))),
    }
}

fn optional_bool(args: &Value, key: &str) -> Result<bool, ToolOutput> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(ToolOutput::error(format!("InputValidationError: {key} must be a boolean"))),
    }
}

macro_rules! try_tool {
    ($expression:expr) => {
        match $expression {
            Ok(value) => value,
            Err(output) => return output,
        }
    };
}

/// `cat -n` style numbering, as Claude Code's Read returns it.
pub(crate) fn numbered(content: &str, first_line: usize, limit: usize) -> String {
    content
        .lines()
        .enumerate()
        .skip(first_line.saturating_sub(1))
        .take(limit)
        .map(|(index, line)| format!("{:>6}\t{line}", index + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Workspace {
    fn resolve_or_error(&self, raw: &str) -> Result<String, ToolOutput> {
        self.resolve(raw).ok_or_else(|| {
            ToolOutput::error(format!(
                "Path {raw} is outside the workspace {}; only files inside it can be used",
                self.root
            ))
        })
    }

    pub(super) fn read(&mut self, args: &Value) -> ToolOutput {
        let raw = try_tool!(string_arg(args, "file_path"));
        let path = try_tool!(self.resolve_or_error(raw));
        let offset = try_tool!(optional_usize(args, "offset")).unwrap_or(1).max(1);
        let limit = try_tool!(optional_usize(args, "limit")).unwrap_or(DEFAULT_READ_LIMIT);
        let Some(content) = self.files.get(&path) else {
            if self.is_dir(&path) {
                return ToolOutput::error("EISDIR: illegal operation on a directory, read");
            }
            return ToolOutput::error(format!("File does not exist: {raw}"));
        };
        let total = content.lines().count();
        if total == 0 {
            return ToolOutput::ok(
                "<system-reminder>Warning: the file exists but the contents are empty.</system-reminder>",
            );
        }
        if offset > total {
            return ToolOutput::ok(format!(
                "<system-reminder>Warning: the file exists but is shorter than the provided offset ({offset}). The file has {total} lines.</system-reminder>"
            ));
        }
        ToolOutput::ok(numbered(content, offset, limit))
    }

    pub(super) fn write(&mut self, args: &Value) -> ToolOutput {
        let raw = try_tool!(string_arg(args, "file_path"));
        let content = try_tool!(string_arg(args, "content"));
        let path = try_tool!(self.resolve_or_error(raw));
        if path.is_empty() || self.is_dir(&path) && !self.files.contains_key(&path) {
            return ToolOutput::error(format!("EISDIR: {raw} is a directory"));
        }
        let existed = self.files.insert(path.clone(), content.to_string()).is_some();
        if existed {
            ToolOutput::ok(format!("The file {path} has been updated."))
        } else {
            ToolOutput::ok(format!("File created successfully at: {path}"))
        }
    }

    pub(super) fn edit(&mut self, args: &Value) -> ToolOutput {
        let raw = try_tool!(string_arg(args, "file_path"));
        let old = try_tool!(string_arg(args, "old_string"));
        let new = try_tool!(string_arg(args, "new_string"));
        let replace_all = try_tool!(optional_bool(args, "replace_all"));
        let path = try_tool!(self.resolve_or_error(raw));
        let Some(content) = self.files.get(&path) else {
            return ToolOutput::error(format!("File does not exist: {raw}"));
        };
        if old == new {
            return ToolOutput::error("No changes to make: old_string and new_string are exactly the same.");
        }
        if old.is_empty() {
            return ToolOutput::error(
                "old_string must not be empty for an existing file; use Write to replace the whole file.",
            );
        }
        let matches = content.matches(old).count();
        if matches == 0 {
            return ToolOutput::error(format!("String to replace not found in file.\nString: {old}"));
        }
        if matches > 1 && !replace_all {
            return ToolOutput::error(format!(
                "Found {matches} matches of the string to replace, but replace_all is false. To replace all occurrences, set replace_all to true. To replace only one occurrence, please provide more context to uniquely identify the instance.\nString: {old}"
            ));
        }
        let first_change = content.find(old).unwrap_or(0);
        let updated = if replace_all { content.replace(old, new) } else { content.replacen(old, new, 1) };
        let changed_line = updated[..first_change].lines().count().max(1);
        let snippet = numbered(&updated, changed_line.saturating_sub(3).max(1), 7 + new.lines().count());
        self.files.insert(path.clone(), updated);
        ToolOutput::ok(format!(
            "The file {path} has been updated. Here's the result of running `cat -n` on a snippet of the edited file:\n{snippet}"
        ))
    }

    pub(super) fn grep(&mut self, args: &Value) -> ToolOutput {
        let pattern = try_tool!(string_arg(args, "pattern"));
        let path_arg = try_tool!(optional_string(args, "path")).unwrap_or("");
        let glob = try_tool!(optional_string(args, "glob"));
        let mode = try_tool!(optional_string(args, "output_mode")).unwrap_or("files_with_matches");
        let case_insensitive =
            try_tool!(optional_bool(args, "case_insensitive")) || try_tool!(optional_bool(args, "-i"));
        let regex = match RegexBuilder::new(pattern).case_insensitive(case_insensitive).build() {
            Ok(regex) => regex,
            Err(e) => return ToolOutput::error(format!("Invalid regular expression {pattern:?}: {e}")),
        };
        let path = try_tool!(self.resolve_or_error(path_arg));
        if !self.files.contains_key(&path) && !self.is_dir(&path) {
            return ToolOutput::error(format!("Path does not exist: {path_arg}"));
        }
        let matcher = match glob {
            Some(glob) => match GlobBuilder::new(glob).literal_separator(false).build() {
                Ok(glob) => Some(glob.compile_matcher()),
                Err(e) => return ToolOutput::error(format!("Invalid glob {glob:?}: {e}")),
            },
            None => None,
        };
        let mut content_lines = Vec::new();
        let mut files_matched = Vec::new();
        let mut counts = Vec::new();
        for file in self.files_under(&path) {
            if let Some(matcher) = &matcher {
                let name = file.rsplit('/').next().unwrap_or(&file);
                if !matcher.is_match(&file) && !matcher.is_match(name) {
                    continue;
                }
            }
            let text = &self.files[&file];
            let mut count = 0;
            for (index, line) in text.lines().enumerate() {
                if regex.is_match(line) {
                    count += 1;
                    content_lines.push(format!("{file}:{}:{line}", index + 1));
                }
            }
            if count > 0 {
                files_matched.push(file.clone());
                counts.push(format!("{file}:{count}"));
            }
        }
        match mode {
            "files_with_matches" => {
                if files_matched.is_empty() {
                    ToolOutput::ok("No files found")
                } else {
                    let noun = if files_matched.len() == 1 { "file" } else { "files" };
                    ToolOutput::ok(format!("Found {} {noun}\n{}", files_matched.len(), files_matched.join("\n")))
                }
            }
            "content" => {
                if content_lines.is_empty() {
                    return ToolOutput::ok("No matches found");
                }
                let total = content_lines.len();
                let mut shown = content_lines.into_iter().take(MAX_GREP_LINES).collect::<Vec<_>>().join("\n");
                if total > MAX_GREP_LINES {
                    shown.push_str(&format!("\n... [{} more matching lines]", total - MAX_GREP_LINES));
                }
                ToolOutput::ok(shown)
            }
            "count" => {
                if counts.is_empty() {
                    ToolOutput::ok("No matches found")
                } else {
                    ToolOutput::ok(counts.join("\n"))
                }
            }
            other => ToolOutput::error(format!(
                "InputValidationError: output_mode must be content, files_with_matches or count, not {other:?}"
            )),
        }
    }

    pub(super) fn glob(&mut self, args: &Value) -> ToolOutput {
        let pattern = try_tool!(string_arg(args, "pattern"));
        let base_arg = try_tool!(optional_string(args, "path")).unwrap_or("");
        let base = try_tool!(self.resolve_or_error(base_arg));
        if !self.is_dir(&base) {
            return ToolOutput::error(format!("Directory does not exist: {base_arg}"));
        }
        let matcher = match GlobBuilder::new(pattern).literal_separator(true).build() {
            Ok(glob) => glob.compile_matcher(),
            Err(e) => return ToolOutput::error(format!("Invalid glob {pattern:?}: {e}")),
        };
        let found: Vec<String> = self
            .files_under(&base)
            .into_iter()
            .filter(|file| {
                let relative = if base.is_empty() { file.as_str() } else { &file[base.len() + 1..] };
                matcher.is_match(relative)
            })
            .collect();
        if found.is_empty() {
            ToolOutput::ok("No files found")
        } else {
            ToolOutput::ok(found.join("\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn read_numbers_lines_and_respects_offset_and_limit() {
        let mut w = Workspace::generate(3);
        let out = w.read(&json!({"file_path": "README.md", "offset": 2, "limit": 2}));
        assert!(!out.is_error);
        let lines: Vec<&str> = out.content.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("     2\t"));
        assert!(w.read(&json!({"file_path": "nope.txt"})).is_error);
        assert!(w.read(&json!({"file_path": "/etc/passwd"})).content.contains("outside the workspace"));
    }

    #[test]
    fn grep_modes_and_glob_filter() {
        let mut w = Workspace::generate(4);
        let files = w.grep(&json!({"pattern": "def check_token"}));
        assert_eq!(files.content, format!("Found 1 file\n{}", w.fact("auth_file").unwrap()));
        let content = w.grep(&json!({"pattern": "SELECT", "output_mode": "content", "glob": "*.py"}));
        for line in content.content.lines() {
            let mut parts = line.splitn(3, ':');
            let (file, number, text) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
            let n: usize = number.parse().unwrap();
            assert_eq!(w.files[file].lines().nth(n - 1).unwrap(), text, "grep lines exist in the files");
        }
        assert!(w.grep(&json!({"pattern": "("})).is_error);
        assert_eq!(w.grep(&json!({"pattern": "zzz_nothing"})).content, "No files found");
        let count = w.grep(&json!({"pattern": "get_db", "output_mode": "count"}));
        let total: usize = count.content.lines().map(|l| l.rsplit(':').next().unwrap().parse::<usize>().unwrap()).sum();
        assert_eq!(total.to_string(), w.fact("rename_count").unwrap());
    }

    #[test]
    fn edit_fails_like_claude_code() {
        let mut w = Workspace::generate(5);
        let auth = w.fact("auth_file").unwrap().to_string();
        let missing = w.edit(&json!({"file_path": auth, "old_string": "not there", "new_string": "x"}));
        assert!(missing.is_error && missing.content.starts_with("String to replace not found in file."));
        let db = w.fact("db_file").unwrap().to_string();
        let ambiguous = w.edit(&json!({"file_path": db, "old_string": "conn = get_db()", "new_string": "conn = x()"}));
        assert!(ambiguous.is_error && ambiguous.content.contains("replace_all is false"), "{}", ambiguous.content);
        let all = w.edit(
            &json!({"file_path": db, "old_string": "conn = get_db()", "new_string": "conn = x()", "replace_all": true}),
        );
        assert!(!all.is_error);
        assert!(!w.files[&db].contains("conn = get_db()"));
        let (old, new) = (w.fact("bug_old").unwrap().to_string(), w.fact("bug_new").unwrap().to_string());
        assert!(!w.edit(&json!({"file_path": auth, "old_string": old, "new_string": new})).is_error);
        assert!(w.files[&auth].contains(&new));
    }

    #[test]
    fn glob_matches_paths() {
        let mut w = Workspace::generate(6);
        let out = w.glob(&json!({"pattern": "**/*.py", "path": "tests"}));
        assert!(out.content.lines().all(|l| l.starts_with("tests/") && l.ends_with(".py")), "{}", out.content);
        assert_eq!(w.glob(&json!({"pattern": "*.toml"})).content, "No files found");
        assert_eq!(w.glob(&json!({"pattern": "config/*.toml"})).content, "config/settings.toml");
    }
}
