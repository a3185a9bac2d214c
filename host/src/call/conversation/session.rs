//! One call's conversation: caller audio → denoise → VAD + Smart Turn + STT → user turns →
//! persona / LLM → sentences → TTS → paced bot audio with a mark per sentence.
//!
//! States: listening (no reply), thinking (reply requested, nothing heard yet), bot speaking
//! (reply audio queued or playing), ending (a goodbye or transfer is playing out). A user turn
//! start while an interruptible reply is active is a barge-in: `clear`, cancel LLM and TTS, and
//! keep in the context only the sentences whose marks came back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::reply::{mark_name, parse_mark, After, Reply, Utterance};
use super::writer::{CallWriter, TranscriptLine, TurnLatency};
use super::ConversationDeps;
use crate::audio::denoise::Denoiser;
use crate::audio::turn::{PendingTurn, TurnDetector, TurnError, TurnVerdict};
use crate::audio::vad::{VadRate, VadState};
use crate::call::events::{CallEvent, CallEventsHandle};
use crate::call::persona::{Action, CallSummary, Greeting, Persona, PersonaSetup};
use crate::call::sentences::SentenceSplitter;
use crate::call::turns::{TurnSignal, TurnTracker};
use crate::call::{CallInfo, CallInput, CallOutput, SessionIo, FRAME_SAMPLES};
use crate::metrics::Metrics;
use crate::services::llm::{ChatMessage, ChatRequest, LlmEvent, LlmStream, ToolSpec};
use crate::services::stt::{SttEvent, SttHandle, SttOptions};
use crate::services::tts::{ReplyId, TtsEvent, TtsHandle, TtsOptions};

/// Said when the LLM fails; the call carries on.
const APOLOGY: &str = "Sorry, I had a problem just now. Could you say that again?";
/// Said when a turn had no words and interrupted the bot (the reference's empty-turn recovery).
const EMPTY_TURN_PROMPT: &str = "The user may have said something that was not understood. Briefly ask them to repeat.";
/// One-shot syntheses failing in a row before the call is ended.
const MAX_SYNTH_FAILURES: u32 = 3;
/// Tool-call rounds per reply before the LLM must answer in words.
const MAX_TOOL_ROUNDS: u32 = 5;
/// Deepgram accepts 20 `Flush` per 60 s on a socket; keep a margin. Under the budget every
/// sentence is flushed (fast first audio, a mark per sentence); over it, the rest of a reply
/// shares one unit flushed at the reply's end.
const FLUSH_BUDGET: usize = 16;
const FLUSH_WINDOW: Duration = Duration::from_secs(60);
/// Quiet VAD windows (32 ms each) inside the stop window before the pause counts: single-window
/// dips happen mid-word, and a `Finalize` there would split the caller's words.
const PAUSE_WINDOWS: u32 = 2;
/// One Silero window at 8 kHz (256 samples).
const VAD_WINDOW: Duration = Duration::from_millis(32);
/// No caller audio for this long while VAD says the caller is speaking forces a VAD stop (the
/// reference's audio idle timeout): a peer that stops streaming mid-sentence must not hold the
/// turn open, since VAD only moves when frames arrive.
const AUDIO_IDLE_STOP: Duration = Duration::from_secs(1);

type VerdictFuture = Pin<Box<dyn Future<Output = Result<TurnVerdict, TurnError>> + Send>>;
type SynthFuture = Pin<Box<dyn Future<Output = (ReplyId, Result<Vec<u8>, String>)> + Send>>;

struct Session {
    deps: Arc<ConversationDeps>,
    persona: Box<dyn Persona>,
    setup: PersonaSetup,
    out: mpsc::Sender<CallOutput>,
    started: Instant,
    // Audio front end.
    denoiser: Denoiser,
    clean: Vec<i16>,
    scratch: Vec<i16>,
    detector: TurnDetector,
    pending_verdict: Option<VerdictFuture>,
    turns: TurnTracker,
    speech_ended: Option<Instant>,
    awaiting_final_since: Option<Instant>,
    /// Speech end → final transcript of the current turn, for its transcript line.
    turn_stt_final_ms: Option<f64>,
    /// Quiet windows in a row while the VAD is in its stop window.
    quiet_windows: u32,
    /// When the caller's current pause began, if we sent `Finalize` for it already.
    pause: Option<Instant>,
    /// The user text a held speculative reply answers (`reply.held` is set while this is).
    speculation: Option<String>,
    /// When the last caller frame arrived.
    last_audio: Instant,
    /// `Finalize`s sent and not yet answered, and how many of those were sent before the
    /// caller spoke again: their answers don't cover the newer words.
    finalizes_in_flight: u32,
    stale_finalizes: u32,
    // Providers.
    stt: Option<SttHandle>,
    tts: Option<TtsHandle>,
    llm: Option<LlmStream>,
    splitter: SentenceSplitter,
    tool_rounds: u32,
    /// One-shot syntheses, delivered in the order they were asked for.
    synth: FuturesOrdered<SynthFuture>,
    synth_failures: u32,
    next_unit: u64,
    flushes: std::collections::VecDeque<Instant>,
    /// A unit collecting sentences without a flush (over the flush budget).
    open_unit: Option<ReplyId>,
    // Conversation.
    context: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    reply: Option<Reply>,
    turn_interrupted_bot: bool,
    recovered_empty_turn: bool,
    user_turn_started_ms: Option<u64>,
    idle_deadline: Option<Instant>,
    idle_attempts: u32,
    ending: bool,
    writer: Option<CallWriter>,
    transcript: Vec<(String, String)>,
    events: CallEventsHandle,
}

