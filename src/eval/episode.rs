//! One executed episode: the model runs as an agent on a case — reply, parse its tool calls,
//! execute them in a fresh sandbox workspace, append the results, continue — until a reply
//! without tool calls or the turn limit. The transcript is kept like a trace's messages. The
//! model is behind `Policy`, so a stored model and any OpenAI-compatible endpoint run the same
//! episodes.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::suite::EvalCase;
use crate::bootstrap::generator::system_prompt;
use crate::sandbox::{ToolOutput, Workspace};
use crate::traces::wire::messages_to_wire;
use crate::traces::{Message, Role, ToolCall};

/// One reply of the model under evaluation.
#[derive(Debug, Clone, Default)]
pub struct PolicyReply {
    pub content: Option<String>,
    /// Parsed calls: name and arguments (a JSON value; not necessarily an object).
    pub tool_calls: Vec<(String, Value)>,
    /// Tool-call blocks that did not parse.
    pub malformed: usize,
    pub tokens: usize,
    /// The reply ended with end-of-turn (not cut by the token limit).
    pub finished: bool,
}

/// Whatever answers: a stored model on our runtime, or an OpenAI-compatible endpoint.
pub trait Policy {
    fn reply(&mut self, messages: &[Message], tools: &[Value]) -> Result<PolicyReply, String>;

    /// A new episode starts: nothing of the previous one may carry over (so a resumed run scores
    /// every case as an uninterrupted one does).
    fn start_episode(&mut self) {}
}

/// A tool call the model made, with what the sandbox answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CalledTool {
    pub name: String,
    pub arguments: Value,
    pub is_error: bool,
}

/// What happened in one episode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Episode {
    /// The conversation in OpenAI's wire form: system, user, then the model's replies and the
    /// tool results.
    pub transcript: Value,
    pub calls: Vec<CalledTool>,
    pub replies: usize,
    pub malformed: usize,
    /// The last reply had no tool call and ended with end-of-turn, within the turn limit.
    pub stopped: bool,
    /// Replies cut by the token limit instead of ending with end-of-turn.
    #[serde(default)]
    pub truncated: usize,
    pub final_answer: String,
    pub tokens: usize,
    pub seconds: f64,
    /// Why the episode ended early (the policy failed: an endpoint error, a timeout...).
    pub error: Option<String>,
}

/// Run `case` with `policy` for at most `max_turns` replies. Returns the episode and the
/// workspace as the episode left it (for the outcome checks) with every tool output.
pub fn run(policy: &mut dyn Policy, case: &EvalCase, max_turns: usize) -> (Episode, Workspace, Vec<ToolOutput>) {
    let started = Instant::now();
    policy.start_episode();
    let mut workspace = Workspace::generate(case.workspace_seed.unwrap_or(0));
    let tools = case.tool_schemas();
    let mut messages =
        vec![Message::text(Role::System, system_prompt()), Message::text(Role::User, case.prompt.clone())];
    let mut episode = Episode {
        transcript: Value::Null,
        calls: Vec::new(),
        replies: 0,
        malformed: 0,
        stopped: false,
        truncated: 0,
        final_answer: String::new(),
        tokens: 0,
        seconds: 0.0,
        error: None,
    };
    let mut outputs = Vec::new();
    for _ in 0..max_turns.max(1) {
        let reply = match policy.reply(&messages, &tools) {
            Ok(reply) => reply,
            Err(reason) => {
                episode.error = Some(reason);
                break;
            }
        };
        episode.replies += 1;
        episode.malformed += reply.malformed;
        episode.tokens += reply.tokens;
        episode.truncated += usize::from(!reply.finished);
        let content = reply.content.clone().filter(|c| !c.trim().is_empty());
        if reply.tool_calls.is_empty() {
            episode.final_answer = content.clone().unwrap_or_default();
            episode.stopped = reply.finished;
            messages.push(Message { role: Role::Assistant, content: content.or(Some(String::new())), ..empty() });
            break;
        }
        let turn = episode.replies;
        let calls: Vec<ToolCall> = reply
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, (name, arguments))| ToolCall {
                id: format!("call_{turn}_{}", i + 1),
                name: name.clone(),
                arguments: arguments.to_string(),
            })
            .collect();
        messages.push(Message { role: Role::Assistant, content, tool_calls: calls.clone(), ..empty() });
        for (call, (name, arguments)) in calls.iter().zip(&reply.tool_calls) {
            let output = if arguments.is_object() {
                workspace.execute(name, arguments)
            } else {
                ToolOutput::error(format!("the arguments of {name} must be a JSON object"))
            };
            episode.calls.push(CalledTool {
                name: name.clone(),
                arguments: arguments.clone(),
                is_error: output.is_error,
            });
            messages.push(Message {
                role: Role::Tool,
                content: Some(output.content.clone()),
                tool_call_id: Some(call.id.clone()),
                ..empty()
            });
            outputs.push(output);
        }
    }
    episode.transcript = messages_to_wire(&messages);
    episode.seconds = started.elapsed().as_secs_f64();
    (episode, workspace, outputs)
}

fn empty() -> Message {
    Message { role: Role::Assistant, content: None, tool_calls: Vec::new(), tool_call_id: None, name: None }
}
