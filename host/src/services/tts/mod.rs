//! Streaming text-to-speech: the provider-neutral seam the call engine uses.
//!
//! One session per call ([`TextToSpeech::connect`]): the engine tags every sentence with the
//! [`ReplyId`] of the reply it belongs to, calls [`TtsHandle::speak`] per sentence and
//! [`TtsHandle::flush`] once per reply, and gets [`TtsEvent::Audio`] chunks tagged with the reply
//! they belong to, then [`TtsEvent::Flushed`]. On barge-in [`TtsHandle::clear`] stops everything
//! in flight; audio of the interrupted replies that still arrives is discarded by the provider,
//! never delivered. [`TextToSpeech::synthesize`] is the one-shot fallback for a retry.

pub mod deepgram;
pub mod piper;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Bytes;

use super::deepgram_ws::HandshakeError;
use super::error::ErrorKind;

/// The engine's number for one bot reply (one LLM answer, or a fixed text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyId(pub u64);

/// A text-to-speech provider. Audio is μ-law 8 kHz mono, ready for Twilio.
pub trait TextToSpeech: Send + Sync {
    /// Opens a streaming session; fails fast on bad credentials or parameters.
    fn connect(&self, options: TtsOptions) -> BoxFuture<'static, Result<(TtsHandle, TtsEvents), TtsError>>;

    /// Synthesises one text in one request (the fallback after a streaming failure).
    fn synthesize(&self, text: String, options: TtsOptions) -> BoxFuture<'static, Result<Bytes, TtsError>>;
}

/// Per-call overrides (the persona's choices); `None` keeps the provider's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TtsOptions {
    /// Voice / model name, e.g. `aura-2-theia-en`.
    pub voice: Option<String>,
}

/// Events of one session; the channel closes when the session ends.
pub type TtsEvents = mpsc::Receiver<TtsEvent>;

/// What a session reports. `received_at` stamps let the engine measure time to first byte.
#[derive(Debug, Clone)]
pub enum TtsEvent {
    /// μ-law audio of `reply` (any length, in order).
    Audio {
        reply: ReplyId,
        audio: Bytes,
        received_at: Instant,
    },
    /// All audio of `reply` up to its latest `flush()` has been delivered (one per flush: a
    /// reply flushed after every sentence gets several).
    Flushed {
        reply: ReplyId,
        received_at: Instant,
    },
    /// The provider confirmed a `clear()`; audio from here on belongs to later replies.
    Cleared {
        received_at: Instant,
    },
    /// A non-fatal provider warning (e.g. too many flushes).
    Warning {
        code: String,
        message: String,
    },
    /// These replies will get no more audio from the stream (dropped connection, stall, refusal).
    /// The engine may retry them with [`TextToSpeech::synthesize`]. Later replies go through a
    /// new connection — unless the error is not retryable (bad credentials): then this is the
    /// last event (`replies` may be empty), the session is gone and `TtsHandle::is_open()` is false.
    Failed {
        replies: Vec<ReplyId>,
        error: TtsError,
    },
    /// The connection dropped; the provider reconnects on its own.
    Disconnected {
        reason: String,
        kind: ErrorKind,
    },
    Reconnected {
        attempts: u32,
        downtime: Duration,
    },
}

/// A text-to-speech failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TtsError {
    #[error("text-to-speech handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("text-to-speech rejected the credentials (HTTP {status}): {message}")]
    Auth { status: u16, message: String },
    #[error("text-to-speech request failed (HTTP {status}): {message}")]
    Api { status: u16, message: String },
    #[error("text-to-speech went quiet for {0:?} while audio was owed")]
    Stalled(Duration),
    #[error("text-to-speech request timed out after {0:?}")]
    Timeout(Duration),
    #[error("text-to-speech closed the stream (code {code}): {reason}")]
    Closed { code: u16, reason: String },
    #[error("text-to-speech connection failed: {0}")]
    Network(String),
    #[error("text-to-speech configuration: {0}")]
    Config(String),
    /// A local synthesis failed (phonemizer or model).
    #[error("text-to-speech synthesis failed: {0}")]
    Synthesis(String),
}

