//! Scoring: each episode against its case (reply parses, tool names valid, arguments valid
//! against the offered tool's JSON schema, right first tool, tool-sequence exact match and
//! similarity — 1 − normalised edit distance over names, the seed's "tool_use_alignment" —,
//! executed success by the outcome checks, answer facts, stop, turns, tokens, seconds), and
//! the summaries per category and overall, every rate with its Wilson 95 % interval so a reader
//! sees when two models really differ.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::episode::Episode;
use super::suite::EvalCase;
use crate::bootstrap::generator::check_holds;
use crate::sandbox::{ToolOutput, Workspace};

/// How one case went. `None` where the case has no such criterion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaseScore {
    /// Every reply parsed (no malformed tool-call block) and the policy answered.
    pub parsed: bool,
    /// Every call named an offered tool.
    pub names_valid: bool,
    /// Every call's arguments validate against the offered tool's schema.
    pub arguments_valid: bool,
    /// Calls made, and how many of them named an offered tool with valid arguments.
    pub calls: usize,
    pub valid_calls: usize,
    pub first_tool: Option<bool>,
    /// The tool the episode called first (`None`: no call).
    #[serde(default)]
    pub first_call: Option<String>,
    pub sequence_exact: Option<bool>,
    pub similarity: Option<f64>,
    /// The outcome checks hold at the end of the episode.
    pub success: Option<bool>,
    pub facts: Option<bool>,
    pub must_call: Option<bool>,
    pub stopped: bool,
    /// Replies cut by the token limit.
    #[serde(default)]
    pub truncated: usize,
    pub turns: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// What each check saw: (name, held, detail).
    pub checks: Vec<(String, bool, String)>,
    pub error: Option<String>,
}

/// A JSON-schema check of the kind tool parameters use: an object with typed properties and
/// required keys. Returns why the value does not fit.
pub fn schema_violation(schema: &Value, value: &Value) -> Option<String> {
    let kind = schema.get("type").and_then(Value::as_str);
    let fits = match kind {
        Some("object") => value.is_object(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => value.is_array(),
        _ => true,
    };
    if !fits {
        return Some(format!("expected {}, got {value}", kind.unwrap_or("a value")));
    }
    if let (Some(object), Some("object")) = (value.as_object(), kind) {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if let Some(key) = required.as_str() {
                if !object.contains_key(key) {
                    return Some(format!("missing required {key:?}"));
                }
            }
        }
        for (key, item) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(property) => {
                    if let Some(reason) = schema_violation(property, item) {
                        return Some(format!("{key}: {reason}"));
                    }
                }
                None if properties.is_some() => return Some(format!("unknown argument {key:?}")),
                None => {}
            }
        }
    }
    None
}

/// 1 − Levenshtein distance / the longer length (1 when both are empty).
pub fn similarity(a: &[String], b: &[String]) -> f64 {
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, y) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(x != y);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    1.0 - previous[b.len()] as f64 / longest as f64
}

/// Score an episode against its case; `workspace` and `outputs` as the episode left them.
pub fn score(case: &EvalCase, episode: &Episode, workspace: &mut Workspace, outputs: &[ToolOutput]) -> CaseScore {
    let schemas = case.tool_schemas();
    let offered = case.tool_names();
    let schema_of = |name: &str| {
        schemas.iter().find(|s| s["function"]["name"] == name).map(|s| s["function"]["parameters"].clone())
    };
    let names: Vec<String> = episode.calls.iter().map(|c| c.name.clone()).collect();
    let names_valid = names.iter().all(|n| offered.contains(n));
    let valid_calls = episode
        .calls
        .iter()
        .filter(|c| schema_of(&c.name).is_some_and(|schema| schema_violation(&schema, &c.arguments).is_none()))
        .count();
    let arguments_valid = valid_calls == episode.calls.len();
    let checks: Vec<(String, bool, String)> = case
        .checks
        .iter()
        .map(|check| {
            let (held, detail) = check_holds(check, &episode.final_answer, workspace, outputs);
            (check.name().to_string(), held, detail)
        })
        .collect();
    let has = |list: &Vec<String>| (!list.is_empty()).then_some(());
    CaseScore {
        parsed: episode.malformed == 0 && episode.error.is_none() && episode.replies > 0,
        names_valid,
        arguments_valid,
        calls: episode.calls.len(),
        valid_calls,
        first_tool: has(&case.first_tools).map(|_| names.first().is_some_and(|n| case.first_tools.contains(n))),
        first_call: names.first().cloned(),
        sequence_exact: has(&case.reference).map(|_| names == case.reference),
        similarity: has(&case.reference).map(|_| similarity(&names, &case.reference)),
        success: (!case.checks.is_empty()).then(|| checks.iter().all(|(_, held, _)| *held) && episode.error.is_none()),
        facts: has(&case.answer_facts)
            .map(|_| case.answer_facts.iter().all(|fact| episode.final_answer.contains(fact.as_str()))),
        must_call: has(&case.must_call).map(|_| case.must_call.iter().all(|tool| names.contains(tool))),
        stopped: episode.stopped,
        truncated: episode.truncated,
        turns: episode.replies,
        tokens: episode.tokens,
        seconds: episode.seconds,
        checks,
        error: episode.error.clone(),
    }
}

