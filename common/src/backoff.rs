//! Doubling delays up to a cap.

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

/// Delays for polling and retrying: `min`, then doubling up to `max`, and back to `min`
/// on [`reset`](Backoff::reset). [`Backoff::new`] adds up to 25 % random jitter to each
/// delay (many boxes that lost the same server do not come back in lock-step);
/// [`Backoff::exact`] does not (one process polling, and tests that count polls).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
    jitter: bool,
}

impl Backoff {
    /// Delays from `min`, doubling up to `max`, each with up to 25 % jitter added.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, cur: min, jitter: true }
    }

    /// Delays from `min`, doubling up to `max`, exactly.
    pub fn exact(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, cur: min, jitter: false }
    }

    /// The next delay (the first is `min`); the one after is twice as long, at most `max`.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.cur;
        self.cur = self.cur.saturating_mul(2).min(self.max.max(self.min));
        let quarter = base.as_millis() as u64 / 4;
        if !self.jitter || quarter == 0 {
            return base;
        }
        // Randomness without a dependency: the standard hasher's per-instance random keys.
        let r = RandomState::new().hash_one(Instant::now());
        base + Duration::from_millis(r % quarter)
    }

    /// Starts again from `min`.
    pub fn reset(&mut self) {
        self.cur = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_delays_double_up_to_the_cap() {
        let mut b = Backoff::exact(Duration::from_secs(1), Duration::from_secs(15));
        let d: Vec<u64> = (0..6).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 15, 15]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn jittered_delays_stay_within_a_quarter_above() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert!((100..125).contains(&d[0]) && (200..250).contains(&d[1]), "{d:?}");
        assert!((350..438).contains(&d[2]) && (350..438).contains(&d[3]), "{d:?}");
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(125));
        // Jitter really varies: 50 draws from a 1 s delay are not all alike.
        let draws: std::collections::HashSet<Duration> =
            (0..50).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay()).collect();
        assert!(draws.len() > 1, "{draws:?}");
    }

    #[test]
    fn a_huge_cap_does_not_overflow() {
        let mut b = Backoff::exact(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            b.next_delay();
        }
    }
}
