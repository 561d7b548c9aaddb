//! Handoff to the engines that already train well on many GPUs (spec 7): a built dataset becomes
//! a self-contained directory — its data in TRL's formats (and the exact token ids and loss masks
//! Understudy trains on), the chat template and tokenizer it was rendered with, TRL scripts for
//! SFT, DPO and GRPO (GRPO scored by Understudy's own reward over HTTP), Accelerate configs for
//! one process, DDP, DeepSpeed ZeRO-2/3 and FSDP, a multi-node launcher, an Axolotl YAML, pinned
//! requirements and a README with the exact commands. The result comes back with
//! `models import`. No trainer of ours runs there; nothing here touches SQL or HTTP.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::dataset::cache;
use crate::eval::reward::RewardWeights;
use crate::eval::suite::EvalCase;
use crate::model::chat_template::ChatTemplate;
use crate::traces::{Message, Role, Trace};

/// The files every handoff carries as they are (embedded in the binary).
const STATIC_FILES: [(&str, &str); 5] = [
    ("understudy_handoff.py", include_str!("assets/understudy_handoff.py")),
    ("understudy_rewards.py", include_str!("assets/understudy_rewards.py")),
    ("train_sft.py", include_str!("assets/train_sft.py")),
    ("train_dpo.py", include_str!("assets/train_dpo.py")),
    ("train_grpo.py", include_str!("assets/train_grpo.py")),
];

/// The Python packages the scripts were written and checked against.
pub const REQUIREMENTS: &str = "\
# The versions the handoff scripts were checked against (CPU run: bench/handoff_verify.sh).
torch>=2.6
transformers==5.24.0
trl==1.16.0
peft==0.21.2
accelerate==1.16.0
datasets==5.2.0
safetensors>=0.4
# Multi-GPU alternatives (install what the chosen accelerate config needs):
#   deepspeed>=0.17   (accelerate/zero2.yaml, accelerate/zero3.yaml)
#   vllm              (train_grpo.py --vllm)
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Sft,
    Dpo,
    Grpo,
}

impl Phase {
    pub fn parse(text: &str) -> Option<Phase> {
        match text {
            "sft" => Some(Phase::Sft),
            "dpo" => Some(Phase::Dpo),
            "grpo" => Some(Phase::Grpo),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Sft => "sft",
            Phase::Dpo => "dpo",
            Phase::Grpo => "grpo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Trl,
    Axolotl,
}

impl Engine {
    pub fn parse(text: &str) -> Option<Engine> {
        match text {
            "trl" => Some(Engine::Trl),
            "axolotl" => Some(Engine::Axolotl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Trl => "trl",
            Engine::Axolotl => "axolotl",
        }
    }
}

/// LoRA settings as PEFT names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lora {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
}

/// What the scripts train with. Defaults suit a pretrained 0.1–8B base (Understudy's own
/// defaults are for the tiny preset trained from scratch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyperparameters {
    pub learning_rate: f64,
    pub epochs: u32,
    pub per_device_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub max_length: usize,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub lora: Option<Lora>,
    /// DPO's β, or GRPO's KL coefficient.
    pub beta: f64,
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub temperature: f64,
    pub epsilon: f64,
    pub epsilon_high: f64,
    pub scale_rewards: String,
}

impl Hyperparameters {
    /// TRL's usual settings for the phase, with Understudy's RL choices for GRPO (group of 8,
    /// ε 0.2, β 0, group scaling) and DPO (β 0.1).
    pub fn defaults(phase: Phase, max_length: usize, lora: bool) -> Hyperparameters {
        let lora = lora.then(|| Lora {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
                .map(String::from)
                .to_vec(),
        });
        let learning_rate = match (phase, lora.is_some()) {
            (Phase::Sft, false) => 2e-5,
            (Phase::Sft, true) => 2e-4,
            (Phase::Dpo, false) => 5e-7,
            (Phase::Dpo, true) => 5e-6,
            (Phase::Grpo, false) => 1e-6,
            (Phase::Grpo, true) => 1e-5,
        };
        Hyperparameters {
            learning_rate,
            epochs: if phase == Phase::Sft { 2 } else { 1 },
            per_device_batch_size: if phase == Phase::Grpo { 8 } else { 4 },
            gradient_accumulation_steps: if phase == Phase::Grpo { 1 } else { 4 },
            max_length,
            warmup_ratio: 0.03,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 0,
            lora,
            beta: if phase == Phase::Dpo { 0.1 } else { 0.0 },
            num_generations: 8,
            max_completion_length: 256,
            temperature: 1.0,
            epsilon: 0.2,
            epsilon_high: 0.28,
            scale_rewards: "group".into(),
        }
    }
}

/// The base model the scripts start from, and whether its tokenizer was checked here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseModel {
    /// A local directory (absolute) or a Hugging Face model id.
    pub model: String,
    /// Its architecture and tokenizer were checked against the dataset here; otherwise the
    /// scripts check the tokenizer when they start.
    pub checked: bool,
    pub note: String,
}

