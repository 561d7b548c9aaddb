//! The Orchestrator page and `/api/orchestrator`: state and the current stage live (a panel
//! polled every 2 s), the next cycle in N traces, the configuration form, "Run a cycle now"
//! (a thread of this server, as `orchestrator once`), Start/Stop of the detached orchestrator
//! (as `orchestrator start|stop`), the history with one row per cycle and a chart of the
//! champion's eval metrics over cycles. Everything is read through `orchestrator::status`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use askama::Template;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody, PageError};
use super::shared::*;
use super::{AppState, WebError};
use crate::orchestrator::config::{self as orchestrator_config, OrchestratorConfig};
use crate::orchestrator::{self, Background, Cycle, OrchestratorError, OrchestratorStatus};

pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/orchestrator", web::get().to(page))
        .route("/orchestrator/panel", web::get().to(panel))
        .route("/orchestrator/config", web::post().to(config_form))
        .route("/orchestrator/once", web::post().to(once_form))
        .route("/orchestrator/start", web::post().to(start_form))
        .route("/orchestrator/stop", web::post().to(stop_form));
}

/// Routes under `/api`.
pub fn api_routes(config: &mut web::ServiceConfig) {
    config
        .route("/orchestrator", web::get().to(orchestrator_status))
        .route("/orchestrator/config", web::get().to(get_config))
        .route("/orchestrator/config", web::put().to(put_config))
        .route("/orchestrator/once", web::post().to(run_once))
        .route("/orchestrator/start", web::post().to(start_process))
        .route("/orchestrator/stop", web::post().to(stop_process));
}

fn orchestrator_error(error: OrchestratorError) -> WebError {
    match error {
        OrchestratorError::Store(e) => e.into(),
        OrchestratorError::Request(e) => e.into(),
        e @ (OrchestratorError::AlreadyRunning(_) | OrchestratorError::InsideServer(_)) => {
            WebError::Conflict(e.to_string())
        }
        other => WebError::Internal(other.to_string()),
    }
}

/// The status document with the newest `history` cycles, read on the blocking pool.
pub async fn status_with(state: &AppState, history: usize) -> Result<OrchestratorStatus, WebError> {
    let data_dir = state.config.data_dir().to_path_buf();
    state.with_db(move |db| orchestrator::status(db, &data_dir, history).map_err(orchestrator_error)).await
}

/// The whole status document (`orchestrator::HISTORY` cycles).
pub async fn status(state: &AppState) -> Result<OrchestratorStatus, WebError> {
    status_with(state, orchestrator::HISTORY).await
}

/// What "Run a cycle now" did.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnceStarted {
    /// `started` (a cycle runs or resumes on a thread of this server) or `not_ready`.
    pub outcome: String,
    pub readiness: orchestrator::Readiness,
}

/// Resume the running cycle or start one on a thread of this server when enough traces are
/// new; `not_ready` (nothing started) otherwise. A conflict when an orchestrator runs.
pub async fn once(state: &AppState) -> Result<OnceStarted, WebError> {
    let background = Background {
        store: state.store.clone(),
        config: state.config.clone(),
        default_ollama_host: state.ollama_host.clone(),
    };
    state
        .with_db(move |db| {
            let config = orchestrator_config::load(db)?;
            let readiness = orchestrator::readiness(db, &config)?;
            if db.running_cycle()?.is_none() && readiness.missing > 0 {
                return Ok(OnceStarted { outcome: "not_ready".into(), readiness });
            }
            background.spawn_once(Arc::new(AtomicBool::new(false))).map_err(orchestrator_error)?;
            Ok(OnceStarted { outcome: "started".into(), readiness })
        })
        .await
}

async fn start(state: &AppState) -> Result<(), WebError> {
    let Some(binary) = state.understudy_binary.clone() else {
        return Err(WebError::Conflict(
            "this server does not know the understudy binary: run `understudy orchestrator start`".into(),
        ));
    };
    let data_dir = state.config.data_dir().to_path_buf();
    web::block(move || orchestrator::start(&binary, &data_dir))
        .await
        .map_err(|e| WebError::Internal(format!("blocking task failed: {e}")))?
        .map_err(orchestrator_error)?;
    Ok(())
}

