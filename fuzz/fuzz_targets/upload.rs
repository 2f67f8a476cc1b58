//! The multipart upload, `POST /v1/files`, on arbitrary bodies: the real router over a real
//! SQLite file, driven without a network. Never a panic or a 5xx; every refusal is OpenAI's
//! error shape; a refused upload stores nothing and an accepted one exactly one file (which is
//! then deleted, so the store stays small).

#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use fusillade_server::{ApiConfig, ApiKeyEntry, AppState, Tenants, router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

const KEY: &str = "sk-fuzz-0123456789";
/// The seeds in `scripts/fuzz.sh` use this boundary.
const CONTENT_TYPE: &str = "multipart/form-data; boundary=X";

struct World {
    runtime: tokio::runtime::Runtime,
    state: AppState,
    _dir: tempfile::TempDir,
}

/// One store for the whole run: opening SQLite per input would dominate the time.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // On a RAM disk where there is one: each accepted upload commits, and fsyncs to a real
        // disk would bound the run to a few dozen inputs a second.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let path = dir.path().join("fuzz.db");
        let storage = runtime
            .block_on(fusillade::storage::open(path.to_str().unwrap()))
            .unwrap();
        // Small limits, so the size and line-count refusals are reachable.
        let config = ApiConfig {
            max_upload_bytes: 4_096,
            max_requests_per_file: 8,
            max_body_bytes: 1_024,
            ..ApiConfig::default()
        };
        let keys = [ApiKeyEntry {
            tenant: "fuzz".into(),
            key: KEY.into(),
        }];
        let tenants = Tenants::from_entries(&keys).unwrap();
        let state = AppState::new(storage, config, tenants).unwrap();
        World {
            runtime,
            state,
            _dir: dir,
        }
    })
}

async fn call(state: &AppState, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", CONTENT_TYPE)
        .body(Body::from(body))
        .unwrap();
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
    (status, json)
}

async fn file_count(state: &AppState) -> usize {
    let (_, list) = call(state, "GET", "/v1/files?limit=10000", Vec::new()).await;
    list["data"].as_array().expect("a list").len()
}

fn assert_openai_error(status: StatusCode, body: &Value) {
    let error = body["error"].as_object().expect("an error object");
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["code", "message", "param", "type"],
        "{status}: {body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    assert!(
        error["message"].is_string() && error["type"].is_string(),
        "{body}"
    );
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    world.runtime.block_on(async {
        let state = &world.state;
        let (status, body) = call(state, "POST", "/v1/files", data.to_vec()).await;
        assert!(!status.is_server_error(), "{status}: {body}");
        if status == StatusCode::OK {
            let id = body["id"].as_str().expect("a file id");
            assert_eq!(file_count(state).await, 1, "one file stored");
            let (deleted, _) = call(state, "DELETE", &format!("/v1/files/{id}"), Vec::new()).await;
            assert_eq!(deleted, StatusCode::OK);
        } else {
            assert_openai_error(status, &body);
            assert_eq!(
                file_count(state).await,
                0,
                "a refused upload stores nothing"
            );
        }
    });
});
