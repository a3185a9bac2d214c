//! The call's files — the stereo recording and the JSON-lines transcript beside it — written
//! on a blocking thread fed by a channel, so disk latency never reaches the audio path. A full
//! channel drops (and counts) rather than waits; a failing disk is logged once and the call
//! carries on.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::warn;

use crate::audio::record::CallRecorder;
use crate::call::transcript::TranscriptLine;
use crate::call::FRAME_SAMPLES;
use crate::logs::LogThrottle;

enum Cmd {
    Caller { ts_ms: u64, pcm: [i16; FRAME_SAMPLES] },
    Bot { play_ms: u64, pcm: [i16; FRAME_SAMPLES] },
    ClearBot { from_ms: u64 },
    Line(TranscriptLine),
    Finish { end_ms: u64 },
}

/// The session's end of the writer.
pub struct CallWriter {
    tx: mpsc::Sender<Cmd>,
    dropped: u64,
    log: LogThrottle,
    pub recording_path: Option<PathBuf>,
    pub transcript_path: PathBuf,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl CallWriter {
    /// Opens the transcript (and the recording when `record`) in `dir`.
    pub fn start(dir: &Path, call_sid: &str, started: SystemTime, record: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // The sid names files: keep it to characters that can't leave the directory.
        let safe: String =
            call_sid.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(64).collect();
        let call_sid = if safe.is_empty() { "call" } else { safe.as_str() };
        let recorder = if record {
            match CallRecorder::create(dir, call_sid, started) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(error = %e, "recording disabled for this call");
                    None
                }
            }
        } else {
            None
        };
        let recording_path = recorder.as_ref().map(|r| r.path().to_path_buf());
        let stem = match &recording_path {
            Some(p) => p.with_extension(""),
            None => {
                dir.join(crate::audio::record::file_name(call_sid, started).unwrap_or_else(|_| call_sid.to_string()))
            }
        };
        let transcript_path = stem.with_extension("jsonl");
        let transcript = std::fs::OpenOptions::new().create(true).append(true).open(&transcript_path)?;
        // ~10 s of audio in flight before frames are dropped.
        let (tx, rx) = mpsc::channel(1024);
        let done = tokio::task::spawn_blocking(move || run(rx, recorder, transcript));
        Ok(Self {
            tx,
            dropped: 0,
            log: LogThrottle::new(Duration::from_secs(5)),
            recording_path,
            transcript_path,
            done: Some(done),
        })
    }

    fn send(&mut self, cmd: Cmd) {
        if self.tx.try_send(cmd).is_err() {
            self.dropped += 1;
            if let Some(suppressed) = self.log.allow("behind") {
                warn!(dropped = self.dropped, suppressed, "call writer behind; dropping");
            }
        }
    }

    pub fn caller(&mut self, ts_ms: u64, pcm: [i16; FRAME_SAMPLES]) {
        self.send(Cmd::Caller { ts_ms, pcm });
    }

    pub fn bot(&mut self, play_ms: u64, pcm: [i16; FRAME_SAMPLES]) {
        self.send(Cmd::Bot { play_ms, pcm });
    }

    pub fn clear_bot(&mut self, from_ms: u64) {
        self.send(Cmd::ClearBot { from_ms });
    }

    pub fn line(&mut self, line: TranscriptLine) {
        self.send(Cmd::Line(line));
    }

    /// Finalises both files and waits for the writer to finish.
    pub async fn finish(mut self, end_ms: u64) {
        // This one must not be dropped: wait for room.
        let _ = self.tx.send(Cmd::Finish { end_ms }).await;
        drop(self.tx);
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

fn run(mut rx: mpsc::Receiver<Cmd>, mut recorder: Option<CallRecorder>, mut transcript: std::fs::File) {
    let mut failed = false;
    let mut fail = |what: &str, e: &dyn std::fmt::Display| {
        if !failed {
            warn!(error = %e, "{what} failed; the call goes on without it");
            failed = true;
        }
    };
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Cmd::Caller { ts_ms, pcm } => {
                if let Some(r) = &mut recorder {
                    if let Err(e) = r.caller(ts_ms, &pcm) {
                        fail("recording", &e);
                    }
                }
            }
            Cmd::Bot { play_ms, pcm } => {
                if let Some(r) = &mut recorder {
                    if let Err(e) = r.bot(play_ms, &pcm) {
                        fail("recording", &e);
                    }
                }
            }
            Cmd::ClearBot { from_ms } => {
                if let Some(r) = &mut recorder {
                    r.clear_bot_from(from_ms);
                }
            }
            Cmd::Line(line) => {
                let json = serde_json::to_string(&line).unwrap_or_default();
                if let Err(e) = writeln!(transcript, "{json}") {
                    fail("transcript", &e);
                }
            }
            Cmd::Finish { end_ms } => {
                if let Some(r) = recorder.take() {
                    if let Err(e) = r.finish(Some(end_ms)) {
                        fail("recording", &e);
                    }
                }
                let _ = transcript.flush();
                break;
            }
        }
    }
}
