//! One process per SQLite database: a second `serve`, `worker` or `run` on a file in use is
//! refused with a message that says why, and a `worker` or `serve` started after a `kill -9`
//! returns the killed process's requests at once instead of waiting for them to go stale.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_each_exactly_once, create_batch, mock, wait_final, write_input};
use fusillade::Storage;
use fusillade_testkit::{output_within, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_fusillade");

/// Starts a daemon-running subcommand on `db` and returns once it says it has started: it
/// holds the lock by then, since the lock is taken before the database is opened.
fn start_until_running(args: &[&str], db: &str, upstream: &str, stale_after: &str) -> Child {
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--database", db, "--upstream", upstream])
        .args(["--concurrency", "4", "--stale-after", stale_after])
        .env("FUSILLADE_LOG", "fusillade=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    // Reads to the end of the stream, so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("daemon started") {
                let _ = started_tx.send(());
            }
        }
    });
    let started = started_rx.recv_timeout(Duration::from_secs(60));
    assert!(started.is_ok(), "{args:?}: the daemon did not start");
    child
}

/// Runs `args` to its exit (within 30 s) and returns its exit code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let what = format!("{args:?} to be refused the database another process holds");
    let out = output_within(child, Duration::from_secs(30), &what);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db").display().to_string();
    let upstream = mock(Duration::ZERO).await;
    let url = upstream.base_url();
    let mut first = start_until_running(&["worker"], &db, &url, "10");
    let input = write_input(dir.path(), 3).display().to_string();
    let second_tries: [&[&str]; 3] = [
        &["worker", "--database", &db, "--upstream", &url],
        &[
            "serve",
            "--database",
            &db,
            "--upstream",
            &url,
            "--listen",
            "127.0.0.1:0",
        ],
        &["run", &input, "--database", &db, "--upstream", &url],
    ];
    for args in second_tries {
        let (code, stderr) = run_to_exit(args);
        assert_ne!(code, Some(0), "{args:?} ran beside the first process");
        assert!(
            stderr.contains("another fusillade process is using this database")
                && stderr.contains("shared.db.lock"),
            "{args:?}: {stderr}"
        );
    }
    assert!(first.try_wait().unwrap().is_none(), "the first worker died");
    first.kill().unwrap();
    first.wait().unwrap();
    upstream.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_after_a_kill_returns_the_killed_ones_requests_at_once() {
    for subcommand in ["worker", "serve"] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("rescue.db").display().to_string();
        let storage: Arc<dyn Storage> = fusillade::storage::open(&db).await.expect("open");
        let batch = create_batch(&storage, 40).await;
        // The first daemon's calls never answer in time: they are running when it is killed.
        let hung = mock(Duration::from_secs(3600)).await;
        let mut args = vec![subcommand];
        if subcommand == "serve" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let mut first = start_until_running(&args, &db, &hung.base_url(), "3600");
        wait_until(Duration::from_secs(30), "calls in flight", || async {
            hung.stats().requests_total >= 4
        })
        .await;
        first.kill().unwrap();
        first.wait().unwrap();
        // Its successor would wait an hour for those leases to go stale; alone on the file, it
        // takes them back at start.
        let fast = mock(Duration::ZERO).await;
        let mut second = start_until_running(&args, &db, &fast.base_url(), "3600");
        wait_final(&storage, &batch.id, Duration::from_secs(60)).await;
        assert_each_exactly_once(&storage, &batch.id, 40).await;
        assert_eq!(fast.stats().requests_total, 40, "{subcommand}");
        second.kill().unwrap();
        second.wait().unwrap();
        hung.shutdown().await;
        fast.shutdown().await;
    }
}
