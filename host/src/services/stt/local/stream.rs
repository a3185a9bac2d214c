//! One call's streaming session on the shared workers: the audio since the last final, a final
//! for every `Finalize` (in order, empty when nothing was said), interims while the caller talks,
//! and a final of its own when the buffer grows too long.
//!
//! The engine sends `Finalize` in every pause, mid-sentence too, so a final usually covers a
//! clause, not a sentence. The **utterance** (the audio since the caller started talking after
//! `utterance_gap` of quiet, its last `utterance_context` at most) is kept across finals: each
//! transcription reads it whole, with the tokens already reported fed as a forced decoder
//! prefix, and reports only the words after them. Alone, a clause is often misheard; with what
//! came before it the model reads it as part of the sentence. A `max_segment` cut, an error or
//! dropped audio starts a new utterance.
//!
//! The task only moves audio and results; the workers do the inference. At most one job per call
//! is with the workers at a time, so results come back in the order the audio was cut, and a
//! `Finalize` is answered only after everything cut before it. An interim still running when the
//! buffer is cut is cancelled and its text dropped: the final covers that audio now.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::cancel::CancelToken;
use super::speech::{cut_window, quietest_cut, SpeechGate, FRAME};
use super::worker::{Job, JobResult, Pool, Priority, Refused};
use crate::services::stt::{seq_to_secs, SttCommand, SttCommandReceiver, SttEvent, SttStats, Transcript};

/// The STT path's rate.
pub const RATE_HZ: u32 = 8000;
/// How soon a final refused by a full queue is offered again.
const RETRY: Duration = Duration::from_millis(20);
/// Cut segments waiting for the workers, per call, before the oldest is given up (bounds memory
/// when the CPU cannot keep up: 8 × `max_segment`).
const MAX_PENDING: usize = 8;
/// Quiet frames after speech that start a transcription at once (the engine sends `Finalize`
/// ~64 ms into a pause; a job already running then, on all the speech, becomes the final).
const PAUSE_FRAMES: usize = 2;
/// New speech a pause needs to be worth a transcription (skips the gaps inside words).
const PAUSE_MIN_SPEECH_FRAMES: usize = 5;

/// How a session cuts and reports (from the provider's config).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Transcribe the buffer for an interim after this much new speech; zero turns interims off.
    pub interim_every: Duration,
    /// No interims for buffers longer than this (each one re-transcribes the whole buffer).
    pub interim_max_buffer: Duration,
    /// A buffer this long is cut (at its quietest point in the last few seconds) and finalized.
    pub max_segment: Duration,
    /// After `close()`, how long the last finals may take.
    pub close_timeout: Duration,
    /// Quiet that ends an utterance: speech after it is transcribed without what came before
    /// (zero: every segment alone).
    pub utterance_gap: Duration,
    /// At most this much earlier audio of the utterance is given as context (bounds the cost of
    /// re-reading it and the memory it holds).
    pub utterance_context: Duration,
    pub gate: SpeechGate,
}

fn samples(d: Duration) -> usize {
    (d.as_secs_f64() * f64::from(RATE_HZ)) as usize
}

fn secs(samples: usize) -> f64 {
    samples as f64 / f64::from(RATE_HZ)
}

/// Why a stretch of audio was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The engine asked (`from_finalize`).
    Finalize,
    /// The buffer reached `max_segment`.
    TooLong,
    /// The stream is closing.
    Close,
}

#[derive(Debug)]
struct Segment {
    audio: Vec<f32>,
    start_secs: f64,
    cut: Cut,
    /// The last interim's tokens for this audio (the decoder checks them in one pass).
    draft: Vec<i64>,
    /// Starts a new utterance (quiet of `utterance_gap` before its speech).
    fresh: bool,
}

/// What was already finalized of the current utterance: each final's audio and the tokens that
/// came after the prefix it was given.
#[derive(Default)]
struct Utterance {
    pieces: VecDeque<(Vec<f32>, Vec<i64>)>,
    samples: usize,
}

impl Utterance {
    fn clear(&mut self) {
        self.pieces.clear();
        self.samples = 0;
    }

