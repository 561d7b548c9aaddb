//! Tokenization throughput on a built dataset: its training traces rendered with its chat
//! template and encoded with its tokenizer, one text at a time and as a parallel batch.

use std::path::Path;
use std::time::Instant;

use crate::model::chat_template::ChatTemplate;
use crate::traces::formats::{parse_record, ImportFormat};

#[derive(Debug, serde::Serialize)]
pub struct TokenizeFigures {
    pub benchmark: &'static str,
    pub texts: usize,
    pub bytes: usize,
    pub tokens: usize,
    pub sequential_seconds: f64,
    pub sequential_tokens_per_second: f64,
    pub batch_seconds: f64,
    pub batch_tokens_per_second: f64,
    pub threads: usize,
}

pub fn tokenize(dataset_dir: &Path, dump_corpus: Option<&Path>, repeats: u32) -> anyhow::Result<TokenizeFigures> {
    let template: ChatTemplate = serde_json::from_str(&std::fs::read_to_string(dataset_dir.join("template.json"))?)?;
    let tokenizer =
        tokenizers::Tokenizer::from_file(dataset_dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut texts = Vec::new();
    for line in std::fs::read_to_string(dataset_dir.join("train.jsonl"))?.lines() {
        let trace = parse_record(ImportFormat::Canonical, line).map_err(|e| anyhow::anyhow!(e))?;
        texts.push(template.render(&trace.messages, &trace.tools, false)?);
    }
    if let Some(path) = dump_corpus {
        std::fs::write(path, serde_json::to_string(&texts)?)?;
    }
    let repeats = repeats.max(1);
    let mut tokens = 0;
    let started = Instant::now();
    for _ in 0..repeats {
        tokens = 0;
        for text in &texts {
            tokens += tokenizer.encode(text.as_str(), false).map_err(|e| anyhow::anyhow!("{e}"))?.len();
        }
    }
    let sequential = started.elapsed().as_secs_f64() / f64::from(repeats);
    let started = Instant::now();
    for _ in 0..repeats {
        tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), false)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let batch = started.elapsed().as_secs_f64() / f64::from(repeats);
    Ok(TokenizeFigures {
        benchmark: "tokenize",
        texts: texts.len(),
        bytes: texts.iter().map(String::len).sum(),
        tokens,
        sequential_seconds: sequential,
        sequential_tokens_per_second: tokens as f64 / sequential,
        batch_seconds: batch,
        batch_tokens_per_second: tokens as f64 / batch,
        threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    })
}