async fn stop(state: &AppState) -> Result<(), WebError> {
    let data_dir = state.config.data_dir().to_path_buf();
    web::block(move || orchestrator::stop(&data_dir))
        .await
        .map_err(|e| WebError::Internal(format!("blocking task failed: {e}")))?
        .map_err(orchestrator_error)?;
    Ok(())
}

/// Validate and store a configuration; the errors name the fields.
async fn save(state: &AppState, config: OrchestratorConfig) -> Result<OrchestratorConfig, WebError> {
    state
        .with_db(move |db| {
            orchestrator_config::save(db, &config)?;
            Ok(config)
        })
        .await
}

// ---- the page ----

/// One configuration field of the form.
pub struct ConfigField {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
    pub checkbox: bool,
    pub error: Option<String>,
}

fn config_fields(c: &OrchestratorConfig, values: Option<&HashMap<String, String>>) -> Vec<ConfigField> {
    let fields: [(&'static str, &'static str, String, bool); 23] = [
        ("min_traces", "Traces that start the first cycle", c.min_traces.to_string(), false),
        ("traces_per_cycle", "New traces that start each later cycle", c.traces_per_cycle.to_string(), false),
        ("rl_every", "RL every k-th cycle", c.rl_every.to_string(), false),
        ("rl_phase", "RL phase (grpo, ppo, dpo, none)", c.rl_phase.clone(), false),
        ("base_model", "Base model of the first cycle (tiny, an HF directory or .gguf)", c.base_model.clone(), false),
        ("max_steps", "SFT steps per cycle", c.max_steps.to_string(), false),
        (
            "max_minutes",
            "SFT minutes per cycle (empty: no limit)",
            c.max_minutes.map(|m| m.to_string()).unwrap_or_default(),
            false,
        ),
        ("batch_size", "Batch size", c.batch_size.to_string(), false),
        ("max_seq_len", "Longest training sequence (tokens)", c.max_seq_len.to_string(), false),
        ("rl_steps", "RL steps per cycle", c.rl_steps.to_string(), false),
        ("rl_max_tokens", "RL: tokens per sampled reply", c.rl_max_tokens.to_string(), false),
        ("eval_suite", "Eval suite", c.eval_suite.clone(), false),
        (
            "eval_limit",
            "Eval: first N cases (empty: all)",
            c.eval_limit.map(|n| n.to_string()).unwrap_or_default(),
            false,
        ),
        ("eval_max_tokens", "Eval: tokens per reply", c.eval_max_tokens.to_string(), false),
        ("promotion_metric", "Promotion metric", c.promotion_metric.clone(), false),
        ("promotion_margin", "Promotion margin (0–1)", c.promotion_margin.to_string(), false),
        ("export_quants", "Export quants (comma-separated)", c.export_quants.join(","), false),
        ("auto_deploy", "Deploy each new champion to Ollama", c.auto_deploy.to_string(), true),
        ("ollama_host", "Ollama host (empty: the server's)", c.ollama_host.clone().unwrap_or_default(), false),
        ("model_name", "Ollama model name", c.model_name.clone(), false),
        ("interval_seconds", "Seconds between checks for new traces", c.interval_seconds.to_string(), false),
        ("run_in_serve", "Run inside `serve`", c.run_in_serve.to_string(), true),
        ("seed", "Seed", c.seed.to_string(), false),
    ];
    fields
        .into_iter()
        .map(|(name, label, value, checkbox)| {
            let value = match values {
                Some(values) if checkbox => values.contains_key(name).to_string(),
                Some(values) => values.get(name).cloned().unwrap_or(value),
                None => value,
            };
            ConfigField { name, label, value, checkbox, error: None }
        })
        .collect()
}

