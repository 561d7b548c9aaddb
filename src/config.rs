//! The one validated configuration, built once from flags and environment by the CLI and
//! passed explicitly; nothing else reads the environment.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Where Understudy keeps its state.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Config {
        Config { data_dir }
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.data_dir.join("artifacts")
    }

    /// Files uploaded through the web UI or API wait here for their import job.
    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// How the HTTP server listens and who may talk to it.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub address: SocketAddr,
    /// Extra Host names a loopback server answers (`--allowed-hosts`), e.g. a name in /etc/hosts.
    pub allowed_hosts: Vec<String>,
    /// Bearer key required on `/api/` when set; mandatory off loopback.
    pub api_key: Option<String>,
    /// Job runner worker threads.
    pub job_workers: usize,
    /// Where the Models page's deploy form points by default (`OLLAMA_HOST`, as the CLI reads
    /// it); unset means Ollama's own default address.
    pub ollama_host: Option<String>,
    /// Decoding threads of the inference engine.
    pub engine_workers: usize,
    /// Requests that may wait for a decoding thread before the endpoint answers 429.
    pub queue_capacity: usize,
    /// Required for the UI and `/api/` when set (bearer header or the cookie `/login` sets);
    /// mandatory off loopback. The API key then guards only the inference routes `/v1/`.
    pub admin_token: Option<String>,
    /// Claude Code's settings file, where the Capture page looks for the `SessionEnd` hook (the
    /// CLI resolves it as `engine status` does); unset means the page does not check.
    pub claude_settings: Option<PathBuf>,
    /// The `understudy` executable the Capture page's Start button runs as `engine run` (`serve`
    /// sets its own); unset hides the button and the start route answers 409.
    pub understudy_binary: Option<PathBuf>,
    /// Store every completed chat completion on `/v1/chat/completions` as a redacted
    /// `source: served` trace (`serve --record-traces`); off by default.
    pub record_traces: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SettingsError {
    #[error("--host {0:?} is not an IP address")]
    BadHost(String),
    #[error(
        "refusing to listen on {0}, which is not loopback, without an API key: set --api-key or UNDERSTUDY_API_KEY"
    )]
    KeyRequired(IpAddr),
    #[error("refusing to listen on {0}, which is not loopback, without an admin token for the UI and /api: set --admin-token or UNDERSTUDY_ADMIN_TOKEN")]
    AdminTokenRequired(IpAddr),
}

impl ServeSettings {
    pub fn new(host: &str, port: u16, api_key: Option<String>) -> Result<ServeSettings, SettingsError> {
        let host = if host == "localhost" { "127.0.0.1" } else { host };
        let ip: IpAddr = host.parse().map_err(|_| SettingsError::BadHost(host.to_string()))?;
        let api_key = api_key.filter(|k| !k.is_empty());
        if !ip.is_loopback() && api_key.is_none() {
            return Err(SettingsError::KeyRequired(ip));
        }
        Ok(ServeSettings {
            address: SocketAddr::new(ip, port),
            api_key,
            job_workers: 1,
            ollama_host: None,
            engine_workers: 1,
            queue_capacity: 32,
            admin_token: None,
            claude_settings: None,
            understudy_binary: None,
            record_traces: false,
            allowed_hosts: Vec::new(),
        })
    }

    /// The Host names a request may carry: on a loopback bind, the loopback names and address
    /// plus `allowed_hosts` (a page elsewhere that rebinds its DNS name to 127.0.0.1 sends its
    /// own name and is refused); off loopback every request needs a key anyway, so `None`.
    pub fn host_names(&self) -> Option<Vec<String>> {
        if !self.address.ip().is_loopback() {
            return None;
        }
        let mut names: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).to_vec();
        names.push(match self.address.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
        names.extend(self.allowed_hosts.iter().map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()));
        names.dedup();
        Some(names)
    }

    /// Set the admin token; off loopback one is required.
    pub fn with_admin_token(mut self, token: Option<String>) -> Result<ServeSettings, SettingsError> {
        self.admin_token = token.filter(|t| !t.is_empty());
        if !self.address.ip().is_loopback() && self.admin_token.is_none() {
            return Err(SettingsError::AdminTokenRequired(self.address.ip()));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_key() {
        assert!(ServeSettings::new("127.0.0.1", 0, None).is_ok());
        assert!(matches!(ServeSettings::new("0.0.0.0", 0, None), Err(SettingsError::KeyRequired(_))));
        let keyed = ServeSettings::new("0.0.0.0", 0, Some("k".into())).unwrap();
        assert!(matches!(keyed.clone().with_admin_token(None), Err(SettingsError::AdminTokenRequired(_))));
        assert!(keyed.with_admin_token(Some("a".into())).is_ok());
        assert!(ServeSettings::new("0.0.0.0", 0, Some("k".into())).is_ok());
        assert!(matches!(ServeSettings::new("nope", 0, None), Err(SettingsError::BadHost(_))));
    }
}
