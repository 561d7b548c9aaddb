//! Evaluation: suites import with every bad line named; `heldout` shares no prompt with
//! bootstrap; executed success is a real sandbox check (a run that edits the wrong file fails
//! it); the same model and suite give the same numbers; a served model is scored through its
//! endpoint by the same harness, and an endpoint that does not answer fails its cases with the
//! reason while the run goes on.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use understudy::bootstrap::generator::{generate, generate_from, Pool};
use understudy::bootstrap::workflows::{builtin, Check};
use understudy::eval::episode::{Policy, PolicyReply};
use understudy::eval::suite::{heldout, EvalCase};
use understudy::store::Store;
use understudy::traces::{Message, Role, Trace};

use crate::support::{cli, get, spawn_app};

#[test]
fn suites_import_refuses_bad_lines_by_number_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("paraphrased.jsonl");
    let good = r#"{"id": "p1", "category": "code_search", "prompt": "Which file holds the login handler?", "first_tools": ["Grep"]}"#;
    let unknown_tool = r#"{"id": "p2", "prompt": "Read it", "first_tools": ["Teleport"]}"#;
    std::fs::write(&file, format!("{good}\n{unknown_tool}\n{{oops\n")).unwrap();
    let refused = cli(dir.path(), &["eval", "suites", "import", file.to_str().unwrap()]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("line 2: first_tools") && refused.stderr.contains("Teleport"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("line 3: line"), "{}", refused.stderr);
    let listed = cli(dir.path(), &["eval", "suites", "list", "--json"]).json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "nothing was stored: {listed}");

    std::fs::write(&file, format!("{good}\n")).unwrap();
    let imported = cli(dir.path(), &["eval", "suites", "import", file.to_str().unwrap()]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    let listed = cli(dir.path(), &["eval", "suites", "list", "--json"]).json();
    let names: Vec<(&str, u64)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["cases"].as_u64().unwrap()))
        .collect();
    assert_eq!(names, vec![("heldout", 100), ("paraphrased", 1)]);
}

#[test]
fn heldout_shares_no_prompt_or_phrasing_with_bootstrap() {
    let templates = builtin();
    for template in &templates {
        for scenario in &template.scenarios {
            // The phrasings a trace of this scenario draws from, as the generator chains them.
            let pool = || template.prompts.iter().chain(scenario.prompts.iter());
            let training: BTreeSet<&String> = Pool::Training.of(pool()).into_iter().collect();
            let held: BTreeSet<&String> = Pool::HeldOut.of(pool()).into_iter().collect();
            assert!(!held.is_empty() && !training.is_empty(), "{}/{}: a pool is empty", template.name, scenario.name);
            assert!(training.is_disjoint(&held), "{}/{}: the phrasing pools overlap", template.name, scenario.name);
        }
    }
    // Every bootstrap run draws from the training pools, whatever its seed.
    let mut trained: BTreeSet<String> = BTreeSet::new();
    for seed in [42, 0, 1, 7] {
        for index in 0..500 {
            if let Ok(trace) = generate(&templates, seed, index) {
                trained.insert(trace.prompt);
            }
        }
    }
    let cases = heldout(100);
    assert_eq!(cases.len(), 100);
    let shared: Vec<&str> = cases.iter().filter(|c| trained.contains(&c.prompt)).map(|c| c.prompt.as_str()).collect();
    assert!(shared.is_empty(), "held-out prompts seen in training: {shared:?}");
}

/// Plays a generated trace's own replies back (optionally steering every file write elsewhere).
struct Scripted {
    replies: Vec<Message>,
    misdirect: bool,
}

impl Policy for Scripted {
    fn reply(&mut self, _: &[Message], _: &[Value]) -> Result<PolicyReply, String> {
        if self.replies.is_empty() {
            return Err("the script ran out".into());
        }
        let message = self.replies.remove(0);
        let tool_calls = message
            .tool_calls
            .iter()
            .map(|call| {
                let mut arguments = call.arguments_value();
                if self.misdirect && matches!(call.name.as_str(), "Edit" | "Write") {
                    arguments["file_path"] = Value::String("NOTES.md".into());
                }
                (call.name.clone(), arguments)
            })
            .collect();
        Ok(PolicyReply { content: message.content.clone(), tool_calls, malformed: 0, tokens: 1, finished: true })
    }
}

