//! The Bash tool: an allowlist of read-only commands (ls, cat, head, tail, grep, find, wc, pwd,
//! echo, sort, uniq), git status/log/diff/branch over the workspace's fake history, and the test
//! suite (`python -m pytest`, `pytest`, `make test`) emulated faithfully from the workspace's
//! state. Pipes and `&&` work; redirection, `;`, substitution and anything else are refused.

use std::sync::LazyLock;

use globset::GlobBuilder;
use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::{ToolOutput, Workspace};

const ALLOWED: &str = "ls, cat, head, tail, grep, find, wc, pwd, echo, sort, uniq, git status|log|diff|branch, python -m pytest, pytest, make test";

fn split_words(command: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in command.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => current.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            None => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

struct Run {
    stdout: String,
    ok: bool,
}

impl Run {
    fn ok(stdout: String) -> Run {
        Run { stdout, ok: true }
    }
    fn fail(stdout: String) -> Run {
        Run { stdout, ok: false }
    }
}

impl Workspace {
    pub(super) fn bash(&mut self, args: &Value) -> ToolOutput {
        let Some(command) = args.get("command").and_then(Value::as_str) else {
            return ToolOutput::error("InputValidationError: the required parameter `command` is missing");
        };
        if let Some(timeout) = args.get("timeout_ms") {
            if !timeout.as_u64().is_some_and(|t| t > 0 && t <= 600_000) {
                return ToolOutput::error("InputValidationError: timeout_ms must be between 1 and 600000");
            }
        }
        for forbidden in [";", ">", "<", "`", "$(", "||", "&>", " & "] {
            if command.contains(forbidden) {
                return ToolOutput::error(format!(
                    "This sandbox does not allow `{}` in commands. Allowed: {ALLOWED}, joined with | or &&.",
                    forbidden.trim()
                ));
            }
        }
        let mut outputs = Vec::new();
        for segment in command.split("&&") {
            let mut input: Option<String> = None;
            let mut last = Run::ok(String::new());
            for stage in segment.split('|') {
                let words = match split_words(stage.trim()) {
                    Ok(words) if !words.is_empty() => words,
                    Ok(_) => return ToolOutput::error("Empty command in a pipeline"),
                    Err(e) => return ToolOutput::error(format!("Cannot parse the command: {e}")),
                };
                last = match self.run_command(&words, input.take()) {
                    Ok(run) => run,
                    Err(refusal) => return ToolOutput::error(refusal),
                };
                input = Some(last.stdout.clone());
            }
            outputs.push(last.stdout.trim_end().to_string());
            if !last.ok {
                let text = outputs.into_iter().filter(|o| !o.is_empty()).collect::<Vec<_>>().join("\n");
                return ToolOutput::error(text);
            }
        }
        ToolOutput::ok(outputs.into_iter().filter(|o| !o.is_empty()).collect::<Vec<_>>().join("\n"))
    }

    fn run_command(&self, words: &[String], stdin: Option<String>) -> Result<Run, String> {
        let program = words[0].as_str();
        let rest: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        match program {
            "pwd" => Ok(Run::ok(self.root.clone())),
            "echo" => Ok(Run::ok(rest.join(" "))),
            "ls" => Ok(self.ls(&rest)),
            "cat" => Ok(self.cat(&rest, stdin)),
            "head" | "tail" => Ok(self.head_tail(program == "head", &rest, stdin)),
            "wc" => Ok(self.wc(&rest, stdin)),
            "grep" => Ok(self.grep_command(&rest, stdin)),
            "find" => Ok(self.find(&rest)),
            "sort" => {
                let mut lines: Vec<&str> = stdin.as_deref().unwrap_or("").lines().collect();
                lines.sort();
                if rest.contains(&"-r") {
                    lines.reverse();
                }
                Ok(Run::ok(lines.join("\n")))
            }
            "uniq" => {
                let mut lines: Vec<&str> = stdin.as_deref().unwrap_or("").lines().collect();
                lines.dedup();
                Ok(Run::ok(lines.join("\n")))
            }
            "git" => self.git(&rest),
            "pytest" => Ok(self.pytest(&rest)),
            "python" | "python3" if rest.len() >= 2 && rest[0] == "-m" && rest[1] == "pytest" => {
                Ok(self.pytest(&rest[2..]))
            }
            "make" if rest == ["test"] => Ok(self.pytest(&["-q"])),
            other => Err(format!("Command `{other}` is not allowed in this sandbox. Allowed: {ALLOWED}.")),
        }
    }

    fn path_or_fail(&self, raw: &str, command: &str) -> Result<String, Run> {
        match self.resolve(raw) {
            Some(path) if self.files.contains_key(&path) || self.is_dir(&path) => Ok(path),
            Some(_) => Err(Run::fail(format!("{command}: {raw}: No such file or directory"))),
            None => Err(Run::fail(format!("{command}: {raw}: outside the workspace"))),
        }
    }

    fn ls(&self, args: &[&str]) -> Run {
        let long = args.iter().any(|a| a.starts_with('-') && a.contains('l'));
        let target = args.iter().find(|a| !a.starts_with('-')).copied().unwrap_or(".");
        let path = match self.path_or_fail(target, "ls") {
            Ok(path) => path,
            Err(run) => return run,
        };
        if self.files.contains_key(&path) {
            return Run::ok(target.to_string());
        }
        let mut entries: Vec<(String, bool)> = Vec::new();
        for file in self.files_under(&path) {
            let relative = if path.is_empty() { file.as_str() } else { &file[path.len() + 1..] };
            let (name, is_dir) = match relative.split_once('/') {
                Some((dir, _)) => (dir.to_string(), true),
                None => (relative.to_string(), false),
            };
            if !entries.iter().any(|(n, _)| *n == name) {
                entries.push((name, is_dir));
            }
        }
        entries.sort();
        if !long {
            return Run::ok(entries.into_iter().map(|(n, _)| n).collect::<Vec<_>>().join("\n"));
        }
        let lines: Vec<String> = entries
            .into_iter()
            .map(|(name, is_dir)| {
                let full = if path.is_empty() { name.clone() } else { format!("{path}/{name}") };
                if is_dir {
                    format!("drwxr-xr-x 2 dev dev 4096 Nov 27 09:12 {name}")
                } else {
                    format!("-rw-r--r-- 1 dev dev {:>5} Nov 27 09:12 {name}", self.files[&full].len())
                }
            })
            .collect();
        Run::ok(format!("total {}\n{}", lines.len() * 4, lines.join("\n")))
    }

    fn cat(&self, args: &[&str], stdin: Option<String>) -> Run {
        let paths: Vec<&str> = args.iter().filter(|a| !a.starts_with('-')).copied().collect();
        if paths.is_empty() {
            return Run::ok(stdin.unwrap_or_default());
        }
        let mut out = String::new();
        for raw in paths {
            match self.path_or_fail(raw, "cat") {
                Ok(path) if self.files.contains_key(&path) => out.push_str(&self.files[&path]),
                Ok(_) => return Run::fail(format!("cat: {raw}: Is a directory")),
                Err(run) => return run,
            }
        }
        Run::ok(out)
    }

    fn head_tail(&self, head: bool, args: &[&str], stdin: Option<String>) -> Run {
        let name = if head { "head" } else { "tail" };
        let mut count = 10usize;
        let mut file = None;
        let mut index = 0;
        while index < args.len() {
            let arg = args[index];
            if arg == "-n" {
                index += 1;
                count = args.get(index).and_then(|n| n.trim_start_matches('+').parse().ok()).unwrap_or(10);
            } else if let Some(n) =
                arg.strip_prefix("-n").or_else(|| arg.strip_prefix('-')).and_then(|n| n.parse().ok())
            {
                count = n;
            } else {
                file = Some(arg);
            }
            index += 1;
        }
        let text = match file {
            Some(raw) => match self.path_or_fail(raw, name) {
                Ok(path) if self.files.contains_key(&path) => self.files[&path].clone(),
                Ok(_) => return Run::fail(format!("{name}: error reading '{raw}': Is a directory")),
                Err(run) => return run,
            },
            None => stdin.unwrap_or_default(),
        };
        let lines: Vec<&str> = text.lines().collect();
        let chosen = if head { &lines[..count.min(lines.len())] } else { &lines[lines.len().saturating_sub(count)..] };
        Run::ok(chosen.join("\n"))
    }

    fn wc(&self, args: &[&str], stdin: Option<String>) -> Run {
        let flags: String = args.iter().filter(|a| a.starts_with('-')).map(|a| a.trim_start_matches('-')).collect();
        let paths: Vec<&str> = args.iter().filter(|a| !a.starts_with('-')).copied().collect();
        let measure = |text: &str| -> String {
            let (lines, words, bytes) = (text.matches('\n').count(), text.split_whitespace().count(), text.len());
            match flags.as_str() {
                "l" => format!("{lines}"),
                "w" => format!("{words}"),
                "c" => format!("{bytes}"),
                _ => format!("{lines:>3} {words:>4} {bytes:>5}"),
            }
        };
        if paths.is_empty() {
            let mut text = stdin.unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            return Run::ok(measure(&text));
        }
        let mut out = Vec::new();
        for raw in paths {
            match self.path_or_fail(raw, "wc") {
                Ok(path) if self.files.contains_key(&path) => {
                    out.push(format!("{} {raw}", measure(&self.files[&path])))
                }
                Ok(_) => return Run::fail(format!("wc: {raw}: Is a directory")),
                Err(run) => return run,
            }
        }
        Run::ok(out.join("\n"))
    }

    fn grep_command(&self, args: &[&str], stdin: Option<String>) -> Run {
        let mut flags = String::new();
        let mut include = None;
        let mut operands = Vec::new();
        for arg in args {
            if let Some(glob) = arg.strip_prefix("--include=") {
                include = Some(glob.to_string());
            } else if arg.starts_with('-') && arg.len() > 1 && operands.is_empty() {
                flags.push_str(arg.trim_start_matches('-'));
            } else {
                operands.push(*arg);
            }
        }
        let Some((pattern, paths)) = operands.split_first() else {
            return Run::fail("usage: grep [-rniEclv] PATTERN [PATH...]".into());
        };
        let regex = match RegexBuilder::new(pattern).case_insensitive(flags.contains('i')).build() {
            Ok(regex) => regex,
            Err(e) => return Run::fail(format!("grep: invalid pattern: {e}")),
        };
        let invert = flags.contains('v');
        let include = include.and_then(|g| GlobBuilder::new(&g).build().ok()).map(|g| g.compile_matcher());
        let matching = |text: &str| -> Vec<(usize, String)> {
            text.lines()
                .enumerate()
                .filter(|(_, line)| regex.is_match(line) != invert)
                .map(|(i, line)| (i + 1, line.to_string()))
                .collect()
        };
        if paths.is_empty() && !flags.contains('r') {
            let found = matching(stdin.as_deref().unwrap_or(""));
            if flags.contains('c') {
                return Run { stdout: found.len().to_string(), ok: !found.is_empty() };
            }
            let lines: Vec<String> =
                found.into_iter().map(|(n, l)| if flags.contains('n') { format!("{n}:{l}") } else { l }).collect();
            return Run { ok: !lines.is_empty(), stdout: lines.join("\n") };
        }
        let targets: Vec<&str> = if paths.is_empty() { vec!["."] } else { paths.to_vec() };
        let mut files = Vec::new();
        for raw in &targets {
            let path = match self.path_or_fail(raw, "grep") {
                Ok(path) => path,
                Err(run) => return run,
            };
            if self.files.contains_key(&path) {
                files.push(path);
            } else if flags.contains('r') || flags.contains('R') {
                files.extend(self.files_under(&path));
            } else {
                return Run::fail(format!("grep: {raw}: Is a directory"));
            }
        }
        let show_names = files.len() > 1 || flags.contains('r');
        let mut out = Vec::new();
        for file in files {
            if let Some(include) = &include {
                if !include.is_match(file.rsplit('/').next().unwrap_or(&file)) {
                    continue;
                }
            }
            let found = matching(&self.files[&file]);
            if flags.contains('l') {
                if !found.is_empty() {
                    out.push(file.clone());
                }
                continue;
            }
            if flags.contains('c') {
                out.push(if show_names { format!("{file}:{}", found.len()) } else { found.len().to_string() });
                continue;
            }
            for (n, line) in found {
                let prefix = match (show_names, flags.contains('n')) {
                    (true, true) => format!("{file}:{n}:"),
                    (true, false) => format!("{file}:"),
                    (false, true) => format!("{n}:"),
                    (false, false) => String::new(),
                };
                out.push(format!("{prefix}{line}"));
            }
        }
        Run { ok: !out.is_empty(), stdout: out.join("\n") }
    }

    fn find(&self, args: &[&str]) -> Run {
        let mut start = ".";
        let mut name = None;
        let mut kind = None;
        let mut index = 0;
        while index < args.len() {
            match args[index] {
                "-name" | "-iname" => {
                    index += 1;
                    name = args.get(index).copied();
                }
                "-type" => {
                    index += 1;
                    kind = args.get(index).copied();
                }
                other if !other.starts_with('-') && index == 0 => start = other,
                other => return Run::fail(format!("find: unsupported expression {other}")),
            }
            index += 1;
        }
        let base = match self.path_or_fail(start, "find") {
            Ok(path) => path,
            Err(run) => return run,
        };
        let matcher = match name.map(|n| GlobBuilder::new(n).build()) {
            Some(Ok(glob)) => Some(glob.compile_matcher()),
            Some(Err(e)) => return Run::fail(format!("find: bad -name pattern: {e}")),
            None => None,
        };
        let shown = |relative: &str| -> String {
            let suffix = if base.is_empty() {
                relative.to_string()
            } else {
                relative[base.len()..].trim_start_matches('/').to_string()
            };
            let start = start.trim_end_matches('/');
            if suffix.is_empty() {
                start.to_string()
            } else {
                format!("{start}/{suffix}")
            }
        };
        let mut out = Vec::new();
        let mut dirs: Vec<String> = Vec::new();
        for file in self.files_under(&base) {
            let mut parent = file.as_str();
            while let Some((dir, _)) = parent.rsplit_once('/') {
                if dir.len() >= base.len() && !dirs.iter().any(|d| d == dir) {
                    dirs.push(dir.to_string());
                }
                parent = dir;
            }
        }
        if kind != Some("f") {
            for dir in &dirs {
                if matcher.as_ref().is_none_or(|m| m.is_match(dir.rsplit('/').next().unwrap_or(dir))) {
                    out.push(shown(dir));
                }
            }
        }
        if kind != Some("d") {
            for file in self.files_under(&base) {
                if matcher.as_ref().is_none_or(|m| m.is_match(file.rsplit('/').next().unwrap_or(&file))) {
                    out.push(shown(&file));
                }
            }
        }
        out.sort();
        out.dedup();
        Run::ok(out.join("\n"))
    }

    fn git(&self, args: &[&str]) -> Result<Run, String> {
        match args.first().copied() {
            Some("status") => {
                let changed = self.changed_files();
                if changed.is_empty() {
                    return Ok(Run::ok("On branch main\nnothing to commit, working tree clean".into()));
                }
                let mut out = String::from("On branch main\nChanges not staged for commit:\n  (use \"git add <file>...\" to update what will be committed)\n");
                for (path, state) in &changed {
                    if *state != "new file" {
                        out.push_str(&format!("\t{state}:   {path}\n"));
                    }
                }
                let untracked: Vec<&String> =
                    changed.iter().filter(|(_, s)| *s == "new file").map(|(p, _)| p).collect();
                if !untracked.is_empty() {
                    out.push_str("\nUntracked files:\n");
                    for path in untracked {
                        out.push_str(&format!("\t{path}\n"));
                    }
                }
                Ok(Run::ok(out))
            }
            Some("branch") => Ok(Run::ok("* main".into())),
            Some("log") => {
                let oneline = args.contains(&"--oneline");
                let limit = args
                    .iter()
                    .position(|a| *a == "-n")
                    .and_then(|i| args.get(i + 1))
                    .and_then(|n| n.parse().ok())
                    .or_else(|| args.iter().find_map(|a| a.strip_prefix('-').and_then(|n| n.parse().ok())))
                    .unwrap_or(usize::MAX);
                let lines: Vec<String> = self
                    .history
                    .iter()
                    .take(limit)
                    .map(|c| {
                        if oneline {
                            format!("{} {}", c.hash, c.message)
                        } else {
                            format!(
                                "commit {}{}\nAuthor: {}\nDate:   {}\n\n    {}\n",
                                c.hash,
                                "0".repeat(33),
                                c.author,
                                c.date,
                                c.message
                            )
                        }
                    })
                    .collect();
                Ok(Run::ok(lines.join("\n")))
            }
            Some("diff") => {
                let only: Vec<String> =
                    args[1..].iter().filter(|a| !a.starts_with('-')).filter_map(|p| self.resolve(p)).collect();
                let mut out = String::new();
                for (path, _) in self.changed_files() {
                    if !only.is_empty() && !only.iter().any(|o| path.starts_with(o.as_str())) {
                        continue;
                    }
                    let before = self.original.get(&path).map(String::as_str).unwrap_or("");
                    let after = self.files.get(&path).map(String::as_str).unwrap_or("");
                    let diff = similar::TextDiff::from_lines(before, after);
                    out.push_str(&format!("diff --git a/{path} b/{path}\n"));
                    out.push_str(
                        &diff
                            .unified_diff()
                            .context_radius(3)
                            .header(&format!("a/{path}"), &format!("b/{path}"))
                            .to_string(),
                    );
                }
                Ok(Run::ok(out))
            }
            Some(other) => {
                Err(format!("`git {other}` is not allowed in this sandbox. Allowed: git status, log, diff, branch."))
            }
            None => Err("usage: git status|log|diff|branch".into()),
        }
    }

    fn changed_files(&self) -> Vec<(String, &'static str)> {
        let mut changed = Vec::new();
        for (path, content) in &self.files {
            match self.original.get(path) {
                None => changed.push((path.clone(), "new file")),
                Some(before) if before != content => changed.push((path.clone(), "modified")),
                Some(_) => {}
            }
        }
        for path in self.original.keys() {
            if !self.files.contains_key(path) {
                changed.push((path.clone(), "deleted"));
            }
        }
        changed
    }

    fn pytest(&self, args: &[&str]) -> Run {
        let (output, passed) = run_tests(self, args);
        Run { stdout: output, ok: passed }
    }
}

static CHECK_TOKEN_RETURN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*return token\.expires_at(?:\s*\*\s*(\d+))?\s*(>=|>|<=|<|==)\s*now(\s+or\s+True)?\s*$").unwrap()
});
static TEST_FUNCTION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?m)^def (test_\w+)\(").unwrap());
static FROM_IMPORT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?m)^from ([\w.]+) import ([\w, ]+)$").unwrap());
static ASSERT_EQUALS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?m)^\s*assert (.+?) == (.+?)\s*$").unwrap());

