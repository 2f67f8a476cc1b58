//! [`serve`]: the API on an already bound listener until `shutdown` resolves.

use std::future::Future;

use tokio::net::TcpListener;

use crate::router::router;
use crate::state::AppState;

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting connections
/// and returns once the requests in progress have finished. The listener comes in bound, so
/// callers (and tests, with port 0) choose the address.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
