//! Preference pairs (spec 2.3): the validated `PreferencePair`, the record shapes of the Command
//! Center import (spec 3.2: Command Center JSONL, the continuous-RL shape, TRL rows with an
//! explicit or implicit prompt) parsed into it with a one-line reason naming the field, and the
//! SFT trace (prompt + chosen) each pair yields. Knows nothing of SQL, HTTP or the terminal.

use serde_json::{Map, Value};

use super::formats::decode;
use super::wire::{messages_from_wire, messages_to_wire, WireMessage};
use super::{
    canonical_messages, invalid, json_kind, new_trace_id, sha256_canonical, validate_messages, validate_tool_schema,
    Message, Role, Source, Trace, TraceDraft, ValidationError,
};

/// Pair metadata keys copied onto the SFT trace a pair yields.
const TRACE_METADATA_KEYS: [&str; 4] = ["question_id", "scenario", "pos_reward", "neg_reward"];

/// A prompt, chosen or rejected: a plain string or a list of messages (TRL's conversational
/// preference format).
#[derive(Debug, Clone, PartialEq)]
pub enum PairText {
    Text(String),
    Messages(Vec<Message>),
}

impl PairText {
    /// As a prompt: a string is one user message.
    pub fn prompt_messages(&self) -> Vec<Message> {
        match self {
            PairText::Text(text) => vec![Message::text(Role::User, text.clone())],
            PairText::Messages(messages) => messages.clone(),
        }
    }

    /// As a completion: a string is one assistant message.
    pub fn completion_messages(&self) -> Vec<Message> {
        match self {
            PairText::Text(text) => vec![Message::text(Role::Assistant, text.clone())],
            PairText::Messages(messages) => messages.clone(),
        }
    }

    /// The wire form: the string, or the messages exactly as OpenAI rows carry them.
    pub fn to_wire(&self) -> Value {
        match self {
            PairText::Text(text) => Value::String(text.clone()),
            PairText::Messages(messages) => messages_to_wire(messages),
        }
    }

    fn canonical(&self) -> Value {
        match self {
            PairText::Text(text) => Value::String(text.clone()),
            PairText::Messages(messages) => Value::Array(canonical_messages(messages)),
        }
    }

    fn is_text(&self) -> bool {
        matches!(self, PairText::Text(_))
    }
}

/// A validated preference pair. Construct with [`PreferencePair::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub id: String,
    pub prompt: PairText,
    pub chosen: PairText,
    pub rejected: PairText,
    pub source: Source,
    pub tools: Vec<Value>,
    pub metadata: Map<String, Value>,
    /// SHA-256 over the canonical prompt, chosen and rejected.
    pub content_hash: String,
    pub created_at: String,
}

/// Everything a caller may supply; `prompt: None` asks for TRL's implicit prompt (the shared
/// leading messages of chosen and rejected).
#[derive(Debug, Clone)]
pub struct PairDraft {
    pub id: Option<String>,
    pub prompt: Option<PairText>,
    pub chosen: PairText,
    pub rejected: PairText,
    pub source: Option<Source>,
    pub tools: Vec<Value>,
    pub metadata: Map<String, Value>,
    pub created_at: Option<String>,
}

impl PreferencePair {
    pub fn new(draft: PairDraft) -> Result<PreferencePair, ValidationError> {
        let (prompt, chosen, rejected) = match draft.prompt {
            Some(prompt) => (prompt, draft.chosen, draft.rejected),
            None => match (draft.chosen, draft.rejected) {
                (PairText::Messages(chosen), PairText::Messages(rejected)) => {
                    let (prompt, chosen, rejected) = split_implicit_prompt(chosen, rejected)?;
                    (PairText::Messages(prompt), PairText::Messages(chosen), PairText::Messages(rejected))
                }
                _ => {
                    return Err(invalid(
                        "prompt",
                        "missing; without a prompt, chosen and rejected must be message lists that share the prompt's leading messages",
                    ))
                }
            },
        };
        validate_prompt(&prompt)?;
        validate_completion("chosen", &chosen)?;
        validate_completion("rejected", &rejected)?;
        if same_answer(&chosen, &rejected) {
            return Err(invalid("rejected", "is identical to chosen (a pair needs two different answers)"));
        }
        for (name, completion) in [("chosen", &chosen), ("rejected", &rejected)] {
            let mut conversation = prompt.prompt_messages();
            conversation.extend(completion.completion_messages());
            validate_messages(&conversation).map_err(|e| conversation_field(e, &prompt, name, completion))?;
        }
        for (index, tool) in draft.tools.iter().enumerate() {
            validate_tool_schema(tool).map_err(|reason| invalid(format!("tools[{index}]"), reason))?;
        }
        let id = super::id_or_new(draft.id, new_pair_id)?;
        let created_at = super::created_at_or_now(draft.created_at)?;
        let content_hash = pair_hash(&prompt, &chosen, &rejected);
        Ok(PreferencePair {
            id,
            prompt,
            chosen,
            rejected,
            source: draft.source.unwrap_or(Source::DpoImport),
            tools: draft.tools,
            metadata: draft.metadata,
            content_hash,
            created_at,
        })
    }

