//! Silero VAD, fed exactly as Pipecat 1.14's `SileroVADAnalyzer` feeds it, with its volume
//! gate, model-state reset rule and quiet → starting → speaking → stopping state machine.
//!
//! * Calls run at 8 kHz: 256 new samples + 32 context samples per window (32 ms).
//!   Offline analysis of 16 kHz files uses 512 + 64, as the reference does at 16 kHz.
//! * A window is speech iff `p ≥ confidence` (compared in f32, as numpy does) and the
//!   smoothed BS.1770 volume of the last 400 ms is `≥ min_volume`.
//! * One ONNX session serves every call: [`VadEngine`] runs a worker thread that takes all
//!   pending windows (from any number of [`VadStream`]s) and scores them as one batch
//!   (`input [N, L]`, `state [2, N, 128]`); each stream keeps its own context and state.
//!   [`SileroVad`] is the synchronous single-stream form of the same math.

mod analyzer;
mod engine;
mod loudness;
mod machine;
mod model;

pub use engine::{VadEngine, VadEngineConfig, VadEngineStats, VadStream};
pub use model::{SileroModel, SileroVad};

use super::models::ModelError;

/// Turn-taking parameters of the VAD (Pipecat's `VADParams`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams {
    /// Minimum speech probability (compared as f32).
    pub confidence: f64,
    /// Speech needed before SPEAKING, rounded (half to even) to whole windows.
    pub start_secs: f64,
    /// Non-speech needed before QUIET, rounded (half to even) to whole windows.
    pub stop_secs: f64,
    /// Minimum smoothed volume, 0..1 ((LUFS + 110) / 100).
    pub min_volume: f64,
}

impl Default for VadParams {
    /// Switchboard's defaults (DESIGN.md): stop after 0.2 s, as Pipecat 1.14 recommends.
    fn default() -> Self {
        VadParams { confidence: 0.7, start_secs: 0.2, stop_secs: 0.2, min_volume: 0.6 }
    }
}

impl VadParams {
    /// The values the reference seed bots pass (stop after 0.5 s).
    pub fn reference_seed() -> Self {
        VadParams { stop_secs: 0.5, ..Self::default() }
    }
}

/// The two rates Silero supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VadRate {
    /// 8 kHz: 256-sample windows, 32 samples of context (the call path).
    Hz8000,
    /// 16 kHz: 512-sample windows, 64 samples of context.
    Hz16000,
}

impl VadRate {
    /// `Some` for 8000 and 16000.
    pub fn from_hz(hz: u32) -> Option<Self> {
        match hz {
            8000 => Some(VadRate::Hz8000),
            16000 => Some(VadRate::Hz16000),
            _ => None,
        }
    }
    pub fn hz(self) -> u32 {
        match self {
            VadRate::Hz8000 => 8000,
            VadRate::Hz16000 => 16000,
        }
    }
    /// New samples per window.
    pub fn window(self) -> usize {
        match self {
            VadRate::Hz8000 => 256,
            VadRate::Hz16000 => 512,
        }
    }
    /// Samples of the previous input prepended to each window.
    pub fn context(self) -> usize {
        self.window() / 8
    }
    /// Model input length (context + window).
    pub fn input_len(self) -> usize {
        self.window() + self.context()
    }
    /// Samples in the 400 ms loudness block.
    fn volume_block(self) -> usize {
        self.hz() as usize * 2 / 5
    }
}

/// The analyzer's state (Pipecat's `VADState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadState {
    Quiet,
    Starting,
    Speaking,
    Stopping,
}

/// Edges the reference turns into `VADUserStartedSpeakingFrame` / `VADUserStoppedSpeakingFrame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    SpeechStart,
    SpeechStop,
}

/// The outcome of one scored window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadWindow {
    /// Stream position (samples at the VAD rate) where this window ends.
    pub end_sample: u64,
    /// Time of the window's end, in seconds of stream audio.
    pub t: f64,
    /// Silero's speech probability.
    pub probability: f32,
    /// Smoothed volume after this window.
    pub volume: f64,
    /// Whether the window counted as speech (probability and volume gates).
    pub speech: bool,
    /// Analyzer state after this window.
    pub state: VadState,
    /// A start/stop edge completed by this window.
    pub event: Option<VadEvent>,
}

#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("Silero VAD inference failed: {0}")]
    Inference(String),
    #[error("frame of {got} samples is longer than one VAD window ({max})")]
    FrameTooLong { got: usize, max: usize },
    #[error("a window of this stream is still being scored; await `result()` first")]
    WindowInFlight,
    #[error("the VAD engine has shut down")]
    EngineStopped,
}
