//! `understudy models list [--json]`, `understudy models promote ID [--rule]` and `understudy
//! models promotions`: the trained models with the champion marked, champion decisions by the
//! promotion rule or by hand, and their history; `understudy models import PATH [--base BASE]`:
//! a checkpoint trained elsewhere (a handoff's output) becomes a stored model with its lineage.

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
    /// Import a model trained elsewhere: a Hugging Face checkpoint directory (single or sharded
    /// safetensors) or a PEFT LoRA adapter directory (merged onto its base).
    Import {
        path: std::path::PathBuf,
        /// The base model directory of a PEFT adapter (default: the adapter's
        /// base_model_name_or_path when it is a local directory).
        #[arg(long)]
        base: Option<std::path::PathBuf>,
        /// The stored model's name (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
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
        ModelsCommand::Import { path, base, name, json } => {
            let imported = import(config, &mut db, &path, base.as_deref(), name)?;
            if json {
                print_json(&imported)?;
            } else {
                println!(
                    "imported {}  {}",
                    imported["id"].as_str().unwrap_or_default(),
                    imported["path"].as_str().unwrap_or_default()
                );
                println!("  {}", imported["summary"].as_str().unwrap_or_default());
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

/// Import the checkpoint into `artifacts/models/<ulid>/`, then register it; a failure at either
/// step leaves nothing behind.
fn import(
    config: &Config,
    db: &mut crate::store::Db,
    path: &std::path::Path,
    base: Option<&std::path::Path>,
    name: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    use crate::model::import::{self as model_import, ImportedKind};
    let out_dir = config.artifacts_dir().join("models").join(ulid::Ulid::new().to_string().to_lowercase());
    let imported = model_import::import(path, base, &out_dir)?;
    let lineage = imported.lineage.clone();
    // A handoff's dataset must be this store's, with the tokenizer and template the model came
    // back with.
    let dataset_id = lineage.as_ref().and_then(|l| l["dataset"].as_str()).map(str::to_string);
    let checked = (|| -> anyhow::Result<Option<String>> {
        let Some(dataset_id) = dataset_id else { return Ok(None) };
        let Some(dataset) = db.get_dataset(&dataset_id)? else {
            eprintln!("note: the handoff's dataset {dataset_id} is not in this data dir; the lineage keeps its id");
            return Ok(None);
        };
        let dataset_dir = std::path::Path::new(&dataset.path);
        let same = |name: &str| -> anyhow::Result<bool> {
            Ok(std::fs::read(dataset_dir.join(name))? == std::fs::read(out_dir.join(name))?)
        };
        anyhow::ensure!(
            same("chat_template.jinja")?,
            "{}: the chat template differs from dataset {dataset_id}'s: the model was trained on other text than the dataset's",
            path.display()
        );
        let theirs =
            tokenizers::Tokenizer::from_file(out_dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let ours =
            tokenizers::Tokenizer::from_file(dataset_dir.join("tokenizer.json")).map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            theirs.get_vocab(true) == ours.get_vocab(true),
            "{}: tokenizer.json differs from dataset {dataset_id}'s vocabulary",
            path.display()
        );
        Ok(Some(dataset_id))
    })();
    let dataset_id = match checked {
        Ok(id) => id,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&out_dir);
            return Err(error);
        }
    };
    let base_model = match &imported.kind {
        ImportedKind::PeftLora { base, .. } => base.clone(),
        ImportedKind::Full => lineage
            .as_ref()
            .and_then(|l| l["base"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| path.display().to_string()),
    };
    let name = name.unwrap_or_else(|| {
        path.file_name().map(|n| format!("imported-{}", n.to_string_lossy())).unwrap_or_else(|| "imported".into())
    });
    let metrics = serde_json::json!({
        "imported": {"from": path.display().to_string(), "checkpoint": imported.kind, "handoff": lineage},
    });
    let registered = db.insert_model(&crate::store::NewModel {
        name: &name,
        base_model: &base_model,
        parent_id: None,
        dataset_id: dataset_id.as_deref(),
        run_id: None,
        path: &out_dir.display().to_string(),
        metrics: &metrics,
    });
    let id = match registered {
        Ok(id) => id,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&out_dir);
            return Err(error.into());
        }
    };
    let kind = match &imported.kind {
        ImportedKind::Full => "full weights".to_string(),
        ImportedKind::PeftLora { r, scale, merged, .. } => {
            format!("PEFT LoRA r {r} (scale {scale}) merged into {merged} projections")
        }
    };
    Ok(serde_json::json!({
        "id": id,
        "name": name,
        "path": out_dir.display().to_string(),
        "dataset_id": dataset_id,
        "base_model": base_model,
        "checkpoint": imported.kind,
        "tensors": imported.tensors,
        "parameters": imported.parameters,
        "lineage": imported.lineage,
        "summary": format!(
            "{kind}; {} layers, hidden {}, {} parameters{}",
            imported.config.num_hidden_layers,
            imported.config.hidden_size,
            imported.parameters,
            dataset_id.as_deref().map(|d| format!("; trained on dataset {d}")).unwrap_or_default()
        ),
    }))
}
