//! Exponential backoff with jitter, reset after a healthy period.

use std::time::Duration;

/// Delays that double from `initial` to `max`, each randomized by ±20% so
/// that many clients restarting together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// The watcher default: about 0.8 s doubling to 30 s.
    pub fn watcher() -> Self {
        Self::new(Duration::from_millis(800), Duration::from_secs(30))
    }

    /// Reconnecting to a server that could not be reached (down or
    /// restarting): about 0.4 s doubling to 1.6 s, so a client is back
    /// within two seconds of the server.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(400), Duration::from_millis(1600))
    }

    /// Backoff from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The next delay (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(base)
    }

    /// Back to the initial delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// `d` randomized by ±20%, from the clock's low bits (no RNG dependency;
/// good enough to spread retries).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + f64::from(nanos % 1000) / 1000.0 * 0.4;
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(4));
        let d: Vec<f64> = (0..4).map(|_| b.next_delay().as_secs_f64()).collect();
        assert!((0.8..=1.2).contains(&d[0]), "{d:?}");
        assert!((1.6..=2.4).contains(&d[1]), "{d:?}");
        assert!((3.2..=4.8).contains(&d[2]), "{d:?}");
        assert!((3.2..=4.8).contains(&d[3]), "capped: {d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }

    #[test]
    fn reconnecting_never_waits_two_seconds() {
        let mut b = Backoff::reconnect();
        for _ in 0..20 {
            assert!(b.next_delay() < Duration::from_secs(2));
        }
    }
}
