//! The history's [`CallEventSink`]: called on each call's own task, it hands events to the writer
//! thread through a bounded channel and never waits. A full or closed channel drops the event and
//! counts it.

use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;

use super::writer::Msg;
use crate::call::events::{CallEvent, CallEventSink};
use crate::logs::LogThrottle;
use crate::metrics::Metrics;

/// At most one warning about dropped events per this many milliseconds.
const WARN_EVERY_MS: u64 = 10_000;

pub struct HistorySink {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
    throttle: LogThrottle,
}

impl HistorySink {
    pub(super) fn new(tx: SyncSender<Msg>, metrics: Arc<Metrics>) -> Self {
        Self { tx, metrics, throttle: LogThrottle::new(Duration::from_millis(WARN_EVERY_MS)) }
    }

    fn dropped(&self, call_sid: &str, why: &'static str) {
        self.metrics.history_dropped_events.inc();
        if let Some(suppressed) = self.throttle.allow(why) {
            tracing::warn!(call_sid, why, suppressed, "call history event dropped; the call is unaffected");
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
