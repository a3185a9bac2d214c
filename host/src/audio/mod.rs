//! The audio engine: everything between caller μ-law and the turn decision, plus the recorder.
//!
//! Frames are 20 ms at 8 kHz (160 samples) on the call path. Nothing here knows about
//! sockets or providers; [`pipeline`] drives them frame by frame for each call.

pub mod analyze;
pub mod denoise;
pub mod features;
pub mod models;
pub mod mulaw;
pub mod pipeline;
pub mod record;
pub mod resample;
pub mod turn;
pub mod vad;