/// Runs one call to its end.
pub(super) async fn run(deps: Arc<ConversationDeps>, info: CallInfo, mut io: SessionIo) {
    let started = Instant::now();
    let mut persona = deps.personas.persona_for(&info);
    let setup = persona.setup(&info).await;
    let identity = persona.identity();
    io.events.emit(CallEvent::Persona { name: identity.name, version: identity.version });
    info!(voice = %setup.voice, model = %setup.llm_model, tools = setup.tools.len(), "conversation starting");
    let tt = &setup.turn_taking;
    let denoiser = match Denoiser::with_enabled(8000, tt.denoise) {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "denoiser unavailable; continuing without it");
            Denoiser::passthrough(8000).expect("passthrough needs no state")
        }
    };
    let vad = deps.vad.stream(VadRate::Hz8000, tt.vad);
    let detector = TurnDetector::new(vad, deps.smart_turn.clone(), tt.turn, tt.vad.start_secs);
    let turns = TurnTracker::new(Duration::from_secs_f64(tt.vad.stop_secs), tt.user_turn_stop_timeout);
    let (stt, tts) = tokio::join!(
        deps.stt.connect(SttOptions::default()),
        deps.tts.connect(TtsOptions { voice: Some(setup.voice.clone()) })
    );
    let (stt, mut stt_events) = match stt {
        Ok((h, ev)) => (Some(h), Some(ev)),
        Err(e) => {
            deps.metrics.provider_error("stt", e.kind().as_str());
            warn!(error = %e, "speech-to-text unavailable: the caller can't be understood");
            (None, None)
        }
    };
    let (tts, mut tts_events) = match tts {
        Ok((h, ev)) => (Some(h), Some(ev)),
        Err(e) => {
            deps.metrics.provider_error("tts", e.kind().as_str());
            warn!(error = %e, "streaming text-to-speech unavailable: using one-shot synthesis");
            (None, None)
        }
    };
    let writer = match CallWriter::start(&deps.recordings_dir, &info.call_sid, SystemTime::now(), setup.record) {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, dir = %deps.recordings_dir.display(), "no recording or transcript for this call");
            None
        }
    };
    io.events.emit(CallEvent::Files {
        recording: writer.as_ref().and_then(|w| w.recording_path.clone()),
        transcript: writer.as_ref().map(|w| w.transcript_path.clone()),
    });
    let tools = setup
        .tools
        .iter()
        .map(|t| ToolSpec {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters: t.parameters.clone(),
        })
        .collect();
    let mut s = Session {
        context: vec![ChatMessage::system(setup.system_prompt.clone())],
        tools,
        deps,
        persona,
        setup,
        out: io.output.clone(),
        started,
        denoiser,
        clean: Vec::with_capacity(FRAME_SAMPLES * 3),
        scratch: vec![0; FRAME_SAMPLES * 2],
        detector,
        pending_verdict: None,
        turns,
        speech_ended: None,
        awaiting_final_since: None,
        turn_stt_final_ms: None,
        quiet_windows: 0,
        pause: None,
        speculation: None,
        last_audio: Instant::now(),
        finalizes_in_flight: 0,
        stale_finalizes: 0,
        stt,
        tts,
        llm: None,
        splitter: SentenceSplitter::default(),
        tool_rounds: 0,
        synth: FuturesOrdered::new(),
        synth_failures: 0,
        next_unit: 1,
        flushes: std::collections::VecDeque::new(),
        open_unit: None,
        reply: None,
        turn_interrupted_bot: false,
        recovered_empty_turn: false,
        user_turn_started_ms: None,
        idle_deadline: None,
        idle_attempts: 0,
        ending: false,
        writer,
        transcript: Vec::new(),
        events: io.events.clone(),
    };
    s.greet().await;
    loop {
        let deadline = s.next_deadline();
        tokio::select! {
            input = io.input.recv() => match input {
                Some(input) => s.on_input(input).await,
                None => break,
            },
            ev = recv_opt(&mut stt_events) => match ev {
                Some(ev) => s.on_stt(ev).await,
                None => stt_events = None,
            },
            ev = recv_opt(&mut tts_events) => match ev {
                Some(ev) => s.on_tts(ev).await,
                None => tts_events = None,
            },
            ev = next_llm(&mut s.llm) => s.on_llm(ev).await,
            verdict = verdict_opt(&mut s.pending_verdict) => {
                s.pending_verdict = None;
                s.on_verdict(verdict).await;
            }
            (unit, result) = next_synth(&mut s.synth) => s.on_synthesized(unit, result).await,
            _ = sleep_until_opt(deadline) => s.on_timer(!io.input.is_empty()).await,
        }
    }
    s.finish().await;
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_llm(stream: &mut Option<LlmStream>) -> Option<Result<LlmEvent, crate::services::llm::LlmError>> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn verdict_opt(fut: &mut Option<VerdictFuture>) -> Result<TurnVerdict, TurnError> {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The next one-shot synthesis, in request order.
async fn next_synth(futs: &mut FuturesOrdered<SynthFuture>) -> (ReplyId, Result<Vec<u8>, String>) {
    match futs.next().await {
        Some(out) => out,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms_between(a: Option<Instant>, b: Option<Instant>) -> Option<f64> {
    Some(b?.checked_duration_since(a?)?.as_secs_f64() * 1000.0)
}

impl Session {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn next_deadline(&self) -> Option<Instant> {
        let audio_idle = self.detector.turn().user_speaking().then_some(self.last_audio + AUDIO_IDLE_STOP);
        [self.turns.next_deadline(), self.idle_deadline, audio_idle].into_iter().flatten().min()
    }

    async fn emit(&mut self, out: CallOutput) {
        // The transport only goes away when the call ends; the loop sees that on its input.
        let _ = self.out.send(out).await;
    }

    /// Sends the current reply's audio or mark, or keeps it while the reply is speculative.
    async fn emit_reply(&mut self, out: CallOutput) {
        if let Some(held) = self.reply.as_mut().and_then(|r| r.held.as_mut()) {
            held.push(out);
            return;
        }
        self.emit(out).await;
    }

    // ----- call start ---------------------------------------------------------------------

    async fn greet(&mut self) {
        match self.setup.greeting.clone() {
            Greeting::None => self.idle_deadline = Some(Instant::now() + self.setup.idle.timeout),
            Greeting::Say(text) => self.say(&text, After::Listen).await,
            Greeting::Generate(instruction) => {
                self.context.push(ChatMessage::system(instruction));
                self.start_llm_reply(None);
            }
        }
    }

    // ----- caller audio and transport events ------------------------------------------------

    async fn on_input(&mut self, input: CallInput) {
        match input {
            CallInput::Audio { timestamp_ms, samples } => self.on_audio(timestamp_ms, samples).await,
            CallInput::Dtmf(digits) => self.on_dtmf(digits).await,
            CallInput::MarkPlayed(name) => self.on_mark(&name).await,
            CallInput::BotAudioPlayed { playout_ms, mulaw } => {
                let now = Instant::now();
                if let Some(reply) = self.reply.as_mut().filter(|r| r.held.is_none()) {
                    if !reply.audio_started {
                        reply.audio_started = true;
                        reply.first_audio_sent = Some(now);
                        if let Some(end) = reply.speech_ended {
                            self.deps.metrics.voice_to_voice.observe(secs(now.saturating_duration_since(end)));
                        }
                    }
                }
                if let Some(w) = &mut self.writer {
                    let mut pcm = [0i16; FRAME_SAMPLES];
                    for (o, &c) in pcm.iter_mut().zip(mulaw.iter()) {
                        *o = crate::audio::mulaw::decode(c);
                    }
                    w.bot(playout_ms, pcm);
                }
            }
            CallInput::Cleared { at_ms } => {
                if let Some(w) = &mut self.writer {
                    w.clear_bot(at_ms);
                }
            }
        }
    }

    async fn on_audio(&mut self, timestamp_ms: u64, samples: [i16; FRAME_SAMPLES]) {
        self.last_audio = Instant::now();
        if let Some(w) = &mut self.writer {
            w.caller(timestamp_ms, samples);
        }
        let written = match self.denoiser.process(&samples, &mut self.scratch) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "denoise failed; passing audio through");
                self.scratch[..FRAME_SAMPLES].copy_from_slice(&samples);
                FRAME_SAMPLES
            }
        };
        self.clean.extend_from_slice(&self.scratch[..written]);
        while self.clean.len() >= FRAME_SAMPLES {
            let mut frame = [0i16; FRAME_SAMPLES];
            frame.copy_from_slice(&self.clean[..FRAME_SAMPLES]);
            self.clean.drain(..FRAME_SAMPLES);
            self.on_clean_frame(&frame).await;
        }
    }

    async fn on_clean_frame(&mut self, frame: &[i16; FRAME_SAMPLES]) {
        if let Some(stt) = &self.stt {
            stt.send_audio(frame);
        }
        let outcome = match self.detector.push_frame(frame).await {
            Ok(o) => o,
            Err(e) => {
                debug!(error = %e, "turn detection skipped a frame");
                return;
            }
        };
        let now = Instant::now();
        if let Some(window) = outcome.window {
            match window.state {
                VadState::Stopping => {
                    self.quiet_windows += 1;
                    if self.quiet_windows == PAUSE_WINDOWS {
                        self.on_pause_start(now);
                    }
                }
                VadState::Speaking if self.quiet_windows > 0 => {
                    self.quiet_windows = 0;
                    self.on_pause_end();
                }
                _ => self.quiet_windows = 0,
            }
        }
        if outcome.fallback_complete {
            if let Some(sig) = self.turns.verdict(true, now) {
                self.on_turn_signal(sig).await;
            }
        }
        match outcome.event {
            Some(crate::audio::vad::VadEvent::SpeechStart) => {
                self.events.emit(CallEvent::Vad { speaking: true, at_ms: self.now_ms() });
                // The caller went on after a pause (a prepared reply survives an incomplete
                // verdict, for the silence fallback, but not more words).
                self.abort_speculation();
                self.pause = None;
                self.speech_resumed();
                if let Some(sig) = self.turns.vad_start(now) {
                    self.on_turn_signal(sig).await;
                }
            }
            Some(crate::audio::vad::VadEvent::SpeechStop) => {
                // Speech really ended one stop window ago.
                self.on_speech_stop(now, now - Duration::from_secs_f64(self.setup.turn_taking.vad.stop_secs));
            }
            None => {}
        }
        if let Some(pending) = outcome.pending {
            self.pending_verdict = Some(Box::pin(PendingTurn::verdict(pending)));
        }
    }

    /// VAD reported the end of speech (Smart Turn is scoring the turn meanwhile).
    fn on_speech_stop(&mut self, now: Instant, speech_ended: Instant) {
        self.events.emit(CallEvent::Vad { speaking: false, at_ms: self.now_ms() });
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
        if let Some((_, pending)) = self.detector.force_stop() {
            info!(
                silent_ms = now.duration_since(self.last_audio).as_millis() as u64,
                "no caller audio: speech stop forced"
            );
            self.on_speech_stop(now, self.last_audio);
            // VAD's own state machine still counts this pause: frames coming back quiet must
            // not start a second pause (another `Finalize`, a speculative reply) for it.
            self.quiet_windows = self.quiet_windows.max(PAUSE_WINDOWS);
            if let Some(pending) = pending {
                self.pending_verdict = Some(Box::pin(PendingTurn::verdict(pending)));
            }
        }
    }

    async fn on_verdict(&mut self, verdict: Result<TurnVerdict, TurnError>) {
        let now = Instant::now();
        let complete = match verdict {
            Ok(v) => {
                debug!(probability = v.probability, complete = v.complete, "smart turn");
                self.detector.apply_verdict(&v);
                v.complete
            }
            Err(e) => {
                // Without a verdict the silence fallback still ends the turn.
                warn!(error = %e, "smart turn failed");
                false
            }
        };
        if let Some(sig) = self.turns.verdict(complete, now) {
            self.on_turn_signal(sig).await;
        }
    }

    async fn on_stt(&mut self, ev: SttEvent) {
        match ev {
            SttEvent::Transcript(t) => {
                let now = Instant::now();
                if !t.is_final && !t.text.trim().is_empty() {
                    self.events.emit(CallEvent::Interim { text: t.text.clone() });
                }
                if t.is_final && !t.text.trim().is_empty() {
                    if let Some(since) = self.awaiting_final_since.take() {
                        let waited = now.saturating_duration_since(since);
                        self.deps.metrics.stt_final_latency.observe(secs(waited));
                        self.turn_stt_final_ms = Some(waited.as_secs_f64() * 1000.0);
                    }
                }
                let mut finalized = t.from_finalize;
                if t.from_finalize {
                    self.finalizes_in_flight = self.finalizes_in_flight.saturating_sub(1);
                    if self.stale_finalizes > 0 {
                        // Answers a `Finalize` sent before the caller went on: words, not the end.
                        self.stale_finalizes -= 1;
                        finalized = false;
                    }
                }
                if let Some(sig) = self.turns.transcript(&t.text, t.is_final, finalized, now) {
                    self.on_turn_signal(sig).await;
                } else if t.is_final {
                    self.maybe_speculate();
                }
            }
            SttEvent::Disconnected { reason, kind } => {
                self.deps.metrics.provider_error("stt", kind.as_str());
                warn!(%reason, "speech-to-text dropped; reconnecting");
            }
            SttEvent::Reconnected { attempts, downtime, resent_frames, lost_frames } => {
                info!(attempts, ?downtime, resent_frames, lost_frames, "speech-to-text reconnected");
            }
            SttEvent::Failed(e) => {
                self.deps.metrics.provider_error("stt", e.kind().as_str());
                warn!(error = %e, "speech-to-text failed for the rest of the call");
                self.stt = None;
            }
            SttEvent::Warning { message } => debug!(%message, "speech-to-text warning"),
            SttEvent::SpeechStarted { .. } | SttEvent::UtteranceEnd { .. } => {}
        }
    }

    /// `input_pending`: caller frames are queued; a task that fell behind must handle them
    /// before it may call the caller silent.
    async fn on_timer(&mut self, input_pending: bool) {
        let now = Instant::now();
        if !input_pending && self.detector.turn().user_speaking() && now >= self.last_audio + AUDIO_IDLE_STOP {
            self.force_speech_stop(now);
        }
        if let Some(sig) = self.turns.poll(now) {
            self.on_turn_signal(sig).await;
        }
        if self.idle_deadline.is_some_and(|d| now >= d) {
            self.idle_deadline = None;
            self.on_idle().await;
        }
    }

    // ----- user turns ---------------------------------------------------------------------

    async fn on_turn_signal(&mut self, sig: TurnSignal) {
        match sig {
            TurnSignal::Started => {
                self.abort_speculation();
                self.idle_deadline = None;
                self.idle_attempts = 0;
                self.user_turn_started_ms = Some(self.now_ms());
                self.turn_interrupted_bot = self.barge_in().await;
            }
            TurnSignal::Ended { text } => {
                self.detector.clear();
                self.on_user_turn(text).await;
            }
        }
    }

    /// Cuts the current reply short if the caller may interrupt it. True if something was cut.
    async fn barge_in(&mut self) -> bool {
        if !self.reply.as_ref().is_some_and(Reply::interruptible) {
            return false;
        }
        let Some(reply) = self.reply.take() else { return false };
        self.stop_reply_work();
        self.emit(CallOutput::Clear).await;
        self.deps.metrics.barge_ins.inc();
        let heard = reply.heard_text();
        info!(heard = %heard, said = %reply.full_text(), "barge-in");
        if !heard.is_empty() {
            self.context.push(ChatMessage::assistant(heard.clone()));
        }
        self.log_line("assistant", heard, reply.started_ms, true, None);
        true
    }

    async fn on_user_turn(&mut self, text: String) {
        let start = self.user_turn_started_ms.take().unwrap_or_else(|| self.now_ms());
        let speech_ended = self.speech_ended.take();
        self.pause = None;
        // This turn's STT latency goes to its answer, and to nothing later.
        let stt_final_ms = self.turn_stt_final_ms.take();
        self.awaiting_final_since = None;
        // A speculative reply for exactly this text is kept aside; anything else goes.
        let speculative = match self.speculation.as_deref() {
            Some(spoken) if spoken == text => {
                self.speculation = None;
                self.reply.take()
            }
            Some(_) => {
                self.abort_speculation();
                None
            }
            None => None,
        };
        if text.is_empty() {
            let first_reply_pending = self.transcript.iter().all(|(role, _)| role != "assistant");
            if (self.turn_interrupted_bot || first_reply_pending) && !self.recovered_empty_turn && !self.ending {
                self.recovered_empty_turn = true;
                self.context.push(ChatMessage::system(EMPTY_TURN_PROMPT));
                self.start_llm_reply(speech_ended);
            } else if self.reply.is_none() {
                self.arm_idle();
            }
            return;
        }
        self.recovered_empty_turn = false;
        info!(text = %text, "user turn");
        // A reply started meanwhile (e.g. by a keypress during the turn) gives way.
        self.barge_in().await;
        self.log_line("user", text.clone(), start, false, None);
        if self.ending {
            if speculative.is_some() {
                self.stop_reply_work();
            }
            return;
        }
        let action = self.persona.on_user_turn(&text).await;
        self.turn_stt_final_ms = stt_final_ms;
        match (action, speculative) {
            (Action::None, Some(reply)) => {
                self.context.push(ChatMessage::user(text));
                self.commit_speculation(reply, speech_ended).await;
            }
            (Action::None, None) => {
                self.context.push(ChatMessage::user(text));
                self.start_llm_reply(speech_ended);
            }
            (other, speculative) => {
                if speculative.is_some() {
                    // The persona answered the turn itself.
                    self.stop_reply_work();
                    Metrics::inc(&self.deps.metrics.speculative_replies, "result", "discarded");
                }
                self.context.push(ChatMessage::user(text));
                self.perform(other, speech_ended).await;
            }
        }
        self.turn_stt_final_ms = None;
    }

    // ----- speculative replies ----------------------------------------------------------------

    /// The caller paused (VAD's stop window began): ask STT for the final words now, so a reply
    /// can be prepared while the window runs.
    fn on_pause_start(&mut self, now: Instant) {
        if !self.setup.turn_taking.speculative_replies || !self.turns.is_open() || self.ending {
            return;
        }
        if self.stt.is_none() {
            return;
        }
        self.send_finalize();
        self.pause = Some(now);
        // Measured from where the VAD places the end of speech, as at a VAD stop.
        self.awaiting_final_since = Some(now - VAD_WINDOW * PAUSE_WINDOWS);
        self.maybe_speculate();
    }

    /// Speech resumed within the stop window: whatever was prepared answers the wrong text.
    fn on_pause_end(&mut self) {
        self.pause = None;
        self.abort_speculation();
        self.speech_resumed();
    }

    /// The caller spoke again: what was finalized no longer ends the turn.
    fn speech_resumed(&mut self) {
        self.stale_finalizes = self.finalizes_in_flight;
        self.turns.speech_resumed();
    }

    fn send_finalize(&mut self) {
        if let Some(stt) = &self.stt {
            stt.finalize();
            self.finalizes_in_flight += 1;
        }
    }

    /// Starts a held reply to the turn's settled text, if nothing else is going on.
    fn maybe_speculate(&mut self) {
        let Some(paused_at) = self.pause else { return };
        if self.speculation.is_some() || self.reply.is_some() || self.ending {
            return;
        }
        let Some(text) = self.turns.settled_text() else { return };
        debug!(%text, "speculative reply");
        self.open_unit = None;
        let mut reply = Reply::new(After::Listen, Some(paused_at), self.now_ms());
        reply.llm_requested = Some(Instant::now());
        reply.held = Some(Vec::new());
        self.reply = Some(reply);
        self.splitter = SentenceSplitter::default();
        self.tool_rounds = 0;
        // The request carries the user's words; the context gets them only if the turn holds.
        self.context.push(ChatMessage::user(text.clone()));
        self.request_llm();
        self.context.pop();
        self.speculation = Some(text);
    }

    /// Drops a held reply and everything feeding it; nothing of it was played.
    fn abort_speculation(&mut self) {
        if self.speculation.take().is_none() {
            return;
        }
        if self.reply.as_ref().is_some_and(|r| r.held.is_some()) {
            self.reply = None;
        }
        self.stop_reply_work();
        Metrics::inc(&self.deps.metrics.speculative_replies, "result", "discarded");
    }

    /// Stops everything feeding the current reply: the LLM stream, sentence splitting, one-shot
    /// syntheses and the TTS stream's queued text.
    fn stop_reply_work(&mut self) {
        self.llm = None;
        self.splitter = SentenceSplitter::default();
        self.synth = FuturesOrdered::new();
        self.open_unit = None;
        if let Some(tts) = &self.tts {
            tts.clear();
        }
    }

    /// The turn ended as predicted: play what was prepared and carry on from there.
    async fn commit_speculation(&mut self, mut reply: Reply, speech_ended: Option<Instant>) {
        Metrics::inc(&self.deps.metrics.speculative_replies, "result", "used");
        reply.speech_ended = speech_ended.or(reply.speech_ended);
        reply.turn_ended = Some(Instant::now());
        reply.stt_final_ms = self.turn_stt_final_ms.take();
        let held = reply.held.take().unwrap_or_default();
        let parked = reply.parked_tools.take();
        self.reply = Some(reply);
        for out in held {
            self.emit(out).await;
        }
        match parked {
            Some(calls) => self.run_tools(calls).await,
            None => self.check_reply_heard().await,
        }
    }

    async fn on_dtmf(&mut self, digits: String) {
        info!(%digits, "dtmf");
        if self.ending {
            return;
        }
        self.abort_speculation();
        let action = self.persona.on_dtmf(&digits).await;
        match action {
            Action::None => {
                self.barge_in().await;
                let text = format!("(pressed {digits} on the keypad)");
                self.log_line("user", text.clone(), self.now_ms(), false, None);
                self.context.push(ChatMessage::user(text));
                self.start_llm_reply(None);
            }
            other => {
                self.barge_in().await;
                self.perform(other, None).await;
            }
        }
    }

    async fn on_idle(&mut self) {
        if self.ending || self.reply.is_some() || self.turns.is_open() {
            return;
        }
        self.idle_attempts += 1;
        info!(attempt = self.idle_attempts, "caller idle");
        let action = self.persona.on_idle(self.idle_attempts).await;
        match action {
            Action::None => self.arm_idle(),
            other => self.perform(other, None).await,
        }
    }

    fn arm_idle(&mut self) {
        if !self.ending {
            self.idle_deadline = Some(Instant::now() + self.setup.idle.timeout);
        }
    }

    /// Carries out a persona's action.
    async fn perform(&mut self, action: Action, speech_ended: Option<Instant>) {
        match action {
            Action::None => self.start_llm_reply(speech_ended),
            Action::Say(text) => self.say(&text, After::Listen).await,
            Action::Prompt(instruction) => {
                self.context.push(ChatMessage::system(instruction));
                self.start_llm_reply(speech_ended);
            }
            Action::Transfer(to) => {
                self.ending = true;
                self.say("Please hold while I transfer your call.", After::Transfer(to)).await;
            }
            Action::SendDtmf(digits) => {
                let tones = super::dtmf::tones(&digits);
                self.emit(CallOutput::Audio(tones)).await;
                self.arm_idle();
            }
            Action::HangUp(goodbye) => {
                self.ending = true;
                match goodbye {
                    Some(text) if !text.trim().is_empty() => {
                        self.say(&text, After::HangUp("goodbye".into())).await;
                    }
                    _ => {
                        let reason = "persona ended the call".to_string();
                        if let Some(reply) = &mut self.reply {
                            // Let what is already queued play out first.
                            reply.after = After::HangUp(reason);
                            self.llm = None;
                            self.complete_reply_text();
                            self.check_reply_heard().await;
                        } else {
                            self.emit(CallOutput::HangUp { reason }).await;
                        }
                    }
                }
            }
        }
    }

    // ----- replies --------------------------------------------------------------------------

    fn start_llm_reply(&mut self, speech_ended: Option<Instant>) {
        self.idle_deadline = None;
        self.open_unit = None;
        let mut reply = Reply::new(After::Listen, speech_ended, self.now_ms());
        reply.llm_requested = Some(Instant::now());
        reply.turn_ended = reply.llm_requested;
        reply.stt_final_ms = self.turn_stt_final_ms.take();
        self.reply = Some(reply);
        self.splitter = SentenceSplitter::default();
        self.tool_rounds = 0;
        self.request_llm();
    }

    fn request_llm(&mut self) {
        let request = ChatRequest {
            model: Some(self.setup.llm_model.clone()),
            messages: self.context.clone(),
            tools: if self.tool_rounds < MAX_TOOL_ROUNDS { self.tools.clone() } else { Vec::new() },
            tool_choice: None,
            temperature: self.setup.temperature,
            max_tokens: self.setup.max_tokens,
        };
        self.llm = Some(self.deps.llm.stream_chat(request));
    }

    /// Speaks a fixed text: appended to the reply in progress (so what was already said plays
    /// first), or as a reply of its own. `after` replaces what follows the reply unless it is
    /// `Listen`.
    async fn say(&mut self, text: &str, after: After) {
        self.idle_deadline = None;
        self.llm = None;
        self.splitter = SentenceSplitter::default();
        match &mut self.reply {
            Some(reply) => {
                if after != After::Listen {
                    reply.after = after;
                }
            }
            None => {
                self.open_unit = None;
                self.reply = Some(Reply::new(after, None, self.now_ms()));
            }
        }
        let mut splitter = SentenceSplitter::default();
        let mut sentences = splitter.push(text);
        sentences.extend(splitter.finish());
        for s in sentences {
            self.speak_sentence(s);
        }
        self.complete_reply_text();
        self.check_reply_heard().await;
    }

    fn speak_sentence(&mut self, text: String) {
        if self.reply.is_none() {
            return;
        }
        let now = Instant::now();
        while self.flushes.front().is_some_and(|t| now.duration_since(*t) > FLUSH_WINDOW) {
            self.flushes.pop_front();
        }
        if let (Some(id), Some(tts)) = (self.open_unit, self.tts.as_ref().filter(|t| t.is_open())) {
            // Over budget: this sentence joins the reply's open unit.
            tts.speak(id, text.clone());
            if let Some(u) = self.reply.as_mut().and_then(|r| r.utterance_mut(id)) {
                u.text.push(' ');
                u.text.push_str(&text);
            }
            return;
        }
        let id = ReplyId(self.next_unit);
        self.next_unit += 1;
        if let Some(reply) = &mut self.reply {
            reply.utterances.push(Utterance { id, text: text.clone(), sent_at: now, first_audio: None, heard: false });
        }
        // A stream that failed for good (e.g. a revoked key) takes no more text: synthesize instead.
        match self.tts.as_ref().filter(|t| t.is_open()) {
            Some(tts) => {
                tts.speak(id, text);
                if self.flushes.len() < FLUSH_BUDGET {
                    tts.flush(id);
                    self.flushes.push_back(now);
                } else {
                    self.open_unit = Some(id);
                }
            }
            None => self.synthesize_fallback(id, text),
        }
    }

    /// The reply's text is complete: flush a unit left open by the flush budget.
    fn complete_reply_text(&mut self) {
        if let (Some(id), Some(tts)) = (self.open_unit.take(), &self.tts) {
            tts.flush(id);
            self.flushes.push_back(Instant::now());
        }
        if let Some(r) = &mut self.reply {
            r.text_complete = true;
        }
    }

    fn synthesize_fallback(&mut self, id: ReplyId, text: String) {
        let tts = self.deps.tts.clone();
        let options = TtsOptions { voice: Some(self.setup.voice.clone()) };
        self.synth.push_back(Box::pin(async move {
            let result = tts.synthesize(text, options).await.map(|b| b.to_vec()).map_err(|e| e.to_string());
            (id, result)
        }));
    }

    async fn on_llm(&mut self, ev: Option<Result<LlmEvent, crate::services::llm::LlmError>>) {
        let now = Instant::now();
        if let Some(reply) = &mut self.reply {
            if reply.llm_first_token.is_none() && ev.as_ref().is_some_and(|e| e.is_ok()) {
                reply.llm_first_token = Some(now);
                if let Some(req) = reply.llm_requested {
                    self.deps.metrics.llm_first_token.observe(secs(now.saturating_duration_since(req)));
                }
            }
        }
        match ev {
            Some(Ok(LlmEvent::TextDelta(delta))) => {
                for sentence in self.splitter.push(&delta) {
                    self.speak_sentence(sentence);
                }
            }
            Some(Ok(LlmEvent::ToolCalls(calls))) => {
                self.llm = None;
                // Words before the tool call are a sentence of their own.
                if let Some(before) = self.splitter.finish() {
                    self.speak_sentence(before);
                }
                // Tools act on the world: a speculative reply runs them only once confirmed.
                if let Some(reply) = self.reply.as_mut().filter(|r| r.held.is_some()) {
                    reply.parked_tools = Some(calls);
                    return;
                }
                if self.tool_rounds >= MAX_TOOL_ROUNDS {
                    warn!(rounds = self.tool_rounds, "the LLM keeps calling tools; answering with an apology");
                    self.speak_sentence(APOLOGY.to_string());
                    self.complete_reply_text();
                    self.check_reply_heard().await;
                    return;
                }
                self.run_tools(calls).await;
            }
            Some(Ok(LlmEvent::Done { .. })) | None => {
                self.llm = None;
                if let Some(last) = self.splitter.finish() {
                    self.speak_sentence(last);
                }
                self.complete_reply_text();
                self.check_reply_heard().await;
            }
            Some(Err(e)) if self.speculation.is_some() => {
                // Nothing was said yet: the confirmed turn asks again.
                self.deps.metrics.provider_error("llm", e.kind().as_str());
                warn!(error = %e, "LLM failed on a speculative reply");
                self.abort_speculation();
            }
            Some(Err(e)) => {
                self.llm = None;
                self.deps.metrics.provider_error("llm", e.kind().as_str());
                warn!(error = %e, "LLM failed; apologising");
                self.splitter = SentenceSplitter::default();
                let spoken = self.reply.as_ref().is_some_and(|r| !r.utterances.is_empty());
                if !spoken {
                    self.speak_sentence(APOLOGY.to_string());
                }
                self.complete_reply_text();
                self.check_reply_heard().await;
            }
        }
    }

    async fn run_tools(&mut self, calls: Vec<crate::services::llm::ToolCall>) {
        self.tool_rounds += 1;
        self.context.push(ChatMessage::assistant_tool_calls(calls.clone()));
        let mut then = Vec::new();
        for call in &calls {
            info!(tool = %call.name, "tool call");
            let content = match self.persona.on_tool_call(&call.name, &call.arguments).await {
                Ok(outcome) => {
                    if outcome.then != Action::None {
                        then.push(outcome.then);
                    }
                    outcome.content
                }
                Err(e) => serde_json::json!({ "error": e }).to_string(),
            };
            self.context.push(ChatMessage::tool_result(call.id.clone(), content));
        }
        match then.into_iter().next() {
            // A tool that ends or transfers the call wins over further talk.
            Some(action @ (Action::HangUp(_) | Action::Transfer(_) | Action::Say(_))) => {
                self.perform(action, None).await;
            }
            Some(Action::SendDtmf(digits)) => {
                self.emit(CallOutput::Audio(super::dtmf::tones(&digits))).await;
                self.request_llm();
            }
            Some(Action::Prompt(p)) => {
                self.context.push(ChatMessage::system(p));
                self.request_llm();
            }
            Some(Action::None) | None => self.request_llm(),
        }
    }

    async fn on_tts(&mut self, ev: TtsEvent) {
        match ev {
            TtsEvent::Audio { reply: id, audio, received_at } => {
                let Some(reply) = &mut self.reply else { return };
                let Some(u) = reply.utterance_mut(id) else { return };
                if u.first_audio.is_none() {
                    u.first_audio = Some(received_at.into_std());
                    self.deps
                        .metrics
                        .tts_first_byte
                        .observe(secs(received_at.into_std().saturating_duration_since(u.sent_at)));
                }
                self.emit_reply(CallOutput::Audio(audio.to_vec())).await;
            }
            TtsEvent::Flushed { reply: id, .. } => {
                if self.reply.as_ref().is_some_and(|r| r.owns(id)) {
                    self.emit_reply(CallOutput::Mark(mark_name(id))).await;
                }
            }
            TtsEvent::Failed { replies, error } => {
                self.deps.metrics.provider_error("tts", error.kind().as_str());
                warn!(error = %error, "text-to-speech failed; retrying with one-shot synthesis");
                let retry: Vec<(ReplyId, String)> = match &self.reply {
                    Some(r) => r
                        .utterances
                        .iter()
                        .filter(|u| replies.contains(&u.id) && u.first_audio.is_none())
                        .map(|u| (u.id, u.text.clone()))
                        .collect(),
                    None => Vec::new(),
                };
                for (id, text) in retry {
                    self.synthesize_fallback(id, text);
                }
                // Utterances cut mid-way will get no Flushed: mark them after what did arrive.
                let partial: Vec<ReplyId> = match &self.reply {
                    Some(r) => r
                        .utterances
                        .iter()
                        .filter(|u| replies.contains(&u.id) && u.first_audio.is_some())
                        .map(|u| u.id)
                        .collect(),
                    None => Vec::new(),
                };
                for id in partial {
                    self.emit_reply(CallOutput::Mark(mark_name(id))).await;
                }
            }
            TtsEvent::Disconnected { reason, kind } => {
                self.deps.metrics.provider_error("tts", kind.as_str());
                warn!(%reason, "text-to-speech dropped; reconnecting");
            }
            TtsEvent::Cleared { .. } | TtsEvent::Reconnected { .. } | TtsEvent::Warning { .. } => {}
        }
    }

    async fn on_synthesized(&mut self, id: ReplyId, result: Result<Vec<u8>, String>) {
        if !self.reply.as_ref().is_some_and(|r| r.owns(id)) {
            return;
        }
        match result {
            Ok(audio) => {
                self.synth_failures = 0;
                self.emit_reply(CallOutput::Audio(audio)).await;
                self.emit_reply(CallOutput::Mark(mark_name(id))).await;
            }
            Err(e) => {
                self.deps.metrics.provider_error("tts", "fallback");
                self.synth_failures += 1;
                if self.synth_failures >= MAX_SYNTH_FAILURES {
                    warn!(error = %e, "text-to-speech keeps failing: ending the call");
                    self.abort_speculation();
                    self.ending = true;
                    self.reply = None;
                    self.emit(CallOutput::HangUp { reason: "text-to-speech unavailable".into() }).await;
                    return;
                }
                // Skip this sentence (a later mark or this one covers it) and carry on.
                warn!(error = %e, "text-to-speech retry failed; skipping the sentence");
                self.emit_reply(CallOutput::Mark(mark_name(id))).await;
            }
        }
    }

    async fn on_mark(&mut self, name: &str) {
        let Some(id) = parse_mark(name) else { return };
        // Twilio returns marks in order: this one vouches for every utterance before it too.
        if let Some(reply) = &mut self.reply {
            for u in reply.utterances.iter_mut().filter(|u| u.id <= id) {
                u.heard = true;
            }
        }
        self.check_reply_heard().await;
    }

    /// Once the whole reply has been heard: record it and do what comes after.
    async fn check_reply_heard(&mut self) {
        if !self.reply.as_ref().is_some_and(|r| r.all_heard() && r.held.is_none()) || self.llm.is_some() {
            return;
        }
        let Some(reply) = self.reply.take() else { return };
        let text = reply.full_text();
        let latency = TurnLatency {
            stt_final_ms: reply.stt_final_ms,
            endpoint_ms: ms_between(reply.speech_ended, reply.turn_ended),
            llm_first_token_ms: ms_between(reply.llm_requested, reply.llm_first_token),
            tts_first_byte_ms: reply.utterances.first().and_then(|u| ms_between(Some(u.sent_at), u.first_audio)),
            voice_to_voice_ms: ms_between(reply.speech_ended, reply.first_audio_sent),
        };
        if !text.is_empty() {
            let already =
                matches!(self.context.last(), Some(ChatMessage::Assistant { content: Some(c), .. }) if *c == text);
            if !already {
                self.context.push(ChatMessage::assistant(text.clone()));
            }
            self.log_line("assistant", text, reply.started_ms, false, Some(latency));
        }
        match reply.after {
            After::Listen => self.arm_idle(),
            After::HangUp(reason) => self.emit(CallOutput::HangUp { reason }).await,
            After::Transfer(to) => self.emit(CallOutput::Transfer { to }).await,
        }
    }

    fn log_line(
        &mut self,
        role: &'static str,
        text: String,
        start_ms: u64,
        interrupted: bool,
        latency: Option<TurnLatency>,
    ) {
        self.transcript.push((role.to_string(), text.clone()));
        let end_ms = self.now_ms();
        let line = TranscriptLine { role, text, start_ms, end_ms, interrupted, latency };
        self.events.emit(CallEvent::Line(line.clone()));
        if let Some(w) = &mut self.writer {
            w.line(line);
        }
    }

    // ----- call end -------------------------------------------------------------------------

    async fn finish(mut self) {
        if let Some(stt) = self.stt.take() {
            stt.close();
        }
        if let Some(tts) = self.tts.take() {
            tts.close();
        }
        let end_ms = self.now_ms();
        if let Some(w) = self.writer.take() {
            w.finish(end_ms).await;
        }
        let summary = CallSummary {
            duration: self.started.elapsed(),
            outcome: if self.ending { "bot_ended".into() } else { "caller_hung_up".into() },
            transcript: std::mem::take(&mut self.transcript),
        };
        self.persona.on_call_end(&summary).await;
        info!(turns = summary.transcript.len(), duration_s = summary.duration.as_secs_f64(), "conversation ended");
    }
}
