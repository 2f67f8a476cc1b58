//! `fusillade serve`: an OpenAI-compatible Files and Batches API over Fusillade's storage, so
//! the official `openai` SDK works against it unmodified, plus a few extras (a results view,
//! retries, file statistics, health, readiness, metrics, an OpenAPI document).
//!
//! # Layout
//!
//! - [`config`]: [`ApiConfig`], the limits with OpenAI's defaults, validated.
//! - [`auth`]: bearer API keys mapped to tenants ([`Tenants`]), the authentication middleware.
//! - [`state`]: [`AppState`], what handlers share.
//! - [`error`]: [`ApiError`], rendered in OpenAI's error shape.
//! - `params`: JSON and query parsing with OpenAI-shaped errors; the list object.
//! - [`files`]: the File object, list, retrieve, delete, statistics.
//! - `upload`: `POST /v1/files`, streamed through the line parser into storage.
//! - `content`: `GET /v1/files/{id}/content`, streamed out a page at a time.
//! - [`batches`]: the Batch object, create, retrieve, list, cancel.
//! - [`results`]: beyond OpenAI, the per-line results view and retries.
//! - `health`: `/healthz`, `/readyz`, `/metrics`.
//! - `middleware`: request metrics and error logging.
//! - [`openapi`]: the OpenAPI document, generated from the handlers.
//! - [`router()`]: every route; [`serve()`]: the router on a listener with graceful shutdown.
#![warn(missing_docs, unreachable_pub)]

pub mod auth;
pub mod batches;
pub mod config;
mod content;
pub mod error;
pub mod files;
mod health;
mod middleware;
pub mod openapi;
mod params;
pub mod results;
mod router;
mod serve;
pub mod state;
mod upload;

pub use auth::{ApiKeyEntry, Tenant, Tenants};
pub use config::ApiConfig;
pub use error::ApiError;
pub use params::ListObject;
pub use router::router;
pub use serve::serve;
pub use state::{AppState, install_prometheus};
