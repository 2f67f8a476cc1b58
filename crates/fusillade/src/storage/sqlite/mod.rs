//! The embedded SQLite backend: one database file, WAL, a single writer connection and a small
//! pool of readers.
//!
//! SQLite allows one writer at a time, so every write goes through one connection and never
//! waits on a lock held by another connection of ours. Multi-row writes pass their rows as one
//! JSON array parameter read with `json_each`, so a flush of hundreds of outcomes is a single
//! statement. Timestamps are stored as integer milliseconds.

mod batches;
mod daemons;
mod files;
mod requests;
mod rows;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqlitePool};
use tokio::sync::broadcast;

use super::{
    BatchCreate, BatchList, ClaimParams, Claimed, FileCreate, FileList, FinishReport, ModelStats,
    Page, RescueParams, Result, ResultPage, ResultRow, Scope, Storage, StorageError, StorageEvent,
    UploadStream,
};
use crate::model::{
    Batch, BatchId, BatchStatus, DaemonId, DaemonRecord, File, FileId, Finish, NewTemplate,
    Timestamp,
};

/// Readers beyond the writer: downloads and API reads run beside the daemon's writes.
const READER_CONNECTIONS: u32 = 4;
/// Page cache of the writer (negative: KiB). The hot pages are the claim index and the batch
/// rows; 8 MiB holds them for millions of requests.
const WRITER_CACHE_KIB: &str = "-8192";
/// Page cache of each reader: reads stream pages once, so a small cache is enough and keeps
/// resident memory flat.
const READER_CACHE_KIB: &str = "-2048";
/// How long a statement waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the event channel; receivers that fall further behind miss events and poll.
const EVENT_CAPACITY: usize = 1024;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The SQLite implementation of [`Storage`].
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    writer: SqlitePool,
    reader: SqlitePool,
    events: broadcast::Sender<StorageEvent>,
}

impl SqliteStorage {
    /// Opens (creating if needed) the database at `path`, applies migrations and removes
    /// uploads that a previous process left unfinished.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| StorageError::Config(format!("bad SQLite path {path:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives process crashes; a power cut may lose the last
            // commits but never corrupts the file.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false)
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            // When a COMMIT fails (disk full, I/O error) SQLite may already have rolled the
            // transaction back; sqlx then still counts it as open, and from then on nests every
            // transaction in a savepoint that never commits: writes seem to succeed but are
            // never persisted. A connection handed back inside a transaction (after the
            // rollback a dropped transaction queues, which the ping waits for) is replaced.
            .after_release(|conn, _| {
                Box::pin(async move {
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
            .connect_with(options.clone().pragma("cache_size", WRITER_CACHE_KIB))
            .await
            .map_err(|e| open_failure(path, e))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READER_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(60))
            .connect_with(
                options
                    .read_only(true)
                    .pragma("cache_size", READER_CACHE_KIB),
            )
            .await?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let storage = Self {
            writer,
            reader,
            events,
        };
        storage.migrate().await?;
        files::sweep_abandoned_uploads(&storage).await?;
        Ok(storage)
    }

    fn emit(&self, event: StorageEvent) {
        // No receiver is fine: nobody is waiting.
        let _ = self.events.send(event);
    }
}

/// SQLite reports a database it cannot write as "unable to open database file"; when the OS
/// refuses to open the file (or its directory) for writing, its reason is the clear one.
fn open_failure(path: &Path, error: sqlx::Error) -> StorageError {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path);
    let refused = match file {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Some(e),
        _ => {
            // The -wal and -shm files live beside the database.
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let probe = dir.unwrap_or(Path::new(".")).join(".fusillade-write-probe");
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&probe);
            let _ = std::fs::remove_file(&probe);
            created.err()
        }
    };
    match refused {
        Some(e) => StorageError::Config(format!(
            "cannot open the SQLite database {} for writing: {e} ({error})",
            path.display()
        )),
        None => StorageError::Database(error),
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn file_create(&self, params: FileCreate, upload: UploadStream<'_>) -> Result<File> {
        files::create(self, params, upload).await
    }

    async fn file_get(&self, scope: &Scope, id: &FileId) -> Result<File> {
        files::get(self, scope, id).await
    }

    async fn file_list(&self, params: FileList) -> Result<Page<File>> {
        files::list(self, params).await
    }

    async fn file_delete(&self, scope: &Scope, id: &FileId, now: Timestamp) -> Result<()> {
        files::delete(self, scope, id, now).await
    }

    async fn template_page(
        &self,
        scope: &Scope,
        id: &FileId,
        after_line: u64,
        limit: u32,
    ) -> Result<Vec<NewTemplate>> {
        files::template_page(self, scope, id, after_line, limit).await
    }

    async fn file_model_stats(&self, scope: &Scope, id: &FileId) -> Result<Vec<ModelStats>> {
        files::model_stats(self, scope, id).await
    }

    async fn batch_create(&self, params: BatchCreate) -> Result<Batch> {
        batches::create(self, params).await
    }

    async fn batch_get(&self, scope: &Scope, id: &BatchId) -> Result<Batch> {
        batches::get(&self.reader, scope, id).await
    }

    async fn batch_list(&self, params: BatchList) -> Result<Page<Batch>> {
        batches::list(self, params).await
    }

    async fn batch_get_by_output_file(&self, scope: &Scope, id: &FileId) -> Result<Batch> {
        batches::get_by_output_file(self, scope, id).await
    }

    async fn batch_cancel(&self, scope: &Scope, id: &BatchId, now: Timestamp) -> Result<Batch> {
        batches::cancel(self, scope, id, now).await
    }

    async fn batch_expire_due(&self, now: Timestamp) -> Result<Vec<BatchId>> {
        batches::expire_due(self, now).await
    }

    async fn batch_retry_failed(&self, scope: &Scope, id: &BatchId, now: Timestamp) -> Result<u64> {
        batches::retry_failed(self, scope, id, now).await
    }

    async fn batch_statuses(&self, ids: &[BatchId]) -> Result<Vec<(BatchId, BatchStatus)>> {
        batches::statuses(self, ids).await
    }

    async fn batch_models_active(&self) -> Result<Vec<String>> {
        batches::models_active(self).await
    }

    async fn result_page(&self, scope: &Scope, params: ResultPage) -> Result<Vec<ResultRow>> {
        rows::result_page(self, scope, params).await
    }

    async fn request_claim_many(&self, params: ClaimParams) -> Result<Claimed> {
        requests::claim_many(self, params).await
    }

    async fn request_finish_many(
        &self,
        finishes: &[Finish],
        now: Timestamp,
    ) -> Result<FinishReport> {
        requests::finish_many(self, finishes, now).await
    }

    async fn request_rescue_stale(&self, params: RescueParams) -> Result<u64> {
        requests::rescue_stale(self, params).await
    }

    async fn daemon_register(&self, record: &DaemonRecord) -> Result<()> {
        daemons::register(self, record).await
    }

    async fn daemon_heartbeat(&self, id: &DaemonId, now: Timestamp, finished: u64) -> Result<()> {
        daemons::heartbeat(self, id, now, finished).await
    }

    async fn daemon_stop(&self, id: &DaemonId, now: Timestamp) -> Result<()> {
        daemons::stop(self, id, now).await
    }

    async fn daemon_list(&self) -> Result<Vec<DaemonRecord>> {
        daemons::list(self).await
    }

    fn subscribe(&self) -> broadcast::Receiver<StorageEvent> {
        self.events.subscribe()
    }
}
