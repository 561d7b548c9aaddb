//! Understudy: turn a coding agent's tool-using traces into a local LLaMA-family model.
//!
//! Modules in reading order: `config` (the one validated configuration), `traces` (the
//! canonical data model), `store` (SQLite, the only SQL), `sandbox` and `bootstrap` (synthetic
//! traces that really ran), `capture` (Claude Code transcripts), `dataset` (rendered, masked,
//! tokenized), `model` and `train` (the LLaMA architecture in candle, SFT), `export` (GGUF,
//! Modelfile, parity), `deploy` (Ollama), `handoff` (TRL/Accelerate directories for training elsewhere), `serve` (decoding on mistral.rs or candle), `jobs`
//! (typed durable work and `jobs::requests`, the one place a request becomes a job), `pipeline`
//! (the stages over jobs), `web` (pages, JSON API, `/v1`), `cli` (the command line). See
//! ARCHITECTURE.md for the map and the invariants.

pub mod bootstrap;
pub mod capture;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataset;
pub mod deploy;
pub mod eval;
pub mod export;
pub mod files;
pub mod handoff;
pub mod jobs;
pub mod model;
pub mod orchestrator;
pub mod pipeline;
pub mod sandbox;
pub mod serve;
pub mod store;
pub mod traces;
pub mod train;
pub mod web;