/// The form's values over `base`; fields that do not parse are named in the errors.
fn parse_form(
    base: &OrchestratorConfig,
    values: &HashMap<String, String>,
) -> (OrchestratorConfig, BTreeMap<&'static str, String>) {
    let mut c = base.clone();
    let mut errors = BTreeMap::new();
    let text = |name: &str| values.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
    macro_rules! number {
        ($($field:ident),*) => {$(
            match text(stringify!($field)).parse() {
                Ok(value) => c.$field = value,
                Err(_) => { errors.insert(stringify!($field), "not a number".to_string()); }
            }
        )*};
    }
    number!(
        min_traces,
        traces_per_cycle,
        rl_every,
        max_steps,
        batch_size,
        max_seq_len,
        rl_steps,
        rl_max_tokens,
        eval_max_tokens,
        promotion_margin,
        interval_seconds,
        seed
    );
    c.rl_phase = text("rl_phase");
    c.base_model = text("base_model");
    c.eval_suite = text("eval_suite");
    c.promotion_metric = text("promotion_metric");
    c.model_name = text("model_name");
    c.ollama_host = Some(text("ollama_host")).filter(|h| !h.is_empty());
    c.export_quants =
        text("export_quants").split(',').map(str::trim).filter(|q| !q.is_empty()).map(String::from).collect();
    c.max_minutes = match text("max_minutes") {
        t if t.is_empty() => None,
        t => match t.parse() {
            Ok(minutes) => Some(minutes),
            Err(_) => {
                errors.insert("max_minutes", "not a number".to_string());
                c.max_minutes
            }
        },
    };
    c.eval_limit = match text("eval_limit") {
        t if t.is_empty() => None,
        t => match t.parse() {
            Ok(n) => Some(n),
            Err(_) => {
                errors.insert("eval_limit", "not a number".to_string());
                c.eval_limit
            }
        },
    };
    c.auto_deploy = values.contains_key("auto_deploy");
    c.run_in_serve = values.contains_key("run_in_serve");
    (c, errors)
}

pub struct HistoryRow {
    pub number: i64,
    pub started_at: String,
    pub status: String,
    pub stage: String,
    pub traces: String,
    pub dataset: String,
    pub runs: String,
    pub eval: String,
    pub decision: String,
    pub export: String,
    pub deploy: String,
    pub error: Option<String>,
}

fn percent(rate: f64) -> String {
    format!("{:.0}%", rate * 100.0)
}

fn history_row(cycle: &Cycle) -> HistoryRow {
    let s = &cycle.state;
    let sources: Vec<String> = s.traces.new_by_source.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let mut runs: Vec<String> =
        [&s.sft, &s.rl].into_iter().flatten().map(|r| format!("{} {}", r.phase, r.model_id)).collect();
    if let Some(reason) = &s.rl_skipped {
        runs.push(format!("RL skipped: {reason}"));
    }
    HistoryRow {
        number: cycle.number,
        started_at: cycle.started_at.get(..19).unwrap_or(&cycle.started_at).replace('T', " "),
        status: cycle.status.as_str().to_string(),
        stage: cycle.stage.as_str().to_string(),
        traces: format!("+{} ({})", s.traces.new, sources.join(", ")),
        dataset: s.dataset_id.clone().unwrap_or_else(|| "—".into()),
        runs: if runs.is_empty() { "—".into() } else { runs.join("; ") },
        eval: s.eval.as_ref().map_or("—".into(), |e| {
            format!(
                "{}: success {}, first tool {}, valid calls {} ({} cases)",
                e.eval_run_id,
                percent(e.success),
                percent(e.first_tool),
                percent(e.valid_calls),
                e.cases
            )
        }),
        decision: s
            .decision
            .as_ref()
            .map_or("—".into(), |d| format!("{}: {}", if d.promoted { "promoted" } else { "kept" }, d.reason)),
        export: s.export.as_ref().map_or("—".into(), |e| {
            format!("{} as {}{}", e.export_id, e.name, if e.parity_passed { "" } else { " (parity failed)" })
        }),
        deploy: s
            .deploy
            .as_ref()
            .map_or("—".into(), |d| format!("{}: {}", if d.ok { "ok" } else { "failed" }, d.message)),
        error: cycle.error.clone(),
    }
}

