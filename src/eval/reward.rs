//! Rewards for reinforcement learning, computed from the same per-case score evaluation uses:
//! named components (executed outcome, format, call correctness against the reference, tool-
//! sequence alignment, length), each weighted and logged. A validity gate keeps the policy
//! from trading format for anything else: an episode with a malformed reply, an unknown tool or
//! arguments its schema rejects — or no tool call at all on a task that needs one, the easy way
//! out a policy otherwise learns first — always totals below every valid episode.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::metrics::CaseScore;

/// The reward components, in the order they are logged.
pub const COMPONENTS: [&str; 5] = ["outcome", "format", "correctness", "alignment", "length"];

/// How much each component counts. Components a case has no criterion for score 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardWeights {
    pub outcome: f64,
    pub format: f64,
    pub correctness: f64,
    pub alignment: f64,
    pub length: f64,
}

impl Default for RewardWeights {
    fn default() -> Self {
        RewardWeights { outcome: 1.0, format: 0.5, correctness: 1.0, alignment: 0.5, length: 0.1 }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct WeightsError {
    pub message: String,
}

impl RewardWeights {
    /// Parse `outcome=1,format=0.5,...`; components not named keep their defaults.
    pub fn parse(text: &str) -> Result<RewardWeights, WeightsError> {
        let mut weights = RewardWeights::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let fail = |why: String| WeightsError { message: format!("--reward-weights: {part:?}: {why}") };
            let (name, value) = part.split_once('=').ok_or_else(|| fail("expected NAME=NUMBER".into()))?;
            let value: f64 = value
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| fail("the weight must be a number ≥ 0".into()))?;
            match name.trim() {
                "outcome" => weights.outcome = value,
                "format" => weights.format = value,
                "correctness" => weights.correctness = value,
                "alignment" => weights.alignment = value,
                "length" => weights.length = value,
                other => return Err(fail(format!("unknown component {other:?} (known: {})", COMPONENTS.join(", ")))),
            }
        }
        if weights.outcome + weights.format + weights.correctness + weights.alignment == 0.0 {
            return Err(WeightsError { message: "--reward-weights: every weight but length is 0".into() });
        }
        Ok(weights)
    }

    fn of(&self, component: &str) -> f64 {
        match component {
            "outcome" => self.outcome,
            "format" => self.format,
            "correctness" => self.correctness,
            "alignment" => self.alignment,
            _ => self.length,
        }
    }
}

impl fmt::Display for RewardWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "outcome={},format={},correctness={},alignment={},length={}",
            self.outcome, self.format, self.correctness, self.alignment, self.length
        )
    }
}

/// One episode's reward: every component's raw value in its range, and the weighted total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    pub components: BTreeMap<String, f64>,
    /// The episode broke the format (malformed reply, unknown tool or invalid arguments).
    pub gated: bool,
    pub total: f64,
}

/// The validity gate's ceiling: every gated episode totals at most this, every valid one more.
const GATE: f64 = -1.0;

