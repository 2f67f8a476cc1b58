//! Files and templates on PostgreSQL: streamed uploads, reads, listing and deletion.

use sqlx::{PgPool, Row};

use super::PostgresStorage;
use super::rows::{FILE_COLUMNS, file_from_row, ms, scope_binds};
use crate::model::{File, FileId, FilePurpose, NewTemplate, Timestamp};
use crate::storage::staging::stage_upload;
use crate::storage::{
    FileCreate, FileList, ModelStats, Page, Result, Scope, StorageError, UploadStream,
};

/// Templates per insert transaction.
const INSERT_CHUNK: usize = 5_000;
/// Insert transactions of one upload running at once, each on its own connection: a single
/// backend inserting was the bottleneck of a large upload (4 µs a row of database CPU).
const PARALLEL_INSERTS: usize = 2;
/// An upload not touched for this long was abandoned by a dead process and is swept.
const ABANDONED_AFTER_SECS: i64 = 600;

/// Stores an upload under a file row in state `uploading` (invisible to every read), in short
/// transactions; the file becomes visible in the last one. A bad line deletes what was staged.
pub(super) async fn create(
    s: &PostgresStorage,
    params: FileCreate,
    mut upload: UploadStream<'_>,
) -> Result<File> {
    sweep_abandoned(&s.pool, params.now).await?;
    let id = FileId::generate();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO files (id, owner, filename, purpose, status, created_at, touched_at, \
             expires_at) \
         VALUES ($1, $2, $3, 'batch', 'uploading', $4, $4, $5) RETURNING seq",
    )
    .bind(id.as_str())
    .bind(&params.owner)
    .bind(&params.filename)
    .bind(ms(params.now))
    .bind(params.expires_at.map(ms))
    .fetch_one(&s.pool)
    .await?;
    let staged = stage_upload(&mut upload, INSERT_CHUNK, PARALLEL_INSERTS, |templates| {
        let pool = s.pool.clone();
        async move { insert(&pool, seq, &templates).await }
    })
    .await;
    let summary = match staged {
        Ok(summary) => summary,
        Err(e) => {
            discard(&s.pool, seq).await?;
            return Err(e);
        }
    };
    sqlx::query(
        "UPDATE files SET status = 'processed', bytes = $2, line_count = $3, content_hash = $4 \
         WHERE seq = $1",
    )
    .bind(seq)
    .bind(summary.bytes as i64)
    .bind(summary.lines as i64)
    .bind(&summary.content_hash)
    .execute(&s.pool)
    .await?;
    get(&s.pool, &Scope::All, &id).await
}

