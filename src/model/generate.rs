//! Generation from a trained model directory (config.json, model.safetensors, tokenizer.json,
//! template.json): render the conversation with the model's chat template, decode with a KV
//! cache (greedy, or temperature with top-p, seeded), stop at an end-of-turn token, and parse
//! tool calls from the reply.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::chat_template::{ChatTemplate, ParsedReply};
use super::constrain::{CallStyle, ConstrainedPicker, Grammar, TokenBytes};
use super::llama::{KvCache, Llama, LlamaConfig};
use super::source::ModelSource;
use super::weights;
use crate::traces::Message;

pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    /// Each token's bytes, read on the first generation with `tool_grammar`.
    token_bytes: OnceLock<Arc<TokenBytes>>,
}

/// The token ids a conversation's KV cache holds, with the cache.
pub struct PromptCache {
    ids: Vec<u32>,
    kv: KvCache,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Decode each tool call in the grammar of the offered tools (as `/v1` does for `auto`),
    /// so calls name an offered tool with arguments matching its schema; off, the model's own
    /// choices stand (what training and checkpoint selection measure).
    pub tool_grammar: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 256, temperature: 0.0, top_p: 1.0, seed: 0, tool_grammar: false }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub token_ids: Vec<u32>,
    /// `stop` (end-of-turn token), `length` (max tokens) or `tool_calls`.
    pub finish_reason: &'static str,
    #[serde(skip)]
    pub parsed: ParsedReply,
    pub prompt_tokens: usize,
    /// The prompt exactly as the model saw it, and the end-of-turn token it stopped with: with
    /// `token_ids`, the sequence a policy-gradient trainer scores.
    #[serde(skip)]
    pub prompt_ids: Vec<u32>,
    #[serde(skip)]
    pub stop_token: Option<u32>,
}

fn error(message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{message}")
}

fn read_in(dir: &Path, name: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(dir.join(name)).map_err(|e| error(format!("{}: {e}", dir.join(name).display())))
}

impl LoadedModel {
    pub fn load(dir: &Path, device: &Device) -> anyhow::Result<LoadedModel> {
        LoadedModel::load_with_weights(dir, &dir.join("model.safetensors"), device)
    }

    /// A model directory's config, tokenizer and template with the weights of another file
    /// (a checkpoint of the same run).
    pub fn load_with_weights(dir: &Path, weights: &Path, device: &Device) -> anyhow::Result<LoadedModel> {
        let config: LlamaConfig = serde_json::from_str(&read_in(dir, "config.json")?)?;
        let (tokenizer, template) = LoadedModel::tokenizer_and_template(dir)?;
        // Safety: the file is ours and is not modified while mapped.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device)? };
        Ok(LoadedModel::new(Llama::new(config, vb)?, tokenizer, template))
    }

    pub fn new(model: Llama, tokenizer: Tokenizer, template: ChatTemplate) -> LoadedModel {
        LoadedModel { model, tokenizer, template, token_bytes: OnceLock::new() }
    }

    /// The tokenizer and exact chat template of a model directory of ours (or an export's
    /// `hf/`, which carries the same `template.json`), without the weights.
    pub fn tokenizer_and_template(dir: &Path) -> anyhow::Result<(Tokenizer, ChatTemplate)> {
        let template: ChatTemplate = serde_json::from_str(&read_in(dir, "template.json")?)?;
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(error)?;
        Ok((tokenizer, template))
    }

