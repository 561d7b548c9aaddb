//! Deploy: registers an export with Ollama through its documented HTTP API (blob upload by
//! digest, `/api/create`, `/api/copy` to `latest`, optionally one `/api/chat` test). It reads only
//! the export directory and its manifest; it knows nothing about the store or the terminal.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::export::{ExportFile, ExportManifest};

pub const DEFAULT_HOST: &str = "http://127.0.0.1:11434";

/// The Ollama address a flag or setting names, else Ollama's own default.
pub fn host_or_default(host: Option<String>) -> String {
    host.filter(|h| !h.trim().is_empty()).unwrap_or_else(|| DEFAULT_HOST.into())
}
pub const DEFAULT_NAME: &str = "cc-claude-agent";
/// The sample prompt of `deploy --test`.
pub const TEST_PROMPT: &str = "Find where the auth token is validated in this repo.";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first request only asks whether a blob exists: a server that does not answer it in this
/// time counts as unreachable. Tagging is as quick.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Uploading and creating a large model can take minutes; a chat may first load the model.
const LONG_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const CHAT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const MAX_TAG_LEN: usize = 128;
const MAX_NAME_PART_LEN: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(
        "Ollama is not reachable at {host} ({reason}). The Modelfile is at {modelfile}; once Ollama runs, register the model with: ollama create {name} -f {modelfile}",
        modelfile = .modelfile.display()
    )]
    Unreachable { host: String, reason: String, name: String, modelfile: PathBuf },
    #[error("{host}: {step} failed: {reason}")]
    Transport { host: String, step: &'static str, reason: String },
    #[error("{host}: {step} answered HTTP {status}: {message}")]
    Rejected { host: String, step: &'static str, status: u16, message: String },
    #[error("invalid Ollama host {host:?}: {reason}")]
    BadHost { host: String, reason: String },
    #[error("invalid Ollama model name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("export {export_dir} has no GGUF{wanted} (it has: {available})", export_dir = .export_dir.display())]
    NoGguf { export_dir: PathBuf, wanted: String, available: String },
    #[error("{path}: {source}", path = .path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("{path} is {actual} bytes but export.json records {expected}: re-run the export", path = .path.display())]
    SizeMismatch { path: PathBuf, expected: u64, actual: u64 },
    #[error("export.json records {digest:?} for {path}, which is not a sha256 hex digest", path = .path.display())]
    BadDigest { path: PathBuf, digest: String },
}

/// What to register, where, and under which name.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// A URL or `host:port`, as `OLLAMA_HOST` accepts.
    pub host: String,
    /// The model name without tag.
    pub name: String,
    /// The GGUF quant to deploy; default: the first GGUF of the export.
    pub quant: Option<String>,
    /// The model version the first name is tagged with (see [`version_tag`]).
    pub version_tag: String,
    /// Send [`TEST_PROMPT`] through `/api/chat` afterwards.
    pub test: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployReport {
    pub export_id: String,
    /// The normalized base URL.
    pub host: String,
    /// `name:version_tag`.
    pub model: String,
    /// Every name registered: `name:version_tag` and `name:latest`.
    pub names: Vec<String>,
    pub gguf: PathBuf,
    /// `sha256:<hex>`.
    pub digest: String,
    /// False when Ollama already had the blob.
    pub uploaded: bool,
    pub bytes: u64,
    /// The assistant message of the test chat (role, content, tool_calls), with `--test`.
    pub test: Option<Value>,
}

/// The body of `POST /api/create` (Ollama ≥ 0.5.5; `modelfile` and `name` are deprecated).
#[derive(Debug, Serialize)]
struct CreateRequest<'a> {
    model: &'a str,
    files: BTreeMap<&'a str, &'a str>,
    template: &'a str,
    system: &'a str,
    parameters: CreateParameters<'a>,
    stream: bool,
}

#[derive(Debug, Serialize)]
struct CreateParameters<'a> {
    stop: &'a [String],
    num_ctx: u32,
    temperature: f32,
}