/// Evaluate the workspace's `check_token(expires_at, now)` from its current source, if it has a
/// form the emulator understands.
fn check_token(workspace: &Workspace, expires_at: i64, now: i64) -> Option<bool> {
    let source = workspace.files.get(workspace.fact("auth_file")?)?;
    let body = source.split("def check_token").nth(1)?;
    let line = body.lines().find(|l| l.trim_start().starts_with("return "))?;
    let captures = CHECK_TOKEN_RETURN.captures(line)?;
    let scale: i64 = captures.get(1).map_or(1, |m| m.as_str().parse().unwrap_or(1));
    let left = expires_at * scale;
    let result = match &captures[2] {
        ">=" => left >= now,
        ">" => left > now,
        "<=" => left <= now,
        "<" => left < now,
        _ => left == now,
    };
    Some(result || captures.get(3).is_some())
}

/// Whether module `module` (dotted) defines every name in `names`.
fn module_defines(workspace: &Workspace, module: &str, names: &str) -> Result<(), String> {
    let path = format!("src/{}.py", module.replace('.', "/"));
    let init = format!("src/{}/__init__.py", module.replace('.', "/"));
    let Some(source) = workspace.files.get(&path).or_else(|| workspace.files.get(&init)) else {
        return Err(format!("ModuleNotFoundError: No module named '{module}'"));
    };
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let defined = source.contains(&format!("def {name}("))
            || source.contains(&format!("class {name}"))
            || source.lines().any(|l| l.starts_with(&format!("{name} =")))
            || workspace.files.contains_key(&format!("src/{}/{name}.py", module.replace('.', "/")));
        if !defined {
            return Err(format!("ImportError: cannot import name '{name}' from '{module}'"));
        }
    }
    Ok(())
}

