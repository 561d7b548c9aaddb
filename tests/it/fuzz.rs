//! Fuzzing of every parser that reads outside input, with proptest: valid fixture records
//! mutated (bytes cut, inserted, replaced; JSON values swapped for random ones) and random JSON.
//! Properties: never a panic; a refusal names its field or line; an accepted trace round-trips
//! through the canonical export. Each target prints its figures; `UNDERSTUDY_FUZZ_CASES` raises
//! the count (CI runs the default, a few seconds per target).

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use crate::support::fixture;
use understudy::traces::formats::{parse_record, ImportFormat};

fn cases() -> u32 {
    std::env::var("UNDERSTUDY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400)
}

/// Random JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[a-z_]{0,8}".prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        Just(Value::from("user")),
        Just(Value::from("assistant")),
        Just(Value::from("tool")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("role".to_string()),
                    Just("content".to_string()),
                    Just("tool_calls".to_string()),
                    Just("messages".to_string()),
                    Just("prompt".to_string()),
                    Just("chosen".to_string()),
                    Just("rejected".to_string()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replace the value at a random path of `value` (objects and arrays walked by index).
fn replace_at(value: &mut Value, mut choice: usize, replacement: Value) {
    let mut current = value;
    loop {
        let children = match current {
            Value::Object(map) if !map.is_empty() => map.len(),
            Value::Array(items) if !items.is_empty() => items.len(),
            _ => 0,
        };
        if children == 0 || choice.is_multiple_of(3) {
            *current = replacement;
            return;
        }
        let index = choice % children;
        choice /= 3;
        current = match current {
            Value::Object(map) => map.values_mut().nth(index).expect("in range"),
            Value::Array(items) => &mut items[index],
            _ => unreachable!(),
        };
    }
}

/// A seed line mutated: JSON-aware replacement, byte-level cut/insert, or left whole.
fn mutated(seeds: Vec<String>) -> impl Strategy<Value = String> {
    (0..seeds.len(), 0..4u8, any::<usize>(), json_value(), ".{0,12}", any::<usize>()).prop_map(
        move |(seed, how, at, value, inserted, cut)| {
            let line = &seeds[seed];
            match how {
                0 => {
                    let mut parsed: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                    replace_at(&mut parsed, at, value);
                    parsed.to_string()
                }
                1 => {
                    let chars: Vec<char> = line.chars().collect();
                    let start = at % (chars.len() + 1);
                    let end = (start + cut % 16).min(chars.len());
                    chars[..start].iter().chain(&chars[end..]).collect()
                }
                2 => {
                    let chars: Vec<char> = line.chars().collect();
                    let start = at % (chars.len() + 1);
                    chars[..start]
                        .iter()
                        .copied()
                        .chain(inserted.chars())
                        .chain(chars[start..].iter().copied())
                        .collect()
                }
                _ => line.clone(),
            }
        },
    )
}

fn lines_of(name: &str) -> Vec<String> {
    std::fs::read_to_string(fixture(name))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Run `check` on `cases()` inputs from `strategy`; print the figures.
fn fuzz<S: Strategy>(target: &str, strategy: S, check: impl Fn(S::Value) -> Result<bool, String>)
where
    S::Value: std::fmt::Debug,
{
    let accepted = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() });
    let result = runner.run(&strategy, |input| {
        total.fetch_add(1, Ordering::Relaxed);
        match check(input) {
            Ok(true) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(message) => Err(TestCaseError::fail(message)),
        }
    });
    if let Err(error) = result {
        panic!("{target}: {error}");
    }
    eprintln!(
        "fuzz {target}: {} inputs, {} accepted, {} refused with a reason, 0 panics",
        total.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed),
        total.load(Ordering::Relaxed) - accepted.load(Ordering::Relaxed)
    );
}

#[test]
fn fuzzed_trace_records_never_panic_and_accepted_ones_round_trip() {
    for (format, file) in [
        (ImportFormat::Canonical, "canonical_mixed.jsonl"),
        (ImportFormat::Openai, "openai_mixed.jsonl"),
        (ImportFormat::Sharegpt, "sharegpt_mixed.jsonl"),
    ] {
        fuzz(&format!("{format:?} traces"), mutated(lines_of(file)), |line| match parse_record(format, &line) {
            Ok(trace) => {
                let exported = understudy::traces::wire::to_canonical_json(&trace);
                let back = parse_record(ImportFormat::Canonical, &exported)
                    .map_err(|e| format!("an accepted trace did not re-import: {e}\n{line}"))?;
                if back.content_hash != trace.content_hash {
                    return Err(format!("the round trip changed the trace\n{line}"));
                }
                Ok(true)
            }
            Err(reason) if reason.trim().is_empty() => Err(format!("refused without a reason: {line}")),
            Err(_) => Ok(false),
        });
    }
}

#[test]
fn fuzzed_preference_pairs_never_panic_and_refusals_say_why() {
    let mut seeds = lines_of("dpo_pairs.jsonl");
    seeds.extend(lines_of("dpo_trl.jsonl"));
    fuzz("preference pairs", mutated(seeds), |line| match understudy::traces::preference::parse_pair_line(&line) {
        Ok(_) => Ok(true),
        Err(reason) if reason.trim().is_empty() => Err(format!("refused without a reason: {line}")),
        Err(_) => Ok(false),
    });
}

#[test]
fn fuzzed_eval_suites_never_panic_and_errors_name_line_and_field() {
    let seeds: Vec<String> =
        understudy::eval::suite::heldout(6).iter().map(|case| serde_json::to_string(case).unwrap()).collect();
    fuzz("eval suite lines", mutated(seeds), |line| {
        let text = format!("{line}\n");
        match understudy::eval::suite::parse(&text) {
            Ok(_) => Ok(true),
            Err(errors) if errors.iter().any(|e| e.line != 1 || e.message.trim().is_empty()) => {
                Err(format!("an error without line 1 or a message: {errors:?}"))
            }
            Err(_) => Ok(false),
        }
    });
}

#[test]
fn fuzzed_workflow_templates_never_panic() {
    let builtin = serde_json::to_string(&understudy::bootstrap::workflows::builtin()[..3]).unwrap();
    fuzz("workflow template files", mutated(vec![builtin]), |text| match understudy::bootstrap::workflows::parse_file(
        &text,
    ) {
        Ok(_) => Ok(true),
        Err(reason) if reason.trim().is_empty() => Err("refused without a reason".into()),
        Err(_) => Ok(false),
    });
}

#[test]
fn fuzzed_claude_code_transcripts_never_panic_and_count_what_they_skip() {
    let dir = tempfile::tempdir().unwrap();
    let root = fixture("claude_code/projects/-home-ana-src-widget");
    let seeds = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| std::fs::read_to_string(p).unwrap().lines().map(str::to_string).collect::<Vec<_>>())
        .collect::<Vec<_>>();
    assert!(!seeds.is_empty());
    let context = understudy::capture::transcript::ReadContext {
        project_dir: dir.path().to_path_buf(),
        session_dir: None,
        max_tool_result_bytes: 4096,
        max_line_bytes: 1 << 20,
    };
    let strategy = prop::collection::vec(mutated(seeds), 1..6);
    fuzz("transcript files", strategy, |lines| {
        let path = dir.path().join("session.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let read = understudy::capture::transcript::read_file(&path, &context).map_err(|e| e.to_string())?;
        if read.records.len() + read.malformed.len() > lines.len() {
            return Err(format!("more records than lines: {lines:?}"));
        }
        if let Some(bad) = read.malformed.iter().find(|m| m.line == 0 || m.reason.trim().is_empty()) {
            return Err(format!("a skipped line without its number or reason: {bad:?}"));
        }
        Ok(read.malformed.is_empty())
    });
}

#[test]
fn fuzzed_chat_requests_get_an_envelope_never_a_500() {
    let app = crate::support::spawn_app(|_| {});
    let user = serde_json::json!({"messages": [{"role": "user", "content": "find the config"}],
        "tools": [{"type": "function", "function": {"name": "Glob", "parameters": {"type": "object"}}}]})
    .to_string();
    let completion = serde_json::json!({"prompt": "hello", "max_tokens": 4}).to_string();
    let url = app.url("/v1/chat/completions");
    let completions_url = app.url("/v1/completions");
    fuzz("OpenAI request bodies", (mutated(vec![user, completion.clone()]), any::<bool>()), |(body, chat)| {
        let target = if chat { &url } else { &completions_url };
        let answer =
            crate::support::reply(crate::support::http().post(target).content_type("application/json").send(&body));
        if answer.status >= 500 {
            return Err(format!("{} for {body}: {}", answer.status, answer.body));
        }
        let envelope: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if envelope["error"]["message"].as_str().is_none_or(str::is_empty) {
            return Err(format!("no error envelope for {body}: {}", answer.body));
        }
        Ok(false)
    });
}

/// Byte edits (position, value) within the first `span` bytes, and where to cut the file.
fn byte_edits(span: usize) -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>)> {
    (prop::collection::vec((0..span, any::<u8>()), 1..8), prop::option::of(0..span))
}

