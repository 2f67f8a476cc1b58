//! The API over a real loopback socket: `fusillade_server::serve` on port 0 and a client whose
//! answers are read into the same [`Reply`] as the in-process ones.

use fusillade_server::AppState;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Reply, multipart};

/// A served API; [`Served::stop`] shuts it down gracefully.
pub struct Served {
    pub base: String,
    pub client: reqwest::Client,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub async fn start(state: AppState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(fusillade_server::serve(
            listener,
            state,
            stop.clone().cancelled_owned(),
        ));
        Self {
            base,
            client: reqwest::Client::new(),
            stop,
            task,
        }
    }

    /// A request to `path` (which starts with `/`), without any key.
    pub fn request(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        self.client.request(method, format!("{}{path}", self.base))
    }

    pub async fn get(&self, path: &str, key: &str) -> Reply {
        send(self.request("GET", path).bearer_auth(key)).await
    }

    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> Reply {
        send(self.request("POST", path).bearer_auth(key).json(body)).await
    }

    /// Uploads `content` as `purpose=batch` and returns the File object, asserting 200.
    pub async fn upload_ok(&self, key: &str, content: &str) -> Value {
        let (content_type, body) = multipart(&[("purpose", "batch")], Some(content.as_bytes()));
        let request = self.request("POST", "/v1/files").bearer_auth(key);
        let reply = send(request.header("content-type", content_type).body(body)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    /// Creates a chat batch over the file `input_file_id` with `metadata`, asserting 200.
    pub async fn batch_ok(&self, key: &str, input_file_id: &str, metadata: Value) -> Value {
        let body = json!({
            "input_file_id": input_file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": metadata,
        });
        let reply = self.post_json("/v1/batches", key, &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Sends `request` and reads the whole answer.
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request.send().await.unwrap();
    read(response).await
}

/// Reads a whole answer.
pub async fn read(response: reqwest::Response) -> Reply {
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap().to_vec();
    Reply {
        status,
        headers,
        body,
    }
}
