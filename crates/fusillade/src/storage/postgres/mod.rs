//! The PostgreSQL backend: many replicas on one database.
//!
//! Claims lock rows with `FOR UPDATE SKIP LOCKED` so replicas never wait on each other, and a
//! transaction-scoped advisory lock per model makes the per-model concurrency limit hold across
//! all replicas together. Events cross replicas with `LISTEN/NOTIFY` (polling remains the
//! fallback). Every statement runs under a `statement_timeout`, and nothing relies on session
//! state, so a transaction-pooling PgBouncer works (LISTEN aside).

mod batches;
mod daemons;
mod events;
mod files;
mod requests;
mod rows;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    BatchCreate, BatchList, ClaimParams, Claimed, FileCreate, FileList, FinishReport, ModelStats,
    Page, RescueParams, Result, ResultPage, ResultRow, Scope, Storage, StorageError, StorageEvent,
    UploadStream,
};
use crate::model::{
    Batch, BatchId, BatchStatus, DaemonId, DaemonRecord, File, FileId, Finish, NewTemplate,
    Timestamp,
};

/// Connections per process: the scheduler, the completer, maintenance and API reads.
const POOL_SIZE: u32 = 10;
/// Longest any statement may run before the database cancels it.
const STATEMENT_TIMEOUT: &str = "30s";
/// Capacity of the in-process event channel.
const EVENT_CAPACITY: usize = 1024;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The PostgreSQL implementation of [`Storage`].
#[derive(Debug, Clone)]
pub struct PostgresStorage {
    pool: PgPool,
    events: broadcast::Sender<StorageEvent>,
    /// Stops the LISTEN task when the last clone of the storage is dropped.
    _listener: Arc<DropGuard>,
}

impl PostgresStorage {
    /// Connects to `url`, applies migrations unless `migrate` is false, and starts the
    /// `LISTEN` task that turns notifications from every replica into events.
    pub async fn open(url: &str, migrate: bool) -> Result<Self> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| StorageError::Config(format!("bad PostgreSQL URL: {e}")))?;
        // JIT compilation costs tens of milliseconds and only pays off for long analytical
        // queries, which Fusillade never runs; high row estimates would trigger it anyway.
        let options = options.options([("statement_timeout", STATEMENT_TIMEOUT), ("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(30))
            // Connections opened together should not all expire together.
            .max_lifetime(Duration::from_secs(
                1800 + u64::from(rand::random::<u16>() % 600),
            ))
            .connect_with(options.clone())
            .await?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let stop = CancellationToken::new();
        let storage = Self {
            pool,
            events,
            _listener: Arc::new(stop.clone().drop_guard()),
        };
        if migrate {
            storage.migrate().await?;
        }
        events::spawn_listener(options, storage.events.clone(), stop);
        Ok(storage)
    }

    /// The connection pool (tests use it to inspect the database).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn file_create(&self, params: FileCreate, upload: UploadStream<'_>) -> Result<File> {
        files::create(self, params, upload).await
    }

    async fn file_get(&self, scope: &Scope, id: &FileId) -> Result<File> {
        files::get(&self.pool, scope, id).await
    }

    async fn file_list(&self, params: FileList) -> Result<Page<File>> {
        files::list(&self.pool, params).await
    }

    async fn file_delete(&self, scope: &Scope, id: &FileId, now: Timestamp) -> Result<()> {
        files::delete(&self.pool, scope, id, now).await
    }

    async fn template_page(
        &self,
        scope: &Scope,
        id: &FileId,
        after_line: u64,
        limit: u32,
    ) -> Result<Vec<NewTemplate>> {
        files::template_page(&self.pool, scope, id, after_line, limit).await
    }

    async fn file_model_stats(&self, scope: &Scope, id: &FileId) -> Result<Vec<ModelStats>> {
        files::model_stats(&self.pool, scope, id).await
    }

    async fn batch_create(&self, params: BatchCreate) -> Result<Batch> {
        batches::create(&self.pool, params).await
    }

    async fn batch_get(&self, scope: &Scope, id: &BatchId) -> Result<Batch> {
        batches::get(&self.pool, scope, id).await
    }

    async fn batch_list(&self, params: BatchList) -> Result<Page<Batch>> {
        batches::list(&self.pool, params).await
    }

    async fn batch_get_by_output_file(&self, scope: &Scope, id: &FileId) -> Result<Batch> {
        batches::get_by_output_file(&self.pool, scope, id).await
    }

    async fn batch_cancel(&self, scope: &Scope, id: &BatchId, now: Timestamp) -> Result<Batch> {
        batches::cancel(&self.pool, scope, id, now).await
    }

    async fn batch_expire_due(&self, now: Timestamp) -> Result<Vec<BatchId>> {
        batches::expire_due(&self.pool, now).await
    }

    async fn batch_retry_failed(&self, scope: &Scope, id: &BatchId, now: Timestamp) -> Result<u64> {
        batches::retry_failed(&self.pool, scope, id, now).await
    }

    async fn batch_statuses(&self, ids: &[BatchId]) -> Result<Vec<(BatchId, BatchStatus)>> {
        batches::statuses(&self.pool, ids).await
    }

    async fn batch_models_active(&self) -> Result<Vec<String>> {
        batches::models_active(&self.pool).await
    }

    async fn result_page(&self, scope: &Scope, params: ResultPage) -> Result<Vec<ResultRow>> {
        rows::result_page(&self.pool, scope, params).await
    }

    async fn request_claim_many(&self, params: ClaimParams) -> Result<Claimed> {
        requests::claim_many(&self.pool, params).await
    }

    async fn request_finish_many(
        &self,
        finishes: &[Finish],
        now: Timestamp,
    ) -> Result<FinishReport> {
        requests::finish_many(&self.pool, finishes, now).await
    }

    async fn request_rescue_stale(&self, params: RescueParams) -> Result<u64> {
        requests::rescue_stale(&self.pool, params).await
    }

    async fn daemon_register(&self, record: &DaemonRecord) -> Result<()> {
        daemons::register(&self.pool, record).await
    }

    async fn daemon_heartbeat(&self, id: &DaemonId, now: Timestamp, finished: u64) -> Result<()> {
        daemons::heartbeat(&self.pool, id, now, finished).await
    }

    async fn daemon_stop(&self, id: &DaemonId, now: Timestamp) -> Result<()> {
        daemons::stop(&self.pool, id, now).await
    }

    async fn daemon_list(&self) -> Result<Vec<DaemonRecord>> {
        daemons::list(&self.pool).await
    }

    fn subscribe(&self) -> broadcast::Receiver<StorageEvent> {
        self.events.subscribe()
    }
}
