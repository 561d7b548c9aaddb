//! Beyond one machine (spec 7): `handoff` directories against golden files (scripts compile,
//! configs parse, data files hold the dataset's exact tokens and replayable cases), its refusals,
//! `/api/rewards/score` against the in-process reward of the same episode, and `models import`:
//! an export of ours round-trips to identical greedy tokens, a PEFT adapter merges to the
//! expected weights, and bad checkpoints are refused with nothing registered.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use understudy::eval::episode::{Policy, PolicyReply};
use understudy::eval::reward::{reward, RewardWeights};
use understudy::traces::Message;

use crate::support::{cli, fixture, http, reply, spawn_app, train_tiny_on};

/// A data dir with bootstrapped traces and imported pairs, built into a tiny-preset dataset;
/// returns the dataset's id and directory.
fn dataset(dir: &Path) -> (String, PathBuf) {
    let run = cli(dir, &["bootstrap", "--traces", "40", "--seed", "3", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = cli(dir, &["import", "dpo", fixture("dpo_pairs.jsonl").to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = cli(dir, &["build-dataset", "--max-seq-len", "1024", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let built = run.json();
    let id = built["id"].as_str().unwrap_or_else(|| panic!("{built}")).to_string();
    (id, PathBuf::from(built["dir"].as_str().unwrap()))
}

/// A stand-in base directory: a LLaMA config and the dataset's tokenizer (the handoff checks
/// only the architecture, the weights' presence and the vocabulary).
fn fake_base(dir: &Path, dataset_dir: &Path, model_type: &str) -> PathBuf {
    let base = dir.join(format!("base-{model_type}"));
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("config.json"), json!({"model_type": model_type, "hidden_size": 64}).to_string()).unwrap();
    std::fs::write(base.join("model.safetensors"), b"not read").unwrap();
    std::fs::copy(dataset_dir.join("tokenizer.json"), base.join("tokenizer.json")).unwrap();
    base
}

/// The handoff's text files with run-specific values replaced; handoff.json loses the digests
/// of data files (trace ids and times differ per run).
fn normalized(dir: &Path, replacements: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            // The dataset's files are checked against the dataset and the embedded scripts against
            // their sources; the goldens hold the rest.
            if name.starts_with("data/")
                || name.ends_with(".py")
                || ["tokenizer.json", "template.json", "chat_template.jinja"].contains(&name.as_str())
            {
                continue;
            }
            let mut text = std::fs::read_to_string(&path).unwrap();
            if name == "handoff.json" {
                let mut value: Value = serde_json::from_str(&text).unwrap();
                let files = value["files"].as_object_mut().unwrap();
                files.retain(|k, _| {
                    !k.starts_with("data/") && !["README.md", "tokenizer.json", "axolotl.yaml"].contains(&k.as_str())
                });
                for key in ["examples", "pairs", "grpo_cases", "mask_coverage"] {
                    value["dataset"][key] = json!("<count>");
                }
                text = serde_json::to_string_pretty(&value).unwrap();
            }
            for (from, to) in replacements {
                text = text.replace(from, to);
            }
            files.push((name, text));
        }
    }
    files.sort();
    files
}

#[test]
fn handoff_directories_match_golden_files_and_their_scripts_compile() {
    skip_unless!(crate::support::External::PyYaml);
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let (dataset_id, dataset_dir) = dataset(&data);
    let base = fake_base(temp.path(), &dataset_dir, "llama");
    let base_text = std::fs::canonicalize(&base).unwrap().display().to_string();
    let golden_root = fixture("golden/handoff");
    let bless = std::env::var_os("UNDERSTUDY_BLESS").is_some();
    for (phase, engine, gpus, nodes) in
        [("sft", "trl", "1", "1"), ("dpo", "trl", "1", "1"), ("grpo", "trl", "8", "2"), ("sft", "axolotl", "4", "1")]
    {
        let out = temp.path().join(format!("handoff-{phase}-{engine}"));
        let run = cli(
            &data,
            &[
                "handoff",
                "--dataset",
                &dataset_id,
                "--base",
                base.to_str().unwrap(),
                "--phase",
                phase,
                "--engine",
                engine,
                "--gpus",
                gpus,
                "--nodes",
                nodes,
                "--out",
                out.to_str().unwrap(),
                "--json",
            ],
        );
        assert_eq!(run.code, 0, "{phase}/{engine}: {}", run.stderr);
        let report = run.json();
        assert_eq!(report["base"]["checked"], true, "{report}");
        let handoff_id = report["id"].as_str().unwrap().to_string();
        assert!(handoff_id.starts_with("ho_"));

        // Data: the dataset's exact tokens and masks, TRL's conversational rows, replayable cases.
        let stats: Value =
            serde_json::from_str(&std::fs::read_to_string(dataset_dir.join("stats.json")).unwrap()).unwrap();
        let tokens = std::fs::read_to_string(out.join("data/sft_tokens.jsonl")).unwrap();
        let rows: Vec<Value> = tokens.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len() as u64, stats["weighted_train"].as_u64().unwrap());
        let trained: usize = rows
            .iter()
            .map(|r| {
                let ids = r["input_ids"].as_array().unwrap();
                let mask = r["assistant_masks"].as_array().unwrap();
                assert_eq!(ids.len(), mask.len());
                mask.iter().filter(|m| **m == 1).count()
            })
            .sum();
        assert_eq!(trained as u64, stats["tokens_trained"].as_u64().unwrap(), "the masks are Understudy's own");
        assert_eq!(
            std::fs::read(out.join("data/sft.jsonl")).unwrap(),
            std::fs::read(dataset_dir.join("sft.jsonl")).unwrap()
        );
        assert_eq!(
            std::fs::read(out.join("chat_template.jinja")).unwrap(),
            std::fs::read(dataset_dir.join("chat_template.jinja")).unwrap()
        );
        if phase == "grpo" {
            let prompts = std::fs::read_to_string(out.join("data/grpo_prompts.jsonl")).unwrap();
            let first: Value = serde_json::from_str(prompts.lines().next().expect("GRPO cases")).unwrap();
            assert!(first["prompt"].as_str().unwrap().starts_with("<|im_start|>system"), "{first}");
            assert!(first["prompt"].as_str().unwrap().ends_with("<|im_start|>assistant\n"), "{first}");
            assert!(
                first["prompt"].as_str().unwrap().contains("\nGrep(pattern: string"),
                "the tools are rendered (the tiny preset's one line per tool): {first}"
            );
            let case: understudy::eval::suite::EvalCase =
                serde_json::from_str(first["case"].as_str().unwrap()).unwrap();
            case.validate().unwrap();
            assert!(report["cases"].as_u64().unwrap() >= 20, "{report}");
        }

        // Scripts compile, YAML and JSON configs parse.
        let python: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "py"))
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(python.len(), 5, "{python:?}");
        let compiled = Command::new("python3")
            .args(["-m", "py_compile"])
            .args(&python)
            .env("PYTHONPYCACHEPREFIX", temp.path().join("pycache"))
            .output()
            .unwrap();
        assert!(compiled.status.success(), "{}", String::from_utf8_lossy(&compiled.stderr));
        let mut yaml: Vec<String> = std::fs::read_dir(out.join("accelerate"))
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        if engine == "axolotl" {
            yaml.push(out.join("axolotl.yaml").display().to_string());
        }
        let parsed = Command::new("python3")
            .args([
                "-c",
                "import sys, yaml\nfor p in sys.argv[1:]:\n    d = yaml.safe_load(open(p))\n    assert isinstance(d, dict), p\n    print(p, d.get('num_processes', d.get('base_model')))",
            ])
            .args(&yaml)
            .output()
            .unwrap();
        assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
        let processes = (gpus.parse::<u32>().unwrap() * nodes.parse::<u32>().unwrap()).to_string();
        assert!(
            String::from_utf8_lossy(&parsed.stdout).contains(&format!("ddp.yaml {processes}")),
            "{}",
            String::from_utf8_lossy(&parsed.stdout)
        );
        for name in ["deepspeed/zero2.json", "deepspeed/zero3.json", "handoff.json"] {
            let _: Value = serde_json::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap();
        }

        // The scripts are the embedded assets, byte for byte.
        for script in &python {
            let name = Path::new(script).file_name().unwrap();
            let asset = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/handoff/assets").join(name);
            assert_eq!(std::fs::read(script).unwrap(), std::fs::read(&asset).unwrap(), "{script}");
        }

        // Everything else against the golden files.
        let replacements =
            [(handoff_id.as_str(), "<HANDOFF>"), (dataset_id.as_str(), "<DATASET>"), (base_text.as_str(), "<BASE>")];
        let ours = normalized(&out, &replacements);
        let golden = golden_root.join(format!("{phase}-{engine}"));
        if bless {
            let _ = std::fs::remove_dir_all(&golden);
            for (name, text) in &ours {
                let path = golden.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            continue;
        }
        let expected = normalized(&golden, &[]);
        let names = |files: &[(String, String)]| files.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&ours), names(&expected), "{phase}/{engine}: files (UNDERSTUDY_BLESS=1 rewrites the goldens)");
        for ((name, text), (_, golden_text)) in ours.iter().zip(&expected) {
            assert_eq!(text, golden_text, "{phase}/{engine}: {name} differs from the golden file");
        }
    }
}

