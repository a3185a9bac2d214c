//! The Silero ONNX model: batched scoring, and the synchronous single-stream VAD on it.

use ort::session::Session;
use ort::value::TensorRef;

use super::analyzer::{VadCore, STATE_LEN};
use super::{VadError, VadEvent, VadParams, VadRate, VadWindow};
use crate::audio::models::{open_session, Model, ModelPaths};

/// One Silero ONNX session with reusable batch buffers.
pub struct SileroModel {
    session: Session,
    input: Vec<f32>,
    state: Vec<f32>,
}

impl SileroModel {
    /// Opens the pinned model (one intra-op thread, as the reference).
    pub fn open(paths: &ModelPaths) -> Result<Self, VadError> {
        Ok(SileroModel { session: open_session(paths, Model::SileroVad, 1)?, input: Vec::new(), state: Vec::new() })
    }

    /// Scores `n` windows of one rate as one batch. `load(i, input, state0, state1)` fills
    /// row `i` (input of `rate.input_len()`, the two 128-value state halves); `store(i, p,
    /// state0, state1)` receives its probability and new state.
    pub fn run_batch(
        &mut self,
        rate: VadRate,
        n: usize,
        mut load: impl FnMut(usize, &mut [f32], &mut [f32], &mut [f32]),
        mut store: impl FnMut(usize, f32, &[f32], &[f32]),
    ) -> Result<(), VadError> {
        if n == 0 {
            return Ok(());
        }
        let len = rate.input_len();
        self.input.resize(n * len, 0.0);
        self.state.resize(n * STATE_LEN, 0.0);
        let (s0, s1) = self.state.split_at_mut(n * 128);
        for i in 0..n {
            load(
                i,
                &mut self.input[i * len..(i + 1) * len],
                &mut s0[i * 128..(i + 1) * 128],
                &mut s1[i * 128..(i + 1) * 128],
            );
        }
        let err = |e: ort::Error| VadError::Inference(e.to_string());
        let sr = [i64::from(rate.hz())];
        let outputs = self
            .session
            .run(ort::inputs![
                TensorRef::from_array_view(([n, len], &self.input[..])).map_err(err)?,
                TensorRef::from_array_view(([2, n, 128], &self.state[..])).map_err(err)?,
                TensorRef::from_array_view(((), &sr[..])).map_err(err)?,
            ])
            .map_err(err)?;
        let (_, probs) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        let (_, state) = outputs[1].try_extract_tensor::<f32>().map_err(err)?;
        if probs.len() != n || state.len() != n * STATE_LEN {
            return Err(VadError::Inference(format!(
                "unexpected output sizes {} and {} for a batch of {n}",
                probs.len(),
                state.len()
            )));
        }
        let (s0, s1) = state.split_at(n * 128);
        for (i, &p) in probs.iter().enumerate() {
            store(i, p, &s0[i * 128..(i + 1) * 128], &s1[i * 128..(i + 1) * 128]);
        }
        Ok(())
    }
}

fn split_state(state: &mut [f32; STATE_LEN]) -> (&mut [f32], &mut [f32]) {
    state.split_at_mut(128)
}

/// Runs one stream's pending window on `model` (the synchronous path).
fn score_one(model: &mut SileroModel, core: &mut VadCore) -> Result<VadWindow, VadError> {
    let mut result = (0.0f32, [0.0f32; STATE_LEN]);
    model.run_batch(
        core.rate,
        1,
        |_, input, s0, s1| {
            let mut state = [0.0; STATE_LEN];
            core.load(input, &mut state);
            let (a, b) = split_state(&mut state);
            s0.copy_from_slice(a);
            s1.copy_from_slice(b);
        },
        |_, p, s0, s1| {
            result.0 = p;
            result.1[..128].copy_from_slice(s0);
            result.1[128..].copy_from_slice(s1);
        },
    )?;
    Ok(core.finish(result.0, &result.1))
}

/// Single-stream VAD with its own session: offline analysis and tests.
pub struct SileroVad {
    model: SileroModel,
    core: VadCore,
}

impl SileroVad {
    pub fn open(paths: &ModelPaths, rate: VadRate, params: VadParams) -> Result<Self, VadError> {
        Ok(SileroVad { model: SileroModel::open(paths)?, core: VadCore::new(rate, params) })
    }

    /// Feeds a frame of at most one window; returns the window it completed, if any.
    pub fn push_frame(&mut self, frame: &[i16]) -> Result<Option<VadWindow>, VadError> {
        if !self.core.push(frame)? {
            return Ok(None);
        }
        score_one(&mut self.model, &mut self.core).map(Some)
    }

    pub fn rate(&self) -> VadRate {
        self.core.rate
    }
    pub fn set_params(&mut self, params: VadParams) {
        self.core.set_params(params);
    }
    pub fn force_stop(&mut self) -> Option<VadEvent> {
        self.core.force_stop()
    }
}
