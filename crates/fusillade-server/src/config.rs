//! The API's limits and rules: one typed struct with OpenAI's values as defaults, read from the
//! `[server]` table of the config file and validated once at startup.

use fusillade::input::{DEFAULT_ALLOWED_URLS, InputLimits};
use fusillade::model::parse_completion_window;
use serde::Deserialize;

/// Limits and rules of the Files and Batches API. Every field has OpenAI's value as its default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest accepted upload, in bytes. Default 200 MiB (OpenAI's batch input limit); a larger
    /// upload is refused with 413 while it streams.
    pub max_upload_bytes: u64,
    /// Most request lines in one input file. Default 50,000 (OpenAI's per-batch limit).
    pub max_requests_per_file: u64,
    /// Longest `custom_id`, in characters. Default 64.
    pub max_custom_id_chars: usize,
    /// Largest request body of one line, in bytes. Default 10 MiB.
    pub max_body_bytes: usize,
    /// Endpoints a batch (and each line's `url`) may target. Default: chat completions,
    /// completions, embeddings, responses and moderations.
    pub allowed_endpoints: Vec<String>,
    /// Accepted `completion_window` values, such as `24h`, `1h` or `7d`. Default `["24h"]`,
    /// the only window OpenAI accepts.
    pub completion_windows: Vec<String>,
    /// Largest and default `limit` of `GET /v1/files`. Default 10,000 for both, as OpenAI.
    pub files_page_max: u32,
    /// Default page size of `GET /v1/files`.
    pub files_page_default: u32,
    /// Largest `limit` of `GET /v1/batches`. Default 100, as OpenAI.
    pub batches_page_max: u32,
    /// Default page size of `GET /v1/batches`. Default 20, as OpenAI.
    pub batches_page_default: u32,
    /// Largest `limit` of `GET /v1/batches/{id}/results`. Default 1,000.
    pub results_page_max: u32,
    /// Default page size of `GET /v1/batches/{id}/results`. Default 100.
    pub results_page_default: u32,
    /// Uploads processed at once; one more is answered 429 with `Retry-After`. Default 4: an
    /// upload keeps a core busy parsing, and SQLite has a single writer anyway.
    pub max_concurrent_uploads: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 200 * 1024 * 1024,
            max_requests_per_file: 50_000,
            max_custom_id_chars: 64,
            max_body_bytes: 10 * 1024 * 1024,
            allowed_endpoints: DEFAULT_ALLOWED_URLS.iter().map(|s| s.to_string()).collect(),
            completion_windows: vec!["24h".into()],
            files_page_max: 10_000,
            files_page_default: 10_000,
            batches_page_max: 100,
            batches_page_default: 20,
            results_page_max: 1_000,
            results_page_default: 100,
            max_concurrent_uploads: 4,
        }
    }
}

/// A configuration value that cannot work; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid [server] configuration: {0}")]
pub struct ApiConfigError(pub String);

impl ApiConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        let fail = |m: String| Err(ApiConfigError(m));
        if self.max_upload_bytes == 0 {
            return fail("max_upload_bytes must be at least 1".into());
        }
        if self.max_requests_per_file == 0 || self.max_custom_id_chars == 0 {
            return fail("max_requests_per_file and max_custom_id_chars must be at least 1".into());
        }
        if self.max_body_bytes == 0 || self.max_concurrent_uploads == 0 {
            return fail("max_body_bytes and max_concurrent_uploads must be at least 1".into());
        }
        if self.allowed_endpoints.is_empty() {
            return fail("allowed_endpoints must name at least one endpoint".into());
        }
        if let Some(e) = self.allowed_endpoints.iter().find(|e| !e.starts_with('/')) {
            return fail(format!(
                "allowed_endpoints: {e:?} must be a path starting with /"
            ));
        }
        if self.completion_windows.is_empty() {
            return fail("completion_windows must name at least one window".into());
        }
        for window in &self.completion_windows {
            if parse_completion_window(window).is_none() {
                return fail(format!(
                    "completion_windows: {window:?} is not a duration such as 24h, 90m or 7d"
                ));
            }
        }
        check_page("files", self.files_page_default, self.files_page_max)?;
        check_page("batches", self.batches_page_default, self.batches_page_max)?;
        check_page("results", self.results_page_default, self.results_page_max)
    }

    /// The rules every uploaded line is checked against.
    pub fn input_limits(&self) -> InputLimits {
        InputLimits {
            max_body_bytes: self.max_body_bytes,
            max_lines: Some(self.max_requests_per_file),
            max_custom_id_chars: self.max_custom_id_chars,
            allowed_urls: self.allowed_endpoints.clone(),
        }
    }
}

fn check_page(name: &str, default: u32, max: u32) -> Result<(), ApiConfigError> {
    if max == 0 || default == 0 || default > max {
        return Err(ApiConfigError(format!(
            "{name}_page_default ({default}) must be between 1 and {name}_page_max ({max})"
        )));
    }
    Ok(())
}
