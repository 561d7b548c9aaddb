//! `understudy generate --model M --prompt TEXT [--tools] ...`: one reply from a trained model,
//! rendered with its chat template, with tool calls parsed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::print_json;
use crate::bootstrap::generator::system_prompt;
use crate::config::Config;
use crate::model::generate::{GenerateOptions, LoadedModel};
use crate::store::Store;
use crate::traces::tools::default_tools;
use crate::traces::{Message, Role};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model id (mdl_...), `latest`, a model directory or a GGUF file.
    #[arg(long, default_value = "latest")]
    pub model: String,
    #[arg(long)]
    pub prompt: String,
    /// Offer the default tools (Read, Write, Edit, Grep, Glob, Bash).
    #[arg(long)]
    pub tools: bool,
    /// With --tools: decode each tool call in the tools' grammar, as the /v1 endpoint does.
    #[arg(long)]
    pub tool_grammar: bool,
    /// The system prompt (default: the coding-agent prompt the training data uses).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

/// Resolve `--model` to a model directory.
pub fn model_dir(config: &Config, model: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(model);
    if path.join("config.json").exists() || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Ok(path);
    }
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    let row = if model == "latest" {
        db.list_models()?.into_iter().next().context("no trained model yet: run `understudy train` first")?
    } else {
        db.get_model(model)?.with_context(|| format!("--model {model}: no such model id or model directory"))?
    };
    Ok(PathBuf::from(row.path))
}

pub fn run(config: &Config, args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let dir = model_dir(config, &args.model)?;
    let model = LoadedModel::load_path(&dir, &crate::model::llama::device_for("cpu").map_err(anyhow::Error::msg)?)?;
    let system = args.system.clone().unwrap_or_else(system_prompt);
    let messages = vec![Message::text(Role::System, system), Message::text(Role::User, args.prompt.clone())];
    let tools = if args.tools { default_tools() } else { Vec::new() };
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        tool_grammar: args.tool_grammar,
    };
    let generation = model.generate(&messages, &tools, &options)?;
    if args.json {
        let tool_calls: Vec<serde_json::Value> = generation
            .parsed
            .tool_calls
            .iter()
            .map(|(name, arguments)| serde_json::json!({"name": name, "arguments": arguments}))
            .collect();
        print_json(&serde_json::json!({
            "text": generation.text,
            "tool_calls": tool_calls,
            "token_ids": generation.token_ids,
            "finish_reason": generation.finish_reason,
        }))?;
    } else {
        if let Some(content) = &generation.parsed.content {
            println!("{content}");
        }
        for (name, arguments) in &generation.parsed.tool_calls {
            println!("→ {name}({arguments})");
        }
        eprintln!("[{} tokens, finish: {}]", generation.token_ids.len(), generation.finish_reason);
    }
    Ok(ExitCode::SUCCESS)
}