/// Where the GRPO scripts send each completion to be scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardSettings {
    /// The `understudy serve` address.
    pub url: String,
    pub weights: RewardWeights,
    /// Tokens an episode may spend (the length component's budget).
    pub token_budget: usize,
    /// The tool-call format of raw completions.
    pub template: String,
}

/// Everything a handoff is written from.
pub struct HandoffSpec {
    pub dataset_id: String,
    pub dataset_name: String,
    pub dataset_dir: PathBuf,
    pub base: BaseModel,
    pub phase: Phase,
    pub engine: Engine,
    pub gpus: u32,
    pub nodes: u32,
    pub hyperparameters: Hyperparameters,
    pub rewards: RewardSettings,
    /// Replayable training cases for GRPO (`eval::suite::from_traces` of the training split).
    pub cases: Vec<EvalCase>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("--base {path}: {reason}")]
    Base { path: String, reason: String },
    #[error("--out {path}: {reason}")]
    Out { path: String, reason: String },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{path}: {reason}")]
    Dataset { path: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn dataset_error(path: &Path, reason: impl ToString) -> HandoffError {
    HandoffError::Dataset { path: path.display().to_string(), reason: reason.to_string() }
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct HandoffReport {
    pub id: String,
    pub dir: String,
    pub phase: Phase,
    pub engine: Engine,
    pub base: BaseModel,
    pub examples: usize,
    pub pairs: usize,
    pub cases: usize,
    /// Every file and its SHA-256.
    pub files: BTreeMap<String, String>,
    /// The command that trains, from inside the directory.
    pub command: String,
}

/// The vocabulary of a tokenizer.json (model vocab and added tokens), token → id.
fn vocabulary(path: &Path) -> Result<BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut vocab = BTreeMap::new();
    if let Some(map) = value["model"]["vocab"].as_object() {
        for (token, id) in map {
            vocab.insert(token.clone(), id.as_u64().unwrap_or(u64::MAX));
        }
    } else {
        return Err(format!("{}: no model.vocab (only byte-level BPE tokenizers are supported)", path.display()));
    }
    for added in value["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(content), Some(id)) = (added["content"].as_str(), added["id"].as_u64()) {
            vocab.insert(content.to_string(), id);
        }
    }
    Ok(vocab)
}