/// The import chain of a test module is sound when every `from x import y` in the package and
/// the test resolves.
fn imports_resolve(workspace: &Workspace, test_source: &str) -> Result<(), String> {
    let package = workspace.fact("package").unwrap_or("");
    let mut sources: Vec<&str> = vec![test_source];
    sources.extend(
        workspace.files.iter().filter(|(p, _)| p.starts_with("src/") && p.ends_with(".py")).map(|(_, s)| s.as_str()),
    );
    for source in sources {
        for captures in FROM_IMPORT.captures_iter(source) {
            let module = &captures[1];
            if module.starts_with(package) && !package.is_empty() {
                module_defines(workspace, module, &captures[2])?;
            }
        }
    }
    Ok(())
}

/// Run the emulated suite. `args` are pytest's (-q, -k EXPR, paths or node ids). Returns the
/// report and whether every selected test passed.
pub(super) fn run_tests(workspace: &Workspace, args: &[&str]) -> (String, bool) {
    let mut keyword = None;
    let mut selected_paths = Vec::new();
    let mut index = 0;
    while index < args.len() {
        match args[index] {
            "-k" => {
                index += 1;
                keyword = args.get(index).copied();
            }
            arg if arg.starts_with('-') => {}
            arg => selected_paths.push(arg.trim_start_matches("./").to_string()),
        }
        index += 1;
    }
    struct Outcome {
        file: String,
        name: String,
        failure: Option<String>,
    }
    let mut outcomes = Vec::new();
    for (path, source) in workspace.files.iter().filter(|(p, _)| {
        p.starts_with("tests/") && p.rsplit('/').next().is_some_and(|n| n.starts_with("test_") && n.ends_with(".py"))
    }) {
        if !selected_paths.is_empty() && !selected_paths.iter().any(|s| s.split("::").next() == Some(path.as_str())) {
            continue;
        }
        let import_error = imports_resolve(workspace, source).err();
        for captures in TEST_FUNCTION.captures_iter(source) {
            let name = captures[1].to_string();
            if keyword.is_some_and(|k| !name.contains(k)) {
                continue;
            }
            if selected_paths.iter().any(|s| s.contains("::") && !s.ends_with(&format!("::{name}"))) {
                continue;
            }
            let body: String = source
                .split(&format!("def {name}("))
                .nth(1)
                .unwrap_or("")
                .lines()
                .skip(1)
                .take_while(|l| l.starts_with(' ') || l.is_empty())
                .collect::<Vec<_>>()
                .join("\n");
            let failure = if let Some(error) = &import_error {
                Some(format!("E   {error}"))
            } else {
                evaluate_test(workspace, &name, &body)
            };
            outcomes.push(Outcome { file: path.clone(), name, failure });
        }
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    let quiet = args.contains(&"-q");
    let mut out = String::new();
    if !quiet {
        out.push_str(&format!(
            "============================= test session starts ==============================\nplatform linux -- Python 3.12.3, pytest-8.2.2\nrootdir: {}\ncollected {} items\n\n",
            workspace.root,
            outcomes.len()
        ));
    }
    let mut files: Vec<&str> = outcomes.iter().map(|o| o.file.as_str()).collect();
    files.dedup();
    let mut done = 0;
    for file in &files {
        let marks: String =
            outcomes.iter().filter(|o| o.file == *file).map(|o| if o.failure.is_some() { 'F' } else { '.' }).collect();
        done += marks.len();
        let percent = if outcomes.is_empty() { 100 } else { done * 100 / outcomes.len() };
        if quiet {
            out.push_str(&marks);
        } else {
            out.push_str(&format!("{file} {marks:<55} [{percent:>3}%]\n"));
        }
    }
    if quiet {
        out.push('\n');
    }
    if !failed.is_empty() {
        out.push_str("\n=================================== FAILURES ===================================\n");
        for outcome in &failed {
            out.push_str(&format!("_________________________ {} _________________________\n", outcome.name));
            out.push_str(&format!(
                "{}\n{}:{}: AssertionError\n",
                outcome.failure.as_deref().unwrap_or(""),
                outcome.file,
                line_of_test(workspace, outcome)
            ));
        }
        out.push_str("=========================== short test summary info ============================\n");
        for outcome in &failed {
            let reason =
                outcome.failure.as_deref().unwrap_or("").lines().last().unwrap_or("").trim_start_matches('E').trim();
            out.push_str(&format!("FAILED {}::{} - {reason}\n", outcome.file, outcome.name));
        }
    }
    let passed = outcomes.len() - failed.len();
    let seconds = 0.03 + 0.01 * outcomes.len() as f64;
    let summary = match (failed.len(), passed) {
        (0, 0) => "no tests ran".to_string(),
        (0, p) => format!("{p} passed in {seconds:.2}s"),
        (f, 0) => format!("{f} failed in {seconds:.2}s"),
        (f, p) => format!("{f} failed, {p} passed in {seconds:.2}s"),
    };
    if quiet {
        out.push_str(&summary);
    } else {
        out.push_str(&format!("========================= {summary} =========================="));
    }
    return (out, failed.is_empty() && !outcomes.is_empty());

    // Line numbers point at the assertion inside the test.
    fn line_of_test(workspace: &Workspace, outcome: &Outcome) -> usize {
        let source = &workspace.files[&outcome.file];
        let start = super::workspace::line_of(source, &format!("def {}(", outcome.name)).unwrap_or(1);
        source.lines().skip(start).position(|l| l.trim_start().starts_with("assert")).map_or(start, |i| start + i + 1)
    }
}

/// Decide one test's fate from the workspace's code; `Some(report)` when it fails.
fn evaluate_test(workspace: &Workspace, name: &str, body: &str) -> Option<String> {
    match name {
        "test_accepts_fresh_token" | "test_rejects_expired_token" => {
            let (expires_at, now, expected) =
                if name == "test_accepts_fresh_token" { (2000, 1000, true) } else { (1000, 2000, false) };
            let assertion = body.lines().find(|l| l.trim_start().starts_with("assert")).unwrap_or("").trim();
            match check_token(workspace, expires_at, now) {
                Some(actual) if actual == expected => None,
                Some(actual) => {
                    Some(format!(">       {assertion}\nE       assert {} is {}", py_bool(actual), py_bool(expected)))
                }
                None => Some(format!(">       {assertion}\nE       NameError: check_token could not be evaluated")),
            }
        }
        _ => {
            // Tests written against the helpers: each `assert CALL == VALUE` must be a known fact.
            for captures in ASSERT_EQUALS.captures_iter(body) {
                let (call, value) = (captures[1].trim(), captures[2].trim());
                let known =
                    workspace.fact("helper_call") == Some(call) && workspace.fact("helper_result") == Some(value);
                let is_db_test = call.contains(workspace.fact("entities").unwrap_or("\u{0}"));
                if !known && !is_db_test {
                    return Some(format!(">       assert {call} == {value}\nE       AssertionError: the sandbox cannot confirm {call} == {value}"));
                }
            }
            None
        }
    }
}

fn py_bool(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bash(w: &mut Workspace, command: &str) -> ToolOutput {
        w.bash(&json!({"command": command}))
    }

    #[test]
    fn allowlisted_commands_work_and_others_are_refused() {
        let mut w = Workspace::generate(11);
        let csv = w.fact("csv_file").unwrap().to_string();
        assert_eq!(bash(&mut w, &format!("wc -l {csv}")).content, format!("{} {csv}", w.fact("csv_lines").unwrap()));
        assert_eq!(bash(&mut w, &format!("cat {csv} | wc -l")).content, w.fact("csv_lines").unwrap());
        let status = w.fact("csv_status").unwrap().to_string();
        assert_eq!(bash(&mut w, &format!("grep -c ,{status}$ {csv}")).content, w.fact("csv_status_count").unwrap());
        assert!(bash(&mut w, "ls src").content.contains(w.fact("package").unwrap()));
        assert!(bash(&mut w, "tail -n 50 logs/app.log").content.contains(w.fact("log_message").unwrap()));
        assert!(bash(&mut w, "git log --oneline -n 2").content.lines().count() == 2);
        assert!(bash(&mut w, "find . -name '*.sql'").content.contains("./migrations/001_init.sql"));
        for refused in ["rm -rf /", "curl http://example.com", "cat README.md > /tmp/x", "ls; rm x", "echo $(whoami)"] {
            let out = bash(&mut w, refused);
            assert!(out.is_error, "{refused} was not refused");
        }
        assert!(bash(&mut w, "cat ../../etc/passwd").is_error);
    }

    #[test]
    fn test_suite_fails_for_the_planted_bug_until_it_is_fixed() {
        for seed in 0..12 {
            let mut w = Workspace::generate(seed);
            let run = bash(&mut w, "python -m pytest -q");
            assert!(run.is_error, "seed {seed}: the planted bug fails the suite");
            assert!(run.content.contains(w.fact("failing_test").unwrap()), "{}", run.content);
            let auth = w.fact("auth_file").unwrap().to_string();
            let (old, new) = (w.fact("bug_old").unwrap().to_string(), w.fact("bug_new").unwrap().to_string());
            assert!(!w.edit(&json!({"file_path": auth, "old_string": old, "new_string": new})).is_error);
            let run = bash(&mut w, "python -m pytest -q");
            assert!(!run.is_error, "seed {seed}: fixed suite passes:\n{}", run.content);
            assert!(w.tests_pass());
            assert!(bash(&mut w, "git status").content.contains("modified:   "));
            assert!(bash(&mut w, "git diff").content.contains(&format!("+    {new}")));
        }
    }

    #[test]
    fn a_partial_rename_breaks_imports() {
        let mut w = Workspace::generate(2);
        let connection = w.fact("connection_file").unwrap().to_string();
        w.edit(&json!({"file_path": connection, "old_string": "def get_db(", "new_string": "def open_connection("}));
        let run = bash(&mut w, "pytest -q");
        assert!(run.is_error && run.content.contains("ImportError"), "{}", run.content);
    }
}
