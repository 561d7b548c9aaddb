//! The decoding workers: threads that own decoding, fed through a bounded queue (a full
//! queue is "overloaded", never an unbounded backlog). Each request streams events back through
//! its own channel; when the receiver is gone (client disconnected) the worker stops decoding
//! that request at the next token, so an abandoned stream never holds up the next request.
//! Exports decode on mistral.rs (`serve::mistral`) with our sampler choosing each token; models
//! not exported yet decode on our candle Llama. Both go through one `Emitter`, so stop ids,
//! stop strings, partial characters and logprobs behave the same whichever runtime runs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::mistral::{RunnerEvent, RunnerFinish};
use super::registry::{Runtime, ServedModel};
use crate::model::constrain::{ConstrainedPicker, Grammar};
use crate::model::generate::{sample, GenerateOptions};
use crate::model::llama::{KvCache, Llama};

/// How to decode one request.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Stop strings (besides the end-of-turn tokens); the text is cut before them.
    pub stop: Vec<String>,
    /// Top alternatives per token to report with logprobs (None: no logprobs).
    pub logprobs: Option<usize>,
    /// Only tokens this grammar allows may be chosen (a forced tool call, a JSON schema).
    pub grammar: Option<Arc<Grammar>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-turn token or a stop string.
    Stop,
    /// The token limit (or the context) was reached.
    Length,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token (its text arrives as `Text`, possibly later: a character may be partial).
    Token {
        id: u32,
        logprob: Option<TokenLogprob>,
    },
    /// The next piece of reply text.
    Text(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

struct Job {
    model: Arc<ServedModel>,
    prompt_ids: Vec<u32>,
    sampling: Sampling,
    events: UnboundedSender<Event>,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the server is overloaded: {queued} requests are waiting; retry shortly")]
    Overloaded { queued: usize },
    #[error("the engine has stopped")]
    Stopped,
}

/// Handle on the worker threads; cheap to clone.
#[derive(Clone)]
pub struct DecodePool {
    sender: SyncSender<Job>,
    queued: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    capacity: usize,
}

impl DecodePool {
    /// `workers` decoding threads sharing a queue of `capacity` waiting requests.
    pub fn start(workers: usize, capacity: usize) -> DecodePool {
        let (sender, receiver) = sync_channel::<Job>(capacity.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        for index in 0..workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let (queued, active) = (Arc::clone(&queued), Arc::clone(&active));
            std::thread::Builder::new()
                .name(format!("engine-{index}"))
                .spawn(move || worker(&receiver, &queued, &active))
                .expect("spawning an engine worker");
        }
        DecodePool { sender, queued, active, capacity }
    }

    /// Queue a request; its events arrive on the returned receiver.
    pub fn submit(
        &self,
        model: Arc<ServedModel>,
        prompt_ids: Vec<u32>,
        sampling: Sampling,
    ) -> Result<UnboundedReceiver<Event>, DecodeError> {
        let (events, receiver) = unbounded_channel();
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(Job { model, prompt_ids, sampling, events }) {
            Ok(()) => Ok(receiver),
            Err(TrySendError::Full(_)) => {
                let queued = self.queued.fetch_sub(1, Ordering::SeqCst) - 1;
                Err(DecodeError::Overloaded { queued })
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(DecodeError::Stopped)
            }
        }
    }

    /// Requests waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Requests being decoded.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

fn worker(receiver: &Mutex<Receiver<Job>>, queued: &AtomicUsize, active: &AtomicUsize) {
    loop {
        let job = {
            let Ok(receiver) = receiver.lock() else { return };
            match receiver.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        queued.fetch_sub(1, Ordering::SeqCst);
        active.fetch_add(1, Ordering::SeqCst);
        let events = job.events.clone();
        if let Err(error) = decode(job) {
            let _ = events.send(Event::Failed(format!("{error:#}")));
        }
        active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|l| l - log_sum).collect()
}

fn token_logprob(model: &ServedModel, logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let logprobs = log_softmax(logits);
    let text = |id: u32| model.tokenizer.decode(&[id], false).unwrap_or_default();
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    let top = top.min(order.len());
    if top > 0 {
        order.select_nth_unstable_by(top - 1, |a, b| logprobs[*b].total_cmp(&logprobs[*a]));
        order.truncate(top);
        order.sort_by(|a, b| logprobs[*b].total_cmp(&logprobs[*a]));
    }
    TokenLogprob {
        token: text(id),
        logprob: logprobs.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY),
        top: if top > 0 { order.into_iter().map(|i| (text(i as u32), logprobs[i])).collect() } else { Vec::new() },
    }
}

/// What the emitter says after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Continue,
    /// The reply ended (end-of-turn id or stop string).
    Stop,
    /// The client went away.
    Gone,
}

/// Turns chosen ids into events: text (holding back partial characters and a possible start
/// of a stop string), logprobs, and the end at an end-of-turn id or stop string.
struct Emitter<'a> {
    model: &'a ServedModel,
    sampling: &'a Sampling,
    events: &'a UnboundedSender<Event>,
    stops: Vec<u32>,
    longest_stop: usize,
    generated: Vec<u32>,
    text: String,
    emitted: usize,
}

