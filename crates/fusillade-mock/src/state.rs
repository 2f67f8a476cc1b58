//! Owns the state shared between the HTTP handlers and the [`crate::MockServer`]
//! handle: the swappable config with its error-injection draws, the counters,
//! and the shutdown signal long-running faults listen to.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::config::MockConfig;
use crate::stats::Recorder;

/// A config plus its own deterministic draw sequence; installing a new config
/// restarts the sequence, so a seeded config replays the same error pattern.
pub(crate) struct ActiveConfig {
    pub config: MockConfig,
    seed: u64,
    draws: AtomicU64,
}

impl ActiveConfig {
    fn new(config: MockConfig) -> Self {
        let seed = config.seed.unwrap_or_else(rand::random);
        ActiveConfig {
            config,
            seed,
            draws: AtomicU64::new(0),
        }
    }

    /// Next uniform number in [0, 1). A counter hashed with the seed gives a
    /// reproducible sequence without a lock around an RNG on the hot path.
    pub(crate) fn draw(&self) -> f64 {
        let n = self.draws.fetch_add(1, Relaxed);
        let bits = splitmix64(self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // The top 53 bits fill an f64 mantissa exactly.
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Everything a [`crate::MockServer`] handle shares with its server task.
pub(crate) struct Shared {
    config: RwLock<Arc<ActiveConfig>>,
    pub stats: Recorder,
    serial: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: MockConfig) -> Self {
        Shared {
            config: RwLock::new(Arc::new(ActiveConfig::new(config))),
            stats: Recorder::default(),
            // Random high bits keep ids unique across mock instances and restarts.
            serial: AtomicU64::new(u64::from(rand::random::<u32>()) << 32),
        }
    }

    pub(crate) fn config(&self) -> Arc<ActiveConfig> {
        let guard = self.config.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&guard)
    }

    pub(crate) fn set_config(&self, config: MockConfig) {
        let fresh = Arc::new(ActiveConfig::new(config));
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// A per-response number used for object ids and `x-request-id`.
    pub(crate) fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Relaxed)
    }
}

/// Router state: the shared state plus this server's shutdown signal.
pub(crate) struct App {
    pub shared: Arc<Shared>,
    pub shutdown: ShutdownSignal,
}

/// Fires the [`ShutdownSignal`]s of one server.
pub(crate) struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    pub(crate) fn fire(self) {
        self.0.send_replace(true);
    }
}

/// Lets hanging and endless responses end when the server stops, since
/// graceful shutdown would otherwise wait for them forever.
#[derive(Clone)]
pub(crate) struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    pub(crate) fn new() -> (ShutdownTrigger, ShutdownSignal) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), ShutdownSignal(rx))
    }

    /// A dropped trigger means the server is gone, which counts as shut down.
    pub(crate) fn is_triggered(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    pub(crate) async fn wait(mut self) {
        // An error means the trigger was dropped: the server is gone too.
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_draws_replay_after_set_config() {
        let config = MockConfig {
            seed: Some(7),
            ..MockConfig::default()
        };
        let shared = Shared::new(config.clone());
        let first: Vec<f64> = (0..5).map(|_| shared.config().draw()).collect();
        shared.set_config(config);
        let second: Vec<f64> = (0..5).map(|_| shared.config().draw()).collect();
        assert_eq!(first, second);
        assert!(first.iter().all(|d| (0.0..1.0).contains(d)));
    }

    #[test]
    fn draws_are_roughly_uniform() {
        let active = ActiveConfig::new(MockConfig::default());
        let below_quarter = (0..10_000).filter(|_| active.draw() < 0.25).count();
        assert!((2_000..3_000).contains(&below_quarter), "{below_quarter}");
    }
}
