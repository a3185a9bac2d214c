//! Smart Turn v3.2: end-of-turn detection at each VAD stop, with the reference's
//! surrounding logic (Pipecat 1.14's `BaseSmartTurn` + `LocalSmartTurnAnalyzerV3`, driven
//! the way `TurnAnalyzerUserTurnStopStrategy` drives them).
//!
//! * [`TurnAnalyzer`] (per call, no model): keeps the call's recent audio with speech flags,
//!   cuts the segment to score at a VAD stop (from `pre_speech_ms + vad start_secs` before
//!   speech began, at most `max_duration_secs`), and ends an incomplete turn after
//!   `stop_secs` of silence without the model.
//! * [`SmartTurnModel`] (sync): 8 → 16 kHz resampling, the Whisper front end
//!   ([`super::features`]) and the int8 ONNX model; complete iff p > 0.5.
//! * [`SmartTurnEngine`]: one shared session on a dedicated thread (a 40–70 ms inference
//!   never runs on the async reactor); requests that arrive together run as one batch.
//! * [`TurnDetector`]: one call's VAD stream + turn analyzer + engine handle, frame by frame.
//!
//! Time is counted in samples of the stream, which on a call is the arrival time the
//! reference reads from its monotonic clock.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::thread::JoinHandle;

use ort::session::Session;
use ort::value::TensorRef;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, FixedAsync, Resampler, SincInterpolationParameters, SincInterpolationType, WindowFunction};
use tokio::sync::oneshot;

use super::features::{self, FeatureError, WhisperFeatures, N_FEATURES, N_FRAMES, N_MELS};
use super::models::{open_session, Model, ModelError, ModelPaths};
use super::vad::{VadError, VadEvent, VadStream, VadWindow};

/// The reference's decision threshold: complete iff p > 0.5.
pub const COMPLETE_THRESHOLD: f32 = 0.5;
const MODEL_RATE: u32 = 16_000;

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
    Resample(String),
    #[error("Smart Turn inference failed: {0}")]
    Inference(String),
    #[error("turn segments must be 8 or 16 kHz, got {0} Hz")]
    Rate(u32),
    #[error("the Smart Turn engine has shut down")]
    EngineStopped,
}

// ---------------------------------------------------------------------------------------
// Per-call analyzer.

#[derive(Debug, Clone, Copy)]
struct Chunk {
    start: u64,
    end: u64,
    speech: bool,
}

/// Audio to score at a VAD stop.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnSegment {
    /// Samples at `rate`, int16 / 32768.
    pub audio: Vec<f32>,
    pub rate: u32,
    /// Stream position the segment ends at (see [`TurnAnalyzer::apply_verdict`]).
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

/// One call's turn state: recent audio with speech flags, the speech start, the silence
/// since speech. Feed it every frame, then the VAD events of that frame.
#[derive(Debug, Clone)]
pub struct TurnAnalyzer {
    rate: u32,
    params: TurnParams,
    vad_start_secs: f64,
    /// The VAD's speaking flag as the reference's stop strategy sees it.
    user_speaking: bool,
    samples: VecDeque<i16>,
    chunks: VecDeque<Chunk>,
    position: u64,
    speech_triggered: bool,
    speech_start: Option<u64>,
    silence_ms: f64,
}

impl TurnAnalyzer {
    /// `vad_start_secs` is the VAD's start_secs (extra pre-speech audio, as the reference).
    pub fn new(rate: u32, params: TurnParams, vad_start_secs: f64) -> Self {
        let keep = max_samples(rate, &params) + rate as usize / 10;
        TurnAnalyzer {
            rate,
            params,
            vad_start_secs,
            user_speaking: false,
            samples: VecDeque::with_capacity(keep),
            chunks: VecDeque::with_capacity(keep / 80 + 8),
            position: 0,
            speech_triggered: false,
            speech_start: None,
            silence_ms: 0.0,
        }
    }

    pub fn params(&self) -> &TurnParams {
        &self.params
    }

