//! The bad-input corpus (`tests/bad_input/`, plus a few large files generated here): each file
//! goes through `ingest::upload` into a real SQLite database. A bad file is rejected with the
//! exact `Line N: …` message (or the file-level one) and leaves nothing stored, not even staged
//! rows. The accepted oddities (a UTF-8 BOM, CRLF endings, blank lines between requests) store
//! every request with its physical line number and its body unchanged.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use fusillade::ingest;
use fusillade::input::InputLimits;
use fusillade::model::{File, NewTemplate};
use fusillade::storage::sqlite::SqliteStorage;
use fusillade::storage::{FileList, Scope, Storage, StorageError};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tempfile::TempDir;
use tokio::io::AsyncRead;

const DEFAULT_URLS: &str =
    "/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/moderations";
const NO_REQUESTS: &str = "the file contains no requests (it is empty or has only blank lines)";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_input")
}

fn corpus(name: &str) -> Vec<u8> {
    let path = corpus_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A fresh SQLite database in its own directory.
struct Db {
    storage: SqliteStorage,
    path: PathBuf,
    _dir: TempDir,
}

impl Db {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fusillade.db");
        let storage = SqliteStorage::open(&path).await.expect("SQLite opens");
        Self {
            storage,
            path,
            _dir: dir,
        }
    }

    async fn upload<R>(&self, reader: R, limits: InputLimits) -> Result<File, StorageError>
    where
        R: AsyncRead + Send + Unpin,
    {
        let now = chrono::Utc::now();
        ingest::upload(&self.storage, reader, limits, "tenant", "in.jsonl", now).await
    }

    /// No visible file, and no row at all in `files` or `templates` (staged rows included).
    async fn assert_nothing_stored(&self) {
        let list = FileList {
            scope: Scope::All,
            purpose: None,
            after: None,
            limit: 100,
            ascending: true,
        };
        let files = self.storage.file_list(list).await.expect("file list");
        assert!(
            files.items.is_empty(),
            "a file was stored: {:?}",
            files.items
        );
        let mut raw = SqliteConnectOptions::new()
            .filename(&self.path)
            .read_only(true)
            .connect()
            .await
            .expect("raw connection");
        let rows: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM files) + (SELECT count(*) FROM templates)",
        )
        .fetch_one(&mut raw)
        .await
        .expect("count rows");
        assert_eq!(rows, 0, "rows were left behind");
        raw.close().await.expect("close");
    }

    async fn templates(&self, file: &File) -> Vec<NewTemplate> {
        self.storage
            .template_page(&Scope::All, &file.id, 0, 1000)
            .await
            .expect("templates")
    }
}

/// Uploads `bytes` and checks the rejection message and that nothing was stored.
async fn assert_rejected(bytes: &[u8], limits: InputLimits, expected: &str) {
    let db = Db::new().await;
    match db.upload(bytes, limits).await {
        Err(StorageError::Rejected(e)) => assert_eq!(e.to_string(), expected),
        other => panic!("expected the rejection {expected:?}, got {other:?}"),
    }
    db.assert_nothing_stored().await;
}

/// One test per corpus file, and the list of those files.
macro_rules! rejected {
    ($($name:ident: $file:literal => $message:expr;)*) => {
        const REJECTED: &[&str] = &[$($file),*];
        $(
            #[tokio::test]
            async fn $name() {
                assert_rejected(&corpus($file), InputLimits::default(), &$message).await;
            }
        )*
    };
}

