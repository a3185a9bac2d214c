//! Exponential back-off for reconnecting a provider's stream: the attempts made, the time since
//! the connection was lost, and the wait before the next try (doubling up to a cap). Both
//! Deepgram clients reconnect with it; what they do while waiting is their own.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    started: Instant,
    attempts: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff { next: initial, max, started: Instant::now(), attempts: 0 }
    }

    /// Counts an attempt; returns its number (from 1).
    pub fn attempt(&mut self) -> u32 {
        self.attempts += 1;
        self.attempts
    }

    /// Time since the connection was lost.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The wait before the next attempt; each call doubles the following one, up to the cap.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_counts_attempts() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u64> = (0..4).map(|_| b.delay().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        assert_eq!((b.attempt(), b.attempt()), (1, 2));
    }
}
