//! Prototype: mistral.rs 0.8.1 as an offline CPU inference engine driven by raw token ids.
//!
//! Usage:
//!   mrs-proto parity MODEL.gguf EXPECTED.json [--tok DIR] [--max N]
//!   mrs-proto bench  MODEL.gguf EXPECTED.json [--tok DIR] [--gen N] [--conc K]
//!   mrs-proto abort  MODEL.gguf EXPECTED.json
//!   mrs-proto actix  MODEL.gguf EXPECTED.json
//! EXPECTED.json is the output of tests/parity/llama_cpp_chat.py (prompt_ids, continuations, eog).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use mistralrs::{
    Constraint, CustomLogitsProcessor, GgufModelBuilder, Model, NormalRequest, Request,
    RequestMessage, Response, SamplingParams, StopTokens, Tensor, TokenSource,
};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

struct LoadOpts {
    tok_dir: Option<String>,
    /// None => GgufModelBuilder (activation dtype hard-wired to ModelDType::Auto, which is F16 on
    /// CPU). Some(dtype) => low-level GGUFLoaderBuilder + MistralRsBuilder path.
    dtype: Option<mistralrs::ModelDType>,
    max_seqs: usize,
    prefix_cache: bool,
    logging: bool,
}

/// Load a local GGUF fully offline on CPU. `model_id` must be an EXISTING absolute directory,
/// otherwise mistral.rs treats it as a HF Hub repo id and tries to download.
async fn load_gguf(path: &str, o: &LoadOpts) -> Result<Model> {
    let p = Path::new(path).canonicalize().with_context(|| format!("no such file {path}"))?;
    let dir = p.parent().unwrap().to_string_lossy().to_string();
    let file = p.file_name().unwrap().to_string_lossy().to_string();
    if let Some(dtype) = o.dtype {
        return load_gguf_lowlevel(dir, file, dtype, o).await;
    }
    let mut b = GgufModelBuilder::new(dir, vec![file])
        .with_token_source(TokenSource::None) // never read HF_TOKEN / ~/.cache/huggingface/token
        .with_force_cpu() // Device::Cpu, no paged attention
        .with_max_num_seqs(o.max_seqs);
    if let Some(t) = &o.tok_dir {
        // tokenizer.json (+ chat_template.jinja / tokenizer_config.json / generation_config.json)
        // from this LOCAL dir instead of the GGUF metadata.
        b = b.with_tok_model_id(Path::new(t).canonicalize()?.to_string_lossy());
    }
    if !o.prefix_cache {
        b = b.with_prefix_cache_n(None);
    }
    if o.logging {
        b = b.with_logging(); // installs a global tracing-subscriber (try_init) at INFO
    }
    b.build().await
}

/// Same as GgufModelBuilder::build (mistralrs/src/model_builder_trait.rs build_gguf_pipeline +
/// build_model_from_pipeline) but with an explicit activation dtype.
async fn load_gguf_lowlevel(dir: String, file: String, dtype: mistralrs::ModelDType, o: &LoadOpts) -> Result<Model> {
    use mistralrs::core::{
        initialize_logging, AutoDeviceMapParams, DefaultSchedulerMethod, DeviceMapSetting,
        GGUFLoaderBuilder, GGUFSpecificConfig, MistralRsBuilder, SchedulerConfig,
    };
    if o.logging {
        initialize_logging();
    }
    let tok = match &o.tok_dir {
        Some(t) => Some(Path::new(t).canonicalize()?.to_string_lossy().to_string()),
        None => None,
    };
    let loader = GGUFLoaderBuilder::new(
        None, // chat_template
        tok,  // tok_model_id
        dir,
        vec![file],
        GGUFSpecificConfig { topology: None },
        false, // no_kv_cache
        None,  // jinja_explicit
    )
    .build();
    let pipeline = loader.load_model_from_hf(
        None,
        TokenSource::None,
        &dtype,
        &mistralrs::Device::Cpu,
        !o.logging, // silent
        DeviceMapSetting::Auto(AutoDeviceMapParams::default_text()),
        None, // ISQ
        None, // paged attention: not on CPU
    )?;
    let sched = SchedulerConfig::DefaultScheduler {
        method: DefaultSchedulerMethod::Fixed(o.max_seqs.try_into()?),
    };
    let runner = MistralRsBuilder::new(pipeline, sched, false, None)
        .with_no_prefix_cache(!o.prefix_cache)
        .with_prefix_cache_n(16)
        .build()
        .await;
    Ok(Model::new(runner))
}

