//! The crash ("chaos") harness: each durable job kind (import traces, import preference pairs,
//! bootstrap, dataset build, SFT training, export, a capture scan, an eval, GRPO and DPO training,
//! a deploy to the Ollama stand-in, an orchestrator cycle) runs in the real binary and is
//! SIGKILLed at moments drawn from a seeded RNG, uniformly over the duration of an uninterrupted
//! run of the same work; it is resumed (`jobs resume`, `train --resume`, or the same command when
//! the kill came before the job was recorded, or for the orchestrator always `orchestrator once`),
//! maybe killed again, until it finishes. The later kinds start from a copy of the database the
//! SFT run (eval, GRPO, DPO) or the export (deploy) left. Checked after every kill: SQLite's
//! integrity and foreign keys, at most one job, rows that are a subset of the uninterrupted run's,
//! dataset/export/checkpoint directories whole or absent, checkpoints bit-identical to the
//! uninterrupted run's, an eval's stored cases matching its checkpoint, the Ollama stand-in holding
//! only what the uninterrupted run made, at most one orchestrator cycle with its jobs all linked,
//! in order. Checked at the end: the same rows (none lost, duplicated or half-written: traces,
//! pairs, datasets, models, exports, eval runs and cases, deployments, promotions, cycles, jobs),
//! the same report, byte-identical dataset and export files, bit-identical trained weights and
//! checkpoints, the same models in the stand-in, no staging leftovers. `UNDERSTUDY_CHAOS_SEED`
//! sets the seed, `UNDERSTUDY_CHAOS_KILLS` the kills per kind (default 2).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use regex::Regex;
use rusqlite::{Connection, OpenFlags};
use serde_json::Value;

use crate::deploy::FakeOllama;
use crate::support::{cli, fixture, understudy_command};

const DEFAULT_SEED: u64 = 0x00c4_a05e;
const DEFAULT_KILLS: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ImportTraces,
    ImportDpo,
    Bootstrap,
    BuildDataset,
    Train,
    Export,
    CaptureScan,
    Eval,
    Grpo,
    Dpo,
    Deploy,
    Orchestrator,
}

impl Kind {
    /// In order: eval, GRPO and DPO start from what SFT trained, deploy from what export made.
    const ALL: [Kind; 12] = [
        Kind::ImportTraces,
        Kind::ImportDpo,
        Kind::Bootstrap,
        Kind::BuildDataset,
        Kind::Train,
        Kind::Export,
        Kind::CaptureScan,
        Kind::Eval,
        Kind::Grpo,
        Kind::Dpo,
        Kind::Deploy,
        Kind::Orchestrator,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::ImportTraces => "import_traces",
            Kind::ImportDpo => "import_dpo",
            Kind::Bootstrap => "bootstrap",
            Kind::BuildDataset => "build_dataset",
            Kind::Train => "train",
            Kind::Export => "export",
            Kind::CaptureScan => "capture_scan",
            Kind::Eval => "eval",
            Kind::Grpo => "train_grpo",
            Kind::Dpo => "train_dpo",
            Kind::Deploy => "deploy",
            Kind::Orchestrator => "orchestrator",
        }
    }

    /// The `jobs.kind` of its job; a capture scan is no job (each file commits on its own), an
    /// orchestrator cycle is a row of its own with a job per stage.
    fn job_kind(self) -> Option<&'static str> {
        match self {
            Kind::CaptureScan | Kind::Orchestrator => None,
            Kind::Train | Kind::Grpo | Kind::Dpo => Some("train"),
            other => Some(other.name()),
        }
    }

    /// A training run: checkpoints compared, resumed with `train --resume` or `jobs resume`.
    fn trains(self) -> bool {
        matches!(self, Kind::Train | Kind::Grpo | Kind::Dpo)
    }
}

/// One kind's work: a database to start from (a copy of an earlier reference's), commands that
/// fill the data dir, then the command that is killed.
struct Work<'a> {
    kind: Kind,
    template: Option<PathBuf>,
    /// The jobs of the template: not this work's.
    template_jobs: BTreeSet<String>,
    prepare: Vec<Vec<String>>,
    command: Vec<String>,
    /// The Ollama stand-in the work deploys to, emptied before each run.
    ollama: Option<&'a FakeOllama>,
}

impl Work<'_> {
    /// The jobs of this work's kind in a data dir, the template's left out.
    fn jobs(&self, data: &Path) -> Vec<JobRow> {
        let Some(kind) = self.kind.job_kind() else { return Vec::new() };
        jobs_of(data, kind).into_iter().filter(|job| !self.template_jobs.contains(&job.id)).collect()
    }

    fn job(&self, data: &Path) -> Option<JobRow> {
        self.jobs(data).pop()
    }
}

/// Figures of one kind, or of all of them.
#[derive(Default)]
struct Tally {
    kills: usize,
    /// Restarts included: a kill before the job was recorded runs the command again.
    resumes: usize,
    restarts: usize,
    /// Kills that came after the job had finished (before its process exited): nothing to resume.
    after_finish: usize,
    checks: usize,
    failures: Vec<String>,
    kill_ms: Vec<u64>,
    rounds: usize,
}

impl Tally {
    /// Count one invariant check; record `what` when it does not hold.
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        self.checks += 1;
        if !ok {
            let mut message = what();
            if message.len() > 1500 {
                let mut cut = 1500;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push_str(" …");
            }
            self.failures.push(message);
        }
        ok
    }

    fn add(&mut self, other: &Tally) {
        self.kills += other.kills;
        self.resumes += other.resumes;
        self.restarts += other.restarts;
        self.after_finish += other.after_finish;
        self.checks += other.checks;
        self.failures.extend(other.failures.iter().cloned());
    }
}

/// The uninterrupted run a kind is compared with.
struct Reference {
    data: PathBuf,
    output: Value,
    duration: Duration,
    /// Its rows per table (see `rows`).
    rows: BTreeMap<&'static str, Vec<String>>,
    /// The same by `in_progress_query`.
    in_progress: BTreeMap<&'static str, Vec<String>>,
    /// What the Ollama stand-in held after it.
    ollama: Option<Ollama>,
}

/// The Ollama stand-in's blobs, models (name -> the create request, as JSON) and requests
/// (`METHOD path`, and the bodies of those that are not blob uploads), ids mapped.
#[derive(Debug, PartialEq)]
struct Ollama {
    blobs: BTreeSet<String>,
    models: BTreeMap<String, String>,
    calls: BTreeSet<String>,
    bodies: BTreeSet<String>,
}

