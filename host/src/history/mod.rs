//! Call history: every call's record (who, which persona and version, how it ended, the
//! transcript with per-turn latencies, where the recording is) in an embedded SQLite database.
//!
//! Calls report through [`HistorySink`], which only hands events to a bounded channel. One
//! dedicated OS thread (not a runtime worker) drains it and writes batches in transactions, so a
//! slow, locked or full disk costs the calls nothing: failures are retried for a while, then
//! logged (rate-limited) and counted in `switchboard_history_errors_total{kind}` and
//! `switchboard_history_dropped_events_total`. The API reads through [`HistoryReader`] on its own
//! connection.

mod reader;
mod retention;
mod schema;
mod sink;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use reader::{
    CallDetail, CallPage, CallRow, Cursor, HistoryReader, Line, LineLatency, ListQuery, PersonaRef, MAX_PAGE,
};
pub use schema::{INTERRUPTED, SCHEMA_VERSION};
pub use sink::HistorySink;
pub use writer::error_kind;

use crate::call::events::CallEventSink;
use crate::config::Config;
use crate::metrics::Metrics;
use writer::Msg;

/// Something the history couldn't do.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("opening the call history: {0}")]
    Open(String),
    #[error("call history database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("call history writer: {0}")]
    Thread(String),
}

/// Knobs; the defaults suit a server.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// How long one statement waits for another process's lock before failing as `busy`.
    pub busy_timeout: Duration,
    /// How long a failing batch is retried before its events are dropped.
    pub retry_for: Duration,
    /// Events waiting for the writer at most; beyond that new events are dropped.
    pub channel_capacity: usize,
    /// Events per transaction at most.
    pub max_batch: usize,
    /// Finished calls older than this are deleted with their files (`None`: kept forever).
    pub retention: Option<Duration>,
    /// How often the retention policy runs (also once at start; at least every 10 ms).
    pub prune_every: Duration,
    /// The only directory retention deletes recordings and transcripts from.
    pub recordings_dir: PathBuf,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(2),
            retry_for: Duration::from_secs(30),
            // A call makes a few dozen events; this is minutes of every call at once.
            channel_capacity: 16_384,
            max_batch: 512,
            retention: None,
            prune_every: Duration::from_secs(3600),
            recordings_dir: PathBuf::from("recordings"),
        }
    }
}

/// An open history: the writer thread, the sink feeding it and the API's reader.
pub struct History {
    path: PathBuf,
    tx: SyncSender<Msg>,
    sink: Arc<HistorySink>,
    reader: Arc<HistoryReader>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Tells the writer to stop retrying failing batches (shutdown).
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl History {
    /// Opens (creating, migrating and repairing) the database at `path` and starts the writer.
    pub fn open(path: &Path, options: HistoryOptions, metrics: Arc<Metrics>) -> Result<History, HistoryError> {
        let conn = schema::open_writer(path, options.busy_timeout)?;
        let reader = Arc::new(HistoryReader::new(path, options.busy_timeout));
        let (tx, rx) = sync_channel(options.channel_capacity.max(1));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tuning = writer::WriterTuning {
            max_batch: options.max_batch.max(1),
            retry_for: options.retry_for,
            stopping: stopping.clone(),
            retention: options.retention.map(|keep| writer::RetentionPlan {
                keep,
                every: options.prune_every.max(Duration::from_millis(10)),
                recordings_dir: options.recordings_dir.clone(),
            }),
        };
        let thread = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn({
                let metrics = metrics.clone();
                move || writer::run(conn, rx, tuning, metrics)
            })
            .map_err(|e| HistoryError::Thread(e.to_string()))?;
        let sink = Arc::new(HistorySink::new(tx.clone(), metrics));
        Ok(History { path: path.to_path_buf(), tx, sink, reader, thread: Mutex::new(Some(thread)), stopping })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sink to add to the server's call events.
    pub fn sink(&self) -> Arc<dyn CallEventSink> {
        self.sink.clone()
    }

    /// The API's reader.
    pub fn reader(&self) -> Arc<HistoryReader> {
        self.reader.clone()
    }

    /// Blocks until every event recorded before this call has been written (or given up on), at
    /// most `timeout`. False on timeout or when the writer is gone.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = sync_channel(1);
        // Waiting for room is fine here: this is the owner's thread, never a call's.
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        ack_rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).is_ok()
    }

