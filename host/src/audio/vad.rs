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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use ort::session::Session;
use ort::value::TensorRef;
use tokio::sync::Notify;

use super::models::{open_session, Model, ModelError, ModelPaths};

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

// ---------------------------------------------------------------------------------------
// Volume: BS.1770 loudness of the last 400 ms, as Pipecat's AudioVolumeTracker measures it.

/// K-weighting (BS.1770 pre-filter: high shelf then RLB high-pass) for `rate`, as one
/// 5-tap IIR `(b, a)`, derived from the analog prototypes by the bilinear transform with
/// prewarping `K = tan(π f0 / fs)` (the same derivation libebur128 uses).
fn k_weighting(rate: f64) -> ([f64; 5], [f64; 5]) {
    // High shelf.
    let (f0, gain_db, q) = (1681.974450955533, 3.999843853973347, 0.7071752369554196);
    let k = (std::f64::consts::PI * f0 / rate).tan();
    let vh = 10f64.powf(gain_db / 20.0);
    let vb = vh.powf(0.4996667741545416);
    let a0 = 1.0 + k / q + k * k;
    let shelf_b = [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0];
    let shelf_a = [1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0];
    // High-pass.
    let (f0, q) = (38.13547087602444, 0.5003270373238773);
    let k = (std::f64::consts::PI * f0 / rate).tan();
    let d = 1.0 + k / q + k * k;
    let hp_b = [1.0, -2.0, 1.0];
    let hp_a = [1.0, 2.0 * (k * k - 1.0) / d, (1.0 - k / q + k * k) / d];
    (convolve3(shelf_b, hp_b), convolve3(shelf_a, hp_a))
}

fn convolve3(x: [f64; 3], y: [f64; 3]) -> [f64; 5] {
    let mut out = [0.0; 5];
    for (i, xi) in x.iter().enumerate() {
        for (j, yj) in y.iter().enumerate() {
            out[i + j] += xi * yj;
        }
    }
    out
}

/// Loudness of one block (fresh filter state), quantised like libloudness's histogram and
/// mapped to 0..1 as Pipecat's `calculate_audio_volume` does.
fn block_volume(block: &[i16], b: &[f64; 5], a: &[f64; 5]) -> f64 {
    let mut v = [0.0f64; 5];
    let mut energy = 0.0f64;
    for &s in block {
        // Direct form II, as libebur128 filters.
        let x = f64::from(s) / 32768.0;
        v[0] = x - a[1] * v[1] - a[2] * v[2] - a[3] * v[3] - a[4] * v[4];
        let y = b[0] * v[0] + b[1] * v[1] + b[2] * v[2] + b[3] * v[3] + b[4] * v[4];
        v[4] = v[3];
        v[3] = v[2];
        v[2] = v[1];
        v[1] = v[0];
        energy += y * y;
    }
    let raw = -0.691 + 10.0 * (energy / block.len() as f64).log10();
    if raw.is_nan() || raw < -70.0 {
        return 0.0; // below the absolute gate: -inf LUFS
    }
    let lufs = -70.0 + ((raw + 70.0) * 10.0).floor() / 10.0 + 0.05;
    ((lufs + 110.0) / 100.0).clamp(0.0, 1.0)
}

/// Rolling 400 ms block plus exponential smoothing (factor 0.2).
#[derive(Debug, Clone)]
struct VolumeMeter {
    b: [f64; 5],
    a: [f64; 5],
    block: Vec<i16>,
    block_len: usize,
    volume: f64,
    smoothed: f64,
}

impl VolumeMeter {
    fn new(rate: VadRate) -> Self {
        let (b, a) = k_weighting(f64::from(rate.hz()));
        let block_len = rate.volume_block();
        VolumeMeter {
            b,
            a,
            block: Vec::with_capacity(block_len + rate.window()),
            block_len,
            volume: 0.0,
            smoothed: 0.0,
        }
    }

    /// Adds a window and returns the smoothed volume. Reads 0 until 400 ms have arrived.
    fn push(&mut self, samples: &[i16]) -> f64 {
        self.block.extend_from_slice(samples);
        if self.block.len() > self.block_len {
            let excess = self.block.len() - self.block_len;
            self.block.copy_within(excess.., 0);
            self.block.truncate(self.block_len);
        }
        if self.block.len() == self.block_len {
            self.volume = block_volume(&self.block, &self.b, &self.a);
        }
        self.smoothed += 0.2 * (self.volume - self.smoothed);
        self.smoothed
    }
}