    /// The text shown for the prompt: the string, or the first user message's text.
    pub fn prompt_text(&self) -> String {
        match &self.prompt {
            PairText::Text(text) => text.clone(),
            PairText::Messages(messages) => {
                messages.iter().find(|m| m.role == Role::User).and_then(|m| m.content.clone()).unwrap_or_default()
            }
        }
    }

    /// The stored body: `{"prompt", "chosen", "rejected", "tools", "metadata"}`.
    pub fn body_json(&self) -> String {
        serde_json::json!({
            "prompt": self.prompt.to_wire(),
            "chosen": self.chosen.to_wire(),
            "rejected": self.rejected.to_wire(),
            "tools": self.tools,
            "metadata": self.metadata,
        })
        .to_string()
    }

    /// The spec 2.3 object: `{"id", "prompt", "chosen", "rejected", "source", "tools", "metadata", "created_at"}`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "prompt": self.prompt.to_wire(),
            "chosen": self.chosen.to_wire(),
            "rejected": self.rejected.to_wire(),
            "source": self.source,
            "tools": self.tools,
            "metadata": self.metadata,
            "created_at": self.created_at,
        })
    }
}

pub fn new_pair_id() -> String {
    format!("pp_{}", ulid::Ulid::new())
}

fn pair_hash(prompt: &PairText, chosen: &PairText, rejected: &PairText) -> String {
    sha256_canonical(&serde_json::json!({
        "prompt": prompt.canonical(),
        "chosen": chosen.canonical(),
        "rejected": rejected.canonical(),
    }))
}

/// TRL's implicit prompt: the longest run of leading messages that chosen and rejected share is
/// the prompt, and the differing tails are the completions.
pub fn split_implicit_prompt(
    chosen: Vec<Message>,
    rejected: Vec<Message>,
) -> Result<(Vec<Message>, Vec<Message>, Vec<Message>), ValidationError> {
    let shared = chosen.iter().zip(&rejected).take_while(|(a, b)| a == b).count();
    if shared == chosen.len() && shared == rejected.len() {
        return Err(invalid("rejected", "is identical to chosen (a pair needs two different answers)"));
    }
    if shared == 0 {
        return Err(invalid("prompt", "missing, and chosen and rejected share no leading messages to take it from"));
    }
    if shared == chosen.len() {
        return Err(invalid("chosen", "holds nothing after the prompt it shares with rejected"));
    }
    if shared == rejected.len() {
        return Err(invalid("rejected", "holds nothing after the prompt it shares with chosen"));
    }
    let mut chosen = chosen;
    let chosen_tail = chosen.split_off(shared);
    let rejected_tail = rejected.into_iter().skip(shared).collect();
    Ok((chosen, chosen_tail, rejected_tail))
}

fn validate_prompt(prompt: &PairText) -> Result<(), ValidationError> {
    match prompt {
        PairText::Text(text) if text.trim().is_empty() => Err(invalid("prompt", "must not be empty")),
        PairText::Text(_) => Ok(()),
        PairText::Messages(messages) if messages.is_empty() => {
            Err(invalid("prompt", "must not be an empty list of messages"))
        }
        PairText::Messages(messages) => {
            let has_user_text = messages
                .iter()
                .any(|m| m.role == Role::User && m.content.as_deref().is_some_and(|c| !c.trim().is_empty()));
            if has_user_text {
                Ok(())
            } else {
                Err(invalid("prompt", "holds no user message with text"))
            }
        }
    }
}