/// A rate with its Wilson 95 % interval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Rate {
    pub hits: usize,
    pub n: usize,
    pub rate: f64,
    pub low: f64,
    pub high: f64,
}

impl Rate {
    pub fn new(hits: usize, n: usize) -> Rate {
        if n == 0 {
            return Rate { hits, n, rate: 0.0, low: 0.0, high: 0.0 };
        }
        let z = 1.959_963_984_540_054_f64;
        let (nf, p) = (n as f64, hits as f64 / n as f64);
        let denominator = 1.0 + z * z / nf;
        let centre = (p + z * z / (2.0 * nf)) / denominator;
        let half = z * ((p * (1.0 - p) / nf) + z * z / (4.0 * nf * nf)).sqrt() / denominator;
        Rate { hits, n, rate: p, low: (centre - half).max(0.0), high: (centre + half).min(1.0) }
    }

    fn of(values: impl Iterator<Item = bool>) -> Rate {
        let (mut hits, mut n) = (0, 0);
        for value in values {
            n += 1;
            hits += usize::from(value);
        }
        Rate::new(hits, n)
    }
}

/// The `first_calls` key of episodes that made no call.
pub const NO_CALL: &str = "none";

/// The metrics of a set of cases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Summary {
    pub cases: usize,
    pub parsed: Rate,
    pub names_valid: Rate,
    pub arguments_valid: Rate,
    /// Over all calls (not episodes): calls naming an offered tool with valid arguments.
    pub valid_calls: Rate,
    pub first_tool: Rate,
    /// How many episodes opened with each tool (`none`: without a call): a model that opens
    /// every task with one tool shows here, whatever its first-tool rate.
    #[serde(default)]
    pub first_calls: BTreeMap<String, usize>,
    pub sequence_exact: Rate,
    pub similarity: f64,
    pub success: Rate,
    pub facts: Rate,
    pub must_call: Rate,
    pub stopped: Rate,
    pub turns: f64,
    pub tokens: f64,
    pub seconds: f64,
}

impl Summary {
    pub fn of(scores: &[&CaseScore]) -> Summary {
        let mean =
            |values: Vec<f64>| if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 };
        Summary {
            cases: scores.len(),
            parsed: Rate::of(scores.iter().map(|s| s.parsed)),
            names_valid: Rate::of(scores.iter().map(|s| s.names_valid)),
            arguments_valid: Rate::of(scores.iter().map(|s| s.arguments_valid)),
            valid_calls: Rate::new(scores.iter().map(|s| s.valid_calls).sum(), scores.iter().map(|s| s.calls).sum()),
            first_tool: Rate::of(scores.iter().filter_map(|s| s.first_tool)),
            first_calls: scores.iter().fold(BTreeMap::new(), |mut counts, s| {
                *counts.entry(s.first_call.clone().unwrap_or_else(|| NO_CALL.to_string())).or_default() += 1;
                counts
            }),
            sequence_exact: Rate::of(scores.iter().filter_map(|s| s.sequence_exact)),
            similarity: mean(scores.iter().filter_map(|s| s.similarity).collect()),
            success: Rate::of(scores.iter().filter_map(|s| s.success)),
            facts: Rate::of(scores.iter().filter_map(|s| s.facts)),
            must_call: Rate::of(scores.iter().filter_map(|s| s.must_call)),
            stopped: Rate::of(scores.iter().map(|s| s.stopped)),
            turns: mean(scores.iter().map(|s| s.turns as f64).collect()),
            tokens: mean(scores.iter().map(|s| s.tokens as f64).collect()),
            seconds: mean(scores.iter().map(|s| s.seconds).collect()),
        }
    }
}

