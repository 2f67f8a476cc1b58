//! The domain nouns of the OpenAI Batch API (files, templates, batches, requests, daemons) and
//! the request state machine. This module imports nothing from storage, the daemon or any API.
//!
//! # Request state machine
//!
//! | from      | to          | who                                  | how                               |
//! |-----------|-------------|--------------------------------------|-----------------------------------|
//! | (none)    | `pending`   | `Storage::batch_create`              | one row per template              |
//! | `pending` | `running`   | scheduler, `request_claim_many`      | lease token issued                |
//! | `running` | `completed` | completer, `request_finish_many`     | fenced on lease                   |
//! | `running` | `failed`    | completer                            | fenced; non-retryable or exhausted|
//! | `running` | `pending`   | completer (retry, release)           | fenced; `not_before` set on retry |
//! | `running` | `pending`   | `request_rescue_stale`               | owner daemon stopped heartbeating |
//! | `running` | `cancelled` | completer (aborted by a cancel)      | fenced                            |
//! | `pending` | `cancelled` | `batch_cancel`                       | whole batch                       |
//! | `pending`, `running` | `expired` | `batch_expire_due`          | deadline passed                   |
//! | `failed`  | `pending`   | `batch_retry_failed`                 | user asked for a retry            |
//!
//! Every transition out of `running` applies only while the row is still `running` under the
//! same lease token ("fenced write"). A worker that lost its lease can never overwrite a newer
//! outcome, and the final states are first-writer-wins.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// A point in time. Every timestamp in Fusillade is UTC; backends store them at millisecond
/// precision.
pub type Timestamp = DateTime<Utc>;

/// Characters used for the random part of public ids (OpenAI's ids are alphanumeric).
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// Length of the random part of public ids: 24 characters of base 62 is ~143 bits.
const ID_RANDOM_LEN: usize = 24;

fn random_suffix() -> String {
    let mut rng = rand::rng();
    (0..ID_RANDOM_LEN)
        .map(|_| ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char)
        .collect()
}

macro_rules! public_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A new random id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, random_suffix()))
            }

            /// Wraps an id read back from storage or received from a client. Ids are opaque:
            /// any string is accepted, and an unknown one is simply not found.
            pub fn from_string(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

public_id!(
    /// Id of a file (`file-…`), uploaded or generated.
    FileId,
    "file-"
);
public_id!(
    /// Id of a batch (`batch_…`).
    BatchId,
    "batch_"
);
public_id!(
    /// Id of a daemon process (`daemon_…`).
    DaemonId,
    "daemon_"
);

/// Internal id of one request row. Public request ids (`batch_req_…`) are derived from the
/// batch id and the line number, see [`public_request_id`].
pub type RequestId = i64;

/// The public id of the request for `line` of `batch`, as written to output files.
pub fn public_request_id(batch: &BatchId, line: u64) -> String {
    PublicRequestId { batch, line }.to_string()
}

/// Displays as [`public_request_id`], for writing the id in place without a `String` first.
#[derive(Debug, Clone, Copy)]
pub struct PublicRequestId<'a> {
    /// The request's batch.
    pub batch: &'a BatchId,
    /// The request's input line.
    pub line: u64,
}

impl fmt::Display for PublicRequestId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = self.batch.as_str().trim_start_matches(BatchId::PREFIX);
        write!(f, "batch_req_{suffix}{:08x}", self.line)
    }
}

/// Parses a completion window such as `24h`, `90m`, `7d` or `3600s`.
pub fn parse_completion_window(text: &str) -> Option<chrono::Duration> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: i64 = number.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => None,
    }
}

/// What a file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilePurpose {
    /// Uploaded requests (one template per line).
    Batch,
    /// Generated: a batch's successful results.
    BatchOutput,
    /// Generated: a batch's failed, expired or errored requests.
    BatchError,
}

impl FilePurpose {
    /// The lowercase name used in storage and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FilePurpose::Batch => "batch",
            FilePurpose::BatchOutput => "batch_output",
            FilePurpose::BatchError => "batch_error",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "batch" => Some(FilePurpose::Batch),
            "batch_output" => Some(FilePurpose::BatchOutput),
            "batch_error" => Some(FilePurpose::BatchError),
            _ => None,
        }
    }
}

