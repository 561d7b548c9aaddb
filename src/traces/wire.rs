//! Serde shapes of traces on the wire: the canonical JSONL record (spec 2.1) and OpenAI
//! `{"messages", "tools"}` rows, and their conversion to and from the domain `Trace`.
//!
//! Reading is lenient where producers differ (content as text parts, arguments as an object
//! instead of a string, `type` omitted); writing is exact: arguments are always JSON strings and
//! assistant messages that only call tools carry `"content": null`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Message, Outcome, OutcomeCheck, OutcomeStatus, Role, Source, Split, ToolCall, Trace, TraceDraft};

#[derive(Debug, Deserialize)]
pub struct TraceRecord {
    pub id: Option<String>,
    pub source: Option<Source>,
    pub category: Option<String>,
    pub prompt: Option<String>,
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    pub outcome: Option<WireOutcome>,
    pub metadata: Option<Map<String, Value>>,
    pub split: Option<Split>,
    pub created_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireOutcome {
    pub status: OutcomeStatus,
    #[serde(default)]
    pub checks: Vec<OutcomeCheck>,
}

#[derive(Debug, Deserialize)]
pub struct OpenAiRow {
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub struct WireMessage {
    pub role: Role,
    /// A string, null, or a list of `{"type": "text", "text": ...}` parts; checked in conversion
    /// so the error can say exactly what was wrong.
    #[serde(default)]
    pub content: Option<Value>,
    #[serde(default)]
    pub tool_calls: Option<Vec<WireToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WireToolCall {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub function: WireFunction,
}

#[derive(Debug, Deserialize)]
pub struct WireFunction {
    pub name: String,
    /// A JSON string per OpenAI; some producers send the object itself.
    pub arguments: Value,
}

/// A conversion problem with the field path, in the same shape as validation errors.
pub type FieldError = super::ValidationError;

fn field_error(field: String, reason: impl Into<String>) -> FieldError {
    FieldError { field, reason: reason.into() }
}

pub fn messages_from_wire(messages: Vec<WireMessage>) -> Result<Vec<Message>, FieldError> {
    messages.into_iter().enumerate().map(|(index, m)| message_from_wire(index, m)).collect()
}

fn message_from_wire(index: usize, wire: WireMessage) -> Result<Message, FieldError> {
    let content = match wire.content {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (part_index, part) in parts.into_iter().enumerate() {
                let at = format!("messages[{index}].content[{part_index}]");
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(part_text)) => text.push_str(part_text),
                    (Some(kind), _) if kind != "text" => {
                        return Err(field_error(at, format!("only text parts are supported, got type {kind:?}")))
                    }
                    _ => {
                        return Err(field_error(
                            at,
                            format!("must be {{\"type\": \"text\", \"text\": ...}}, got {}", super::json_kind(&part)),
                        ))
                    }
                }
            }
            Some(text)
        }
        Some(other) => {
            return Err(field_error(
                format!("messages[{index}].content"),
                format!("must be a string, null or a list of text parts, got {}", super::json_kind(&other)),
            ))
        }
    };
    let mut tool_calls = Vec::new();
    for (call_index, call) in wire.tool_calls.unwrap_or_default().into_iter().enumerate() {
        if let Some(kind) = call.kind.as_deref() {
            if kind != "function" {
                return Err(field_error(
                    format!("messages[{index}].tool_calls[{call_index}].type"),
                    format!("must be \"function\", got {kind:?}"),
                ));
            }
        }
        let arguments = match call.function.arguments {
            Value::String(text) => text,
            value @ Value::Object(_) => value.to_string(),
            other => {
                return Err(field_error(
                    format!("messages[{index}].tool_calls[{call_index}].function.arguments"),
                    format!("must be a JSON object or a string holding one, got {}", super::json_kind(&other)),
                ))
            }
        };
        tool_calls.push(ToolCall { id: call.id, name: call.function.name, arguments });
    }
    Ok(Message { role: wire.role, content, tool_calls, tool_call_id: wire.tool_call_id, name: wire.name })
}

impl TraceRecord {
    pub fn into_trace(self) -> Result<Trace, FieldError> {
        let messages = messages_from_wire(self.messages)?;
        Trace::new(TraceDraft {
            id: self.id,
            source: self.source,
            category: self.category,
            prompt: self.prompt,
            messages,
            tools: self.tools.unwrap_or_default(),
            outcome: self.outcome.map(|o| Outcome { status: o.status, checks: o.checks }),
            metadata: self.metadata.unwrap_or_default(),
            split: self.split,
            created_at: self.created_at,
        })
    }
}

#[derive(Debug, Serialize)]
struct OutMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<OutToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct OutToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: OutFunction<'a>,
}

#[derive(Debug, Serialize)]
struct OutFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
struct CanonicalOut<'a> {
    id: &'a str,
    source: Source,
    category: &'a str,
    prompt: &'a str,
    messages: Vec<OutMessage<'a>>,
    tools: &'a [Value],
    outcome: &'a Outcome,
    metadata: &'a Map<String, Value>,
    split: Split,
    created_at: &'a str,
}

#[derive(Debug, Serialize)]
struct OpenAiOut<'a> {
    messages: Vec<OutMessage<'a>>,
    tools: &'a [Value],
}

fn out_messages(messages: &[Message]) -> Vec<OutMessage<'_>> {
    messages
        .iter()
        .map(|m| OutMessage {
            role: m.role.as_str(),
            content: m.content.as_deref(),
            tool_calls: m
                .tool_calls
                .iter()
                .map(|c| OutToolCall {
                    id: &c.id,
                    kind: "function",
                    function: OutFunction { name: &c.name, arguments: &c.arguments },
                })
                .collect(),
            tool_call_id: m.tool_call_id.as_deref(),
            name: m.name.as_deref(),
        })
        .collect()
}

/// The canonical JSON object of spec 2.1 (one JSONL line when serialised).
pub fn to_canonical_json(trace: &Trace) -> String {
    serde_json::to_string(&CanonicalOut {
        id: &trace.id,
        source: trace.source,
        category: &trace.category,
        prompt: &trace.prompt,
        messages: out_messages(&trace.messages),
        tools: &trace.tools,
        outcome: &trace.outcome,
        metadata: &trace.metadata,
        split: trace.split,
        created_at: &trace.created_at,
    })
    .expect("serialising owned JSON values cannot fail")
}

/// Messages in the exact OpenAI wire form (as in exports), e.g. for a preference pair's
/// conversational prompt, chosen and rejected.
pub fn messages_to_wire(messages: &[Message]) -> Value {
    serde_json::to_value(out_messages(messages)).expect("serialising owned JSON values cannot fail")
}

/// An OpenAI/TRL `{"messages", "tools"}` row.
pub fn to_openai_json(trace: &Trace) -> String {
    serde_json::to_string(&OpenAiOut { messages: out_messages(&trace.messages), tools: &trace.tools })
        .expect("serialising owned JSON values cannot fail")
}
