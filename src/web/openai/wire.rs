//! OpenAI's wire format, and only it: the request bodies the endpoints accept, and a typed
//! struct for every body they send (chat completion and its chunk, completion and its chunk,
//! choices, messages, deltas, tool calls, logprobs, usage, the model list and card, the error
//! envelope). Fields are declared in the order they go out. A field that is `null` when unset
//! is a plain `Option`; one whose key is absent when unset carries `skip_serializing_if`.
//! `usage` is only built by [`Usage::new`] and `finish_reason` only by [`FinishReason::of`];
//! the error envelope is only built by `OpenAiError::envelope` (in the parent module).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::model::reply::ToolCallOut;
use crate::serve::decode::{Finish, TokenLogprob};
use crate::serve::registry::{CatalogEntry, ServedModel};

// ---------------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`. Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A served model name, a version, or `understudy` (the champion; the default).
    #[serde(default)]
    pub model: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name": ...}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Only `{"type": "text"}` (the default); other formats are refused.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// Default 0 (the served models are tuned for deterministic tool calls).
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// A string or up to 4 strings.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default)]
    pub top_logprobs: Option<u64>,
    /// Understudy extension: also return the generated token ids (`choices[].token_ids`).
    #[serde(default)]
    pub return_token_ids: bool,
}

/// `POST /v1/completions` (legacy). Unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// A string, a list with one string, or token ids.
    #[schema(value_type = Object)]
    pub prompt: Value,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: Option<u64>,
    #[serde(default)]
    pub echo: bool,
    #[serde(default)]
    pub return_token_ids: bool,
}

// ---------------------------------------------------------------------------------------------
// Shared parts of replies

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Always `prompt_tokens + completion_tokens`.
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of turn or a stop sequence.
    Stop,
    /// The token limit or the context was reached.
    Length,
    /// The reply called tools (chat only).
    ToolCalls,
}