// ---------------------------------------------------------------------------------------------
// Requests with raw prompt token ids
// ---------------------------------------------------------------------------------------------

/// Greedy params: temperature Some(0.0) => Sampler gets None => `sample_argmax`.
/// (SamplingParams::deterministic() has temperature None, which add_request turns into 1.0 + top_k 1.)
fn greedy(max_len: usize, stop_ids: &[u32], top_n_logprobs: usize) -> SamplingParams {
    SamplingParams {
        temperature: Some(0.0),
        top_k: None,
        max_len: Some(max_len),
        stop_toks: if stop_ids.is_empty() { None } else { Some(StopTokens::Ids(stop_ids.to_vec())) },
        top_n_logprobs,
        ..SamplingParams::deterministic()
    }
}

/// Build and send a completion request whose prompt is raw token ids (no chat template, no
/// tokenization). Returns the per-request response receiver.
async fn submit(
    model: &Model,
    prompt: Vec<u32>,
    params: SamplingParams,
    streaming: bool,
    return_logprobs: bool,
    processors: Option<Vec<Arc<dyn CustomLogitsProcessor>>>,
    chan_cap: usize,
) -> Result<mpsc::Receiver<Response>> {
    let (tx, rx) = mpsc::channel(chan_cap);
    let req = Request::Normal(Box::new(NormalRequest {
        id: model.inner().next_request_id(),
        messages: RequestMessage::CompletionTokens(prompt),
        sampling_params: params,
        response: tx,
        return_logprobs,
        is_streaming: streaming,
        constraint: Constraint::None,
        suffix: None,
        tools: None,
        tool_choice: None,
        logits_processors: processors,
        return_raw_logits: false,
        web_search_options: None,
        model_id: None,
        truncate_sequence: false,
    }));
    let sender = model.inner().get_sender(None).map_err(|e| anyhow!("get_sender: {e:?}"))?;
    sender.send(req).await.map_err(|_| anyhow!("engine channel closed"))?;
    Ok(rx)
}

/// Logits processor that does greedy selection itself, records (id, time) and masks every other
/// logit to -inf so the engine's sampler must pick the same id. `ban` ids are never chosen
/// (used by the benchmark to force a fixed number of tokens).
type Rec = Arc<Mutex<Vec<(u32, Instant)>>>;
fn recorder(rec: Rec, ban: Vec<u32>) -> Arc<dyn CustomLogitsProcessor> {
    Arc::new(move |logits: &Tensor, _ctx: &[u32]| -> mistralrs::Result<Tensor> {
        let v: Vec<f32> = logits.to_dtype(mistralrs::DType::F32)?.to_vec1()?;
        let mut best = usize::MAX;
        for (i, &x) in v.iter().enumerate() {
            if ban.contains(&(i as u32)) {
                continue;
            }
            if best == usize::MAX || x > v[best] {
                best = i; // first maximum, like numpy.argmax in llama_cpp_chat.py
            }
        }
        rec.lock().unwrap().push((best as u32, Instant::now()));
        let mut out = vec![f32::NEG_INFINITY; v.len()];
        out[best] = 0.0;
        Tensor::from_vec(out, v.len(), logits.device())
    })
}

#[derive(Debug, Clone)]
struct Gen {
    ids: Vec<u32>,
    finish: String,
    text: String,
    ttft: Option<Duration>,
    total: Duration,
    chunks: usize,
}

