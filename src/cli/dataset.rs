//! `understudy build-dataset ...` (a foreground job with a progress bar) and
//! `understudy datasets list|show ID`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::progress::TerminalProgress;
use super::{flag_error, print_json};
use crate::config::Config;
use crate::jobs::requests::{DatasetRequest, ModelScope};
use crate::jobs::{run_foreground, JobOutput, JobParams, JobRecord};
use crate::store::Store;
use crate::traces::Source;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// A name for the dataset.
    #[arg(long, default_value = "dataset")]
    pub name: String,
    /// `tiny` (trains its own tokenizer), a Hugging Face directory, or a .gguf file.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Only these sources (comma-separated): synthetic, claude_code, dpo_import, served, import.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = parse_source)]
    pub sources: Vec<Source>,
    /// Only these categories (comma-separated).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub categories: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub min_tool_calls: usize,
    /// Leave out traces whose outcome is failure.
    #[arg(long)]
    pub exclude_failed: bool,
    /// How many times each real (non-synthetic) training trace is repeated.
    #[arg(long, default_value_t = 1)]
    pub real_weight: u32,
    /// Add each training trace's opening (system prompt, task, first reply) this many times as an
    /// example of its own, alternately without and with the tool schemas: teaches a model trained
    /// from scratch to choose its first tool by the task.
    #[arg(long, default_value_t = 0)]
    pub openings: u32,
    #[arg(long, default_value_t = 0.05)]
    pub val_ratio: f64,
    #[arg(long, default_value_t = 0.05)]
    pub test_ratio: f64,
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

fn parse_source(text: &str) -> Result<Source, String> {
    Source::parse(text).ok_or_else(|| "expected synthetic, claude_code, dpo_import, served or import".into())
}

#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// Built datasets, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One dataset's statistics and files.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

impl BuildArgs {
    /// The flags as the request every surface builds.
    fn request(&self) -> DatasetRequest {
        DatasetRequest {
            name: self.name.clone(),
            model: self.model.clone(),
            sources: self.sources.iter().map(|s| s.as_str().to_string()).collect(),
            categories: self.categories.clone(),
            min_tool_calls: self.min_tool_calls,
            exclude_failed: self.exclude_failed,
            real_weight: self.real_weight,
            openings: self.openings,
            val_ratio: self.val_ratio,
            test_ratio: self.test_ratio,
            max_seq_len: self.max_seq_len,
            seed: self.seed,
        }
    }
}

pub fn build(config: &Config, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let params = args.request().resolve(config, &ModelScope::Anywhere).map_err(flag_error)?;
    let store = Store::open(config.data_dir())?;
    let bar = TerminalProgress::count("dataset");
    let finished = run_foreground(&store, &JobParams::BuildDataset(params), Some(&bar))?;
    bar.finish();
    report_build(&finished, args.json)
}

/// Print a dataset build's outcome; shared with `jobs resume`.
pub fn report_build(job: &JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    let JobOutput::BuildDataset(built) = job.output()? else { anyhow::bail!("job {} is not a dataset build", job.id) };
    if json {
        print_json(built)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("Dataset {}", built.id);
    println!("  directory   {}", built.dir.display());
    println!("  examples    train {}, val {}, test {}", built.counts.train, built.counts.val, built.counts.test);
    println!("  truncated   {}   dropped {}", built.truncated, built.dropped);
    println!("  details     understudy datasets show {}", built.id);
    Ok(ExitCode::SUCCESS)
}

pub fn run(config: &Config, command: DatasetsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    match command {
        DatasetsCommand::List { json } => {
            let rows = db.list_datasets()?;
            if json {
                print_json(&rows)?;
            } else {
                for row in rows {
                    let examples = &row.stats["examples"];
                    println!(
                        "{}  {:<20} train {:>5} val {:>4} test {:>4}  {}",
                        row.id, row.name, examples["train"], examples["val"], examples["test"], row.created_at
                    );
                }
            }
        }
        DatasetsCommand::Show { id, json } => {
            let row = db.get_dataset(&id)?.with_context(|| format!("no dataset with id {id:?}"))?;
            if json {
                print_json(&row)?;
                return Ok(ExitCode::SUCCESS);
            }
            let stats = &row.stats;
            println!("{}  {}  ({})", row.id, row.name, row.path);
            println!("model       {}", row.config["model"]);
            println!("template    {}   vocab {}", stats["template"].as_str().unwrap_or(""), stats["vocab_size"]);
            println!(
                "examples    train {} (weighted {}), val {}, test {}",
                stats["examples"]["train"],
                stats["weighted_train"],
                stats["examples"]["val"],
                stats["examples"]["test"]
            );
            println!(
                "pairs       train {}, val {}, test {}",
                stats["pairs"]["train"], stats["pairs"]["val"], stats["pairs"]["test"]
            );
            println!(
                "tokens      {} total, {} trained ({:.1}% mask coverage), mean {:.0}, max {}",
                stats["tokens_total"],
                stats["tokens_trained"],
                stats["mask_coverage"].as_f64().unwrap_or(0.0) * 100.0,
                stats["mean_tokens"].as_f64().unwrap_or(0.0),
                stats["max_tokens"]
            );
            println!("truncated   {}   dropped {}", stats["truncated"], stats["dropped"]);
            println!("length histogram:");
            for bin in stats["token_histogram"].as_array().into_iter().flatten() {
                let count = bin["count"].as_u64().unwrap_or(0);
                println!("  <= {:>6}  {:>6}  {}", bin["up_to"], count, "#".repeat((count as usize).min(60)));
            }
            for (label, key) in [("sources", "by_source"), ("categories", "by_category"), ("tools", "by_tool")] {
                let parts: Vec<String> =
                    stats[key].as_object().into_iter().flatten().map(|(k, v)| format!("{k} {v}")).collect();
                println!("{label:<11} {}", parts.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
