//! `understudy deploy [--export ID] [--name N] [--ollama-host URL] [--quant Q] [--test]`:
//! register an export with Ollama, show upload progress, record the deployment.

use std::process::ExitCode;

use clap::Args;

use super::progress::TerminalProgress;
use super::{flag_error, print_json};
use crate::config::Config;
use crate::deploy::{DEFAULT_HOST, DEFAULT_NAME};
use crate::jobs::requests::DeployRequest;
use crate::jobs::{run_foreground, JobOutput, JobParams, JobRecord};
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
    let request = DeployRequest {
        export: args.export.clone(),
        name: Some(args.name.clone()),
        host: Some(args.ollama_host.clone()),
        quant: args.quant.clone(),
        test: args.test,
    };
    let params = request.resolve(&store.connect()?, DEFAULT_HOST).map_err(flag_error)?;
    let bar = TerminalProgress::bytes("deploy");
    let finished = run_foreground(&store, &JobParams::Deploy(params), Some(&bar))?;
    bar.finish();
    report_deploy(&finished, args.json)
}

/// Print a deploy's outcome; shared with `jobs resume`.
pub fn report_deploy(job: &JobRecord, json: bool) -> anyhow::Result<ExitCode> {
    let JobOutput::Deploy(report) = job.output()? else { anyhow::bail!("job {} is not a deploy", job.id) };
    if json {
        print_json(report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("deployed {} to {}", report.names.join(" and "), report.host);
    let blob = if report.uploaded { "uploaded" } else { "already in Ollama" };
    println!("gguf     {} ({} bytes, {}, {blob})", report.gguf.display(), report.bytes, report.digest);
    if let Some(name) = report.names.first() {
        println!("run it   ollama run {}", name.split(':').next().unwrap_or(name));
    }
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
