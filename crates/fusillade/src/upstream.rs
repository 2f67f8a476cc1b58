//! Upstream servers and the HTTP client that sends one attempt of one request.
//!
//! An upstream is a base URL, an optional API key and extra headers; routing maps a model to an
//! upstream, with a default for the rest. The client reuses connections, enforces connect,
//! first-byte and total timeouts, and reads the body under a size cap. API keys live only here,
//! in memory: they are never logged, stored or written to outputs.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::config::HttpLimits;
use crate::model::ClaimedRequest;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Base URL without a trailing `/v1` or slash, e.g. `http://127.0.0.1:8000`.
    base_url: String,
    api_key: Option<ApiKey>,
    headers: Vec<(String, String)>,
}

impl Upstream {
    /// An upstream at `base_url`, given with or without a trailing `/v1`.
    pub fn new(base_url: &str) -> Result<Self, String> {
        let trimmed = base_url.trim().trim_end_matches('/');
        let trimmed = trimmed.strip_suffix("/v1").unwrap_or(trimmed);
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
            return Err(format!(
                "upstream URL {base_url:?} must start with http:// or https://"
            ));
        }
        Ok(Self {
            base_url: trimmed.to_string(),
            api_key: None,
            headers: Vec::new(),
        })
    }

    /// Sends `Authorization: Bearer <key>` with every request.
    pub fn with_api_key(mut self, key: Option<ApiKey>) -> Self {
        self.api_key = key;
        self
    }

    /// Adds a header sent with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The normalised base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// Which upstream serves which model.
#[derive(Debug, Clone)]
pub struct Upstreams {
    default: Upstream,
    by_model: HashMap<String, Upstream>,
}

impl Upstreams {
    /// Every model goes to `default`.
    pub fn new(default: Upstream) -> Self {
        Self {
            default,
            by_model: HashMap::new(),
        }
    }

    /// Routes `model` to `upstream`.
    pub fn route(mut self, model: &str, upstream: Upstream) -> Self {
        self.by_model.insert(model.to_string(), upstream);
        self
    }

    fn for_model(&self, model: &str) -> &Upstream {
        self.by_model.get(model).unwrap_or(&self.default)
    }
}

/// What one attempt produced, before the retry policy looks at it.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The upstream answered (any status).
    Answered {
        /// HTTP status.
        status: u16,
        /// Body, as text (lossy for non-UTF-8).
        body: String,
        /// `x-request-id` of the upstream, if any.
        request_id: Option<String>,
        /// `Retry-After`, converted to a delay from now.
        retry_after: Option<Duration>,
    },
    /// No usable answer.
    Transport {
        /// `connect_error`, `timeout`, `network_error`, `response_too_large`, `invalid_request`.
        code: &'static str,
        /// Human-readable detail (no secrets, no bodies).
        message: String,
    },
}

/// Sends requests to upstreams.
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    client: reqwest::Client,
    upstreams: Upstreams,
    limits: HttpLimits,
}

impl UpstreamClient {
    /// A client with one connection pool shared by every upstream.
    pub fn new(upstreams: Upstreams, limits: HttpLimits) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(limits.connect_timeout)
            .pool_max_idle_per_host(4096)
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            upstreams,
            limits,
        })
    }

    /// Sends one attempt of `req`.
    pub async fn send(&self, req: &ClaimedRequest) -> Attempt {
        let started = Instant::now();
        let builder = match self.build(req) {
            Ok(b) => b,
            Err(message) => {
                return Attempt::Transport {
                    code: "invalid_request",
                    message,
                };
            }
        };
        let response =
            match tokio::time::timeout(self.limits.first_byte_timeout, builder.send()).await {
                Err(_) => return timeout("no response headers", self.limits.first_byte_timeout),
                Ok(Err(e)) => return transport_error(&e),
                Ok(Ok(r)) => r,
            };
        let status = response.status().as_u16();
        let request_id = header_text(response.headers(), "x-request-id");
        let retry_after = parse_retry_after(response.headers(), chrono::Utc::now());
        let remaining = self.limits.total_timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(remaining, self.read_body(response)).await {
            Err(_) => timeout("response body not complete", self.limits.total_timeout),
            Ok(Err(attempt)) => attempt,
            Ok(Ok(body)) => Attempt::Answered {
                status,
                body,
                request_id,
                retry_after,
            },
        }
    }

    fn build(&self, req: &ClaimedRequest) -> Result<reqwest::RequestBuilder, String> {
        let upstream = self.upstreams.for_model(&req.model);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(ApiKey(key)) = &upstream.api_key {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "the API key contains characters not allowed in a header")?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        for (name, value) in &upstream.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid upstream header name {name:?}"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value for upstream header {name}"))?;
            headers.insert(name, value);
        }
        let ids = [
            ("x-fusillade-request-id", req.public_id()),
            ("x-fusillade-batch-id", req.batch_id.to_string()),
            ("x-fusillade-custom-id", req.custom_id.clone()),
        ];
        for (name, value) in ids {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("{name} is not a valid header value"))?;
            headers.insert(name, value);
        }
        Ok(self
            .client
            .post(format!("{}{}", upstream.base_url, req.url))
            .headers(headers)
            .timeout(self.limits.total_timeout)
            .body(req.body.clone()))
    }

    async fn read_body(&self, mut response: reqwest::Response) -> Result<String, Attempt> {
        let cap = self.limits.max_response_bytes;
        if response.content_length().is_some_and(|n| n as usize > cap) {
            return Err(too_large(cap));
        }
        let mut body: Vec<u8> = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > cap {
                        return Err(too_large(cap));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(transport_error(&e)),
            }
        }
        Ok(String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }
}

fn too_large(cap: usize) -> Attempt {
    Attempt::Transport {
        code: "response_too_large",
        message: format!("the upstream response is larger than the {cap}-byte limit"),
    }
}

fn timeout(what: &str, after: Duration) -> Attempt {
    Attempt::Transport {
        code: "timeout",
        message: format!("{what} after {after:?}"),
    }
}

fn transport_error(e: &reqwest::Error) -> Attempt {
    let code = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect_error"
    } else {
        "network_error"
    };
    // reqwest's message names the URL, which holds no secret; keys travel only in headers.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Attempt::Transport { code, message }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Retry-After` as a delay: delta-seconds, or an HTTP-date relative to `now`.
pub fn parse_retry_after(
    headers: &HeaderMap,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - now;
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}
