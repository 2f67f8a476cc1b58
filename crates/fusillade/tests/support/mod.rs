//! Small helpers shared by the integration tests: JSONL lines, uploads, fixed times, storages.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::any::Any;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use fusillade::ingest;
use fusillade::input::InputLimits;
use fusillade::model::{File, Timestamp};
use fusillade::storage::sqlite::SqliteStorage;
use fusillade::{Storage, StorageError};

/// The tenant most tests act as.
pub const ALICE: &str = "alice";
/// Another tenant, who must never see Alice's objects.
pub const BOB: &str = "bob";
/// The endpoint of the lines built here.
pub const CHAT: &str = "/v1/chat/completions";

/// A fixed instant, `secs` seconds after an arbitrary epoch: tests pass time explicitly.
pub fn t(secs: i64) -> Timestamp {
    Utc.timestamp_opt(1_750_000_000 + secs, 0)
        .single()
        .expect("valid time")
}

/// The body a line built by [`line`] carries.
pub fn body(custom_id: &str, model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi {custom_id}"}}]}}"#)
}

/// One JSONL line (without newline) for the chat endpoint.
pub fn line(custom_id: &str, model: &str) -> String {
    line_raw(custom_id, CHAT, &body(custom_id, model))
}

/// One JSONL line with the given url and body (the body is embedded as raw JSON).
pub fn line_raw(custom_id: &str, url: &str, body: &str) -> String {
    format!(r#"{{"custom_id":"{custom_id}","method":"POST","url":"{url}","body":{body}}}"#)
}

/// A file with one line per model, custom ids `req-1`, `req-2`, …
pub fn jsonl(models: &[&str]) -> String {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| line(&format!("req-{}", i + 1), m) + "\n")
        .collect()
}

/// Uploads `content` through the real streaming ingest path with default limits.
pub async fn upload(
    storage: &dyn Storage,
    owner: &str,
    content: &str,
    now: Timestamp,
) -> Result<File, StorageError> {
    let name = format!("{owner}-input.jsonl");
    ingest::upload(
        storage,
        content.as_bytes(),
        InputLimits::default(),
        owner,
        &name,
        now,
    )
    .await
}

/// Uploads `content`, which must be valid.
pub async fn upload_ok(storage: &dyn Storage, owner: &str, content: &str, now: Timestamp) -> File {
    upload(storage, owner, content, now)
        .await
        .expect("upload succeeds")
}

/// A fresh SQLite storage in a temporary directory; the guard keeps the directory alive.
pub async fn sqlite_storage() -> Option<(Arc<dyn Storage>, Box<dyn Any + Send>)> {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let storage = SqliteStorage::open(&dir.path().join("fusillade.db"))
        .await
        .expect("open SQLite storage");
    Some((Arc::new(storage), Box::new(dir)))
}

/// A fresh PostgreSQL storage on a new database, dropped with the guard. `None` (after a loud
/// `SKIPPED (no PostgreSQL)`) when the server is unreachable, unless
/// `FUSILLADE_REQUIRE_POSTGRES=1`, which turns that into a failure.
pub async fn postgres_storage() -> Option<(Arc<dyn Storage>, Box<dyn Any + Send>)> {
    let db = fusillade_testkit::TestDatabase::create().await?;
    let storage = fusillade::storage::postgres::PostgresStorage::open(&db.url, true)
        .await
        .expect("open PostgreSQL storage");
    Some((Arc::new(storage), Box::new(db)))
}
