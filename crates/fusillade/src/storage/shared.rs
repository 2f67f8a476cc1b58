//! Backend-independent pieces of the storage contract: how outcomes map to row values, and how
//! state changes add up to batch counter changes. Each backend only writes the SQL.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Serialize;

use super::body::stored_body;
use crate::model::{BatchId, Finish, Outcome, RequestState};
use crate::storage::{ResultFilter, ResultRow, StorageError};

/// Error code of a request aborted because its batch was cancelled.
pub(crate) const CANCELLED_CODE: &str = "batch_cancelled";
/// Message of a request aborted because its batch was cancelled.
pub(crate) const CANCELLED_MESSAGE: &str = "The batch was cancelled before this request finished.";
/// Error code of a request whose batch's completion window ended first.
pub(crate) const EXPIRED_CODE: &str = "batch_expired";
/// The message every expired request carries, as OpenAI words it.
pub(crate) const EXPIRED_MESSAGE: &str =
    "This request could not be executed before the completion window expired.";

/// The column values one outcome writes. `set` is false when the outcome keeps the stored
/// result fields (a released request keeps its last error).
#[derive(Debug, Serialize)]
pub(crate) struct FinishRow<'a> {
    pub(crate) id: i64,
    pub(crate) lease: i64,
    pub(crate) state: &'static str,
    /// Milliseconds since the epoch.
    pub(crate) not_before: Option<i64>,
    pub(crate) charge: i32,
    pub(crate) set: bool,
    pub(crate) status_code: Option<i32>,
    /// In its stored form (see `storage::body`).
    pub(crate) response: Option<Cow<'a, str>>,
    pub(crate) upstream_request_id: Option<&'a str>,
    pub(crate) error_code: Option<&'a str>,
    pub(crate) error_message: Option<&'a str>,
}

impl<'a> FinishRow<'a> {
    pub(crate) fn new(f: &'a Finish) -> Self {
        let mut row = FinishRow {
            id: f.id,
            lease: f.lease,
            state: f.outcome.next_state().as_str(),
            not_before: None,
            charge: i32::from(f.outcome.charges_attempt()),
            set: true,
            status_code: None,
            response: None,
            upstream_request_id: None,
            error_code: None,
            error_message: None,
        };
        match &f.outcome {
            Outcome::Completed {
                status_code,
                body,
                upstream_request_id,
            } => {
                row.status_code = Some(i32::from(*status_code));
                row.response = Some(stored_body(body));
                row.upstream_request_id = upstream_request_id.as_deref();
            }
            Outcome::Failed(e) | Outcome::Retry { error: e, .. } => {
                row.status_code = e.status_code.map(i32::from);
                row.response = e.body.as_deref().map(stored_body);
                row.error_code = Some(&e.code);
                row.error_message = Some(&e.message);
                if let Outcome::Retry { not_before, .. } = &f.outcome {
                    row.not_before = Some(not_before.timestamp_millis());
                }
            }
            Outcome::Released => row.set = false,
            Outcome::Cancelled => {
                row.error_code = Some(CANCELLED_CODE);
                row.error_message = Some(CANCELLED_MESSAGE);
            }
        }
        row
    }
}

/// Changes to one batch's counters.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct CounterDelta {
    pub(crate) seq: i64,
    pub(crate) pending: i64,
    pub(crate) running: i64,
    pub(crate) completed: i64,
    pub(crate) failed: i64,
    pub(crate) cancelled: i64,
    pub(crate) expired: i64,
}

impl CounterDelta {
    fn slot(&mut self, state: RequestState) -> &mut i64 {
        match state {
            RequestState::Pending => &mut self.pending,
            RequestState::Running => &mut self.running,
            RequestState::Completed => &mut self.completed,
            RequestState::Failed => &mut self.failed,
            RequestState::Cancelled => &mut self.cancelled,
            RequestState::Expired => &mut self.expired,
        }
    }
}

/// Counter changes of many batches, in batch order (so that row locks are always taken in the
/// same order, which keeps concurrent transactions from deadlocking).
#[derive(Debug, Default)]
pub(crate) struct CounterDeltas(BTreeMap<i64, CounterDelta>);

impl CounterDeltas {
    /// Records `n` requests of batch `seq` moving from `from` to `to`.
    pub(crate) fn moved(&mut self, seq: i64, from: RequestState, to: RequestState, n: i64) {
        let delta = self.0.entry(seq).or_insert_with(|| CounterDelta {
            seq,
            ..CounterDelta::default()
        });
        *delta.slot(from) -= n;
        *delta.slot(to) += n;
    }

