//! `understudy traces list|show|export|delete`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::print_json;
use crate::config::Config;
use crate::store::{Store, TraceFilter};
use crate::traces::wire::{to_canonical_json, to_openai_json};
use crate::traces::{OutcomeStatus, Role, Source, Split, Trace};

#[derive(Debug, Subcommand)]
pub enum TracesCommand {
    /// List stored traces, newest first.
    List(ListArgs),
    /// Show one trace as a conversation.
    Show(ShowArgs),
    /// Write traces as JSONL.
    Export(ExportArgs),
    /// Delete one trace.
    Delete(DeleteArgs),
}

#[derive(Debug, Args, Default)]
pub struct FilterArgs {
    /// synthetic, claude_code, dpo_import, served or import.
    #[arg(long, value_parser = parse_source)]
    pub source: Option<Source>,
    #[arg(long)]
    pub category: Option<String>,
    /// train, val or test.
    #[arg(long, value_parser = parse_split)]
    pub split: Option<Split>,
    /// success, failure, partial or unknown.
    #[arg(long, value_parser = parse_outcome)]
    pub outcome: Option<OutcomeStatus>,
    /// Text that the prompt or any message contains.
    #[arg(long)]
    pub search: Option<String>,
}

fn parse_source(text: &str) -> Result<Source, String> {
    Source::parse(text).ok_or_else(|| "expected synthetic, claude_code, dpo_import, served or import".into())
}
fn parse_split(text: &str) -> Result<Split, String> {
    Split::parse(text).ok_or_else(|| "expected train, val or test".into())
}
fn parse_outcome(text: &str) -> Result<OutcomeStatus, String> {
    OutcomeStatus::parse(text).ok_or_else(|| "expected success, failure, partial or unknown".into())
}

impl FilterArgs {
    fn to_filter(&self) -> TraceFilter {
        TraceFilter {
            source: self.source,
            category: self.category.clone(),
            split: self.split,
            outcome: self.outcome,
            text: self.search.clone(),
        }
    }
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[arg(long, default_value_t = 0)]
    pub offset: i64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Canonical,
    Openai,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "canonical")]
    pub format: ExportFormat,
    /// Output file (written atomically); stdout when omitted.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub id: String,
}

pub fn run(config: &Config, command: TracesCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(config.data_dir())?;
    let db = store.connect()?;
    match command {
        TracesCommand::List(args) => {
            let rows = db.list_traces(&args.filter.to_filter(), args.limit.max(0), args.offset.max(0))?;
            if args.json {
                let rows: Vec<ListRow> = rows.iter().map(ListRow::from).collect();
                print_json(&rows)?;
            } else if rows.is_empty() {
                eprintln!("no traces");
            } else {
                for row in rows {
                    println!(
                        "{}  {:<11} {:<18} {:<5} {:>2} calls  {}",
                        row.id,
                        row.source,
                        row.category,
                        row.split,
                        row.n_tool_calls,
                        first_line(&row.prompt, 70)
                    );
                }
            }
        }
        TracesCommand::Show(args) => {
            let trace = db.get_trace(&args.id)?.with_context(|| format!("no trace with id {:?}", args.id))?;
            if args.json {
                let value: serde_json::Value = serde_json::from_str(&to_canonical_json(&trace))?;
                print_json(&value)?;
            } else {
                print_conversation(&trace);
            }
        }
        TracesCommand::Export(args) => {
            let encode = match args.format {
                ExportFormat::Canonical => to_canonical_json,
                ExportFormat::Openai => to_openai_json,
            };
            let filter = args.filter.to_filter();
            let count = match &args.out {
                Some(path) => {
                    let temporary = temporary_path(path);
                    let mut out = BufWriter::new(
                        File::create(&temporary).with_context(|| format!("cannot write {}", temporary.display()))?,
                    );
                    let count = db.for_each_trace(&filter, |trace| writeln!(out, "{}", encode(&trace)))?;
                    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    std::fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))?;
                    count
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut out = BufWriter::new(stdout.lock());
                    let count = db.for_each_trace(&filter, |trace| writeln!(out, "{}", encode(&trace)))?;
                    out.flush()?;
                    count
                }
            };
            eprintln!("exported {count} traces");
        }
        TracesCommand::Delete(args) => {
            if !db.delete_trace(&args.id)? {
                anyhow::bail!("no trace with id {:?}", args.id);
            }
            eprintln!("deleted {}", args.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The contract's row of `traces list --json`: exactly these seven fields.
#[derive(serde::Serialize)]
struct ListRow<'a> {
    id: &'a str,
    source: &'a str,
    category: &'a str,
    prompt: &'a str,
    split: &'a str,
    n_tool_calls: i64,
    created_at: &'a str,
}

impl<'a> From<&'a crate::store::TraceSummary> for ListRow<'a> {
    fn from(row: &'a crate::store::TraceSummary) -> Self {
        ListRow {
            id: &row.id,
            source: &row.source,
            category: &row.category,
            prompt: &row.prompt,
            split: &row.split,
            n_tool_calls: row.n_tool_calls,
            created_at: &row.created_at,
        }
    }
}

fn temporary_path(path: &std::path::Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

fn first_line(text: &str, width: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > width {
        format!("{}…", line.chars().take(width - 1).collect::<String>())
    } else {
        line.to_string()
    }
}

fn print_conversation(trace: &Trace) {
    println!(
        "{}  [{} / {} / {}]  outcome: {}",
        trace.id,
        trace.source,
        trace.category,
        trace.split.as_str(),
        trace.outcome.status.as_str()
    );
    println!("created {}  hash {}", trace.created_at, &trace.content_hash[..16]);
    for message in &trace.messages {
        println!();
        match message.role {
            Role::Tool => println!("── tool result ({})", message.tool_call_id.as_deref().unwrap_or("?")),
            role => println!("── {}", role.as_str()),
        }
        if let Some(content) = message.content.as_deref().filter(|c| !c.is_empty()) {
            println!("{content}");
        }
        for call in &message.tool_calls {
            println!("→ {}({})  [{}]", call.name, call.arguments, call.id);
        }
    }
    for check in &trace.outcome.checks {
        println!("check {}: {}", check.name, if check.passed { "passed" } else { "failed" });
    }
}
