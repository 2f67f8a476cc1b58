//! Owns the request counters: the serializable [`Stats`] snapshot and the
//! lock-light recorder the handlers update on every request.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

/// Snapshot of everything the mock has counted since start (or the last reset).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Every request received on the three OpenAI endpoints, including rejected ones.
    pub requests_total: u64,
    /// Well-formed 200 responses (normal successes, `HugeBody`, `SlowFirstByte`).
    /// `Hang`, `Reset`, `EndlessBody`, `InvalidJson` and 2xx `Status` faults are
    /// not counted in any `responses_*` field.
    pub responses_ok: u64,
    /// 500s from `error_rate`, plus 4xx/5xx `Status(code)` faults other than 429.
    pub responses_error: u64,
    /// 429s from `rate_limit_rate`, plus `Status(429)` faults.
    pub responses_rate_limited: u64,
    /// Keyed by the request body's `model`; only requests that parsed are counted.
    pub per_model: BTreeMap<String, ModelStats>,
    /// Requests seen per `X-Fusillade-Custom-Id` header value.
    pub per_custom_id: BTreeMap<String, u64>,
}

/// Per-model counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelStats {
    pub requests: u64,
    pub in_flight: u64,
    pub peak_in_flight: u64,
}

/// Which response counter a finished request bumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Error,
    RateLimited,
}

#[derive(Default)]
struct ModelCounters {
    requests: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

/// Live counters. Hot paths only take a read lock (per-model lookup) or a
/// briefly held mutex (custom ids, only when the header is present); nothing
/// is held across an await.
#[derive(Default)]
pub(crate) struct Recorder {
    requests_total: AtomicU64,
    responses_ok: AtomicU64,
    responses_error: AtomicU64,
    responses_rate_limited: AtomicU64,
    models: RwLock<HashMap<String, Arc<ModelCounters>>>,
    custom_ids: Mutex<HashMap<String, u64>>,
}

impl Recorder {
    pub(crate) fn record_request(&self, custom_id: Option<&str>) {
        self.requests_total.fetch_add(1, Relaxed);
        if let Some(id) = custom_id {
            let mut ids = lock(&self.custom_ids);
            match ids.get_mut(id) {
                Some(count) => *count += 1,
                None => {
                    ids.insert(id.to_owned(), 1);
                }
            }
        }
    }

    pub(crate) fn record_outcome(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.responses_ok,
            Outcome::Error => &self.responses_error,
            Outcome::RateLimited => &self.responses_rate_limited,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a request for `model` as started; it stays in flight until the
    /// guard drops, which also covers handler futures dropped on disconnect.
    pub(crate) fn start(&self, model: &str) -> InFlightGuard {
        let counters = self.model_counters(model);
        counters.requests.fetch_add(1, Relaxed);
        let now = counters.in_flight.fetch_add(1, Relaxed) + 1;
        counters.peak_in_flight.fetch_max(now, Relaxed);
        InFlightGuard { counters }
    }

    fn model_counters(&self, model: &str) -> Arc<ModelCounters> {
        if let Some(counters) = read(&self.models).get(model) {
            return Arc::clone(counters);
        }
        let mut models = write(&self.models);
        Arc::clone(models.entry(model.to_owned()).or_default())
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let per_model = read(&self.models)
            .iter()
            .map(|(model, c)| {
                let stats = ModelStats {
                    requests: c.requests.load(Relaxed),
                    in_flight: c.in_flight.load(Relaxed),
                    peak_in_flight: c.peak_in_flight.load(Relaxed),
                };
                (model.clone(), stats)
            })
            .collect();
        let per_custom_id = lock(&self.custom_ids)
            .iter()
            .map(|(id, count)| (id.clone(), *count))
            .collect();
        Stats {
            requests_total: self.requests_total.load(Relaxed),
            responses_ok: self.responses_ok.load(Relaxed),
            responses_error: self.responses_error.load(Relaxed),
            responses_rate_limited: self.responses_rate_limited.load(Relaxed),
            per_model,
            per_custom_id,
        }
    }

    /// Zeroes every counter. Requests still in flight keep being counted as
    /// in flight (zeroing that gauge would make their guards underflow it), so
    /// their models survive the reset with `requests: 0`.
    pub(crate) fn reset(&self) {
        self.requests_total.store(0, Relaxed);
        self.responses_ok.store(0, Relaxed);
        self.responses_error.store(0, Relaxed);
        self.responses_rate_limited.store(0, Relaxed);
        write(&self.models).retain(|_, c| {
            c.requests.store(0, Relaxed);
            let in_flight = c.in_flight.load(Relaxed);
            c.peak_in_flight.store(in_flight, Relaxed);
            in_flight > 0
        });
        lock(&self.custom_ids).clear();
    }
}

/// Keeps one request counted as in flight for its model.
pub(crate) struct InFlightGuard {
    counters: Arc<ModelCounters>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.counters.in_flight.fetch_sub(1, Relaxed);
    }
}

// Counters stay meaningful even if a thread panicked mid-update, so poisoning
// is ignored rather than propagated into every later request.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_track_in_flight_and_peak() {
        let recorder = Recorder::default();
        let a = recorder.start("m");
        let b = recorder.start("m");
        drop(a);
        let snapshot = recorder.snapshot().per_model["m"].clone();
        assert_eq!(snapshot.requests, 2);
        assert_eq!(snapshot.in_flight, 1);
        assert_eq!(snapshot.peak_in_flight, 2);
        drop(b);
        assert_eq!(recorder.snapshot().per_model["m"].in_flight, 0);
    }

    #[test]
    fn reset_keeps_in_flight_requests_consistent() {
        let recorder = Recorder::default();
        recorder.record_request(Some("job-1"));
        let live = recorder.start("busy");
        drop(recorder.start("idle"));
        recorder.reset();
        let snapshot = recorder.snapshot();
        assert_eq!(snapshot.requests_total, 0);
        assert!(snapshot.per_custom_id.is_empty());
        assert_eq!(snapshot.per_model.len(), 1);
        assert_eq!(snapshot.per_model["busy"].in_flight, 1);
        drop(live);
        assert_eq!(recorder.snapshot().per_model["busy"].in_flight, 0);
    }
}
