//! Evaluation suites as data: an `EvalCase` is a task (prompt, offered tools, the sandbox
//! workspace it runs in) and what counts as success (outcome checks, acceptable first tools,
//! tools that must be called, facts the answer must contain, a reference tool sequence). Suites
//! are JSONL files users import (every line checked, the line and field named on error) or
//! built in: `heldout`, generated from the held-out part of bootstrap's phrasings and slot
//! values (`bootstrap::generator::Pool::HeldOut`), so no training trace shares a prompt with it —
//! and `dataset:<ID>`, a dataset's test split.

use serde::{Deserialize, Serialize};

use crate::bootstrap::generator::{generate_from, Pool};
use crate::bootstrap::workflows::{builtin, Check, WorkflowTemplate};
use crate::traces::tools::{tool_schema, DEFAULT_TOOL_NAMES};
use crate::traces::Trace;

/// The built-in suite of held-out tasks.
pub const HELDOUT: &str = "heldout";
/// The built-in suite of tasks from the training pools (reinforcement learning's prompts).
pub const TRAINING: &str = "training";
/// Cases in the built-in `training` suite, and the run seed it is generated with.
pub const TRAINING_CASES: u64 = 400;
pub const TRAINING_SEED: u64 = 0x7a1_0ed;
/// Suites named `dataset:<ID>` are that dataset's test split.
pub const DATASET_PREFIX: &str = "dataset:";
/// Cases in the built-in `heldout` suite.
pub const HELDOUT_CASES: u64 = 100;
/// The run seed `heldout` is generated with (bootstrap runs draw from the training pools, so
/// even the same seed would not give the same prompts).
const HELDOUT_SEED: u64 = 0x00e7_a15e_ed00;

/// One task of a suite and what counts as success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalCase {
    pub id: String,
    #[serde(default)]
    pub category: String,
    pub prompt: String,
    /// Names of the tools offered; the six built-in tools when empty.
    #[serde(default)]
    pub tools: Vec<String>,
    /// The sandbox workspace the episode runs in (its seed); a generated repository.
    #[serde(default)]
    pub workspace_seed: Option<u64>,
    /// What must hold when the episode ends: the checks bootstrap records (`answer_mentions`,
    /// `file_contains`, `file_lacks`, `tests_pass`, `no_matches`, `output_contains`).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub checks: Vec<Check>,
    /// Acceptable first tools.
    #[serde(default)]
    pub first_tools: Vec<String>,
    /// Tools the episode must call at least once.
    #[serde(default)]
    pub must_call: Vec<String>,
    /// Facts the final answer must contain (e.g. a file and line).
    #[serde(default)]
    pub answer_facts: Vec<String>,
    /// The reference tool sequence (names), for exact match and similarity.
    #[serde(default)]
    pub reference: Vec<String>,
}

impl EvalCase {
    /// The names of the offered tools.
    pub fn tool_names(&self) -> Vec<String> {
        if self.tools.is_empty() {
            DEFAULT_TOOL_NAMES.iter().map(|n| n.to_string()).collect()
        } else {
            self.tools.clone()
        }
    }

    /// The offered tools as OpenAI function schemas.
    pub fn tool_schemas(&self) -> Vec<serde_json::Value> {
        self.tool_names().iter().filter_map(|name| tool_schema(name)).collect()
    }

    /// Every field a user can get wrong, named.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.id.trim().is_empty() {
            return Err(("id", "must not be empty".into()));
        }
        if self.prompt.trim().is_empty() {
            return Err(("prompt", "must not be empty".into()));
        }
        for name in &self.tools {
            if tool_schema(name).is_none() {
                return Err(("tools", format!("unknown tool {name:?}")));
            }
        }
        let offered = self.tool_names();
        for (field, names) in
            [("first_tools", &self.first_tools), ("must_call", &self.must_call), ("reference", &self.reference)]
        {
            if let Some(name) = names.iter().find(|n| !offered.contains(n)) {
                return Err((field, format!("{name:?} is not an offered tool ({})", offered.join(", "))));
            }
        }
        let needs_workspace = self.checks.iter().any(|c| !matches!(c, Check::AnswerMentions { .. }));
        if needs_workspace && self.workspace_seed.is_none() {
            return Err((
                "workspace_seed",
                "checks on files, tests or tool output need the workspace they ran in".into(),
            ));
        }
        let criteria = [
            !self.checks.is_empty(),
            !self.first_tools.is_empty(),
            !self.must_call.is_empty(),
            !self.answer_facts.is_empty(),
            !self.reference.is_empty(),
        ];
        if !criteria.contains(&true) {
            return Err((
                "checks",
                "a case needs a success criterion: checks, first_tools, must_call, answer_facts or reference".into(),
            ));
        }
        Ok(())
    }
}

