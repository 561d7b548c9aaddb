//! The flywheel beyond the seed: `serve --record-traces` (the real binary) stores completed chat
//! completions, streamed and whole, as redacted `served` traces and records nothing without the
//! flag; the Playground's feedback API turns a thumbs up into a trace, a thumbs down into a
//! feedback record only, an edit into a preference pair a dataset build picks up, and names the
//! field of a bad request in the API's error envelope.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::support::{cli, get, http, reply, spawn_app};

const SECRET: &str = "AKIAIOSFODNN7EXAMPLQ";

/// `understudy serve` on port 0 over `data_dir`; the child and its base URL.
struct Served(Child, String);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(data_dir: &Path, extra: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["serve", "--port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start understudy serve");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(rest) = line.split("serving on ").nth(1) {
            break rest.split_whitespace().next().unwrap().trim_end_matches('/').to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Served(child, base)
}

fn chat(base: &str, body: Value) -> Value {
    let response = reply(http().post(&format!("{base}/v1/chat/completions")).send_json(body));
    assert_eq!(response.status, 200, "{}", response.body);
    if response.content_type.starts_with("text/event-stream") {
        assert!(response.body.trim_end().ends_with("data: [DONE]"), "{}", response.body);
        return Value::String(response.body);
    }
    response.json()
}

fn served_traces(data_dir: &Path) -> Vec<Value> {
    let run = cli(data_dir, &["traces", "list", "--source", "served", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json().as_array().unwrap().clone()
}

fn tools() -> Value {
    let line = std::fs::read_to_string(crate::support::fixture("overfit_tools.jsonl")).unwrap();
    serde_json::from_str::<Value>(line.lines().next().unwrap()).unwrap()["tools"].clone()
}

#[test]
fn serve_with_record_traces_stores_redacted_served_conversations() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::train_tiny_on(dir.path(), "overfit_tools.jsonl");

    let server = serve(dir.path(), &["--record-traces"]);
    let whole = chat(
        &server.1,
        json!({"model": "understudy", "max_tokens": 48, "tools": tools(),
               "messages": [{"role": "system", "content": "You are a coding agent. Use the tools."},
                            {"role": "user", "content": format!("Where is the login code? my key is {SECRET}")}]}),
    );
    let version = whole["system_fingerprint"].as_str().unwrap().to_string();
    chat(
        &server.1,
        json!({"max_tokens": 16, "stream": true,
               "messages": [{"role": "user", "content": format!("Say hi. AWS_SECRET_ACCESS_KEY={SECRET}")}]}),
    );
    // Not a trace (no user prompt): answered all the same, and skipped.
    chat(&server.1, json!({"max_tokens": 4, "messages": [{"role": "system", "content": "only a system prompt"}]}));

    // Recording runs after each reply, on the blocking pool; on a loaded machine it can lag.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let rows = loop {
        let seen = served_traces(dir.path());
        if seen.len() == 2 {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two served traces expected, {} stored after 60 s: {}",
            seen.len(),
            Value::Array(seen)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for row in &rows {
        let shown = cli(dir.path(), &["traces", "show", row["id"].as_str().unwrap(), "--json"]);
        let trace = shown.json();
        let text = trace.to_string();
        assert!(!text.contains(SECRET), "the secret is redacted: {text}");
        assert!(
            text.contains("[REDACTED:aws_access_key_id]") || text.contains("[REDACTED:secret_assignment]"),
            "{text}"
        );
        assert_eq!(trace["source"], "served");
        assert_eq!(trace["metadata"]["served"]["version"], version.as_str(), "{text}");
        let last = trace["messages"].as_array().unwrap().last().unwrap();
        assert_eq!(last["role"], "assistant", "the reply ends the trace: {text}");
    }
    let with_tools =
        rows.iter().find(|r| r["prompt"].as_str().unwrap().starts_with("Where is the login code?")).unwrap();
    let trace = cli(dir.path(), &["traces", "show", with_tools["id"].as_str().unwrap(), "--json"]).json();
    assert_eq!(trace["tools"], tools(), "the offered tools are kept");
    let reply = &whole["choices"][0]["message"];
    let stored_reply = trace["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(
        stored_reply.get("tool_calls").map(|c| c[0]["id"].clone()),
        reply.get("tool_calls").map(|c| c[0]["id"].clone())
    );
    drop(server);

    // Without the flag, nothing is recorded.
    let plain = serve(dir.path(), &[]);
    chat(&plain.1, json!({"max_tokens": 8, "messages": [{"role": "user", "content": "Something new entirely"}]}));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(served_traces(dir.path()).len(), 2, "serve without --record-traces records nothing");
}

fn post(url: &str, body: Value) -> crate::support::Reply {
    reply(http().post(url).send_json(body))
}

#[test]
fn playground_feedback_makes_traces_pairs_and_records() {
    let app = spawn_app(|_| {});
    let conversation = json!([
        {"role": "system", "content": "You are a coding agent."},
        {"role": "user", "content": format!("Where is the login code? key {SECRET}")}
    ]);
    let reply_message = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "Grep", "arguments": "{\"pattern\":\"def login\"}"}}]});
    let base = json!({"model": "cc-tiny", "version": "exp_1", "messages": conversation, "tools": tools(), "reply": reply_message});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };

    let up = post(&app.url("/api/feedback"), with(json!({"rating": "up"})));
    assert_eq!(up.status, 201, "{}", up.body);
    let up = up.json();
    let trace_id = up["trace_id"].as_str().expect("a thumbs up stores a trace").to_string();
    let trace = get(&app.url(&format!("/api/traces/{trace_id}"))).json();
    assert_eq!(trace["source"], "served");
    assert_eq!(trace["metadata"]["feedback"], "up");
    assert!(!trace.to_string().contains(SECRET), "redacted: {trace}");
    let again = post(&app.url("/api/feedback"), with(json!({"rating": "up"}))).json();
    assert_eq!(again["trace_id"], trace_id.as_str(), "the same conversation is stored once");

    let down = post(&app.url("/api/feedback"), with(json!({"rating": "down"})));
    assert_eq!(down.status, 201, "{}", down.body);
    let down = down.json();
    assert!(down["trace_id"].is_null() && down["pair_id"].is_null(), "a thumbs down trains nothing: {down}");
    assert_eq!(down["body"]["reply"]["tool_calls"][0]["function"]["name"], "Grep");

    let edited = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "Grep", "arguments": "{\"pattern\":\"def login\",\"path\":\"src\"}"}}]});
    let preferred = post(&app.url("/api/feedback/preferred"), with(json!({"edited": edited})));
    assert_eq!(preferred.status, 201, "{}", preferred.body);
    let preferred = preferred.json();
    let pair_id = preferred["pair_id"].as_str().expect("an edit stores a pair").to_string();
    let pairs = get(&app.url("/api/pairs")).json();
    assert_eq!(pairs["total"], 1);
    let pair = &pairs["items"][0];
    assert_eq!(pair["id"], pair_id.as_str());
    assert_eq!(pair["source"], "served");
    assert_eq!(
        pair["chosen"][0]["tool_calls"][0]["function"]["arguments"],
        "{\"pattern\":\"def login\",\"path\":\"src\"}"
    );
    assert_eq!(pair["rejected"][0]["tool_calls"][0]["function"]["arguments"], "{\"pattern\":\"def login\"}");
    assert_eq!(pair["prompt"].as_array().unwrap().len(), 2, "the prompt is the conversation before the reply");
    assert_eq!(pair["trace_id"], preferred["trace_id"], "the chosen side is an SFT trace");

    let listed = get(&app.url("/api/feedback")).json();
    assert_eq!(listed["total"], 4);
    let ratings: Vec<&str> =
        listed["items"].as_array().unwrap().iter().map(|f| f["rating"].as_str().unwrap()).collect();
    assert_eq!(ratings.iter().filter(|r| **r == "down").count(), 1, "{ratings:?}");

    // Bad input: the envelope names the field.
    let refused = |body: Value, path: &str, field: &str| {
        let answer = post(&app.url(path), body);
        assert_eq!(answer.status, 400, "{}", answer.body);
        let error = answer.json()["error"].clone();
        assert_eq!(error["type"], "invalid_request_error", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{field} is named: {message}");
    };
    refused(with(json!({"rating": "sideways"})), "/api/feedback", "rating");
    refused(with(json!({"rating": "up", "model": ""})), "/api/feedback", "model");
    refused(with(json!({"rating": "up", "reply": {"role": "user", "content": "hi"}})), "/api/feedback", "reply");
    refused(with(json!({"rating": "up", "messages": [{"role": "robot"}]})), "/api/feedback", "messages[0]");
    refused(
        with(json!({"rating": "up", "messages": [{"role": "system", "content": "no user"}]})),
        "/api/feedback",
        "messages",
    );
    refused(with(json!({"rating": "up", "reply": null})), "/api/feedback", "reply");
    refused(json!({"rating": "up"}), "/api/feedback", "body");
    refused(with(json!({"edited": reply_message})), "/api/feedback/preferred", "reply");
    refused(with(json!({"edited": {"role": "assistant", "content": 3}})), "/api/feedback/preferred", "edited");
    assert_eq!(get(&app.url("/api/feedback")).json()["total"], 4, "refused requests store nothing");

    // A dataset build picks the pair up for DPO.
    let built = cli(app.data_dir(), &["build-dataset", "--json"]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    let out = std::path::PathBuf::from(built.json()["dir"].as_str().unwrap());
    let pair_lines: usize = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_str().unwrap().starts_with("dpo"))
        .map(|path| std::fs::read_to_string(path).unwrap().lines().count())
        .sum();
    assert_eq!(pair_lines, 1, "the pair is in the dataset's DPO files");
}
