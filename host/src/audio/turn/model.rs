//! The Smart Turn v3.2 model (synchronous): 8 → 16 kHz, the Whisper front end and the int8 ONNX session.

use ort::session::Session;
use ort::value::TensorRef;

use super::{TurnError, MODEL_RATE};
use crate::audio::features::{self, WhisperFeatures, N_FEATURES, N_FRAMES, N_MELS};
use crate::audio::models::{open_session, Model, ModelPaths};
use crate::audio::resample::SegmentResampler;

/// One Smart Turn session with its front end and buffers (synchronous).
pub struct SmartTurnModel {
    session: Session,
    features: WhisperFeatures,
    resampler: SegmentResampler,
    audio_16k: Vec<f32>,
    window: Vec<f32>,
    batch: Vec<f32>,
}

impl SmartTurnModel {
    /// Opens the pinned model with `intra_threads` threads (the reference uses 1).
    pub fn open(paths: &ModelPaths, intra_threads: usize) -> Result<Self, TurnError> {
        Ok(SmartTurnModel {
            session: open_session(paths, Model::SmartTurn, intra_threads)?,
            features: WhisperFeatures::new(),
            resampler: SegmentResampler::new()?,
            audio_16k: Vec::new(),
            window: Vec::new(),
            batch: Vec::new(),
        })
    }

    /// The model's 16 kHz input for a segment: resampled when 8 kHz, last 8 s or
    /// left-padded with zeros.
    pub fn model_input(&mut self, audio: &[f32], rate: u32, out: &mut Vec<f32>) -> Result<(), TurnError> {
        match rate {
            MODEL_RATE => features::fit_to_window(audio, out),
            8000 => {
                self.resampler.process(audio, &mut self.audio_16k)?;
                features::fit_to_window(&self.audio_16k, out);
            }
            other => return Err(TurnError::Rate(other)),
        }
        Ok(())
    }

    /// Scores one segment.
    pub fn predict(&mut self, audio: &[f32], rate: u32) -> Result<f32, TurnError> {
        let mut p = [0.0];
        self.predict_batch(&[(audio, rate)], &mut p)?;
        Ok(p[0])
    }

    /// Scores several segments in one run (`[N, 80, 800]`); `out[i]` gets segment i's p.
    pub fn predict_batch(&mut self, segments: &[(&[f32], u32)], out: &mut [f32]) -> Result<(), TurnError> {
        let n = segments.len();
        if n == 0 {
            return Ok(());
        }
        self.batch.resize(n * N_FEATURES, 0.0);
        let mut window = std::mem::take(&mut self.window);
        for (i, &(audio, rate)) in segments.iter().enumerate() {
            self.model_input(audio, rate, &mut window)?;
            self.features.compute(&window, &mut self.batch[i * N_FEATURES..(i + 1) * N_FEATURES])?;
        }
        self.window = window;
        self.run(n, out)
    }

    /// Runs the model on features already in the batch buffer.
    fn run(&mut self, n: usize, out: &mut [f32]) -> Result<(), TurnError> {
        let err = |e: ort::Error| TurnError::Inference(e.to_string());
        let input = TensorRef::from_array_view(([n, N_MELS, N_FRAMES], &self.batch[..n * N_FEATURES])).map_err(err)?;
        let outputs = self.session.run(ort::inputs![input]).map_err(err)?;
        let (_, probs) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        if probs.len() != n || out.len() < n {
            return Err(TurnError::Inference(format!("{} probabilities for a batch of {n}", probs.len())));
        }
        out[..n].copy_from_slice(probs);
        Ok(())
    }

    /// Scores features computed elsewhere (benchmarks): `features` holds N × 80 × 800.
    pub fn predict_features(&mut self, features: &[f32], out: &mut [f32]) -> Result<(), TurnError> {
        let n = features.len() / N_FEATURES;
        self.batch.clear();
        self.batch.extend_from_slice(&features[..n * N_FEATURES]);
        self.run(n, out)
    }
}
