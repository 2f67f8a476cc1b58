//! Support for kill tests: a replayable random kill schedule, and the check that no request
//! that had finished before a kill was sent again afterwards.

use std::collections::BTreeMap;

/// A small deterministic generator (xorshift64), so that a failing kill schedule can be
/// replayed from the seed it prints.
#[derive(Debug, Clone)]
pub struct KillSchedule(u64);

impl KillSchedule {
    /// Seeded from `FUSILLADE_TEST_SEED`, or else from the clock; prints the seed and how to
    /// replay it, since a failure may depend on the exact moments of the kills.
    pub fn from_env() -> Self {
        let seed = std::env::var("FUSILLADE_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                // xorshift stays at zero forever from a zero state: force the low bit.
                now.map_or(7, |d| d.as_nanos() as u64) | 1
            });
        eprintln!("kill schedule seed: {seed} (replay with FUSILLADE_TEST_SEED={seed})");
        Self(seed)
    }

    /// The next number of the schedule.
    pub fn next_u64(&mut self) -> u64 {
        let state = &mut self.0;
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }
}

/// For each request seen finished, how many times it had been sent by then. A request in
/// flight at a kill may go out again, but once finished it must never be sent again.
#[derive(Debug, Default, Clone)]
pub struct FinishedSends(BTreeMap<String, u64>);

impl FinishedSends {
    /// Requests that finished before a kill, each sent exactly once by then (no retries or
    /// earlier kills could have sent one twice).
    pub fn each_sent_once(finished: impl IntoIterator<Item = String>) -> Self {
        Self(finished.into_iter().map(|id| (id, 1)).collect())
    }

    /// Notes, for each of `finished` not seen finished before, its count in `sent` (sends per
    /// custom_id so far). Read the finished ones before `sent`: a request sent and finished
    /// between the two reads then carries all its sends instead of looking resent later.
    pub fn record(
        &mut self,
        finished: impl IntoIterator<Item = String>,
        sent: &BTreeMap<String, u64>,
    ) {
        for id in finished {
            let n = sent.get(&id).copied().unwrap_or(0);
            self.0.entry(id).or_insert(n);
        }
    }

    /// How many requests have been seen finished.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none has been seen finished yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Fails naming the first request whose count in `sent` (sends per custom_id at the end)
    /// differs from its count when it was seen finished.
    pub fn assert_none_sent_again(&self, sent: &BTreeMap<String, u64>) {
        for (id, when_finished) in &self.0 {
            assert_eq!(
                sent.get(id),
                Some(when_finished),
                "{id} had finished before a kill (sent {when_finished} times by then) \
                 and was sent again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sends(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|&(id, n)| (id.to_string(), n)).collect()
    }

    #[test]
    fn the_count_when_first_seen_finished_is_kept() {
        let mut finished = FinishedSends::default();
        finished.record(["a".to_string()], &sends(&[("a", 2)]));
        finished.record(["a".to_string()], &sends(&[("a", 3)]));
        let resent = std::panic::catch_unwind(|| {
            finished.assert_none_sent_again(&sends(&[("a", 3)]));
        });
        assert!(
            resent.is_err(),
            "a third send after finishing went unnoticed"
        );
        finished.assert_none_sent_again(&sends(&[("a", 2)]));
    }

    #[test]
    fn each_sent_once_fails_on_a_second_send() {
        let finished = FinishedSends::each_sent_once(["a".to_string()]);
        finished.assert_none_sent_again(&sends(&[("a", 1), ("b", 5)]));
        let resent = std::panic::catch_unwind(|| {
            finished.assert_none_sent_again(&sends(&[("a", 2)]));
        });
        assert!(resent.is_err());
    }

    #[test]
    fn a_seed_replays_the_same_schedule() {
        let (mut a, mut b) = (KillSchedule(42), KillSchedule(42));
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert!(first.iter().all(|&n| n != 0));
    }
}