rejected! {
    invalid_json: "invalid_json.jsonl" =>
        "Line 2: invalid JSON (EOF while parsing an object at column 96)";
    not_a_json_object: "not_an_object.jsonl" => "Line 2: each line must be a JSON object";
    trailing_data_after_the_object: "trailing_data.jsonl" =>
        "Line 2: invalid JSON (trailing characters at column 143)";
    single_quoted_json: "single_quotes.jsonl" =>
        "Line 2: invalid JSON (key must be a string at column 2)";
    invalid_utf8: "invalid_utf8.jsonl" => "Line 2: invalid UTF-8 at byte 138 of the line";
    missing_custom_id: "missing_custom_id.jsonl" => "Line 2: missing field \"custom_id\"";
    custom_id_not_a_string: "custom_id_number.jsonl" => "Line 2: custom_id must be a string";
    custom_id_null: "custom_id_null.jsonl" => "Line 2: custom_id must be a string";
    custom_id_empty: "custom_id_empty.jsonl" => "Line 2: custom_id is empty";
    custom_id_too_long: "custom_id_too_long.jsonl" =>
        "Line 2: custom_id is 65 characters long; the limit is 64";
    custom_id_with_a_control_character: "custom_id_control_char.jsonl" =>
        "Line 2: custom_id must be printable ASCII (it is sent as an HTTP header value)";
    custom_id_with_a_tab: "custom_id_tab.jsonl" =>
        "Line 2: custom_id must be printable ASCII (it is sent as an HTTP header value)";
    custom_id_not_ascii: "custom_id_non_ascii.jsonl" =>
        "Line 2: custom_id must be printable ASCII (it is sent as an HTTP header value)";
    duplicate_custom_id: "duplicate_custom_id.jsonl" =>
        "Line 3: custom_id \"req-1\" is already used on an earlier line; each custom_id must be unique in the file";
    missing_method: "missing_method.jsonl" => "Line 2: missing field \"method\"";
    method_not_a_string: "method_not_a_string.jsonl" => "Line 2: method must be a string";
    wrong_method: "wrong_method.jsonl" => "Line 2: method must be \"POST\" (got \"GET\")";
    missing_url: "missing_url.jsonl" => "Line 2: missing field \"url\"";
    url_not_a_string: "url_not_a_string.jsonl" => "Line 2: url must be a string";
    unknown_url: "unknown_url.jsonl" => format!(
        "Line 2: url \"/v1/images/generations\" is not supported; allowed: {DEFAULT_URLS}"
    );
    missing_body: "missing_body.jsonl" => "Line 2: missing field \"body\"";
    body_not_an_object: "body_not_an_object.jsonl" => "Line 2: body must be a JSON object";
    body_null: "body_null.jsonl" => "Line 2: body must be a JSON object";
    missing_model: "missing_model.jsonl" => "Line 2: body.model is missing";
    model_not_a_string: "model_not_a_string.jsonl" => "Line 2: body.model must be a string";
    model_null: "model_null.jsonl" => "Line 2: body.model must be a string";
    model_empty: "model_empty.jsonl" => "Line 2: body.model is empty";
    stream_true: "stream_true.jsonl" =>
        "Line 2: body.stream is true; streamed responses are not supported in batches";
    bom_after_the_first_line: "bom_not_at_start.jsonl" =>
        "Line 2: each line must be a JSON object";
    empty_file: "empty.jsonl" => NO_REQUESTS;
    only_blank_lines: "only_blank_lines.jsonl" => NO_REQUESTS;
}

const ACCEPTED: &[&str] = &[
    "accepted_blank_lines.jsonl",
    "accepted_bom.jsonl",
    "accepted_crlf.jsonl",
];

#[test]
fn every_corpus_file_is_tested() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let tested: BTreeSet<String> = REJECTED
        .iter()
        .chain(ACCEPTED)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(on_disk, tested);
}

/// A valid request line with `content` as the user message.
fn line(custom_id: &str, content: &str) -> String {
    format!(
        r#"{{"custom_id":"{custom_id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"m","messages":[{{"role":"user","content":"{content}"}}]}}}}"#
    )
}

