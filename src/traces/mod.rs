//! The canonical data model (spec 2.1–2.3): `Trace`, `Message`, `ToolCall` and their invariants;
//! preference pairs (spec 2.3) live in `preference`.
//!
//! A `Trace` can only be built through `Trace::new`, which validates roles, tool-call ids,
//! argument JSON and split values and computes the content hash. Wire shapes (canonical JSONL,
//! OpenAI rows, ShareGPT) live in `wire` and `formats`; this module knows nothing of SQL or HTTP.

pub mod formats;
pub mod jsonl;
pub mod preference;
pub mod tools;
pub mod wire;

use std::collections::HashSet;
use std::fmt;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Largest accepted trace record (one JSONL line), in bytes.
pub const MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// Where a trace came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Synthetic,
    ClaudeCode,
    DpoImport,
    Served,
    Import,
}

impl Source {
    pub const ALL: [Source; 5] =
        [Source::Synthetic, Source::ClaudeCode, Source::DpoImport, Source::Served, Source::Import];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Synthetic => "synthetic",
            Source::ClaudeCode => "claude_code",
            Source::DpoImport => "dpo_import",
            Source::Served => "served",
            Source::Import => "import",
        }
    }

    pub fn parse(text: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Train/val/test membership, assigned from the content hash unless the record names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// 90/5/5 from the content hash (see [`hash_bucket`]): a trace never changes split.
    pub fn from_hash(content_hash: &str) -> Split {
        Split::from_hash_with(content_hash, 0.05, 0.05)
    }

    /// The split for given validation and test shares, from the same hash bucket.
    pub fn from_hash_with(content_hash: &str, val_ratio: f64, test_ratio: f64) -> Split {
        let bucket = hash_bucket(content_hash);
        if bucket >= 1.0 - test_ratio {
            Split::Test
        } else if bucket >= 1.0 - test_ratio - val_ratio {
            Split::Val
        } else {
            Split::Train
        }
    }
}

/// A content hash's position in [0, 1), from its first 32 bits.
pub fn hash_bucket(content_hash: &str) -> f64 {
    let head = u32::from_str_radix(&content_hash[..8.min(content_hash.len())], 16).unwrap_or(0);
    (head % 10_000) as f64 / 10_000.0
}

/// The result of a trace's outcome check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeStatus {
    Success,
    Failure,
    Partial,
    Unknown,
}

