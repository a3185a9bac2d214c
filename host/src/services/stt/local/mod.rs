//! In-process speech-to-text (no account, no network): Moonshine base (English) on ONNX Runtime.
//!
//! [`LocalStt::open`] loads the model once (a few seconds, blocking) onto `workers` inference
//! threads that every call shares; [`SpeechToText::connect`] then opens a streaming session per
//! call with the same contract as Deepgram's: 20 ms PCM16 frames at 8 kHz in, a final transcript
//! answering each `Finalize` in order (`from_finalize`, empty text when nothing was said), interim
//! transcripts while the caller talks, and a final of its own when a buffer grows past
//! `max_segment`. [`LocalStt::transcribe_wav`] transcribes a whole file at any rate.
//!
//! Files: `models/fetch-stt.sh` puts them in `models/local/moonshine-base-en/`.

mod cancel;
#[cfg(test)]
mod model_tests;
pub mod moonshine;
mod offline;
pub mod onnx_graph;
pub mod speech;
mod stream;
pub mod tokenizer;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tracing::Instrument;

use self::moonshine::{MoonshineError, MoonshineModel, MoonshineOptions};
use self::speech::SpeechGate;
use self::stream::{CallStream, StreamSettings};
use self::worker::{Pool, Recognizer};
use super::{command_channel, SpeechToText, SttError, SttEvents, SttHandle, SttOptions};
use crate::audio::models::ORT_LIB_FILE;

pub use self::offline::read_wav_mono;

/// Where the model lives under the models directory.
pub const MODEL_SUBDIR: &str = "local/moonshine-base-en";
/// What the model understands.
pub const LANGUAGE: &str = "en";

/// Everything the local recognizer needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSttConfig {
    /// Holds `encoder_model.ort`, `decoder_model_merged.ort` and `tokenizer.bin`.
    pub model_dir: PathBuf,
    pub ort_dylib: PathBuf,
    /// Check the files' sha256 against the pinned values while loading.
    pub verify_checksums: bool,
    /// Inference threads, each with its own copy of the model (~0.6 GB resident each).
    pub workers: usize,
    /// ONNX Runtime threads inside each worker.
    pub intra_threads: usize,
    /// Finals that may wait for a worker before new ones are held back (and retried).
    pub queue_capacity: usize,
    /// An interim after this much new speech (zero: no interims).
    pub interim_every: Duration,
    /// No interims once the buffer is longer than this (each re-transcribes the whole buffer).
    pub interim_max_buffer: Duration,
    /// A buffer this long is finalized on its own (cut at a quiet point), keeping memory and
    /// latency bounded when no `Finalize` comes.
    pub max_segment: Duration,
    /// Audio waiting for the session task before `send_audio` starts dropping.
    pub send_queue: Duration,
    /// After `close()`, how long the last finals may take.
    pub close_timeout: Duration,
    /// Quiet that ends an utterance; until then each final is transcribed with the earlier
    /// audio and words of the utterance as context (zero: every final alone).
    pub utterance_gap: Duration,
    /// At most this much earlier audio is given as that context.
    pub utterance_context: Duration,
    pub event_capacity: usize,
    pub gate: SpeechGate,
}

impl LocalSttConfig {
    /// The model in `models_dir/local/moonshine-base-en`, the runtime in `models_dir`, and the
    /// defaults measured on a 2-core machine (see `docs/local-stt.md`).
    pub fn in_models_dir(models_dir: impl AsRef<Path>) -> Self {
        let dir = models_dir.as_ref();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            model_dir: dir.join(MODEL_SUBDIR),
            ort_dylib: dir.join(ORT_LIB_FILE),
            verify_checksums: true,
            workers: 1,
            // On two cores one stays with the call pipeline (denoise, VAD, Smart Turn).
            intra_threads: if cores > 2 { 2 } else { 1 },
            queue_capacity: 32,
            interim_every: Duration::from_millis(1000),
            interim_max_buffer: Duration::from_secs(8),
            max_segment: Duration::from_secs(15),
            send_queue: Duration::from_secs(2),
            close_timeout: Duration::from_secs(5),
            utterance_gap: Duration::from_millis(1200),
            utterance_context: Duration::from_secs(10),
            event_capacity: 256,
            gate: SpeechGate::default(),
        }
    }

    /// `$SWITCHBOARD_MODELS_DIR` (default `models`) with `$ORT_DYLIB_PATH` overriding the
    /// library, as for the other models.
    pub fn from_env() -> Self {
        let dir =
            std::env::var_os("SWITCHBOARD_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"));
        let mut config = Self::in_models_dir(dir);
        if let Some(lib) = std::env::var_os("ORT_DYLIB_PATH") {
            config.ort_dylib = PathBuf::from(lib);
        }
        config
    }

    fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            interim_every: self.interim_every,
            interim_max_buffer: self.interim_max_buffer,
            max_segment: self.max_segment,
            close_timeout: self.close_timeout,
            utterance_gap: self.utterance_gap,
            utterance_context: self.utterance_context,
            gate: self.gate.clone(),
        }
    }
}