/// A suite line that was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {field}: {message}")]
pub struct SuiteError {
    pub line: usize,
    pub field: String,
    pub message: String,
}

/// Parse a JSONL suite: every case, or every refused line (with its line and field). Blank lines
/// are skipped; case ids must be unique.
pub fn parse(text: &str) -> Result<Vec<EvalCase>, Vec<SuiteError>> {
    let mut cases: Vec<EvalCase> = Vec::new();
    let mut errors = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let mut deserializer = serde_json::Deserializer::from_str(raw);
        let case: EvalCase = match serde_path_to_error::deserialize(&mut deserializer) {
            Ok(case) => case,
            Err(error) => {
                let field = error.path().to_string();
                let field = if field == "." || field == "?" { "line".to_string() } else { field };
                errors.push(SuiteError { line, field, message: error.into_inner().to_string() });
                continue;
            }
        };
        if let Err((field, message)) = case.validate() {
            errors.push(SuiteError { line, field: field.into(), message });
            continue;
        }
        if cases.iter().any(|c| c.id == case.id) {
            errors.push(SuiteError { line, field: "id".into(), message: format!("{:?} is used twice", case.id) });
            continue;
        }
        cases.push(case);
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(errors)
    }
}

/// The built-in `heldout` suite: `n` tasks generated from the held-out phrasings and slot values
/// of the built-in workflow templates. Success is the scenario's outcome checks in the case's
/// workspace; the right first tool is the scenario's first step (exploration is not counted),
/// the reference sequence its steps.
pub fn heldout(n: u64) -> Vec<EvalCase> {
    generated(n, HELDOUT_SEED, Pool::HeldOut, HELDOUT)
}

/// A built-in suite (`heldout` or `training`) at its standard size, generated once per process:
/// the cases are a pure function of the built-in templates, and the reward endpoints look a
/// case up per request. `None` for any other name.
pub fn builtin_suite(name: &str) -> Option<&'static [EvalCase]> {
    static HELD_OUT: std::sync::OnceLock<Vec<EvalCase>> = std::sync::OnceLock::new();
    static TRAINING_SUITE: std::sync::OnceLock<Vec<EvalCase>> = std::sync::OnceLock::new();
    match name {
        HELDOUT => Some(HELD_OUT.get_or_init(|| heldout(HELDOUT_CASES))),
        TRAINING => Some(TRAINING_SUITE.get_or_init(|| training(TRAINING_CASES, TRAINING_SEED))),
        _ => None,
    }
}

/// The built-in `training` suite: tasks generated like bootstrap's, from the training part of
/// the phrasings and slot values (never a held-out one), for reinforcement learning's rollouts.
pub fn training(n: u64, seed: u64) -> Vec<EvalCase> {
    generated(n, seed, Pool::Training, TRAINING)
}

fn generated(n: u64, seed: u64, pool: Pool, name: &str) -> Vec<EvalCase> {
    let templates = builtin();
    let mut cases = Vec::new();
    let mut index = 0;
    while (cases.len() as u64) < n && index < 4 * n {
        let generated = generate_from(&templates, seed, index, pool);
        index += 1;
        let Ok((trace, checks)) = generated else { continue };
        let Some((first_tools, reference)) = scenario_tools(&templates, &trace) else { continue };
        cases.push(EvalCase {
            id: format!("{name}-{:03}", cases.len() + 1),
            category: trace.category.clone(),
            prompt: trace.prompt.clone(),
            tools: Vec::new(),
            workspace_seed: trace.metadata.get("workspace_seed").and_then(|v| v.as_u64()),
            checks,
            first_tools,
            must_call: Vec::new(),
            answer_facts: Vec::new(),
            reference,
        });
    }
    cases
}