/// Check a local base model directory against the dataset: a LLaMA-family config (what
/// `models import` brings back), safetensors weights, and the same tokenizer vocabulary.
pub fn check_base_dir(dir: &Path, dataset_dir: &Path) -> Result<BaseModel, HandoffError> {
    let fail = |reason: String| HandoffError::Base { path: dir.display().to_string(), reason };
    let config_path = dir.join("config.json");
    let config: Value = std::fs::read_to_string(&config_path)
        .map_err(|e| fail(format!("config.json: {e}")))
        .and_then(|text| serde_json::from_str(&text).map_err(|e| fail(format!("config.json: {e}"))))?;
    let model_type = config["model_type"].as_str().unwrap_or_default();
    let llama = model_type == "llama"
        || config["architectures"].as_array().into_iter().flatten().any(|a| a == "LlamaForCausalLM");
    if !llama {
        return Err(fail(format!(
            "config.json: model_type {model_type:?}: Understudy imports LLaMA-family checkpoints only (model_type \"llama\")"
        )));
    }
    let has_weights = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "safetensors"));
    if !has_weights {
        return Err(fail("no *.safetensors weights".into()));
    }
    let theirs = vocabulary(&dir.join("tokenizer.json")).map_err(fail)?;
    let ours = vocabulary(&dataset_dir.join("tokenizer.json")).map_err(|e| dataset_error(dataset_dir, e))?;
    if theirs != ours {
        let differing = ours.iter().filter(|(token, id)| theirs.get(*token) != Some(id)).count();
        return Err(fail(format!(
            "tokenizer.json: {} tokens against the dataset's {} ({differing} of the dataset's tokens have another id or \
             are missing): the dataset's token ids would mean other text; use the model the dataset was built for \
             (or an export of a model trained on it)",
            theirs.len(),
            ours.len()
        )));
    }
    let model = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string();
    Ok(BaseModel { model, checked: true, note: "architecture llama; tokenizer identical to the dataset's".into() })
}

/// A base named by a Hugging Face id: checked when it is in the local Hugging Face cache,
/// otherwise left to the scripts (they refuse to train on a different tokenizer).
pub fn check_base_id(id: &str, dataset_dir: &Path, hf_hub_cache: Option<&Path>) -> Result<BaseModel, HandoffError> {
    let valid = id.split('/').count() == 2
        && id.split('/').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    if !valid {
        return Err(HandoffError::Base {
            path: id.into(),
            reason: "neither a directory nor a Hugging Face model id (owner/name)".into(),
        });
    }
    let cached = hf_hub_cache.and_then(|cache| {
        let snapshots = cache.join(format!("models--{}", id.replace('/', "--"))).join("snapshots");
        let mut dirs: Vec<PathBuf> =
            std::fs::read_dir(snapshots).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        dirs.sort();
        dirs.into_iter().rev().find(|d| d.join("config.json").exists() && d.join("tokenizer.json").exists())
    });
    match cached {
        Some(snapshot) => {
            check_base_dir(&snapshot, dataset_dir).map_err(|e| match e {
                HandoffError::Base { reason, .. } => HandoffError::Base { path: id.into(), reason },
                other => other,
            })?;
            Ok(BaseModel {
                model: id.into(),
                checked: true,
                note: "checked against the local Hugging Face cache".into(),
            })
        }
        None => Ok(BaseModel {
            model: id.into(),
            checked: false,
            note: "not in the local Hugging Face cache: the scripts check its tokenizer against tokenizer.json before \
                   training"
                .into(),
        }),
    }
}

fn read_traces(path: &Path) -> Result<Vec<Trace>, HandoffError> {
    let text = std::fs::read_to_string(path).map_err(|e| dataset_error(path, e))?;
    let mut traces = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let trace = crate::traces::formats::parse_record(crate::traces::formats::ImportFormat::Canonical, line)
            .map_err(|e| dataset_error(path, format!("line {}: {e}", number + 1)))?;
        traces.push(trace);
    }
    Ok(traces)
}

/// The training split's traces, for `eval::suite::from_traces` (the caller adds the workflow
/// templates that regenerate their checks).
pub fn training_traces(dataset_dir: &Path) -> Result<Vec<Trace>, HandoffError> {
    read_traces(&dataset_dir.join("train.jsonl"))
}

fn token_rows(path: &Path) -> Result<Vec<String>, HandoffError> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| dataset_error(path, e))?);
    let examples = cache::read(&mut file).map_err(|e| dataset_error(path, e))?;
    Ok(examples
        .iter()
        .map(|example| {
            json!({"input_ids": example.ids, "assistant_masks": example.mask.iter().map(|&m| u8::from(m != 0)).collect::<Vec<_>>()})
                .to_string()
        })
        .collect())
}

