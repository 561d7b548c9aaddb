//! Choosing among a run's last checkpoints by behaviour: each one's greedy replies to held-out
//! prompts are scored by whether they hold a well-formed tool call. A tiny model's greedy
//! decoding can collapse into a loop at one checkpoint and be fine 50 steps earlier (measured
//! on quickstart: steps 300 and 350 gave 5/5 tool calls, step 400 0/5), so the quickstart keeps
//! the best of its last checkpoints, newest on ties, and says which it kept.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::model::generate::{GenerateOptions, LoadedModel};
use crate::traces::Message;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointScore {
    pub step: u64,
    pub dir: PathBuf,
    /// Prompts whose greedy reply held tool calls that are all well-formed (see `well_formed`)
    /// and nothing malformed.
    pub tool_calls: usize,
    pub prompts: usize,
}

/// A run's checkpoints, newest first.
fn checkpoints(run_dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(run_dir)?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let step = path.file_name()?.to_str()?.strip_prefix("checkpoint-")?.parse().ok()?;
            path.join("model.safetensors").exists().then_some((step, path))
        })
        .collect();
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(found)
}

/// Scores of the newest `last` checkpoints of a run (its `model/` directory supplies the config,
/// tokenizer and template), newest first.
pub fn score_checkpoints(
    run_dir: &Path,
    prompts: &[(Vec<Message>, Vec<Value>)],
    last: usize,
    max_tokens: usize,
) -> anyhow::Result<Vec<CheckpointScore>> {
    let options = GenerateOptions { max_tokens, ..GenerateOptions::default() };
    let mut scores = Vec::new();
    for (step, dir) in checkpoints(run_dir)?.into_iter().take(last) {
        let model = LoadedModel::load_with_weights(
            &run_dir.join("model"),
            &dir.join("model.safetensors"),
            &candle_core::Device::Cpu,
        )?;
        let mut tool_calls = 0;
        for (messages, tools) in prompts {
            let reply = model.generate(messages, tools, &options)?;
            let calls = &reply.parsed.tool_calls;
            if !calls.is_empty()
                && reply.parsed.malformed == 0
                && calls.iter().all(|(name, arguments)| well_formed(name, arguments, tools))
            {
                tool_calls += 1;
            }
        }
        scores.push(CheckpointScore { step, dir, tool_calls, prompts: prompts.len() });
    }
    Ok(scores)
}

/// A call names an offered tool and its arguments are an object with the tool's required keys.
pub fn well_formed(name: &str, arguments: &Value, tools: &[Value]) -> bool {
    let Some(tool) = tools.iter().map(|t| t.get("function").unwrap_or(t)).find(|t| t["name"] == name) else {
        return false;
    };
    let Some(arguments) = arguments.as_object() else { return false };
    tool["parameters"]["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .all(|key| arguments.contains_key(key))
}

/// The best score, the newest among equals.
pub fn best(scores: &[CheckpointScore]) -> Option<&CheckpointScore> {
    scores.iter().reduce(|best, next| if next.tool_calls > best.tool_calls { next } else { best })
}

/// Make a checkpoint's weights the run's model (written beside it, then renamed).
pub fn adopt(run_dir: &Path, checkpoint: &Path) -> std::io::Result<()> {
    let target = run_dir.join("model").join("model.safetensors");
    let staging = run_dir.join("model").join("model.safetensors.adopting");
    std::fs::copy(checkpoint.join("model.safetensors"), &staging)?;
    std::fs::rename(staging, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_well_formed_with_an_offered_tool_and_its_required_keys() {
        let tools = crate::traces::tools::default_tools();
        assert!(well_formed("Bash", &serde_json::json!({"command": "ls"}), &tools));
        assert!(!well_formed("Bash", &serde_json::json!({"file_path": "ls"}), &tools), "missing the required key");
        assert!(!well_formed("Shell", &serde_json::json!({"command": "ls"}), &tools), "not an offered tool");
        assert!(!well_formed("Bash", &serde_json::json!("ls"), &tools), "not an object");
    }

    #[test]
    fn the_best_checkpoint_is_the_newest_of_the_top_scores() {
        let score = |step, tool_calls| CheckpointScore { step, dir: PathBuf::new(), tool_calls, prompts: 6 };
        let scores = [score(400, 0), score(350, 6), score(300, 6), score(250, 2)];
        assert_eq!(best(&scores).unwrap().step, 350);
        assert_eq!(best(&[score(400, 3), score(350, 3)]).unwrap().step, 400);
    }
}
