//! The one integration test binary: CLI on temp data dirs, HTTP pages and API on port 0,
//! migrations, and a real headless Chromium. Fixtures live in tests/data.

mod bootstrap;
mod browser;
mod capture;
mod cli;
mod dataset;
mod deploy;
mod dpo;
mod export;
mod http;
mod serve;
mod store;
mod support;
mod train;
