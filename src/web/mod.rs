//! The HTTP server: actix-web app wiring, shared state, access control, and the route table.
//! The web is sliced by feature — `overview` (dashboard, docs, health, stats, OpenAPI),
//! `traces`, `jobs`, `bootstrap`, `datasets`, `training`, `models`, `capture`, `orchestrator`, `playground`,
//! `rewards` (the reward function over HTTP), `openai` (`/v1`) — each holding its page handlers, `/api` handlers and view models; what
//! they share is in `shared`, the one error type and its renderings in `error`, embedded static
//! files in `assets`, Prometheus text in `metrics`. Features import `shared` and `error`, and a
//! feature may import another's helpers (traces' rows, jobs' rows) but never in a cycle. Store,
//! file-system and tokenizer work runs on the blocking pool (`with_db`, `blocking`), never on
//! the async workers.

mod assets;
mod bootstrap;
mod capture;
mod datasets;
mod error;
mod jobs;
mod metrics;
mod models;
mod nav;
mod openai;
mod orchestrator;
mod overview;
mod playground;
mod rewards;
mod shared;
mod traces;
mod training;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};

use crate::config::{Config, ServeSettings};
use crate::jobs::JobRunner;
use crate::store::{Db, Store};

pub use error::WebError;
pub use overview::ApiDoc;

/// Largest upload accepted by the import form and API.
pub const MAX_UPLOAD_BYTES: usize = 512 * 1024 * 1024;
/// Largest JSON body accepted elsewhere.
pub const MAX_JSON_BYTES: usize = 2 * 1024 * 1024;

pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub runner: Arc<JobRunner>,
    pub api_key: Option<String>,
    pub admin_token: Option<String>,
    /// The deploy form's default Ollama address.
    pub ollama_host: String,
    pub serving: Arc<Serving>,
    /// Claude Code's settings file, checked for the capture hook (`ServeSettings::claude_settings`).
    pub claude_settings: Option<std::path::PathBuf>,
    /// What the Capture page's Start button spawns (`ServeSettings::understudy_binary`).
    pub understudy_binary: Option<std::path::PathBuf>,
    /// Completed chat completions become `served` traces (`ServeSettings::record_traces`).
    pub record_traces: bool,
    /// The Host names requests may carry (`ServeSettings::host_names`); `None` off loopback.
    pub host_names: Option<Vec<String>>,
}

/// The inference side of the server: the engine's workers, the loaded models, the metrics.
pub struct Serving {
    pub decoders: crate::serve::decode::DecodePool,
    pub registry: Arc<crate::serve::registry::Registry>,
    pub metrics: Arc<metrics::Metrics>,
}

impl AppState {
    /// Run store work on the blocking pool.
    pub async fn with_db<T, F>(&self, work: F) -> Result<T, WebError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Result<T, WebError> + Send + 'static,
    {
        let store = self.store.clone();
        web::block(move || {
            let mut db = store.connect()?;
            work(&mut db)
        })
        .await
        .map_err(|e| WebError::Internal(format!("blocking task failed: {e}")))?
    }
}

impl AppState {
    /// Run blocking work (file system, tokenizers, store) on the blocking pool with a connection.
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, WebError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Result<T, crate::jobs::requests::RequestError> + Send + 'static,
    {
        self.with_db(move |db| work(db).map_err(WebError::from)).await
    }

    /// Queue a job (`jobs::submit`) and wake the runner.
    pub async fn submit(&self, params: crate::jobs::JobParams) -> Result<crate::jobs::JobId, WebError> {
        let id = self.with_db(move |db| Ok(crate::jobs::submit(db, &params)?)).await?;
        self.runner.notify();
        Ok(id)
    }
}

/// A built server bound to its address, with its job runner.
pub struct Application {
    address: SocketAddr,
    server: actix_web::dev::Server,
    runner: Arc<JobRunner>,
}

