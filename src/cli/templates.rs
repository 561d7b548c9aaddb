//! `understudy templates list|export`: the active workflow templates (built-in plus the user's).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::print_json;
use crate::bootstrap::active_templates;
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// The active templates with their origin and size.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Write the active templates as a JSON array (a starting point for --templates).
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(config: &Config, command: TemplatesCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let templates = active_templates(&store.connect()?)?;
    match command {
        TemplatesCommand::List { json } => {
            if json {
                let rows: Vec<serde_json::Value> = templates
                    .iter()
                    .map(|(t, origin)| {
                        serde_json::json!({
                            "name": t.name, "category": t.category(), "origin": origin,
                            "scenarios": t.scenarios.len(),
                            "prompts": t.prompts.len() + t.scenarios.iter().map(|s| s.prompts.len()).sum::<usize>(),
                            "description": t.description,
                        })
                    })
                    .collect();
                print_json(&rows)?;
            } else {
                for (template, origin) in &templates {
                    let prompts =
                        template.prompts.len() + template.scenarios.iter().map(|s| s.prompts.len()).sum::<usize>();
                    println!(
                        "{:<20} {:<8} {:>2} scenarios {:>3} prompts  {}",
                        template.name,
                        format!("{origin:?}").to_lowercase(),
                        template.scenarios.len(),
                        prompts,
                        template.description
                    );
                }
            }
        }
        TemplatesCommand::Export { out } => {
            let only: Vec<_> = templates.into_iter().map(|(t, _)| t).collect();
            let text = serde_json::to_string_pretty(&only)? + "\n";
            match out {
                Some(path) => {
                    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {} templates to {}", only.len(), path.display());
                }
                None => print!("{text}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
