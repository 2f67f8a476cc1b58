//! Helpers of the handler tests: an API over a fresh SQLite store, request builders (JSON,
//! multipart) with API keys, and response readers.
#![allow(dead_code, unreachable_pub)]

pub mod binary;
pub mod served;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use fusillade::upstream::{Upstream, Upstreams};
use fusillade::{Daemon, DaemonConfig, Storage};
use fusillade_mock::MockServer;
use fusillade_server::{ApiConfig, ApiKeyEntry, AppState, Tenants, router};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Key of tenant `acme`.
pub const ACME: &str = "sk-acme-0123456789";
/// Key of tenant `globex`.
pub const GLOBEX: &str = "sk-globex-0123456789";

/// An API with two tenants over a throwaway SQLite database.
pub struct TestApi {
    pub state: AppState,
    pub storage: Arc<dyn Storage>,
    _dir: tempfile::TempDir,
}

impl TestApi {
    pub async fn new() -> Self {
        Self::with_config(ApiConfig::default()).await
    }

    pub async fn with_config(config: ApiConfig) -> Self {
        let keys = [("acme", ACME), ("globex", GLOBEX)].map(|(tenant, key)| ApiKeyEntry {
            tenant: tenant.into(),
            key: key.into(),
        });
        Self::with(config, Tenants::from_entries(&keys).unwrap()).await
    }

    pub async fn with(config: ApiConfig, tenants: Tenants) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.db");
        let storage = fusillade::storage::open(path.to_str().unwrap())
            .await
            .unwrap();
        let state = AppState::new(storage.clone(), config, tenants).unwrap();
        Self {
            state,
            storage,
            _dir: dir,
        }
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str, key: &str) -> Reply {
        self.send(request("GET", uri, key).body(Body::empty()).unwrap())
            .await
    }

    pub async fn delete(&self, uri: &str, key: &str) -> Reply {
        self.send(request("DELETE", uri, key).body(Body::empty()).unwrap())
            .await
    }

    pub async fn post_json(&self, uri: &str, key: &str, body: Value) -> Reply {
        let request = request("POST", uri, key)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    pub async fn post(&self, uri: &str, key: &str) -> Reply {
        self.send(request("POST", uri, key).body(Body::empty()).unwrap())
            .await
    }

    /// Uploads `content` as `purpose=batch` and returns the File object, asserting 200.
    pub async fn upload_ok(&self, key: &str, content: &str) -> Value {
        let reply = self
            .upload(key, &[("purpose", "batch")], Some(content.as_bytes()))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    /// Uploads a multipart form: the `fields` first, then the file (if any).
    pub async fn upload(&self, key: &str, fields: &[(&str, &str)], file: Option<&[u8]>) -> Reply {
        let (content_type, body) = multipart(fields, file);
        let request = request("POST", "/v1/files", key)
            .header("content-type", content_type)
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    /// Uploads `lines` and creates a batch from them; returns the Batch object.
    pub async fn batch(&self, key: &str, content: &str) -> Value {
        let file = self.upload_ok(key, content).await;
        let reply = self
            .post_json(
                "/v1/batches",
                key,
                serde_json::json!({
                    "input_file_id": file["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                }),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }
}

pub fn request(method: &str, uri: &str, key: &str) -> http::request::Builder {
    let builder = Request::builder().method(method).uri(uri);
    if key.is_empty() {
        builder
    } else {
        builder.header("authorization", format!("Bearer {key}"))
    }
}

const BOUNDARY: &str = "fusillade-test-boundary-7f3a";

/// A multipart body: text `fields` in order, then the `file` part.
pub fn multipart(fields: &[(&str, &str)], file: Option<&[u8]>) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some(file) = file {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

/// An answer, read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts an OpenAI error with this status, type and param; returns the message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, kind: &str, param: Option<&str>) -> String {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let body = self.json();
        let error = &body["error"];
        for key in ["message", "type", "param", "code"] {
            assert!(error.get(key).is_some(), "error.{key} missing in {body}");
        }
        assert_eq!(error["type"], kind, "{body}");
        assert_eq!(error["param"].as_str(), param, "{body}");
        error["message"].as_str().unwrap().to_string()
    }

    /// Asserts this status and exactly OpenAI's error shape: a JSON object with only `error`,
    /// holding only `message` and `type` (strings), `param` and `code` (string or null).
    /// Returns the error object.
    #[track_caller]
    pub fn assert_openai_error(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let content_type = self
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap());
        assert_eq!(content_type, Some("application/json"), "{}", self.text());
        let body = self.json();
        let outer: Vec<&String> = body.as_object().expect("an object").keys().collect();
        assert_eq!(outer, ["error"], "{body}");
        let error = body["error"].as_object().expect("error is an object");
        let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
        assert!(
            error["message"].is_string() && error["type"].is_string(),
            "{body}"
        );
        for key in ["param", "code"] {
            assert!(error[key].is_string() || error[key].is_null(), "{body}");
        }
        body["error"].clone()
    }
}

/// A daemon over `storage` sending to `mock` with one attempt per request, until the token is
/// cancelled.
pub fn start_daemon(
    storage: &Arc<dyn Storage>,
    mock: &MockServer,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = DaemonConfig::default();
    config.retry.max_attempts = 1;
    config.poll_interval = Duration::from_millis(50);
    let upstreams = Upstreams::new(Upstream::new(&mock.base_url()).unwrap());
    let daemon = Daemon::new(storage.clone(), config, upstreams).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { daemon.run(stop).await.unwrap() }
    });
    (stop, task)
}

/// `n` valid chat lines, custom ids `r0`…, models `m0`/`m1` alternating.
pub fn lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"custom_id\":\"r{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
                 \"body\":{{\"model\":\"m{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi {i}\"}}]}}}}\n",
                i % 2
            )
        })
        .collect()
}

/// The ids of a list object's items, in order.
pub fn ids(list: &Value) -> Vec<String> {
    let items = list["data"].as_array().unwrap();
    items
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}
