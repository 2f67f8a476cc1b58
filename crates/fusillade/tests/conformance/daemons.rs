//! Conformance cases for daemon records and storage events.

use std::sync::Arc;
use std::time::Duration;

use fusillade::Storage;
use fusillade::storage::StorageEvent;
use tokio::sync::broadcast;

use super::{alice, claim, create_batch, finish, ok, register};
use crate::support::{ALICE, t};

/// Register, heartbeat and stop daemons; the list shows the newest first.
pub async fn daemons_register_heartbeat_stop_and_list(s: Arc<dyn Storage>) {
    assert!(s.daemon_list().await.unwrap().is_empty());
    let old = register(&s, "daemon_old", t(0)).await;
    let new = register(&s, "daemon_new", t(10)).await;
    let list = s.daemon_list().await.unwrap();
    let ids: Vec<_> = list.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, vec![new.clone(), old.clone()]);
    let d = &list[1];
    assert_eq!(
        (d.hostname.as_str(), d.pid, d.version.as_str()),
        ("host", 42, "0.0.0-test")
    );
    assert_eq!(
        (d.status.as_str(), d.started_at, d.stopped_at),
        ("running", t(0), None)
    );

    s.daemon_heartbeat(&old, t(20), 7).await.unwrap();
    let d = s.daemon_list().await.unwrap().remove(1);
    assert_eq!((d.last_heartbeat, d.requests_finished), (t(20), 7));
    assert_eq!(d.started_at, t(0));

    s.daemon_stop(&old, t(30)).await.unwrap();
    let list = s.daemon_list().await.unwrap();
    let d = list.iter().find(|d| d.id == old).unwrap();
    assert_eq!((d.status.as_str(), d.stopped_at), ("stopped", Some(t(30))));
    let n = list.iter().find(|d| d.id == new).unwrap();
    assert_eq!(n.status, "running", "stopping one daemon stopped another");

    // A late heartbeat does not bring a stopped daemon back.
    s.daemon_heartbeat(&old, t(40), 9).await.unwrap();
    let list = s.daemon_list().await.unwrap();
    let d = list.iter().find(|d| d.id == old).unwrap();
    assert_eq!(d.status, "stopped");
}

/// A daemon declared dead while it was only slow revives with its next heartbeat, so that
/// the work it claims afterwards is not rescued from under it again and again.
pub async fn heartbeat_revives_a_daemon_declared_dead(s: Arc<dyn Storage>) {
    let slow = register(&s, "daemon_slow", t(0)).await;
    let rescued = s
        .request_rescue_stale(fusillade::storage::RescueParams {
            heartbeat_before: t(30),
            all_except: None,
            now: t(40),
        })
        .await
        .unwrap();
    assert_eq!(rescued, 0);
    let status = |list: Vec<fusillade::model::DaemonRecord>| {
        list.into_iter().find(|d| d.id == slow).unwrap().status
    };
    assert_eq!(status(s.daemon_list().await.unwrap()), "dead");
    s.daemon_heartbeat(&slow, t(41), 3).await.unwrap();
    let list = s.daemon_list().await.unwrap();
    let d = list.iter().find(|d| d.id == slow).unwrap();
    assert_eq!(
        (d.status.as_str(), d.stopped_at, d.last_heartbeat),
        ("running", None, t(41))
    );
}

/// Waits (bounded) for `expected`, skipping other events.
async fn expect_event(rx: &mut broadcast::Receiver<StorageEvent>, expected: StorageEvent) {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(event) if event == expected => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no {expected:?} event"));
}

/// Creating a batch announces work; a cancel and a batch's end are announced with its id.
pub async fn events_announce_work_cancellation_and_finished_batches(s: Arc<dyn Storage>) {
    let mut rx = s.subscribe();
    let cancelled = create_batch(&s, ALICE, &["m"], t(0), None).await;
    expect_event(&mut rx, StorageEvent::WorkAvailable).await;
    s.batch_cancel(&alice(), &cancelled.id, t(1)).await.unwrap();
    expect_event(&mut rx, StorageEvent::BatchCancelled(cancelled.id.clone())).await;

    let done = create_batch(&s, ALICE, &["m"], t(2), None).await;
    expect_event(&mut rx, StorageEvent::WorkAvailable).await;
    let req = claim(&s, "m", 1, t(3)).await;
    finish(&s, &req[0], ok("req-1"), t(4)).await;
    expect_event(&mut rx, StorageEvent::BatchFinished(done.id.clone())).await;
}