impl Application {
    pub async fn build(config: Config, store: Store, settings: ServeSettings) -> std::io::Result<Application> {
        let runner = Arc::new(JobRunner::start(store.clone(), settings.job_workers).map_err(std::io::Error::other)?);
        let host_names = settings.host_names();
        let ollama_host = settings.ollama_host.unwrap_or_else(|| crate::deploy::DEFAULT_HOST.to_string());
        let serving = Arc::new(Serving {
            decoders: crate::serve::decode::DecodePool::start(settings.engine_workers, settings.queue_capacity),
            registry: Arc::new(crate::serve::registry::Registry::new(settings.engine_workers)),
            metrics: Arc::new(metrics::Metrics::default()),
        });
        let state = web::Data::new(AppState {
            config,
            store,
            runner: Arc::clone(&runner),
            api_key: settings.api_key,
            admin_token: settings.admin_token,
            ollama_host,
            serving,
            claude_settings: settings.claude_settings,
            understudy_binary: settings.understudy_binary,
            record_traces: settings.record_traces,
            host_names,
        });
        let listener = TcpListener::bind(settings.address)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", settings.address)))?;
        let address = listener.local_addr()?;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::JsonConfig::default().limit(MAX_JSON_BYTES))
                .app_data(web::FormConfig::default().limit(MAX_JSON_BYTES))
                .app_data(web::PayloadConfig::default().limit(MAX_UPLOAD_BYTES))
                .wrap(from_fn(access_control))
                .wrap(actix_web::middleware::Logger::new("%r %s %Dms").log_target("understudy::http"))
                .configure(routes)
        })
        .workers(2)
        .listen(listener)?
        .run();
        Ok(Application { address, server, runner })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Build and serve on this thread until Ctrl-C (the CLI's `serve`); `on_ready` gets the bound
    /// address once requests are accepted.
    pub fn run_blocking(
        config: Config,
        store: Store,
        settings: ServeSettings,
        on_ready: impl FnOnce(SocketAddr),
    ) -> std::io::Result<()> {
        actix_web::rt::System::new().block_on(async move {
            let application = Application::build(config, store, settings).await?;
            on_ready(application.address());
            application.run_until_stopped().await
        })
    }

    /// Serve until stopped (Ctrl-C or a handle), then let the job runner finish its current job.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await?;
        let runner = self.runner;
        web::block(move || runner.shutdown()).await.ok();
        Ok(())
    }
}

fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/health", web::get().to(overview::health))
        .route("/openapi.json", web::get().to(overview::openapi_json))
        .route("/metrics", web::get().to(metrics_text))
        .route("/login", web::get().to(login))
        .configure(openai::routes)
        .service(
            web::scope("/api")
                .configure(overview::api_routes)
                .configure(traces::api_routes)
                .configure(jobs::api_routes)
                .configure(datasets::api_routes)
                .configure(training::api_routes)
                .configure(models::api_routes)
                .configure(capture::api_routes)
                .configure(orchestrator::api_routes)
                .configure(bootstrap::api_routes)
                .configure(playground::api_routes)
                .configure(rewards::api_routes),
        )
        .configure(overview::routes)
        .configure(traces::routes)
        .configure(jobs::routes)
        .configure(bootstrap::routes)
        .configure(capture::routes)
        .configure(orchestrator::routes)
        .configure(datasets::routes)
        .configure(training::routes)
        .configure(models::routes)
        .configure(playground::routes)
        .route("/static/{path:.*}", web::get().to(assets::serve))
        .default_service(web::to(shared::not_found));
}

/// The cookie that carries the admin token for the web UI.
const ADMIN_COOKIE: &str = "understudy_admin";

/// `GET /login?token=...`: a right admin token becomes an HttpOnly, same-site cookie.
async fn login(
    state: web::Data<AppState>,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> Result<actix_web::HttpResponse, error::PageError> {
    let given = query.get("token").cloned().unwrap_or_default();
    match &state.admin_token {
        Some(token) if *token == given => {
            let cookie = actix_web::cookie::Cookie::build(ADMIN_COOKIE, given)
                .path("/")
                .http_only(true)
                .same_site(actix_web::cookie::SameSite::Strict)
                .finish();
            Ok(actix_web::HttpResponse::SeeOther().insert_header(("Location", "/")).cookie(cookie).finish())
        }
        Some(_) => Err(error::PageError(WebError::Forbidden("wrong admin token".into()))),
        None => Ok(actix_web::HttpResponse::SeeOther().insert_header(("Location", "/")).finish()),
    }
}

/// Prometheus text: requests, tokens, latency, time to first token, the engine's queue.
async fn metrics_text(state: web::Data<AppState>) -> actix_web::HttpResponse {
    let serving = &state.serving;
    let body = serving.metrics.render(
        serving.decoders.queued(),
        serving.decoders.active(),
        serving.decoders.capacity(),
        serving.registry.loaded_versions().len(),
    );
    actix_web::HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(body)
}

/// The Host name of a `Host` header (without its port), checked against `names`.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(&host).to_string()
    } else {
        host.rsplit_once(':').map_or(host.clone(), |(name, _)| name.to_string())
    };
    names.contains(&name)
}

