//! `fusillade serve`: the OpenAI-compatible API and the daemon in one process over one storage.
//!
//! Shutdown order on SIGINT/SIGTERM: the API stops accepting connections and finishes the
//! requests in progress (downloads get [`HTTP_DRAIN`] to end), then the daemon stops claiming,
//! lets in-flight calls finish and writes their outcomes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use fusillade::{Daemon, storage};
use fusillade_server::{ApiConfig, ApiKeyEntry, AppState, Tenants};
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::engine::{self, FileConfig};
use crate::lockfile;
use crate::signals;

/// How long requests in progress (long downloads) may run on after a shutdown signal.
const HTTP_DRAIN: Duration = Duration::from_secs(30);

/// The config file as `serve` reads it: the engine's keys, plus a `[server]` table of API
/// limits and `[[api_keys]]` entries.
#[derive(Default)]
struct ServeConfig {
    engine: FileConfig,
    api: ApiConfig,
    keys: Vec<ApiKeyEntry>,
}

fn load_config(path: Option<&Path>) -> anyhow::Result<ServeConfig> {
    let Some(path) = path else {
        return Ok(ServeConfig::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let invalid = || format!("invalid config file {}", path.display());
    let mut table: toml::Table = toml::from_str(&text).with_context(invalid)?;
    // The engine's keys are shared with `run` and `worker`; the API's tables are taken out
    // first so the engine's strict parsing does not see them.
    let api = match table.remove("server") {
        Some(v) => v.try_into().with_context(invalid)?,
        None => ApiConfig::default(),
    };
    let keys = match table.remove("api_keys") {
        Some(v) => v.try_into().with_context(invalid)?,
        None => Vec::new(),
    };
    let engine = toml::Value::Table(table).try_into().with_context(invalid)?;
    Ok(ServeConfig { engine, api, keys })
}

/// `fusillade serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<i32> {
    let config = load_config(args.engine.config.as_deref())?;
    let mut keys = config.keys;
    if let Some(list) = &args.api_keys {
        keys.extend(Tenants::parse_list(list)?);
    }
    let tenants = Tenants::from_entries(&keys)?;
    if tenants.is_open() && !args.listen.ip().is_loopback() && !args.allow_open {
        bail!(
            "no API keys are configured, so the API is open to anyone who can connect: \
             refusing to listen on {} (not loopback). Set FUSILLADE_API_KEYS=tenant:key or \
             [[api_keys]] in the config file, or pass --allow-open.",
            args.listen
        );
    }
    let database = args
        .database
        .clone()
        .or_else(|| config.engine.database.clone())
        .unwrap_or_else(|| "fusillade.db".into());
    let sqlite_lock = lockfile::hold_if_sqlite(&database)?;
    let storage = storage::open(&database)
        .await
        .with_context(|| format!("cannot open database {database}"))?;
    let mut engine = engine::resolve(&args.engine, &config.engine).await?;
    engine.config.exclusive = sqlite_lock.is_some();
    let mut state = AppState::new(storage.clone(), config.api, tenants)?;
    match fusillade_server::install_prometheus() {
        Ok(handle) => state = state.with_metrics(handle),
        Err(e) => tracing::warn!(error = %e, "metrics disabled"),
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let daemon = Daemon::new(storage, engine.config, engine.upstreams)?;
    eprintln!(
        "Fusillade Batch API listening on http://{} (database {database}, {})",
        listener.local_addr()?,
        if state.tenants.is_open() {
            "open: no API keys".to_string()
        } else {
            format!("{} API key(s)", state.tenants.tenant_names().count())
        }
    );
    run(listener, state, daemon).await?;
    if let Some(mock) = engine.mock {
        mock.shutdown().await;
    }
    Ok(0)
}

/// Runs the API and the daemon until a signal, or until either fails.
async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    daemon: Daemon,
) -> anyhow::Result<()> {
    let daemon_stop = CancellationToken::new();
    let mut daemon_task = tokio::spawn(daemon.run(daemon_stop.clone()));
    let http_stop = CancellationToken::new();
    let mut http_task = tokio::spawn(fusillade_server::serve(
        listener,
        state,
        http_stop.clone().cancelled_owned(),
    ));
    tokio::select! {
        () = signals::shutdown_signal() => tracing::info!("signal received; shutting down"),
        result = &mut http_task => {
            daemon_stop.cancel();
            let _ = daemon_task.await;
            result.context("the API task panicked")?.context("the API server failed")?;
            bail!("the API server stopped unexpectedly");
        }
        result = &mut daemon_task => {
            http_stop.cancel();
            result.context("the daemon task panicked")??;
            bail!("the daemon stopped unexpectedly");
        }
    }
    http_stop.cancel();
    match tokio::time::timeout(HTTP_DRAIN, &mut http_task).await {
        Ok(result) => result.context("the API task panicked")??,
        Err(_) => {
            tracing::warn!("requests still in progress after {HTTP_DRAIN:?}; cutting them off");
            http_task.abort();
        }
    }
    daemon_stop.cancel();
    daemon_task.await.context("the daemon task panicked")??;
    Ok(())
}
