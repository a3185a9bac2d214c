//! One call's streaming session: the engine's commands become queued chunks, the workers'
//! results become [`TtsEvent`]s.
//!
//! Order is the scheduler's: a call's chunks and flush markers run one after another in the
//! order they were sent, so a reply's audio always precedes its `Flushed`. `Clear` advances the
//! call's epoch: queued work is dropped, the run in progress is terminated, and whatever a
//! worker still hands back from before is discarded here, so `Cleared` can be answered at once.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::scheduler::{Call, Done, Scheduler};
use super::synth::Voice;
use super::text;
use super::worker::Work;
use crate::services::tts::{ReplyId, TtsCommand, TtsError, TtsEvent, TtsStats};

/// A call's place in the scheduler, given up however the session ends (its task may also be
/// dropped with its runtime).
pub(crate) struct Registration {
    pub scheduler: Arc<Scheduler<Work>>,
    pub call: Arc<Call>,
}

impl Registration {
    fn submit(&self, work: Work) {
        self.scheduler.submit(&self.call, work);
    }

    fn is_stale(&self, epoch: u64) -> bool {
        self.call.is_stale(epoch)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.scheduler.close(&self.call);
    }
}

/// The task behind one session.
pub(crate) struct Stream {
    pub registration: Registration,
    pub voice: Arc<Voice>,
    pub cmds: mpsc::UnboundedReceiver<TtsCommand>,
    pub done: mpsc::UnboundedReceiver<Done>,
    pub events: mpsc::Sender<TtsEvent>,
    pub stats: Arc<TtsStats>,
    /// Keeps the provider (and so its workers) alive while the session lasts; dropped last.
    pub _owner: Arc<dyn Send + Sync>,
}

impl Stream {
    pub(crate) async fn run(mut self) {
        // Replies whose synthesis failed since the last clear: their remaining work is dropped.
        let mut failed: HashSet<ReplyId> = HashSet::new();
        loop {
            let open = tokio::select! {
                // Commands first, so a `Clear` is never queued behind audio it makes stale.
                biased;
                cmd = self.cmds.recv() => self.on_command(cmd, &mut failed).await,
                Some(done) = self.done.recv() => self.on_done(done, &mut failed).await,
            };
            if !open {
                break;
            }
        }
    }

    /// Handles one command; false when the session ends.
    async fn on_command(&mut self, cmd: Option<TtsCommand>, failed: &mut HashSet<ReplyId>) -> bool {
        match cmd {
            Some(TtsCommand::Speak { reply, text }) => {
                TtsStats::add(&self.stats.speaks_sent, 1);
                if !failed.contains(&reply) {
                    for chunk in text::chunks(&text) {
                        let voice = self.voice.clone();
                        self.registration.submit(Work::Speak { reply, chunk, voice });
                    }
                }
                true
            }
            Some(TtsCommand::Flush { reply }) => {
                TtsStats::add(&self.stats.flushes_sent, 1);
                if !failed.contains(&reply) {
                    self.registration.submit(Work::Flush { reply });
                }
                true
            }
            Some(TtsCommand::Clear) => {
                TtsStats::add(&self.stats.clears_sent, 1);
                self.registration.scheduler.clear(&self.registration.call);
                failed.clear();
                self.emit(TtsEvent::Cleared { received_at: Instant::now() }).await
            }
            Some(TtsCommand::Close) | None => false,
        }
    }

    /// Forwards one worker result unless it was cleared; false when the engine stopped listening.
    async fn on_done(&mut self, done: Done, failed: &mut HashSet<ReplyId>) -> bool {
        match done {
            Done::Audio { reply, epoch, audio } => {
                let len = audio.len() as u64;
                if self.registration.is_stale(epoch) || failed.contains(&reply) {
                    TtsStats::add(&self.stats.discarded_bytes, len);
                    return true;
                }
                TtsStats::add(&self.stats.audio_bytes, len);
                self.emit(TtsEvent::Audio { reply, audio, received_at: Instant::now() }).await
            }
            Done::Flushed { reply, epoch } => {
                if self.registration.is_stale(epoch) || failed.contains(&reply) {
                    return true;
                }
                self.emit(TtsEvent::Flushed { reply, received_at: Instant::now() }).await
            }
            Done::Failed { reply, epoch, error } => {
                if self.registration.is_stale(epoch) || !failed.insert(reply) {
                    return true;
                }
                self.registration.scheduler.drop_work(&self.registration.call, |w| w.reply() == reply);
                self.emit(TtsEvent::Failed { replies: vec![reply], error: TtsError::Synthesis(error) }).await
            }
        }
    }

    async fn emit(&self, event: TtsEvent) -> bool {
        self.events.send(event).await.is_ok()
    }
}
