//! Files and templates on SQLite: streamed uploads, reads, listing and deletion.

use sqlx::Row;

use super::SqliteStorage;
use super::rows::{FILE_COLUMNS, file_from_row, ms};
use crate::model::{File, FileId, FilePurpose, NewTemplate, Timestamp};
use crate::storage::staging::stage_upload;
use crate::storage::{
    FileCreate, FileList, ModelStats, Page, Result, Scope, StorageError, UploadStream,
};

/// Templates per insert transaction: large enough to amortise the commit, small enough that the
/// single writer is never held for long by a slow upload.
const INSERT_CHUNK: usize = 2_000;

/// Stores an upload. Templates are inserted in short transactions under a file row in state
/// `uploading`, which no read path shows; the file becomes visible in the final transaction.
/// On a bad line the staged rows are deleted, so a failed upload leaves nothing behind.
pub(super) async fn create(
    s: &SqliteStorage,
    params: FileCreate,
    mut upload: UploadStream<'_>,
) -> Result<File> {
    let id = FileId::generate();
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO files (id, owner, filename, purpose, status, created_at, expires_at) \
         VALUES (?1, ?2, ?3, 'batch', 'uploading', ?4, ?5) RETURNING seq",
    )
    .bind(id.as_str())
    .bind(&params.owner)
    .bind(&params.filename)
    .bind(ms(params.now))
    .bind(params.expires_at.map(ms))
    .fetch_one(&s.writer)
    .await?;

    let staged = stage_upload(&mut upload, INSERT_CHUNK, 1, |templates| {
        let s = s.clone();
        async move { insert_templates(&s, seq, &templates).await }
    })
    .await;
    let summary = match staged {
        Ok(summary) => summary,
        Err(e) => {
            discard_upload(s, seq).await?;
            return Err(e);
        }
    };
    sqlx::query(
        "UPDATE files SET status = 'processed', bytes = ?2, line_count = ?3, content_hash = ?4 \
         WHERE seq = ?1",
    )
    .bind(seq)
    .bind(summary.bytes as i64)
    .bind(summary.lines as i64)
    .bind(&summary.content_hash)
    .execute(&s.writer)
    .await?;
    get(s, &Scope::All, &id).await
}

/// Templates per `INSERT` statement: 6 bound values each, well under SQLite's 32,766.
const ROWS_PER_INSERT: usize = 250;