    /// Writes what is queued and stops the writer. Later events are dropped (and counted).
    pub fn close(&self) {
        let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        // A failing database is not retried any more: what can't be written now is dropped.
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        // Blocking send: the writer keeps draining, so this waits at most one batch.
        let _ = self.tx.send(Msg::Shutdown);
        if thread.join().is_err() {
            tracing::error!("call history writer panicked");
        }
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.close();
    }
}

/// The server's history as configured: `None` when it is off, or when the database can't be
/// opened — then the server runs without it (logged and counted as `kind="open"`), because no
/// history is better than no calls.
pub fn open_for_server(config: &Config, metrics: Arc<Metrics>) -> Option<History> {
    let Some(path) = &config.database_path else {
        tracing::info!("call history is off (HISTORY=off or an empty DATABASE_PATH)");
        return None;
    };
    let options = HistoryOptions {
        retention: config.history_retention,
        recordings_dir: config.recordings_dir.clone(),
        ..HistoryOptions::default()
    };
    match History::open(path, options, metrics.clone()) {
        Ok(h) => {
            let retention_days = config.history_retention.map(|d| d.as_secs() / 86_400);
            tracing::info!(path = %path.display(), ?retention_days, "call history on");
            Some(h)
        }
        Err(e) => {
            Metrics::inc(&metrics.history_errors, "kind", "open");
            tracing::error!(error = %e, path = %path.display(), "call history unavailable; calls go on without it");
            None
        }
    }
}

