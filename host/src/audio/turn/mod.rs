//! Smart Turn v3.2: end-of-turn detection at each VAD stop, with the reference's
//! surrounding logic (Pipecat 1.14's `BaseSmartTurn` + `LocalSmartTurnAnalyzerV3`, driven
//! the way `TurnAnalyzerUserTurnStopStrategy` drives them).
//!
//! * [`TurnSegmenter`] (per call, no model): keeps the call's recent audio with speech flags,
//!   cuts the segment to score at a VAD stop (from `pre_speech_ms + vad start_secs` before
//!   speech began, at most `max_duration_secs`), and ends an incomplete turn after
//!   `stop_secs` of silence without the model.
//! * [`SmartTurnModel`] (sync): 8 → 16 kHz resampling, the Whisper front end
//!   ([`super::features`]) and the int8 ONNX model; complete iff p > 0.5.
//! * [`SmartTurnEngine`]: one shared session on a dedicated thread; requests that arrive
//!   together run as one batch.
//!
//! One call's frame-by-frame driver of VAD + segmenter + engine is [`crate::audio::pipeline`].
//! Time is counted in samples of the stream, which on a call is the arrival time the
//! reference reads from its monotonic clock.

mod engine;
mod model;
mod segmenter;

pub use engine::{PendingTurn, SmartTurnConfig, SmartTurnEngine, SmartTurnHandle};
pub use model::SmartTurnModel;
pub use segmenter::TurnSegmenter;

use super::features::FeatureError;
use super::models::ModelError;
use super::resample::ResampleError;
use super::vad::VadError;

/// The reference's decision threshold: complete iff p > 0.5.
pub const COMPLETE_THRESHOLD: f32 = 0.5;
/// Smart Turn's input rate.
pub(crate) const MODEL_RATE: u32 = 16_000;

/// Turn-analysis parameters (Pipecat's `SmartTurnParams`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnParams {
    /// Silence after an incomplete verdict that ends the turn without the model.
    pub stop_secs: f64,
    /// Audio kept before the start of speech (on top of the VAD's start_secs).
    pub pre_speech_ms: f64,
    /// Longest segment given to the model (its last part is kept).
    pub max_duration_secs: f64,
}

impl Default for TurnParams {
    /// Switchboard's defaults (DESIGN.md): pre-speech 500 ms, fallback 1.5 s, max 8 s.
    fn default() -> Self {
        TurnParams { stop_secs: 1.5, pre_speech_ms: 500.0, max_duration_secs: 8.0 }
    }
}

impl TurnParams {
    /// The reference seed bots' values (no pre-speech audio).
    pub fn reference_seed() -> Self {
        TurnParams { pre_speech_ms: 0.0, ..Self::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error("resampling the turn segment to 16 kHz: {0}")]
    Resample(#[from] ResampleError),
    #[error("Smart Turn inference failed: {0}")]
    Inference(String),
    #[error("turn segments must be 8 or 16 kHz, got {0} Hz")]
    Rate(u32),
    #[error("the Smart Turn engine has shut down")]
    EngineStopped,
}

/// Audio to score at a VAD stop.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSegment {
    /// Samples at `rate`, int16 / 32768.
    pub audio: Vec<f32>,
    pub rate: u32,
    /// Stream position the segment ends at (see [`TurnSegmenter::apply_verdict`]).
    pub upto: u64,
}

/// The model's answer for one segment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnVerdict {
    pub probability: f32,
    /// `probability > 0.5`.
    pub complete: bool,
    /// The segment's end (stream position).
    pub upto: u64,
}