    /// `new` after the utterance's audio, and the tokens reported for that audio.
    fn context(&self, new: &[f32]) -> (Vec<f32>, Vec<i64>) {
        let mut audio = Vec::with_capacity(self.samples + new.len());
        let mut forced = Vec::new();
        for (a, ids) in &self.pieces {
            audio.extend_from_slice(a);
            forced.extend_from_slice(ids);
        }
        audio.extend_from_slice(new);
        (audio, forced)
    }

    /// Adds a final's audio and tokens: `fed` of the tokens it was given were used (the model
    /// drops trailing punctuation, which it then decided again), then at most `limit` samples
    /// of audio are kept, whole pieces (they start at pauses, where the tokens start too).
    fn push(&mut self, audio: Vec<f32>, fed: usize, ids: Vec<i64>, limit: usize) {
        let mut excess = self.pieces.iter().map(|(_, t)| t.len()).sum::<usize>().saturating_sub(fed);
        for (_, tokens) in self.pieces.iter_mut().rev() {
            let drop = excess.min(tokens.len());
            tokens.truncate(tokens.len() - drop);
            excess -= drop;
        }
        self.samples += audio.len();
        self.pieces.push_back((audio, ids));
        while self.samples > limit {
            let Some((a, _)) = self.pieces.pop_front() else { break };
            self.samples -= a.len();
        }
    }
}

enum Running {
    Final,
    /// An interim of the first `covers` samples of the buffer as it was in `generation`
    /// (without the utterance's context when `fresh`).
    Interim {
        generation: u64,
        covers: usize,
        start_secs: f64,
        fresh: bool,
    },
}

struct InFlight {
    running: Running,
    cancel: Arc<CancelToken>,
    result: oneshot::Receiver<JobResult>,
}

/// What woke the task (a stack value handled at once, so its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Wake {
    Command(Option<SttCommand>),
    Done(Result<JobResult, oneshot::error::RecvError>),
    Retry,
    CloseTimeout,
}

pub struct CallStream {
    pool: Arc<Pool>,
    settings: Arc<StreamSettings>,
    cmds: SttCommandReceiver,
    events: mpsc::Sender<SttEvent>,
    /// Audio since the last cut, ±1.0 at 8 kHz.
    buffer: Vec<f32>,
    buffer_start_secs: f64,
    /// 20 ms frames above the gate's floor since the last interim was started.
    loud_frames: usize,
    /// Buffer index just past the last such frame.
    last_loud_end: usize,
    /// Frames at or below the floor since then.
    quiet_frames: usize,
    /// The buffer's speech starts a new utterance.
    fresh: bool,
    utterance: Utterance,
    /// Bumped at every cut: an interim of an older generation is stale.
    generation: u64,
    last_interim: String,
    /// The tokens of the last interim in this generation.
    draft: Vec<i64>,
    pending: VecDeque<Segment>,
    in_flight: Option<InFlight>,
    retry_at: Option<Instant>,
    close_deadline: Option<Instant>,
}

impl CallStream {
    pub fn new(
        pool: Arc<Pool>,
        settings: Arc<StreamSettings>,
        cmds: SttCommandReceiver,
        events: mpsc::Sender<SttEvent>,
    ) -> Self {
        Self {
            pool,
            settings,
            cmds,
            events,
            buffer: Vec::new(),
            buffer_start_secs: 0.0,
            loud_frames: 0,
            last_loud_end: 0,
            quiet_frames: 0,
            fresh: true,
            utterance: Utterance::default(),
            generation: 0,
            last_interim: String::new(),
            draft: Vec::new(),
            pending: VecDeque::new(),
            in_flight: None,
            retry_at: None,
            close_deadline: None,
        }
    }

    /// Serves the session until it is closed (or every handle is gone) and the last finals are out.
    pub async fn run(mut self) {
        loop {
            self.dispatch().await;
            if self.close_deadline.is_some() && self.pending.is_empty() && self.in_flight.is_none() {
                return;
            }
            let wake = {
                let (cmds, in_flight) = (&mut self.cmds, &mut self.in_flight);
                let retry_at = self.retry_at.unwrap_or_else(Instant::now);
                let close_at = self.close_deadline.unwrap_or_else(Instant::now);
                tokio::select! {
                    cmd = cmds.recv(), if self.close_deadline.is_none() => Wake::Command(cmd),
                    done = async { match in_flight { Some(f) => (&mut f.result).await, None => std::future::pending().await } },
                        if in_flight.is_some() => Wake::Done(done),
                    _ = sleep_until(retry_at), if self.retry_at.is_some() => Wake::Retry,
                    _ = sleep_until(close_at), if self.close_deadline.is_some() => Wake::CloseTimeout,
                }
            };
            match wake {
                Wake::Command(cmd) => self.on_command(cmd),
                Wake::Done(result) => self.on_done(result).await,
                Wake::Retry => self.retry_at = None,
                Wake::CloseTimeout => {
                    tracing::warn!(
                        unanswered = self.pending.len(),
                        "local STT closed before its last finals were ready"
                    );
                    if let Some(f) = self.in_flight.take() {
                        f.cancel.cancel();
                    }
                    return;
                }
            }
        }
    }

