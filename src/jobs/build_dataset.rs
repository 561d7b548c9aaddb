//! The `build_dataset` job: load the traces and preference pairs, run the dataset builder into
//! `artifacts/datasets/<id>/`, and record the dataset. A build is all or nothing (it writes a
//! staging directory and renames it), so a resumed job simply builds again.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{JobContext, JobError};
use crate::dataset::{self, BuildError, DatasetConfig, Stage};
use crate::store::TraceFilter;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildParams {
    pub config: DatasetConfig,
    /// `artifacts/datasets`, resolved by the caller from its Config.
    pub datasets_dir: PathBuf,
}

/// What a build reports (`build-dataset --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetBuilt {
    pub id: String,
    pub dir: PathBuf,
    pub counts: dataset::SplitCounts,
    pub dropped: usize,
    pub truncated: usize,
    /// File name → its path.
    pub files: std::collections::BTreeMap<String, PathBuf>,
}

/// The dataset id a job builds: derived from the job id, so a resumed job keeps it.
pub fn dataset_id(job_id: &str) -> String {
    format!("ds_{}", job_id.trim_start_matches("job_"))
}

pub fn run(context: &mut JobContext<'_>, params: &BuildParams) -> Result<DatasetBuilt, JobError> {
    let id = dataset_id(&context.job().id);
    let out_dir = params.datasets_dir.join(&id);
    if out_dir.exists() {
        // A previous run of this job finished writing but not recording; start clean.
        std::fs::remove_dir_all(&out_dir)
            .map_err(|e| JobError::Failed(format!("cannot clear {}: {e}", out_dir.display())))?;
    }
    std::fs::create_dir_all(&params.datasets_dir)
        .map_err(|e| JobError::Failed(format!("cannot create {}: {e}", params.datasets_dir.display())))?;
    context.log(
        "info",
        &format!("building dataset {} ({}) for model {}", id, params.config.name, params.config.model.label()),
    )?;
    let mut traces = Vec::new();
    context.db().for_each_trace(&TraceFilter::default(), |trace| {
        traces.push(trace);
        Ok(())
    })?;
    let pairs: Vec<_> = context.db().list_pairs(i64::MAX, 0)?.into_iter().map(|stored| stored.pair).collect();
    context.log("info", &format!("{} traces and {} preference pairs in the store", traces.len(), pairs.len()))?;

    let mut failure: Option<JobError> = None;
    let report = {
        let context_cell = std::cell::RefCell::new(&mut *context);
        let mut progress = |stage: Stage, done: usize, total: usize| -> Result<(), BuildError> {
            let mut context = context_cell.borrow_mut();
            let message = format!("{} {done}/{total}", stage.label());
            let weight = match stage {
                Stage::Render => 0,
                Stage::Tokenizer => 30,
                Stage::Tokenize => 40,
                Stage::Write => 90,
            };
            let share = if total == 0 { 0 } else { done * 10 / total.max(1) };
            if let Err(e) = context.progress((weight + share.min(10)) as u64, Some(100), &message, false) {
                failure = Some(e);
                return Err(BuildError::Cancelled);
            }
            if let Err(e) = context.check_cancelled() {
                failure = Some(e);
                return Err(BuildError::Cancelled);
            }
            Ok(())
        };
        dataset::build(&params.config, traces, pairs, &out_dir, &mut progress)
    };
    let report = match report {
        Ok(report) => report,
        Err(BuildError::Cancelled) => return Err(failure.unwrap_or(JobError::Cancelled)),
        Err(other) => return Err(JobError::Failed(other.to_string())),
    };
    let dir = out_dir.display().to_string();
    let files = report.files.keys().map(|name| (name.clone(), out_dir.join(name))).collect();
    let stats = serde_json::to_value(&report.stats).expect("stats serialise");
    let mut stored_stats = stats.clone();
    stored_stats["sha256"] = json!(report.files);
    let config = serde_json::to_value(&params.config).expect("config serialises");
    context.db().insert_dataset(&id, &params.config.name, &config, &stored_stats, &dir)?;
    context.progress(100, Some(100), "done", true)?;
    context.log(
        "info",
        &format!(
            "dataset {id}: {} train / {} val / {} test examples, {} truncated, {} dropped, mask coverage {:.1}%",
            report.counts.train,
            report.counts.val,
            report.counts.test,
            report.truncated,
            report.dropped,
            report.stats.mask_coverage * 100.0
        ),
    )?;
    Ok(DatasetBuilt {
        id,
        dir: out_dir,
        counts: report.counts,
        dropped: report.dropped,
        truncated: report.truncated,
        files,
    })
}
