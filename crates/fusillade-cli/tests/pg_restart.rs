//! PostgreSQL restarted in the middle of a batch: the workers log, back off, reconnect and
//! finish it, with nothing lost. Its own test binary, because restarting the server would break
//! any other test running beside it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use fusillade::storage::Scope;
use fusillade_testkit::wait_until;

/// Restarts every local cluster with the machine's own tooling; false if there is none.
fn restart_postgres() -> bool {
    let Ok(versions) = std::fs::read_dir("/etc/postgresql") else {
        return false;
    };
    let mut restarted = false;
    for version in versions.flatten() {
        let status = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect"])
            .arg(version.file_name())
            .args(["main", "restart"])
            .status();
        restarted |= status.is_ok_and(|s| s.success());
    }
    restarted
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_mid_batch_does_not_stop_the_batch() {
    let Some((db, storage, mock)) = setup(5).await else {
        return;
    };
    let lines = 3_000;
    let batch = create_batch(&storage, lines).await;
    let _workers = Workers::start(2, &db.url, &mock.base_url());
    wait_until(Duration::from_secs(60), "progress", || async {
        mock.stats().requests_total > 600
    })
    .await;
    if !restart_postgres() {
        eprintln!("SKIPPED (cannot restart PostgreSQL here: no pg_ctlcluster or no permission)");
        return;
    }
    wait_final(&storage, &batch.id, Duration::from_secs(180)).await;
    let done = storage.batch_get(&Scope::All, &batch.id).await.unwrap();
    assert_eq!(done.counts.completed, lines as u64);
    assert_each_exactly_once(&storage, &batch.id, lines).await;
    mock.shutdown().await;
}