impl OutcomeStatus {
    pub const ALL: [OutcomeStatus; 4] =
        [OutcomeStatus::Success, OutcomeStatus::Failure, OutcomeStatus::Partial, OutcomeStatus::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Success => "success",
            OutcomeStatus::Failure => "failure",
            OutcomeStatus::Partial => "partial",
            OutcomeStatus::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<OutcomeStatus> {
        OutcomeStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutcomeCheck {
    pub name: String,
    pub passed: bool,
    /// Anything else a check carries (detail, expected value...), kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub status: OutcomeStatus,
    #[serde(default)]
    pub checks: Vec<OutcomeCheck>,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome { status: OutcomeStatus::Unknown, checks: Vec::new() }
    }
}

/// One function call made by an assistant message. `arguments` is the JSON object text exactly
/// as received (validated to parse as an object), so exports reproduce it byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// The parsed arguments; validation guarantees they are a JSON object.
    pub fn arguments_value(&self) -> Value {
        serde_json::from_str(&self.arguments).unwrap_or(Value::Object(Map::new()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    /// Set on `tool` messages: the id of the call this message answers.
    pub tool_call_id: Option<String>,
    /// Optional tool name on `tool` messages (some producers send it).
    pub name: Option<String>,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Message {
        Message { role, content: Some(content.into()), tool_calls: Vec::new(), tool_call_id: None, name: None }
    }
}

/// A validated trace. Construct with [`Trace::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub id: String,
    pub source: Source,
    pub category: String,
    pub prompt: String,
    pub messages: Vec<Message>,
    pub tools: Vec<Value>,
    pub outcome: Outcome,
    pub metadata: Map<String, Value>,
    pub split: Split,
    pub created_at: String,
    pub content_hash: String,
}

/// Everything a caller may supply; missing pieces are derived by [`Trace::new`].
#[derive(Debug, Clone, Default)]
pub struct TraceDraft {
    pub id: Option<String>,
    pub source: Option<Source>,
    pub category: Option<String>,
    pub prompt: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Value>,
    pub outcome: Option<Outcome>,
    pub metadata: Map<String, Value>,
    pub split: Option<Split>,
    pub created_at: Option<String>,
}

/// A rule a trace broke, with the field path that broke it (`messages[3].tool_call_id`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError { field: field.into(), reason: reason.into() }
}

impl Trace {
    pub fn new(draft: TraceDraft) -> Result<Trace, ValidationError> {
        validate_messages(&draft.messages)?;
        for (index, tool) in draft.tools.iter().enumerate() {
            validate_tool_schema(tool).map_err(|reason| invalid(format!("tools[{index}]"), reason))?;
        }
        let first_user =
            draft.messages.iter().find(|m| m.role == Role::User).and_then(|m| m.content.clone()).unwrap_or_default();
        let prompt = match draft.prompt {
            Some(prompt) if !prompt.trim().is_empty() => prompt,
            _ => first_user,
        };
        if prompt.trim().is_empty() {
            return Err(invalid("prompt", "the trace has no user prompt (no user message with text)"));
        }
        let id = id_or_new(draft.id, new_trace_id)?;
        let created_at = created_at_or_now(draft.created_at)?;
        let content_hash = content_hash(&prompt, &draft.messages, &draft.tools);
        let category = match draft.category {
            Some(category) if !category.trim().is_empty() => {
                if category.len() > 64 || category.chars().any(|c| c.is_control()) {
                    return Err(invalid("category", "must be at most 64 printable characters"));
                }
                category
            }
            _ => infer_category(&prompt, &draft.messages),
        };
        Ok(Trace {
            id,
            source: draft.source.unwrap_or(Source::Import),
            category,
            prompt,
            split: draft.split.unwrap_or_else(|| Split::from_hash(&content_hash)),
            messages: draft.messages,
            tools: draft.tools,
            outcome: draft.outcome.unwrap_or_default(),
            metadata: draft.metadata,
            created_at,
            content_hash,
        })
    }

    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.messages.iter().flat_map(|m| m.tool_calls.iter())
    }

    pub fn n_tool_calls(&self) -> usize {
        self.tool_calls().count()
    }

    /// The last assistant message's text, when it has no tool calls.
    pub fn final_answer(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .filter(|m| m.tool_calls.is_empty())
            .and_then(|m| m.content.as_deref())
    }
}

/// A record's own id, checked, or a fresh one.
pub(crate) fn id_or_new(id: Option<String>, new: fn() -> String) -> Result<String, ValidationError> {
    match id {
        Some(id) => {
            validate_id(&id).map_err(|reason| invalid("id", reason))?;
            Ok(id)
        }
        None => Ok(new()),
    }
}

/// A record's own RFC 3339 timestamp, checked, or now.
pub(crate) fn created_at_or_now(created_at: Option<String>) -> Result<String, ValidationError> {
    match created_at {
        Some(text) => {
            chrono::DateTime::parse_from_rfc3339(&text)
                .map_err(|e| invalid("created_at", format!("not an RFC 3339 timestamp ({e}): {text:?}")))?;
            Ok(text)
        }
        None => Ok(now_rfc3339()),
    }
}

fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')) {
        return Err(format!("{id:?} may only hold letters, digits, '_', '-', '.' and ':'"));
    }
    Ok(())
}