    /// The batches touched, ascending.
    pub(crate) fn seqs(&self) -> Vec<i64> {
        self.0.keys().copied().collect()
    }

    /// The deltas, ascending by batch.
    pub(crate) fn deltas(&self) -> impl Iterator<Item = &CounterDelta> {
        self.0.values()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The condition on `r.state` (the requests table aliased `r`) selecting a result page's rows;
/// the same SQL on every backend. States are our own constants, never user text.
pub(crate) fn result_filter_sql(filter: ResultFilter) -> String {
    match filter {
        ResultFilter::Output => "r.state = 'completed'".into(),
        ResultFilter::Errors => "r.state IN ('failed', 'expired', 'cancelled')".into(),
        ResultFilter::State(st) => format!("r.state = '{}'", st.as_str()),
        ResultFilter::All => "TRUE".into(),
    }
}

/// A result page travels from the database as one text value instead of one row per request:
/// both drivers pay far more per row (and per column) than per byte, so packing a page is what
/// makes downloads fast. Each row is a header `line,attempts,status,len,…,len:` (status `-1`
/// for none; one byte length per text column of [`PACKED_TEXT_COLUMNS`], `-1` for NULL)
/// followed by those texts back to back: one `concat` per row, so each value is copied once.
///
/// The text columns of a packed result row, over a subquery aliased `p`.
const PACKED_TEXT_COLUMNS: [&str; 7] = [
    "p.custom_id",
    "p.state",
    "p.response",
    "p.upstream_request_id",
    "p.error_code",
    "p.error_message",
    "p.input_body",
];

/// The SQL aggregate (same on SQLite ≥ 3.44 and PostgreSQL) packing the rows of subquery `p`
/// (columns `line`, `attempts`, `status_code` and [`PACKED_TEXT_COLUMNS`]) into one text
/// value; NULL when `p` is empty. Rows come in any order ([`unpack_result_page`] sorts them),
/// because ordering inside the aggregate made SQLite sort every packed row.
fn packed_result_page_sql() -> String {
    let lengths = PACKED_TEXT_COLUMNS.map(|c| format!("coalesce(octet_length({c}), -1)"));
    format!(
        "string_agg(concat(p.line, ',', p.attempts, ',', coalesce(p.status_code, -1), ',', \
         {}, ':', {}), '')",
        lengths.join(", ',', "),
        PACKED_TEXT_COLUMNS.join(", ")
    )
}

/// The result-page statement, the same on both backends but for the parameter marker (`?` on
/// SQLite, `$` on PostgreSQL). Parameters: 1 batch id, 2 all tenants, 3 owner, 4 after line,
/// 5 limit, 6 with input. One row: the batch's `seq` (NULL when it is not visible) and the
/// packed page. The keyset walk along `requests_by_batch` stops after `limit` rows.
pub(crate) fn result_page_sql(filter: ResultFilter, marker: char) -> String {
    let m = marker;
    format!(
        "WITH batch AS (SELECT seq FROM batches WHERE id = {m}1 AND ({m}2 OR owner = {m}3)) \
         SELECT (SELECT seq FROM batch) AS seq, (SELECT {} FROM ( \
             SELECT r.line, t.custom_id, r.state, r.attempts, r.status_code, r.response, \
                 r.upstream_request_id, r.error_code, r.error_message, \
                 CASE WHEN {m}6 THEN t.body END AS input_body \
             FROM requests r JOIN templates t ON t.id = r.template_id \
             WHERE r.batch_seq = (SELECT seq FROM batch) AND r.line > {m}4 AND {} \
             ORDER BY r.line LIMIT {m}5) p) AS page",
        packed_result_page_sql(),
        result_filter_sql(filter)
    )
}

/// The rows of what [`result_page_sql`] returned for `batch`.
pub(crate) fn result_page_rows(
    batch: &BatchId,
    seq: Option<i64>,
    page: Option<String>,
) -> Result<Vec<ResultRow>, StorageError> {
    if seq.is_none() {
        return Err(StorageError::NotFound(format!("batch {batch}")));
    }
    page.map_or(Ok(Vec::new()), |page| unpack_result_page(&page))
}

/// Unpacks a page packed by [`packed_result_page_sql`], in line order.
fn unpack_result_page(packed: &str) -> Result<Vec<ResultRow>, StorageError> {
    let mut rest = packed;
    let mut rows = Vec::new();
    while !rest.is_empty() {
        let (row, after) = unpack_result_row(rest).ok_or_else(malformed)?;
        rows.push(row);
        rest = after;
    }
    // Usually in order already, which a stable sort only checks.
    rows.sort_by_key(|row| row.line);
    Ok(rows)
}

/// One packed row and what follows it, or `None` when malformed.
fn unpack_result_row(packed: &str) -> Option<(ResultRow, &str)> {
    let (header, mut rest) = packed.split_once(':')?;
    let mut numbers = header.split(',').map(|n| n.parse::<i64>().ok());
    let mut number = || numbers.next().flatten();
    let (line, attempts, status) = (number()?, number()?, number()?);
    let mut texts = [None; PACKED_TEXT_COLUMNS.len()];
    for text in &mut texts {
        let len = number()?;
        if len >= 0 {
            let (value, after) = rest.split_at_checked(usize::try_from(len).ok()?)?;
            *text = Some(value);
            rest = after;
        }
    }
    let [
        custom_id,
        state,
        response,
        upstream_id,
        error_code,
        error_message,
        input,
    ] = texts;
    let owned = |text: Option<&str>| text.map(str::to_owned);
    let row = ResultRow {
        line: u64::try_from(line).ok()?,
        custom_id: custom_id?.to_owned(),
        state: RequestState::parse(state?)?,
        attempts: u32::try_from(attempts).ok()?,
        status_code: u16::try_from(status).ok(),
        response_body: owned(response),
        upstream_request_id: owned(upstream_id),
        error_code: owned(error_code),
        error_message: owned(error_message),
        input_body: owned(input),
    };
    Some((row, rest))
}

fn malformed() -> StorageError {
    StorageError::Database(sqlx::Error::Protocol("malformed packed result page".into()))
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, SqliteConnection};

    use super::*;

    /// Packs rows with SQLite's SQL and unpacks them: texts that look like the format itself,
    /// multi-byte characters, empty strings and NULLs come back as they went in, in line order.
    #[tokio::test]
    async fn packed_page_round_trips_awkward_values() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let rows = "SELECT 7 AS line, 'c:7,~' AS custom_id, 'failed' AS state, 3 AS attempts, \
                NULL AS status_code, '' AS response, NULL AS upstream_request_id, \
                '~' AS error_code, 'héllo 💥 1:2' AS error_message, NULL AS input_body \
            UNION ALL SELECT 2, 'c2', 'completed', 1, 200, '{\"a\":\"b:c\"}', 'up-1', NULL, NULL, \
                '{\"x\":1}'";
        let sql = format!("SELECT {} FROM ({rows}) p", packed_result_page_sql());
        let packed: String = sqlx::query_scalar(&sql).fetch_one(&mut conn).await.unwrap();
        let page = unpack_result_page(&packed).unwrap();
        assert_eq!(page.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 7]);
        let (ok, failed) = (&page[0], &page[1]);
        assert_eq!(ok.state, RequestState::Completed);
        assert_eq!(ok.status_code, Some(200));
        assert_eq!(ok.response_body.as_deref(), Some(r#"{"a":"b:c"}"#));
        assert_eq!(ok.upstream_request_id.as_deref(), Some("up-1"));
        assert_eq!(ok.input_body.as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(failed.custom_id, "c:7,~");
        assert_eq!((failed.attempts, failed.status_code), (3, None));
        assert_eq!(failed.response_body.as_deref(), Some(""));
        assert_eq!(failed.upstream_request_id, None);
        assert_eq!(failed.error_code.as_deref(), Some("~"));
        assert_eq!(failed.error_message.as_deref(), Some("héllo 💥 1:2"));
        assert_eq!(failed.input_body, None);
    }

    #[test]
    fn truncated_or_garbled_pages_are_errors() {
        assert_eq!(unpack_result_page("").unwrap(), Vec::new());
        let header = "1,1,200,2,9,-1,-1,-1,-1,-1:";
        for bad in [
            "1,1,200,5",
            "x:",
            "1,1,200,2,9:c1completed",
            &format!("{header}c1complete"),
        ] {
            assert!(unpack_result_page(bad).is_err(), "{bad}");
        }
        assert_eq!(
            unpack_result_page(&format!("{header}c1completed"))
                .unwrap()
                .len(),
            1
        );
    }
}
