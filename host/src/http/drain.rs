//! Graceful drain: count calls in progress, refuse new ones once draining.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Tracks calls in progress and whether the server is draining.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    active: AtomicUsize,
    idle: Notify,
}

/// Held for the life of one call.
#[derive(Debug)]
pub struct CallGuard(Arc<Drain>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub fn begin(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Registers a new call, unless draining.
    pub fn enter(self: &Arc<Self>) -> Option<CallGuard> {
        if self.is_draining() {
            return None;
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        Some(CallGuard(self.clone()))
    }

    /// Waits until no call is active; false if `timeout` passed first.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }
}
