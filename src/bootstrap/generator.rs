//! Turning a workflow template into a true trace: pick a scenario, slot values and a prompt
//! phrasing, build a workspace from the trace's seed, run every tool call against it (capturing
//! values for later steps), write the reasoning and the answer from what the tools returned, and
//! record the outcome checks. Same (run seed, index) → same trace.
//!
//! Every prompt pool and slot list is split in two (`Pool`): bootstrap draws only from the
//! training part, the `heldout` evaluation suite only from the held-out part (every fifth
//! phrasing or value; the last one of a list shorter than five), so no training trace shares a
//! phrasing or a held-out slot value with an evaluation case.

use std::collections::BTreeMap;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};

use super::workflows::{interpolate, Check, Step, WorkflowTemplate};
use crate::sandbox::{ToolOutput, Workspace};
use crate::traces::tools::{default_tools, DEFAULT_TOOL_NAMES};
use crate::traces::{Message, Outcome, OutcomeCheck, OutcomeStatus, Role, Source, ToolCall, Trace, TraceDraft};

/// How many extra exploratory calls a trace makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exploration {
    Minimal,
    Moderate,
    Thorough,
    Exhaustive,
}

impl Exploration {
    pub fn as_str(self) -> &'static str {
        match self {
            Exploration::Minimal => "minimal",
            Exploration::Moderate => "moderate",
            Exploration::Thorough => "thorough",
            Exploration::Exhaustive => "exhaustive",
        }
    }

    fn extra_steps(self) -> usize {
        match self {
            Exploration::Minimal => 0,
            Exploration::Moderate => 1,
            Exploration::Thorough => 2,
            Exploration::Exhaustive => 4,
        }
    }

    fn pick(rng: &mut ChaCha8Rng) -> Exploration {
        match rng.random_range(0..100) {
            0..25 => Exploration::Minimal,
            25..65 => Exploration::Moderate,
            65..90 => Exploration::Thorough,
            _ => Exploration::Exhaustive,
        }
    }
}

/// The system prompt every synthetic trace carries (it lists the tools, as serving does). It is
/// the same for every workspace (paths in calls are relative to the workspace), so every example
/// opens with the same system prompt and tool schemas and a training batch runs them once.
pub fn system_prompt() -> String {
    format!(
        "You are a coding agent working in a repository; paths are relative to its root. Plan briefly, then use the tools \
         to inspect and change the code, read their results, and finish with a short answer that cites what you found. \
         Tools: {}.",
        DEFAULT_TOOL_NAMES.join(", ")
    )
}

/// Exploratory steps any template may draw on, besides its own.
fn default_explore() -> Vec<Step> {
    let step = |tool: &str, args: Value, say: &[&str]| Step {
        tool: tool.to_string(),
        args: args.as_object().cloned().unwrap_or_default(),
        say: say.iter().map(|s| s.to_string()).collect(),
        capture: BTreeMap::new(),
        group: None,
    };
    vec![
        step(
            "Bash",
            json!({"command": "ls"}),
            &["Let me get a feel for the layout around it.", "A quick look at the top level of the repo."],
        ),
        step(
            "Read",
            json!({"file_path": "README.md"}),
            &["The README should describe the layout.", "I'll skim the README for orientation."],
        ),
        step(
            "Glob",
            json!({"pattern": "{src}/**/*.py"}),
            &["Let me list the Python modules.", "I'll see which source files exist."],
        ),
        step(
            "Bash",
            json!({"command": "git log --oneline -n 5"}),
            &["Recent history may give context.", "Let me check what changed recently."],
        ),
        step(
            "Bash",
            json!({"command": "ls {src}"}),
            &["Let me see how the package is organised.", "A look at the package directories."],
        ),
        step(
            "Bash",
            json!({"command": "git status"}),
            &["Let me make sure the working tree is clean.", "Let me check the state of the working tree."],
        ),
    ]
}

/// Which part of each prompt pool and slot list a trace draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// What bootstrap trains on.
    Training,
    /// What only the evaluation suite `heldout` uses.
    HeldOut,
}

