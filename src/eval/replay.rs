//! Episodes played elsewhere, scored here: the replies a model gave on a case (TRL's GRPO
//! completions, an external agent's turns) are replayed turn by turn in the case's sandbox
//! workspace — the sandbox, not the caller, answers every tool call — then scored and rewarded
//! exactly as evaluation and Understudy's own RL trainers do (`metrics::score`, `reward::reward`).
//! `/api/rewards/score` and `/api/rewards/environment` are this module over HTTP, so a
//! handed-off trainer uses the same reward and the same tool environment.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::Value;

use super::episode::{self, Episode, Policy, PolicyReply};
use super::metrics::{self, CaseScore};
use super::reward::{self, Reward, RewardWeights};
use super::suite::EvalCase;
use crate::model::chat_template::ChatTemplate;
use crate::traces::Message;

/// One reply of the model under scoring.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayReply {
    /// The raw generated text (without the end-of-turn token), parsed in the model's template
    /// format as our server parses it.
    Text { text: String, tokens: Option<usize>, finished: bool },
    /// A reply already split into content and calls (an OpenAI assistant message); `malformed`
    /// counts calls whose arguments were not JSON.
    Parsed { content: Option<String>, tool_calls: Vec<(String, Value)>, malformed: usize, tokens: Option<usize> },
}

impl ReplayReply {
    fn into_policy_reply(self, template: &ChatTemplate) -> PolicyReply {
        match self {
            ReplayReply::Text { text, tokens, finished } => {
                let parsed = template.parse_reply(&text);
                PolicyReply {
                    tokens: tokens.unwrap_or_else(|| estimated_tokens(&text)),
                    content: parsed.content,
                    tool_calls: parsed.tool_calls,
                    malformed: parsed.malformed,
                    finished,
                }
            }
            ReplayReply::Parsed { content, tool_calls, malformed, tokens } => {
                let length = content.as_deref().map_or(0, str::len)
                    + tool_calls.iter().map(|(n, a)| n.len() + a.to_string().len()).sum::<usize>();
                PolicyReply {
                    content,
                    tool_calls,
                    malformed,
                    tokens: tokens.unwrap_or_else(|| length.div_ceil(4).max(1)),
                    finished: true,
                }
            }
        }
    }
}

/// Without the tokenizer, a reply's length in tokens is estimated as one token per four bytes
/// (callers that know the count pass it).
fn estimated_tokens(text: &str) -> usize {
    text.len().div_ceil(4).max(1)
}

/// Replays a fixed list of replies; the episode runner asks for at most that many.
struct Scripted {
    replies: VecDeque<PolicyReply>,
}

impl Policy for Scripted {
    fn reply(&mut self, _messages: &[Message], _tools: &[Value]) -> Result<PolicyReply, String> {
        self.replies.pop_front().ok_or_else(|| "the episode has no more replies".to_string())
    }
}

/// What a replayed episode scored.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub reward: Reward,
    pub score: CaseScore,
    pub episode: Episode,
    /// The tool results the sandbox gave, one per call, in order (the environment's answers).
    pub tool_results: Vec<ToolResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolResult {
    /// The reply (0-based) whose call this answers.
    pub reply: usize,
    pub name: String,
    pub content: String,
    pub is_error: bool,
}

/// Why a replay could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplayError {
    #[error("case: {0}: {1}")]
    Case(&'static str, String),
    #[error("replies: an episode needs at least one reply")]
    NoReplies,
    #[error("replies: at most {max} replies, got {got}")]
    TooMany { max: usize, got: usize },
}

/// The most replies one replayed episode may hold.
pub const MAX_REPLIES: usize = 50;

