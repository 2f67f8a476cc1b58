//! Schemathesis (`tests/schemathesis/requirements.txt`) fuzzes the real `fusillade serve` from
//! the server's own `/openapi.json`, with a tenant key, as part of `cargo test --workspace`:
//! no answer may be a 5xx, every answer must match the document (status codes, content types,
//! response schemas), and every error of a `/v1` operation must be exactly OpenAI's
//! `{"error":{"message","type","param","code"}}` (the check in `tests/schemathesis/hooks.py`).
//!
//! The interpreter comes from `FUSILLADE_SCHEMATHESIS_PYTHON` (a venv with the requirements
//! installed; `.ci/run` makes one). Without it the test prints a loud SKIPPED line, unless
//! `FUSILLADE_REQUIRE_SCHEMATHESIS=1`, which makes that a failure. The run is bounded by
//! `--max-examples` and a fixed seed (`FUSILLADE_SCHEMATHESIS_SEED` replays another), and
//! killed if it takes longer than [`DEADLINE`].

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{ServeProcess, venv_python};
use fusillade_testkit::wait_for_exit;

const KEY: &str = "sk-schemathesis-0123456789";
/// The whole run must end within this (the suite's budget is 3 minutes on 2 cores).
const DEADLINE: Duration = Duration::from_secs(170);

fn schemathesis_args(base: &str, seed: &str) -> Vec<String> {
    let checks = [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "openai_error_shape",
    ];
    [
        "-m",
        "schemathesis.cli",
        "run",
        &format!("{base}/openapi.json"),
        "--header",
        &format!("Authorization: Bearer {KEY}"),
        "--checks",
        &checks.join(","),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "50",
        "--seed",
        seed,
        "--workers",
        "2",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn schemathesis_finds_no_server_error_and_only_openai_shaped_errors() {
    let Some(python) = venv_python("SCHEMATHESIS", "schemathesis") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("api.db");
    let keys = format!("fuzz:{KEY}");
    let args = [
        "--database",
        database.to_str().unwrap(),
        "--upstream",
        "mock",
    ];
    let server = ServeProcess::start(&args, &[("FUSILLADE_API_KEYS", &keys)]);
    let seed = std::env::var("FUSILLADE_SCHEMATHESIS_SEED").unwrap_or_else(|_| "1".into());
    eprintln!("schemathesis seed {seed} (replay with FUSILLADE_SCHEMATHESIS_SEED)");
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let mut child = Command::new(&python)
        .args(schemathesis_args(&server.base, &seed))
        // Schemathesis writes its reports and caches in the working directory.
        .current_dir(dir.path())
        .env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&python).display()));
    let started = Instant::now();
    let passed = wait_for_exit(&mut child, DEADLINE, "schemathesis to finish").success();
    eprintln!("schemathesis took {:.1?}", started.elapsed());
    let output = server.stop();
    assert!(output.success, "serve exited cleanly");
    assert!(passed, "schemathesis found failures (its report is above)");
}
