//! Workflow templates as data (JSON): prompt pools with slots, scenarios with a reasoning
//! chain, a tool plan whose arguments interpolate workspace facts, slot choices and values
//! captured from earlier tool results, exploration steps, answers and outcome checks. The
//! built-in set is embedded in the binary; users add or replace templates from a file or the UI.
//! `validate` catches every reference to an unknown slot before a template is stored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::sandbox::Workspace;

const BUILTIN_JSON: &str = include_str!("builtin_workflows.json");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowTemplate {
    /// Unique name; also the trace category unless `category` says otherwise.
    pub name: String,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub description: String,
    /// Prompt phrasings shared by all scenarios; `{slot}` placeholders.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Slot alternatives shared by all scenarios.
    #[serde(default)]
    pub slots: BTreeMap<String, Vec<String>>,
    pub scenarios: Vec<Scenario>,
    /// Extra exploratory steps; how many run depends on the exploration level.
    #[serde(default)]
    pub explore: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub slots: BTreeMap<String, Vec<String>>,
    /// Prompts specific to this scenario (used together with the template's).
    #[serde(default)]
    pub prompts: Vec<String>,
    /// The reasoning chain: alternatives for the opening plan.
    #[serde(default)]
    pub plan: Vec<String>,
    pub steps: Vec<Step>,
    pub answers: Vec<String>,
    #[serde(default)]
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub tool: String,
    /// Arguments; strings interpolate `{slot}` (write `{{` for a literal brace).
    pub args: Map<String, Value>,
    /// Alternatives for the reasoning said before the call.
    #[serde(default)]
    pub say: Vec<String>,
    /// Values taken from this call's result for later steps: name → extractor
    /// (`first_path`, `first_line_number`, `first_match`, `count`, `last_line`, `regex:PATTERN`).
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
    /// Adjacent steps of the same group do not depend on each other and may be reordered.
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// The final answer mentions this text.
    AnswerMentions { value: String },
    /// After the run, the file contains the text.
    FileContains { path: String, text: String },
    /// After the run, the file does not contain the text.
    FileLacks { path: String, text: String },
    /// The workspace's test suite passes after the run.
    TestsPass,
    /// No file under `path` matches the regex after the run.
    NoMatches {
        pattern: String,
        #[serde(default)]
        path: Option<String>,
    },
    /// Some tool result of the run contains the text.
    OutputContains { text: String },
}

impl Check {
    pub fn name(&self) -> &'static str {
        match self {
            Check::AnswerMentions { .. } => "answer_mentions",
            Check::FileContains { .. } => "file_contains",
            Check::FileLacks { .. } => "file_lacks",
            Check::TestsPass => "tests_pass",
            Check::NoMatches { .. } => "no_matches",
            Check::OutputContains { .. } => "output_contains",
        }
    }
}

static SLOT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}").unwrap());

/// Replace `{name}` by `lookup(name)`; `{{`/`}}` are literal braces. Unknown names stay as they are.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    SLOT.replace_all(text, |captures: &regex::Captures<'_>| match captures.get(1) {
        Some(name) => lookup(name.as_str()).unwrap_or_else(|| captures[0].to_string()),
        None => captures[0][..1].to_string(),
    })
    .into_owned()
}

fn slot_names(text: &str) -> impl Iterator<Item = String> + '_ {
    SLOT.captures_iter(text).filter_map(|c| c.get(1).map(|m| m.as_str().to_string()))
}

fn strings_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings_in(v, out)),
        _ => {}
    }
}

const EXTRACTORS: [&str; 5] = ["first_path", "first_line_number", "first_match", "count", "last_line"];
const TOOLS: [&str; 6] = ["Read", "Write", "Edit", "Grep", "Glob", "Bash"];

/// A problem in a template, with where it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("template {template:?}, {location}: {reason}")]
pub struct TemplateError {
    pub template: String,
    pub location: String,
    pub reason: String,
}

impl WorkflowTemplate {
    pub fn category(&self) -> &str {
        self.category.as_deref().unwrap_or(&self.name)
    }

