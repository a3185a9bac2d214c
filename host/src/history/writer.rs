//! The one thread that writes the history: it drains the sink's channel, applies events in
//! batches (one transaction each), and survives a locked, full or vanished database by retrying
//! for a while, then dropping the batch and counting it. Nothing here runs on a call's task.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};

use crate::call::events::{unix_ms, CallEvent};
use crate::call::transcript::{Role, TranscriptLine};
use crate::logs::LogThrottle;
use crate::metrics::Metrics;

/// What the sink and the owner send the writer.
pub enum Msg {
    Event(Box<str>, CallEvent),
    /// Acknowledge once everything sent before has been written or given up on.
    Flush(SyncSender<()>),
    Shutdown,
}

/// Tuning of the writer thread.
#[derive(Debug, Clone)]
pub struct WriterTuning {
    /// Events per transaction at most.
    pub max_batch: usize,
    /// How long a failing batch is retried before it is dropped.
    pub retry_for: Duration,
    /// Set by the owner when it shuts down: a failing batch is dropped at once instead of being
    /// retried, so a locked or full database can't hold up the exit.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    pub retention: Option<RetentionPlan>,
}

/// When the writer prunes old calls, and where their files may be deleted.
#[derive(Debug, Clone)]
pub struct RetentionPlan {
    pub keep: Duration,
    pub every: Duration,
    pub recordings_dir: std::path::PathBuf,
}

/// Why a write failed, as the `kind` label of `switchboard_history_errors_total`.
pub fn error_kind(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => "busy",
        Some(ErrorCode::DiskFull) => "full",
        Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::NotADatabase) => {
            "io"
        }
        _ => "other",
    }
}

/// Errors that may go away by themselves (another process lets go of the lock, space is freed,
/// a volume comes back): worth retrying the whole batch.
fn transient(kind: &str) -> bool {
    matches!(kind, "busy" | "full" | "io")
}

