//! From a file's records to turns (reference A4): dedupe by uuid, walk the `parentUuid` links
//! back from the active leaf (the latest conversational record, so an abandoned `/rewind`
//! branch is left out; a `compact_boundary` continues through its `logicalParentUuid`; a
//! dangling parent ends the walk), merge assistant records by `message.id`, pair each
//! `tool_use` with its `tool_result` by id wherever the result sits, and cut the path into
//! turns: one human prompt and everything up to the next one.
//!
//! The output is plain messages and metadata, not yet redacted nor validated; `capture::build`
//! makes traces of them. Knows nothing of SQL.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::transcript::{Block, Body, Record, ToolResult};
use crate::traces::{Message, Role, ToolCall};

/// What the file's place in the layout says about it.
#[derive(Debug, Clone, Default)]
pub struct FileInfo {
    /// Session id known from the layout (a main file's name, a `subagents/` parent directory).
    pub session_id: Option<String>,
    /// `Some` for a subagent transcript.
    pub agent_id: Option<String>,
    /// The project directory's name (the lossy encoding of the cwd).
    pub project: String,
    /// Path relative to the capture root, for metadata.
    pub relative_path: String,
}

/// One human task: the prompt record and everything until the next prompt.
#[derive(Debug, Clone)]
pub struct Turn {
    /// Stable identity: session id, agent id and the prompt record's uuid.
    pub key: String,
    pub prompt: String,
    pub messages: Vec<Message>,
    pub metadata: Map<String, Value>,
    pub created_at: Option<String>,
    /// First line of the prompt record, for reports.
    pub line: usize,
}

#[derive(Debug, Default)]
pub struct Conversation {
    pub turns: Vec<Turn>,
    /// Prompts with no assistant reply yet (a turn being written, or abandoned at once).
    pub pending_turns: usize,
    pub session_id: Option<String>,
}

/// Build the turns of one file.
pub fn build(info: &FileInfo, records: &[Record]) -> Conversation {
    let subagent = info.agent_id.is_some();
    // A main file holds the main thread only; sidechain records belong to their own files.
    let in_thread = |r: &Record| subagent || !r.is_sidechain;
    let mut by_uuid: HashMap<&str, usize> = HashMap::new();
    for record in records.iter().filter(|r| in_thread(r)) {
        if let Some(uuid) = record.uuid.as_deref() {
            by_uuid.entry(uuid).or_insert(record.index);
        }
    }
    let is_first = |r: &Record| r.uuid.as_deref().is_some_and(|u| by_uuid.get(u) == Some(&r.index));

    let session_id = info.session_id.clone().or_else(|| records.iter().find_map(|r| r.context.session_id.clone()));
    let mut conversation = Conversation { session_id: session_id.clone(), ..Conversation::default() };

    let leaf = records
        .iter()
        .filter(|r| in_thread(r) && is_first(r))
        .filter(|r| {
            matches!(
                r.body,
                Body::Prompt { .. } | Body::Assistant { .. } | Body::ToolResults { .. } | Body::Interrupted
            )
        })
        .max_by(|a, b| {
            (a.timestamp.as_deref().unwrap_or(""), a.index).cmp(&(b.timestamp.as_deref().unwrap_or(""), b.index))
        });
    let Some(leaf) = leaf else { return conversation };

    let mut path: Vec<usize> = Vec::new();
    let mut seen: HashSet<usize> = HashSet::new();
    let mut current = Some(leaf.index);
    while let Some(index) = current {
        if !seen.insert(index) {
            tracing::warn!(file = %info.relative_path, line = records[index].line, "parentUuid cycle; cut here");
            break;
        }
        path.push(index);
        let record = &records[index];
        let parent = record.parent_uuid.as_deref().or(match record.body {
            Body::CompactBoundary => record.logical_parent_uuid.as_deref(),
            _ => None,
        });
        current = parent.and_then(|p| by_uuid.get(p).copied());
    }
    path.reverse();

    // All records of one API response, and every tool result, wherever they sit.
    let mut responses: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut results: HashMap<&str, (&ToolResult, Option<&str>)> = HashMap::new();
    for record in records.iter().filter(|r| in_thread(r) && (r.uuid.is_none() || is_first(r))) {
        match &record.body {
            Body::Assistant { message_id, api_error: false, .. } => {
                responses.entry(message_id.as_str()).or_default().push(record.index)
            }
            Body::ToolResults { results: found, agent_id } => {
                for result in found {
                    results.entry(result.tool_use_id.as_str()).or_insert((result, agent_id.as_deref()));
                }
            }
            _ => {}
        }
    }

    let mut builder: Option<TurnBuilder> = None;
    let mut emitted: HashSet<&str> = HashSet::new();
    for &index in &path {
        let record = &records[index];
        match &record.body {
            Body::Prompt { text, images } => {
                if let Some(done) = builder.take() {
                    finish(done, info, &session_id, &mut conversation);
                }
                builder = Some(TurnBuilder::new(record, text, *images));
            }
            Body::Assistant { message_id, api_error: false, .. } => {
                let Some(turn) = builder.as_mut() else { continue };
                if !emitted.insert(message_id.as_str()) {
                    continue;
                }
                let group = responses.get(message_id.as_str()).map(Vec::as_slice).unwrap_or(&[]);
                turn.add_response(records, group, &results);
            }
            Body::Interrupted => {
                if let Some(turn) = builder.as_mut() {
                    turn.interrupted = true;
                }
            }
            Body::CompactBoundary => {
                if let Some(turn) = builder.as_mut() {
                    turn.compactions += 1;
                }
            }
            _ => {}
        }
        if let Some(turn) = builder.as_mut() {
            if let Some(timestamp) = &record.timestamp {
                if turn.ended_at.as_deref().is_none_or(|t| t < timestamp.as_str()) {
                    turn.ended_at = Some(timestamp.clone());
                }
            }
        }
    }
    if let Some(done) = builder.take() {
        finish(done, info, &session_id, &mut conversation);
    }
    conversation
}

