//! Owns the mock's behaviour knobs: [`MockConfig`] and the [`Fault`] modes,
//! including the `x-mock-fault` header syntax.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderValue;

/// Request header that selects a [`Fault`] for one request (overrides [`MockConfig::fault`]).
pub const FAULT_HEADER: &str = "x-mock-fault";

/// Request header whose values are counted in [`crate::Stats::per_custom_id`].
pub const CUSTOM_ID_HEADER: &str = "x-fusillade-custom-id";

/// How the mock behaves. Cheap to clone; swap it at runtime with
/// [`crate::MockServer::set_config`].
#[derive(Debug, Clone, PartialEq)]
pub struct MockConfig {
    /// Added before answering each request, while the request counts as in flight.
    pub latency: Duration,
    /// Fraction of requests answered with a 500 `server_error`.
    pub error_rate: f64,
    /// Fraction of requests answered with a 429 `rate_limit_error` and `Retry-After`.
    pub rate_limit_rate: f64,
    /// Value of the `Retry-After` header on 429 responses.
    pub retry_after_secs: u64,
    /// Send `Retry-After` as an HTTP-date (`retry_after_secs` from now, rounded down to the
    /// second, as the date form has no finer unit) instead of a number of seconds.
    pub retry_after_http_date: bool,
    /// Seed for the error-injection draws. With a seed, the n-th draw after the
    /// config is installed is always the same (the order in which concurrent
    /// requests take draws is still up to the scheduler). `None` picks a random seed.
    pub seed: Option<u64>,
    /// Fault applied to every request that does not carry its own `x-mock-fault`
    /// header. Faults replace error injection for the requests they apply to.
    pub fault: Option<Fault>,
}

impl MockConfig {
    /// The `Retry-After` header value of a 429 answered now.
    pub(crate) fn retry_after(&self) -> HeaderValue {
        if !self.retry_after_http_date {
            return HeaderValue::from(self.retry_after_secs);
        }
        let secs = i64::try_from(self.retry_after_secs).unwrap_or(i64::MAX);
        let when = chrono::Utc::now() + chrono::Duration::try_seconds(secs).unwrap_or_default();
        let text = when.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        HeaderValue::from_str(&text).expect("an HTTP-date is a valid header value")
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            latency: Duration::ZERO,
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            retry_after_secs: 1,
            retry_after_http_date: false,
            seed: None,
            fault: None,
        }
    }
}

/// A misbehaviour the mock can be asked for, globally or per request.
///
/// What a client observes:
/// - `Hang`: the request is accepted and never answered (until the server shuts
///   down, at which point the connection is aborted). The request stays in flight.
/// - `Reset`: the connection is closed without any response bytes; clients see a
///   "connection closed before message completed"-style error from `send()`.
/// - `EndlessBody`: `200` headers, then a chunked JSON-looking body that never ends.
/// - `HugeBody(n)`: `200` with a valid success body of about `n` bytes (padded with
///   an extra `mock_padding` string field), sent with a `Content-Length`.
/// - `InvalidJson`: `200` with `content-type: application/json` and body `not json{`.
/// - `PrettyJson`: a normal success body, pretty-printed over several lines (as OpenAI's
///   own API sends it).
/// - `Status(code)`: that status (200..=599) with an OpenAI-style error body
///   (429 also gets `Retry-After`).
/// - `SlowFirstByte(d)`: nothing is sent for `d` (on top of the latency), then a
///   normal success response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Hang,
    Reset,
    EndlessBody,
    HugeBody(usize),
    InvalidJson,
    PrettyJson,
    Status(u16),
    SlowFirstByte(Duration),
}

impl Fault {
    /// The `x-mock-fault` header value selecting this fault (same as `to_string()`).
    pub fn header_value(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Hang => f.write_str("hang"),
            Fault::Reset => f.write_str("reset"),
            Fault::EndlessBody => f.write_str("endless"),
            Fault::HugeBody(bytes) => write!(f, "huge:{bytes}"),
            Fault::InvalidJson => f.write_str("invalid-json"),
            Fault::PrettyJson => f.write_str("pretty"),
            Fault::Status(code) => write!(f, "status:{code}"),
            Fault::SlowFirstByte(delay) => write!(f, "slow:{}", delay.as_millis()),
        }
    }
}

/// Parses the header syntax:
/// `hang | reset | endless | huge:<bytes> | invalid-json | pretty | status:<code> |
/// slow:<millis>`.
impl FromStr for Fault {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let value = raw.trim().to_ascii_lowercase();
        let (name, arg) = match value.split_once(':') {
            Some((name, arg)) => (name.trim(), Some(arg.trim())),
            None => (value.as_str(), None),
        };
        let fault = match (name, arg) {
            ("hang", None) => Fault::Hang,
            ("reset", None) => Fault::Reset,
            ("endless", None) => Fault::EndlessBody,
            ("invalid-json", None) => Fault::InvalidJson,
            ("pretty", None) => Fault::PrettyJson,
            ("huge", Some(arg)) => Fault::HugeBody(parse_number(arg, raw)?),
            ("status", Some(arg)) => Fault::Status(parse_status(arg, raw)?),
            ("slow", Some(arg)) => {
                Fault::SlowFirstByte(Duration::from_millis(parse_number(arg, raw)?))
            }
            _ => return Err(format!("unknown {FAULT_HEADER} value {raw:?}")),
        };
        Ok(fault)
    }
}

fn parse_number<T: FromStr>(arg: &str, raw: &str) -> Result<T, String> {
    arg.parse()
        .map_err(|_| format!("invalid number in {FAULT_HEADER} value {raw:?}"))
}

fn parse_status(arg: &str, raw: &str) -> Result<u16, String> {
    let code: u16 = parse_number(arg, raw)?;
    // 1xx would turn the exchange into something other than a response, and
    // `http` cannot represent codes past 999; clients only care about 2xx-5xx.
    if (200..=599).contains(&code) {
        Ok(code)
    } else {
        Err(format!(
            "status out of range in {FAULT_HEADER} value {raw:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_syntax_round_trips() {
        let faults = [
            Fault::Hang,
            Fault::Reset,
            Fault::EndlessBody,
            Fault::HugeBody(1234),
            Fault::InvalidJson,
            Fault::PrettyJson,
            Fault::Status(503),
            Fault::SlowFirstByte(Duration::from_millis(250)),
        ];
        for fault in faults {
            assert_eq!(fault.header_value().parse::<Fault>(), Ok(fault));
        }
    }

    #[test]
    fn header_parsing_is_lenient_about_case_and_spaces() {
        assert_eq!(" Status : 429 ".parse::<Fault>(), Ok(Fault::Status(429)));
        assert_eq!("HANG".parse::<Fault>(), Ok(Fault::Hang));
    }

    #[test]
    fn bad_header_values_are_rejected() {
        for bad in [
            "",
            "hang:1",
            "huge",
            "huge:x",
            "status:42",
            "status:101",
            "status:600",
            "slow:-1",
            "boom",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad:?} should not parse");
        }
    }
}
