//! The `Storage` trait: the only place where SQL meets the rest of Fusillade.
//!
//! Every operation is command-shaped and named entity, verb, qualifier (`request_claim_many`,
//! `batch_expire_due`). Each takes one params struct, so adding a field changes no signature.
//! Each backend owns its SQL and migrations (`sqlite/`, `postgres/`), and one conformance suite
//! (`tests/conformance/`) runs against every backend: a behaviour is not done until it passes on
//! all of them.
//!
//! The daemon and the API hold an `Arc<dyn Storage>`: the backend is chosen once at startup from
//! the database URL ([`open`]), and dynamic dispatch costs nothing measurable next to a database
//! round trip, while keeping the daemon, the server and the CLI free of generics.

mod body;
pub mod postgres;
pub(crate) mod shared;
pub mod sqlite;
mod staging;

use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::input::{InputError, InputSummary};
use crate::model::{
    Batch, BatchId, BatchStatus, ClaimedRequest, DaemonId, DaemonRecord, File, FileId, FilePurpose,
    Finish, NewTemplate, RequestState, Timestamp,
};

/// Errors of storage operations.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The template stream given to `file_create` reported a bad line; nothing was stored.
    #[error("{0}")]
    Rejected(#[from] InputError),
    /// The object does not exist (or belongs to another tenant).
    #[error("{0} not found")]
    NotFound(String),
    /// The operation does not apply in the object's current state.
    #[error("{0}")]
    Conflict(String),
    /// The database failed; the operation may be retried.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL or configuration is unusable.
    #[error("{0}")]
    Config(String),
}

/// Result of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Which tenant's objects an operation may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant (the CLI, the daemon, administrators).
    All,
    /// Only objects owned by this tenant.
    Tenant(String),
}

impl Scope {
    /// Whether an object owned by `owner` is visible.
    pub fn allows(&self, owner: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => t == owner,
        }
    }
}

/// One item of an upload stream: templates as lines are validated, then a summary at the end.
#[derive(Debug)]
pub enum UploadItem {
    /// Validated lines, in file order.
    Templates(Vec<NewTemplate>),
    /// The file ended without error.
    Done(InputSummary),
}

/// The stream `file_create` consumes. An `Err` aborts the upload and stores nothing.
pub type UploadStream<'a> = BoxStream<'a, std::result::Result<UploadItem, InputError>>;

/// Parameters of `file_create`.
#[derive(Debug, Clone)]
pub struct FileCreate {
    /// Owning tenant.
    pub owner: String,
    /// Name given by the uploader.
    pub filename: String,
    /// When the file stops being readable, if ever.
    pub expires_at: Option<Timestamp>,
    /// Creation time.
    pub now: Timestamp,
}

/// Parameters of `file_list`.
#[derive(Debug, Clone)]
pub struct FileList {
    /// Whose files.
    pub scope: Scope,
    /// Only files with this purpose.
    pub purpose: Option<FilePurpose>,
    /// Continue after this file id (it must exist in the scope, else `NotFound`).
    pub after: Option<FileId>,
    /// Page size.
    pub limit: u32,
    /// Oldest first when true; newest first otherwise.
    pub ascending: bool,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Whether more items follow.
    pub has_more: bool,
}

/// Per-model statistics of an input file, for cost estimates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStats {
    /// `body.model`.
    pub model: String,
    /// Number of lines for the model.
    pub requests: u64,
    /// Sum of their body sizes.
    pub body_bytes: u64,
}

/// Parameters of `batch_create`.
#[derive(Debug, Clone)]
pub struct BatchCreate {
    /// Owning tenant (must own the input file).
    pub owner: String,
    /// The uploaded input.
    pub input_file_id: FileId,
    /// Endpoint every line must target; `None` accepts the file's lines as they are.
    pub endpoint: Option<String>,
    /// The window as given (`24h`), if any.
    pub completion_window: Option<String>,
    /// Deadline computed from the window, if any.
    pub expires_at: Option<Timestamp>,
    /// User metadata.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Creation time.
    pub now: Timestamp,
}

/// Parameters of `batch_list`.
#[derive(Debug, Clone)]
pub struct BatchList {
    /// Whose batches.
    pub scope: Scope,
    /// Continue after this batch id (must exist in the scope, else `NotFound`).
    pub after: Option<BatchId>,
    /// Page size.
    pub limit: u32,
    /// Only batches whose metadata text contains this string (case-insensitive).
    pub search: Option<String>,
}

