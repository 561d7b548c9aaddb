//! The real server on port 0: pages (full and htmx partials), forms with field errors, the JSON
//! API with its error envelope, uploads as jobs with cancel and resume, access control, and the
//! OpenAPI document covering every /api route.

use std::collections::BTreeSet;
use std::io::Write;

use serde_json::Value;

use crate::support::{get, http, import_fixture, reply, spawn_app, spawn_app_with_key, wait_for, Reply};

fn with_fixtures(dir: &std::path::Path) {
    import_fixture(dir, "canonical_mixed.jsonl", "canonical");
    import_fixture(dir, "openai_mixed.jsonl", "openai");
}

fn wait_for_job(base: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    // A liveness bound, not a speed check: the whole suite shares two cores (an import of
    // 120,000 lines outlasted 60 s beside the RL tests' training runs).
    wait_for(300, &format!("job {id}"), || {
        let detail = get(&format!("{base}/api/jobs/{id}")).json();
        done(&detail["job"]).then_some(detail)
    })
}

#[test]
fn health_and_static_assets() {
    let app = spawn_app(|_| {});
    let health = get(&app.url("/health"));
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "ok");
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().count();
    assert_eq!(health.json()["schema_version"], migrations as u64, "every migration applied");
    let htmx = get(&app.url("/static/htmx.min.js"));
    assert_eq!(htmx.status, 200);
    assert!(htmx.content_type.contains("javascript"), "{}", htmx.content_type);
    assert!(htmx.body.contains("htmx"));
    assert_eq!(get(&app.url("/static/nope.js")).status, 404);
}

#[test]
fn pages_render_and_navigation_links_all_work() {
    let app = spawn_app(with_fixtures);
    let dashboard = get(&app.url("/"));
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.content_type.starts_with("text/html"));
    assert!(dashboard.body.contains("synthetic") && dashboard.body.contains("import_traces"));
    let nav: Vec<&str> = dashboard
        .body
        .split("<nav>")
        .nth(1)
        .unwrap()
        .split("</nav>")
        .next()
        .unwrap()
        .split("href=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert!(nav.len() >= 5, "{nav:?}");
    for href in nav {
        let page = get(&app.url(href));
        assert_eq!(page.status, 200, "nav link {href}");
        assert!(page.body.contains("<main>"), "{href} is a full page");
    }
    let missing = get(&app.url("/no-such-page"));
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("no page at /no-such-page"));
}

#[test]
fn traces_page_filters_paginates_and_shows_a_conversation() {
    let app = spawn_app(with_fixtures);
    let all = get(&app.url("/traces"));
    assert!(all.body.contains("4 traces"), "{}", all.body);
    let synthetic = get(&app.url("/traces?source=synthetic&category=&split=&outcome=&q="));
    assert!(synthetic.body.contains("1 trace<"), "{}", synthetic.body);
    assert!(synthetic.body.contains("Find the auth middleware"));
    assert!(!synthetic.body.contains("Why does the build fail?"));
    // htmx asks for the results only.
    let partial = reply(http().get(&app.url("/traces?q=config")).header("HX-Request", "true").call());
    assert!(!partial.body.contains("<html"), "partial, not a page");
    assert!(partial.body.contains("List the config files") && partial.body.contains("1 trace<"));
    let paged = get(&app.url("/traces?per_page=3"));
    assert!(paged.body.contains("page 1 of 2") && paged.body.contains("page=2"), "{}", paged.body);
    let bad = get(&app.url("/traces?split=holdout"));
    assert_eq!(bad.status, 200);
    assert!(bad.body.contains("split: expected train, val or test"));

    let trace = get(&app.url("/traces/tr_fixture_1"));
    assert_eq!(trace.status, 200);
    for piece in [
        "Searching for middleware definitions.",
        "Grep",
        "pattern",
        "def .*auth",
        "src/auth/middleware.py:3",
        "require_auth",
        "found_expected_file",
    ] {
        assert!(trace.body.contains(piece), "trace page lacks {piece}");
    }
    assert_eq!(get(&app.url("/traces/tr_missing")).status, 404);

    let deleted = reply(http().post(&app.url("/traces/tr_fixture_1/delete")).send_empty());
    assert_eq!(deleted.status, 303);
    assert_eq!(get(&app.url("/traces/tr_fixture_1")).status, 404);
}

