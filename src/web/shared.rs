//! What every web feature shares and that belongs to none: the navigation bar, select options,
//! the SVG line and bar charts, rendering a page (`html`), redirects, the 404 page, the optional
//! JSON body of API posts and the 202 answer with a queued job. Imports no feature module, so
//! features never import each other through it.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use askama::Template;

use super::error::{ApiError, PageError};
pub use super::nav::Nav;
use super::{AppState, WebError};
use crate::jobs::JobId;

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
    /// What the x axis counts (`step` unless said otherwise).
    pub x_label: &'static str,
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
            x_label: "step",
            series,
        })
    }

    pub fn with_x_label(self, x_label: &'static str) -> LineChart {
        LineChart { x_label, ..self }
    }
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

pub(super) fn html(template: impl Template) -> Result<HttpResponse, PageError> {
    let body = template.render().map_err(|e| WebError::Internal(format!("template: {e}")))?;
    Ok(HttpResponse::Ok().content_type("text/html; charset=utf-8").body(body))
}

pub(super) fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, location.to_string())).finish()
}

pub fn is_htmx(request: &HttpRequest) -> bool {
    request.headers().contains_key("hx-request")
}

pub async fn not_found(request: HttpRequest) -> Result<HttpResponse, PageError> {
    Err(WebError::NotFound(format!("no page at {}", request.path())).into())
}

/// A JSON body whose fields all have defaults: an empty body means all defaults; a malformed one
/// is a 400 in the error envelope.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, WebError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| WebError::BadRequest(format!("body: {e}")))
}

/// 202 with the queued job.
pub async fn accepted(state: &AppState, id: JobId) -> Result<HttpResponse, ApiError> {
    let job = state
        .with_db(move |db| db.get_job(&id)?.ok_or_else(|| WebError::Internal(format!("queued job {id} vanished"))))
        .await?;
    Ok(HttpResponse::Accepted().json(job))
}

/// Percent-encode a query value (everything but unreserved characters and `/`).
pub fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