/// Which rows of a batch `result_page` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFilter {
    /// The output file: completed requests.
    Output,
    /// The error file: failed, expired and cancelled requests.
    Errors,
    /// Requests in one state.
    State(RequestState),
    /// Every request.
    All,
}

/// Parameters of `result_page`.
#[derive(Debug, Clone)]
pub struct ResultPage {
    /// The batch.
    pub batch_id: BatchId,
    /// Which rows.
    pub filter: ResultFilter,
    /// Only lines after this one (keyset pagination over the input line number).
    pub after_line: u64,
    /// Page size.
    pub limit: u32,
    /// Include each line's request body.
    pub with_input: bool,
}

/// One request of a batch as seen by downloads and result views.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Input line.
    pub line: u64,
    /// The caller's id.
    pub custom_id: String,
    /// Current state.
    pub state: RequestState,
    /// Attempts made.
    pub attempts: u32,
    /// Upstream status of the last answer, if any.
    pub status_code: Option<u16>,
    /// Upstream body of the final answer (completed) or of the last error answer, as one line
    /// of JSON: minified when the upstream sent JSON, else a JSON string holding what it sent.
    pub response_body: Option<String>,
    /// Upstream `x-request-id`.
    pub upstream_request_id: Option<String>,
    /// Error code of the last failed attempt.
    pub error_code: Option<String>,
    /// Error message of the last failed attempt.
    pub error_message: Option<String>,
    /// The request body, when asked for.
    pub input_body: Option<String>,
}

/// A model with its claim budget for one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelClaim {
    /// `body.model`.
    pub model: String,
    /// Most requests to lease for it now: this process's free slots.
    pub max: u32,
    /// The model's concurrency limit across every process on the database. Backends shared by
    /// several processes lease at most `limit` minus `in_flight` minus what other daemons run.
    pub limit: u32,
    /// Calls of this model this process has in flight now. Its own rows are counted from here
    /// rather than from the database, where a finished call looks running until its outcome is
    /// written; so claims need no ordering with outcome writes.
    pub in_flight: u32,
}

/// Parameters of `request_claim_many`.
#[derive(Debug, Clone)]
pub struct ClaimParams {
    /// The claiming daemon.
    pub daemon_id: DaemonId,
    /// Claim time; retries due at or before it become claimable.
    pub now: Timestamp,
    /// Models and how many of each to lease.
    pub models: Vec<ModelClaim>,
}

/// What a claim returned.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    /// Leased requests, earliest deadline first, then batch order, then line order.
    pub requests: Vec<ClaimedRequest>,
    /// When the earliest scheduled retry becomes due, so the scheduler can wake then.
    pub next_retry_at: Option<Timestamp>,
}

/// What `request_finish_many` applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishReport {
    /// Outcomes written.
    pub applied: u64,
    /// Outcomes ignored because the lease no longer held (reclaimed, cancelled, expired).
    pub stale: u64,
    /// Batches that reached a final status in this flush.
    pub finished_batches: Vec<BatchId>,
}

/// Parameters of `request_rescue_stale`.
#[derive(Debug, Clone)]
pub struct RescueParams {
    /// Daemons whose last heartbeat is older than this are declared dead.
    pub heartbeat_before: Timestamp,
    /// Declare dead every other daemon regardless of heartbeat (used by a process that knows it
    /// is alone on its database, like `fusillade run`).
    pub all_except: Option<DaemonId>,
    /// Rescue time.
    pub now: Timestamp,
}

/// Things that happened in storage that other components wait for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageEvent {
    /// New claimable work exists (a batch was created or requests were retried or rescued).
    WorkAvailable,
    /// A batch was cancelled: in-flight calls for it should be aborted.
    BatchCancelled(BatchId),
    /// A batch reached a final status.
    BatchFinished(BatchId),
}