// ---------------------------------------------------------------------------------------
// State machine.

#[derive(Debug, Clone)]
struct Machine {
    state: VadState,
    starting: u32,
    stopping: u32,
    start_windows: u32,
    stop_windows: u32,
}

impl Machine {
    fn new(rate: VadRate, params: &VadParams) -> Self {
        let secs_per_window = rate.window() as f64 / f64::from(rate.hz());
        let windows = |secs: f64| (secs / secs_per_window).round_ties_even().max(0.0) as u32;
        Machine {
            state: VadState::Quiet,
            starting: 0,
            stopping: 0,
            start_windows: windows(params.start_secs),
            stop_windows: windows(params.stop_secs),
        }
    }

    /// One window's transition, then the start/stop thresholds (checked after every
    /// window; the reference checks after each chunk, which holds at most one window when
    /// chunks are no longer than a window).
    fn step(&mut self, speech: bool) {
        use VadState::*;
        match (speech, self.state) {
            (true, Quiet) => {
                self.state = Starting;
                self.starting = 1;
            }
            (true, Starting) => self.starting += 1,
            (true, Stopping) => {
                self.state = Speaking;
                self.stopping = 0;
            }
            (false, Starting) => {
                self.state = Quiet;
                self.starting = 0;
            }
            (false, Speaking) => {
                self.state = Stopping;
                self.stopping = 1;
            }
            (false, Stopping) => self.stopping += 1,
            (true, Speaking) | (false, Quiet) => {}
        }
        if self.state == Starting && self.starting >= self.start_windows {
            self.state = Speaking;
            self.starting = 0;
        }
        if self.state == Stopping && self.stopping >= self.stop_windows {
            self.state = Quiet;
            self.stopping = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Per-stream state (everything but the model).

/// Windows of audio between model resets, and the low-confidence run that allows one.
const RESET_INTERVAL_SECS: u64 = 2;
const RESET_MAX_CONFIDENCE: f64 = 0.1;
const RESET_LOW_WINDOWS: u32 = 5;

const MAX_INPUT: usize = 576;
const STATE_LEN: usize = 256;

/// One stream's window assembly, model memory, volume and state machine.
#[derive(Debug, Clone)]
struct VadCore {
    rate: VadRate,
    params: VadParams,
    /// Samples not yet scored (at most one window plus one frame).
    pending: Vec<i16>,
    context: [f32; 64],
    state: [f32; STATE_LEN],
    meter: VolumeMeter,
    machine: Machine,
    /// What the VAD controller last reported (only SPEAKING/QUIET edges are events).
    reported_speaking: bool,
    windows_since_reset: u64,
    low_confidence_run: u32,
    scored: u64,
}

impl VadCore {
    fn new(rate: VadRate, params: VadParams) -> Self {
        VadCore {
            rate,
            params,
            pending: Vec::with_capacity(2 * rate.window()),
            context: [0.0; 64],
            state: [0.0; STATE_LEN],
            meter: VolumeMeter::new(rate),
            machine: Machine::new(rate, &params),
            reported_speaking: false,
            windows_since_reset: 0,
            low_confidence_run: 0,
            scored: 0,
        }
    }

    /// Adds a frame; true when a full window is ready to score.
    fn push(&mut self, frame: &[i16]) -> Result<bool, VadError> {
        let max = self.rate.window();
        if frame.len() > max {
            return Err(VadError::FrameTooLong { got: frame.len(), max });
        }
        self.pending.extend_from_slice(frame);
        Ok(self.pending.len() >= max)
    }

    /// Writes the model input (context + window, int16 / 32768) and the recurrent state.
    fn load(&self, input: &mut [f32], state: &mut [f32]) {
        let ctx = self.rate.context();
        input[..ctx].copy_from_slice(&self.context[..ctx]);
        for (dst, &s) in input[ctx..self.rate.input_len()].iter_mut().zip(&self.pending[..self.rate.window()]) {
            *dst = f32::from(s) / 32768.0;
        }
        state.copy_from_slice(&self.state);
    }

    /// Applies the model's answer for the pending window and runs the gates and the
    /// state machine, in the reference's order.
    fn finish(&mut self, probability: f32, new_state: &[f32]) -> VadWindow {
        let (win, ctx) = (self.rate.window(), self.rate.context());
        self.state.copy_from_slice(new_state);
        for (dst, &s) in self.context[..ctx].iter_mut().zip(&self.pending[win - ctx..win]) {
            *dst = f32::from(s) / 32768.0;
        }
        self.maybe_reset_model(probability);

        let volume = self.meter.push(&self.pending[..win]);
        self.pending.copy_within(win.., 0);
        self.pending.truncate(self.pending.len() - win);

        let speech = probability >= self.params.confidence as f32 && volume >= self.params.min_volume;
        self.machine.step(speech);
        let event = self.edge();
        self.scored += 1;
        let end_sample = self.scored * win as u64;
        VadWindow {
            end_sample,
            t: end_sample as f64 / f64::from(self.rate.hz()),
            probability,
            volume,
            speech,
            state: self.machine.state,
            event,
        }
    }

    /// The reference's reset: after ≥ 2 s of scored audio, at the first window where the
    /// analyzer was QUIET before it and ≥ 5 windows in a row scored < 0.1, zero the state
    /// and context (from the next window on).
    fn maybe_reset_model(&mut self, probability: f32) {
        self.windows_since_reset += 1;
        if f64::from(probability) < RESET_MAX_CONFIDENCE {
            self.low_confidence_run += 1;
        } else {
            self.low_confidence_run = 0;
        }
        let due =
            self.windows_since_reset * self.rate.window() as u64 >= RESET_INTERVAL_SECS * u64::from(self.rate.hz());
        if due && self.machine.state == VadState::Quiet && self.low_confidence_run >= RESET_LOW_WINDOWS {
            self.state = [0.0; STATE_LEN];
            self.context = [0.0; 64];
            self.windows_since_reset = 0;
        }
    }

    fn edge(&mut self) -> Option<VadEvent> {
        match self.machine.state {
            VadState::Speaking if !self.reported_speaking => {
                self.reported_speaking = true;
                Some(VadEvent::SpeechStart)
            }
            VadState::Quiet if self.reported_speaking => {
                self.reported_speaking = false;
                Some(VadEvent::SpeechStop)
            }
            _ => None,
        }
    }

    fn set_params(&mut self, params: VadParams) {
        // As the reference: the state machine restarts, volume and model memory carry on.
        self.params = params;
        self.machine = Machine::new(self.rate, &params);
    }

    /// The controller's forced stop (no audio for a while during speech). The analyzer's
    /// own state is untouched, so speech resuming reports a new start.
    fn force_stop(&mut self) -> Option<VadEvent> {
        std::mem::take(&mut self.reported_speaking).then_some(VadEvent::SpeechStop)
    }
}

// ---------------------------------------------------------------------------------------
// The model.

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

// ---------------------------------------------------------------------------------------
// The shared, batching engine.

/// How the shared engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VadEngineConfig {
    /// Worker threads, each with its own session (~10 MB RSS each). One suits 2 cores.
    pub workers: usize,
    /// Most windows scored in one run; the rest wait for the next run.
    pub max_batch: usize,
}

impl Default for VadEngineConfig {
    fn default() -> Self {
        VadEngineConfig { workers: 1, max_batch: 256 }
    }
}

#[derive(Debug)]
enum JobStatus {
    Idle,
    Queued,
    Done(f32),
    Failed(String),
}

/// One stream's mailbox: the worker reads the input and writes the answer in place, so a
/// window costs no allocation.
struct Job {
    rate: VadRate,
    input: [f32; MAX_INPUT],
    state: [f32; STATE_LEN],
    status: JobStatus,
}

struct Slot {
    job: Mutex<Job>,
    done: Notify,
}

struct Queue {
    pending: Vec<Arc<Slot>>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    runs: AtomicU64,
    windows: AtomicU64,
}

/// Counters of a [`VadEngine`] since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VadEngineStats {
    /// Model runs (batches).
    pub runs: u64,
    /// Windows scored; `windows / runs` is the mean batch size.
    pub windows: u64,
}

/// One (or a few) Silero sessions on dedicated threads, serving every call's windows in
/// batches. Dropping the engine stops the workers after the windows already queued.
pub struct VadEngine {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl VadEngine {
    pub fn start(paths: &ModelPaths, config: VadEngineConfig) -> Result<Self, VadError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue { pending: Vec::with_capacity(1024), shutdown: false }),
            wake: Condvar::new(),
            runs: AtomicU64::new(0),
            windows: AtomicU64::new(0),
        });
        let max_batch = config.max_batch.max(1);
        let mut workers = Vec::new();
        for i in 0..config.workers.max(1) {
            let model = SileroModel::open(paths)?;
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("silero-vad-{i}"))
                .spawn(move || worker(&shared, model, max_batch))
                .map_err(|e| VadError::Inference(format!("starting VAD worker: {e}")))?;
            workers.push(handle);
        }
        Ok(VadEngine { shared, workers })
    }

    pub fn stats(&self) -> VadEngineStats {
        VadEngineStats {
            runs: self.shared.runs.load(Ordering::Relaxed),
            windows: self.shared.windows.load(Ordering::Relaxed),
        }
    }

    /// A new per-call stream on this engine.
    pub fn stream(&self, rate: VadRate, params: VadParams) -> VadStream {
        VadStream {
            shared: Arc::clone(&self.shared),
            slot: Arc::new(Slot {
                job: Mutex::new(Job {
                    rate,
                    input: [0.0; MAX_INPUT],
                    state: [0.0; STATE_LEN],
                    status: JobStatus::Idle,
                }),
                done: Notify::new(),
            }),
            core: VadCore::new(rate, params),
            in_flight: false,
        }
    }
}