    /// Appends a frame with the speaking flag from before the VAD saw it. Returns true when
    /// the silence after an incomplete verdict reached `stop_secs`: the turn is complete
    /// without running the model (and the analyzer is cleared).
    pub fn append(&mut self, frame: &[i16]) -> bool {
        let start = self.position;
        self.position += frame.len() as u64;
        self.samples.extend(frame.iter().copied());
        self.chunks.push_back(Chunk { start, end: self.position, speech: self.user_speaking });
        self.trim();
        let complete = self.track(self.user_speaking, frame.len());
        if complete {
            self.clear();
        }
        complete
    }

    /// Speech flag bookkeeping for one appended chunk; true when the fallback fires.
    fn track(&mut self, speech: bool, len: usize) -> bool {
        if speech {
            self.silence_ms = 0.0;
            self.speech_triggered = true;
            if self.speech_start.is_none() {
                self.speech_start = Some(self.position);
            }
            return false;
        }
        if !self.speech_triggered {
            return false;
        }
        self.silence_ms += len as f64 / (f64::from(self.rate) / 1000.0);
        self.silence_ms >= self.params.stop_secs * 1000.0
    }

    /// Keeps whole chunks covering at least the last `max_duration` of audio: the segment
    /// never uses more, so older audio cannot change a verdict.
    fn trim(&mut self) {
        let keep = max_samples(self.rate, &self.params);
        while let Some(oldest) = self.chunks.front().copied() {
            let len = (oldest.end - oldest.start) as usize;
            if self.samples.len() - len < keep {
                break;
            }
            self.chunks.pop_front();
            self.samples.drain(..len);
        }
    }

    /// Handles a VAD edge. At a stop, returns the segment the model must score (None when
    /// there is no audio, as the reference skips the model then).
    pub fn on_vad_event(&mut self, event: VadEvent) -> Option<TurnSegment> {
        match event {
            VadEvent::SpeechStart => {
                self.user_speaking = true;
                None
            }
            VadEvent::SpeechStop => {
                self.user_speaking = false;
                self.segment()
            }
        }
    }

    /// Sets the VAD's start_secs (the reference updates it at every VAD start).
    pub fn set_vad_start_secs(&mut self, secs: f64) {
        self.vad_start_secs = secs;
    }

    /// Whether the VAD currently reports the user speaking.
    pub fn user_speaking(&self) -> bool {
        self.user_speaking
    }

    /// Whether speech has been seen since the last complete turn.
    pub fn speech_triggered(&self) -> bool {
        self.speech_triggered
    }

    /// The segment the model would score if the VAD stopped now; the turn's state is untouched
    /// (`analyze --probe-pause`).
    pub fn segment_so_far(&self) -> Option<TurnSegment> {
        self.segment()
    }

    fn segment(&self) -> Option<TurnSegment> {
        let first = self.chunks.front()?;
        let pre_ms = self.params.pre_speech_ms + self.vad_start_secs * 1000.0;
        let pre = (pre_ms * f64::from(self.rate) / 1000.0).round() as u64;
        let threshold = self.speech_start.unwrap_or(0).saturating_sub(pre);
        let begin = self.chunks.iter().find(|c| c.end >= threshold).map_or(first.start, |c| c.start);
        let from = (begin.max(first.start) - first.start) as usize;
        let len = (self.samples.len() - from).min(max_samples(self.rate, &self.params));
        let skip = self.samples.len() - len;
        let audio = self.samples.range(skip..).map(|&s| f32::from(s) / 32768.0).collect();
        Some(TurnSegment { audio, rate: self.rate, upto: self.position })
    }

    /// Applies the model's verdict for a segment. Complete clears the turn (audio up to
    /// the segment's end); frames appended while the model ran are kept and re-flagged, as
    /// if they had arrived after the verdict. Incomplete keeps everything.
    pub fn apply_verdict(&mut self, verdict: &TurnVerdict) {
        if !verdict.complete {
            return;
        }
        while let Some(c) = self.chunks.front().copied() {
            if c.end > verdict.upto {
                break;
            }
            self.chunks.pop_front();
            self.samples.drain(..(c.end - c.start) as usize);
        }
        self.speech_triggered = false;
        self.speech_start = None;
        self.silence_ms = 0.0;
        let later: Vec<Chunk> = self.chunks.iter().copied().collect();
        for c in later {
            let position = self.position;
            self.position = c.end; // speech start is the chunk's own arrival time
            self.track(c.speech, (c.end - c.start) as usize);
            self.position = position;
        }
    }

