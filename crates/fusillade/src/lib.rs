//! Fusillade runs very large batches of LLM requests against OpenAI-compatible servers:
//! per-model concurrency limits, retries with backoff, deadlines, cancellation and crash
//! recovery, with results as OpenAI Batch API JSONL.
//!
//! # Layout
//!
//! - [`model`]: the domain nouns (files, batches, requests, daemons) and the request state
//!   machine. Imports nothing else of the crate.
//! - [`config`]: the daemon's configuration, with defaults and validation.
//! - [`input`]: streaming parser and validator of JSONL input files.
//! - [`ingest`]: an input file from any async reader into storage, streamed.
//! - [`storage`]: the `Storage` trait, the only place SQL lives, with its SQLite backend.
//! - [`upstream`]: the HTTP client that sends one request to an upstream server.
//! - [`daemon`]: scheduler → executor → completer, plus heartbeats, rescue and expiry.
//! - [`output`]: OpenAI-format output and error lines, streamed from storage.
#![warn(missing_docs, unreachable_pub)]

pub mod config;
pub mod daemon;
pub mod ingest;
pub mod input;
pub mod model;
pub mod output;
pub mod storage;
pub mod upstream;

pub use config::DaemonConfig;
pub use daemon::Daemon;
pub use storage::{Storage, StorageError};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
