//! One Piper voice's ONNX session: phoneme ids in, audio at the voice's rate out.
//!
//! The session is shared by every call and every worker. `Session::run` needs `&mut` (ort does
//! not trust every execution provider with concurrent runs), so runs take turns on a mutex; the
//! workers overlap everything else (phonemizing, resampling) with the run in progress.

use std::path::Path;
use std::sync::Mutex;

use ort::session::{RunOptions, Session};
use ort::value::TensorRef;

use crate::audio::models::{open_session_at, ModelError, ModelPaths};

/// Why one inference failed (a run terminated through its `RunOptions` fails too).
#[derive(Debug, thiserror::Error)]
#[error("Piper inference: {0}")]
pub(crate) struct InferenceError(String);

/// A loaded voice model.
pub(crate) struct PiperModel {
    session: Mutex<Session>,
    /// Multi-speaker voices take a speaker id; we always use the first speaker.
    takes_speaker: bool,
}

impl std::fmt::Debug for PiperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperModel").field("takes_speaker", &self.takes_speaker).finish_non_exhaustive()
    }
}

impl PiperModel {
    /// Opens `path` on the process's ONNX Runtime with `threads` intra-op threads and checks
    /// that it has Piper's inputs.
    pub(crate) fn open(runtime: &ModelPaths, path: &Path, threads: usize) -> Result<Self, ModelError> {
        let session = open_session_at(runtime, "Piper voice model", path, threads)?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        if !["input", "input_lengths", "scales"].iter().all(|n| names.contains(n)) {
            return Err(ModelError::Session {
                what: "Piper voice model",
                path: path.to_path_buf(),
                message: format!("inputs {names:?} are not a Piper voice's (input, input_lengths, scales)"),
            });
        }
        let takes_speaker = names.contains(&"sid");
        Ok(PiperModel { session: Mutex::new(session), takes_speaker })
    }

    /// Synthesises one utterance. `run` lets another thread abort it (`terminate`).
    pub(crate) fn infer(&self, ids: &[i64], scales: [f32; 3], run: &RunOptions) -> Result<Vec<f32>, InferenceError> {
        let err = |e: ort::Error| InferenceError(e.to_string());
        let lengths = [ids.len() as i64];
        let speaker = [0i64];
        let mut inputs = ort::inputs![
            "input" => TensorRef::from_array_view(([1usize, ids.len()], ids)).map_err(err)?,
            "input_lengths" => TensorRef::from_array_view(([1usize], &lengths[..])).map_err(err)?,
            "scales" => TensorRef::from_array_view(([3usize], &scales[..])).map_err(err)?,
        ];
        if self.takes_speaker {
            inputs.push(("sid".into(), TensorRef::from_array_view(([1usize], &speaker[..])).map_err(err)?.into()));
        }
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session.run_with_options(inputs, run).map_err(err)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        Ok(audio.to_vec())
    }
}
