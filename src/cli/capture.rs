//! `understudy capture scan [--dir D] [--json]` (spec 3.3): one pass over Claude Code's session
//! transcripts. The root is `--dir`, else `$CLAUDE_CONFIG_DIR` (a comma-separated list is
//! accepted, as Claude Code tools do), else `~/.claude` (plus `~/.config/claude` when it holds
//! projects); this is the only place that reads those variables.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::print_json;
use crate::capture::{self, CaptureSettings, RedactionPattern, Redactor, ScanReport};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Read new and changed transcripts once and store their turns as traces.
    Scan(ScanArgs),
}

/// Where transcripts are read from and how they are treated; shared with `engine`.
#[derive(Debug, Args, Clone)]
pub struct CaptureArgs {
    /// Claude Code config directory (holding projects/), or a projects/ directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Used when --dir is absent (comma-separated directories allowed).
    #[arg(long, env = "CLAUDE_CONFIG_DIR", hide = true, value_name = "DIRS")]
    pub claude_config_dir: Option<String>,
    /// Cap on one tool result's text; longer results keep their head and a marker.
    #[arg(long, value_name = "BYTES", default_value_t = capture::DEFAULT_MAX_TOOL_RESULT_BYTES)]
    pub max_tool_result_bytes: usize,
    /// An extra redaction pattern (repeatable); a named group `secret` limits what is replaced.
    #[arg(long = "redact", value_name = "NAME=REGEX")]
    pub redact: Vec<String>,
    /// Use only the --redact patterns, not the built-in ones.
    #[arg(long)]
    pub no_default_redactions: bool,
}

impl CaptureArgs {
    pub fn roots(&self) -> anyhow::Result<Vec<PathBuf>> {
        if let Some(dir) = &self.dir {
            return Ok(vec![dir.clone()]);
        }
        if let Some(dirs) = self.claude_config_dir.as_deref().filter(|d| !d.trim().is_empty()) {
            return Ok(dirs.split(',').map(str::trim).filter(|d| !d.is_empty()).map(PathBuf::from).collect());
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| anyhow::anyhow!("HOME is not set: give --dir or set CLAUDE_CONFIG_DIR"))?;
        let home = PathBuf::from(home);
        let mut roots = vec![home.join(".claude")];
        let xdg = home.join(".config/claude");
        if xdg.join("projects").is_dir() {
            roots.push(xdg);
        }
        Ok(roots)
    }

    pub fn settings(&self) -> anyhow::Result<CaptureSettings> {
        let extra = self.redact.iter().map(|spec| RedactionPattern::parse_spec(spec)).collect::<Result<Vec<_>, _>>()?;
        let redactor = if self.no_default_redactions { Redactor::new(extra) } else { Redactor::with_defaults(extra) };
        anyhow::ensure!(self.max_tool_result_bytes >= 256, "--max-tool-result-bytes must be at least 256");
        Ok(CaptureSettings {
            roots: self.roots()?,
            max_tool_result_bytes: self.max_tool_result_bytes,
            max_line_bytes: capture::DEFAULT_MAX_LINE_BYTES,
            redactor,
        })
    }
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, command: CaptureCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaptureCommand::Scan(args) => scan(config, args),
    }
}

fn scan(config: &Config, args: ScanArgs) -> anyhow::Result<ExitCode> {
    let settings = args.capture.settings()?;
    let store = Store::open(config.data_dir())?;
    let report = capture::scan(&store, &settings)?;
    if args.json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn print_report(report: &ScanReport) {
    println!(
        "{} files ({} unchanged), {} sessions: {} new traces, {} updated, {} malformed lines, {} redactions",
        report.files,
        report.files_unchanged,
        report.sessions,
        report.traces_new,
        report.traces_updated,
        report.malformed_lines,
        report.redactions
    );
    for line in report.malformed.iter().take(20) {
        eprintln!("malformed: {}:{}: {}", line.file, line.line, line.reason);
    }
    for line in report.invalid.iter().take(20) {
        eprintln!("skipped turn: {}:{}: {}", line.file, line.line, line.reason);
    }
    for line in &report.unreadable {
        eprintln!("unreadable: {}: {}", line.file, line.reason);
    }
}