impl Pool {
    /// Whether item `index` of a list of `len` belongs to this pool. A list of one is shared.
    pub fn holds(self, index: usize, len: usize) -> bool {
        let held_out = match len {
            0 | 1 => false,
            2..=4 => index == len - 1,
            _ => index % 5 == 4,
        };
        match self {
            Pool::Training => !held_out || len == 1,
            Pool::HeldOut => held_out || len == 1,
        }
    }

    /// The items of `items` in this pool. Equal items count as one (a phrasing listed twice is
    /// on one side only), by the position of their first occurrence among the distinct ones.
    pub fn of<'a, T>(self, items: impl IntoIterator<Item = &'a T>) -> Vec<&'a T>
    where
        T: 'a + PartialEq,
    {
        let items: Vec<&T> = items.into_iter().collect();
        let mut distinct: Vec<&T> = Vec::new();
        for item in &items {
            if !distinct.contains(item) {
                distinct.push(item);
            }
        }
        let len = distinct.len();
        items
            .into_iter()
            .filter(|item| {
                let index = distinct.iter().position(|d| d == item).expect("every item is among the distinct ones");
                self.holds(index, len)
            })
            .collect()
    }
}

/// A check with its slots filled in: what must hold at the end of an episode.
pub fn fill_check(check: &Check, lookup: &dyn Fn(&str) -> Option<String>) -> Check {
    let fill = |text: &str| interpolate(text, lookup);
    match check {
        Check::AnswerMentions { value } => Check::AnswerMentions { value: fill(value) },
        Check::FileContains { path, text } => Check::FileContains { path: fill(path), text: fill(text) },
        Check::FileLacks { path, text } => Check::FileLacks { path: fill(path), text: fill(text) },
        Check::TestsPass => Check::TestsPass,
        Check::NoMatches { pattern, path } => {
            Check::NoMatches { pattern: fill(pattern), path: path.as_deref().map(fill) }
        }
        Check::OutputContains { text } => Check::OutputContains { text: fill(text) },
    }
}

/// Whether a filled check holds after a run (the final answer, the workspace as the run left
/// it, every tool result), with a line saying what was checked. Bootstrap records these as the
/// trace's outcome; evaluation scores episodes with them.
pub fn check_holds(check: &Check, answer: &str, workspace: &mut Workspace, outputs: &[ToolOutput]) -> (bool, String) {
    match check {
        Check::AnswerMentions { value } => (answer.contains(value.as_str()), value.clone()),
        Check::FileContains { path, text } => {
            (workspace.files.get(path).is_some_and(|c| c.contains(text.as_str())), format!("{path} contains {text:?}"))
        }
        Check::FileLacks { path, text } => {
            (workspace.files.get(path).is_some_and(|c| !c.contains(text.as_str())), format!("{path} lacks {text:?}"))
        }
        Check::TestsPass => (workspace.tests_pass(), "python -m pytest passes".to_string()),
        Check::NoMatches { pattern, path } => {
            let mut grep = json!({"pattern": pattern});
            if let Some(path) = path {
                grep["path"] = Value::String(path.clone());
            }
            let result = workspace.execute("Grep", &grep);
            (!result.is_error && result.content == "No files found", format!("no match for {pattern}"))
        }
        Check::OutputContains { text } => (outputs.iter().any(|o| o.content.contains(text.as_str())), text.clone()),
    }
}

/// Why a trace could not be generated (a template referencing a value no step produced).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("template {template}, scenario {scenario}: {reason}")]
pub struct GenerateError {
    pub template: String,
    pub scenario: String,
    pub reason: String,
}

const PREFIXES: &[&str] = &["Hey, ", "Quick one: ", "Can you help? ", "I need a hand. ", "Hi! ", "Hello. "];
const SUFFIXES: &[&str] =
    &["Thanks!", "Keep it short.", "Explain what you find.", "This is blocking me.", "Thanks in advance."];

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        // Keep identifiers and acronyms (`DEFAULT_PORT`, `CI`) as they are.
        Some(first) if chars.clone().next().is_some_and(|c| c.is_lowercase()) => {
            first.to_lowercase().chain(chars).collect()
        }
        _ => text.to_string(),
    }
}