fn edited(bytes: &[u8], (edits, cut): &(Vec<(usize, u8)>, Option<usize>)) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    for (at, value) in edits {
        if let Some(slot) = bytes.get_mut(*at) {
            *slot = *value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(*cut);
    }
    bytes
}

/// GGUF headers as `--model FILE.gguf` reads them (the config and the tokenizer metadata):
/// SmolLM2's real header, its first 2 MB, with bytes replaced and the file cut. Never a panic.
#[test]
fn fuzzed_gguf_headers_never_panic() {
    skip_unless!(crate::support::External::SmolLm2);
    use std::io::Read;
    use understudy::model::source::ModelSource;
    let real = crate::support::smollm2_gguf_path();
    let full = std::fs::metadata(&real).unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzzed.gguf");
    // The header's bytes, then zeros to the real size (a sparse file): the tensor data is not read.
    let write = |bytes: &[u8], cut: bool| {
        std::fs::write(&path, bytes).unwrap();
        if !cut {
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(full).unwrap();
        }
    };
    let mut head = Vec::new();
    for megabytes in [1u64, 2, 4, 8, 16] {
        head.clear();
        std::fs::File::open(&real).unwrap().take(megabytes << 20).read_to_end(&mut head).unwrap();
        write(&head, false);
        if understudy::model::weights::read_config(&ModelSource::Gguf(path.clone())).is_ok() {
            break;
        }
    }
    assert!(
        understudy::model::weights::read_config(&ModelSource::Gguf(path.clone())).is_ok(),
        "the unedited header reads"
    );
    fuzz("gguf headers", byte_edits(8192), |edits| {
        write(&edited(&head, &edits), edits.1.is_some());
        let source = ModelSource::Gguf(path.clone());
        let config = understudy::model::weights::read_config(&source);
        let tokenizer = understudy::model::tokenizer::read_gguf(&path);
        match (&config, &tokenizer) {
            (Err(e), _) if e.to_string().is_empty() => Err("a refusal without a reason".into()),
            _ => Ok(config.is_ok() && tokenizer.is_ok()),
        }
    });
}