/// Register the export with Ollama. `progress` receives `(stage, done, total)`: stages are
/// `checking`, `uploading` (bytes of the GGUF sent), `creating`, `tagging` and `testing`.
pub fn deploy(
    export_dir: &Path,
    manifest: &ExportManifest,
    options: &DeployOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<DeployReport, DeployError> {
    let host = base_url(&options.host)?;
    validate_name(&options.name)?;
    validate_tag(&options.name, &options.version_tag)?;
    let model = format!("{}:{}", options.name, options.version_tag);
    let latest = format!("{}:latest", options.name);

    let file = choose_gguf(export_dir, manifest, options.quant.as_deref())?;
    let gguf = export_dir.join(&file.path);
    let hex = file.sha256.to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DeployError::BadDigest { path: gguf, digest: file.sha256.clone() });
    }
    let digest = format!("sha256:{hex}");
    let bytes = std::fs::metadata(&gguf).map_err(|source| DeployError::File { path: gguf.clone(), source })?.len();
    if bytes != file.bytes {
        return Err(DeployError::SizeMismatch { path: gguf, expected: file.bytes, actual: bytes });
    }
    let file_name = Path::new(&file.path).file_name().and_then(|n| n.to_str()).unwrap_or(&file.path);

    let client = Client::new(&host);
    let blob_url = format!("{host}/api/blobs/{digest}");

    progress("checking", 0, bytes);
    let probe = client.agent.head(&blob_url).config().timeout_global(Some(PROBE_TIMEOUT)).build().call();
    let probe = probe.map_err(|error| DeployError::Unreachable {
        host: host.clone(),
        reason: error.to_string(),
        name: options.name.clone(),
        modelfile: absolute(&export_dir.join(&manifest.modelfile)),
    })?;
    let uploaded = match probe.status().as_u16() {
        200 => false,
        404 => {
            progress("uploading", 0, bytes);
            let mut reader = ProgressReader {
                inner: File::open(&gguf).map_err(|source| DeployError::File { path: gguf.clone(), source })?,
                done: 0,
                total: bytes,
                progress: &mut *progress,
            };
            let response = client
                .agent
                .post(&blob_url)
                .header("Content-Length", bytes)
                .config()
                .timeout_global(Some(LONG_TIMEOUT))
                .build()
                .send(ureq::SendBody::from_reader(&mut reader));
            client.expect(response, "uploading the GGUF blob", &[200, 201])?;
            true
        }
        _ => return Err(client.rejected("checking the GGUF blob", probe)),
    };

    progress("creating", 0, 0);
    let mut files = BTreeMap::new();
    files.insert(file_name, digest.as_str());
    let settings = &manifest.ollama;
    let create = CreateRequest {
        model: &model,
        files,
        template: &settings.template,
        system: &settings.system,
        parameters: CreateParameters {
            stop: &settings.stop,
            num_ctx: settings.num_ctx,
            temperature: settings.temperature,
        },
        stream: false,
    };
    let response = client
        .agent
        .post(format!("{host}/api/create"))
        .config()
        .timeout_global(Some(LONG_TIMEOUT))
        .build()
        .send_json(&create);
    let body = client.expect(response, "creating the model", &[200])?;
    if body.get("status").and_then(Value::as_str) != Some("success") {
        return Err(DeployError::Rejected {
            host,
            step: "creating the model",
            status: 200,
            message: format!("no success status in {body}"),
        });
    }

    progress("tagging", 0, 0);
    let response = client
        .agent
        .post(format!("{host}/api/copy"))
        .config()
        .timeout_global(Some(PROBE_TIMEOUT))
        .build()
        .send_json(json!({"source": model, "destination": latest}));
    client.expect(response, "tagging latest", &[200])?;

    let test = if options.test {
        progress("testing", 0, 0);
        let request = json!({
            "model": latest,
            "messages": [
                {"role": "system", "content": settings.system},
                {"role": "user", "content": TEST_PROMPT},
            ],
            "tools": crate::traces::tools::default_tools(),
            "stream": false,
            "options": {"temperature": 0, "num_predict": 128},
        });
        let response = client
            .agent
            .post(format!("{host}/api/chat"))
            .config()
            .timeout_global(Some(CHAT_TIMEOUT))
            .build()
            .send_json(&request);
        let body = client.expect(response, "the test chat", &[200])?;
        let message = body.get("message").cloned().ok_or_else(|| DeployError::Rejected {
            host: host.clone(),
            step: "the test chat",
            status: 200,
            message: format!("no message in {body}"),
        })?;
        Some(message)
    } else {
        None
    };

    Ok(DeployReport {
        export_id: manifest.export_id.clone(),
        host,
        names: vec![model.clone(), latest],
        model,
        gguf,
        digest,
        uploaded,
        bytes,
        test,
    })
}

/// A model version as an Ollama tag: lowercased, characters outside `[a-z0-9_.-]` become `-`,
/// at most 128 characters, starting with a letter, digit or `_`.
pub fn version_tag(version: &str) -> String {
    let mut tag: String = version
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '-' })
        .collect();
    if !tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
        tag.insert(0, 'v');
    }
    tag.truncate(MAX_TAG_LEN);
    tag
}