/// Natural surface variation: greetings, sign-offs, casing and punctuation.
fn vary_prompt(prompt: &str, rng: &mut ChaCha8Rng) -> String {
    let mut text = prompt.to_string();
    if rng.random_bool(0.2) {
        text = format!("{}{text}", PREFIXES.choose(rng).expect("prefixes"));
    } else if rng.random_bool(0.12) {
        text = lowercase_first(&text);
    }
    if rng.random_bool(0.15) {
        if !text.ends_with(['.', '?', '!']) {
            text.push('.');
        }
        text.push(' ');
        text.push_str(SUFFIXES.choose(rng).expect("suffixes"));
    } else if rng.random_bool(0.15) {
        text = text.trim_end_matches(['.', '?', '!']).to_string();
    }
    text
}

/// Mix a run seed and an index into a trace seed (splitmix64).
pub fn trace_seed(run_seed: u64, index: u64) -> u64 {
    let mut z = run_seed.wrapping_add(index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn extract(extractor: &str, output: &str) -> Option<String> {
    let first = output.lines().find(|l| !l.trim().is_empty() && !l.starts_with("Found "));
    match extractor {
        "first_path" => first.map(|l| l.split(':').next().unwrap_or(l).trim().to_string()),
        "first_line_number" => output
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let _file = parts.next()?;
                let number = parts.next()?.trim();
                number.parse::<usize>().ok().map(|n| n.to_string())
            })
            .or_else(|| {
                output.lines().find_map(|l| {
                    l.trim_start().split('\t').next()?.trim().parse::<usize>().ok().map(|n| n.to_string())
                })
            }),
        "first_match" => first.map(|l| {
            let mut parts = l.splitn(3, ':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some(n), Some(text)) if n.parse::<usize>().is_ok() => text.trim().to_string(),
                _ => l.trim().to_string(),
            }
        }),
        "count" => {
            first.and_then(|l| l.split_whitespace().find_map(|w| w.parse::<usize>().ok())).map(|n| n.to_string())
        }
        "last_line" => output.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string()),
        other => {
            let pattern = other.strip_prefix("regex:")?;
            let regex = regex::Regex::new(pattern).ok()?;
            let captures = regex.captures(output)?;
            captures.get(1).or_else(|| captures.get(0)).map(|m| m.as_str().to_string())
        }
    }
}

const NUMERIC_ARGS: [&str; 3] = ["offset", "limit", "timeout_ms"];

/// A `{slot}` left in an argument after interpolation.
static UNRESOLVED_SLOT: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"\{[A-Za-z_][A-Za-z0-9_]*\}").expect("valid regex"));

fn interpolate_args(
    args: &Map<String, Value>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (key, value) in args {
        let value = match value {
            Value::String(text) => {
                let filled = interpolate(text, lookup);
                if let Some(unresolved) = UNRESOLVED_SLOT.find(&filled) {
                    if !text.contains("{{") {
                        return Err(format!("argument {key}: no value for {}", unresolved.as_str()));
                    }
                }
                match filled.parse::<u64>() {
                    Ok(number) if NUMERIC_ARGS.contains(&key.as_str()) => Value::from(number),
                    _ => Value::String(filled),
                }
            }
            other => other.clone(),
        };
        out.insert(key.clone(), value);
    }
    Ok(out)
}

/// Generate trace number `index` of a run. Templates are taken in turn so categories balance.
pub fn generate(templates: &[WorkflowTemplate], run_seed: u64, index: u64) -> Result<Trace, GenerateError> {
    generate_from(templates, run_seed, index, Pool::Training).map(|(trace, _)| trace)
}

