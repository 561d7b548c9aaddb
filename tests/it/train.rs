//! Training through the real binary: a tiny model overfits three traces and then reproduces
//! their tool calls with `generate`; a run killed with SIGKILL resumes from its checkpoint and
//! ends with the weights of an uninterrupted run; bad flags are refused before anything runs.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{cli, fixture, wait_for};

fn overfit_dataset(dir: &Path) {
    let run = cli(dir, &["import", "traces", fixture("overfit.jsonl").to_str().unwrap(), "--json"]);
    assert_eq!(run.json()["imported"], 3, "{}", run.stderr);
    let built = cli(dir, &["build-dataset", "--val-ratio", "0", "--test-ratio", "0", "--json"]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    assert_eq!(built.json()["counts"]["train"], 3);
}

#[test]
fn a_tiny_model_overfits_and_reproduces_the_tool_calls() {
    let dir = tempfile::tempdir().unwrap();
    overfit_dataset(dir.path());
    let run = cli(
        dir.path(),
        &[
            "train",
            "--phase",
            "sft",
            "--max-steps",
            "60",
            "--epochs",
            "60",
            "--batch-size",
            "3",
            "--lr",
            "0.003",
            "--warmup-steps",
            "5",
            "--eval-every",
            "100",
            "--checkpoint-every",
            "100",
            "--seed",
            "1",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = run.json();
    let keys = crate::support::sorted_keys(&summary);
    assert_eq!(
        keys,
        vec![
            "checkpoint_dir",
            "final_eval_loss",
            "final_loss",
            "first_loss",
            "model_id",
            "run_id",
            "steps",
            "tokens_per_second"
        ]
    );
    assert_eq!(summary["steps"], 60);
    let (first, last) = (summary["first_loss"].as_f64().unwrap(), summary["final_loss"].as_f64().unwrap());
    assert!(first > 5.0 && last < 0.2, "loss {first} -> {last}");
    let model = summary["model_id"].as_str().unwrap();
    let expectations = [
        ("Where is the login code?", "Grep", serde_json::json!({"pattern": "def login", "path": "src"})),
        ("How many users are in data/users.csv?", "Bash", serde_json::json!({"command": "wc -l data/users.csv"})),
        ("Show me the README.", "Read", serde_json::json!({"file_path": "README.md"})),
    ];
    for (prompt, tool, arguments) in expectations {
        let generated = cli(
            dir.path(),
            &[
                "generate",
                "--model",
                model,
                "--system",
                "You are a coding agent. Use the tools.",
                "--prompt",
                prompt,
                "--max-tokens",
                "60",
                "--json",
            ],
        );
        assert_eq!(generated.code, 0, "{}", generated.stderr);
        let reply = generated.json();
        assert_eq!(reply["finish_reason"], "tool_calls", "{reply}");
        assert_eq!(reply["tool_calls"][0]["name"], tool, "{reply}");
        assert_eq!(reply["tool_calls"][0]["arguments"], arguments, "{reply}");
        assert!(!reply["token_ids"].as_array().unwrap().is_empty());
    }
    let listed = cli(dir.path(), &["jobs", "show", summary["run_id"].as_str().unwrap(), "--json"]).json();
    let metrics = listed["metrics"].as_array().unwrap();
    for name in ["loss", "lr", "grad_norm", "tokens_per_second"] {
        assert_eq!(metrics.iter().filter(|m| m["name"] == name).count(), 60, "{name} recorded every step");
    }
}

fn final_weights(summary: &Value) -> Vec<u8> {
    std::fs::read(Path::new(summary["checkpoint_dir"].as_str().unwrap()).join("model/model.safetensors")).unwrap()
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let args = [
        "train",
        "--phase",
        "sft",
        "--max-steps",
        "24",
        "--epochs",
        "24",
        "--batch-size",
        "2",
        "--checkpoint-every",
        "4",
        "--eval-every",
        "100",
        "--seed",
        "5",
        "--json",
    ];
    let whole = tempfile::tempdir().unwrap();
    overfit_dataset(whole.path());
    let uninterrupted = cli(whole.path(), &args);
    assert_eq!(uninterrupted.code, 0, "{}", uninterrupted.stderr);

    let killed = tempfile::tempdir().unwrap();
    overfit_dataset(killed.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--data-dir")
        .arg(killed.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for a checkpoint past the first, then SIGKILL.
    let run_id = wait_for(120, "a checkpoint", || {
        let jobs = cli(killed.path(), &["jobs", "list", "--json"]).json();
        let job = jobs.as_array().unwrap().iter().find(|j| j["kind"] == "train")?.clone();
        (job["checkpoint"]["step"].as_u64().unwrap_or(0) >= 8).then(|| job["id"].as_str().unwrap().to_string())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let shown = cli(killed.path(), &["jobs", "show", &run_id, "--json"]).json();
    assert_eq!(shown["job"]["status"], "interrupted", "{shown}");
    let resumed = cli(killed.path(), &["train", "--resume", &run_id, "--json"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.json()["steps"], 24);
    assert!(
        final_weights(&resumed.json()) == final_weights(&uninterrupted.json()),
        "resumed weights differ from an uninterrupted run"
    );
}

/// `--max-minutes` stops a run at its time budget (the first step crossing it), with the model
/// saved, before its step budget.
#[test]
fn a_time_budget_stops_sft_before_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    overfit_dataset(dir.path());
    let args =
        ["train", "--phase", "sft", "--max-steps", "5000", "--epochs", "1000", "--max-minutes", "0.01", "--json"];
    let run = cli(dir.path(), &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let outcome = run.json();
    let steps = outcome["steps"].as_u64().unwrap();
    assert!((1..5000).contains(&steps), "{outcome}");
    assert_eq!(outcome["stopped_at_time_budget"], true, "{outcome}");
    let model = outcome["model_id"].as_str().unwrap();
    let listed = cli(dir.path(), &["models", "list", "--json"]).json();
    assert!(listed.as_array().unwrap().iter().any(|m| m["id"] == model), "the model was saved: {listed}");
}

#[test]
fn bad_training_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let no_dataset = cli(dir.path(), &["train", "--phase", "sft"]);
    assert_ne!(no_dataset.code, 0);
    assert!(no_dataset.stderr.contains("build-dataset"), "{}", no_dataset.stderr);
    overfit_dataset(dir.path());
    let bad_lr = cli(dir.path(), &["train", "--phase", "sft", "--lr", "5"]);
    assert_ne!(bad_lr.code, 0);
    assert!(bad_lr.stderr.contains("lr"), "{}", bad_lr.stderr);
    let bad_device = cli(dir.path(), &["train", "--phase", "sft", "--device", "tpu"]);
    assert!(bad_device.stderr.contains("tpu"), "{}", bad_device.stderr);
    let bad_minutes = cli(dir.path(), &["train", "--phase", "sft", "--max-minutes", "0"]);
    assert!(bad_minutes.stderr.contains("--max-minutes"), "{}", bad_minutes.stderr);
    assert!(cli(dir.path(), &["jobs", "list", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["kind"] != "train"));
}

/// A cut that leaves no assistant token trains nothing: the run fails saying so, instead of
/// succeeding with a NaN loss stored as a result no one could read back (which broke
/// `jobs list` for the whole data dir).
#[test]
fn a_run_with_nothing_to_train_within_max_seq_len_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Bootstrapped traces open with a long system prompt: the first 32 tokens hold no reply.
    assert_eq!(cli(dir.path(), &["bootstrap", "--traces", "20", "--seed", "1", "--json"]).code, 0);
    assert_eq!(cli(dir.path(), &["build-dataset", "--json"]).code, 0);
    let run = cli(dir.path(), &["train", "--phase", "sft", "--max-steps", "3", "--max-seq-len", "32", "--json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("raise --max-seq-len"), "{}", run.stderr);
    let jobs = cli(dir.path(), &["jobs", "list", "--json"]);
    assert_eq!(jobs.code, 0, "{}", jobs.stderr);
    let train = jobs.json().as_array().unwrap().iter().find(|j| j["kind"] == "train").cloned().unwrap();
    assert_eq!(train["status"], "failed", "{train}");
    assert!(cli(dir.path(), &["models", "list", "--json"]).json().as_array().unwrap().is_empty());
}

#[test]
fn training_page_starts_a_run_with_live_charts_and_registers_a_model() {
    use crate::support::{get, http, reply, spawn_app};
    let app = spawn_app(overfit_dataset);
    let page = get(&app.url("/training"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Start training"));
    let form = |body: &str| {
        reply(
            http()
                .post(&app.url("/training/start"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(body.as_bytes()),
        )
    };
    let dataset = get(&app.url("/api/datasets")).json()[0]["id"].as_str().unwrap().to_string();
    let bad = form(&format!("dataset={dataset}&phase=sft&epochs=0&max_steps=&lr=5&batch_size=2&grad_accum=1&warmup_steps=1&eval_every=2&checkpoint_every=2&seed=0"));
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("id=\"lr-error\"") && bad.body.contains("id=\"epochs-error\""), "{}", bad.body);
    let good = form(&format!("dataset={dataset}&phase=sft&epochs=4&max_steps=4&lr=0.003&batch_size=2&grad_accum=1&warmup_steps=1&eval_every=2&checkpoint_every=2&seed=0"));
    assert_eq!(good.status, 303, "{}", good.body);
    let job = good.location.unwrap();
    let id = job.trim_start_matches("/jobs/").to_string();
    let detail = wait_for(120, "the run", || {
        let detail = get(&app.url(&format!("/api/jobs/{id}"))).json();
        (detail["job"]["status"] == "succeeded" || detail["job"]["status"] == "failed").then_some(detail)
    });
    assert_eq!(detail["job"]["status"], "succeeded", "{detail}");
    let panel = get(&app.url(&format!("/jobs/{id}/panel")));
    assert!(
        panel.body.contains("<polyline") && panel.body.contains("Loss") && panel.body.contains("eval loss"),
        "{}",
        panel.body
    );
    let models = get(&app.url("/api/models")).json();
    assert_eq!(models[0]["run_id"], id.as_str());
    assert_eq!(models[0]["dataset_id"], dataset.as_str());
    assert!(get(&app.url("/models")).body.contains(models[0]["id"].as_str().unwrap()));
    // A PPO run from that model through the API: its page charts the RL metrics.
    let bad =
        reply(http().post(&app.url("/api/runs")).send_json(serde_json::json!({"phase": "ppo", "rl": {"lam": 2}})));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("lam"), "{}", bad.body);
    let ppo = reply(http().post(&app.url("/api/runs")).send_json(serde_json::json!({
        "phase": "ppo",
        "model": "latest",
        "rl": {"episodes": 2, "episodes_per_step": 1, "max_turns": 1, "max_tokens": 8, "ppo_epochs": 1}
    })));
    assert_eq!(ppo.status, 202, "{}", ppo.body);
    let id = ppo.json()["id"].as_str().unwrap().to_string();
    let detail = wait_for(120, "the PPO run", || {
        let detail = get(&app.url(&format!("/api/jobs/{id}"))).json();
        (detail["job"]["status"] == "succeeded" || detail["job"]["status"] == "failed").then_some(detail)
    });
    assert_eq!(detail["job"]["status"], "succeeded", "{detail}");
    let panel = get(&app.url(&format!("/jobs/{id}/panel"))).body;
    for title in ["Reward", "Validity and tool choice", "KL to the reference", "Value loss", "Clip fraction"] {
        assert!(panel.contains(title), "{title} charted: {panel}");
    }
    assert!(!panel.contains("Zero-variance groups"), "GRPO's chart is not PPO's");
}

#[test]
fn smollm2_from_gguf_answers_sensibly() {
    skip_unless!(crate::support::External::SmolLm2);
    use understudy::model::chat_template::ChatTemplate;
    use understudy::model::generate::{GenerateOptions, LoadedModel};
    use understudy::model::llama::Llama;
    use understudy::model::source::ModelSource;
    use understudy::traces::{Message, Role};
    let gguf = crate::dataset::smollm2_gguf();
    let device = candle_core::Device::Cpu;
    let (config, tensors) = understudy::model::weights::load(&ModelSource::Gguf(gguf.clone()), &device).unwrap();
    assert_eq!(
        (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads),
        (576, 30, 9, 3)
    );
    assert!(config.tie_word_embeddings);
    let model =
        Llama::new(config, candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device)).unwrap();
    let content = understudy::model::tokenizer::read_gguf(&gguf).unwrap();
    let tokenizer = understudy::model::tokenizer::from_gguf(&content).unwrap();
    // SmolLM2's own chat format (ChatML), greedy: a pretrained model with correct weights and
    // RoPE layout answers this; a wrong Q/K permutation produces gibberish.
    let loaded = LoadedModel::new(model, tokenizer.tokenizer, ChatTemplate::chatml_hermes());
    let messages = vec![Message::text(Role::User, "What is the capital of France? Answer in one word.")];
    let reply =
        loaded.generate(&messages, &[], &GenerateOptions { max_tokens: 12, ..GenerateOptions::default() }).unwrap();
    assert!(reply.text.contains("Paris"), "{:?}", reply.text);
    assert_eq!(reply.finish_reason, "stop", "{:?}", reply.text);
}

/// LoRA on a pretrained base (a tiny model trained here, saved as a Hugging Face directory):
/// the adapters train, targeted weights change only through the merge, and every other weight is
/// bit-identical to the base.
#[test]
fn lora_trains_adapters_and_leaves_the_base_untouched() {
    let dir = tempfile::tempdir().unwrap();
    overfit_dataset(dir.path());
    let base = cli(dir.path(), &["train", "--max-steps", "3", "--epochs", "3", "--batch-size", "3", "--json"]).json();
    let base_dir = Path::new(base["checkpoint_dir"].as_str().unwrap()).join("model");
    let base_bytes = std::fs::read(base_dir.join("model.safetensors")).unwrap();
    let built = cli(
        dir.path(),
        &["build-dataset", "--model", base_dir.to_str().unwrap(), "--val-ratio", "0", "--test-ratio", "0", "--json"],
    );
    assert_eq!(built.code, 0, "{}", built.stderr);
    let dataset = built.json()["id"].as_str().unwrap().to_string();
    let run = cli(
        dir.path(),
        &[
            "train",
            "--dataset",
            &dataset,
            "--model",
            base_dir.to_str().unwrap(),
            "--lora-rank",
            "4",
            "--lora-dropout",
            "0.1",
            "--max-steps",
            "30",
            "--epochs",
            "30",
            "--batch-size",
            "3",
            "--lr",
            "0.003",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = run.json();
    let (first, last) = (summary["first_loss"].as_f64().unwrap(), summary["final_loss"].as_f64().unwrap());
    assert!(last < first, "LoRA loss {first} -> {last}");
    assert_eq!(
        std::fs::read(base_dir.join("model.safetensors")).unwrap(),
        base_bytes,
        "the base model file is untouched"
    );
    let out = Path::new(summary["checkpoint_dir"].as_str().unwrap()).join("model");
    let device = candle_core::Device::Cpu;
    let adapters = candle_core::safetensors::load(out.join("adapter.safetensors"), &device).unwrap();
    assert_eq!(adapters.len(), 4 * 4 * 2, "A and B for q/k/v/o in 4 layers");
    let base_tensors = candle_core::safetensors::load(base_dir.join("model.safetensors"), &device).unwrap();
    let merged = candle_core::safetensors::load(out.join("model.safetensors"), &device).unwrap();
    for (name, tensor) in &base_tensors {
        let before = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let after = merged[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let targeted = ["q_proj", "k_proj", "v_proj", "o_proj"].iter().any(|p| name.contains(p));
        if targeted {
            assert_ne!(before, after, "{name} carries the merged adapter");
        } else {
            assert_eq!(before, after, "{name} is bit-identical to the base");
        }
    }
    // The merged model generates.
    let generated = cli(
        dir.path(),
        &[
            "generate",
            "--model",
            summary["model_id"].as_str().unwrap(),
            "--prompt",
            "Show me the README.",
            "--max-tokens",
            "8",
            "--json",
        ],
    );
    assert_eq!(generated.code, 0, "{}", generated.stderr);
}

/// The forward-pass correctness anchor: SmolLM2-135M-Instruct from its GGUF gives the same greedy
/// continuations as llama.cpp (PyPI llama-cpp-python) on the same file, with logits close to it.
#[test]
fn smollm2_matches_llama_cpp() {
    skip_unless!(crate::support::External::SmolLm2, crate::support::External::LlamaCpp);
    use std::io::Write;
    use understudy::model::chat_template::ChatTemplate;
    use understudy::model::generate::{GenerateOptions, LoadedModel};
    use understudy::model::llama::Llama;
    use understudy::model::source::ModelSource;
    use understudy::traces::{Message, Role};
    let gguf = crate::dataset::smollm2_gguf();
    let device = candle_core::Device::Cpu;
    let (config, tensors) = understudy::model::weights::load(&ModelSource::Gguf(gguf.clone()), &device).unwrap();
    let model =
        Llama::new(config, candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &device)).unwrap();
    let tokenizer = understudy::model::tokenizer::from_gguf(&understudy::model::tokenizer::read_gguf(&gguf).unwrap())
        .unwrap()
        .tokenizer;
    let loaded = LoadedModel::new(model, tokenizer, ChatTemplate::chatml_hermes());
    let questions =
        ["What is the capital of France?", "Write a Python function that adds two numbers.", "List three colors."];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            let text = loaded.template.render(&[Message::text(Role::User, *q)], &[], true).unwrap();
            loaded.tokenizer.encode(text.as_str(), false).unwrap().get_ids().to_vec()
        })
        .collect();
    let max_tokens = 12;
    let stop: Vec<u32> = vec![loaded.tokenizer.token_to_id("<|im_end|>").unwrap()];
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/llama_cpp_greedy.py");
    let mut child =
        Command::new("python3").arg(script).arg(&gguf).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            serde_json::json!({"prompts": prompts, "max_tokens": max_tokens, "stop": stop}).to_string().as_bytes(),
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "llama.cpp reference failed (pip install llama-cpp-python; .ci/run does)");
    let reference: Value = serde_json::from_slice(&output.stdout).unwrap();
    for (index, prompt) in prompts.iter().enumerate() {
        let ours = loaded.generate_ids(prompt, &GenerateOptions { max_tokens, ..GenerateOptions::default() }).unwrap();
        let theirs: Vec<u32> = serde_json::from_value(reference["continuations"][index].clone()).unwrap();
        assert_eq!(ours.token_ids, theirs, "greedy continuation of {:?}", questions[index]);
        let input = candle_core::Tensor::from_vec(prompt.clone(), (1, prompt.len()), &device).unwrap();
        let logits = loaded.model.forward_last(&input, None).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        let reference_logits: Vec<f64> = serde_json::from_value(reference["logits"][index].clone()).unwrap();
        let max_diff = logits.iter().zip(&reference_logits).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        eprintln!("{:?}: max |logit diff| vs llama.cpp = {max_diff:.4}", questions[index]);
        assert!(max_diff < 1.0, "logits differ by up to {max_diff}");
    }
}

/// Stopping the server while a run trains stops the run at a step boundary and leaves it
/// `interrupted`, which `train --resume` accepts (resuming itself is covered by the SIGKILL test).
#[test]
fn a_server_shutdown_leaves_a_running_run_interrupted() {
    use crate::support::{get, http, reply, spawn_app};
    let app = spawn_app(overfit_dataset);
    let dataset = get(&app.url("/api/datasets")).json()[0]["id"].as_str().unwrap().to_string();
    let started = reply(
        http()
            .post(&app.url("/api/runs"))
            .send_json(serde_json::json!({"dataset": dataset, "max_steps": 400, "epochs": 400, "batch_size": 1})),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    let id = started.json()["id"].as_str().unwrap().to_string();
    wait_for(60, "the run to make progress", || {
        let job = get(&app.url(&format!("/api/jobs/{id}"))).json();
        (job["job"]["progress_done"].as_u64().unwrap_or(0) >= 2).then_some(())
    });
    app.stop();
    let shown = wait_for(30, "the run to stop", || {
        let shown = cli(app.data_dir(), &["jobs", "show", &id, "--json"]).json();
        (shown["job"]["status"] != "running").then_some(shown)
    });
    assert_eq!(shown["job"]["status"], "interrupted", "{shown}");
    let done = shown["job"]["progress_done"].as_u64().unwrap();
    assert!(done < 400, "stopped early, at step {done}");
}

/// CPU training is a function of its dataset, config and seed, not of the thread count or of
/// how busy the machine is: the same run on 1 and on 3 rayon threads ends with byte-identical
/// weights. (A parallel reduction whose order followed thread timing once made two runs on a
/// busy machine end at different losses.)
#[test]
fn a_seeded_cpu_run_is_identical_on_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    overfit_dataset(dir.path());
    let args = [
        "train",
        "--phase",
        "sft",
        "--max-steps",
        "12",
        "--epochs",
        "12",
        "--batch-size",
        "3",
        "--eval-every",
        "100",
        "--checkpoint-every",
        "100",
        "--seed",
        "3",
        "--json",
    ];
    let run = |threads: &str| {
        let run = crate::support::cli_with_env(dir.path(), &args, &[("RAYON_NUM_THREADS", Path::new(threads))]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let summary = run.json();
        (final_weights(&summary), summary["final_loss"].as_f64().unwrap())
    };
    let (one_weights, one_loss) = run("1");
    let (three_weights, three_loss) = run("3");
    assert_eq!(one_loss.to_bits(), three_loss.to_bits(), "final loss {one_loss} vs {three_loss}");
    assert!(one_weights == three_weights, "weights differ between 1 and 3 threads");
}
