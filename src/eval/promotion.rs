//! Champion promotion: a candidate model replaces the champion only when its primary metric
//! (executed success by default) beats the champion's on the same suites by the rule's margin
//! and its argument validity is not lower. Every decision — promoted or kept, by the rule or
//! by hand (`models promote`) — is recorded with the numbers it compared; serving's champion
//! follows it.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::metrics::Summary;
use crate::store::{Db, StoreError};

/// The metrics a rule can promote on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Success,
    FirstTool,
    ArgumentsValid,
    SequenceExact,
}

impl Metric {
    pub fn parse(text: &str) -> Option<Metric> {
        match text {
            "success" => Some(Metric::Success),
            "first_tool" => Some(Metric::FirstTool),
            "arguments_valid" => Some(Metric::ArgumentsValid),
            "sequence_exact" => Some(Metric::SequenceExact),
            _ => None,
        }
    }

    pub fn of(self, summary: &Summary) -> f64 {
        match self {
            Metric::Success => summary.success.rate,
            Metric::FirstTool => summary.first_tool.rate,
            Metric::ArgumentsValid => summary.arguments_valid.rate,
            Metric::SequenceExact => summary.sequence_exact.rate,
        }
    }
}

/// When a candidate replaces the champion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rule {
    pub metric: Metric,
    /// How much higher (absolute, 0–1) the candidate's metric must be.
    pub margin: f64,
    pub suites: Vec<String>,
}

impl Default for Rule {
    fn default() -> Self {
        Rule { metric: Metric::Success, margin: 0.02, suites: vec![super::suite::HELDOUT.to_string()] }
    }
}

/// The outcome of applying a rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    pub model_id: String,
    pub promoted: bool,
    pub reason: String,
    pub champion: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error("no model with id {0:?}")]
    UnknownModel(String),
    #[error("model {model} has no finished eval on {suites}: run `understudy eval --model {model}` first")]
    NotEvaluated { model: String, suites: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn summary_of(value: &serde_json::Value) -> Option<Summary> {
    serde_json::from_value(value.get("overall")?.clone()).ok()
}

/// Apply `rule` to `model_id` against the current champion, record the decision, and promote
/// when the rule says so.
pub fn apply(db: &mut Db, model_id: &str, rule: &Rule) -> Result<Decision, PromotionError> {
    if db.get_model(model_id)?.is_none() {
        return Err(PromotionError::UnknownModel(model_id.to_string()));
    }
    let not_evaluated =
        |model: &str| PromotionError::NotEvaluated { model: model.to_string(), suites: rule.suites.join(", ") };
    let candidate_run = db.latest_eval_of(model_id, &rule.suites)?.ok_or_else(|| not_evaluated(model_id))?;
    let candidate = candidate_run.summary.as_ref().and_then(summary_of).ok_or_else(|| not_evaluated(model_id))?;
    let champion = db.list_models()?.into_iter().find(|m| m.is_champion);
    let metric = rule.metric;
    let (promoted, reason, compared) = match &champion {
        Some(champion) if champion.id == model_id => (false, "already the champion".to_string(), json!(null)),
        None => (true, format!("no champion yet; {:?} {:.3}", metric, metric.of(&candidate)), json!(null)),
        Some(champion) => match db.latest_eval_of(&champion.id, &rule.suites)?.and_then(|r| {
            let summary = r.summary.as_ref().and_then(summary_of)?;
            Some((r.id, summary))
        }) {
            None => (true, format!("the champion {} has no eval on these suites", champion.id), json!(null)),
            Some((champion_run, best)) => {
                let (new, old) = (metric.of(&candidate), metric.of(&best));
                let validity_kept = candidate.arguments_valid.rate >= best.arguments_valid.rate;
                let beats = new >= old + rule.margin;
                let reason = match (beats, validity_kept) {
                    (true, true) => {
                        format!("{metric:?} {new:.3} beats the champion's {old:.3} by at least {:.3}", rule.margin)
                    }
                    (false, _) => {
                        format!("{metric:?} {new:.3} does not beat the champion's {old:.3} by {:.3}", rule.margin)
                    }
                    (true, false) => format!(
                        "argument validity {:.3} is below the champion's {:.3}",
                        candidate.arguments_valid.rate, best.arguments_valid.rate
                    ),
                };
                (
                    beats && validity_kept,
                    reason,
                    json!({"champion_run": champion_run, "champion": old, "candidate": new}),
                )
            }
        },
    };
    let record = json!({"rule": rule, "candidate_run": candidate_run.id, "compared": compared});
    if champion.as_ref().is_none_or(|c| c.id != model_id) {
        db.record_promotion(model_id, promoted, &reason, &record)?;
    }
    Ok(Decision { model_id: model_id.to_string(), promoted, reason, champion: champion.map(|c| c.id) })
}

/// Make `model_id` the champion by hand; recorded as a manual decision.
pub fn promote_by_hand(db: &mut Db, model_id: &str) -> Result<Decision, PromotionError> {
    if db.get_model(model_id)?.is_none() {
        return Err(PromotionError::UnknownModel(model_id.to_string()));
    }
    let champion = db.list_models()?.into_iter().find(|m| m.is_champion).map(|m| m.id);
    let reason = "promoted by hand (models promote)".to_string();
    db.record_promotion(model_id, true, &reason, &json!({"manual": true}))?;
    Ok(Decision { model_id: model_id.to_string(), promoted: true, reason, champion })
}
