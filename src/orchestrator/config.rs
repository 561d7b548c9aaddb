//! The orchestrator's stored configuration: when a cycle starts, what it trains and for how
//! long, how it evaluates and promotes, and whether it deploys. One JSON document in the
//! `settings` table, edited by `orchestrator config`, the Orchestrator page and
//! `PUT /api/orchestrator/config`; every change is validated field by field first.

use serde::{Deserialize, Serialize};

use crate::eval::promotion::{Metric, Rule};
use crate::jobs::requests::{FieldError, RequestError};
use crate::store::{Db, StoreError};

/// The settings key the configuration is stored under.
pub const SETTINGS_KEY: &str = "orchestrator";

/// The model name auto-deploy registers with Ollama (the seed's name).
pub const DEFAULT_MODEL_NAME: &str = "cc-claude-agent";

/// What a cycle does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct OrchestratorConfig {
    /// New traces that start the first cycle.
    pub min_traces: i64,
    /// New traces since the last successful cycle that start the next one.
    pub traces_per_cycle: i64,
    /// Every k-th cycle adds an RL phase after SFT.
    pub rl_every: u32,
    /// `grpo`, `ppo`, `dpo` or `none`.
    pub rl_phase: String,
    /// What the first cycle trains from: `tiny`, an HF directory or a GGUF file. Later cycles
    /// warm-start from the champion.
    pub base_model: String,
    /// SFT optimizer steps per cycle.
    pub max_steps: u64,
    /// SFT also stops after this many minutes of training, whichever comes first.
    pub max_minutes: Option<f64>,
    pub batch_size: usize,
    /// Tokens per training example; longer examples are cut at a turn boundary.
    pub max_seq_len: usize,
    /// RL budget per cycle: GRPO/DPO steps; PPO runs `rl_steps` × 4 episodes.
    pub rl_steps: u64,
    /// The most tokens per sampled reply in RL rollouts.
    pub rl_max_tokens: usize,
    /// The fixed suite every candidate and the champion are measured on.
    pub eval_suite: String,
    /// Only the suite's first N cases (the same N for every cycle).
    pub eval_limit: Option<usize>,
    pub eval_max_tokens: usize,
    /// `success`, `first_tool`, `arguments_valid` or `sequence_exact`.
    pub promotion_metric: String,
    /// How much higher (absolute, 0–1) the candidate's metric must be than the champion's.
    pub promotion_margin: f64,
    /// GGUF quants the champion is exported as.
    pub export_quants: Vec<String>,
    /// Register each new champion with Ollama.
    pub auto_deploy: bool,
    /// Ollama's address (default: `OLLAMA_HOST`, else Ollama's own default).
    pub ollama_host: Option<String>,
    /// The export and Ollama model name.
    pub model_name: String,
    /// Seconds between checks for new traces.
    pub interval_seconds: u64,
    /// `serve` runs the orchestrator inside the server.
    pub run_in_serve: bool,
    pub seed: u64,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            min_traces: 50,
            traces_per_cycle: 50,
            rl_every: 2,
            rl_phase: "grpo".into(),
            base_model: "tiny".into(),
            max_steps: 200,
            max_minutes: None,
            batch_size: 2,
            max_seq_len: 2048,
            rl_steps: 20,
            rl_max_tokens: 96,
            eval_suite: crate::eval::suite::HELDOUT.into(),
            eval_limit: None,
            eval_max_tokens: 256,
            promotion_metric: "success".into(),
            promotion_margin: 0.02,
            export_quants: vec!["q8_0".into()],
            auto_deploy: false,
            ollama_host: None,
            model_name: DEFAULT_MODEL_NAME.into(),
            interval_seconds: 60,
            run_in_serve: false,
            seed: 42,
        }
    }
}

/// The RL phases a cycle can add.
pub const RL_PHASES: [&str; 4] = ["grpo", "ppo", "dpo", "none"];

