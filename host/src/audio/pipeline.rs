//! One call's inbound audio pipeline: denoise → Silero VAD → pause / stop → Smart Turn verdict.
//!
//! The only owner of the caller's voice-activity state: calls (through the engine's listener)
//! and `switchboard analyze` both drive this, frame by frame, in the reference's order — the
//! turn segmenter sees each frame with the speaking flag from before it, then the VAD scores
//! it, then an edge hands the segment to Smart Turn. What happened comes out as typed
//! [`PipelineEvent`]s; the verdict of a stop arrives later through [`InboundPipeline::verdict`].
//!
//! Time here is stream time: seconds of clean audio since the stream began. The listener maps
//! it to wall-clock instants; `analyze` reports it as is.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use super::denoise::{DenoiseError, Denoiser};
use super::turn::{PendingTurn, SmartTurnHandle, TurnError, TurnParams, TurnSegment, TurnSegmenter, TurnVerdict};
use super::vad::{VadError, VadEvent, VadParams, VadRate, VadState, VadStream, VadWindow};

/// Quiet VAD windows in a row inside the stop window before a pause counts: single-window dips
/// happen mid-word, and acting on them (an STT `Finalize`) would split the caller's words.
pub const PAUSE_WINDOWS: u32 = 2;

/// What the pipeline saw in one frame. `t` is the stream time (seconds) the event refers to.
#[derive(Debug, Clone, PartialEq)]
pub enum PipelineEvent {
    /// A scored VAD window (every 32 ms at 8 kHz), for live views and analysis.
    Window(VadWindow),
    /// VAD reported the start of speech.
    SpeechStarted { t: f64 },
    /// `n` quiet windows in a row inside VAD's stop window (n counts from 1).
    QuietWindow { t: f64, n: u32 },
    /// The caller has been quiet [`PAUSE_WINDOWS`] windows: a pause begins; speech ended at
    /// `speech_ended_t`.
    PauseStarted { t: f64, speech_ended_t: f64 },
    /// Speech came back inside the stop window, so VAD reports no new start.
    PauseEnded { t: f64 },
    /// VAD reported the end of speech (its stop window passed, or audio stopped arriving).
    /// `scoring`: Smart Turn is scoring the segment; its verdict comes from [`InboundPipeline::verdict`].
    SpeechStopped { t: f64, speech_ended_t: f64, scoring: bool },
    /// An incomplete turn reached `stop_secs` of silence: complete without the model.
    Fallback { t: f64 },
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("denoising caller audio: {0}")]
    Denoise(#[from] DenoiseError),
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error(transparent)]
    Turn(#[from] TurnError),
}

type VerdictFuture = Pin<Box<dyn Future<Output = Result<TurnVerdict, TurnError>> + Send>>;

/// The pipeline's settings, from the persona's turn-taking record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineParams {
    pub vad: VadParams,
    pub turn: TurnParams,
    pub denoise: bool,
}

/// One call's inbound audio path on the shared VAD and Smart Turn engines.
pub struct InboundPipeline {
    rate: u32,
    denoiser: Denoiser,
    /// Denoised samples waiting to make a whole frame (the denoiser works in 10 ms blocks).
    clean: Vec<i16>,
    scratch: Vec<i16>,
    frame_len: usize,
    vad: VadStream,
    segmenter: TurnSegmenter,
    smart_turn: SmartTurnHandle,
    pending: Option<VerdictFuture>,
    quiet_windows: u32,
    /// Clean samples through the VAD so far.
    position: u64,
    events: VecDeque<PipelineEvent>,
}

