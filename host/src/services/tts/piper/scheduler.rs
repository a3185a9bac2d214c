//! The queue between calls and the synthesis workers.
//!
//! A fixed number of workers (a CPU-bound count) take work in turns across calls: each call's
//! work runs strictly in order, one item at a time, and calls with work waiting are served
//! round-robin, one chunk each, so a long reply on one call does not delay the first sentence of
//! another. Work beyond the workers waits in that order.
//!
//! Cancellation: every call has an epoch that `clear` advances. Work carries the epoch it was
//! queued in; the worker skips work of an older epoch, and `clear` terminates a run in progress
//! through its `RunOptions`, so a cleared call frees its worker at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ort::session::RunOptions;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Bytes;

use crate::services::tts::ReplyId;

/// What a worker hands back to the call, tagged with the epoch of the work.
#[derive(Debug)]
pub(crate) enum Done {
    Audio { reply: ReplyId, epoch: u64, audio: Bytes },
    Flushed { reply: ReplyId, epoch: u64 },
    Failed { reply: ReplyId, epoch: u64, error: String },
}

/// One call as the workers see it.
pub(crate) struct Call {
    id: u64,
    epoch: AtomicU64,
    /// The options of the run in progress for this call, to terminate it on `clear`.
    running: Mutex<Option<Arc<RunOptions>>>,
    done: mpsc::UnboundedSender<Done>,
}

impl Call {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether work of `epoch` has been cleared.
    pub(crate) fn is_stale(&self, epoch: u64) -> bool {
        self.epoch() != epoch
    }

    pub(crate) fn send(&self, done: Done) {
        let _ = self.done.send(done); // the call may have ended meanwhile
    }

    /// Registers `run` as this call's run in progress; false (and nothing registered) if work of
    /// `epoch` was cleared meanwhile. Checked after registering, so a concurrent `clear` either
    /// is seen here or terminates the run.
    pub(crate) fn start_run(&self, run: &Arc<RunOptions>, epoch: u64) -> bool {
        *lock(&self.running) = Some(run.clone());
        if self.is_stale(epoch) {
            lock(&self.running).take();
            return false;
        }
        true
    }

    pub(crate) fn end_run(&self) {
        lock(&self.running).take();
    }

    fn cancel(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(run) = lock(&self.running).as_ref() {
            if let Err(e) = run.terminate() {
                tracing::debug!(error = %e, "terminating a cleared Piper run");
            }
        }
    }
}

struct Job<W> {
    work: W,
    epoch: u64,
}

struct Queue<W> {
    call: Arc<Call>,
    jobs: VecDeque<Job<W>>,
    /// A worker has this call's previous job.
    busy: bool,
    /// The call ended; forget it once its last job is done.
    closed: bool,
}

struct State<W> {
    queues: HashMap<u64, Queue<W>>,
    /// Calls with jobs waiting and none running, in serving order.
    ready: VecDeque<u64>,
    next_id: u64,
    stopping: bool,
}

/// The shared queue of work items `W` (one per [`super::PiperTts`]).
pub(crate) struct Scheduler<W> {
    state: Mutex<State<W>>,
    wake: Condvar,
}