/// A generated task whose success needs a file to change, and its case.
fn editing_task() -> (Trace, EvalCase) {
    let templates = builtin();
    for index in 0..200 {
        let Ok((trace, checks)) = generate_from(&templates, 11, index, Pool::HeldOut) else { continue };
        if checks.iter().any(|c| matches!(c, Check::FileContains { .. })) {
            let names: Vec<String> = trace.tool_calls().map(|c| c.name.clone()).collect();
            let case = EvalCase {
                id: "edit".into(),
                category: trace.category.clone(),
                prompt: trace.prompt.clone(),
                tools: Vec::new(),
                workspace_seed: trace.metadata["workspace_seed"].as_u64(),
                checks,
                first_tools: vec![names[0].clone()],
                must_call: names.last().cloned().into_iter().collect(),
                answer_facts: Vec::new(),
                reference: names,
            };
            return (trace, case);
        }
    }
    panic!("no generated task edits a file");
}

#[test]
fn executed_success_is_a_real_sandbox_check() {
    let (trace, case) = editing_task();
    let replies: Vec<Message> = trace.messages.iter().filter(|m| m.role == Role::Assistant).cloned().collect();
    let (_, right) =
        understudy::eval::evaluate_case(&mut Scripted { replies: replies.clone(), misdirect: false }, &case, 20);
    assert_eq!(right.success, Some(true), "{right:?}");
    assert_eq!((right.first_tool, right.sequence_exact, right.must_call), (Some(true), Some(true), Some(true)));
    assert!(right.parsed && right.names_valid && right.arguments_valid && right.stopped, "{right:?}");

    let (episode, wrong) = understudy::eval::evaluate_case(&mut Scripted { replies, misdirect: true }, &case, 20);
    assert_eq!(wrong.success, Some(false), "the edit went to the wrong file: {wrong:?}");
    assert_eq!(wrong.sequence_exact, Some(true), "the same tools were called");
    assert!(episode.calls.iter().any(|c| c.arguments["file_path"] == "NOTES.md"));

    // A call whose arguments do not fit the tool's schema is never valid.
    let mut bad = vec![Message {
        role: Role::Assistant,
        content: None,
        tool_calls: vec![understudy::traces::ToolCall {
            id: "c1".into(),
            name: "Read".into(),
            arguments: r#"{"command": "cat README.md"}"#.into(),
        }],
        tool_call_id: None,
        name: None,
    }];
    bad.push(Message::text(Role::Assistant, "done"));
    let (_, invalid) = understudy::eval::evaluate_case(&mut Scripted { replies: bad, misdirect: false }, &case, 20);
    assert!(!invalid.arguments_valid && invalid.names_valid, "{invalid:?}");
}

fn metrics_without_timing(outcome: &Value) -> Value {
    let mut overall = outcome["overall"].clone();
    overall.as_object_mut().unwrap().remove("seconds");
    overall
}