/// Non-streaming; token ids come from logprobs (top_logprobs[0].token == argmax token).
async fn generate_nonstream(model: &Model, prompt: Vec<u32>, max: usize, stop: &[u32]) -> Result<Gen> {
    let t0 = Instant::now();
    let mut rx = submit(model, prompt, greedy(max, stop, 1), false, true, None, 1).await?;
    let resp = rx.recv().await.ok_or_else(|| anyhow!("channel closed"))?;
    let c = match resp {
        Response::CompletionDone(c) => c,
        Response::CompletionModelError(m, _) => bail!("model error: {m}"),
        Response::InternalError(e) | Response::ValidationError(e) => bail!("error: {e}"),
        _ => bail!("unexpected response"),
    };
    let ch = &c.choices[0];
    let ids = ch
        .logprobs
        .as_ref()
        .and_then(|l| l.content.as_ref())
        .map(|v| v.iter().map(|lp| lp.top_logprobs[0].token).collect())
        .unwrap_or_default();
    Ok(Gen { ids, finish: ch.finish_reason.clone(), text: ch.text.clone(), ttft: None, total: t0.elapsed(), chunks: 0 })
}

/// Streaming; token ids come from the recorder logits processor, text from chunks.
/// `stop_after_chunks`: drop the stream early (abort test).
async fn generate_stream(
    model: &Model,
    prompt: Vec<u32>,
    params: SamplingParams,
    ban: Vec<u32>,
    stop_after_chunks: Option<usize>,
) -> Result<Gen> {
    let rec: Rec = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let mut rx = submit(model, prompt, params, true, false, Some(vec![recorder(rec.clone(), ban)]), 64).await?;
    let mut text = String::new();
    let mut finish = String::new();
    let mut chunks = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Response::CompletionChunk(c) => {
                chunks += 1;
                let ch = &c.choices[0];
                text.push_str(&ch.text);
                if let Some(f) = &ch.finish_reason {
                    finish = f.clone();
                    break; // no CompletionDone follows a streamed completion
                }
                if stop_after_chunks.is_some_and(|n| chunks >= n) {
                    finish = "client_abort".into();
                    break; // dropping rx => engine's next send fails => seq Canceled
                }
            }
            Response::CompletionModelError(m, _) => bail!("model error: {m}"),
            Response::InternalError(e) | Response::ValidationError(e) => bail!("error: {e}"),
            _ => bail!("unexpected response"),
        }
    }
    drop(rx);
    let total = t0.elapsed();
    let r = rec.lock().unwrap();
    Ok(Gen {
        ids: r.iter().map(|x| x.0).collect(),
        finish,
        text,
        ttft: r.first().map(|x| x.1 - t0),
        total,
        chunks,
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

struct Expected {
    prompt_ids: Vec<Vec<u32>>,
    continuations: Vec<Vec<u32>>,
    stopped: Vec<bool>,
    eog: Vec<u32>,
}
fn read_expected(p: &str) -> Result<Expected> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p)?)?;
    let vv = |k: &str| -> Vec<Vec<u32>> {
        v[k].as_array().unwrap().iter()
            .map(|a| a.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
            .collect()
    };
    Ok(Expected {
        prompt_ids: vv("prompt_ids"),
        continuations: vv("continuations"),
        stopped: v["stopped"].as_array().unwrap().iter().map(|b| b.as_bool().unwrap()).collect(),
        eog: v["eog"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect(),
    })
}

fn proc_status() -> String {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| s.lines().find(|l| l.starts_with(k)).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string()).unwrap_or_default();
    format!("VmRSS={}kB VmHWM={}kB threads={}", get("VmRSS:"), get("VmHWM:"), get("Threads:"))
}

fn arg_dtype(args: &[String]) -> Option<mistralrs::ModelDType> {
    match arg_val(args, "--dtype").as_deref() {
        None | Some("builder") => None,
        Some("f32") => Some(mistralrs::ModelDType::F32),
        Some("f16") => Some(mistralrs::ModelDType::F16),
        Some("bf16") => Some(mistralrs::ModelDType::BF16),
        Some("auto") => Some(mistralrs::ModelDType::Auto),
        Some(x) => panic!("bad --dtype {x}"),
    }
}