    /// Forgets the turn (the reference's `clear()`, also called when a turn ends elsewhere).
    pub fn clear(&mut self) {
        self.samples.clear();
        self.chunks.clear();
        self.speech_triggered = false;
        self.speech_start = None;
        self.silence_ms = 0.0;
    }
}

fn max_samples(rate: u32, params: &TurnParams) -> usize {
    (params.max_duration_secs * f64::from(rate)) as usize
}

// ---------------------------------------------------------------------------------------
// 8 → 16 kHz for the segment.

/// The reference resamples each segment with `soxr.resample(x, 8000, 16000, "HQ")`. The
/// int8 model is so sensitive that a resampler differing by −78 dB moves p by up to 0.4,
/// so when the system's libsoxr (Debian `libsoxr0`) can be loaded, this calls the same
/// library the same way (bit-identical output); otherwise it falls back to rubato.
pub struct SegmentResampler {
    backend: Backend,
    padded: Vec<f32>,
    out: Vec<f32>,
}

enum Backend {
    Soxr(SoxrLib),
    Rubato(Box<Async<f32>>),
}

/// Which implementation a [`SegmentResampler`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResamplerKind {
    /// libsoxr "HQ", one-shot: identical to the reference.
    Soxr,
    /// rubato: 256-tap Blackman-Harris² sinc, cutoff 0.957 × 4 kHz. soxr HQ is linear
    /// phase, flat to 3.65 kHz, −3 dB at 3.8 kHz and −130 dB from 4 kHz; this follows it
    /// to about −78 dB on speech, differing in the 3.6–4.2 kHz transition band.
    Rubato,
}

/// libsoxr's names for the symbols used (soxr.h, 0.1.x).
#[repr(C)]
#[derive(Clone, Copy)]
struct SoxrQualitySpec {
    precision: f64,
    phase_response: f64,
    passband_end: f64,
    stopband_begin: f64,
    e: *mut std::ffi::c_void,
    flags: std::ffi::c_ulong,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SoxrIoSpec {
    itype: std::ffi::c_int,
    otype: std::ffi::c_int,
    scale: f64,
    e: *mut std::ffi::c_void,
    flags: std::ffi::c_ulong,
}

type SoxrOneshot = unsafe extern "C" fn(
    f64,
    f64,
    std::ffi::c_uint,
    *const f32,
    usize,
    *mut usize,
    *mut f32,
    usize,
    *mut usize,
    *const SoxrIoSpec,
    *const SoxrQualitySpec,
    *const std::ffi::c_void,
) -> *const std::ffi::c_char;

const SOXR_HQ: std::ffi::c_ulong = 4; // SOXR_20_BITQ
const SOXR_FLOAT32_I: std::ffi::c_int = 0;

struct SoxrLib {
    oneshot: SoxrOneshot,
    quality: SoxrQualitySpec,
    io: SoxrIoSpec,
    /// Keeps `oneshot` valid.
    _lib: libloading::Library,
}

// SAFETY: the specs hold null `e` pointers only; the library handle and function pointer
// are plain code addresses, and soxr_oneshot keeps no state between calls.
unsafe impl Send for SoxrLib {}

impl SoxrLib {
    fn load() -> Option<Self> {
        for name in ["libsoxr.so.0", "libsoxr.so"] {
            // SAFETY: libsoxr's initialisers have no preconditions; the symbols are
            // declared with the signatures of soxr.h.
            let loaded = unsafe {
                libloading::Library::new(name).and_then(|lib| {
                    let quality_spec: libloading::Symbol<
                        unsafe extern "C" fn(std::ffi::c_ulong, std::ffi::c_ulong) -> SoxrQualitySpec,
                    > = lib.get(b"soxr_quality_spec\0")?;
                    let io_spec: libloading::Symbol<
                        unsafe extern "C" fn(std::ffi::c_int, std::ffi::c_int) -> SoxrIoSpec,
                    > = lib.get(b"soxr_io_spec\0")?;
                    let oneshot: libloading::Symbol<SoxrOneshot> = lib.get(b"soxr_oneshot\0")?;
                    let quality = quality_spec(SOXR_HQ, 0);
                    let io = io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
                    let oneshot = *oneshot;
                    Ok(SoxrLib { oneshot, quality, io, _lib: lib })
                })
            };
            if let Ok(lib) = loaded {
                return Some(lib);
            }
        }
        None
    }

