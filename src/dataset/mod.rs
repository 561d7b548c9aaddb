//! The dataset builder: select and dedupe traces and preference pairs, split them from their
//! content hashes, render each trace with the model's chat template, tokenize, mask everything
//! but assistant output, truncate at turn boundaries (or drop), weight real traces, and write a
//! frozen directory: canonical JSONL per split, `sft.jsonl`, `dpo.jsonl`, `rl_prompts.jsonl`, the
//! tokenizer, the chat template, the token cache and the statistics. Same inputs and seed →
//! byte-identical files. Knows nothing of SQL or HTTP: the job feeds it traces and pairs.

pub mod bench;
pub mod cache;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::model::chat_template::Rendered;
use crate::model::source::{ModelSource, SourceError};
use crate::model::tokenizer;
use crate::traces::preference::PreferencePair;
use crate::traces::wire::{to_canonical_json, to_openai_json};
use crate::traces::{OutcomeStatus, Role, Source, Split, Trace};
use cache::Example;

/// How a dataset is built; stored with it (`config.json`) so it can be rebuilt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetConfig {
    pub name: String,
    pub model: ModelSource,
    /// Only these sources (all when empty).
    #[serde(default)]
    pub sources: Vec<Source>,
    /// Only these categories (all when empty).
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub min_tool_calls: usize,
    #[serde(default)]
    pub exclude_failed: bool,
    /// Each real (non-synthetic) training trace appears this many times in the training data.
    pub real_weight: u32,
    /// Each training trace's opening (system prompt, task, first assistant reply) is added this
    /// many times as an example of its own, alternately without and with the tool schemas. Next
    /// to ~700 tokens of schemas the task's few words get almost no attention in a model trained
    /// from scratch, and it opens every task with the majority tool; without the schemas the task
    /// dominates and the choice is learnt, with them it carries over to the prompt users send
    /// (see README, "Choosing the first tool").
    #[serde(default)]
    pub openings: u32,
    pub val_ratio: f64,
    pub test_ratio: f64,
    pub max_seq_len: usize,
    pub seed: u64,
}

impl DatasetConfig {
    pub fn new(name: String, model: ModelSource) -> DatasetConfig {
        DatasetConfig {
            name,
            model,
            sources: Vec::new(),
            categories: Vec::new(),
            min_tool_calls: 0,
            exclude_failed: false,
            real_weight: 1,
            openings: 0,
            val_ratio: 0.05,
            test_ratio: 0.05,
            max_seq_len: 2048,
            seed: 0,
        }
    }

    /// Check the values a user can get wrong, naming the field.
    pub fn validate(&self) -> Result<(), BuildError> {
        let bad = |field: &str, reason: &str| Err(BuildError::Config(format!("{field}: {reason}")));
        if self.name.trim().is_empty() || self.name.len() > 80 {
            return bad("name", "must be 1 to 80 characters");
        }
        if !(0.0..0.5).contains(&self.val_ratio) {
            return bad("val_ratio", "must be at least 0 and below 0.5");
        }
        if !(0.0..0.5).contains(&self.test_ratio) {
            return bad("test_ratio", "must be at least 0 and below 0.5");
        }
        if self.max_seq_len < 32 || self.max_seq_len > 131_072 {
            return bad("max_seq_len", "must be between 32 and 131072");
        }
        if self.real_weight == 0 || self.real_weight > 100 {
            return bad("real_weight", "must be between 1 and 100");
        }
        if self.openings > 10 {
            return bad("openings", "must be between 0 and 10");
        }
        Ok(())
    }

