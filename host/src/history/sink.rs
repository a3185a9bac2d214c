//! The history's [`CallEventSink`]: called on each call's own task, it hands events to the writer
//! thread through a bounded channel and never waits. A full or closed channel drops the event and
//! counts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::SystemTime;

use super::writer::Msg;
use crate::call::events::{unix_ms, CallEvent, CallEventSink};
use crate::metrics::Metrics;

/// At most one warning about dropped events per this many milliseconds.
const WARN_EVERY_MS: u64 = 10_000;

pub struct HistorySink {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
    /// Unix ms of the last warning (0 = never); a compare-exchange keeps it to one per interval
    /// without a lock.
    last_warn_ms: AtomicU64,
}

impl HistorySink {
    pub(super) fn new(tx: SyncSender<Msg>, metrics: Arc<Metrics>) -> Self {
        Self { tx, metrics, last_warn_ms: AtomicU64::new(0) }
    }

    fn dropped(&self, call_sid: &str, why: &'static str) {
        self.metrics.history_dropped_events.inc();
        let now = unix_ms(SystemTime::now());
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY_MS
            && self.last_warn_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(call_sid, why, "call history event dropped; the call is unaffected");
        }
    }
}

impl CallEventSink for HistorySink {
    fn record(&self, call_sid: &str, event: &CallEvent) {
        // Live-view events: not part of the record.
        if matches!(event, CallEvent::Vad { .. } | CallEvent::Interim { .. }) {
            return;
        }
        match self.tx.try_send(Msg::Event(call_sid.into(), event.clone())) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => self.dropped(call_sid, "writer behind"),
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => self.dropped(call_sid, "history closed"),
        }
    }
}