/// `generate` drawing phrasings and slot values from `pool`; also returns the trace's checks
/// with their slots filled (what an evaluation episode of the same task must satisfy).
pub fn generate_from(
    templates: &[WorkflowTemplate],
    run_seed: u64,
    index: u64,
    pool: Pool,
) -> Result<(Trace, Vec<Check>), GenerateError> {
    let seed = trace_seed(run_seed, index);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let template = &templates[(index % templates.len() as u64) as usize];
    let scenario = template.scenarios.choose(&mut rng).expect("validated: scenarios exist");
    let fail =
        |reason: String| GenerateError { template: template.name.clone(), scenario: scenario.name.clone(), reason };
    let mut workspace = Workspace::generate(seed);

    let mut values: BTreeMap<String, String> = workspace.facts.clone();
    for (name, choices) in template.slots.iter().chain(scenario.slots.iter()) {
        let choice = *pool.of(choices).choose(&mut rng).expect("validated: slots have values");
        let filled = interpolate(choice, &|n| values.get(n).cloned());
        values.insert(name.clone(), filled);
    }
    let prompts: Vec<&String> = pool.of(template.prompts.iter().chain(scenario.prompts.iter()));
    let prompt_template = prompts.choose(&mut rng).expect("validated: prompts exist");
    let prompt = vary_prompt(&interpolate(prompt_template, &|n| values.get(n).cloned()), &mut rng);

    let exploration = Exploration::pick(&mut rng);
    let mut pool: Vec<Step> = template.explore.iter().cloned().chain(default_explore()).collect();
    pool.shuffle(&mut rng);
    let explore: Vec<Step> = pool.into_iter().take(exploration.extra_steps()).collect();
    let mut main_steps = scenario.steps.clone();
    // Adjacent steps of one group are independent: shuffle each run of them.
    let mut start = 0;
    while start < main_steps.len() {
        let group = main_steps[start].group.clone();
        let mut end = start + 1;
        while group.is_some() && end < main_steps.len() && main_steps[end].group == group {
            end += 1;
        }
        main_steps[start..end].shuffle(&mut rng);
        start = end;
    }
    // A focused agent opens with the task's own tool (the plan names it) and looks around once it
    // knows where to look; only an exhaustive exploration surveys the repository first.
    let opening = match exploration {
        Exploration::Exhaustive => 0,
        _ => main_steps.iter().take_while(|s| s.group.is_some() && s.group == main_steps[0].group).count().max(1),
    };
    let mut steps: Vec<Step> = main_steps[..opening].to_vec();
    steps.extend(explore);
    steps.extend(main_steps[opening..].iter().cloned());

    let mut messages = vec![Message::text(Role::System, system_prompt()), Message::text(Role::User, prompt.clone())];
    let mut outputs: Vec<ToolOutput> = Vec::new();
    let plan = if !scenario.plan.is_empty() && rng.random_bool(0.75) {
        Some(interpolate(scenario.plan.choose(&mut rng).expect("non-empty"), &|n| values.get(n).cloned()))
    } else {
        None
    };
    for (number, step) in steps.iter().enumerate() {
        let lookup = |n: &str| values.get(n).cloned();
        let arguments = interpolate_args(&step.args, &lookup)
            .map_err(|r| fail(format!("step {} ({}): {r}", number + 1, step.tool)))?;
        let mut said = step.say.choose(&mut rng).map(|s| interpolate(s, &lookup)).unwrap_or_default();
        if number == 0 {
            if let Some(plan) = &plan {
                said = if said.is_empty() { plan.clone() } else { format!("{plan} {said}") };
            }
        }
        let output = workspace.execute(&step.tool, &Value::Object(arguments.clone()));
        for (name, extractor) in &step.capture {
            match extract(extractor, &output.content) {
                Some(value) => {
                    values.insert(name.clone(), value);
                }
                None => {
                    return Err(fail(format!(
                        "step {} ({}): capture {name} found nothing in {:?}",
                        number + 1,
                        step.tool,
                        output.content
                    )))
                }
            }
        }
        let call_id = format!("call_{}", number + 1);
        messages.push(Message {
            role: Role::Assistant,
            content: (!said.is_empty()).then_some(said),
            tool_calls: vec![ToolCall {
                id: call_id.clone(),
                name: step.tool.clone(),
                arguments: Value::Object(arguments).to_string(),
            }],
            tool_call_id: None,
            name: None,
        });
        messages.push(Message {
            role: Role::Tool,
            content: Some(output.content.clone()),
            tool_calls: vec![],
            tool_call_id: Some(call_id),
            name: None,
        });
        outputs.push(output);
    }
    let lookup = |n: &str| values.get(n).cloned();
    let answer = interpolate(scenario.answers.choose(&mut rng).expect("validated: answers exist"), &lookup);
    messages.push(Message::text(Role::Assistant, answer.clone()));

    let filled: Vec<Check> = scenario.checks.iter().map(|check| fill_check(check, &lookup)).collect();
    let checks: Vec<OutcomeCheck> = filled
        .iter()
        .map(|check| {
            let (passed, detail) = check_holds(check, &answer, &mut workspace, &outputs);
            let mut extra = Map::new();
            extra.insert("detail".into(), Value::String(detail));
            OutcomeCheck { name: check.name().to_string(), passed, extra }
        })
        .collect();
    let status = if checks.iter().all(|c| c.passed) { OutcomeStatus::Success } else { OutcomeStatus::Failure };

    let mut metadata = Map::new();
    metadata.insert("template".into(), json!(template.name));
    metadata.insert("scenario".into(), json!(scenario.name));
    metadata.insert("seed".into(), json!(seed));
    metadata.insert("run_seed".into(), json!(run_seed));
    metadata.insert("index".into(), json!(index));
    metadata.insert("workspace_seed".into(), json!(workspace.seed));
    metadata.insert("exploration".into(), json!(exploration.as_str()));
    metadata.insert("cwd".into(), json!(workspace.root));
    metadata.insert("session_id".into(), Value::Null);

    let trace = Trace::new(TraceDraft {
        // The same run seed and index always give the same id, as they give the same trace.
        id: Some(format!("tr_syn_{seed:016x}")),
        source: Some(Source::Synthetic),
        category: Some(template.category().to_string()),
        prompt: Some(prompt),
        messages,
        tools: default_tools(),
        outcome: Some(Outcome { status, checks }),
        metadata,
        split: None,
        created_at: None,
    })
    .map_err(|e| fail(format!("the generated trace is invalid: {e}")))?;
    Ok((trace, filled))
}

