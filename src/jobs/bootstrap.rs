//! The `bootstrap` job: generate N executable synthetic traces from the active workflow
//! templates and store them (deduped by content hash), in batches that commit together with the
//! checkpoint (next index and running statistics), so a resumed run produces the same traces.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{JobContext, JobError};
use crate::bootstrap::{active_templates, generator};
use crate::store::InsertOutcome;

const BATCH: u64 = 250;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootstrapParams {
    pub traces: u64,
    pub seed: u64,
    /// Only these templates (by name); all active templates when empty.
    #[serde(default)]
    pub templates: Vec<String>,
}

/// Statistics like the seed's closing block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BootstrapReport {
    /// New synthetic traces stored.
    pub synthetic: u64,
    /// Preference pairs imported alongside (filled in by the caller that imports them).
    pub imported: u64,
    pub duplicates: u64,
    /// Traces a template could not produce (reported in the job log).
    pub failed: u64,
    /// Traces in the store after the run.
    pub total_traces: u64,
    pub by_category: BTreeMap<String, u64>,
    pub by_tool: BTreeMap<String, u64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    next_index: u64,
    report: BootstrapReport,
}

pub fn run(context: &mut JobContext<'_>, params: &BootstrapParams) -> Result<BootstrapReport, JobError> {
    let started = Instant::now();
    let mut templates: Vec<_> = active_templates(context.db())?.into_iter().map(|(t, _)| t).collect();
    if !params.templates.is_empty() {
        let unknown: Vec<&String> =
            params.templates.iter().filter(|n| !templates.iter().any(|t| &t.name == *n)).collect();
        if !unknown.is_empty() {
            return Err(JobError::Failed(format!("unknown template(s): {unknown:?}")));
        }
        templates.retain(|t| params.templates.contains(&t.name));
    }
    if templates.is_empty() {
        return Err(JobError::Failed("no workflow templates to generate from".into()));
    }
    let mut checkpoint: Checkpoint =
        context.job().checkpoint.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default();
    let earlier_seconds = checkpoint.report.seconds;
    context.log(
        "info",
        &format!("generating {} traces from {} templates, seed {}", params.traces, templates.len(), params.seed),
    )?;
    let job_id = context.job().id.clone();
    while checkpoint.next_index < params.traces {
        let end = (checkpoint.next_index + BATCH).min(params.traces);
        let mut batch = Vec::new();
        let mut updated = checkpoint.clone();
        for index in checkpoint.next_index..end {
            match generator::generate(&templates, params.seed, index) {
                Ok(trace) => batch.push(trace),
                Err(e) => {
                    updated.report.failed += 1;
                    context.log("warn", &format!("trace {index}: {e}"))?;
                }
            }
        }
        updated.next_index = end;
        updated.report.seconds = earlier_seconds + started.elapsed().as_secs_f64();
        context.db().insert_traces(&batch, |outcomes| {
            for (trace, outcome) in batch.iter().zip(outcomes) {
                *updated.report.by_category.entry(trace.category.clone()).or_default() += 1;
                for call in trace.tool_calls() {
                    *updated.report.by_tool.entry(call.name.clone()).or_default() += 1;
                }
                match outcome {
                    InsertOutcome::Inserted => updated.report.synthetic += 1,
                    InsertOutcome::Duplicate | InsertOutcome::IdConflict => updated.report.duplicates += 1,
                }
            }
            Some((job_id.to_string(), serde_json::to_string(&updated).expect("checkpoint serialises")))
        })?;
        checkpoint = updated;
        let message = format!("Generated {}/{} traces...", checkpoint.next_index, params.traces);
        context.progress(checkpoint.next_index, Some(params.traces), &message, false)?;
        context.check_cancelled()?;
    }
    let mut report = checkpoint.report;
    report.total_traces = context.db().count_traces(&Default::default())? as u64;
    report.seconds = earlier_seconds + started.elapsed().as_secs_f64();
    context.progress(params.traces, Some(params.traces), &format!("Generated {0}/{0} traces", params.traces), true)?;
    context.metric(params.traces as i64, "traces_per_second", params.traces as f64 / report.seconds.max(1e-9))?;
    context.log(
        "info",
        &format!(
            "done: {} new, {} duplicates, {} failed in {:.2}s",
            report.synthetic, report.duplicates, report.failed, report.seconds
        ),
    )?;
    Ok(report)
}