/// A stored file: an uploaded input, or a batch's virtual output or error file whose content is
/// produced from the batch's requests when read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct File {
    /// `file-…`
    pub id: FileId,
    /// The tenant that owns the file; other tenants never see it.
    pub owner: String,
    /// The name given at upload (or generated for output files).
    pub filename: String,
    /// What the file is for.
    pub purpose: FilePurpose,
    /// Size in bytes: exact for uploads, the current size for generated files.
    pub bytes: u64,
    /// Number of request lines (uploads only; 0 for generated files).
    pub line_count: u64,
    /// Hex BLAKE3 hash of the uploaded bytes, used to detect a changed input file on resume.
    pub content_hash: Option<String>,
    /// When the file was created.
    pub created_at: Timestamp,
    /// When the file stops being readable, if it expires.
    pub expires_at: Option<Timestamp>,
    /// The batch that produced it (generated files only).
    pub batch_id: Option<BatchId>,
}

/// One validated line of an input file, ready to store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTemplate {
    /// 1-based physical line number in the uploaded file.
    pub line: u64,
    /// The caller's id for the request, unique within the file.
    pub custom_id: String,
    /// The endpoint path, e.g. `/v1/chat/completions`.
    pub url: String,
    /// `body.model`, used for routing and per-model limits.
    pub model: String,
    /// The request body exactly as uploaded (JSON text).
    pub body: String,
}

/// A batch's status, exactly as the OpenAI Batch API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// The input is being checked (Fusillade validates at upload, so this is brief).
    Validating,
    /// Validation failed; see `errors`.
    Failed,
    /// Requests are being sent.
    InProgress,
    /// Every request reached a final state; output files are being prepared.
    Finalizing,
    /// Done; output and error files are complete.
    Completed,
    /// The completion window ended first; unfinished requests were expired.
    Expired,
    /// A cancel was asked for; in-flight requests are being stopped.
    Cancelling,
    /// Cancelled; finished results are kept.
    Cancelled,
}

impl BatchStatus {
    /// The snake_case name used in storage and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::Failed => "failed",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "validating" => BatchStatus::Validating,
            "failed" => BatchStatus::Failed,
            "in_progress" => BatchStatus::InProgress,
            "finalizing" => BatchStatus::Finalizing,
            "completed" => BatchStatus::Completed,
            "expired" => BatchStatus::Expired,
            "cancelling" => BatchStatus::Cancelling,
            "cancelled" => BatchStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the batch will never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchStatus::Failed
                | BatchStatus::Completed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

/// Per-state request counts of a batch, maintained in the same transactions as the state
/// changes, so reading them never scans the requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Every request of the batch.
    pub total: u64,
    /// Waiting to be sent (including scheduled retries).
    pub pending: u64,
    /// Leased by a daemon, HTTP call in flight.
    pub running: u64,
    /// Finished with a 2xx response.
    pub completed: u64,
    /// Finished without success.
    pub failed: u64,
    /// Cancelled before finishing.
    pub cancelled: u64,
    /// Not finished before the completion window ended.
    pub expired: u64,
}

impl RequestCounts {
    /// Requests that reached a final state.
    pub fn finished(&self) -> u64 {
        self.completed + self.failed + self.cancelled + self.expired
    }
}

/// One validation error of a batch, as in OpenAI's `errors.data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchError {
    /// A machine-readable code.
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// The parameter at fault, if any.
    pub param: Option<String>,
    /// The 1-based input line at fault, if any.
    pub line: Option<u64>,
}

/// A batch: one execution of every template of an input file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// `batch_…`
    pub id: BatchId,
    /// The tenant that owns the batch.
    pub owner: String,
    /// The uploaded input file.
    pub input_file_id: FileId,
    /// The endpoint every line targets, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// The window as given, e.g. `24h`; `None` for a batch with no deadline.
    pub completion_window: Option<String>,
    /// User metadata (at most 16 string pairs).
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Lifecycle status.
    pub status: BatchStatus,
    /// The generated output file.
    pub output_file_id: FileId,
    /// The generated error file.
    pub error_file_id: FileId,
    /// Validation errors, when the batch failed validation.
    pub errors: Vec<BatchError>,
    /// Request counts by state.
    pub counts: RequestCounts,
    /// Lifecycle timestamps.
    pub created_at: Timestamp,
    /// When sending started.
    pub in_progress_at: Option<Timestamp>,
    /// The deadline, if any.
    pub expires_at: Option<Timestamp>,
    /// When every request had finished.
    pub finalizing_at: Option<Timestamp>,
    /// When the batch completed.
    pub completed_at: Option<Timestamp>,
    /// When validation failed.
    pub failed_at: Option<Timestamp>,
    /// When the window ended with work unfinished.
    pub expired_at: Option<Timestamp>,
    /// When a cancel was asked for.
    pub cancelling_at: Option<Timestamp>,
    /// When the cancel finished.
    pub cancelled_at: Option<Timestamp>,
}

