//! The OpenAI-compatible endpoint with the official Python client (PyPI `openai`) against the
//! real server serving a tiny model trained to call tools: models list, non-streamed and
//! streamed tool calls that reassemble identically, a follow-up turn with the tool result,
//! forced tool choices, legacy completions, error shapes; plus raw SSE framing, 401 without the
//! key, 429 when the queue is full, /metrics, and hot-swap to a newer export.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{cli, fixture};

/// A data dir with a tiny model trained on the three tool traces, exported (q8_0).
pub fn served_model_dir(dir: &Path) {
    let run = cli(dir, &["import", "traces", fixture("overfit_tools.jsonl").to_str().unwrap(), "--json"]);
    assert_eq!(run.json()["imported"], 3, "{}", run.stderr);
    let built = cli(dir, &["build-dataset", "--val-ratio", "0", "--test-ratio", "0", "--json"]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    let run = cli(dir, &["train", "--phase", "sft", "--max-steps", "60", "--epochs", "60", "--batch-size", "3", "--lr", "0.003", "--warmup-steps", "5", "--eval-every", "100", "--checkpoint-every", "100", "--seed", "1", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let export = cli(dir, &["export", "--quant", "q8_0", "--name", "cc-tiny", "--json"]);
    assert_eq!(export.code, 0, "{}\n{}", export.stdout, export.stderr);
}

fn tools_file(dir: &Path) -> std::path::PathBuf {
    let line = std::fs::read_to_string(fixture("overfit_tools.jsonl")).unwrap();
    let first: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let path = dir.join("tools.json");
    std::fs::write(&path, first["tools"].to_string()).unwrap();
    path
}

#[test]
fn the_official_openai_client_gets_tool_calls_streamed_and_whole() {
    let app = crate::support::spawn_app(served_model_dir);
    let tools = tools_file(app.data_dir());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/openai_client.py");
    let output = Command::new("python3").arg(script).arg(&app.base).arg(&tools).output().unwrap();
    assert!(output.status.success(), "openai client script failed (pip install openai; .ci/run does): {}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();

    assert_eq!(out["models"], serde_json::json!(["cc-tiny"]));
    let whole = &out["non_stream"];
    assert_eq!(whole["finish_reason"], "tool_calls", "{out}");
    assert_eq!(whole["content"], Value::Null);
    assert_eq!(whole["tool_calls"][0]["name"], "Grep");
    assert_eq!(whole["tool_calls"][0]["arguments"], serde_json::json!({"pattern": "def login", "path": "src"}));
    assert_eq!(whole["tool_calls"][0]["type"], "function");
    assert!(whole["tool_calls"][0]["id"].as_str().unwrap().len() >= 9);
    assert!(whole["system_fingerprint"].as_str().unwrap().starts_with("exp_"), "the response names the model version");
    assert!(whole["usage"]["prompt_tokens"].as_u64().unwrap() > 20);

    let streamed = &out["stream"];
    assert_eq!(streamed["roles"], serde_json::json!(["assistant"]), "role once");
    assert_eq!(streamed["finishes"], serde_json::json!(["tool_calls"]), "one finish reason");
    assert_eq!(streamed["ids"], 1, "the call id is streamed once");
    assert_eq!(streamed["names"], serde_json::json!(["Grep"]));
    assert_eq!(streamed["tool_calls"], serde_json::json!([{"name": "Grep", "arguments": whole["tool_calls"][0]["arguments"]}]), "streamed deltas reassemble to the whole reply");
    assert_eq!(streamed["content"], whole["content"]);
    assert_eq!(streamed["usage_chunks"], 1);
    assert_eq!(streamed["distinct_chunk_ids"], 1);
    assert_eq!(out["stream_usage"]["completion_tokens"], whole["usage"]["completion_tokens"]);
    assert_eq!(out["stream_helper"], serde_json::json!(["Grep"]));

    assert_eq!(out["follow_up"]["finish_reason"], "stop", "{out}");
    assert_eq!(out["follow_up"]["content"], "In src/auth.py, line 3.");
    assert_eq!(out["named"][0][0], "Read", "{out}");
    assert_eq!(out["none"]["tool_calls"], 0);
    assert_eq!(out["completion"]["object"], "text_completion");
    assert_eq!(out["completion"]["tokens"], 5);

    let errors = &out["errors"];
    assert_eq!(errors["unknown_model"]["status"], 404);
    assert_eq!(errors["unknown_model"]["code"], "model_not_found");
    assert_eq!(errors["bad_role"]["status"], 400);
    assert!(errors["bad_role"]["message"].as_str().unwrap().contains("messages[0]"), "{errors}");
    assert_eq!(errors["n"]["param"], "n");
    assert_eq!(errors["temperature"]["param"], "temperature");
    assert_eq!(out["extra_fields"], "length");
}
