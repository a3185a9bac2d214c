//! Process metrics in Prometheus text format (`GET /metrics`).

mod process;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label set of one `(name, value)` pair with static strings: cheap to build on hot paths.
pub type Label = Vec<(&'static str, &'static str)>;

/// Every metric the host exposes, registered once at start-up.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The standard `process_*` metrics, which by convention carry no prefix.
    process: Registry,
    pub calls_active: Gauge,
    pub calls_total: Family<Label, Counter>,
    pub webhooks_rejected: Family<Label, Counter>,
    pub streams_rejected: Family<Label, Counter>,
    pub stream_messages_rejected: Family<Label, Counter>,
    pub caller_frames_dropped: Counter,
    pub twilio_rest_errors: Family<Label, Counter>,
    /// Provider failures, labelled by provider and error kind.
    pub provider_errors: Family<Label, Counter>,
    /// End of caller speech → final transcript in hand.
    pub stt_final_latency: Histogram,
    /// LLM request → first token.
    pub llm_first_token: Histogram,
    /// Sentence sent to TTS → first audio byte.
    pub tts_first_byte: Histogram,
    /// End of caller speech → first bot audio frame sent to the caller.
    pub voice_to_voice: Histogram,
    pub barge_ins: Counter,
    /// Replies prepared during the VAD stop window, by result (`used`, `discarded`).
    pub speculative_replies: Family<Label, Counter>,
    /// Persona plugin loads, by result (`ok`, `rejected`, `removed`).
    pub plugin_reloads: Family<Label, Counter>,
    /// Persona plugin faults (the call went on with the built-in behaviour), by kind.
    pub plugin_faults: Family<Label, Counter>,
    /// Call history writes that failed, by kind (`busy`, `full`, `io`, `open`, `other`).
    pub history_errors: Family<Label, Counter>,
    /// Call events the history never stored (writer behind, or a write given up on).
    pub history_dropped_events: Counter,
    /// Call events stored in the history.
    pub history_events_written: Counter,
    /// Calls deleted by the retention policy (rows and files).
    pub history_pruned_calls: Counter,
}

/// Buckets (seconds) for latencies from a few ms to several seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0].into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        registry.register_collector(Box::new(process::RuntimeCollector));
        let mut process = Registry::default();
        process.register_collector(Box::new(process::ProcessCollector));
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
        let provider_errors = Family::<Label, Counter>::default();
        registry.register("provider_errors", "STT/LLM/TTS failures, by provider and kind", provider_errors.clone());
        let histogram = |registry: &mut Registry, name: &str, help: &str| {
            let h = Histogram::new(latency_buckets());
            registry.register_with_unit(name, help, prometheus_client::registry::Unit::Seconds, h.clone());
            h
        };
        let stt_final_latency =
            histogram(&mut registry, "stt_final_latency", "End of caller speech to final transcript");
        let llm_first_token = histogram(&mut registry, "llm_first_token", "LLM request to first token");
        let tts_first_byte = histogram(&mut registry, "tts_first_byte", "Sentence sent to TTS to first audio");
        let voice_to_voice =
            histogram(&mut registry, "voice_to_voice", "End of caller speech to first bot audio frame sent");
        let barge_ins = Counter::default();
        registry.register("barge_ins", "Bot replies interrupted by the caller", barge_ins.clone());
        let speculative_replies = Family::<Label, Counter>::default();
        registry.register(
            "speculative_replies",
            "Replies prepared while the caller paused, by result",
            speculative_replies.clone(),
        );
        let plugin_reloads = Family::<Label, Counter>::default();
        registry.register("plugin_reloads", "Persona plugin loads, by result", plugin_reloads.clone());
        let plugin_faults = Family::<Label, Counter>::default();
        registry.register("plugin_faults", "Persona plugin faults, by kind", plugin_faults.clone());
        let history_errors = Family::<Label, Counter>::default();
        registry.register("history_errors", "Call history write failures, by kind", history_errors.clone());
        let history_dropped_events = Counter::default();
        registry.register(
            "history_dropped_events",
            "Call events the history could not store",
            history_dropped_events.clone(),
        );
        let history_events_written = Counter::default();
        registry.register(
            "history_events_written",
            "Call events stored in the history",
            history_events_written.clone(),
        );
        let history_pruned_calls = Counter::default();
        registry.register(
            "history_pruned_calls",
            "Calls deleted from the history by HISTORY_RETENTION_DAYS, with their files",
            history_pruned_calls.clone(),
        );
        Self {
            registry,
            process,
            provider_errors,
            stt_final_latency,
            llm_first_token,
            tts_first_byte,
            voice_to_voice,
            barge_ins,
            speculative_replies,
            plugin_reloads,
            plugin_faults,
            history_errors,
            history_dropped_events,
            history_events_written,
            history_pruned_calls,
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

    /// Increments `family{provider=…,kind=…}`.
    pub fn provider_error(&self, provider: &'static str, kind: &'static str) {
        self.provider_errors.get_or_create(&vec![("provider", provider), ("kind", kind)]).inc();
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_page_has_ours_the_standard_process_metrics_and_one_eof() {
        let m = Metrics::new();
        m.calls_active.set(2);
        let page = m.render();
        assert!(page.contains("switchboard_calls_active 2"), "{page}");
        assert!(page.contains("# TYPE switchboard_runtime_alive_tasks gauge"), "{page}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_threads",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            let value = page
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
                .unwrap_or_else(|| panic!("{name} missing: {page}"));
            // A fresh test process may not have used a whole clock tick of CPU yet.
            assert!(value > 0.0 || name == "process_cpu_seconds_total", "{name} = {value}");
        }
        assert!(!page.contains("switchboard_process_"), "process metrics carry no prefix");
        assert_eq!(page.matches("# EOF").count(), 1);
        assert!(page.ends_with("# EOF\n"), "{page}");
    }
}
