//! The one place where what a user asked for — CLI flags, a web form, an API body, the
//! pipeline — becomes a job's config: `*Request` types with one set of defaults and validation
//! rules, resolved against the store and the data dir into `JobParams`. Errors name the field as
//! the request spells it (`max_steps`); each surface renders it its own way (`--max-steps`, the
//! form field, the JSON envelope). Resolving may read files (a dataset's tokenizer, a model's
//! config), so front doors call it off the async workers.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::bootstrap::BootstrapParams;
use super::build_dataset::BuildParams;
use super::deploy::DeployParams;
use super::export::ExportParams;
use super::train::{Phase, TrainParams};
use super::JobParams;
use crate::config::Config;
use crate::dataset::{datasets_dir, DatasetConfig};
use crate::export::{ExportManifest, ExportSource, Quant};
use crate::model::llama::{LlamaConfig, LoraConfig};
use crate::model::source::ModelSource;
use crate::store::{Db, StoreError};
use crate::traces::Source;
use crate::train::sft::SftConfig;

/// Most traces one bootstrap request may generate.
pub const MAX_BOOTSTRAP_TRACES: u64 = 100_000;
/// Longest export name.
pub const MAX_EXPORT_NAME_LEN: usize = 128;

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field as the request (and the form, and the API body) names it: `max_steps`.
    pub field: &'static str,
    pub message: String,
    /// The value that was refused, when one value is to blame (a command line shows it).
    pub value: Option<String>,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a request cannot become a job.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// One or more fields are wrong; each is named.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The request names something that does not exist (a model or export id).
    #[error("{0}")]
    NotFound(String),
    /// The request is well-formed but the thing it names cannot take it now.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RequestError {
    fn field(field: &'static str, message: impl Into<String>) -> RequestError {
        RequestError::Invalid(vec![FieldError { field, message: message.into(), value: None }])
    }

    fn value(field: &'static str, value: &str, message: impl Into<String>) -> RequestError {
        RequestError::Invalid(vec![FieldError { field, message: message.into(), value: Some(value.to_string()) }])
    }
}

/// Collects field errors so a form can show all of them at once.
#[derive(Default)]
struct Fields(Vec<FieldError>);

impl Fields {
    fn bad(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(FieldError { field, message: message.into(), value: None });
    }

    fn check(&mut self, ok: bool, field: &'static str, message: &str) {
        if !ok {
            self.bad(field, message);
        }
    }

    /// A trainer config's own check, whose message starts with the field it names
    /// (`lr: must be ...`); a field not in `known` is reported as `fallback`.
    fn config(&mut self, checked: Result<(), String>, known: &[&'static str], fallback: &'static str) {
        if let Err(e) = checked {
            let (field, message) = e.split_once(": ").unwrap_or(("", e.as_str()));
            let field = known.iter().copied().find(|f| *f == field).unwrap_or(fallback);
            self.bad(field, message.to_string());
        }
    }

    fn finish(self) -> Result<(), RequestError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(RequestError::Invalid(self.0))
        }
    }
}

/// Which model paths a surface may name: the CLI any on the machine, the web only those under
/// `<data dir>/models` (a browser must not make the server read arbitrary files).
#[derive(Debug, Clone)]
pub enum ModelScope {
    Anywhere,
    Under(PathBuf),
}

impl ModelScope {
    /// The web's scope for a data dir.
    pub fn web(config: &Config) -> ModelScope {
        ModelScope::Under(config.data_dir().join("models"))
    }

    /// `tiny`, an HF directory or a GGUF file, checked against the scope.
    pub fn resolve(&self, text: &str) -> Result<ModelSource, String> {
        let text = text.trim();
        if text == "tiny" || text.is_empty() {
            return Ok(ModelSource::Tiny);
        }
        match self {
            ModelScope::Anywhere => ModelSource::parse(text).map_err(|e| e.to_string()),
            ModelScope::Under(models) => {
                let candidate = if Path::new(text).is_absolute() { PathBuf::from(text) } else { models.join(text) };
                let resolved = candidate
                    .canonicalize()
                    .map_err(|_| format!("{text}: no such model under {}", models.display()))?;
                let root = models
                    .canonicalize()
                    .map_err(|_| format!("{} does not exist; put models there", models.display()))?;
                if !resolved.starts_with(&root) {
                    return Err(format!("{text}: models must be under {}", models.display()));
                }
                ModelSource::parse(&resolved.display().to_string()).map_err(|e| e.to_string())
            }
        }
    }
}

