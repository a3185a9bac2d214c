//! The shared, batching engine: one (or a few) Silero sessions on dedicated threads serve every call's windows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::Notify;

use super::analyzer::{VadCore, MAX_INPUT, STATE_LEN};
use super::model::SileroModel;
use super::{VadError, VadEvent, VadParams, VadRate, VadState, VadWindow};
use crate::audio::models::ModelPaths;

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
    /// The parameters in force.
    pub fn params(&self) -> VadParams {
        self.core.params
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
    use crate::audio::vad::SileroVad;

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
