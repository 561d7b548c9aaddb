//! The flywheel's intake from serving: one served exchange — the conversation a reply answers,
//! the tools offered and the model's reply — becomes a `source: served` trace (recorded
//! chat completions, a Playground thumbs up), a preference pair (a Playground edit saved as the
//! preferred answer) or a feedback record (every rating, a thumbs down only that). An
//! [`Exchange`] is redacted when it is built, with capture's `Redactor::redact_messages`, so
//! served text reaches the store exactly as redacted as captured text. Everything is validated
//! by `Trace::new` / `PreferencePair::new`; errors name the field as the feedback API calls it
//! (`messages[2].content`, `reply`, `edited`). Knows nothing of SQL or HTTP.

use serde_json::{json, Map, Value};

use crate::capture::redact::{RedactionCounts, Redactor};
use crate::store::FeedbackRow;
use crate::traces::preference::{PairDraft, PairText, PreferencePair};
use crate::traces::wire::messages_to_wire;
use crate::traces::{Message, Role, Source, Trace, TraceDraft, ValidationError};

/// The redactor served text goes through: capture's built-in patterns, compiled once.
pub fn default_redactor() -> &'static Redactor {
    static REDACTOR: std::sync::LazyLock<Redactor> = std::sync::LazyLock::new(Redactor::default);
    &REDACTOR
}

/// Which served model wrote a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedBy {
    /// The name the request used or the catalog gives (`cc-tiny`).
    pub model: String,
    /// The version that answered: an export or model id (`system_fingerprint`).
    pub version: String,
}

impl ServedBy {
    fn metadata(&self) -> Value {
        json!({"model": self.model, "version": self.version})
    }
}

/// A Playground rating of one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rating {
    Up,
    Down,
    /// The user edited the reply and saved the edit as the preferred answer.
    Preferred,
}

impl Rating {
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Up => "up",
            Rating::Down => "down",
            Rating::Preferred => "preferred",
        }
    }
}

/// A served conversation and the reply to it, redacted. Build with [`Exchange::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    messages: Vec<Message>,
    tools: Vec<Value>,
    reply: Message,
    redactions: RedactionCounts,
}

fn invalid(field: &str, reason: &str) -> ValidationError {
    ValidationError { field: field.to_string(), reason: reason.to_string() }
}

impl Exchange {
    /// Redact `messages` (what the reply answers) and `reply` (an assistant message).
    pub fn new(
        mut messages: Vec<Message>,
        tools: Vec<Value>,
        mut reply: Message,
        redactor: &Redactor,
    ) -> Result<Exchange, ValidationError> {
        if reply.role != Role::Assistant {
            return Err(invalid("reply", "must be an assistant message"));
        }
        let mut redactions = RedactionCounts::default();
        redactor.redact_messages(&mut messages, &mut redactions);
        redactor.redact_messages(std::slice::from_mut(&mut reply), &mut redactions);
        Ok(Exchange { messages, tools, reply, redactions })
    }

    /// Redactions made while building this exchange (and its edits), per pattern.
    pub fn redactions(&self) -> &RedactionCounts {
        &self.redactions
    }

    /// The conversation up to and including the reply as a `served` trace; `metadata` gains
    /// `served: {model, version}`.
    pub fn trace(&self, served_by: &ServedBy, metadata: Map<String, Value>) -> Result<Trace, ValidationError> {
        self.trace_with(&self.reply, served_by, metadata)
    }

    fn trace_with(
        &self,
        reply: &Message,
        served_by: &ServedBy,
        mut metadata: Map<String, Value>,
    ) -> Result<Trace, ValidationError> {
        let mut messages = self.messages.clone();
        messages.push(reply.clone());
        metadata.insert("served".into(), served_by.metadata());
        Trace::new(TraceDraft {
            source: Some(Source::Served),
            messages,
            tools: self.tools.clone(),
            metadata,
            ..TraceDraft::default()
        })
        .map_err(|e| self.rename_field(e, "reply"))
    }

    /// The edit saved as preferred: a pair (prompt = the conversation before the reply, chosen =
    /// `edited`, rejected = the model's reply, `source: served`) and its SFT trace (the prompt
    /// and the edit, `source: served`, metadata `feedback: preferred` and the pair's id). The
    /// edit is redacted like the rest.
    pub fn preferred(
        &mut self,
        mut edited: Message,
        redactor: &Redactor,
        served_by: &ServedBy,
    ) -> Result<(PreferencePair, Trace), ValidationError> {
        if edited.role != Role::Assistant {
            return Err(invalid("edited", "must be an assistant message"));
        }
        redactor.redact_messages(std::slice::from_mut(&mut edited), &mut self.redactions);
        let mut metadata = Map::new();
        metadata.insert("feedback".into(), json!(Rating::Preferred.as_str()));
        metadata.insert("served".into(), served_by.metadata());
        let pair = PreferencePair::new(PairDraft {
            id: None,
            prompt: Some(PairText::Messages(self.messages.clone())),
            chosen: PairText::Messages(vec![edited.clone()]),
            rejected: PairText::Messages(vec![self.reply.clone()]),
            source: Some(Source::Served),
            tools: self.tools.clone(),
            metadata: metadata.clone(),
            created_at: None,
        })
        .map_err(|e| {
            let field = e.field.replacen("chosen", "edited", 1).replacen("rejected", "reply", 1);
            let field = if field.starts_with("prompt") { field.replacen("prompt", "messages", 1) } else { field };
            ValidationError { field, reason: e.reason }
        })?;
        metadata.remove("served");
        metadata.insert("pair_id".into(), json!(pair.id));
        let trace = self
            .trace_with(&edited, served_by, metadata)
            .map_err(|e| ValidationError { field: e.field.replacen("reply", "edited", 1), reason: e.reason })?;
        Ok((pair, trace))
    }

