//! Preference pairs mined from episodes: when two episodes of one case end differently (one
//! passes the case's outcome checks, the other fails them), the reply where they first diverge
//! becomes a pair — the conversation up to it as the prompt, the succeeding episode's reply as
//! chosen, the failing one's as rejected. Only the model's own reply is a completion, so DPO
//! never scores tool results; the sandbox is deterministic, so both episodes share everything
//! before their first differing reply.

use serde_json::{json, Map};

use super::episode::Episode;
use super::metrics::CaseScore;
use super::suite::EvalCase;
use crate::traces::preference::{split_implicit_prompt, PairDraft, PairText, PreferencePair};
use crate::traces::wire::{messages_from_wire, WireMessage};
use crate::traces::{Message, Role, Source};

/// Where a mined pair came from, kept in its metadata.
#[derive(Debug, Clone, Copy)]
pub struct MinedFrom<'a> {
    /// What produced the episodes (`grpo`, ...).
    pub origin: &'a str,
    /// The training step they were rolled out at.
    pub step: u64,
}

/// One played episode and its score.
pub struct Played<'a> {
    pub episode: &'a Episode,
    pub score: &'a CaseScore,
}

/// The pair a group of episodes of `case` yields: the first succeeding episode whose replies
/// were all well-formed against the first failing one, cut at their first differing reply.
/// `None` when no episode succeeded that way, none failed, the case has no outcome checks, or the
/// two cannot form a valid pair. (A malformed reply can still pass a check — a garbled call that
/// names the prompt's file satisfies `answer_mentions` — and must never be the chosen side.)
pub fn mine_group(case: &EvalCase, group: &[Played<'_>], from: MinedFrom<'_>) -> Option<PreferencePair> {
    let well_formed = |s: &CaseScore| s.parsed && s.names_valid && s.arguments_valid;
    let passed = group.iter().find(|p| p.score.success == Some(true) && well_formed(p.score))?;
    let failed = group.iter().find(|p| p.score.success == Some(false))?;
    let chosen = transcript_messages(passed.episode)?;
    let rejected = transcript_messages(failed.episode)?;
    let (prompt, chosen, rejected) = split_implicit_prompt(chosen, rejected).ok()?;
    // The completion is the first reply after the shared prefix: the decision that differed.
    let (chosen, rejected) = (first_reply(chosen)?, first_reply(rejected)?);
    let mut metadata = Map::new();
    metadata.insert("mined".into(), json!({"origin": from.origin, "step": from.step, "case": case.id}));
    PreferencePair::new(PairDraft {
        id: None,
        prompt: Some(PairText::Messages(prompt)),
        chosen: PairText::Messages(vec![chosen]),
        rejected: PairText::Messages(vec![rejected]),
        source: Some(Source::Synthetic),
        tools: case.tool_schemas(),
        metadata,
        created_at: None,
    })
    .ok()
}

fn transcript_messages(episode: &Episode) -> Option<Vec<Message>> {
    let wire: Vec<WireMessage> = serde_json::from_value(episode.transcript.clone()).ok()?;
    messages_from_wire(wire).ok()
}

/// The first message of a diverging tail, when it is the model's reply.
fn first_reply(tail: Vec<Message>) -> Option<Message> {
    tail.into_iter().next().filter(|m| m.role == Role::Assistant)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::wire::messages_to_wire;
    use crate::traces::ToolCall;

    fn assistant_call(name: &str, arguments: &str, id: &str) -> Message {
        Message {
            role: Role::Assistant,
            content: Some("Looking.".into()),
            tool_calls: vec![ToolCall { id: id.into(), name: name.into(), arguments: arguments.into() }],
            tool_call_id: None,
            name: None,
        }
    }

    fn tool_result(id: &str, text: &str) -> Message {
        Message {
            role: Role::Tool,
            content: Some(text.into()),
            tool_call_id: Some(id.into()),
            ..Message::text(Role::Tool, "")
        }
    }

    fn episode(messages: &[Message]) -> Episode {
        serde_json::from_value(json!({
            "transcript": messages_to_wire(messages), "calls": [], "replies": 1, "malformed": 0,
            "stopped": true, "final_answer": "", "tokens": 10, "seconds": 0.1, "error": null
        }))
        .unwrap()
    }

    fn score(success: Option<bool>) -> CaseScore {
        CaseScore {
            parsed: true,
            names_valid: true,
            arguments_valid: true,
            calls: 1,
            valid_calls: 1,
            first_tool: None,
            first_call: Some("Read".into()),
            sequence_exact: None,
            similarity: None,
            success,
            facts: None,
            must_call: None,
            stopped: true,
            truncated: 0,
            turns: 2,
            tokens: 10,
            seconds: 0.1,
            checks: Vec::new(),
            error: None,
        }
    }

    fn case() -> EvalCase {
        serde_json::from_value(json!({"id": "c1", "prompt": "Where is the login code?", "tools": ["Grep", "Read"]}))
            .unwrap()
    }

    #[test]
    fn the_pair_is_cut_at_the_first_differing_reply() {
        let start = vec![
            Message::text(Role::System, "You are a coding agent."),
            Message::text(Role::User, "Where is the login code?"),
        ];
        let shared_call = assistant_call("Grep", r#"{"pattern": "login"}"#, "call_1_1");
        let mut good = start.clone();
        good.extend([
            shared_call.clone(),
            tool_result("call_1_1", "src/auth.py:3: def login"),
            Message::text(Role::Assistant, "In src/auth.py, line 3."),
        ]);
        let mut bad = start.clone();
        bad.extend([
            shared_call,
            tool_result("call_1_1", "src/auth.py:3: def login"),
            assistant_call("Bash", r#"{"command": "ls"}"#, "call_2_1"),
        ]);
        let (good, bad) = (episode(&good), episode(&bad));
        let (pass, fail) = (score(Some(true)), score(Some(false)));
        let group = [Played { episode: &bad, score: &fail }, Played { episode: &good, score: &pass }];
        let pair = mine_group(&case(), &group, MinedFrom { origin: "grpo", step: 3 }).expect("a pair");
        let PairText::Messages(prompt) = &pair.prompt else { panic!("messages") };
        assert_eq!(prompt.len(), 4, "system, user, the shared call and its result");
        let PairText::Messages(chosen) = &pair.chosen else { panic!("messages") };
        let PairText::Messages(rejected) = &pair.rejected else { panic!("messages") };
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].content.as_deref(), Some("In src/auth.py, line 3."));
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].tool_calls[0].name, "Bash");
        assert_eq!(pair.source, Source::Synthetic);
        assert_eq!(pair.metadata["mined"]["case"], "c1");
        assert_eq!(pair.metadata["mined"]["step"], 3);
        assert_eq!(pair.tools.len(), 2);
    }

    #[test]
    fn nothing_is_mined_without_both_a_success_and_a_failure() {
        let start = vec![Message::text(Role::System, "s"), Message::text(Role::User, "u")];
        let mut one = start.clone();
        one.push(Message::text(Role::Assistant, "a"));
        let mut two = start;
        two.push(Message::text(Role::Assistant, "b"));
        let (one, two) = (episode(&one), episode(&two));
        for (a, b) in [(Some(true), Some(true)), (Some(false), Some(false)), (None, None), (None, Some(false))] {
            let (sa, sb) = (score(a), score(b));
            let group = [Played { episode: &one, score: &sa }, Played { episode: &two, score: &sb }];
            assert!(mine_group(&case(), &group, MinedFrom { origin: "grpo", step: 1 }).is_none(), "{a:?} {b:?}");
        }
        // A passing episode with a malformed reply is never the chosen side.
        let mut garbled = score(Some(true));
        garbled.parsed = false;
        let fail = score(Some(false));
        let group = [Played { episode: &one, score: &garbled }, Played { episode: &two, score: &fail }];
        assert!(mine_group(&case(), &group, MinedFrom { origin: "grpo", step: 1 }).is_none());
        let clean = score(Some(true));
        let group = [Played { episode: &one, score: &clean }, Played { episode: &two, score: &fail }];
        assert!(mine_group(&case(), &group, MinedFrom { origin: "grpo", step: 1 }).is_some(), "well-formed, it is");
        // Identical episodes that scored differently give no pair either.
        let (pass, fail) = (score(Some(true)), score(Some(false)));
        let group = [Played { episode: &one, score: &pass }, Played { episode: &one, score: &fail }];
        assert!(mine_group(&case(), &group, MinedFrom { origin: "grpo", step: 1 }).is_none());
    }
}