/// A training run as asked for. Defaults are the CLI's and the form's.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct TrainRequest {
    /// `sft`, `grpo`, `ppo` or `dpo`.
    #[schema(value_type = String)]
    pub phase: Phase,
    /// A dataset id; the newest dataset when absent.
    pub dataset: Option<String>,
    /// `tiny` (from scratch, with the dataset's tokenizer), an HF directory or a .gguf file.
    pub model: String,
    pub epochs: u32,
    pub max_steps: Option<u64>,
    /// SFT: stop after this much training time (minutes), whichever of the two comes first.
    pub max_minutes: Option<f64>,
    pub lr: f64,
    pub batch_size: usize,
    pub grad_accum: usize,
    pub warmup_steps: u64,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    pub max_seq_len: usize,
    /// SFT: loss weight of the tokens of a tool call's name (the tool choice), 1 to 100.
    pub tool_name_weight: f64,
    /// LoRA adapters of this rank on a frozen pretrained base.
    pub lora_rank: Option<usize>,
    /// LoRA alpha (default: twice the rank).
    pub lora_alpha: Option<f64>,
    pub lora_dropout: f64,
    pub lora_targets: Vec<String>,
    /// auto, cpu or cuda[:N].
    pub device: String,
    pub seed: u64,
    /// The reinforcement-learning settings (`grpo`, `ppo`, `dpo`); SFT ignores them.
    pub rl: RlRequest,
}

/// GRPO's settings as asked for. `--model` names the stored model the policy starts from.
#[derive(Debug, Clone, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(default)]
pub struct RlRequest {
    /// Suites whose cases are rolled out (default: `training`, never `heldout`'s prompts).
    pub suites: Vec<String>,
    pub steps: u64,
    pub lr: f64,
    pub group_size: usize,
    pub prompts_per_step: usize,
    pub temperature: f64,
    pub max_turns: usize,
    pub max_tokens: usize,
    pub epsilon: f64,
    pub epsilon_high: Option<f64>,
    pub iterations: usize,
    pub beta: f64,
    /// `group`, `batch` or `none`.
    pub scale_rewards: String,
    /// `outcome=1,format=0.5,correctness=1,alignment=0.5,length=0.1` (any subset).
    pub reward_weights: String,
    /// DPO: β of the sigmoid loss, and label smoothing.
    pub dpo_beta: f64,
    pub label_smoothing: f64,
    /// DPO's learning rate.
    pub dpo_lr: f64,
    /// PPO: episodes over the whole run (the seed's `--episodes`), and per step.
    pub episodes: u64,
    pub episodes_per_step: usize,
    /// PPO: passes over each batch of rollouts, and optimizer steps per pass.
    pub ppo_epochs: usize,
    pub mini_batches: usize,
    /// PPO: the per-token KL penalty's coefficient; with a target (nats per episode) it adapts.
    pub kl_coef: f64,
    pub kl_target: Option<f64>,
    pub kl_horizon: f64,
    /// PPO: value loss weight, value clip range, discount and GAE λ.
    pub vf_coef: f64,
    pub value_clip: f64,
    pub gamma: f64,
    pub lam: f64,
    /// PPO's learning rate.
    pub ppo_lr: f64,
}

impl Default for RlRequest {
    fn default() -> Self {
        let defaults = crate::train::grpo::GrpoConfig::default();
        let ppo = crate::train::ppo::PpoConfig::default();
        RlRequest {
            suites: vec![crate::eval::suite::TRAINING.to_string()],
            steps: defaults.steps,
            lr: defaults.lr,
            group_size: defaults.group_size,
            prompts_per_step: defaults.prompts_per_step,
            temperature: defaults.temperature,
            max_turns: defaults.max_turns,
            max_tokens: defaults.max_tokens,
            epsilon: defaults.epsilon,
            epsilon_high: defaults.epsilon_high,
            iterations: defaults.iterations,
            beta: defaults.beta,
            scale_rewards: "group".into(),
            reward_weights: String::new(),
            dpo_beta: crate::train::dpo::DpoConfig::default().beta,
            label_smoothing: 0.0,
            dpo_lr: crate::train::dpo::DpoConfig::default().lr,
            episodes: ppo.episodes,
            episodes_per_step: ppo.episodes_per_step,
            ppo_epochs: ppo.ppo_epochs,
            mini_batches: ppo.mini_batches,
            kl_coef: ppo.kl_coef,
            kl_target: ppo.kl_target,
            kl_horizon: ppo.kl_horizon,
            vf_coef: ppo.vf_coef,
            value_clip: ppo.value_clip,
            gamma: ppo.gamma,
            lam: ppo.lam,
            ppo_lr: ppo.lr,
        }
    }
}

impl Default for TrainRequest {
    fn default() -> Self {
        TrainRequest {
            phase: Phase::Sft,
            dataset: None,
            model: "tiny".into(),
            epochs: 1,
            max_steps: None,
            max_minutes: None,
            lr: 3e-3,
            batch_size: 4,
            grad_accum: 1,
            warmup_steps: 10,
            eval_every: 25,
            checkpoint_every: 50,
            max_seq_len: 2048,
            tool_name_weight: SftConfig::default().tool_name_weight,
            lora_rank: None,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(),
            device: "auto".into(),
            seed: 0,
            rl: RlRequest::default(),
        }
    }
}