/// Replay a generated trace's tool calls against a fresh workspace from its seed; returns the
/// results in order (used by tests, RL rewards and evaluation).
pub fn replay(trace: &Trace) -> Option<Vec<ToolOutput>> {
    let seed = trace.metadata.get("workspace_seed")?.as_u64()?;
    let mut workspace = Workspace::generate(seed);
    Some(trace.tool_calls().map(|call| workspace.execute(&call.name, &call.arguments_value())).collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::bootstrap::workflows::builtin;

    #[test]
    fn traces_are_true_reproducible_and_mostly_successful() {
        let templates = builtin();
        let mut failures = Vec::new();
        let mut prompts = BTreeSet::new();
        let mut successes = 0;
        let n = 400;
        for index in 0..n {
            let trace = match generate(&templates, 7, index) {
                Ok(trace) => trace,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            prompts.insert(trace.prompt.clone());
            if trace.outcome.status == OutcomeStatus::Success {
                successes += 1;
            } else {
                failures.push(format!("{} failed checks: {:?}", trace.category, trace.outcome.checks));
            }
            let again = generate(&templates, 7, index).unwrap();
            assert_eq!(again.content_hash, trace.content_hash, "same seed, same trace");
            let replayed = replay(&trace).unwrap();
            let recorded: Vec<&str> =
                trace.messages.iter().filter(|m| m.role == Role::Tool).map(|m| m.content.as_deref().unwrap()).collect();
            let replayed: Vec<&str> = replayed.iter().map(|o| o.content.as_str()).collect();
            assert_eq!(recorded, replayed, "replay of {} reproduces the results", trace.category);
        }
        assert!(failures.is_empty(), "{} problems, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);
        assert_eq!(successes, n);
        assert!(prompts.len() as u64 > n * 3 / 4, "{} distinct prompts of {n}", prompts.len());
    }
}
