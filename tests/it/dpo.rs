//! `understudy import dpo` (spec 3.2) through the real binary: the three accepted shapes with
//! exact counts and rejected line numbers, dedupe on re-import, the SFT trace each pair yields,
//! `COMMAND_CENTER_DIR` discovery, unreadable files, and resuming an interrupted array import.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{json, Value};
use understudy::jobs::JobRunner;
use understudy::store::Store;

use crate::support::{cli, cli_with_env, error_lines, fixture, reason, wait_for};

fn import_dpo(dir: &Path, name: &str) -> Value {
    let run = cli(dir, &["import", "dpo", fixture(name).to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "import dpo failed: {}", run.stderr);
    run.json()
}

fn counts(report: &Value) -> (u64, u64, u64) {
    (report["imported"].as_u64().unwrap(), report["duplicates"].as_u64().unwrap(), report["rejected"].as_u64().unwrap())
}

fn pair_count(dir: &Path) -> i64 {
    let db = Store::open(dir).unwrap().connect().unwrap();
    // Listing re-validates every stored body against its hash.
    assert_eq!(db.list_pairs(1000, 0).unwrap().len() as i64, db.count_pairs().unwrap());
    db.count_pairs().unwrap()
}

/// Every `dpo_import` trace in full, as `traces show --json` prints it.
fn dpo_traces(dir: &Path) -> Vec<Value> {
    let list = cli(dir, &["traces", "list", "--json", "--source", "dpo_import", "--limit", "1000"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    list.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            assert_eq!(row["source"], "dpo_import");
            let shown = cli(dir, &["traces", "show", row["id"].as_str().unwrap(), "--json"]);
            assert_eq!(shown.code, 0, "{}", shown.stderr);
            shown.json()
        })
        .collect()
}

fn last_assistant_text(messages: &Value) -> String {
    messages
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_else(|| panic!("no assistant text in {messages}"))
        .to_string()
}

/// The chosen answer's final text: the string, or the last assistant message of the list.
fn chosen_text(record: &Value) -> String {
    match &record["chosen"] {
        Value::String(text) => text.clone(),
        list => last_assistant_text(list),
    }
}

fn fixture_records(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    if name.ends_with(".json") {
        serde_json::from_str::<Vec<Value>>(&text).unwrap()
    } else {
        text.lines().map(|line| serde_json::from_str(line).unwrap_or(Value::Null)).collect()
    }
}

/// The imported traces end with exactly the chosen answers of these 1-based records.
fn assert_traces_end_with_chosen(dir: &Path, name: &str, good: &[usize]) {
    let records = fixture_records(name);
    let expected: BTreeSet<String> = good.iter().map(|&n| chosen_text(&records[n - 1])).collect();
    let traces = dpo_traces(dir);
    let answers: BTreeSet<String> = traces.iter().map(|t| last_assistant_text(&t["messages"])).collect();
    assert_eq!(traces.len(), good.len(), "one trace per imported pair");
    assert_eq!(answers, expected);
}

fn trace_with_prompt<'a>(traces: &'a [Value], prompt: &str) -> &'a Value {
    traces.iter().find(|t| t["prompt"] == prompt).unwrap_or_else(|| panic!("no trace with prompt {prompt:?}"))
}