fn validate_completion(name: &str, completion: &PairText) -> Result<(), ValidationError> {
    match completion {
        PairText::Text(text) if text.trim().is_empty() => Err(invalid(name, "must not be empty")),
        PairText::Text(_) => Ok(()),
        PairText::Messages(messages) if messages.is_empty() => {
            Err(invalid(name, "must not be an empty list of messages"))
        }
        PairText::Messages(messages) => {
            let answers = messages.iter().any(|m| {
                m.role == Role::Assistant
                    && (!m.tool_calls.is_empty() || m.content.as_deref().is_some_and(|c| !c.trim().is_empty()))
            });
            if answers {
                Ok(())
            } else {
                Err(invalid(name, "holds no assistant message with text or tool calls"))
            }
        }
    }
}

/// Whether two completions say the same thing, ignoring surrounding whitespace and whether a
/// lone answer was given as a string or as one assistant message.
fn same_answer(a: &PairText, b: &PairText) -> bool {
    let normalise = |text: &PairText| -> Vec<Message> {
        text.completion_messages()
            .into_iter()
            .map(|mut m| {
                m.content = m.content.map(|c| c.trim().to_string());
                m
            })
            .collect()
    };
    normalise(a) == normalise(b)
}

/// Turn a conversation error (`messages[3].tool_call_id`) into the pair's own field names
/// (`chosen[1].tool_call_id`, or `chosen` when chosen is a plain string).
fn conversation_field(
    error: ValidationError,
    prompt: &PairText,
    completion_name: &str,
    completion: &PairText,
) -> ValidationError {
    let prompt_len = prompt.prompt_messages().len();
    let located = error
        .field
        .strip_prefix("messages[")
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(index, tail)| index.parse::<usize>().ok().map(|index| (index, tail)));
    let field = match located {
        Some((index, tail)) => {
            let (name, text, index) = if index < prompt_len {
                ("prompt", prompt, index)
            } else {
                (completion_name, completion, index - prompt_len)
            };
            if text.is_text() {
                name.to_string()
            } else {
                format!("{name}[{index}]{tail}")
            }
        }
        None => completion_name.to_string(),
    };
    ValidationError { field, reason: error.reason }
}

/// The SFT trace a pair yields: the prompt followed by the chosen answer, `source: dpo_import`,
/// the category from metadata `category` or `scenario` (inferred otherwise), and the pair's id,
/// question id, scenario and rewards in its metadata.
pub fn pair_to_trace(pair: &PreferencePair) -> Result<Trace, ValidationError> {
    let mut messages = pair.prompt.prompt_messages();
    messages.extend(pair.chosen.completion_messages());
    let mut metadata = Map::new();
    metadata.insert("pair_id".into(), Value::String(pair.id.clone()));
    for key in TRACE_METADATA_KEYS {
        if let Some(value) = pair.metadata.get(key).filter(|v| !v.is_null()) {
            metadata.insert(key.into(), value.clone());
        }
    }
    let category = ["category", "scenario"]
        .iter()
        .filter_map(|key| pair.metadata.get(*key).and_then(Value::as_str))
        .find(|name| usable_category(name))
        .map(str::to_string);
    let prompt = match &pair.prompt {
        PairText::Text(text) => Some(text.clone()),
        PairText::Messages(_) => None,
    };
    Trace::new(TraceDraft {
        id: Some(new_trace_id()),
        source: Some(Source::DpoImport),
        category,
        prompt,
        messages,
        tools: pair.tools.clone(),
        outcome: None,
        metadata,
        split: None,
        created_at: Some(pair.created_at.clone()),
    })
    .map_err(|e| conversation_field(e, &pair.prompt, "chosen", &pair.chosen))
}

/// A metadata category the trace model accepts as is (otherwise the category is inferred).
fn usable_category(name: &str) -> bool {
    !name.trim().is_empty() && name.len() <= 64 && !name.chars().any(char::is_control)
}

/// Parse one JSONL line of any accepted shape. The error is the one-line reason for
/// `{"line", "reason"}`.
pub fn parse_pair_line(text: &str) -> Result<PreferencePair, String> {
    let object: Map<String, Value> = decode(text)?;
    pair_from_import(object)
}

/// Parse one element of a JSON array file.
pub fn parse_pair_value(value: Value) -> Result<PreferencePair, String> {
    match value {
        Value::Object(object) => pair_from_import(object),
        other => Err(format!("the record must be one JSON object, got {}", json_kind(&other))),
    }
}

fn pair_from_import(object: Map<String, Value>) -> Result<PreferencePair, String> {
    let mut draft = pair_draft_from_object(object)?;
    strip_repeated_prompt(&mut draft);
    PreferencePair::new(draft).map_err(|e| e.to_string())
}

