//! `deploy` against a stand-in Ollama (Ollama cannot be installed here): a small HTTP/1.1
//! server implementing the documented shapes of `HEAD`/`POST /api/blobs/:digest`,
//! `POST /api/create`, `POST /api/copy` and `POST /api/chat`, strict about fields and digests,
//! recording every request. Exports are fake directories with a manifest and a small GGUF.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use understudy::deploy::{base_url, deploy, version_tag, DeployError, DeployOptions, TEST_PROMPT};
use understudy::export::{ExportFile, ExportManifest, OllamaSettings, ParityReport};
use understudy::store::Store;

use crate::support::cli_with_env;

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    /// Header names lowercased.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{} {} body is not JSON: {e}", self.method, self.path))
    }
}

#[derive(Default)]
struct OllamaState {
    /// Digests (`sha256:<hex>`) of stored blobs.
    blobs: HashSet<String>,
    /// Model `name:tag` -> the create request that made it.
    models: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
}

pub(crate) struct FakeOllama {
    pub(crate) host: String,
    state: Arc<Mutex<OllamaState>>,
}

impl FakeOllama {
    pub(crate) fn start() -> FakeOllama {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(OllamaState::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve_connection(stream, &shared);
            }
        });
        FakeOllama { host, state }
    }

    /// The `name:tag` of every model created.
    pub(crate) fn model_names(&self) -> Vec<String> {
        self.state.lock().unwrap().models.keys().cloned().collect()
    }

    fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    /// Forget every blob, model and request: a fresh Ollama at the same address.
    pub(crate) fn reset(&self) {
        *self.state.lock().unwrap() = OllamaState::default();
    }

    /// The blobs stored, the models (`name:tag` -> the create request that made it), and every
    /// request as `METHOD path` with its body (blob uploads' bodies left out).
    pub(crate) fn snapshot(&self) -> (BTreeSet<String>, BTreeMap<String, Value>, Vec<(String, String)>) {
        let state = self.state.lock().unwrap();
        let requests = state
            .requests
            .iter()
            .map(|r| {
                let body = if r.path.starts_with("/api/blobs/") {
                    String::new()
                } else {
                    String::from_utf8_lossy(&r.body).into_owned()
                };
                (format!("{} {}", r.method, r.path), body)
            })
            .collect();
        (state.blobs.iter().cloned().collect(), state.models.clone(), requests)
    }

    pub(crate) fn calls(&self) -> Vec<String> {
        self.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect()
    }
}

/// One request per connection (every response says `Connection: close`).
fn serve_connection(stream: TcpStream, state: &Mutex<OllamaState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let Some(request) = read_request(&mut reader) else { return };
    let (status, body) = handle(&request, state);
    state.lock().unwrap().requests.push(request.clone());
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        _ => "Not Found",
    };
    let (content_type, body) = match body {
        Some(Value::String(text)) => ("text/plain; charset=utf-8", text),
        Some(value) => ("application/json; charset=utf-8", value.to_string()),
        None => ("text/plain; charset=utf-8", String::new()),
    };
    let mut stream = stream;
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if request.method != "HEAD" {
        let _ = stream.write_all(body.as_bytes());
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<Recorded> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let mut body = Vec::new();
    if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = headers.get("content-length") {
        body = vec![0; length.parse().ok()?];
        reader.read_exact(&mut body).ok()?;
    }
    Some(Recorded { method, path, headers, body })
}

fn error(status: u16, message: &str) -> (u16, Option<Value>) {
    (status, Some(json!({"error": message})))
}