/// The champion's eval metrics after each cycle: the candidate's when it was promoted, else
/// the champion's before.
fn champion_chart(history: &[Cycle]) -> Option<LineChart> {
    let mut current: Option<(f64, f64, f64)> = None;
    let (mut success, mut first_tool, mut valid_calls) = (Vec::new(), Vec::new(), Vec::new());
    for cycle in history.iter().rev() {
        if let (Some(decision), Some(eval)) = (&cycle.state.decision, &cycle.state.eval) {
            if decision.promoted {
                current = Some((eval.success, eval.first_tool, eval.valid_calls));
            }
        }
        if let Some((s, f, v)) = current {
            success.push((cycle.number, s));
            first_tool.push((cycle.number, f));
            valid_calls.push((cycle.number, v));
        }
    }
    LineChart::new(
        "Champion's eval metrics by cycle",
        vec![
            ("success", "#1b7f3b", success),
            ("first tool", "#1f5fbf", first_tool),
            ("valid calls", "#b5651d", valid_calls),
        ],
    )
    .map(|chart| chart.with_x_label("cycle"))
}

/// The live part of the page (`GET /orchestrator/panel`).
#[derive(Template)]
#[template(path = "components/orchestrator_panel.html")]
pub struct OrchestratorPanel {
    pub panel: PanelView,
}

pub struct PanelView {
    pub running_line: String,
    pub running: bool,
    /// The running orchestrator can be stopped from here: the detached process, or the one
    /// inside this server.
    pub stoppable: bool,
    pub current: Option<String>,
    pub job: Option<(String, String)>,
    pub readiness_line: String,
    pub champion_line: String,
    pub cycles_line: String,
    pub can_start: bool,
}

/// The champion and its numbers, in one line.
pub fn champion_line(status: &OrchestratorStatus) -> String {
    match &status.champion {
        Some(c) => format!(
            "{} ({}): success {}, first tool {}, valid calls {}",
            c.model_id,
            c.name,
            c.success.map_or("—".into(), percent),
            c.first_tool.map_or("—".into(), percent),
            c.valid_calls.map_or("—".into(), percent)
        ),
        None => "none yet".into(),
    }
}

/// The newest cycle and the next one's distance, in one line.
pub fn last_cycle_line(status: &OrchestratorStatus) -> String {
    let next = match status.readiness.missing {
        0 => "the next cycle can start".to_string(),
        n => format!("next cycle in {n} traces"),
    };
    match status.history.first() {
        None => format!("no cycle yet; {next}"),
        Some(c) => {
            let verdict = match (&c.state.decision, c.error.as_deref()) {
                (_, Some(error)) => format!("failed: {error}"),
                (Some(d), None) => (if d.promoted { "promoted" } else { "kept the champion" }).to_string(),
                (None, None) => format!("at {}", c.stage),
            };
            format!("cycle {} {} ({verdict}); {next}", c.number, c.status.as_str())
        }
    }
}

fn panel_of(status: &OrchestratorStatus, can_start: bool) -> PanelView {
    let r = &status.readiness;
    let sources: Vec<String> = r.new_by_source.iter().map(|(k, n)| format!("{k} {n}")).collect();
    PanelView {
        running_line: match &status.running {
            Some(h) => format!("running (pid {}, {}) since {}", h.pid, h.mode, h.started_at),
            None => "not running".into(),
        },
        running: status.running.is_some(),
        stoppable: status.running.as_ref().is_some_and(|h| h.mode == "process" || h.pid == std::process::id()),
        current: status.current.as_ref().map(|c| format!("cycle {} at {}", c.number, c.stage)),
        job: status.current_job.as_ref().map(|j| {
            (j.id.clone(), format!("{} {}{}", j.kind, j.percent.map_or(String::new(), |p| format!("{p}% ")), j.message))
        }),
        readiness_line: if r.missing == 0 {
            format!("{} new traces ({}): the next cycle can start", r.new_traces, sources.join(", "))
        } else {
            format!(
                "next cycle in {} traces ({} new of {} needed{})",
                r.missing,
                r.new_traces,
                r.threshold,
                if sources.is_empty() { String::new() } else { format!(": {}", sources.join(", ")) }
            )
        },
        champion_line: champion_line(status),
        cycles_line: format!("{} succeeded, {} failed", status.cycles_succeeded, status.cycles_failed),
        can_start,
    }
}

