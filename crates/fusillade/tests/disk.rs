//! SQLite on a full disk and on a read-only file system, with a real database file on a small
//! tmpfs mounted for the test (root only; each test prints `SKIPPED` where mounting is not
//! permitted):
//!
//! - the disk fills up mid-batch: every write fails with a clear logged error, the daemon keeps
//!   its outcomes and retries with backoff, nothing is corrupted, and once space returns the
//!   batch completes with every request sent exactly once;
//! - the file system is read-only when the database is opened again: opening (or, when SQLite
//!   could open it read-only, the first write) fails with a clear error, nothing is corrupted,
//!   and once it is writable the batch resumes.
//!
//! (A file system cannot be remounted read-only while the daemon holds the database open for
//! writing, and root ignores file modes, so the read-only case is tested across a restart.)

#[path = "daemon_support/mod.rs"]
mod daemon_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use daemon_support::*;
use fusillade::Daemon;
use fusillade::model::{BatchStatus, RequestState};
use fusillade::output::ResultFile;
use fusillade::storage::sqlite::SqliteStorage;
use fusillade::storage::{ResultFilter, Storage};
use fusillade_mock::{Fault, MockConfig};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tempfile::TempDir;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts one of `size` (e.g. `16m`), or says why not and returns `None`.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Self { dir }),
            Ok(out) => {
                let why = String::from_utf8_lossy(&out.stderr);
                eprintln!("SKIPPED (cannot mount a tmpfs: {})", why.trim());
                None
            }
            Err(e) => {
                eprintln!("SKIPPED (cannot run mount: {e})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `mount -o remount,OPTIONS`; the error text when it fails.
    fn remount(&self, options: &str) -> Result<(), String> {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Log lines of this test binary, captured from the daemon's `tracing` output.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged(text: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().expect("log lock")).contains(text)
}

/// `PRAGMA integrity_check` over its own read-only connection.
async fn integrity(db: &Path) -> String {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .expect("read-only connection");
    let result: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .expect("integrity check");
    conn.close().await.expect("close");
    result
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&chunk).and_then(|_| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            return;
        }
    }
}

async fn open(db: &Path) -> Arc<dyn Storage> {
    Arc::new(SqliteStorage::open(db).await.expect("SQLite opens"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_writes_clearly_and_the_batch_resumes_when_space_returns() {
    logs();
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let db: PathBuf = fs.path().join("fusillade.db");
    let storage = open(&db).await;
    let store = Store::with_storage(storage.clone());
    let reqs = requests(60, &["m1"]);
    let batch = store.batch(&reqs, None).await;
    // 16 KiB answers, two at a time, 50 ms each: the database grows with every flush.
    let big = MockConfig {
        latency: Duration::from_millis(50),
        fault: Some(Fault::HugeBody(16 * 1024)),
        ..MockConfig::default()
    };
    let mock = start_mock(big).await;
    let config = with_limits(fast_config(), &[("m1", 2)]);
    let daemon = Running::start(&storage, config, upstreams(&mock.base_url()));
    wait_until("some requests to complete", PATIENCE, || async {
        store.get(&batch.id).await.counts.completed >= 10
    })
    .await;

    let filler = fs.path().join("filler");
    fill(&filler);
    // Both writers hit it: the scheduler's claims and the completer's outcomes of the calls
    // that were in flight, which it keeps and retries.
    wait_until("the full disk to be reported", PATIENCE, || async {
        logged("claiming failed; retrying") && logged("writing outcomes failed; retrying")
    })
    .await;
    assert!(logged("database or disk is full"), "the cause is named");
    let stuck = store.get(&batch.id).await;
    assert_eq!(stuck.status, BatchStatus::InProgress);
    assert_eq!(integrity(&db).await, "ok", "no corruption while full");

    std::fs::remove_file(&filler).expect("free the space");
    let done = store.wait_final(&batch.id, PATIENCE).await;
    daemon.stop().await;
    assert!(
        done.counts.completed > stuck.counts.completed,
        "work resumed"
    );
    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.counts.completed, 60);
    let stats = mock.stats();
    for row in store.rows(&batch.id, ResultFilter::All).await {
        assert_eq!(row.state, RequestState::Completed, "{row:?}");
        assert_eq!(
            sends(&stats, &row.custom_id),
            1,
            "no outcome was lost, so nothing was sent twice: {row:?}"
        );
    }
    let output = store.file(&batch.id, ResultFile::Output).await;
    assert_eq!(custom_ids(&output), ids(&reqs));
    for line in &output {
        let padding = line["response"]["body"]["mock_padding"]
            .as_str()
            .unwrap_or("");
        assert!(
            padding.len() > 15_000,
            "the stored body is whole: {line:.200}"
        );
    }
    drop(store);
    drop(storage);
    assert_eq!(integrity(&db).await, "ok");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_file_system_is_refused_clearly_and_the_batch_resumes_when_writable() {
    logs();
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let db: PathBuf = fs.path().join("fusillade.db");
    let mock = start_mock(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let reqs = requests(40, &["m1"]);
    let config = with_limits(fast_config(), &[("m1", 2)]);
    let batch_id = {
        let storage = open(&db).await;
        let store = Store::with_storage(storage.clone());
        let batch = store.batch(&reqs, None).await;
        let daemon = Running::start(&storage, config.clone(), upstreams(&mock.base_url()));
        wait_until("some requests to complete", PATIENCE, || async {
            store.get(&batch.id).await.counts.completed >= 5
        })
        .await;
        daemon.stop().await;
        batch.id
    };

    // The pools close their connections in the background; remounting waits for that.
    let deadline = Instant::now() + PATIENCE;
    while let Err(e) = fs.remount("ro") {
        assert!(Instant::now() < deadline, "cannot remount read-only: {e}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; the loop is bounded by a deadline
    }
    let refused = match SqliteStorage::open(&db).await {
        Err(e) => e.to_string(),
        // When the -wal and -shm files are still there, SQLite opens the database read-only
        // without complaint; then the first write says so.
        Ok(storage) => Daemon::new(
            Arc::new(storage),
            config.clone(),
            upstreams(&mock.base_url()),
        )
        .expect("daemon builds")
        .run(CancellationToken::new())
        .await
        .expect_err("a daemon cannot register on a read-only database")
        .to_string(),
    };
    eprintln!("read-only database refused with: {refused}");
    assert!(
        refused.contains("fusillade.db for writing: Read-only file system")
            || refused.contains("attempt to write a readonly database"),
        "a clear error: {refused}"
    );
    fs.remount("rw").expect("remount read-write");
    assert_eq!(integrity(&db).await, "ok");

    let storage = open(&db).await;
    let store = Store::with_storage(storage.clone());
    let daemon = Running::start(&storage, config, upstreams(&mock.base_url()));
    let done = store.wait_final(&batch_id, PATIENCE).await;
    daemon.stop().await;
    assert_eq!(done.status, BatchStatus::Completed);
    assert_eq!(done.counts.completed, 40);
    let stats = mock.stats();
    for id in ids(&reqs) {
        assert_eq!(
            sends(&stats, &id),
            1,
            "{id} sent exactly once across both runs"
        );
    }
    drop(store);
    drop(storage);
    assert_eq!(integrity(&db).await, "ok");
    mock.shutdown().await;
}
