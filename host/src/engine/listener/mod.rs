//! The listener: everything about hearing the caller. It drives the inbound audio pipeline and
//! the STT stream, keeps the turn tracker and the `Finalize` bookkeeping, and tells the
//! coordinator what it heard as [`ListenEvent`]s: speech started and stopped, interim words,
//! a pause with settled words (the moment a speculative reply can start), the caller going on,
//! and finished turns.
//!
//! Every decision takes the instant it happens at (`now`), so tests drive the listener on
//! synthetic VAD events and transcripts with no models, sockets or real time.

pub mod endpoint;
mod finalize;
mod frontend;
pub mod turns;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use finalize::FinalizeLedger;
pub use frontend::Frontend;
pub use turns::EndReason;
use turns::{TurnSignal, TurnTracker};

use crate::audio::pipeline::PipelineEvent;
use crate::audio::turn::{TurnError, TurnVerdict};
use crate::metrics::Metrics;
use crate::services::stt::{Frame, SttEvent, SttEvents, SttHandle};

/// No caller audio for this long while VAD says the caller is speaking forces a VAD stop (the
/// reference's audio idle timeout): a peer that stops streaming mid-sentence must not hold the
/// turn open, since VAD only moves when frames arrive.
pub const AUDIO_IDLE_STOP: Duration = Duration::from_secs(1);

/// The turn tracker a call's turn-taking values ask for.
pub fn turn_tracker(tt: &crate::persona::TurnTaking) -> TurnTracker {
    let tracker = TurnTracker::new(Duration::from_secs_f64(tt.vad.stop_secs), tt.user_turn_stop_timeout);
    match &tt.endpoint {
        Some(params) => tracker
            .with_endpointer(endpoint::Endpointer::new(params.clone()), Duration::from_secs_f64(tt.vad.start_secs)),
        None => tracker,
    }
}

/// What the listener tells the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenEvent {
    /// VAD's view of the caller changed.
    Vad { speaking: bool },
    /// Words not final yet.
    Interim { text: String },
    /// The caller started a turn (the barge-in point).
    TurnStarted,
    /// The caller is pausing and what they said so far is final: a reply to `text` may be
    /// prepared now. `paused_at` is where the speech ended.
    Settled { text: String, paused_at: Instant },
    /// The caller went on after a pause: anything prepared answers the wrong words.
    Resumed,
    /// The caller's turn is over.
    TurnEnded {
        text: String,
        /// Where the caller's speech ended, when VAD heard it.
        speech_ended: Option<Instant>,
        /// End of speech → the turn's final transcript, ms.
        stt_final_ms: Option<f64>,
        /// Which rule ended it.
        reason: EndReason,
    },
}

/// What the listener reads besides caller audio: STT events and Smart Turn verdicts.
enum Heard {
    Stt(Option<SttEvent>),
    Verdict(Result<TurnVerdict, TurnError>),
}

/// One call's listener.
pub struct Listener<F: Frontend> {
    frontend: F,
    stt: Option<SttHandle>,
    stt_events: Option<SttEvents>,
    turns: TurnTracker,
    metrics: Arc<Metrics>,
    /// Send `Finalize` at the start of a pause (speculative replies want the words early).
    early_finalize: bool,
    last_audio: Instant,
    /// Where the current turn's speech ended, from the last VAD stop.
    speech_ended: Option<Instant>,
    /// When the current pause began, if a `Finalize` was sent for it already.
    pause: Option<Instant>,
    finalizes: FinalizeLedger,
    awaiting_final_since: Option<Instant>,
    /// Speech end → final transcript of the current turn.
    stt_final_ms: Option<f64>,
    pipeline_events: Vec<PipelineEvent>,
    ready: VecDeque<ListenEvent>,
}

impl<F: Frontend> Listener<F> {
    /// `stt` is `None` when speech recognition could not be reached: VAD still runs (barge-in,
    /// idle), turns end with no words.
    pub fn new(
        frontend: F,
        stt: Option<(SttHandle, SttEvents)>,
        turns: TurnTracker,
        early_finalize: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (stt, stt_events) = stt.map_or((None, None), |(h, e)| (Some(h), Some(e)));
        Listener {
            frontend,
            stt,
            stt_events,
            turns,
            metrics,
            early_finalize,
            last_audio: Instant::now(),
            speech_ended: None,
            pause: None,
            finalizes: FinalizeLedger::default(),
            awaiting_final_since: None,
            stt_final_ms: None,
            pipeline_events: Vec::with_capacity(8),
            ready: VecDeque::with_capacity(4),
        }
    }

    /// The next event already decided, if any (after `on_audio`, `poll` or `wait`).
    pub fn pop(&mut self) -> Option<ListenEvent> {
        self.ready.pop_front()
    }

    /// Whether a caller turn is open (speech heard and not yet answered).
    pub fn turn_open(&self) -> bool {
        self.turns.is_open()
    }

    /// Speculative replies stop once the call is ending.
    pub fn set_early_finalize(&mut self, on: bool) {
        self.early_finalize = on;
    }