/// Runs the writer until `Shutdown` or until every sender is gone.
pub fn run(mut conn: Connection, rx: Receiver<Msg>, tuning: WriterTuning, metrics: Arc<Metrics>) {
    let mut pending: Vec<(Box<str>, CallEvent)> = Vec::new();
    let mut acks: Vec<SyncSender<()>> = Vec::new();
    let mut closing = false;
    let mut failing_since: Option<Instant> = None;
    let mut attempt = 0u32;
    let throttle = LogThrottle::new(Duration::from_secs(10));
    let mut next_prune = tuning.retention.as_ref().map(|_| Instant::now());
    loop {
        if let (Some(plan), Some(at)) = (&tuning.retention, next_prune) {
            if pending.is_empty() && !closing && Instant::now() >= at {
                // One batch, then back to the channel: a big backlog of old calls is worked
                // off between writes instead of holding them (and flushes, and shutdown) up.
                let more = prune_old_calls(&mut conn, plan, &metrics, &throttle);
                next_prune = Some(if more { Instant::now() } else { Instant::now() + plan.every });
            }
        }
        if pending.is_empty() && acks.is_empty() && !closing {
            let got = match next_prune {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match got {
                Ok(m) => take(m, &mut pending, &mut acks, &mut closing),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => closing = true,
            }
        }
        while pending.len() < tuning.max_batch && !closing {
            match rx.try_recv() {
                Ok(m) => take(m, &mut pending, &mut acks, &mut closing),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closing = true,
            }
        }
        if !pending.is_empty() {
            match write_batch(&mut conn, &pending, &metrics, &throttle) {
                Ok(()) => {
                    metrics.history_events_written.inc_by(pending.len() as u64);
                    pending.clear();
                    failing_since = None;
                    attempt = 0;
                }
                Err(e) => {
                    let kind = error_kind(&e);
                    Metrics::inc(&metrics.history_errors, "kind", kind);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let stopping = tuning.stopping.load(std::sync::atomic::Ordering::Relaxed);
                    let give_up = closing || stopping || !transient(kind) || since.elapsed() >= tuning.retry_for;
                    if let Some(held) = throttle.allow(kind) {
                        tracing::error!(error = %e, kind, events = pending.len(), give_up, suppressed = held,
                            "call history write failed; calls are unaffected");
                    }
                    if give_up {
                        metrics.history_dropped_events.inc_by(pending.len() as u64);
                        pending.clear();
                        failing_since = None;
                        attempt = 0;
                    } else {
                        attempt += 1;
                        // Back off, but keep taking new events so the channel doesn't fill up
                        // while we wait (they join the batch being retried, up to its limit).
                        let wait = Duration::from_millis(50u64 << attempt.min(5)).min(Duration::from_secs(1));
                        if pending.len() < tuning.max_batch {
                            match rx.recv_timeout(wait) {
                                Ok(m) => take(m, &mut pending, &mut acks, &mut closing),
                                Err(RecvTimeoutError::Timeout) => {}
                                Err(RecvTimeoutError::Disconnected) => closing = true,
                            }
                        } else {
                            std::thread::sleep(wait);
                        }
                    }
                }
            }
        }
        if pending.is_empty() {
            for ack in acks.drain(..) {
                let _ = ack.try_send(());
            }
            if closing {
                break;
            }
        }
    }
}

/// One retention batch; failures are logged and counted, and the next pass tries again. True
/// when more old calls may be waiting.
fn prune_old_calls(conn: &mut Connection, plan: &RetentionPlan, metrics: &Metrics, throttle: &LogThrottle) -> bool {
    let keep_ms = plan.keep.as_millis().min(u128::from(u64::MAX)) as u64;
    let cutoff = unix_ms(SystemTime::now()).saturating_sub(keep_ms);
    match super::retention::prune_batch(conn, ms(cutoff), &plan.recordings_dir) {
        Ok(pruned) => {
            metrics.history_pruned_calls.inc_by(pruned.calls);
            if pruned.calls > 0 {
                tracing::info!(calls = pruned.calls, files = pruned.files, "call history: old calls deleted");
            }
            for error in pruned.file_errors.iter().take(10) {
                tracing::warn!(%error, "call history: a pruned call's file was not removed");
            }
            pruned.more
        }
        Err(e) => {
            let kind = error_kind(&e);
            Metrics::inc(&metrics.history_errors, "kind", kind);
            if let Some(held) = throttle.allow(kind) {
                tracing::error!(error = %e, kind, suppressed = held, "call history: pruning old calls failed");
            }
            false
        }
    }
}

fn take(m: Msg, pending: &mut Vec<(Box<str>, CallEvent)>, acks: &mut Vec<SyncSender<()>>, closing: &mut bool) {
    match m {
        Msg::Event(sid, e) => pending.push((sid, e)),
        Msg::Flush(ack) => acks.push(ack),
        Msg::Shutdown => *closing = true,
    }
}

/// Applies `events` in one transaction. An event that fails for a reason retrying can't fix is
/// skipped (counted) and the rest written; a transient failure aborts the whole batch so it can be
/// retried as a unit.
pub fn write_batch(
    conn: &mut Connection,
    events: &[(Box<str>, CallEvent)],
    metrics: &Metrics,
    throttle: &LogThrottle,
) -> Result<(), rusqlite::Error> {
    // Fast path: the whole batch in one go, no per-event savepoints.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let first_error = events.iter().find_map(|(sid, event)| apply(&tx, sid, event).err());
    match first_error {
        None => return tx.commit(),
        Some(e) if transient(error_kind(&e)) => return Err(e),
        // One bad event: start over, isolating each event in a savepoint.
        Some(_) => tx.rollback()?,
    }
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for (sid, event) in events {
        let mut sp = tx.savepoint()?;
        match apply(&sp, sid, event) {
            Ok(()) => sp.commit()?,
            Err(e) if transient(error_kind(&e)) => return Err(e),
            Err(e) => {
                sp.rollback()?;
                Metrics::inc(&metrics.history_errors, "kind", "other");
                metrics.history_dropped_events.inc();
                if let Some(held) = throttle.allow("event") {
                    tracing::error!(error = %e, call_sid = %sid, suppressed = held, "call history event skipped");
                }
            }
        }
    }
    tx.commit()
}

/// Writes one event. Events for a call the table doesn't know yet (its `Started` was lost) get a
/// placeholder row so nothing that follows is refused by the foreign key.
pub fn apply(conn: &Connection, sid: &str, event: &CallEvent) -> Result<(), rusqlite::Error> {
    let ensure_row = || {
        conn.prepare_cached("INSERT OR IGNORE INTO calls (call_sid, started_at_ms) VALUES (?1, ?2)")?
            .execute(params![sid, ms(unix_ms(SystemTime::now()))])
    };
    match event {
        CallEvent::Started { direction, from, to, requested_persona, started_at_ms } => {
            // A sid seen again is a new call (sids are unique per call): the old record goes.
            conn.prepare_cached("DELETE FROM lines WHERE call_sid = ?1")?.execute([sid])?;
            conn.prepare_cached(
                "INSERT INTO calls (call_sid, direction, from_number, to_number, requested_persona, started_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (call_sid) DO UPDATE SET
                   direction = excluded.direction, from_number = excluded.from_number,
                   to_number = excluded.to_number, requested_persona = excluded.requested_persona,
                   started_at_ms = excluded.started_at_ms, persona_name = NULL, persona_version = NULL,
                   ended_at_ms = NULL, duration_ms = NULL, outcome = NULL, outcome_detail = NULL,
                   recording_path = NULL, transcript_path = NULL, turn_count = 0",
            )?
            .execute(params![sid, direction, from, to, requested_persona, ms(*started_at_ms)])?;
        }
        CallEvent::Persona { name, version } => {
            ensure_row()?;
            conn.prepare_cached("UPDATE calls SET persona_name = ?2, persona_version = ?3 WHERE call_sid = ?1")?
                .execute(params![sid, name, version])?;
        }
        CallEvent::Files { recording, transcript } => {
            ensure_row()?;
            let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
            conn.prepare_cached("UPDATE calls SET recording_path = ?2, transcript_path = ?3 WHERE call_sid = ?1")?
                .execute(params![sid, path(recording), path(transcript)])?;
        }
        CallEvent::Line(line) => {
            ensure_row()?;
            insert_line(conn, sid, line)?;
        }
        CallEvent::Ended { outcome, detail, ended_at_ms } => {
            ensure_row()?;
            conn.prepare_cached(
                "UPDATE calls SET ended_at_ms = ?2, duration_ms = MAX(0, ?2 - started_at_ms), outcome = ?3,
                   outcome_detail = ?4 WHERE call_sid = ?1",
            )?
            .execute(params![sid, ms(*ended_at_ms), outcome, detail])?;
        }
        // Live-view only; the sink doesn't forward these, and they aren't stored.
        CallEvent::Vad { .. } | CallEvent::Interim { .. } => {}
    }
    Ok(())
}

fn insert_line(conn: &Connection, sid: &str, line: &TranscriptLine) -> Result<(), rusqlite::Error> {
    let lat = line.latency.clone().unwrap_or_default();
    // The next sequence number comes from the primary key's index: no per-call state to lose.
    conn.prepare_cached(
        "INSERT INTO lines (call_sid, seq, role, text, start_ms, end_ms, interrupted, has_latency,
           stt_final_ms, endpoint_ms, llm_first_token_ms, tts_first_byte_ms, voice_to_voice_ms)
         SELECT ?1, COALESCE(MAX(seq) + 1, 0), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12
         FROM lines WHERE call_sid = ?1",
    )?
    .execute(params![
        sid,
        line.role.as_str(),
        line.text,
        ms(line.start_ms),
        ms(line.end_ms),
        line.interrupted,
        line.latency.is_some(),
        lat.stt_final_ms,
        lat.endpoint_ms,
        lat.llm_first_token_ms,
        lat.tts_first_byte_ms,
        lat.voice_to_voice_ms,
    ])?;
    if line.role == Role::User {
        conn.prepare_cached("UPDATE calls SET turn_count = turn_count + 1 WHERE call_sid = ?1")?.execute([sid])?;
    }
    Ok(())
}