#[test]
fn the_same_model_scores_the_same_and_its_endpoint_is_scored_by_the_same_harness() {
    let app = spawn_app(crate::serve::served_model_dir);
    let dir = app.data_dir();
    let suite = dir.join("login.jsonl");
    std::fs::write(
        &suite,
        concat!(
            r#"{"id": "l1", "category": "code_search", "prompt": "Where is the login code?", "tools": ["Grep", "Read", "Bash"], "first_tools": ["Grep"], "reference": ["Grep"]}"#,
            "\n",
            r#"{"id": "l2", "category": "data_query", "prompt": "How many users are in data/users.csv?", "tools": ["Grep", "Read", "Bash"], "first_tools": ["Bash", "Read"]}"#,
            "\n"
        ),
    )
    .unwrap();
    assert_eq!(cli(dir, &["eval", "suites", "import", suite.to_str().unwrap()]).code, 0);
    let run = |args: &[&str]| {
        let run = cli(dir, args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.json()
    };
    let first = run(&["eval", "--suite", "login", "--max-turns", "3", "--max-tokens", "96", "--json"]);
    let second = run(&["eval", "--suite", "login", "--max-turns", "3", "--max-tokens", "96", "--json"]);
    assert_eq!(first["overall"]["cases"], 2, "{first}");
    assert_ne!(first["eval_run_id"], second["eval_run_id"]);
    assert_eq!(metrics_without_timing(&first), metrics_without_timing(&second), "greedy: identical numbers");
    assert_eq!(first["categories"].as_object().unwrap().len(), 2);
    assert_eq!(first["overall"]["first_tool"]["n"], 2);

    // The runs are on the Models page, the API, and a page per run and per case.
    let run_id = first["eval_run_id"].as_str().unwrap();
    assert!(get(&app.url("/models")).body.contains(run_id));
    let listed = get(&app.url("/api/evals")).json();
    assert!(listed.as_array().unwrap().iter().any(|r| r["id"] == run_id), "{listed}");
    let detail = get(&app.url(&format!("/api/evals/{run_id}"))).json();
    assert_eq!(detail["cases"].as_array().unwrap().len(), 2);
    assert_eq!(detail["cases"][0]["case"]["reference"], serde_json::json!(["Grep"]));
    // Each episode's opening tool is recorded, and the summary counts them.
    let mut opened = std::collections::BTreeMap::new();
    for case in detail["cases"].as_array().unwrap() {
        let tool = case["score"]["first_call"].as_str().unwrap_or("none").to_string();
        assert!(tool == "none" || case["score"]["calls"].as_u64().unwrap() > 0, "{case}");
        *opened.entry(tool).or_insert(0u64) += 1;
    }
    assert_eq!(first["overall"]["first_calls"], serde_json::json!(opened), "{first}");
    let page = get(&app.url(&format!("/evals/{run_id}")));
    assert!(page.status == 200 && page.body.contains("l1") && page.body.contains("l2"), "{}", page.body);
    assert!(
        page.body.contains("Right first tool, % per category") && page.body.matches("<svg").count() >= 3,
        "per-category bar charts: {}",
        page.body
    );
    let case = get(&app.url(&format!("/evals/{run_id}/cases/0")));
    assert_eq!(case.status, 200);
    assert!(case.body.contains("Where is the login code?") && case.body.contains("Grep"), "{}", case.body);
    assert!(case.body.contains("class=\"conversation\""), "the episode is shown as a conversation");
    assert_eq!(get(&app.url("/evals/ev_nope")).status, 404);

    let endpoint = run(&[
        "eval",
        "--endpoint",
        &app.base,
        "--endpoint-model",
        "cc-tiny",
        "--suite",
        "login",
        "--max-turns",
        "3",
        "--max-tokens",
        "96",
        "--json",
    ]);
    assert_eq!(endpoint["overall"]["cases"], 2, "{endpoint}");
    assert_eq!(endpoint["overall"]["parsed"]["hits"], 2, "the endpoint answered every case: {endpoint}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = format!("http://127.0.0.1:{closed}");
    let failed = run(&["eval", "--endpoint", &unreachable, "--endpoint-model", "x", "--suite", "login", "--json"]);
    assert_eq!((failed["overall"]["cases"].as_u64(), failed["overall"]["parsed"]["hits"].as_u64()), (Some(2), Some(0)));
    let cases =
        Store::open(dir).unwrap().connect().unwrap().eval_cases(failed["eval_run_id"].as_str().unwrap()).unwrap();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let reason = case.score["error"].as_str().unwrap_or_default();
        assert!(reason.contains(&unreachable), "the reason is recorded: {reason:?}");
    }
}

/// An eval summary with the given success and argument-validity hits out of 100.
fn summary(success: usize, valid: usize) -> Value {
    use understudy::eval::metrics::{Rate, Summary};
    let rate = |hits| Rate::new(hits, 100);
    let overall = Summary {
        cases: 100,
        parsed: rate(100),
        names_valid: rate(100),
        arguments_valid: rate(valid),
        valid_calls: rate(valid),
        first_tool: rate(50),
        first_calls: [("Grep".to_string(), 100)].into(),
        sequence_exact: rate(10),
        similarity: 0.5,
        success: rate(success),
        facts: rate(0),
        must_call: rate(0),
        stopped: rate(100),
        turns: 3.0,
        tokens: 80.0,
        seconds: 0.5,
    };
    serde_json::json!({"overall": overall})
}

#[test]
fn promotion_follows_the_rule_and_every_decision_is_recorded() {
    use understudy::eval::promotion::{apply, promote_by_hand, Rule};
    use understudy::store::NewModel;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut db = store.connect().unwrap();
    let suites = vec!["heldout".to_string()];
    let model = |db: &mut understudy::store::Db, name: &str, success: usize, valid: usize| {
        let metrics = serde_json::json!({});
        let id = db
            .insert_model(&NewModel {
                name,
                base_model: "tiny",
                parent_id: None,
                dataset_id: None,
                run_id: None,
                path: "/nowhere",
                metrics: &metrics,
            })
            .unwrap();
        let run = format!("ev_{name}");
        db.ensure_eval_run(&run, "job_x", name, Some(&id), &suites).unwrap();
        db.finish_eval_run(&run, &summary(success, valid)).unwrap();
        id
    };
    let first = model(&mut db, "first", 40, 90);
    let decision = apply(&mut db, &first, &Rule::default()).unwrap();
    assert!(decision.promoted, "no champion yet: {decision:?}");
    let barely = model(&mut db, "barely", 41, 95);
    assert!(!apply(&mut db, &barely, &Rule::default()).unwrap().promoted, "0.41 does not beat 0.40 by 0.02");
    let invalid = model(&mut db, "invalid", 60, 80);
    let refused = apply(&mut db, &invalid, &Rule::default()).unwrap();
    assert!(!refused.promoted && refused.reason.contains("validity"), "{refused:?}");
    let better = model(&mut db, "better", 60, 95);
    assert!(apply(&mut db, &better, &Rule::default()).unwrap().promoted);
    let champions: Vec<String> =
        db.list_models().unwrap().into_iter().filter(|m| m.is_champion).map(|m| m.id).collect();
    assert_eq!(champions, vec![better.clone()], "exactly one champion");
    promote_by_hand(&mut db, &first).unwrap();
    let history = db.list_promotions(10).unwrap();
    let verdicts: Vec<(bool, &str)> = history.iter().map(|p| (p.promoted, p.model_id.as_str())).collect();
    assert_eq!(
        verdicts,
        vec![
            (true, first.as_str()),
            (true, better.as_str()),
            (false, invalid.as_str()),
            (false, barely.as_str()),
            (true, first.as_str())
        ]
    );
    assert_eq!(history[1].previous.as_deref(), Some(first.as_str()));
    assert_eq!(history[1].decision["compared"]["champion"], 0.4);
    let unevaluated = {
        let metrics = serde_json::json!({});
        db.insert_model(&NewModel {
            name: "new",
            base_model: "tiny",
            parent_id: None,
            dataset_id: None,
            run_id: None,
            path: "/nowhere",
            metrics: &metrics,
        })
        .unwrap()
    };
    let error = apply(&mut db, &unevaluated, &Rule::default()).unwrap_err().to_string();
    assert!(error.contains("no finished eval"), "{error}");
}

#[test]
fn a_datasets_test_split_is_a_suite_that_gives_recorded_runs_their_recorded_verdict() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cli(dir.path(), &["bootstrap", "--traces", "60", "--seed", "5", "--json"]).code, 0);
    let built = cli(dir.path(), &["build-dataset", "--test-ratio", "0.3", "--json"]).json();
    let dataset = built["id"].as_str().unwrap();
    let db = Store::open(dir.path()).unwrap().connect().unwrap();
    let suite = format!("dataset:{dataset}");
    let cases = understudy::jobs::eval::load_cases(&db, std::slice::from_ref(&suite), None).unwrap();
    assert_eq!(cases.len() as u64, built["counts"]["test"].as_u64().unwrap(), "every test trace is a case");
    let test_split = std::fs::read_to_string(Path::new(built["dir"].as_str().unwrap()).join("test.jsonl")).unwrap();
    let traces: Vec<Trace> = test_split
        .lines()
        .map(|line| {
            understudy::traces::formats::parse_record(understudy::traces::formats::ImportFormat::Canonical, line)
                .unwrap()
        })
        .collect();
    let mut successes = 0;
    for (_, case) in &cases {
        assert!(case.workspace_seed.is_some() && !case.checks.is_empty(), "{} regenerated its checks", case.id);
        // The recorded run, played back, passes its own checks.
        let trace = traces.iter().find(|t| t.id == case.id).unwrap();
        let replies = trace.messages.iter().filter(|m| m.role == Role::Assistant).cloned().collect();
        let (_, score) = understudy::eval::evaluate_case(&mut Scripted { replies, misdirect: false }, case, 20);
        let recorded = trace.outcome.status.as_str() == "success";
        assert_eq!(score.success, Some(recorded), "{}: the replay's verdict is bootstrap's: {score:?}", case.id);
        successes += usize::from(recorded);
    }
    assert!(successes * 2 > cases.len(), "most recorded runs succeed ({successes} of {})", cases.len());
    assert!(understudy::jobs::eval::load_cases(&db, &["dataset:ds_nope".to_string()], None).is_err());
}