    fn selects(&self, trace: &Trace) -> bool {
        (self.sources.is_empty() || self.sources.contains(&trace.source))
            && (self.categories.is_empty() || self.categories.contains(&trace.category))
            && trace.n_tool_calls() >= self.min_tool_calls
            && !(self.exclude_failed && trace.outcome.status == OutcomeStatus::Failure)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Model(#[from] SourceError),
    #[error("trace {id}: {reason}")]
    Render { id: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("writing the dataset: {0}")]
    Io(#[from] std::io::Error),
    #[error("no traces match the selection")]
    Empty,
    #[error("cancelled")]
    Cancelled,
}

/// Where the build is, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Render,
    Tokenizer,
    Tokenize,
    Write,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Render => "rendering",
            Stage::Tokenizer => "training the tokenizer",
            Stage::Tokenize => "tokenizing",
            Stage::Write => "writing files",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistogramBin {
    /// Examples with at most this many tokens (and more than the previous bin's bound).
    pub up_to: usize,
    pub count: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetStats {
    /// Examples per split after truncation and dropping (training examples counted once).
    pub examples: SplitCounts,
    /// Training examples including the repeats of weighted real traces and the openings.
    pub weighted_train: usize,
    /// Training examples that are a trace's opening (`openings`), with or without the schemas.
    #[serde(default)]
    pub openings: usize,
    pub pairs: SplitCounts,
    pub by_source: BTreeMap<String, usize>,
    pub by_category: BTreeMap<String, usize>,
    pub by_tool: BTreeMap<String, usize>,
    pub token_histogram: Vec<HistogramBin>,
    pub tokens_total: usize,
    pub tokens_trained: usize,
    /// Trained tokens inside tool calls' names (where the model chooses its tool).
    #[serde(default)]
    pub tokens_tool_name: usize,
    /// Share of training tokens that carry loss (assistant output).
    pub mask_coverage: f64,
    pub mean_tokens: f64,
    pub max_tokens: usize,
    pub truncated: usize,
    pub dropped: usize,
    pub vocab_size: usize,
    pub template: String,
    pub end_of_turn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    pub counts: SplitCounts,
    pub dropped: usize,
    pub truncated: usize,
    /// File name → sha256.
    pub files: BTreeMap<String, String>,
    pub stats: DatasetStats,
}

/// The files a dataset directory holds, in the order they are written.
pub const FILES: [&str; 15] = [
    "config.json",
    "train.jsonl",
    "val.jsonl",
    "test.jsonl",
    "sft.jsonl",
    "sft_val.jsonl",
    "dpo.jsonl",
    "dpo_val.jsonl",
    "rl_prompts.jsonl",
    "tokenizer.json",
    "chat_template.jinja",
    "template.json",
    "train.tokens",
    "val.tokens",
    "stats.json",
];

struct Prepared {
    trace: Trace,
    split: Split,
    rendered: Rendered,
}

/// Token ids and mask of one rendered trace, truncated at a turn boundary to fit; `None` when
/// even the first assistant turn does not fit. The bool says whether it was truncated.
fn tokenize_one(
    tok: &tokenizers::Tokenizer,
    rendered: &Rendered,
    max_len: usize,
) -> Result<Option<(Example, bool)>, String> {
    let (ids, offsets) = tokenizer::encode(tok, &rendered.text).map_err(|e| e.to_string())?;
    let within = |spans: &[std::ops::Range<usize>], start: &usize| spans.iter().any(|span| span.contains(start));
    let mask: Vec<u8> = offsets
        .iter()
        .map(|(start, _)| match within(&rendered.assistant_spans, start) {
            false => 0,
            true if within(&rendered.tool_name_spans, start) => cache::TOOL_NAME,
            true => cache::TRAINED,
        })
        .collect();
    if ids.len() <= max_len {
        return Ok(Some((Example { ids, mask }, false)));
    }
    // The longest prefix ending at a message boundary that fits and trains on something.
    let mut best = None;
    for end_byte in &rendered.message_ends {
        let n_tokens = offsets.iter().take_while(|(start, _)| start < end_byte).count();
        if n_tokens <= max_len && mask[..n_tokens].iter().any(|&m| m != 0) {
            best = Some(n_tokens);
        }
    }
    Ok(best.map(|n| (Example { ids: ids[..n].to_vec(), mask: mask[..n].to_vec() }, true)))
}

/// One `dpo.jsonl` row: TRL's conversational preference columns, with the tools when the pair
/// offers some.
fn pair_line(pair: &PreferencePair) -> String {
    let mut row =
        json!({"prompt": pair.prompt.to_wire(), "chosen": pair.chosen.to_wire(), "rejected": pair.rejected.to_wire()});
    if !pair.tools.is_empty() {
        row["tools"] = Value::Array(pair.tools.clone());
    }
    row.to_string()
}

fn write_lines(path: &Path, lines: impl Iterator<Item = String>) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for line in lines {
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// The prompt part of a trace for RL: system and first user message, with what the reference
/// did, so rewards can compare and replay.
fn rl_prompt(trace: &Trace) -> Value {
    let first_user = trace.messages.iter().position(|m| m.role == Role::User).unwrap_or(0);
    let prompt_messages: Vec<Value> =
        trace.messages[..=first_user].iter().map(|m| json!({"role": m.role.as_str(), "content": m.content})).collect();
    json!({
        "id": trace.id,
        "category": trace.category,
        "source": trace.source.as_str(),
        "messages": prompt_messages,
        "tools": trace.tools,
        "reference_tools": trace.tool_calls().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "reference_answer": trace.final_answer(),
        "workspace_seed": trace.metadata.get("workspace_seed"),
        "template": trace.metadata.get("template"),
        "scenario": trace.metadata.get("scenario"),
    })
}

/// A trace's opening as a trace of its own: the messages up to its first assistant reply, with
/// the trace's tools or none (then the template writes no schemas). `None` without an assistant
/// reply.
fn opening(trace: &Trace, with_tools: bool) -> Option<Trace> {
    let first_reply = trace.messages.iter().position(|m| m.role == Role::Assistant)?;
    let mut opening = trace.clone();
    opening.messages.truncate(first_reply + 1);
    if !with_tools {
        opening.tools.clear();
    }
    Some(opening)
}

/// Where a training example comes from: a trace (index into the prepared traces) or a trace's
/// opening (index into the openings).
#[derive(Debug, Clone, Copy)]
enum Row {
    Trace(usize),
    Opening(usize),
}

/// Build the dataset into `out_dir` (which must not exist). `progress(stage, done, total)` may
/// stop the build by returning an error.
pub fn build(
    config: &DatasetConfig,
    traces: Vec<Trace>,
    pairs: Vec<PreferencePair>,
    out_dir: &Path,
    progress: &mut dyn FnMut(Stage, usize, usize) -> Result<(), BuildError>,
) -> Result<BuildReport, BuildError> {
    config.validate()?;
    let mut selected: Vec<Trace> = traces.into_iter().filter(|t| config.selects(t)).collect();
    selected.sort_by(|a, b| a.content_hash.cmp(&b.content_hash));
    selected.dedup_by(|a, b| a.content_hash == b.content_hash);
    if selected.is_empty() {
        return Err(BuildError::Empty);
    }
    let split_of = |hash: &str| Split::from_hash_with(hash, config.val_ratio, config.test_ratio);

    // The template decides the text; `tiny` trains its tokenizer on the training text.
    let template_for_render = match &config.model {
        ModelSource::Tiny => ModelSource::tiny_template(),
        other => other.tokenizer_and_template(|_| Vec::new())?.1,
    };
    let total = selected.len();
    let mut prepared = Vec::with_capacity(total);
    for (index, trace) in selected.into_iter().enumerate() {
        let rendered = template_for_render
            .render_with_spans(&trace.messages, &trace.tools)
            .map_err(|e| BuildError::Render { id: trace.id.clone(), reason: e.to_string() })?;
        prepared.push(Prepared { split: split_of(&trace.content_hash), trace, rendered });
        if index % 100 == 0 {
            progress(Stage::Render, index, total)?;
        }
    }
    progress(Stage::Tokenizer, 0, 1)?;
    let (tokenizer, template) = config.model.tokenizer_and_template(|_| {
        prepared.iter().filter(|p| p.split == Split::Train).map(|p| p.rendered.text.clone()).collect()
    })?;

    let mut stats = DatasetStats {
        template: serde_json::to_value(template.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        end_of_turn: template.end_of_turn.clone(),
        vocab_size: tokenizer.get_vocab_size(true),
        ..DatasetStats::default()
    };
    let mut examples: BTreeMap<Split, Vec<(usize, Example)>> = BTreeMap::new();
    let mut kept: Vec<bool> = vec![false; prepared.len()];
    for (index, item) in prepared.iter().enumerate() {
        if index % 100 == 0 {
            progress(Stage::Tokenize, index, prepared.len())?;
        }
        match tokenize_one(&tokenizer, &item.rendered, config.max_seq_len).map_err(BuildError::Tokenizer)? {
            Some((example, truncated)) => {
                stats.truncated += usize::from(truncated);
                kept[index] = true;
                examples.entry(item.split).or_default().push((index, example));
            }
            None => stats.dropped += 1,
        }
    }
    for (index, item) in prepared.iter().enumerate().filter(|(i, _)| kept[*i]) {
        let _ = index;
        *stats.by_source.entry(item.trace.source.as_str().into()).or_default() += 1;
        *stats.by_category.entry(item.trace.category.clone()).or_default() += 1;
        for call in item.trace.tool_calls() {
            *stats.by_tool.entry(call.name.clone()).or_default() += 1;
        }
    }
    let count = |split: Split| examples.get(&split).map_or(0, Vec::len);
    stats.examples = SplitCounts { train: count(Split::Train), val: count(Split::Val), test: count(Split::Test) };

    // Training order: real traces repeated, the openings, then a seeded shuffle.
    let mut train: Vec<(Row, Example)> = Vec::new();
    let mut openings: Vec<Trace> = Vec::new();
    for (index, example) in examples.remove(&Split::Train).unwrap_or_default() {
        let repeats = if prepared[index].trace.source == Source::Synthetic { 1 } else { config.real_weight };
        for _ in 0..repeats {
            train.push((Row::Trace(index), example.clone()));
        }
        // Copies alternate: without the tool schemas (the task dominates: the choice is learnt),
        // then with them (the prompt users send: the choice carries over). Each form is rendered
        // and tokenized once; an opening longer than the limit is left out (its trace still trains).
        let mut forms: Vec<Option<(usize, Example)>> = Vec::new();
        for with_tools in [false, true].into_iter().take(config.openings as usize) {
            let Some(opening) = opening(&prepared[index].trace, with_tools) else { break };
            let rendered = template_for_render
                .render_with_spans(&opening.messages, &opening.tools)
                .map_err(|e| BuildError::Render { id: opening.id.clone(), reason: format!("its opening: {e}") })?;
            let tokenized = tokenize_one(&tokenizer, &rendered, config.max_seq_len).map_err(BuildError::Tokenizer)?;
            forms.push(match tokenized {
                Some((example, false)) => {
                    openings.push(opening);
                    Some((openings.len() - 1, example))
                }
                _ => None,
            });
        }
        for copy in 0..config.openings as usize {
            if let Some(Some((at, example))) = forms.get(copy % 2) {
                train.push((Row::Opening(*at), example.clone()));
                stats.openings += 1;
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    train.shuffle(&mut rng);
    stats.weighted_train = train.len();
    let val: Vec<(usize, Example)> = examples.remove(&Split::Val).unwrap_or_default();
    let row_trace = |row: &Row| match *row {
        Row::Trace(index) => &prepared[index].trace,
        Row::Opening(index) => &openings[index],
    };

    let lengths: Vec<usize> =
        train.iter().map(|(_, e)| e.ids.len()).chain(val.iter().map(|(_, e)| e.ids.len())).collect();
    stats.tokens_total = train.iter().map(|(_, e)| e.ids.len()).sum();
    stats.tokens_trained = train.iter().map(|(_, e)| e.mask.iter().filter(|&&m| m != 0).count()).sum();
    stats.tokens_tool_name = train.iter().map(|(_, e)| e.mask.iter().filter(|&&m| m == cache::TOOL_NAME).count()).sum();
    stats.mask_coverage =
        if stats.tokens_total > 0 { stats.tokens_trained as f64 / stats.tokens_total as f64 } else { 0.0 };
    stats.max_tokens = lengths.iter().copied().max().unwrap_or(0);
    stats.mean_tokens =
        if lengths.is_empty() { 0.0 } else { lengths.iter().sum::<usize>() as f64 / lengths.len() as f64 };
    let mut bound = 64;
    loop {
        let lower = bound / 2;
        let count = lengths.iter().filter(|&&n| n <= bound && (bound == 64 || n > lower)).count();
        stats.token_histogram.push(HistogramBin { up_to: bound, count });
        if bound >= config.max_seq_len {
            break;
        }
        bound = (bound * 2).min(config.max_seq_len.max(64));
    }

    let mut pairs: Vec<PreferencePair> = pairs;
    pairs.sort_by(|a, b| a.content_hash.cmp(&b.content_hash));
    pairs.dedup_by(|a, b| a.content_hash == b.content_hash);
    let train_pairs: Vec<&PreferencePair> =
        pairs.iter().filter(|p| split_of(&p.content_hash) == Split::Train).collect();
    for pair in &pairs {
        match split_of(&pair.content_hash) {
            Split::Train => stats.pairs.train += 1,
            Split::Val => stats.pairs.val += 1,
            Split::Test => stats.pairs.test += 1,
        }
    }

    // Write into a temporary directory, then rename: a dataset appears whole or not at all.
    progress(Stage::Write, 0, FILES.len())?;
    let staging = out_dir.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    let at = |name: &str| staging.join(name);
    std::fs::write(at("config.json"), serde_json::to_string_pretty(config).expect("config serialises") + "\n")?;
    for (name, split) in [("train.jsonl", Split::Train), ("val.jsonl", Split::Val), ("test.jsonl", Split::Test)] {
        write_lines(
            &at(name),
            prepared
                .iter()
                .enumerate()
                .filter(|(i, p)| kept[*i] && p.split == split)
                .map(|(_, p)| to_canonical_json(&p.trace)),
        )?;
    }
    write_lines(&at("sft.jsonl"), train.iter().map(|(row, _)| to_openai_json(row_trace(row))))?;
    write_lines(&at("sft_val.jsonl"), val.iter().map(|(i, _)| to_openai_json(&prepared[*i].trace)))?;
    write_lines(&at("dpo.jsonl"), train_pairs.iter().copied().map(pair_line))?;
    // The pairs of the other splits: DPO's held-out pairs.
    write_lines(
        &at("dpo_val.jsonl"),
        pairs.iter().filter(|p| split_of(&p.content_hash) != Split::Train).map(pair_line),
    )?;
    let mut seen_prompts = BTreeSet::new();
    write_lines(
        &at("rl_prompts.jsonl"),
        prepared
            .iter()
            .enumerate()
            .filter(|(i, p)| kept[*i] && p.split == Split::Train && seen_prompts.insert(p.trace.prompt.clone()))
            .map(|(_, p)| rl_prompt(&p.trace).to_string()),
    )?;
    tokenizer.save(at("tokenizer.json"), false).map_err(|e| BuildError::Tokenizer(e.to_string()))?;
    std::fs::write(at("chat_template.jinja"), &template.source)?;
    std::fs::write(at("template.json"), serde_json::to_string_pretty(&template).expect("template serialises") + "\n")?;
    let train_examples: Vec<Example> = train.into_iter().map(|(_, e)| e).collect();
    let val_examples: Vec<Example> = val.into_iter().map(|(_, e)| e).collect();
    cache::write(&mut std::io::BufWriter::new(std::fs::File::create(at("train.tokens"))?), &train_examples)?;
    cache::write(&mut std::io::BufWriter::new(std::fs::File::create(at("val.tokens"))?), &val_examples)?;
    std::fs::write(at("stats.json"), serde_json::to_string_pretty(&stats).expect("stats serialise") + "\n")?;
    let mut files = BTreeMap::new();
    for name in FILES {
        files.insert(name.to_string(), crate::files::sha256_file(&at(name))?.0);
    }
    std::fs::rename(&staging, out_dir)?;
    progress(Stage::Write, FILES.len(), FILES.len())?;
    Ok(BuildReport { counts: stats.examples.clone(), dropped: stats.dropped, truncated: stats.truncated, files, stats })
}

/// Where datasets live under the artifacts dir.
pub fn datasets_dir(artifacts: &Path) -> PathBuf {
    artifacts.join("datasets")
}