struct TurnBuilder {
    prompt_uuid: String,
    line: usize,
    prompt: String,
    images: usize,
    started_at: Option<String>,
    ended_at: Option<String>,
    context: super::transcript::Context,
    messages: Vec<Message>,
    reasoning: Vec<Value>,
    tools: Vec<String>,
    call_ids: HashSet<String>,
    models: Vec<String>,
    interrupted: bool,
    compactions: u64,
    tool_errors: u64,
    truncated_results: u64,
    reinlined_results: u64,
    unanswered_calls: u64,
    result_images: usize,
    subagents: Vec<String>,
}

impl TurnBuilder {
    fn new(record: &Record, text: &str, images: usize) -> TurnBuilder {
        TurnBuilder {
            prompt_uuid: record.uuid.clone().unwrap_or_else(|| format!("line-{}", record.line)),
            line: record.line,
            prompt: text.to_string(),
            images,
            started_at: record.timestamp.clone(),
            ended_at: record.timestamp.clone(),
            context: record.context.clone(),
            messages: vec![Message::text(Role::User, text)],
            reasoning: Vec::new(),
            tools: Vec::new(),
            call_ids: HashSet::new(),
            models: Vec::new(),
            interrupted: false,
            compactions: 0,
            tool_errors: 0,
            truncated_results: 0,
            reinlined_results: 0,
            unanswered_calls: 0,
            result_images: 0,
            subagents: Vec::new(),
        }
    }