#[test]
fn api_lists_filters_and_errors_in_an_envelope() {
    let app = spawn_app(with_fixtures);
    let page = get(&app.url("/api/traces?per_page=2&page=2")).json();
    assert_eq!(page["total"], 4);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let filtered = get(&app.url("/api/traces?outcome=failure")).json();
    assert_eq!(filtered["total"], 1);
    let bad = get(&app.url("/api/traces?source=martian"));
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().starts_with("source:"));
    let trace = get(&app.url("/api/traces/tr_fixture_1")).json();
    assert_eq!(trace["messages"][1]["tool_calls"][0]["function"]["name"], "Grep");
    let missing = get(&app.url("/api/traces/tr_missing"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "not_found");
    let stats = get(&app.url("/api/stats")).json();
    assert_eq!(stats["traces"]["total"], 4);
    let export = get(&app.url("/api/traces/export?format=openai&source=synthetic"));
    assert_eq!(export.body.lines().count(), 1);
    assert_eq!(get(&app.url("/api/traces/export?format=xml")).status, 400);
    assert_eq!(reply(http().delete(&app.url("/api/traces/tr_fixture_1")).call()).status, 204);
    assert_eq!(reply(http().delete(&app.url("/api/traces/tr_fixture_1")).call()).status, 404);
}

