//! Owns the server lifecycle: binding, serving with graceful shutdown, and the
//! [`MockServer`] handle tests use to inspect and reconfigure a running mock.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::MockConfig;
use crate::handlers;
use crate::state::{App, Shared, ShutdownSignal};
use crate::stats::Stats;

/// After shutdown is requested, in-flight responses get this long to finish.
/// A client that stops reading an endless body would otherwise block forever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Handle to a running mock; dropping it does NOT stop the server; call
/// [`MockServer::shutdown`].
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl MockServer {
    /// Binds `addr` (use "127.0.0.1:0" in tests) and serves in a spawned tokio task.
    pub async fn start(addr: SocketAddr, config: MockConfig) -> io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let (stop, stopped) = oneshot::channel::<()>();
        let signal = async move {
            // A dropped handle must leave the server running, so only an
            // explicit `shutdown()` counts.
            if stopped.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let task = tokio::spawn(serve_shared(listener, Arc::clone(&shared), signal));
        Ok(MockServer {
            addr,
            shared,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "http://127.0.0.1:PORT" (no trailing slash, no /v1). A wildcard bind
    /// address is reported as the matching loopback address.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Snapshot of the counters (same data as GET /stats).
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// Change behaviour at runtime; requests already past parsing keep the old config.
    pub fn set_config(&self, config: MockConfig) {
        self.shared.set_config(config);
    }

    /// Graceful stop; waits for the server task to end. Hanging and endless
    /// responses are aborted so they do not hold the shutdown up.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(%err, "mock upstream stopped with an error"),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => tracing::warn!(%err, "mock upstream task was cancelled"),
        }
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Runs until `shutdown` resolves (used by the `fusillade mock-upstream` CLI command).
pub async fn serve(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_shared(listener, Arc::new(Shared::new(config)), shutdown).await
}

async fn serve_shared(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "mock upstream listening");
    }
    let (trigger, signal) = ShutdownSignal::new();
    let app = Arc::new(App {
        shared,
        shutdown: signal.clone(),
    });
    // Small responses would otherwise wait on Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    let graceful = async move {
        shutdown.await;
        trigger.fire();
    };
    let server = axum::serve(listener, handlers::router(app))
        .with_graceful_shutdown(graceful)
        .into_future();
    let drain_deadline = async move {
        signal.wait().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = drain_deadline => {
            tracing::warn!("mock upstream gave up waiting for in-flight responses");
            Ok(())
        }
    };
    tracing::info!("mock upstream stopped");
    result
}
