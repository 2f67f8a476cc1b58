//! Staging an upload's templates, shared by the backends: chunks go to the database in the
//! background while the next chunk is read and validated, so parsing and inserting overlap.

use std::collections::VecDeque;
use std::future::Future;

use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::input::InputSummary;
use crate::model::NewTemplate;
use crate::storage::{Result, StorageError, UploadItem, UploadStream};

/// Reads `upload` to its end, handing its templates to `insert` in chunks of at least `chunk`,
/// with up to `parallel` inserts running at once while the next chunk is parsed. Returns the
/// upload's summary once every chunk is stored. On an error (a bad line, a failed insert)
/// the inserts in flight are waited for first, so the caller's clean-up sees every staged row.
pub(crate) async fn stage_upload<F, Fut>(
    upload: &mut UploadStream<'_>,
    chunk: usize,
    parallel: usize,
    insert: F,
) -> Result<InputSummary>
where
    F: Fn(Vec<NewTemplate>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut in_flight: VecDeque<JoinHandle<Result<()>>> = VecDeque::new();
    let mut buffer = Vec::with_capacity(chunk);
    let outcome = loop {
        let summary = match upload.next().await {
            Some(Ok(UploadItem::Templates(mut templates))) => {
                buffer.append(&mut templates);
                if buffer.len() < chunk {
                    continue;
                }
                None
            }
            Some(Ok(UploadItem::Done(summary))) => Some(summary),
            Some(Err(e)) => break Err(e.into()),
            None => {
                break Err(StorageError::Config(
                    "upload stream ended without a summary".into(),
                ));
            }
        };
        if let Err(e) = finish_down_to(&mut in_flight, parallel.max(1) - 1).await {
            break Err(e);
        }
        let full = std::mem::replace(&mut buffer, Vec::with_capacity(chunk));
        in_flight.push_back(tokio::spawn(insert(full)));
        if let Some(summary) = summary {
            break finish_down_to(&mut in_flight, 0).await.map(|()| summary);
        }
    };
    if outcome.is_err() {
        // The error at hand is the one to report; the inserts only have to be over.
        let _ = finish_down_to(&mut in_flight, 0).await;
    }
    outcome
}

/// Waits for the oldest inserts until at most `keep` are still running; every one is waited
/// for even after one fails, and the first failure is returned.
async fn finish_down_to(
    in_flight: &mut VecDeque<JoinHandle<Result<()>>>,
    keep: usize,
) -> Result<()> {
    let mut first_error = None;
    while in_flight.len() > keep {
        let handle = in_flight.pop_front().expect("non-empty");
        if let Err(e) = finish(handle).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Waits for a background insert. A panic in it is passed on as the panic it was; a task
/// cancelled by the runtime shutting down is a database error, since nothing was stored.
async fn finish(handle: JoinHandle<Result<()>>) -> Result<()> {
    match handle.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(StorageError::Database(sqlx::Error::WorkerCrashed)),
    }
}