    fn stats(&self) -> &SttStats {
        self.cmds.stats()
    }

    fn on_command(&mut self, cmd: Option<SttCommand>) {
        match cmd {
            Some(SttCommand::Audio { seq, samples: frame }) => {
                SttStats::add(&self.stats().frames_sent, 1);
                if self.buffer.is_empty() {
                    self.buffer_start_secs = seq_to_secs(seq);
                }
                let start = self.buffer.len();
                self.buffer.extend(frame.iter().map(|&s| f32::from(s) / 32768.0));
                if self.settings.gate.is_loud(&self.buffer[start..]) {
                    if self.quiet_frames >= samples(self.settings.utterance_gap) / samples(FRAME).max(1) {
                        self.fresh = true;
                    }
                    self.loud_frames += 1;
                    self.last_loud_end = self.buffer.len();
                    self.quiet_frames = 0;
                } else {
                    self.quiet_frames += 1;
                }
                if self.buffer.len() >= samples(self.settings.max_segment).max(1) {
                    self.cut_too_long();
                }
            }
            Some(SttCommand::Finalize) => {
                SttStats::add(&self.stats().finalizes_sent, 1);
                self.cut(self.buffer.len(), Cut::Finalize);
            }
            Some(SttCommand::Close) | None => {
                if !self.buffer.is_empty() {
                    self.cut(self.buffer.len(), Cut::Close);
                }
                self.close_deadline = Some(Instant::now() + self.settings.close_timeout);
            }
        }
    }

    /// Cuts a full buffer at its quietest 100 ms near the end.
    fn cut_too_long(&mut self) {
        let at = quietest_cut(&self.buffer, RATE_HZ, cut_window(self.buffer.len(), RATE_HZ));
        self.cut(at.max(1), Cut::TooLong);
    }

    /// Moves `buffer[..at]` into the queue of segments to finalize. A running interim of all of
    /// it that already holds every loud frame becomes the segment's final; any other is cancelled.
    fn cut(&mut self, at: usize, cut: Cut) {
        let at = at.min(self.buffer.len());
        let whole = at == self.buffer.len();
        let rest = self.buffer.split_off(at);
        let audio = std::mem::replace(&mut self.buffer, rest);
        let start_secs = self.buffer_start_secs;
        self.buffer_start_secs += secs(audio.len());
        if let Some(flight) = &mut self.in_flight {
            if let Running::Interim { generation, covers, fresh, .. } = flight.running {
                let current = generation == self.generation && self.pending.is_empty() && fresh == self.fresh;
                if whole && current && self.last_loud_end <= covers {
                    flight.running = Running::Final;
                } else {
                    flight.cancel.cancel();
                }
            }
        }
        self.generation += 1;
        self.loud_frames = 0;
        self.last_loud_end = self.last_loud_end.saturating_sub(at);
        self.last_interim.clear();
        let draft = std::mem::take(&mut self.draft);
        let fresh = std::mem::replace(&mut self.fresh, false);
        self.pending.push_back(Segment { audio, start_secs, cut, draft, fresh });
    }

