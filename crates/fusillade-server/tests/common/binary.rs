//! The real `fusillade` binary: built on demand, and `fusillade serve` run as a child process
//! on a port the kernel picks; and the Python venvs of the suites that drive it.
//!
//! The binary belongs to another crate, so Cargo gives these tests no path to it. It is built
//! with the same Cargo, target directory and profile that built the test: a no-op when it is up
//! to date, and never a stale binary left from an earlier build.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use fusillade_testkit::{drain, wait_for_exit};

/// How long a graceful stop may take: the HTTP drain (up to 30 s for downloads in progress),
/// then the daemon's drain of in-flight requests (up to 30 s), with room to spare.
const STOP_DEADLINE: Duration = Duration::from_secs(120);

/// Builds `fusillade` beside this test's own executable and returns its path.
pub fn build_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
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
    assert!(binary.exists(), "{} missing", binary.display());
    binary
}

/// The Python interpreter named by `FUSILLADE_<NAME>_PYTHON`, a venv with
/// `tests/<dir>/requirements.txt` installed (`.ci/run` makes one). Without it: `None` after a
/// loud SKIPPED line, or a failure when `FUSILLADE_REQUIRE_<NAME>=1` (as in CI).
pub fn venv_python(name: &str, dir: &str) -> Option<std::ffi::OsString> {
    let (variable, require) = (
        format!("FUSILLADE_{name}_PYTHON"),
        format!("FUSILLADE_REQUIRE_{name}"),
    );
    if let Some(python) = std::env::var_os(&variable) {
        return Some(python);
    }
    if std::env::var(&require).is_ok_and(|v| v == "1") {
        panic!("{require}=1 but {variable} is not set");
    }
    eprintln!(
        "SKIPPED (no venv: set {variable} to a Python with \
         crates/fusillade-server/tests/{dir}/requirements.txt installed; .ci/run does)"
    );
    None
}

/// A running `fusillade serve`. Its stderr is read on a thread until the process ends; the
/// process is killed if the value is dropped without [`ServeProcess::stop`].
pub struct ServeProcess {
    pub base: String,
    child: Child,
    stderr: Option<JoinHandle<Vec<u8>>>,
    stdout: Option<JoinHandle<Vec<u8>>>,
}

/// What the process wrote, once it has ended.
pub struct ServeOutput {
    pub stderr: Vec<u8>,
    pub stdout: Vec<u8>,
    pub success: bool,
}

impl ServeProcess {
    /// Starts `fusillade serve --listen 127.0.0.1:0` with `args` and `env`, and waits (up to
    /// 60 s) for the line that names the address it listens on.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(build_binary());
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("FUSILLADE_API_KEYS")
            .env_remove("FUSILLADE_API_KEY")
            .env_remove("OPENAI_API_KEY")
            .env_remove("FUSILLADE_DATABASE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn fusillade serve");
        let (address_tx, address_rx) = mpsc::channel();
        let stderr = read_stderr(child.stderr.take().unwrap(), address_tx);
        let stdout = drain(child.stdout.take().unwrap());
        let Ok(base) = address_rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let text = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
            panic!("fusillade serve did not say where it listens:\n{text}");
        };
        Self {
            base,
            child,
            stderr: Some(stderr),
            stdout: Some(stdout),
        }
    }

    /// Stops the server with SIGTERM (a graceful shutdown) and returns what it wrote.
    pub fn stop(mut self) -> ServeOutput {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let what = "fusillade serve to stop on SIGTERM";
        let success = wait_for_exit(&mut self.child, STOP_DEADLINE, what).success();
        ServeOutput {
            stderr: self.stderr.take().unwrap().join().unwrap(),
            stdout: self.stdout.take().unwrap().join().unwrap(),
            success,
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads stderr to its end (trace logs fill a pipe fast), sending the listen address as soon
/// as the "listening on http://ADDR" line appears.
fn read_stderr(
    stderr: impl Read + Send + 'static,
    address: mpsc::Sender<String>,
) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut all = Vec::new();
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).expect("read stderr") > 0 {
            let text = String::from_utf8_lossy(&line);
            if let Some(rest) = text.split("listening on ").nth(1) {
                let url = rest.split_whitespace().next().unwrap_or_default();
                let _ = address.send(url.to_string());
            }
            all.append(&mut line);
        }
        all
    })
}