impl InboundPipeline {
    /// A pipeline for PCM16 at `vad`'s rate (8 kHz on calls) in frames of 20 ms. A denoiser that
    /// can't be built is logged and skipped: the call goes on with raw audio.
    pub fn new(vad: VadStream, smart_turn: SmartTurnHandle, params: PipelineParams) -> Self {
        let rate = vad.rate().hz();
        let denoiser = Denoiser::with_enabled(rate, params.denoise).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "denoiser unavailable; continuing without it");
            Denoiser::passthrough(rate).expect("8 and 16 kHz pass through")
        });
        let frame_len = rate as usize / 50;
        InboundPipeline {
            rate,
            denoiser,
            clean: Vec::with_capacity(frame_len * 3),
            scratch: vec![0; frame_len * 2],
            frame_len,
            vad,
            segmenter: TurnSegmenter::new(rate, params.turn, params.vad.start_secs),
            smart_turn,
            pending: None,
            quiet_windows: 0,
            position: 0,
            events: VecDeque::with_capacity(8),
        }
    }

    /// The VAD rate's 20 ms frame length (160 samples at 8 kHz).
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Stream time of the audio processed so far, seconds.
    pub fn now_secs(&self) -> f64 {
        self.position as f64 / f64::from(self.rate)
    }

    /// Whether VAD currently says the caller is speaking.
    pub fn user_speaking(&self) -> bool {
        self.segmenter.user_speaking()
    }

    /// Feeds one frame of caller audio (at most one VAD window long). `on_clean` sees every
    /// denoised frame (for STT) before the VAD scores it. Events go to [`Self::drain_events`].
    pub async fn push(&mut self, raw: &[i16], mut on_clean: impl FnMut(&[i16])) -> Result<(), PipelineError> {
        let written = match self.denoiser.process(raw, &mut self.scratch) {
            Ok(n) => n,
            Err(e) => {
                // One bad block must not lose the caller's audio.
                tracing::debug!(error = %e, "denoise failed; passing audio through");
                let n = raw.len().min(self.scratch.len());
                self.scratch[..n].copy_from_slice(&raw[..n]);
                n
            }
        };
        self.clean.extend_from_slice(&self.scratch[..written]);
        let mut frame = std::mem::take(&mut self.scratch);
        let mut result = Ok(());
        while self.clean.len() >= self.frame_len && result.is_ok() {
            frame[..self.frame_len].copy_from_slice(&self.clean[..self.frame_len]);
            self.clean.drain(..self.frame_len);
            on_clean(&frame[..self.frame_len]);
            result = self.push_clean(&frame[..self.frame_len]).await;
        }
        self.scratch = frame;
        result
    }

    /// One clean frame, in the reference's order: segmenter, VAD, then the edge.
    async fn push_clean(&mut self, frame: &[i16]) -> Result<(), PipelineError> {
        self.position += frame.len() as u64;
        if self.segmenter.append(frame) {
            self.events.push_back(PipelineEvent::Fallback { t: self.now_secs() });
        }
        let Some(window) = self.vad.push_frame(frame).await? else {
            return Ok(());
        };
        self.events.push_back(PipelineEvent::Window(window));
        self.track_pause(&window);
        match window.event {
            Some(VadEvent::SpeechStart) => {
                self.segmenter.on_vad_event(VadEvent::SpeechStart);
                self.events.push_back(PipelineEvent::SpeechStarted { t: window.t });
            }
            Some(VadEvent::SpeechStop) => {
                let stop = self.vad_stop_secs();
                self.stopped(window.t, window.t - stop);
            }
            None => {}
        }
        Ok(())
    }

    /// Pause bookkeeping inside VAD's stop window: the start of a pause and its end.
    fn track_pause(&mut self, window: &VadWindow) {
        match window.state {
            VadState::Stopping => {
                self.quiet_windows += 1;
                let n = self.quiet_windows;
                self.events.push_back(PipelineEvent::QuietWindow { t: window.t, n });
                if n == PAUSE_WINDOWS {
                    let quiet = f64::from(PAUSE_WINDOWS) * self.window_secs();
                    self.events
                        .push_back(PipelineEvent::PauseStarted { t: window.t, speech_ended_t: window.t - quiet });
                }
            }
            VadState::Speaking if self.quiet_windows > 0 => {
                self.quiet_windows = 0;
                self.events.push_back(PipelineEvent::PauseEnded { t: window.t });
            }
            _ => self.quiet_windows = 0,
        }
    }

    /// A VAD stop: the segment goes to Smart Turn. A model that can't take it (its engine
    /// stopped) is logged and gives no verdict; the edge itself is never lost, and the turn
    /// then ends by its silence fallback or watchdog.
    fn stopped(&mut self, t: f64, speech_ended_t: f64) {
        let scoring = match self.segmenter.on_vad_event(VadEvent::SpeechStop) {
            Some(segment) => self.score(segment),
            None => false,
        };
        self.events.push_back(PipelineEvent::SpeechStopped { t, speech_ended_t, scoring });
    }

    fn score(&mut self, segment: TurnSegment) -> bool {
        match self.smart_turn.submit(segment) {
            Ok(pending) => {
                self.pending = Some(Box::pin(PendingTurn::verdict(pending)));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "smart turn unavailable; the turn ends without its verdict");
                false
            }
        }
    }

    /// No caller audio arrived for a while although VAD says speaking (the reference's audio
    /// idle timeout): stop as VAD would have, speech having ended with the last frame. Returns
    /// false when no stop was due.
    pub fn force_stop(&mut self) -> bool {
        if self.vad.force_stop().is_none() {
            return false;
        }
        let t = self.now_secs();
        self.stopped(t, t);
        // VAD's own state machine still counts this pause: frames coming back quiet must not
        // start a second pause (another `Finalize`, a speculative reply) for it.
        self.quiet_windows = self.quiet_windows.max(PAUSE_WINDOWS);
        true
    }

    /// Takes the events of the frames pushed so far, in order.
    pub fn drain_events(&mut self) -> std::collections::vec_deque::Drain<'_, PipelineEvent> {
        self.events.drain(..)
    }

    /// Smart Turn's verdict for the last stop, applied to the segmenter before it is returned.
    /// Pending while nothing is being scored; cancel-safe (the request stays in flight).
    pub async fn verdict(&mut self) -> Result<TurnVerdict, TurnError> {
        let Some(pending) = self.pending.as_mut() else {
            return std::future::pending().await;
        };
        let verdict = pending.await;
        self.pending = None;
        if let Ok(v) = &verdict {
            self.segmenter.apply_verdict(v);
        }
        verdict
    }

    /// Whether a verdict is on its way.
    pub fn scoring(&self) -> bool {
        self.pending.is_some()
    }

    /// The segment Smart Turn would score if VAD stopped now (`analyze --probe-pause`).
    pub fn segment_so_far(&self) -> Option<TurnSegment> {
        self.segmenter.segment_so_far()
    }

    /// Forgets the current turn (it ended, by whichever rule).
    pub fn clear_turn(&mut self) {
        self.segmenter.clear();
    }

    fn window_secs(&self) -> f64 {
        VadRate::from_hz(self.rate).map_or(0.032, |r| r.window() as f64 / f64::from(self.rate))
    }

    fn vad_stop_secs(&self) -> f64 {
        self.vad.params().stop_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::models::tests::repo_models;
    use crate::audio::turn::{SmartTurnConfig, SmartTurnEngine};
    use crate::audio::vad::{VadEngine, VadEngineConfig};

    fn clip(name: &str) -> Vec<i16> {
        let wav = format!("{}/tests/fixtures/audio/{name}", env!("CARGO_MANIFEST_DIR"));
        hound::WavReader::open(wav).unwrap().samples::<i16>().map(Result::unwrap).collect()
    }

    fn params(denoise: bool) -> PipelineParams {
        PipelineParams { vad: VadParams::default(), turn: TurnParams::default(), denoise }
    }

    /// Pushes frames until `stop` says so; returns the events seen.
    async fn feed(
        p: &mut InboundPipeline,
        pcm: &[i16],
        mut stop: impl FnMut(&PipelineEvent) -> bool,
    ) -> Vec<PipelineEvent> {
        let mut seen = Vec::new();
        let mut clean = 0usize;
        for frame in pcm.chunks(160) {
            p.push(frame, |f| clean += f.len()).await.unwrap();
            for e in p.drain_events() {
                let done = stop(&e);
                seen.push(e);
                if done {
                    return seen;
                }
            }
        }
        assert!(clean > 0, "clean frames reach the STT callback");
        seen
    }

    #[test]
    fn a_call_sees_start_pause_stop_and_a_verdict_and_a_forced_stop_scores_like_a_vad_stop() {
        let paths = repo_models();
        let vad = VadEngine::start(&paths, VadEngineConfig::default()).unwrap();
        let turn = SmartTurnEngine::start(&paths, SmartTurnConfig::default()).unwrap();
        let pcm = clip("clean_8k.wav");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut p =
                InboundPipeline::new(vad.stream(VadRate::Hz8000, VadParams::default()), turn.handle(), params(true));
            let events = feed(&mut p, &pcm, |e| matches!(e, PipelineEvent::SpeechStopped { .. })).await;
            let pos = |f: fn(&PipelineEvent) -> bool| events.iter().position(f);
            let start = pos(|e| matches!(e, PipelineEvent::SpeechStarted { .. })).expect("speech start");
            let pause = pos(|e| matches!(e, PipelineEvent::PauseStarted { .. })).expect("a pause before the stop");
            let Some(PipelineEvent::SpeechStopped { t, speech_ended_t, scoring }) = events.last().cloned() else {
                panic!("stopped")
            };
            assert!(start < pause);
            assert!(scoring);
            assert!((t - speech_ended_t - 0.2).abs() < 1e-9, "speech ended one stop window ago");
            let v = p.verdict().await.unwrap();
            assert!((0.0..=1.0).contains(&v.probability));

            // Speech again, then the audio stops arriving: the forced stop scores the turn too.
            let mut p =
                InboundPipeline::new(vad.stream(VadRate::Hz8000, VadParams::default()), turn.handle(), params(false));
            assert!(!p.force_stop(), "nothing to stop yet");
            feed(&mut p, &pcm, |e| matches!(e, PipelineEvent::SpeechStarted { .. })).await;
            assert!(p.user_speaking());
            assert!(p.force_stop());
            let stopped: Vec<_> = p.drain_events().collect();
            assert!(matches!(stopped[..], [PipelineEvent::SpeechStopped { scoring: true, .. }]), "{stopped:?}");
            assert!(!p.user_speaking());
            assert!(p.verdict().await.is_ok());

            // With Smart Turn's worker gone the edge still comes through, just without a verdict.
            let dead = SmartTurnHandle::disconnected();
            let mut p = InboundPipeline::new(vad.stream(VadRate::Hz8000, VadParams::default()), dead, params(false));
            feed(&mut p, &pcm, |e| matches!(e, PipelineEvent::SpeechStarted { .. })).await;
            assert!(p.force_stop());
            let stopped: Vec<_> = p.drain_events().collect();
            assert!(matches!(stopped[..], [PipelineEvent::SpeechStopped { scoring: false, .. }]), "{stopped:?}");
            assert!(!p.scoring());
        });
    }
}
