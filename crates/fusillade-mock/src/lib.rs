//! An OpenAI-compatible fake upstream for Fusillade's tests, demos and benchmarks.
//!
//! It answers `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings`
//! with realistic OpenAI-shaped JSON, can inject latency, 500s, 429s and
//! [`Fault`]s (globally or per request via the `x-mock-fault` header), and counts
//! what it saw ([`Stats`], also served at `GET /stats`, reset with
//! `POST /stats/reset`). `GET /healthz` answers `ok`.
//!
//! Modules:
//! - `config`: [`MockConfig`], [`Fault`] and the fault header syntax.
//! - `server`: [`MockServer`] and [`serve`], i.e. binding and shutdown.
//! - `handlers`: the router and the per-request pipeline.
//! - `request`: cheap parsing of request bodies.
//! - `response`: OpenAI success and error bodies.
//! - `fault`: the misbehaving responses.
//! - `stats`: [`Stats`] and the counters behind it.
//! - `state`: state shared by the handlers and the [`MockServer`] handle.

mod config;
mod fault;
mod handlers;
mod request;
mod response;
mod server;
mod state;
mod stats;

pub use config::{CUSTOM_ID_HEADER, FAULT_HEADER, Fault, MockConfig};
pub use server::{MockServer, serve};
pub use stats::{ModelStats, Stats};
