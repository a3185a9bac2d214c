//! One Smart Turn session on a dedicated thread, shared by every call: a 40–70 ms inference never runs on
//! the async reactor, and requests that arrive together run as one batch.

use std::sync::mpsc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::model::SmartTurnModel;
use super::{TurnError, TurnSegment, TurnVerdict, COMPLETE_THRESHOLD};
use crate::audio::models::ModelPaths;

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
    /// A handle whose engine is gone: every submit fails (tests of the no-model path).
    #[cfg(test)]
    pub(crate) fn disconnected() -> Self {
        let (tx, _) = mpsc::channel();
        SmartTurnHandle { tx }
    }

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