fn validate_messages(messages: &[Message]) -> Result<(), ValidationError> {
    if messages.is_empty() {
        return Err(invalid("messages", "must hold at least one message"));
    }
    let mut seen_call_ids: HashSet<&str> = HashSet::new();
    let mut open_calls: HashSet<&str> = HashSet::new();
    let mut has_user = false;
    for (index, message) in messages.iter().enumerate() {
        let at = |field: &str| format!("messages[{index}].{field}");
        match message.role {
            Role::System => {
                if !message.tool_calls.is_empty() {
                    return Err(invalid(at("tool_calls"), "only assistant messages may call tools"));
                }
            }
            Role::User => {
                has_user = true;
                if !message.tool_calls.is_empty() {
                    return Err(invalid(at("tool_calls"), "only assistant messages may call tools"));
                }
            }
            Role::Assistant => {
                let empty_text = message.content.as_deref().is_none_or(|c| c.is_empty());
                if empty_text && message.tool_calls.is_empty() {
                    return Err(invalid(at("content"), "an assistant message needs content or tool_calls"));
                }
                for (call_index, call) in message.tool_calls.iter().enumerate() {
                    let call_at = |field: &str| format!("messages[{index}].tool_calls[{call_index}].{field}");
                    if call.id.is_empty() {
                        return Err(invalid(call_at("id"), "must not be empty"));
                    }
                    if !seen_call_ids.insert(call.id.as_str()) {
                        return Err(invalid(call_at("id"), format!("{:?} is used by an earlier tool call", call.id)));
                    }
                    if call.name.is_empty() {
                        return Err(invalid(call_at("function.name"), "must not be empty"));
                    }
                    match serde_json::from_str::<Value>(&call.arguments) {
                        Ok(Value::Object(_)) => {}
                        Ok(other) => {
                            return Err(invalid(
                                call_at("function.arguments"),
                                format!("must be a JSON object, got {}", json_kind(&other)),
                            ))
                        }
                        Err(e) => return Err(invalid(call_at("function.arguments"), format!("not valid JSON: {e}"))),
                    }
                    open_calls.insert(call.id.as_str());
                }
            }
            Role::Tool => {
                if !message.tool_calls.is_empty() {
                    return Err(invalid(at("tool_calls"), "only assistant messages may call tools"));
                }
                let Some(call_id) = message.tool_call_id.as_deref() else {
                    return Err(invalid(at("tool_call_id"), "a tool message must name the call it answers"));
                };
                if !open_calls.remove(call_id) {
                    let reason = if seen_call_ids.contains(call_id) {
                        format!("{call_id:?} was already answered by an earlier tool message")
                    } else {
                        format!("{call_id:?} matches no tool call of an earlier assistant message")
                    };
                    return Err(invalid(at("tool_call_id"), reason));
                }
            }
        }
        if message.role != Role::Tool && message.tool_call_id.is_some() {
            return Err(invalid(at("tool_call_id"), "only tool messages answer tool calls"));
        }
    }
    if !has_user {
        return Err(invalid("messages", "must hold at least one user message"));
    }
    Ok(())
}

/// A tool entry must be `{"type": "function", "function": {"name": ..., ...}}`.
fn validate_tool_schema(tool: &Value) -> Result<(), String> {
    let object = tool.as_object().ok_or_else(|| format!("must be an object, got {}", json_kind(tool)))?;
    match object.get("type").and_then(Value::as_str) {
        Some("function") => {}
        _ => return Err("\"type\" must be \"function\"".into()),
    }
    let function = object.get("function").and_then(Value::as_object).ok_or("\"function\" must be an object")?;
    match function.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => Ok(()),
        _ => Err("\"function.name\" must be a non-empty string".into()),
    }
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn new_trace_id() -> String {
    format!("tr_{}", ulid::Ulid::new())
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// SHA-256 over a canonical JSON of prompt, messages and tools: object keys sorted and tool
/// arguments parsed, so formatting differences do not defeat dedupe.
pub fn content_hash(prompt: &str, messages: &[Message], tools: &[Value]) -> String {
    let document = serde_json::json!({"prompt": prompt, "messages": canonical_messages(messages), "tools": tools});
    sha256_canonical(&document)
}

/// The hashed form of messages: role, content, calls with parsed arguments, answered call id.
fn canonical_messages(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| serde_json::json!({"id": c.id, "name": c.name, "arguments": c.arguments_value()}))
                .collect();
            serde_json::json!({
                "role": m.role.as_str(),
                "content": m.content,
                "tool_calls": calls,
                "tool_call_id": m.tool_call_id,
            })
        })
        .collect()
}