    /// Starts the next job if none is running: the oldest cut segment, else an interim.
    async fn dispatch(&mut self) {
        self.preempt_at_pause();
        if self.in_flight.is_some() || self.retry_at.is_some() {
            return;
        }
        while self.pending.len() > MAX_PENDING {
            let Some(segment) = self.pending.pop_front() else { break };
            let message =
                format!("local STT is overloaded: {:.1} s of audio were not transcribed", secs(segment.audio.len()));
            tracing::warn!(%message);
            self.emit(SttEvent::Warning { message }).await;
            self.answer(&segment, None).await;
            // What follows would be read after a gap the tokens know nothing of.
            self.utterance.clear();
        }
        while let Some(segment) = self.pending.front() {
            if segment.fresh {
                self.utterance.clear();
            }
            if self.settings.gate.speech_span(&segment.audio, RATE_HZ).is_none() {
                // Nothing was said: answer now, without the model.
                if let Some(segment) = self.pending.pop_front() {
                    self.answer(&segment, None).await;
                }
                continue;
            }
            let (audio, forced) = self.with_context(&segment.audio, segment.fresh);
            match self.submit(audio, forced, segment.draft.clone(), Priority::Final) {
                Ok(flight) => self.in_flight = Some(InFlight { running: Running::Final, ..flight }),
                Err(Refused::Busy) => self.retry_at = Some(Instant::now() + RETRY),
                Err(Refused::Stopped) => {
                    if let Some(segment) = self.pending.pop_front() {
                        self.emit(SttEvent::Warning { message: Refused::Stopped.to_string() }).await;
                        self.answer(&segment, None).await;
                    }
                    continue;
                }
            }
            return;
        }
        self.maybe_interim();
    }

    /// The caller paused while an interim of older audio runs: cancel it, so the transcription
    /// of everything said (likely the final) can start now.
    fn preempt_at_pause(&mut self) {
        let Some(InFlight { running: Running::Interim { covers, .. }, cancel, .. }) = &self.in_flight else { return };
        let paused = self.loud_frames >= PAUSE_MIN_SPEECH_FRAMES && self.quiet_frames >= PAUSE_FRAMES;
        let paused = paused && self.last_loud_end > *covers;
        if paused && !self.settings.interim_every.is_zero() && self.close_deadline.is_none() {
            cancel.cancel();
        }
    }

    /// An interim every `interim_every` of new speech, and one as soon as the caller pauses
    /// (which the `Finalize` that usually follows turns into the final).
    fn maybe_interim(&mut self) {
        let s = &self.settings;
        if s.interim_every.is_zero() || self.close_deadline.is_some() {
            return;
        }
        let every = (samples(s.interim_every) / samples(FRAME).max(1)).max(1);
        let at_pause = self.loud_frames >= PAUSE_MIN_SPEECH_FRAMES && self.quiet_frames >= PAUSE_FRAMES;
        if !at_pause && (self.loud_frames < every || self.buffer.len() > samples(s.interim_max_buffer)) {
            return;
        }
        if s.gate.speech_span(&self.buffer, RATE_HZ).is_none() {
            return;
        }
        let running = Running::Interim {
            generation: self.generation,
            covers: self.buffer.len(),
            start_secs: self.buffer_start_secs,
            fresh: self.fresh,
        };
        let (audio, forced) = self.with_context(&self.buffer, self.fresh);
        // A busy pool: try again at the next frame, when the caller has said more.
        if let Ok(flight) = self.submit(audio, forced, self.draft.clone(), Priority::Interim) {
            self.loud_frames = 0;
            self.in_flight = Some(InFlight { running, ..flight });
        }
    }

    /// What to transcribe for `new` audio with speech: the utterance so far and `new`, trimmed
    /// to the speech, and the tokens already reported for it (nothing before a fresh start).
    fn with_context(&self, new: &[f32], fresh: bool) -> (Vec<f32>, Vec<i64>) {
        let (audio, forced) = if fresh { (new.to_vec(), Vec::new()) } else { self.utterance.context(new) };
        match self.settings.gate.speech_span(&audio, RATE_HZ) {
            Some(span) => (audio[span].to_vec(), forced),
            None => (audio, forced),
        }
    }

