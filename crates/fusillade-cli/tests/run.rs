//! End-to-end tests of `fusillade run`: the real binary, a real mock upstream over loopback, a
//! real SQLite file. Kill -9 and resume, SIGTERM, bad input, a changed input file.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fusillade::model::RequestState;
use fusillade::storage::sqlite::SqliteStorage;
use fusillade::storage::{BatchList, ResultFilter, ResultPage, Scope, Storage};
use fusillade_mock::{MockConfig, MockServer};

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fusillade")
}

fn write_input(dir: &Path, lines: usize) -> PathBuf {
    let path = dir.join("in.jsonl");
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&format!(
            r#"{{"custom_id":"req-{i}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m{}","messages":[{{"role":"user","content":"hi"}}]}}}}"#,
            i % 2
        ));
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write input");
    path
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
    let storage = SqliteStorage::open(&dir.join("in.fusillade.db"))
        .await
        .expect("open db");
    let page = storage
        .batch_list(BatchList {
            scope: Scope::All,
            after: None,
            limit: 10,
            search: None,
        })
        .await
        .expect("list");
    let Some(batch) = page.items.first() else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    let mut after_line = 0;
    loop {
        let rows = storage
            .result_page(
                &Scope::All,
                ResultPage {
                    batch_id: batch.id.clone(),
                    filter: ResultFilter::State(RequestState::Completed),
                    after_line,
                    limit: 1000,
                    with_input: false,
                },
            )
            .await
            .expect("page");
        let Some(last) = rows.last() else { break };
        after_line = last.line;
        ids.extend(rows.into_iter().map(|r| r.custom_id));
    }
    ids
}

async fn wait_for_requests(mock: &MockServer, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while mock.stats().requests_total < at_least {
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; the loop is bounded by a deadline
    }
}

fn stderr(child: Child) -> String {
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn completes_a_batch_and_writes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), 300);
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockConfig::default())
        .await
        .unwrap();
    let out = run_to_end(&input, &mock.base_url());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {err}");
    assert!(err.contains("300 completed"), "summary: {err}");
    assert_each_exactly_once(dir.path(), 300);
    assert_eq!(mock.stats().requests_total, 300);
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_then_resume_sends_no_finished_request_again() {
    let dir = tempfile::tempdir().unwrap();
    let lines = 400;
    let input = write_input(dir.path(), lines);
    let config = MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .unwrap();
    let mut child = command(&input, &mock.base_url()).spawn().expect("spawn");
    wait_for_requests(&mock, 100).await;
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let finished_before = completed_in_db(dir.path()).await;
    assert!(
        !finished_before.is_empty(),
        "some requests finished before the kill"
    );
    assert!(
        finished_before.len() < lines,
        "the kill came before the end"
    );

    let out = run_to_end(&input, &mock.base_url());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resume failed: {err}");
    assert!(err.contains("Resuming"), "resume message: {err}");
    assert_each_exactly_once(dir.path(), lines);
    let sent: BTreeMap<String, u64> = mock.stats().per_custom_id;
    for id in &finished_before {
        assert_eq!(
            sent.get(id),
            Some(&1),
            "{id} finished before the kill and was sent again"
        );
    }
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_the_same_command_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let lines = 300;
    let input = write_input(dir.path(), lines);
    let config = MockConfig {
        latency: Duration::from_millis(30),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .unwrap();
    let child = command(&input, &mock.base_url()).spawn().expect("spawn");
    wait_for_requests(&mock, 50).await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    let pid = child.id();
    let err = stderr(child);
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

    let out = run_to_end(&input, &mock.base_url());
    assert!(out.status.success());
    assert_each_exactly_once(dir.path(), lines);
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
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockConfig::default())
        .await
        .unwrap();
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

/// A small deterministic generator, so a failing kill schedule can be replayed from its seed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn seed() -> u64 {
    let seed = std::env::var("FUSILLADE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill schedule seed: {seed} (replay with FUSILLADE_TEST_SEED={seed})");
    seed
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_kills_at_random_moments_lose_nothing_and_resend_nothing_finished() {
    let dir = tempfile::tempdir().unwrap();
    let lines = 1_500;
    let input = write_input(dir.path(), lines);
    let config = MockConfig {
        latency: Duration::from_millis(10),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .unwrap();
    let mut rng = seed();
    // Sends of each request at the moment it was first seen finished: a request in flight at a
    // kill may go out again, but once finished it must never be sent again.
    let mut sends_when_finished: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..20 {
        let mut child = command(&input, &mock.base_url()).spawn().expect("spawn");
        let wait = Duration::from_millis(50 + next_random(&mut rng) % 400);
        tokio::time::sleep(wait).await; // the kill moment itself is what is randomised
        child.kill().expect("kill -9");
        child.wait().expect("reap");
        let done = completed_in_db(dir.path()).await;
        assert!(
            done.len() >= sends_when_finished.len(),
            "round {round}: results lost"
        );
        let sent = mock.stats().per_custom_id;
        for id in done {
            let n = sent.get(&id).copied().unwrap_or(0);
            sends_when_finished.entry(id).or_insert(n);
        }
    }
    let out = run_to_end(&input, &mock.base_url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_each_exactly_once(dir.path(), lines);
    let sent = mock.stats().per_custom_id;
    for (id, n) in &sends_when_finished {
        assert_eq!(
            sent.get(id),
            Some(n),
            "{id} had finished before a kill and was sent again"
        );
    }
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
    let out = run_to_end(&input, &mock.base_url());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_each_exactly_once(dir.path(), lines);
    mock.shutdown().await;
}