    /// One assistant message from all records of a response, then its answered calls' results
    /// in call order. Calls without a result (interrupted, rejected, still running) are dropped.
    fn add_response(
        &mut self,
        records: &[Record],
        group: &[usize],
        results: &HashMap<&str, (&ToolResult, Option<&str>)>,
    ) {
        let mut texts: Vec<&str> = Vec::new();
        let mut thinking: Vec<&str> = Vec::new();
        let mut calls: Vec<ToolCall> = Vec::new();
        let mut answers: Vec<(&ToolResult, Option<&str>, String)> = Vec::new();
        for &index in group {
            let Body::Assistant { model, blocks, .. } = &records[index].body else { continue };
            if let Some(model) = model {
                if !self.models.contains(model) {
                    self.models.push(model.clone());
                }
            }
            for block in blocks {
                match block {
                    Block::Text(text) if !text.trim().is_empty() => texts.push(text),
                    Block::Thinking(text) if !text.trim().is_empty() => thinking.push(text),
                    Block::ToolUse { id, name, input } => {
                        if !self.call_ids.insert(id.clone()) {
                            continue;
                        }
                        match results.get(id.as_str()) {
                            Some((result, agent_id)) => {
                                let arguments = match input {
                                    Value::Object(_) => input.to_string(),
                                    Value::Null => "{}".to_string(),
                                    other => json!({ "input": other }).to_string(),
                                };
                                calls.push(ToolCall { id: id.clone(), name: name.clone(), arguments });
                                answers.push((result, *agent_id, name.clone()));
                            }
                            None => self.unanswered_calls += 1,
                        }
                    }
                    _ => {}
                }
            }
        }
        let content = texts.join("\n\n");
        if content.is_empty() && calls.is_empty() {
            return;
        }
        if !thinking.is_empty() {
            self.reasoning.push(json!({"message": self.messages.len(), "text": thinking.join("\n\n")}));
        }
        for call in &calls {
            if !self.tools.contains(&call.name) {
                self.tools.push(call.name.clone());
            }
        }
        self.messages.push(Message {
            role: Role::Assistant,
            content: if content.is_empty() { None } else { Some(content) },
            tool_calls: calls,
            tool_call_id: None,
            name: None,
        });
        for (result, agent_id, name) in answers {
            self.tool_errors += u64::from(result.is_error);
            self.truncated_results += u64::from(result.truncated);
            self.reinlined_results += u64::from(result.reinlined);
            self.result_images += result.images;
            if let Some(agent_id) = agent_id {
                if !self.subagents.iter().any(|a| a == agent_id) {
                    self.subagents.push(agent_id.to_string());
                }
            }
            self.messages.push(Message {
                role: Role::Tool,
                content: Some(result.content.clone()),
                tool_calls: Vec::new(),
                tool_call_id: Some(result.tool_use_id.clone()),
                name: Some(name),
            });
        }
    }
}