impl Drop for VadEngine {
    fn drop(&mut self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.wake.notify_all();
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(shared: &Shared, mut model: SileroModel, max_batch: usize) {
    let mut batch: Vec<Arc<Slot>> = Vec::with_capacity(max_batch);
    let mut of_rate: Vec<usize> = Vec::with_capacity(max_batch);
    loop {
        {
            let mut queue = lock(&shared.queue);
            while queue.pending.is_empty() && !queue.shutdown {
                queue = shared.wake.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.pending.is_empty() {
                return; // shut down and drained
            }
            let take = queue.pending.len().min(max_batch);
            batch.extend(queue.pending.drain(..take));
        }
        for rate in [VadRate::Hz8000, VadRate::Hz16000] {
            of_rate.clear();
            of_rate.extend((0..batch.len()).filter(|&i| lock(&batch[i].job).rate == rate));
            if !of_rate.is_empty() {
                run_jobs(&mut model, rate, &batch, &of_rate);
                shared.runs.fetch_add(1, Ordering::Relaxed);
                shared.windows.fetch_add(of_rate.len() as u64, Ordering::Relaxed);
            }
        }
        for slot in batch.drain(..) {
            slot.done.notify_one();
        }
    }
}

fn run_jobs(model: &mut SileroModel, rate: VadRate, batch: &[Arc<Slot>], idx: &[usize]) {
    let len = rate.input_len();
    let result = model.run_batch(
        rate,
        idx.len(),
        |i, input, s0, s1| {
            let job = lock(&batch[idx[i]].job);
            input.copy_from_slice(&job.input[..len]);
            s0.copy_from_slice(&job.state[..128]);
            s1.copy_from_slice(&job.state[128..]);
        },
        |i, p, s0, s1| {
            let mut job = lock(&batch[idx[i]].job);
            job.state[..128].copy_from_slice(s0);
            job.state[128..].copy_from_slice(s1);
            job.status = JobStatus::Done(p);
        },
    );
    if let Err(e) = result {
        for &i in idx {
            lock(&batch[i].job).status = JobStatus::Failed(e.to_string());
        }
    }
}

/// One call's VAD on a shared [`VadEngine`]. Feed it 20 ms frames from the call's task.
pub struct VadStream {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
    core: VadCore,
    in_flight: bool,
}

impl VadStream {
    /// Feeds a frame (at most one window long) and, when it completes a window, waits for
    /// that window's score. At 8 kHz a 160-sample frame completes a window every 1.6 frames.
    ///
    /// If this future is dropped while a window is being scored, call [`Self::result`]
    /// before the next frame.
    pub async fn push_frame(&mut self, frame: &[i16]) -> Result<Option<VadWindow>, VadError> {
        if !self.submit(frame)? {
            return Ok(None);
        }
        self.result().await.map(Some)
    }

    /// Adds a frame; when it completes a window, queues that window for scoring and returns
    /// true. Does not wait.
    pub fn submit(&mut self, frame: &[i16]) -> Result<bool, VadError> {
        if self.in_flight {
            return Err(VadError::WindowInFlight);
        }
        if !self.core.push(frame)? {
            return Ok(false);
        }
        {
            let mut job = lock(&self.slot.job);
            let job = &mut *job;
            self.core.load(&mut job.input, &mut job.state);
            job.status = JobStatus::Queued;
        }
        {
            let mut queue = lock(&self.shared.queue);
            if queue.shutdown {
                return Err(VadError::EngineStopped);
            }
            queue.pending.push(Arc::clone(&self.slot));
        }
        self.shared.wake.notify_one();
        self.in_flight = true;
        Ok(true)
    }

    /// Waits for the queued window's score and applies it. Cancel-safe.
    pub async fn result(&mut self) -> Result<VadWindow, VadError> {
        if !self.in_flight {
            return Err(VadError::Inference("no window queued".into()));
        }
        loop {
            let notified = self.slot.done.notified();
            {
                let mut job = lock(&self.slot.job);
                match std::mem::replace(&mut job.status, JobStatus::Idle) {
                    JobStatus::Done(p) => {
                        self.in_flight = false;
                        let state = job.state;
                        drop(job);
                        return Ok(self.core.finish(p, &state));
                    }
                    JobStatus::Failed(msg) => {
                        // The window is dropped; the stream goes on with its old state.
                        self.in_flight = false;
                        self.core.pending.drain(..self.core.rate.window());
                        return Err(VadError::Inference(msg));
                    }
                    other => job.status = other,
                }
            }
            if lock(&self.shared.queue).shutdown && !self.queued_or_running() {
                return Err(VadError::EngineStopped);
            }
            notified.await;
        }
    }

    fn queued_or_running(&self) -> bool {
        matches!(lock(&self.slot.job).status, JobStatus::Queued)
    }

    pub fn rate(&self) -> VadRate {
        self.core.rate
    }
    /// The analyzer's current state.
    pub fn state(&self) -> VadState {
        self.core.machine.state
    }
    /// New parameters (e.g. from the persona); the state machine restarts.
    pub fn set_params(&mut self, params: VadParams) {
        self.core.set_params(params);
    }
    /// Reports a stop now if speech was reported (the reference's idle-audio timeout).
    pub fn force_stop(&mut self) -> Option<VadEvent> {
        self.core.force_stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::models::tests::repo_models;

    #[test]
    fn k_filter_derivation_reproduces_the_reference_8k_coefficients() {
        let (b, a) = k_weighting(8000.0);
        let want_b = [1.32162357, -3.36950263, 3.07226080, -1.32250798, 0.29812625];
        let want_a = [1.0, -2.23439413, 1.69821542, -0.63905783, 0.17601473];
        for (got, want) in b.iter().zip(want_b).chain(a.iter().zip(want_a)) {
            assert!((got - want).abs() < 6e-9, "{got} vs {want}");
        }
    }

    fn gain_db(rate: f64, f: f64) -> f64 {
        let (b, a) = k_weighting(rate);
        let w = 2.0 * std::f64::consts::PI * f / rate;
        let magnitude = |c: &[f64; 5]| {
            let (mut re, mut im) = (0.0, 0.0);
            for (k, ck) in c.iter().enumerate() {
                re += ck * (w * k as f64).cos();
                im -= ck * (w * k as f64).sin();
            }
            re.hypot(im)
        };
        20.0 * (magnitude(&b) / magnitude(&a)).log10()
    }

    #[test]
    fn k_filter_derivation_tracks_the_48k_design_at_16k_and_8k() {
        // At 48 kHz the derivation gives BS.1770's curve: +0.691 dB at 997 Hz (cancelled by
        // the -0.691 offset) and a +4 dB shelf. At 16 kHz the bilinear warp bends it by
        // < 0.15 dB over the band; at 8 kHz (the reference's own coefficients) by < 0.45 dB.
        assert!((gain_db(48000.0, 997.0) - 0.691).abs() < 1e-3);
        assert!((gain_db(48000.0, 7000.0) - 4.0).abs() < 0.05);
        for f in [20.0, 50.0, 100.0, 500.0, 997.0, 2000.0, 3000.0, 5000.0, 7000.0] {
            let d16 = gain_db(16000.0, f) - gain_db(48000.0, f);
            assert!(d16.abs() < 0.15, "16 kHz at {f} Hz off by {d16} dB");
            if f < 4000.0 {
                let d8 = gain_db(8000.0, f) - gain_db(48000.0, f);
                assert!(d8.abs() < 0.45, "8 kHz at {f} Hz off by {d8} dB");
            }
        }
        assert!(gain_db(16000.0, 20.0) < -13.0, "38 Hz high-pass");
    }

    #[test]
    fn volume_reads_zero_until_400ms_then_quantises_and_smooths() {
        let mut meter = VolumeMeter::new(VadRate::Hz8000);
        // A 1 kHz tone at -20 dBFS peak.
        let tone: Vec<i16> = (0..8000)
            .map(|n| (3277.0 * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 8000.0).sin()) as i16)
            .collect();
        let mut smoothed = Vec::new();
        for w in tone.chunks(256).take(20) {
            smoothed.push(meter.push(w));
        }
        assert!(smoothed[..12].iter().all(|&v| v == 0.0), "{smoothed:?}");
        assert!(smoothed[12] > 0.0);
        // Steady tone: raw volume constant, smoothing converges geometrically towards it.
        let raw = meter.volume;
        let bin = raw * 100.0 - 110.0 + 70.0 - 0.05; // LUFS back to histogram bin index / 10
        assert!((bin * 10.0 - (bin * 10.0).round()).abs() < 1e-9, "not on a 0.1 LU bin: {raw}");
        // -20 dBFS sine ≈ -23 LUFS (+0.69 K gain, -3 dB rms, -0.691) → volume ≈ 0.87.
        assert!((raw - 0.87).abs() < 0.01, "{raw}");
        let expected = raw * (1.0 - 0.8f64.powi(8));
        assert!((smoothed[19] - expected).abs() < 1e-12, "{} vs {expected}", smoothed[19]);
    }

    #[test]
    fn silence_and_quiet_blocks_are_gated_to_zero() {
        let (b, a) = k_weighting(8000.0);
        assert_eq!(block_volume(&[0; 3200], &b, &a), 0.0);
        assert_eq!(block_volume(&[3; 3200], &b, &a), 0.0); // DC, removed by the high-pass
        let faint: Vec<i16> = (0..3200).map(|n| if n % 2 == 0 { 8 } else { -8 }).collect();
        let v = block_volume(&faint, &b, &a);
        assert!(v > 0.0 && v < 0.6, "{v}");
    }

    fn machine(start: f64, stop: f64) -> Machine {
        let params = VadParams { start_secs: start, stop_secs: stop, ..VadParams::default() };
        Machine::new(VadRate::Hz8000, &params)
    }

    #[test]
    fn window_counts_round_half_to_even_like_python() {
        let m = machine(0.2, 0.5);
        assert_eq!((m.start_windows, m.stop_windows), (6, 16));
        // 0.176 s / 0.032 = 5.5 → 6 (even); 0.144 / 0.032 = 4.5 → 4.
        assert_eq!(machine(0.176, 0.144).start_windows, 6);
        assert_eq!(machine(0.176, 0.144).stop_windows, 4);
    }

    #[test]
    fn state_machine_needs_consecutive_windows() {
        use VadState::*;
        let mut m = machine(0.2, 0.2); // 6 and 6 windows
        for _ in 0..5 {
            m.step(true);
            assert_eq!(m.state, Starting);
        }
        m.step(false);
        assert_eq!(m.state, Quiet, "one non-speech window restarts the count");
        for _ in 0..5 {
            m.step(true);
        }
        m.step(true);
        assert_eq!(m.state, Speaking);
        for _ in 0..5 {
            m.step(false);
            assert_eq!(m.state, Stopping);
        }
        m.step(true);
        assert_eq!((m.state, m.stopping), (Speaking, 0));
        for _ in 0..6 {
            m.step(false);
        }
        assert_eq!(m.state, Quiet);
    }

    fn core_with(state: VadState) -> VadCore {
        let mut core = VadCore::new(VadRate::Hz8000, VadParams::default());
        core.machine.state = state;
        core.state = [0.5; STATE_LEN];
        core.context = [0.25; 64];
        core
    }

    #[test]
    fn model_reset_waits_for_two_seconds_quiet_and_five_low_windows() {
        let mut core = core_with(VadState::Quiet);
        // 62 windows (1.984 s) of low confidence: not yet due.
        for _ in 0..62 {
            core.maybe_reset_model(0.01);
        }
        assert_eq!(core.state[0], 0.5);
        core.maybe_reset_model(0.01); // 63rd window: 2.016 s
        assert_eq!((core.state[0], core.context[0]), (0.0, 0.0));
        assert_eq!(core.windows_since_reset, 0);
        assert_eq!(core.low_confidence_run, 63, "the low run is not cleared by a reset");
    }

    #[test]
    fn model_reset_is_held_off_by_speech_state_and_recent_confidence() {
        let mut core = core_with(VadState::Speaking);
        for _ in 0..100 {
            core.maybe_reset_model(0.01);
        }
        assert_eq!(core.state[0], 0.5, "no reset unless QUIET");
        core.maybe_reset_model(0.1); // not < 0.1: breaks the run
        core.machine.state = VadState::Quiet;
        for _ in 0..4 {
            core.maybe_reset_model(0.05);
        }
        assert_eq!(core.state[0], 0.5, "needs 5 consecutive windows < 0.1");
        core.maybe_reset_model(0.05);
        assert_eq!(core.state[0], 0.0);
    }

    #[test]
    fn events_follow_the_controller_edges_and_force_stop() {
        let mut core = VadCore::new(VadRate::Hz8000, VadParams::default());
        core.machine.state = VadState::Speaking;
        assert_eq!(core.edge(), Some(VadEvent::SpeechStart));
        assert_eq!(core.edge(), None);
        assert_eq!(core.force_stop(), Some(VadEvent::SpeechStop));
        // Analyzer still SPEAKING: the next window reports a new start.
        assert_eq!(core.edge(), Some(VadEvent::SpeechStart));
        core.machine.state = VadState::Stopping;
        assert_eq!(core.edge(), None);
        core.machine.state = VadState::Quiet;
        assert_eq!(core.edge(), Some(VadEvent::SpeechStop));
        assert_eq!(core.force_stop(), None);
    }

    #[test]
    fn frames_longer_than_a_window_are_refused() {
        let mut core = VadCore::new(VadRate::Hz8000, VadParams::default());
        assert!(matches!(core.push(&[0; 257]), Err(VadError::FrameTooLong { got: 257, max: 256 })));
        assert!(!core.push(&[0; 160]).unwrap());
        assert!(core.push(&[0; 160]).unwrap());
    }

    fn tone_frames(rate: VadRate, secs: f64) -> Vec<i16> {
        let hz = f64::from(rate.hz());
        (0..(secs * hz) as usize)
            .map(|n| {
                let t = n as f64 / hz;
                // A buzzy 150 Hz voice-like pulse train with harmonics.
                let s: f64 =
                    (1..12).map(|k| (2.0 * std::f64::consts::PI * 150.0 * k as f64 * t).sin() / k as f64).sum();
                (s * 4000.0) as i16
            })
            .collect()
    }

    #[test]
    fn batched_engine_matches_the_single_stream_path() {
        let paths = repo_models();
        let audio = tone_frames(VadRate::Hz8000, 1.0);
        let mut single = SileroVad::open(&paths, VadRate::Hz8000, VadParams::default()).unwrap();
        let mut want = Vec::new();
        for frame in audio.chunks(160) {
            if let Some(w) = single.push_frame(frame).unwrap() {
                want.push(w);
            }
        }
        let engine = VadEngine::start(&paths, VadEngineConfig::default()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let results = rt.block_on(async {
            let mut tasks = Vec::new();
            for offset in 0..6 {
                let mut stream = engine.stream(VadRate::Hz8000, VadParams::default());
                // Different streams get different audio: stream k starts k frames late.
                let audio = [vec![0i16; 160 * offset], audio.clone()].concat();
                tasks.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    for frame in audio.chunks(160) {
                        if let Some(w) = stream.push_frame(frame).await.unwrap() {
                            got.push(w);
                        }
                    }
                    got
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        // Stream 0 sees exactly the single-stream audio.
        assert_eq!(results[0].len(), want.len());
        for (a, b) in results[0].iter().zip(&want) {
            assert!((a.probability - b.probability).abs() < 1e-5, "{a:?} vs {b:?}");
            assert_eq!((a.state, a.event, a.volume), (b.state, b.event, b.volume));
        }
        assert!(want.iter().any(|w| w.probability > 0.0));
    }

    #[test]
    fn dropped_engine_reports_stopped() {
        let engine = VadEngine::start(&repo_models(), VadEngineConfig::default()).unwrap();
        let mut stream = engine.stream(VadRate::Hz8000, VadParams::default());
        drop(engine);
        assert!(!stream.submit(&[0; 160]).unwrap());
        assert!(matches!(stream.submit(&[0; 160]), Err(VadError::EngineStopped)));
    }
}