impl TrainRequest {
    /// What every rollout run (GRPO, PPO) needs, checked: reward weights, suites that are not
    /// `heldout` and hold cases, a device, the stored model the policy starts from, and LoRA.
    fn rollout_checks(&self, db: &Db, fields: &mut Fields, phase: &str) -> Result<RolloutChecks, RequestError> {
        let rl = &self.rl;
        let weights = crate::eval::reward::RewardWeights::parse(&rl.reward_weights)
            .map_err(|e| fields.bad("reward_weights", e.message.trim_start_matches("--reward-weights: ").to_string()))
            .ok();
        if rl.suites.iter().any(|s| s == crate::eval::suite::HELDOUT) {
            fields.bad("suites", "heldout is the evaluation suite: train on `training` or a suite of your own");
        }
        match super::eval::load_cases(db, &rl.suites, None) {
            Ok(cases) if cases.is_empty() => fields.bad("suites", "the suites hold no cases to roll out"),
            Ok(_) => {}
            Err(e) => fields.bad("suites", e),
        }
        if let Err(e) = crate::model::llama::device_for(&self.device) {
            fields.bad("device", e);
        }
        let start = start_model(db, &self.model, phase)?.map_err(|e| fields.bad("model", e)).ok();
        let lora = self.lora_rank.map(|rank| LoraConfig {
            rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        });
        Ok(RolloutChecks { weights: weights.unwrap_or_default(), start, lora })
    }

    /// A GRPO run: the policy starts from a stored model (`latest`, `champion` or an id).
    fn resolve_grpo(self, db: &Db, config: &Config) -> Result<TrainParams, RequestError> {
        use crate::train::grpo::{AdvantageScale, GrpoConfig};
        let mut fields = Fields::default();
        let RolloutChecks { weights, start, lora } = self.rollout_checks(db, &mut fields, "GRPO")?;
        let rl = &self.rl;
        let scale = AdvantageScale::parse(&rl.scale_rewards);
        if scale.is_none() {
            fields.bad("scale_rewards", "must be group, batch or none");
        }
        let grpo = GrpoConfig {
            steps: rl.steps,
            prompts_per_step: rl.prompts_per_step,
            group_size: rl.group_size,
            temperature: rl.temperature,
            max_turns: rl.max_turns,
            max_tokens: rl.max_tokens,
            lr: rl.lr,
            epsilon: rl.epsilon,
            epsilon_high: rl.epsilon_high,
            iterations: rl.iterations,
            beta: rl.beta,
            scale: scale.unwrap_or(AdvantageScale::Group),
            weights,
            max_seq_len: self.max_seq_len,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            device: self.device.clone(),
            lora,
            ..GrpoConfig::default()
        };
        let known = [
            "group_size",
            "steps",
            "prompts_per_step",
            "temperature",
            "max_turns",
            "max_tokens",
            "lr",
            "epsilon",
            "epsilon_high",
            "iterations",
            "beta",
            "checkpoint_every",
        ];
        fields.config(grpo.validate(), &known, "lora_rank");
        fields.finish()?;
        let start = start.expect("checked above");
        let start_dir = PathBuf::from(&start.path);
        let model_config = start_config(&start_dir)?;
        Ok(TrainParams {
            phase: Phase::Grpo,
            dataset_id: start.dataset_id.clone().unwrap_or_default(),
            dataset_dir: start_dir.clone(),
            base_model: start.base_model.clone(),
            model_config,
            sft: SftConfig { seed: self.seed, device: self.device, ..SftConfig::default() },
            runs_dir: config.artifacts_dir().join("runs"),
            grpo: Some(super::train::GrpoRun {
                config: grpo,
                start_model_id: start.id,
                start_dir,
                suites: rl.suites.clone(),
            }),
            dpo: None,
            ppo: None,
        })
    }

    /// A PPO run (the seed's `train --phase ppo --episodes N`): like GRPO, one episode per case.
    fn resolve_ppo(self, db: &Db, config: &Config) -> Result<TrainParams, RequestError> {
        use crate::train::ppo::PpoConfig;
        let mut fields = Fields::default();
        let RolloutChecks { weights, start, lora } = self.rollout_checks(db, &mut fields, "PPO")?;
        let rl = &self.rl;
        let ppo = PpoConfig {
            episodes: rl.episodes,
            episodes_per_step: rl.episodes_per_step,
            temperature: rl.temperature,
            max_turns: rl.max_turns,
            max_tokens: rl.max_tokens,
            lr: rl.ppo_lr,
            epsilon: rl.epsilon,
            value_clip: rl.value_clip,
            vf_coef: rl.vf_coef,
            gamma: rl.gamma,
            lam: rl.lam,
            ppo_epochs: rl.ppo_epochs,
            mini_batches: rl.mini_batches,
            kl_coef: rl.kl_coef,
            kl_target: rl.kl_target,
            kl_horizon: rl.kl_horizon,
            weights,
            max_seq_len: self.max_seq_len,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            device: self.device.clone(),
            lora,
            ..PpoConfig::default()
        };
        let known = [
            "episodes_per_step",
            "episodes",
            "temperature",
            "max_turns",
            "max_tokens",
            "lr",
            "epsilon",
            "value_clip",
            "vf_coef",
            "gamma",
            "lam",
            "ppo_epochs",
            "mini_batches",
            "kl_coef",
            "kl_target",
            "kl_horizon",
            "checkpoint_every",
        ];
        fields.config(ppo.validate(), &known, "lora_rank");
        fields.finish()?;
        let start = start.expect("checked above");
        let start_dir = PathBuf::from(&start.path);
        let model_config = start_config(&start_dir)?;
        Ok(TrainParams {
            phase: Phase::Ppo,
            dataset_id: start.dataset_id.clone().unwrap_or_default(),
            dataset_dir: start_dir.clone(),
            base_model: start.base_model.clone(),
            model_config,
            sft: SftConfig { seed: self.seed, device: self.device, ..SftConfig::default() },
            runs_dir: config.artifacts_dir().join("runs"),
            grpo: None,
            dpo: None,
            ppo: Some(super::train::PpoRun {
                config: ppo,
                start_model_id: start.id,
                start_dir,
                suites: rl.suites.clone(),
            }),
        })
    }

