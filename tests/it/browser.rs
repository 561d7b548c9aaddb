//! A real headless Chromium (Debian's chromium + chromedriver, driven over the W3C WebDriver
//! protocol) loads the Traces page, filters through htmx, and opens a trace; and plays the agent
//! loop by hand on the Playground against a served tiny model, streamed, then rates the answer
//! (thumbs up, an edit saved as preferred).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

use crate::support::{browser_tool, fixture, get, import_fixture, spawn_app, wait_for};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    process: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = match (method, body) {
        ("POST", Some(body)) => agent.post(url).send_json(body),
        ("POST", None) => agent.post(url).send_json(json!({})),
        _ => agent.get(url).call(),
    }
    .expect("webdriver request");
    response.body_mut().read_json().expect("webdriver JSON")
}

impl Driver {
    fn start() -> Driver {
        let (Some(chromedriver), Some(chromium)) = (browser_tool("chromedriver"), browser_tool("chromium")) else {
            panic!("Chromium and chromedriver are required (apt-get install chromium chromium-driver; .ci/run installs them)");
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let process = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        wait_for(20, "chromedriver", || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            agent.get(&format!("{base}/status")).call().ok().map(|_| ())
        });
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let created = call(
            "POST",
            &format!("{base}/session"),
            Some(json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args}}}})),
        );
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        Driver { process, base, session, _profile: profile }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{}", self.base, self.session, path)
    }

    fn go(&self, url: &str) {
        call("POST", &self.url("/url"), Some(json!({"url": url})));
    }

    fn current_url(&self) -> String {
        call("GET", &self.url("/url"), None)["value"].as_str().unwrap().to_string()
    }

    fn find(&self, css: &str) -> Option<String> {
        let found = call("POST", &self.url("/element"), Some(json!({"using": "css selector", "value": css})));
        found["value"][ELEMENT_KEY].as_str().map(str::to_string)
    }

    fn text(&self, css: &str) -> String {
        match self.find(css) {
            Some(element) => call("GET", &self.url(&format!("/element/{element}/text")), None)["value"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        }
    }

    fn click(&self, css: &str) {
        let element = wait_for(10, css, || self.find(css));
        call("POST", &self.url(&format!("/element/{element}/click")), None);
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = wait_for(10, css, || self.find(css));
        call("POST", &self.url(&format!("/element/{element}/value")), Some(json!({"text": text})));
    }

    fn clear(&self, css: &str) {
        let element = wait_for(10, css, || self.find(css));
        call("POST", &self.url(&format!("/element/{element}/clear")), None);
    }

    /// The current value of a form field (what the user typed, or what a script set).
    fn value(&self, css: &str) -> String {
        let element = wait_for(10, css, || self.find(css));
        call("GET", &self.url(&format!("/element/{element}/property/value")), None)["value"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

#[test]
fn chromium_filters_traces_with_htmx_and_opens_one() {
    skip_unless!(crate::support::External::Chromium);
    let app = spawn_app(|dir| {
        import_fixture(dir, "canonical_mixed.jsonl", "canonical");
        import_fixture(dir, "openai_mixed.jsonl", "openai");
    });
    let driver = Driver::start();
    driver.go(&app.url("/traces"));
    let count = driver.text("#trace-count");
    assert!(count.starts_with("4 traces"), "count {count:?}; page: {}", driver.text("body"));

    // Choosing a source in the select fires htmx's change trigger; the table is swapped in place.
    driver.click("#source option[value=synthetic]");
    wait_for(10, "the source filter", || driver.text("#trace-count").starts_with("1 trace").then_some(()));
    assert!(driver.current_url().contains("source=synthetic"), "htmx pushed the filter into the URL");

    // Typing in the search box filters too (debounced input trigger).
    driver.click("#source option[value='']");
    wait_for(10, "all traces again", || driver.text("#trace-count").starts_with("4 traces").then_some(()));
    driver.type_into("#q", "config");
    wait_for(10, "the text filter", || driver.text("#trace-count").starts_with("1 trace").then_some(()));
    assert!(driver.text("#trace-results").contains("List the config files"));

    driver.click("a.trace-link");
    wait_for(10, "the trace page", || driver.find("#trace-prompt").map(|_| ()));
    assert_eq!(driver.text("#trace-prompt"), "List the config files");
    let conversation = driver.text(".conversation");
    assert!(conversation.contains("Glob") && conversation.contains("config/settings.toml"), "{conversation}");

    // Navigation is plain links: following one works without htmx.
    driver.click("header nav a[href='/jobs']");
    wait_for(10, "the jobs page", || driver.current_url().ends_with("/jobs").then_some(()));
    assert!(driver.text("main").contains("import_traces"));
}

#[test]
fn the_playground_without_a_served_model_says_how_to_get_one() {
    skip_unless!(crate::support::External::Chromium);
    let app = spawn_app(|_| {});
    let page = get(&app.url("/playground"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("No model is served yet"), "{}", page.body);
    assert!(
        page.body.contains(r#"<a href="/training">Training</a>"#)
            && page.body.contains(r#"<a href="/models">Models</a>"#),
        "{}",
        page.body
    );
    assert!(!page.body.contains(r#"id="playground""#), "no chat form without a model");
    assert!(page.body.contains(r#"href="/playground" class="active""#), "the Playground is in the navigation");
}

#[test]
fn chromium_plays_the_agent_loop_in_the_playground() {
    skip_unless!(crate::support::External::Chromium);
    let app = spawn_app(crate::serve::served_model_dir);
    let first_line = std::fs::read_to_string(fixture("overfit_tools.jsonl")).unwrap();
    let trained_tools = serde_json::from_str::<Value>(first_line.lines().next().unwrap()).unwrap()["tools"].to_string();
    let driver = Driver::start();
    driver.go(&app.url("/playground"));
    let models = driver.text("#model option");
    assert!(models.starts_with("cc-tiny"), "the served model is listed: {models:?}; page: {}", driver.text("body"));
    assert!(
        driver.value("#system-prompt").starts_with("You are a coding agent working in a repository;"),
        "the default system prompt"
    );
    let default_tools: Value = serde_json::from_str(&driver.value("#tools-json")).expect("the tools box holds JSON");
    assert_eq!(default_tools.as_array().map(Vec::len), Some(6), "the default tools: {default_tools}");

    // A request the endpoint refuses shows its OpenAI error message; New chat starts over.
    driver.clear("#temperature");
    driver.type_into("#temperature", "5");
    driver.type_into("#message", "hello");
    driver.click("#send");
    let refused = wait_for(30, "the refusal", || Some(driver.text("#chat-error")).filter(|t| !t.is_empty()));
    assert!(refused.starts_with("400: temperature: 5 is not between 0 and 2"), "{refused}");
    driver.click("#new-chat");
    driver.clear("#temperature");
    driver.type_into("#temperature", "0");
    assert!(driver.text("#conversation").is_empty() && driver.text("#chat-error").is_empty());

    // The tiny model was trained with this system prompt and these three tools only.
    driver.clear("#system-prompt");
    driver.type_into("#system-prompt", "You are a coding agent. Use the tools.");
    driver.click("details.advanced summary");
    driver.clear("#tools-json");
    driver.type_into("#tools-json", &trained_tools);
    driver.type_into("#message", "Where is the login code?");
    driver.click("#send");

    let call = wait_for(60, "the streamed tool call", || {
        let call = driver.text("#conversation .tool-call");
        (call.contains("Grep") && call.contains("def login")).then_some(call)
    });
    assert!(call.contains(r#""path": "src""#), "arguments are pretty-printed JSON: {call}");
    let meta = driver.text("#conversation .reply-meta");
    assert!(
        meta.contains("finish: tool_calls") && meta.contains("cc-tiny exp_") && meta.contains("completion tokens"),
        "{meta}"
    );

    driver.type_into(".tool-result textarea", "src/auth.py:3:def login(user):");
    driver.click(".tool-result button");
    wait_for(60, "the final answer", || {
        driver.text("#conversation .message:last-child .content").eq("In src/auth.py, line 3.").then_some(())
    });
    assert!(driver.text("#conversation .message:last-child .reply-meta").contains("finish: stop"));
    assert!(
        driver.text("#conversation").contains("src/auth.py:3:def login(user):"),
        "the tool result is in the conversation"
    );
    assert!(driver.text("#chat-error").is_empty());

    // Rate the final answer: a thumbs up stores the conversation as a served trace, an edit
    // saved as preferred stores a preference pair.
    driver.click("#conversation .message:last-child .thumbs-up");
    let saved = wait_for(20, "the thumbs up saved", || {
        Some(driver.text("#conversation .message:last-child .feedback-status")).filter(|t| t.starts_with("saved"))
    });
    assert!(saved.starts_with("saved: up (trace tr_"), "{saved}");
    driver.click("#conversation .message:last-child .edit-preferred");
    driver.clear("#conversation .message:last-child .edit-content");
    driver.type_into("#conversation .message:last-child .edit-content", "The login code is in src/auth.py, line 3.");
    driver.click("#conversation .message:last-child .save-preferred");
    let preferred = wait_for(20, "the preferred edit saved", || {
        Some(driver.text("#conversation .message:last-child .feedback-status")).filter(|t| t.contains("pair pp_"))
    });
    assert!(preferred.starts_with("saved: preferred"), "{preferred}");
    let pairs = get(&app.url("/api/pairs")).json();
    assert_eq!(pairs["total"], 1, "{pairs}");
    assert_eq!(pairs["items"][0]["chosen"][0]["content"], "The login code is in src/auth.py, line 3.");
    assert_eq!(pairs["items"][0]["rejected"][0]["content"], "In src/auth.py, line 3.");
    let served = get(&app.url("/api/traces?source=served")).json();
    assert_eq!(served["total"], 2, "the thumbs-up trace and the pair's chosen side: {served}");

    driver.click("#new-chat");
    wait_for(10, "an empty conversation", || driver.text("#conversation").is_empty().then_some(()));
}

#[test]
fn chromium_edits_the_orchestrator_config_and_sees_traces_arrive_live() {
    skip_unless!(crate::support::External::Chromium);
    let app = spawn_app(|_| {});
    let driver = Driver::start();
    driver.go(&app.url("/orchestrator"));
    let readiness = driver.text("#orchestrator-readiness");
    assert!(readiness.starts_with("next cycle in 50 traces"), "{readiness}");
    assert!(driver.text("#no-cycles").contains("No cycle yet"));

    // A threshold of 0 is refused beside its field; nothing is stored.
    driver.clear("#min_traces");
    driver.type_into("#min_traces", "0");
    driver.click("#orchestrator-save");
    wait_for(10, "the field error", || driver.find("#min_traces-error").map(|_| ()));
    assert!(driver.text("#min_traces-error").contains("at least 1"));
    assert_eq!(get(&app.url("/api/orchestrator/config")).json()["min_traces"], 50);

    driver.clear("#min_traces");
    driver.type_into("#min_traces", "3");
    driver.click("#orchestrator-save");
    wait_for(10, "the saved notice", || driver.text("#orchestrator-notice").contains("saved").then_some(()));
    assert_eq!(get(&app.url("/api/orchestrator/config")).json()["min_traces"], 3);
    assert!(driver.text("#orchestrator-readiness").starts_with("next cycle in 3 traces"));

    // Traces arriving show up in the live panel (htmx polls it) without a reload.
    import_fixture(app.data_dir(), "canonical_mixed.jsonl", "canonical");
    import_fixture(app.data_dir(), "openai_mixed.jsonl", "openai");
    wait_for(15, "the panel to see the new traces", || {
        driver.text("#orchestrator-readiness").contains("the next cycle can start").then_some(())
    });
    assert!(driver.find("#orchestrator-once").is_some(), "Run a cycle now is offered");
}