/// The storage contract. See the module docs.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Applies pending migrations. Safe to run from several processes at once.
    async fn migrate(&self) -> Result<()>;

    /// Stores an uploaded input file from a stream of validated templates, in one transaction:
    /// an `Err` item (a bad line) or a failure rolls everything back.
    async fn file_create(&self, params: FileCreate, upload: UploadStream<'_>) -> Result<File>;
    /// One file, if visible in `scope` and not deleted.
    async fn file_get(&self, scope: &Scope, id: &FileId) -> Result<File>;
    /// Files, paginated by id cursor.
    async fn file_list(&self, params: FileList) -> Result<Page<File>>;
    /// Soft-deletes a file. Batches already created from it keep running.
    async fn file_delete(&self, scope: &Scope, id: &FileId, now: Timestamp) -> Result<()>;
    /// Templates of an input file with line > `after_line`, in line order.
    async fn template_page(
        &self,
        scope: &Scope,
        id: &FileId,
        after_line: u64,
        limit: u32,
    ) -> Result<Vec<NewTemplate>>;
    /// Request count and body bytes per model of an input file.
    async fn file_model_stats(&self, scope: &Scope, id: &FileId) -> Result<Vec<ModelStats>>;

    /// Creates a batch and one pending request per template of the input file.
    async fn batch_create(&self, params: BatchCreate) -> Result<Batch>;
    /// One batch.
    async fn batch_get(&self, scope: &Scope, id: &BatchId) -> Result<Batch>;
    /// Batches, newest first.
    async fn batch_list(&self, params: BatchList) -> Result<Page<Batch>>;
    /// The batch that generated output or error file `id`.
    async fn batch_get_by_output_file(&self, scope: &Scope, id: &FileId) -> Result<Batch>;
    /// Cancels a batch: pending requests become `cancelled` at once; in-flight ones are aborted
    /// by their daemon. A final batch is returned unchanged.
    async fn batch_cancel(&self, scope: &Scope, id: &BatchId, now: Timestamp) -> Result<Batch>;
    /// Expires every unfinished batch whose deadline is at or before `now`: its pending and
    /// running requests become `expired`. Returns the batches expired.
    async fn batch_expire_due(&self, now: Timestamp) -> Result<Vec<BatchId>>;
    /// Puts a batch's failed requests back to pending with a fresh attempt budget.
    async fn batch_retry_failed(&self, scope: &Scope, id: &BatchId, now: Timestamp) -> Result<u64>;
    /// Status of each of these batches (unknown ids are left out).
    async fn batch_statuses(&self, ids: &[BatchId]) -> Result<Vec<(BatchId, BatchStatus)>>;
    /// Models of every batch that still has unfinished requests.
    async fn batch_models_active(&self) -> Result<Vec<String>>;
    /// One page of a batch's requests with their results.
    async fn result_page(&self, scope: &Scope, params: ResultPage) -> Result<Vec<ResultRow>>;

    /// Leases up to `max` runnable requests per model to a daemon, in one transaction.
    async fn request_claim_many(&self, params: ClaimParams) -> Result<Claimed>;
    /// Writes outcomes (fenced on lease) and the batch counter changes in one transaction, and
    /// finishes batches whose last request this was.
    async fn request_finish_many(
        &self,
        finishes: &[Finish],
        now: Timestamp,
    ) -> Result<FinishReport>;
    /// Declares silent daemons dead and returns their leased requests to pending without
    /// charging an attempt. Returns how many requests were rescued.
    async fn request_rescue_stale(&self, params: RescueParams) -> Result<u64>;

    /// Registers a daemon as running.
    async fn daemon_register(&self, record: &DaemonRecord) -> Result<()>;
    /// Records a heartbeat.
    async fn daemon_heartbeat(&self, id: &DaemonId, now: Timestamp, finished: u64) -> Result<()>;
    /// Marks a daemon stopped.
    async fn daemon_stop(&self, id: &DaemonId, now: Timestamp) -> Result<()>;
    /// Every daemon record, newest first.
    async fn daemon_list(&self) -> Result<Vec<DaemonRecord>>;

    /// Subscribes to storage events. Events are hints for waking up: a receiver that lags may
    /// miss some, and every consumer also polls as a fallback.
    fn subscribe(&self) -> broadcast::Receiver<StorageEvent>;
}

/// Opens the backend named by `url`: `sqlite://path`, a bare path, or `postgres://…`, and
/// applies migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Storage>> {
    open_with(url, true).await
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Like [`open`]; `migrate: false` leaves a PostgreSQL schema as it is (for deployments that run
/// `fusillade migrate` separately). SQLite, used by one process, always migrates.
pub async fn open_with(url: &str, migrate: bool) -> Result<Arc<dyn Storage>> {
    if is_postgres(url) {
        let storage = postgres::PostgresStorage::open(url, migrate).await?;
        return Ok(Arc::new(storage));
    }
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    let storage = sqlite::SqliteStorage::open(std::path::Path::new(path)).await?;
    Ok(Arc::new(storage))
}
