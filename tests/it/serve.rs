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
    crate::support::train_tiny_on(dir, "overfit_tools.jsonl");
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
    skip_unless!(crate::support::External::OpenAiClient);
    let app = crate::support::spawn_app(served_model_dir);
    let tools = tools_file(app.data_dir());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/openai_client.py");
    let output = Command::new("python3").arg(script).arg(&app.base).arg(&tools).output().unwrap();
    assert!(
        output.status.success(),
        "openai client script failed (pip install openai; .ci/run does): {}",
        String::from_utf8_lossy(&output.stderr)
    );
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
    assert_eq!(
        streamed["tool_calls"],
        serde_json::json!([{"name": "Grep", "arguments": whole["tool_calls"][0]["arguments"]}]),
        "streamed deltas reassemble to the whole reply"
    );
    assert_eq!(streamed["content"], whole["content"]);
    assert_eq!(streamed["usage_chunks"], 1);
    assert_eq!(streamed["distinct_chunk_ids"], 1);
    assert_eq!(out["stream_usage"]["completion_tokens"], whole["usage"]["completion_tokens"]);
    assert_eq!(out["stream_helper"], serde_json::json!(["Grep"]));

    assert_eq!(out["follow_up"]["finish_reason"], "stop", "{out}");
    assert_eq!(out["follow_up"]["content"], "In src/auth.py, line 3.");
    assert_eq!(out["named"][0][0], "Read", "{out}");
    let forced = &out["forced"];
    eprintln!("forced: {forced}\njson_schema: {}", out["json_schema"]);
    assert_eq!(forced["requests"], 20, "{forced}");
    assert_eq!(forced["valid"], forced["requests"], "every forced call parses and validates: {forced}");
    assert!(forced["finishes"].as_array().unwrap().iter().all(|f| f == "tool_calls"), "{forced}");
    assert_eq!(out["json_schema"]["valid"], true, "{}", out["json_schema"]);
    let auto = &out["auto"];
    eprintln!("auto: {auto}");
    assert_eq!(auto["requests"], 10, "{auto}");
    assert!(auto["calls"].as_u64().unwrap() >= 5, "the tool-trained model calls tools: {auto}");
    assert_eq!(auto["valid"], auto["calls"], "every call the model opened validates: {auto}");
    assert_eq!(auto["malformed"], 0, "{auto}");
    assert_eq!(out["none"]["tool_calls"], 0);
    assert_eq!(out["completion"]["object"], "text_completion");
    // At most max_tokens: all 5 when the reply was cut, fewer when the model ended its turn
    // (which of the two depends on the tiny model's training numerics).
    let (tokens, finish) = (out["completion"]["tokens"].as_u64().unwrap(), &out["completion"]["finish_reason"]);
    assert!(
        (finish == "length" && tokens == 5) || (finish == "stop" && (1..5).contains(&tokens)),
        "{}",
        out["completion"]
    );

    let errors = &out["errors"];
    assert_eq!(errors["unknown_model"]["status"], 404);
    assert_eq!(errors["unknown_model"]["code"], "model_not_found");
    assert_eq!(errors["bad_role"]["status"], 400);
    assert!(errors["bad_role"]["message"].as_str().unwrap().contains("messages[0]"), "{errors}");
    assert_eq!(errors["n"]["param"], "n");
    assert_eq!(errors["temperature"]["param"], "temperature");
    assert_eq!(out["extra_fields"], "length");
}

fn post(url: &str, body: &Value) -> (u16, Option<String>, String, String) {
    let mut response = crate::support::http()
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .expect("HTTP request");
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (retry_after, content_type) = (header("retry-after"), header("content-type").unwrap_or_default());
    let status = response.status().as_u16();
    (status, retry_after, content_type, response.body_mut().read_to_string().unwrap_or_default())
}

fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("data: [DONE]\n\n"), "ends with [DONE]: {body}");
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("every event is a data line: {e:?}")).to_string())
        .collect()
}