async fn insert(pool: &PgPool, seq: i64, templates: &[NewTemplate]) -> Result<()> {
    if templates.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO templates (file_seq, line, custom_id, url, model, body) \
         SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])",
    )
    .bind(seq)
    .bind(templates.iter().map(|t| t.line as i64).collect::<Vec<_>>())
    .bind(
        templates
            .iter()
            .map(|t| t.custom_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(templates.iter().map(|t| t.url.as_str()).collect::<Vec<_>>())
    .bind(
        templates
            .iter()
            .map(|t| t.model.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        templates
            .iter()
            .map(|t| t.body.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE files SET touched_at = now() WHERE seq = $1")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn discard(pool: &PgPool, seq: i64) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM templates WHERE file_seq = $1")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM files WHERE seq = $1")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes uploads whose process died mid-way (not touched for ten minutes).
async fn sweep_abandoned(pool: &PgPool, now: Timestamp) -> Result<()> {
    let cutoff = now - chrono::Duration::seconds(ABANDONED_AFTER_SECS);
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM files WHERE status = 'uploading' AND touched_at < $1")
            .bind(cutoff)
            .fetch_all(pool)
            .await?;
    for seq in seqs {
        discard(pool, seq).await?;
    }
    Ok(())
}

pub(super) async fn get(pool: &PgPool, scope: &Scope, id: &FileId) -> Result<File> {
    let row = sqlx::query(&format!(
        "SELECT {FILE_COLUMNS} FROM files \
         WHERE id = $1 AND status = 'processed' AND deleted_at IS NULL"
    ))
    .bind(id.as_str())
    .fetch_optional(pool)
    .await?;
    let file = row.as_ref().map(file_from_row).transpose()?;
    match file {
        Some(f) if scope.allows(&f.owner) => Ok(f),
        _ => Err(StorageError::NotFound(format!("file {id}"))),
    }
}

/// A visible file's seq and purpose.
pub(super) async fn visible_seq(
    pool: &PgPool,
    scope: &Scope,
    id: &FileId,
) -> Result<(i64, FilePurpose)> {
    let file = get(pool, scope, id).await?;
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM files WHERE id = $1")
        .bind(id.as_str())
        .fetch_one(pool)
        .await?;
    Ok((seq, file.purpose))
}

pub(super) async fn list(pool: &PgPool, p: FileList) -> Result<Page<File>> {
    let (owner, all) = scope_binds(&p.scope);
    let cursor: Option<i64> = match &p.after {
        Some(after) => Some(
            sqlx::query_scalar("SELECT seq FROM files WHERE id = $1 AND ($2 OR owner = $3)")
                .bind(after.as_str())
                .bind(all)
                .bind(owner)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| {
                    StorageError::NotFound(format!("file {after} (the `after` cursor)"))
                })?,
        ),
        None => None,
    };
    let (cmp, order) = if p.ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    let rows = sqlx::query(&format!(
        "SELECT {FILE_COLUMNS} FROM files \
         WHERE status = 'processed' AND deleted_at IS NULL AND ($1 OR owner = $2) \
           AND ($3::text IS NULL OR purpose = $3) AND ($4::bigint IS NULL OR seq {cmp} $4) \
         ORDER BY seq {order} LIMIT $5"
    ))
    .bind(all)
    .bind(owner)
    .bind(p.purpose.map(FilePurpose::as_str))
    .bind(cursor)
    .bind(i64::from(p.limit) + 1)
    .fetch_all(pool)
    .await?;
    let mut items = rows.iter().map(file_from_row).collect::<Result<Vec<_>>>()?;
    let has_more = items.len() > p.limit as usize;
    items.truncate(p.limit as usize);
    Ok(Page { items, has_more })
}

pub(super) async fn delete(
    pool: &PgPool,
    scope: &Scope,
    id: &FileId,
    now: Timestamp,
) -> Result<()> {
    get(pool, scope, id).await?;
    sqlx::query("UPDATE files SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
        .bind(id.as_str())
        .bind(ms(now))
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn template_page(
    pool: &PgPool,
    scope: &Scope,
    id: &FileId,
    after_line: u64,
    limit: u32,
) -> Result<Vec<NewTemplate>> {
    let (seq, _) = visible_seq(pool, scope, id).await?;
    let rows = sqlx::query(
        "SELECT line, custom_id, url, model, body FROM templates \
         WHERE file_seq = $1 AND line > $2 ORDER BY line LIMIT $3",
    )
    .bind(seq)
    .bind(after_line as i64)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(NewTemplate {
                line: r.try_get::<i64, _>("line")? as u64,
                custom_id: r.try_get("custom_id")?,
                url: r.try_get("url")?,
                model: r.try_get("model")?,
                body: r.try_get("body")?,
            })
        })
        .collect()
}

pub(super) async fn model_stats(
    pool: &PgPool,
    scope: &Scope,
    id: &FileId,
) -> Result<Vec<ModelStats>> {
    let (seq, _) = visible_seq(pool, scope, id).await?;
    let rows = sqlx::query(
        "SELECT model, COUNT(*) AS n, SUM(octet_length(body))::bigint AS bytes FROM templates \
         WHERE file_seq = $1 GROUP BY model ORDER BY model",
    )
    .bind(seq)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ModelStats {
                model: r.try_get("model")?,
                requests: r.try_get::<i64, _>("n")? as u64,
                body_bytes: r.try_get::<i64, _>("bytes")? as u64,
            })
        })
        .collect()
}