fn multipart(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, content) in parts {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").unwrap();
        if let Some(filename) = filename {
            write!(body, "; filename=\"{filename}\"\r\nContent-Type: application/octet-stream").unwrap();
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    write!(body, "--{boundary}--\r\n").unwrap();
    body
}

fn post_form(url: &str, body: Vec<u8>) -> Reply {
    reply(http().post(url).header("Content-Type", "multipart/form-data; boundary=XyZ").send(&body[..]))
}

#[test]
fn upload_form_validates_fields_and_queues_a_job() {
    let app = spawn_app(|_| {});
    let no_file =
        post_form(&app.url("/import"), multipart("XyZ", &[("format", None, b"canonical"), ("file", Some(""), b"")]));
    assert_eq!(no_file.status, 422);
    assert!(
        no_file.body.contains("id=\"file-error\"") && no_file.body.contains("Choose a JSONL file"),
        "{}",
        no_file.body
    );
    let bad_format = post_form(
        &app.url("/import"),
        multipart("XyZ", &[("format", None, b"yaml"), ("file", Some("a.jsonl"), b"{}\n")]),
    );
    assert_eq!(bad_format.status, 422);
    assert!(bad_format.body.contains("id=\"format-error\"") && bad_format.body.contains("unknown format"));

    let file = std::fs::read(crate::support::fixture("sharegpt_mixed.jsonl")).unwrap();
    let accepted = post_form(
        &app.url("/import"),
        multipart("XyZ", &[("format", None, b"sharegpt"), ("file", Some("sg.jsonl"), &file)]),
    );
    assert_eq!(accepted.status, 303, "{}", accepted.body);
    let location = accepted.location.unwrap();
    let job_id = location.strip_prefix("/jobs/").unwrap();
    let detail = wait_for_job(&app.base, job_id, |job| job["status"] == "succeeded");
    assert_eq!(detail["job"]["result"]["imported"], 2);
    assert_eq!(detail["job"]["result"]["rejected"], 3);
    let page = get(&app.url(&location));
    assert!(page.body.contains("succeeded") && page.body.contains("sg.jsonl"), "{}", page.body);

    // A cross-site form post is refused.
    let forged = reply(
        http()
            .post(&app.url("/import"))
            .header("Origin", "http://evil.example")
            .header("Content-Type", "multipart/form-data; boundary=XyZ")
            .send(&multipart("XyZ", &[("format", None, b"canonical")])[..]),
    );
    assert_eq!(forged.status, 403);
}

#[test]
fn api_import_runs_in_the_background_and_can_be_cancelled_and_resumed() {
    // The cancel must reach a running import. If the import wins the race and finishes first,
    // the attempt is repeated with a file twice as big; losing every time fails the test.
    for lines in [60_000usize, 120_000, 240_000] {
        if cancel_and_resume_an_import(lines) {
            return;
        }
        eprintln!("an import of {lines} lines finished before the cancel arrived; trying a bigger one");
    }
    panic!("the cancel never reached a running import: the cancel and resume path was not exercised");
}

/// Import `lines` records through the API, cancel mid-way, resume; false when the import
/// finished before the cancel arrived (nothing was checked).
fn cancel_and_resume_an_import(lines: usize) -> bool {
    let app = spawn_app(|_| {});
    let mut body = String::new();
    for i in 0..lines {
        body.push_str(&format!(r#"{{"messages":[{{"role":"user","content":"task number {i}"}},{{"role":"assistant","content":"done {i}"}}]}}"#));
        body.push('\n');
    }
    let queued = reply(http().post(&app.url("/api/traces/import?format=openai&name=big.jsonl")).send(body.as_bytes()));
    assert_eq!(queued.status, 202, "{}", queued.body);
    let job_id = queued.json()["id"].as_str().unwrap().to_string();
    wait_for_job(&app.base, &job_id, |job| job["status"] != "queued");
    let cancel = reply(http().post(&app.url(&format!("/api/jobs/{job_id}/cancel"))).send_empty());
    assert!(cancel.status == 200 || cancel.status == 409, "{}", cancel.body);
    if cancel.status == 409 {
        return false;
    }
    let cancelled =
        wait_for_job(&app.base, &job_id, |job| job["status"] == "cancelled" || job["status"] == "succeeded");
    if cancelled["job"]["status"] == "succeeded" {
        // The cancel arrived after the last check: the import ended whole.
        return false;
    }
    let stored = get(&app.url("/api/stats")).json()["traces"]["total"].as_i64().unwrap();
    assert!(stored < lines as i64, "cancel stopped the import early ({stored} stored)");
    assert!(cancelled["logs"].as_array().unwrap().iter().any(|l| l["message"].as_str().unwrap().contains("cancelled")));

    let resumed = reply(http().post(&app.url(&format!("/api/jobs/{job_id}/resume"))).send_empty());
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let done = wait_for_job(&app.base, &job_id, |job| job["status"] == "succeeded");
    assert_eq!(done["job"]["result"]["imported"], lines, "{}", done["job"]["result"]);
    assert_eq!(done["job"]["result"]["duplicates"], 0, "resume continued, it did not start over");
    assert_eq!(get(&app.url("/api/stats")).json()["traces"]["total"], lines);
    let again = reply(http().post(&app.url(&format!("/api/jobs/{job_id}/resume"))).send_empty());
    assert_eq!(again.status, 409);
    true
}

#[test]
fn api_key_guards_the_api_when_set() {
    let app = spawn_app_with_key(|_| {}, Some("s3cret"));
    let denied = get(&app.url("/api/stats"));
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"]["type"], "authentication_error");
    let allowed = reply(http().get(&app.url("/api/stats")).header("Authorization", "Bearer s3cret").call());
    assert_eq!(allowed.status, 200);
}

#[test]
fn openapi_lists_every_api_route() {
    let app = spawn_app(with_fixtures);
    let document = get(&app.url("/openapi.json")).json();
    let documented: BTreeSet<String> = document["paths"].as_object().unwrap().keys().cloned().collect();
    // Every `.route("/x", ...)` a web feature registers in the api scope (its `api_routes`).
    let mut registered = BTreeSet::new();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/web")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let Some(start) = source.find("pub fn api_routes(") else { continue };
        let body = &source[start..start + source[start..].find("\n}\n").unwrap()];
        registered
            .extend(body.split(".route(\"").skip(1).map(|rest| format!("/api{}", rest.split('"').next().unwrap())));
    }
    assert!(registered.len() >= 29, "every feature's api_routes were read: {registered:?}");
    for route in &registered {
        assert!(documented.contains(route), "{route} is not in /openapi.json: {documented:?}");
    }
    assert!(documented.contains("/health"));
    // Documented GET routes answer.
    for path in documented.iter().filter(|p| document["paths"][p.as_str()]["get"].is_object()) {
        let concrete = path.replace("{id}", "tr_fixture_1").replace("{name}", "code_search");
        let status = get(&app.url(&concrete)).status;
        // Ids other than the fixture trace's do not exist here: those answer 404, not 405 or 500.
        assert!(status == 200 || (status == 404 && !path.starts_with("/api/traces")), "{path} -> {status}");
    }
    let docs = get(&app.url("/docs"));
    for route in registered.iter().map(String::as_str).chain(["/v1/models", "/v1/chat/completions", "/v1/completions"])
    {
        assert!(documented.contains(route), "{route} is not in /openapi.json");
        assert!(docs.body.contains(route), "docs page lacks {route}");
    }
}

#[test]
fn preference_pairs_import_over_the_api_and_the_form() {
    let app = spawn_app(|_| {});
    let file = std::fs::read(crate::support::fixture("dpo_pairs.jsonl")).unwrap();
    let queued = reply(http().post(&app.url("/api/pairs/import?name=dpo_pairs.jsonl")).send(&file[..]));
    assert_eq!(queued.status, 202, "{}", queued.body);
    let job_id = queued.json()["id"].as_str().unwrap().to_string();
    let done = wait_for_job(&app.base, &job_id, |job| job["status"] == "succeeded");
    assert_eq!(done["job"]["result"]["imported"], 3, "{}", done["job"]["result"]);
    let pairs = get(&app.url("/api/pairs")).json();
    assert_eq!(pairs["total"], 3);
    assert!(pairs["items"][0]["trace_id"].is_string());
    assert_eq!(get(&app.url("/api/traces?source=dpo_import")).json()["total"], 3);

    // The import form takes the same file as "dpo"; everything is a duplicate now.
    let form = post_form(
        &app.url("/import"),
        multipart("XyZ", &[("format", None, b"dpo"), ("file", Some("dpo_pairs.jsonl"), &file)]),
    );
    assert_eq!(form.status, 303, "{}", form.body);
    let job_id = form.location.unwrap().trim_start_matches("/jobs/").to_string();
    let again = wait_for_job(&app.base, &job_id, |job| job["status"] == "succeeded");
    assert_eq!(again["job"]["kind"], "import_dpo");
    assert_eq!(again["job"]["result"]["imported"], 0);
}

/// A data dir with a tiny model trained just long enough (40 steps, seeded) that its export
/// passes every parity check, tool calls included.
fn trained_tiny_model(dir: &std::path::Path) {
    use crate::support::{cli, fixture};
    let run = cli(dir, &["import", "traces", fixture("overfit.jsonl").to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let built = cli(dir, &["build-dataset", "--val-ratio", "0", "--test-ratio", "0", "--json"]);
    assert_eq!(built.code, 0, "{}", built.stderr);
    let args = [
        "train",
        "--phase",
        "sft",
        "--max-steps",
        "40",
        "--epochs",
        "40",
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
    ];
    let trained = cli(dir, &args);
    assert_eq!(trained.code, 0, "{}", trained.stderr);
}

fn post_urlencoded(url: &str, body: &str) -> Reply {
    reply(http().post(url).header("Content-Type", "application/x-www-form-urlencoded").send(body))
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn models_page_exports_and_deploys_as_jobs_and_shows_parity() {
    let app = spawn_app(trained_tiny_model);
    let model_id = get(&app.url("/api/models")).json()[0]["id"].as_str().unwrap().to_string();
    let models = get(&app.url("/models"));
    assert!(models.body.contains(&format!("action=\"/models/{model_id}/export\"")), "{}", models.body);
    assert!(models.body.contains("value=\"q4_k_m\" checked"), "q4_k_m is checked by default");
    assert!(models.body.contains("No export yet"));

    // Refused requests: the form names the problem on the page, the API in its envelope.
    let no_quant = post_urlencoded(&app.url(&format!("/models/{model_id}/export")), "");
    assert_eq!(no_quant.status, 422);
    assert!(
        no_quant.body.contains(&format!("id=\"export-error-{model_id}\""))
            && no_quant.body.contains("choose at least one quant"),
        "{}",
        no_quant.body
    );
    let bad_quant = reply(
        http()
            .post(&app.url(&format!("/api/models/{model_id}/export")))
            .send_json(serde_json::json!({"quants": ["q3_k"]})),
    );
    assert_eq!(bad_quant.status, 400);
    assert!(
        bad_quant.json()["error"]["message"].as_str().unwrap().starts_with("quants: unknown quant \"q3_k\""),
        "{}",
        bad_quant.body
    );
    let unknown =
        reply(http().post(&app.url("/api/models/mdl_nope/export")).send_json(serde_json::json!({"quants": ["q8_0"]})));
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["type"], "not_found");
    assert_eq!(
        reply(http().post(&app.url("/api/exports/exp_nope/deploy")).send_json(serde_json::json!({}))).status,
        404
    );

    // The API export runs as a job; the export and its parity report are stored.
    let queued = reply(
        http()
            .post(&app.url(&format!("/api/models/{model_id}/export")))
            .send_json(serde_json::json!({"quants": ["q8_0"]})),
    );
    assert_eq!(queued.status, 202, "{}", queued.body);
    assert_eq!(queued.json()["kind"], "export");
    let job_id = queued.json()["id"].as_str().unwrap().to_string();
    let done = wait_for_job(&app.base, &job_id, |job| job["status"] != "queued" && job["status"] != "running");
    assert_eq!(done["job"]["status"], "succeeded", "{}", done["job"]);
    let exports = get(&app.url("/api/exports")).json();
    assert_eq!(exports.as_array().unwrap().len(), 1, "{exports}");
    let export = &exports[0];
    let export_id = export["id"].as_str().unwrap().to_string();
    assert_eq!(export["model_id"], model_id.as_str());
    assert_eq!(export["parity_passed"], true, "{}", export["manifest"]["parity"]);
    let checks: Vec<&str> = export["manifest"]["parity"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(checks.contains(&"tool_call") && checks.contains(&"agreement:q8_0"), "{checks:?}");
    assert!(export["manifest"]["files"].as_array().unwrap().iter().any(|f| f["quant"] == "q8_0"));

    // The form export queues a job too and redirects to its live page.
    let form_export = post_urlencoded(&app.url(&format!("/models/{model_id}/export")), "quant=q4_k_m&quant=q8_0");
    assert_eq!(form_export.status, 303, "{}", form_export.body);
    let location = form_export.location.unwrap();
    let form_job = location.strip_prefix("/jobs/").unwrap().to_string();
    let done = wait_for_job(&app.base, &form_job, |job| job["status"] != "queued" && job["status"] != "running");
    assert_eq!(done["job"]["kind"], "export");
    assert_eq!(get(&app.url("/api/exports")).json().as_array().unwrap().len(), 2);

    // An export whose parity failed (the same manifest with tool_call failed) is listed as such
    // and cannot be deployed.
    let mut manifest = export["manifest"].clone();
    manifest["parity"]["passed"] = Value::Bool(false);
    for check in manifest["parity"]["checks"].as_array_mut().unwrap() {
        if check["name"] == "tool_call" {
            check["passed"] = Value::Bool(false);
            check["detail"] = Value::String("none of 4 prompts gave a parseable tool call".into());
        }
    }
    let db = understudy::store::Store::open(app.data_dir()).unwrap().connect().unwrap();
    db.insert_export("exp_failed", Some(&model_id), "failed", export["path"].as_str().unwrap(), &manifest, false)
        .unwrap();

    let page = get(&app.url("/models"));
    assert_eq!(page.status, 200);
    let row = |id: &str| {
        page.body.split(&format!("<tr id=\"export-{id}\">")).nth(1).unwrap().split("</tr>").next().unwrap().to_string()
    };
    let passed = row(&export_id);
    assert!(
        passed.contains("parity passed") && passed.contains("tool_call") && passed.contains("<details>"),
        "{passed}"
    );
    assert!(
        passed.contains(&format!("action=\"/exports/{export_id}/deploy\""))
            && passed.contains("value=\"cc-claude-agent\""),
        "{passed}"
    );
    assert!(passed.contains("value=\"http://127.0.0.1:11434\"") && passed.contains("name=\"test\""), "{passed}");
    assert!(passed.contains("q8_0") && passed.contains(" MB"), "{passed}");
    let failed = row("exp_failed");
    assert!(
        failed.contains("parity failed") && failed.contains("none of 4 prompts gave a parseable tool call"),
        "{failed}"
    );
    assert!(
        !failed.contains("/deploy\"") && failed.contains("Not deployable: the tool_call parity check failed"),
        "{failed}"
    );
    let refused = reply(http().post(&app.url("/api/exports/exp_failed/deploy")).send_json(serde_json::json!({})));
    assert_eq!(refused.status, 409, "{}", refused.body);

    // Bad deploy input: 422 on the page, 400 naming the field in the API.
    let bad_host = post_urlencoded(
        &app.url(&format!("/exports/{export_id}/deploy")),
        "name=cc-claude-agent&host=https%3A%2F%2Fexample.com&quant=",
    );
    assert_eq!(bad_host.status, 422);
    assert!(
        bad_host.body.contains(&format!("id=\"deploy-error-{export_id}\""))
            && bad_host.body.contains("https is not supported"),
        "{}",
        bad_host.body
    );
    let bad_quant = reply(
        http()
            .post(&app.url(&format!("/api/exports/{export_id}/deploy")))
            .send_json(serde_json::json!({"quant": "f16"})),
    );
    assert_eq!(bad_quant.status, 400);
    assert!(bad_quant.json()["error"]["message"].as_str().unwrap().starts_with("quant: "), "{}", bad_quant.body);
    let bad_name = reply(
        http()
            .post(&app.url(&format!("/api/exports/{export_id}/deploy")))
            .send_json(serde_json::json!({"name": "-bad name"})),
    );
    assert_eq!(bad_name.status, 400);
    assert!(bad_name.json()["error"]["message"].as_str().unwrap().starts_with("name: "), "{}", bad_name.body);

    // Deploying where no Ollama listens: accepted as a job, which fails saying how to register
    // the model by hand.
    let host = format!("http://127.0.0.1:{}", closed_port());
    let deploy = reply(
        http()
            .post(&app.url(&format!("/api/exports/{export_id}/deploy")))
            .send_json(serde_json::json!({"host": host, "quant": "q8_0"})),
    );
    assert_eq!(deploy.status, 202, "{}", deploy.body);
    assert_eq!(deploy.json()["kind"], "deploy");
    let deploy_id = deploy.json()["id"].as_str().unwrap().to_string();
    let ended = wait_for_job(&app.base, &deploy_id, |job| job["status"] != "queued" && job["status"] != "running");
    assert_eq!(ended["job"]["status"], "failed", "{}", ended["job"]);
    let error = ended["job"]["error"].as_str().unwrap();
    assert!(error.contains("ollama create cc-claude-agent") && error.contains("Modelfile"), "{error}");
    let form_deploy = post_urlencoded(
        &app.url(&format!("/exports/{export_id}/deploy")),
        &format!("name=cc-tiny&host={}&quant=q8_0&test=on", host.replace(':', "%3A").replace('/', "%2F")),
    );
    assert_eq!(form_deploy.status, 303, "{}", form_deploy.body);
    let form_deploy_job = form_deploy.location.unwrap().trim_start_matches("/jobs/").to_string();
    let ended =
        wait_for_job(&app.base, &form_deploy_job, |job| job["status"] != "queued" && job["status"] != "running");
    assert_eq!(ended["job"]["params"]["test"], true);
    assert!(ended["job"]["error"].as_str().unwrap().contains("ollama create cc-tiny"), "{}", ended["job"]);
}

/// One raw HTTP/1.1 request (the Host header as given), the status code of the answer.
fn raw_status(address: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, answer)
}

#[test]
fn a_loopback_server_refuses_foreign_host_names_and_cross_origin_api_writes() {
    let app = spawn_app(|_| {});
    let address = app.base.trim_start_matches("http://").to_string();
    let get_with_host = |path: &str, host: &str| {
        raw_status(&address, &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
    };
    // A page on another name that rebinds its DNS to 127.0.0.1 sends its own name: refused
    // everywhere, in each surface's envelope.
    for path in ["/api/stats", "/", "/v1/models"] {
        let (status, answer) = get_with_host(path, "rebind.example.com:8080");
        assert_eq!(status, 403, "{path}: {answer}");
        assert!(answer.contains("rebind.example.com") && answer.contains("--allowed-hosts"), "{answer}");
    }
    assert!(get_with_host("/v1/models", "evil.example").1.contains("permission_error"));
    for host in [address.as_str(), "localhost", "127.0.0.1"] {
        assert_eq!(get_with_host("/api/stats", host).0, 200, "{host}");
    }
    // A JSON write to /api from another origin is refused like a cross-site form post.
    let body = r#"{"min_traces": 7}"#;
    let put = |origin: &str| {
        raw_status(
            &address,
            &format!(
                "PUT /api/orchestrator/config HTTP/1.1\r\nHost: {address}\r\nOrigin: {origin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, answer) = put("http://evil.example");
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("cross-origin"), "{answer}");
    assert_eq!(get(&app.url("/api/orchestrator/config")).json()["min_traces"], 50, "nothing stored");
    assert_eq!(put(&format!("http://{address}")).0, 200);
    assert_eq!(get(&app.url("/api/orchestrator/config")).json()["min_traces"], 7);
}

/// OpenAI's request rules on /v1, each refused with the envelope and the `param` it names
/// (checked before any model is needed); unknown fields stay ignored.
#[test]
fn v1_refuses_what_openai_refuses_naming_the_param() {
    let app = spawn_app(|_| {});
    let user = serde_json::json!({"role": "user", "content": "find the config"});
    let call = serde_json::json!({"role": "assistant", "content": null,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Glob", "arguments": "{\"pattern\": \"*.toml\"}"}}]});
    let answer = |id: &str| serde_json::json!({"role": "tool", "tool_call_id": id, "content": "config.toml"});
    let tool = |parameters: Value| serde_json::json!([{"type": "function", "function": {"name": "Glob", "parameters": parameters}}]);
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "a tool message that answers no call",
            serde_json::json!({"messages": [user, answer("call_1")]}),
            "messages[1]",
        ),
        (
            "a tool message answering an unknown id",
            serde_json::json!({"messages": [user, call, answer("call_9")]}),
            "messages[2]",
        ),
        (
            "tool calls left unanswered",
            serde_json::json!({"messages": [user, call, {"role": "user", "content": "and?"}]}),
            "messages[1]",
        ),
        (
            "parameters that are not an object",
            serde_json::json!({"messages": [user], "tools": tool(Value::from("a string"))}),
            "tools[0].function.parameters",
        ),
        (
            "parameters whose schema is not of type object",
            serde_json::json!({"messages": [user], "tools": tool(serde_json::json!({"type": "array"}))}),
            "tools[0].function.parameters",
        ),
        ("n above 1", serde_json::json!({"messages": [user], "n": 2}), "n"),
        (
            "an unknown response_format",
            serde_json::json!({"messages": [user], "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            "a json_schema response_format without its schema object",
            serde_json::json!({"messages": [user], "response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            "a json_schema whose schema is not an object",
            serde_json::json!({"messages": [user], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}}),
            "response_format.json_schema.schema",
        ),
        ("temperature out of range", serde_json::json!({"messages": [user], "temperature": 3}), "temperature"),
        ("no messages", serde_json::json!({"messages": []}), "messages"),
    ];
    for (what, body, param) in cases {
        let answer = reply(http().post(&app.url("/v1/chat/completions")).send_json(body));
        assert_eq!(answer.status, 400, "{what}: {}", answer.body);
        let error = &answer.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{what}: {error}");
        assert_eq!(error["param"], param, "{what}: {error}");
    }
    // A well-formed conversation with an unknown field passes validation (and then finds no
    // model: 404 in the same envelope).
    let fine = serde_json::json!({"messages": [user, call, answer("call_1")], "tools": tool(serde_json::json!({"type": "object"})),
        "response_format": {"type": "text"}, "some_future_field": true});
    let answer = reply(http().post(&app.url("/v1/chat/completions")).send_json(fine));
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "model_not_found", "{}", answer.body);
}