/// GRPO's prompts: the case's system and user messages rendered by the dataset's template with
/// the offered tools and the generation prompt (single-turn), the same messages unrendered
/// (multi-turn), and the case itself as JSON for the reward.
fn grpo_rows(cases: &[EvalCase], traces: &[Trace], template: &ChatTemplate) -> Result<Vec<String>, HandoffError> {
    let mut rows = Vec::new();
    for case in cases {
        let Some(trace) = traces.iter().find(|t| t.id == case.id) else { continue };
        let first_user = trace.messages.iter().position(|m| m.role == Role::User).unwrap_or(0);
        let messages: Vec<Message> = trace.messages[..=first_user].to_vec();
        let tools = case.tool_schemas();
        let prompt = template.render(&messages, &tools, true).map_err(|e| HandoffError::Invalid {
            field: "chat_template.jinja",
            reason: format!("case {}: {e}", case.id),
        })?;
        let wire: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content.clone().unwrap_or_default()}))
            .collect();
        let case_json =
            serde_json::to_string(case).map_err(|e| HandoffError::Invalid { field: "case", reason: e.to_string() })?;
        rows.push(json!({"prompt": prompt, "messages": wire, "case": case_json}).to_string());
    }
    Ok(rows)
}

fn count_lines(path: &Path) -> Result<usize, HandoffError> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| dataset_error(path, e))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count())
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Accelerate configs: name → (file, what it is for). The machine count and process count come
/// from `--nodes` and `--gpus` (per node).
fn accelerate_configs(gpus: u32, nodes: u32) -> Vec<(String, String)> {
    let processes = gpus * nodes;
    let common = |distributed: &str, extra: &str, mixed: &str| {
        format!(
            "# Generated by `understudy handoff`: {nodes} machine(s) × {gpus} GPU(s).\ncompute_environment: LOCAL_MACHINE\n\
             debug: false\n{extra}distributed_type: {distributed}\ndowncast_bf16: 'no'\nmachine_rank: 0\n\
             main_training_function: main\nmixed_precision: '{mixed}'\nnum_machines: {nodes}\nnum_processes: {processes}\n\
             rdzv_backend: static\nsame_network: true\ntpu_env: []\ntpu_use_cluster: false\ntpu_use_sudo: false\nuse_cpu: false\n"
        )
    };
    let zero = |stage: u32| {
        let three = if stage == 3 {
            "  zero3_init_flag: true\n  zero3_save_16bit_model: true\n"
        } else {
            "  zero3_init_flag: false\n"
        };
        format!(
            "deepspeed_config:\n  deepspeed_multinode_launcher: standard\n  offload_optimizer_device: none\n  offload_param_device: none\n{three}  zero_stage: {stage}\n"
        )
    };
    let fsdp = "fsdp_config:\n  fsdp_activation_checkpointing: false\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  \
                fsdp_cpu_ram_efficient_loading: true\n  fsdp_offload_params: false\n  fsdp_reshard_after_forward: true\n  \
                fsdp_state_dict_type: FULL_STATE_DICT\n  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer\n  fsdp_version: 2\n";
    vec![
        (
            "accelerate/cpu.yaml".into(),
            "# One process on the CPU: a few steps to check the data and scripts before a cluster run.\n\
             compute_environment: LOCAL_MACHINE\ndebug: false\ndistributed_type: 'NO'\ndowncast_bf16: 'no'\n\
             machine_rank: 0\nmain_training_function: main\nmixed_precision: 'no'\nnum_machines: 1\nnum_processes: 1\n\
             rdzv_backend: static\nsame_network: true\ntpu_env: []\ntpu_use_cluster: false\ntpu_use_sudo: false\nuse_cpu: true\n"
                .into(),
        ),
        ("accelerate/ddp.yaml".into(), common("MULTI_GPU", "gpu_ids: all\n", "bf16")),
        ("accelerate/zero2.yaml".into(), common("DEEPSPEED", &zero(2), "bf16")),
        ("accelerate/zero3.yaml".into(), common("DEEPSPEED", &zero(3), "bf16")),
        ("accelerate/fsdp.yaml".into(), common("FSDP", fsdp, "bf16")),
    ]
}

