//! The API's limits over real HTTP, set small: a request body over its limit, an upload over
//! the size limit (refused while it still streams), more lines than allowed, and more uploads
//! at once than allowed (429 with `Retry-After`, then uploads work again). Uploads are held
//! open through a body the test feeds from a channel, so nothing depends on timing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::served::{Served, read, send};
use common::{ACME, Reply, TestApi, lines, multipart};
use fusillade_server::ApiConfig;
use fusillade_testkit::wait_until;
use futures::channel::mpsc;
use tokio::task::JoinHandle;

type Chunk = Result<Bytes, std::io::Error>;

/// A request whose body the test writes piece by piece; the server has the request (and runs
/// its handler) as soon as the headers arrive.
struct HeldRequest {
    chunks: mpsc::UnboundedSender<Chunk>,
    reply: JoinHandle<reqwest::Result<reqwest::Response>>,
    tail: Vec<u8>,
}

impl HeldRequest {
    /// Starts `request` with a chunked `body` and sends its first `first` bytes.
    fn start(request: reqwest::RequestBuilder, body: &[u8], first: usize) -> Self {
        let (head, tail) = body.split_at(first);
        let (chunks, stream) = mpsc::unbounded::<Chunk>();
        let request = request.body(reqwest::Body::wrap_stream(stream));
        let held = Self {
            chunks,
            reply: tokio::spawn(request.send()),
            tail: tail.to_vec(),
        };
        held.write(head);
        held
    }

    /// An upload of `content` with the file's first `first` bytes sent.
    fn upload(served: &Served, content: &str, first: usize) -> Self {
        let (content_type, body) = multipart(&[("purpose", "batch")], Some(content.as_bytes()));
        let start = find(&body, content.as_bytes());
        let request = served.request("POST", "/v1/files").bearer_auth(ACME);
        Self::start(
            request.header("content-type", content_type),
            &body,
            start + first,
        )
    }

    /// The answer, which must come before the body ends.
    async fn early_reply(self) -> Reply {
        let response = tokio::time::timeout(Duration::from_secs(30), self.reply)
            .await
            .expect("an answer before the body ended");
        read(response.unwrap().unwrap()).await
    }

    fn write(&self, bytes: &[u8]) {
        let chunk = Ok(Bytes::copy_from_slice(bytes));
        self.chunks.unbounded_send(chunk).unwrap();
    }

    /// Sends the rest of the body and reads the answer.
    async fn finish(self) -> Reply {
        self.write(&self.tail);
        drop(self.chunks);
        read(self.reply.await.unwrap().unwrap()).await
    }