/// `name` or `name:tag` as Ollama resolves it.
fn full_name(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// Ollama's documented behaviour (docs/api.md), strict where Ollama is lenient.
fn handle(request: &Recorded, state: &Mutex<OllamaState>) -> (u16, Option<Value>) {
    let mut state = state.lock().unwrap();
    let method = request.method.as_str();
    if let Some(digest) = request.path.strip_prefix("/api/blobs/") {
        let valid = digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid {
            return error(400, "invalid digest format");
        }
        return match method {
            "HEAD" => (if state.blobs.contains(digest) { 200 } else { 404 }, None),
            "POST" => {
                let actual = format!("sha256:{}", hex::encode(Sha256::digest(&request.body)));
                if actual != digest {
                    return error(400, &format!("digest mismatch, expected \"{digest}\", got \"{actual}\""));
                }
                state.blobs.insert(actual);
                (201, None)
            }
            _ => (404, Some(Value::String("404 page not found".into()))),
        };
    }
    if method != "POST" {
        return (404, Some(Value::String("404 page not found".into())));
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&request.body) else {
        return error(400, "invalid request body");
    };
    match request.path.as_str() {
        "/api/create" => {
            const FIELDS: [&str; 15] = [
                "model",
                "stream",
                "quantize",
                "from",
                "files",
                "adapters",
                "template",
                "license",
                "system",
                "parameters",
                "messages",
                "renderer",
                "parser",
                "requires",
                "info",
            ];
            if let Some(field) = ["modelfile", "name", "quantization"].iter().find(|f| body.contains_key(**f)) {
                return error(400, &format!("deprecated field {field:?}"));
            }
            if let Some(field) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
                return error(400, &format!("unknown field {field:?}"));
            }
            let Some(model) = body.get("model").and_then(Value::as_str).filter(|m| !m.is_empty()) else {
                return error(400, "model is required");
            };
            let Some(files) = body.get("files").and_then(Value::as_object).filter(|f| !f.is_empty()) else {
                return error(400, "neither 'from' or 'files' was specified");
            };
            for (name, digest) in files {
                if !digest.as_str().is_some_and(|d| state.blobs.contains(d)) {
                    return error(400, &format!("{name}: blob {digest} not found"));
                }
            }
            state.models.insert(full_name(model), Value::Object(body.clone()));
            if body.get("stream") == Some(&Value::Bool(false)) {
                (200, Some(json!({"status": "success"})))
            } else {
                let lines = ["parsing GGUF", "writing manifest", "success"].map(|s| json!({"status": s}).to_string());
                (200, Some(Value::String(lines.join("\n") + "\n")))
            }
        }
        "/api/copy" => {
            let (Some(source), Some(destination)) =
                (body.get("source").and_then(Value::as_str), body.get("destination").and_then(Value::as_str))
            else {
                return error(400, "source and destination are required");
            };
            let Some(model) = state.models.get(&full_name(source)).cloned() else {
                return error(404, &format!("model '{source}' not found"));
            };
            state.models.insert(full_name(destination), model);
            (200, None)
        }
        "/api/chat" => {
            let model = body.get("model").and_then(Value::as_str).unwrap_or_default();
            if !state.models.contains_key(&full_name(model)) {
                return error(404, &format!("model '{model}' not found"));
            }
            (
                200,
                Some(json!({
                    "model": model,
                    "created_at": "2025-01-01T00:00:00.000000Z",
                    "message": {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"function": {"name": "Grep", "arguments": {"pattern": "validate_token", "path": "."}}}],
                    },
                    "done_reason": "stop",
                    "done": true,
                    "total_duration": 1000,
                    "prompt_eval_count": 10,
                    "eval_count": 12,
                })),
            )
        }
        _ => (404, Some(Value::String("404 page not found".into()))),
    }
}

struct FakeExport {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    manifest: ExportManifest,
    gguf: Vec<u8>,
    hex: String,
}

const TEMPLATE: &str =
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n";