    /// A DPO run: the policy (and the reference) start from a stored model; the pairs are a
    /// dataset's (`dpo.jsonl`, held out: `dpo_val.jsonl`), rendered with the model's template.
    fn resolve_dpo(self, db: &Db, config: &Config) -> Result<TrainParams, RequestError> {
        use crate::train::dpo::DpoConfig;
        let mut fields = Fields::default();
        let start = start_model(db, &self.model, "DPO")?.map_err(|e| fields.bad("model", e)).ok();
        let dataset = match &self.dataset {
            Some(id) => db.get_dataset(id)?.ok_or_else(|| format!("no dataset with id {id:?}")),
            None => db.list_datasets()?.into_iter().next().ok_or_else(|| {
                "no dataset yet: import preference pairs, then run `understudy build-dataset`".to_string()
            }),
        }
        .map_err(|e| fields.bad("dataset", e))
        .ok();
        if let Some(dataset) = &dataset {
            let pairs = std::fs::read_to_string(Path::new(&dataset.path).join("dpo.jsonl")).unwrap_or_default();
            if pairs.trim().is_empty() {
                fields.bad(
                    "dataset",
                    format!(
                        "{} holds no preference pairs: import pairs (`import dpo FILE`), then build a dataset",
                        dataset.id
                    ),
                );
            }
        }
        if let (Some(start), Some(dataset)) = (&start, &dataset) {
            // The pairs are tokenized with the policy's tokenizer: it must be the dataset's.
            let read = |dir: &Path| std::fs::read(dir.join("tokenizer.json")).ok();
            if read(Path::new(&start.path)) != read(Path::new(&dataset.path)) {
                fields.bad(
                    "model",
                    format!(
                        "{}'s tokenizer differs from dataset {}'s: build the dataset with this model (--model)",
                        start.id, dataset.id
                    ),
                );
            }
        }
        if let Err(e) = crate::model::llama::device_for(&self.device) {
            fields.bad("device", e);
        }
        let dpo = DpoConfig {
            epochs: self.epochs,
            max_steps: self.max_steps,
            batch_size: self.batch_size,
            lr: self.rl.dpo_lr,
            beta: self.rl.dpo_beta,
            label_smoothing: self.rl.label_smoothing,
            max_seq_len: self.max_seq_len,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            device: self.device.clone(),
            ..DpoConfig::default()
        };
        let known = ["beta", "label_smoothing", "lr", "batch_size", "epochs", "checkpoint_every"];
        fields.config(dpo.validate(), &known, "rl");
        fields.finish()?;
        let (start, dataset) = (start.expect("checked above"), dataset.expect("checked above"));
        let start_dir = PathBuf::from(&start.path);
        Ok(TrainParams {
            phase: Phase::Dpo,
            dataset_id: dataset.id,
            dataset_dir: PathBuf::from(&dataset.path),
            base_model: start.base_model.clone(),
            model_config: start_config(&start_dir)?,
            sft: SftConfig { seed: self.seed, device: self.device, ..SftConfig::default() },
            runs_dir: config.artifacts_dir().join("runs"),
            grpo: None,
            dpo: Some(super::train::DpoRun { config: dpo, start_model_id: start.id, start_dir }),
            ppo: None,
        })
    }
    /// Check every field, find the dataset and the base model, and build the run's config.
    pub fn resolve(self, db: &Db, config: &Config, scope: &ModelScope) -> Result<TrainParams, RequestError> {
        match self.phase {
            Phase::Sft => {}
            Phase::Grpo => return self.resolve_grpo(db, config),
            Phase::Dpo => return self.resolve_dpo(db, config),
            Phase::Ppo => return self.resolve_ppo(db, config),
        }
        let mut fields = Fields::default();
        fields.check((1..=1000).contains(&self.epochs), "epochs", "must be 1 to 1000");
        fields.check(self.max_steps != Some(0), "max_steps", "must be a positive number (or absent for no limit)");
        fields.check(
            self.max_minutes.is_none_or(|m| m.is_finite() && m > 0.0),
            "max_minutes",
            "must be a positive number of minutes (or absent for no limit)",
        );
        fields.check(self.lr > 0.0 && self.lr < 1.0, "lr", "must be between 0 and 1 (e.g. 0.003)");
        fields.check((1..=256).contains(&self.batch_size), "batch_size", "must be 1 to 256");
        fields.check((1..=256).contains(&self.grad_accum), "grad_accum", "must be 1 to 256");
        fields.check(self.warmup_steps <= 100_000, "warmup_steps", "must be 0 to 100000");
        fields.check(self.eval_every >= 1, "eval_every", "must be at least 1");
        fields.check(self.checkpoint_every >= 1, "checkpoint_every", "must be at least 1");
        fields.check((32..=131_072).contains(&self.max_seq_len), "max_seq_len", "must be 32 to 131072");
        let base = scope.resolve(&self.model).map_err(|e| fields.bad("model", e)).ok();
        if self.lora_rank.is_some() && base == Some(ModelSource::Tiny) {
            fields.bad("lora_rank", "LoRA needs a pretrained base (an HF directory or a .gguf), not tiny");
        }
        let lora = self.lora_rank.map(|rank| LoraConfig {
            rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
            dropout: self.lora_dropout,
            targets: self.lora_targets.clone(),
        });
        if let Some(Err(e)) = lora.as_ref().map(LoraConfig::validate) {
            let field = ["lora_alpha", "lora_dropout", "lora_targets"]
                .into_iter()
                .find(|f| e.contains(f.trim_start_matches("lora_")))
                .unwrap_or("lora_rank");
            fields.bad(field, e);
        }
        if let Err(e) = crate::model::llama::device_for(&self.device) {
            fields.bad("device", e);
        }
        let dataset = match &self.dataset {
            Some(id) => db.get_dataset(id)?.ok_or_else(|| format!("no dataset with id {id:?}")),
            None => db
                .list_datasets()?
                .into_iter()
                .next()
                .ok_or_else(|| "no dataset yet: run `understudy build-dataset` first".to_string()),
        }
        .map_err(|e| fields.bad("dataset", e))
        .ok();
        fields.finish()?;
        let (Some(base), Some(dataset)) = (base, dataset) else { unreachable!("errors were reported above") };
        let dataset_dir = PathBuf::from(&dataset.path);
        let model_config = match &base {
            ModelSource::Tiny => {
                let tokenizer = crate::model::tokenizer::load_json(&dataset_dir.join("tokenizer.json"))
                    .map_err(|e| RequestError::field("dataset", format!("{}: {e}", dataset.id)))?;
                let mut model_config = LlamaConfig::tiny(tokenizer.get_vocab_size(true));
                model_config.max_position_embeddings = model_config.max_position_embeddings.max(self.max_seq_len);
                model_config
            }
            pretrained => crate::model::weights::read_config(pretrained)
                .map_err(|e| RequestError::field("model", format!("{e:#}")))?,
        };
        let sft = SftConfig {
            epochs: self.epochs,
            max_steps: self.max_steps,
            max_minutes: self.max_minutes,
            lr: self.lr,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            warmup_steps: self.warmup_steps,
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            max_seq_len: self.max_seq_len,
            seed: self.seed,
            device: self.device,
            lora,
            tool_name_weight: self.tool_name_weight,
            ..SftConfig::default()
        };
        let mut checked = Fields::default();
        checked.config(sft.validate(), &["lr", "batch_size", "grad_accum", "epochs", "tool_name_weight"], "lora_rank");
        checked.finish()?;
        Ok(TrainParams {
            phase: self.phase,
            dataset_id: dataset.id,
            dataset_dir,
            base_model: base.label(),
            model_config,
            sft,
            runs_dir: config.artifacts_dir().join("runs"),
            grpo: None,
            dpo: None,
            ppo: None,
        })
    }
}