    fn submit(
        &self,
        audio: Vec<f32>,
        forced: Vec<i64>,
        draft: Vec<i64>,
        priority: Priority,
    ) -> Result<InFlight, Refused> {
        let (tx, rx) = oneshot::channel();
        let cancel = CancelToken::new();
        let job = Job {
            audio,
            rate_hz: RATE_HZ,
            forced,
            draft,
            cancel: cancel.clone(),
            reply: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        self.pool.submit(job, priority).map_err(|(why, _)| why)?;
        Ok(InFlight { running: Running::Final, cancel, result: rx })
    }

    async fn on_done(&mut self, result: Result<JobResult, oneshot::error::RecvError>) {
        let Some(flight) = self.in_flight.take() else { return };
        let recognized = match result {
            Ok(Ok(Some(r))) => Some(r),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "local STT could not transcribe a segment");
                self.emit(SttEvent::Warning { message: e.to_string() }).await;
                None
            }
            Err(_) => None, // the pool dropped the job (shutting down)
        };
        match flight.running {
            Running::Final => {
                if let Some(segment) = self.pending.pop_front() {
                    if segment.fresh {
                        self.utterance.clear();
                    }
                    match &recognized {
                        // A cut inside speech starts over: it may fall inside a word.
                        Some(r) if segment.cut != Cut::TooLong => self.utterance.push(
                            segment.audio.clone(),
                            r.forced,
                            r.ids.clone(),
                            samples(self.settings.utterance_context),
                        ),
                        _ => self.utterance.clear(),
                    }
                    self.answer(&segment, recognized).await;
                }
            }
            Running::Interim { generation, covers, start_secs, .. } => {
                let Some(r) = recognized else { return };
                if generation != self.generation {
                    return;
                }
                self.draft = r.ids;
                if r.text.is_empty() || r.text == self.last_interim {
                    return;
                }
                self.last_interim = r.text.clone();
                self.emit(transcript(r.text, false, false, start_secs, secs(covers), r.confidence)).await;
            }
        }
    }

    /// The final for `segment` (empty text when nothing was recognized).
    async fn answer(&mut self, segment: &Segment, recognized: Option<super::moonshine::Recognized>) {
        let (text, confidence) = recognized.map_or((String::new(), 0.0), |r| (r.text, r.confidence));
        let from_finalize = segment.cut == Cut::Finalize;
        let duration = secs(segment.audio.len());
        self.emit(transcript(text, true, from_finalize, segment.start_secs, duration, confidence)).await;
    }

    async fn emit(&self, event: SttEvent) {
        // A dropped receiver means the call is ending; keep serving the handle until it closes.
        let _ = self.events.send(event).await;
    }
}

