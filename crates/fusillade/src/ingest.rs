//! Uploading an input file: bytes from any async reader, parsed and validated as they arrive,
//! fed to `Storage::file_create` as a stream, so memory stays flat however large the file.

use futures::stream;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::input::{InputError, InputLimits, InputParser};
use crate::model::{File, Timestamp};
use crate::storage::{FileCreate, Storage, StorageError, UploadItem, UploadStream};

/// Bytes read from the source at a time.
const READ_CHUNK: usize = 256 * 1024;

/// Where the upload stream is.
enum State<R> {
    Reading(R, Box<InputParser>, Vec<u8>),
    /// The last templates went out; the summary follows.
    Summary(crate::input::InputSummary),
    Ended,
}

/// Turns `reader` into the stream `file_create` consumes.
pub fn upload_stream<'a, R>(reader: R, limits: InputLimits) -> UploadStream<'a>
where
    R: AsyncRead + Send + Unpin + 'a,
{
    let parser = Box::new(InputParser::new(limits));
    let start = State::Reading(reader, parser, vec![0u8; READ_CHUNK]);
    Box::pin(stream::unfold(start, |state| async move {
        match state {
            State::Ended => None,
            State::Summary(summary) => Some((Ok(UploadItem::Done(summary)), State::Ended)),
            State::Reading(reader, parser, buf) => Some(read_more(reader, parser, buf).await),
        }
    }))
}

type Step<R> = (Result<UploadItem, InputError>, State<R>);

/// Reads until at least one line completes, the input ends, or an error.
async fn read_more<R: AsyncRead + Unpin>(
    mut reader: R,
    mut parser: Box<InputParser>,
    mut buf: Vec<u8>,
) -> Step<R> {
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let message = format!("reading the file failed: {e}");
                return (
                    Err(InputError {
                        line: None,
                        message,
                    }),
                    State::Ended,
                );
            }
        };
        if n == 0 {
            return match parser.finish() {
                Ok((last, summary)) => (Ok(UploadItem::Templates(last)), State::Summary(summary)),
                Err(e) => (Err(e), State::Ended),
            };
        }
        match parser.push(&buf[..n]) {
            Ok(templates) if templates.is_empty() => continue,
            Ok(templates) => {
                return (
                    Ok(UploadItem::Templates(templates)),
                    State::Reading(reader, parser, buf),
                );
            }
            Err(e) => return (Err(e), State::Ended),
        }
    }
}

/// Parses `reader` and stores it as a new input file owned by `owner`.
pub async fn upload<R>(
    storage: &dyn Storage,
    reader: R,
    limits: InputLimits,
    owner: &str,
    filename: &str,
    now: Timestamp,
) -> Result<File, StorageError>
where
    R: AsyncRead + Send + Unpin,
{
    let params = FileCreate {
        owner: owner.to_string(),
        filename: filename.to_string(),
        expires_at: None,
        now,
    };
    storage
        .file_create(params, upload_stream(reader, limits))
        .await
}