impl TtsError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TtsError::Handshake(h) => h.kind(),
            TtsError::Auth { .. } => ErrorKind::Auth,
            TtsError::Api { status, .. } => ErrorKind::from_status(*status),
            TtsError::Stalled(_) | TtsError::Timeout(_) => ErrorKind::Timeout,
            TtsError::Closed { code: 1008, .. } => ErrorKind::Protocol,
            TtsError::Closed { code: 1011, .. } => ErrorKind::Server,
            TtsError::Closed { .. } | TtsError::Network(_) => ErrorKind::Network,
            TtsError::Config(_) => ErrorKind::BadRequest,
            TtsError::Synthesis(_) => ErrorKind::Server,
        }
    }

    /// Bad credentials (HTTP 401/403).
    pub fn is_auth(&self) -> bool {
        self.kind() == ErrorKind::Auth
    }
}

/// What the handle sends to the provider task, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtsCommand {
    Speak { reply: ReplyId, text: String },
    Flush { reply: ReplyId },
    Clear,
    Close,
}

/// Counters of one session.
#[derive(Debug, Default)]
pub struct TtsStats {
    pub audio_bytes: AtomicU64,
    /// Audio of cleared replies that arrived after `clear()` and was dropped.
    pub discarded_bytes: AtomicU64,
    pub speaks_sent: AtomicU64,
    pub flushes_sent: AtomicU64,
    pub clears_sent: AtomicU64,
    pub reconnects: AtomicU64,
}

impl TtsStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A provider's limit on `Flush` messages per sliding window (Deepgram accepts 20 per 60 s on a
/// socket). Under it every sentence is flushed on its own (fast first audio, a mark per
/// sentence); over it, the engine lets the rest of a reply share one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushBudget {
    pub max: usize,
    pub window: Duration,
}

/// The engine's end of a session. Cloning shares the session; dropping every clone closes it.
#[derive(Clone)]
pub struct TtsHandle {
    tx: mpsc::UnboundedSender<TtsCommand>,
    stats: Arc<TtsStats>,
    budget: Option<(FlushBudget, Arc<std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>>)>,
}

impl std::fmt::Debug for TtsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtsHandle").field("open", &!self.tx.is_closed()).finish()
    }
}

/// A handle and the command receiver behind it (for providers, and fakes in engine tests).
pub fn command_channel() -> (TtsHandle, mpsc::UnboundedReceiver<TtsCommand>, Arc<TtsStats>) {
    channel(None)
}

/// [`command_channel`] for a provider that limits flushes.
pub fn command_channel_with_budget(
    budget: FlushBudget,
) -> (TtsHandle, mpsc::UnboundedReceiver<TtsCommand>, Arc<TtsStats>) {
    channel(Some(budget))
}

fn channel(budget: Option<FlushBudget>) -> (TtsHandle, mpsc::UnboundedReceiver<TtsCommand>, Arc<TtsStats>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(TtsStats::default());
    let budget = budget.map(|b| (b, Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()))));
    (TtsHandle { tx, stats: stats.clone(), budget }, rx, stats)
}

impl TtsHandle {
    /// Queues text (a sentence) of `reply`. Never waits.
    pub fn speak(&self, reply: ReplyId, text: impl Into<String>) {
        let _ = self.tx.send(TtsCommand::Speak { reply, text: text.into() });
    }

    /// Marks the end of `reply`'s text: the provider synthesises the rest and reports `Flushed`.
    /// Always sent; it counts against the provider's flush budget.
    pub fn flush(&self, reply: ReplyId) {
        if let Some((_, sent)) = &self.budget {
            sent.lock().unwrap_or_else(|p| p.into_inner()).push_back(std::time::Instant::now());
        }
        let _ = self.tx.send(TtsCommand::Flush { reply });
    }

    /// Flushes `reply` if the provider's budget allows it now. `false` leaves the unit open:
    /// append the following text to it and end it with [`Self::flush`].
    pub fn try_flush(&self, reply: ReplyId) -> bool {
        if let Some((budget, sent)) = &self.budget {
            let now = std::time::Instant::now();
            let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
            while sent.front().is_some_and(|t| now.duration_since(*t) > budget.window) {
                sent.pop_front();
            }
            if sent.len() >= budget.max {
                return false;
            }
        }
        self.flush(reply);
        true
    }

    /// Drops every reply in flight (barge-in). Their remaining audio is never delivered.
    pub fn clear(&self) {
        let _ = self.tx.send(TtsCommand::Clear);
    }

    /// Ends the session.
    pub fn close(&self) {
        let _ = self.tx.send(TtsCommand::Close);
    }

    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    pub fn stats(&self) -> &TtsStats {
        &self.stats
    }
}