/// The DeepSpeed JSON configs (for Axolotl, or a `--deepspeed` launch), "auto" values filled by
/// the Hugging Face integration.
fn deepspeed_configs() -> Vec<(String, String)> {
    let stage = |stage: u32| {
        let mut zero = json!({"stage": stage, "overlap_comm": true, "contiguous_gradients": true,
            "reduce_bucket_size": "auto"});
        if stage == 3 {
            zero["stage3_gather_16bit_weights_on_model_save"] = json!(true);
            zero["stage3_prefetch_bucket_size"] = json!("auto");
            zero["stage3_param_persistence_threshold"] = json!("auto");
        }
        let config = json!({
            "bf16": {"enabled": "auto"},
            "zero_optimization": zero,
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "wall_clock_breakdown": false
        });
        serde_json::to_string_pretty(&config).expect("static JSON") + "\n"
    };
    vec![("deepspeed/zero2.json".into(), stage(2)), ("deepspeed/zero3.json".into(), stage(3))]
}

fn yaml_string(text: &str) -> String {
    // JSON strings are valid YAML double-quoted scalars.
    serde_json::to_string(text).expect("a string serialises")
}

fn axolotl_yaml(spec: &HandoffSpec, template_source: &str) -> String {
    let hp = &spec.hyperparameters;
    let mut yaml = format!(
        "# Axolotl alternative to train_sft.py (`axolotl train axolotl.yaml`), generated by `understudy handoff`.\n\
         base_model: {}\nchat_template: jinja\nchat_template_jinja: {}\ndatasets:\n  - path: data/sft.jsonl\n    \
         ds_type: json\n    type: chat_template\n    field_messages: messages\n    field_tools: tools\n    \
         roles_to_train: [\"assistant\"]\n    train_on_eos: turn\ntest_datasets:\n  - path: data/sft_val.jsonl\n    \
         ds_type: json\n    type: chat_template\n    field_messages: messages\n    field_tools: tools\n    split: train\n\
         sequence_len: {}\nsample_packing: false\nmicro_batch_size: {}\ngradient_accumulation_steps: {}\nnum_epochs: {}\n\
         learning_rate: {}\nlr_scheduler: cosine\nwarmup_ratio: {}\nweight_decay: {}\nmax_grad_norm: {}\noptimizer: adamw_torch\n\
         bf16: auto\nseed: {}\nlogging_steps: 1\noutput_dir: ./output\n",
        yaml_string(&spec.base.model),
        yaml_string(template_source),
        hp.max_length,
        hp.per_device_batch_size,
        hp.gradient_accumulation_steps,
        hp.epochs,
        hp.learning_rate,
        hp.warmup_ratio,
        hp.weight_decay,
        hp.max_grad_norm,
        hp.seed
    );
    if let Some(lora) = &hp.lora {
        let _ = write!(
            yaml,
            "adapter: lora\nlora_r: {}\nlora_alpha: {}\nlora_dropout: {}\nlora_target_modules: [{}]\n",
            lora.r,
            lora.alpha,
            lora.dropout,
            lora.targets.iter().map(|t| yaml_string(t)).collect::<Vec<_>>().join(", ")
        );
    }
    if spec.gpus * spec.nodes > 1 {
        yaml.push_str("deepspeed: deepspeed/zero2.json\n");
    }
    yaml
}