    fn process(&self, input: &[f32], out: &mut [f32]) -> Result<usize, TurnError> {
        let mut done = 0usize;
        // SAFETY: `input` and `out` are valid for the lengths passed; the specs come from
        // libsoxr itself; idone may be null.
        let err = unsafe {
            (self.oneshot)(
                8000.0,
                f64::from(MODEL_RATE),
                1,
                input.as_ptr(),
                input.len(),
                std::ptr::null_mut(),
                out.as_mut_ptr(),
                out.len(),
                &mut done,
                &self.io,
                &self.quality,
                std::ptr::null(),
            )
        };
        if err.is_null() {
            Ok(done)
        } else {
            // SAFETY: soxr errors are static NUL-terminated strings.
            let msg = unsafe { std::ffi::CStr::from_ptr(err) };
            Err(TurnError::Resample(msg.to_string_lossy().into_owned()))
        }
    }
}

/// rubato's sinc trims one input sample (two output samples) more delay than its filter
/// has at ratio 2; a leading zero input sample puts the output back in phase.
const LEAD_IN: usize = 1;

impl SegmentResampler {
    /// libsoxr when the system has it, else rubato.
    pub fn new() -> Result<Self, TurnError> {
        match SoxrLib::load() {
            Some(lib) => Ok(Self::with_backend(Backend::Soxr(lib))),
            None => {
                tracing::warn!(
                    "libsoxr.so.0 not found (apt-get install libsoxr0): Smart Turn uses rubato \
                     for 8 -> 16 kHz, so its probabilities differ from the reference's"
                );
                Self::rubato()
            }
        }
    }

    /// The rubato fallback, whatever the system has.
    pub fn rubato() -> Result<Self, TurnError> {
        let params = SincInterpolationParameters {
            sinc_len: 256,
            f_cutoff: Some(0.957),
            oversampling_factor: 2, // ratio 2 only needs positions 0 and 1/2: exact
            interpolation: SincInterpolationType::Nearest,
            window: WindowFunction::BlackmanHarris2,
        };
        let inner = Async::<f32>::new_sinc(2.0, 1.0, &params, 1024, 1, FixedAsync::Input)
            .map_err(|e| TurnError::Resample(e.to_string()))?;
        Ok(Self::with_backend(Backend::Rubato(Box::new(inner))))
    }

    fn with_backend(backend: Backend) -> Self {
        SegmentResampler { backend, padded: Vec::new(), out: Vec::new() }
    }

    pub fn kind(&self) -> ResamplerKind {
        match self.backend {
            Backend::Soxr(_) => ResamplerKind::Soxr,
            Backend::Rubato(_) => ResamplerKind::Rubato,
        }
    }

