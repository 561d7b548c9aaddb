//! `understudy models list [--json]`, `understudy models promote ID [--rule]` and `understudy
//! models promotions`: the trained models with the champion marked, champion decisions by the
//! promotion rule or by hand, and their history.

use std::process::ExitCode;

use clap::Subcommand;

use super::print_json;
use crate::config::Config;
use crate::eval::promotion::{self, Metric, Rule};
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Trained models, newest first; the champion is marked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Make a model the champion: by hand, or (--rule) only if it beats the champion's eval.
    Promote {
        id: String,
        /// Apply the promotion rule instead of promoting by hand.
        #[arg(long)]
        rule: bool,
        /// The rule's primary metric: success, first_tool, arguments_valid or sequence_exact.
        #[arg(long, default_value = "success")]
        metric: String,
        /// How much higher (0–1) the candidate's metric must be.
        #[arg(long, default_value_t = 0.02)]
        margin: f64,
        /// The suites both evals must have run (repeatable).
        #[arg(long = "suite", default_values_t = vec![crate::eval::suite::HELDOUT.to_string()])]
        suites: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Champion decisions, newest first.
    Promotions {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(config: &Config, command: ModelsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let mut db = store.connect()?;
    match command {
        ModelsCommand::List { json } => {
            let models = db.list_models()?;
            if json {
                print_json(&models)?;
            } else {
                for model in models {
                    let mark = if model.is_champion { "champion" } else { "" };
                    println!("{}  {:<32} {:<8} {}", model.id, model.name, mark, model.created_at);
                }
            }
        }
        ModelsCommand::Promote { id, rule, metric, margin, suites, json } => {
            let decision = if rule {
                let metric = Metric::parse(&metric).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--metric {metric}: expected success, first_tool, arguments_valid or sequence_exact"
                    )
                })?;
                anyhow::ensure!((0.0..1.0).contains(&margin), "--margin {margin}: expected 0 to 1");
                promotion::apply(&mut db, &id, &Rule { metric, margin, suites })?
            } else {
                promotion::promote_by_hand(&mut db, &id)?
            };
            if json {
                print_json(&decision)?;
            } else {
                let verdict = if decision.promoted { "promoted" } else { "kept the champion" };
                println!("{verdict}: {} ({})", decision.model_id, decision.reason);
            }
        }
        ModelsCommand::Promotions { json } => {
            let rows = db.list_promotions(100)?;
            if json {
                print_json(&rows)?;
            } else {
                for row in rows {
                    let verdict = if row.promoted { "promoted" } else { "kept    " };
                    println!("{}  {verdict}  {}  {}", row.created_at, row.model_id, row.reason);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
