//! The mistral.rs runtime behind exported models: loads a GGUF export (or an export's HF
//! directory) fully offline and decodes prompts we tokenized ourselves. Token choice happens in
//! a logits processor we install (our sampler, our seed, exact ids and logprobs), so mistral.rs
//! runs the model and its KV cache while the ids stay ours. Its known traps are handled here:
//! every request streams on a channel of our own with room for every token (an unread stream
//! can never stall the engine; a dropped non-streaming receiver would crash it), a sender is
//! fetched per request (it restarts a dead engine), stop ids are always explicit, and the
//! prefix cache is off on the CPU (it never evicts there). Why
//! mistral.rs, and each trap with what we do about it: docs/decisions/0001-serve-exports-on-mistralrs.md.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use mistralrs::core::{
    AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting, GGUFLoaderBuilder, GGUFSpecificConfig,
    MistralRsBuilder, NormalLoaderBuilder, NormalLoaderType, NormalSpecificConfig, SchedulerConfig,
};
use mistralrs::{
    Constraint, CustomLogitsProcessor, Device, Model, ModelDType, NormalRequest, Request, RequestMessage, Response,
    SamplingParams, StopTokens, Tensor, TokenSource,
};

/// One loaded model on its own mistral.rs engine thread.
pub struct MistralRunner {
    model: Model,
    /// What was loaded (a GGUF file or an HF directory).
    pub path: PathBuf,
}

/// Chooses the next token from the raw logits; called on mistral.rs's engine thread.
pub type Picker = Box<dyn FnMut(&[f32]) -> u32 + Send>;

/// How one generation ended, as mistral.rs reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerFinish {
    /// A stop id (end of turn).
    Stop,
    /// `max_len` tokens.
    Length,
}

/// What a running generation yields, in order: each chosen id with its logits (when asked
/// for), then one `Finished`.
pub enum RunnerEvent {
    Token { id: u32, logits: Option<Vec<f32>> },
    Finished(RunnerFinish),
    Failed(String),
}

fn device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(device) = Device::new_cuda(0) {
        return device;
    }
    Device::Cpu
}