pub use crate::call::ids::is_call_sid;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::events::{CallEvent, CallEvents};
    use crate::call::transcript::{TranscriptLine, TurnLatency};

    fn started(at: u64, direction: &str) -> CallEvent {
        CallEvent::Started {
            direction: direction.into(),
            from: "+15550001".into(),
            to: "+15550002".into(),
            requested_persona: None,
            started_at_ms: at,
        }
    }

    fn open(dir: &Path, options: HistoryOptions) -> (History, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (History::open(&dir.join("h.db"), options, metrics.clone()).unwrap(), metrics)
    }

    /// Another connection holding the write lock, and a hub feeding `h`.
    fn locked(dir: &Path, h: &History) -> (rusqlite::Connection, Arc<CallEvents>) {
        let lock = rusqlite::Connection::open(dir.join("h.db")).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let hub = CallEvents::new();
        hub.add_sink(h.sink());
        (lock, hub)
    }

    #[test]
    fn events_through_the_hub_become_a_readable_call_without_vad_or_interims() {
        let dir = tempfile::tempdir().unwrap();
        let (h, metrics) = open(dir.path(), HistoryOptions::default());
        let hub = CallEvents::new();
        hub.add_sink(h.sink());
        let call = hub.open("CA1");
        call.emit(started(1_000, "inbound"));
        call.emit(CallEvent::Persona { name: "front".into(), version: Some("0123abcd".into()) });
        call.emit(CallEvent::Vad { speaking: true, at_ms: 5 });
        call.emit(CallEvent::Interim { text: "hel".into() });
        call.emit(CallEvent::Line(TranscriptLine {
            role: crate::call::transcript::Role::Assistant,
            text: "Hello".into(),
            start_ms: 0,
            end_ms: 900,
            interrupted: true,
            latency: Some(TurnLatency { llm_first_token_ms: Some(80.0), ..Default::default() }),
        }));
        call.emit(CallEvent::Ended { outcome: "bot_hung_up".into(), detail: Some("done".into()), ended_at_ms: 3_000 });
        assert!(h.flush(Duration::from_secs(5)));
        let d = h.reader().call("CA1").unwrap().unwrap();
        assert_eq!(d.call.persona, Some(PersonaRef { name: "front".into(), version: Some("0123abcd".into()) }));
        assert_eq!((d.call.duration_ms, d.call.outcome.as_deref()), (Some(2_000), Some("bot_hung_up")));
        assert_eq!(d.lines.len(), 1);
        assert!(d.lines[0].interrupted);
        assert_eq!(d.lines[0].latency.as_ref().unwrap().llm_first_token_ms, Some(80.0));
        assert!(metrics.render().contains("switchboard_history_events_written_total 4"), "{}", metrics.render());
        assert!(h.reader().call("CAnone").unwrap().is_none());
    }

    #[test]
    fn the_writer_prunes_calls_past_retention_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let options = HistoryOptions {
            retention: Some(Duration::from_secs(86_400)),
            prune_every: Duration::from_millis(50),
            recordings_dir: dir.path().to_path_buf(),
            ..HistoryOptions::default()
        };
        let (h, metrics) = open(dir.path(), options);
        let hub = CallEvents::new();
        hub.add_sink(h.sink());
        let now = crate::call::events::unix_ms(std::time::SystemTime::now());
        let recording = dir.path().join("CAold.wav");
        std::fs::write(&recording, b"RIFF").unwrap();
        for (sid, started_at) in [("CAold", now - 3 * 86_400_000), ("CAnew", now - 1_000)] {
            let call = hub.open(sid);
            call.emit(started(started_at, "inbound"));
            let recording = (sid == "CAold").then(|| recording.clone());
            call.emit(CallEvent::Files { recording, transcript: None });
            call.emit(CallEvent::Ended {
                outcome: "caller_hung_up".into(),
                detail: None,
                ended_at_ms: started_at + 500,
            });
        }
        assert!(h.flush(Duration::from_secs(5)));
        // The row goes at commit; the file and the counter follow on the writer thread.
        let pruned = || {
            h.reader().call("CAold").unwrap().is_none()
                && !recording.exists()
                && metrics.render().contains("switchboard_history_pruned_calls_total 1")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pruned() {
            assert!(std::time::Instant::now() < deadline, "the old call was never pruned: {}", metrics.render());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(h.reader().call("CAnew").unwrap().is_some(), "a recent call stays");
    }

    #[test]
    fn pages_are_newest_first_filtered_and_chained_by_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let (h, _) = open(dir.path(), HistoryOptions::default());
        let hub = CallEvents::new();
        hub.add_sink(h.sink());
        // Five calls, two sharing a start time, one outbound.
        for (sid, at, dir) in [
            ("CA1", 1, "inbound"),
            ("CA2", 2, "inbound"),
            ("CA3", 2, "inbound"),
            ("CA4", 3, "outbound"),
            ("CA5", 4, "inbound"),
        ] {
            hub.open(sid).emit(started(at, dir));
        }
        assert!(h.flush(Duration::from_secs(5)));
        let r = h.reader();
        let mut seen = Vec::new();
        let mut q = ListQuery { limit: 2, ..Default::default() };
        loop {
            let page = r.list(&q).unwrap();
            seen.extend(page.calls.iter().map(|c| c.call_sid.clone()));
            match page.next_before {
                Some(next) => q.before = Some(next.parse().unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, ["CA5", "CA4", "CA3", "CA2", "CA1"], "ties broken by sid, nothing skipped");
        let out = r.list(&ListQuery { direction: Some("outbound".into()), ..Default::default() }).unwrap();
        assert_eq!(out.calls.iter().map(|c| c.call_sid.as_str()).collect::<Vec<_>>(), ["CA4"]);
        assert_eq!(out.next_before, None);
        let older = r.list(&ListQuery { before: Some("2".parse().unwrap()), ..Default::default() }).unwrap();
        assert_eq!(older.calls.len(), 1, "a bare timestamp cursor excludes that millisecond");
    }

    #[test]
    fn cursors_parse_and_print() {
        let c: Cursor = "1700000000000:CA12".parse().unwrap();
        assert_eq!(c.to_string(), "1700000000000:CA12");
        assert!("x".parse::<Cursor>().is_err());
        assert!("-1".parse::<Cursor>().is_err());
        assert!("1:../etc".parse::<Cursor>().is_err());
    }

    #[test]
    fn a_locked_database_delays_then_writes_and_counts_the_errors() {
        let dir = tempfile::tempdir().unwrap();
        let options = HistoryOptions {
            busy_timeout: Duration::from_millis(50),
            retry_for: Duration::from_secs(30),
            ..Default::default()
        };
        let (h, metrics) = open(dir.path(), options);
        let (lock, hub) = locked(dir.path(), &h);
        hub.open("CA1").emit(started(1, "inbound"));
        std::thread::sleep(Duration::from_millis(400));
        assert!(metrics.render().contains("switchboard_history_errors_total{kind=\"busy\"}"), "{}", metrics.render());
        lock.execute_batch("COMMIT").unwrap();
        assert!(h.flush(Duration::from_secs(5)));
        assert!(h.reader().call("CA1").unwrap().is_some(), "written once the lock went");
    }

    #[test]
    fn closing_gives_up_on_a_locked_database_instead_of_retrying() {
        let dir = tempfile::tempdir().unwrap();
        let options = HistoryOptions {
            busy_timeout: Duration::from_millis(50),
            retry_for: Duration::from_secs(3600),
            // A full batch: the writer backs off without reading the queue.
            max_batch: 1,
            ..Default::default()
        };
        let (h, metrics) = open(dir.path(), options);
        let (_lock, hub) = locked(dir.path(), &h);
        hub.open("CA1").emit(started(1, "inbound"));
        hub.open("CA2").emit(started(2, "inbound"));
        std::thread::sleep(Duration::from_millis(200));
        // With an hour of retries allowed, only giving up on shutdown lets this return (the lock
        // is held throughout).
        h.close();
        assert!(metrics.render().contains("switchboard_history_dropped_events_total 2"), "{}", metrics.render());
    }

    #[test]
    fn a_batch_failing_past_the_retry_window_is_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let options = HistoryOptions {
            busy_timeout: Duration::from_millis(20),
            retry_for: Duration::from_millis(200),
            ..Default::default()
        };
        let (h, metrics) = open(dir.path(), options);
        let (lock, hub) = locked(dir.path(), &h);
        hub.open("CA1").emit(started(1, "inbound"));
        assert!(h.flush(Duration::from_secs(5)), "the flush returns once the batch is given up on");
        assert!(metrics.render().contains("switchboard_history_dropped_events_total 1"), "{}", metrics.render());
        lock.execute_batch("COMMIT").unwrap();
        hub.open("CA2").emit(started(2, "inbound"));
        assert!(h.flush(Duration::from_secs(5)));
        let sids: Vec<String> =
            h.reader().list(&ListQuery::default()).unwrap().calls.into_iter().map(|c| c.call_sid).collect();
        assert_eq!(sids, ["CA2"], "later calls are written again");
    }

    #[test]
    fn a_full_channel_drops_and_counts_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let options = HistoryOptions {
            busy_timeout: Duration::from_millis(20),
            retry_for: Duration::from_secs(30),
            channel_capacity: 4,
            max_batch: 1,
            ..HistoryOptions::default()
        };
        let (h, metrics) = open(dir.path(), options);
        let (lock, hub) = locked(dir.path(), &h);
        let call = hub.open("CA1");
        let t = std::time::Instant::now();
        for i in 0..50 {
            call.emit(started(i, "inbound"));
        }
        assert!(t.elapsed() < Duration::from_millis(50), "emitting never waits: {:?}", t.elapsed());
        let text = metrics.render();
        let dropped: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_history_dropped_events_total "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(dropped >= 40, "{text}");
        lock.execute_batch("COMMIT").unwrap();
        drop(h);
    }

    #[test]
    fn open_for_server_runs_without_history_when_the_path_is_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let env = [("DATABASE_PATH".to_string(), file.join("h.db").display().to_string())].into_iter().collect();
        let (config, _) = Config::from_sources(&Default::default(), env).unwrap();
        let metrics = Arc::new(Metrics::new());
        assert!(open_for_server(&config, metrics.clone()).is_none());
        assert!(metrics.render().contains("switchboard_history_errors_total{kind=\"open\"} 1"), "{}", metrics.render());
    }

    #[test]
    fn a_server_with_retention_prunes_what_it_finds_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        {
            // A call from a previous run, finished 40 days ago.
            let (h, _) = open(dir.path(), HistoryOptions::default());
            let hub = CallEvents::new();
            hub.add_sink(h.sink());
            let call = hub.open("CAold");
            let long_ago = crate::call::events::unix_ms(std::time::SystemTime::now()) - 40 * 86_400_000;
            call.emit(started(long_ago, "outbound"));
            call.emit(CallEvent::Ended { outcome: "bot_hung_up".into(), detail: None, ended_at_ms: long_ago + 1 });
            assert!(h.flush(Duration::from_secs(5)));
        }
        let env = [("DATABASE_PATH", db.display().to_string()), ("HISTORY_RETENTION_DAYS", "30".to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let (config, _) = Config::from_sources(&Default::default(), env).unwrap();
        let h = open_for_server(&config, Arc::new(Metrics::new())).expect("history");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while h.reader().call("CAold").unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "not pruned at start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn sids_are_checked() {
        assert!(is_call_sid("CA0123456789abcdef0123456789abcdef"));
        assert!(is_call_sid("pg-1_a"));
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!is_call_sid(bad), "{bad:?}");
        }
    }
}
