//! Reads for the API, on their own read-only connection (WAL: they never wait for the writer).
//! Every method blocks; the HTTP handlers call them through `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::{schema, HistoryError};

/// Most calls one page may hold.
pub const MAX_PAGE: u32 = 500;

/// `GET /api/calls` filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: u32,
    /// Only calls older than this cursor (from a previous page's `next_before`).
    pub before: Option<Cursor>,
    pub direction: Option<String>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self { limit: 50, before: None, direction: None }
    }
}

/// A position in the newest-first order: `started_at_ms` then the sid to break ties. Written as
/// `1700000000000` or `1700000000000:CA…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub started_at_ms: i64,
    pub call_sid: Option<String>,
}

impl std::str::FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ms, sid) = match s.split_once(':') {
            Some((ms, sid)) => (ms, Some(sid.to_string())),
            None => (s, None),
        };
        let started_at_ms = ms
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| format!("before must be a cursor like 1700000000000 or 1700000000000:CA…, got {s:?}"))?;
        if sid.as_deref().is_some_and(|s| !super::is_call_sid(s)) {
            return Err(format!("before has an invalid call sid: {s:?}"));
        }
        Ok(Cursor { started_at_ms, call_sid: sid })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.call_sid {
            Some(sid) => write!(f, "{}:{sid}", self.started_at_ms),
            None => write!(f, "{}", self.started_at_ms),
        }
    }
}

/// The persona that served a call.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PersonaRef {
    pub name: String,
    /// The plugin's content hash; `None` for the built-in persona.
    pub version: Option<String>,
}

/// One row of the call list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallRow {
    pub call_sid: String,
    pub direction: String,
    pub from: String,
    pub to: String,
    pub requested_persona: Option<String>,
    pub persona: Option<PersonaRef>,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub duration_ms: Option<i64>,
    /// `None` while the call is in progress.
    pub outcome: Option<String>,
    pub outcome_detail: Option<String>,
    /// Caller turns (user lines).
    pub turns: i64,
    pub has_recording: bool,
}

/// One page of the call list.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallPage {
    pub calls: Vec<CallRow>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next_before: Option<String>,
}

/// Per-turn latencies, as the transcript file has them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LineLatency {
    pub stt_final_ms: Option<f64>,
    pub endpoint_ms: Option<f64>,
    pub llm_first_token_ms: Option<f64>,
    pub tts_first_byte_ms: Option<f64>,
    pub voice_to_voice_ms: Option<f64>,
}

/// One transcript line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Line {
    pub seq: i64,
    pub role: String,
    pub text: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub interrupted: bool,
    pub latency: Option<LineLatency>,
}

/// A call with its transcript.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: CallRow,
    pub recording_path: Option<String>,
    pub transcript_path: Option<String>,
    pub lines: Vec<Line>,
}

/// The API's handle on the database.
pub struct HistoryReader {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Mutex<Option<Connection>>,
}

const SUMMARY_COLUMNS: &str = "call_sid, direction, from_number, to_number, requested_persona, persona_name,
    persona_version, started_at_ms, ended_at_ms, duration_ms, outcome, outcome_detail, turn_count,
    recording_path IS NOT NULL";

fn summary(r: &Row<'_>) -> rusqlite::Result<CallRow> {
    let persona_name: Option<String> = r.get(5)?;
    Ok(CallRow {
        call_sid: r.get(0)?,
        direction: r.get(1)?,
        from: r.get(2)?,
        to: r.get(3)?,
        requested_persona: r.get(4)?,
        persona: persona_name
            .map(|name| Ok::<_, rusqlite::Error>(PersonaRef { name, version: r.get(6)? }))
            .transpose()?,
        started_at_ms: r.get(7)?,
        ended_at_ms: r.get(8)?,
        duration_ms: r.get(9)?,
        outcome: r.get(10)?,
        outcome_detail: r.get(11)?,
        turns: r.get(12)?,
        has_recording: r.get(13)?,
    })
}

