//! Local text-to-speech: a Piper voice (VITS, ONNX) run in-process, phonemized by espeak-ng.
//!
//! No account and no network: `bash models/fetch-piper.sh` puts the voice in `models/local/`
//! (ONNX Runtime itself comes from `models/fetch.sh`), and Debian's `espeak-ng` turns text into
//! the IPA phonemes the voice was trained on. [`PiperTts::open`] loads each voice once — one
//! ONNX session shared by every call — and starts the synthesis workers.
//!
//! Per call, [`TextToSpeech::connect`] gives the usual streaming session: each `Speak` is cut
//! into sentence and clause chunks (`text`), queued for the workers (`scheduler`), and each
//! chunk's audio goes out as soon as it is synthesised (`stream`), as μ-law 8 kHz. Files:
//! `text` (chunking), `phonemize` (espeak-ng), `voice` (the voice's config and phoneme ids),
//! `model` (the ONNX session), `audio` (22.05 kHz float → μ-law 8 kHz), `synth` (one chunk end
//! to end), `scheduler` and `worker` (the CPU-bound queue and its threads), `stream` (a session).

mod audio;
mod model;
mod phonemize;
mod scheduler;
mod stream;
mod synth;
mod text;
mod voice;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Bytes;
use tracing::Instrument;

pub use phonemize::PhonemizeError;
pub use synth::Voice;

use super::{command_channel, ReplyId, TextToSpeech, TtsError, TtsEvent, TtsEvents, TtsHandle, TtsOptions};
use crate::audio::models::{sha256_file, ModelError, ModelPaths};
use phonemize::EspeakConfig;
use scheduler::Scheduler;
use voice::VoiceConfig;
use worker::Work;

/// The voice `models/fetch-piper.sh` installs.
pub const DEFAULT_VOICE: &str = "en_US-joe-medium";

/// sha256 of the pinned voice files, as in `models/piper.SHA256SUMS` (a unit test keeps them
/// in step). Other voices dropped into the directory load without a checksum.
const PINNED: [(&str, &str); 3] = [
    ("en_US-joe-medium.onnx", "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"),
    ("en_US-joe-medium.onnx.json", "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"),
    ("en_US-joe-medium.MODEL_CARD", "d38223ba9381592ee7aeee49da1b61047121db1ad1761973ce0b88ff3e14041b"),
];

const FIX: &str = "run `bash models/fetch-piper.sh` from the repository root";

/// How the local TTS runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiperConfig {
    /// Where the voices are (`<name>.onnx` + `<name>.onnx.json`), e.g. `models/local`.
    pub model_dir: PathBuf,
    /// Voices to load, by file name without `.onnx`; the first is the default.
    pub voices: Vec<String>,
    /// The ONNX Runtime library (the process shares one runtime with VAD and Smart Turn).
    pub ort_dylib: PathBuf,
    /// Intra-op threads of one inference.
    pub threads: usize,
    /// Syntheses in progress at once (inference of one voice takes turns; the rest —
    /// phonemizing, resampling — overlaps). More calls than this wait in turn.
    pub workers: usize,
    /// The espeak-ng program.
    pub espeak_ng: PathBuf,
    /// A phonemizer silent this long is killed and restarted (that chunk fails).
    pub phonemize_timeout: Duration,
    /// Check the sha256 of pinned voice files when opening.
    pub verify_checksums: bool,
    /// Events buffered per session before the session waits for the engine.
    pub event_capacity: usize,
}

impl PiperConfig {
    /// The default voice in `model_dir`, one thread per inference, and a worker per core
    /// (at most two: the second prepares the next chunk while the first runs the model).
    pub fn in_dir(model_dir: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PiperConfig {
            model_dir: model_dir.into(),
            voices: vec![DEFAULT_VOICE.to_string()],
            ort_dylib: ModelPaths::from_env().ort_dylib,
            threads: 1,
            workers: cores.clamp(1, 2),
            espeak_ng: phonemize::default_program(),
            phonemize_timeout: Duration::from_secs(5),
            verify_checksums: true,
            event_capacity: 512,
        }
    }
}

impl Default for PiperConfig {
    /// `models/local` relative to the current directory.
    fn default() -> Self {
        Self::in_dir("models/local")
    }
}

/// Why the local TTS could not start. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PiperError {
    #[error("no Piper voice configured")]
    NoVoice,
    #[error("Piper voice file not found at {path}: {FIX}")]
    Missing { path: PathBuf },
    #[error("Piper voice file {path} is corrupt or not the pinned file (sha256 {actual}, expected {expected}): {FIX}")]
    Corrupt { path: PathBuf, expected: &'static str, actual: String },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("Piper voice config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("Piper voice {voice}: {source}")]
    Phonemizer { voice: String, source: PhonemizeError },
    #[error("starting the Piper workers: {0}")]
    Workers(std::io::Error),
}

/// The local Piper TTS provider. Cloning shares the voices and workers.
#[derive(Clone)]
pub struct PiperTts {
    inner: Arc<Inner>,
}

struct Inner {
    /// Loaded voices; the first is the default.
    voices: Vec<Arc<Voice>>,
    scheduler: Arc<Scheduler<Work>>,
    event_capacity: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last provider handle and the last session are gone: let the workers end.
        self.scheduler.stop();
    }
}

impl std::fmt::Debug for PiperTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.voices.iter().map(|v| v.name()).collect();
        f.debug_struct("PiperTts").field("voices", &names).finish_non_exhaustive()
    }
}

