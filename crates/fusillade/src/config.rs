//! Daemon configuration: one typed struct with documented defaults, validated once.

use std::collections::HashMap;
use std::time::Duration;

/// How many requests may be in flight at once per model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimits {
    /// Limit for any model without its own entry. Default 64.
    pub default: u32,
    /// Per-model overrides.
    pub per_model: HashMap<String, u32>,
}

impl Default for ConcurrencyLimits {
    fn default() -> Self {
        Self {
            default: 64,
            per_model: HashMap::new(),
        }
    }
}

impl ConcurrencyLimits {
    /// The limit for `model`.
    pub fn limit(&self, model: &str) -> u32 {
        self.per_model.get(model).copied().unwrap_or(self.default)
    }
}

/// When and how often a failed attempt is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. Default 8.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time. Default 1 s.
    pub base_backoff: Duration,
    /// Largest backoff. Default 60 s.
    pub max_backoff: Duration,
    /// Largest `Retry-After` honoured; a longer one is cut to this. Default 1 h.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

/// Timeouts and limits of one upstream HTTP call.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    /// Establishing the TCP (and TLS) connection. Default 10 s.
    pub connect_timeout: Duration,
    /// From sending the request to receiving the response headers. Default 10 min: LLM calls
    /// without streaming send headers only once generation ends.
    pub first_byte_timeout: Duration,
    /// The whole call, body included. Default 15 min.
    pub total_timeout: Duration,
    /// Largest response body kept; a larger one fails the request. Default 32 MiB.
    pub max_response_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(600),
            total_timeout: Duration::from_secs(900),
            max_response_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Everything the daemon needs besides storage and upstreams.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Per-model concurrency.
    pub concurrency: ConcurrencyLimits,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Upstream call limits.
    pub http: HttpLimits,
    /// Heartbeat period. Default 2 s.
    pub heartbeat_interval: Duration,
    /// A daemon silent for this long is declared dead and its requests rescued. Default 10 s.
    pub stale_after: Duration,
    /// Longest time the completer holds outcomes before writing them. Default 10 ms.
    pub flush_interval: Duration,
    /// Most outcomes written in one transaction. Default 2,000.
    pub flush_max: usize,
    /// Fallback poll period when no event arrives. Default 1 s.
    pub poll_interval: Duration,
    /// On shutdown, how long in-flight calls may finish before they are released. Default 30 s.
    pub drain_timeout: Duration,
    /// This process is alone on its database (`fusillade run`): at start, every other daemon
    /// is declared dead and its leases are rescued at once. Default false.
    pub exclusive: bool,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            concurrency: ConcurrencyLimits::default(),
            retry: RetryPolicy::default(),
            http: HttpLimits::default(),
            heartbeat_interval: Duration::from_secs(2),
            stale_after: Duration::from_secs(10),
            flush_interval: Duration::from_millis(10),
            flush_max: 2_000,
            poll_interval: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(30),
            exclusive: false,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl DaemonConfig {
    /// Checks every value; the message names the field and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.concurrency.default == 0 || self.concurrency.per_model.values().any(|&v| v == 0) {
            return fail("concurrency limits must be at least 1".into());
        }
        if self.retry.max_attempts == 0 {
            return fail("retry.max_attempts must be at least 1".into());
        }
        if self.stale_after <= self.heartbeat_interval * 2 {
            return fail(format!(
                "stale_after ({:?}) must be more than twice heartbeat_interval ({:?})",
                self.stale_after, self.heartbeat_interval
            ));
        }
        if self.flush_max == 0 {
            return fail("flush_max must be at least 1".into());
        }
        if self.http.max_response_bytes == 0 {
            return fail("http.max_response_bytes must be at least 1".into());
        }
        Ok(())
    }
}