fn arg_val(args: &[String], k: &str) -> Option<String> {
    args.iter().position(|a| a == k).and_then(|i| args.get(i + 1).cloned())
}

/// Strip a trailing stop/eog id (mistral.rs reports it, llama_cpp_chat.py does not).
fn strip_stop(ids: &[u32], eog: &[u32]) -> (Vec<u32>, bool) {
    match ids.last() {
        Some(l) if eog.contains(l) => (ids[..ids.len() - 1].to_vec(), true),
        _ => (ids.to_vec(), false),
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

async fn cmd_parity(args: &[String]) -> Result<()> {
    let (model_path, exp) = (&args[0], read_expected(&args[1])?);
    let max: usize = arg_val(args, "--max").map(|s| s.parse().unwrap()).unwrap_or(64);
    let o = LoadOpts { dtype: arg_dtype(args), tok_dir: arg_val(args, "--tok"), max_seqs: 4, prefix_cache: true, logging: std::env::var("MRS_LOG").is_ok() };
    let t = Instant::now();
    let model = load_gguf(model_path, &o).await?;
    println!("loaded {model_path} in {:.2}s  {}", t.elapsed().as_secs_f64(), proc_status());
    let mut all_ok = true;
    for (i, prompt) in exp.prompt_ids.iter().enumerate() {
        let want = &exp.continuations[i];
        let ns = generate_nonstream(&model, prompt.clone(), max, &exp.eog).await?;
        let st = generate_stream(&model, prompt.clone(), greedy(max, &exp.eog, 0), vec![], None).await?;
        let (ns_ids, ns_stopped) = strip_stop(&ns.ids, &exp.eog);
        let (st_ids, st_stopped) = strip_stop(&st.ids, &exp.eog);
        let ok_ns = &ns_ids == want && ns_stopped == exp.stopped[i];
        let ok_st = &st_ids == want && st_stopped == exp.stopped[i];
        all_ok &= ok_ns && ok_st;
        println!(
            "prompt {i}: len {} | llama.cpp {} toks stopped={} | nonstream {} {} finish={} | stream {} {} finish={} chunks={}",
            prompt.len(), want.len(), exp.stopped[i],
            if ok_ns { "MATCH" } else { "DIFF" }, ns.ids.len(), ns.finish,
            if ok_st { "MATCH" } else { "DIFF" }, st.ids.len(), st.finish, st.chunks
        );
        if !ok_ns || !ok_st {
            println!("   want {:?}\n   ns   {:?}\n   st   {:?}", want, ns.ids, st.ids);
        }
        println!("   text(nonstream)={:?}", ns.text.chars().take(120).collect::<String>());
    }
    println!("PARITY {}", if all_ok { "ALL MATCH" } else { "MISMATCH" });
    Ok(())
}

async fn cmd_bench(args: &[String]) -> Result<()> {
    let (model_path, exp) = (&args[0], read_expected(&args[1])?);
    let gen: usize = arg_val(args, "--gen").map(|s| s.parse().unwrap()).unwrap_or(128);
    let conc: usize = arg_val(args, "--conc").map(|s| s.parse().unwrap()).unwrap_or(4);
    let o = LoadOpts { dtype: arg_dtype(args), tok_dir: arg_val(args, "--tok"), max_seqs: conc.max(1), prefix_cache: false, logging: false };
    println!("before load: {}", proc_status());
    let t = Instant::now();
    let model = Arc::new(load_gguf(model_path, &o).await?);
    println!("load_time_s={:.2} {}", t.elapsed().as_secs_f64(), proc_status());
    let ban = exp.eog.clone();
    // warmup
    generate_stream(&model, exp.prompt_ids[0].clone(), greedy(8, &[], 0), ban.clone(), None).await?;
    // single stream
    for (i, p) in exp.prompt_ids.iter().enumerate().take(2) {
        let g = generate_stream(&model, p.clone(), greedy(gen, &[], 0), ban.clone(), None).await?;
        let ttft = g.ttft.unwrap();
        let dec = (g.ids.len() - 1) as f64 / (g.total - ttft).as_secs_f64();
        println!(
            "single[{i}] prompt={} gen={} ttft_ms={:.1} decode_tok_s={:.1} total_s={:.2} finish={}",
            p.len(), g.ids.len(), ttft.as_secs_f64() * 1e3, dec, g.total.as_secs_f64(), g.finish
        );
    }
    // concurrent
    let t = Instant::now();
    let mut hs = Vec::new();
    for k in 0..conc {
        let m = model.clone();
        let p = exp.prompt_ids[k % exp.prompt_ids.len()].clone();
        let ban = ban.clone();
        hs.push(tokio::spawn(async move { generate_stream(&m, p, greedy(gen, &[], 0), ban, None).await }));
    }
    let mut total_toks = 0;
    for (k, h) in hs.into_iter().enumerate() {
        let g = h.await??;
        total_toks += g.ids.len();
        println!("  conc[{k}] gen={} ttft_ms={:.0} total_s={:.2} finish={}", g.ids.len(), g.ttft.unwrap().as_secs_f64() * 1e3, g.total.as_secs_f64(), g.finish);
    }
    let wall = t.elapsed().as_secs_f64();
    println!("concurrent x{conc}: {total_toks} tokens in {wall:.2}s => aggregate {:.1} tok/s  {}", total_toks as f64 / wall, proc_status());
    Ok(())
}

async fn cmd_abort(args: &[String]) -> Result<()> {
    let (model_path, exp) = (&args[0], read_expected(&args[1])?);
    let o = LoadOpts { dtype: arg_dtype(args), tok_dir: None, max_seqs: 4, prefix_cache: true, logging: false };
    let model = load_gguf(model_path, &o).await?;
    let p = exp.prompt_ids[0].clone();
    let to = Duration::from_secs(60);
    // 1. drop a stream with NO max_len after 3 chunks, then a normal request
    let mut params = greedy(1, &[], 0);
    params.max_len = None;
    let g = generate_stream(&model, p.clone(), params, exp.eog.clone(), Some(3)).await?;
    println!("abort#1: dropped stream (no max_len) after {} chunks, {} tokens sampled so far", g.chunks, g.ids.len());
    let t = Instant::now();
    let r = tokio::time::timeout(to, generate_nonstream(&model, p.clone(), 16, &exp.eog)).await;
    println!("abort#1: next request -> {:?} in {:.2}s", r.as_ref().map(|x| x.as_ref().map(|g| g.ids.len()).map_err(|e| e.to_string())), t.elapsed().as_secs_f64());
    // 2. same with max_len
    let g = generate_stream(&model, p.clone(), greedy(200, &[], 0), exp.eog.clone(), Some(3)).await?;
    println!("abort#2: dropped stream (max_len 200) after {} chunks", g.chunks);
    let t = Instant::now();
    let r = tokio::time::timeout(to, generate_nonstream(&model, p.clone(), 16, &exp.eog)).await;
    println!("abort#2: next request -> ok={} in {:.2}s", matches!(r, Ok(Ok(_))), t.elapsed().as_secs_f64());
    if arg_val(args, "--case").as_deref() == Some("drop-nonstream") {
        // 4. non-streaming request whose receiver is dropped before completion (client gone)
        let rx = submit(&model, p.clone(), greedy(200, &[], 0), false, true, Some(vec![recorder(Arc::new(Mutex::new(Vec::new())), exp.eog.clone())]), 1).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(rx);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t = Instant::now();
        let r = tokio::time::timeout(to, generate_nonstream(&model, p.clone(), 16, &exp.eog)).await;
        println!("abort#4: after dropping a NON-streaming receiver mid-generation: next request -> {:?} in {:.2}s",
            r.map(|x| x.map(|g| g.ids.len()).map_err(|e| e.to_string())), t.elapsed().as_secs_f64());
        return Ok(());
    }
    // 3. a stream that is kept alive but NOT read (receiver held, channel capacity 1):
    //    does it stall other requests?
    let rec: Rec = Arc::new(Mutex::new(Vec::new()));
    let mut params = greedy(1, &[], 0);
    params.max_len = None;
    let held = submit(&model, p.clone(), params, true, false, Some(vec![recorder(rec.clone(), exp.eog.clone())]), 1).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let m2 = Arc::new(model);
    let model = m2.clone();
    let other = tokio::spawn({ let (m, p, eog) = (m2.clone(), p.clone(), exp.eog.clone()); async move { generate_nonstream(&m, p, 16, &eog).await } });
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "abort#3: while an unread stream is held (cap 1): other request finished={} after {:.2}s (held stream sampled {} tokens)",
        other.is_finished(), t.elapsed().as_secs_f64(), rec.lock().unwrap().len()
    );
    drop(held);
    let r = tokio::time::timeout(to, other).await;
    println!("abort#3: after dropping the held stream, the blocked request -> ok={} at {:.2}s", matches!(r, Ok(Ok(Ok(_)))), t.elapsed().as_secs_f64());
    let t = Instant::now();
    let r = tokio::time::timeout(to, generate_nonstream(&model, p.clone(), 16, &exp.eog)).await;
    println!("abort#3: after dropping the held stream: next request ok={} in {:.2}s", matches!(r, Ok(Ok(_))), t.elapsed().as_secs_f64());
    // 4. TerminateAllSeqsNextStep exists as a global abort
    Ok(())
}

/// actix-web style: the model lives in a dedicated multi-thread runtime (built there); request
/// handlers run on separate current_thread runtimes (like actix workers) and call the shared
/// Arc<Model> directly -- the API is just tokio mpsc channels, which are runtime-agnostic.
fn cmd_actix(args: &[String]) -> Result<()> {
    let (model_path, exp) = (args[0].clone(), read_expected(&args[1])?);
    let engine_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let o = LoadOpts { dtype: arg_dtype(args), tok_dir: None, max_seqs: 4, prefix_cache: true, logging: false };
    let model = Arc::new(engine_rt.block_on(load_gguf(&model_path, &o))?);
    println!("loaded on dedicated runtime; {}", proc_status());
    let prompts = exp.prompt_ids.clone();
    let eog = exp.eog.clone();
    let mut ths = Vec::new();
    for w in 0..2 {
        let (m, prompts, eog) = (model.clone(), prompts.clone(), eog.clone());
        ths.push(std::thread::spawn(move || -> Result<String> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let a = generate_stream(&m, prompts[w].clone(), greedy(32, &eog, 0), vec![], None).await?;
                let b = generate_nonstream(&m, prompts[w + 1].clone(), 32, &eog).await?;
                Ok(format!("worker{w}: stream {} ids finish={}, nonstream {} ids finish={}", a.ids.len(), a.finish, b.ids.len(), b.finish))
            })
        }));
    }
    for t in ths {
        println!("{}", t.join().unwrap()?);
    }
    // Building the model from a current_thread runtime also works (dummy warm-up run is skipped).
    let rt1 = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let m2 = rt1.block_on(load_gguf(&model_path, &o))?;
    let g = rt1.block_on(generate_nonstream(&m2, prompts[0].clone(), 8, &eog))?;
    println!("model built inside a current_thread runtime: {} ids finish={}", g.ids.len(), g.finish);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().cloned().unwrap_or_default();
    if cmd == "actix" {
        return cmd_actix(&args[1..]);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cmd.as_str() {
            "parity" => cmd_parity(&args[1..]).await,
            "bench" => cmd_bench(&args[1..]).await,
            "abort" => cmd_abort(&args[1..]).await,
            _ => bail!("usage: mrs-proto parity|bench|abort|actix MODEL.gguf EXPECTED.json [--tok DIR] [--max N] [--gen N] [--conc K]"),
        }
    })
}
