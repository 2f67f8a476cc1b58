//! Daemon registrations and heartbeats on SQLite.

use sqlx::Row;

use super::SqliteStorage;
use super::rows::{ms, opt_ts, ts};
use crate::model::{DaemonId, DaemonRecord, Timestamp};
use crate::storage::Result;

pub(super) async fn register(s: &SqliteStorage, d: &DaemonRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO daemons (id, hostname, pid, version, status, started_at, last_heartbeat) \
         VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6)",
    )
    .bind(d.id.as_str())
    .bind(&d.hostname)
    .bind(i64::from(d.pid))
    .bind(&d.version)
    .bind(ms(d.started_at))
    .bind(ms(d.last_heartbeat))
    .execute(&s.writer)
    .await?;
    Ok(())
}

pub(super) async fn heartbeat(
    s: &SqliteStorage,
    id: &DaemonId,
    now: Timestamp,
    finished: u64,
) -> Result<()> {
    sqlx::query(
        // A daemon declared dead while it was only slow comes back to life: its old leases were
        // rescued (its late outcomes are fenced off), and what it claims from now on is its own.
        "UPDATE daemons SET last_heartbeat = ?2, requests_finished = ?3, \
             status = 'running', stopped_at = NULL \
         WHERE id = ?1 AND status <> 'stopped'",
    )
    .bind(id.as_str())
    .bind(ms(now))
    .bind(finished as i64)
    .execute(&s.writer)
    .await?;
    Ok(())
}

pub(super) async fn stop(s: &SqliteStorage, id: &DaemonId, now: Timestamp) -> Result<()> {
    sqlx::query(
        "UPDATE daemons SET status = 'stopped', stopped_at = ?2 \
         WHERE id = ?1 AND status = 'running'",
    )
    .bind(id.as_str())
    .bind(ms(now))
    .execute(&s.writer)
    .await?;
    Ok(())
}

pub(super) async fn list(s: &SqliteStorage) -> Result<Vec<DaemonRecord>> {
    let rows = sqlx::query(
        "SELECT id, hostname, pid, version, status, started_at, last_heartbeat, stopped_at, \
             requests_finished FROM daemons ORDER BY started_at DESC, id",
    )
    .fetch_all(&s.reader)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DaemonRecord {
                id: DaemonId::from_string(r.try_get::<String, _>("id")?),
                hostname: r.try_get("hostname")?,
                pid: r.try_get::<i64, _>("pid")? as u32,
                version: r.try_get("version")?,
                status: r.try_get("status")?,
                started_at: ts(r.try_get("started_at")?),
                last_heartbeat: ts(r.try_get("last_heartbeat")?),
                stopped_at: opt_ts(r.try_get("stopped_at")?),
                requests_finished: r.try_get::<i64, _>("requests_finished")? as u64,
            })
        })
        .collect()
}