fn launch_script(spec: &HandoffSpec, script: &str) -> String {
    format!(
        "#!/usr/bin/env bash\n# Multi-node launch, generated by `understudy handoff`: run this on every one of the {nodes} \
         machine(s),\n# with MACHINE_RANK=0..{last} and MAIN_ADDR set to machine 0's address (same directory everywhere).\n\
         # CONFIG picks the strategy: accelerate/ddp.yaml, accelerate/zero2.yaml, accelerate/zero3.yaml, accelerate/fsdp.yaml.\n\
         set -euo pipefail\ncd \"$(dirname \"${{BASH_SOURCE[0]}}\")\"\nCONFIG=\"${{CONFIG:-accelerate/zero2.yaml}}\"\n\
         accelerate launch --config_file \"$CONFIG\" \\\n  --num_machines {nodes} --num_processes {processes} \\\n  \
         --machine_rank \"${{MACHINE_RANK:?set MACHINE_RANK}}\" --main_process_ip \"${{MAIN_ADDR:?set MAIN_ADDR}}\" \\\n  \
         --main_process_port \"${{MAIN_PORT:-29500}}\" \\\n  {script} \"$@\"\n",
        nodes = spec.nodes,
        last = spec.nodes.saturating_sub(1),
        processes = spec.gpus * spec.nodes,
    )
}

fn readme(spec: &HandoffSpec, script: &str, counts: (usize, usize, usize)) -> String {
    let (examples, pairs, cases) = counts;
    let phase = spec.phase.name();
    let launch = if spec.nodes > 1 {
        format!(
            "CONFIG=accelerate/zero2.yaml MACHINE_RANK=0 MAIN_ADDR=10.0.0.1 ./launch_multinode.sh   # on each machine, rank 0..{}\n\
             # CONFIG: accelerate/ddp.yaml (DDP), accelerate/zero2.yaml or zero3.yaml (DeepSpeed), accelerate/fsdp.yaml (FSDP)\n",
            spec.nodes - 1
        )
    } else {
        format!(
            "accelerate launch --config_file accelerate/ddp.yaml {script}     # DDP: the model fits one GPU\n\
             accelerate launch --config_file accelerate/zero2.yaml {script}   # DeepSpeed ZeRO-2: optimizer state sharded\n\
             accelerate launch --config_file accelerate/zero3.yaml {script}   # ZeRO-3: weights sharded too\n\
             accelerate launch --config_file accelerate/fsdp.yaml {script}    # FSDP instead of DeepSpeed\n"
        )
    };
    let mut text = format!(
        "# Understudy handoff: {phase} on dataset {name} ({id})\n\n\
         Generated by `understudy handoff`. This directory trains the base model on the same data, with the same chat\n\
         template and tokens, as Understudy would — on as many GPUs as you have — and the result comes back with\n\
         `understudy models import`.\n\n\
         - Base model: `{base}` ({checked})\n\
         - Data: {examples} SFT examples (`data/sft.jsonl`, and their exact token ids and assistant-only loss masks in\n  \
         `data/sft_tokens.jsonl`), {pairs} preference pairs (`data/dpo.jsonl`), {cases} replayable GRPO cases\n  \
         (`data/grpo_prompts.jsonl`); validation splits beside them.\n\
         - `chat_template.jinja` and `tokenizer.json`: the files the dataset was rendered and tokenized with.\n\
         - `handoff.json`: every setting the scripts read (hyperparameters, reward weights, the reward server).\n\n\
         ## 1. Install\n\n```bash\npython3 -m venv .venv && . .venv/bin/activate\npip install -r requirements.txt\n```\n\n\
         ## 2. Check on one CPU (a few steps)\n\n```bash\naccelerate launch --config_file accelerate/cpu.yaml {script} --max-steps 5\n```\n\n\
         ## 3. Train on {gpus} GPU(s) × {nodes} machine(s)\n\n```bash\n{launch}```\n\n",
        name = spec.dataset_name,
        id = spec.dataset_id,
        base = spec.base.model,
        checked = spec.base.note,
        gpus = spec.gpus,
        nodes = spec.nodes,
    );
    if spec.phase == Phase::Grpo {
        let _ = write!(
            text,
            "GRPO needs Understudy's reward server: every completion is replayed in its case's sandbox by\n\
             `POST {url}/api/rewards/score` (the same components and total as Understudy's own GRPO). Start it first,\n\
             reachable from every training machine:\n\n```bash\n\
             understudy serve --host 0.0.0.0 --port 8080 --api-key \"$KEY\"    # then: export UNDERSTUDY_URL=http://HOST:8080 UNDERSTUDY_API_KEY=\"$KEY\"\n\
             ```\n\n`{script} --multi-turn` lets TRL run the tool loop with `UnderstudyEnvironment` (the tools run on the\n\
             server too); `--vllm` generates with vLLM.\n\n",
            url = spec.rewards.url
        );
    }
    if spec.engine == Engine::Axolotl {
        text.push_str("Axolotl instead of TRL: `pip install axolotl` then `axolotl train axolotl.yaml`.\n\n");
    }
    let _ = write!(
        text,
        "## 4. Bring the model back\n\n```bash\nunderstudy models import output/    # full weights, or a PEFT adapter merged onto its base\n\
         understudy eval --model <the id it prints> --suite heldout\nunderstudy export --model <id>\n```\n\n\
         `output/understudy_handoff.json` records this handoff ({handoff_id}) and the loss curve; the imported model keeps\n\
         that lineage.\n",
        handoff_id = handoff_id(spec)
    );
    text
}