/// What `rollout_checks` found (each absent when its field was refused).
struct RolloutChecks {
    weights: crate::eval::reward::RewardWeights,
    start: Option<crate::store::ModelRow>,
    lora: Option<LoraConfig>,
}

/// The stored model an RL phase starts from: an id, `latest` (the default) or `champion`.
fn start_model(db: &Db, wanted: &str, phase: &str) -> Result<Result<crate::store::ModelRow, String>, StoreError> {
    let wanted = if wanted.trim().is_empty() || wanted == "tiny" { "latest" } else { wanted.trim() };
    let found = match wanted {
        "latest" => db.list_models()?.into_iter().next(),
        "champion" => db.list_models()?.into_iter().find(|m| m.is_champion),
        id => db.get_model(id)?,
    };
    Ok(found
        .ok_or_else(|| format!("{wanted}: no such stored model ({phase} starts from a trained model: run SFT first)")))
}

/// A stored model's architecture.
fn start_config(dir: &Path) -> Result<LlamaConfig, RequestError> {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .ok_or_else(|| RequestError::field("model", format!("{}: no readable config.json", dir.display())))
}

/// A dataset build as asked for.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct DatasetRequest {
    pub name: String,
    /// `tiny` (trains its own tokenizer), an HF directory or a .gguf file.
    pub model: String,
    /// Only these sources: synthetic, claude_code, dpo_import, served, import.
    pub sources: Vec<String>,
    pub categories: Vec<String>,
    pub min_tool_calls: usize,
    pub exclude_failed: bool,
    /// How many times each real (non-synthetic) training trace is repeated.
    pub real_weight: u32,
    /// How many times each training trace's opening (first reply) is added as an example of its
    /// own, alternately without and with the tool schemas.
    pub openings: u32,
    pub val_ratio: f64,
    pub test_ratio: f64,
    pub max_seq_len: usize,
    pub seed: u64,
}