    /// The feedback row of a rating (not yet stored: ids of what it yields are set by the store).
    pub fn feedback(&self, rating: Rating, edited: Option<&Message>, served_by: &ServedBy) -> FeedbackRow {
        let wire = |message: &Message| messages_to_wire(std::slice::from_ref(message))[0].clone();
        FeedbackRow {
            id: format!("fb_{}", ulid::Ulid::new()),
            rating: rating.as_str().into(),
            model: served_by.model.clone(),
            version: served_by.version.clone(),
            body: json!({
                "messages": messages_to_wire(&self.messages),
                "tools": self.tools,
                "reply": wire(&self.reply),
                "edited": edited.map(wire),
            }),
            trace_id: None,
            pair_id: None,
            created_at: crate::traces::now_rfc3339(),
        }
    }

    /// `messages[n]` (the reply's place in the trace) is `reply` on the wire.
    fn rename_field(&self, error: ValidationError, reply: &str) -> ValidationError {
        let at_reply = format!("messages[{}]", self.messages.len());
        match error.field.strip_prefix(&at_reply) {
            Some(rest) => ValidationError { field: format!("{reply}{rest}"), reason: error.reason },
            None => error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::ToolCall;

    fn served_by() -> ServedBy {
        ServedBy { model: "cc-tiny".into(), version: "exp_1".into() }
    }

    fn grep_reply() -> Message {
        Message {
            role: Role::Assistant,
            content: None,
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                name: "Grep".into(),
                arguments: r#"{"pattern":"AKIAABCDEFGHIJKLMNOP"}"#.into(),
            }],
            tool_call_id: None,
            name: None,
        }
    }

    fn exchange(user: &str) -> Exchange {
        let messages = vec![Message::text(Role::System, "be brief"), Message::text(Role::User, user)];
        Exchange::new(messages, Vec::new(), grep_reply(), &Redactor::default()).unwrap()
    }

    #[test]
    fn a_served_trace_is_redacted_and_names_its_model() {
        let trace = exchange("my key is AKIAABCDEFGHIJKLMNOP, find it").trace(&served_by(), Map::new()).unwrap();
        assert_eq!(trace.source, Source::Served);
        assert_eq!(trace.prompt, "my key is [REDACTED:aws_access_key_id], find it");
        assert_eq!(trace.messages[2].tool_calls[0].arguments, r#"{"pattern":"[REDACTED:aws_access_key_id]"}"#);
        assert_eq!(trace.metadata["served"], json!({"model": "cc-tiny", "version": "exp_1"}));
        let again = exchange("my key is AKIAABCDEFGHIJKLMNOP, find it").trace(&served_by(), Map::new()).unwrap();
        assert_eq!(trace.content_hash, again.content_hash, "the same exchange hashes the same");
    }

    #[test]
    fn an_exchange_without_a_user_prompt_is_refused() {
        let messages = vec![Message::text(Role::System, "be brief")];
        let exchange = Exchange::new(messages, Vec::new(), grep_reply(), &Redactor::default()).unwrap();
        let refused = exchange.trace(&served_by(), Map::new()).unwrap_err();
        assert!(["messages", "prompt"].contains(&refused.field.as_str()), "{refused}");
        let user = Message::text(Role::User, "hi");
        assert_eq!(Exchange::new(Vec::new(), Vec::new(), user, &Redactor::default()).unwrap_err().field, "reply");
    }

    #[test]
    fn an_edit_makes_a_pair_and_the_sft_trace_of_its_chosen_side() {
        let mut exchange = exchange("where is login?");
        let edited = Message::text(Role::Assistant, "It is in src/auth.py; token=\"hunter2hunter2\"");
        let (pair, trace) = exchange.preferred(edited, &Redactor::default(), &served_by()).unwrap();
        assert_eq!(pair.source, Source::Served);
        assert_eq!(pair.prompt.prompt_messages().len(), 2);
        assert_eq!(pair.rejected.completion_messages(), vec![exchange.reply.clone()]);
        let chosen = pair.chosen.completion_messages()[0].content.clone().unwrap();
        assert!(chosen.contains("[REDACTED:") && !chosen.contains("hunter2"), "{chosen}");
        assert_eq!(trace.source, Source::Served);
        assert_eq!(trace.metadata["pair_id"], json!(pair.id));
        assert_eq!(trace.metadata["feedback"], "preferred");
        assert_eq!(trace.final_answer(), Some(chosen.as_str()));

        let same = exchange.reply.clone();
        assert_eq!(exchange.preferred(same, &Redactor::default(), &served_by()).unwrap_err().field, "reply");
        let user = Message::text(Role::User, "x");
        assert_eq!(exchange.preferred(user, &Redactor::default(), &served_by()).unwrap_err().field, "edited");
    }

    #[test]
    fn feedback_keeps_the_redacted_conversation() {
        let row = exchange("AKIAABCDEFGHIJKLMNOP").feedback(Rating::Down, None, &served_by());
        assert_eq!(row.rating, "down");
        assert!(row.id.starts_with("fb_"));
        assert_eq!(row.body["messages"][1]["content"], "[REDACTED:aws_access_key_id]");
        assert_eq!(row.body["reply"]["tool_calls"][0]["function"]["name"], "Grep");
        assert!(row.body["edited"].is_null());
    }
}