/// A handoff's id: a digest of what it was generated from (the same inputs give the same id).
fn handoff_id(spec: &HandoffSpec) -> String {
    let key = json!({
        "dataset": spec.dataset_id,
        "base": spec.base.model,
        "phase": spec.phase,
        "engine": spec.engine,
        "gpus": spec.gpus,
        "nodes": spec.nodes,
        "hyperparameters": spec.hyperparameters,
        "rewards": spec.rewards,
    });
    format!("ho_{}", &sha256_hex(key.to_string().as_bytes())[..16])
}

/// Write the handoff directory at `out` (which must not exist or be empty); it appears whole or
/// not at all.
pub fn write(spec: &HandoffSpec, out: &Path) -> Result<HandoffReport, HandoffError> {
    if spec.gpus == 0 || spec.gpus > 1024 {
        return Err(HandoffError::Invalid { field: "--gpus", reason: "must be 1 to 1024 (per machine)".into() });
    }
    if spec.nodes == 0 || spec.nodes > 1024 {
        return Err(HandoffError::Invalid { field: "--nodes", reason: "must be 1 to 1024".into() });
    }
    if spec.engine == Engine::Axolotl && spec.phase != Phase::Sft {
        return Err(HandoffError::Invalid {
            field: "--engine",
            reason: "axolotl is generated for --phase sft only; use --engine trl for dpo and grpo".into(),
        });
    }
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(HandoffError::Out {
            path: out.display().to_string(),
            reason: "exists and is not empty (nothing was written)".into(),
        });
    }
    let dataset = &spec.dataset_dir;
    let template_json = dataset.join("template.json");
    let template: ChatTemplate = std::fs::read_to_string(&template_json)
        .map_err(|e| dataset_error(&template_json, e))
        .and_then(|text| serde_json::from_str(&text).map_err(|e| dataset_error(&template_json, e)))?;

    let staging = out.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    let result = write_into(spec, &template, &staging);
    match result {
        Ok(mut report) => {
            if out.exists() {
                std::fs::remove_dir(out)?;
            }
            std::fs::rename(&staging, out)?;
            report.dir = out.display().to_string();
            Ok(report)
        }
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(error)
        }
    }
}

