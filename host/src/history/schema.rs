//! The database file: connection settings, schema migrations and the start-up repair of calls a
//! previous process never finished.
//!
//! Migrations are a list of SQL scripts applied in order, with SQLite's own `PRAGMA user_version`
//! recording how many ran. That is all `rusqlite_migration` does for a schema this size; a dozen
//! lines here avoid a dependency and keep each step visible. A script is never edited once
//! released: a change is a new entry at the end.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::HistoryError;

/// Schema scripts; entry `i` moves the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: calls and their transcript lines.
    "CREATE TABLE calls (
        call_sid          TEXT PRIMARY KEY NOT NULL,
        direction         TEXT NOT NULL DEFAULT '',
        from_number       TEXT NOT NULL DEFAULT '',
        to_number         TEXT NOT NULL DEFAULT '',
        requested_persona TEXT,
        persona_name      TEXT,
        persona_version   TEXT,
        started_at_ms     INTEGER NOT NULL,
        ended_at_ms       INTEGER,
        duration_ms       INTEGER,
        outcome           TEXT,
        outcome_detail    TEXT,
        recording_path    TEXT,
        transcript_path   TEXT,
        turn_count        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX calls_newest ON calls (started_at_ms DESC, call_sid DESC);
    CREATE INDEX calls_newest_by_direction ON calls (direction, started_at_ms DESC, call_sid DESC);
    CREATE TABLE lines (
        call_sid           TEXT NOT NULL REFERENCES calls (call_sid) ON DELETE CASCADE,
        seq                INTEGER NOT NULL,
        role               TEXT NOT NULL,
        text               TEXT NOT NULL,
        start_ms           INTEGER NOT NULL,
        end_ms             INTEGER NOT NULL,
        interrupted        INTEGER NOT NULL,
        -- 1 when the line carried a latency record (even one with nothing measured).
        has_latency        INTEGER NOT NULL DEFAULT 0,
        stt_final_ms       REAL,
        endpoint_ms        REAL,
        llm_first_token_ms REAL,
        tts_first_byte_ms  REAL,
        voice_to_voice_ms  REAL,
        PRIMARY KEY (call_sid, seq)
    ) WITHOUT ROWID;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Outcome given to calls found unfinished at start-up.
pub const INTERRUPTED: &str = "interrupted";

/// Opens the writer's connection: creates the file (and its directory), turns on WAL, applies
/// pending migrations and marks unfinished calls as interrupted.
pub fn open_writer(path: &Path, busy_timeout: Duration) -> Result<Connection, HistoryError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| HistoryError::Open(format!("creating {}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path).map_err(|e| HistoryError::Open(format!("{}: {e}", path.display())))?;
    configure(&conn, busy_timeout)?;
    // WAL: the API's reads never wait for the writer, and a commit is one sequential append.
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(HistoryError::Open(format!("{}: WAL mode unavailable (got {mode})", path.display())));
    }
    // WAL with NORMAL sync is durable across process crashes; only a power loss can lose the
    // last commits, which for a call log is the right trade against an fsync per batch.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(&conn)?;
    mark_interrupted(&conn)?;
    Ok(conn)
}

/// Opens a read-only connection for the API.
pub fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, HistoryError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| HistoryError::Open(format!("{} (read-only): {e}", path.display())))?;
    configure(&conn, busy_timeout)?;
    Ok(conn)
}

fn configure(conn: &Connection, busy_timeout: Duration) -> Result<(), HistoryError> {
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Applies the migrations this database hasn't seen, each in its own transaction. Running it
/// again is a no-op; a database from a newer build is refused rather than misread.
pub fn migrate(conn: &Connection) -> Result<(), HistoryError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(HistoryError::Open(format!(
            "database schema version {current} is newer than this build's ({SCHEMA_VERSION}); upgrade Switchboard"
        )));
    }
    for (i, script) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        // IMMEDIATE: two processes starting on one file can't both apply the same step.
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > i as i64 {
            continue; // applied by someone else meanwhile
        }
        tx.execute_batch(script).map_err(|e| HistoryError::Open(format!("migration {}: {e}", i + 1)))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "call history schema migrated");
    }
    Ok(())
}

/// A call without an end at start-up was in progress when a previous process stopped without
/// writing it (a crash, a kill, or a drain that timed out). Its `Ended` event can never come now,
/// so it is closed as `interrupted` instead of looking like a call still going on. A database
/// belongs to one server process at a time, so nothing live is touched. Returns how many calls.
pub fn mark_interrupted(conn: &Connection) -> Result<usize, HistoryError> {
    let n = conn.execute(
        "UPDATE calls SET outcome = ?1, outcome_detail = 'the server stopped before the call ended'
         WHERE ended_at_ms IS NULL AND outcome IS NULL",
        [INTERRUPTED],
    )?;
    if n > 0 {
        tracing::warn!(calls = n, "calls left unfinished by a previous run marked interrupted");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
    }

    #[test]
    fn migrations_are_idempotent_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/h.db");
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        conn.execute("INSERT INTO calls (call_sid, started_at_ms, ended_at_ms, outcome) VALUES ('CA1', 1, 2, 'x')", [])
            .unwrap();
        drop(conn);
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        let n: i64 = conn.query_row("SELECT count(*) FROM calls", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "reopening kept the data");
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1).unwrap();
        drop(conn);
        let err = open_writer(&path, Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains("newer than this build"), "{err}");
    }

    #[test]
    fn unfinished_calls_are_marked_interrupted_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        conn.execute_batch(
            "INSERT INTO calls (call_sid, started_at_ms) VALUES ('CAopen', 1);
             INSERT INTO calls (call_sid, started_at_ms, ended_at_ms, outcome) VALUES ('CAdone', 1, 5, 'caller_hung_up');",
        )
        .unwrap();
        drop(conn);
        let conn = open_writer(&path, Duration::from_secs(1)).unwrap();
        let outcome = |sid: &str| -> String {
            conn.query_row("SELECT outcome FROM calls WHERE call_sid = ?1", [sid], |r| r.get(0)).unwrap()
        };
        assert_eq!(outcome("CAopen"), INTERRUPTED);
        assert_eq!(outcome("CAdone"), "caller_hung_up");
        assert_eq!(mark_interrupted(&conn).unwrap(), 0, "already marked");
    }

    #[test]
    fn an_unopenable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = open_writer(&file.join("h.db"), Duration::from_secs(1)).unwrap_err().to_string();
        assert!(err.contains("plain-file"), "{err}");
    }
}
