//! What a simulated call measured, and the summary over many calls (printed as JSON).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::caller::SpeechSpan;

/// Error messages kept per call (the count keeps going).
const MAX_ERRORS_KEPT: usize = 20;
/// Mark records kept per call.
const MAX_MARKS_KEPT: usize = 10_000;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEnd {
    /// The simulated caller hung up (`stop` sent) as planned.
    Completed,
    /// The call was ended from outside (the REST API's `Status=completed`, a transfer) before the
    /// caller hung up; Twilio then sends `stop` and closes the stream.
    EndedByApi,
    /// The server closed the stream first.
    ServerClosed,
    /// The call never got going (webhook, TwiML or connect failed) or broke off with a transport error.
    Failed,
}

/// One caller utterance and how long the bot took to answer it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    pub utterance_end_ms: u64,
    /// From the end of the utterance to the first bot audio of a new talk spurt, if the bot
    /// answered before the caller's next utterance ended.
    pub latency_ms: Option<f64>,
}

/// One `mark` the bot sent and when it came back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MarkRecord {
    pub name: String,
    /// Call time (ms since `start`) when the bot's mark arrived.
    pub received_ms: f64,
    /// Call time when we echoed it.
    pub echoed_ms: Option<f64>,
    /// Echoed because of a `clear` rather than because its audio played.
    pub cleared: bool,
}

/// Everything one simulated call measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallReport {
    pub call_sid: String,
    pub stream_sid: Option<String>,
    pub outcome: CallEnd,
    /// HTTP status of the webhook answer.
    pub webhook_status: Option<u16>,
    /// The WebSocket URL dialled (after loopback routing).
    pub stream_url: Option<String>,
    pub custom_parameters: Vec<(String, String)>,
    /// From sending `start` to the first bot `media` message.
    pub first_audio_ms: Option<f64>,
    pub utterances: Vec<SpeechSpan>,
    pub turns: Vec<Turn>,
    /// Call times (ms) when a new bot talk spurt started arriving.
    pub bot_spurts_ms: Vec<f64>,
    pub clears: u32,
    pub marks_received: u32,
    pub marks_echoed: u32,
    pub marks: Vec<MarkRecord>,
    pub underruns: u32,
    pub underrun_ms: u64,
    pub bot_audio_bytes: u64,
    /// Bot audio actually played (cleared audio is not).
    pub bot_audio_played_ms: u64,
    pub media_frames_sent: u64,
    pub dtmf_sent: u32,
    /// How late our own ticks ran (generator health under load): worst and count over 10 ms.
    pub max_tick_lag_ms: f64,
    pub late_ticks: u64,
    pub duration_ms: f64,
    pub recording: Option<PathBuf>,
    pub error_count: u32,
    /// The first errors, in order (malformed bot messages, protocol oddities, failures).
    pub errors: Vec<String>,
}

impl CallReport {
    pub fn new(call_sid: &str) -> Self {
        Self {
            call_sid: call_sid.to_string(),
            stream_sid: None,
            outcome: CallEnd::Failed,
            webhook_status: None,
            stream_url: None,
            custom_parameters: Vec::new(),
            first_audio_ms: None,
            utterances: Vec::new(),
            turns: Vec::new(),
            bot_spurts_ms: Vec::new(),
            clears: 0,
            marks_received: 0,
            marks_echoed: 0,
            marks: Vec::new(),
            underruns: 0,
            underrun_ms: 0,
            bot_audio_bytes: 0,
            bot_audio_played_ms: 0,
            media_frames_sent: 0,
            dtmf_sent: 0,
            max_tick_lag_ms: 0.0,
            late_ticks: 0,
            duration_ms: 0.0,
            recording: None,
            error_count: 0,
            errors: Vec::new(),
        }
    }

    /// Counts an error, keeping the first few messages.
    pub fn note_error(&mut self, message: impl Into<String>) {
        self.error_count = self.error_count.saturating_add(1);
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(message.into());
        }
    }

    pub(crate) fn note_mark(&mut self, name: &str, received_ms: f64) {
        self.marks_received += 1;
        if self.marks.len() < MAX_MARKS_KEPT {
            self.marks.push(MarkRecord { name: name.to_string(), received_ms, echoed_ms: None, cleared: false });
        }
    }

    pub(crate) fn note_echo(&mut self, name: &str, at_ms: f64, cleared: bool) {
        self.marks_echoed += 1;
        if let Some(m) = self.marks.iter_mut().find(|m| m.echoed_ms.is_none() && m.name == name) {
            m.echoed_ms = Some(at_ms);
            m.cleared = cleared;
        }
    }

    /// Pairs each utterance end with the first bot spurt after it (and no later than the next
    /// utterance's end).
    pub(crate) fn compute_turns(&mut self) {
        let ends: Vec<u64> = self.utterances.iter().map(|u| u.end_ms).collect();
        self.turns = ends
            .iter()
            .enumerate()
            .map(|(i, &end)| {
                let limit = ends.get(i + 1).map_or(f64::INFINITY, |&next| next as f64);
                let latency =
                    self.bot_spurts_ms.iter().find(|&&s| s > end as f64 && s <= limit).map(|&s| round1(s - end as f64));
                Turn { utterance_end_ms: end, latency_ms: latency }
            })
            .collect();
    }

    pub fn ok(&self) -> bool {
        self.outcome != CallEnd::Failed
    }
}

/// Percentiles of a set of latencies (ms).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub count: usize,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