/// The loopback Host check (DNS rebinding), the bearer key on `/api/` when one is configured,
/// and a same-origin check on form posts and `/api` writes (CSRF).
async fn access_control(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let path = request.path().to_string();
    let bearer = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let (api_key, admin_token) = state.as_ref().map_or((None, None), |s| (s.api_key.clone(), s.admin_token.clone()));
    // DNS rebinding: a loopback server answers only to its own names.
    if let Some(names) = state.as_ref().and_then(|s| s.host_names.as_ref()) {
        let host = request.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !host_allowed(host, names) {
            let message = format!(
                "Host {host:?} is not this server's name; a loopback server answers {} (start it with --allowed-hosts NAME to add one)",
                names.join(", ")
            );
            if path.starts_with("/v1/") {
                return Err(openai::OpenAiError::forbidden(message).into());
            }
            if path.starts_with("/api/") {
                return Err(error::ApiError(WebError::Forbidden(message)).into());
            }
            return Err(error::PageError(WebError::Forbidden(message)).into());
        }
    }
    let open = path == "/health" || path == "/login" || path.starts_with("/static/");
    if path.starts_with("/v1/") {
        if api_key.is_some_and(|key| bearer.as_deref() != Some(key.as_str())) {
            return Err(openai::OpenAiError::unauthorized().into());
        }
    } else if let Some(token) = admin_token.filter(|_| !open) {
        let cookie = request.cookie(ADMIN_COOKIE).map(|c| c.value().to_string());
        if bearer.as_deref() != Some(token.as_str()) && cookie.as_deref() != Some(token.as_str()) {
            if path.starts_with("/api/") {
                return Err(error::ApiError(WebError::Unauthorized).into());
            }
            return Err(error::PageError(WebError::Forbidden(
                "this Understudy needs its admin token: open /login?token=TOKEN once in this browser".into(),
            ))
            .into());
        }
    } else if let Some(key) = api_key.filter(|_| path.starts_with("/api/")) {
        if bearer.as_deref() != Some(key.as_str()) {
            return Err(error::ApiError(WebError::Unauthorized).into());
        }
    }
    // Cross-origin writes: a form post or a JSON call to /api from another origin is refused
    // (a browser always sends Origin on those); /v1 is a public API for any client.
    let writes = !matches!(*request.method(), actix_web::http::Method::GET | actix_web::http::Method::HEAD);
    if writes && !path.starts_with("/v1/") {
        let host = request.connection_info().host().to_string();
        let origin = request.headers().get("origin").and_then(|v| v.to_str().ok()).map(str::to_string);
        if let Some(origin) = origin.filter(|o| o != "null") {
            let origin_host = origin.split("://").nth(1).unwrap_or(&origin);
            if origin_host != host {
                if path.starts_with("/api/") {
                    return Err(error::ApiError(WebError::Forbidden("cross-origin request refused".into())).into());
                }
                return Err(error::PageError(WebError::Forbidden("cross-site form post refused".into())).into());
            }
        }
    }
    next.call(request).await
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_the_loopback_names_pass_with_or_without_a_port() {
        let names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec();
        for host in ["127.0.0.1:8080", "localhost", "LOCALHOST:80", "[::1]:8080", "[::1]"] {
            assert!(host_allowed(host, &names), "{host}");
        }
        for host in ["evil.example.com", "evil.example.com:8080", "127.0.0.1.nip.io:8080", "", "[::2]:80"] {
            assert!(!host_allowed(host, &names), "{host}");
        }
    }
}