fn finish(turn: TurnBuilder, info: &FileInfo, session_id: &Option<String>, conversation: &mut Conversation) {
    if !turn.messages.iter().any(|m| m.role == Role::Assistant) {
        conversation.pending_turns += 1;
        return;
    }
    let session = session_id.clone().unwrap_or_default();
    let agent = info.agent_id.clone().unwrap_or_default();
    let key = format!("{session}\n{agent}\n{}", turn.prompt_uuid);
    // Ends on an answer, with no call left open (a turn still being written, or interrupted).
    let complete = turn.unanswered_calls == 0
        && turn
            .messages
            .last()
            .is_some_and(|m| m.role == Role::Assistant && m.tool_calls.is_empty() && m.content.is_some());

    let mut metadata = Map::new();
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            metadata.insert(key.to_string(), value);
        }
    };
    put("session_id", json!(session_id));
    put("prompt_uuid", json!(turn.prompt_uuid));
    put("is_sidechain", json!(info.agent_id.is_some()));
    if info.agent_id.is_some() {
        put("agent_id", json!(info.agent_id));
        put("parent_session_id", json!(session_id));
    }
    put("cwd", json!(turn.context.cwd));
    put("git_branch", json!(turn.context.git_branch));
    put("cc_version", json!(turn.context.version));
    put("slug", json!(turn.context.slug));
    put("model", json!(turn.models.first()));
    if turn.models.len() > 1 {
        put("models", json!(turn.models));
    }
    put("started_at", json!(turn.started_at));
    put("ended_at", json!(turn.ended_at));
    put("project", json!(info.project));
    put("transcript", json!(info.relative_path));
    put("complete", json!(complete));
    put("interrupted", json!(turn.interrupted));
    put("tool_errors", json!(turn.tool_errors));
    put("truncated_tool_results", json!(turn.truncated_results));
    put("reinlined_tool_results", json!(turn.reinlined_results));
    put("unanswered_tool_calls", json!(turn.unanswered_calls));
    put("compactions", json!(turn.compactions));
    put("images", json!(turn.images + turn.result_images));
    if !turn.subagents.is_empty() {
        put("subagents", json!(turn.subagents));
    }
    if !turn.reasoning.is_empty() {
        put("reasoning", Value::Array(turn.reasoning));
    }
    put("tools_used", json!(turn.tools));
    conversation.turns.push(Turn {
        key,
        prompt: turn.prompt,
        messages: turn.messages,
        metadata,
        created_at: turn.started_at,
        line: turn.line,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::transcript::{read_file, ReadContext};

    fn turns(lines: &[&str]) -> Conversation {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let context = ReadContext {
            project_dir: dir.path().to_path_buf(),
            session_dir: None,
            max_tool_result_bytes: 1024,
            max_line_bytes: 1 << 20,
        };
        let read = read_file(&path, &context).unwrap();
        build(&FileInfo { session_id: Some("s".into()), ..FileInfo::default() }, &read.records)
    }

    #[test]
    fn a_compaction_mid_turn_continues_the_turn_and_unknown_lines_keep_the_chain() {
        let conversation = turns(&[
            r#"{"type":"user","uuid":"u1","parentUuid":null,"timestamp":"2026-01-01T00:00:01Z","message":{"role":"user","content":"find the bug"}}"#,
            r#"{"type":"assistant","uuid":"a1","parentUuid":"u1","timestamp":"2026-01-01T00:00:02Z","message":{"id":"m1","content":[{"type":"tool_use","id":"t1","name":"mcp__db__query","input":{"sql":"select 1"}}]}}"#,
            r#"{"type":"brand-new-kind","uuid":"x1","parentUuid":"a1","timestamp":"2026-01-01T00:00:03Z"}"#,
            r#"{"type":"user","uuid":"r1","parentUuid":"x1","timestamp":"2026-01-01T00:00:04Z","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"1"}]}}"#,
            r#"{"type":"system","subtype":"compact_boundary","uuid":"b1","parentUuid":null,"logicalParentUuid":"r1","timestamp":"2026-01-01T00:00:05Z"}"#,
            r#"{"type":"user","uuid":"c1","parentUuid":"b1","isCompactSummary":true,"timestamp":"2026-01-01T00:00:06Z","message":{"role":"user","content":"Summary: looking for a bug"}}"#,
            r#"{"type":"assistant","uuid":"a2","parentUuid":"c1","timestamp":"2026-01-01T00:00:07Z","message":{"id":"m2","content":[{"type":"text","text":"found it"}]}}"#,
        ]);
        assert_eq!(conversation.turns.len(), 1);
        let turn = &conversation.turns[0];
        let roles: Vec<&str> = turn.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["user", "assistant", "tool", "assistant"]);
        assert_eq!(turn.messages[1].tool_calls[0].name, "mcp__db__query");
        assert_eq!(turn.metadata["compactions"], 1);
        assert!(!turn.messages.iter().any(|m| m.content.as_deref().is_some_and(|c| c.contains("Summary"))));
    }

    #[test]
    fn dangling_parents_and_cycles_end_the_walk_and_interruptions_are_marked() {
        let conversation = turns(&[
            r#"{"type":"user","uuid":"u1","parentUuid":"never-written","timestamp":"2026-01-01T00:00:01Z","message":{"role":"user","content":"list files"}}"#,
            r#"{"type":"assistant","uuid":"a1","parentUuid":"u1","timestamp":"2026-01-01T00:00:02Z","message":{"id":"m1","content":[{"type":"text","text":"Listing."},{"type":"tool_use","id":"t1","name":"Glob","input":{"pattern":"*"}}]}}"#,
            r#"{"type":"user","uuid":"i1","parentUuid":"a1","timestamp":"2026-01-01T00:00:03Z","message":{"role":"user","content":[{"type":"text","text":"[Request interrupted by user for tool use]"}]}}"#,
        ]);
        assert_eq!(conversation.turns.len(), 1);
        let turn = &conversation.turns[0];
        assert_eq!(turn.metadata["interrupted"], true);
        assert_eq!(turn.metadata["unanswered_tool_calls"], 1);
        assert_eq!(turn.metadata["complete"], false);
        assert!(turn.messages[1].tool_calls.is_empty(), "an unanswered call is dropped");

        let cyclic = turns(&[
            r#"{"type":"user","uuid":"u1","parentUuid":"a1","timestamp":"2026-01-01T00:00:01Z","message":{"role":"user","content":"hello"}}"#,
            r#"{"type":"assistant","uuid":"a1","parentUuid":"u1","timestamp":"2026-01-01T00:00:02Z","message":{"id":"m1","content":[{"type":"text","text":"hi"}]}}"#,
        ]);
        assert_eq!(cyclic.turns.len(), 1);
        assert_eq!(cyclic.turns[0].messages.len(), 2);
    }

    #[test]
    fn a_prompt_without_a_reply_is_pending() {
        let conversation = turns(&[
            r#"{"type":"user","uuid":"u1","parentUuid":null,"timestamp":"2026-01-01T00:00:01Z","isMeta":true,"message":{"role":"user","content":"skill body"}}"#,
            r#"{"type":"user","uuid":"u2","parentUuid":"u1","timestamp":"2026-01-01T00:00:02Z","message":{"role":"user","content":"are you there?"}}"#,
        ]);
        assert!(conversation.turns.is_empty());
        assert_eq!(conversation.pending_turns, 1);
    }
}