impl Stats {
    /// Nearest-rank percentiles.
    pub fn of(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| -> Option<f64> {
            let n = values.len();
            if n == 0 {
                return None;
            }
            let idx = ((p / 100.0) * n as f64).ceil() as usize;
            values.get(idx.clamp(1, n) - 1).copied()
        };
        Self { count: values.len(), p50: rank(50.0), p95: rank(95.0), max: values.last().copied() }
    }
}

/// Totals and percentiles over all calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Aggregate {
    pub calls: usize,
    pub completed: usize,
    pub ended_by_api: usize,
    pub server_closed: usize,
    pub failed: usize,
    pub first_audio_ms: Stats,
    pub turn_latency_ms: Stats,
    /// Turns the bot never answered.
    pub unanswered_turns: usize,
    pub clears: u64,
    pub marks_received: u64,
    pub marks_echoed: u64,
    pub underruns: u64,
    pub bot_audio_bytes: u64,
    pub errors: u64,
    pub max_tick_lag_ms: f64,
    pub late_ticks: u64,
}

/// The JSON summary `switchboard simulate` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub calls: Vec<CallReport>,
    pub aggregate: Aggregate,
    /// The simulator's own cost (set by `run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorStats>,
}

/// What the simulator itself cost over a run: CPU of this whole process (the server's too when
/// it runs in the same process, as in tests).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratorStats {
    pub wall_ms: f64,
    pub cpu_ms: Option<f64>,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: Option<f64>,
}

impl GeneratorStats {
    pub(crate) fn measure(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> Self {
        let cpu = before.zip(after).map(|(b, a)| a.saturating_sub(b));
        let wall_s = wall.as_secs_f64();
        Self {
            wall_ms: round1(wall_s * 1000.0),
            cpu_ms: cpu.map(|c| round1(c.as_secs_f64() * 1000.0)),
            cpu_percent: cpu.filter(|_| wall_s > 0.0).map(|c| round1(100.0 * c.as_secs_f64() / wall_s)),
        }
    }
}

impl Summary {
    pub fn from_calls(calls: Vec<CallReport>) -> Self {
        let count = |o: CallEnd| calls.iter().filter(|c| c.outcome == o).count();
        let turns = || calls.iter().flat_map(|c| &c.turns);
        let sum = |f: fn(&CallReport) -> u64| calls.iter().map(f).sum::<u64>();
        let aggregate = Aggregate {
            calls: calls.len(),
            completed: count(CallEnd::Completed),
            ended_by_api: count(CallEnd::EndedByApi),
            server_closed: count(CallEnd::ServerClosed),
            failed: count(CallEnd::Failed),
            first_audio_ms: Stats::of(calls.iter().filter_map(|c| c.first_audio_ms).collect()),
            turn_latency_ms: Stats::of(turns().filter_map(|t| t.latency_ms).collect()),
            unanswered_turns: turns().filter(|t| t.latency_ms.is_none()).count(),
            clears: sum(|c| c.clears.into()),
            marks_received: sum(|c| c.marks_received.into()),
            marks_echoed: sum(|c| c.marks_echoed.into()),
            underruns: sum(|c| c.underruns.into()),
            bot_audio_bytes: sum(|c| c.bot_audio_bytes),
            errors: sum(|c| c.error_count.into()),
            max_tick_lag_ms: calls.iter().map(|c| c.max_tick_lag_ms).fold(0.0, f64::max),
            late_ticks: sum(|c| c.late_ticks),
        };
        Self { calls, aggregate, generator: None }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialization cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// True when no call failed and no call counted an error.
    pub fn all_ok(&self) -> bool {
        self.aggregate.failed == 0 && self.aggregate.errors == 0
    }
}

pub(crate) fn round1(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Stats::of((1..=100).map(f64::from).collect());
        assert_eq!((s.count, s.p50, s.p95, s.max), (100, Some(50.0), Some(95.0), Some(100.0)));
        let s = Stats::of(vec![7.0]);
        assert_eq!((s.p50, s.p95), (Some(7.0), Some(7.0)));
        assert_eq!(Stats::of(vec![]).p50, None);
    }

    #[test]
    fn turns_pair_each_utterance_with_the_next_spurt_before_the_following_end() {
        let mut r = CallReport::new("CA1");
        r.utterances = vec![
            SpeechSpan { start_ms: 0, end_ms: 1000 },
            SpeechSpan { start_ms: 2000, end_ms: 3000 },
            SpeechSpan { start_ms: 4000, end_ms: 5000 },
        ];
        r.bot_spurts_ms = vec![500.0, 1650.5, 3100.0, 3900.0];
        r.compute_turns();
        let lat: Vec<_> = r.turns.iter().map(|t| t.latency_ms).collect();
        assert_eq!(lat, vec![Some(650.5), Some(100.0), None]);
    }

    #[test]
    fn summary_aggregates() {
        let mut a = CallReport::new("CA1");
        a.outcome = CallEnd::Completed;
        a.first_audio_ms = Some(100.0);
        a.clears = 2;
        a.turns = vec![Turn { utterance_end_ms: 1, latency_ms: Some(300.0) }];
        let mut b = CallReport::new("CA2");
        b.note_error("boom");
        b.turns = vec![Turn { utterance_end_ms: 1, latency_ms: None }];
        let s = Summary::from_calls(vec![a, b]);
        assert_eq!((s.aggregate.completed, s.aggregate.failed, s.aggregate.clears, s.aggregate.errors), (1, 1, 2, 1));
        assert_eq!((s.aggregate.turn_latency_ms.p50, s.aggregate.unanswered_turns), (Some(300.0), 1));
        assert!(!s.all_ok());
        assert!(s.to_json().contains("\"first_audio_ms\""));
    }
}
