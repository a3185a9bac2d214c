//! Streaming speech-to-text: the provider-neutral seam the call engine uses.
//!
//! [`SpeechToText::connect`] opens one streaming session per call and returns an [`SttHandle`]
//! (cheap to clone, never blocks) plus a receiver of [`SttEvent`]s. The caller's audio path only
//! ever calls [`SttHandle::send_audio`], which queues a 20 ms frame or drops and counts it when the
//! provider is stuck; it never waits. Commands keep their order, so a `finalize()` always follows
//! the audio sent before it.

pub mod deepgram;
pub mod local;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::deepgram_ws::HandshakeError;
use super::error::ErrorKind;

/// Samples per 20 ms frame at 8 kHz, the only frame the STT path carries.
pub const FRAME_SAMPLES: usize = 160;
/// Seconds per frame.
const FRAME_SECS: f64 = 0.02;

/// One 20 ms frame of PCM16 audio at 8 kHz.
pub type Frame = [i16; FRAME_SAMPLES];

/// A streaming speech-to-text provider.
pub trait SpeechToText: Send + Sync {
    /// Opens a streaming session. Fails fast on bad credentials or parameters; later faults
    /// arrive as events (a dropped socket is reconnected by the provider itself).
    fn connect(&self, options: SttOptions) -> BoxFuture<'static, Result<(SttHandle, SttEvents), SttError>>;
}

/// Per-call overrides (the persona's choices); `None` keeps the provider's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SttOptions {
    pub model: Option<String>,
    pub language: Option<String>,
}

/// Events of one session. The channel closes after the stream ended (`close()`) or failed
/// ([`SttEvent::Failed`]).
pub type SttEvents = mpsc::Receiver<SttEvent>;

/// What a session reports.
#[derive(Debug, Clone)]
pub enum SttEvent {
    /// A transcript (interim or final). Empty texts are passed on: a final with `from_finalize`
    /// and no words still tells the engine that its `finalize()` has been answered.
    Transcript(Transcript),
    /// The provider's voice activity detector heard speech start (only if the provider was asked to).
    SpeechStarted { at_secs: f64 },
    /// The provider's end-of-utterance gap passed (only if the provider was asked to).
    UtteranceEnd { last_word_end_secs: f64 },
    /// The connection dropped mid-call; audio is buffered while the provider reconnects.
    Disconnected { reason: String, kind: ErrorKind },
    /// The connection is back; `resent_frames` of buffered audio were sent first, `lost_frames`
    /// did not fit in the buffer.
    Reconnected { attempts: u32, downtime: Duration, resent_frames: usize, lost_frames: u64 },
    /// Something non-fatal the provider said (e.g. a message it could not parse).
    Warning { message: String },
    /// The session is over for good (bad credentials on reconnect, reconnects exhausted).
    Failed(SttError),
}

/// One transcript result.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// Final for this stretch of audio; later results cover later audio.
    pub is_final: bool,
    /// The provider's endpointing saw the end of speech.
    pub speech_final: bool,
    /// The answer to a `finalize()`.
    pub from_finalize: bool,
    /// Start of the covered audio, seconds since the session's first frame (reconnects included).
    pub start_secs: f64,
    pub duration_secs: f64,
    pub confidence: f32,
    /// When the result arrived (for STT latency metrics).
    pub received_at: Instant,
}

/// A speech-to-text failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SttError {
    #[error("speech-to-text handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("speech-to-text closed the stream (code {code}): {reason}")]
    Closed { code: u16, reason: String },
    #[error("speech-to-text gave up reconnecting after {attempts} attempts in {elapsed:?}; last error: {last}")]
    ReconnectExhausted { attempts: u32, elapsed: Duration, last: String },
    #[error("speech-to-text configuration: {0}")]
    Config(String),
}

impl SttError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SttError::Handshake(h) => h.kind(),
            SttError::Closed { code: 1008, .. } => ErrorKind::Protocol,
            SttError::Closed { code: 1011, .. } => ErrorKind::Server,
            SttError::Closed { .. } | SttError::ReconnectExhausted { .. } => ErrorKind::Network,
            SttError::Config(_) => ErrorKind::BadRequest,
        }
    }

    /// Bad credentials (HTTP 401/403 at the handshake).
    pub fn is_auth(&self) -> bool {
        self.kind() == ErrorKind::Auth
    }
}