#[tokio::test]
async fn a_50_mb_line_is_refused_without_reading_it_all() {
    let big = "a".repeat(50 * 1024 * 1024);
    let text = format!(
        "{}\n{}\n{}\n",
        line("a", "hi"),
        line("b", &big),
        line("c", "hi")
    );
    let mut reader = Cursor::new(text.into_bytes());
    let db = Db::new().await;
    let err = db
        .upload(&mut reader, InputLimits::default())
        .await
        .expect_err("rejected");
    assert_eq!(
        err.to_string(),
        "Line 2: the line is longer than 10551296 bytes (the request body limit is 10485760 bytes)"
    );
    assert!(
        reader.position() < 12 * 1024 * 1024,
        "read {} bytes: the parse must stop once the line is too long",
        reader.position()
    );
    db.assert_nothing_stored().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let content = "a".repeat(10 * 1024 * 1024);
    let text = line("a", &content);
    let body_bytes = text
        .find("\"body\":")
        .map(|at| text.len() - at - 7 - 1)
        .unwrap();
    let expected = format!("Line 1: body is {body_bytes} bytes; the limit is 10485760 bytes");
    assert_rejected(text.as_bytes(), InputLimits::default(), &expected).await;
}

#[tokio::test]
async fn more_lines_than_the_limit_are_refused() {
    let text = ["a", "b", "c"].map(|id| line(id, "hi")).join("\n");
    let limits = InputLimits {
        max_lines: Some(2),
        ..InputLimits::default()
    };
    let expected = "Line 3: the file has more than 2 requests, the limit";
    assert_rejected(text.as_bytes(), limits, expected).await;
}

#[tokio::test]
async fn a_bad_line_after_thousands_of_staged_lines_leaves_nothing() {
    // Uploads insert in chunks of 2,000 templates: these are staged before the bad line.
    let mut text: String = (0..5_000)
        .map(|i| line(&format!("r{i}"), "hi") + "\n")
        .collect();
    text.push_str("{\"custom_id\":\"bad\"}\n");
    let expected = "Line 5001: missing field \"method\"";
    assert_rejected(text.as_bytes(), InputLimits::default(), expected).await;
}

#[tokio::test]
async fn a_bad_last_line_without_a_newline_is_named() {
    let text = format!("{}\n{}", line("a", "hi"), line("a", "again"));
    let expected = "Line 2: custom_id \"a\" is already used on an earlier line; each custom_id must be unique in the file";
    assert_rejected(text.as_bytes(), InputLimits::default(), expected).await;
}

/// Uploads an accepted corpus file and returns its templates as (line, custom_id).
async fn accepted(name: &str) -> Vec<(u64, String)> {
    let db = Db::new().await;
    let file = db
        .upload(&corpus(name)[..], InputLimits::default())
        .await
        .unwrap_or_else(|e| panic!("{name} is accepted, got {e}"));
    let templates = db.templates(&file).await;
    assert_eq!(file.line_count, templates.len() as u64, "{name}");
    for t in &templates {
        assert_eq!(t.url, "/v1/chat/completions", "{name}: {t:?}");
        assert_eq!(t.model, "gpt-4o-mini", "{name}: {t:?}");
        assert_eq!(
            t.body, r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
            "{name}: the body is stored exactly, without BOM or CR"
        );
    }
    templates
        .into_iter()
        .map(|t| (t.line, t.custom_id))
        .collect()
}

fn lines(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
    pairs.iter().map(|(l, id)| (*l, id.to_string())).collect()
}

#[tokio::test]
async fn a_utf8_bom_is_accepted() {
    let got = accepted("accepted_bom.jsonl").await;
    assert_eq!(got, lines(&[(1, "req-1"), (2, "req-2")]));
}

#[tokio::test]
async fn crlf_line_endings_are_accepted() {
    let got = accepted("accepted_crlf.jsonl").await;
    assert_eq!(got, lines(&[(1, "req-1"), (2, "req-2"), (3, "req-3")]));
}

#[tokio::test]
async fn blank_lines_between_requests_are_skipped_and_counted() {
    // Line 1 is empty, 3 and 4 blank, 5 ends in CRLF, 6 is a tab, 7 has no newline.
    let got = accepted("accepted_blank_lines.jsonl").await;
    assert_eq!(got, lines(&[(2, "req-1"), (5, "req-2"), (7, "req-3")]));
}
