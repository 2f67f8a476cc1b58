//! Owns the fault responses selected by [`crate::Fault`]: hanging, aborted
//! connections, endless and huge bodies, garbage and pretty-printed JSON and arbitrary
//! statuses.

use std::{io, iter};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use futures::stream;

use crate::config::Fault;
use crate::request::ParsedRequest;
use crate::response::{self, ResponseIds};
use crate::state::ShutdownSignal;
use crate::stats::Outcome;

/// Streaming bodies are cut into chunks of this size so neither huge nor
/// endless bodies ever sit in memory at once.
const CHUNK: usize = 64 * 1024;
static PADDING: [u8; CHUNK] = [b'x'; CHUNK];

/// What a fault needs to know about the request it replaces.
pub(crate) struct FaultContext<'a> {
    pub request: &'a ParsedRequest,
    pub ids: ResponseIds,
    pub retry_after: HeaderValue,
    pub shutdown: &'a ShutdownSignal,
}

/// Produces the faulty response and which counter (if any) it should bump.
pub(crate) async fn respond(fault: Fault, ctx: FaultContext<'_>) -> (Response, Option<Outcome>) {
    match fault {
        Fault::Hang => {
            // Ending on shutdown keeps graceful shutdown from waiting forever;
            // the client then sees the connection drop, as with `Reset`.
            ctx.shutdown.clone().wait().await;
            (aborted_response(), None)
        }
        Fault::Reset => (aborted_response(), None),
        Fault::EndlessBody => (endless_response(ctx.shutdown.clone()), None),
        Fault::HugeBody(bytes) => (huge_response(&ctx, bytes), Some(Outcome::Ok)),
        Fault::InvalidJson => {
            let body = Bytes::from_static(b"not json{");
            (response::json_response(StatusCode::OK, body), None)
        }
        Fault::PrettyJson => {
            let compact = response::success_body(ctx.request, ctx.ids);
            let value: serde_json::Value =
                serde_json::from_slice(&compact).expect("the success body is JSON");
            let pretty = serde_json::to_vec_pretty(&value).expect("a value serializes");
            (
                response::json_response(StatusCode::OK, Bytes::from(pretty)),
                Some(Outcome::Ok),
            )
        }
        Fault::Status(code) => status_response(code, ctx.retry_after),
        Fault::SlowFirstByte(delay) => {
            tokio::time::sleep(delay).await;
            let body = response::success_body(ctx.request, ctx.ids);
            (
                response::json_response(StatusCode::OK, body),
                Some(Outcome::Ok),
            )
        }
    }
}

/// A body that fails before yielding anything. Hyper only flushes the
/// response head together with body data, so the error makes it drop the
/// connection without sending a single byte: the client's `send()` fails with
/// a "connection closed before message completed" style error.
fn aborted_response() -> Response {
    let failing = stream::once(async {
        Err::<Bytes, _>(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "fusillade-mock: reset fault",
        ))
    });
    Response::new(Body::from_stream(failing))
}

fn endless_response(shutdown: ShutdownSignal) -> Response {
    let prefix = Bytes::from_static(
        br#"{"id":"chatcmpl-endless","object":"chat.completion","mock_padding":""#,
    );
    let chunks = iter::once(prefix).chain(iter::repeat(Bytes::from_static(&PADDING)));
    // Erroring (rather than ending) on shutdown aborts the connection, so the
    // client never mistakes the truncated body for a complete one.
    let body = stream::iter(chunks).map(move |chunk| {
        if shutdown.is_triggered() {
            Err(io::Error::other("fusillade-mock: shutting down"))
        } else {
            Ok(chunk)
        }
    });
    response::json_response(StatusCode::OK, Body::from_stream(body))
}

/// The endpoint's normal success object with an extra `mock_padding` string
/// field, so the body stays valid for the endpoint while being about `target`
/// bytes long.
fn huge_response(ctx: &FaultContext<'_>, target: usize) -> Response {
    let mut prefix = response::success_body(ctx.request, ctx.ids);
    prefix.pop(); // the object's closing brace; re-added after the padding
    prefix.extend_from_slice(br#","mock_padding":""#);
    let suffix = Bytes::from_static(b"\"}");
    let padding = target.saturating_sub(prefix.len() + suffix.len());
    let total = prefix.len() + padding + suffix.len();

    let full_chunks = iter::repeat_n(Bytes::from_static(&PADDING), padding / CHUNK);
    let last_chunk = Bytes::from_static(&PADDING[..padding % CHUNK]);
    let chunks = iter::once(Bytes::from(prefix))
        .chain(full_chunks)
        .chain(iter::once(last_chunk))
        .chain(iter::once(suffix))
        .map(Ok::<_, io::Error>);
    let mut response =
        response::json_response(StatusCode::OK, Body::from_stream(stream::iter(chunks)));
    // Hyper honours an explicit length for a streamed body, which lets clients
    // reject oversized bodies before reading them.
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    response
}

fn status_response(code: u16, retry_after: HeaderValue) -> (Response, Option<Outcome>) {
    // The header parser rejects codes outside 2xx-5xx, but a `MockConfig` built
    // in code can still hold one; those degrade to a plain 500.
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status == StatusCode::TOO_MANY_REQUESTS {
        return (
            response::rate_limit_response(retry_after),
            Some(Outcome::RateLimited),
        );
    }
    let message = format!("status {code} injected by fusillade-mock");
    (
        response::error_response(status, &message),
        Some(Outcome::Error),
    )
}