#[test]
fn sse_framing_overload_metrics_and_hot_swap_on_the_raw_wire() {
    let app = crate::support::spawn_app_with_settings(served_model_dir, None, |settings| {
        settings.engine_workers = 1;
        settings.queue_capacity = 1;
    });
    let chat = app.url("/v1/chat/completions");
    let tools: Value = serde_json::from_str(&std::fs::read_to_string(tools_file(app.data_dir())).unwrap()).unwrap();
    let messages = serde_json::json!([
        {"role": "system", "content": "You are a coding agent. Use the tools."},
        {"role": "user", "content": "How many users are in data/users.csv?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": "{\"command\": \"wc -l data/users.csv\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "41 data/users.csv"}
    ]);

    // Framing: text/event-stream, a role-only first delta, one finish chunk, no usage unless asked.
    let (status, _, content_type, body) =
        post(&chat, &serde_json::json!({"messages": messages, "tools": tools, "stream": true, "max_tokens": 30}));
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let events = sse_events(&body);
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"], serde_json::json!({"role": "assistant", "content": ""}));
    assert!(chunks[1..].iter().all(|c| c["choices"][0]["delta"].get("role").is_none()));
    let finishes: Vec<&Value> =
        chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes.len(), 1);
    assert!(
        chunks.iter().all(|c| c["choices"].as_array().is_some_and(|a| a.len() == 1)),
        "no usage chunk without include_usage"
    );
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "40 users (41 lines with the header).", "the trained reply, streamed");

    // The export is served by mistral.rs, streamed or not, and each reply names its version.
    for stream in [false, true] {
        let request = serde_json::json!({"messages": messages, "max_tokens": 3, "stream": stream});
        let response = crate::support::http()
            .post(&chat)
            .header("content-type", "application/json")
            .send(request.to_string())
            .unwrap();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(header("x-understudy-runtime").as_deref(), Some("mistral.rs"), "stream: {stream}");
        assert!(header("x-understudy-model-version").is_some_and(|v| v.starts_with("exp_")), "stream: {stream}");
    }

    // Overload: one request decoding, one waiting, the rest refused with 429 and Retry-After.
    let long = serde_json::json!({"prompt": "<|im_start|>user\nHow many", "max_tokens": 400});
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = app.url("/v1/completions");
            let body = long.clone();
            std::thread::spawn(move || post(&url, &body))
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(
        !refused.is_empty() && results.iter().any(|r| r.0 == 200),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(refused[0].1.as_deref(), Some("1"), "Retry-After");
    let error: Value = serde_json::from_str(&refused[0].3).unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");

    // Metrics.
    let metrics = crate::support::get(&app.url("/metrics")).body;
    assert!(metrics.contains("understudy_requests_total{route=\"completions\",status=\"429\"}"), "{metrics}");
    assert!(metrics.contains("understudy_requests_total{route=\"chat\",status=\"200\"} 3"), "{metrics}");
    assert!(metrics.contains("understudy_queue_capacity 1"));
    let completion_tokens: u64 =
        metrics.lines().find_map(|l| l.strip_prefix("understudy_completion_tokens_total ")).unwrap().parse().unwrap();
    assert!(completion_tokens > 10);

    // Hot swap: a request in flight finishes on the old version; a new export takes over the name.
    let before: Value = serde_json::from_str(&crate::support::get(&app.url("/v1/models")).body).unwrap();
    let old_version = before["data"][0]["version"].as_str().unwrap().to_string();
    let url = app.url("/v1/completions");
    let in_flight = std::thread::spawn(move || {
        post(&url, &serde_json::json!({"prompt": "<|im_start|>user\nHow many", "max_tokens": 1500}))
    });
    let again = cli(app.data_dir(), &["export", "--quant", "q8_0", "--name", "cc-tiny", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let (status, _, _, body) = in_flight.join().unwrap();
    assert_eq!(status, 200);
    let finished: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(finished["system_fingerprint"], old_version.as_str());
    let after: Value = serde_json::from_str(&crate::support::get(&app.url("/v1/models")).body).unwrap();
    let new_version = after["data"][0]["version"].as_str().unwrap();
    assert_ne!(new_version, old_version);
    let (status, _, _, body) =
        post(&chat, &serde_json::json!({"model": "cc-tiny", "messages": messages, "tools": tools, "max_tokens": 5}));
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["system_fingerprint"], new_version);
}

#[test]
fn the_endpoint_needs_the_key_when_one_is_set() {
    let app = crate::support::spawn_app_with_key(|_| {}, Some("sekrit"));
    let denied = crate::support::get(&app.url("/v1/models"));
    assert_eq!(denied.status, 401);
    let error: Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(error["error"]["code"], "invalid_api_key");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let allowed = crate::support::reply(
        crate::support::http().get(&app.url("/v1/models")).header("authorization", "Bearer sekrit").call(),
    );
    assert_eq!(allowed.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&allowed.body).unwrap(),
        serde_json::json!({"object": "list", "data": []})
    );
    // No model served yet: a chat request says so in OpenAI's envelope.
    let missing = crate::support::reply(
        crate::support::http()
            .post(&app.url("/v1/chat/completions"))
            .header("authorization", "Bearer sekrit")
            .send(r#"{"model": "understudy", "messages": [{"role": "user", "content": "hi"}]}"#),
    );
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("model_not_found") && missing.body.contains("no model is served yet"),
        "{}",
        missing.body
    );
    let malformed = crate::support::reply(
        crate::support::http()
            .post(&app.url("/v1/chat/completions"))
            .header("authorization", "Bearer sekrit")
            .send("{not json"),
    );
    assert_eq!(malformed.status, 400);
    assert!(malformed.body.contains("invalid_request_error"), "{}", malformed.body);
}

#[test]
fn an_admin_token_guards_the_ui_and_api_while_the_api_key_guards_v1() {
    let app = crate::support::spawn_app_with_settings(
        |_| {},
        Some("infer-key"),
        |settings| settings.admin_token = Some("admin-token".into()),
    );
    let agent = crate::support::http();
    let with = |path: &str, bearer: &str| {
        crate::support::reply(agent.get(&app.url(path)).header("authorization", &format!("Bearer {bearer}")).call())
    };
    let page = crate::support::get(&app.url("/"));
    assert_eq!(page.status, 403);
    assert!(page.body.contains("/login?token="), "says how to log in");
    assert_eq!(with("/api/stats", "admin-token").status, 200);
    assert_eq!(with("/api/stats", "infer-key").status, 401, "the inference key is not an admin token");
    assert_eq!(with("/v1/models", "infer-key").status, 200);
    assert_eq!(with("/v1/models", "admin-token").status, 401);
    assert_eq!(crate::support::get(&app.url("/health")).status, 200);
    let wrong = crate::support::get(&app.url("/login?token=nope"));
    assert_eq!(wrong.status, 403);
    let mut login = agent.get(&app.url("/login?token=admin-token")).call().unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let cookie = login.headers().get("set-cookie").and_then(|v| v.to_str().ok()).unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let _ = login.body_mut().read_to_string();
    let pair = cookie.split(';').next().unwrap().to_string();
    let dashboard = crate::support::reply(agent.get(&app.url("/")).header("cookie", &pair).call());
    assert_eq!(dashboard.status, 200);
}
