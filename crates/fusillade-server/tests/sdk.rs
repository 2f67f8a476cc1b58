//! Runs the Python SDK compatibility suite (`tests/sdk`, pytest with the official `openai`
//! package) against the real `fusillade` binary, as part of `cargo test --workspace`.
//!
//! The interpreter comes from `FUSILLADE_SDK_PYTHON` (a venv with `tests/sdk/requirements.txt`
//! installed; `.ci/run` makes one). Without it the test prints a loud SKIPPED line, unless
//! `FUSILLADE_REQUIRE_SDK=1`, which makes that a failure.
//!
//! The binary is built by `common::binary::build_binary`, with this test's own profile.

mod common;

use std::path::Path;
use std::process::Command;

use common::binary::{build_binary, venv_python};

#[test]
fn openai_python_sdk_drives_fusillade_serve() {
    let Some(python) = venv_python("SDK", "sdk") else {
        return;
    };
    let binary = build_binary();
    let status = Command::new(&python)
        .args(["-m", "pytest", "tests/sdk", "-q", "-p", "no:cacheprovider"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FUSILLADE_BIN", &binary)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&python).display()));
    assert!(
        status.success(),
        "the SDK suite failed (pytest output above)"
    );
}