/// The right first tools and the reference sequence of a generated trace's scenario: the
/// scenario's steps (exploration is not counted); steps of the first group may run in any
/// order, so each of them is a right first tool.
fn scenario_tools(templates: &[WorkflowTemplate], trace: &Trace) -> Option<(Vec<String>, Vec<String>)> {
    let wanted = trace.metadata.get("template")?.as_str()?;
    let template = templates.iter().find(|t| t.name == wanted)?;
    let name = trace.metadata.get("scenario")?.as_str()?;
    let scenario = template.scenarios.iter().find(|s| s.name == name)?;
    let first = scenario.steps.first()?;
    let mut first_tools: Vec<String> = scenario
        .steps
        .iter()
        .take_while(|s| s.group.is_some() && s.group == first.group)
        .map(|s| s.tool.clone())
        .collect();
    if first_tools.is_empty() {
        first_tools.push(first.tool.clone());
    }
    first_tools.dedup();
    Some((first_tools, scenario.steps.iter().map(|s| s.tool.clone()).collect()))
}

/// Cases from stored traces (a dataset's test split). A synthetic trace is generated again from
/// its seed with `templates` (the active workflow templates, in bootstrap's order) to recover its outcome checks and its
/// scenario's steps; any other trace is measured by its own calls (the first tool, the
/// sequence). Traces without a tool call, or offering a tool Understudy has no schema for, are
/// left out.
pub fn from_traces(traces: &[Trace], templates: &[WorkflowTemplate]) -> Vec<EvalCase> {
    let mut cases = Vec::new();
    for trace in traces {
        let calls: Vec<String> = trace.tool_calls().map(|c| c.name.clone()).collect();
        if calls.is_empty() {
            continue;
        }
        let tools: Vec<String> =
            trace.tools.iter().filter_map(|t| t["function"]["name"].as_str().map(str::to_string)).collect();
        let regenerated = (|| {
            let run_seed = trace.metadata.get("run_seed")?.as_u64()?;
            let index = trace.metadata.get("index")?.as_u64()?;
            let (again, checks) = generate_from(templates, run_seed, index, Pool::Training).ok()?;
            // The same run seed and index give the same trace only with the same templates.
            (again.messages == trace.messages).then_some(checks)
        })();
        let (first_tools, reference) = match (&regenerated, scenario_tools(templates, trace)) {
            (Some(_), Some(tools)) => tools,
            _ => (vec![calls[0].clone()], calls.clone()),
        };
        let case = EvalCase {
            id: trace.id.clone(),
            category: trace.category.clone(),
            prompt: trace.prompt.clone(),
            tools,
            workspace_seed: regenerated.as_ref().and(trace.metadata.get("workspace_seed").and_then(|v| v.as_u64())),
            checks: regenerated.unwrap_or_default(),
            first_tools,
            must_call: Vec::new(),
            answer_facts: Vec::new(),
            reference,
        };
        if case.validate().is_ok() {
            cases.push(case);
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suite_line_names_its_line_and_field() {
        let good = r#"{"id": "a", "prompt": "Where is login?", "first_tools": ["Grep"]}"#;
        assert_eq!(parse(good).unwrap().len(), 1);
        let text = [
            good,
            "",
            r#"{"id": "b", "prompt": "x", "tools": ["Teleport"], "first_tools": ["Grep"]}"#,
            "{not json",
            r#"{"id": "c", "prompt": "x"}"#,
            r#"{"id": "d", "prompt": "x", "checks": [{"type": "tests_pass"}]}"#,
            r#"{"id": "a", "prompt": "x", "reference": ["Read"]}"#,
            r#"{"id": "e", "prompt": 3, "reference": ["Read"]}"#,
        ]
        .join("\n");
        let errors = parse(&text).unwrap_err();
        let found: Vec<(usize, &str)> = errors.iter().map(|e| (e.line, e.field.as_str())).collect();
        assert_eq!(
            found,
            vec![(3, "tools"), (4, "line"), (5, "checks"), (6, "workspace_seed"), (7, "id"), (8, "prompt")],
            "{errors:?}"
        );
    }

    #[test]
    fn heldout_cases_are_valid_and_reproducible() {
        let cases = heldout(30);
        assert_eq!(cases.len(), 30);
        assert_eq!(cases, heldout(30), "the same cases every time");
        for case in &cases {
            case.validate().unwrap_or_else(|e| panic!("{}: {e:?}", case.id));
            assert!(case.workspace_seed.is_some() && !case.checks.is_empty() && !case.first_tools.is_empty());
        }
        let categories: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.category.as_str()).collect();
        assert_eq!(categories.len(), 10, "every template is covered: {categories:?}");
    }
}
