//! The upstream API key given to `fusillade run --api-key` never leaves memory: with logging at
//! `trace`, it appears in no byte of stderr or stdout, of the output and error files, or of the
//! run's SQLite database, its WAL and shared-memory files (read while the run is going, and
//! again after it ended).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::write_input;
use fusillade_mock::{MockConfig, MockServer};
use fusillade_testkit::{drain, wait_for_exit, wait_until};

const KEY: &str = "sk-SECRET-CANARY-5d1f0c7a9e3b42";

/// Every file in `dir`, with its bytes (files that vanish while listed are skipped).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .expect("list dir")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let bytes = std::fs::read(&path).ok()?;
            Some((path.file_name()?.to_string_lossy().into_owned(), bytes))
        })
        .collect()
}

/// Where the key, or its distinctive middle, shows up.
fn leaks(what: &str, bytes: &[u8]) -> Vec<String> {
    ["SECRET-CANARY", KEY]
        .iter()
        .filter(|needle| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|needle| format!("{needle:?} in {what}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_key_is_in_no_log_result_file_or_database_byte() {
    // Half the answers are 500s and there are two attempts: some requests fail, so the error
    // file and the error paths of the logs have content too.
    let config = MockConfig {
        latency: Duration::from_millis(10),
        error_rate: 0.5,
        seed: Some(7),
        ..MockConfig::default()
    };
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("mock");
    let dir = tempfile::tempdir().expect("temp dir");
    let lines = 200;
    let input = write_input(dir.path(), lines);
    let mut child = Command::new(env!("CARGO_BIN_EXE_fusillade"))
        .arg("run")
        .arg(&input)
        .args(["--upstream", &mock.base_url(), "--api-key", KEY])
        .args(["--concurrency", "4", "--max-attempts", "2"])
        .env("FUSILLADE_LOG", "trace")
        .env_remove("FUSILLADE_DATABASE")
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fusillade");
    // Trace logs fill a pipe fast: drain both pipes while the run goes.
    let stderr = drain(child.stderr.take().expect("stderr"));
    let stdout = drain(child.stdout.take().expect("stdout"));

    // Mid-run, the WAL holds the latest writes.
    let mut found = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "the run to be under way",
        || async { mock.stats().requests_total >= 50 },
    )
    .await;
    for (name, bytes) in files(dir.path()) {
        found.extend(leaks(&format!("{name} (mid-run)"), &bytes));
    }
    let seen_mid_run: Vec<String> = files(dir.path()).into_iter().map(|(n, _)| n).collect();
    assert!(
        seen_mid_run.iter().any(|n| n.ends_with("fusillade.db-wal")),
        "a WAL to read: {seen_mid_run:?}"
    );

    let status = wait_for_exit(&mut child, Duration::from_secs(120), "the run to finish");
    let (stderr, stdout) = (stderr.join().unwrap(), stdout.join().unwrap());
    let text = String::from_utf8_lossy(&stderr);
    assert!(
        status.success(),
        "run failed: {}",
        text.lines().last().unwrap_or("")
    );
    assert!(text.contains("TRACE"), "trace logging was on");
    found.extend(leaks("stderr", &stderr));
    found.extend(leaks("stdout", &stdout));
    let mut names = Vec::new();
    for (name, bytes) in files(dir.path()) {
        found.extend(leaks(&name, &bytes));
        names.push(name);
    }
    assert!(found.is_empty(), "the API key leaked: {found:?}");

    for file in ["in.output.jsonl", "in.errors.jsonl", "in.fusillade.db"] {
        assert!(names.iter().any(|n| n == file), "{file} checked: {names:?}");
    }
    let errors = std::fs::read_to_string(dir.path().join("in.errors.jsonl")).unwrap();
    let outputs = std::fs::read_to_string(dir.path().join("in.output.jsonl")).unwrap();
    assert!(
        !errors.is_empty() && !outputs.is_empty(),
        "both files have lines"
    );
    assert_eq!(errors.lines().count() + outputs.lines().count(), lines);
    mock.shutdown().await;
}