/// Safetensors files as `--model DIR` loads them: a valid two-tensor file with its length
/// prefix and JSON header edited and the file cut. Never a panic; a refusal says why.
#[test]
fn fuzzed_safetensors_headers_never_panic() {
    use understudy::model::source::ModelSource;
    let header = r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[4,2],"data_offsets":[0,32]},"model.norm.weight":{"dtype":"F32","shape":[2],"data_offsets":[32,40]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend(std::iter::repeat_n(0u8, 40));
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 2, "intermediate_size": 4,
        "num_attention_heads": 1, "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 4,
        "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let path = dir.path().join("model.safetensors");
    let source = ModelSource::HfDir(dir.path().to_path_buf());
    std::fs::write(&path, &file).unwrap();
    assert!(understudy::model::weights::load(&source, &candle_core::Device::Cpu).is_ok(), "the unedited file loads");
    fuzz("safetensors headers", byte_edits(file.len()), |edits| {
        std::fs::write(&path, edited(&file, &edits)).unwrap();
        match understudy::model::weights::load(&source, &candle_core::Device::Cpu) {
            Ok(_) => Ok(true),
            Err(e) if format!("{e:#}").trim().is_empty() => Err("a refusal without a reason".into()),
            Err(_) => Ok(false),
        }
    });
}
