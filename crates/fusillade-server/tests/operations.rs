//! Health, readiness, metrics, the OpenAPI document, and errors for unknown routes.

mod common;

use common::{ACME, TestApi};
use http::StatusCode;

#[tokio::test]
async fn health_and_readiness_need_no_key() {
    let api = TestApi::new().await;
    let health = api.get("/healthz", "").await;
    assert_eq!(
        (health.status, health.text().as_str()),
        (StatusCode::OK, "ok")
    );
    let ready = api.get("/readyz", "").await;
    assert_eq!(
        (ready.status, ready.text().as_str()),
        (StatusCode::OK, "ready")
    );
}

#[tokio::test]
async fn metrics_render_what_the_recorder_holds() {
    let api = TestApi::new().await;
    assert_eq!(api.get("/metrics", "").await.status, StatusCode::NOT_FOUND);
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let state = api.state.clone().with_metrics(handle);
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("fusillade_probe_total").increment(3)
    });
    let response = tower::ServiceExt::oneshot(
        fusillade_server::router(state),
        http::Request::get("/metrics")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("fusillade_probe_total 3"));
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let api = TestApi::new().await;
    let doc = api.get("/openapi.json", "").await.json();
    let paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for path in [
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/files/{file_id}/stats",
        "/v1/batches",
        "/v1/batches/{batch_id}",
        "/v1/batches/{batch_id}/cancel",
        "/v1/batches/{batch_id}/retry",
        "/v1/batches/{batch_id}/results",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    assert_eq!(paths.len(), 13, "{paths:?}");
    assert!(
        doc["components"]["schemas"]["BatchObject"]["properties"]["request_counts"].is_object()
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let documents_401 = operation["responses"].get("401").is_some();
            assert_eq!(documents_401, path.starts_with("/v1/"), "{method} {path}");
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_openai_shape() {
    let api = TestApi::new().await;
    api.get("/v1/nothing", ACME)
        .await
        .assert_error(404, "invalid_request_error", None);
    api.delete("/v1/batches/batch_x", ACME)
        .await
        .assert_error(405, "invalid_request_error", None);
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_400_in_openai_shape() {
    let api = TestApi::new().await;
    for path in [
        "/v1/files/%FF",
        "/v1/files/%FF/content",
        "/v1/files/file-%C3%28/stats",
        "/v1/batches/%FE",
        "/v1/batches/batch_%80/results",
    ] {
        let reply = api.get(path, ACME).await;
        let error = reply.assert_openai_error(400);
        assert!(
            error["message"].as_str().unwrap().contains("UTF-8"),
            "{path}: {error}"
        );
    }
    let method = common::request("POST", "/v1/batches/%FF/cancel", ACME);
    let reply = api
        .send(method.body(axum::body::Body::empty()).unwrap())
        .await;
    reply.assert_openai_error(400);
    // Escapes that decode to UTF-8 reach the handler as before.
    let reply = api.get("/v1/files/file-%C3%A9", ACME).await;
    reply.assert_error(404, "invalid_request_error", Some("id"));
}
