//! The reward function and tool environment over HTTP, for trainers that run elsewhere (the
//! handoff's TRL GRPO script): `POST /api/rewards/score` replays a model's replies on a case in
//! the sandbox and returns the named reward components and the total, exactly as Understudy's
//! own RL computes them; `POST /api/rewards/environment` replays the same way and returns what
//! the sandbox answered to the last reply's tool calls (the next turn's tool messages). The
//! work is `eval::replay`; this module only maps the wire shapes.

use std::collections::BTreeMap;

use actix_web::web;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{AppState, WebError};
use crate::eval::replay::{self, ReplayReply, Scored};
use crate::eval::reward::RewardWeights;
use crate::eval::suite::EvalCase;
use crate::model::chat_template::ChatTemplate;

pub fn api_routes(config: &mut web::ServiceConfig) {
    config.route("/rewards/score", web::post().to(score)).route("/rewards/environment", web::post().to(environment));
}

/// The length component's budget when the request names none (tokens over the episode).
pub const DEFAULT_TOKEN_BUDGET: usize = 1024;

/// An episode to score: the case (inline, or a stored suite's case by id) and the model's
/// replies, given one of three ways.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RewardRequest {
    /// The case, as an eval suite line holds it (the handoff's `rl_prompts.jsonl` carries it).
    #[serde(default)]
    pub case: Option<EvalCase>,
    /// Or a suite (`heldout`, `training`, `dataset:<ID>` or an imported suite) ...
    #[serde(default)]
    pub suite: Option<String>,
    /// ... and the id of one of its cases.
    #[serde(default)]
    pub case_id: Option<String>,
    /// One generated reply as raw text (a single-turn completion).
    #[serde(default)]
    pub completion: Option<String>,
    /// The conversation as OpenAI messages; only the assistant messages are the model's replies
    /// (tool messages are ignored: the sandbox answers every call).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub messages: Option<Vec<Value>>,
    /// Tokens of each reply, in order (estimated at four bytes a token where absent).
    #[serde(default)]
    pub reply_tokens: Option<Vec<usize>>,
    /// The last reply was cut by the token limit (no end-of-turn).
    #[serde(default)]
    pub truncated: bool,
    /// The chat template whose tool-call format raw text replies use: `chatml_hermes` (default),
    /// `chatml_compact` (the same calls) or `llama3`.
    #[serde(default)]
    pub template: Option<String>,
    /// Component weights; components not named keep their defaults.
    #[serde(default)]
    pub weights: Option<BTreeMap<String, f64>>,
    /// Tokens the whole episode may spend (the length component is −tokens/budget).
    #[serde(default)]
    pub token_budget: Option<usize>,
}

/// What the episode scored: the total, each component, and how it went.
#[derive(Debug, Serialize, ToSchema)]
pub struct RewardResponse {
    pub total: f64,
    /// The episode broke the format: its total sits below every valid episode's.
    pub gated: bool,
    pub components: BTreeMap<String, f64>,
    pub weights: BTreeMap<String, f64>,
    /// The per-case score (as an eval stores it).
    #[schema(value_type = Object)]
    pub score: Value,
    /// What the sandbox answered, one entry per call.
    #[schema(value_type = Vec<Object>)]
    pub tool_results: Value,
    /// The replayed conversation as OpenAI messages.
    #[schema(value_type = Vec<Object>)]
    pub transcript: Value,
}

/// The sandbox's answers to the last reply's calls.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvironmentResponse {
    /// Tool messages answering the last reply's calls, in order (`role`, `tool_call_id`,
    /// `name`, `content`).
    #[schema(value_type = Vec<Object>)]
    pub tool_messages: Vec<Value>,
    /// The last reply made no call: the episode is over.
    pub done: bool,
}

struct Resolved {
    case: EvalCase,
    replies: Vec<ReplayReply>,
    template: ChatTemplate,
    weights: RewardWeights,
    budget: usize,
}

fn bad(message: String) -> WebError {
    WebError::BadRequest(message)
}

/// Turn the wire request into replay inputs, naming the field at fault.
fn replies_of(request: &RewardRequest) -> Result<Vec<ReplayReply>, WebError> {
    let given = [request.completion.is_some(), request.messages.is_some()].iter().filter(|g| **g).count();
    if given != 1 {
        return Err(bad("give exactly one of completion or messages".into()));
    }
    let tokens = |index: usize| request.reply_tokens.as_ref().and_then(|t| t.get(index).copied());
    if let Some(text) = &request.completion {
        return Ok(vec![ReplayReply::Text { text: text.clone(), tokens: tokens(0), finished: !request.truncated }]);
    }
    let messages = request.messages.as_deref().unwrap_or_default();
    let mut replies = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        let Some(role) = role else {
            return Err(bad(format!("messages[{index}].role: expected a string")));
        };
        if role != "assistant" {
            continue;
        }
        let content = match message.get("content") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(Value::Array(parts)) => {
                Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""))
            }
            Some(_) => return Err(bad(format!("messages[{index}].content: expected a string, an array or null"))),
        };
        let calls = message.get("tool_calls").and_then(Value::as_array).filter(|c| !c.is_empty());
        let reply_index = replies.len();
        let reply = match calls {
            None => {
                ReplayReply::Text { text: content.unwrap_or_default(), tokens: tokens(reply_index), finished: true }
            }
            Some(calls) => {
                let mut parsed = Vec::new();
                let mut malformed = 0;
                for (position, call) in calls.iter().enumerate() {
                    let function = call.get("function").unwrap_or(call);
                    let name = function.get("name").and_then(Value::as_str).ok_or_else(|| {
                        bad(format!("messages[{index}].tool_calls[{position}].function.name: expected a string"))
                    })?;
                    let arguments = match function.get("arguments") {
                        Some(Value::String(text)) => serde_json::from_str(text).ok(),
                        Some(object @ Value::Object(_)) => Some(object.clone()),
                        None => Some(Value::Object(Default::default())),
                        Some(_) => None,
                    };
                    match arguments {
                        Some(arguments) => parsed.push((name.to_string(), arguments)),
                        None => malformed += 1,
                    }
                }
                ReplayReply::Parsed { content, tool_calls: parsed, malformed, tokens: tokens(reply_index) }
            }
        };
        replies.push(reply);
    }
    if replies.is_empty() {
        return Err(bad("messages: no assistant message to score".into()));
    }
    if request.truncated {
        if let Some(ReplayReply::Text { finished, .. }) = replies.last_mut() {
            *finished = false;
        }
    }
    Ok(replies)
}

