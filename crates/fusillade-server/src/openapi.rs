//! The OpenAPI document, generated from the handlers' annotations and served at
//! `GET /openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{batches, content, files, health, results, upload};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Fusillade",
        description = "OpenAI-compatible Files and Batches API, with extras for results, retries and file statistics."
    ),
    paths(
        upload::upload, files::list, files::get, files::delete, content::content, files::stats,
        batches::create, batches::list, batches::get, batches::cancel,
        results::results, results::retry,
        health::healthz, health::readyz, health::metrics, openapi_json,
    ),
    modifiers(&BearerAuth, &Unauthorized),
    security(("bearer" = [])),
    tags(
        (name = "files", description = "OpenAI Files API (purpose batch)"),
        (name = "batches", description = "OpenAI Batch API"),
        (name = "fusillade", description = "Beyond OpenAI: results view, retries, file statistics"),
        (name = "operations", description = "Health, readiness, metrics; no API key needed"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every `/v1` operation sits behind the key check, so every one can answer 401; the handlers'
/// annotations list only their own answers.
struct Unauthorized;

impl Modify for Unauthorized {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let schema = Ref::from_schema_name("ErrorResponse");
        let response = ResponseBuilder::new()
            .description("No API key, or an unknown one")
            .content("application/json", Content::new(Some(schema)))
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let operations = [&mut item.get, &mut item.post, &mut item.delete];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses.insert("401".into(), response.clone().into());
            }
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