impl Default for DatasetRequest {
    fn default() -> Self {
        let defaults = DatasetConfig::new("dataset".into(), ModelSource::Tiny);
        DatasetRequest {
            name: defaults.name,
            model: "tiny".into(),
            sources: Vec::new(),
            categories: Vec::new(),
            min_tool_calls: defaults.min_tool_calls,
            exclude_failed: defaults.exclude_failed,
            real_weight: defaults.real_weight,
            openings: defaults.openings,
            val_ratio: defaults.val_ratio,
            test_ratio: defaults.test_ratio,
            max_seq_len: defaults.max_seq_len,
            seed: defaults.seed,
        }
    }
}

impl DatasetRequest {
    pub fn resolve(self, config: &Config, scope: &ModelScope) -> Result<BuildParams, RequestError> {
        let mut fields = Fields::default();
        let model = scope.resolve(&self.model).map_err(|e| fields.bad("model", e)).ok();
        let mut sources = Vec::new();
        for text in self.sources.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            match Source::parse(text) {
                Some(source) => sources.push(source),
                None => fields.bad(
                    "sources",
                    format!("{text:?} is not a source (synthetic, claude_code, dpo_import, served, import)"),
                ),
            }
        }
        fields.check(!self.name.trim().is_empty() && self.name.len() <= 80, "name", "must be 1 to 80 characters");
        fields.check((0.0..0.5).contains(&self.val_ratio), "val_ratio", "must be at least 0 and below 0.5");
        fields.check((0.0..0.5).contains(&self.test_ratio), "test_ratio", "must be at least 0 and below 0.5");
        fields.check((32..=131_072).contains(&self.max_seq_len), "max_seq_len", "must be between 32 and 131072");
        fields.check((1..=100).contains(&self.real_weight), "real_weight", "must be between 1 and 100");
        fields.check(self.openings <= 10, "openings", "must be between 0 and 10");
        fields.finish()?;
        let dataset = DatasetConfig {
            name: self.name,
            model: model.expect("checked above"),
            sources,
            categories: self.categories.into_iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect(),
            min_tool_calls: self.min_tool_calls,
            exclude_failed: self.exclude_failed,
            real_weight: self.real_weight,
            openings: self.openings,
            val_ratio: self.val_ratio,
            test_ratio: self.test_ratio,
            max_seq_len: self.max_seq_len,
            seed: self.seed,
        };
        dataset.validate().map_err(|e| RequestError::field("name", e.to_string()))?;
        Ok(BuildParams { config: dataset, datasets_dir: datasets_dir(&config.artifacts_dir()) })
    }
}

/// A bootstrap run as asked for.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct BootstrapRequest {
    /// How many traces to generate (1 to 100000).
    pub traces: u64,
    /// Seed for a reproducible run; random when omitted.
    pub seed: Option<u64>,
    /// Only these templates; all active ones when empty.
    #[serde(default)]
    pub templates: Vec<String>,
}

impl BootstrapRequest {
    /// The run's config; a missing seed is drawn here (the params record it).
    pub fn resolve(self) -> Result<BootstrapParams, RequestError> {
        if !(1..=MAX_BOOTSTRAP_TRACES).contains(&self.traces) {
            return Err(RequestError::field("traces", format!("must be 1 to {MAX_BOOTSTRAP_TRACES}")));
        }
        Ok(BootstrapParams {
            traces: self.traces,
            seed: self.seed.unwrap_or_else(|| u64::from(rand::random::<u32>())),
            templates: self.templates.into_iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
        })
    }
}

/// What an export reads: a stored model (an id or `latest`) or a model outside the store.
#[derive(Debug, Clone)]
pub enum ExportTarget {
    Stored(String),
    External(PathBuf),
}

/// An export as asked for.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub target: ExportTarget,
    /// f32, f16, q8_0, q4_k_m; known, deduplicated, at least one.
    pub quants: Vec<String>,
    pub name: Option<String>,
    pub parity_prompts: usize,
    pub parity_max_tokens: usize,
}