    /// Breaks the body off, as a client that disconnects mid-upload.
    async fn abort(self) {
        let broken = std::io::Error::other("client gave up");
        self.chunks.unbounded_send(Err(broken)).unwrap();
        assert!(self.reply.await.unwrap().is_err(), "the upload broke off");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the file inside the multipart body")
}

async fn served(config: ApiConfig) -> (TestApi, Served) {
    let api = TestApi::with_config(config).await;
    let served = Served::start(api.state.clone()).await;
    (api, served)
}

async fn upload(served: &Served, content: &str) -> Reply {
    let (content_type, body) = multipart(&[("purpose", "batch")], Some(content.as_bytes()));
    let request = served.request("POST", "/v1/files").bearer_auth(ACME);
    send(request.header("content-type", content_type).body(body)).await
}

async fn stored_files(served: &Served) -> usize {
    served.get("/v1/files", ACME).await.json()["data"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_over_a_limit_is_refused_naming_the_limit() {
    let config = ApiConfig {
        max_body_bytes: 300,
        ..ApiConfig::default()
    };
    let (_api, served) = served(config).await;
    let mut content = lines(2);
    content.push_str(
        &lines(3)
            .lines()
            .last()
            .unwrap()
            .replace("hi 2", &"z".repeat(400)),
    );
    let reply = upload(&served, &content).await;
    let message = reply.assert_error(400, "invalid_request_error", Some("file"));
    assert!(message.starts_with("Line 3: body is "), "{message}");
    assert!(message.ends_with("the limit is 300 bytes"), "{message}");

    // A JSON request body beyond what any create request needs, held open past the limit (a
    // server that answers early and closes would otherwise race the client's writes).
    let huge = serde_json::json!({"input_file_id": "file-x", "endpoint": "/v1/chat/completions",
        "completion_window": "24h", "metadata": {"k": "v".repeat(3 << 20)}});
    let body = huge.to_string().into_bytes();
    let request = served.request("POST", "/v1/batches").bearer_auth(ACME);
    let request = request.header("content-type", "application/json");
    let reply = HeldRequest::start(request, &body, body.len() - 1)
        .early_reply()
        .await;
    let error = reply.assert_openai_error(413);
    assert_eq!(error["type"], "invalid_request_error", "{error}");
    assert_eq!(reply.headers["connection"], "close");
    assert_eq!(stored_files(&served).await, 0);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_size_limit_is_refused_while_it_streams() {
    let config = ApiConfig {
        max_upload_bytes: 4_096,
        ..ApiConfig::default()
    };
    let (_api, served) = served(config).await;
    let content = lines(100);
    assert!(content.len() > 8_192);
    // Twice the limit is sent; the rest of the body is held back, so the answer can only come
    // from the server counting the bytes as they stream.
    let reply = HeldRequest::upload(&served, &content, 8_192)
        .early_reply()
        .await;
    let message = reply.assert_error(413, "invalid_request_error", Some("file"));
    assert_eq!(
        message,
        "File exceeds the maximum allowed size of 4096 bytes."
    );
    assert_eq!(reply.json()["error"]["code"], "file_too_large");
    // The rest of the body is never read: the client must not reuse the connection.
    assert_eq!(reply.headers["connection"], "close");
    assert_eq!(stored_files(&served).await, 0, "nothing stored");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_lines_than_the_limit_is_400_naming_the_limit() {
    let config = ApiConfig {
        max_requests_per_file: 5,
        ..ApiConfig::default()
    };
    let (_api, served) = served(config).await;
    let reply = upload(&served, &lines(6)).await;
    let message = reply.assert_error(400, "invalid_request_error", Some("file"));
    assert_eq!(
        message,
        "Line 6: the file has more than 5 requests, the limit"
    );
    assert_eq!(stored_files(&served).await, 0, "nothing stored");
    let reply = upload(&served, &lines(5)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_limit_get_429_with_retry_after_then_work_again() {
    let config = ApiConfig {
        max_concurrent_uploads: 2,
        ..ApiConfig::default()
    };
    let (_api, served) = served(config).await;
    let content = lines(3);
    let first_line = content.find('\n').unwrap() + 1;
    // Three uploads held open for two slots: whichever reaches the server last is refused,
    // and only it, since the other two keep their slots until the test lets them go.
    let mut held: Vec<HeldRequest> = (0..3)
        .map(|_| HeldRequest::upload(&served, &content, first_line))
        .collect();
    wait_until(
        Duration::from_secs(30),
        "one upload to be refused",
        || async { held.iter().any(|h| h.reply.is_finished()) },
    )
    .await;
    let refused = held.iter().position(|h| h.reply.is_finished()).unwrap();
    let busy = read(held.remove(refused).reply.await.unwrap().unwrap()).await;
    let error = busy.assert_openai_error(429);
    assert_eq!(error["type"], "rate_limit_error", "{error}");
    assert_eq!(error["code"], "rate_limit_exceeded", "{error}");
    assert_eq!(busy.headers["retry-after"], "1");
    assert_eq!(busy.headers["connection"], "close");
    assert!(
        held.iter().all(|h| !h.reply.is_finished()),
        "the others go on"
    );
    let again = upload(&served, &lines(1)).await;
    assert_eq!(again.status, 429, "still busy: {}", again.text());
    let list = served.get("/v1/files", ACME).await;
    assert_eq!(list.status, 200, "other endpoints still answer");

    let aborted = held.pop().unwrap();
    let done = held.pop().unwrap().finish().await;
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["status"], "processed");
    aborted.abort().await;
    // The aborted upload's slot comes back once the server has seen the body break off.
    wait_until(
        Duration::from_secs(30),
        "an upload to work again",
        || async { upload(&served, &lines(1)).await.status == 200 },
    )
    .await;
    for _ in 0..3 {
        let reply = upload(&served, &lines(2)).await;
        assert_eq!(reply.status, 200, "slots are released: {}", reply.text());
    }
    served.stop().await;
}
