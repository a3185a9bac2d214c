//! The call session seam: what the transport hands a conversation, and what it gets back.
//!
//! The transport (Twilio Media Streams today, the browser playground later) decodes caller audio
//! into 20 ms PCM16 frames at 8 kHz and forwards DTMF, played-mark echoes and the end of the
//! stream as [`CallInput`]. A session answers with [`CallOutput`]: bot audio (μ-law 8 kHz, paced
//! by the transport), marks, `clear`, and call control. Sessions never see sockets or JSON.

pub mod control;
pub mod events;
pub mod ids;
pub mod transcript;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Milliseconds per frame.
pub const FRAME_MS: u64 = 20;

/// Which side placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Everything known about a call when its stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    pub call_sid: String,
    pub stream_sid: String,
    pub account_sid: String,
    pub direction: Direction,
    pub from: String,
    pub to: String,
    /// Persona requested at set-up (dial-out), if any.
    pub persona: Option<String>,
    /// Custom parameters (dial-out `parameters`), without the transport's own.
    pub parameters: BTreeMap<String, String>,
}

/// What the transport tells the session.
#[derive(Debug, Clone, PartialEq)]
pub enum CallInput {
    /// One 20 ms frame of caller audio; `timestamp_ms` is its position on the call's clock.
    Audio {
        timestamp_ms: u64,
        samples: [i16; FRAME_SAMPLES],
    },
    Dtmf(String),
    /// A mark of ours came back: the caller has heard everything queued before it.
    MarkPlayed(String),
    /// Bot audio was sent to the caller; `playout_ms` is when it plays on the call's clock.
    /// Lets the session record what the caller heard without owning the pacing.
    BotAudioPlayed {
        playout_ms: u64,
        mulaw: [u8; FRAME_SAMPLES],
    },
    /// A `clear` was sent; nothing scheduled at or after `at_ms` will be heard.
    Cleared {
        at_ms: u64,
    },
}

/// What the session asks the transport to do.
#[derive(Debug, Clone, PartialEq)]
pub enum CallOutput {
    /// μ-law 8 kHz bot audio, any length; the transport paces it in 20 ms frames.
    Audio(Vec<u8>),
    /// Ask to be told (via [`CallInput::MarkPlayed`]) once everything before it has played.
    Mark(String),
    /// Drop queued bot audio and tell Twilio to stop playing (barge-in).
    Clear,
    /// End the call via the provider (after the caller has heard what they should).
    HangUp { reason: String },
    /// Hand the call to a phone number (TwiML `<Dial>`), ending the stream.
    Transfer { to: String },
}

/// How a call ended, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    CallerHungUp,
    BotHungUp(String),
    Transferred(String),
    Failed(String),
}

impl Outcome {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::CallerHungUp => "caller_hung_up",
            Outcome::BotHungUp(_) => "bot_hung_up",
            Outcome::Transferred(_) => "transferred",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The reason, number or error behind the outcome, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Outcome::CallerHungUp => None,
            Outcome::BotHungUp(s) | Outcome::Transferred(s) | Outcome::Failed(s) => Some(s),
        }
    }
}

/// The session's ends of the two channels.
#[derive(Debug)]
pub struct SessionIo {
    pub input: mpsc::Receiver<CallInput>,
    pub output: mpsc::Sender<CallOutput>,
    /// Where the session reports what happens (history, live views).
    pub events: events::CallEventsHandle,
}

/// A session's future; it ends when the call should end or its input closes.
pub type SessionFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts one session per call.
pub trait SessionFactory: Send + Sync {
    fn start(&self, info: CallInfo, io: SessionIo) -> SessionFuture;
    /// Personas a call can ask for by name, besides the built-in one (the playground lists them).
    fn persona_names(&self) -> Vec<String> {
        Vec::new()
    }
}
