//! `understudy deploy [--export ID] [--name N] [--ollama-host URL] [--quant Q] [--test]`:
//! register an export with Ollama, show upload progress, record the deployment.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::print_json;
use super::progress::TerminalProgress;
use crate::config::Config;
use crate::deploy::{deploy, version_tag, DeployOptions, DEFAULT_HOST, DEFAULT_NAME};
use crate::export::ExportManifest;
use crate::jobs::ProgressSink;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The export to deploy (default: the newest export whose parity check passed).
    #[arg(long)]
    pub export: Option<String>,
    /// The Ollama model name; it is tagged with the export id and with `latest`.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Ollama's address: a URL or host:port.
    #[arg(long, env = "OLLAMA_HOST", default_value = DEFAULT_HOST)]
    pub ollama_host: String,
    /// The GGUF quant to deploy (default: the export's first GGUF).
    #[arg(long)]
    pub quant: Option<String>,
    /// Send a sample prompt with the default tools through Ollama's chat API and show the reply.
    #[arg(long)]
    pub test: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, args: DeployArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    let export = match &args.export {
        Some(id) => {
            let row = db.get_export(id)?.with_context(|| format!("--export {id}: no such export"))?;
            anyhow::ensure!(row.parity_passed, "export {id} failed its parity check; deploy an export that passed");
            row
        }
        None => db.latest_export()?.context("no export yet: run `understudy export` first")?,
    };
    let export_dir = Path::new(&export.path);
    let manifest = ExportManifest::read(export_dir)?;
    let options = DeployOptions {
        host: args.ollama_host.clone(),
        name: args.name.clone(),
        quant: args.quant.clone(),
        version_tag: version_tag(&manifest.export_id),
        test: args.test,
    };

    let bar = TerminalProgress::bytes("upload");
    let mut stage = String::new();
    let mut report_progress = |name: &str, done: u64, total: u64| {
        if name == "uploading" {
            bar.progress(done, Some(total), "");
        } else if name != stage {
            if stage == "uploading" {
                bar.finish();
            }
            eprintln!("{name} ...");
        }
        name.clone_into(&mut stage);
    };
    let outcome = deploy(export_dir, &manifest, &options, &mut report_progress);
    bar.finish();
    let report = outcome?;
    let result = serde_json::to_value(&report)?;
    db.insert_deployment(&export.id, &report.host, &report.names, &result)?;

    if args.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("deployed {} to {}", report.names.join(" and "), report.host);
    let blob = if report.uploaded { "uploaded" } else { "already in Ollama" };
    println!("gguf     {} ({} bytes, {}, {blob})", report.gguf.display(), report.bytes, report.digest);
    println!("run it   ollama run {}", args.name);
    if let Some(message) = &report.test {
        let content = message.get("content").and_then(|c| c.as_str()).unwrap_or_default();
        println!("test     {:?}", content);
        for call in message.get("tool_calls").and_then(|c| c.as_array()).into_iter().flatten() {
            let function = &call["function"];
            println!("  tool call {} {}", function["name"].as_str().unwrap_or("?"), function["arguments"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}