    /// Resamples a whole clip 8 → 16 kHz; the output has exactly twice the input length.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), TurnError> {
        out.clear();
        if input.is_empty() {
            return Ok(());
        }
        let want = 2 * input.len();
        match &mut self.backend {
            Backend::Soxr(lib) => {
                out.resize(want, 0.0);
                let done = lib.process(input, out)?;
                out.truncate(done);
            }
            Backend::Rubato(inner) => {
                self.padded.clear();
                self.padded.resize(LEAD_IN, 0.0);
                self.padded.extend_from_slice(input);
                let n = self.padded.len();
                inner.reset();
                let needed = inner.process_all_needed_output_len(n);
                self.out.resize(needed, 0.0);
                let size_err = |e: rubato::audioadapter_buffers::SizeError| TurnError::Resample(e.to_string());
                let inp = InterleavedSlice::new(&self.padded, 1, n).map_err(size_err)?;
                let mut outp = InterleavedSlice::new_mut(&mut self.out, 1, needed).map_err(size_err)?;
                let (_, produced) = inner
                    .process_all_into_buffer(&inp, &mut outp, n, None)
                    .map_err(|e| TurnError::Resample(e.to_string()))?;
                out.extend_from_slice(&self.out[..produced.min(want)]);
            }
        }
        out.resize(want, 0.0);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The model.

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

// ---------------------------------------------------------------------------------------
// The shared engine.

/// How the Smart Turn engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmartTurnConfig {
    /// Intra-op threads of the session (1 leaves the other core to the calls).
    pub intra_threads: usize,
    /// Most segments scored in one run.
    pub max_batch: usize,
}

impl Default for SmartTurnConfig {
    fn default() -> Self {
        SmartTurnConfig { intra_threads: 1, max_batch: 8 }
    }
}

struct Request {
    segment: TurnSegment,
    reply: oneshot::Sender<Result<TurnVerdict, String>>,
}

/// One Smart Turn session on a dedicated thread, shared by every call.
pub struct SmartTurnEngine {
    tx: Option<mpsc::Sender<Request>>,
    worker: Option<JoinHandle<()>>,
}

/// A cloneable handle calls use to submit segments.
#[derive(Clone)]
pub struct SmartTurnHandle {
    tx: mpsc::Sender<Request>,
}

impl SmartTurnEngine {
    pub fn start(paths: &ModelPaths, config: SmartTurnConfig) -> Result<Self, TurnError> {
        let model = SmartTurnModel::open(paths, config.intra_threads)?;
        let (tx, rx) = mpsc::channel::<Request>();
        let max_batch = config.max_batch.max(1);
        let worker = std::thread::Builder::new()
            .name("smart-turn".into())
            .spawn(move || turn_worker(model, &rx, max_batch))
            .map_err(|e| TurnError::Inference(format!("starting Smart Turn worker: {e}")))?;
        Ok(SmartTurnEngine { tx: Some(tx), worker: Some(worker) })
    }

    pub fn handle(&self) -> SmartTurnHandle {
        SmartTurnHandle { tx: self.tx.clone().expect("sender lives until drop") }
    }
}

impl Drop for SmartTurnEngine {
    fn drop(&mut self) {
        // The worker ends once every handle is gone too; don't wait for calls still open.
        self.tx.take();
        if let Some(worker) = self.worker.take() {
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

fn turn_worker(mut model: SmartTurnModel, rx: &mpsc::Receiver<Request>, max_batch: usize) {
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    let mut probs = vec![0.0f32; max_batch];
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        let segments: Vec<(&[f32], u32)> = batch.iter().map(|r| (r.segment.audio.as_slice(), r.segment.rate)).collect();
        let result = model.predict_batch(&segments, &mut probs);
        drop(segments);
        for (i, req) in batch.drain(..).enumerate() {
            let reply = match &result {
                Ok(()) => Ok(TurnVerdict {
                    probability: probs[i],
                    complete: probs[i] > COMPLETE_THRESHOLD,
                    upto: req.segment.upto,
                }),
                Err(e) => Err(e.to_string()),
            };
            let _ = req.reply.send(reply); // the call may have ended meanwhile
        }
    }
}

/// A segment being scored; await [`PendingTurn::verdict`].
pub struct PendingTurn {
    rx: oneshot::Receiver<Result<TurnVerdict, String>>,
}

impl PendingTurn {
    pub async fn verdict(self) -> Result<TurnVerdict, TurnError> {
        match self.rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(msg)) => Err(TurnError::Inference(msg)),
            Err(_) => Err(TurnError::EngineStopped),
        }
    }
}

impl SmartTurnHandle {
    /// Queues a segment for scoring; does not wait.
    pub fn submit(&self, segment: TurnSegment) -> Result<PendingTurn, TurnError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request { segment, reply }).map_err(|_| TurnError::EngineStopped)?;
        Ok(PendingTurn { rx })
    }

    /// Scores a segment off the reactor.
    pub async fn evaluate(&self, segment: TurnSegment) -> Result<TurnVerdict, TurnError> {
        self.submit(segment)?.verdict().await
    }
}

// ---------------------------------------------------------------------------------------
// One call's detector.

/// What one 20 ms frame produced.
#[derive(Default)]
pub struct FrameOutcome {
    /// The VAD window this frame completed (every 1.6 frames at 8 kHz).
    pub window: Option<VadWindow>,
    /// Speech start/stop edge.
    pub event: Option<VadEvent>,
    /// An incomplete turn ran out of patience (`stop_secs` of silence): complete now.
    pub fallback_complete: bool,
    /// At a speech stop: the Smart Turn verdict being computed. Await it, then hand it to
    /// [`TurnDetector::apply_verdict`].
    pub pending: Option<PendingTurn>,
}