impl Ollama {
    fn read(fake: &FakeOllama, ids: &BTreeMap<String, String>) -> Ollama {
        let (blobs, models, requests) = fake.snapshot();
        Ollama {
            blobs: blobs.iter().map(|b| replace_all(b, ids)).collect(),
            models: models
                .iter()
                .map(|(name, body)| (replace_all(name, ids), normalized_json(&body.to_string(), ids)))
                .collect(),
            calls: requests.iter().map(|(call, _)| replace_all(call, ids)).collect(),
            bodies: requests
                .iter()
                .filter(|(_, body)| !body.is_empty())
                .map(|(_, body)| normalized_json(body, ids))
                .collect(),
        }
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn chaos_sigkill_every_job_kind_and_resume_to_the_uninterrupted_result() {
    let seed: u64 = env_number("UNDERSTUDY_CHAOS_SEED", DEFAULT_SEED);
    let kills: usize = env_number("UNDERSTUDY_CHAOS_KILLS", DEFAULT_KILLS);
    println!("chaos: seed {seed} (UNDERSTUDY_CHAOS_SEED), {kills} kills per kind (UNDERSTUDY_CHAOS_KILLS)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let started = Instant::now();

    let temp = tempfile::tempdir().unwrap();
    let inputs = Inputs::write(temp.path());
    let ollama = FakeOllama::start();

    let mut references = Vec::new();
    let mut sources = Sources { inputs, scratch: temp.path().to_path_buf(), trained: None, exported: None };
    let mut total = Tally::default();
    for kind in Kind::ALL {
        let kind_started = Instant::now();
        let work = work_for(kind, &sources, &ollama);
        let temp = tempfile::tempdir().unwrap();
        let reference = uninterrupted(&work, &temp.path().join("data"));
        match kind {
            Kind::Train => {
                sources.trained = Some(Trained {
                    data: reference.data.clone(),
                    model_id: reference.output["model_id"].as_str().unwrap().to_string(),
                    model: PathBuf::from(reference.output["checkpoint_dir"].as_str().unwrap()).join("model"),
                })
            }
            Kind::Export => sources.exported = Some(reference.data.clone()),
            _ => {}
        }
        let tally = chaos(&work, &reference, kills, &mut rng);
        let (low, high) =
            (tally.kill_ms.iter().min().copied().unwrap_or(0), tally.kill_ms.iter().max().copied().unwrap_or(0));
        println!(
            "chaos: {}: {} kills, {} resumes ({} restarts), {} invariant checks, {} failures; {} rounds, {} kills after the job finished, kill moments {low}..{high} ms of an uninterrupted {} ms; {:.1} s",
            kind.name(),
            tally.kills,
            tally.resumes,
            tally.restarts,
            tally.checks,
            tally.failures.len(),
            tally.rounds,
            tally.after_finish,
            reference.duration.as_millis(),
            kind_started.elapsed().as_secs_f64()
        );
        total.add(&tally);
        references.push(temp);
    }
    println!(
        "chaos: {} kills, {} resumes, {} invariant checks, {} failures",
        total.kills,
        total.resumes,
        total.checks,
        total.failures.len()
    );
    println!("chaos: {:.1} s", started.elapsed().as_secs_f64());
    assert!(total.failures.is_empty(), "chaos failures (seed {seed}):\n{}", total.failures.join("\n"));
}

/// What the work of later kinds starts from: the inputs, the SFT reference's data dir and model,
/// the export reference's data dir.
struct Sources {
    inputs: Inputs,
    /// Where data dirs shared by every run of a kind go.
    scratch: PathBuf,
    trained: Option<Trained>,
    exported: Option<PathBuf>,
}

struct Trained {
    data: PathBuf,
    model_id: String,
    /// The model directory.
    model: PathBuf,
}

/// The files the work reads, shared by every run.
struct Inputs {
    /// Many lines of trace records: good ones (varied), duplicates and rejected ones.
    traces: PathBuf,
    /// The same for preference pairs.
    pairs: PathBuf,
    /// 300 bootstrapped traces as canonical records, their times fixed, for dataset builds.
    dataset_traces: PathBuf,
    /// A generated Claude Code tree of 160 sessions.
    claude: PathBuf,
    /// An eval suite of short cases (the tiny model's context holds them, and its replies).
    suite: PathBuf,
}

impl Inputs {
    fn write(dir: &Path) -> Inputs {
        let traces = dir.join("traces.jsonl");
        varied_copies(&["canonical_mixed.jsonl", "overfit.jsonl", "overfit_tools.jsonl"], 2500, &traces);
        let pairs = dir.join("pairs.jsonl");
        varied_copies(&["dpo_pairs.jsonl", "dpo_trl.jsonl"], 1500, &pairs);
        let scratch = dir.join("bootstrap");
        let run = cli(&scratch, &["bootstrap", "--traces", "300", "--seed", "3", "--json"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let dataset_traces = dir.join("dataset-traces.jsonl");
        let run = cli(&scratch, &["traces", "export", "--out", dataset_traces.to_str().unwrap()]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let claude = dir.join("claude");
        understudy::capture::bench::generate(&claude, 160, 20).unwrap();
        // Short prompts with few tools, so the tiny model replies within its context (the
        // built-in suites' prompts fill it).
        let suite = fixture("short_suite.jsonl");
        Inputs { traces, pairs, dataset_traces, claude, suite }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn work_for<'a>(kind: Kind, sources: &Sources, ollama: &'a FakeOllama) -> Work<'a> {
    let inputs = &sources.inputs;
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (traces, pairs, dataset_traces, claude) =
        (&inputs.traces, &inputs.pairs, &inputs.dataset_traces, &inputs.claude);
    let trained = || sources.trained.as_ref().expect("SFT ran first");
    let import_suite =
        || vec!["eval".into(), "suites".into(), "import".into(), path(&inputs.suite), "--name".into(), "chaos".into()];
    let (prepare, command) = match kind {
        Kind::ImportTraces => (vec![], vec!["import".into(), "traces".into(), path(traces), "--json".into()]),
        Kind::ImportDpo => (vec![], vec!["import".into(), "dpo".into(), path(pairs), "--json".into()]),
        Kind::Bootstrap => (vec![], strings(&["bootstrap", "--traces", "2000", "--seed", "11", "--json"])),
        Kind::BuildDataset => (
            vec![vec!["import".into(), "traces".into(), path(dataset_traces), "--json".into()]],
            strings(&["build-dataset", "--seed", "1", "--json"]),
        ),
        Kind::Train => (
            vec![
                vec!["import".into(), "traces".into(), path(&fixture("overfit.jsonl")), "--json".into()],
                strings(&["build-dataset", "--val-ratio", "0", "--test-ratio", "0", "--json"]),
            ],
            strings(&[
                "train",
                "--phase",
                "sft",
                "--max-steps",
                "16",
                "--epochs",
                "16",
                "--batch-size",
                "2",
                "--checkpoint-every",
                "2",
                "--eval-every",
                "100",
                "--seed",
                "5",
                "--json",
            ]),
        ),
        Kind::Export => {
            let mut command = vec!["export".into(), "--model-path".into(), path(&trained().model)];
            command.extend(strings(&[
                "--quant",
                "f32",
                "--quant",
                "f16",
                "--quant",
                "q8_0",
                "--quant",
                "q4_k_m",
                "--parity-prompts",
                "2",
                "--parity-max-tokens",
                "16",
                "--json",
            ]));
            (vec![], command)
        }
        Kind::CaptureScan => {
            (vec![], vec!["capture".into(), "scan".into(), "--dir".into(), path(claude), "--json".into()])
        }
        Kind::Eval => {
            let mut command = vec!["eval".into(), "--model".into(), trained().model_id.clone()];
            command.extend(strings(&["--suite", "chaos", "--max-turns", "2", "--max-tokens", "24", "--json"]));
            (vec![import_suite()], command)
        }
        Kind::Grpo => {
            let mut command = strings(&["train", "--phase", "grpo", "--model"]);
            command.push(trained().model_id.clone());
            command.extend(strings(&[
                "--suite",
                "chaos",
                "--max-steps",
                "2",
                "--group-size",
                "2",
                "--prompts-per-step",
                "1",
                "--max-turns",
                "1",
                "--max-tokens",
                "8",
                "--lr",
                "0.001",
                "--checkpoint-every",
                "1",
                // Step 1's group scores alike (no update), step 2's does not: a run resumed
                // from checkpoint 1 must continue with the optimizer's own update count.
                "--seed",
                "1",
                "--json",
            ]));
            (vec![import_suite()], command)
        }
        Kind::Dpo => {
            let mut command = strings(&["train", "--phase", "dpo", "--model"]);
            command.push(trained().model_id.clone());
            command.extend(strings(&[
                "--epochs",
                "4",
                "--batch-size",
                "4",
                "--lr",
                "0.001",
                "--checkpoint-every",
                "1",
                "--seed",
                "2",
                "--json",
            ]));
            (vec![], command)
        }
        Kind::Deploy => {
            let command =
                vec!["deploy".into(), "--ollama-host".into(), ollama.host.clone(), "--test".into(), "--json".into()];
            (vec![], command)
        }
        Kind::Orchestrator => {
            let mut configure = strings(&[
                "orchestrator",
                "config",
                "--min-traces",
                "3",
                "--traces-per-cycle",
                "3",
                "--max-steps",
                "8",
                "--batch-size",
                "2",
                "--max-seq-len",
                "1024",
                "--rl-every",
                "1",
                "--rl-phase",
                "grpo",
                "--rl-steps",
                "2",
                "--rl-max-tokens",
                "8",
                "--eval-limit",
                "2",
                "--eval-max-tokens",
                "16",
                "--export-quant",
                "q8_0",
                "--auto-deploy",
                "true",
                "--seed",
                "3",
                "--json",
                "--ollama-host",
            ]);
            configure.push(ollama.host.clone());
            let prepare = vec![
                vec!["import".into(), "traces".into(), path(&fixture("overfit.jsonl")), "--json".into()],
                configure,
            ];
            (prepare, strings(&["orchestrator", "once", "--json"]))
        }
    };
    let template = match kind {
        Kind::Eval | Kind::Grpo => Some(trained().data.clone()),
        Kind::Dpo => {
            // DPO needs pairs in a dataset built with the model's tokenizer. Built once: the
            // imported pairs' traces get random ids, which the dataset's files would carry.
            let base = sources.scratch.join("dpo-base");
            copy_database(&trained().data, &base);
            for args in [
                vec!["import".into(), "dpo".into(), path(&fixture("dpo_pairs.jsonl")), "--json".into()],
                vec![
                    "build-dataset".into(),
                    "--val-ratio".into(),
                    "0".into(),
                    "--test-ratio".into(),
                    "0".into(),
                    "--model".into(),
                    path(&trained().model),
                    "--json".into(),
                ],
            ] {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let run = cli(&base, &args);
                assert_eq!(run.code, 0, "preparing DPO's data: {args:?}: {}", run.stderr);
            }
            Some(base)
        }
        Kind::Deploy => Some(sources.exported.clone().expect("export ran first")),
        _ => None,
    };
    let template_jobs = template.as_deref().map(job_ids).unwrap_or_default();
    let ollama = matches!(kind, Kind::Deploy | Kind::Orchestrator).then_some(ollama);
    Work { kind, template, template_jobs, prepare, command, ollama }
}

/// A file of `copies` copies of the fixtures' lines; each good record's prompt, first user
/// message and id vary by copy, every 7th copy repeats the originals (duplicates), and the
/// fixtures' bad lines stay bad (rejected).
fn varied_copies(fixtures: &[&str], copies: usize, out: &Path) {
    let lines: Vec<String> = fixtures
        .iter()
        .flat_map(|name| {
            std::fs::read_to_string(fixture(name)).unwrap().lines().map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    let mut file = std::io::BufWriter::new(File::create(out).unwrap());
    for copy in 0..copies {
        for line in &lines {
            let varied = match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(mut record)) if copy % 7 != 3 => {
                    vary(&mut record, copy);
                    Value::Object(record).to_string()
                }
                _ => line.clone(),
            };
            writeln!(file, "{varied}").unwrap();
        }
    }
    file.flush().unwrap();
}

fn vary(record: &mut serde_json::Map<String, Value>, copy: usize) {
    let suffix = format!(" (variant {copy})");
    if let Some(Value::String(id)) = record.get_mut("id") {
        id.push_str(&format!("_{copy}"));
    }
    if let Some(Value::String(prompt)) = record.get_mut("prompt") {
        prompt.push_str(&suffix);
    }
    if let Some(Value::Array(messages)) = record.get_mut("messages") {
        if let Some(user) = messages.iter_mut().find(|m| m["role"] == "user") {
            match user.get_mut("content") {
                Some(Value::String(text)) => text.push_str(&suffix),
                Some(Value::Array(parts)) => {
                    if let Some(Value::String(text)) = parts.iter_mut().find_map(|p| p.get_mut("text")) {
                        text.push_str(&suffix);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Copy a data dir's database (not its artifacts: rows name them by absolute path). No process
/// has it open: the database and its write-ahead log are consistent.
fn copy_database(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["understudy.db", "understudy.db-wal"] {
        if from.join(file).exists() {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
}

/// Fill a fresh data dir: the template's database, then the prepare commands; empty the Ollama
/// stand-in.
fn run_prepare(work: &Work, data: &Path) {
    if let Some(template) = &work.template {
        copy_database(template, data);
    }
    for args in &work.prepare {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = cli(data, &args);
        assert_eq!(run.code, 0, "preparing {}: {args:?}: {}", work.kind.name(), run.stderr);
    }
    if let Some(ollama) = work.ollama {
        ollama.reset();
    }
}

fn uninterrupted(work: &Work, data: &Path) -> Reference {
    run_prepare(work, data);
    let started = Instant::now();
    let output = understudy_command(data, &work.command).output().unwrap();
    let duration = started.elapsed();
    assert!(
        output.status.success(),
        "the uninterrupted {} failed: {}",
        work.kind.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    let output = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("{}: stdout is not JSON ({e}): {}", work.kind.name(), String::from_utf8_lossy(&output.stdout))
    });
    let rows = TABLES.iter().chain(&FINAL_TABLES).map(|table| (*table, rows(table, data, &BTreeMap::new()))).collect();
    let in_progress = TABLES
        .iter()
        .filter_map(|table| Some((*table, rows_of(in_progress_query(table)?, data, &BTreeMap::new()))))
        .collect();
    let ollama = work.ollama.map(|fake| Ollama::read(fake, &BTreeMap::new()));
    Reference { data: data.to_path_buf(), output, duration, rows, in_progress, ollama }
}

/// Kill rounds until `kills` kills landed: each round is a fresh data dir killed and resumed
/// until the work finishes, then compared with the reference.
fn chaos(work: &Work, reference: &Reference, kills: usize, rng: &mut ChaCha8Rng) -> Tally {
    let mut tally = Tally::default();
    while tally.kills < kills && tally.rounds < kills * 4 + 2 {
        tally.rounds += 1;
        let temp = tempfile::tempdir().unwrap();
        let data = temp.path().join("data");
        run_prepare(work, &data);
        if let Some(output) = kill_and_resume(work, reference, temp.path(), &data, rng, &mut tally) {
            compare_finished(work, reference, &data, &output, &mut tally);
        }
    }
    tally
}

/// Run the work, killing each process at a random moment, resuming after each kill, until a
/// process finishes; its JSON output (or the job's stored result when the kill came after the
/// job finished). None when a process failed (recorded).
fn kill_and_resume(
    work: &Work,
    reference: &Reference,
    temp: &Path,
    data: &Path,
    rng: &mut ChaCha8Rng,
    tally: &mut Tally,
) -> Option<Value> {
    let name = work.kind.name();
    let mut next = work.command.clone();
    let mut train_resume = false;
    let limit = reference.duration.as_millis().max(1) as u64;
    for attempt in 0.. {
        let (stdout_path, stderr_path) =
            (temp.join(format!("stdout-{attempt}")), temp.join(format!("stderr-{attempt}")));
        // A kind that starts over when resumed (a dataset build, an export) survives only a draw
        // past its run time; after many kills in one round, the last run goes unkilled.
        let kill_at = if attempt < 25 { Duration::from_millis(rng.random_range(0..limit)) } else { Duration::MAX };
        let started = Instant::now();
        let mut child = understudy_command(data, &next)
            .stdout(Stdio::from(File::create(&stdout_path).unwrap()))
            .stderr(Stdio::from(File::create(&stderr_path).unwrap()))
            .spawn()
            .unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() >= kill_at {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if let Some(status) = status {
            let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            tally.check(status.success(), || format!("{name}: `{}` ended {status}: {stderr}", next.join(" ")));
            if !status.success() {
                return None;
            }
            return match serde_json::from_str(&stdout) {
                Ok(value) => Some(value),
                Err(e) => {
                    tally.failures.push(format!("{name}: `{}` printed no JSON ({e}): {stdout}", next.join(" ")));
                    None
                }
            };
        }
        tally.kills += 1;
        tally.kill_ms.push(kill_at.as_millis() as u64);
        check_after_kill(work, reference, data, kill_at, tally);
        if work.kind == Kind::Orchestrator {
            // `once` resumes the running cycle; one that ended is not run again.
            if let Some(cycle) = ended_cycle(data) {
                tally.after_finish += 1;
                return Some(cycle);
            }
            tally.resumes += 1;
            continue;
        }
        if work.kind.job_kind().is_none() {
            tally.resumes += 1;
            continue;
        }
        match work.job(data) {
            None => {
                tally.resumes += 1;
                tally.restarts += 1;
                next = work.command.clone();
            }
            Some(job) if job.status == "succeeded" => {
                tally.after_finish += 1;
                return job.result;
            }
            Some(job) => {
                tally.resumes += 1;
                // Training resumes both ways, alternately.
                train_resume = !train_resume;
                next = if work.kind.trains() && train_resume {
                    vec!["train".into(), "--resume".into(), job.id, "--json".into()]
                } else {
                    vec!["jobs".into(), "resume".into(), job.id, "--json".into()]
                };
            }
        }
    }
    unreachable!()
}

struct JobRow {
    id: String,
    status: String,
    result: Option<Value>,
    checkpoint: Option<Value>,
}

/// The orchestrator's cycle once it ended, as `orchestrator once --json` prints it.
fn ended_cycle(data: &Path) -> Option<Value> {
    let conn = open(data)?;
    let (id, number, status, stage, state): (String, i64, String, String, String) = conn
        .query_row(
            "SELECT id, number, status, stage, state FROM orchestrator_cycles WHERE status != 'running'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?)),
        )
        .ok()?;
    let mut statement = conn.prepare("SELECT stage, job_id FROM orchestrator_cycle_jobs WHERE cycle_id = ?").unwrap();
    let jobs: Vec<Value> = statement
        .query_map([&id], |row| Ok(serde_json::json!([row.get::<_, String>(0)?, row.get::<_, String>(1)?])))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let state: Value = serde_json::from_str(&state).unwrap();
    Some(serde_json::json!({
        "outcome": "ran",
        "cycle": {"id": id, "number": number, "status": status, "stage": stage, "state": state, "jobs": jobs},
    }))
}

fn open(data: &Path) -> Option<Connection> {
    let path = data.join("understudy.db");
    path.exists().then(|| {
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    })
}

/// The jobs of a kind in a data dir.
fn jobs_of(data: &Path, kind: &str) -> Vec<JobRow> {
    let Some(conn) = open(data) else { return Vec::new() };
    let Ok(mut statement) =
        conn.prepare("SELECT id, status, result, checkpoint FROM jobs WHERE kind = ? ORDER BY created_at")
    else {
        // Killed before the migrations made the table.
        return Vec::new();
    };
    statement
        .query_map([kind], |row| {
            let (result, checkpoint): (Option<String>, Option<String>) = (row.get(2)?, row.get(3)?);
            Ok(JobRow {
                id: row.get(0)?,
                status: row.get(1)?,
                result: result.map(|r| serde_json::from_str(&r).unwrap()),
                checkpoint: checkpoint.map(|c| serde_json::from_str(&c).unwrap()),
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The ids of every job in a data dir.
fn job_ids(data: &Path) -> BTreeSet<String> {
    let conn = open(data).expect("a database");
    let mut statement = conn.prepare("SELECT id FROM jobs").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

fn job_of(data: &Path, kind: &str) -> Option<JobRow> {
    jobs_of(data, kind).pop()
}

/// `PRAGMA integrity_check` says ok, no foreign key is dangling, and the journal is WAL (a
/// database that does not exist yet — killed before it was created — passes).
fn check_database(name: &str, data: &Path, when: &str, tally: &mut Tally) {
    let Some(conn) = open(data) else {
        tally.check(true, String::new);
        return;
    };
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tally.check(integrity == ["ok"], || format!("{name} {when}: integrity_check says {integrity:?}"));
    let dangling: usize = conn.prepare("PRAGMA foreign_key_check").unwrap().query_map([], |_| Ok(())).unwrap().count();
    tally.check(dangling == 0, || format!("{name} {when}: {dangling} rows with a dangling foreign key"));
    let mode: String = conn.pragma_query_value(None, "journal_mode", |row| row.get(0)).unwrap();
    tally.check(mode == "wal" || (mode == "delete" && !has_tables(&conn)), || {
        format!("{name} {when}: journal mode {mode}")
    });
}

fn has_tables(conn: &Connection) -> bool {
    conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'", [], |row| row.get::<_, i64>(0)).unwrap()
        > 0
}

/// What must hold in a data dir whose process was just killed.
fn check_after_kill(work: &Work, reference: &Reference, data: &Path, kill_at: Duration, tally: &mut Tally) {
    let name = work.kind.name();
    let when = format!("after a kill at {} ms", kill_at.as_millis());
    check_database(name, data, &when, tally);
    if let Some(kind) = work.kind.job_kind() {
        let jobs = work.jobs(data);
        tally.check(jobs.len() <= 1, || format!("{name} {when}: {} {kind} jobs", jobs.len()));
    }
    // The rows so far are rows of the uninterrupted run: none half-written, none foreign.
    let ids = id_map(work.kind, reference, data);
    for table in TABLES {
        let (ours, theirs) = match in_progress_query(table) {
            Some(sql) => (rows_of(sql, data, &ids), &reference.in_progress[table]),
            None => (rows(table, data, &ids), &reference.rows[table]),
        };
        let theirs: BTreeSet<&String> = theirs.iter().collect();
        let foreign: Vec<&String> = ours.iter().filter(|row| !theirs.contains(*row)).collect();
        tally.check(foreign.is_empty(), || {
            format!("{name} {when}: {} {table} rows the uninterrupted run lacks, e.g. {}", foreign.len(), foreign[0])
        });
        let distinct: BTreeSet<&String> = ours.iter().collect();
        tally.check(distinct.len() == ours.len(), || format!("{name} {when}: duplicate {table} rows"));
    }
    // An eval's stored cases are those its checkpoint counts (each stored with it).
    if work.kind == Kind::Eval {
        if let Some(job) = work.job(data) {
            let next = job.checkpoint.as_ref().and_then(|c| c["next"].as_u64()).unwrap_or(0);
            let stored = count(data, "SELECT COUNT(*) FROM eval_cases WHERE run_id = ?", &eval_run_id(&job.id));
            tally.check(stored == next as i64, || {
                format!("{name} {when}: {stored} cases stored, the checkpoint says {next}")
            });
        }
    }
    if work.kind == Kind::Orchestrator {
        check_cycles(name, data, &when, tally);
    }
    // The Ollama stand-in holds only what the uninterrupted run made, and saw only its requests.
    if let (Some(fake), Some(theirs)) = (work.ollama, &reference.ollama) {
        let ours = Ollama::read(fake, &ids);
        check_ollama_subset(name, &when, &ours, theirs, tally);
    }
    // Directories are whole or absent (their staging siblings may be partial).
    let artifacts = data.join("artifacts");
    let reference_artifacts = reference.data.join("artifacts");
    for kind in ["datasets", "exports"] {
        let wanted = match kind {
            "datasets" => matches!(work.kind, Kind::BuildDataset | Kind::Orchestrator),
            _ => matches!(work.kind, Kind::Export | Kind::Orchestrator),
        };
        if !wanted {
            continue;
        }
        let whole = file_names(&only_dir(&reference_artifacts.join(kind)));
        for dir in finished_dirs(&artifacts.join(kind)) {
            let names = file_names(&dir);
            tally.check(names == whole, || format!("{name} {when}: {} holds {names:?}", dir.display()));
        }
    }
    if work.kind.trains() || work.kind == Kind::Orchestrator {
        // Runs pair up in the order they were made (their ids are ULIDs).
        let (ours, theirs) = (finished_dirs(&artifacts.join("runs")), finished_dirs(&reference_artifacts.join("runs")));
        tally.check(ours.len() <= theirs.len(), || format!("{name} {when}: run directories {ours:?}"));
        for (run, reference_run) in ours.iter().zip(&theirs) {
            for dir in finished_dirs(run) {
                let file = dir.file_name().unwrap().to_str().unwrap().to_string();
                let expected = reference_run.join(&file);
                let names = file_names(&dir);
                tally.check(names == file_names(&expected), || {
                    format!("{name} {when}: {} holds {names:?}", dir.display())
                });
                for weights in ["model.safetensors", "optimizer.safetensors"] {
                    if expected.join(weights).exists() {
                        let same = std::fs::read(dir.join(weights)).ok() == std::fs::read(expected.join(weights)).ok();
                        tally.check(same, || {
                            format!("{name} {when}: {file}/{weights} differs from the uninterrupted run's")
                        });
                    }
                }
            }
        }
    }
}

/// The eval run of an eval job (`jobs::eval::eval_run_id`).
fn eval_run_id(job_id: &str) -> String {
    format!("ev_{}", job_id.trim_start_matches("job_"))
}

/// A `SELECT COUNT(*)` with one parameter (0 before the database exists).
fn count(data: &Path, sql: &str, parameter: &str) -> i64 {
    open(data).map_or(0, |conn| conn.query_row(sql, [parameter], |row| row.get(0)).unwrap())
}

/// The orchestrator's cycles: at most one (the work is one cycle), at most one running; every
/// job but the imports is linked to a cycle stage (created together with its link); a cycle has
/// no job for a stage after its own, and the jobs of the stages before it succeeded.
fn check_cycles(name: &str, data: &Path, when: &str, tally: &mut Tally) {
    let Some(conn) = open(data) else { return };
    let Ok(mut statement) = conn.prepare("SELECT id, status, stage FROM orchestrator_cycles") else { return };
    let cycles: Vec<(String, String, String)> = statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tally.check(cycles.len() <= 1, || format!("{name} {when}: {} cycles", cycles.len()));
    let running = cycles.iter().filter(|c| c.1 == "running").count();
    tally.check(running <= 1, || format!("{name} {when}: {running} cycles running"));
    let unlinked: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM jobs WHERE kind != 'import_traces' AND id NOT IN (SELECT job_id FROM orchestrator_cycle_jobs)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    tally.check(unlinked == 0, || format!("{name} {when}: {unlinked} jobs that no cycle stage links"));
    const STAGES: [&str; 8] = ["dataset", "sft", "rl", "eval", "promote", "export", "deploy", "done"];
    let position = |stage: &str| STAGES.iter().position(|s| *s == stage);
    for (id, _, stage) in &cycles {
        let mut statement = conn
            .prepare("SELECT l.stage, j.status FROM orchestrator_cycle_jobs l JOIN jobs j ON j.id = l.job_id WHERE l.cycle_id = ?")
            .unwrap();
        let jobs: Vec<(String, String)> =
            statement.query_map([id], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap();
        for (job_stage, status) in &jobs {
            let (at, of_job) = (position(stage), position(job_stage));
            tally.check(at.is_some() && of_job.is_some() && of_job <= at, || {
                format!("{name} {when}: the cycle is at {stage} and has a {job_stage} job")
            });
            tally.check(of_job >= at || status == "succeeded", || {
                format!("{name} {when}: the cycle is at {stage}, its {job_stage} job is {status}")
            });
        }
    }
}

/// After a kill: the stand-in's blobs and models are the uninterrupted run's (a model made with
/// the same request), and every request it saw is one the uninterrupted run made.
fn check_ollama_subset(name: &str, when: &str, ours: &Ollama, theirs: &Ollama, tally: &mut Tally) {
    let foreign_blobs: Vec<&String> = ours.blobs.difference(&theirs.blobs).collect();
    tally.check(foreign_blobs.is_empty(), || format!("{name} {when}: Ollama holds blobs {foreign_blobs:?}"));
    let foreign_models: Vec<&String> =
        ours.models.iter().filter(|(model, body)| theirs.models.get(*model) != Some(body)).map(|(m, _)| m).collect();
    tally.check(foreign_models.is_empty(), || {
        format!("{name} {when}: Ollama holds models the uninterrupted run did not make so: {foreign_models:?}")
    });
    let foreign_calls: Vec<&String> = ours.calls.difference(&theirs.calls).collect();
    tally.check(foreign_calls.is_empty(), || format!("{name} {when}: Ollama got {foreign_calls:?}"));
    let foreign_bodies: Vec<&String> = ours.bodies.difference(&theirs.bodies).collect();
    tally.check(foreign_bodies.is_empty(), || format!("{name} {when}: Ollama got requests {foreign_bodies:?}"));
}

/// The tables whose rows the work writes, compared with the uninterrupted run.
const TABLES: [&str; 12] = [
    "traces",
    "preference_pairs",
    "capture_files",
    "datasets",
    "models",
    "exports",
    "eval_runs",
    "eval_cases",
    "deployments",
    "promotions",
    "orchestrator_cycles",
    "orchestrator_cycle_jobs",
];

/// Tables compared only once the work finished: the jobs, each with its final status.
const FINAL_TABLES: [&str; 1] = ["jobs"];

/// A data dir's ids (jobs, and the datasets and exports named after them; models) mapped to the
/// reference's, and the data dir's path to the reference's, so rows and files can be compared.
/// An export's GGUF files embed its id, so their hashes are mapped too when the files are the
/// same once the ids are.
fn id_map(kind: Kind, reference: &Reference, data: &Path) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    ids.insert(data.display().to_string(), reference.data.display().to_string());
    let listed = |dir: &Path, sql: &str| -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let Some(conn) = open(dir) else { return groups };
        let Ok(mut statement) = conn.prepare(sql) else { return groups };
        let pairs = statement
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>();
        for (group, id) in pairs {
            groups.entry(group).or_default().push(id);
        }
        groups
    };
    for (sql, jobs) in [
        ("SELECT kind, id FROM jobs ORDER BY kind, created_at, id", true),
        ("SELECT '', id FROM models ORDER BY created_at, id", false),
        ("SELECT '', id FROM orchestrator_cycles ORDER BY number", false),
    ] {
        let (ours, theirs) = (listed(data, sql), listed(&reference.data, sql));
        for (group, our_ids) in &ours {
            for (our, their) in our_ids.iter().zip(theirs.get(group).into_iter().flatten()) {
                if jobs {
                    let (our, their) = (our.trim_start_matches("job_"), their.trim_start_matches("job_"));
                    ids.insert(our.to_lowercase(), their.to_lowercase());
                    ids.insert(our.to_string(), their.to_string());
                } else {
                    ids.insert(our.clone(), their.clone());
                }
            }
        }
    }
    if matches!(kind, Kind::Export | Kind::Orchestrator) {
        if let (Some(ours), Some(theirs)) = (
            finished_dirs(&data.join("artifacts/exports")).pop(),
            finished_dirs(&reference.data.join("artifacts/exports")).pop(),
        ) {
            for file in file_names(&ours).into_iter().filter(|f| f.ends_with(".gguf")) {
                let (Ok(our_bytes), Ok(their_bytes)) =
                    (std::fs::read(ours.join(&file)), std::fs::read(theirs.join(&file)))
                else {
                    continue;
                };
                if replace_bytes(&our_bytes, &ids) == their_bytes {
                    ids.insert(sha256_hex(&our_bytes), sha256_hex(&their_bytes));
                }
            }
        }
    }
    ids
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn replace_all(text: &str, ids: &BTreeMap<String, String>) -> String {
    ids.iter().fold(text.to_string(), |text, (from, to)| text.replace(from, to))
}

/// `replace_all` on bytes. Checkpoints and exports are tens of megabytes that rarely hold an
/// id: each id is looked for with a literal search first.
fn replace_bytes(bytes: &[u8], ids: &BTreeMap<String, String>) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    for (from, to) in ids {
        let pattern = regex::bytes::Regex::new(&regex::escape(from)).unwrap();
        if pattern.is_match(&bytes) {
            bytes = pattern.replace_all(&bytes, regex::bytes::NoExpand(to.as_bytes())).into_owned();
        }
    }
    bytes
}

/// An id generated at random for a record that came without one.
static GENERATED: std::sync::LazyLock<Regex> =
    std::sync::LazyLock::new(|| Regex::new(r"^(tr|pp)_[0-9A-HJKMNP-TV-Z]{26}$").unwrap());

/// Remove what differs between two runs of the same work by design: wall-clock times and ids
/// generated at random for records that came without one.
fn without_clock(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|key, value| {
                !matches!(
                    key.as_str(),
                    "created_at"
                        | "stored_at"
                        | "seconds"
                        | "tokens_per_second"
                        | "cases_per_second"
                        | "rollout_seconds"
                        | "rollout_tokens_per_second"
                ) && !value.as_str().is_some_and(|text| GENERATED.is_match(text))
            });
            map.values_mut().for_each(without_clock);
        }
        Value::Array(items) => items.iter_mut().for_each(without_clock),
        _ => {}
    }
}

fn normalized_json(text: &str, ids: &BTreeMap<String, String>) -> String {
    match serde_json::from_str::<Value>(&replace_all(text, ids)) {
        Ok(mut value) => {
            without_clock(&mut value);
            value.to_string()
        }
        Err(_) => format!("HALF-WRITTEN JSON: {text}"),
    }
}

/// The part of a table's rows that a killed run may have written before it finished, where
/// rows change as the work goes on: an eval run gets its summary at the end, a cycle its stages.
fn in_progress_query(table: &str) -> Option<&'static str> {
    match table {
        "eval_runs" => Some("SELECT id, job_id, target, model_id, suites FROM eval_runs"),
        "orchestrator_cycles" => Some("SELECT id, number FROM orchestrator_cycles"),
        _ => None,
    }
}

/// A table's rows, each as one comparable string (times and random ids left out, ids mapped).
fn rows(table: &str, data: &Path, ids: &BTreeMap<String, String>) -> Vec<String> {
    let sql = match table {
        "traces" => "SELECT content_hash, id, source, category, prompt, split, outcome_status, n_messages, n_tool_calls, tool_names, body FROM traces",
        "preference_pairs" => "SELECT p.content_hash, p.source, p.prompt_text, p.body, t.content_hash FROM preference_pairs p LEFT JOIN traces t ON t.id = p.trace_id",
        "capture_files" => "SELECT path, session_id, agent_id, size, mtime_ns, head_len, head_hash, complete_offset, last_line_start, last_line_hash, last_uuid, n_traces, malformed_lines FROM capture_files",
        "datasets" => "SELECT id, name, config, stats, path FROM datasets",
        "models" => "SELECT id, base_model, parent_id, dataset_id, run_id, path, is_champion, metrics FROM models",
        "exports" => "SELECT id, model_id, name, path, manifest, parity_passed FROM exports",
        "eval_runs" => "SELECT id, job_id, target, model_id, suites, summary FROM eval_runs",
        "eval_cases" => "SELECT run_id, position, case_id, suite, category, score, episode, eval_case FROM eval_cases",
        // Whether the blob was uploaded depends on whether a killed run had uploaded it already.
        "deployments" => "SELECT id, export_id, host, names, json_remove(result, '$.uploaded') FROM deployments",
        "promotions" => "SELECT id, model_id, previous, promoted, reason, decision FROM promotions",
        "orchestrator_cycles" => "SELECT id, number, status, stage, state, error FROM orchestrator_cycles",
        "orchestrator_cycle_jobs" => "SELECT cycle_id, stage, job_id FROM orchestrator_cycle_jobs",
        "jobs" => "SELECT id, kind, status, error FROM jobs",
        other => panic!("no query for {other}"),
    };
    rows_of(sql, data, ids)
}

fn rows_of(sql: &str, data: &Path, ids: &BTreeMap<String, String>) -> Vec<String> {
    let Some(conn) = open(data) else { return Vec::new() };
    let Ok(mut statement) = conn.prepare(sql) else { return Vec::new() };
    let columns = statement.column_count();
    let mut rows: Vec<String> = statement
        .query_map([], |row| {
            let mut fields = Vec::new();
            for i in 0..columns {
                let field = match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => "null".to_string(),
                    rusqlite::types::ValueRef::Integer(n) => n.to_string(),
                    rusqlite::types::ValueRef::Real(x) => x.to_string(),
                    rusqlite::types::ValueRef::Text(text) => {
                        let text = String::from_utf8_lossy(text);
                        if text.starts_with('{') || text.starts_with('[') {
                            normalized_json(&text, ids)
                        } else {
                            let text = replace_all(&text, ids);
                            if GENERATED.is_match(&text) {
                                "generated-id".into()
                            } else {
                                text
                            }
                        }
                    }
                    rusqlite::types::ValueRef::Blob(blob) => format!("{} bytes", blob.len()),
                };
                fields.push(field);
            }
            Ok(fields.join(" | "))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.sort();
    rows
}

/// A row's JSON columns say "HALF-WRITTEN" when they do not parse; trace bodies must hold as many
/// messages as the row says.
fn half_written(table: &str, data: &Path) -> Vec<String> {
    let mut bad: Vec<String> =
        rows(table, data, &BTreeMap::new()).into_iter().filter(|row| row.contains("HALF-WRITTEN JSON")).collect();
    if table == "traces" {
        if let Some(conn) = open(data) {
            let mut statement = conn.prepare("SELECT id, n_messages, body FROM traces").unwrap();
            let mismatched = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?, row.get::<_, String>(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .filter(|(_, n, body)| {
                    serde_json::from_str::<Value>(body)
                        .ok()
                        .and_then(|b| b["messages"].as_array().map(|m| m.len() as i64 != *n))
                        .unwrap_or(true)
                })
                .map(|(id, _, _)| format!("trace {id}: body and n_messages disagree"));
            bad.extend(mismatched);
        }
    }
    bad
}

/// Directories under `dir` that are not staging (`*.partial`, `.staging`).
fn finished_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.ends_with(".partial") && !name.starts_with('.')
        })
        .collect();
    dirs.sort();
    dirs
}

/// The one directory under `dir`.
fn only_dir(dir: &Path) -> PathBuf {
    let dirs = finished_dirs(dir);
    assert_eq!(dirs.len(), 1, "one directory under {}: {dirs:?}", dir.display());
    dirs[0].clone()
}

/// Every file under `dir`, by relative path.
fn file_names(dir: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.insert(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Staging leftovers (`*.partial`, files under `.staging`) anywhere under `artifacts/`.
fn leftovers(data: &Path) -> Vec<String> {
    file_names(&data.join("artifacts"))
        .into_iter()
        .filter(|path| path.contains(".partial") || path.starts_with(".staging/"))
        .collect()
}

/// The same files with the same bytes (ids mapped) in two directories.
fn compare_tree(name: &str, what: &str, ours: &Path, theirs: &Path, ids: &BTreeMap<String, String>, tally: &mut Tally) {
    let (our_names, their_names) = (file_names(ours), file_names(theirs));
    tally.check(our_names == their_names, || {
        format!("{name}: {what} holds {our_names:?}, the uninterrupted {their_names:?}")
    });
    for file in our_names.intersection(&their_names) {
        let our_bytes = replace_bytes(&std::fs::read(ours.join(file)).unwrap(), ids);
        let their_bytes = std::fs::read(theirs.join(file)).unwrap();
        let same = if file.ends_with(".json") && our_bytes != their_bytes {
            // Manifests carry their creation time.
            normalized_json(&String::from_utf8_lossy(&our_bytes), &BTreeMap::new())
                == normalized_json(&String::from_utf8_lossy(&their_bytes), &BTreeMap::new())
        } else {
            our_bytes == their_bytes
        };
        tally.check(same, || format!("{name}: {what}/{file} differs from the uninterrupted run's"));
    }
}

/// The fields of a kind's report that two runs of the same work share.
fn report_fields(kind: Kind, report: &Value) -> Value {
    let pick = |keys: &[&str]| -> Value { keys.iter().map(|k| (k.to_string(), report[*k].clone())).collect() };
    match kind {
        Kind::ImportTraces | Kind::ImportDpo => pick(&["imported", "duplicates", "rejected", "errors"]),
        Kind::Bootstrap => pick(&["synthetic", "duplicates", "by_category", "by_tool"]),
        Kind::BuildDataset => {
            let mut value = pick(&["counts", "dropped", "truncated"]);
            value["files"] = report["files"].as_object().map(|f| f.keys().cloned().collect::<Vec<_>>()).into();
            value
        }
        Kind::Train | Kind::Dpo => pick(&["steps", "first_loss", "final_loss", "final_eval_loss"]),
        Kind::Grpo => pick(&["steps", "first_loss", "final_loss", "first_reward", "final_reward"]),
        Kind::Eval => {
            let mut value = pick(&["target", "suites", "overall", "categories"]);
            without_clock(&mut value);
            value
        }
        // Whether the blob was uploaded depends on whether a killed run had uploaded it already.
        Kind::Deploy => pick(&["export_id", "host", "model", "names", "gguf", "digest", "bytes", "test"]),
        Kind::Orchestrator => {
            let cycle = &report["cycle"];
            let state = &cycle["state"];
            let note = |note: &str, keys: &[&str]| -> Value {
                keys.iter().map(|k| (k.to_string(), state[note][*k].clone())).collect()
            };
            let mut stages: Vec<&str> =
                cycle["jobs"].as_array().into_iter().flatten().filter_map(|j| j[0].as_str()).collect();
            stages.sort_unstable();
            serde_json::json!({
                "outcome": report["outcome"],
                "number": cycle["number"],
                "status": cycle["status"],
                "stage": cycle["stage"],
                "stages": stages,
                "traces": state["traces"],
                "sft": note("sft", &["phase", "steps", "final_loss"]),
                "rl": note("rl", &["phase", "steps", "final_loss", "final_reward"]),
                "eval": note("eval", &["cases", "success", "first_tool", "arguments_valid", "valid_calls", "parsed"]),
                "decision": note("decision", &["promoted", "reason"]),
                "export": note("export", &["name", "parity_passed"]),
                "deploy": note("deploy", &["ok", "message"]),
                "error": cycle["error"],
            })
        }
        Kind::Export => {
            let files: Vec<Value> = report["files"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let path = Path::new(f["path"].as_str().unwrap_or_default());
                    let relative = path.strip_prefix(report["dir"].as_str().unwrap_or_default()).unwrap_or(path);
                    serde_json::json!({"file": relative, "bytes": f["bytes"], "quant": f["quant"]})
                })
                .collect();
            serde_json::json!({"files": files, "parity": report["parity"]["checks"]})
        }
        Kind::CaptureScan => Value::Null,
    }
}

/// What must hold once the killed work finished: compared with the uninterrupted run.
fn compare_finished(work: &Work, reference: &Reference, data: &Path, output: &Value, tally: &mut Tally) {
    let name = work.kind.name();
    check_database(name, data, "at the end", tally);
    if let Some(kind) = work.kind.job_kind() {
        let jobs = work.jobs(data);
        let statuses: Vec<&str> = jobs.iter().map(|j| j.status.as_str()).collect();
        tally.check(statuses == ["succeeded"], || format!("{name}: {kind} jobs at the end: {statuses:?}"));
    }
    let ids = id_map(work.kind, reference, data);
    for table in TABLES.iter().chain(&FINAL_TABLES).copied() {
        let ours = rows(table, data, &ids);
        let theirs = &reference.rows[table];
        if !tally.check(ours.len() == theirs.len(), || {
            format!("{name}: {} {table} rows, the uninterrupted run has {}", ours.len(), theirs.len())
        }) {
            continue;
        }
        let differing = ours.iter().zip(theirs).find(|(a, b)| a != b);
        tally.check(differing.is_none(), || {
            let (a, b) = differing.unwrap();
            format!("{name}: {table} rows differ:\n  killed:        {a}\n  uninterrupted: {b}")
        });
        let bad = half_written(table, data);
        tally.check(bad.is_empty(), || format!("{name}: half-written {table} rows: {bad:?}"));
    }
    if work.kind != Kind::CaptureScan {
        let expected = report_fields(work.kind, &reference.output);
        let got = report_fields(work.kind, output);
        tally.check(got == expected, || format!("{name}: the report {got} differs from the uninterrupted {expected}"));
    }
    let left = leftovers(data);
    tally.check(left.is_empty(), || format!("{name}: staging left behind: {left:?}"));

    let artifacts = data.join("artifacts");
    let reference_artifacts = reference.data.join("artifacts");
    let orchestrator = work.kind == Kind::Orchestrator;
    for (dir, what, compared) in [
        ("datasets", "dataset", work.kind == Kind::BuildDataset || orchestrator),
        ("exports", "export", work.kind == Kind::Export || orchestrator),
        ("runs", "run", work.kind.trains() || orchestrator),
    ] {
        if !compared {
            continue;
        }
        // In the order they were made (their ids are ULIDs).
        let (ours, theirs) = (finished_dirs(&artifacts.join(dir)), finished_dirs(&reference_artifacts.join(dir)));
        if !tally.check(ours.len() == theirs.len() && !ours.is_empty(), || format!("{name}: {dir} {ours:?}")) {
            continue;
        }
        for (ours, theirs) in ours.iter().zip(&theirs) {
            if dir == "runs" {
                let weights = |run: &Path| std::fs::read(run.join("model/model.safetensors")).ok();
                tally.check(weights(ours).is_some() && weights(ours) == weights(theirs), || {
                    format!("{name}: the resumed run's weights are not bit-identical to the uninterrupted run's")
                });
            }
            compare_tree(name, &format!("the {what}"), ours, theirs, &ids, tally);
        }
    }
    if let (Some(fake), Some(theirs)) = (work.ollama, &reference.ollama) {
        let ours = Ollama::read(fake, &ids);
        check_ollama_subset(name, "at the end", &ours, theirs, tally);
        tally.check(ours.blobs == theirs.blobs && ours.models == theirs.models, || {
            format!(
                "{name}: Ollama holds {:?} and {:?}, after the uninterrupted run {:?} and {:?}",
                ours.blobs,
                ours.models.keys(),
                theirs.blobs,
                theirs.models.keys()
            )
        });
    }
    if work.kind == Kind::CaptureScan {
        // A scan after the finished one finds nothing new.
        let run = cli(data, &work.command.iter().map(String::as_str).collect::<Vec<_>>());
        let report = run.json();
        tally.check(report["traces_new"] == 0 && report["traces_updated"] == 0, || {
            format!("{name}: a rescan after the killed scans stored more: {report}")
        });
    }
}

/// The one moment random kills rarely hit: after a build, export or deploy recorded its dataset,
/// export or deployment row, before its job was marked finished. The job row is put back as such
/// a kill leaves it (the next start-up marks it `interrupted`, with no result), then resumed: it
/// must finish with one row and a whole directory (a build or export used to fail for good with
/// a UNIQUE constraint; a deploy recorded a second deployment).
#[test]
fn chaos_a_job_killed_between_recording_its_output_and_finishing_resumes() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let run = cli(&data, &["import", "traces", fixture("overfit.jsonl").to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let build = ["build-dataset", "--val-ratio", "0", "--test-ratio", "0", "--json"];
    assert_eq!(cli(&data, &build).code, 0);
    let train = ["train", "--max-steps", "2", "--batch-size", "2", "--eval-every", "100", "--json"];
    let trained = cli(&data, &train);
    assert_eq!(trained.code, 0, "{}", trained.stderr);
    // A model outside the store: two steps make no tool calls, and only a stored run's export
    // requires one.
    let model = Path::new(trained.json()["checkpoint_dir"].as_str().unwrap()).join("model");
    let export = ["export", "--model-path", model.to_str().unwrap(), "--quant", "q8_0", "--parity-prompts", "1"];
    let exported = cli(&data, &[&export[..], &["--parity-max-tokens", "4", "--json"]].concat());
    assert_eq!(exported.code, 0, "{}", exported.stderr);
    let ollama = FakeOllama::start();
    let deployed = cli(&data, &["deploy", "--ollama-host", &ollama.host, "--json"]);
    assert_eq!(deployed.code, 0, "{}", deployed.stderr);

    for (kind, table, artifacts) in [
        ("build_dataset", "datasets", Some("datasets")),
        ("export", "exports", Some("exports")),
        ("deploy", "deployments", None),
    ] {
        let whole = artifacts.map(|dir| file_names(&only_dir(&data.join("artifacts").join(dir))));
        let job = job_of(&data, kind).unwrap();
        let conn = open(&data).unwrap();
        conn.execute(
            "UPDATE jobs SET status = 'interrupted', owner_pid = NULL, result = NULL, finished_at = NULL WHERE id = ?",
            [&job.id],
        )
        .unwrap();
        drop(conn);
        let resumed = cli(&data, &["jobs", "resume", &job.id, "--json"]);
        assert_eq!(resumed.code, 0, "{kind}: {}", resumed.stderr);
        assert_eq!(job_of(&data, kind).unwrap().status, "succeeded");
        let count: i64 =
            open(&data).unwrap().query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| row.get(0)).unwrap();
        assert_eq!(count, 1, "{kind}: one {table} row");
        if let (Some(dir), Some(whole)) = (artifacts, whole) {
            assert_eq!(file_names(&only_dir(&data.join("artifacts").join(dir))), whole, "{kind}: whole");
        }
        assert!(leftovers(&data).is_empty(), "{kind}: {:?}", leftovers(&data));
    }
}