impl<W> Default for Scheduler<W> {
    fn default() -> Self {
        let state = State { queues: HashMap::new(), ready: VecDeque::new(), next_id: 0, stopping: false };
        Scheduler { state: Mutex::new(state), wake: Condvar::new() }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<W> Scheduler<W> {
    /// A new call whose results go to `done`.
    pub(crate) fn register(&self, done: mpsc::UnboundedSender<Done>) -> Arc<Call> {
        let mut state = lock(&self.state);
        let id = state.next_id;
        state.next_id += 1;
        let call = Arc::new(Call { id, epoch: AtomicU64::new(0), running: Mutex::new(None), done });
        state.queues.insert(id, Queue { call: call.clone(), jobs: VecDeque::new(), busy: false, closed: false });
        call
    }

    /// Queues `work` after the call's earlier work.
    pub(crate) fn submit(&self, call: &Call, work: W) {
        let mut state = lock(&self.state);
        let epoch = call.epoch();
        let Some(queue) = state.queues.get_mut(&call.id) else { return };
        if queue.closed {
            return;
        }
        queue.jobs.push_back(Job { work, epoch });
        if !queue.busy && queue.jobs.len() == 1 {
            state.ready.push_back(call.id);
            self.wake.notify_one();
        }
    }

    /// Drops the call's waiting work and stops its run in progress.
    pub(crate) fn clear(&self, call: &Call) {
        let mut state = lock(&self.state);
        call.cancel();
        if let Some(queue) = state.queues.get_mut(&call.id) {
            queue.jobs.clear();
        }
        state.ready.retain(|id| *id != call.id);
    }

    /// Drops the call's waiting work that `drop` picks (e.g. of a reply that failed).
    pub(crate) fn drop_work(&self, call: &Call, doomed: impl Fn(&W) -> bool) {
        let mut state = lock(&self.state);
        if let Some(queue) = state.queues.get_mut(&call.id) {
            queue.jobs.retain(|j| !doomed(&j.work));
            if queue.jobs.is_empty() {
                state.ready.retain(|id| *id != call.id);
            }
        }
    }

    /// The call ended: its work is dropped and it is forgotten.
    pub(crate) fn close(&self, call: &Call) {
        self.clear(call);
        let mut state = lock(&self.state);
        if let Some(queue) = state.queues.get_mut(&call.id) {
            queue.closed = true;
            if !queue.busy {
                state.queues.remove(&call.id);
            }
        }
    }

    /// Jobs waiting, and calls known.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.queues.values().map(|q| q.jobs.len()).sum(), state.queues.len())
    }

    /// The next job, waiting for one; `None` once the scheduler stops.
    pub(crate) fn next(&self) -> Option<(Arc<Call>, W, u64)> {
        let mut state = lock(&self.state);
        loop {
            if state.stopping {
                return None;
            }
            while let Some(id) = state.ready.pop_front() {
                let Some(queue) = state.queues.get_mut(&id) else { continue };
                let Some(job) = queue.jobs.pop_front() else { continue };
                queue.busy = true;
                return Some((queue.call.clone(), job.work, job.epoch));
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A worker finished the call's job: the call goes to the back of the line if it has more.
    pub(crate) fn finished(&self, call: &Call) {
        let mut state = lock(&self.state);
        let Some(queue) = state.queues.get_mut(&call.id) else { return };
        queue.busy = false;
        if queue.closed {
            state.queues.remove(&call.id);
        } else if !queue.jobs.is_empty() {
            state.ready.push_back(call.id);
            self.wake.notify_one();
        }
    }

    /// Ends every worker's loop (they finish the job in hand first).
    pub(crate) fn stop(&self) {
        lock(&self.state).stopping = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Sched = Scheduler<(u64, &'static str)>;

    fn call(s: &Sched) -> (Arc<Call>, mpsc::UnboundedReceiver<Done>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (s.register(tx), rx)
    }

    /// Takes the next job as a worker would and reports it done.
    fn take(s: &Sched) -> (u64, &'static str, u64) {
        let (call, (tag, name), epoch) = s.next().expect("work is waiting");
        s.finished(&call);
        (tag, name, epoch)
    }

    #[test]
    fn calls_take_turns_and_each_call_keeps_its_order() {
        let s = Sched::default();
        let (a, _ra) = call(&s);
        let (b, _rb) = call(&s);
        for name in ["a1", "a2", "a3"] {
            s.submit(&a, (1, name));
        }
        s.submit(&b, (2, "b1"));
        s.submit(&b, (2, "b2"));
        let order: Vec<&str> = (0..5).map(|_| take(&s).1).collect();
        assert_eq!(order, ["a1", "b1", "a2", "b2", "a3"]);
        assert_eq!(s.pending(), (0, 2));
    }

    #[test]
    fn a_busy_call_is_not_handed_to_a_second_worker() {
        let s = Sched::default();
        let (a, _ra) = call(&s);
        let (b, _rb) = call(&s);
        s.submit(&a, (1, "a1"));
        s.submit(&a, (1, "a2"));
        s.submit(&b, (2, "b1"));
        let (first, work, _) = s.next().unwrap();
        assert_eq!(work.1, "a1");
        // While a1 runs, the next worker gets b1, not a2.
        let (second, work, _) = s.next().unwrap();
        assert_eq!(work.1, "b1");
        s.finished(&second);
        s.finished(&first);
        assert_eq!(take(&s).1, "a2");
    }

    #[test]
    fn clear_drops_waiting_work_and_advances_the_epoch() {
        let s = Sched::default();
        let (a, _ra) = call(&s);
        s.submit(&a, (1, "old1"));
        s.submit(&a, (1, "old2"));
        let (running, _, old_epoch) = s.next().unwrap();
        crate::audio::models::ort_environment(&crate::audio::models::tests::repo_models()).unwrap();
        let run = Arc::new(RunOptions::new().unwrap());
        assert!(running.start_run(&run, old_epoch));
        s.clear(&a);
        assert!(a.is_stale(old_epoch));
        // The run in progress was told to stop; a new run of the old epoch is refused.
        assert!(!running.start_run(&Arc::new(RunOptions::new().unwrap()), old_epoch));
        running.end_run();
        s.finished(&running);
        s.submit(&a, (1, "new"));
        let (_, name, epoch) = take(&s);
        assert_eq!((name, a.is_stale(epoch)), ("new", false));
        assert_eq!(s.pending(), (0, 1));
    }

    #[test]
    fn dropped_work_and_closed_calls_are_forgotten() {
        let s = Sched::default();
        let (a, _ra) = call(&s);
        s.submit(&a, (7, "x"));
        s.submit(&a, (8, "y"));
        s.drop_work(&a, |w| w.0 == 7);
        assert_eq!(take(&s).1, "y");
        s.submit(&a, (9, "z"));
        let (busy, _, _) = s.next().unwrap();
        s.submit(&a, (9, "late"));
        s.close(&a);
        // Work submitted after close is ignored; the call is removed once its job ends.
        s.submit(&a, (9, "ignored"));
        assert_eq!(s.pending(), (0, 1));
        s.finished(&busy);
        assert_eq!(s.pending(), (0, 0));
    }

    #[test]
    fn stop_wakes_waiting_workers() {
        let s = Arc::new(Sched::default());
        let worker = {
            let s = s.clone();
            std::thread::spawn(move || s.next().is_none())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.stop();
        assert!(worker.join().unwrap());
    }
}