fn write_into(spec: &HandoffSpec, template: &ChatTemplate, dir: &Path) -> Result<HandoffReport, HandoffError> {
    let dataset = &spec.dataset_dir;
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::create_dir_all(dir.join("accelerate"))?;
    std::fs::create_dir_all(dir.join("deepspeed"))?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for name in ["sft.jsonl", "sft_val.jsonl", "dpo.jsonl", "dpo_val.jsonl"] {
        let bytes = std::fs::read(dataset.join(name)).map_err(|e| dataset_error(&dataset.join(name), e))?;
        files.insert(format!("data/{name}"), bytes);
    }
    for (cache_file, name) in [("train.tokens", "sft_tokens.jsonl"), ("val.tokens", "sft_val_tokens.jsonl")] {
        let rows = token_rows(&dataset.join(cache_file))?;
        files.insert(format!("data/{name}"), rows.iter().flat_map(|r| [r.as_bytes(), b"\n"].concat()).collect());
    }
    let traces = training_traces(dataset)?;
    let grpo = grpo_rows(&spec.cases, &traces, template)?;
    files.insert("data/grpo_prompts.jsonl".into(), grpo.iter().flat_map(|r| [r.as_bytes(), b"\n"].concat()).collect());
    for name in ["chat_template.jinja", "tokenizer.json", "template.json"] {
        let bytes = std::fs::read(dataset.join(name)).map_err(|e| dataset_error(&dataset.join(name), e))?;
        files.insert(name.into(), bytes);
    }
    for (name, text) in STATIC_FILES {
        files.insert(name.into(), text.as_bytes().to_vec());
    }
    files.insert("requirements.txt".into(), REQUIREMENTS.as_bytes().to_vec());
    for (name, text) in accelerate_configs(spec.gpus, spec.nodes).into_iter().chain(deepspeed_configs()) {
        files.insert(name, text.into_bytes());
    }
    let script = format!("train_{}.py", spec.phase.name());
    files.insert("launch_multinode.sh".into(), launch_script(spec, &script).into_bytes());
    if spec.engine == Engine::Axolotl {
        files.insert("axolotl.yaml".into(), axolotl_yaml(spec, &template.source).into_bytes());
    }
    let examples = count_lines(&dataset.join("sft.jsonl"))?;
    let pairs = count_lines(&dataset.join("dpo.jsonl"))?;
    files.insert("README.md".into(), readme(spec, &script, (examples, pairs, grpo.len())).into_bytes());

    let id = handoff_id(spec);
    let stats: Value = std::fs::read_to_string(dataset.join("stats.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let digests: BTreeMap<String, String> =
        files.iter().map(|(name, bytes)| (name.clone(), sha256_hex(bytes))).collect();
    let manifest = json!({
        "format": "understudy-handoff/1",
        "id": id,
        "phase": spec.phase,
        "engine": spec.engine,
        "gpus_per_machine": spec.gpus,
        "machines": spec.nodes,
        "dataset": {
            "id": spec.dataset_id,
            "name": spec.dataset_name,
            "template": template,
            "examples": examples,
            "pairs": pairs,
            "grpo_cases": grpo.len(),
            "mask_coverage": stats["mask_coverage"],
        },
        "base": spec.base,
        "hyperparameters": spec.hyperparameters,
        "rewards": spec.rewards,
        "script": script,
        "files": digests,
    });
    files.insert("handoff.json".into(), (serde_json::to_string_pretty(&manifest).expect("JSON") + "\n").into_bytes());
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes)?;
    }
    #[cfg(unix)]
    for name in ["launch_multinode.sh", "train_sft.py", "train_dpo.py", "train_grpo.py"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755))?;
    }
    let digests = files.iter().map(|(name, bytes)| (name.clone(), sha256_hex(bytes))).collect();
    Ok(HandoffReport {
        id,
        dir: dir.display().to_string(),
        phase: spec.phase,
        engine: spec.engine,
        base: spec.base.clone(),
        examples,
        pairs,
        cases: grpo.len(),
        files: digests,
        command: if spec.engine == Engine::Axolotl {
            "axolotl train axolotl.yaml".into()
        } else {
            format!("accelerate launch --config_file accelerate/cpu.yaml {script} --max-steps 5")
        },
    })
}
