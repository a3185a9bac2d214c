//! Plays one recording through a call's [`Listener`] on a virtual clock.
//!
//! Frame k (20 ms, μ-law encoded and decoded as the phone line does) is heard at `t0 + k·20 ms`.
//! The listener runs the real [`InboundPipeline`] (RNNoise, Silero, Smart Turn); a stop's verdict
//! is awaited at once (real inference) and handed to the listener at the stop's virtual time
//! plus the measured inference time. The driver plays the STT provider: it collects the audio
//! the listener sends, transcribes what came since the last final on each `Finalize` with the
//! local recognizer, and delivers the final `stt_latency` later on the virtual clock. Timers fire
//! on the virtual clock too, so a file takes as long as its inference, not as its audio.
//!
//! File time: frame k carries the audio up to `(k + 1)·20 ms`, and can only arrive once that
//! audio was spoken, so the instant `t0 + k·20 ms` is file time `(k + 1)·20 ms`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::mpsc;

use super::report::{Decision, FileRun, FinalTrace, StopTrace};
use crate::audio::mulaw;
use crate::audio::pipeline::{InboundPipeline, PipelineParams};
use crate::audio::turn::{SmartTurnHandle, TurnError, TurnVerdict};
use crate::audio::vad::{VadEngine, VadRate};
use crate::engine::listener::{ListenEvent, Listener};
use crate::metrics::Metrics;
use crate::persona::api::TurnTaking;
use crate::services::stt::local::{LocalStt, LocalSttError};
use crate::services::stt::{
    command_channel, Frame, SttCommand, SttCommandReceiver, SttEvent, Transcript, FRAME_SAMPLES,
};

/// The call path's rate.
pub const RATE: u32 = 8000;
const FRAME: Duration = Duration::from_millis(20);

/// How a file is played.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The persona's turn-taking values (the defaults unless told otherwise).
    pub turn_taking: TurnTaking,
    /// `Finalize` → final transcript, on the virtual clock.
    pub stt_latency: Duration,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions { turn_taking: TurnTaking::default(), stt_latency: Duration::from_millis(150) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("transcribing with the local STT: {0}")]
    Stt(#[from] LocalSttError),
    #[error("starting the file's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The engines one worker thread reuses for every file it plays.
pub struct Engines<'a> {
    pub vad: &'a VadEngine,
    pub smart_turn: SmartTurnHandle,
    pub stt: &'a LocalStt,
}

/// Plays 8 kHz PCM16 through a listener; blocking (it runs its own single-threaded runtime, and
/// transcription blocks it), so call it from a worker thread.
pub fn run_file(pcm: &[i16], engines: &Engines<'_>, opts: &DriverOptions) -> Result<FileRun, DriverError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(DriverError::Runtime)?;
    let started = Instant::now();
    let mut run = runtime.block_on(Drive::new(engines, opts).play(pcm))?;
    run.wall_s = started.elapsed().as_secs_f64();
    Ok(run)
}

/// One file's state: the listener and what the driver has scheduled for it.
struct Drive<'a> {
    listener: Listener<InboundPipeline>,
    stt_commands: SttCommandReceiver,
    stt: &'a LocalStt,
    stt_latency: Duration,
    t0: Instant,
    /// Audio sent to STT since the last `Finalize`.
    stt_audio: Vec<i16>,
    /// Finals on their way: (arrival, text).
    finals: VecDeque<(Instant, String)>,
    /// The last stop's verdict on its way.
    verdict: Option<(Instant, Result<TurnVerdict, TurnError>)>,
    /// The last instant the timers were polled at (a deadline already polled is not due again).
    polled: Option<Instant>,
    run: FileRun,
}

impl<'a> Drive<'a> {
    fn new(engines: &Engines<'a>, opts: &DriverOptions) -> Self {
        let tt = &opts.turn_taking;
        let pipeline = InboundPipeline::new(
            engines.vad.stream(VadRate::Hz8000, tt.vad),
            engines.smart_turn.clone(),
            PipelineParams { vad: tt.vad, turn: tt.turn, denoise: tt.denoise },
        );
        let turns = crate::engine::listener::turn_tracker(tt);
        // The driver drains the commands after every frame: a generous queue never drops audio.
        let (handle, stt_commands) = command_channel(1024);
        // Events go through `hear_stt`; this channel only fills the listener's slot.
        let (_, events) = mpsc::channel(1);
        let metrics = Arc::new(Metrics::new());
        let listener = Listener::new(pipeline, Some((handle, events)), turns, tt.speculative_replies, metrics);
        Drive {
            listener,
            stt_commands,
            stt: engines.stt,
            stt_latency: opts.stt_latency,
            t0: Instant::now(),
            stt_audio: Vec::new(),
            finals: VecDeque::new(),
            verdict: None,
            polled: None,
            run: FileRun::default(),
        }
    }