/// Why the local recognizer could not start or transcribe.
#[derive(Debug, thiserror::Error)]
pub enum LocalSttError {
    #[error(transparent)]
    Model(#[from] MoonshineError),
    #[error("reading {path}: {message}")]
    Wav { path: PathBuf, message: String },
    #[error("starting the local STT worker threads: {0}")]
    Threads(std::io::Error),
    #[error("the local STT workers have stopped")]
    Stopped,
    #[error("local STT configuration: {0}")]
    Config(String),
}

/// The local recognizer: one set of worker threads and models for every call. Cloning shares it;
/// the workers stop when the last clone (and every session using it) is gone.
#[derive(Clone)]
pub struct LocalStt {
    pool: Arc<Pool>,
    settings: Arc<StreamSettings>,
    config: Arc<LocalSttConfig>,
}

impl std::fmt::Debug for LocalStt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStt").field("model_dir", &self.config.model_dir).field("pool", &self.pool).finish()
    }
}

impl LocalStt {
    /// Loads `workers` copies of the model and starts their threads. Blocks for a few seconds:
    /// call it at startup or from `spawn_blocking`.
    pub fn open(config: LocalSttConfig) -> Result<Self, LocalSttError> {
        if config.workers == 0 {
            return Err(LocalSttError::Config("workers must be at least 1".into()));
        }
        let options = MoonshineOptions {
            model_dir: config.model_dir.clone(),
            ort_dylib: config.ort_dylib.clone(),
            verify_checksums: config.verify_checksums,
            intra_threads: config.intra_threads,
        };
        let started = std::time::Instant::now();
        let mut models: Vec<Box<dyn Recognizer>> = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            models.push(Box::new(MoonshineModel::load(&options)?));
        }
        tracing::info!(
            workers = config.workers,
            intra_threads = config.intra_threads,
            load_ms = started.elapsed().as_millis() as u64,
            "local STT model loaded"
        );
        Self::with_recognizers(models, config)
    }

    /// The provider on recognizers of any kind (the tests' scripted ones).
    fn with_recognizers(models: Vec<Box<dyn Recognizer>>, config: LocalSttConfig) -> Result<Self, LocalSttError> {
        let pool = Pool::start(models, config.queue_capacity).map_err(LocalSttError::Threads)?;
        Ok(Self { pool: Arc::new(pool), settings: Arc::new(config.stream_settings()), config: Arc::new(config) })
    }

    pub fn config(&self) -> &LocalSttConfig {
        &self.config
    }

    /// Opens a streaming session (needs a Tokio runtime). Only English is available.
    pub fn session(&self, options: &SttOptions) -> Result<(SttHandle, SttEvents), SttError> {
        if let Some(language) = options.language.as_deref() {
            let base = language.split(['-', '_']).next().unwrap_or_default();
            if !base.eq_ignore_ascii_case(LANGUAGE) {
                return Err(SttError::Config(format!(
                    "the local recognizer understands English only, not {language:?}"
                )));
            }
        }
        if let Some(model) = options.model.as_deref() {
            tracing::debug!(model, "local STT has one model; the persona's STT model is ignored");
        }
        let frames = (self.config.send_queue.as_secs_f64() * 50.0).ceil().max(1.0) as usize;
        let (handle, cmds) = command_channel(frames);
        let (events_tx, events) = mpsc::channel(self.config.event_capacity.max(1));
        let stream = CallStream::new(self.pool.clone(), self.settings.clone(), cmds, events_tx);
        tokio::spawn(stream.run().instrument(tracing::Span::current()));
        Ok((handle, events))
    }

    /// Transcribes mono samples (±1.0) at any rate; long audio is split at quiet points. Blocks
    /// until done: not for async code (use `spawn_blocking`).
    pub fn transcribe_samples(&self, samples: &[f32], rate_hz: u32) -> Result<String, LocalSttError> {
        offline::transcribe(&self.pool, &self.config, samples, rate_hz)
    }

    /// Transcribes a WAV file (any rate, channels mixed to mono). Blocking, like
    /// [`transcribe_samples`](Self::transcribe_samples).
    pub fn transcribe_wav(&self, path: impl AsRef<Path>) -> Result<String, LocalSttError> {
        let path = path.as_ref();
        let (samples, rate) = read_wav_mono(path)?;
        self.transcribe_samples(&samples, rate)
    }
}

impl SpeechToText for LocalStt {
    fn connect(&self, options: SttOptions) -> BoxFuture<'static, Result<(SttHandle, SttEvents), SttError>> {
        let this = self.clone();
        Box::pin(async move { this.session(&options) })
    }
}

/// What a WAV file says, with one recognizer per process opened from
/// [`LocalSttConfig::from_env`] on first use (for tests and tools). Blocking.
pub fn transcribe_wav(path: impl AsRef<Path>) -> Result<String, LocalSttError> {
    static SHARED: OnceLock<Result<LocalStt, String>> = OnceLock::new();
    let stt = SHARED.get_or_init(|| LocalStt::open(LocalSttConfig::from_env()).map_err(|e| e.to_string()));
    match stt {
        Ok(stt) => stt.transcribe_wav(path),
        Err(message) => Err(LocalSttError::Config(message.clone())),
    }
}