impl FinishReason {
    /// How a decode finished, and whether the reply it produced calls tools.
    pub fn of(finish: Finish, tool_calls: bool) -> FinishReason {
        match (finish, tool_calls) {
            (_, true) => FinishReason::ToolCalls,
            (Finish::Stop, false) => FinishReason::Stop,
            (Finish::Length, false) => FinishReason::Length,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chat completions

/// A tool call in an assistant message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ToolCall {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text.
    pub arguments: String,
}

impl ToolCall {
    /// A parsed call, with a fresh `call_...` id.
    pub fn new(call: &ToolCallOut) -> ToolCall {
        ToolCall {
            id: super::new_id("call_"),
            kind: "function",
            function: FunctionCall { name: call.name.clone(), arguments: call.arguments.clone() },
        }
    }
}

/// `choices[].logprobs` of a chat completion or chunk.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f64,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub fn new<'a>(logprobs: impl IntoIterator<Item = &'a TokenLogprob>) -> ChatLogprobs {
        ChatLogprobs {
            content: logprobs
                .into_iter()
                .map(|logprob| ChatTokenLogprob {
                    token: logprob.token.clone(),
                    logprob: f64::from(logprob.logprob),
                    bytes: logprob.token.as_bytes().to_vec(),
                    top_logprobs: logprob
                        .top
                        .iter()
                        .map(|(token, logprob)| TopLogprob {
                            token: token.clone(),
                            logprob: f64::from(*logprob),
                            bytes: token.as_bytes().to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// The assistant's message in a chat completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatMessage {
    /// Always `assistant`.
    pub role: &'static str,
    pub content: Option<String>,
    /// Always null.
    pub refusal: Option<String>,
    /// Absent when the reply calls no tool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

impl ChatMessage {
    pub fn assistant(content: Option<String>, tool_calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage {
            role: "assistant",
            content,
            refusal: None,
            tool_calls: (!tool_calls.is_empty()).then_some(tool_calls),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessage,
    /// Null unless the request set `logprobs`.
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: FinishReason,
    /// Understudy extension, present when the request set `return_token_ids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// `chat.completion`: a whole chat reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    /// The version (export or model id) that answered.
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

impl ChatCompletion {
    pub fn new(model: &ServedModel, choice: ChatChoice, usage: Usage) -> ChatCompletion {
        ChatCompletion {
            id: super::new_id("chatcmpl-"),
            object: "chat.completion",
            created: super::unix_now(),
            model: model.name.clone(),
            system_fingerprint: model.version.clone(),
            choices: vec![choice],
            usage,
        }
    }
}

/// What one chunk adds to the message; every key is absent unless it changes something.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of the tool call at `index`: first its id, type and name with empty arguments, then
/// its arguments alone.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

impl Delta {
    /// The first delta of a stream: the role, and empty content.
    pub fn role() -> Delta {
        Delta { role: Some("assistant"), content: Some(String::new()), tool_calls: None }
    }

    pub fn content(text: String) -> Delta {
        Delta { content: Some(text), ..Delta::default() }
    }

    /// The head of a tool call: its id, type and name, with empty arguments.
    pub fn tool_call_head(index: usize, call: &ToolCall) -> Delta {
        Delta::tool_call(ToolCallDelta {
            index,
            id: Some(call.id.clone()),
            kind: Some(call.kind),
            function: FunctionDelta { name: Some(call.function.name.clone()), arguments: String::new() },
        })
    }

    /// The arguments of the tool call at `index`.
    pub fn tool_call_arguments(index: usize, arguments: String) -> Delta {
        Delta::tool_call(ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionDelta { name: None, arguments },
        })
    }

    fn tool_call(call: ToolCallDelta) -> Delta {
        Delta { tool_calls: Some(vec![call]), ..Delta::default() }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    /// Null except in the stream's last choice.
    pub finish_reason: Option<FinishReason>,
    /// Understudy extension, in the last choice when the request set `return_token_ids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// `chat.completion.chunk`: one event of a streamed chat reply. The usage chunk (sent last,
/// when `stream_options.include_usage` is set) has no choices and carries `usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatCompletionChunk {
    pub fn new(id: &str, created: i64, model: &ServedModel, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Self {
        ChatCompletionChunk {
            id: id.to_string(),
            object: "chat.completion.chunk",
            created,
            model: model.name.clone(),
            system_fingerprint: model.version.clone(),
            choices,
            usage,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy completions

/// `choices[].logprobs` of a legacy completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f64>,
    /// Per token, the alternatives as `{token: logprob}`.
    #[schema(value_type = Vec<Object>)]
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
}

impl CompletionLogprobs {
    pub fn new(logprobs: &[TokenLogprob]) -> CompletionLogprobs {
        CompletionLogprobs {
            tokens: logprobs.iter().map(|l| l.token.clone()).collect(),
            token_logprobs: logprobs.iter().map(|l| f64::from(l.logprob)).collect(),
            top_logprobs: logprobs
                .iter()
                .map(|l| l.top.iter().map(|(token, logprob)| (token.clone(), Value::from(*logprob))).collect())
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub text: String,
    pub index: u32,
    /// Null unless the request set `logprobs` (always null in chunks).
    pub logprobs: Option<CompletionLogprobs>,
    /// Null except in a whole completion and a stream's last chunk.
    pub finish_reason: Option<FinishReason>,
    /// Understudy extension, present when the request set `return_token_ids` (never in chunks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

impl CompletionChoice {
    /// A chunk's choice: text, and the finish reason in the last one.
    pub fn piece(text: String, finish_reason: Option<FinishReason>) -> CompletionChoice {
        CompletionChoice { text, index: 0, logprobs: None, finish_reason, token_ids: None }
    }
}

/// `text_completion`: a whole legacy completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

impl Completion {
    pub fn new(id: String, created: i64, model: &ServedModel, choice: CompletionChoice, usage: Usage) -> Completion {
        Completion {
            id,
            object: "text_completion",
            created,
            model: model.name.clone(),
            system_fingerprint: model.version.clone(),
            choices: vec![choice],
            usage,
        }
    }
}

/// One event of a streamed legacy completion (`object` is `text_completion` too). The usage
/// chunk (last, when `stream_options.include_usage` is set) has only `object`, empty `choices`
/// and `usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Always `text_completion`.
    pub object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl CompletionChunk {
    pub fn piece(id: &str, created: i64, model: &ServedModel, choice: CompletionChoice) -> CompletionChunk {
        CompletionChunk {
            id: Some(id.to_string()),
            object: "text_completion",
            created: Some(created),
            model: Some(model.name.clone()),
            system_fingerprint: Some(model.version.clone()),
            choices: vec![choice],
            usage: None,
        }
    }

    pub fn usage(usage: Usage) -> CompletionChunk {
        CompletionChunk {
            id: None,
            object: "text_completion",
            created: None,
            model: None,
            system_fingerprint: None,
            choices: Vec::new(),
            usage: Some(usage),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Models

/// `GET /v1/models`.
#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

impl ModelList {
    pub fn new(data: Vec<ModelCard>) -> ModelList {
        ModelList { object: "list", data }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    pub created: i64,
    pub owned_by: &'static str,
    /// The export (or model) id this name serves now.
    pub version: String,
    /// Answers to `understudy` and `default` too.
    pub champion: bool,
}

impl ModelCard {
    pub fn new(entry: &CatalogEntry) -> ModelCard {
        ModelCard {
            id: entry.name.clone(),
            object: "model",
            created: entry.created,
            owned_by: "understudy",
            version: entry.version.clone(),
            champion: entry.champion,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// OpenAI's error envelope, as a body or an SSE event.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}