/// Inserts a chunk of templates in one transaction, as multi-row `VALUES` statements with
/// bound parameters. Binding is the cheap way in: passing the chunk as one JSON array meant
/// escaping every body, and SQLite then parsed each row's object once per extracted field
/// (a third of the server's CPU during a large upload).
async fn insert_templates(s: &SqliteStorage, seq: i64, templates: &[NewTemplate]) -> Result<()> {
    if templates.is_empty() {
        return Ok(());
    }
    let mut tx = s.writer.begin().await?;
    for rows in templates.chunks(ROWS_PER_INSERT) {
        let sql = insert_templates_sql(rows.len());
        // Only full-size statements are worth keeping prepared; the tail differs each time.
        let mut query = sqlx::query(&sql).persistent(rows.len() == ROWS_PER_INSERT);
        for t in rows {
            query = query
                .bind(seq)
                .bind(t.line as i64)
                .bind(t.custom_id.as_str())
                .bind(t.url.as_str())
                .bind(t.model.as_str())
                .bind(t.body.as_str());
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `INSERT … VALUES` for `rows` templates. The parameters are anonymous `?`, not `?N`: the
/// driver looks each parameter's name up, which SQLite answers by scanning the list of named
/// parameters, so numbered ones made binding quadratic in the row count.
fn insert_templates_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?, ?)"; rows].join(", ");
    format!("INSERT INTO templates (file_seq, line, custom_id, url, model, body) VALUES {values}")
}

async fn discard_upload(s: &SqliteStorage, seq: i64) -> Result<()> {
    let mut tx = s.writer.begin().await?;
    sqlx::query("DELETE FROM templates WHERE file_seq = ?1")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM files WHERE seq = ?1")
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Removes uploads a previous process was killed in the middle of. Only one process opens an
/// SQLite database for writing, so any `uploading` file found at open is abandoned.
pub(super) async fn sweep_abandoned_uploads(s: &SqliteStorage) -> Result<()> {
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM files WHERE status = 'uploading'")
        .fetch_all(&s.writer)
        .await?;
    for seq in seqs {
        discard_upload(s, seq).await?;
    }
    Ok(())
}

/// Looks up a visible file's seq and owner.
pub(super) async fn visible_seq(
    s: &SqliteStorage,
    scope: &Scope,
    id: &FileId,
) -> Result<(i64, FilePurpose)> {
    let file = get(s, scope, id).await?;
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM files WHERE id = ?1")
        .bind(id.as_str())
        .fetch_one(&s.reader)
        .await?;
    Ok((seq, file.purpose))
}

pub(super) async fn get(s: &SqliteStorage, scope: &Scope, id: &FileId) -> Result<File> {
    let row = sqlx::query(&format!(
        "SELECT {FILE_COLUMNS} FROM files \
         WHERE id = ?1 AND status = 'processed' AND deleted_at IS NULL"
    ))
    .bind(id.as_str())
    .fetch_optional(&s.reader)
    .await?;
    match row {
        Some(row) => {
            let file = file_from_row(&row)?;
            if scope.allows(&file.owner) {
                return Ok(file);
            }
            Err(StorageError::NotFound(format!("file {id}")))
        }
        None => Err(StorageError::NotFound(format!("file {id}"))),
    }
}

pub(super) async fn list(s: &SqliteStorage, params: FileList) -> Result<Page<File>> {
    let (owner, all) = scope_binds(&params.scope);
    let cursor = match &params.after {
        Some(after) => Some(cursor_seq(s, &params.scope, after).await?),
        None => None,
    };
    let (cmp, order) = if params.ascending {
        (">", "ASC")
    } else {
        ("<", "DESC")
    };
    let sql = format!(
        "SELECT {FILE_COLUMNS} FROM files \
         WHERE status = 'processed' AND deleted_at IS NULL AND (?1 OR owner = ?2) \
           AND (?3 IS NULL OR purpose = ?3) AND (?4 IS NULL OR seq {cmp} ?4) \
         ORDER BY seq {order} LIMIT ?5"
    );
    let rows = sqlx::query(&sql)
        .bind(all)
        .bind(owner)
        .bind(params.purpose.map(FilePurpose::as_str))
        .bind(cursor)
        .bind(i64::from(params.limit) + 1)
        .fetch_all(&s.reader)
        .await?;
    let mut items = rows.iter().map(file_from_row).collect::<Result<Vec<_>>>()?;
    let has_more = items.len() > params.limit as usize;
    items.truncate(params.limit as usize);
    Ok(Page { items, has_more })
}

async fn cursor_seq(s: &SqliteStorage, scope: &Scope, after: &FileId) -> Result<i64> {
    let (owner, all) = scope_binds(scope);
    sqlx::query_scalar("SELECT seq FROM files WHERE id = ?1 AND (?2 OR owner = ?3)")
        .bind(after.as_str())
        .bind(all)
        .bind(owner)
        .fetch_optional(&s.reader)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("file {after} (the `after` cursor)")))
}

/// The owner and all-tenants flag to bind for a scope filter `(?all OR owner = ?owner)`.
pub(super) fn scope_binds(scope: &Scope) -> (&str, bool) {
    match scope {
        Scope::All => ("", true),
        Scope::Tenant(t) => (t.as_str(), false),
    }
}

pub(super) async fn delete(
    s: &SqliteStorage,
    scope: &Scope,
    id: &FileId,
    now: Timestamp,
) -> Result<()> {
    get(s, scope, id).await?;
    sqlx::query("UPDATE files SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL")
        .bind(id.as_str())
        .bind(ms(now))
        .execute(&s.writer)
        .await?;
    Ok(())
}

pub(super) async fn template_page(
    s: &SqliteStorage,
    scope: &Scope,
    id: &FileId,
    after_line: u64,
    limit: u32,
) -> Result<Vec<NewTemplate>> {
    let (seq, _) = visible_seq(s, scope, id).await?;
    let rows = sqlx::query(
        "SELECT line, custom_id, url, model, body FROM templates \
         WHERE file_seq = ?1 AND line > ?2 ORDER BY line LIMIT ?3",
    )
    .bind(seq)
    .bind(after_line as i64)
    .bind(i64::from(limit))
    .fetch_all(&s.reader)
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
    s: &SqliteStorage,
    scope: &Scope,
    id: &FileId,
) -> Result<Vec<ModelStats>> {
    let (seq, _) = visible_seq(s, scope, id).await?;
    let rows = sqlx::query(
        "SELECT model, COUNT(*) AS n, SUM(LENGTH(CAST(body AS BLOB))) AS bytes FROM templates \
         WHERE file_seq = ?1 GROUP BY model ORDER BY model",
    )
    .bind(seq)
    .fetch_all(&s.reader)
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