#[derive(Template)]
#[template(path = "pages/orchestrator.html")]
pub struct OrchestratorPage {
    pub nav: Nav,
    pub panel: PanelView,
    pub fields: Vec<ConfigField>,
    pub notice: Option<String>,
    pub history: Vec<HistoryRow>,
    pub chart: Option<LineChart>,
}

async fn render(
    state: &AppState,
    values: Option<&HashMap<String, String>>,
    errors: BTreeMap<&'static str, String>,
    notice: Option<String>,
) -> Result<OrchestratorPage, WebError> {
    let status = status(state).await?;
    let mut fields = config_fields(&status.config, values);
    for field in &mut fields {
        field.error = errors.get(field.name).cloned();
    }
    Ok(OrchestratorPage {
        nav: Nav::new("/orchestrator"),
        panel: panel_of(&status, state.understudy_binary.is_some()),
        fields,
        notice,
        history: status.history.iter().map(history_row).collect(),
        chart: champion_chart(&status.history),
    })
}

#[derive(Debug, Default, serde::Deserialize)]
struct PageQuery {
    notice: Option<String>,
}

async fn page(state: web::Data<AppState>, query: web::Query<PageQuery>) -> Result<HttpResponse, PageError> {
    html(render(&state, None, BTreeMap::new(), query.into_inner().notice).await?)
}

async fn panel(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    // Polled every 2 s: the newest cycle only.
    let status = status_with(&state, 1).await?;
    html(OrchestratorPanel { panel: panel_of(&status, state.understudy_binary.is_some()) })
}

async fn config_form(
    state: web::Data<AppState>,
    values: web::Form<HashMap<String, String>>,
) -> Result<HttpResponse, PageError> {
    let values = values.into_inner();
    let base = state.with_db(|db| Ok(orchestrator_config::load(db)?)).await?;
    let (config, mut errors) = parse_form(&base, &values);
    if errors.is_empty() {
        match save(&state, config).await {
            Ok(_) => return Ok(see_other("/orchestrator?notice=configuration+saved")),
            Err(WebError::Fields(fields)) => {
                for field in fields {
                    errors.entry(field.field).or_insert(field.message);
                }
            }
            Err(other) => return Err(other.into()),
        }
    }
    let body =
        render(&state, Some(&values), errors, None).await?.render().map_err(|e| WebError::Internal(e.to_string()))?;
    Ok(HttpResponse::UnprocessableEntity().content_type("text/html; charset=utf-8").body(body))
}

async fn once_form(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let started = once(&state).await?;
    let notice = match started.outcome.as_str() {
        "started" => "a cycle runs on this server".to_string(),
        _ => format!("no cycle: {} more traces needed", started.readiness.missing),
    };
    Ok(see_other(&format!("/orchestrator?notice={}", query_escape(&notice))))
}

async fn start_form(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    start(&state).await?;
    Ok(see_other("/orchestrator"))
}

async fn stop_form(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    stop(&state).await?;
    Ok(see_other("/orchestrator"))
}

// ---- the API ----

/// The orchestrator: who runs it, its configuration, traces and the next cycle's threshold,
/// the running cycle and its job, the champion with its eval numbers, and every cycle.
#[utoipa::path(get, path = "/api/orchestrator", responses((status = 200, description = "As `orchestrator status --json`", body = Object)))]
pub async fn orchestrator_status(state: web::Data<AppState>) -> Result<web::Json<OrchestratorStatus>, ApiError> {
    Ok(web::Json(status(&state).await?))
}

/// The stored configuration (the defaults when none is stored).
#[utoipa::path(get, path = "/api/orchestrator/config", responses((status = 200, body = OrchestratorConfig)))]
pub async fn get_config(state: web::Data<AppState>) -> Result<web::Json<OrchestratorConfig>, ApiError> {
    Ok(web::Json(state.with_db(|db| Ok(orchestrator_config::load(db)?)).await?))
}

/// Replace the configuration (absent fields take their defaults); every field is checked and
/// nothing is stored when one is wrong.
#[utoipa::path(put, path = "/api/orchestrator/config", request_body = OrchestratorConfig,
    responses((status = 200, body = OrchestratorConfig), (status = 400, body = ErrorBody)))]