/// Hex SHA-256 of a value's canonical JSON (object keys sorted, no whitespace).
fn sha256_canonical(document: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(document, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Guess a workflow category for traces that do not name one, from the tools used and the
/// prompt's wording. The names match the built-in workflow templates.
pub fn infer_category(prompt: &str, messages: &[Message]) -> String {
    let lower = prompt.to_lowercase();
    let tools: HashSet<&str> = messages.iter().flat_map(|m| m.tool_calls.iter()).map(|c| c.name.as_str()).collect();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let category = if has(&["deploy", "docker", "kubernetes", "release", "ci pipeline"]) {
        "deployment"
    } else if has(&["test"]) && has(&["write", "add", "cover"]) {
        "test_writing"
    } else if has(&["bug", "fail", "error", "crash", "broken", "debug", "exception", "traceback"]) {
        "debugging"
    } else if has(&["refactor", "rename", "extract", "clean up", "simplify"]) {
        "refactoring"
    } else if has(&["dependency", "dependencies", "upgrade", "bump", "version"]) {
        "dependency_update"
    } else if has(&["review", "audit"]) {
        "code_review"
    } else if has(&["sql", "query", "database", "table", "rows"]) && !tools.contains("Edit") {
        "data_query"
    } else if tools.contains("Edit") || tools.contains("Write") || tools.contains("MultiEdit") {
        "file_modification"
    } else if has(&["architecture", "overview", "analy", "structure", "how does"]) {
        "system_analysis"
    } else if tools.contains("Grep") || tools.contains("Glob") || has(&["find", "where", "search", "locate"]) {
        "code_search"
    } else {
        "general"
    };
    category.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, args: &str) -> ToolCall {
        ToolCall { id: id.into(), name: "Grep".into(), arguments: args.into() }
    }

    fn draft(messages: Vec<Message>) -> TraceDraft {
        TraceDraft { messages, ..TraceDraft::default() }
    }

    fn assistant_calling(calls: Vec<ToolCall>) -> Message {
        Message { role: Role::Assistant, content: None, tool_calls: calls, tool_call_id: None, name: None }
    }

    fn tool_reply(id: &str) -> Message {
        Message {
            role: Role::Tool,
            content: Some("ok".into()),
            tool_calls: vec![],
            tool_call_id: Some(id.into()),
            name: None,
        }
    }

    #[test]
    fn hash_ignores_argument_formatting_but_not_content() {
        let a = vec![Message::text(Role::User, "find x"), assistant_calling(vec![call("c1", r#"{"a":1,"b":2}"#)])];
        let b = vec![Message::text(Role::User, "find x"), assistant_calling(vec![call("c1", r#"{ "b": 2, "a": 1 }"#)])];
        let c = vec![Message::text(Role::User, "find y"), assistant_calling(vec![call("c1", r#"{"a":1,"b":2}"#)])];
        assert_eq!(content_hash("find x", &a, &[]), content_hash("find x", &b, &[]));
        assert_ne!(content_hash("find x", &a, &[]), content_hash("find y", &c, &[]));
    }

    #[test]
    fn tool_message_must_answer_an_open_call() {
        let err = Trace::new(draft(vec![Message::text(Role::User, "hi"), tool_reply("nope")])).unwrap_err();
        assert_eq!(err.field, "messages[1].tool_call_id");
        assert!(err.reason.contains("matches no tool call"), "{err}");

        let answered_twice = vec![
            Message::text(Role::User, "hi"),
            assistant_calling(vec![call("c1", "{}")]),
            tool_reply("c1"),
            tool_reply("c1"),
        ];
        let err = Trace::new(draft(answered_twice)).unwrap_err();
        assert!(err.reason.contains("already answered"), "{err}");
    }

    #[test]
    fn arguments_must_be_a_json_object() {
        let bad = vec![Message::text(Role::User, "hi"), assistant_calling(vec![call("c1", "[1,2]")])];
        let err = Trace::new(draft(bad)).unwrap_err();
        assert_eq!(err.field, "messages[1].tool_calls[0].function.arguments");
        let bad = vec![Message::text(Role::User, "hi"), assistant_calling(vec![call("c1", "{oops")])];
        assert!(Trace::new(draft(bad)).unwrap_err().reason.starts_with("not valid JSON"));
    }

    #[test]
    fn split_is_derived_from_the_hash_and_stable() {
        let messages = vec![Message::text(Role::User, "where is auth handled?")];
        let first = Trace::new(draft(messages.clone())).unwrap();
        let second = Trace::new(draft(messages)).unwrap();
        assert_eq!(first.content_hash, second.content_hash);
        assert_eq!(first.split, second.split);
        assert_ne!(first.id, second.id);
        assert_eq!(first.prompt, "where is auth handled?");
        let counts = (0..1000)
            .map(|i| Split::from_hash(&hex::encode(Sha256::digest(format!("{i}").as_bytes()))))
            .filter(|s| *s == Split::Train)
            .count();
        assert!((850..950).contains(&counts), "train share {counts}/1000");
    }

    #[test]
    fn category_is_inferred_when_missing() {
        let messages = vec![Message::text(Role::User, "The login test fails with an error, fix it")];
        assert_eq!(Trace::new(draft(messages)).unwrap().category, "debugging");
    }
}
