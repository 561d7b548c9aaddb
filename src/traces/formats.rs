//! Parsing one JSONL record of an import format (canonical, OpenAI rows, ShareGPT) into a
//! validated `Trace`, with a one-line reason naming the field when the record is rejected.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::wire::{messages_from_wire, OpenAiRow, TraceRecord};
use super::{Message, Role, Source, ToolCall, Trace, TraceDraft};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    Canonical,
    Openai,
    Sharegpt,
}

impl ImportFormat {
    pub const ALL: [ImportFormat; 3] = [ImportFormat::Canonical, ImportFormat::Openai, ImportFormat::Sharegpt];

    pub fn as_str(self) -> &'static str {
        match self {
            ImportFormat::Canonical => "canonical",
            ImportFormat::Openai => "openai",
            ImportFormat::Sharegpt => "sharegpt",
        }
    }
}

impl fmt::Display for ImportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ImportFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        ImportFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == text)
            .ok_or_else(|| format!("unknown format {text:?} (expected canonical, openai or sharegpt)"))
    }
}

/// Parse one non-blank line. The error is the human-readable reason for `{"line", "reason"}`.
pub fn parse_record(format: ImportFormat, text: &str) -> Result<Trace, String> {
    let result = match format {
        ImportFormat::Canonical => decode::<TraceRecord>(text)?.into_trace(),
        ImportFormat::Openai => {
            let row: OpenAiRow = decode(text)?;
            messages_from_wire(row.messages).and_then(|messages| {
                Trace::new(TraceDraft {
                    source: Some(Source::Import),
                    messages,
                    tools: row.tools.unwrap_or_default(),
                    ..TraceDraft::default()
                })
            })
        }
        ImportFormat::Sharegpt => {
            let row: ShareGptRow = decode(text)?;
            return sharegpt_to_trace(row);
        }
    };
    result.map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    // serde would read a struct from an array too; a record is an object and nothing else.
    if !text.trim_start().starts_with('{') {
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
            let e = serde_json::from_str::<serde::de::IgnoredAny>(text).unwrap_err();
            return Err(format!("invalid JSON: {}", without_position(&e)));
        }
        return Err(format!("the line must be one JSON object, got {}", first_token_kind(text)));
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner();
        let path = e.path().to_string();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("invalid JSON: {}", without_position(inner))
            }
            _ if path == "." => without_position(inner),
            _ => format!("{path}: {}", without_position(inner)),
        }
    })?;
    deserializer.end().map_err(|e| format!("invalid JSON: trailing characters after the object ({e})"))?;
    Ok(value)
}

/// serde_json says "at line 1 column 59"; within one JSONL record only the column means anything.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) if error.column() > 0 => format!("{} (column {})", &text[..at], error.column()),
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn first_token_kind(text: &str) -> &'static str {
    match text.trim_start().chars().next() {
        Some('[') => "an array",
        Some('"') => "a string",
        Some('t' | 'f') => "a boolean",
        Some('n') => "null",
        _ => "a number",
    }
}

#[derive(Debug, Deserialize)]
struct ShareGptRow {
    conversations: Vec<ShareTurn>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    tools: Option<ToolsField>,
}

