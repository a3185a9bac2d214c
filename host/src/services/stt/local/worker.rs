//! The inference threads every call shares, and their bounded queue.
//!
//! Each worker thread owns one loaded model (ONNX Runtime's `run` needs exclusive access) and
//! never touches the async runtime. Two priorities: finals (someone is waiting to end a turn) go
//! first, in arrival order, and are refused only when `capacity` of them already wait; interims
//! (nice to have while the caller talks) are taken only when a worker would otherwise sit idle,
//! so they use spare CPU and never delay a final by more than the one already running.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::cancel::CancelToken;
use super::moonshine::{MoonshineError, MoonshineModel, Recognized, SAMPLE_RATE};
use crate::audio::resample::resample_all;

/// What a job produced: `Ok(None)` when it was cancelled.
pub type JobResult = Result<Option<Recognized>, MoonshineError>;

/// What a worker runs: 16 kHz mono audio in, text out. [`MoonshineModel`] in production; the
/// tests drive the queue and the streaming logic with scripted recognizers.
pub trait Recognizer: Send + 'static {
    fn recognize(&mut self, audio: &[f32], forced: &[i64], draft: &[i64], cancel: &CancelToken) -> JobResult;
}

impl Recognizer for MoonshineModel {
    fn recognize(&mut self, audio: &[f32], forced: &[i64], draft: &[i64], cancel: &CancelToken) -> JobResult {
        self.transcribe(audio, forced, draft, cancel)
    }
}

/// Which queue a job waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Final,
    Interim,
}

/// One piece of audio to transcribe.
pub struct Job {
    /// Mono, ±1.0, at `rate_hz` (resampled to the model's rate on the worker).
    pub audio: Vec<f32>,
    pub rate_hz: u32,
    /// Tokens already reported for the start of the audio, fed as given; the result is what
    /// follows them (see [`MoonshineModel::transcribe`]).
    pub forced: Vec<i64>,
    /// Tokens the text (after `forced`) probably starts with.
    pub draft: Vec<i64>,
    /// Abandons the job (before it starts, or mid-run).
    pub cancel: Arc<CancelToken>,
    /// Called once, on the worker thread, with the result.
    pub reply: Box<dyn FnOnce(JobResult) + Send>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("samples", &self.audio.len()).field("rate_hz", &self.rate_hz).finish()
    }
}

/// Why a job was not queued (the job comes back with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("every local STT worker is busy")]
    Busy,
    #[error("the local STT workers have stopped")]
    Stopped,
}

#[derive(Default)]
struct Queue {
    finals: VecDeque<Job>,
    interims: VecDeque<Job>,
    /// Workers running a job, with that job's cancel flag (to stop them at shutdown).
    running: Vec<Arc<CancelToken>>,
    stopped: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    capacity: usize,
    workers: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The worker threads; dropping the pool stops them (queued jobs are answered as cancelled).
pub struct Pool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("workers", &self.shared.workers).field("capacity", &self.shared.capacity).finish()
    }
}

impl Pool {
    /// One thread per model; at most `capacity` finals wait at once.
    pub fn start(models: Vec<Box<dyn Recognizer>>, capacity: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            capacity: capacity.max(1),
            workers: models.len(),
        });
        let mut pool = Pool { shared: shared.clone(), threads: Vec::new() };
        for (i, model) in models.into_iter().enumerate() {
            let shared = shared.clone();
            let thread =
                std::thread::Builder::new().name(format!("local-stt-{i}")).spawn(move || work(&shared, model))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    /// Queues `job`, or hands it back: finals when `capacity` finals already wait, interims
    /// unless a worker is free and no final waits.
    pub fn submit(&self, job: Job, priority: Priority) -> Result<(), (Refused, Job)> {
        let mut q = self.shared.lock();
        if q.stopped || self.shared.workers == 0 {
            return Err((Refused::Stopped, job));
        }
        match priority {
            Priority::Final if q.finals.len() >= self.shared.capacity => return Err((Refused::Busy, job)),
            Priority::Final => q.finals.push_back(job),
            Priority::Interim => {
                let idle = self.shared.workers.saturating_sub(q.running.len() + q.interims.len());
                if !q.finals.is_empty() || idle == 0 {
                    return Err((Refused::Busy, job));
                }
                q.interims.push_back(job);
            }
        }
        drop(q);
        self.shared.wake.notify_one();
        Ok(())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let abandoned = {
            let mut q = self.shared.lock();
            q.stopped = true;
            for cancel in &q.running {
                cancel.cancel();
            }
            let mut jobs: Vec<Job> = q.finals.drain(..).collect();
            jobs.extend(q.interims.drain(..));
            jobs
        };
        self.shared.wake.notify_all();
        for job in abandoned {
            (job.reply)(Ok(None));
        }
        for thread in self.threads.drain(..) {
            // A running job stops at its next token; joining keeps no thread behind.
            let _ = thread.join();
        }
    }
}

fn work(shared: &Shared, mut model: Box<dyn Recognizer>) {
    loop {
        let job = {
            let mut q = shared.lock();
            loop {
                if q.stopped {
                    return;
                }
                if let Some(job) = q.finals.pop_front().or_else(|| q.interims.pop_front()) {
                    q.running.push(job.cancel.clone());
                    break job;
                }
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let cancel = job.cancel.clone();
        let result = if cancel.is_cancelled() {
            Ok(None)
        } else {
            // A bug in the model code must cost one answer, not the worker.
            std::panic::catch_unwind(AssertUnwindSafe(|| run(model.as_mut(), &job, &cancel)))
                .unwrap_or_else(|_| Err(MoonshineError::Inference("the recognizer panicked".into())))
        };
        {
            let mut q = shared.lock();
            if let Some(i) = q.running.iter().position(|c| Arc::ptr_eq(c, &cancel)) {
                q.running.swap_remove(i);
            }
        }
        (job.reply)(result);
    }
}

fn run(model: &mut dyn Recognizer, job: &Job, cancel: &CancelToken) -> JobResult {
    if job.rate_hz == SAMPLE_RATE {
        return model.recognize(&job.audio, &job.forced, &job.draft, cancel);
    }
    let audio = resample_all(&job.audio, job.rate_hz, SAMPLE_RATE)
        .map_err(|e| MoonshineError::Inference(format!("resampling {} Hz to {SAMPLE_RATE} Hz: {e}", job.rate_hz)))?;
    model.recognize(&audio, &job.forced, &job.draft, cancel)
}
