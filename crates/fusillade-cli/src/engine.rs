//! Turns flags, environment and the optional TOML config file into the daemon's configuration
//! and upstream routing, starting the in-process mock upstream when asked for.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fusillade::DaemonConfig;
use fusillade::upstream::{ApiKey, Upstream, Upstreams};
use fusillade_mock::{MockConfig, MockServer};
use serde::Deserialize;

use crate::cli::EngineArgs;

/// The TOML config file. Secrets are not accepted here: name the environment variable that
/// holds a key with `api_key_env`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Default upstream base URL.
    pub upstream: Option<String>,
    /// Environment variable holding the default upstream's API key.
    pub api_key_env: Option<String>,
    /// Default per-model concurrency.
    pub concurrency: Option<u32>,
    /// Attempts per request.
    pub max_attempts: Option<u32>,
    /// Seconds to wait for response headers.
    pub request_timeout: Option<u64>,
    /// Seconds of silence after which a daemon counts as dead.
    pub stale_after: Option<u64>,
    /// `run`: completion window.
    pub completion_window: Option<String>,
    /// Database URL.
    pub database: Option<String>,
    /// Per-model overrides.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

/// Settings of one model.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Concurrency for this model.
    pub concurrency: Option<u32>,
    /// Upstream for this model.
    pub upstream: Option<String>,
    /// Environment variable holding that upstream's key.
    pub api_key_env: Option<String>,
}

impl FileConfig {
    /// Reads the file named by `--config`, or an empty config.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// What the engine needs to run, resolved.
pub struct Engine {
    /// Daemon configuration.
    pub config: DaemonConfig,
    /// Upstream routing.
    pub upstreams: Upstreams,
    /// The in-process mock, when `--upstream mock`; shut it down after the daemon.
    pub mock: Option<MockServer>,
}

/// Resolves engine options: flag, then environment (clap merged both), then file, then default.
pub async fn resolve(args: &EngineArgs, file: &FileConfig) -> anyhow::Result<Engine> {
    let mut config = DaemonConfig::default();
    if let Some(n) = args.concurrency.or(file.concurrency) {
        config.concurrency.default = n;
    }
    if let Some(n) = args.max_attempts.or(file.max_attempts) {
        config.retry.max_attempts = n;
    }
    if let Some(secs) = args.request_timeout.or(file.request_timeout) {
        config.http.first_byte_timeout = Duration::from_secs(secs);
        config.http.total_timeout = config.http.total_timeout.max(Duration::from_secs(secs));
    }
    if let Some(secs) = args.stale_after.or(file.stale_after) {
        config.stale_after = Duration::from_secs(secs.max(1));
        config.heartbeat_interval = config.stale_after / 5;
    }
    for (model, m) in &file.models {
        if let Some(n) = m.concurrency {
            config.concurrency.per_model.insert(model.clone(), n);
        }
    }
    config.validate()?;

    let Some(url) = args.upstream.clone().or_else(|| file.upstream.clone()) else {
        bail!("no upstream given: pass --upstream URL (or --upstream mock for a demo)");
    };
    let mut mock = None;
    let default = if url == "mock" {
        let server = MockServer::start(([127, 0, 0, 1], 0).into(), MockConfig::default())
            .await
            .context("cannot start the in-process mock upstream")?;
        let upstream = Upstream::new(&server.base_url()).map_err(anyhow::Error::msg)?;
        mock = Some(server);
        upstream
    } else {
        let key = args
            .api_key
            .clone()
            .or_else(|| key_from_env(file.api_key_env.as_deref()))
            .or_else(|| std::env::var("OPENAI_API_KEY").ok());
        Upstream::new(&url)
            .map_err(anyhow::Error::msg)?
            .with_api_key(key.map(ApiKey::new))
    };
    let mut upstreams = Upstreams::new(default);
    for (model, m) in &file.models {
        if let Some(url) = &m.upstream {
            let key = key_from_env(m.api_key_env.as_deref()).map(ApiKey::new);
            let upstream = Upstream::new(url)
                .map_err(anyhow::Error::msg)?
                .with_api_key(key);
            upstreams = upstreams.route(model, upstream);
        }
    }
    Ok(Engine {
        config,
        upstreams,
        mock,
    })
}

fn key_from_env(var: Option<&str>) -> Option<String> {
    var.and_then(|v| std::env::var(v).ok())
}
