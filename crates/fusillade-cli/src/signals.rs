//! Shutdown signals: the first SIGINT or SIGTERM asks for a graceful stop; a second one exits
//! at once. Exiting at once loses no accepted work: every state change is a committed
//! transaction, and leases of an exited process are rescued when the next one starts.

/// Resolves on the first SIGINT or SIGTERM, and arms the second-signal exit.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("Second signal: exiting now. Unfinished requests resume on the next start.");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
