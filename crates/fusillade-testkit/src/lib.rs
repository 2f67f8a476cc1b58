//! Helpers shared by Fusillade's test suites: throwaway PostgreSQL databases (skipped loudly
//! when PostgreSQL is unreachable, unless `FUSILLADE_REQUIRE_POSTGRES=1`) and polling with a
//! timeout here; child processes waited for within a deadline in [`process`]; kill schedules
//! and the never-sent-again check in [`kills`].

pub mod kills;
pub mod process;

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

pub use kills::{FinishedSends, KillSchedule};
pub use process::{drain, output_within, wait_for_exit};

/// The server tests use.
pub fn server_url() -> String {
    std::env::var("FUSILLADE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn required() -> bool {
    std::env::var("FUSILLADE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A database that exists until this value is dropped.
pub struct TestDatabase {
    /// URL of the new database.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates a uniquely named database, or returns `None` if PostgreSQL is unreachable.
    pub async fn create() -> Option<Self> {
        let server = server_url();
        let mut admin = match PgConnection::connect(&server).await {
            Ok(c) => c,
            Err(e) if !required() => {
                eprintln!("SKIPPED (no PostgreSQL at {server}: {e})");
                return None;
            }
            Err(e) => panic!(
                "PostgreSQL is required (FUSILLADE_REQUIRE_POSTGRES=1) but {server} is unreachable: {e}"
            ),
        };
        let name = format!("fusillade_test_{:016x}", rand_suffix());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        Some(Self {
            url: format!("{base}/{name}"),
            name,
        })
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let server = server_url();
        let name = self.name.clone();
        // Drop runs outside async context: use a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut admin) = PgConnection::connect(&server).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(&sql).execute(&mut admin).await;
                    }
                });
            }
        })
        .join();
    }
}

/// Polls `condition` every 20 ms until it holds, panicking with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until_every(Duration::from_millis(20), timeout, what, condition).await;
}

/// Polls `condition` every `poll` until it holds, panicking with `what` after `timeout`.
pub async fn wait_until_every<F, Fut>(
    poll: Duration,
    timeout: Duration,
    what: &str,
    mut condition: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(poll).await;
    }
}

/// `lines` chat-completion lines of a batch input file: `custom_id` `{id_prefix}{i}`, model
/// `{model_prefix}{i % models}`, a one-message body.
pub fn chat_jsonl(id_prefix: &str, model_prefix: &str, models: usize, lines: usize) -> String {
    let mut text = String::with_capacity(lines * 130);
    for i in 0..lines {
        text.push_str(&format!(
            "{{\"custom_id\":\"{id_prefix}{i}\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\
             \"body\":{{\"model\":\"{model_prefix}{}\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}}}\n",
            i % models
        ));
    }
    text
}
