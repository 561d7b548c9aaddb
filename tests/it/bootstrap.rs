//! Bootstrap through the real binary and server: traces are true (replaying their calls
//! reproduces every result), reproducible across data dirs, diverse, successful; templates can
//! be exported, changed and re-imported, and bad templates are refused with their location.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use understudy::bootstrap::generator::replay;
use understudy::sandbox::Workspace;
use understudy::traces::formats::{parse_record, ImportFormat};
use understudy::traces::{Role, Trace};

use crate::support::{cli, get, http, reply, spawn_app, wait_for};

fn exported(dir: &std::path::Path) -> Vec<Trace> {
    let run = cli(dir, &["traces", "export"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout.lines().map(|l| parse_record(ImportFormat::Canonical, l).unwrap()).collect()
}

#[test]
fn five_hundred_true_diverse_reproducible_traces() {
    let first = tempfile::tempdir().unwrap();
    let run = cli(first.path(), &["bootstrap", "--traces", "500", "--seed", "11", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["synthetic"], 500, "{report}");
    assert_eq!(report["total_traces"], 500);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["by_category"].as_object().unwrap().len(), 10);
    let keys = crate::support::sorted_keys(&report);
    assert_eq!(keys, vec!["by_category", "by_tool", "duplicates", "imported", "seconds", "synthetic", "total_traces"]);

    let traces = exported(first.path());
    assert_eq!(traces.len(), 500);
    let mut prompts = BTreeSet::new();
    let mut arguments = BTreeSet::new();
    let mut orders: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for trace in &traces {
        assert_eq!(trace.outcome.status.as_str(), "success", "{}: {:?}", trace.category, trace.outcome.checks);
        assert!(!trace.outcome.checks.is_empty());
        assert!(trace.tools.len() >= 6, "the default tools are listed");
        assert!(trace.messages[0].content.as_deref().unwrap().contains("Grep"), "the system prompt lists the tools");
        prompts.insert(trace.prompt.clone());
        // Replaying the calls against a fresh workspace from the same seed gives the same results.
        let recorded: Vec<&str> =
            trace.messages.iter().filter(|m| m.role == Role::Tool).map(|m| m.content.as_deref().unwrap()).collect();
        let replayed: Vec<String> =
            replay(trace).expect("workspace seed recorded").into_iter().map(|o| o.content).collect();
        assert_eq!(recorded, replayed, "replay of {}", trace.id);
        let workspace = Workspace::generate(trace.metadata["workspace_seed"].as_u64().unwrap());
        for (call, result) in trace.tool_calls().zip(&recorded) {
            arguments.insert(call.arguments.clone());
            assert!(!result.contains("Mock output"));
            let args = call.arguments_value();
            if call.name == "Grep" && args["output_mode"] == "content" && *result != "No matches found" {
                for line in result.lines() {
                    let mut parts = line.splitn(3, ':');
                    let (file, number, text) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
                    let n: usize = number.parse().unwrap();
                    let original = workspace.files.get(file).and_then(|c| c.lines().nth(n - 1));
                    assert!(original.is_some(), "grep result {line} names a real file and line");
                    let _ = text;
                }
            }
        }
        let answer = trace.final_answer().expect("ends with an answer");
        assert!(
            !answer.contains('{') || answer.contains("{{") || answer.contains("f\"%{term}%\""),
            "unfilled slot in {answer}"
        );
        if trace.metadata["template"] == "deployment" && trace.metadata["scenario"] == "docker_port" {
            let order: Vec<String> = trace.tool_calls().map(|c| c.name.clone() + &c.arguments).take(6).collect();
            orders.entry("docker".into()).or_default().insert(order);
        }
    }
    assert!(prompts.len() >= 350, "{} distinct prompts", prompts.len());
    assert!(arguments.len() >= 450, "{} distinct argument values", arguments.len());
    assert!(orders.values().all(|o| o.len() > 3), "independent steps are reordered: {orders:?}");
    let explorations: BTreeSet<&str> = traces.iter().map(|t| t.metadata["exploration"].as_str().unwrap()).collect();
    assert_eq!(explorations.len(), 4, "{explorations:?}");

    // Same seed in another data dir: the same traces (ids and times aside).
    let second = tempfile::tempdir().unwrap();
    assert_eq!(
        cli(second.path(), &["bootstrap", "--traces", "500", "--seed", "11", "--json"]).json()["synthetic"],
        500
    );
    let hashes = |traces: &[Trace]| traces.iter().map(|t| t.content_hash.clone()).collect::<BTreeSet<_>>();
    assert_eq!(hashes(&traces), hashes(&exported(second.path())));
    // Again in the first: all duplicates.
    let again = cli(first.path(), &["bootstrap", "--traces", "500", "--seed", "11", "--json"]).json();
    assert_eq!((again["synthetic"].as_u64(), again["duplicates"].as_u64()), (Some(0), Some(500)));
    // A different seed: different traces.
    let other = cli(first.path(), &["bootstrap", "--traces", "50", "--seed", "12", "--json"]).json();
    assert!(other["synthetic"].as_u64().unwrap() >= 48, "{other}");
}

#[test]
fn templates_export_edit_and_reimport() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("templates.json");
    assert_eq!(cli(dir.path(), &["templates", "export", "--out", file.to_str().unwrap()]).code, 0);
    let mut templates: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(templates.len(), 10);
    let search = templates.iter_mut().find(|t| t["name"] == "code_search").unwrap();
    search["prompts"] = serde_json::json!(["Zebra question: where is {concept}?"]);
    std::fs::write(&file, serde_json::to_string(&templates).unwrap()).unwrap();
    let run = cli(
        dir.path(),
        &[
            "bootstrap",
            "--traces",
            "5",
            "--seed",
            "3",
            "--templates",
            file.to_str().unwrap(),
            "--template",
            "code_search",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list = cli(dir.path(), &["traces", "list", "--json"]).json();
    assert!(
        list.as_array().unwrap().iter().all(|t| t["prompt"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("zebra question")),
        "{list}"
    );
    let listed = cli(dir.path(), &["templates", "list", "--json"]).json();
    assert!(listed.as_array().unwrap().iter().all(|t| t["origin"] == "custom"));

    // A broken template is refused with its location, and nothing is stored.
    templates[0]["scenarios"][0]["answers"] = serde_json::json!(["See {no_such_slot}."]);
    std::fs::write(&file, serde_json::to_string(&templates).unwrap()).unwrap();
    let before = cli(dir.path(), &["traces", "list", "--json"]).json().as_array().unwrap().len();
    let refused = cli(dir.path(), &["bootstrap", "--traces", "5", "--templates", file.to_str().unwrap()]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("answers[0]") && refused.stderr.contains("{no_such_slot}"), "{}", refused.stderr);
    assert_eq!(cli(dir.path(), &["traces", "list", "--json"]).json().as_array().unwrap().len(), before);
}

#[test]
fn benchmark_prints_numbers() {
    let run = cli(std::path::Path::new("/nonexistent-unused"), &["bench", "bootstrap", "--traces", "300"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let figures = run.json();
    assert_eq!(figures["stored"], 300);
    assert!(figures["traces_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn bootstrap_page_generates_edits_and_previews() {
    let app = spawn_app(|_| {});
    let page = get(&app.url("/bootstrap"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("code_search") && page.body.contains("data_query"));

    let form = |body: &str| {
        reply(
            http()
                .post(&app.url("/bootstrap/generate"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(body.as_bytes()),
        )
    };
    let bad = form("traces=lots&seed=-4&template=");
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("id=\"traces-error\"") && bad.body.contains("id=\"seed-error\""));
    let good = form("traces=40&seed=5&template=debugging");
    assert_eq!(good.status, 303);
    let job_id = good.location.unwrap().trim_start_matches("/jobs/").to_string();
    let detail = wait_for(60, "bootstrap job", || {
        let detail = get(&app.url(&format!("/api/jobs/{job_id}"))).json();
        (detail["job"]["status"] == "succeeded").then_some(detail)
    });
    assert_eq!(detail["job"]["result"]["synthetic"], 40);
    assert_eq!(detail["job"]["result"]["by_category"]["debugging"], 40);
    assert_eq!(get(&app.url("/api/traces?category=debugging")).json()["total"], 40);

    let editor = get(&app.url("/bootstrap/templates/debugging"));
    assert!(
        editor.body.contains("&quot;name&quot;") || editor.body.contains("&#34;name&#34;"),
        "editor shows the JSON"
    );
    let save = |body: &str| {
        let encoded = serde_urlencoded::to_string([("body", body)]).unwrap();
        reply(
            http()
                .post(&app.url("/bootstrap/templates/debugging"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(encoded.as_bytes()),
        )
    };
    let broken = save("{\"name\": \"debugging\", \"scenarios\": []}");
    assert_eq!(broken.status, 422);
    assert!(broken.body.contains("id=\"body-error\"") && broken.body.contains("scenarios"), "{}", broken.body);
    let mut template = get(&app.url("/api/templates/debugging")).json();
    template["description"] = Value::String("Edited in the browser".into());
    assert_eq!(save(&template.to_string()).status, 303);
    let listed = get(&app.url("/api/templates")).json();
    let edited = listed.as_array().unwrap().iter().find(|t| t["name"] == "debugging").unwrap();
    assert_eq!(
        (edited["origin"].as_str(), edited["description"].as_str()),
        (Some("custom"), Some("Edited in the browser"))
    );

    let preview = get(&app.url("/bootstrap/preview?template=data_query&seed=9"));
    assert_eq!(preview.status, 200);
    assert!(preview.body.contains("Bash") && preview.body.contains("passed"));
    let api = reply(http().post(&app.url("/api/bootstrap")).send_json(serde_json::json!({"traces": 0})));
    assert_eq!(api.status, 400);
}

#[test]
fn bootstrap_imports_command_center_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = crate::support::fixture("dpo_pairs.jsonl");
    let run =
        cli(dir.path(), &["bootstrap", "--traces", "20", "--seed", "1", "--dpo", pairs.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["synthetic"], 20);
    assert_eq!(report["imported"], 3);
    assert_eq!(report["total_traces"], 23, "each pair also yields an SFT trace: {report}");
    assert!(run.stderr.contains("dpo_pairs.jsonl:3"), "bad lines are named with file and line: {}", run.stderr);
}
