//! Runs the Python SDK compatibility suite (`tests/sdk`, pytest with the official `openai`
//! package) against the real `fusillade` binary, as part of `cargo test --workspace`.
//!
//! The interpreter comes from `FUSILLADE_SDK_PYTHON` (a venv with `tests/sdk/requirements.txt`
//! installed; `.ci/run` makes one). Without it the test prints a loud SKIPPED line, unless
//! `FUSILLADE_REQUIRE_SDK=1`, which makes that a failure.
//!
//! The binary belongs to another crate, so Cargo gives this test no path to it. The test builds
//! it with the same Cargo, target directory and profile that built this test: a no-op when it
//! is up to date, and never a stale binary left from an earlier build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `fusillade` beside this test's own executable and returns its path.
fn build_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/sdk-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target dir");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let mut build = Command::new(env!("CARGO"));
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "fusillade-cli",
            "--bin",
            "fusillade",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo build");
    assert!(status.success(), "building the fusillade binary failed");
    let binary = profile_dir.join(format!("fusillade{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} missing after the build",
        binary.display()
    );
    binary
}

#[test]
fn openai_python_sdk_drives_fusillade_serve() {
    let Some(python) = std::env::var_os("FUSILLADE_SDK_PYTHON") else {
        if std::env::var("FUSILLADE_REQUIRE_SDK").is_ok_and(|v| v == "1") {
            panic!("FUSILLADE_REQUIRE_SDK=1 but FUSILLADE_SDK_PYTHON is not set");
        }
        eprintln!(
            "SKIPPED (no SDK venv: set FUSILLADE_SDK_PYTHON to a Python with \
             crates/fusillade-server/tests/sdk/requirements.txt installed; .ci/run does)"
        );
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
