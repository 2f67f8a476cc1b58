//! End-to-end tests of `fusillade run`: the real binary, a real mock upstream over loopback, a
//! real SQLite file. Kill -9 and resume, SIGTERM, bad input, a changed input file.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{completed_ids, mock, write_input};
use fusillade::storage::sqlite::SqliteStorage;
use fusillade::storage::{BatchList, Scope, Storage};
use fusillade_mock::{MockConfig, MockServer};
use fusillade_testkit::{FinishedSends, KillSchedule, output_within, wait_until};

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fusillade")
}

fn command(input: &Path, upstream: &str) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("run")
        .arg(input)
        .args(["--upstream", upstream, "--concurrency", "8"])
        .env_remove("FUSILLADE_DATABASE")
        .env_remove("OPENAI_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_end(input: &Path, upstream: &str) -> Output {
    command(input, upstream).output().expect("run fusillade")
}

/// Runs to the end and checks that the run succeeded and that each of the `lines` input lines
/// has exactly one result line; returns stderr for the caller's own checks.
fn run_to_success(input: &Path, upstream: &str, lines: usize) -> String {
    let out = run_to_end(input, upstream);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "run failed: {err}");
    assert_each_exactly_once(input.parent().expect("the input's directory"), lines);
    err
}

/// Custom ids of every line of a result file.
fn custom_ids(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("result line is JSON");
            v["custom_id"].as_str().expect("custom_id").to_string()
        })
        .collect()
}

fn assert_each_exactly_once(dir: &Path, lines: usize) {
    let mut all = custom_ids(&dir.join("in.output.jsonl"));
    all.extend(custom_ids(&dir.join("in.errors.jsonl")));
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), lines, "one result line per input line");
    assert_eq!(unique.len(), lines, "no custom_id twice");
}

/// Requests already completed in the run's database (read while no process holds it).
async fn completed_in_db(dir: &Path) -> Vec<String> {
    let storage: Arc<dyn Storage> = Arc::new(
        SqliteStorage::open(&dir.join("in.fusillade.db"))
            .await
            .expect("open db"),
    );
    let page = storage
        .batch_list(BatchList {
            scope: Scope::All,
            after: None,
            limit: 10,
            search: None,
        })
        .await
        .expect("list");
    match page.items.first() {
        Some(batch) => completed_ids(&storage, &batch.id).await,
        None => Vec::new(),
    }
}

async fn wait_for_requests(mock: &MockServer, at_least: u64) {
    wait_until(Duration::from_secs(30), "the run to get going", || async {
        mock.stats().requests_total >= at_least
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn completes_a_batch_and_writes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 300);
    let mock = mock(Duration::ZERO).await;
    let err = run_to_success(&input, &mock.base_url(), 300);
    assert!(err.contains("300 completed"), "summary: {err}");
    assert_eq!(mock.stats().requests_total, 300);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_then_resume_sends_no_finished_request_again() {
    let dir = tempfile::tempdir().unwrap();
    let lines = 400;
    let input = write_input(dir.path(), lines);
    let mock = mock(Duration::from_millis(20)).await;
    let mut child = command(&input, &mock.base_url()).spawn().expect("spawn");
    wait_for_requests(&mock, 100).await;
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let finished_before = FinishedSends::each_sent_once(completed_in_db(dir.path()).await);
    assert!(
        !finished_before.is_empty(),
        "some requests finished before the kill"
    );
    assert!(
        finished_before.len() < lines,
        "the kill came before the end"
    );

    let err = run_to_success(&input, &mock.base_url(), lines);
    assert!(err.contains("Resuming"), "resume message: {err}");
    finished_before.assert_none_sent_again(&mock.stats().per_custom_id);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_the_same_command_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let lines = 300;
    let input = write_input(dir.path(), lines);
    let mock = mock(Duration::from_millis(30)).await;
    let child = command(&input, &mock.base_url()).spawn().expect("spawn");
    wait_for_requests(&mock, 50).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let pid = child.id();
    // The drain lets in-flight requests finish (30 ms each here; 30 s at most).
    let out = output_within(child, Duration::from_secs(60), "the run to stop on SIGTERM");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Stopping"),
        "graceful stop announced (pid {pid}): {err}"
    );
    assert!(err.contains("resume"), "resume hint: {err}");
    let partial = custom_ids(&dir.path().join("in.output.jsonl")).len();
    assert!(
        partial > 0 && partial < lines,
        "partial output written: {partial}"
    );

    run_to_success(&input, &mock.base_url(), lines);
    mock.shutdown().await;
}

#[test]
fn a_bad_line_is_named_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}\n\
         {\"custom_id\":\"b\",\"method\":\"GET\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\"}}\n",
    )
    .unwrap();
    let out = run_to_end(&input, "http://127.0.0.1:9");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("Line 2: method must be \"POST\""), "{err}");
    assert!(!dir.path().join("in.output.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_input_is_refused_until_restart() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 20);
    let mock = mock(Duration::ZERO).await;
    assert!(run_to_end(&input, &mock.base_url()).status.success());
    write_input(dir.path(), 25);
    let out = run_to_end(&input, &mock.base_url());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("changed since its run started"), "{err}");

    let out = command(&input, &mock.base_url())
        .arg("--restart")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_each_exactly_once(dir.path(), 25);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_kills_at_random_moments_lose_nothing_and_resend_nothing_finished() {
    let dir = tempfile::tempdir().unwrap();
    let lines = 1_500;
    let input = write_input(dir.path(), lines);
    let mock = mock(Duration::from_millis(10)).await;
    let mut schedule = KillSchedule::from_env();
    let mut sends_when_finished = FinishedSends::default();
    for round in 0..20 {
        let mut child = command(&input, &mock.base_url()).spawn().expect("spawn");
        let wait = Duration::from_millis(50 + schedule.next_u64() % 400);
        tokio::time::sleep(wait).await; // the kill moment itself is what is randomised
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let done = completed_in_db(dir.path()).await;
        assert!(
            done.len() >= sends_when_finished.len(),
            "round {round}: results lost"
        );
        sends_when_finished.record(done, &mock.stats().per_custom_id);
    }
    run_to_success(&input, &mock.base_url(), lines);
    sends_when_finished.assert_none_sent_again(&mock.stats().per_custom_id);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once_and_the_next_run_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lines = 50;
    let input = write_input(dir.path(), lines);
    let hanging = MockConfig {
        fault: Some(fusillade_mock::Fault::Hang),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), hanging)
        .await
        .unwrap();
    let mut child = command(&input, &mock.base_url()).spawn().expect("spawn");
    wait_for_requests(&mock, 8).await;
    let term = |pid: u32| {
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        assert!(ok.expect("kill").success());
    };
    term(child.id());
    // The first signal starts a drain that the hanging upstream keeps open (30 s by default);
    // the second must end the process well before that.
    let started = Instant::now();
    let mut exited = None;
    while started.elapsed() < Duration::from_secs(10) && exited.is_none() {
        term(child.id());
        tokio::time::sleep(Duration::from_millis(100)).await; // pacing the repeated signal
        exited = child.try_wait().expect("try_wait");
    }
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the second signal did not end the process");
    };
    assert_eq!(status.code(), Some(130));
    mock.set_config(MockConfig::default());
    run_to_success(&input, &mock.base_url(), lines);
    mock.shutdown().await;
}