/// Score an episode's `CaseScore` into a reward. `token_budget` is the most tokens an episode
/// may spend (turns × tokens per turn); the length component is −tokens/budget.
pub fn reward(score: &CaseScore, weights: &RewardWeights, token_budget: usize) -> Reward {
    let expects_call = score.first_tool.is_some() || score.similarity.is_some() || score.must_call.is_some();
    let silent = expects_call && score.calls == 0;
    let valid = score.parsed && score.names_valid && score.arguments_valid && !silent;
    let call_rate = match score.calls {
        0 if silent => 0.0,
        0 => 1.0,
        n => score.valid_calls as f64 / n as f64,
    };
    // Format: the replies parse, the calls are valid, no reply was cut by the token limit.
    let whole = f64::from(u8::from(score.truncated == 0));
    let format = (f64::from(u8::from(score.parsed)) + call_rate + whole) / 3.0;
    let outcome = score.success.map_or(0.0, |s| f64::from(u8::from(s)));
    // Correctness against the reference: the right first tool, and the names called as the
    // reference calls them (edit similarity), as ToolRL's name overlap.
    let first = score.first_tool.map(|f| f64::from(u8::from(f)));
    let correctness = match (first, score.must_call) {
        (Some(first), Some(must)) => 0.5 * first + 0.5 * f64::from(u8::from(must)),
        (Some(first), None) => first,
        (None, Some(must)) => f64::from(u8::from(must)),
        (None, None) => 0.0,
    };
    let alignment = score.similarity.unwrap_or(0.0);
    let length = -(score.tokens as f64 / token_budget.max(1) as f64).min(1.0);
    let components: BTreeMap<String, f64> = [
        ("outcome", outcome),
        ("format", format),
        ("correctness", correctness),
        ("alignment", alignment),
        ("length", length),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    let total = if valid {
        // Valid episodes total above the gate: at least −length weight > GATE when the length
        // weight is below 1; the floor keeps that true for any weights.
        let weighted: f64 = components.iter().map(|(name, value)| weights.of(name) * value).sum();
        weighted.max(GATE + 0.5)
    } else {
        // Gated: between GATE − 1 and GATE, more valid calls and a clean stop still rank higher.
        GATE - 1.0 + format * 0.999
    };
    Reward { components, gated: !valid, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(valid: bool, first: bool, success: bool, similarity: f64, tokens: usize) -> CaseScore {
        CaseScore {
            parsed: true,
            names_valid: true,
            arguments_valid: valid,
            calls: 3,
            valid_calls: if valid { 3 } else { 2 },
            first_tool: Some(first),
            first_call: Some("Grep".into()),
            sequence_exact: Some(similarity == 1.0),
            similarity: Some(similarity),
            success: Some(success),
            facts: None,
            must_call: None,
            stopped: true,
            truncated: 0,
            turns: 4,
            tokens,
            seconds: 1.0,
            checks: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn components_are_weighted_into_the_total_by_hand() {
        let weights = RewardWeights::default();
        let r = reward(&score(true, true, false, 0.5, 100), &weights, 1000);
        // outcome 0, format 1, correctness 1, alignment 0.5, length −0.1.
        assert_eq!(r.components["format"], 1.0);
        assert_eq!(r.components["correctness"], 1.0);
        assert!((r.total - (0.5 + 1.0 + 0.25 - 0.01)).abs() < 1e-12, "{}", r.total);
        assert!(!r.gated);
    }

    #[test]
    fn an_invalid_call_never_scores_above_a_valid_episode() {
        // The best invalid episode (right tool, task done, perfect sequence, no tokens) against
        // the worst valid one (wrong tool, failed, nothing aligned, every token spent), for
        // many weightings.
        let best_invalid = score(false, true, true, 1.0, 0);
        let worst_valid = CaseScore { stopped: false, truncated: 4, ..score(true, false, false, 0.0, 10_000) };
        // Answering at once, without the call the task needs, is no way out either.
        let silent = CaseScore { calls: 0, valid_calls: 0, ..score(true, false, false, 0.0, 0) };
        for weights in [
            RewardWeights::default(),
            RewardWeights { outcome: 10.0, format: 0.0, correctness: 5.0, alignment: 3.0, length: 2.0 },
            RewardWeights { outcome: 0.0, format: 0.0, correctness: 0.1, alignment: 0.0, length: 50.0 },
        ] {
            let (good, bad) = (reward(&worst_valid, &weights, 100), reward(&best_invalid, &weights, 100));
            assert!(bad.gated && !good.gated);
            assert!(bad.total < good.total, "{weights}: invalid {} ≥ valid {}", bad.total, good.total);
            let quiet = reward(&silent, &weights, 100);
            assert!(
                quiet.gated && quiet.total < good.total,
                "{weights}: no call {} ≥ valid {}",
                quiet.total,
                good.total
            );
        }
    }

    #[test]
    fn weights_parse_and_bad_ones_name_the_flag() {
        let w = RewardWeights::parse("outcome=2, length=0").unwrap();
        assert_eq!((w.outcome, w.length, w.format), (2.0, 0.0, 0.5));
        assert_eq!(RewardWeights::parse(&w.to_string()).unwrap(), w);
        for bad in ["outcome=high", "outcome", "speed=1", "format=-1", "outcome=NaN"] {
            let error = RewardWeights::parse(bad).unwrap_err().to_string();
            assert!(error.starts_with("--reward-weights"), "{bad}: {error}");
        }
    }
}
