//! Parity checks (spec 3.9 a–d) between the trained model and what was exported: (a) held-out
//! traces tokenize to the same ids through the training path and through the GGUF's own
//! tokenizer and template; (b) the f32 GGUF, loaded back, gives the trained model's greedy
//! tokens; (c) both stop at the end-of-turn token, which the GGUF marks as a control token;
//! (d) a prompt with tools yields a parseable tool call. Each quant's greedy agreement with the
//! trained model is reported beside them.

use std::path::Path;

use candle_core::Device;
use serde_json::Value;

use super::gguf::Quant;
use super::manifest::ParityCheck;
use crate::model::chat_template::ChatTemplate;
use crate::model::generate::{GenerateOptions, Generation, LoadedModel};
use crate::model::tokenizer;
use crate::traces::{Message, Role, Trace};

#[derive(Debug, Clone)]
pub struct ParityOptions {
    /// K: how many held-out prompts the generation checks use.
    pub prompts: usize,
    pub max_tokens: usize,
    /// Whether (d) fails the export: the GGUF must keep the trained model's tool calls.
    pub require_tool_call: bool,
}

impl Default for ParityOptions {
    fn default() -> Self {
        ParityOptions { prompts: 4, max_tokens: 64, require_tool_call: true }
    }
}

fn check(name: &str, passed: bool, required: bool, detail: String) -> ParityCheck {
    ParityCheck { name: name.to_string(), passed, required, detail }
}

fn token_text(tokenizer: &tokenizers::Tokenizer, id: u32) -> String {
    tokenizer.id_to_token(id).unwrap_or_else(|| format!("#{id}"))
}

/// (a) Token ids of whole held-out conversations, training path vs the GGUF's serving path.
pub fn tokenization(trained: &LoadedModel, gguf: &Path, held_out: &[Trace]) -> ParityCheck {
    let name = "tokenization";
    let serving = match tokenizer::read_gguf(gguf).and_then(|content| tokenizer::from_gguf(&content)) {
        Ok(serving) => serving,
        Err(e) => return check(name, false, true, format!("the GGUF's tokenizer cannot be rebuilt: {e}")),
    };
    let template = ChatTemplate::for_model(
        serving.chat_template.as_deref(),
        serving.bos_token.as_deref().unwrap_or(""),
        serving.eos_token.as_deref().unwrap_or(""),
    );
    let mut tokens = 0;
    for trace in held_out {
        let rendered = (
            trained.template.render(&trace.messages, &trace.tools, false),
            template.render(&trace.messages, &trace.tools, false),
        );
        let (training_text, serving_text) = match rendered {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                return check(name, false, true, format!("trace {}: cannot render: {e}", trace.id))
            }
        };
        if training_text != serving_text {
            let at = training_text.chars().zip(serving_text.chars()).take_while(|(a, b)| a == b).count();
            return check(
                name,
                false,
                true,
                format!("trace {}: the GGUF's chat template renders differently from character {at}", trace.id),
            );
        }
        let encode = |t: &tokenizers::Tokenizer| t.encode(training_text.as_str(), false).map(|e| e.get_ids().to_vec());
        let (Ok(a), Ok(b)) = (encode(&trained.tokenizer), encode(&serving.tokenizer)) else {
            return check(name, false, true, format!("trace {}: a tokenizer failed to encode it", trace.id));
        };
        if let Some(index) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            let show = |ids: &[u32], t: &tokenizers::Tokenizer| {
                ids.get(index).map_or("(end)".to_string(), |&id| format!("{id} {:?}", token_text(t, id)))
            };
            return check(
                name,
                false,
                true,
                format!(
                    "trace {}: token {index} differs: training {}, GGUF {}",
                    trace.id,
                    show(&a, &trained.tokenizer),
                    show(&b, &serving.tokenizer)
                ),
            );
        }
        tokens += a.len();
    }
    check(
        name,
        true,
        true,
        format!("{} held-out traces, {tokens} tokens, identical ids (pre-tokenizer {:?})", held_out.len(), serving.pre),
    )
}

/// The prompt of a held-out trace: its messages before the first assistant turn.
pub fn prompt_of(trace: &Trace) -> Vec<Message> {
    trace.messages.iter().take_while(|m| m.role != Role::Assistant).cloned().collect()
}

/// The tools a trace offered: the prompt as the model was trained on it.
fn tools_of(trace: &Trace) -> Vec<Value> {
    trace.tools.clone()
}

/// Greedy generations of a model on the prompts.
pub fn greedy(model: &LoadedModel, prompts: &[&Trace], max_tokens: usize) -> anyhow::Result<Vec<Generation>> {
    let options = GenerateOptions { max_tokens, ..GenerateOptions::default() };
    prompts.iter().map(|trace| model.generate(&prompt_of(trace), &tools_of(trace), &options)).collect()
}

/// Share of greedy tokens that agree position by position.
pub fn agreement(reference: &[Generation], other: &[Generation]) -> f64 {
    let (mut same, mut total) = (0usize, 0usize);
    for (a, b) in reference.iter().zip(other) {
        total += a.token_ids.len().max(b.token_ids.len()).max(1);
        same += a.token_ids.iter().zip(&b.token_ids).take_while(|(x, y)| x == y).count();
        if a.token_ids.is_empty() && b.token_ids.is_empty() {
            same += 1;
        }
    }
    if total == 0 {
        1.0
    } else {
        same as f64 / total as f64
    }
}