impl OrchestratorConfig {
    /// Every rule a configuration must keep, each broken one named by its field. `db` checks
    /// the suite exists.
    pub fn validate(&self, db: &Db) -> Result<(), RequestError> {
        let mut errors = Vec::new();
        let mut bad = |field: &'static str, message: String, value: Option<String>| {
            errors.push(FieldError { field, message, value });
        };
        if self.min_traces < 1 {
            bad("min_traces", "must be at least 1".into(), Some(self.min_traces.to_string()));
        }
        if self.traces_per_cycle < 1 {
            bad("traces_per_cycle", "must be at least 1".into(), Some(self.traces_per_cycle.to_string()));
        }
        if self.rl_every < 1 {
            bad("rl_every", "must be at least 1 (every k-th cycle runs RL)".into(), Some(self.rl_every.to_string()));
        }
        if !RL_PHASES.contains(&self.rl_phase.as_str()) {
            bad("rl_phase", format!("unknown phase; one of {}", RL_PHASES.join(", ")), Some(self.rl_phase.clone()));
        }
        if self.base_model.trim().is_empty() {
            bad("base_model", "must name tiny, an HF directory or a GGUF file".into(), None);
        }
        if self.max_steps < 1 {
            bad("max_steps", "must be at least 1".into(), Some(self.max_steps.to_string()));
        }
        if self.max_minutes.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
            bad("max_minutes", "must be a positive number of minutes (or empty: no limit)".into(), None);
        }
        if self.batch_size < 1 {
            bad("batch_size", "must be at least 1".into(), Some(self.batch_size.to_string()));
        }
        if !(64..=32768).contains(&self.max_seq_len) {
            bad("max_seq_len", "must be between 64 and 32768".into(), Some(self.max_seq_len.to_string()));
        }
        if self.rl_steps < 1 {
            bad("rl_steps", "must be at least 1".into(), Some(self.rl_steps.to_string()));
        }
        if self.rl_max_tokens < 1 || self.eval_max_tokens < 1 {
            bad("rl_max_tokens", "token budgets must be at least 1".into(), None);
        }
        if self.eval_limit == Some(0) {
            bad("eval_limit", "must be at least 1 when given".into(), Some("0".into()));
        }
        if Metric::parse(&self.promotion_metric).is_none() {
            bad(
                "promotion_metric",
                "one of success, first_tool, arguments_valid, sequence_exact".into(),
                Some(self.promotion_metric.clone()),
            );
        }
        if !(0.0..=1.0).contains(&self.promotion_margin) {
            bad("promotion_margin", "must be between 0 and 1".into(), Some(self.promotion_margin.to_string()));
        }
        if let Err(RequestError::Invalid(fields)) = crate::jobs::requests::parse_quants(&self.export_quants) {
            for field in fields {
                bad("export_quants", field.message, field.value);
            }
        }
        if !valid_model_name(&self.model_name) {
            bad(
                "model_name",
                "letters, digits, '-', '_', '.' and ':' only, starting with a letter or digit".into(),
                Some(self.model_name.clone()),
            );
        }
        if self.interval_seconds < 1 {
            bad("interval_seconds", "must be at least 1".into(), Some(self.interval_seconds.to_string()));
        }
        if let Err(reason) = suite_exists(db, &self.eval_suite) {
            bad("eval_suite", reason, Some(self.eval_suite.clone()));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(RequestError::Invalid(errors))
        }
    }

    /// The promotion rule this configuration asks for.
    pub fn rule(&self) -> Rule {
        Rule {
            metric: Metric::parse(&self.promotion_metric).unwrap_or(Metric::Success),
            margin: self.promotion_margin,
            suites: vec![self.eval_suite.clone()],
        }
    }

    /// Whether cycle `number` (from 1) runs an RL phase.
    pub fn runs_rl(&self, number: i64) -> bool {
        self.rl_phase != "none" && self.rl_every >= 1 && number % i64::from(self.rl_every) == 0
    }
}

/// Whether `name` is a suite `eval` can run: built in, a dataset's test split, or imported.
fn suite_exists(db: &Db, name: &str) -> Result<(), String> {
    use crate::eval::suite;
    if name == suite::HELDOUT || name == suite::TRAINING {
        return Ok(());
    }
    if let Some(id) = name.strip_prefix(suite::DATASET_PREFIX) {
        return match db.get_dataset(id) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("no dataset with id {id:?}")),
            Err(e) => Err(e.to_string()),
        };
    }
    match db.eval_suite(name) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("unknown suite (built in: heldout, training; import one with `eval suites import`)".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn valid_model_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 128
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// The stored configuration, or the defaults when none is stored.
pub fn load(db: &Db) -> Result<OrchestratorConfig, StoreError> {
    match db.get_setting(SETTINGS_KEY)? {
        Some(value) => serde_json::from_value(value)
            .map_err(|e| StoreError::Corrupt { id: SETTINGS_KEY.into(), reason: e.to_string() }),
        None => Ok(OrchestratorConfig::default()),
    }
}

/// Validate and store `config`; nothing is stored when a field is wrong.
pub fn save(db: &Db, config: &OrchestratorConfig) -> Result<(), RequestError> {
    config.validate(db)?;
    db.put_setting(SETTINGS_KEY, &serde_json::to_value(config).expect("the configuration serialises"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rl_runs_on_every_kth_cycle_unless_off() {
        let config = OrchestratorConfig { rl_every: 2, ..OrchestratorConfig::default() };
        assert_eq!((1..=5).map(|n| config.runs_rl(n)).collect::<Vec<_>>(), [false, true, false, true, false]);
        let off = OrchestratorConfig { rl_phase: "none".into(), ..config };
        assert!(!(1..=5).any(|n| off.runs_rl(n)));
    }

    #[test]
    fn model_names_are_what_ollama_takes() {
        assert!(valid_model_name("cc-claude-agent"));
        assert!(valid_model_name("agent:v2"));
        assert!(!valid_model_name("-agent"));
        assert!(!valid_model_name("my agent"));
        assert!(!valid_model_name(""));
    }
}