impl PiperTts {
    /// Loads the configured voices (checksums, config, ONNX session, espeak-ng voice) and starts
    /// the workers. Blocks for about a second per voice: call it at startup (or in
    /// `spawn_blocking`), not on the reactor.
    pub fn open(config: PiperConfig) -> Result<PiperTts, PiperError> {
        if config.voices.is_empty() {
            return Err(PiperError::NoVoice);
        }
        let runtime = ModelPaths {
            ort_dylib: config.ort_dylib.clone(),
            verify_checksums: config.verify_checksums,
            ..ModelPaths::in_dir(&config.model_dir)
        };
        let espeak = EspeakConfig { program: config.espeak_ng.clone(), timeout: config.phonemize_timeout };
        let mut voices = Vec::with_capacity(config.voices.len());
        for name in &config.voices {
            voices.push(Arc::new(open_voice(&config, &runtime, &espeak, name)?));
        }
        let scheduler = Arc::new(Scheduler::default());
        worker::spawn(config.workers, &scheduler, &espeak).map_err(|e| {
            scheduler.stop();
            PiperError::Workers(e)
        })?;
        tracing::info!(
            voices = ?config.voices,
            workers = config.workers.max(1),
            threads = config.threads.max(1),
            "local Piper TTS ready"
        );
        Ok(PiperTts { inner: Arc::new(Inner { voices, scheduler, event_capacity: config.event_capacity.max(1) }) })
    }

    /// The voice a session asked for, or the default: cloud voice names (`aura-2-…`) are
    /// expected here and are not an error.
    pub fn voice_for(&self, requested: Option<&str>) -> &Arc<Voice> {
        let default = &self.inner.voices[0];
        let Some(requested) = requested else { return default };
        match self.inner.voices.iter().find(|v| v.answers_to(requested)) {
            Some(voice) => voice,
            None => {
                tracing::debug!(requested, using = %default.name(), "no such local voice; using the default");
                default
            }
        }
    }

    /// Opens a streaming session (never fails: nothing remote to reach).
    pub fn open_stream(&self, options: &TtsOptions) -> (TtsHandle, TtsEvents) {
        let voice = self.voice_for(options.voice.as_deref()).clone();
        let (handle, cmds, stats) = command_channel();
        let (events_tx, events) = mpsc::channel(self.inner.event_capacity);
        let (done_tx, done) = mpsc::unbounded_channel();
        let call = self.inner.scheduler.register(done_tx);
        let session = stream::Stream {
            registration: stream::Registration { scheduler: self.inner.scheduler.clone(), call },
            voice,
            cmds,
            done,
            events: events_tx,
            stats,
            _owner: self.inner.clone(),
        };
        tokio::spawn(session.run().instrument(tracing::Span::current()));
        (handle, events)
    }

    /// The whole text's μ-law audio (empty when there is nothing to say).
    pub async fn speak_all(&self, text: String, options: &TtsOptions) -> Result<Bytes, TtsError> {
        let (handle, mut events) = self.open_stream(options);
        let reply = ReplyId(0);
        handle.speak(reply, text);
        handle.flush(reply);
        let mut audio = Vec::new();
        let result = loop {
            match events.recv().await {
                Some(TtsEvent::Audio { audio: chunk, .. }) => audio.extend_from_slice(&chunk),
                Some(TtsEvent::Flushed { .. }) => break Ok(Bytes::from(audio)),
                Some(TtsEvent::Failed { error, .. }) => break Err(error),
                Some(_) => {}
                None => break Err(TtsError::Synthesis("the Piper session ended early".into())),
            }
        };
        handle.close();
        result
    }
}

impl TextToSpeech for PiperTts {
    fn connect(&self, options: TtsOptions) -> BoxFuture<'static, Result<(TtsHandle, TtsEvents), TtsError>> {
        let this = self.clone();
        Box::pin(async move { Ok(this.open_stream(&options)) })
    }

    fn synthesize(&self, text: String, options: TtsOptions) -> BoxFuture<'static, Result<Bytes, TtsError>> {
        let this = self.clone();
        Box::pin(async move { this.speak_all(text, &options).await })
    }
}

fn open_voice(
    config: &PiperConfig,
    runtime: &ModelPaths,
    espeak: &EspeakConfig,
    name: &str,
) -> Result<Voice, PiperError> {
    let onnx = config.model_dir.join(format!("{name}.onnx"));
    let json = config.model_dir.join(format!("{name}.onnx.json"));
    for path in [&onnx, &json] {
        check_file(path, config.verify_checksums)?;
    }
    let text = std::fs::read_to_string(&json).map_err(|source| PiperError::Io { path: json.clone(), source })?;
    let voice_config =
        VoiceConfig::parse(&text).map_err(|message| PiperError::Config { path: json.clone(), message })?;
    phonemize::check(espeak, &voice_config.espeak_voice)
        .map_err(|source| PiperError::Phonemizer { voice: name.to_string(), source })?;
    Ok(Voice::open(name, voice_config, runtime, &onnx, config.threads)?)
}

fn check_file(path: &Path, verify: bool) -> Result<(), PiperError> {
    if !path.is_file() {
        return Err(PiperError::Missing { path: path.to_path_buf() });
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some((_, expected)) = PINNED.iter().find(|(f, _)| *f == name).filter(|_| verify) else {
        return Ok(());
    };
    let actual = sha256_file(path).map_err(|source| PiperError::Io { path: path.to_path_buf(), source })?;
    if actual != *expected {
        return Err(PiperError::Corrupt { path: path.to_path_buf(), expected, actual });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
