//! Retention: calls that ended longer ago than the operator keeps them are deleted, rows first,
//! then the recording and transcript files those rows named. Runs on the writer thread, one
//! batch at a time between writes, so it never races a write, never holds up new events for
//! long, and never touches a call's task.

use std::path::Path;

use rusqlite::{params, Connection, TransactionBehavior};

/// Calls deleted per transaction: keeps each write lock short while calls are written and read.
const BATCH: usize = 500;

/// What one batch removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub calls: u64,
    pub files: u64,
    /// Files that were not removed (other than already gone), with why; logged by the caller.
    pub file_errors: Vec<String>,
    /// The batch was full: more old calls may be waiting.
    pub more: bool,
}

/// Deletes up to one batch of finished calls that ended (calls marked interrupted have no end:
/// started) before `cutoff_ms` (Unix ms), with their lines, then their files — only regular
/// files inside `recordings_dir`. Calls still in progress are never touched.
pub fn prune_batch(conn: &mut Connection, cutoff_ms: i64, recordings_dir: &Path) -> Result<Pruned, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let doomed: Vec<(String, Option<String>, Option<String>)> = {
        let mut stmt = tx.prepare_cached(
            "SELECT call_sid, recording_path, transcript_path FROM calls
             WHERE outcome IS NOT NULL AND COALESCE(ended_at_ms, started_at_ms) < ?1 LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![cutoff_ms, BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    {
        // Lines go with their call (ON DELETE CASCADE; the connection enables foreign keys).
        let mut delete = tx.prepare_cached("DELETE FROM calls WHERE call_sid = ?1")?;
        for (sid, _, _) in &doomed {
            delete.execute([sid])?;
        }
    }
    tx.commit()?;
    let mut out = Pruned { calls: doomed.len() as u64, more: doomed.len() == BATCH, ..Pruned::default() };
    for path in doomed.iter().flat_map(|(_, rec, tr)| [rec, tr]).flatten() {
        match remove_call_file(Path::new(path), recordings_dir) {
            Ok(true) => out.files += 1,
            Ok(false) => {}
            Err(e) => out.file_errors.push(format!("{path}: {e}")),
        }
    }
    Ok(out)
}

/// Removes `path` if it is a regular file inside `dir`; `Ok(false)` when it is already gone.
/// Anything else — a directory or symlink where a recording was, a path outside the recordings
/// directory (e.g. a relative path recorded by a server started elsewhere) — is left alone.
fn remove_call_file(path: &Path, dir: &Path) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Err(std::io::Error::other("not a regular file; left in place")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let inside = std::fs::canonicalize(parent)?.starts_with(std::fs::canonicalize(dir)?);
    if !inside {
        return Err(std::io::Error::other(format!("outside {}; left in place", dir.display())));
    }
    std::fs::remove_file(path).map(|()| true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::events::CallEvent;
    use crate::history::schema;
    use crate::history::writer::apply;
    use std::path::PathBuf;
    use std::time::Duration;

    fn call(conn: &Connection, sid: &str, started: u64, ended: Option<u64>, files: (&Path, &Path)) {
        let started_event = CallEvent::Started {
            direction: "inbound".into(),
            from: "+1555".into(),
            to: "+1666".into(),
            requested_persona: None,
            started_at_ms: started,
        };
        apply(conn, sid, &started_event).unwrap();
        let files =
            CallEvent::Files { recording: Some(files.0.to_path_buf()), transcript: Some(files.1.to_path_buf()) };
        apply(conn, sid, &files).unwrap();
        if let Some(ended_at_ms) = ended {
            apply(conn, sid, &CallEvent::Ended { outcome: "caller_hung_up".into(), detail: None, ended_at_ms })
                .unwrap();
        }
    }

    fn files(dir: &Path, sid: &str) -> (PathBuf, PathBuf) {
        let (rec, tr) = (dir.join(format!("{sid}.wav")), dir.join(format!("{sid}.jsonl")));
        std::fs::write(&rec, b"RIFF").unwrap();
        std::fs::write(&tr, b"{}\n").unwrap();
        (rec, tr)
    }

    /// Every batch, as the writer would run them one after another.
    fn prune(conn: &mut Connection, cutoff_ms: i64, dir: &Path) -> Result<Pruned, rusqlite::Error> {
        let mut total = Pruned::default();
        loop {
            let p = prune_batch(conn, cutoff_ms, dir)?;
            total.calls += p.calls;
            total.files += p.files;
            total.file_errors.extend(p.file_errors);
            if !p.more {
                return Ok(total);
            }
        }
    }

    fn sids(conn: &Connection) -> Vec<String> {
        let mut stmt = conn.prepare("SELECT call_sid FROM calls ORDER BY call_sid").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn old_finished_calls_go_with_their_lines_and_files_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("h.db"), Duration::from_millis(100)).unwrap();
        let old = files(dir.path(), "CAold");
        let recent = files(dir.path(), "CArecent");
        let live = files(dir.path(), "CAlive");
        call(&conn, "CAold", 1_000, Some(5_000), (&old.0, &old.1));
        let line = crate::call::transcript::TranscriptLine {
            role: crate::call::transcript::Role::User,
            text: "hello".into(),
            start_ms: 1,
            end_ms: 2,
            interrupted: false,
            latency: None,
        };
        apply(&conn, "CAold", &CallEvent::Line(line)).unwrap();
        call(&conn, "CArecent", 9_000, Some(12_000), (&recent.0, &recent.1));
        // Started long ago and never ended: in progress, whatever its age.
        call(&conn, "CAlive", 1_000, None, (&live.0, &live.1));

        let pruned = prune(&mut conn, 10_000, dir.path()).unwrap();
        assert_eq!((pruned.calls, pruned.files), (1, 2), "{pruned:?}");
        assert!(pruned.file_errors.is_empty());
        assert_eq!(sids(&conn), ["CAlive", "CArecent"]);
        let lines: i64 = conn.query_row("SELECT COUNT(*) FROM lines", [], |r| r.get(0)).unwrap();
        assert_eq!(lines, 0, "the old call's lines went with it");
        assert!(!old.0.exists() && !old.1.exists());
        assert!(recent.0.exists() && live.0.exists() && live.1.exists());
        // Nothing left to do: a second pass removes nothing.
        assert_eq!(prune(&mut conn, 10_000, dir.path()).unwrap(), Pruned::default());
    }

    #[test]
    fn missing_files_are_fine_and_a_directory_in_their_place_is_left_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("h.db"), Duration::from_millis(100)).unwrap();
        let gone = dir.path().join("gone.wav");
        let a_dir = dir.path().join("a-dir.jsonl");
        std::fs::create_dir(&a_dir).unwrap();
        call(&conn, "CA1", 1_000, Some(2_000), (&gone, &a_dir));
        let pruned = prune(&mut conn, 10_000, dir.path()).unwrap();
        assert_eq!((pruned.calls, pruned.files), (1, 0));
        assert_eq!(pruned.file_errors.len(), 1, "{pruned:?}");
        assert!(pruned.file_errors[0].contains("a-dir.jsonl"));
        assert!(a_dir.is_dir());
        assert!(sids(&conn).is_empty());
    }

    #[test]
    fn files_outside_the_recordings_directory_are_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let recordings = dir.path().join("recordings");
        std::fs::create_dir(&recordings).unwrap();
        let mut conn = schema::open_writer(&dir.path().join("h.db"), Duration::from_millis(100)).unwrap();
        let (inside, _) = files(&recordings, "CA1");
        let (outside, _) = files(dir.path(), "CA2");
        call(&conn, "CA1", 1_000, Some(2_000), (&inside, &recordings.join("none.jsonl")));
        call(&conn, "CA2", 1_000, Some(2_000), (&outside, &dir.path().join("none.jsonl")));
        let pruned = prune(&mut conn, 10_000, &recordings).unwrap();
        assert_eq!((pruned.calls, pruned.files), (2, 1), "{pruned:?}");
        assert!(!inside.exists());
        assert!(outside.exists(), "not the recordings directory's to delete");
        assert!(pruned.file_errors.iter().any(|e| e.contains("CA2.wav") && e.contains("outside")), "{pruned:?}");
    }

    #[test]
    fn more_calls_than_one_batch_are_all_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = schema::open_writer(&dir.path().join("h.db"), Duration::from_millis(100)).unwrap();
        let none = dir.path().join("none");
        for i in 0..(BATCH + 20) {
            call(&conn, &format!("CA{i}"), 1_000, Some(2_000), (&none, &none));
        }
        let first = prune_batch(&mut conn, 10_000, dir.path()).unwrap();
        assert_eq!((first.calls, first.more), (BATCH as u64, true), "one batch at a time");
        assert_eq!(prune(&mut conn, 10_000, dir.path()).unwrap().calls, 20);
        assert!(sids(&conn).is_empty());
    }
}