    fn at(&self, frame: usize) -> Instant {
        self.t0 + FRAME * frame as u32
    }

    fn file_secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.t0).as_secs_f64() + FRAME.as_secs_f64()
    }

    async fn play(mut self, pcm: &[i16]) -> Result<FileRun, DriverError> {
        let frames = pcm.len().div_ceil(FRAME_SAMPLES);
        self.run.duration_s = frames as f64 * FRAME.as_secs_f64();
        let mut frame: Frame = [0; FRAME_SAMPLES];
        for (k, chunk) in pcm.chunks(FRAME_SAMPLES).enumerate() {
            let now = self.at(k);
            self.advance_to(now).await?;
            // The phone line carries μ-law: the listener hears what survives it.
            frame.fill(0);
            for (out, &s) in frame.iter_mut().zip(chunk) {
                *out = mulaw::decode(mulaw::encode(s));
            }
            self.listener.on_audio(&frame, now).await;
            self.after_input(now).await?;
        }
        let end = self.at(frames.saturating_sub(1));
        self.advance_to(end).await?;
        self.listener.close();
        Ok(self.run)
    }

    /// Delivers everything due up to `until`, in time order: finals, the verdict, timers.
    async fn advance_to(&mut self, until: Instant) -> Result<(), DriverError> {
        loop {
            let final_due = self.finals.front().map(|f| f.0);
            let verdict_due = self.verdict.as_ref().map(|v| v.0);
            let timer = self.listener.next_deadline().filter(|&d| self.polled.is_none_or(|p| d > p));
            let next = [final_due, verdict_due, timer].into_iter().flatten().min();
            let Some(now) = next.filter(|&t| t <= until) else { return Ok(()) };
            if final_due == Some(now) {
                let (_, text) = self.finals.pop_front().expect("a final is due");
                self.listener.hear_stt(SttEvent::Transcript(final_transcript(text)), now);
            } else if verdict_due == Some(now) {
                let (_, verdict) = self.verdict.take().expect("a verdict is due");
                self.listener.hear_verdict(verdict, now);
            } else {
                self.polled = Some(now);
                self.listener.poll(now, false);
            }
            self.after_input(now).await?;
        }
    }

    /// What the listener did at `now`: STT commands, a stop to score, events to record.
    async fn after_input(&mut self, now: Instant) -> Result<(), DriverError> {
        while let Some(Some(cmd)) = self.stt_commands.recv().now_or_never() {
            match cmd {
                SttCommand::Audio { samples, .. } => self.stt_audio.extend_from_slice(&samples),
                SttCommand::Finalize => self.finalize(now)?,
                SttCommand::Close => {}
            }
        }
        if self.listener.verdict_pending() {
            if let Some((_, older)) = self.verdict.take() {
                // A new stop came before the last verdict's arrival: the older one lands first.
                self.listener.hear_verdict(older, now);
            }
            let started = Instant::now();
            let verdict = self.listener.next_verdict().await;
            let inference = started.elapsed();
            self.run.stops.push(StopTrace {
                t: self.file_secs(now),
                probability: verdict.as_ref().ok().map(|v| v.probability),
                complete: verdict.as_ref().ok().map(|v| v.complete),
                inference_ms: inference.as_secs_f64() * 1000.0,
                error: verdict.as_ref().err().map(ToString::to_string),
            });
            self.verdict = Some((now + inference, verdict));
        }
        while let Some(event) = self.listener.pop() {
            if let ListenEvent::TurnEnded { text, speech_ended, reason, .. } = event {
                let decision = Decision {
                    t: self.file_secs(now),
                    reason,
                    text,
                    speech_ended: speech_ended.map(|s| self.file_secs(s)),
                };
                self.run.decisions.push(decision);
            }
        }
        Ok(())
    }

    /// Transcribes the audio since the last final (as the local STT stream does on `Finalize`).
    fn finalize(&mut self, now: Instant) -> Result<(), DriverError> {
        let audio: Vec<f32> = self.stt_audio.drain(..).map(|s| f32::from(s) / 32768.0).collect();
        let text = if audio.is_empty() { String::new() } else { self.stt.transcribe_samples(&audio, RATE)? };
        let arrives = now + self.stt_latency;
        self.run.finals.push(FinalTrace {
            finalize_t: self.file_secs(now),
            delivered_t: self.file_secs(arrives),
            text: text.clone(),
            audio_s: audio.len() as f64 / f64::from(RATE),
        });
        self.finals.push_back((arrives, text));
        Ok(())
    }
}

/// A final answering a `Finalize` (empty text still answers it).
fn final_transcript(text: String) -> Transcript {
    Transcript {
        text,
        is_final: true,
        speech_final: true,
        from_finalize: true,
        start_secs: 0.0,
        duration_secs: 0.0,
        confidence: 1.0,
        received_at: tokio::time::Instant::now(),
    }
}