/// A request's state. The same lowercase strings are enforced by a `CHECK` in every schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting: created by `batch_create`, or put back by a retry, release or rescue.
    /// Left by a claim, a batch cancel or an expiry.
    Pending,
    /// Leased by a daemon, which sends it. Left only through fenced writes.
    Running,
    /// Final: a 2xx response is stored.
    Completed,
    /// Final: a non-retryable error, or retries exhausted; the last error is stored.
    Failed,
    /// Final: its batch was cancelled before it finished.
    Cancelled,
    /// Final: its batch's completion window ended before it finished.
    Expired,
}

impl RequestState {
    /// The lowercase name used in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Running => "running",
            RequestState::Completed => "completed",
            RequestState::Failed => "failed",
            RequestState::Cancelled => "cancelled",
            RequestState::Expired => "expired",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RequestState::Pending,
            "running" => RequestState::Running,
            "completed" => RequestState::Completed,
            "failed" => RequestState::Failed,
            "cancelled" => RequestState::Cancelled,
            "expired" => RequestState::Expired,
            _ => return None,
        })
    }

    /// Whether the request will never change again (short of a user-asked retry).
    pub fn is_final(self) -> bool {
        !matches!(self, RequestState::Pending | RequestState::Running)
    }
}

/// Why an attempt did not succeed, kept with the request and written to the error file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestError {
    /// A machine-readable code: `upstream_status`, `timeout`, `connect_error`,
    /// `response_too_large`, `batch_expired`, …
    pub code: String,
    /// A human-readable reason. Never contains secrets or request bodies.
    pub message: String,
    /// The upstream HTTP status, when the upstream answered.
    pub status_code: Option<u16>,
    /// The upstream response body, when the upstream answered.
    pub body: Option<String>,
}

/// A request leased to a daemon, with everything needed to send it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedRequest {
    /// Internal row id.
    pub id: RequestId,
    /// The lease token every write about this attempt must present.
    pub lease: i64,
    /// The batch it belongs to.
    pub batch_id: BatchId,
    /// 1-based input line.
    pub line: u64,
    /// The caller's id.
    pub custom_id: String,
    /// Endpoint path.
    pub url: String,
    /// `body.model`.
    pub model: String,
    /// Request body, unchanged.
    pub body: String,
    /// Attempts already made (0 on the first try).
    pub attempts: u32,
    /// The batch deadline, if any.
    pub deadline: Option<Timestamp>,
}

impl ClaimedRequest {
    /// The public id (`batch_req_…`).
    pub fn public_id(&self) -> String {
        public_request_id(&self.batch_id, self.line)
    }
}

/// The result of one attempt, reported by the executor and written by the completer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx: the request is `completed` with this response.
    Completed {
        /// Upstream HTTP status.
        status_code: u16,
        /// Upstream body as returned.
        body: String,
        /// Upstream `x-request-id`, if sent.
        upstream_request_id: Option<String>,
    },
    /// Final failure: the request is `failed`.
    Failed(RequestError),
    /// Retryable failure: back to `pending`, not sent again before `not_before`.
    Retry {
        /// Earliest time of the next attempt.
        not_before: Timestamp,
        /// What went wrong this time (kept as the last error).
        error: RequestError,
    },
    /// Never sent (shutdown before dispatch, or drain deadline hit): back to `pending` without
    /// charging an attempt.
    Released,
    /// Aborted because its batch was cancelled: the request is `cancelled`.
    Cancelled,
}

impl Outcome {
    /// The state the request moves to.
    pub fn next_state(&self) -> RequestState {
        match self {
            Outcome::Completed { .. } => RequestState::Completed,
            Outcome::Failed(_) => RequestState::Failed,
            Outcome::Retry { .. } | Outcome::Released => RequestState::Pending,
            Outcome::Cancelled => RequestState::Cancelled,
        }
    }

    /// Whether this outcome counts as an attempt.
    pub fn charges_attempt(&self) -> bool {
        !matches!(self, Outcome::Released | Outcome::Cancelled)
    }
}

/// An outcome addressed to the attempt it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// Internal row id.
    pub id: RequestId,
    /// The lease the attempt ran under; the write applies only if it still matches.
    pub lease: i64,
    /// What happened.
    pub outcome: Outcome,
}

/// A daemon's registration record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonRecord {
    /// `daemon_…`
    pub id: DaemonId,
    /// Host name.
    pub hostname: String,
    /// OS process id.
    pub pid: u32,
    /// Fusillade version.
    pub version: String,
    /// When it started.
    pub started_at: Timestamp,
    /// Last heartbeat.
    pub last_heartbeat: Timestamp,
    /// When it stopped (or was declared dead).
    pub stopped_at: Option<Timestamp>,
    /// `running`, `stopped` or `dead`.
    pub status: String,
    /// Requests finished by this daemon so far.
    pub requests_finished: u64,
}