impl MistralRunner {
    /// Load a GGUF file or an HF directory (config.json, safetensors, tokenizer.json) from
    /// disk. Blocking and CPU-heavy: call it off the async workers. `max_seqs` is how many
    /// sequences the engine schedules together.
    pub fn load(path: &Path, max_seqs: usize) -> anyhow::Result<MistralRunner> {
        // mistral.rs takes a path that does not exist for a hub id and goes to the network:
        // only absolute, existing paths reach it.
        let path = path.canonicalize().with_context(|| format!("{}: no such file or directory", path.display()))?;
        let owned = path.clone();
        // Building the runner is async and spawns mistral.rs's own engine thread; do it on a
        // private runtime on a thread of ours (we may already be inside a runtime here).
        let model = std::thread::Builder::new()
            .name("mistralrs-load".into())
            .spawn(move || -> anyhow::Result<Model> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(build(&owned, max_seqs.max(1)))
            })?
            .join()
            .map_err(|_| anyhow!("loading {} panicked inside mistral.rs", path.display()))??;
        Ok(MistralRunner { model, path })
    }

    /// Start generating after `prompt_ids` (no template or BOS added: the ids are the whole
    /// prompt). The events arrive on the returned receiver as they happen; dropping the
    /// receiver cancels the generation at the next token.
    pub fn generate(
        &self,
        prompt_ids: Vec<u32>,
        max_len: usize,
        stop_ids: &[u32],
        picker: Picker,
        want_logits: bool,
    ) -> anyhow::Result<RunnerGeneration> {
        if max_len == 0 {
            bail!("nothing to generate: max_len is 0");
        }
        let (tokens, received) = mpsc::channel::<(u32, Option<Vec<f32>>)>();
        let picker = Mutex::new(picker);
        let processor: Arc<dyn CustomLogitsProcessor> =
            Arc::new(move |logits: &Tensor, _context: &[u32]| -> mistralrs::Result<Tensor> {
                let values: Vec<f32> = logits.to_dtype(mistralrs::DType::F32)?.flatten_all()?.to_vec1()?;
                let id = (picker.lock().unwrap_or_else(|e| e.into_inner()))(&values) as usize;
                // The engine's own argmax must pick our id: every other logit is -inf.
                let mut forced = vec![f32::NEG_INFINITY; values.len()];
                if let Some(slot) = forced.get_mut(id) {
                    *slot = 0.0;
                }
                let _ = tokens.send((id as u32, want_logits.then_some(values)));
                Tensor::from_vec(forced, logits.shape(), logits.device())
            });
        let params = SamplingParams {
            temperature: Some(0.0),
            top_k: None,
            top_p: None,
            max_len: Some(max_len),
            stop_toks: (!stop_ids.is_empty()).then(|| StopTokens::Ids(stop_ids.to_vec())),
            ..SamplingParams::deterministic()
        };
        // Room for every chunk: the engine never waits on a slow reader.
        let (responses, receiver) = tokio::sync::mpsc::channel(max_len + 8);
        let request = Request::Normal(Box::new(NormalRequest {
            id: self.model.inner().next_request_id(),
            messages: RequestMessage::CompletionTokens(prompt_ids),
            sampling_params: params,
            response: responses,
            return_logprobs: false,
            is_streaming: true,
            constraint: Constraint::None,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: Some(vec![processor]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        let sender = self.model.inner().get_sender(None).map_err(|e| anyhow!("mistral.rs engine: {e:?}"))?;
        sender.blocking_send(request).map_err(|_| anyhow!("the mistral.rs engine has stopped"))?;
        Ok(RunnerGeneration { responses: Some(receiver), tokens: received, last: None })
    }
}

/// A generation in flight; iterate it for its events.
pub struct RunnerGeneration {
    /// None once the end was seen.
    responses: Option<tokio::sync::mpsc::Receiver<Response>>,
    tokens: mpsc::Receiver<(u32, Option<Vec<f32>>)>,
    /// The end, reported after the ids chosen before it.
    last: Option<RunnerEvent>,
}

impl RunnerGeneration {
    /// The next event, blocking until it happens; `None` after `Finished`/`Failed`.
    pub fn next_event(&mut self) -> Option<RunnerEvent> {
        loop {
            // The processor sends an id before its chunk goes out, so ids drain first.
            if let Ok((id, logits)) = self.tokens.try_recv() {
                return Some(RunnerEvent::Token { id, logits });
            }
            if let Some(last) = self.last.take() {
                return Some(last);
            }
            let responses = self.responses.as_mut()?;
            let end = match responses.blocking_recv() {
                // No `CompletionDone` follows a streamed completion: the finish rides on a chunk.
                Some(Response::CompletionChunk(chunk)) => {
                    match chunk.choices.first().and_then(|c| c.finish_reason.as_deref()) {
                        Some("length") => RunnerEvent::Finished(RunnerFinish::Length),
                        Some(_) => RunnerEvent::Finished(RunnerFinish::Stop),
                        None => continue,
                    }
                }
                Some(Response::CompletionModelError(message, _)) | Some(Response::ModelError(message, _)) => {
                    RunnerEvent::Failed(message)
                }
                Some(Response::InternalError(error)) | Some(Response::ValidationError(error)) => {
                    RunnerEvent::Failed(error.to_string())
                }
                Some(_) => continue,
                None => RunnerEvent::Failed("the mistral.rs engine stopped before the reply finished".to_string()),
            };
            self.responses = None;
            self.last = Some(end);
        }
    }
}

async fn build(path: &Path, max_seqs: usize) -> anyhow::Result<Model> {
    let text = |p: &Path| p.to_string_lossy().into_owned();
    let loader = if path.is_dir() {
        NormalLoaderBuilder::new(
            NormalSpecificConfig::default(),
            None,
            Some(text(&path.join("tokenizer.json"))),
            Some(text(path)),
            false,
            None,
        )
        .build(Some(NormalLoaderType::Llama))?
    } else {
        let dir = path.parent().ok_or_else(|| anyhow!("{}: no parent directory", path.display()))?;
        let file = path.file_name().ok_or_else(|| anyhow!("{}: not a file", path.display()))?;
        GGUFLoaderBuilder::new(
            None,
            None,
            text(dir),
            vec![file.to_string_lossy().into_owned()],
            GGUFSpecificConfig { topology: None },
            false,
            None,
        )
        .build()
    };
    // F32 activations: the builder's Auto picks F16 on CPU, which is slower there and drifts
    // from llama.cpp's greedy output on q8_0.
    let dtype = if cfg!(feature = "cuda") { ModelDType::Auto } else { ModelDType::F32 };
    let pipeline = loader
        .load_model_from_hf(
            None,
            TokenSource::None,
            &dtype,
            &device(),
            true,
            DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
            None,
            None,
        )
        .map_err(|e| anyhow!("mistral.rs could not load {}: {e:#}", path.display()))?;
    let scheduler = SchedulerConfig::DefaultScheduler { method: DefaultSchedulerMethod::Fixed(max_seqs.try_into()?) };
    // mistral.rs's prefix cache keeps every finished sequence's KV cache and evicts only
    // caches on an accelerator (`PrefixCacheManagerV2::evict_caches` counts non-CPU caches
    // alone), so on the CPU it grows without bound: 174 MB → 2.7 GB over 1,400 short requests
    // of the tiny model. Off on the CPU; on CUDA its 16 stay the bound.
    let on_cpu = matches!(device(), Device::Cpu);
    let runner = MistralRsBuilder::new(pipeline, scheduler, false, None)
        .with_prefix_cache_n(16)
        .with_no_prefix_cache(on_cpu)
        .build()
        .await;
    Ok(Model::new(runner))
}
