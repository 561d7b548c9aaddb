//! The one integration test binary: CLI on temp data dirs, HTTP pages and API on port 0,
//! migrations, and a real headless Chromium. Fixtures live in tests/data. Tests that need
//! Chromium, llama.cpp, Python packages or SmolLM2 say so with `skip_unless!` (see
//! `support::External`): skipped by name under a plain `cargo test`, required by `./run.sh test`.

#[macro_use]
mod support;

mod bootstrap;
mod browser;
mod capture;
mod chaos;
mod cli;
mod dataset;
mod deploy;
mod dpo;
mod eval;
mod export;
mod flywheel;
mod fuzz;
mod handoff;
mod http;
mod orchestrator;
mod rl;
mod serve;
mod store;
mod tidy;
mod train;
