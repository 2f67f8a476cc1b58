//! Daemon tests: real SQLite storage, the real daemon and a real upstream over loopback HTTP.
//!
//! - `outcomes`: what one request ends as (success, retries, 429s, 4xx, timeouts, limits).
//! - `lifecycle`: cancellation, wake-ups, heartbeats, expiry, graceful shutdown, drain
//!   deadline, crash recovery.
//! - `upstream`: headers, secrets, base URL forms and `Retry-After` parsing.
//! - `faults`: `Retry-After` dates, resets, unanswered connects, an upstream down and back.

mod daemon_support;

#[path = "daemon/faults.rs"]
mod faults;
#[path = "daemon/lifecycle.rs"]
mod lifecycle;
#[path = "daemon/outcomes.rs"]
mod outcomes;
#[path = "daemon/upstream.rs"]
mod upstream;
