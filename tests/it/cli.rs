//! The CLI against temp data dirs: imports in all three formats with good and bad lines,
//! dedupe on re-import, bad files, the export/import round trip, and durable jobs.

use std::io::Write;

use serde_json::{json, Value};
use understudy::jobs::JobRunner;
use understudy::store::Store;

use crate::support::{cli, error_lines, fixture, import_fixture, reason};

fn trace_count(dir: &std::path::Path) -> usize {
    let run = cli(dir, &["traces", "list", "--json", "--limit", "100000"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json().as_array().unwrap().len()
}

#[test]
fn canonical_import_reports_each_bad_line_and_dedupes() {
    let dir = tempfile::tempdir().unwrap();
    let report = import_fixture(dir.path(), "canonical_mixed.jsonl", "canonical");
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(report["duplicates"], 1, "line 10 repeats line 1: {report}");
    assert_eq!(report["rejected"], 6);
    assert_eq!(error_lines(&report), vec![3, 4, 5, 6, 8, 9], "blank line 2 is skipped, not rejected");
    assert!(reason(&report, 3).starts_with("invalid JSON"), "{}", reason(&report, 3));
    assert!(reason(&report, 4).starts_with("messages[0].content"), "{}", reason(&report, 4));
    assert!(reason(&report, 5).contains("messages[1].role") && reason(&report, 5).contains("wizard"));
    assert!(reason(&report, 6).contains("messages[2].tool_call_id") && reason(&report, 6).contains("call_9"));
    assert!(reason(&report, 8).starts_with("split:"), "{}", reason(&report, 8));
    assert!(reason(&report, 9).contains("arguments") && reason(&report, 9).contains("not valid JSON"));
    assert_eq!(crate::support::sorted_keys(&report), vec!["duplicates", "errors", "imported", "rejected"]);

    let again = import_fixture(dir.path(), "canonical_mixed.jsonl", "canonical");
    assert_eq!((again["imported"].as_u64(), again["duplicates"].as_u64()), (Some(0), Some(3)), "{again}");
    assert_eq!(trace_count(dir.path()), 2);
}

#[test]
fn openai_and_sharegpt_imports() {
    let dir = tempfile::tempdir().unwrap();
    let report = import_fixture(dir.path(), "openai_mixed.jsonl", "openai");
    assert_eq!((report["imported"].as_u64(), report["rejected"].as_u64()), (Some(2), Some(3)), "{report}");
    assert_eq!(error_lines(&report), vec![2, 4, 6]);
    assert!(reason(&report, 2).contains("must be a JSON object"), "{}", reason(&report, 2));
    assert!(reason(&report, 6).contains("matches no tool call"), "{}", reason(&report, 6));

    let report = import_fixture(dir.path(), "sharegpt_mixed.jsonl", "sharegpt");
    assert_eq!((report["imported"].as_u64(), report["rejected"].as_u64()), (Some(2), Some(3)), "{report}");
    assert_eq!(error_lines(&report), vec![2, 4, 5]);
    assert!(reason(&report, 2).contains("robot"));

    let list = cli(dir.path(), &["traces", "list", "--json", "--source", "import"]).json();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for row in rows {
        let keys = crate::support::sorted_keys(row);
        assert_eq!(keys, vec!["category", "created_at", "id", "n_tool_calls", "prompt", "source", "split"]);
    }
    let parallel = rows.iter().find(|r| r["prompt"] == "Read both files").expect("sharegpt parallel calls imported");
    assert_eq!(parallel["n_tool_calls"], 2);
    let shown = cli(dir.path(), &["traces", "show", parallel["id"].as_str().unwrap(), "--json"]).json();
    let messages = shown["messages"].as_array().unwrap();
    assert_eq!(messages[2]["content"], "print('a')");
    assert_eq!(messages[3]["content"], "print('b')");
    assert_eq!(messages[3]["tool_call_id"], "call_2");
}

#[test]
fn bad_files_give_clear_errors_and_leave_the_store_alone() {
    let dir = tempfile::tempdir().unwrap();
    import_fixture(dir.path(), "canonical_mixed.jsonl", "canonical");
    let before = cli(dir.path(), &["traces", "export"]).stdout;

    let missing = cli(dir.path(), &["import", "traces", "/no/such/file.jsonl", "--json"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("/no/such/file.jsonl"), "{}", missing.stderr);
    assert_eq!(missing.stderr.trim().lines().count(), 1, "one-line reason: {}", missing.stderr);
    assert!(missing.stdout.is_empty());

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let run = cli(dir.path(), &["import", "traces", empty.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.json(), json!({"imported": 0, "duplicates": 0, "rejected": 0, "errors": []}));
    assert!(run.stderr.contains("no records"), "{}", run.stderr);

    let nasty = dir.path().join("nasty.jsonl");
    let mut file = std::fs::File::create(&nasty).unwrap();
    writeln!(file, r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(10 * 1024 * 1024)).unwrap();
    file.write_all(b"{\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9\"}]}\n").unwrap();
    writeln!(file, r#"{{"messages":[{{"role":"user","content":"a good line after the bad ones"}}]}}"#).unwrap();
    drop(file);
    let report = cli(dir.path(), &["import", "traces", nasty.to_str().unwrap(), "--json"]).json();
    assert_eq!(report["imported"], 1, "{report}");
    assert_eq!(error_lines(&report), vec![1, 2]);
    assert!(reason(&report, 1).contains("limit"), "{}", reason(&report, 1));
    assert!(reason(&report, 2).contains("UTF-8"), "{}", reason(&report, 2));

    let after = cli(dir.path(), &["traces", "export"]).stdout;
    assert!(after.starts_with(&before[..before.len() - 1]) || after.contains(before.lines().next().unwrap()));
    for line in before.lines() {
        assert!(after.contains(line), "a stored trace changed");
    }
}

#[test]
fn export_then_import_is_lossless() {
    let first = tempfile::tempdir().unwrap();
    import_fixture(first.path(), "canonical_mixed.jsonl", "canonical");
    import_fixture(first.path(), "openai_mixed.jsonl", "openai");
    import_fixture(first.path(), "sharegpt_mixed.jsonl", "sharegpt");
    let out = first.path().join("export.jsonl");
    let run = cli(first.path(), &["traces", "export", "--format", "canonical", "--out", out.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let exported = std::fs::read_to_string(&out).unwrap();
    assert_eq!(exported.lines().count(), 6);

    let second = tempfile::tempdir().unwrap();
    let report = cli(second.path(), &["import", "traces", out.to_str().unwrap(), "--json"]).json();
    assert_eq!((report["imported"].as_u64(), report["rejected"].as_u64()), (Some(6), Some(0)), "{report}");
    let again = second.path().join("again.jsonl");
    cli(second.path(), &["traces", "export", "--out", again.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&again).unwrap(), exported, "a second round trip is byte-identical");

    // The fixture's fields survive exactly (arguments strings included).
    let original: Value = serde_json::from_str(
        std::fs::read_to_string(fixture("canonical_mixed.jsonl")).unwrap().lines().next().unwrap(),
    )
    .unwrap();
    let stored = cli(second.path(), &["traces", "show", "tr_fixture_1", "--json"]).json();
    assert_eq!(stored, original);

    let openai = cli(second.path(), &["traces", "export", "--format", "openai"]).stdout;
    for line in openai.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert_eq!(crate::support::sorted_keys(&row), vec!["messages", "tools"]);
        for message in row["messages"].as_array().unwrap() {
            for call in message["tool_calls"].as_array().into_iter().flatten() {
                assert!(call["function"]["arguments"].is_string());
            }
        }
    }
}

#[test]
fn filters_and_show() {
    let dir = tempfile::tempdir().unwrap();
    import_fixture(dir.path(), "canonical_mixed.jsonl", "canonical");
    let synthetic = cli(dir.path(), &["traces", "list", "--json", "--source", "synthetic"]).json();
    assert_eq!(synthetic.as_array().unwrap().len(), 1);
    let failed = cli(dir.path(), &["traces", "list", "--json", "--outcome", "failure"]).json();
    assert_eq!(failed[0]["prompt"], "Why does the build fail?");
    let text = cli(dir.path(), &["traces", "list", "--json", "--search", "middleware"]).json();
    assert_eq!(text[0]["id"], "tr_fixture_1");
    let shown = cli(dir.path(), &["traces", "show", "tr_fixture_1"]);
    assert!(shown.stdout.contains("Grep(") && shown.stdout.contains("require_auth"), "{}", shown.stdout);
    let unknown = cli(dir.path(), &["traces", "show", "tr_nope"]);
    assert_ne!(unknown.code, 0);
    assert!(unknown.stderr.contains("tr_nope"));
    let bad_flag = cli(dir.path(), &["traces", "list", "--split", "holdout"]);
    assert_ne!(bad_flag.code, 0);
}

/// A job left running by a dead process is marked interrupted at start-up, and resuming it
/// continues from its checkpoint instead of starting over.
#[test]
fn interrupted_import_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("canonical_mixed.jsonl");
    let text = std::fs::read_to_string(&source).unwrap();
    let first_line_end = text.find('\n').unwrap() as u64 + 1;
    let store = Store::open(dir.path()).unwrap();
    // Line 1 was imported before the "crash".
    let first_only = dir.path().join("first.jsonl");
    std::fs::write(&first_only, &text[..first_line_end as usize]).unwrap();
    assert_eq!(cli(dir.path(), &["import", "traces", first_only.to_str().unwrap(), "--json"]).json()["imported"], 1);

    let db = store.connect().unwrap();
    let params = understudy::jobs::JobParams::ImportTraces(understudy::jobs::import_traces::ImportParams {
        path: source.clone(),
        format: understudy::traces::formats::ImportFormat::Canonical,
        display_name: None,
    });
    let dead_pid = 4_194_000; // above any pid this machine hands out in a test run
    let job = db.insert_job(&params, Some(dead_pid)).unwrap();
    db.save_job_checkpoint(
        &job.id,
        &json!({"offset": first_line_end, "lines": 1, "file_bytes": text.len(),
                "report": {"imported": 1, "duplicates": 0, "rejected": 0, "errors": []}}),
    )
    .unwrap();

    let runner = JobRunner::start(store.clone(), 1).unwrap();
    runner.shutdown();
    let listed = cli(dir.path(), &["jobs", "show", &job.id, "--json"]).json();
    assert_eq!(listed["job"]["status"], "interrupted");

    let resumed = cli(dir.path(), &["jobs", "resume", &job.id, "--json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let report = resumed.json();
    // Restarting would have re-read line 1 and counted it as a duplicate twice (lines 1 and 10).
    assert_eq!(report["imported"], 2, "{report}");
    assert_eq!(report["duplicates"], 1, "{report}");
    assert_eq!(error_lines(&report), vec![3, 4, 5, 6, 8, 9]);
    let finished = cli(dir.path(), &["jobs", "show", &job.id, "--json"]).json();
    assert_eq!(finished["job"]["status"], "succeeded");
    assert_eq!(trace_count(dir.path()), 2);

    let jobs = cli(dir.path(), &["jobs", "list", "--json"]).json();
    assert!(jobs.as_array().unwrap().iter().all(|j| j["status"] == "succeeded"), "{jobs}");
}