#[test]
fn handoff_refuses_bad_input_and_writes_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let (dataset_id, dataset_dir) = dataset(&data);
    let out = temp.path().join("out");
    let out_text = out.to_str().unwrap();
    let handoff = |args: &[&str]| {
        let mut all = vec!["handoff", "--out", out_text];
        all.extend_from_slice(args);
        cli(&data, &all)
    };
    let run = handoff(&["--dataset", "ds_nope"]);
    assert!(run.stderr.contains("--dataset ds_nope: no dataset"), "{}", run.stderr);
    let run = handoff(&["--dataset", &dataset_id]);
    assert!(run.stderr.contains("--base: the dataset was built for tiny"), "{}", run.stderr);
    let gpt2 = fake_base(temp.path(), &dataset_dir, "gpt2");
    let run = handoff(&["--dataset", &dataset_id, "--base", gpt2.to_str().unwrap()]);
    assert!(
        run.stderr.contains("model_type \\\"gpt2\\\"") || run.stderr.contains("model_type \"gpt2\""),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(gpt2.to_str().unwrap()), "names the path: {}", run.stderr);
    let other = fake_base(temp.path(), &dataset_dir, "llama");
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(other.join("tokenizer.json")).unwrap()).unwrap();
    tokenizer["model"]["vocab"].as_object_mut().unwrap().insert("zzzz-new".into(), json!(99_999));
    std::fs::write(other.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let run = handoff(&["--dataset", &dataset_id, "--base", other.to_str().unwrap()]);
    assert!(run.stderr.contains("tokenizer.json:") && run.stderr.contains("other text"), "{}", run.stderr);
    let base = fake_base(temp.path(), &dataset_dir, "llama");
    let run =
        handoff(&["--dataset", &dataset_id, "--base", base.to_str().unwrap(), "--phase", "dpo", "--engine", "axolotl"]);
    assert!(run.stderr.contains("--engine: axolotl is generated for --phase sft only"), "{}", run.stderr);
    let run = handoff(&["--dataset", &dataset_id, "--base", base.to_str().unwrap(), "--phase", "ppo"]);
    assert!(run.stderr.contains("--phase ppo"), "{}", run.stderr);
    let run = handoff(&["--dataset", &dataset_id, "--base", "not a/model id!"]);
    assert!(run.stderr.contains("neither a directory nor a Hugging Face model id"), "{}", run.stderr);
    assert!(!out.exists(), "a refused handoff writes nothing");
    // A Hugging Face id not in the local cache is written, marked unchecked.
    let run = handoff(&["--dataset", &dataset_id, "--base", "SomeOrg/some-model", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["base"]["checked"], false);
    // An existing, non-empty --out is never overwritten.
    let run = handoff(&["--dataset", &dataset_id, "--base", base.to_str().unwrap()]);
    assert!(run.stderr.contains("exists and is not empty"), "{}", run.stderr);
}

/// Plays fixed replies, as a model would have.
struct Fixed(Vec<PolicyReply>);

impl Policy for Fixed {
    fn reply(&mut self, _messages: &[Message], _tools: &[Value]) -> Result<PolicyReply, String> {
        if self.0.is_empty() {
            return Err("no more replies".into());
        }
        Ok(self.0.remove(0))
    }
}

#[test]
fn rewards_score_endpoint_matches_the_in_process_reward_of_the_same_episode() {
    let app = spawn_app(|_| {});
    let case = understudy::eval::suite::heldout(10)
        .into_iter()
        .find(|c| c.workspace_seed.is_some() && !c.checks.is_empty())
        .expect("a heldout case with checks");
    let weights = RewardWeights { outcome: 2.0, format: 0.5, correctness: 1.0, alignment: 0.25, length: 0.1 };
    let episodes: Vec<Vec<(Option<&str>, Vec<(&str, Value)>, usize)>> = vec![
        // A right first tool, then an answer.
        vec![
            (None, vec![(case.first_tools[0].as_str(), json!({"pattern": "def ", "path": "."}))], 30),
            (Some("Found it in the code."), vec![], 8),
        ],
        // Two calls in one reply, one of them with arguments its schema refuses; no answer.
        vec![(Some("Looking."), vec![("Glob", json!({"pattern": "**/*.py"})), ("Read", json!({"path": 3}))], 40)],
        // No call at all.
        vec![(Some("I cannot help with that."), vec![], 7)],
    ];
    for (index, episode) in episodes.iter().enumerate() {
        let replies: Vec<PolicyReply> = episode
            .iter()
            .map(|(content, calls, tokens)| PolicyReply {
                content: content.map(str::to_string),
                tool_calls: calls.iter().map(|(n, a)| (n.to_string(), a.clone())).collect(),
                malformed: 0,
                tokens: *tokens,
                finished: true,
            })
            .collect();
        let turns = replies.len();
        let (_, score) = understudy::eval::evaluate_case(&mut Fixed(replies), &case, turns);
        let expected = reward(&score, &weights, 300);
        let messages: Vec<Value> = episode
            .iter()
            .map(|(content, calls, _)| {
                let calls: Vec<Value> = calls
                    .iter()
                    .enumerate()
                    .map(|(i, (n, a))| json!({"id": format!("c{i}"), "type": "function", "function": {"name": n, "arguments": a.to_string()}}))
                    .collect();
                if calls.is_empty() {
                    json!({"role": "assistant", "content": content})
                } else {
                    json!({"role": "assistant", "content": content, "tool_calls": calls})
                }
            })
            .collect();
        let body = json!({
            "case": case,
            "messages": messages,
            "reply_tokens": episode.iter().map(|(_, _, t)| t).collect::<Vec<_>>(),
            "weights": {"outcome": 2.0, "format": 0.5, "correctness": 1.0, "alignment": 0.25, "length": 0.1},
            "token_budget": 300,
        });
        let answer = reply(http().post(&app.url("/api/rewards/score")).send_json(&body));
        assert_eq!(answer.status, 200, "{}", answer.body);
        let answer = answer.json();
        for (name, value) in &expected.components {
            assert_eq!(answer["components"][name].as_f64(), Some(*value), "episode {index}: {name}: {answer}");
        }
        assert_eq!(answer["total"].as_f64(), Some(expected.total), "episode {index}: {answer}");
        assert_eq!(answer["gated"], expected.gated, "episode {index}");
        assert_eq!(answer["score"]["calls"], score.calls, "episode {index}");
    }
    // The same first episode as raw text in the template's format, the case named by suite and id.
    let call = format!(
        "<tool_call>\n{}\n</tool_call>",
        json!({"name": case.first_tools[0], "arguments": {"pattern": "def ", "path": "."}})
    );
    let by_id = json!({"suite": "heldout", "case_id": case.id, "completion": call});
    let answer = reply(http().post(&app.url("/api/rewards/score")).send_json(&by_id));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["components"]["correctness"].as_f64(), Some(1.0), "{}", answer.body);
    // The environment answers the last reply's calls with the sandbox's output.
    let answer = reply(http().post(&app.url("/api/rewards/environment")).send_json(&by_id));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.json();
    assert_eq!(answer["done"], false);
    assert_eq!(answer["tool_messages"].as_array().unwrap().len(), 1, "{answer}");
    assert!(!answer["tool_messages"][0]["content"].as_str().unwrap().is_empty());
    // Bad requests name the field.
    for (body, field) in [
        (json!({"case": case, "completion": "x", "messages": []}), "exactly one of completion or messages"),
        (json!({"completion": "x"}), "either case, or suite and case_id"),
        (json!({"case": case, "completion": "x", "weights": {"speed": 1}}), "unknown component"),
        (json!({"case": case, "completion": "x", "template": "mistral"}), "template:"),
        (json!({"case": case, "messages": [{"role": "user", "content": "hi"}]}), "messages: no assistant message"),
    ] {
        let answer = reply(http().post(&app.url("/api/rewards/score")).send_json(&body));
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert!(answer.body.contains(field), "{field}: {}", answer.body);
    }
    let answer = reply(
        http()
            .post(&app.url("/api/rewards/score"))
            .send_json(json!({"suite": "heldout", "case_id": "nope", "completion": "x"})),
    );
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert!(answer.body.contains("case_id"), "{}", answer.body);
}