impl ExportRequest {
    /// Held-out prompts and tokens per prompt of the parity checks by default.
    pub const PARITY_PROMPTS: usize = 4;
    pub const PARITY_MAX_TOKENS: usize = 64;

    pub fn new(target: ExportTarget, quants: Vec<String>, name: Option<String>) -> ExportRequest {
        ExportRequest {
            target,
            quants,
            name,
            parity_prompts: Self::PARITY_PROMPTS,
            parity_max_tokens: Self::PARITY_MAX_TOKENS,
        }
    }

    pub fn resolve(self, db: &Db, config: &Config) -> Result<ExportParams, RequestError> {
        let quants = parse_quants(&self.quants)?;
        let name = self.name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        if name.as_ref().is_some_and(|n| n.chars().count() > MAX_EXPORT_NAME_LEN) {
            return Err(RequestError::field("name", format!("at most {MAX_EXPORT_NAME_LEN} characters")));
        }
        let (source, default_name, model_id, dataset_id, run_id) = match self.target {
            ExportTarget::External(path) => {
                if !path.exists() {
                    return Err(RequestError::value(
                        "model_path",
                        &path.display().to_string(),
                        "no such file or directory",
                    ));
                }
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
                (ExportSource::External(path), stem, None, None, None)
            }
            ExportTarget::Stored(wanted) => {
                let row = if wanted == "latest" {
                    db.list_models()?.into_iter().next().ok_or_else(|| {
                        RequestError::NotFound(
                            "no trained model yet: run `understudy train` first, or pass --model-path".into(),
                        )
                    })?
                } else {
                    db.get_model(&wanted)?
                        .ok_or_else(|| RequestError::NotFound(format!("no model with id {wanted:?}")))?
                };
                (ExportSource::ModelDir(PathBuf::from(&row.path)), row.name, Some(row.id), row.dataset_id, row.run_id)
            }
        };
        Ok(ExportParams {
            source,
            quants,
            name: name.unwrap_or(default_name),
            model_id,
            dataset_id,
            run_id,
            exports_dir: config.artifacts_dir().join("exports"),
            parity_prompts: self.parity_prompts.max(1),
            parity_max_tokens: self.parity_max_tokens.max(1),
        })
    }
}

/// The quants named by a request: known, deduplicated, at least one.
pub fn parse_quants(texts: &[String]) -> Result<Vec<Quant>, RequestError> {
    let mut quants = Vec::new();
    for text in texts {
        let quant = Quant::parse(text.trim()).ok_or_else(|| {
            RequestError::value("quants", text, format!("unknown quant {text:?}; expected f32, f16, q8_0 or q4_k_m"))
        })?;
        if !quants.contains(&quant) {
            quants.push(quant);
        }
    }
    if quants.is_empty() {
        return Err(RequestError::field("quants", "choose at least one quant (f32, f16, q8_0 or q4_k_m)"));
    }
    Ok(quants)
}

/// A deploy as asked for; empty or absent values take the defaults.
#[derive(Debug, Clone, Default)]
pub struct DeployRequest {
    /// An export id; the newest export that passed its parity checks when absent.
    pub export: Option<String>,
    pub name: Option<String>,
    pub host: Option<String>,
    pub quant: Option<String>,
    pub test: bool,
}

/// A value that was given: present and not blank (a form's empty field means "the default").
pub fn given(value: &Option<String>) -> Option<String> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string)
}

impl DeployRequest {
    /// Check against the export: not found for an unknown export, a conflict when its parity
    /// failed, the field named for a bad name, host or quant. `default_host` is the surface's
    /// Ollama address (`OLLAMA_HOST` or Ollama's own default).
    pub fn resolve(self, db: &Db, default_host: &str) -> Result<DeployParams, RequestError> {
        let export = match given(&self.export) {
            Some(id) => {
                db.get_export(&id)?.ok_or_else(|| RequestError::NotFound(format!("no export with id {id:?}")))?
            }
            None => db
                .latest_export()?
                .ok_or_else(|| RequestError::NotFound("no export yet: run `understudy export` first".into()))?,
        };
        if !export.parity_passed {
            return Err(RequestError::Conflict(format!(
                "export {} failed its parity check and cannot be deployed; export the model again",
                export.id
            )));
        }
        let name = given(&self.name).unwrap_or_else(|| crate::deploy::DEFAULT_NAME.to_string());
        crate::deploy::validate_name(&name).map_err(|e| RequestError::field("name", e.to_string()))?;
        let host = given(&self.host).unwrap_or_else(|| default_host.to_string());
        let host = crate::deploy::base_url(&host).map_err(|e| RequestError::field("host", e.to_string()))?;
        let quant = given(&self.quant);
        if let Some(quant) = &quant {
            let available: Vec<String> = serde_json::from_value::<ExportManifest>(export.manifest.clone())
                .map(|m| m.files.iter().filter(|f| f.format == "gguf").filter_map(|f| f.quant.clone()).collect())
                .unwrap_or_default();
            if !available.contains(quant) {
                let listed = if available.is_empty() { "none".to_string() } else { available.join(", ") };
                return Err(RequestError::field(
                    "quant",
                    format!("export {} has no {quant:?} GGUF (it has: {listed})", export.id),
                ));
            }
        }
        Ok(DeployParams { export_id: export.id, export_dir: export.path.into(), name, host, quant, test: self.test })
    }
}