/// Read a record's fields into a draft. `prompt`, `chosen`, `rejected`, `tools`, `metadata`,
/// `timestamp`/`created_at` and the Command Center fields (`question_id`, `scenario`,
/// `pos_reward`, `neg_reward`) are checked for type; the Command Center fields and any other
/// keys are kept in the pair's metadata, so nothing a record carries is lost. A record's own
/// `id` is one of those other keys: producers number pairs per file, so it cannot be a stored
/// id; the pair gets a fresh one.
pub fn pair_draft_from_object(mut object: Map<String, Value>) -> Result<PairDraft, String> {
    let chosen = match object.remove("chosen") {
        Some(value) => pair_text("chosen", value)?,
        None => return Err("chosen: missing".into()),
    };
    let rejected = match object.remove("rejected") {
        Some(value) => pair_text("rejected", value)?,
        None => return Err("rejected: missing".into()),
    };
    let prompt = match object.remove("prompt") {
        None | Some(Value::Null) => None,
        Some(value) => Some(pair_text("prompt", value)?),
    };
    let tools = match object.remove("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tools)) => tools,
        Some(other) => return Err(format!("tools: must be a list of tool schemas, got {}", json_kind(&other))),
    };
    let mut metadata = match object.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(metadata)) => metadata,
        Some(other) => return Err(format!("metadata: must be an object, got {}", json_kind(&other))),
    };
    let created_at = match object.remove("created_at") {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_timestamp("created_at", &value)?),
    };
    let created_at = match object.get("timestamp") {
        None | Some(Value::Null) => created_at,
        Some(value) => Some(parse_timestamp("timestamp", value)?),
    };
    let typed: [(&str, fn(&Value) -> bool, &str); 4] = [
        ("question_id", |v| v.is_string() || v.is_number(), "a string or a number"),
        ("scenario", Value::is_string, "a string"),
        ("pos_reward", Value::is_number, "a number"),
        ("neg_reward", Value::is_number, "a number"),
    ];
    for (key, accepts, expected) in typed {
        match object.remove(key) {
            None | Some(Value::Null) => {}
            Some(value) if accepts(&value) => {
                metadata.insert(key.into(), value);
            }
            Some(other) => return Err(format!("{key}: must be {expected}, got {}", json_kind(&other))),
        }
    }
    for (key, value) in object {
        metadata.entry(key).or_insert(value);
    }
    Ok(PairDraft { id: None, prompt, chosen, rejected, source: None, tools, metadata, created_at })
}

fn pair_text(name: &str, value: Value) -> Result<PairText, String> {
    match value {
        Value::String(text) => Ok(PairText::Text(text)),
        Value::Array(items) => {
            let wire: Vec<WireMessage> = serde_path_to_error::deserialize(Value::Array(items)).map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                format!("{name}{path}: {}", e.inner())
            })?;
            let messages = messages_from_wire(wire).map_err(|e| {
                let field = e.field.strip_prefix("messages").map_or(e.field.clone(), |rest| format!("{name}{rest}"));
                format!("{field}: {}", e.reason)
            })?;
            Ok(PairText::Messages(messages))
        }
        other => Err(format!("{name}: must be a string or a list of messages, got {}", json_kind(&other))),
    }
}

/// Some producers repeat the prompt at the head of both completions; the trace and the pair
/// keep it once.
fn strip_repeated_prompt(draft: &mut PairDraft) {
    let Some(prompt) = &draft.prompt else { return };
    let prompt = prompt.prompt_messages();
    let repeats = |completion: &PairText| match completion {
        PairText::Messages(messages) => messages.len() > prompt.len() && messages.starts_with(&prompt),
        PairText::Text(_) => false,
    };
    if repeats(&draft.chosen) && repeats(&draft.rejected) {
        for completion in [&mut draft.chosen, &mut draft.rejected] {
            if let PairText::Messages(messages) = completion {
                messages.drain(..prompt.len());
            }
        }
    }
}

