//! Process metrics in Prometheus text format (`GET /metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label set of one `(name, value)` pair with static strings: cheap to build on hot paths.
pub type Label = Vec<(&'static str, &'static str)>;

/// Every metric the host exposes, registered once at start-up.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub calls_active: Gauge,
    pub calls_total: Family<Label, Counter>,
    pub webhooks_rejected: Family<Label, Counter>,
    pub streams_rejected: Family<Label, Counter>,
    pub stream_messages_rejected: Family<Label, Counter>,
    pub caller_frames_dropped: Counter,
    pub twilio_rest_errors: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let calls_active = Gauge::default();
        registry.register("calls_active", "Calls with an open media stream", calls_active.clone());
        let calls_total = Family::<Label, Counter>::default();
        registry.register("calls", "Calls ended, by outcome", calls_total.clone());
        let webhooks_rejected = Family::<Label, Counter>::default();
        registry.register("webhooks_rejected", "Webhook requests refused, by reason", webhooks_rejected.clone());
        let streams_rejected = Family::<Label, Counter>::default();
        registry.register(
            "streams_rejected",
            "Media streams refused before start, by reason",
            streams_rejected.clone(),
        );
        let stream_messages_rejected = Family::<Label, Counter>::default();
        registry.register(
            "stream_messages_rejected",
            "Malformed or unexpected media stream messages, by kind",
            stream_messages_rejected.clone(),
        );
        let caller_frames_dropped = Counter::default();
        registry.register(
            "caller_frames_dropped",
            "Caller audio frames dropped because a session fell behind",
            caller_frames_dropped.clone(),
        );
        let twilio_rest_errors = Family::<Label, Counter>::default();
        registry.register(
            "twilio_rest_errors",
            "Failed Twilio REST requests, by operation",
            twilio_rest_errors.clone(),
        );
        Self {
            registry,
            calls_active,
            calls_total,
            webhooks_rejected,
            streams_rejected,
            stream_messages_rejected,
            caller_frames_dropped,
            twilio_rest_errors,
        }
    }

    /// Increments `family{key=value}`.
    pub fn inc(family: &Family<Label, Counter>, key: &'static str, value: &'static str) {
        family.get_or_create(&vec![(key, value)]).inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
