//! `fusillade run` on the bad-input corpus (`crates/fusillade/tests/bad_input/`) and on a 50 MB
//! line: the process exits 1, prints the same `Line N: …` message the library gives, sends
//! nothing, stores nothing and writes no output or error file. The accepted oddities of the
//! corpus (BOM, CRLF, blank lines) run to completion.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use fusillade::input::{InputLimits, InputParser};
use fusillade::storage::sqlite::SqliteStorage;
use fusillade::storage::{BatchList, FileList, Scope, Storage};
use fusillade_mock::{MockConfig, MockServer};
use tempfile::TempDir;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fusillade/tests/bad_input")
}

/// The corpus files, rejected ones and accepted ones (named `accepted_…`).
fn corpus() -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files.into_iter().partition(|p| {
        !p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("accepted_")
    })
}

/// What the library says about `bytes`.
fn library_verdict(bytes: &[u8]) -> Result<u64, String> {
    let mut parser = InputParser::new(InputLimits::default());
    parser.push(bytes).map_err(|e| e.to_string())?;
    let (_, summary) = parser.finish().map_err(|e| e.to_string())?;
    Ok(summary.lines)
}

/// Runs `fusillade run` on `bytes` written to `in.jsonl` in a fresh directory.
fn run(bytes: &[u8], upstream: &str) -> (Output, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, bytes).expect("write input");
    let out = Command::new(env!("CARGO_BIN_EXE_fusillade"))
        .arg("run")
        .arg(&input)
        .args(["--upstream", upstream])
        .env_remove("FUSILLADE_DATABASE")
        .env_remove("FUSILLADE_API_KEY")
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("run fusillade");
    (out, dir)
}

/// Exit 1 with `message`, no result file, and nothing in the run's database.
async fn assert_refused(name: &str, bytes: &[u8], message: &str) {
    // Nothing listens on port 9: a request sent by mistake would fail, not hang.
    let (out, dir) = run(bytes, "http://127.0.0.1:9");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
    assert!(
        stderr.contains(message),
        "{name}: {message:?} not in {stderr}"
    );
    for file in ["in.output.jsonl", "in.errors.jsonl"] {
        assert!(!dir.path().join(file).exists(), "{name}: {file} written");
    }
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
    let db = dir.path().join("in.fusillade.db");
    if db.exists() {
        let storage = SqliteStorage::open(&db).await.expect("open the run's db");
        let files = storage
            .file_list(FileList {
                scope: Scope::All,
                purpose: None,
                after: None,
                limit: 10,
                ascending: true,
            })
            .await
            .expect("files");
        assert!(files.items.is_empty(), "{name}: a file was stored");
        let batches = storage
            .batch_list(BatchList {
                scope: Scope::All,
                after: None,
                limit: 10,
                search: None,
            })
            .await
            .expect("batches");
        assert!(batches.items.is_empty(), "{name}: a batch was created");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_corpus_file_is_refused_with_the_library_message() {
    let (rejected, _) = corpus();
    assert!(rejected.len() >= 25, "the corpus is there: {rejected:?}");
    for path in &rejected {
        let name = path.file_name().unwrap().to_string_lossy();
        let bytes = std::fs::read(path).expect("read corpus file");
        let message = library_verdict(&bytes).expect_err("a bad file");
        assert_refused(&name, &bytes, &message).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_50_mb_line_is_refused() {
    let line = |id: &str, content: &str| {
        format!(
            r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m","messages":[{{"role":"user","content":"{content}"}}]}}}}"#
        )
    };
    let big = "x".repeat(50 * 1024 * 1024);
    let text = format!("{}\n{}\n", line("a", "hi"), line("b", &big));
    let message =
        "Line 2: the line is longer than 10551296 bytes (the request body limit is 10485760 bytes)";
    assert_refused("50 MB line", text.as_bytes(), message).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_accepted_corpus_files_run_to_completion() {
    let mock = MockServer::start(([127, 0, 0, 1], 0).into(), MockConfig::default())
        .await
        .expect("mock");
    let (_, accepted) = corpus();
    assert_eq!(accepted.len(), 3, "{accepted:?}");
    let mut sent = 0;
    for path in &accepted {
        let name = path.file_name().unwrap().to_string_lossy();
        let bytes = std::fs::read(path).expect("read corpus file");
        let lines = library_verdict(&bytes).expect("an accepted file");
        let (out, dir) = run(&bytes, &mock.base_url());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        let output = std::fs::read_to_string(dir.path().join("in.output.jsonl")).unwrap();
        assert_eq!(output.lines().count() as u64, lines, "{name}");
        sent += lines;
    }
    assert_eq!(mock.stats().requests_total, sent);
    mock.shutdown().await;
}