impl From<TrainParams> for JobParams {
    fn from(params: TrainParams) -> Self {
        JobParams::Train(params)
    }
}

impl From<BuildParams> for JobParams {
    fn from(params: BuildParams) -> Self {
        JobParams::BuildDataset(params)
    }
}

impl From<BootstrapParams> for JobParams {
    fn from(params: BootstrapParams) -> Self {
        JobParams::Bootstrap(params)
    }
}

impl From<ExportParams> for JobParams {
    fn from(params: ExportParams) -> Self {
        JobParams::Export(params)
    }
}

impl From<DeployParams> for JobParams {
    fn from(params: DeployParams) -> Self {
        JobParams::Deploy(params)
    }
}

/// An evaluation as asked for: a stored model (id or `latest`; the CLI also takes a model
/// directory or GGUF) or an OpenAI-compatible endpoint, on suites.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct EvalRequest {
    /// A model id or `latest` (the newest model) when no endpoint is given.
    pub model: Option<String>,
    /// An OpenAI-compatible server; its key, if it needs one, only from the command line.
    pub endpoint: Option<String>,
    pub endpoint_model: Option<String>,
    pub suites: Vec<String>,
    pub max_turns: usize,
    pub max_tokens: usize,
    pub limit: Option<usize>,
    /// Decode a stored model's tool calls in the offered tools' grammar, as `/v1` serves them.
    pub tool_grammar: bool,
}

impl Default for EvalRequest {
    fn default() -> Self {
        EvalRequest {
            model: None,
            endpoint: None,
            endpoint_model: None,
            suites: vec![crate::eval::suite::HELDOUT.to_string()],
            max_turns: 6,
            max_tokens: 256,
            limit: None,
            tool_grammar: false,
        }
    }
}

impl EvalRequest {
    /// Check the suites exist and find the model; `scope` says whether a path may name it.
    pub fn resolve(self, db: &Db, scope: &ModelScope) -> Result<super::eval::EvalParams, RequestError> {
        use super::eval::{EvalParams, EvalTarget};
        let mut fields = Fields::default();
        fields.check((1..=50).contains(&self.max_turns), "max_turns", "must be 1 to 50");
        fields.check((1..=4096).contains(&self.max_tokens), "max_tokens", "must be 1 to 4096");
        fields.check(self.limit != Some(0), "limit", "must be at least 1 (or absent for every case)");
        fields.check(!self.suites.is_empty(), "suites", "name at least one suite");
        if let Err(e) = super::eval::load_cases(db, &self.suites, self.limit) {
            fields.bad("suites", e);
        }
        let target = match (&self.endpoint, &self.model) {
            (Some(_), Some(_)) => {
                fields.bad("endpoint", "give a model or an endpoint, not both");
                None
            }
            (Some(url), None) => match &self.endpoint_model {
                Some(model) if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(EvalTarget::Endpoint {
                        url: url.clone(),
                        model: model.clone(),
                        api_key_env: None,
                        api_key: None,
                    })
                }
                Some(_) => {
                    fields.bad("endpoint", format!("{url:?} is not an http(s) URL"));
                    None
                }
                None => {
                    fields.bad("endpoint_model", "name the model to ask the endpoint for");
                    None
                }
            },
            (None, model) => {
                let wanted = model.clone().unwrap_or_else(|| "latest".into());
                let row =
                    if wanted == "latest" { db.list_models()?.into_iter().next() } else { db.get_model(&wanted)? };
                match row {
                    Some(row) => Some(EvalTarget::Model {
                        label: format!("{} ({})", row.name, row.id),
                        model_id: Some(row.id),
                        path: row.path.into(),
                    }),
                    None if wanted == "latest" => {
                        return Err(RequestError::NotFound("no trained model yet: run `understudy train` first".into()))
                    }
                    None => match (scope, scope.resolve(&wanted)) {
                        (ModelScope::Anywhere, Ok(source)) if source != ModelSource::Tiny => {
                            let path = PathBuf::from(&wanted);
                            Some(EvalTarget::Model { model_id: None, label: path.display().to_string(), path })
                        }
                        _ => return Err(RequestError::NotFound(format!("no model with id {wanted:?}"))),
                    },
                }
            }
        };
        fields.finish()?;
        Ok(EvalParams {
            target: target.expect("checked above"),
            suites: self.suites,
            max_turns: self.max_turns,
            max_tokens: self.max_tokens,
            limit: self.limit,
            tool_grammar: self.tool_grammar,
        })
    }
}
