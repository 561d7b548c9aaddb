//! Askama view models: one struct per page or partial, holding display-ready values, so
//! templates stay free of logic. The only module that names askama.

use askama::Template;

use crate::jobs::{JobLog, JobRecord, JobStatus};
use crate::store::{NamedCount, TraceCounts};

/// The navigation bar: only pages that work are listed.
pub struct Nav {
    pub items: Vec<NavItem>,
    pub version: &'static str,
}

pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub active: bool,
}

const NAV: [(&str, &str); 11] = [
    ("/", "Dashboard"),
    ("/traces", "Traces"),
    ("/bootstrap", "Bootstrap"),
    ("/datasets", "Datasets"),
    ("/training", "Training"),
    ("/models", "Models"),
    ("/playground", "Playground"),
    ("/capture", "Capture"),
    ("/import", "Import"),
    ("/jobs", "Jobs"),
    ("/docs", "API"),
];

impl Nav {
    pub fn new(active: &str) -> Nav {
        Nav {
            items: NAV.iter().map(|(href, label)| NavItem { href, label, active: *href == active }).collect(),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// An `<option>` of a `<select>`.
pub struct SelectOption {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

impl SelectOption {
    /// "Any" first, then the values; `current` is selected.
    pub fn list<'a>(
        values: impl IntoIterator<Item = &'a str>,
        current: &str,
        any_label: Option<&str>,
    ) -> Vec<SelectOption> {
        let mut options = Vec::new();
        if let Some(any) = any_label {
            options.push(SelectOption { value: String::new(), label: any.to_string(), selected: current.is_empty() });
        }
        options.extend(values.into_iter().map(|v| SelectOption {
            value: v.to_string(),
            label: v.to_string(),
            selected: v == current,
        }));
        options
    }
}

pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: &'static str,
    pub percent: Option<u32>,
    pub message: String,
    pub error: Option<String>,
    pub created_at: String,
    pub can_cancel: bool,
    pub can_resume: bool,
    pub finished: bool,
}

impl From<&JobRecord> for JobRow {
    fn from(job: &JobRecord) -> Self {
        JobRow {
            id: job.id.clone(),
            kind: job.kind.clone(),
            status: job.status.as_str(),
            percent: job.percent(),
            message: job.message.clone(),
            error: job.error.clone(),
            created_at: job.created_at.clone(),
            can_cancel: matches!(job.status, JobStatus::Queued | JobStatus::Running) && !job.cancel_requested,
            can_resume: job.status.is_resumable(),
            finished: job.status.is_finished(),
        }
    }
}

pub struct CountGroup {
    pub label: &'static str,
    pub param: &'static str,
    pub rows: Vec<NamedCount>,
}

#[derive(Template)]
#[template(path = "pages/dashboard.html")]
pub struct DashboardPage {
    pub nav: Nav,
    pub counts: TraceCounts,
    pub groups: Vec<CountGroup>,
    pub jobs: Vec<JobRow>,
}

#[derive(Template)]
#[template(path = "pages/jobs.html")]
pub struct JobsPage {
    pub nav: Nav,
    pub jobs: Vec<JobRow>,
}

#[derive(Template)]
#[template(path = "components/job_rows.html")]
pub struct JobRowsPartial {
    pub jobs: Vec<JobRow>,
}

#[derive(Template)]
#[template(path = "pages/job.html")]
pub struct JobPage {
    pub nav: Nav,
    pub job: JobRow,
    pub logs: Vec<JobLog>,
    pub result_json: Option<String>,
    pub charts: Vec<LineChart>,
}

#[derive(Template)]
#[template(path = "components/job_panel.html")]
pub struct JobPanelPartial {
    pub job: JobRow,
    pub logs: Vec<JobLog>,
    pub result_json: Option<String>,
    pub charts: Vec<LineChart>,
}

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: String,
    pub last: Option<String>,
}

/// A line chart of metrics over steps, rendered as SVG on the server.
pub struct LineChart {
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub y_min: String,
    pub y_max: String,
    pub x_max: i64,
    pub series: Vec<Series>,
}

impl LineChart {
    /// `series`: (name, color, [(step, value)]). Non-finite values are skipped.
    pub fn new(title: &str, series: Vec<(&str, &'static str, Vec<(i64, f64)>)>) -> Option<LineChart> {
        let values: Vec<f64> =
            series.iter().flat_map(|(_, _, p)| p.iter().map(|(_, v)| *v)).filter(|v| v.is_finite()).collect();
        if values.is_empty() {
            return None;
        }
        let (width, height) = (420u32, 160u32);
        let x_max = series.iter().flat_map(|(_, _, p)| p.iter().map(|(s, _)| *s)).max().unwrap_or(1).max(1);
        let y_min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let y_max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let span = (y_max - y_min).max(1e-12);
        let (left, right, top, bottom) = (40.0, width as f64 - 5.0, 10.0, height as f64 - 20.0);
        let format = |v: f64| {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else if v.abs() >= 1.0 {
                format!("{v:.3}")
            } else {
                format!("{v:.2e}")
            }
        };
        let series = series
            .into_iter()
            .map(|(name, color, points)| {
                let last = points.iter().rev().find(|(_, v)| v.is_finite()).map(|(_, v)| format(*v));
                let points = points
                    .iter()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(s, v)| {
                        let x = left + (*s as f64 / x_max as f64) * (right - left);
                        let y = bottom - ((v - y_min) / span) * (bottom - top);
                        format!("{x:.1},{y:.1}")
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                Series { name: name.to_string(), color, points, last }
            })
            .collect();
        Some(LineChart {
            title: title.to_string(),
            width,
            height,
            y_min: format(y_min),
            y_max: format(y_max),
            x_max,
            series,
        })
    }
}

pub struct FormField {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
    pub error: Option<String>,
}

#[derive(Default)]
pub struct TrainingForm {
    pub fields: Vec<FormField>,
    pub errors: std::collections::BTreeMap<&'static str, String>,
}

#[derive(Template)]
#[template(path = "pages/training.html")]
pub struct TrainingPage {
    pub nav: Nav,
    pub form: TrainingForm,
    pub datasets: Vec<SelectOption>,
    pub jobs: Vec<JobRow>,
}

pub struct ModelListRow {
    pub id: String,
    pub name: String,
    pub base: String,
    pub dataset: Option<String>,
    pub run: Option<String>,
    pub loss: String,
    pub eval_loss: String,
    pub speed: String,
    pub created_at: String,
    /// The export form's checkboxes.
    pub quants: Vec<QuantChoice>,
    pub export_error: Option<String>,
}

pub struct QuantChoice {
    pub value: &'static str,
    pub checked: bool,
}

pub struct ExportFileView {
    pub quant: String,
    pub size: String,
}

pub struct ParityCheckView {
    pub name: String,
    pub passed: bool,
    pub required: bool,
    pub detail: String,
}

/// The deploy form's values (defaults, or what a refused post entered) and its error.
pub struct DeployFormView {
    pub name: String,
    pub host: String,
    pub quants: Vec<SelectOption>,
    pub test: bool,
    pub error: Option<String>,
}

pub struct ExportListRow {
    pub id: String,
    pub model: Option<String>,
    pub name: String,
    pub files: Vec<ExportFileView>,
    pub parity_passed: bool,
    pub checks: Vec<ParityCheckView>,
    /// Why there is no deploy form (the parity check failed).
    pub not_deployable: Option<String>,
    pub deploy: DeployFormView,
    pub created_at: String,
}

#[derive(Template)]
#[template(path = "pages/models.html")]
pub struct ModelsPage {
    pub nav: Nav,
    pub models: Vec<ModelListRow>,
    pub exports: Vec<ExportListRow>,
}

#[derive(Template)]
#[template(path = "pages/playground.html")]
pub struct PlaygroundPage {
    pub nav: Nav,
    /// The served models, the champion first; empty when nothing is served yet.
    pub models: Vec<SelectOption>,
    /// The system prompt the models were trained with.
    pub system_prompt: String,
    /// The default tools as JSON, already safe inside a `<script>` element.
    pub tools_json: String,
}

pub struct TraceRow {
    pub id: String,
    pub prompt_short: String,
    pub source: String,
    pub category: String,
    pub split: String,
    pub outcome: String,
    pub n_tool_calls: i64,
    pub created_at: String,
}

/// The result table of the Traces page; also the htmx partial.
#[derive(Template)]
#[template(path = "components/trace_rows.html")]
pub struct TraceRowsPartial {
    pub rows: Vec<TraceRow>,
    pub total: i64,
    pub page: i64,
    pub pages: i64,
    pub prev_link: Option<String>,
    pub next_link: Option<String>,
    pub filter_error: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/traces.html")]
pub struct TracesPage {
    pub nav: Nav,
    pub sources: Vec<SelectOption>,
    pub categories: Vec<SelectOption>,
    pub splits: Vec<SelectOption>,
    pub outcomes: Vec<SelectOption>,
    pub q: String,
    pub rows: Vec<TraceRow>,
    pub total: i64,
    pub page: i64,
    pub pages: i64,
    pub prev_link: Option<String>,
    pub next_link: Option<String>,
    pub filter_error: Option<String>,
}

pub struct CallView {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

pub struct MessageView {
    pub label: &'static str,
    pub css: &'static str,
    pub content: Option<String>,
    pub truncated: bool,
    pub tool_call_id: Option<String>,
    pub calls: Vec<CallView>,
}

pub struct CheckView {
    pub name: String,
    pub passed: bool,
}

#[derive(Template)]
#[template(path = "pages/trace.html")]
pub struct TracePage {
    pub nav: Nav,
    pub id: String,
    pub prompt: String,
    pub source: String,
    pub category: String,
    pub split: String,
    pub outcome: String,
    pub checks: Vec<CheckView>,
    pub created_at: String,
    pub n_tool_calls: usize,
    pub messages: Vec<MessageView>,
    pub tools: String,
}

#[derive(Template)]
#[template(path = "pages/import.html")]
pub struct ImportPage {
    pub nav: Nav,
    pub formats: Vec<SelectOption>,
    pub file_error: Option<String>,
    pub format_error: Option<String>,
}

pub struct TemplateRow {
    pub name: String,
    pub category: String,
    pub origin: &'static str,
    pub scenarios: usize,
    pub prompts: usize,
    pub description: String,
}

/// Values and errors of the generate form.
#[derive(Default)]
pub struct GenerateForm {
    pub traces: String,
    pub seed: String,
    pub traces_error: Option<String>,
    pub seed_error: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/bootstrap.html")]
pub struct BootstrapPage {
    pub nav: Nav,
    pub form: GenerateForm,
    pub template_options: Vec<SelectOption>,
    pub templates: Vec<TemplateRow>,
    pub rows: Vec<TraceRow>,
    pub total: i64,
    pub page: i64,
    pub pages: i64,
    pub prev_link: Option<String>,
    pub next_link: Option<String>,
    pub filter_error: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/template_edit.html")]
pub struct TemplateEditPage {
    pub nav: Nav,
    pub name: String,
    pub is_new: bool,
    pub action: String,
    pub body: String,
    pub body_error: Option<String>,
    pub facts: String,
}

#[derive(Template)]
#[template(path = "pages/preview.html")]
pub struct PreviewPage {
    pub nav: Nav,
    pub template: String,
    pub seed: u64,
    pub next_seed: u64,
    pub prompt: String,
    pub outcome: String,
    pub checks: Vec<CheckView>,
    pub messages: Vec<MessageView>,
}

pub struct Bar {
    pub label: String,
    pub value: String,
    pub width: u32,
    pub y: u32,
}

/// A horizontal bar chart rendered as SVG on the server.
pub struct BarChart {
    pub title: String,
    pub bars: Vec<Bar>,
    pub width: u32,
    pub height: u32,
    pub label_width: u32,
}

impl BarChart {
    pub fn new(title: &str, rows: &[(String, f64)]) -> BarChart {
        const PLOT: f64 = 260.0;
        let max = rows.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max).max(1e-9);
        let label_width = rows.iter().map(|(l, _)| l.chars().count() as u32 * 7 + 8).max().unwrap_or(40).clamp(40, 180);
        let bars = rows
            .iter()
            .enumerate()
            .map(|(i, (label, value))| Bar {
                label: label.clone(),
                value: if value.fract() == 0.0 { format!("{value:.0}") } else { format!("{value:.2}") },
                width: ((value / max) * PLOT).round().max(if *value > 0.0 { 1.0 } else { 0.0 }) as u32,
                y: i as u32 * 22,
            })
            .collect();
        BarChart {
            title: title.to_string(),
            height: rows.len() as u32 * 22 + 4,
            width: label_width + PLOT as u32 + 60,
            label_width,
            bars,
        }
    }
}

/// The build form's values and errors by field name.
#[derive(Default)]
pub struct DatasetForm {
    pub name: String,
    pub model: String,
    pub sources: String,
    pub categories: String,
    pub min_tool_calls: String,
    pub exclude_failed: bool,
    pub real_weight: String,
    pub val_ratio: String,
    pub test_ratio: String,
    pub max_seq_len: String,
    pub seed: String,
    pub errors: std::collections::BTreeMap<&'static str, String>,
}

pub struct DatasetListRow {
    pub id: String,
    pub name: String,
    pub model: String,
    pub train: String,
    pub val: String,
    pub test: String,
    pub coverage: String,
    pub created_at: String,
}

#[derive(Template)]
#[template(path = "pages/datasets.html")]
pub struct DatasetsPage {
    pub nav: Nav,
    pub form: DatasetForm,
    pub models_dir: String,
    pub datasets: Vec<DatasetListRow>,
}

pub struct FileRow {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Template)]
#[template(path = "pages/dataset.html")]
pub struct DatasetPage {
    pub nav: Nav,
    pub id: String,
    pub name: String,
    pub model: String,
    pub template: String,
    pub end_of_turn: String,
    pub train: String,
    pub weighted_train: String,
    pub val: String,
    pub test: String,
    pub tokens_total: String,
    pub tokens_trained: String,
    pub coverage: String,
    pub mean_tokens: String,
    pub max_tokens: String,
    pub truncated: String,
    pub dropped: String,
    pub vocab_size: String,
    pub dir: String,
    pub charts: Vec<BarChart>,
    pub files: Vec<FileRow>,
}

pub struct RouteView {
    pub method: String,
    pub path: String,
    pub summary: String,
    pub params: String,
}

#[derive(Template)]
#[template(path = "pages/docs.html")]
pub struct DocsPage {
    pub nav: Nav,
    pub openapi_version: String,
    pub routes: Vec<RouteView>,
}

pub struct CaptureSessionRow {
    pub session_id: String,
    pub project: String,
    pub git_branch: String,
    pub last_at: String,
    pub n_traces: i64,
}

/// The Capture page: the background watcher (with Start/Stop), the hook, what was captured, the scan form.
#[derive(Template)]
#[template(path = "pages/capture.html")]
pub struct CapturePage {
    pub nav: Nav,
    /// "running (pid N) since T, every Ns" or "not running".
    pub engine_line: String,
    pub running: bool,
    /// Whether the server knows the binary the Start button runs.
    pub can_start: bool,
    /// Why the Start button's directory was refused.
    pub engine_error: Option<String>,
    pub roots: Vec<String>,
    pub last_scan_at: String,
    pub last_capture_at: String,
    pub last_error: Option<String>,
    pub files: usize,
    pub n_sessions: usize,
    pub traces_captured: i64,
    pub threshold: i64,
    /// From the watcher's last scan: "—" when it has not scanned.
    pub malformed_lines: String,
    pub redactions: String,
    pub hook_installed: bool,
    /// Empty when the server does not know the settings file.
    pub settings_path: String,
    pub sessions: Vec<CaptureSessionRow>,
    pub traces: Vec<TraceRow>,
    /// The summary of a scan this page just ran.
    pub scanned: Option<String>,
    pub dir: String,
    pub dir_error: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/error.html")]
pub struct ErrorPage {
    pub nav: Nav,
    pub status: u16,
    pub message: String,
}

pub fn error_page(status: u16, message: &str) -> String {
    ErrorPage { nav: Nav::new(""), status, message: message.to_string() }
        .render()
        .unwrap_or_else(|_| format!("<h1>{status}</h1>"))
}
