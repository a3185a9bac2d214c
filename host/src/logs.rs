//! One log throttle for every flood-prone warning (bad stream messages, a writer falling behind,
//! a failing database): at most one line per kind per interval, each reporting how many lines
//! were held back since the previous one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LogThrottle {
    every: Duration,
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        Self { every, last: Mutex::new(HashMap::new()) }
    }

    /// `Some(lines held back since the last one)` when a line of `kind` may be logged now.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get_mut(kind) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                *at = now;
                Some(std::mem::take(held))
            }
            None => {
                last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_with_a_count_of_the_rest() {
        let t = LogThrottle::new(Duration::from_millis(50));
        assert_eq!(t.allow("busy"), Some(0));
        assert_eq!(t.allow("busy"), None);
        assert_eq!(t.allow("busy"), None);
        assert_eq!(t.allow("full"), Some(0), "kinds are throttled separately");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.allow("busy"), Some(2));
    }
}
