//! The orchestrator end to end on the tiny preset with a small budget, in a real server's data
//! dir: bad configuration refused by field, "not ready" with the missing count, cycle 1 (SFT →
//! eval → promote → export → auto-deploy to the Ollama stand-in), cycle 2 with GRPO killed with
//! SIGKILL during its SFT and resumed by the next `once` (same cycle, same job, no duplicate),
//! the served champion changing only on promotion, and the page and API showing it all.

use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::deploy::FakeOllama;
use crate::support::{cli, fixture, get, http, reply, spawn_app, wait_for};

fn once(data: &std::path::Path) -> Value {
    let run = cli(data, &["orchestrator", "once", "--json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    run.json()
}

fn import(data: &std::path::Path, name: &str) {
    let run = cli(data, &["import", "traces", fixture(name).to_str().unwrap(), "--json"]);
    assert_eq!(run.json()["imported"], 3, "{}", run.stderr);
}

fn served_champion_version(app: &crate::support::TestApp) -> String {
    let card = get(&app.url("/v1/models/understudy")).json();
    card["version"].as_str().unwrap_or_else(|| panic!("no champion served: {card}")).to_string()
}

#[test]
fn orchestrator_cycles_promote_deploy_and_resume_a_killed_cycle() {
    let app = spawn_app(|_| {});
    let data = app.data_dir().to_path_buf();
    let ollama = FakeOllama::start();

    // Bad configuration: every wrong field named, nothing stored.
    let bad = cli(
        &data,
        &[
            "orchestrator",
            "config",
            "--min-traces",
            "0",
            "--rl-every",
            "0",
            "--rl-phase",
            "ppo2",
            "--eval-suite",
            "nope",
        ],
    );
    assert_ne!(bad.code, 0);
    for flag in ["--min-traces 0", "--rl-every 0", "--rl-phase ppo2", "--eval-suite nope"] {
        assert!(bad.stderr.contains(flag), "{flag} not named: {}", bad.stderr);
    }
    assert_eq!(cli(&data, &["orchestrator", "config", "--json"]).json()["min_traces"], 50);
    let api_bad = reply(http().put(&app.url("/api/orchestrator/config")).send_json(json!({"traces_per_cycle": -1})));
    assert_eq!(api_bad.status, 400, "{}", api_bad.body);
    assert!(api_bad.body.contains("traces_per_cycle"), "{}", api_bad.body);

    let host = ollama.host.clone();
    let configured = cli(
        &data,
        &[
            "orchestrator",
            "config",
            "--min-traces",
            "3",
            "--traces-per-cycle",
            "3",
            "--max-steps",
            "90",
            "--batch-size",
            "3",
            "--max-seq-len",
            "1024",
            "--rl-every",
            "2",
            "--rl-phase",
            "grpo",
            "--rl-steps",
            "2",
            "--rl-max-tokens",
            "24",
            "--eval-limit",
            "2",
            "--eval-max-tokens",
            "32",
            "--auto-deploy",
            "true",
            "--ollama-host",
            &host,
            "--json",
        ],
    );
    assert_eq!(configured.code, 0, "{}", configured.stderr);

    // Too few traces: nothing starts, and it says how many are missing.
    let not_ready = once(&data);
    assert_eq!(not_ready["outcome"], "not_ready");
    assert_eq!(not_ready["readiness"]["missing"], 3);

    // Cycle 1: a champion, exported, deployed to the stand-in.
    import(&data, "overfit.jsonl");
    let first = once(&data);
    assert_eq!(first["outcome"], "ran", "{first:#}");
    let cycle = &first["cycle"];
    assert_eq!((cycle["number"].as_i64(), cycle["status"].as_str()), (Some(1), Some("succeeded")), "{cycle:#}");
    let state = &cycle["state"];
    assert_eq!(state["traces"]["new_by_source"], json!({"import": 3}));
    assert!(state["rl"].is_null(), "cycle 1 runs no RL (every 2nd cycle does)");
    assert_eq!(state["decision"]["promoted"], true, "{state:#}");
    assert_eq!(state["export"]["parity_passed"], true);
    assert_eq!(state["deploy"]["ok"], true, "{state:#}");
    assert!(ollama.model_names().iter().any(|m| m.starts_with("cc-claude-agent")), "{:?}", ollama.model_names());
    let champion = state["candidate"].as_str().unwrap().to_string();
    let first_export = state["export"]["export_id"].as_str().unwrap().to_string();
    assert_eq!(served_champion_version(&app), first_export);

    // Nothing new: no second cycle.
    let again = once(&data);
    assert_eq!(again["outcome"], "not_ready");
    assert_eq!(again["readiness"]["missing"], 3);

    // Cycle 2 (with GRPO), killed during its SFT after a checkpoint.
    import(&data, "overfit_tools.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--data-dir")
        .arg(&data)
        .args(["orchestrator", "once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sft_job = wait_for(300, "a checkpoint of cycle 2's SFT", || {
        let status = cli(&data, &["orchestrator", "status", "--json"]).json();
        let current = &status["current"];
        if current["number"] != 2 || current["stage"] != "sft" {
            return None;
        }
        let job_id = status["current_job"]["id"].as_str()?.to_string();
        let job = cli(&data, &["jobs", "show", &job_id, "--json"]).json();
        (job["job"]["checkpoint"]["step"].as_u64().unwrap_or(0) >= 22).then_some(job_id)
    });
    // A second orchestrator is refused while one runs.
    let second = cli(&data, &["orchestrator", "once"]);
    assert_ne!(second.code, 0);
    assert!(second.stderr.contains("already runs"), "{}", second.stderr);
    child.kill().unwrap();
    child.wait().unwrap();
    let status = cli(&data, &["orchestrator", "status", "--json"]).json();
    assert!(status["running"].is_null(), "the lock died with its process: {status:#}");
    assert_eq!(status["current"]["stage"], "sft");

    let resumed = once(&data);
    let cycle = &resumed["cycle"];
    assert_eq!((cycle["number"].as_i64(), cycle["status"].as_str()), (Some(2), Some("succeeded")), "{cycle:#}");
    let state = &cycle["state"];
    assert_eq!(state["sft"]["job_id"], sft_job.as_str(), "the killed SFT job was resumed, not replaced");
    assert_eq!(state["sft"]["steps"], 90);
    assert_eq!(state["start_model"], champion.as_str(), "cycle 2 warm-starts from the champion");
    assert_eq!(state["rl"]["phase"], "grpo");
    let stages: Vec<&str> = cycle["jobs"].as_array().unwrap().iter().map(|j| j[0].as_str().unwrap()).collect();
    assert_eq!(stages.iter().filter(|s| **s == "sft").count(), 1, "{stages:?}");
    assert_eq!(&stages[..4], ["dataset", "sft", "rl", "eval"], "{stages:?}");
    let decision = &state["decision"];
    assert!(decision["reason"].as_str().is_some_and(|r| !r.is_empty()), "{decision:#}");
    let status = cli(&data, &["orchestrator", "status", "--json"]).json();
    assert_eq!(status["cycles_succeeded"], 2);
    assert_eq!(status["history"].as_array().unwrap().len(), 2, "no duplicate cycle");

    // The served champion changes only on promotion.
    if decision["promoted"] == true {
        assert_eq!(served_champion_version(&app), state["export"]["export_id"].as_str().unwrap());
        assert_eq!(status["champion"]["model_id"], state["candidate"]);
    } else {
        assert_eq!(served_champion_version(&app), first_export);
        assert!(state["export"].is_null() && state["deploy"].is_null(), "{state:#}");
        assert_eq!(status["champion"]["model_id"], champion.as_str());
    }

    // The page and the API show the same.
    let api = get(&app.url("/api/orchestrator")).json();
    assert_eq!(api["cycles_succeeded"], 2);
    let page = get(&app.url("/orchestrator")).body;
    assert!(page.contains("id=\"cycles\"") && page.contains("id=\"champion-chart\""), "{page}");
    assert_eq!(page.matches("class=\"cycle-succeeded\"").count(), 2, "{page}");
    let dashboard = get(&app.url("/")).body;
    assert!(dashboard.contains("cycle 2 succeeded"), "{dashboard}");
    let capture = get(&app.url("/api/capture")).json();
    assert_eq!(capture["orchestrator"], json!({"threshold": 3, "new_traces": 0, "missing": 3}));
}

/// An orchestrator running inside the server (as `serve --orchestrator` starts it) is stopped
/// from the page's panel or the API, and a training-time budget is part of the configuration.
#[test]
fn the_orchestrator_inside_the_server_stops_from_the_api_and_takes_a_time_budget() {
    use understudy::orchestrator::Background;
    let app = spawn_app(|_| {});
    let data = app.data_dir().to_path_buf();
    let background = Background {
        store: understudy::store::Store::open(&data).unwrap(),
        config: understudy::config::Config::new(data.clone()),
        default_ollama_host: "http://127.0.0.1:9".into(),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let thread = background.spawn_loop(stop).unwrap();
    let status = get(&app.url("/api/orchestrator")).json();
    assert_eq!(status["running"]["mode"], "serve", "{status}");
    assert_eq!(status["running"]["pid"], std::process::id());
    let panel = get(&app.url("/orchestrator/panel")).body;
    assert!(panel.contains("orchestrator-stop"), "the panel offers Stop: {panel}");

    let stopped = reply(http().post(&app.url("/api/orchestrator/stop")).send_empty());
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert_eq!(stopped.json()["running"], Value::Null, "{}", stopped.body);
    wait_for(5, "the orchestrator thread to end", || thread.is_finished().then_some(()));
    assert!(!get(&app.url("/orchestrator/panel")).body.contains("orchestrator-stop"));

    let bad = reply(http().put(&app.url("/api/orchestrator/config")).send_json(json!({"max_minutes": -5})));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("max_minutes"), "{}", bad.body);
    let saved = reply(http().put(&app.url("/api/orchestrator/config")).send_json(json!({"max_minutes": 2.5})));
    assert_eq!(saved.status, 200, "{}", saved.body);
    assert_eq!(cli(&data, &["orchestrator", "config", "--json"]).json()["max_minutes"], 2.5);
}