impl<'a> Emitter<'a> {
    fn new(model: &'a ServedModel, sampling: &'a Sampling, events: &'a UnboundedSender<Event>) -> Emitter<'a> {
        let longest_stop = sampling.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        Emitter {
            model,
            sampling,
            events,
            stops: model.stop_ids(),
            longest_stop,
            generated: Vec::new(),
            text: String::new(),
            emitted: 0,
        }
    }

    fn push(&mut self, id: u32, logits: Option<&[f32]>) -> anyhow::Result<Step> {
        if self.stops.contains(&id) {
            return Ok(Step::Stop);
        }
        self.generated.push(id);
        let logprob = match (self.sampling.logprobs, logits) {
            (Some(top), Some(logits)) => Some(token_logprob(self.model, logits, id, top)),
            _ => None,
        };
        self.text = self.model.tokenizer.decode(&self.generated, false).map_err(|e| anyhow::anyhow!("{e}"))?;
        // A stop string ends the reply before it.
        if let Some(at) = self.sampling.stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            let _ = self.events.send(Event::Token { id, logprob });
            self.text.truncate(at.max(self.emitted));
            return Ok(Step::Stop);
        }
        // Hold back a partial UTF-8 character and a possible start of a stop string.
        let text = &self.text;
        let mut safe = if text.ends_with('\u{FFFD}') { text.trim_end_matches('\u{FFFD}').len() } else { text.len() };
        if self.longest_stop > 0 {
            safe = safe.min(text.len().saturating_sub(self.longest_stop - 1));
            while !text.is_char_boundary(safe) {
                safe -= 1;
            }
        }
        if self.events.send(Event::Token { id, logprob }).is_err() {
            return Ok(Step::Gone);
        }
        if safe > self.emitted {
            let _ = self.events.send(Event::Text(text[self.emitted..safe].to_string()));
            self.emitted = safe;
        }
        Ok(Step::Continue)
    }

    fn finish(self, finish: Finish, prompt_tokens: usize) {
        if self.emitted < self.text.len() {
            let _ = self.events.send(Event::Text(self.text[self.emitted..].trim_end_matches('\u{FFFD}').to_string()));
        }
        let _ = self.events.send(Event::Done { finish, prompt_tokens, completion_tokens: self.generated.len() });
    }
}

/// Decode one request, sending a token event per token; stops when the receiver is dropped.
fn decode(job: Job) -> anyhow::Result<()> {
    let Job { model, prompt_ids, sampling, events } = job;
    let options = GenerateOptions {
        max_tokens: sampling.max_tokens,
        temperature: sampling.temperature,
        top_p: sampling.top_p,
        seed: sampling.seed,
        // The grammar, when there is one, is applied here around the sampler.
        tool_grammar: false,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    let budget = sampling.max_tokens.min(model.context_length.saturating_sub(prompt_ids.len()));
    let mut constrained = sampling
        .grammar
        .as_ref()
        .map(|g| ConstrainedPicker::new(Arc::clone(g), model.token_bytes(), model.stop_ids()).with_budget(budget));
    let mut pick = move |logits: &[f32]| match constrained.as_mut() {
        Some(picker) => picker.pick(logits, |l| sample(l, &options, &mut rng)),
        None => sample(logits, &options, &mut rng),
    };
    let mut emitter = Emitter::new(&model, &sampling, &events);
    let finish = match &model.runtime {
        Runtime::Candle(llama) => decode_candle(llama, &prompt_ids, budget, &mut emitter, pick)?,
        Runtime::MistralRs(runner) => {
            if budget == 0 {
                Some(Finish::Length)
            } else {
                let picker = Box::new(move |logits: &[f32]| pick(logits));
                let stops = emitter.stops.clone();
                let mut generation =
                    runner.generate(prompt_ids.clone(), budget, &stops, picker, sampling.logprobs.is_some())?;
                let mut finish = None;
                // Leaving the loop drops the generation, which cancels it inside mistral.rs.
                while let Some(event) = generation.next_event() {
                    match event {
                        RunnerEvent::Token { id, logits } => match emitter.push(id, logits.as_deref())? {
                            Step::Continue => {}
                            Step::Stop => {
                                finish = Some(Finish::Stop);
                                break;
                            }
                            Step::Gone => return Ok(()),
                        },
                        RunnerEvent::Finished(RunnerFinish::Length) => {
                            finish = Some(Finish::Length);
                            break;
                        }
                        RunnerEvent::Finished(RunnerFinish::Stop) => {
                            finish = Some(Finish::Stop);
                            break;
                        }
                        RunnerEvent::Failed(message) => anyhow::bail!("{message}"),
                    }
                }
                finish
            }
        }
    };
    // `None`: the client went away.
    if let Some(finish) = finish {
        emitter.finish(finish, prompt_ids.len());
    }
    Ok(())
}

/// Our own decoder: `None` when the client went away.
fn decode_candle(
    llama: &Llama,
    prompt_ids: &[u32],
    budget: usize,
    emitter: &mut Emitter,
    mut pick: impl FnMut(&[f32]) -> u32,
) -> anyhow::Result<Option<Finish>> {
    let device = llama.cos_device();
    let mut cache = KvCache::new(llama.config.num_hidden_layers);
    let mut input = Tensor::from_vec(prompt_ids.to_vec(), (1, prompt_ids.len()), &device)?;
    for _ in 0..budget {
        let logits = llama.forward_last(&input, Some(&mut cache))?.squeeze(0)?.to_vec1::<f32>()?;
        let next = pick(&logits);
        match emitter.push(next, Some(&logits))? {
            Step::Continue => {}
            Step::Stop => return Ok(Some(Finish::Stop)),
            Step::Gone => return Ok(None),
        }
        input = Tensor::from_vec(vec![next], (1, 1), &device)?;
    }
    Ok(Some(Finish::Length))
}