    /// One 20 ms frame of caller audio, arrived at `now`.
    pub async fn on_audio(&mut self, frame: &Frame, now: Instant) {
        self.last_audio = now;
        let stt = &self.stt;
        let pushed = self
            .frontend
            .push(frame, |clean| {
                if let (Some(stt), Ok(clean)) = (stt, <&Frame>::try_from(clean)) {
                    stt.send_audio(clean);
                }
            })
            .await;
        if let Err(e) = pushed {
            debug!(error = %e, "turn detection skipped a frame");
        }
        self.drain_pipeline(now, None);
    }

    /// Waits for what the listener reads besides audio — STT events and Smart Turn verdicts —
    /// and turns it into events for [`Self::pop`]. Cancel-safe.
    pub async fn wait(&mut self) {
        let heard = tokio::select! {
            ev = recv_opt(&mut self.stt_events) => Heard::Stt(ev),
            v = self.frontend.verdict() => Heard::Verdict(v),
        };
        let now = Instant::now();
        match heard {
            Heard::Stt(Some(ev)) => self.on_stt(ev, now),
            Heard::Stt(None) => self.stt_events = None,
            Heard::Verdict(v) => self.on_verdict(v, now),
        }
    }

    /// The next instant [`Self::poll`] may have something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let audio_idle = self.frontend.user_speaking().then_some(self.last_audio + AUDIO_IDLE_STOP);
        [self.turns.next_deadline(), audio_idle].into_iter().flatten().min()
    }

    /// Timers: the audio idle stop and the turn tracker's deadlines. `input_pending`: caller
    /// frames are queued; a task that fell behind must handle them before it may call the
    /// caller silent.
    pub fn poll(&mut self, now: Instant, input_pending: bool) {
        if !input_pending && self.frontend.user_speaking() && now >= self.last_audio + AUDIO_IDLE_STOP {
            self.force_speech_stop(now);
        }
        if let Some(sig) = self.turns.poll(now) {
            self.on_signal(sig);
        }
    }

    fn drain_pipeline(&mut self, now: Instant, forced_speech_end: Option<Instant>) {
        let mut events = std::mem::take(&mut self.pipeline_events);
        self.frontend.drain_into(&mut events);
        for event in events.drain(..) {
            self.on_pipeline(event, now, forced_speech_end);
        }
        self.pipeline_events = events;
    }

    fn on_pipeline(&mut self, event: PipelineEvent, now: Instant, forced_speech_end: Option<Instant>) {
        let ago = |t: f64, earlier: f64| now - Duration::from_secs_f64((t - earlier).max(0.0));
        match event {
            PipelineEvent::PauseStarted { t, speech_ended_t } => self.on_pause_start(now, ago(t, speech_ended_t)),
            PipelineEvent::PauseEnded { .. } => {
                self.pause = None;
                self.ready.push_back(ListenEvent::Resumed);
                self.speech_resumed();
            }
            PipelineEvent::SpeechStarted { .. } => {
                self.ready.push_back(ListenEvent::Vad { speaking: true });
                // The caller went on after a pause (a prepared reply survives an incomplete
                // verdict, for the silence fallback, but not more words).
                self.ready.push_back(ListenEvent::Resumed);
                self.pause = None;
                self.speech_resumed();
                if let Some(sig) = self.turns.vad_start(now) {
                    self.on_signal(sig);
                }
            }
            PipelineEvent::SpeechStopped { t, speech_ended_t, .. } => {
                let ended = forced_speech_end.unwrap_or_else(|| ago(t, speech_ended_t));
                self.on_speech_stop(now, ended);
            }
            PipelineEvent::Fallback { .. } => {
                if let Some(sig) = self.turns.fallback(now) {
                    self.on_signal(sig);
                }
            }
            PipelineEvent::Window(_) | PipelineEvent::QuietWindow { .. } => {}
        }
    }

    /// VAD reported the end of speech (Smart Turn is scoring the turn meanwhile).
    fn on_speech_stop(&mut self, now: Instant, speech_ended: Instant) {
        self.ready.push_back(ListenEvent::Vad { speaking: false });
        self.speech_ended = Some(speech_ended);
        // Only silence came since a `Finalize` sent at the pause's start: nothing to add.
        // The pause lasts until the turn ends or speech resumes, so a final arriving after
        // this stop (or during an incomplete verdict's fallback) can still start a reply.
        if self.pause.is_none() {
            self.awaiting_final_since = self.speech_ended;
            self.send_finalize();
        }
        self.turns.vad_stop(now);
    }

    /// The caller's audio stopped arriving while VAD said speaking: stop as VAD would have, with
    /// speech ending at the last frame.
    fn force_speech_stop(&mut self, now: Instant) {
        if self.frontend.force_stop() {
            info!(
                silent_ms = now.duration_since(self.last_audio).as_millis() as u64,
                "no caller audio: speech stop forced"
            );
            let last_audio = self.last_audio;
            self.drain_pipeline(now, Some(last_audio));
        }
    }

    fn on_verdict(&mut self, verdict: Result<TurnVerdict, TurnError>, now: Instant) {
        let signal = match verdict {
            Ok(v) => {
                debug!(probability = v.probability, complete = v.complete, "smart turn");
                if self.turns.text_aware() {
                    self.turns.verdict_scored(v.probability, now)
                } else {
                    self.turns.verdict(v.complete, now)
                }
            }
            Err(e) => {
                // Without a verdict the silence fallback still ends the turn.
                warn!(error = %e, "smart turn failed");
                self.turns.verdict(false, now)
            }
        };
        if let Some(sig) = signal {
            self.on_signal(sig);
        }
    }

    fn on_stt(&mut self, ev: SttEvent, now: Instant) {
        match ev {
            SttEvent::Transcript(t) => {
                let has_text = !t.text.trim().is_empty();
                if !t.is_final && has_text {
                    self.ready.push_back(ListenEvent::Interim { text: t.text.clone() });
                }
                if t.is_final && has_text {
                    if let Some(since) = self.awaiting_final_since.take() {
                        let waited = now.saturating_duration_since(since);
                        self.metrics.stt_final_latency.observe(waited.as_secs_f64());
                        self.stt_final_ms = Some(waited.as_secs_f64() * 1000.0);
                    }
                }
                let finalized = t.from_finalize && self.finalizes.answered();
                if let Some(sig) = self.turns.transcript(&t.text, t.is_final, finalized, now) {
                    self.on_signal(sig);
                } else if t.is_final {
                    self.offer_settled();
                }
            }
            SttEvent::Disconnected { reason, kind } => {
                self.metrics.provider_error("stt", kind.as_str());
                warn!(%reason, "speech-to-text dropped; reconnecting");
            }
            SttEvent::Reconnected { attempts, downtime, resent_frames, lost_frames } => {
                info!(attempts, ?downtime, resent_frames, lost_frames, "speech-to-text reconnected");
            }
            SttEvent::Failed(e) => {
                self.metrics.provider_error("stt", e.kind().as_str());
                warn!(error = %e, "speech-to-text failed for the rest of the call");
                self.stt = None;
            }
            SttEvent::Warning { message } => debug!(%message, "speech-to-text warning"),
            SttEvent::SpeechStarted { .. } | SttEvent::UtteranceEnd { .. } => {}
        }
    }

    fn on_signal(&mut self, sig: TurnSignal) {
        match sig {
            TurnSignal::Started => self.ready.push_back(ListenEvent::TurnStarted),
            TurnSignal::Ended { text } => {
                self.frontend.clear_turn();
                self.pause = None;
                self.awaiting_final_since = None;
                self.ready.push_back(ListenEvent::TurnEnded {
                    text,
                    speech_ended: self.speech_ended.take(),
                    stt_final_ms: self.stt_final_ms.take(),
                    reason: self.turns.last_end_reason().unwrap_or(EndReason::Watchdog),
                });
            }
        }
    }

    /// The caller paused (VAD's stop window began): ask STT for the final words now, so a reply
    /// can be prepared while the window runs.
    fn on_pause_start(&mut self, now: Instant, speech_ended: Instant) {
        if !self.early_finalize || !self.turns.is_open() || self.stt.is_none() {
            return;
        }
        self.send_finalize();
        self.pause = Some(now);
        // Measured from where the VAD places the end of speech, as at a VAD stop.
        self.awaiting_final_since = Some(speech_ended);
        self.offer_settled();
    }

    /// During a pause with final words in hand: the coordinator may prepare a reply.
    fn offer_settled(&mut self) {
        let Some(paused_at) = self.pause else { return };
        if let Some(text) = self.turns.settled_text() {
            self.ready.push_back(ListenEvent::Settled { text, paused_at });
        }
    }

    /// The caller spoke again: what was finalized no longer ends the turn.
    fn speech_resumed(&mut self) {
        self.finalizes.speech_resumed();
        self.turns.speech_resumed();
    }

    fn send_finalize(&mut self) {
        if let Some(stt) = &self.stt {
            stt.finalize();
            self.finalizes.sent();
        }
    }

    /// Seams for drivers that keep their own clock (`switchboard analyze --turns`): they play
    /// the STT provider and hand verdicts over at the instant they choose, instead of `wait`.
    /// An STT event, heard at `now`.
    pub(crate) fn hear_stt(&mut self, ev: SttEvent, now: Instant) {
        self.on_stt(ev, now);
    }

    /// Whether Smart Turn is scoring the last stop (a verdict will come from [`Self::next_verdict`]).
    pub(crate) fn verdict_pending(&self) -> bool {
        self.frontend.scoring()
    }

    /// Awaits the pending verdict without applying it to the turn (see [`Self::hear_verdict`]).
    pub(crate) async fn next_verdict(&mut self) -> Result<TurnVerdict, TurnError> {
        self.frontend.verdict().await
    }

    /// A verdict from [`Self::next_verdict`], heard at `now`.
    pub(crate) fn hear_verdict(&mut self, verdict: Result<TurnVerdict, TurnError>, now: Instant) {
        self.on_verdict(verdict, now);
    }

    /// Closes the STT stream (the call is over).
    pub fn close(&mut self) {
        if let Some(stt) = self.stt.take() {
            stt.close();
        }
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