/// The base URL for `OLLAMA_HOST`, resolved as Ollama resolves it: no scheme means http with
/// port 11434, `http://host` means port 80, an empty host means 127.0.0.1.
pub fn base_url(raw: &str) -> Result<String, DeployError> {
    let bad = |reason: &str| DeployError::BadHost { host: raw.to_string(), reason: reason.to_string() };
    let trimmed = raw.trim();
    let (scheme, rest, default_port) = match trimmed.split_once("://") {
        None => ("http", trimmed, "11434"),
        Some(("http", rest)) => ("http", rest, "80"),
        Some(("https", _)) => return Err(bad("https is not supported; Ollama listens on plain http")),
        Some((other, _)) => return Err(bad(&format!("unknown scheme {other:?}"))),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') => (host, port),
        _ => (authority, default_port),
    };
    let host = if host.is_empty() { "127.0.0.1" } else { host };
    let port: u16 = port.parse().map_err(|_| bad(&format!("port {port:?} is not a number")))?;
    if host.contains(|c: char| c.is_whitespace() || matches!(c, '@' | '?' | '#')) {
        return Err(bad("the host name has invalid characters"));
    }
    let path = path.trim_end_matches('/');
    Ok(if path.is_empty() { format!("{scheme}://{host}:{port}") } else { format!("{scheme}://{host}:{port}/{path}") })
}

fn choose_gguf<'a>(
    export_dir: &Path,
    manifest: &'a ExportManifest,
    quant: Option<&str>,
) -> Result<&'a ExportFile, DeployError> {
    manifest.gguf(quant).ok_or_else(|| {
        let available: Vec<&str> =
            manifest.files.iter().filter(|f| f.format == "gguf").filter_map(|f| f.quant.as_deref()).collect();
        DeployError::NoGguf {
            export_dir: export_dir.to_path_buf(),
            wanted: quant.map(|q| format!(" in quant {q}")).unwrap_or_default(),
            available: if available.is_empty() { "none".to_string() } else { available.join(", ") },
        }
    })
}

/// Ollama's rule for a name part: letters, digits, `_`, `.`, `-`, not starting with `.` or `-`.
fn valid_part(part: &str, max_len: usize) -> bool {
    !part.is_empty()
        && part.len() <= max_len
        && part.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Ollama's rule for model names: letters, digits, '_', '.', '-', an optional namespace.
pub fn validate_name(name: &str) -> Result<(), DeployError> {
    if name.split('/').all(|part| valid_part(part, MAX_NAME_PART_LEN)) {
        Ok(())
    } else {
        Err(DeployError::BadName {
            name: name.to_string(),
            reason: format!("use letters, digits, '_', '.' and '-' (a '/' between namespace and model), at most {MAX_NAME_PART_LEN} per part"),
        })
    }
}

fn validate_tag(name: &str, tag: &str) -> Result<(), DeployError> {
    if valid_part(tag, MAX_TAG_LEN) {
        Ok(())
    } else {
        Err(DeployError::BadName {
            name: format!("{name}:{tag}"),
            reason: format!("the tag must be 1 to {MAX_TAG_LEN} of letters, digits, '_', '.', '-'"),
        })
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A blocking client that turns every HTTP status into a response and names the host in errors.
struct Client<'a> {
    agent: ureq::Agent,
    host: &'a str,
}

impl<'a> Client<'a> {
    fn new(host: &'a str) -> Client<'a> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .build()
            .into();
        Client { agent, host }
    }

    /// The JSON body (or null when empty) of a response with one of the `accepted` statuses.
    fn expect(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        step: &'static str,
        accepted: &[u16],
    ) -> Result<Value, DeployError> {
        let mut response = response.map_err(|error| DeployError::Transport {
            host: self.host.to_string(),
            step,
            reason: error.to_string(),
        })?;
        if !accepted.contains(&response.status().as_u16()) {
            return Err(self.rejected(step, response));
        }
        let text = response.body_mut().read_to_string().map_err(|error| DeployError::Transport {
            host: self.host.to_string(),
            step,
            reason: error.to_string(),
        })?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|error| DeployError::Rejected {
            host: self.host.to_string(),
            step,
            status: response.status().as_u16(),
            message: format!("the reply is not JSON ({error}): {}", excerpt(&text)),
        })
    }

    /// Ollama's `{"error": "..."}` message, else the start of the body.
    fn rejected(&self, step: &'static str, mut response: ureq::http::Response<ureq::Body>) -> DeployError {
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|body| body.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| if text.trim().is_empty() { "no error message".to_string() } else { excerpt(&text) });
        DeployError::Rejected { host: self.host.to_string(), step, status, message }
    }
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The GGUF as a request body, reporting bytes read as upload progress.
struct ProgressReader<'a> {
    inner: File,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(&str, u64, u64),
}

impl Read for ProgressReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buffer)?;
        self.done += n as u64;
        (self.progress)("uploading", self.done, self.total);
        Ok(n)
    }
}