fn greedy_tokens(data: &Path, model: &str) -> Vec<Value> {
    let run = cli(
        data,
        &[
            "generate",
            "--model",
            model,
            "--prompt",
            "Where is the login handler?",
            "--tools",
            "--max-tokens",
            "24",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()["token_ids"].as_array().unwrap_or_else(|| panic!("{}", run.stdout)).clone()
}

fn models(data: &Path) -> usize {
    cli(data, &["models", "list", "--json"]).json().as_array().unwrap().len()
}

#[test]
fn models_import_round_trips_an_export_and_merges_a_peft_adapter() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let trained = train_tiny_on(&data, "overfit.jsonl");
    let run = cli(&data, &["export", "--model", &trained, "--quant", "f32", "--parity-prompts", "1", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let hf = PathBuf::from(run.json()["dir"].as_str().unwrap()).join("hf");

    // Our own export comes back as the same model: identical greedy tokens.
    let run = cli(&data, &["models", "import", hf.to_str().unwrap(), "--name", "round-trip", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let imported = run.json();
    assert_eq!(imported["checkpoint"]["kind"], "full");
    let imported_id = imported["id"].as_str().unwrap().to_string();
    assert_eq!(greedy_tokens(&data, &imported_id), greedy_tokens(&data, &trained));

    // A PEFT adapter (as PEFT saves it) merges to W + alpha/r · B A.
    let device = Device::Cpu;
    let base_tensors = candle_core::safetensors::load(hf.join("model.safetensors"), &device).unwrap();
    let q = &base_tensors["model.layers.0.self_attn.q_proj.weight"];
    let (out, inp) = q.dims2().unwrap();
    let r = 2usize;
    let a: Vec<f32> = (0..r * inp).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let b: Vec<f32> = (0..out * r).map(|i| ((i % 5) as f32 - 2.0) * 0.02).collect();
    let adapter = temp.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let tensors: HashMap<String, Tensor> = [
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".to_string(),
            Tensor::from_vec(a.clone(), (r, inp), &device).unwrap(),
        ),
        (
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".to_string(),
            Tensor::from_vec(b.clone(), (out, r), &device).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&tensors, adapter.join("adapter_model.safetensors")).unwrap();
    let adapter_config = json!({"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q_proj"],
        "base_model_name_or_path": hf.display().to_string(), "use_rslora": false, "fan_in_fan_out": false});
    std::fs::write(adapter.join("adapter_config.json"), adapter_config.to_string()).unwrap();
    let run = cli(&data, &["models", "import", adapter.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let merged = run.json();
    assert_eq!(merged["checkpoint"]["kind"], "peft_lora", "{merged}");
    assert_eq!(merged["checkpoint"]["merged"], 1);
    let merged_tensors =
        candle_core::safetensors::load(Path::new(merged["path"].as_str().unwrap()).join("model.safetensors"), &device)
            .unwrap();
    let got: Vec<Vec<f32>> = merged_tensors["model.layers.0.self_attn.q_proj.weight"].to_vec2().unwrap();
    let original: Vec<Vec<f32>> = q.to_vec2().unwrap();
    let scale = 8.0f32 / r as f32;
    let mut worst = 0f32;
    for i in 0..out {
        for j in 0..inp {
            let delta: f32 = (0..r).map(|k| b[i * r + k] * a[k * inp + j]).sum();
            worst = worst.max((got[i][j] - (original[i][j] + scale * delta)).abs());
        }
    }
    assert!(worst < 1e-5, "merged weights off by {worst}");
    let untouched: Vec<Vec<f32>> = merged_tensors["model.layers.0.self_attn.k_proj.weight"].to_vec2().unwrap();
    assert_eq!(untouched, base_tensors["model.layers.0.self_attn.k_proj.weight"].to_vec2::<f32>().unwrap());

    // Refusals name the path and the reason; nothing is registered or left behind.
    let before = models(&data);
    let stored = |data: &Path| std::fs::read_dir(data.join("artifacts/models")).map(|d| d.count()).unwrap_or(0);
    let dirs_before = stored(&data);
    let missing_base = temp.path().join("adapter-no-base");
    std::fs::create_dir_all(&missing_base).unwrap();
    std::fs::copy(adapter.join("adapter_model.safetensors"), missing_base.join("adapter_model.safetensors")).unwrap();
    std::fs::write(
        missing_base.join("adapter_config.json"),
        json!({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "base_model_name_or_path": "/nowhere/base"}).to_string(),
    )
    .unwrap();
    let run = cli(&data, &["models", "import", missing_base.to_str().unwrap()]);
    assert!(run.stderr.contains("adapter_config.json") && run.stderr.contains("/nowhere/base"), "{}", run.stderr);
    let empty = temp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(hf.join("config.json"), empty.join("config.json")).unwrap();
    let run = cli(&data, &["models", "import", empty.to_str().unwrap()]);
    assert!(run.stderr.contains("no weights"), "{}", run.stderr);
    let misfit = temp.path().join("misfit");
    std::fs::create_dir_all(&misfit).unwrap();
    for name in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(hf.join(name), misfit.join(name)).unwrap();
    }
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    config["intermediate_size"] = json!(config["intermediate_size"].as_u64().unwrap() * 2);
    std::fs::write(misfit.join("config.json"), config.to_string()).unwrap();
    let run = cli(&data, &["models", "import", misfit.to_str().unwrap()]);
    assert!(run.stderr.contains("mlp.gate_proj.weight has shape"), "{}", run.stderr);
    config["model_type"] = json!("mistral");
    config["architectures"] = json!(["MistralForCausalLM"]);
    std::fs::write(misfit.join("config.json"), config.to_string()).unwrap();
    let run = cli(&data, &["models", "import", misfit.to_str().unwrap()]);
    assert!(run.stderr.contains("LLaMA-family checkpoints only"), "{}", run.stderr);
    assert_eq!(models(&data), before, "nothing registered");
    assert_eq!(stored(&data), dirs_before, "nothing left in artifacts/models");
}