    /// A model from its parts (weights already in HF names).
    pub fn from_tensors(
        config: LlamaConfig,
        tensors: std::collections::HashMap<String, Tensor>,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        device: &Device,
    ) -> anyhow::Result<LoadedModel> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Ok(LoadedModel::new(Llama::new(config, vb)?, tokenizer, template))
    }

    /// Any model `--model` can name: a model directory of ours (with template.json), an HF
    /// directory, or a GGUF file (dequantized; its tokenizer and template from its metadata).
    pub fn load_path(path: &Path, device: &Device) -> anyhow::Result<LoadedModel> {
        if path.is_dir() && path.join("template.json").exists() {
            return LoadedModel::load(path, device);
        }
        let source = ModelSource::parse(&path.display().to_string())?;
        let (config, tensors) = weights::load(&source, device)?;
        let (tokenizer, template) = source.tokenizer_and_template(|_| Vec::new())?;
        LoadedModel::from_tensors(config, tensors, tokenizer, template, device)
    }

    fn stop_ids(&self) -> Vec<u32> {
        self.template.end_of_turn.iter().filter_map(|t| self.tokenizer.token_to_id(t)).collect()
    }

    pub fn generate(
        &self,
        messages: &[Message],
        tools: &[Value],
        options: &GenerateOptions,
    ) -> anyhow::Result<Generation> {
        let prompt = self.template.render(messages, tools, true)?;
        let encoding = self.tokenizer.encode(prompt.as_str(), false).map_err(error)?;
        let prompt_ids = encoding.get_ids().to_vec();
        let grammar = self.tool_grammar(tools, options);
        self.generate_ids_cached(&prompt_ids, options, &mut self.new_cache(), grammar)
    }

    /// The lazy tool-call grammar of `tools` when `options` asks for it.
    fn tool_grammar(&self, tools: &[Value], options: &GenerateOptions) -> Option<Arc<Grammar>> {
        if !options.tool_grammar {
            return None;
        }
        Grammar::lazy_tool_calls(&Grammar::schemas_of(tools), CallStyle::of(&self.template)).map(Arc::new)
    }

    pub fn generate_ids(&self, prompt_ids: &[u32], options: &GenerateOptions) -> anyhow::Result<Generation> {
        self.generate_ids_cached(prompt_ids, options, &mut self.new_cache(), None)
    }

    /// An empty cache for `generate_cached`.
    pub fn new_cache(&self) -> PromptCache {
        PromptCache { ids: Vec::new(), kv: KvCache::new(self.model.config.num_hidden_layers) }
    }

    /// `generate` for one turn of a conversation that grows turn by turn (an agent episode):
    /// the part of the prompt the cache already holds is not computed again.
    pub fn generate_cached(
        &self,
        messages: &[Message],
        tools: &[Value],
        options: &GenerateOptions,
        cache: &mut PromptCache,
    ) -> anyhow::Result<Generation> {
        let prompt = self.template.render(messages, tools, true)?;
        let encoding = self.tokenizer.encode(prompt.as_str(), false).map_err(error)?;
        let grammar = self.tool_grammar(tools, options);
        self.generate_ids_cached(encoding.get_ids(), options, cache, grammar)
    }

    fn generate_ids_cached(
        &self,
        prompt_ids: &[u32],
        options: &GenerateOptions,
        cache: &mut PromptCache,
        grammar: Option<Arc<Grammar>>,
    ) -> anyhow::Result<Generation> {
        let device = self.model.cos_device();
        let stops = self.stop_ids();
        // Keep the longest cached prefix of this prompt (at least one token is always fed).
        let shared = cache.ids.iter().zip(prompt_ids).take_while(|(a, b)| a == b).count();
        let shared = shared.min(prompt_ids.len().saturating_sub(1));
        if shared < cache.ids.len() {
            cache.kv.truncate(shared)?;
            cache.ids.truncate(shared);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let mut constrained = grammar.map(|grammar| {
            let tokens = self
                .token_bytes
                .get_or_init(|| Arc::new(TokenBytes::new(&self.tokenizer, self.model.config.vocab_size)));
            ConstrainedPicker::new(grammar, Arc::clone(tokens), stops.clone()).with_budget(options.max_tokens)
        });
        let mut generated: Vec<u32> = Vec::new();
        let mut pending: Vec<u32> = prompt_ids[shared..].to_vec();
        let mut finish_reason = "length";
        let mut stop_token = None;
        let room = self.model.config.max_position_embeddings.saturating_sub(prompt_ids.len());
        for _ in 0..options.max_tokens.min(room) {
            let input = Tensor::from_vec(pending.clone(), (1, pending.len()), &device)?;
            let logits = self.model.forward_last(&input, Some(&mut cache.kv))?.squeeze(0)?.to_vec1::<f32>()?;
            cache.ids.append(&mut pending);
            let next = match constrained.as_mut() {
                Some(picker) => picker.pick(&logits, |l| sample(l, options, &mut rng)),
                None => sample(&logits, options, &mut rng),
            };
            if stops.contains(&next) {
                finish_reason = "stop";
                stop_token = Some(next);
                break;
            }
            generated.push(next);
            pending = vec![next];
        }
        let text = self.tokenizer.decode(&generated, false).map_err(error)?;
        let parsed = self.template.parse_reply(&text);
        if finish_reason == "stop" && !parsed.tool_calls.is_empty() {
            finish_reason = "tool_calls";
        }
        Ok(Generation {
            text,
            token_ids: generated,
            finish_reason,
            parsed,
            prompt_tokens: prompt_ids.len(),
            prompt_ids: prompt_ids.to_vec(),
            stop_token,
        })
    }
}

/// Greedy when temperature is 0; else temperature then nucleus (top-p) sampling.
pub fn sample(logits: &[f32], options: &GenerateOptions, rng: &mut ChaCha8Rng) -> u32 {
    if options.temperature <= 0.0 {
        return logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probabilities: Vec<(usize, f64)> =
        logits.iter().enumerate().map(|(i, l)| (i, (((l - max) as f64) / options.temperature).exp())).collect();
    let total: f64 = probabilities.iter().map(|(_, p)| p).sum();
    probabilities.iter_mut().for_each(|(_, p)| *p /= total);
    probabilities.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (index, p) in probabilities {
        kept.push((index, p));
        mass += p;
        if mass >= options.top_p {
            break;
        }
    }
    let mut draw = rng.random::<f64>() * mass;
    for (index, p) in &kept {
        if draw < *p {
            return *index as u32;
        }
        draw -= p;
    }
    kept.last().map_or(0, |(i, _)| *i as u32)
}
