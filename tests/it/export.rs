//! Export through the real binary, proven by outside readers: the PyPI `gguf` reader finds every
//! key with llama.cpp's types and every tensor shape; llama.cpp (PyPI `llama-cpp-python`)
//! tokenizes our rendered prompts to the same ids, generates the same greedy tokens as
//! `understudy generate` on the same file and stops at the end of turn — for a trained tiny model
//! and for SmolLM2-135M. Also: the parity report, the Modelfile goldens, quant refusals.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use understudy::model::chat_template::ChatTemplate;
use understudy::traces::{Message, Role};

use crate::dataset::smollm2_gguf;
use crate::support::{cli, fixture, python};

fn gguf_path(export: &Value, quant: &str) -> PathBuf {
    let file = export["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["format"] == "gguf" && f["quant"] == quant)
        .unwrap_or_else(|| panic!("no {quant} file in {export}"));
    PathBuf::from(file["path"].as_str().unwrap())
}

/// Keys llama.cpp requires, with the GGUF type it checks.
const TYPED_KEYS: [(&str, &str); 16] = [
    ("general.architecture", "STRING"),
    ("general.file_type", "UINT32"),
    ("llama.context_length", "UINT32"),
    ("llama.embedding_length", "UINT32"),
    ("llama.block_count", "UINT32"),
    ("llama.feed_forward_length", "UINT32"),
    ("llama.attention.head_count", "UINT32"),
    ("llama.attention.head_count_kv", "UINT32"),
    ("llama.rope.freq_base", "FLOAT32"),
    ("llama.rope.dimension_count", "UINT32"),
    ("llama.attention.layer_norm_rms_epsilon", "FLOAT32"),
    ("tokenizer.ggml.model", "STRING"),
    ("tokenizer.ggml.pre", "STRING"),
    ("tokenizer.ggml.eos_token_id", "UINT32"),
    ("tokenizer.ggml.add_bos_token", "BOOL"),
    ("tokenizer.chat_template", "STRING"),
];

/// The gguf reader sees llama.cpp's types, the tokenizer arrays and [out, in] shapes as ne.
fn check_with_gguf_reader(path: &Path, hidden: i64, layers: usize, vocab: i64, provenance: &[&str]) {
    let seen = python("gguf_inspect.py", &[path], &Value::Null);
    let fields = &seen["fields"];
    for (key, kind) in TYPED_KEYS {
        assert_eq!(fields[key]["type"], kind, "{key} in {}", path.display());
    }
    assert_eq!(fields["tokenizer.ggml.tokens"]["element"], "STRING");
    assert_eq!(fields["tokenizer.ggml.tokens"]["length"], vocab);
    assert_eq!(fields["tokenizer.ggml.token_type"]["element"], "INT32");
    assert_eq!(fields["tokenizer.ggml.token_type"]["length"], vocab);
    assert!(fields["tokenizer.ggml.merges"]["length"].as_i64().unwrap() > 100);
    assert_eq!(fields["llama.embedding_length"]["value"], hidden);
    for key in provenance {
        assert!(fields[*key]["value"].as_str().is_some_and(|v| !v.is_empty()), "provenance {key} in {fields}");
    }
    let tensors = seen["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 2 + 9 * layers, "token_embd, output_norm and 9 per layer (tied embeddings)");
    let embd = tensors.iter().find(|t| t["name"] == "token_embd.weight").unwrap();
    assert_eq!(embd["shape"], serde_json::json!([hidden, vocab]));
    assert!(tensors
        .iter()
        .filter(|t| t["name"].as_str().unwrap().ends_with("norm.weight"))
        .all(|t| t["type"] == "F32"));
}

/// llama.cpp tokenizes the rendered prompts itself and decodes greedily; `understudy generate`
/// on the same file must give the same tokens, and both stop at the end of turn together.
/// `offer_tools`: the prompts offer the default tools (`generate --tools`).
fn check_with_llama_cpp(
    data_dir: &Path,
    gguf: &Path,
    template: &ChatTemplate,
    prompts: &[(&str, &str)],
    (max_tokens, offer_tools, expect_stop): (usize, bool, bool),
) {
    let tools = if offer_tools { understudy::traces::tools::default_tools() } else { Vec::new() };
    let texts: Vec<String> = prompts
        .iter()
        .map(|(system, user)| {
            template
                .render(&[Message::text(Role::System, *system), Message::text(Role::User, *user)], &tools, true)
                .unwrap()
        })
        .collect();
    let reference =
        python("llama_cpp_chat.py", &[gguf], &serde_json::json!({"prompts": texts, "max_tokens": max_tokens}));
    let loaded = understudy::model::generate::LoadedModel::load_path(gguf, &candle_core::Device::Cpu).unwrap();
    let prompt_ids: Vec<Vec<u32>> =
        (0..prompts.len()).map(|i| serde_json::from_value(reference["prompt_ids"][i].clone()).unwrap()).collect();
    let served = served_greedy(gguf, &prompt_ids, max_tokens);
    for (index, (system, user)) in prompts.iter().enumerate() {
        let ours_prompt: Vec<u32> = loaded.tokenizer.encode(texts[index].as_str(), false).unwrap().get_ids().to_vec();
        let theirs_prompt: Vec<u32> = serde_json::from_value(reference["prompt_ids"][index].clone()).unwrap();
        assert_eq!(ours_prompt, theirs_prompt, "prompt token ids of {user:?} in {}", gguf.display());
        let max_tokens_text = max_tokens.to_string();
        let mut args = vec!["generate", "--model", gguf.to_str().unwrap(), "--system", system, "--prompt", user];
        if offer_tools {
            args.push("--tools");
        }
        args.extend(["--max-tokens", &max_tokens_text, "--json"]);
        let run = cli(data_dir, &args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let ours = run.json();
        let theirs: Vec<u32> = serde_json::from_value(reference["continuations"][index].clone()).unwrap();
        let ours_ids: Vec<u32> = serde_json::from_value(ours["token_ids"].clone()).unwrap();
        assert_eq!(ours_ids, theirs, "greedy tokens of {user:?} in {}", gguf.display());
        let stopped = reference["stopped"][index].as_bool().unwrap();
        assert_eq!(ours["finish_reason"] != "length", stopped, "both stop at the end of turn or neither: {ours}");
        // The serving engine (mistral.rs on this GGUF) decodes the same tokens and stops with them.
        assert_eq!(served[index].0, theirs, "mistral.rs greedy tokens of {user:?} in {}", gguf.display());
        assert_eq!(served[index].1, stopped, "mistral.rs stops at the end of turn with llama.cpp for {user:?}");
        if expect_stop {
            assert!(stopped, "llama.cpp stops at the end-of-turn token for {user:?}");
        }
    }
}

/// Greedy ids and whether it stopped at the end of turn, for each prompt, from the serving
/// engine: the GGUF loaded as the endpoint loads an export (on mistral.rs).
fn served_greedy(gguf: &Path, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<(Vec<u32>, bool)> {
    use understudy::serve::decode::{DecodePool, Event, Finish, Sampling};
    use understudy::serve::registry::{CatalogEntry, ServedModel};
    let entry = CatalogEntry {
        name: "parity".into(),
        version: "parity".into(),
        path: gguf.to_path_buf(),
        created: 0,
        champion: true,
        exported: true,
    };
    let model = std::sync::Arc::new(ServedModel::load(&entry, 1).unwrap());
    assert_eq!(model.runtime.label(), "mistral.rs");
    let engine = DecodePool::start(1, 4);
    prompts
        .iter()
        .map(|ids| {
            let sampling = Sampling {
                max_tokens,
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
                stop: Vec::new(),
                logprobs: None,
                grammar: None,
            };
            let mut events = engine.submit(std::sync::Arc::clone(&model), ids.clone(), sampling).unwrap();
            let mut tokens = Vec::new();
            loop {
                match events.blocking_recv().expect("the engine finishes every request") {
                    Event::Token { id, .. } => tokens.push(id),
                    Event::Text(_) => {}
                    Event::Done { finish, .. } => return (tokens, finish == Finish::Stop),
                    Event::Failed(message) => panic!("{message}"),
                }
            }
        })
        .collect()
}

#[test]
fn a_trained_tiny_model_exports_to_gguf_that_llama_cpp_runs_identically() {
    skip_unless!(crate::support::External::LlamaCpp, crate::support::External::GgufReader);
    let dir = tempfile::tempdir().unwrap();
    let model_id = crate::support::train_tiny_on(dir.path(), "overfit.jsonl");
    let run = cli(
        dir.path(),
        &[
            "export", "--model", &model_id, "--quant", "f32", "--quant", "f16", "--quant", "q8_0", "--quant", "q4_k_m",
            "--name", "cc-tiny", "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let export = run.json();
    let keys = crate::support::sorted_keys(&export);
    for key in ["export_id", "files", "modelfile", "parity"] {
        assert!(keys.iter().any(|k| *k == key), "{key} in {keys:?}");
    }
    assert_eq!(export["parity"]["passed"], true, "{}", export["parity"]);
    let checks: Vec<&str> =
        export["parity"]["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in ["tokenization", "greedy_tokens", "stops_at_end_of_turn", "tool_call", "agreement:q8_0"] {
        assert!(checks.contains(&name), "{name} in {checks:?}");
    }
    // Every file recorded with its real digest and size; no staging leftovers.
    for file in export["files"].as_array().unwrap() {
        let path = Path::new(file["path"].as_str().unwrap());
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(file["bytes"], bytes.len() as u64);
        assert_eq!(file["sha256"].as_str().unwrap(), understudy::export::sha256_file(path).unwrap().0);
    }
    let exports_dir = dir.path().join("artifacts/exports");
    let leftovers: Vec<String> = std::fs::read_dir(&exports_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let export_dir = exports_dir.join(export["export_id"].as_str().unwrap());
    assert!(!std::fs::read_dir(&export_dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp")));
    for name in
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    {
        assert!(export_dir.join("hf").join(name).exists(), "hf/{name}");
    }
    let tokenizer_config: Value =
        serde_json::from_str(&std::fs::read_to_string(export_dir.join("hf/tokenizer_config.json")).unwrap()).unwrap();
    assert!(tokenizer_config["chat_template"].as_str().unwrap().contains("tool_call"));
    assert_eq!(tokenizer_config["eos_token"], "<|im_end|>");
    let generation: Value =
        serde_json::from_str(&std::fs::read_to_string(export_dir.join("hf/generation_config.json")).unwrap()).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(export_dir.join("hf/tokenizer.json")).unwrap();
    assert_eq!(generation["eos_token_id"], serde_json::json!([tokenizer.token_to_id("<|im_end|>").unwrap()]));
    let modelfile = std::fs::read_to_string(export["modelfile"].as_str().unwrap()).unwrap();
    assert!(modelfile.starts_with("FROM ./cc-tiny-q4_k_m.gguf\n"), "{modelfile}");
    assert!(modelfile.contains("PARAMETER stop \"<|im_end|>\""));

    let vocab = tokenizer.get_vocab_size(true) as i64;
    for quant in ["f32", "f16", "q8_0", "q4_k_m"] {
        check_with_gguf_reader(
            &gguf_path(&export, quant),
            256,
            4,
            vocab,
            &["understudy.model_id", "understudy.dataset_id", "understudy.run_id", "understudy.export_id"],
        );
    }
    let template: ChatTemplate =
        serde_json::from_str(&std::fs::read_to_string(export_dir.join("hf/template.json")).unwrap()).unwrap();
    let prompts = [
        ("You are a coding agent. Use the tools.", "Where is the login code?"),
        ("You are a coding agent. Use the tools.", "Show me the README."),
    ];
    for quant in ["f16", "q8_0"] {
        // overfit.jsonl offers no tools, so these prompts are the ones the model learned to answer.
        check_with_llama_cpp(dir.path(), &gguf_path(&export, quant), &template, &prompts, (48, false, true));
    }
    // The exported HF directory is a model `generate` can load as it is.
    let from_hf = cli(
        dir.path(),
        &[
            "generate",
            "--model",
            export_dir.join("hf").to_str().unwrap(),
            "--system",
            prompts[0].0,
            "--prompt",
            prompts[0].1,
            "--json",
        ],
    );
    assert_eq!(from_hf.json()["tool_calls"][0]["name"], "Grep", "{}", from_hf.stdout);
    // Listed in the store.
    let status = cli(dir.path(), &["jobs", "list", "--json"]).json();
    assert!(status.as_array().unwrap().iter().any(|j| j["kind"] == "export" && j["status"] == "succeeded"));
}

#[test]
fn smollm2_exports_to_f16_and_q8_0_that_llama_cpp_runs_identically() {
    skip_unless!(
        crate::support::External::SmolLm2,
        crate::support::External::LlamaCpp,
        crate::support::External::GgufReader
    );
    let dir = tempfile::tempdir().unwrap();
    let source = smollm2_gguf();
    let run = cli(
        dir.path(),
        &[
            "export",
            "--model-path",
            source.to_str().unwrap(),
            "--quant",
            "f16",
            "--quant",
            "q8_0",
            "--name",
            "smollm2",
            "--parity-prompts",
            "1",
            "--parity-max-tokens",
            "6",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let export = run.json();
    assert_eq!(export["parity"]["passed"], true, "{}", export["parity"]);
    let tool_check =
        export["parity"]["checks"].as_array().unwrap().iter().find(|c| c["name"] == "tool_call").unwrap().clone();
    assert_eq!(tool_check["required"], false, "a base model without a training run is not held to tool calls");
    for quant in ["f16", "q8_0"] {
        check_with_gguf_reader(&gguf_path(&export, quant), 576, 30, 49152, &["understudy.export_id"]);
    }
    let template = ChatTemplate::chatml_hermes();
    let prompts = [("You are a helpful assistant.", "What is the capital of France?")];
    check_with_llama_cpp(dir.path(), &gguf_path(&export, "q8_0"), &template, &prompts, (10, true, false));
}

#[test]
fn a_quant_the_shapes_cannot_take_is_refused_naming_the_tensor() {
    skip_unless!(crate::support::External::SmolLm2);
    let dir = tempfile::tempdir().unwrap();
    let source = smollm2_gguf();
    let run = cli(dir.path(), &["export", "--model-path", source.to_str().unwrap(), "--quant", "q4_k_m"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("q4_k_m") && run.stderr.contains("576") && run.stderr.contains("model.embed_tokens.weight"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("q8_0"), "suggests a quant that fits: {}", run.stderr);
    let exports = dir.path().join("artifacts/exports");
    assert!(!exports.exists() || std::fs::read_dir(&exports).unwrap().next().is_none(), "nothing written");
    let bad = cli(dir.path(), &["export", "--model-path", source.to_str().unwrap(), "--quant", "q3"]);
    assert!(bad.stderr.contains("--quant q3"), "{}", bad.stderr);
}

#[test]
fn the_modelfile_templates_match_their_goldens() {
    for (template, golden) in [
        (ChatTemplate::chatml_hermes(), "modelfile_chatml.txt"),
        (ChatTemplate::chatml_compact(), "modelfile_chatml_compact.txt"),
        (ChatTemplate::llama3(), "modelfile_llama3.txt"),
    ] {
        let settings = understudy::export::modelfile::settings(&template, "You are a coding agent.", 2048);
        let text = understudy::export::modelfile::render("model-q4_k_m.gguf", &settings);
        let path = fixture("golden").join(golden);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        assert_eq!(text, std::fs::read_to_string(&path).unwrap(), "{golden} (UPDATE_GOLDEN=1 rewrites it)");
        // Ollama reports tools when the template uses .Tools, and parses calls from the
        // first text inside `if .ToolCalls`.
        assert!(text.contains("{{- if .Tools }}") || text.contains("{{ if .Tools }}"));
        assert!(text.contains("{{- if .ToolCalls }}"));
        for stop in &template.end_of_turn {
            assert!(text.contains(&format!("PARAMETER stop \"{stop}\"")));
        }
    }
}

#[test]
fn an_export_killed_mid_write_leaves_no_partial_file_and_is_cleaned_up() {
    skip_unless!(crate::support::External::SmolLm2);
    let dir = tempfile::tempdir().unwrap();
    let source = smollm2_gguf();
    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "export",
            "--model-path",
            source.to_str().unwrap(),
            "--quant",
            "f32",
            "--quant",
            "f16",
            "--quant",
            "q8_0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let staging = dir.path().join("artifacts/.staging");
    crate::support::wait_for(120, "the export to start writing", || {
        let writing = std::fs::read_dir(&staging)
            .ok()?
            .flatten()
            .any(|e| std::fs::read_dir(e.path()).map(|mut d| d.next().is_some()).unwrap_or(false));
        writing.then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let exports = dir.path().join("artifacts/exports");
    let finished: Vec<_> =
        std::fs::read_dir(&exports).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(finished.is_empty(), "nothing appears under exports/ before it is complete: {finished:?}");
    assert!(std::fs::read_dir(&staging).unwrap().next().is_some(), "the killed export left its staging directory");
    // The next export clears the dead one's staging directory.
    let again = cli(dir.path(), &["export", "--model-path", source.to_str().unwrap(), "--quant", "q4_k_m"]);
    assert_ne!(again.code, 0, "refused: SmolLM2's rows do not fit K-quants");
    let run = cli(
        dir.path(),
        &[
            "export",
            "--model-path",
            source.to_str().unwrap(),
            "--quant",
            "q8_0",
            "--parity-prompts",
            "1",
            "--parity-max-tokens",
            "2",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        std::fs::read_dir(&staging).map(|mut d| d.next().is_none()).unwrap_or(true),
        "staging is empty after a finished export"
    );
}