impl HistoryReader {
    pub fn new(path: &Path, busy_timeout: Duration) -> Self {
        Self { path: path.to_path_buf(), busy_timeout, conn: Mutex::new(None) }
    }

    /// Runs `f` on the read connection, opening it if needed; a failed connection is dropped so
    /// the next request starts afresh.
    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, HistoryError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(schema::open_reader(&self.path, self.busy_timeout)?);
        }
        let conn = guard.as_ref().expect("opened above");
        let result = f(conn);
        if result.is_err() {
            *guard = None;
        }
        Ok(result?)
    }

    /// Calls, newest first.
    pub fn list(&self, q: &ListQuery) -> Result<CallPage, HistoryError> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        let (before_ms, before_sid) = match &q.before {
            Some(c) => (Some(c.started_at_ms), c.call_sid.clone()),
            None => (None, None),
        };
        let mut calls = self.with(|c| {
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM calls
                 WHERE (?1 IS NULL OR direction = ?1)
                   AND (?2 IS NULL OR started_at_ms < ?2 OR (?3 IS NOT NULL AND started_at_ms = ?2 AND call_sid < ?3))
                 ORDER BY started_at_ms DESC, call_sid DESC LIMIT ?4"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![q.direction, before_ms, before_sid, i64::from(limit) + 1], summary)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let more = calls.len() > limit as usize;
        calls.truncate(limit as usize);
        let next_before = more
            .then(|| {
                calls.last().map(|c| Cursor { started_at_ms: c.started_at_ms, call_sid: Some(c.call_sid.clone()) })
            })
            .flatten()
            .map(|c| c.to_string());
        Ok(CallPage { calls, next_before })
    }

    /// One call and its transcript; `None` when the history has no such call.
    pub fn call(&self, sid: &str) -> Result<Option<CallDetail>, HistoryError> {
        self.with(|c| {
            let sql =
                format!("SELECT {SUMMARY_COLUMNS}, recording_path, transcript_path FROM calls WHERE call_sid = ?1");
            let head = c
                .prepare_cached(&sql)?
                .query_row([sid], |r| {
                    Ok((summary(r)?, r.get::<_, Option<String>>(14)?, r.get::<_, Option<String>>(15)?))
                })
                .optional()?;
            let Some((call, recording_path, transcript_path)) = head else { return Ok(None) };
            let mut stmt = c.prepare_cached(
                "SELECT seq, role, text, start_ms, end_ms, interrupted, has_latency, stt_final_ms,
                   llm_first_token_ms, tts_first_byte_ms, voice_to_voice_ms, endpoint_ms
                 FROM lines WHERE call_sid = ?1 ORDER BY seq",
            )?;
            let lines = stmt
                .query_map([sid], |r| {
                    let has_latency: bool = r.get(6)?;
                    Ok(Line {
                        seq: r.get(0)?,
                        role: r.get(1)?,
                        text: r.get(2)?,
                        start_ms: r.get(3)?,
                        end_ms: r.get(4)?,
                        interrupted: r.get(5)?,
                        latency: has_latency
                            .then(|| {
                                Ok::<_, rusqlite::Error>(LineLatency {
                                    stt_final_ms: r.get(7)?,
                                    endpoint_ms: r.get(11)?,
                                    llm_first_token_ms: r.get(8)?,
                                    tts_first_byte_ms: r.get(9)?,
                                    voice_to_voice_ms: r.get(10)?,
                                })
                            })
                            .transpose()?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(CallDetail { call, recording_path, transcript_path, lines }))
        })
    }

    /// Where the history says a call's recording is: `None` for an unknown call,
    /// `Some(None)` for a call without one.
    pub fn recording_path(&self, sid: &str) -> Result<Option<Option<PathBuf>>, HistoryError> {
        self.with(|c| {
            c.prepare_cached("SELECT recording_path FROM calls WHERE call_sid = ?1")?
                .query_row([sid], |r| r.get::<_, Option<String>>(0))
                .optional()
        })
        .map(|o| o.map(|p| p.map(PathBuf::from)))
    }
}