/// Replay `replies` on `case`, score the episode and reward it. `token_budget` is the length
/// component's budget (the trainers use turns × tokens per turn).
pub fn score(
    case: &EvalCase,
    replies: Vec<ReplayReply>,
    template: &ChatTemplate,
    weights: &RewardWeights,
    token_budget: usize,
) -> Result<Scored, ReplayError> {
    case.validate().map_err(|(field, reason)| ReplayError::Case(field, reason))?;
    if replies.is_empty() {
        return Err(ReplayError::NoReplies);
    }
    if replies.len() > MAX_REPLIES {
        return Err(ReplayError::TooMany { max: MAX_REPLIES, got: replies.len() });
    }
    let turns = replies.len();
    let mut policy = Scripted { replies: replies.into_iter().map(|r| r.into_policy_reply(template)).collect() };
    let (episode, mut workspace, outputs) = episode::run(&mut policy, case, turns);
    let score = metrics::score(case, &episode, &mut workspace, &outputs);
    let reward = reward::reward(&score, weights, token_budget);
    let tool_results = tool_results(&episode);
    Ok(Scored { reward, score, episode, tool_results })
}

/// The tool messages of the episode's transcript, each with the reply it answers.
fn tool_results(episode: &Episode) -> Vec<ToolResult> {
    let mut results = Vec::new();
    let mut reply = 0usize;
    let mut seen_assistant = false;
    let mut calls = episode.calls.iter();
    for message in episode.transcript.as_array().into_iter().flatten() {
        match message["role"].as_str() {
            Some("assistant") => {
                if seen_assistant {
                    reply += 1;
                }
                seen_assistant = true;
            }
            Some("tool") => {
                let call = calls.next();
                results.push(ToolResult {
                    reply,
                    name: call.map(|c| c.name.clone()).unwrap_or_default(),
                    content: message["content"].as_str().unwrap_or_default().to_string(),
                    is_error: call.is_some_and(|c| c.is_error),
                });
            }
            _ => {}
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::suite;

    fn case() -> EvalCase {
        suite::heldout(3).into_iter().find(|c| c.workspace_seed.is_some()).expect("a heldout case with a workspace")
    }

    #[test]
    fn a_replayed_episode_scores_as_the_same_episode_played_live() {
        let case = case();
        let first = case.first_tools[0].clone();
        let arguments = match first.as_str() {
            "Read" => serde_json::json!({"file_path": "README.md"}),
            "Bash" => serde_json::json!({"command": "ls"}),
            "Glob" => serde_json::json!({"pattern": "**/*.py"}),
            _ => serde_json::json!({"pattern": "def "}),
        };
        let call = format!("<tool_call>\n{}\n</tool_call>", serde_json::json!({"name": first, "arguments": arguments}));
        let replies = vec![
            ReplayReply::Text { text: call.clone(), tokens: Some(20), finished: true },
            ReplayReply::Text { text: "Done: nothing to change.".into(), tokens: Some(6), finished: true },
        ];
        let weights = RewardWeights::default();
        let template = ChatTemplate::chatml_hermes();
        let scored = score(&case, replies, &template, &weights, 512).unwrap();
        assert_eq!(scored.score.calls, 1);
        assert_eq!(scored.score.first_tool, Some(true));
        assert!(scored.episode.stopped);
        assert_eq!(scored.tool_results.len(), 1);
        assert_eq!(scored.tool_results[0].name, first);
        // The same replies through the live runner give the same reward.
        let mut live = Scripted {
            replies: [(call, 20), ("Done: nothing to change.".to_string(), 6)]
                .into_iter()
                .map(|(text, tokens)| {
                    ReplayReply::Text { text, tokens: Some(tokens), finished: true }.into_policy_reply(&template)
                })
                .collect(),
        };
        let (_, live_score) = crate::eval::evaluate_case(&mut live, &case, 4);
        assert_eq!(reward::reward(&live_score, &weights, 512).total, scored.reward.total);
    }

    #[test]
    fn a_bad_case_or_no_replies_is_refused_naming_the_field() {
        let mut bad = case();
        bad.prompt = " ".into();
        let template = ChatTemplate::chatml_hermes();
        let reply = || vec![ReplayReply::Text { text: "hi".into(), tokens: None, finished: true }];
        let error = score(&bad, reply(), &template, &RewardWeights::default(), 100).unwrap_err();
        assert_eq!(error.to_string(), "case: prompt: must not be empty");
        let error = score(&case(), Vec::new(), &template, &RewardWeights::default(), 100).unwrap_err();
        assert!(error.to_string().starts_with("replies:"), "{error}");
    }
}
