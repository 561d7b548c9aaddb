//! The capture engine through the real binary: `capture scan` over the hand-written transcripts
//! in `tests/data/claude_code/` (a session with split assistant lines, parallel and out-of-order
//! tool results, a `/rewind`, a compaction, a subagent in each layout, persisted outputs, an
//! image, planted secrets, malformed lines and a partial last line), then the stored traces,
//! the counts, redaction down to the database bytes, idempotent rescans, appends and rewrites;
//! then `engine start|status|stop` in the background and the hook's install/uninstall round trip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use understudy::store::{Store, TraceFilter};
use understudy::traces::{Role, Source, Trace};

use crate::support::{cli, cli_with_env, fixture};

const SESSION: &str = "5b0c1f0e-7c2a-4f4e-9d51-2f7a3c9e1a10";
const LEGACY_SESSION: &str = "9d3e5a71-0b6c-4d2e-8f1a-6c5b4a392817";

/// Every secret planted in the fixtures.
const SECRETS: [&str; 8] = [
    "ghp_R8x2Kq9LmN4pT7vW1yZ3aB5cD6eF8gH0jK2l",
    "Sup3rS3cretPw",
    "sk_live_51HxQzLmNoPqRsTuV",
    "AKIAZ7QW3EXAMPLE9XYZ",
    "sk-proj-Zq8Yx7Wv6Ut5Sr4Qp3On2Ml1Kj0Ih",
    "MIIEowIBAAKCAQEAx9RkPl4Dummy",
    "xoxb-2291-Slack0Token9Value",
    "dpl_9f8e7d6c5b4a3928",
];