/// RFC 3339, a naive ISO 8601 time (Python's `isoformat()`, read as UTC), or Unix seconds (or
/// milliseconds); returned as RFC 3339.
fn parse_timestamp(name: &str, value: &Value) -> Result<String, String> {
    match value {
        Value::String(text) => {
            if chrono::DateTime::parse_from_rfc3339(text).is_ok() {
                return Ok(text.clone());
            }
            for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
                if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(text, format) {
                    return Ok(naive.and_utc().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
                }
            }
            Err(format!("{name}: {text:?} is not an ISO 8601 time"))
        }
        Value::Number(number) => {
            let seconds = number.as_f64().unwrap_or(f64::NAN);
            let seconds = if seconds.abs() >= 1e11 { seconds / 1000.0 } else { seconds };
            let whole = seconds.floor();
            let nanos = ((seconds - whole) * 1e9).round().min(999_999_999.0) as u32;
            chrono::DateTime::from_timestamp(whole as i64, nanos)
                .filter(|_| seconds.is_finite())
                .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
                .ok_or_else(|| format!("{name}: {number} is out of range for a Unix time"))
        }
        other => Err(format!("{name}: must be a time string or Unix seconds, got {}", json_kind(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> Message {
        Message::text(Role::User, text)
    }

    fn assistant(text: &str) -> Message {
        Message::text(Role::Assistant, text)
    }

    #[test]
    fn implicit_prompt_is_the_shared_leading_messages() {
        let system = Message::text(Role::System, "You are terse.");
        let chosen = vec![system.clone(), user("Where is auth?"), assistant("src/auth.py")];
        let rejected = vec![system.clone(), user("Where is auth?"), assistant("No idea.")];
        let (prompt, chosen, rejected) = split_implicit_prompt(chosen, rejected).unwrap();
        assert_eq!(prompt, vec![system, user("Where is auth?")]);
        assert_eq!(chosen, vec![assistant("src/auth.py")]);
        assert_eq!(rejected, vec![assistant("No idea.")]);
    }

    #[test]
    fn implicit_prompt_keeps_multi_message_tails() {
        let chosen = vec![user("q"), assistant("a"), user("more?"), assistant("yes")];
        let rejected =
            vec![user("q"), assistant("a"), user("more?"), assistant("no"), user("why"), assistant("because")];
        let (prompt, chosen, rejected) = split_implicit_prompt(chosen, rejected).unwrap();
        assert_eq!(prompt.len(), 3);
        assert_eq!(chosen, vec![assistant("yes")]);
        assert_eq!(rejected.len(), 3);
    }

    #[test]
    fn implicit_prompt_needs_a_shared_prefix_and_two_tails() {
        let err = split_implicit_prompt(vec![user("a"), assistant("x")], vec![user("b"), assistant("x")]).unwrap_err();
        assert_eq!(err.field, "prompt");
        let same = vec![user("a"), assistant("x")];
        assert_eq!(split_implicit_prompt(same.clone(), same.clone()).unwrap_err().field, "rejected");
        let err = split_implicit_prompt(vec![user("a")], vec![user("a"), assistant("x")]).unwrap_err();
        assert_eq!(err.field, "chosen");
        assert!(err.reason.contains("nothing after the prompt"), "{err}");
    }

    #[test]
    fn implicit_trl_row_parses_into_a_pair_and_a_trace() {
        let line = r#"{"chosen":[{"role":"user","content":"Find the CORS setting"},{"role":"assistant","content":"It is in config/cors.py."}],
                       "rejected":[{"role":"user","content":"Find the CORS setting"},{"role":"assistant","content":"There is none."}]}"#;
        let pair = parse_pair_line(&line.replace('\n', " ")).unwrap();
        assert_eq!(pair.prompt, PairText::Messages(vec![user("Find the CORS setting")]));
        assert_eq!(pair.chosen, PairText::Messages(vec![assistant("It is in config/cors.py.")]));
        assert_eq!(pair.prompt_text(), "Find the CORS setting");
        let trace = pair_to_trace(&pair).unwrap();
        assert_eq!(trace.source, Source::DpoImport);
        assert_eq!(trace.messages.len(), 2);
        assert_eq!(trace.final_answer(), Some("It is in config/cors.py."));
        assert_eq!(trace.metadata["pair_id"], pair.id);
    }

    #[test]
    fn command_center_fields_reach_the_trace() {
        let line = r#"{"prompt":"Why does login fail?","chosen":"The token expired.","rejected":"Dunno.","question_id":42,"scenario":"support","pos_reward":0.9,"neg_reward":-0.2,"timestamp":"2025-01-15T10:30:00.123456","extra":"kept"}"#;
        let pair = parse_pair_line(line).unwrap();
        assert_eq!(pair.created_at, "2025-01-15T10:30:00.123456Z");
        assert_eq!(pair.metadata["extra"], "kept");
        let numbered = parse_pair_line(r#"{"id":7,"prompt":"p","chosen":"c","rejected":"r"}"#).unwrap();
        assert_eq!(numbered.metadata["id"], 7);
        assert!(numbered.id.starts_with("pp_"));
        let trace = pair_to_trace(&pair).unwrap();
        assert_eq!(trace.category, "support");
        assert_eq!(trace.prompt, "Why does login fail?");
        assert_eq!(trace.metadata["question_id"], 42);
        assert_eq!(trace.metadata["neg_reward"], -0.2);
        assert!(trace.metadata.get("extra").is_none());
        assert_eq!(trace.final_answer(), Some("The token expired."));
    }

    #[test]
    fn hash_covers_prompt_chosen_and_rejected_only() {
        let a = parse_pair_line(r#"{"prompt":"p","chosen":"c","rejected":"r","question_id":"1"}"#).unwrap();
        let b = parse_pair_line(r#"{"prompt":"p","chosen":"c","rejected":"r","question_id":"2"}"#).unwrap();
        let c = parse_pair_line(r#"{"prompt":"p","chosen":"c","rejected":"r2"}"#).unwrap();
        assert_eq!(a.content_hash, b.content_hash);
        assert_ne!(a.content_hash, c.content_hash);
    }

    #[test]
    fn reasons_name_the_field() {
        let reason = |line: &str| parse_pair_line(line).unwrap_err();
        assert_eq!(reason(r#"{"prompt":"p","rejected":"r"}"#), "chosen: missing");
        assert_eq!(reason(r#"{"prompt":"p","chosen":"  ","rejected":"r"}"#), "chosen: must not be empty");
        assert!(reason(r#"{"prompt":"p","chosen":"same ","rejected":"same"}"#).starts_with("rejected: is identical"));
        assert_eq!(
            reason(r#"{"prompt":"p","chosen":7,"rejected":"r"}"#),
            "chosen: must be a string or a list of messages, got a number"
        );
        assert_eq!(
            reason(r#"{"prompt":"p","chosen":"c","rejected":"r","pos_reward":"high"}"#),
            "pos_reward: must be a number, got a string"
        );
        assert!(
            reason(r#"{"prompt":"p","chosen":"c","rejected":"r","timestamp":"yesterday"}"#).starts_with("timestamp:")
        );
        assert!(reason(r#"{"chosen":"c","rejected":"r"}"#).starts_with("prompt: missing"));
        let bad_role = r#"{"prompt":"p","chosen":[{"role":"robot","content":"x"}],"rejected":"r"}"#;
        assert!(reason(bad_role).starts_with("chosen[0].role: unknown variant `robot`"), "{}", reason(bad_role));
        let dangling = r#"{"prompt":"p","chosen":[{"role":"assistant","content":"ok"},{"role":"tool","tool_call_id":"c9","content":"x"}],"rejected":"r"}"#;
        assert!(reason(dangling).starts_with("chosen[1].tool_call_id:"), "{}", reason(dangling));
        assert!(reason("[1]").contains("one JSON object"));
    }

    #[test]
    fn a_prompt_repeated_at_the_head_of_both_completions_is_kept_once() {
        let line = r#"{"prompt":"q","chosen":[{"role":"user","content":"q"},{"role":"assistant","content":"good"}],"rejected":[{"role":"user","content":"q"},{"role":"assistant","content":"bad"}]}"#;
        let pair = parse_pair_line(line).unwrap();
        assert_eq!(pair.chosen, PairText::Messages(vec![assistant("good")]));
        assert_eq!(pair_to_trace(&pair).unwrap().messages.len(), 2);
    }

    #[test]
    fn stored_body_round_trips() {
        let line = r#"{"prompt":[{"role":"system","content":"s"},{"role":"user","content":"q"}],"chosen":[{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"Grep","arguments":{"pattern":"x"}}}]},{"role":"tool","tool_call_id":"c1","content":"a.py:1"},{"role":"assistant","content":"In a.py"}],"rejected":"no","metadata":{"scenario":"code_search"}}"#;
        let pair = parse_pair_line(line).unwrap();
        let body: Map<String, Value> = serde_json::from_str(&pair.body_json()).unwrap();
        let mut draft = pair_draft_from_object(body).unwrap();
        draft.id = Some(pair.id.clone());
        draft.created_at = Some(pair.created_at.clone());
        assert_eq!(PreferencePair::new(draft).unwrap(), pair);
    }
}
