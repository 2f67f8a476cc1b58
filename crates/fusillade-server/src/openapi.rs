//! The OpenAPI document, generated from the handlers' annotations and served at
//! `GET /openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    modifiers(&BearerAuth),
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