/// One call's VAD + turn analysis on the shared engines.
pub struct TurnDetector {
    vad: VadStream,
    turn: TurnAnalyzer,
    smart_turn: SmartTurnHandle,
}

impl TurnDetector {
    /// `vad_start_secs` must be the VAD stream's start_secs.
    pub fn new(vad: VadStream, smart_turn: SmartTurnHandle, params: TurnParams, vad_start_secs: f64) -> Self {
        let rate = vad.rate().hz();
        TurnDetector { vad, turn: TurnAnalyzer::new(rate, params, vad_start_secs), smart_turn }
    }

    /// Feeds one frame (160 samples at 8 kHz): the turn analyzer first (with the VAD flag
    /// from before this frame, as the reference), then the VAD.
    pub async fn push_frame(&mut self, frame: &[i16]) -> Result<FrameOutcome, TurnError> {
        let fallback_complete = self.turn.append(frame);
        let window = self.vad.push_frame(frame).await?;
        let event = window.and_then(|w| w.event);
        let pending = event.and_then(|e| self.score(e));
        Ok(FrameOutcome { window, event, fallback_complete, pending })
    }

    /// Applies a verdict from [`FrameOutcome::pending`].
    pub fn apply_verdict(&mut self, verdict: &TurnVerdict) {
        self.turn.apply_verdict(verdict);
    }

    /// The reference's idle-audio stop (no frames for 1 s while speaking): reports a
    /// speech stop if one was due and starts scoring the turn, as a VAD stop would.
    pub fn force_stop(&mut self) -> Option<(VadEvent, Option<PendingTurn>)> {
        let event = self.vad.force_stop()?;
        Some((event, self.score(event)))
    }

    /// Hands a VAD edge to the turn analyzer and, at a stop, the segment to Smart Turn. A model
    /// that can't take it (its engine stopped) is logged and gives no verdict: the edge itself
    /// is never lost, and the turn then ends by its silence fallback or watchdog.
    fn score(&mut self, event: VadEvent) -> Option<PendingTurn> {
        let segment = self.turn.on_vad_event(event)?;
        match self.smart_turn.submit(segment) {
            Ok(pending) => Some(pending),
            Err(e) => {
                tracing::warn!(error = %e, "smart turn unavailable; the turn ends without its verdict");
                None
            }
        }
    }

    /// Forgets the current turn (e.g. it ended by another path).
    pub fn clear(&mut self) {
        self.turn.clear();
    }

    pub fn vad(&mut self) -> &mut VadStream {
        &mut self.vad
    }

    pub fn turn(&self) -> &TurnAnalyzer {
        &self.turn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzer(params: TurnParams) -> TurnAnalyzer {
        TurnAnalyzer::new(8000, params, 0.2)
    }

    /// Frames of 160 samples whose value is the frame index (to see what a segment holds).
    fn feed(a: &mut TurnAnalyzer, from: usize, to: usize) -> Vec<bool> {
        (from..to).map(|i| a.append(&[i as i16; 160])).collect()
    }

    fn frames_in(seg: &TurnSegment) -> Vec<i16> {
        let mut ids: Vec<i16> = seg.audio.iter().map(|&x| (x * 32768.0).round() as i16).collect();
        ids.dedup();
        ids
    }

    #[test]
    fn segment_starts_pre_speech_plus_vad_start_before_speech() {
        let mut a = analyzer(TurnParams::default());
        feed(&mut a, 0, 100); // 2 s of non-speech
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 100, 150); // speech chunks: first ends at 101 × 160
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        // Speech start = end of frame 100; 0.7 s = 35 frames earlier is the end of frame 65,
        // exactly on the boundary, so frame 65 is included (t ≥ start).
        assert_eq!(frames_in(&seg).first(), Some(&65));
        assert_eq!(frames_in(&seg).last(), Some(&149));
        assert_eq!(seg.upto, 150 * 160);
    }