/// An export directory as `understudy export` writes it: a GGUF, a Modelfile, export.json.
fn fake_export() -> FakeExport {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("exp_01TEST");
    std::fs::create_dir_all(&dir).unwrap();
    let mut gguf = b"GGUF".to_vec();
    gguf.extend((0..100 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(dir.join("model-q8_0.gguf"), &gguf).unwrap();
    let hex = hex::encode(Sha256::digest(&gguf));
    let manifest = ExportManifest {
        export_id: "exp_01TEST".into(),
        model_id: Some("mdl_1".into()),
        dataset_id: None,
        run_id: None,
        name: "tiny".into(),
        files: vec![
            ExportFile {
                path: "hf/model.safetensors".into(),
                format: "hf".into(),
                quant: None,
                sha256: "00".repeat(32),
                bytes: 1,
            },
            ExportFile {
                path: "model-q8_0.gguf".into(),
                format: "gguf".into(),
                quant: Some("q8_0".into()),
                sha256: hex.clone(),
                bytes: gguf.len() as u64,
            },
        ],
        modelfile: "Modelfile".into(),
        ollama: OllamaSettings {
            template: TEMPLATE.into(),
            system: "You are a coding agent.".into(),
            stop: vec!["<|im_end|>".into(), "<|im_start|>".into()],
            num_ctx: 4096,
            temperature: 0.7,
        },
        parity: ParityReport::new(Vec::new()),
        created_at: "2025-01-01T00:00:00Z".into(),
    };
    std::fs::write(dir.join("export.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    std::fs::write(dir.join("Modelfile"), format!("FROM ./model-q8_0.gguf\nTEMPLATE \"\"\"{TEMPLATE}\"\"\"\n"))
        .unwrap();
    FakeExport { _dir: temp, dir, manifest, gguf, hex }
}

fn options(host: &str, test: bool) -> DeployOptions {
    DeployOptions {
        host: host.into(),
        name: "cc-claude-agent".into(),
        quant: None,
        version_tag: "exp_01test".into(),
        test,
    }
}

#[test]
fn first_deploy_uploads_the_blob_creates_and_tags_latest_then_skips_the_upload() {
    let ollama = FakeOllama::start();
    let export = fake_export();
    let digest = format!("sha256:{}", export.hex);
    let mut uploaded_bytes = 0;
    let report = deploy(&export.dir, &export.manifest, &options(&ollama.host, false), &mut |stage, done, _| {
        if stage == "uploading" {
            uploaded_bytes = done;
        }
    })
    .unwrap();

    assert_eq!(
        ollama.calls(),
        vec![
            format!("HEAD /api/blobs/{digest}"),
            format!("POST /api/blobs/{digest}"),
            "POST /api/create".to_string(),
            "POST /api/copy".to_string(),
        ]
    );
    let requests = ollama.requests();
    assert!(requests[1].body == export.gguf, "the blob body is the GGUF's exact bytes");
    assert_eq!(
        requests[1].headers.get("content-length"),
        Some(&export.gguf.len().to_string()),
        "streamed with its length, as curl -T does"
    );
    assert!(requests[2].headers["content-type"].starts_with("application/json"));
    assert_eq!(uploaded_bytes, export.gguf.len() as u64);
    assert_eq!(
        requests[2].json(),
        json!({
            "model": "cc-claude-agent:exp_01test",
            "files": {"model-q8_0.gguf": digest},
            "template": TEMPLATE,
            "system": "You are a coding agent.",
            "parameters": {"stop": ["<|im_end|>", "<|im_start|>"], "num_ctx": 4096, "temperature": 0.7},
            "stream": false,
        })
    );
    assert_eq!(
        requests[3].json(),
        json!({"source": "cc-claude-agent:exp_01test", "destination": "cc-claude-agent:latest"})
    );
    assert_eq!(report.host, ollama.host);
    assert_eq!(report.model, "cc-claude-agent:exp_01test");
    assert_eq!(report.names, vec!["cc-claude-agent:exp_01test", "cc-claude-agent:latest"]);
    assert_eq!(
        (report.digest.as_str(), report.uploaded, report.bytes),
        (digest.as_str(), true, export.gguf.len() as u64)
    );
    assert_eq!(report.gguf, export.dir.join("model-q8_0.gguf"));
    assert!(report.test.is_none());

    ollama.clear_requests();
    let again = deploy(&export.dir, &export.manifest, &options(&ollama.host, false), &mut |_, _, _| {}).unwrap();
    assert!(!again.uploaded);
    assert_eq!(
        ollama.calls(),
        vec![format!("HEAD /api/blobs/{digest}"), "POST /api/create".to_string(), "POST /api/copy".to_string()]
    );
}

#[test]
fn test_chat_sends_the_default_tools_and_reports_the_tool_call() {
    let ollama = FakeOllama::start();
    let export = fake_export();
    let report = deploy(&export.dir, &export.manifest, &options(&ollama.host, true), &mut |_, _, _| {}).unwrap();

    let chat = ollama.requests().into_iter().find(|r| r.path == "/api/chat").expect("a chat request");
    assert_eq!(
        chat.json(),
        json!({
            "model": "cc-claude-agent:latest",
            "messages": [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": TEST_PROMPT}],
            "tools": understudy::traces::tools::default_tools(),
            "stream": false,
            "options": {"temperature": 0, "num_predict": 128},
        })
    );
    let message = report.test.expect("a test reply");
    assert_eq!(message["role"], "assistant");
    assert_eq!(
        message["tool_calls"][0]["function"],
        json!({"name": "Grep", "arguments": {"pattern": "validate_token", "path": "."}})
    );
}

#[test]
fn ollama_rejections_carry_its_message_and_the_host() {
    let ollama = FakeOllama::start();
    let export = fake_export();
    // Same size, different bytes: the stand-in checks the upload against the digest, as Ollama does.
    let mut corrupt = export.gguf.clone();
    corrupt[10] ^= 0xff;
    std::fs::write(export.dir.join("model-q8_0.gguf"), &corrupt).unwrap();
    let error = deploy(&export.dir, &export.manifest, &options(&ollama.host, false), &mut |_, _, _| {}).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, DeployError::Rejected { status: 400, .. }), "{message}");
    assert!(message.contains(&ollama.host) && message.contains("digest mismatch"), "{message}");
    assert!(!ollama.calls().contains(&"POST /api/create".to_string()));

    let mut wanted = options(&ollama.host, false);
    wanted.quant = Some("q4_k_m".into());
    let error = deploy(&export.dir, &export.manifest, &wanted, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(error.contains("no GGUF in quant q4_k_m") && error.contains("q8_0"), "{error}");
}

#[test]
fn hosts_resolve_as_ollama_resolves_ollama_host_and_names_are_checked() {
    assert_eq!(base_url("").unwrap(), "http://127.0.0.1:11434");
    assert_eq!(base_url("localhost:1234").unwrap(), "http://localhost:1234");
    assert_eq!(base_url("0.0.0.0").unwrap(), "http://0.0.0.0:11434");
    assert_eq!(base_url("http://example").unwrap(), "http://example:80");
    assert_eq!(base_url("http://[::1]:11434/").unwrap(), "http://[::1]:11434");
    assert_eq!(base_url("http://proxy:8080/ollama/").unwrap(), "http://proxy:8080/ollama");
    assert!(matches!(base_url("https://example"), Err(DeployError::BadHost { .. })));
    assert!(matches!(base_url("host:port"), Err(DeployError::BadHost { .. })));

    assert_eq!(version_tag("exp_01J9ZK"), "exp_01j9zk");
    assert_eq!(version_tag("a/b c"), "a-b-c");
    assert_eq!(version_tag("-x"), "v-x");
    assert_eq!(version_tag(&"x".repeat(300)).len(), 128);

    let export = fake_export();
    let mut bad = options("127.0.0.1:1", false);
    bad.name = "bad name".into();
    let error = deploy(&export.dir, &export.manifest, &bad, &mut |_, _, _| {}).unwrap_err();
    assert!(matches!(error, DeployError::BadName { .. }), "{error}");
}

/// Bind a port and let it go: nothing listens there afterwards.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn unreachable_ollama_names_the_modelfile_and_the_ollama_create_command() {
    let export = fake_export();
    let host = format!("127.0.0.1:{}", closed_port());
    let error = deploy(&export.dir, &export.manifest, &options(&host, false), &mut |_, _, _| {}).unwrap_err();
    assert!(matches!(error, DeployError::Unreachable { .. }), "{error}");
    let modelfile = export.dir.join("Modelfile");
    let message = error.to_string();
    assert!(message.contains(&format!("not reachable at http://{host}")), "{message}");
    assert!(message.contains(&format!("ollama create cc-claude-agent -f {}", modelfile.display())), "{message}");
}

fn store_export(data_dir: &Path, export: &FakeExport) {
    let manifest = serde_json::to_value(&export.manifest).unwrap();
    let db = Store::open(data_dir).unwrap().connect().unwrap();
    db.insert_export("exp_01TEST", None, "tiny", export.dir.to_str().unwrap(), &manifest, true).unwrap();
}

#[test]
fn cli_deploys_the_latest_export_with_ollama_host_from_the_environment() {
    let ollama = FakeOllama::start();
    let export = fake_export();
    let data = tempfile::tempdir().unwrap();
    store_export(data.path(), &export);
    // OLLAMA_HOST without a scheme, as Ollama accepts it.
    let host = ollama.host.trim_start_matches("http://").to_string();
    let run = cli_with_env(data.path(), &["deploy", "--test", "--json"], &[("OLLAMA_HOST", Path::new(&host))]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["host"], ollama.host);
    assert_eq!(report["names"], json!(["cc-claude-agent:exp_01test", "cc-claude-agent:latest"]));
    assert_eq!(report["uploaded"], true);
    assert_eq!(report["test"]["tool_calls"][0]["function"]["name"], "Grep");
    assert_eq!(ollama.calls().len(), 5, "{:?}", ollama.calls());
}

#[test]
fn cli_without_ollama_exits_non_zero_with_the_ollama_create_command() {
    let export = fake_export();
    let data = tempfile::tempdir().unwrap();
    let missing = cli_with_env(data.path(), &["deploy"], &[]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("no export yet: run `understudy export` first"), "{}", missing.stderr);

    store_export(data.path(), &export);
    let host = format!("http://127.0.0.1:{}", closed_port());
    let run = cli_with_env(data.path(), &["deploy", "--export", "exp_01TEST", "--ollama-host", &host], &[]);
    assert_ne!(run.code, 0);
    let modelfile = export.dir.join("Modelfile");
    assert!(run.stderr.contains(&format!("not reachable at {host}")), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("ollama create cc-claude-agent -f {}", modelfile.display())),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}