/// (b), (c), (d) and the per-quant agreement.
pub fn generation_checks(
    trained: &LoadedModel,
    gguf_f32: &Path,
    quant_files: &[(Quant, &Path)],
    held_out: &[Trace],
    options: &ParityOptions,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Vec<ParityCheck>> {
    let prompts: Vec<&Trace> = held_out.iter().take(options.prompts.max(1)).collect();
    let device = Device::Cpu;
    progress("greedy tokens of the trained model");
    let reference = greedy(trained, &prompts, options.max_tokens)?;
    progress("greedy tokens of the f32 GGUF");
    let exported = LoadedModel::load_path(gguf_f32, &device)?;
    let generated = greedy(&exported, &prompts, options.max_tokens)?;
    let mut checks = Vec::new();

    // (b)
    let mut first_difference = None;
    for ((trace, a), b) in prompts.iter().zip(&reference).zip(&generated) {
        if let Some(index) =
            (0..a.token_ids.len().max(b.token_ids.len())).find(|&i| a.token_ids.get(i) != b.token_ids.get(i))
        {
            let show = |g: &Generation| {
                g.token_ids
                    .get(index)
                    .map_or("(end of turn)".to_string(), |&id| format!("{id} {:?}", token_text(&trained.tokenizer, id)))
            };
            first_difference = Some(format!(
                "prompt of trace {}: token {index} differs: trained {}, GGUF {}",
                trace.id,
                show(a),
                show(b)
            ));
            break;
        }
    }
    let tokens: usize = reference.iter().map(|g| g.token_ids.len()).sum();
    checks.push(match first_difference {
        None => check(
            "greedy_tokens",
            true,
            true,
            format!("{} prompts, {tokens} greedy tokens identical (f32 GGUF vs trained weights)", prompts.len()),
        ),
        Some(detail) => check("greedy_tokens", false, true, detail),
    });

    // (c)
    let stop_ids: Vec<u32> =
        exported.template.end_of_turn.iter().filter_map(|t| exported.tokenizer.token_to_id(t)).collect();
    let content = tokenizer::read_gguf(gguf_f32)?;
    let types =
        content.metadata.get("tokenizer.ggml.token_type").and_then(|v| v.to_vec().ok()).cloned().unwrap_or_default();
    let eos = content.metadata.get("tokenizer.ggml.eos_token_id").and_then(|v| v.to_u32().ok());
    let not_control: Vec<u32> = stop_ids
        .iter()
        .copied()
        .filter(|&id| types.get(id as usize).and_then(|t| t.to_i32().ok()) != Some(3))
        .collect();
    let trained_stops = reference.iter().filter(|g| g.finish_reason != "length").count();
    let exported_stops = generated.iter().filter(|g| g.finish_reason != "length").count();
    let same_stops =
        reference.iter().zip(&generated).all(|(a, b)| (a.finish_reason == "length") == (b.finish_reason == "length"));
    let (passed, detail) = if stop_ids.is_empty() {
        (false, "no end-of-turn token of the template is in the GGUF's vocabulary".to_string())
    } else if !not_control.is_empty() {
        (false, format!("end-of-turn token ids {not_control:?} are not CONTROL tokens in the GGUF"))
    } else if eos.is_none_or(|e| !stop_ids.contains(&e)) {
        (false, format!("tokenizer.ggml.eos_token_id {eos:?} is not an end-of-turn token {stop_ids:?}"))
    } else if !same_stops {
        (false, format!("the trained model stopped on {trained_stops} prompts, the GGUF on {exported_stops}"))
    } else {
        (true, format!("end-of-turn ids {stop_ids:?} are CONTROL tokens and eos; {exported_stops}/{} generations ended there within {} tokens, as the trained model's did", prompts.len(), options.max_tokens))
    };
    checks.push(check("stops_at_end_of_turn", passed, true, detail));

    // (d) The export keeps the trained model's tool calls: the same parsed calls on every
    // prompt. Whether the trained model calls tools at all is its quality, which `eval`
    // measures; an export cannot be blamed for a call the trained model never made.
    let calls = |g: &Generation| if g.parsed.malformed == 0 { g.parsed.tool_calls.clone() } else { Vec::new() };
    let same_calls = reference.iter().zip(&generated).all(|(a, b)| calls(a) == calls(b));
    let with_calls: Vec<&Generation> = generated.iter().filter(|g| !calls(g).is_empty()).collect();
    let trained_with_calls = reference.iter().filter(|g| !calls(g).is_empty()).count();
    let detail = match (with_calls.first(), same_calls) {
        (_, false) => format!(
            "the trained model gave parseable tool calls on {trained_with_calls}/{} prompts, the GGUF on {}",
            prompts.len(),
            with_calls.len()
        ),
        (Some(g), true) => format!(
            "{}/{} prompts gave the trained model's parseable tool calls; first: {}({})",
            with_calls.len(),
            prompts.len(),
            g.parsed.tool_calls[0].0,
            g.parsed.tool_calls[0].1
        ),
        (None, true) => format!(
            "the trained model itself gave no parseable tool call on these {} prompts within {} tokens, nor did the GGUF (a quality matter: see `eval`); first reply: {:?}",
            prompts.len(),
            options.max_tokens,
            generated.first().map(|g| g.text.chars().take(120).collect::<String>())
        ),
    };
    checks.push(check("tool_call", same_calls, options.require_tool_call, detail));

    for (quant, path) in quant_files {
        if *quant == Quant::F32 {
            continue;
        }
        progress(&format!("greedy agreement of {}", quant.as_str()));
        let model = LoadedModel::load_path(path, &device)?;
        let tokens = greedy(&model, &prompts, options.max_tokens)?;
        let rate = agreement(&reference, &tokens);
        checks.push(check(
            &format!("agreement:{}", quant.as_str()),
            true,
            false,
            format!("{:.1}% of greedy tokens agree with the trained model", rate * 100.0),
        ));
    }
    Ok(checks)
}