    #[test]
    fn reference_seed_keeps_only_the_vad_start_window() {
        let mut a = analyzer(TurnParams::reference_seed());
        feed(&mut a, 0, 50);
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 50, 60);
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        assert_eq!(frames_in(&seg).first(), Some(&(50 - 10)));
    }

    #[test]
    fn segment_is_capped_to_max_duration() {
        let mut a = analyzer(TurnParams::default());
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 0, 600); // 12 s of speech
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        assert_eq!(seg.audio.len(), 64_000);
        assert_eq!(frames_in(&seg).first(), Some(&200));
        // The ring never holds much more than the cap.
        assert!(a.samples.len() < 64_000 + 160);
    }

    #[test]
    fn incomplete_turn_completes_after_stop_secs_of_silence_without_the_model() {
        let mut a = analyzer(TurnParams::default());
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 0, 50);
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        a.apply_verdict(&TurnVerdict { probability: 0.2, complete: false, upto: seg.upto });
        assert!(a.speech_triggered());
        // 74 silent frames = 1.48 s: not yet; the 75th reaches 1.5 s.
        assert!(feed(&mut a, 50, 124).iter().all(|&c| !c));
        assert!(a.append(&[0; 160]));
        assert!(!a.speech_triggered() && a.chunks.is_empty());
    }

    #[test]
    fn new_speech_resets_the_silence_and_the_next_stop_rescores_the_whole_turn() {
        let mut a = analyzer(TurnParams::default());
        feed(&mut a, 0, 40);
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 40, 60);
        let first = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        a.apply_verdict(&TurnVerdict { probability: 0.1, complete: false, upto: first.upto });
        feed(&mut a, 60, 130); // 1.4 s of silence
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 130, 140);
        let second = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        assert_eq!(frames_in(&first)[0], frames_in(&second)[0], "same speech start");
        assert!(second.audio.len() > first.audio.len());
        assert!(feed(&mut a, 140, 214).iter().all(|&c| !c), "silence restarted at speech");
    }

    #[test]
    fn complete_verdict_clears_but_keeps_frames_that_arrived_meanwhile() {
        let mut a = analyzer(TurnParams::default());
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 0, 30);
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        feed(&mut a, 30, 33); // arrive while the model runs
        a.apply_verdict(&TurnVerdict { probability: 0.9, complete: true, upto: seg.upto });
        assert!(!a.speech_triggered());
        assert_eq!(a.chunks.len(), 3);
        assert_eq!(a.samples.len(), 3 * 160);
    }

    #[test]
    fn speech_during_inference_keeps_its_own_start_after_a_complete_verdict() {
        let mut a = analyzer(TurnParams::reference_seed());
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 0, 30);
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 30, 32);
        a.apply_verdict(&TurnVerdict { probability: 0.9, complete: true, upto: seg.upto });
        assert!(a.speech_triggered());
        assert_eq!(a.speech_start, Some(31 * 160));
    }

    #[test]
    fn stop_without_any_audio_gives_no_segment() {
        let mut a = analyzer(TurnParams::default());
        assert!(a.on_vad_event(VadEvent::SpeechStop).is_none());
    }

    #[test]
    fn rubato_resampler_doubles_the_length_and_keeps_the_phase() {
        let mut r = SegmentResampler::rubato().unwrap();
        let mut impulse = vec![0.0f32; 2001];
        impulse[1000] = 1.0;
        let mut out = Vec::new();
        r.process(&impulse, &mut out).unwrap();
        assert_eq!(out.len(), 4002);
        // A linear-phase interpolator puts the impulse exactly on output sample 2000,
        // symmetric around it, with the input sample passed through (gain ~1 at t = 0).
        let peak = out.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(peak, 2000);
        assert!((out[2000] - 0.957).abs() < 0.01, "{}", out[2000]);
        for k in 1..100 {
            assert!((out[2000 - k] - out[2000 + k]).abs() < 1e-6, "asymmetric at {k}");
        }
        // A 1 kHz tone keeps its amplitude; nothing above 4 kHz appears.
        let tone: Vec<f32> = (0..8000).map(|n| (2.0 * std::f32::consts::PI * n as f32 / 8.0).sin() * 0.5).collect();
        r.process(&tone, &mut out).unwrap();
        let mid = &out[4000..4032];
        let peak = mid.iter().cloned().fold(0.0f32, f32::max);
        assert!((peak - 0.5).abs() < 0.01, "{peak}");
        for (n, &y) in out[2000..14000].iter().enumerate() {
            let t = (n + 2000) as f32 / 16000.0;
            let want = (2.0 * std::f32::consts::PI * 1000.0 * t).sin() * 0.5;
            assert!((y - want).abs() < 1e-3, "sample {n}: {y} vs {want}");
        }
    }

    #[test]
    fn soxr_backend_is_used_when_present_and_rubato_tracks_it() {
        let mut soxr = SegmentResampler::new().unwrap();
        if soxr.kind() != ResamplerKind::Soxr {
            panic!("libsoxr.so.0 is needed for reference parity: apt-get install libsoxr0");
        }
        let mut rubato = SegmentResampler::rubato().unwrap();
        // Voice-like: harmonics of 140 Hz up to 3.5 kHz with a slow envelope.
        let x: Vec<f32> = (0..16000)
            .map(|n| {
                let t = n as f32 / 8000.0;
                let env = (std::f32::consts::PI * t).sin().abs();
                (1..25).map(|k| (2.0 * std::f32::consts::PI * 140.0 * k as f32 * t).sin() / k as f32).sum::<f32>()
                    * 0.1
                    * env
            })
            .collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        soxr.process(&x, &mut a).unwrap();
        rubato.process(&x, &mut b).unwrap();
        assert_eq!((a.len(), b.len()), (32000, 32000));
        let err: f64 = a.iter().zip(&b).map(|(p, q)| f64::from(p - q).powi(2)).sum();
        let sig: f64 = a.iter().map(|p| f64::from(*p).powi(2)).sum();
        let db = 10.0 * (err / sig).log10();
        assert!(db < -70.0, "rubato vs soxr: {db:.1} dB");
    }

    #[test]
    fn forced_stop_scores_the_turn_like_a_vad_stop() {
        use crate::audio::models::tests::repo_models;
        use crate::audio::vad::{VadEngine, VadEngineConfig, VadParams, VadRate};
        let paths = repo_models();
        let vad = VadEngine::start(&paths, VadEngineConfig::default()).unwrap();
        let turn = SmartTurnEngine::start(&paths, SmartTurnConfig::default()).unwrap();
        let wav = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/audio/clean_8k.wav");
        let pcm: Vec<i16> = hound::WavReader::open(wav).unwrap().samples::<i16>().map(Result::unwrap).collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let params = VadParams::default();
            let stream = vad.stream(VadRate::Hz8000, params);
            let mut detector = TurnDetector::new(stream, turn.handle(), TurnParams::default(), params.start_secs);
            assert!(detector.force_stop().is_none(), "nothing to stop yet");
            let mut started = false;
            for frame in pcm.chunks(160) {
                if detector.push_frame(frame).await.unwrap().event == Some(VadEvent::SpeechStart) {
                    started = true;
                    break;
                }
            }
            assert!(started);
            let (event, pending) = detector.force_stop().expect("a stop is due");
            assert_eq!(event, VadEvent::SpeechStop);
            let verdict = pending.expect("segment to score").verdict().await.unwrap();
            assert!((0.0..=1.0).contains(&verdict.probability));
            assert!(!detector.turn().user_speaking());

            // With Smart Turn's worker gone the edge still comes through, just without a verdict.
            let (tx, rx) = mpsc::channel();
            drop(rx);
            let stream = vad.stream(VadRate::Hz8000, params);
            let dead = SmartTurnHandle { tx };
            let mut detector = TurnDetector::new(stream, dead, TurnParams::default(), params.start_secs);
            let mut started = false;
            for frame in pcm.chunks(160) {
                if detector.push_frame(frame).await.unwrap().event == Some(VadEvent::SpeechStart) {
                    started = true;
                    break;
                }
            }
            assert!(started, "speech again");
            let (event, pending) = detector.force_stop().expect("a stop is due");
            assert_eq!(event, VadEvent::SpeechStop);
            assert!(pending.is_none(), "no model to score it");
            assert!(!detector.turn().user_speaking());
        });
    }
}