pub async fn put_config(
    state: web::Data<AppState>,
    config: web::Json<OrchestratorConfig>,
) -> Result<web::Json<OrchestratorConfig>, ApiError> {
    Ok(web::Json(save(&state, config.into_inner()).await?))
}

/// Run one cycle now on a thread of this server (or resume the unfinished one), as
/// `orchestrator once`; `not_ready` with the missing traces when there are too few new ones.
#[utoipa::path(post, path = "/api/orchestrator/once",
    responses((status = 202, body = OnceStarted), (status = 200, body = OnceStarted), (status = 409, body = ErrorBody)))]
pub async fn run_once(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let started = once(&state).await?;
    Ok(if started.outcome == "started" {
        HttpResponse::Accepted().json(started)
    } else {
        HttpResponse::Ok().json(started)
    })
}

/// Start the detached orchestrator process (as `orchestrator start`); answers the status.
#[utoipa::path(post, path = "/api/orchestrator/start", responses((status = 200, body = Object), (status = 409, body = ErrorBody)))]
pub async fn start_process(state: web::Data<AppState>) -> Result<web::Json<OrchestratorStatus>, ApiError> {
    start(&state).await?;
    Ok(web::Json(status(&state).await?))
}

/// Stop the orchestrator: the detached process (as `orchestrator stop`) or the one inside this
/// server (its running job stops at its next check, resumable); answers the status.
#[utoipa::path(post, path = "/api/orchestrator/stop", responses((status = 200, body = Object), (status = 409, body = ErrorBody)))]
pub async fn stop_process(state: web::Data<AppState>) -> Result<web::Json<OrchestratorStatus>, ApiError> {
    stop(&state).await?;
    Ok(web::Json(status(&state).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_keeps_unparsed_fields_named_and_reads_checkboxes_by_presence() {
        let base = OrchestratorConfig::default();
        let mut values: HashMap<String, String> = config_fields(&base, None)
            .into_iter()
            .filter(|f| !f.checkbox)
            .map(|f| (f.name.to_string(), f.value))
            .collect();
        values.insert("max_steps".into(), "many".into());
        values.insert("auto_deploy".into(), "on".into());
        values.insert("eval_limit".into(), "".into());
        let (config, errors) = parse_form(&base, &values);
        assert_eq!(errors.keys().copied().collect::<Vec<_>>(), ["max_steps"]);
        assert!(config.auto_deploy && !config.run_in_serve);
        assert_eq!(config.eval_limit, None);
        assert_eq!(config.max_steps, base.max_steps);
        assert_eq!(config.export_quants, base.export_quants);
    }

    #[test]
    fn the_chart_follows_the_champion_not_every_candidate() {
        use crate::eval::promotion::Decision;
        use crate::orchestrator::cycle::{CycleStage, CycleState, EvalNote};
        use crate::orchestrator::CycleStatus;
        let cycle = |number: i64, success: f64, promoted: bool| Cycle {
            id: format!("cy_{number}"),
            number,
            status: CycleStatus::Succeeded,
            stage: CycleStage::Done,
            state: CycleState {
                eval: Some(EvalNote {
                    job_id: String::new(),
                    eval_run_id: String::new(),
                    cases: 10,
                    success,
                    first_tool: 0.5,
                    arguments_valid: 1.0,
                    valid_calls: 1.0,
                    parsed: 1.0,
                }),
                decision: Some(Decision { model_id: String::new(), promoted, reason: String::new(), champion: None }),
                ..CycleState::default()
            },
            error: None,
            started_at: String::new(),
            finished_at: None,
            jobs: Vec::new(),
        };
        // Newest first, as the status lists them: cycle 2's worse candidate was not promoted.
        let chart = champion_chart(&[cycle(3, 0.6, true), cycle(2, 0.1, false), cycle(1, 0.3, true)]).unwrap();
        assert_eq!(chart.series[0].last.as_deref(), Some("6.00e-1"));
        assert_eq!(chart.x_max, 3);
    }
}
