//! Reinforcement learning through the real binary: a GRPO run from a trained tiny model rolls
//! out executed episodes, records every reward component per step, and a run killed with
//! SIGKILL resumes to the weights of an uninterrupted one; flags a run cannot use are refused
//! before it starts, naming the flag.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{cli, train_tiny_on, wait_for};

fn grpo_args(model: &str) -> Vec<String> {
    [
        "train",
        "--phase",
        "grpo",
        "--model",
        model,
        "--max-steps",
        "40",
        "--group-size",
        "3",
        "--prompts-per-step",
        "1",
        "--max-turns",
        "2",
        "--max-tokens",
        "24",
        "--lr",
        "0.001",
        "--checkpoint-every",
        "2",
        "--seed",
        "11",
        "--json",
    ]
    .map(String::from)
    .to_vec()
}

fn final_weights(summary: &Value) -> Vec<u8> {
    std::fs::read(Path::new(summary["checkpoint_dir"].as_str().unwrap()).join("model/model.safetensors")).unwrap()
}

#[test]
fn grpo_logs_every_reward_component_and_a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = train_tiny_on(dir.path(), "overfit.jsonl");
    let args = grpo_args(&model);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let whole = cli(dir.path(), &args);
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    let summary = whole.json();
    assert_eq!(summary["steps"], 40);
    assert!(summary["final_reward"].as_f64().is_some(), "{summary}");
    let run_id = summary["run_id"].as_str().unwrap().to_string();
    let shown = cli(dir.path(), &["jobs", "show", &run_id, "--json"]).json();
    let metrics = shown["metrics"].as_array().unwrap();
    for name in [
        "reward",
        "reward_outcome",
        "reward_format",
        "reward_correctness",
        "reward_alignment",
        "reward_length",
        "valid_rate",
        "first_tool_rate",
        "zero_variance_groups",
        "entropy",
        "clip_fraction",
        "rollout_tokens_per_second",
    ] {
        assert_eq!(metrics.iter().filter(|m| m["name"] == name).count(), 40, "{name} recorded every step");
    }
    // The trained model is stored with its parent.
    let models = cli(dir.path(), &["models", "list", "--json"]).json();
    let trained = models.as_array().unwrap().iter().find(|m| m["id"] == summary["model_id"]).unwrap();
    assert_eq!(trained["parent_id"].as_str(), Some(model.as_str()), "{trained}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed = wait_for(300, "a GRPO checkpoint", || {
        let jobs = cli(dir.path(), &["jobs", "list", "--json"]).json();
        let job = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == "train" && j["id"] != run_id.as_str() && j["status"] == "running")?
            .clone();
        (job["checkpoint"]["step"].as_u64().unwrap_or(0) >= 2).then(|| job["id"].as_str().unwrap().to_string())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = cli(dir.path(), &["train", "--resume", &killed, "--json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.json()["steps"], 40);
    assert!(
        final_weights(&resumed.json()) == final_weights(&summary),
        "resumed weights differ from an uninterrupted run"
    );
}

#[test]
fn grpo_refuses_what_it_cannot_run_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let none = cli(dir.path(), &["train", "--phase", "grpo"]);
    assert_ne!(none.code, 0);
    assert!(none.stderr.contains("--model") && none.stderr.contains("SFT first"), "{}", none.stderr);
    for (flags, wanted) in [
        (vec!["--group-size", "1"], "--group-size"),
        (vec!["--reward-weights", "outcome=lots"], "--reward-weights"),
        (vec!["--scale-rewards", "median"], "--scale-rewards"),
        (vec!["--suite", "heldout"], "--suite"),
        (vec!["--suite", "nonexistent"], "--suite"),
    ] {
        let mut args = vec!["train", "--phase", "grpo"];
        args.extend(flags.iter().copied());
        let run = cli(dir.path(), &args);
        assert_ne!(run.code, 0, "{flags:?}");
        assert!(run.stderr.contains(wanted), "{flags:?}: {}", run.stderr);
    }
    assert!(cli(dir.path(), &["jobs", "list", "--json"]).json().as_array().unwrap().is_empty(), "nothing started");
}

#[test]
fn dpo_trains_on_the_datasets_pairs_and_refuses_a_dataset_without_any() {
    let dir = tempfile::tempdir().unwrap();
    let imported =
        cli(dir.path(), &["import", "dpo", crate::support::fixture("dpo_pairs.jsonl").to_str().unwrap(), "--json"]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    // The fixture's three new valid pairs: one step per epoch at batch 4.
    assert_eq!(imported.json()["imported"], 3, "{}", imported.stdout);
    let model = train_tiny_on(dir.path(), "overfit.jsonl");
    let run = cli(
        dir.path(),
        &[
            "train",
            "--phase",
            "dpo",
            "--model",
            &model,
            "--epochs",
            "6",
            "--batch-size",
            "4",
            "--lr",
            "0.001",
            "--seed",
            "2",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = run.json();
    assert_eq!(summary["steps"], 6);
    let (first, last) = (summary["first_loss"].as_f64().unwrap(), summary["final_loss"].as_f64().unwrap());
    // The policy starts as its own reference: the first loss is log 2 exactly.
    assert!((first - std::f64::consts::LN_2).abs() < 1e-4, "first loss {first}");
    assert!(last < first, "the loss fell: {first} -> {last}");
    let shown = cli(dir.path(), &["jobs", "show", summary["run_id"].as_str().unwrap(), "--json"]).json();
    let metrics = shown["metrics"].as_array().unwrap();
    for name in ["loss", "reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected"] {
        assert_eq!(metrics.iter().filter(|m| m["name"] == name).count(), 6, "{name} recorded every step");
    }

    // A dataset without pairs cannot feed DPO.
    let bare = tempfile::tempdir().unwrap();
    let model = train_tiny_on(bare.path(), "overfit.jsonl");
    let refused = cli(bare.path(), &["train", "--phase", "dpo", "--model", &model]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("--dataset") && refused.stderr.contains("no preference pairs"),
        "{}",
        refused.stderr
    );
}
