//! Child processes under test: waiting for one to exit within a deadline, and reading its
//! pipes to their end so that it never blocks on a full one.

use std::io::Read;
use std::process::{Child, ExitStatus, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often [`wait_for_exit`] asks whether the child has ended: short enough to add little to
/// a test, and `try_wait` is one cheap system call.
const POLL: Duration = Duration::from_millis(20);

/// Waits for `child` to exit, polling `try_wait`. Past `timeout` it kills (and reaps) the child
/// and panics with "timed out after … waiting for {what}", so a hung process fails its test
/// instead of hanging the suite.
pub fn wait_for_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let polled = child.try_wait();
        let status = polled.unwrap_or_else(|e| panic!("waiting for {what}: {e}"));
        if let Some(status) = status {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {timeout:?} waiting for {what} (killed it)");
        }
        std::thread::sleep(POLL); // poll interval; the loop is bounded by the deadline
    }
}

/// Like [`std::process::Child::wait_with_output`], but bounded by `timeout` as in
/// [`wait_for_exit`]. The pipes the child was spawned with are read on threads while it runs,
/// since a child that fills a pipe nobody reads would never exit.
pub fn output_within(mut child: Child, timeout: Duration, what: &str) -> Output {
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let status = wait_for_exit(&mut child, timeout, what);
    let collect = |pipe: Option<JoinHandle<Vec<u8>>>| {
        pipe.map(|p| p.join().expect("pipe reader panicked"))
            .unwrap_or_default()
    };
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

/// Reads `pipe` to its end on a thread and returns what it read when joined.
pub fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).expect("read a child's pipe");
        bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    #[test]
    fn a_child_that_exits_in_time_gives_its_status_and_output() {
        let child = Command::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let out = output_within(child, Duration::from_secs(30), "sh to exit");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn a_child_past_its_deadline_is_killed_and_named() {
        let mut child = Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for_exit(&mut child, Duration::from_millis(100), "a sleeping child")
        }));
        let message = *waited.expect_err("timed out").downcast::<String>().unwrap();
        assert!(
            message.contains("waiting for a sleeping child"),
            "{message}"
        );
        // Reaped as well as killed: the process is gone, not a zombie.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