#[test]
fn command_center_jsonl_reports_each_bad_line_and_dedupes() {
    let dir = tempfile::tempdir().unwrap();
    let report = import_dpo(dir.path(), "dpo_pairs.jsonl");
    assert_eq!(counts(&report), (3, 1, 6), "line 9 repeats line 1: {report}");
    assert_eq!(error_lines(&report), vec![3, 5, 6, 7, 10, 11], "blank line 4 is skipped, not rejected");
    assert!(reason(&report, 3).starts_with("invalid JSON"), "{}", reason(&report, 3));
    assert_eq!(reason(&report, 5), "chosen: missing");
    assert!(reason(&report, 6).starts_with("rejected: is identical to chosen"), "{}", reason(&report, 6));
    assert_eq!(reason(&report, 7), "chosen: must be a string or a list of messages, got a number");
    assert_eq!(reason(&report, 10), "pos_reward: must be a number, got a string");
    assert_eq!(reason(&report, 11), "chosen: must not be empty");
    assert_eq!(crate::support::sorted_keys(&report), vec!["duplicates", "errors", "imported", "rejected"]);
    assert_eq!(pair_count(dir.path()), 3);
    assert_traces_end_with_chosen(dir.path(), "dpo_pairs.jsonl", &[1, 2, 8]);

    let traces = dpo_traces(dir.path());
    let debugging = trace_with_prompt(&traces, "The login test fails with KeyError: 'exp'. Why?");
    assert_eq!(debugging["category"], "debugging", "the scenario names the category");
    assert_eq!(debugging["metadata"]["question_id"], "q-002");
    assert_eq!(debugging["metadata"]["scenario"], "debugging");
    assert!(debugging["metadata"]["pair_id"].as_str().unwrap().starts_with("pp_"));
    let messages = debugging["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0], json!({"role": "user", "content": "The login test fails with KeyError: 'exp'. Why?"}));
    let inferred = trace_with_prompt(&traces, "List the slow database queries");
    assert_eq!(inferred["category"], "data_query", "no scenario: the category is inferred");
    assert_eq!(inferred["metadata"]["question_id"], 17);

    let again = import_dpo(dir.path(), "dpo_pairs.jsonl");
    assert_eq!(counts(&again), (0, 4, 6), "re-importing adds nothing: {again}");
    assert_eq!(pair_count(dir.path()), 3);
    assert_eq!(dpo_traces(dir.path()).len(), 3);

    // The human report and the job log name the file with each bad line.
    let run = cli(dir.path(), &["import", "dpo", fixture("dpo_pairs.jsonl").to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with("imported 0, duplicates 4, rejected 6"), "{}", run.stdout);
    assert!(run.stdout.contains("dpo_pairs.jsonl:5: chosen: missing"), "{}", run.stdout);
    let jobs = cli(dir.path(), &["jobs", "list", "--json"]).json();
    let job_id = jobs[0]["id"].as_str().unwrap();
    assert_eq!(jobs[0]["kind"], "import_dpo");
    let shown = cli(dir.path(), &["jobs", "show", job_id, "--json"]).json();
    let logs: Vec<&str> = shown["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert!(logs.iter().any(|m| m.contains("dpo_pairs.jsonl:11: chosen: must not be empty")), "{logs:?}");
}

#[test]
fn continuous_rl_array_file_reports_elements_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let report = import_dpo(dir.path(), "dpo_continuous.json");
    assert_eq!(counts(&report), (3, 0, 1), "{report}");
    assert_eq!(error_lines(&report), vec![3]);
    assert_eq!(reason(&report, 3), "neg_reward: must be a number, got a string");
    assert_eq!(pair_count(dir.path()), 3);
    assert_traces_end_with_chosen(dir.path(), "dpo_continuous.json", &[1, 2, 4]);

    let traces = dpo_traces(dir.path());
    let retry = trace_with_prompt(&traces, "Find where the retry limit is configured");
    assert_eq!(retry["metadata"]["pos_reward"], 0.92);
    assert_eq!(retry["metadata"]["neg_reward"], -0.35);
    assert_eq!(retry["created_at"], "2025-06-01T12:00:00.123456Z", "a naive timestamp is read as UTC");
    let unix = trace_with_prompt(&traces, "Add a test for the empty-input case");
    assert_eq!(unix["created_at"], "2025-06-01T12:05:00Z", "Unix seconds");
    assert_eq!(unix["category"], "test_writing");

    let again = import_dpo(dir.path(), "dpo_continuous.json");
    assert_eq!(counts(&again), (0, 3, 1), "{again}");
    assert_eq!(pair_count(dir.path()), 3);
}

#[test]
fn trl_rows_with_explicit_and_implicit_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let report = import_dpo(dir.path(), "dpo_trl.jsonl");
    assert_eq!(counts(&report), (4, 0, 4), "{report}");
    assert_eq!(error_lines(&report), vec![5, 6, 7, 8]);
    assert!(reason(&report, 5).starts_with("prompt: missing, and chosen and rejected share no leading messages"));
    assert!(reason(&report, 6).starts_with("chosen[0].role: unknown variant `robot`"), "{}", reason(&report, 6));
    assert!(reason(&report, 7).starts_with("prompt: missing; without a prompt"), "{}", reason(&report, 7));
    assert_eq!(reason(&report, 8), "chosen: must not be an empty list of messages");
    assert_eq!(pair_count(dir.path()), 4);
    assert_traces_end_with_chosen(dir.path(), "dpo_trl.jsonl", &[1, 2, 3, 4]);

    let traces = dpo_traces(dir.path());
    let explicit = trace_with_prompt(&traces, "Where is the rate limiter?");
    let roles: Vec<&str> =
        explicit["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, vec!["system", "user", "assistant"], "the message-list prompt comes first, then chosen");

    let implicit = trace_with_prompt(&traces, "Which file sets the log level?");
    assert_eq!(implicit["messages"].as_array().unwrap().len(), 2, "the shared user turn appears once");

    let tools = trace_with_prompt(&traces, "Find the TODOs in src");
    let messages = tools["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[1]["tool_calls"][0]["function"]["name"], "Grep");
    assert_eq!(messages[2]["tool_call_id"], "call_1");
    assert_eq!(tools["tools"][0]["function"]["name"], "Grep");

    let db = Store::open(dir.path()).unwrap().connect().unwrap();
    let stored = db.list_pairs(10, 0).unwrap();
    let pair = stored.iter().find(|p| p.pair.prompt_text() == "Find the TODOs in src").unwrap();
    assert_eq!(pair.trace_id.as_deref(), tools["id"].as_str(), "the pair points at its SFT trace");
    let body = pair.pair.to_json();
    assert_eq!(body["prompt"], json!([{"role": "user", "content": "Find the TODOs in src"}]), "the shared prefix");
    assert_eq!(body["rejected"], json!([{"role": "assistant", "content": "There are probably a few TODOs."}]));

    let again = import_dpo(dir.path(), "dpo_trl.jsonl");
    assert_eq!(counts(&again), (0, 4, 4), "{again}");
}

#[test]
fn command_center_dir_is_found_and_unreadable_files_fail() {
    let dir = tempfile::tempdir().unwrap();
    let command_center = tempfile::tempdir().unwrap();
    let rl = command_center.path().join("backend/rl");
    std::fs::create_dir_all(&rl).unwrap();
    std::fs::copy(fixture("dpo_pairs.jsonl"), rl.join("dpo_pairs.jsonl")).unwrap();

    let found =
        cli_with_env(dir.path(), &["import", "dpo", "--json"], &[("COMMAND_CENTER_DIR", command_center.path())]);
    assert_eq!(found.code, 0, "{}", found.stderr);
    assert_eq!(counts(&found.json()), (3, 1, 6));

    let neither = cli(dir.path(), &["import", "dpo", "--json"]);
    assert_ne!(neither.code, 0);
    assert!(neither.stderr.contains("COMMAND_CENTER_DIR"), "{}", neither.stderr);
    assert_eq!(neither.stderr.trim().lines().count(), 1, "one-line reason: {}", neither.stderr);
    assert!(neither.stdout.is_empty());

    let empty_checkout = tempfile::tempdir().unwrap();
    let absent = cli_with_env(dir.path(), &["import", "dpo"], &[("COMMAND_CENTER_DIR", empty_checkout.path())]);
    assert_ne!(absent.code, 0);
    assert!(absent.stderr.contains("backend/rl/dpo_pairs.jsonl"), "{}", absent.stderr);

    let missing = cli(dir.path(), &["import", "dpo", "/no/such/dpo_pairs.jsonl", "--json"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("/no/such/dpo_pairs.jsonl"), "{}", missing.stderr);
    assert_eq!(missing.stderr.trim().lines().count(), 1, "one-line reason: {}", missing.stderr);
    assert!(missing.stdout.is_empty());

    let a_directory = cli(dir.path(), &["import", "dpo", rl.to_str().unwrap()]);
    assert_ne!(a_directory.code, 0);
    assert!(a_directory.stderr.contains("directory"), "{}", a_directory.stderr);
    assert_eq!(pair_count(dir.path()), 3, "failed imports leave the store alone");
}

/// An array import resumed from its checkpoint skips the elements it already committed.
#[test]
fn interrupted_array_import_resumes_after_committed_elements() {
    let dir = tempfile::tempdir().unwrap();
    let records = fixture_records("dpo_continuous.json");
    let first_two = dir.path().join("first_two.json");
    std::fs::write(&first_two, serde_json::to_string(&records[..2]).unwrap()).unwrap();
    assert_eq!(counts(&cli(dir.path(), &["import", "dpo", first_two.to_str().unwrap(), "--json"]).json()), (2, 0, 0));

    let source = fixture("dpo_continuous.json");
    let file_bytes = std::fs::metadata(&source).unwrap().len();
    let store = Store::open(dir.path()).unwrap();
    let db = store.connect().unwrap();
    let dead_pid = 4_194_000; // above any pid this machine hands out in a test run
    let params = understudy::jobs::JobParams::ImportDpo(understudy::jobs::import_dpo::ImportDpoParams {
        path: source.clone(),
        display_name: None,
    });
    let job = db.insert_job(&params, Some(dead_pid)).unwrap();
    db.save_job_checkpoint(
        &job.id,
        &json!({"offset": 0, "lines": 2, "file_bytes": file_bytes,
                "report": {"imported": 2, "duplicates": 0, "rejected": 0, "errors": []}}),
    )
    .unwrap();
    let runner = JobRunner::start(store.clone(), 1).unwrap();
    runner.shutdown();
    assert_eq!(cli(dir.path(), &["jobs", "show", &job.id, "--json"]).json()["job"]["status"], "interrupted");

    let resumed = cli(dir.path(), &["jobs", "resume", &job.id, "--json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    // Starting over would have counted elements 1 and 2 as duplicates.
    assert_eq!(counts(&resumed.json()), (3, 0, 1), "{}", resumed.stdout);
    assert_eq!(error_lines(&resumed.json()), vec![3]);
    assert_eq!(pair_count(dir.path()), 3);
}

#[test]
fn background_import_runs_on_the_job_runner() {
    let dir = tempfile::tempdir().unwrap();
    let queued =
        cli(dir.path(), &["import", "dpo", fixture("dpo_trl.jsonl").to_str().unwrap(), "--background", "--json"]);
    assert_eq!(queued.code, 0, "{}", queued.stderr);
    let job = queued.json();
    assert_eq!((job["kind"].as_str(), job["status"].as_str()), (Some("import_dpo"), Some("queued")));
    let job_id = job["id"].as_str().unwrap().to_string();

    let store = Store::open(dir.path()).unwrap();
    let runner = JobRunner::start(store.clone(), 1).unwrap();
    let finished = wait_for(20, "the queued import to finish", || {
        let job = store.connect().unwrap().get_job(&job_id).unwrap().unwrap();
        job.status.is_finished().then_some(job)
    });
    runner.shutdown();
    assert_eq!(finished.status.as_str(), "succeeded", "{:?}", finished.error);
    assert_eq!(counts(&finished.result.as_ref().unwrap().to_json()), (4, 0, 4));
    assert_eq!(finished.progress_done, finished.progress_total.unwrap(), "progress ends at the file size");
}