/// What the handle sends to the provider task, in order.
// Nearly every command is audio; boxing frames would cost an allocation per 20 ms instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SttCommand {
    /// `seq` numbers every frame offered to the handle (dropped ones too), so times stay on the
    /// call's audio clock.
    Audio {
        seq: u64,
        samples: Frame,
    },
    Finalize,
    Close,
}

/// Counters of one session, readable at any time.
#[derive(Debug, Default)]
pub struct SttStats {
    pub frames_sent: AtomicU64,
    /// Dropped by `send_audio` because the provider fell behind (queue full).
    pub frames_dropped: AtomicU64,
    /// Buffered during a reconnect but pushed out of the bounded buffer.
    pub frames_lost: AtomicU64,
    pub reconnects: AtomicU64,
    pub keepalives_sent: AtomicU64,
    pub finalizes_sent: AtomicU64,
}

impl SttStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

struct Shared {
    queued: AtomicUsize,
    capacity: usize,
    next_seq: AtomicU64,
    stats: Arc<SttStats>,
}

/// The caller's end of a session. Cloning shares the session.
#[derive(Clone)]
pub struct SttHandle {
    tx: mpsc::UnboundedSender<SttCommand>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SttHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SttHandle").field("queued", &self.shared.queued.load(Ordering::Relaxed)).finish()
    }
}

/// The provider's end: commands in order, with the audio queue accounting done on receipt.
pub struct SttCommandReceiver {
    rx: mpsc::UnboundedReceiver<SttCommand>,
    shared: Arc<Shared>,
}

/// A handle and the command receiver behind it; `queue_frames` bounds the audio waiting for the
/// provider task (beyond it `send_audio` drops).
pub fn command_channel(queue_frames: usize) -> (SttHandle, SttCommandReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        capacity: queue_frames.max(1),
        next_seq: AtomicU64::new(0),
        stats: Arc::new(SttStats::default()),
    });
    (SttHandle { tx, shared: shared.clone() }, SttCommandReceiver { rx, shared })
}

impl SttHandle {
    /// Queues one frame; never waits. Returns false (and counts the frame as dropped) when the
    /// provider is behind by a full queue or the session has ended.
    pub fn send_audio(&self, samples: &Frame) -> bool {
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        if self.shared.queued.load(Ordering::Relaxed) >= self.shared.capacity {
            SttStats::add(&self.shared.stats.frames_dropped, 1);
            return false;
        }
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(SttCommand::Audio { seq, samples: *samples }).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            SttStats::add(&self.shared.stats.frames_dropped, 1);
            return false;
        }
        true
    }

    /// Asks the provider to transcribe everything sent so far now (the turn detector ended a turn).
    pub fn finalize(&self) {
        let _ = self.tx.send(SttCommand::Finalize);
    }

    /// Ends the stream: the provider flushes its last results, then the event channel closes.
    /// Dropping every handle does the same.
    pub fn close(&self) {
        let _ = self.tx.send(SttCommand::Close);
    }

    /// Whether the provider task is still running.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    pub fn stats(&self) -> &SttStats {
        &self.shared.stats
    }
}

impl SttCommandReceiver {
    /// The next command; `None` once every handle is gone.
    pub async fn recv(&mut self) -> Option<SttCommand> {
        let cmd = self.rx.recv().await;
        if matches!(cmd, Some(SttCommand::Audio { .. })) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        }
        cmd
    }

    pub fn stats(&self) -> &SttStats {
        &self.shared.stats
    }
}

/// Seconds on the session clock at the start of frame `seq`.
pub(crate) fn seq_to_secs(seq: u64) -> f64 {
    seq as f64 * FRAME_SECS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_drops_and_counts_without_waiting() {
        let (handle, mut rx) = command_channel(2);
        let frame = [0i16; FRAME_SAMPLES];
        assert!(handle.send_audio(&frame));
        assert!(handle.send_audio(&frame));
        assert!(!handle.send_audio(&frame));
        assert_eq!(SttStats::get(&handle.stats().frames_dropped), 1);
        handle.finalize();
        assert!(matches!(rx.recv().await, Some(SttCommand::Audio { seq: 0, .. })));
        assert!(handle.send_audio(&frame), "a received frame frees a slot");
        assert!(matches!(rx.recv().await, Some(SttCommand::Audio { seq: 1, .. })));
        assert_eq!(rx.recv().await, Some(SttCommand::Finalize), "control keeps its place after audio");
        assert!(matches!(rx.recv().await, Some(SttCommand::Audio { seq: 3, .. })), "seq counts dropped frames");
        drop(handle);
        assert_eq!(rx.recv().await, None);
    }
}