fn transcript(
    text: String,
    is_final: bool,
    from_finalize: bool,
    start_secs: f64,
    duration_secs: f64,
    confidence: f32,
) -> SttEvent {
    SttEvent::Transcript(Transcript {
        text,
        is_final,
        // No endpointing of its own: the engine's VAD decides where speech ends.
        speech_final: false,
        from_finalize,
        start_secs,
        duration_secs,
        confidence,
        received_at: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::super::moonshine::{MoonshineError, Recognized, Stop};
    use super::super::speech::tests::tone;
    use super::super::worker::Recognizer;
    use super::super::{LocalStt, LocalSttConfig};
    use super::*;
    use crate::services::stt::{Frame, SttHandle, SttOptions, FRAME_SAMPLES};

    /// Answers "heard N.Ns" for N seconds of 16 kHz audio after `delay` (stopping early when
    /// cancelled), with " after K" when given K forced tokens, and records each call's length.
    struct Scripted {
        delay: Duration,
        fail: bool,
        calls: Arc<Mutex<Vec<usize>>>,
    }

    impl Recognizer for Scripted {
        fn recognize(&mut self, audio: &[f32], forced: &[i64], _draft: &[i64], cancel: &CancelToken) -> JobResult {
            self.calls.lock().unwrap().push(audio.len());
            let until = std::time::Instant::now() + self.delay;
            while std::time::Instant::now() < until {
                if cancel.is_cancelled() {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if self.fail {
                return Err(MoonshineError::Inference("scripted failure".into()));
            }
            let mut text = format!("heard {:.1}s", audio.len() as f64 / 16000.0);
            if !forced.is_empty() {
                text += &format!(" after {}", forced.len());
            }
            Ok(Some(Recognized {
                text,
                tokens: 2,
                ids: vec![7, 8],
                forced: forced.len(),
                decoder_runs: 3,
                confidence: 0.9,
                stop: Stop::EndOfText,
            }))
        }
    }

    fn config() -> LocalSttConfig {
        let mut c = LocalSttConfig::in_models_dir("/nonexistent");
        c.interim_every = Duration::ZERO;
        c.close_timeout = Duration::from_secs(5);
        // Each segment alone (the utterance's context has tests of its own).
        c.utterance_gap = Duration::ZERO;
        c
    }

    fn provider(delay: Duration, config: LocalSttConfig) -> (LocalStt, Arc<Mutex<Vec<usize>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fake = Scripted { delay, fail: false, calls: calls.clone() };
        (LocalStt::with_recognizers(vec![Box::new(fake)], config).unwrap(), calls)
    }

    fn frames(audio: &[f32]) -> Vec<Frame> {
        audio
            .chunks_exact(FRAME_SAMPLES)
            .map(|c| {
                let mut f = [0i16; FRAME_SAMPLES];
                for (o, &s) in f.iter_mut().zip(c) {
                    *o = (s * 32767.0) as i16;
                }
                f
            })
            .collect()
    }

    fn speech(secs: f64) -> Vec<f32> {
        tone(secs, -20.0, RATE_HZ)
    }

    fn quiet(secs: f64) -> Vec<f32> {
        vec![0.0; (secs * f64::from(RATE_HZ)) as usize]
    }

    /// Sends `audio`, yielding every 10 frames so the session task keeps up as it would live.
    async fn send(handle: &SttHandle, audio: &[f32]) {
        for (i, f) in frames(audio).iter().enumerate() {
            assert!(handle.send_audio(f), "frame {i} dropped");
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    async fn next_transcript(events: &mut SttEvents) -> Transcript {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(SttEvent::Transcript(t))) => return t,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("events closed"),
                Err(_) => panic!("no transcript within 10 s"),
            }
        }
    }

    async fn next_final(events: &mut SttEvents) -> Transcript {
        loop {
            let t = next_transcript(events).await;
            if t.is_final {
                return t;
            }
        }
    }

    use crate::services::stt::SttEvents;

    #[tokio::test]
    async fn each_finalize_is_answered_in_order_and_silence_with_an_empty_final() {
        let (stt, calls) = provider(Duration::from_millis(30), config());
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        send(&handle, &speech(1.0)).await;
        handle.finalize();
        send(&handle, &quiet(1.0)).await;
        handle.finalize();
        handle.finalize(); // nothing at all since the last one
        send(&handle, &speech(0.5)).await;
        handle.finalize();
        let answers = [
            next_final(&mut events).await,
            next_final(&mut events).await,
            next_final(&mut events).await,
            next_final(&mut events).await,
        ];
        let texts: Vec<&str> = answers.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["heard 1.0s", "", "", "heard 0.5s"]);
        assert!(answers.iter().all(|t| t.from_finalize && t.is_final));
        let starts: Vec<f64> = answers.iter().map(|t| t.start_secs).collect();
        assert_eq!(starts, [0.0, 1.0, 2.0, 2.0]);
        assert_eq!(answers[0].duration_secs, 1.0);
        assert_eq!(calls.lock().unwrap().len(), 2, "silence never reaches the recognizer");
        assert_eq!(SttStats::get(&handle.stats().finalizes_sent), 4);
        assert_eq!(SttStats::get(&handle.stats().frames_sent), 125);
        handle.close();
        assert!(tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn interims_arrive_while_speaking_and_a_cut_drops_a_stale_one() {
        let mut c = config();
        c.interim_every = Duration::from_millis(200);
        let (stt, _) = provider(Duration::from_millis(5), c.clone());
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        send(&handle, &speech(1.0)).await;
        let first = next_transcript(&mut events).await;
        assert!(!first.is_final && first.text.starts_with("heard"), "{first:?}");
        handle.finalize();
        assert_eq!(next_final(&mut events).await.text, "heard 1.0s");

        // A slow interim still running when the Finalize comes is cancelled, never reported.
        let (stt, calls) = provider(Duration::from_millis(400), c);
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        send(&handle, &speech(0.3)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.lock().unwrap().len(), 1, "the interim started");
        handle.finalize();
        let t = next_transcript(&mut events).await;
        assert!(t.is_final && t.from_finalize && t.text == "heard 0.3s", "{t:?}");
    }

    #[tokio::test]
    async fn a_transcription_started_at_the_pause_becomes_the_final() {
        let mut c = config();
        c.interim_every = Duration::from_secs(10); // only pauses start one
        let (stt, calls) = provider(Duration::from_millis(300), c);
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        send(&handle, &speech(0.5)).await;
        send(&handle, &quiet(0.06)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(calls.lock().unwrap().len(), 1, "the pause started a transcription");
        let asked = Instant::now();
        handle.finalize();
        let t = next_transcript(&mut events).await;
        assert!(t.is_final && t.from_finalize && t.text == "heard 0.5s", "{t:?}");
        assert!(asked.elapsed() < Duration::from_millis(290), "answered by the running job: {:?}", asked.elapsed());
        assert_eq!(t.duration_secs, 0.56, "the final covers the whole buffer");
        assert_eq!(calls.lock().unwrap().len(), 1, "no second run");

        // Speech after the pause's snapshot: that run is not the final (its text is an interim).
        send(&handle, &speech(0.3)).await;
        send(&handle, &quiet(0.06)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&handle, &speech(0.4)).await;
        handle.finalize();
        let mut seen = Vec::new();
        let last = loop {
            let t = next_transcript(&mut events).await;
            if t.from_finalize {
                break t;
            }
            seen.push(t);
        };
        assert!(seen.iter().all(|t| !t.is_final && t.text == "heard 0.3s"), "{seen:?}");
        assert_eq!(last.text, "heard 0.8s", "the final has all the words");
    }

    #[tokio::test]
    async fn a_long_buffer_is_finalized_on_its_own_at_quiet_points() {
        let mut c = config();
        c.max_segment = Duration::from_secs(2);
        let (stt, _) = provider(Duration::from_millis(5), c);
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        for _ in 0..9 {
            send(&handle, &speech(0.9)).await;
            send(&handle, &quiet(0.1)).await;
        }
        handle.close();
        let mut finals = Vec::new();
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            if let SttEvent::Transcript(t) = ev {
                finals.push(t);
            }
        }
        assert!(finals.len() >= 5, "{finals:?}");
        let mut expected_start = 0.0;
        for t in &finals {
            assert!(t.is_final && !t.from_finalize && t.duration_secs <= 2.0, "{t:?}");
            assert!((t.start_secs - expected_start).abs() < 1e-9, "{t:?}");
            expected_start += t.duration_secs;
        }
        assert!((expected_start - 9.0).abs() < 1e-9, "all audio covered once: {expected_start}");
        // Every cut is at (or within half a window of) one of the 100 ms gaps at k + 0.9 s.
        for t in &finals[..finals.len() - 1] {
            let at = (t.start_secs + t.duration_secs).fract();
            assert!(!(0.05..=0.85).contains(&at), "cut at {} s is not in a gap", t.start_secs + t.duration_secs);
        }
    }

    #[tokio::test]
    async fn busy_workers_delay_finals_but_every_session_gets_its_own_in_order() {
        let mut c = config();
        c.queue_capacity = 1;
        let (stt, _) = provider(Duration::from_millis(40), c);
        let mut sessions = Vec::new();
        for _ in 0..3 {
            sessions.push(stt.session(&SttOptions::default()).unwrap());
        }
        for round in 1..=3 {
            for (handle, _) in &sessions {
                send(handle, &speech(0.1 * f64::from(round))).await;
                handle.finalize();
            }
        }
        for (_, events) in &mut sessions {
            for round in 1..=3 {
                let t = next_final(events).await;
                assert!(t.from_finalize, "{t:?}");
                assert_eq!(t.text, format!("heard {:.1}s", 0.1 * f64::from(round)));
            }
        }
    }

    #[tokio::test]
    async fn a_backlog_beyond_the_bound_is_dropped_with_a_warning_but_still_answered() {
        let (stt, calls) = provider(Duration::from_millis(200), config());
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        for _ in 0..12 {
            send(&handle, &speech(0.2)).await;
            handle.finalize();
        }
        let (mut finals, mut warnings) = (Vec::new(), 0);
        while finals.len() < 12 {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap() {
                Some(SttEvent::Transcript(t)) if t.is_final => finals.push(t),
                Some(SttEvent::Warning { message }) => {
                    assert!(message.contains("overloaded"), "{message}");
                    warnings += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(finals.iter().all(|t| t.from_finalize), "every Finalize is answered");
        let starts: Vec<f64> = finals.iter().map(|t| t.start_secs).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "in order: {starts:?}");
        let dropped = finals.iter().filter(|t| t.text.is_empty()).count();
        assert!(warnings > 0 && dropped == warnings, "{warnings} warnings, {dropped} empty");
        assert_eq!(calls.lock().unwrap().len() + dropped, 12, "dropped audio never reaches the model");
    }

    #[tokio::test]
    async fn a_failing_recognizer_still_answers_with_an_empty_final() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fake = Scripted { delay: Duration::ZERO, fail: true, calls };
        let stt = LocalStt::with_recognizers(vec![Box::new(fake)], config()).unwrap();
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        send(&handle, &speech(0.5)).await;
        handle.finalize();
        let warning = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap();
        assert!(matches!(&warning, Some(SttEvent::Warning { message }) if message.contains("scripted")), "{warning:?}");
        let t = next_final(&mut events).await;
        assert!(t.from_finalize && t.text.is_empty(), "{t:?}");
    }

    #[tokio::test]
    async fn closing_or_dropping_the_handle_ends_the_stream() {
        let (stt, _) = provider(Duration::ZERO, config());
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        handle.close();
        assert!(tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().is_none());
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        send(&handle, &speech(0.5)).await;
        drop(handle);
        let t = next_final(&mut events).await;
        assert!(!t.from_finalize && t.text == "heard 0.5s", "the last words are flushed: {t:?}");
        assert!(tokio::time::timeout(Duration::from_secs(5), events.recv()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn finals_in_pauses_carry_the_utterance_until_a_long_quiet() {
        let mut c = config();
        c.utterance_gap = Duration::from_millis(1200);
        c.utterance_context = Duration::from_secs(3);
        let (stt, calls) = provider(Duration::from_millis(5), c);
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        let said = |audio: Vec<f32>| {
            let handle = handle.clone();
            async move {
                send(&handle, &audio).await;
                handle.finalize();
            }
        };
        said([speech(1.0), quiet(0.1)].concat()).await;
        assert_eq!(next_final(&mut events).await.text, "heard 1.1s", "the gate pads speech by 0.2 s");
        // The next clause is read after the first (1.1 s of it) and its two tokens.
        said([quiet(0.3), speech(0.5), quiet(0.1)].concat()).await;
        let t = next_final(&mut events).await;
        assert_eq!((t.text.as_str(), t.start_secs, t.duration_secs), ("heard 2.0s after 2", 1.1, 0.9), "{t:?}");
        said([speech(1.5), quiet(0.1)].concat()).await;
        assert_eq!(next_final(&mut events).await.text, "heard 3.6s after 4");
        // 3 s of context at most: the first clause is dropped, whole (and the second's leading
        // quiet trimmed but for the padding).
        said([speech(0.5), quiet(0.1)].concat()).await;
        assert_eq!(next_final(&mut events).await.text, "heard 3.0s after 4");
        // A Finalize with nothing said is answered empty and does not end the utterance.
        said(quiet(0.2)).await;
        assert_eq!(next_final(&mut events).await.text, "");
        // 1.2 s of quiet does: the speech after it is read alone.
        said([quiet(1.3), speech(0.5), quiet(0.1)].concat()).await;
        assert_eq!(next_final(&mut events).await.text, "heard 0.8s", "alone, with 0.2 s of padding");
        assert_eq!(calls.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_cut_for_length_starts_a_new_utterance() {
        let mut c = config();
        c.utterance_gap = Duration::from_millis(1200);
        c.max_segment = Duration::from_secs(2);
        let (stt, _) = provider(Duration::from_millis(5), c);
        let (handle, mut events) = stt.session(&SttOptions::default()).unwrap();
        send(&handle, &[speech(0.5), quiet(0.1)].concat()).await;
        handle.finalize();
        assert_eq!(next_final(&mut events).await.text, "heard 0.6s");
        send(&handle, &[speech(1.9), quiet(0.1), speech(0.3), quiet(0.1)].concat()).await;
        let long = next_final(&mut events).await;
        assert!(!long.from_finalize && long.text.ends_with("after 2"), "still in the utterance: {long:?}");
        handle.finalize();
        let t = next_final(&mut events).await;
        assert!(t.from_finalize && !t.text.contains("after"), "read alone after the cut: {t:?}");
    }

    #[tokio::test]
    async fn only_english_is_accepted() {
        let (stt, _) = provider(Duration::ZERO, config());
        let de = SttOptions { model: None, language: Some("de".into()) };
        assert!(matches!(stt.session(&de), Err(crate::services::stt::SttError::Config(_))));
        let en = SttOptions { model: Some("nova-3".into()), language: Some("en-US".into()) };
        assert!(stt.session(&en).is_ok());
    }
}
