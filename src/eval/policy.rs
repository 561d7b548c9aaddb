//! The two kinds of model an evaluation can run: a stored model (or an export's HF directory or a
//! GGUF) on our own decoder, rendered with its own chat template and parsed by the one reply
//! parser, greedy by default; and any OpenAI-compatible endpoint (`/v1/chat/completions` with
//! tools: our own server, Ollama, vLLM, a hosted model), so every model is scored by the same
//! harness. An endpoint that times out, answers 4xx/5xx or returns garbage fails that episode
//! with the reason; the run goes on.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::episode::{Policy, PolicyReply};
use crate::model::generate::{GenerateOptions, Generation, LoadedModel, PromptCache};
use crate::traces::wire::messages_to_wire;
use crate::traces::Message;

/// A model on this machine, decoded by our candle runtime.
pub struct LocalPolicy {
    model: LoadedModel,
    options: GenerateOptions,
    /// The episode's KV cache: each turn only computes what the conversation added.
    cache: Option<PromptCache>,
}

impl LocalPolicy {
    /// Load a model directory of ours, an HF directory or a GGUF file on the CPU.
    /// With `tool_grammar`, tool calls decode in the offered tools' grammar, as `/v1` serves them.
    pub fn load(path: &Path, max_tokens: usize, tool_grammar: bool) -> Result<LocalPolicy, String> {
        let device = crate::model::llama::device_for("cpu")?;
        let model = LoadedModel::load_path(path, &device).map_err(|e| format!("{}: {e:#}", path.display()))?;
        let options = GenerateOptions { max_tokens, tool_grammar, ..GenerateOptions::default() };
        Ok(LocalPolicy { model, options, cache: None })
    }
}

impl Policy for LocalPolicy {
    fn start_episode(&mut self) {
        self.cache = None;
    }

    fn reply(&mut self, messages: &[Message], tools: &[Value]) -> Result<PolicyReply, String> {
        let cache = self.cache.get_or_insert_with(|| self.model.new_cache());
        let generation =
            self.model.generate_cached(messages, tools, &self.options, cache).map_err(|e| format!("{e:#}"))?;
        Ok(PolicyReply::from(&generation))
    }
}

impl From<&Generation> for PolicyReply {
    /// A reply of our decoder, as the episode runner sees it.
    fn from(generation: &Generation) -> PolicyReply {
        PolicyReply {
            content: generation.parsed.content.clone(),
            tool_calls: generation.parsed.tool_calls.clone(),
            malformed: generation.parsed.malformed,
            tokens: generation.token_ids.len(),
            finished: generation.finish_reason != "length",
        }
    }
}

/// An OpenAI-compatible chat endpoint.
pub struct EndpointPolicy {
    agent: ureq::Agent,
    url: String,
    model: String,
    api_key: Option<String>,
    max_tokens: usize,
}

impl EndpointPolicy {
    /// `base` is the server (`http://host:port`) or its `/v1`.
    pub fn new(
        base: &str,
        model: &str,
        api_key: Option<String>,
        max_tokens: usize,
        timeout: Duration,
    ) -> EndpointPolicy {
        let base = base.trim_end_matches('/').trim_end_matches("/v1");
        let agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into();
        EndpointPolicy {
            agent,
            url: format!("{base}/v1/chat/completions"),
            model: model.to_string(),
            api_key,
            max_tokens,
        }
    }
}

impl Policy for EndpointPolicy {
    fn reply(&mut self, messages: &[Message], tools: &[Value]) -> Result<PolicyReply, String> {
        let body = json!({
            "model": self.model,
            "messages": messages_to_wire(messages),
            "tools": tools,
            "temperature": 0,
            "max_tokens": self.max_tokens,
        });
        let mut request = self.agent.post(&self.url);
        if let Some(key) = &self.api_key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request.send_json(&body).map_err(|e| format!("{}: {e}", self.url))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| format!("{}: reading the reply: {e}", self.url))?;
        if !(200..300).contains(&status) {
            let excerpt: String = text.chars().take(300).collect();
            return Err(format!("{} answered {status}: {excerpt}", self.url));
        }
        let reply: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: the reply is not JSON ({e})", self.url))?;
        let choice = &reply["choices"][0];
        let message =
            choice.get("message").ok_or_else(|| format!("{}: the reply has no choices[0].message", self.url))?;
        let mut malformed = 0;
        let mut tool_calls = Vec::new();
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            let name = call["function"]["name"].as_str().unwrap_or_default().to_string();
            let arguments = match &call["function"]["arguments"] {
                Value::String(text) => serde_json::from_str(text).ok(),
                Value::Object(_) => Some(call["function"]["arguments"].clone()),
                _ => None,
            };
            match arguments {
                Some(arguments) if !name.is_empty() => tool_calls.push((name, arguments)),
                _ => malformed += 1,
            }
        }
        Ok(PolicyReply {
            content: message["content"].as_str().map(str::to_string),
            tool_calls,
            malformed,
            tokens: reply["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize,
            finished: choice["finish_reason"].as_str() != Some("length"),
        })
    }
}