#[derive(Debug, Deserialize)]
struct ShareTurn {
    #[serde(alias = "role")]
    from: String,
    #[serde(alias = "content")]
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ToolsField {
    Text(String),
    List(Vec<Value>),
}

/// The separator LLaMA-Factory uses when it folds parallel tool results into one observation.
const OBSERVATION_SEPARATOR: &str = "\n</tool_response>\n<tool_response>\n";

fn sharegpt_to_trace(row: ShareGptRow) -> Result<Trace, String> {
    let tools = match row.tools {
        None => Vec::new(),
        Some(ToolsField::Text(text)) if text.trim().is_empty() => Vec::new(),
        Some(ToolsField::Text(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Array(items)) => items,
            Ok(_) => return Err("tools: must be a JSON array (or a string holding one)".into()),
            Err(e) => return Err(format!("tools: not valid JSON: {e}")),
        },
        Some(ToolsField::List(items)) => items,
    };
    let tools: Vec<Value> = tools
        .into_iter()
        .map(|tool| if tool.get("type").is_some() { tool } else { json!({"type": "function", "function": tool}) })
        .collect();

    let mut messages: Vec<Message> = Vec::new();
    if let Some(system) = row.system.filter(|s| !s.is_empty()) {
        messages.push(Message::text(Role::System, system));
    }
    let mut pending: Vec<String> = Vec::new();
    let mut next_call = 1usize;
    for (index, turn) in row.conversations.into_iter().enumerate() {
        let at = |field: &str| format!("conversations[{index}].{field}");
        match turn.from.as_str() {
            "system" => messages.push(Message::text(Role::System, turn.value)),
            "human" | "user" => messages.push(Message::text(Role::User, turn.value)),
            "gpt" | "assistant" => messages.push(Message::text(Role::Assistant, turn.value)),
            "function_call" => {
                let parsed: Value =
                    serde_json::from_str(&turn.value).map_err(|e| format!("{}: not valid JSON: {e}", at("value")))?;
                let calls = match parsed {
                    Value::Array(items) => items,
                    single => vec![single],
                };
                let mut tool_calls = Vec::new();
                for (call_index, call) in calls.into_iter().enumerate() {
                    let name = call
                        .get("name")
                        .and_then(Value::as_str)
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| format!("{}: call {call_index} needs a non-empty \"name\"", at("value")))?;
                    let arguments = match call.get("arguments") {
                        None | Some(Value::Null) => "{}".to_string(),
                        Some(Value::String(text)) => text.clone(),
                        Some(other) => other.to_string(),
                    };
                    let id = format!("call_{next_call}");
                    next_call += 1;
                    pending.push(id.clone());
                    tool_calls.push(ToolCall { id, name: name.to_string(), arguments });
                }
                // Reasoning written just before the call belongs to the same assistant turn.
                match messages.last_mut() {
                    Some(last) if last.role == Role::Assistant && last.tool_calls.is_empty() => {
                        last.tool_calls = tool_calls
                    }
                    _ => messages.push(Message {
                        role: Role::Assistant,
                        content: None,
                        tool_calls,
                        tool_call_id: None,
                        name: None,
                    }),
                }
            }
            "observation" | "tool" | "function" => {
                if pending.is_empty() {
                    return Err(format!("{}: an observation must follow a function_call", at("from")));
                }
                let results: Vec<String> = if pending.len() == 1 {
                    vec![turn.value]
                } else {
                    let parts: Vec<String> = turn.value.split(OBSERVATION_SEPARATOR).map(str::to_string).collect();
                    if parts.len() != pending.len() {
                        return Err(format!(
                            "{}: answers {} parallel calls but holds {} results",
                            at("value"),
                            pending.len(),
                            parts.len()
                        ));
                    }
                    parts
                };
                for (call_id, result) in pending.drain(..).zip(results) {
                    messages.push(Message {
                        role: Role::Tool,
                        content: Some(result),
                        tool_calls: Vec::new(),
                        tool_call_id: Some(call_id),
                        name: None,
                    });
                }
            }
            other => {
                return Err(format!(
                    "{}: unknown speaker {other:?} (expected human, gpt, function_call, observation or system)",
                    at("from")
                ))
            }
        }
    }
    Trace::new(TraceDraft { source: Some(Source::Import), messages, tools, ..TraceDraft::default() })
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharegpt_function_calls_become_tool_calls() {
        let line = r#"{"conversations":[{"from":"human","value":"The test fails, fix it"},{"from":"function_call","value":"{\"name\":\"Bash\",\"arguments\":{\"command\":\"cargo test\"}}"},{"from":"observation","value":"FAILED"},{"from":"gpt","value":"Fixed."}],"system":"You are a coding agent","tools":"[{\"name\":\"Bash\",\"description\":\"Run\",\"parameters\":{}}]"}"#;
        let trace = parse_record(ImportFormat::Sharegpt, line).unwrap();
        assert_eq!(trace.messages.len(), 5);
        assert_eq!(trace.messages[2].tool_calls[0].name, "Bash");
        assert_eq!(trace.messages[3].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(trace.tools[0]["type"], "function");
        assert_eq!(trace.final_answer(), Some("Fixed."));
    }

    #[test]
    fn reasons_name_the_field() {
        let unknown_role = r#"{"messages":[{"role":"user","content":"hi"},{"role":"robot","content":"x"}]}"#;
        let reason = parse_record(ImportFormat::Openai, unknown_role).unwrap_err();
        assert!(reason.starts_with("messages[1].role: unknown variant `robot`"), "{reason}");

        let wrong_type = r#"{"messages":[{"role":"user","content":5}]}"#;
        let reason = parse_record(ImportFormat::Canonical, wrong_type).unwrap_err();
        assert!(reason.starts_with("messages[0].content"), "{reason}");

        let reason = parse_record(ImportFormat::Canonical, "{\"messages\": [").unwrap_err();
        assert!(reason.starts_with("invalid JSON"), "{reason}");

        let reason = parse_record(ImportFormat::Canonical, "[1]").unwrap_err();
        assert_eq!(reason, "the line must be one JSON object, got an array");

        let bad_split = r#"{"messages":[{"role":"user","content":"hi"}],"split":"dev"}"#;
        let reason = parse_record(ImportFormat::Canonical, bad_split).unwrap_err();
        assert!(reason.starts_with("split: unknown variant `dev`"), "{reason}");
    }
}
