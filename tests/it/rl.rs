//! Reinforcement learning through the real binary: GRPO and PPO runs from a trained tiny model
//! roll out executed episodes and record every reward component per step, and a run of either
//! killed with SIGKILL resumes to the weights of an uninterrupted one; DPO trains on a dataset's
//! pairs; flags a run cannot use are refused before it starts, naming the flag.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use understudy::store::{Store, TraceFilter};
use understudy::traces::preference::PairText;
use understudy::traces::Role;

use crate::support::{cli, fixture, train_tiny_on, wait_for};

/// A tiny model trained on `rl_traces.jsonl` (episodes in the exact shape rollouts play them:
/// the coding-agent system prompt of one workspace, three offered tools), with `rl_suite.jsonl`
/// imported as `rl`: the same prompts in that workspace, each with an outcome check. At
/// temperature 1 its episodes sometimes call the right tool and sometimes not, so groups differ
/// and the policy gets a signal (a model trained on another prompt shape rolls out garbage that
/// scores alike, and GRPO would never move).
fn tiny_rl_model(data: &Path) -> String {
    let model = train_tiny_on(data, "rl_traces.jsonl");
    let suite = fixture("rl_suite.jsonl");
    let run = cli(data, &["eval", "suites", "import", suite.to_str().unwrap(), "--name", "rl"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    model
}

/// The stored weights of a model.
fn model_weights(data: &Path, id: &str) -> Vec<u8> {
    let models = cli(data, &["models", "list", "--json"]).json();
    let model = models.as_array().unwrap().iter().find(|m| m["id"] == id).unwrap().clone();
    std::fs::read(Path::new(model["path"].as_str().unwrap()).join("model.safetensors")).unwrap()
}

fn rl_args(model: &str, phase: &str, flags: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["train", "--phase", phase, "--model", model, "--suite", "rl"].map(String::from).to_vec();
    args.extend(flags.iter().map(|f| f.to_string()));
    args.extend(
        [
            "--max-turns",
            "2",
            "--max-tokens",
            "48",
            "--lr",
            "0.0001",
            "--checkpoint-every",
            "2",
            "--seed",
            "11",
            "--json",
        ]
        .map(String::from),
    );
    args
}

fn final_weights(summary: &Value) -> Vec<u8> {
    std::fs::read(Path::new(summary["checkpoint_dir"].as_str().unwrap()).join("model/model.safetensors")).unwrap()
}

/// Run `args` to the end, then again killed with SIGKILL after its second checkpoint, resume the
/// killed run and check it ends with the uninterrupted run's weights. Returns the first run's
/// summary.
fn assert_resume_after_kill_is_exact(data: &Path, args: &[String], steps: u64) -> Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let whole = cli(data, &args);
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    let summary = whole.json();
    assert_eq!(summary["steps"], steps);
    let run_id = summary["run_id"].as_str().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--data-dir")
        .arg(data)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed = wait_for(300, "a checkpoint of the second run", || {
        let jobs = cli(data, &["jobs", "list", "--json"]).json();
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
    let resumed = cli(data, &["train", "--resume", &killed, "--json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.json()["steps"], steps);
    assert!(
        final_weights(&resumed.json()) == final_weights(&summary),
        "resumed weights differ from an uninterrupted run"
    );
    summary
}

/// The values `run_id` recorded for the metric `name`, step by step.
fn metric_values(data: &Path, run_id: &str, name: &str) -> Vec<f64> {
    let shown = cli(data, &["jobs", "show", run_id, "--json"]).json();
    shown["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["name"] == name)
        .map(|m| m["value"].as_f64().unwrap())
        .collect()
}

/// Every metric in `names` was recorded once per step of `run_id`.
fn assert_recorded_every_step(data: &Path, run_id: &str, names: &[&str], steps: usize) {
    let shown = cli(data, &["jobs", "show", run_id, "--json"]).json();
    let metrics = shown["metrics"].as_array().unwrap();
    for name in names {
        assert_eq!(metrics.iter().filter(|m| m["name"] == *name).count(), steps, "{name} recorded every step");
    }
}

const REWARD_METRICS: [&str; 10] = [
    "reward",
    "reward_outcome",
    "reward_format",
    "reward_correctness",
    "reward_alignment",
    "reward_length",
    "valid_rate",
    "first_tool_rate",
    "entropy",
    "clip_fraction",
];

#[test]
fn grpo_logs_every_reward_component_mines_pairs_and_a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_rl_model(dir.path());
    let store = Store::open(dir.path()).unwrap();
    let traces_before = store.connect().unwrap().count_traces(&TraceFilter::default()).unwrap();
    let flags = ["--max-steps", "6", "--group-size", "4", "--prompts-per-step", "2"];
    let summary = assert_resume_after_kill_is_exact(dir.path(), &rl_args(&model, "grpo", &flags), 6);
    assert!(summary["final_reward"].as_f64().is_some(), "{summary}");
    assert!(final_weights(&summary) != model_weights(dir.path(), &model), "the policy moved");
    let run_id = summary["run_id"].as_str().unwrap();
    assert_recorded_every_step(dir.path(), run_id, &REWARD_METRICS, 6);
    let per_step = ["zero_variance_groups", "rollout_tokens_per_second", "mined_pairs"];
    assert_recorded_every_step(dir.path(), run_id, &per_step, 6);
    // The trained model is stored with its parent.
    let models = cli(dir.path(), &["models", "list", "--json"]).json();
    let trained = models.as_array().unwrap().iter().find(|m| m["id"] == summary["model_id"]).unwrap();
    assert_eq!(trained["parent_id"].as_str(), Some(model.as_str()), "{trained}");

    // Groups where one episode passed the case's check and another failed it became pairs. The
    // killed and resumed runs sampled the same episodes: their pairs are the first run's, stored once.
    let mined: f64 = metric_values(dir.path(), run_id, "mined_pairs").iter().sum();
    assert!(mined >= 1.0, "some group had a succeeding and a failing episode: {mined}");
    let db = store.connect().unwrap();
    let pairs = db.list_pairs(1000, 0).unwrap();
    assert!(!pairs.is_empty() && pairs.len() as f64 <= mined, "{} stored, {mined} mined", pairs.len());
    for stored in &pairs {
        let pair = &stored.pair;
        assert_eq!(stored.trace_id, None, "a mined pair yields no SFT trace");
        assert_eq!(pair.metadata["mined"]["origin"], "grpo");
        assert!(["r1", "r2", "r3"].contains(&pair.metadata["mined"]["case"].as_str().unwrap()), "{:?}", pair.metadata);
        let (PairText::Messages(prompt), PairText::Messages(chosen), PairText::Messages(rejected)) =
            (&pair.prompt, &pair.chosen, &pair.rejected)
        else {
            panic!("mined pairs are message lists")
        };
        assert!(prompt.len() >= 2, "system and user at least");
        // One reply each, the model's own, and they differ.
        assert_eq!((chosen.len(), rejected.len()), (1, 1));
        assert_eq!((chosen[0].role, rejected[0].role), (Role::Assistant, Role::Assistant));
        assert_ne!(chosen[0], rejected[0]);
    }
    assert_eq!(db.count_traces(&TraceFilter::default()).unwrap(), traces_before, "no trace was added");

    // A dataset built now carries them for DPO.
    let built = cli(dir.path(), &["build-dataset", "--json"]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    let dataset = built.json()["id"].as_str().unwrap().to_string();
    let shown = cli(dir.path(), &["datasets", "show", &dataset, "--json"]).json();
    let stats = &shown["stats"]["pairs"];
    let total = stats["train"].as_u64().unwrap() + stats["val"].as_u64().unwrap() + stats["test"].as_u64().unwrap();
    assert_eq!(total, pairs.len() as u64, "{stats}");
}

#[test]
fn ppo_runs_the_seeds_command_logs_its_losses_and_a_killed_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_rl_model(dir.path());
    // The seed's `train --phase ppo --episodes N`: 12 episodes, 2 per step.
    let flags = ["--episodes", "12", "--episodes-per-step", "2", "--ppo-epochs", "2", "--kl-target", "3"];
    let summary = assert_resume_after_kill_is_exact(dir.path(), &rl_args(&model, "ppo", &flags), 6);
    assert!(final_weights(&summary) != model_weights(dir.path(), &model), "the policy moved");
    let run_id = summary["run_id"].as_str().unwrap();
    assert_recorded_every_step(dir.path(), run_id, &REWARD_METRICS, 6);
    assert_recorded_every_step(dir.path(), run_id, &["value_loss", "policy_loss", "kl", "kl_coef"], 6);
    let coefs = metric_values(dir.path(), run_id, "kl_coef");
    assert!(coefs.iter().any(|c| (c - 0.05).abs() > 1e-9), "the adaptive controller moved the coefficient: {coefs:?}");
    let models = cli(dir.path(), &["models", "list", "--json"]).json();
    let trained = models.as_array().unwrap().iter().find(|m| m["id"] == summary["model_id"]).unwrap();
    assert_eq!(trained["parent_id"].as_str(), Some(model.as_str()), "{trained}");
    // The value head is the trainer's, not the model's: the stored model has the policy's tensors only.
    let weights = final_weights(&summary);
    assert!(!weights.windows(10).any(|w| w == b"value_head"), "no value head in the trained model");
}

#[test]
fn rollout_phases_refuse_what_they_cannot_run_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    for phase in ["grpo", "ppo"] {
        let none = cli(dir.path(), &["train", "--phase", phase]);
        assert_ne!(none.code, 0);
        assert!(none.stderr.contains("--model") && none.stderr.contains("SFT first"), "{}", none.stderr);
    }
    for (phase, flags, wanted) in [
        ("grpo", vec!["--group-size", "1"], "--group-size"),
        ("grpo", vec!["--reward-weights", "outcome=lots"], "--reward-weights"),
        ("grpo", vec!["--scale-rewards", "median"], "--scale-rewards"),
        ("grpo", vec!["--suite", "heldout"], "--suite"),
        ("grpo", vec!["--suite", "nonexistent"], "--suite"),
        ("ppo", vec!["--suite", "heldout"], "--suite"),
        ("ppo", vec!["--reward-weights", "format=x"], "--reward-weights"),
        ("ppo", vec!["--episodes", "0"], "--episodes"),
        ("ppo", vec!["--lam", "1.5"], "--lam"),
        ("ppo", vec!["--mini-batches", "99"], "--mini-batches"),
        ("ppo", vec!["--kl-target", "0"], "--kl-target"),
    ] {
        let mut args = vec!["train", "--phase", phase];
        args.extend(flags.iter().copied());
        let run = cli(dir.path(), &args);
        assert_ne!(run.code, 0, "{flags:?}");
        assert!(run.stderr.contains(wanted), "{phase} {flags:?}: {}", run.stderr);
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