struct Setup {
    _temp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path().join("claude");
        copy_dir(&fixture("claude_code/projects"), &root.join("projects"));
        Setup { data: temp.path().join("data"), root, _temp: temp }
    }

    fn scan(&self, extra: &[&str]) -> Value {
        let mut args = vec!["capture", "scan", "--dir", self.root.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        let run = cli(&self.data, &args);
        assert_eq!(run.code, 0, "scan failed: {}", run.stderr);
        run.json()
    }

    fn main_file(&self) -> PathBuf {
        self.root.join(format!("projects/-home-ana-src-widget/{SESSION}.jsonl"))
    }

    fn traces(&self) -> BTreeMap<String, Trace> {
        let store = Store::open(&self.data).unwrap();
        let db = store.connect().unwrap();
        let mut traces = BTreeMap::new();
        let filter = TraceFilter { source: Some(Source::ClaudeCode), ..TraceFilter::default() };
        db.for_each_trace(&filter, |trace| {
            assert!(traces.insert(trace.prompt.clone(), trace).is_none(), "two traces share a prompt");
            Ok(())
        })
        .unwrap();
        traces
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

fn counts(report: &Value) -> [u64; 6] {
    ["files", "sessions", "traces_new", "traces_updated", "malformed_lines", "redactions"]
        .map(|key| report[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {report}")))
}

fn roles(trace: &Trace) -> Vec<&'static str> {
    trace.messages.iter().map(|m| m.role.as_str()).collect()
}

fn all_text(trace: &Trace) -> String {
    understudy::traces::wire::to_canonical_json(trace)
}

#[test]
fn a_scan_makes_one_trace_per_human_prompt_with_its_metadata() {
    let setup = Setup::new();
    let report = setup.scan(&[]);
    assert_eq!(counts(&report), [4, 2, 11, 0, 2, 8], "{report:#}");
    let malformed: Vec<(String, u64)> = report["malformed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["file"].as_str().unwrap().rsplit('/').next().unwrap().to_string(), m["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(malformed, vec![(format!("{LEGACY_SESSION}.jsonl"), 7), (format!("{SESSION}.jsonl"), 30)]);

    let traces = setup.traces();
    let prompts: Vec<&str> = traces.keys().map(String::as_str).collect();
    assert_eq!(
        prompts,
        vec![
            "Actually, rename parse_input to read_line instead",
            "Check why the deploy fails. The CI uses the token [REDACTED:github_token] to push.",
            "Find every call that can panic in src/parse.rs",
            "Locate the HTTP retry logic",
            "Now add a test for read_line with unicode input",
            "Review the parser module for panics, use a subagent",
            "Run the whole test suite",
            "Show me the full build log and the old one",
            "The test parse_empty_input fails, please fix it",
            "What does this screenshot of the error dialog show?\n[image omitted]",
            "Where is the retry logic for HTTP requests?",
        ]
    );
    for trace in traces.values() {
        assert!(trace.id.starts_with("tr_cc_"), "{}", trace.id);
        assert_eq!(trace.source, Source::ClaudeCode);
        let text = all_text(trace);
        for absent in [
            "ABANDONED BRANCH",
            "parse_line everywhere",
            "This session is being continued",
            "COMPACTION AGENT OUTPUT",
            "<command-name>",
            "local-command",
            "API Error: 529",
            "iVBORw0KGgo",
            "EuEDCkYICxgC",
        ] {
            assert!(!text.contains(absent), "{absent:?} leaked into {}", trace.prompt);
        }
    }

    // Split assistant lines merged; parallel calls in one message, results in call order.
    let fix = &traces["The test parse_empty_input fails, please fix it"];
    assert_eq!(
        roles(fix),
        [
            "user",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "tool",
            "assistant",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ]
    );
    assert_eq!(fix.messages[1].content.as_deref(), Some("Let me run the test first."));
    assert_eq!(fix.messages[1].tool_calls[0].name, "Bash");
    assert_eq!(
        fix.messages[1].tool_calls[0].arguments_value(),
        serde_json::json!({"command": "cargo test parse_empty_input", "description": "Run failing test"})
    );
    let parallel: Vec<&str> = fix.messages[3].tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(parallel, ["toolu_01Read0001", "toolu_01Grep0001"]);
    assert_eq!(fix.messages[4].tool_call_id.as_deref(), Some("toolu_01Read0001"));
    assert!(fix.messages[4].content.as_deref().unwrap().contains("pub fn tokenize"));
    assert_eq!(fix.messages[5].tool_call_id.as_deref(), Some("toolu_01Grep0001"));
    assert_eq!(fix.final_answer(), Some("Fixed: the tokenizer now returns an empty Vec for \"\" and the test passes."));
    assert_eq!(fix.category, "debugging");
    let tool_names: Vec<&str> = fix.tools.iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(tool_names, ["Bash", "Read", "Grep", "Edit"]);
    assert_eq!(fix.tools[1]["function"]["parameters"]["required"][0], "file_path");
    let meta = &fix.metadata;
    assert_eq!(meta["session_id"], SESSION);
    assert_eq!(meta["cwd"], "/home/ana/src/widget");
    assert_eq!(meta["git_branch"], "main");
    assert_eq!(meta["cc_version"], "2.1.37");
    assert_eq!(meta["model"], "claude-opus-4-5-20251101");
    assert_eq!(meta["is_sidechain"], false);
    assert_eq!(meta["tool_errors"], 1);
    assert_eq!(meta["complete"], true);
    assert_eq!(meta["prompt_uuid"], "u-001");
    assert!(meta["started_at"].as_str().unwrap() < meta["ended_at"].as_str().unwrap());
    assert_eq!(fix.created_at, meta["started_at"].as_str().unwrap());
    assert_eq!(meta["reasoning"][0]["message"], 1);
    assert_eq!(meta["reasoning"][0]["text"], "The failing test is probably an off-by-one in the tokenizer.");

    // The rewind keeps only the active branch.
    let rewind = &traces["Actually, rename parse_input to read_line instead"];
    assert_eq!(rewind.messages[1].tool_calls[0].name, "Glob");

    // Subagents: linked from the Task call, and their own traces (both layouts).
    let task = &traces["Review the parser module for panics, use a subagent"];
    assert_eq!(task.messages[1].tool_calls[0].name, "Task");
    assert_eq!(task.metadata["subagents"], serde_json::json!(["a4e80a2"]));
    let side = &traces["Find every call that can panic in src/parse.rs"];
    assert_eq!(side.metadata["is_sidechain"], true);
    assert_eq!(side.metadata["agent_id"], "a4e80a2");
    assert_eq!(side.metadata["parent_session_id"], SESSION);
    assert_eq!(roles(side), ["user", "assistant", "tool", "assistant"]);
    let legacy_side = &traces["Locate the HTTP retry logic"];
    assert_eq!(legacy_side.metadata["agent_id"], "b71c9f0");
    assert_eq!(legacy_side.metadata["parent_session_id"], LEGACY_SESSION);
    let legacy = &traces["Where is the retry logic for HTTP requests?"];
    assert_eq!(roles(legacy), ["user", "assistant", "tool", "assistant"], "API error dropped, duplicate line once");
    assert_eq!(legacy.metadata["cc_version"], "1.0.98");
    assert_eq!(legacy.metadata["subagents"], serde_json::json!(["b71c9f0"]));

    // Persisted outputs: re-inlined when the file exists, else marked truncated.
    let persisted = &traces["Show me the full build log and the old one"];
    let results: Vec<&str> =
        persisted.messages.iter().filter(|m| m.role == Role::Tool).map(|m| m.content.as_deref().unwrap()).collect();
    assert!(
        results[0].contains("Compiling crate-39 v1.0.39") && !results[0].contains("<persisted-output>"),
        "{}",
        results[0]
    );
    assert!(results[1].contains("result truncated"), "{}", results[1]);
    assert_eq!(persisted.metadata["reinlined_tool_results"], 1);
    assert_eq!(persisted.metadata["truncated_tool_results"], 1);

    // After the compaction: a new trace, with the record's own git branch.
    let compacted = &traces["Now add a test for read_line with unicode input"];
    assert_eq!(compacted.metadata["git_branch"], "feature/unicode");
    assert_eq!(compacted.messages[1].tool_calls[0].name, "Write");

    // The image became a placeholder; the turn being written keeps what is complete.
    assert_eq!(traces["What does this screenshot of the error dialog show?\n[image omitted]"].metadata["images"], 1);
    let running = &traces["Run the whole test suite"];
    assert_eq!(roles(running), ["user", "assistant"]);
    assert_eq!(running.messages[1].content.as_deref(), Some("Running the full suite."));
    assert_eq!(running.metadata["complete"], false);
    assert_eq!(running.metadata["unanswered_tool_calls"], 1);
}

#[test]
fn secrets_are_redacted_before_anything_is_stored() {
    let setup = Setup::new();
    let report = setup.scan(&[]);
    let by_pattern = report["redactions_by_pattern"].as_object().unwrap();
    for name in [
        "github_token",
        "url_password",
        "secret_assignment",
        "aws_access_key_id",
        "openai_api_key",
        "private_key",
        "slack_token",
    ] {
        assert!(by_pattern.get(name).and_then(Value::as_u64).unwrap_or(0) >= 1, "{name} not counted: {report:#}");
    }
    let traces = setup.traces();
    let deploy = traces.values().find(|t| t.prompt.starts_with("Check why the deploy fails")).unwrap();
    let env_file = deploy.messages[2].content.as_deref().unwrap();
    assert!(env_file.contains("postgres://app:[REDACTED:url_password]@db.internal"), "{env_file}");
    assert!(env_file.contains("STRIPE_SECRET_KEY=[REDACTED:secret_assignment]"), "{env_file}");
    assert!(deploy.messages[3].tool_calls[0].arguments_value()["command"]
        .as_str()
        .unwrap()
        .contains("Bearer [REDACTED:"));
    // Nothing of the originals anywhere in the database files (WAL included).
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(&setup.data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    assert!(bytes.len() > 10_000);
    let haystack = String::from_utf8_lossy(&bytes);
    assert!(haystack.contains("REDACTED:github_token"), "the redacted traces are in the files read");
    for secret in SECRETS {
        assert!(!haystack.contains(secret), "{secret} reached the data dir");
    }
}

#[test]
fn rescans_are_idempotent_and_appends_update_the_turn_being_written() {
    let setup = Setup::new();
    setup.scan(&[]);
    let again = setup.scan(&[]);
    assert_eq!(counts(&again), [4, 2, 0, 0, 0, 0], "{again:#}");
    assert_eq!(again["files_unchanged"], 4);

    // Claude Code finishes the cut line, answers, and a new prompt follows.
    let rest = std::fs::read_to_string(fixture("claude_code/append.jsonl.txt")).unwrap();
    let mut file = std::fs::OpenOptions::new().append(true).open(setup.main_file()).unwrap();
    std::io::Write::write_all(&mut file, rest.as_bytes()).unwrap();
    drop(file);
    let after = setup.scan(&[]);
    assert_eq!(counts(&after), [4, 2, 1, 1, 0, 0], "{after:#}");
    assert_eq!(after["files_resumed"], 1);
    assert_eq!(after["files_unchanged"], 3);

    let traces = setup.traces();
    assert_eq!(traces.len(), 12);
    let running = &traces["Run the whole test suite"];
    assert_eq!(roles(running), ["user", "assistant", "tool", "assistant"]);
    assert_eq!(running.final_answer(), Some("All 42 tests pass."));
    assert_eq!(running.metadata["complete"], true);
    assert_eq!(traces["Thanks, commit it"].final_answer(), Some("Committed as 1a2b3c4."));
    assert_eq!(counts(&setup.scan(&[])), [4, 2, 0, 0, 0, 0]);
}

#[test]
fn a_truncated_or_rewritten_file_is_read_again_without_duplicates() {
    let setup = Setup::new();
    setup.scan(&[]);
    let original = std::fs::read_to_string(setup.main_file()).unwrap();
    // Truncated to the first two turns: nothing new, nothing duplicated.
    let head: String = original.split_inclusive('\n').take(24).collect();
    std::fs::write(setup.main_file(), &head).unwrap();
    let truncated = setup.scan(&[]);
    assert_eq!(counts(&truncated), [4, 2, 0, 0, 0, 0], "{truncated:#}");
    assert_eq!(truncated["files_reread"], 1);

    // Rewritten with a different first prompt (same records): that turn is updated in place.
    std::fs::write(setup.main_file(), original.replace("please fix it", "please repair it")).unwrap();
    let rewritten = setup.scan(&[]);
    assert_eq!(counts(&rewritten), [4, 2, 0, 1, 1, 0], "{rewritten:#}");
    let traces = setup.traces();
    assert_eq!(traces.len(), 11);
    assert!(traces.contains_key("The test parse_empty_input fails, please repair it"));
}

#[test]
fn the_root_comes_from_claude_config_dir_and_a_missing_root_is_an_error() {
    let setup = Setup::new();
    let run = cli_with_env(&setup.data, &["capture", "scan", "--json"], &[("CLAUDE_CONFIG_DIR", &setup.root)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["traces_new"], 11);

    let missing = setup.root.join("nowhere");
    let run = cli(&setup.data, &["capture", "scan", "--dir", missing.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no Claude Code projects directory"), "{}", run.stderr);
}

#[test]
fn redaction_patterns_and_the_result_cap_are_configurable() {
    let setup = Setup::new();
    let report = setup.scan(&["--redact", "crate_name=crate-3[0-9]", "--max-tool-result-bytes", "300"]);
    assert_eq!(
        report["redactions_by_pattern"]["crate_name"].as_u64().unwrap_or(0),
        0,
        "cut by the cap first: {report:#}"
    );
    let traces = setup.traces();
    let persisted = &traces["Show me the full build log and the old one"];
    let log = persisted.messages[2].content.as_deref().unwrap();
    assert!(log.starts_with("   Compiling crate-00"), "{log}");
    assert!(log.contains("[understudy: truncated, kept 300 of 1328 bytes]"), "{log}");

    let setup = Setup::new();
    let report = setup.scan(&["--redact", "crate_name=crate-3[0-9]"]);
    assert_eq!(report["redactions_by_pattern"]["crate_name"], 10, "{report:#}");
    let run = cli(&setup.data, &["capture", "scan", "--dir", setup.root.to_str().unwrap(), "--redact", "broken=("]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("broken"), "{}", run.stderr);
}

/// Stops the background engine of a data dir when dropped, so a failing test leaves no process.
struct EngineGuard(PathBuf);

impl Drop for EngineGuard {
    fn drop(&mut self) {
        cli(&self.0, &["engine", "stop"]);
    }
}

fn engine_status(data: &Path) -> Value {
    let run = cli(data, &["engine", "status", "--json"]);
    assert_eq!(run.code, 0, "status failed: {}", run.stderr);
    run.json()
}

/// Whether a process exists and is not a zombie.
fn process_alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            !matches!(stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()), Some("Z" | "X"))
        }
        // Safety: signal 0 only asks whether the process exists.
        Err(_) => !Path::new("/proc/self").exists() && unsafe { libc::kill(pid as i32, 0) } == 0,
    }
}

fn settings_value(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn engine_capture_hook_install_keeps_other_settings_and_uninstall_restores_them() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let settings = temp.path().join("claude/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    let original = serde_json::json!({
        "model": "opus",
        "permissions": {"allow": ["Bash(git status)"]},
        "hooks": {
            "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}],
            "SessionEnd": [{"matcher": "", "hooks": [{"type": "command", "command": "~/bin/log-session", "timeout": 5}]}],
            "PostToolUse": [{"matcher": "Edit|Write", "hooks": [{"type": "command", "command": "cargo fmt"}]}]
        }
    });
    std::fs::write(&settings, serde_json::to_string_pretty(&original).unwrap()).unwrap();
    let path = settings.to_str().unwrap();

    let run = cli(&data, &["engine", "install", "--settings", path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("understudy-capture"), "the change is shown: {}", run.stdout);
    let installed = settings_value(&settings);
    for key in ["model", "permissions"] {
        assert_eq!(installed[key], original[key]);
    }
    for event in ["Stop", "PostToolUse"] {
        assert_eq!(installed["hooks"][event], original["hooks"][event]);
    }
    let session_end = installed["hooks"]["SessionEnd"].as_array().unwrap();
    assert_eq!(session_end.len(), 2);
    assert_eq!(session_end[0], original["hooks"]["SessionEnd"][0]);
    let hook = &session_end[1]["hooks"][0];
    assert_eq!(hook["type"], "command");
    let command = hook["command"].as_str().unwrap();
    let trigger = std::fs::canonicalize(&data).unwrap().join("capture-engine.trigger");
    assert!(command.contains(trigger.to_str().unwrap()) && command.contains("understudy-capture"), "{command}");

    let backups: Vec<PathBuf> = std::fs::read_dir(settings.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("settings.json.understudy-backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(settings_value(&backups[0]), original);

    // The hook's command touches the trigger and exits 0, whatever its stdin holds.
    let output =
        std::process::Command::new("sh").args(["-c", command]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(output.status.success());
    assert!(trigger.exists());

    let again = cli(&data, &["engine", "install", "--settings", path]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains("already installed"), "{}", again.stdout);
    assert_eq!(settings_value(&settings), installed);
    let status = cli(&data, &["engine", "status", "--json", "--settings", path]).json();
    assert_eq!(status["hook_installed"], true);

    let run = cli(&data, &["engine", "uninstall", "--settings", path]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(settings_value(&settings), original);
    let run = cli(&data, &["engine", "uninstall", "--settings", path]);
    assert!(run.stdout.contains("not installed"), "{}", run.stdout);

    // A settings file that does not exist yet is created, and removed to `{}` again.
    let fresh = temp.path().join("fresh/settings.json");
    assert_eq!(cli(&data, &["engine", "install", "--settings", fresh.to_str().unwrap()]).code, 0);
    assert!(settings_value(&fresh)["hooks"]["SessionEnd"][0]["hooks"][0]["command"]
        .as_str()
        .unwrap()
        .contains("understudy-capture"));
    assert_eq!(cli(&data, &["engine", "uninstall", "--settings", fresh.to_str().unwrap()]).code, 0);
    assert_eq!(settings_value(&fresh), serde_json::json!({}));
}

#[test]
fn engine_capture_hook_install_refuses_settings_that_are_not_json() {
    let temp = tempfile::tempdir().unwrap();
    let settings = temp.path().join("settings.json");
    let text = "{\"model\": \"opus\", // a comment\n}";
    std::fs::write(&settings, text).unwrap();
    for command in ["install", "uninstall"] {
        let run = cli(&temp.path().join("data"), &["engine", command, "--settings", settings.to_str().unwrap()]);
        assert_eq!(run.code, 1, "{command}: {}", run.stdout);
        assert!(run.stderr.contains("settings.json") && run.stderr.contains("not valid JSON"), "{}", run.stderr);
        assert_eq!(std::fs::read_to_string(&settings).unwrap(), text);
        assert_eq!(std::fs::read_dir(temp.path()).unwrap().filter(|e| e.as_ref().unwrap().path().is_file()).count(), 1);
    }
}

#[test]
fn engine_capture_runs_in_the_background_wakes_on_the_trigger_and_stops() {
    let setup = Setup::new();
    let data = setup.data.clone();
    let _guard = EngineGuard(data.clone());
    let root = setup.root.to_str().unwrap();
    assert_eq!(engine_status(&data)["running"], false);
    assert!(cli(&data, &["engine", "stop"]).stdout.contains("not running"));

    // A long interval: after the first scan, only the trigger makes it scan again.
    let run = cli(&data, &["engine", "start", "--dir", root, "--interval", "300"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pid_file: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("capture-engine.pid")).unwrap()).unwrap();
    let pid = pid_file["pid"].as_u64().unwrap();
    assert_eq!(pid_file["interval"], 300);

    let status = crate::support::wait_for(10, "the first background scan", || {
        let status = engine_status(&data);
        (status["traces_captured"].as_i64().unwrap() > 0 && status["last_scan_at"].is_string()).then_some(status)
    });
    assert_eq!(status["running"], true);
    assert_eq!(status["pid"], pid);
    assert_eq!(status["traces_captured"], 11, "{status:#}");
    assert_eq!(status["files"], 4);
    assert_eq!(status["sessions"], 2);
    assert!(status["last_capture_at"].is_string());
    assert_eq!(status["roots"][0], root);
    // The orchestrator's first cycle needs 50 new traces (its default `min_traces`).
    assert_eq!(status["orchestrator"], serde_json::json!({"threshold": 50, "new_traces": 11, "missing": 39}));

    let again = cli(&data, &["engine", "start", "--dir", root, "--interval", "1"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(again.stdout.contains(&format!("already running (pid {pid})")), "{}", again.stdout);

    // A session goes on while the engine runs.
    let rest = std::fs::read_to_string(fixture("claude_code/append.jsonl.txt")).unwrap();
    let mut file = std::fs::OpenOptions::new().append(true).open(setup.main_file()).unwrap();
    std::io::Write::write_all(&mut file, rest.as_bytes()).unwrap();
    drop(file);
    // File-system notifications wake the engine (the interval is 300 s).
    let status = crate::support::wait_for(10, "the scan a notification starts", || {
        let status = engine_status(&data);
        // The watcher writes its totals after the scan commits: wait for both.
        (status["traces_captured"] == 12 && status["totals"]["traces_new"] == 12).then_some(status)
    });
    // The hook's trigger file wakes it too.
    let scans = status["totals"]["scans"].as_u64().unwrap();
    std::fs::write(data.join("capture-engine.trigger"), "").unwrap();
    crate::support::wait_for(10, "the triggered scan", || {
        (engine_status(&data)["totals"]["scans"].as_u64().unwrap() > scans).then_some(())
    });
    assert_eq!(status["totals"]["traces_new"], 12, "{status:#}");
    assert_eq!(status["totals"]["traces_updated"], 1, "{status:#}");
    assert_eq!(setup.traces()["Thanks, commit it"].final_answer(), Some("Committed as 1a2b3c4."));

    let run = cli(&data, &["engine", "stop"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("stopped"), "{}", run.stdout);
    assert!(!process_alive(pid), "the engine process is gone");
    assert!(!data.join("capture-engine.pid").exists());
    let status = engine_status(&data);
    assert_eq!(status["running"], false);
    assert_eq!(status["traces_captured"], 12);
    assert!(cli(&data, &["engine", "stop"]).stdout.contains("not running"));
}

/// The Capture page and `/api/capture` on the real server over a fresh data dir.
#[test]
fn capture_page_scans_over_the_api_and_lists_sessions_and_traces() {
    use crate::support::{get, http, reply, spawn_app};
    let setup = Setup::new();
    let app = spawn_app(|_| {});

    let empty = get(&app.url("/capture"));
    assert_eq!(empty.status, 200);
    assert!(empty.body.contains("<main>") && empty.body.contains("not running"), "{}", empty.body);
    assert!(empty.body.contains("No trace captured yet") && empty.body.contains("No session captured yet"));
    let status = get(&app.url("/api/capture")).json();
    assert_eq!(status["running"], false, "{status:#}");
    assert_eq!(status["traces_captured"], 0);

    let scanned = reply(http().post(&app.url("/api/capture/scan")).send_json(serde_json::json!({"dir": setup.root})));
    assert_eq!(scanned.status, 200, "{}", scanned.body);
    let report = scanned.json();
    assert_eq!(counts(&report), [4, 2, 11, 0, 2, 8], "{report:#}");

    let status = get(&app.url("/api/capture")).json();
    assert_eq!(status["traces_captured"], 11, "{status:#}");
    assert_eq!(status["sessions"], 2);
    assert_eq!(status["orchestrator"]["threshold"], 50);

    let page = get(&app.url("/capture")).body;
    assert!(page.contains("-home-ana-src-widget") && page.contains("-home-ana-src-legacy"), "{page}");
    assert!(page.contains(SESSION) && page.contains(LEGACY_SESSION));
    assert!(page.contains("<td>main</td>") || page.contains("<td>feature/unicode</td>"), "{page}");
    assert!(page.contains("11 traces captured"), "{page}");
    let links: Vec<&str> = page.split("href=\"/traces/tr_cc_").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    assert_eq!(links.len(), 11, "{page}");
    let trace = get(&app.url(&format!("/traces/tr_cc_{}", links[0])));
    assert_eq!(trace.status, 200);
}

#[test]
fn capture_page_form_scans_and_a_bad_dir_names_the_field() {
    use crate::support::{get, http, reply, spawn_app};
    let setup = Setup::new();
    let app = spawn_app(|_| {});

    let missing = setup.root.join("nowhere");
    let api = reply(http().post(&app.url("/api/capture/scan")).send_json(serde_json::json!({"dir": missing})));
    assert_eq!(api.status, 400, "{}", api.body);
    assert!(api.json()["error"]["message"].as_str().unwrap().starts_with("dir:"), "{}", api.body);
    let api = reply(http().post(&app.url("/api/capture/scan")).send_json(serde_json::json!({})));
    assert_eq!(api.status, 400, "{}", api.body);
    assert!(api.body.contains("dir:"), "{}", api.body);

    let no_projects = setup.root.join("projects");
    let form = reply(http().post(&app.url("/capture/scan")).send_form([("dir", no_projects.to_str().unwrap())]));
    assert_eq!(form.status, 422, "{}", form.body);
    assert!(
        form.body.contains("id=\"dir-error\"") && form.body.contains("has no projects/ directory"),
        "{}",
        form.body
    );

    let form = reply(http().post(&app.url("/capture/scan")).send_form([("dir", setup.root.to_str().unwrap())]));
    assert_eq!(form.status, 303, "{}", form.body);
    let location = form.location.unwrap();
    assert!(location.starts_with("/capture?"), "{location}");
    let page = get(&app.url(&location));
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("11 new traces")
            && page.body.contains("2 malformed lines")
            && page.body.contains("8 redactions"),
        "{}",
        page.body
    );
    assert!(page.body.contains("href=\"/traces/tr_cc_"));
    // Scanning again stores nothing new.
    let again =
        reply(http().post(&app.url("/api/capture/scan")).send_json(serde_json::json!({"dir": setup.root}))).json();
    assert_eq!(again["traces_new"], 0, "{again:#}");
}

/// The Capture page's Start and Stop buttons on the real server: they run `engine run` of the
/// real binary (injected, since `current_exe()` here is the test binary); without a binary the
/// button is hidden and the route answers 409.
#[test]
fn capture_page_starts_and_stops_the_engine() {
    use crate::support::{get, http, reply, spawn_app, spawn_app_with_settings};
    let setup = Setup::new();

    let bare = spawn_app(|_| {});
    let page = get(&bare.url("/capture")).body;
    assert!(!page.contains("id=\"engine-start\"") && page.contains("engine-start-unavailable"), "{page}");
    let refused =
        reply(http().post(&bare.url("/capture/engine/start")).send_form([("dir", setup.root.to_str().unwrap())]));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("understudy engine start"), "{}", refused.body);

    let data = std::sync::Arc::new(std::sync::Mutex::new(PathBuf::new()));
    let seen = std::sync::Arc::clone(&data);
    let app = spawn_app_with_settings(
        move |dir| *seen.lock().unwrap() = dir.to_path_buf(),
        None,
        |s| s.understudy_binary = Some(PathBuf::from(env!("CARGO_BIN_EXE_understudy"))),
    );
    let data = data.lock().unwrap().clone();
    let _guard = EngineGuard(data.clone());
    let page = get(&app.url("/capture")).body;
    assert!(page.contains("id=\"engine-start\"") && page.contains("not running"), "{page}");

    let bad = reply(
        http()
            .post(&app.url("/capture/engine/start"))
            .send_form([("dir", setup.root.join("nowhere").to_str().unwrap())]),
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert!(bad.body.contains("id=\"engine-error\""), "{}", bad.body);

    let started =
        reply(http().post(&app.url("/capture/engine/start")).send_form([("dir", setup.root.to_str().unwrap())]));
    assert_eq!(started.status, 303, "{}", started.body);
    assert_eq!(started.location.as_deref(), Some("/capture"));
    let page = get(&app.url("/capture")).body;
    assert!(page.contains("running (pid") && page.contains("id=\"engine-stop\""), "{page}");
    assert!(page.contains(&format!("<code>{}</code>", setup.root.display())), "{page}");
    let pid = engine_status(&data)["pid"].as_u64().expect("a pid");
    crate::support::wait_for(10, "the first background scan", || {
        (engine_status(&data)["traces_captured"] == 11).then_some(())
    });

    let stopped = reply(http().post(&app.url("/capture/engine/stop")).send_empty());
    assert_eq!(stopped.status, 303, "{}", stopped.body);
    assert_eq!(stopped.location.as_deref(), Some("/capture"));
    assert!(!process_alive(pid), "the engine process is gone");
    let page = get(&app.url("/capture")).body;
    assert!(page.contains("not running") && page.contains("id=\"engine-start\""), "{page}");
    assert_eq!(engine_status(&data)["running"], false);

    // The same through the JSON API.
    let bad = reply(
        http()
            .post(&app.url("/api/capture/engine/start"))
            .send_json(serde_json::json!({"dir": setup.root.join("nowhere")})),
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("dir:"), "{}", bad.body);
    let started =
        reply(http().post(&app.url("/api/capture/engine/start")).send_json(serde_json::json!({"dir": setup.root})));
    assert_eq!(started.status, 200, "{}", started.body);
    let status: serde_json::Value = serde_json::from_str(&started.body).unwrap();
    assert_eq!(status["running"], true, "{status:#}");
    let pid = status["pid"].as_u64().unwrap();
    let stopped = reply(http().post(&app.url("/api/capture/engine/stop")).send_empty());
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stopped.body).unwrap()["running"], false);
    assert!(!process_alive(pid));
}

#[test]
fn capture_page_installs_and_removes_the_hook_keeping_other_settings() {
    let settings_dir = tempfile::tempdir().unwrap();
    let settings = settings_dir.path().join("settings.json");
    let original = serde_json::json!({
        "model": "opus",
        "hooks": {"SessionEnd": [{"hooks": [{"type": "command", "command": "echo bye"}]}], "Stop": [{"hooks": [{"type": "command", "command": "true"}]}]}
    });
    std::fs::write(&settings, serde_json::to_string_pretty(&original).unwrap()).unwrap();
    let path = settings.clone();
    let app = crate::support::spawn_app_with_settings(|_| {}, None, move |s| s.claude_settings = Some(path));
    let agent = crate::support::http();
    let page = crate::support::get(&app.url("/capture"));
    assert!(page.body.contains("id=\"hook-install\""), "install button shown");
    let installed = crate::support::reply(agent.post(&app.url("/capture/hook/install")).send_empty());
    assert_eq!(installed.status, 303, "{}", installed.body);
    let now: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(now["model"], "opus");
    assert_eq!(now["hooks"]["Stop"], original["hooks"]["Stop"]);
    let session_end = now["hooks"]["SessionEnd"].to_string();
    assert!(session_end.contains("echo bye") && session_end.contains("understudy-capture"), "{session_end}");
    let page = crate::support::get(&app.url("/capture"));
    assert!(page.body.contains("id=\"hook-uninstall\"") && page.body.contains(">installed"), "uninstall button shown");
    let removed = crate::support::reply(agent.post(&app.url("/capture/hook/uninstall")).send_empty());
    assert_eq!(removed.status, 303);
    // The same through the JSON API.
    let api = crate::support::reply(agent.post(&app.url("/api/capture/hook/install")).send_empty());
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&api.body).unwrap()["action"], "added");
    let api = crate::support::reply(agent.post(&app.url("/api/capture/hook/uninstall")).send_empty());
    assert_eq!(serde_json::from_str::<serde_json::Value>(&api.body).unwrap()["removed"], 1);
    let after: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(after, original, "uninstall removes exactly what install added");
    assert!(
        std::fs::read_dir(settings_dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("understudy-backup")),
        "a backup is kept"
    );
}

/// Captured sessions train: every scanned trace renders into a dataset, including the turn that
/// calls Read and Grep in parallel (their results written as one turn), with only the model's
/// own output trained.
#[test]
fn captured_sessions_build_into_a_dataset() {
    let setup = Setup::new();
    setup.scan(&[]);
    let parallel = setup
        .traces()
        .into_values()
        .find(|t| t.messages.iter().any(|m| m.tool_calls.len() > 1))
        .expect("the fixture has a turn with parallel calls");
    let run = cli(
        &setup.data,
        &["build-dataset", "--sources", "claude_code", "--val-ratio", "0", "--test-ratio", "0", "--json"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let built = run.json();
    assert_eq!(built["dropped"], 0, "{built:#}");
    let dir = PathBuf::from(built["dir"].as_str().unwrap());
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let examples = understudy::dataset::cache::read(&mut std::io::BufReader::new(
        std::fs::File::open(dir.join("train.tokens")).unwrap(),
    ))
    .unwrap();
    assert_eq!(examples.len(), setup.traces().len(), "every captured trace is an example");
    let example = examples
        .iter()
        .find(|e| tokenizer.decode(&e.ids, false).unwrap().contains(&parallel.prompt))
        .expect("the parallel-call trace is an example");
    let names: Vec<u32> = example
        .ids
        .iter()
        .zip(&example.mask)
        .filter(|(_, m)| **m == understudy::dataset::cache::TOOL_NAME)
        .map(|(id, _)| *id)
        .collect();
    let called: String = parallel.tool_calls().map(|c| c.name.as_str()).collect();
    assert_eq!(tokenizer.decode(&names, false).unwrap(), called);
    let trained: Vec<u32> =
        example.ids.iter().zip(&example.mask).filter(|(_, m)| **m != 0).map(|(id, _)| *id).collect();
    let trained = tokenizer.decode(&trained, false).unwrap();
    assert!(!trained.contains("<tool_response>"), "tool results are not trained: {trained}");
}