/// Overall and per-category summaries of (category, score) pairs.
pub fn summarize(scores: &[(String, CaseScore)]) -> (Summary, BTreeMap<String, Summary>) {
    let overall = Summary::of(&scores.iter().map(|(_, s)| s).collect::<Vec<_>>());
    let mut by_category: BTreeMap<String, Vec<&CaseScore>> = BTreeMap::new();
    for (category, score) in scores {
        by_category.entry(category.clone()).or_default().push(score);
    }
    (overall, by_category.into_iter().map(|(c, s)| (c, Summary::of(&s))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wilson_interval_matches_the_formula() {
        let rate = Rate::new(22, 50);
        assert!((rate.rate - 0.44).abs() < 1e-12);
        // Computed by hand from Wilson's formula (z = 1.96): 0.31162 .. 0.57694.
        assert!((rate.low - 0.311_62).abs() < 1e-5 && (rate.high - 0.576_94).abs() < 1e-5, "{rate:?}");
        assert_eq!(Rate::new(0, 0).rate, 0.0);
        assert!(Rate::new(10, 10).high <= 1.0 && Rate::new(10, 10).low > 0.69);
    }

    #[test]
    fn first_calls_count_each_episodes_opening_tool() {
        let case = |first: Option<&str>, right: bool| CaseScore {
            parsed: true,
            names_valid: true,
            arguments_valid: true,
            calls: usize::from(first.is_some()),
            valid_calls: usize::from(first.is_some()),
            first_tool: Some(right),
            first_call: first.map(str::to_string),
            sequence_exact: None,
            similarity: None,
            success: None,
            facts: None,
            must_call: None,
            stopped: true,
            truncated: 0,
            turns: 1,
            tokens: 10,
            seconds: 0.1,
            checks: Vec::new(),
            error: None,
        };
        let scores = [case(Some("Grep"), true), case(Some("Grep"), false), case(Some("Bash"), true), case(None, false)];
        let summary = Summary::of(&scores.iter().collect::<Vec<_>>());
        let counts: Vec<(&str, usize)> = summary.first_calls.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(counts, [("Bash", 1), ("Grep", 2), (NO_CALL, 1)]);
        assert_eq!(summary.first_tool.hits, 2);
    }

    #[test]
    fn similarity_is_one_minus_normalised_edit_distance() {
        let names = |s: &str| s.split(' ').filter(|n| !n.is_empty()).map(String::from).collect::<Vec<_>>();
        assert_eq!(similarity(&names("Grep Read Edit"), &names("Grep Read Edit")), 1.0);
        assert!((similarity(&names("Bash Read Edit"), &names("Grep Read Edit")) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(similarity(&names(""), &names("Grep Read")), 0.0);
        assert_eq!(similarity(&names(""), &names("")), 1.0);
    }

    #[test]
    fn arguments_are_checked_against_the_schema() {
        let schema = json!({"type": "object", "properties": {"pattern": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["pattern"]});
        assert_eq!(schema_violation(&schema, &json!({"pattern": "x", "limit": 3})), None);
        assert!(schema_violation(&schema, &json!({"limit": 3})).unwrap().contains("pattern"));
        assert!(schema_violation(&schema, &json!({"pattern": 3})).is_some());
        assert!(schema_violation(&schema, &json!({"pattern": "x", "command": "ls"})).unwrap().contains("command"));
        assert!(schema_violation(&schema, &json!("x")).is_some());
    }
}