    /// Check names, tools, extractors and that every `{slot}` is defined where it is used.
    pub fn validate(&self) -> Result<(), TemplateError> {
        let error = |location: String, reason: String| TemplateError { template: self.name.clone(), location, reason };
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(error("name".into(), "must be lower_snake_case letters, digits and _".into()));
        }
        if self.scenarios.is_empty() {
            return Err(error("scenarios".into(), "at least one scenario is needed".into()));
        }
        let facts: BTreeSet<String> = REFERENCE_FACTS.iter().cloned().collect();
        let mut base: BTreeSet<String> = facts.clone();
        base.extend(self.slots.keys().cloned());
        for (index, step) in self.explore.iter().enumerate() {
            check_step(step, &base, &format!("explore[{index}]")).map_err(|r| error(format!("explore[{index}]"), r))?;
        }
        for (s, scenario) in self.scenarios.iter().enumerate() {
            let at = |what: &str| format!("scenarios[{s}] ({}).{what}", scenario.name);
            let mut known = base.clone();
            known.extend(scenario.slots.keys().cloned());
            for (name, values) in self.slots.iter().chain(scenario.slots.iter()) {
                if values.is_empty() {
                    return Err(error(at(&format!("slots.{name}")), "needs at least one value".into()));
                }
            }
            let prompts: Vec<&String> = self.prompts.iter().chain(scenario.prompts.iter()).collect();
            if prompts.is_empty() {
                return Err(error(at("prompts"), "no prompts for this scenario".into()));
            }
            for (p, prompt) in prompts.iter().enumerate() {
                if let Some(unknown) = slot_names(prompt).find(|n| !known.contains(n)) {
                    return Err(error(at(&format!("prompts[{p}]")), format!("unknown slot {{{unknown}}}")));
                }
            }
            for (p, plan) in scenario.plan.iter().enumerate() {
                if let Some(unknown) = slot_names(plan).find(|n| !known.contains(n)) {
                    return Err(error(at(&format!("plan[{p}]")), format!("unknown slot {{{unknown}}}")));
                }
            }
            if scenario.steps.is_empty() {
                return Err(error(at("steps"), "at least one step is needed".into()));
            }
            for (index, step) in scenario.steps.iter().enumerate() {
                check_step(step, &known, "").map_err(|r| error(at(&format!("steps[{index}]")), r))?;
                known.extend(step.capture.keys().cloned());
            }
            if scenario.answers.is_empty() {
                return Err(error(at("answers"), "at least one answer phrasing is needed".into()));
            }
            for (a, answer) in scenario.answers.iter().enumerate() {
                if let Some(unknown) = slot_names(answer).find(|n| !known.contains(n)) {
                    return Err(error(at(&format!("answers[{a}]")), format!("unknown slot {{{unknown}}}")));
                }
            }
            for (c, check) in scenario.checks.iter().enumerate() {
                let texts: Vec<&String> = match check {
                    Check::AnswerMentions { value } => vec![value],
                    Check::FileContains { path, text } | Check::FileLacks { path, text } => vec![path, text],
                    Check::NoMatches { pattern, path } => std::iter::once(pattern).chain(path.iter()).collect(),
                    Check::OutputContains { text } => vec![text],
                    Check::TestsPass => vec![],
                };
                for text in texts {
                    if let Some(unknown) = slot_names(text).find(|n| !known.contains(n)) {
                        return Err(error(at(&format!("checks[{c}]")), format!("unknown slot {{{unknown}}}")));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_step(step: &Step, known: &BTreeSet<String>, _at: &str) -> Result<(), String> {
    if !TOOLS.contains(&step.tool.as_str()) {
        return Err(format!("unknown tool {:?} (expected one of {})", step.tool, TOOLS.join(", ")));
    }
    let mut texts = Vec::new();
    strings_in(&Value::Object(step.args.clone()), &mut texts);
    texts.extend(step.say.iter().cloned());
    for text in &texts {
        if let Some(unknown) = slot_names(text).find(|n| !known.contains(n)) {
            return Err(format!("unknown slot {{{unknown}}}"));
        }
    }
    for (name, extractor) in &step.capture {
        let valid = EXTRACTORS.contains(&extractor.as_str())
            || extractor.strip_prefix("regex:").is_some_and(|pattern| Regex::new(pattern).is_ok());
        if !valid {
            return Err(format!(
                "capture {name}: unknown extractor {extractor:?} (expected {} or regex:PATTERN)",
                EXTRACTORS.join(", ")
            ));
        }
    }
    Ok(())
}

/// Fact names every workspace provides (read off one generated workspace).
static REFERENCE_FACTS: LazyLock<Vec<String>> =
    LazyLock::new(|| Workspace::generate(0).facts.keys().cloned().collect());

/// Names a template may use besides its own slots and captures.
pub fn fact_names() -> &'static [String] {
    &REFERENCE_FACTS
}

/// The embedded built-in templates.
pub fn builtin() -> Vec<WorkflowTemplate> {
    serde_json::from_str(BUILTIN_JSON).expect("the built-in templates parse")
}

/// Parse a templates file: a JSON array of templates or one template object. Each is validated.
pub fn parse_file(text: &str) -> Result<Vec<WorkflowTemplate>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Err("expected a JSON array of templates or one template object".into()),
    };
    let mut templates = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let template: WorkflowTemplate = serde_path_to_error::deserialize(item)
            .map_err(|e| format!("templates[{index}].{}: {}", e.path(), e.inner()))?;
        template.validate().map_err(|e| format!("templates[{index}]: {e}"))?;
        templates.push(template);
    }
    Ok(templates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_templates_are_valid_and_cover_the_ten_categories() {
        let templates = builtin();
        for template in &templates {
            template.validate().unwrap();
        }
        let names: BTreeSet<&str> = templates.iter().map(|t| t.category()).collect();
        for expected in [
            "code_search",
            "file_modification",
            "debugging",
            "system_analysis",
            "deployment",
            "test_writing",
            "refactoring",
            "dependency_update",
            "code_review",
            "data_query",
        ] {
            assert!(names.contains(expected), "missing {expected}");
        }
    }

    #[test]
    fn unknown_slots_and_tools_are_reported_with_their_place() {
        let mut template = builtin().remove(0);
        template.scenarios[0].answers = vec!["It is in {nowhere}.".into()];
        let error = template.validate().unwrap_err();
        assert!(error.location.contains("answers[0]") && error.reason.contains("{nowhere}"), "{error}");
        let mut template = builtin().remove(0);
        template.scenarios[0].steps[0].tool = "Rm".into();
        assert!(template.validate().unwrap_err().reason.contains("unknown tool"));
    }

    #[test]
    fn interpolation_fills_known_slots_and_keeps_literal_braces() {
        let lookup = |name: &str| (name == "file").then(|| "a.py".to_string());
        assert_eq!(interpolate("Read {file} {{x}} {other}", &lookup), "Read a.py {x} {other}");
    }
}
