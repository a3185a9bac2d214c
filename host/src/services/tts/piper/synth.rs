//! One chunk of text → μ-law 8 kHz: phonemes, ids, the voice's inference, resampling.

use std::path::Path;
use std::time::Instant;

use ort::session::RunOptions;

use super::audio::to_mulaw_8k;
use super::model::{InferenceError, PiperModel};
use super::phonemize::{PhonemizeError, Phonemizer};
use super::text::Chunk;
use super::voice::VoiceConfig;
use crate::audio::models::{ModelError, ModelPaths};
use crate::audio::resample::ResampleError;

/// Why a chunk could not be synthesised.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SynthError {
    #[error(transparent)]
    Phonemize(#[from] PhonemizeError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error("resampling Piper audio: {0}")]
    Resample(#[from] ResampleError),
}

/// A loaded voice: its name, config and model (one session, shared by all calls).
#[derive(Debug)]
pub struct Voice {
    pub(crate) name: String,
    pub(crate) config: VoiceConfig,
    pub(crate) model: PiperModel,
}

impl Voice {
    pub(crate) fn open(
        name: &str,
        config: VoiceConfig,
        runtime: &ModelPaths,
        onnx: &Path,
        threads: usize,
    ) -> Result<Self, ModelError> {
        Ok(Voice { name: name.to_string(), config, model: PiperModel::open(runtime, onnx, threads)? })
    }

    /// The voice's name (its file name without `.onnx`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `requested` names this voice: its file name or its dataset name, any case.
    pub(crate) fn answers_to(&self, requested: &str) -> bool {
        requested.eq_ignore_ascii_case(&self.name)
            || self.config.dataset.as_deref().is_some_and(|d| requested.eq_ignore_ascii_case(d))
    }

    /// The phonemes of `chunk` with the voice's espeak-ng voice.
    pub(crate) fn phonemes(&self, phonemizer: &mut Phonemizer, chunk: &Chunk) -> Result<String, PhonemizeError> {
        phonemizer.phonemize(&self.config.espeak_voice, &chunk.clauses)
    }

    /// The voice's raw audio (at its own rate) for `phonemes`; `None` when there is nothing to say.
    pub(crate) fn infer(&self, phonemes: &str, run: &RunOptions) -> Result<Option<Vec<f32>>, InferenceError> {
        let (ids, unknown) = self.config.phoneme_ids(phonemes);
        if !unknown.is_empty() {
            tracing::debug!(voice = %self.name, ?unknown, "phonemes the voice does not know were skipped");
        }
        // `^ _ … $`: three ids frame an utterance with no phonemes; one symbol still makes sound.
        if ids.len() <= 3 {
            return Ok(None);
        }
        self.model.infer(&ids, self.config.scales, run).map(Some)
    }

    /// μ-law 8 kHz of one chunk; `None` when there is nothing to say.
    pub(crate) fn synthesize(
        &self,
        phonemizer: &mut Phonemizer,
        chunk: &Chunk,
        run: &RunOptions,
    ) -> Result<Option<Vec<u8>>, SynthError> {
        let started = Instant::now();
        let phonemes = self.phonemes(phonemizer, chunk)?;
        let phonemized = started.elapsed();
        let Some(samples) = self.infer(&phonemes, run)? else {
            return Ok(None);
        };
        let inferred = started.elapsed();
        let audio = to_mulaw_8k(&samples, self.config.sample_rate)?;
        tracing::debug!(
            voice = %self.name,
            chars = chunk.chars(),
            audio_ms = audio.len() / 8,
            phonemize_ms = phonemized.as_millis() as u64,
            infer_ms = (inferred - phonemized).as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "Piper chunk synthesised"
        );
        Ok(Some(audio))
    }
}