fn weights_of(given: &Option<BTreeMap<String, f64>>) -> Result<RewardWeights, WebError> {
    let Some(given) = given else { return Ok(RewardWeights::default()) };
    let text = given.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(",");
    RewardWeights::parse(&text).map_err(|e| bad(e.message.replacen("--reward-weights", "weights", 1)))
}

fn template_of(name: Option<&str>) -> Result<ChatTemplate, WebError> {
    let name = name.unwrap_or(ChatTemplate::BUILTIN_NAMES[0]);
    ChatTemplate::builtin(name)
        .ok_or_else(|| bad(format!("template: {name:?} is not one of {}", ChatTemplate::BUILTIN_NAMES.join(", "))))
}

async fn resolve(state: &AppState, request: RewardRequest) -> Result<Resolved, WebError> {
    let replies = replies_of(&request)?;
    let template = template_of(request.template.as_deref())?;
    let weights = weights_of(&request.weights)?;
    let budget = request.token_budget.unwrap_or(DEFAULT_TOKEN_BUDGET);
    if budget == 0 {
        return Err(bad("token_budget: must be at least 1".into()));
    }
    let case = match (request.case, request.suite, request.case_id) {
        (Some(case), None, None) => case,
        (None, Some(suite), Some(case_id)) => {
            state
                .with_db(move |db| {
                    let missing = || WebError::NotFound(format!("case_id: suite {suite:?} has no case {case_id:?}"));
                    // Built-in suites are generated once per process, not per request.
                    if let Some(cases) = crate::eval::suite::builtin_suite(&suite) {
                        return cases.iter().find(|case| case.id == case_id).cloned().ok_or_else(missing);
                    }
                    let cases = crate::jobs::eval::load_cases(db, std::slice::from_ref(&suite), None)
                        .map_err(|e| WebError::NotFound(format!("suite: {e}")))?;
                    cases.into_iter().map(|(_, case)| case).find(|case| case.id == case_id).ok_or_else(missing)
                })
                .await?
        }
        _ => return Err(bad("give either case, or suite and case_id".into())),
    };
    Ok(Resolved { case, replies, template, weights, budget })
}

async fn replay(state: &AppState, request: RewardRequest) -> Result<(Scored, RewardWeights), WebError> {
    let resolved = resolve(state, request).await?;
    let weights = resolved.weights.clone();
    let scored = web::block(move || {
        replay::score(&resolved.case, resolved.replies, &resolved.template, &resolved.weights, resolved.budget)
    })
    .await
    .map_err(|e| WebError::Internal(format!("blocking task failed: {e}")))?
    .map_err(|e| bad(e.to_string()))?;
    Ok((scored, weights))
}

/// Score a model's episode on a case with Understudy's reward: its replies are replayed in the
/// case's sandbox (the sandbox answers every call), then scored and weighted as RL does.
#[utoipa::path(post, path = "/api/rewards/score", request_body = RewardRequest,
    responses((status = 200, body = RewardResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn score(
    state: web::Data<AppState>,
    request: web::Json<RewardRequest>,
) -> Result<web::Json<RewardResponse>, ApiError> {
    let (scored, weights) = replay(&state, request.into_inner()).await?;
    let weights: BTreeMap<String, f64> =
        serde_json::to_value(&weights).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    Ok(web::Json(RewardResponse {
        total: scored.reward.total,
        gated: scored.reward.gated,
        components: scored.reward.components,
        weights,
        score: serde_json::to_value(&scored.score).unwrap_or_default(),
        tool_results: serde_json::to_value(&scored.tool_results).unwrap_or_default(),
        transcript: scored.episode.transcript,
    }))
}

/// The tool environment: replay the replies so far in the case's sandbox and return the tool
/// messages answering the last reply's calls.
#[utoipa::path(post, path = "/api/rewards/environment", request_body = RewardRequest,
    responses((status = 200, body = EnvironmentResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn environment(
    state: web::Data<AppState>,
    request: web::Json<RewardRequest>,
) -> Result<web::Json<EnvironmentResponse>, ApiError> {
    let (scored, _) = replay(&state, request.into_inner()).await?;
    let last = scored.episode.replies.saturating_sub(1);
    let tool_messages: Vec<Value> = scored
        .episode
        .transcript
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "tool")
        .zip(&scored.tool_results)
        .filter(|(_, result)| result.reply == last)
        .map(|(message, result)| {
            let mut message = message.clone();
            message["name"] = Value::String(result.name.clone());
            message
        })
        .collect();
    let done = tool_messages.is_empty();
    Ok(web::Json(EnvironmentResponse { tool_messages, done }))
}