/// SQLite integers are signed; milliseconds fit for the next 292 million years.
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::transcript::TurnLatency;
    use crate::history::schema;

    fn conn() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = schema::open_writer(&dir.path().join("h.db"), Duration::from_millis(100)).unwrap();
        (dir, c)
    }

    fn started(sid: &str) -> (Box<str>, CallEvent) {
        let e = CallEvent::Started {
            direction: "inbound".into(),
            from: "+1555".into(),
            to: "+1666".into(),
            requested_persona: Some("front".into()),
            started_at_ms: 1_000,
        };
        (sid.into(), e)
    }

    fn line(role: Role, text: &str, latency: Option<TurnLatency>) -> CallEvent {
        CallEvent::Line(TranscriptLine {
            role,
            text: text.into(),
            start_ms: 10,
            end_ms: 20,
            interrupted: false,
            latency,
        })
    }

    fn batch(c: &mut Connection, events: &[(Box<str>, CallEvent)]) -> Result<(), rusqlite::Error> {
        write_batch(c, events, &Metrics::new(), &LogThrottle::new(Duration::from_secs(10)))
    }

    #[test]
    fn a_call_becomes_a_row_with_numbered_lines_and_a_turn_count() {
        let (_d, mut c) = conn();
        let lat = TurnLatency { llm_first_token_ms: Some(12.5), voice_to_voice_ms: Some(300.0), ..Default::default() };
        let events = vec![
            started("CA1"),
            ("CA1".into(), CallEvent::Persona { name: "front".into(), version: Some("abc123".into()) }),
            ("CA1".into(), line(Role::Assistant, "Hello", Some(lat))),
            ("CA1".into(), line(Role::User, "Hi", None)),
            ("CA1".into(), line(Role::Assistant, "Bye", Some(TurnLatency::default()))),
            ("CA1".into(), CallEvent::Ended { outcome: "caller_hung_up".into(), detail: None, ended_at_ms: 4_500 }),
        ];
        batch(&mut c, &events).unwrap();
        let (persona, version, duration, outcome, turns): (String, String, i64, String, i64) = c
            .query_row(
                "SELECT persona_name, persona_version, duration_ms, outcome, turn_count FROM calls WHERE call_sid='CA1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap();
        assert_eq!(
            (persona.as_str(), version.as_str(), duration, outcome.as_str(), turns),
            ("front", "abc123", 3_500, "caller_hung_up", 1)
        );
        let seqs: Vec<(i64, String, bool, Option<f64>)> = c
            .prepare("SELECT seq, text, has_latency, voice_to_voice_ms FROM lines WHERE call_sid='CA1' ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            seqs,
            [
                (0, "Hello".to_string(), true, Some(300.0)),
                (1, "Hi".to_string(), false, None),
                (2, "Bye".to_string(), true, None)
            ]
        );
    }

    #[test]
    fn events_without_a_start_get_a_placeholder_row_and_a_repeated_start_replaces_the_call() {
        let (_d, mut c) = conn();
        batch(&mut c, &[("CA2".into(), line(Role::User, "orphan", None))]).unwrap();
        let n: i64 = c.query_row("SELECT count(*) FROM lines WHERE call_sid='CA2'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        batch(&mut c, &[started("CA2")]).unwrap();
        let (n, turns): (i64, i64) = c
            .query_row("SELECT (SELECT count(*) FROM lines WHERE call_sid='CA2'), turn_count FROM calls", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((n, turns), (0, 0));
    }

    #[test]
    fn a_full_database_fails_the_batch_as_full_and_rolls_it_back() {
        let (_d, mut c) = conn();
        batch(&mut c, &[started("CA3")]).unwrap();
        // Cap the file at its current size: the next page SQLite needs is refused (SQLITE_FULL),
        // exactly as when the disk has no room left.
        let pages: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0)).unwrap();
        c.pragma_update(None, "max_page_count", pages).unwrap();
        let big = "x".repeat(64 * 1024);
        let err = batch(&mut c, &[("CA3".into(), line(Role::User, &big, None))]).unwrap_err();
        assert_eq!(error_kind(&err), "full", "{err}");
        let n: i64 = c.query_row("SELECT count(*) FROM lines", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "nothing half-written");
    }

    #[test]
    fn an_event_that_can_never_be_written_is_skipped_and_the_rest_kept() {
        let (_d, mut c) = conn();
        c.execute_batch(
            "CREATE TRIGGER reject BEFORE INSERT ON lines WHEN NEW.text = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned line'); END;",
        )
        .unwrap();
        let metrics = Metrics::new();
        let events = vec![
            started("CA5"),
            ("CA5".into(), line(Role::User, "poison", None)),
            ("CA5".into(), line(Role::User, "fine", None)),
            ("CA5".into(), CallEvent::Ended { outcome: "failed".into(), detail: None, ended_at_ms: 2_000 }),
        ];
        write_batch(&mut c, &events, &metrics, &LogThrottle::new(Duration::from_secs(10))).unwrap();
        let texts: Vec<String> = c
            .prepare("SELECT text FROM lines")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(texts, ["fine"]);
        let outcome: String = c.query_row("SELECT outcome FROM calls", [], |r| r.get(0)).unwrap();
        assert_eq!(outcome, "failed");
        let text = metrics.render();
        assert!(text.contains("switchboard_history_errors_total{kind=\"other\"} 1"), "{text}");
        assert!(text.contains("switchboard_history_dropped_events_total 1"), "{text}");
    }

    #[test]
    fn a_locked_database_is_busy() {
        let (dir, mut c) = conn();
        let other = Connection::open(dir.path().join("h.db")).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let err = batch(&mut c, &[started("CA4")]).unwrap_err();
        assert_eq!(error_kind(&err), "busy", "{err}");
        other.execute_batch("COMMIT").unwrap();
        batch(&mut c, &[started("CA4")]).unwrap();
    }
}
