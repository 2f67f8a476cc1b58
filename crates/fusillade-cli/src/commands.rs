//! The small subcommands: `worker`, `migrate` and `mock-upstream`.

use anyhow::Context;
use fusillade::{Daemon, storage};
use fusillade_mock::MockConfig;
use tokio_util::sync::CancellationToken;

use crate::cli::{MigrateArgs, MockArgs, WorkerArgs};
use crate::engine::{self, FileConfig};
use crate::lockfile;
use crate::signals;

/// `fusillade worker`: the daemon alone, until a signal.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<i32> {
    let file = FileConfig::load(args.engine.config.as_deref())?;
    let sqlite_lock = lockfile::hold_if_sqlite(&args.database)?;
    let storage = storage::open_with(&args.database, !args.skip_migrations)
        .await
        .with_context(|| format!("cannot open database {}", args.database))?;
    let mut engine = engine::resolve(&args.engine, &file).await?;
    engine.config.exclusive = sqlite_lock.is_some();
    let daemon = Daemon::new(storage, engine.config, engine.upstreams)?;
    let token = CancellationToken::new();
    let task = tokio::spawn(daemon.run(token.clone()));
    signals::shutdown_signal().await;
    tracing::info!("signal received; draining");
    token.cancel();
    task.await.context("the daemon task panicked")??;
    if let Some(mock) = engine.mock {
        mock.shutdown().await;
    }
    Ok(0)
}

/// `fusillade migrate`.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<i32> {
    storage::open(&args.database)
        .await
        .with_context(|| format!("cannot migrate database {}", args.database))?;
    eprintln!("Database {} is up to date.", args.database);
    Ok(0)
}

/// `fusillade mock-upstream`.
pub async fn mock_upstream(args: MockArgs) -> anyhow::Result<i32> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = MockConfig {
        latency: std::time::Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        rate_limit_rate: args.rate_limit_rate,
        retry_after_secs: args.retry_after_secs,
        ..MockConfig::default()
    };
    eprintln!(
        "Mock upstream listening on http://{}",
        listener.local_addr()?
    );
    fusillade_mock::serve(listener, config, signals::shutdown_signal()).await?;
    Ok(0)
}
