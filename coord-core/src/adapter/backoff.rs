//! The one retry-delay policy of the adapters and recipes.

use std::time::Duration;

/// Exponential back-off: the first delay is `initial`, each next one doubles up to `max`;
/// optionally jittered (each delay drawn from `[d / 2, d]`) so that many clients retrying
/// the same thing spread out. [`Backoff::reset`] after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
}

impl Backoff {
    /// Delays from `initial` doubling up to `max`, without jitter.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial.min(max),
            jitter: false,
        }
    }

    /// Reconnecting or re-arming after a transient error: 50 ms doubling to 1 s.
    pub fn reconnect() -> Backoff {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// Between attempts of an optimistic transaction that lost a race: 1 ms doubling to
    /// 32 ms, jittered (the competitors retry too).
    pub fn contention() -> Backoff {
        Backoff::new(Duration::from_millis(1), Duration::from_millis(32)).jittered()
    }

    /// The same policy with jitter.
    pub fn jittered(mut self) -> Backoff {
        self.jitter = true;
        self
    }

    /// The next delay (and doubles the one after it).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter {
            super::jitter(d)
        } else {
            d
        }
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(50), ms(300));
        let seen: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(seen, [ms(50), ms(100), ms(200), ms(300), ms(300)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(50));
        let mut j = Backoff::new(ms(100), ms(100)).jittered();
        for _ in 0..100 {
            let d = j.next_delay();
            assert!(d >= ms(50) && d <= ms(100), "{d:?}");
        }
    }
}
