//! Call history costs: what a call pays to report an event (the sink's hand-off, on the call's
//! task, with the database free and with it locked), and what the writer thread spends turning a
//! call's events into rows (per call, and per transcript line from the slope between calls of 0
//! and 100 lines). `cargo bench --bench history`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use switchboard::call::events::CallEvent;
use switchboard::call::transcript::{Role, TranscriptLine, TurnLatency};
use switchboard::history::{History, HistoryOptions};
use switchboard::metrics::Metrics;

/// Calls emitted between flushes, so the channel never fills during a measurement.
const CHUNK: u64 = 100;

fn open(dir: &tempfile::TempDir, options: HistoryOptions) -> (History, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    (History::open(&dir.path().join("bench.db"), options, metrics.clone()).expect("history"), metrics)
}

/// The events of one call with `lines` transcript lines (alternating caller and bot, bot lines
/// with latencies), as the transport and session report them.
fn call_events(lines: usize) -> Vec<CallEvent> {
    let mut events = vec![
        CallEvent::Started {
            direction: "inbound".into(),
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            requested_persona: Some("front".into()),
            started_at_ms: 1_700_000_000_000,
        },
        CallEvent::Persona { name: "front".into(), version: Some("9f2c4e1ab37d60c5".into()) },
        CallEvent::Files {
            recording: Some(PathBuf::from("recordings/20250101-000000_CA0123.wav")),
            transcript: Some(PathBuf::from("recordings/20250101-000000_CA0123.jsonl")),
        },
    ];
    for i in 0..lines {
        let bot = i % 2 == 0;
        events.push(CallEvent::Line(TranscriptLine {
            role: if bot { Role::Assistant } else { Role::User },
            text: "Thanks for calling, how can I help you with your appointment today?".into(),
            start_ms: i as u64 * 3_000,
            end_ms: i as u64 * 3_000 + 2_500,
            interrupted: false,
            latency: bot.then_some(TurnLatency {
                stt_final_ms: Some(1.3),
                endpoint_ms: Some(228.0),
                llm_first_token_ms: Some(212.4),
                tts_first_byte_ms: Some(98.1),
                voice_to_voice_ms: Some(640.7),
            }),
        }));
    }
    events.push(CallEvent::Ended { outcome: "caller_hung_up".into(), detail: None, ended_at_ms: 1_700_000_060_000 });
    events
}

fn dropped(metrics: &Metrics) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_history_dropped_events_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What the call's own task pays per event.
fn hand_off(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (history, _) = open(&dir, HistoryOptions { channel_capacity: 1 << 20, ..Default::default() });
    let sink = history.sink();
    let line = call_events(1).remove(3);
    let mut g = c.benchmark_group("history/record");
    g.bench_function("line_event", |b| {
        // Only the hand-off is timed; waiting for the writer between chunks is not the call's.
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(50_000);
                let start = Instant::now();
                for _ in 0..n {
                    sink.record(black_box("CA0123456789abcdef0123456789abcdef"), black_box(&line));
                }
                spent += start.elapsed();
                left -= n;
                assert!(history.flush(Duration::from_secs(60)));
            }
            spent
        })
    });
    g.bench_function("vad_event_skipped", |b| {
        let vad = CallEvent::Vad { speaking: true, at_ms: 20 };
        b.iter(|| sink.record(black_box("CA0123456789abcdef0123456789abcdef"), black_box(&vad)))
    });
    // Another process holds the write lock: the writer is stuck, the channel fills, and the
    // call's hand-off must stay as cheap (it drops and counts instead of waiting).
    let locked_dir = tempfile::tempdir().unwrap();
    let options =
        HistoryOptions { channel_capacity: 1024, busy_timeout: Duration::from_millis(50), ..Default::default() };
    let (locked, _) = open(&locked_dir, options);
    let lock = rusqlite::Connection::open(locked_dir.path().join("bench.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked_sink = locked.sink();
    g.bench_function("line_event_database_locked", |b| {
        b.iter(|| locked_sink.record(black_box("CA0123456789abcdef0123456789abcdef"), black_box(&line)))
    });
    g.finish();
    lock.execute_batch("ROLLBACK").unwrap();
}

/// What the writer thread spends per call: emit calls, flush, divide.
fn write_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("history/write_call");
    g.measurement_time(Duration::from_secs(8));
    for lines in [0usize, 20, 100] {
        let dir = tempfile::tempdir().unwrap();
        let (history, metrics) = open(&dir, HistoryOptions::default());
        let sink = history.sink();
        let events = call_events(lines);
        let mut next_sid = 0u64;
        g.bench_function(format!("{lines}_lines"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for i in 0..iters {
                    let sid = format!("CA{next_sid:032x}");
                    next_sid += 1;
                    for e in &events {
                        sink.record(&sid, e);
                    }
                    if (i + 1) % CHUNK == 0 {
                        assert!(history.flush(Duration::from_secs(60)));
                    }
                }
                assert!(history.flush(Duration::from_secs(60)));
                start.elapsed()
            })
        });
        assert_eq!(dropped(&metrics), 0, "the measurement dropped events");
    }
    g.finish();
}

criterion_group!(benches, hand_off, write_cost);
criterion_main!(benches);
