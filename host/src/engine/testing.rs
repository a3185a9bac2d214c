//! Test rig for the engine's parts: a scripted audio front end, an in-memory STT stream, a TTS
//! stream on [`crate::services::tts::command_channel`], and a scripted LLM — no models, sockets
//! or provider fakes, so each seam is tested in milliseconds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Bytes;

use super::listener::Frontend;
use crate::audio::pipeline::{PipelineError, PipelineEvent};
use crate::audio::turn::{TurnError, TurnVerdict};
use crate::services::llm::{ChatModel, ChatRequest, FinishReason, LlmError, LlmEvent, LlmStream};
use crate::services::stt::{self, SttCommand, SttCommandReceiver, SttEvent, SttEvents, SttHandle, Transcript};
use crate::services::tts::{
    self, ReplyId, TextToSpeech, TtsCommand, TtsError, TtsEvent, TtsEvents, TtsHandle, TtsOptions,
};

/// A front end that replays scripted pipeline events: each pushed frame releases the next
/// batch; verdicts come from a queue (pending while it is empty).
#[derive(Default)]
pub struct ScriptedFrontend {
    pub frames: VecDeque<Vec<PipelineEvent>>,
    pub verdicts: Arc<Mutex<VecDeque<Result<TurnVerdict, TurnError>>>>,
    pending: Vec<PipelineEvent>,
    speaking: bool,
    /// Frames pushed so far (shared, so a test can read it while the engine owns the front end).
    pub pushed: Arc<std::sync::atomic::AtomicUsize>,
    pub forced: u32,
    pub cleared: u32,
}

impl ScriptedFrontend {
    pub fn new(frames: Vec<Vec<PipelineEvent>>) -> Self {
        ScriptedFrontend { frames: frames.into(), ..Default::default() }
    }

    fn track(&mut self, e: &PipelineEvent) {
        match e {
            PipelineEvent::SpeechStarted { .. } => self.speaking = true,
            PipelineEvent::SpeechStopped { .. } => self.speaking = false,
            _ => {}
        }
    }
}

/// A verdict as Smart Turn would give it.
pub fn verdict(complete: bool) -> Result<TurnVerdict, TurnError> {
    Ok(TurnVerdict { probability: if complete { 0.9 } else { 0.1 }, complete, upto: 0 })
}

impl Frontend for ScriptedFrontend {
    async fn push(&mut self, _raw: &[i16], mut on_clean: impl FnMut(&[i16]) + Send) -> Result<(), PipelineError> {
        on_clean(&[0; 160]);
        self.pushed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let batch = self.frames.pop_front().unwrap_or_default();
        for e in &batch {
            self.track(e);
        }
        self.pending.extend(batch);
        Ok(())
    }

    fn drain_into(&mut self, out: &mut Vec<PipelineEvent>) {
        out.append(&mut self.pending);
    }

    async fn verdict(&mut self) -> Result<TurnVerdict, TurnError> {
        loop {
            if let Some(v) = self.verdicts.lock().unwrap().pop_front() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn user_speaking(&self) -> bool {
        self.speaking
    }

    fn scoring(&self) -> bool {
        !self.verdicts.lock().unwrap().is_empty()
    }

    fn force_stop(&mut self) -> bool {
        if !self.speaking {
            return false;
        }
        self.speaking = false;
        self.forced += 1;
        self.pending.push(PipelineEvent::SpeechStopped { t: 0.0, speech_ended_t: 0.0, scoring: true });
        true
    }

    fn clear_turn(&mut self) {
        self.cleared += 1;
    }
}

/// The usual VAD events, at stream times that don't matter to the listener.
pub fn started() -> PipelineEvent {
    PipelineEvent::SpeechStarted { t: 0.0 }
}
pub fn paused() -> PipelineEvent {
    PipelineEvent::PauseStarted { t: 0.064, speech_ended_t: 0.0 }
}
pub fn resumed() -> PipelineEvent {
    PipelineEvent::PauseEnded { t: 0.1 }
}
pub fn stopped() -> PipelineEvent {
    PipelineEvent::SpeechStopped { t: 0.2, speech_ended_t: 0.0, scoring: true }
}

/// An STT stream in memory: the test reads the engine's commands and writes its events.
pub struct SttRig {
    pub commands: SttCommandReceiver,
    pub events: mpsc::Sender<SttEvent>,
}

pub fn stt_stream() -> ((SttHandle, SttEvents), SttRig) {
    let (handle, commands) = stt::command_channel(512);
    let (events_tx, events) = mpsc::channel(64);
    ((handle, events), SttRig { commands, events: events_tx })
}

impl SttRig {
    /// Finalize requests received so far (audio skipped).
    pub fn finalizes(&mut self) -> usize {
        let mut n = 0;
        while let Some(Some(cmd)) = futures_util::FutureExt::now_or_never(self.commands.recv()) {
            if cmd == SttCommand::Finalize {
                n += 1;
            }
        }
        n
    }
}

/// A final transcript, as Deepgram sends one.
pub fn final_text(text: &str, from_finalize: bool) -> SttEvent {
    SttEvent::Transcript(Transcript {
        text: text.into(),
        is_final: true,
        speech_final: from_finalize,
        from_finalize,
        start_secs: 0.0,
        duration_secs: 1.0,
        confidence: 0.9,
        received_at: tokio::time::Instant::now(),
    })
}

pub fn interim(text: &str) -> SttEvent {
    SttEvent::Transcript(Transcript {
        text: text.into(),
        is_final: false,
        speech_final: false,
        from_finalize: false,
        start_secs: 0.0,
        duration_secs: 1.0,
        confidence: 0.9,
        received_at: tokio::time::Instant::now(),
    })
}

/// A TTS stream in memory.
pub struct TtsRig {
    pub commands: mpsc::UnboundedReceiver<TtsCommand>,
    pub events: mpsc::Sender<TtsEvent>,
}

pub fn tts_stream(budget: Option<tts::FlushBudget>) -> ((TtsHandle, TtsEvents), TtsRig) {
    let (handle, commands, _) = match budget {
        Some(b) => tts::command_channel_with_budget(b),
        None => tts::command_channel(),
    };
    let (events_tx, events) = mpsc::channel(64);
    ((handle, events), TtsRig { commands, events: events_tx })
}

impl TtsRig {
    /// Commands sent so far.
    pub fn drain(&mut self) -> Vec<TtsCommand> {
        let mut out = Vec::new();
        while let Ok(cmd) = self.commands.try_recv() {
            out.push(cmd);
        }
        out
    }

    /// Answers every `Speak`+`Flush` so far with audio and `Flushed`, as Deepgram does.
    pub async fn answer_all(&mut self) -> Vec<ReplyId> {
        let mut flushed = Vec::new();
        for cmd in self.drain() {
            match cmd {
                TtsCommand::Speak { reply, .. } => {
                    let audio = tts_audio(reply);
                    self.events.send(audio).await.unwrap();
                }
                TtsCommand::Flush { reply } => {
                    let now = tokio::time::Instant::now();
                    self.events.send(TtsEvent::Flushed { reply, received_at: now }).await.unwrap();
                    flushed.push(reply);
                }
                TtsCommand::Clear | TtsCommand::Close => {}
            }
        }
        flushed
    }
}

/// 20 ms of μ-law silence tagged with `reply`.
pub fn tts_audio(reply: ReplyId) -> TtsEvent {
    TtsEvent::Audio { reply, audio: vec![0xFF; 160].into(), received_at: tokio::time::Instant::now() }
}

/// One-shot synthesis that answers with silence, or fails.
pub struct OneShotTts {
    pub fail: bool,
}

impl TextToSpeech for OneShotTts {
    fn connect(&self, _: TtsOptions) -> BoxFuture<'static, Result<(TtsHandle, TtsEvents), TtsError>> {
        Box::pin(std::future::ready(Err(TtsError::Config("streaming is not part of this rig".into()))))
    }

    fn synthesize(&self, _: String, _: TtsOptions) -> BoxFuture<'static, Result<Bytes, TtsError>> {
        let fail = self.fail;
        Box::pin(async move {
            if fail {
                Err(TtsError::Network("refused".into()))
            } else {
                Ok(vec![0xFF; 320].into())
            }
        })
    }
}

/// One scripted LLM reply: the events its stream yields.
pub type ScriptedReply = Vec<Result<LlmEvent, LlmError>>;

/// An LLM that answers each request with the next scripted reply, and records the requests.
#[derive(Default, Clone)]
pub struct ScriptedLlm {
    pub replies: Arc<Mutex<VecDeque<ScriptedReply>>>,
    pub requests: Arc<Mutex<Vec<ChatRequest>>>,
}

impl ScriptedLlm {
    pub fn answering(replies: Vec<Vec<Result<LlmEvent, LlmError>>>) -> Self {
        ScriptedLlm { replies: Arc::new(Mutex::new(replies.into())), ..Default::default() }
    }

    /// The text of a reply in one delta each per word, then `Done`.
    pub fn words(text: &str) -> Vec<Result<LlmEvent, LlmError>> {
        let mut out: Vec<_> = text.split_inclusive(' ').map(|w| Ok(LlmEvent::TextDelta(w.to_string()))).collect();
        out.push(Ok(LlmEvent::Done { finish_reason: FinishReason::Stop, usage: None }));
        out
    }

    /// The last user message of every request so far.
    pub fn user_texts(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| {
                r.messages.iter().rev().find_map(|m| match m {
                    crate::services::llm::ChatMessage::User(t) => Some(t.clone()),
                    _ => None,
                })
            })
            .collect()
    }
}

impl ChatModel for ScriptedLlm {
    fn stream_chat(&self, request: ChatRequest) -> LlmStream {
        self.requests.lock().unwrap().push(request);
        let events = self.replies.lock().unwrap().pop_front().unwrap_or_else(|| ScriptedLlm::words("Okay."));
        Box::pin(futures_util::stream::iter(events))
    }
}

/// Waits until `done` holds, polling; panics after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A persona for coordinator tests: the built-in setup with a short idle timeout, and hooks whose
/// answers and delays the test chooses. Records every hook called.
#[derive(Clone, Default)]
pub struct TestPersona {
    pub turn_delay: Duration,
    pub turn_action: Option<crate::persona::Action>,
    pub tool_delay: Duration,
    pub tools: Vec<crate::persona::ToolSpec>,
    pub calls: Arc<Mutex<Vec<String>>>,
}

impl crate::persona::Persona for TestPersona {
    fn setup<'a>(
        &'a mut self,
        call: &'a crate::call::CallInfo,
    ) -> crate::persona::HookFuture<'a, crate::persona::PersonaSetup> {
        let tools = self.tools.clone();
        Box::pin(async move {
            let mut setup = crate::persona::BuiltinPersona::new().setup(call).await;
            setup.greeting = crate::persona::Greeting::None;
            setup.idle.timeout = Duration::from_secs(30);
            setup.tools = tools;
            setup
        })
    }

    fn on_user_turn<'a>(&'a mut self, text: &'a str) -> crate::persona::HookFuture<'a, crate::persona::Action> {
        self.calls.lock().unwrap().push(format!("turn:{text}"));
        let (delay, action) = (self.turn_delay, self.turn_action.clone().unwrap_or(crate::persona::Action::None));
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            action
        })
    }

    fn on_idle(&mut self, attempt: u32) -> crate::persona::HookFuture<'_, crate::persona::Action> {
        self.calls.lock().unwrap().push(format!("idle:{attempt}"));
        Box::pin(std::future::ready(crate::persona::Action::None))
    }

    fn on_tool_call<'a>(
        &'a mut self,
        name: &'a str,
        arguments: &'a str,
    ) -> crate::persona::HookFuture<'a, Result<crate::persona::ToolOutcome, String>> {
        self.calls.lock().unwrap().push(format!("tool:{name}"));
        let delay = self.tool_delay;
        let content = format!("{{\"tool\":\"{name}\",\"args\":{arguments}}}");
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(crate::persona::ToolOutcome { content, then: crate::persona::Action::None })
        })
    }

    fn on_dtmf<'a>(&'a mut self, digits: &'a str) -> crate::persona::HookFuture<'a, crate::persona::Action> {
        self.calls.lock().unwrap().push(format!("dtmf:{digits}"));
        Box::pin(std::future::ready(crate::persona::Action::None))
    }

    fn on_call_end<'a>(&'a mut self, _: &'a crate::persona::CallSummary) -> crate::persona::HookFuture<'a, ()> {
        self.calls.lock().unwrap().push("end".into());
        Box::pin(std::future::ready(()))
    }
}

/// Collects every call event, for assertions.
#[derive(Default)]
pub struct EventLog(pub Mutex<Vec<crate::call::events::CallEvent>>);

impl crate::call::events::CallEventSink for EventLog {
    fn record(&self, _call_sid: &str, event: &crate::call::events::CallEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

/// A call's info for tests.
pub fn call_info() -> crate::call::CallInfo {
    crate::call::CallInfo {
        call_sid: "CA1".into(),
        stream_sid: "MZ1".into(),
        account_sid: "AC1".into(),
        direction: crate::call::Direction::Inbound,
        from: "+15550001111".into(),
        to: "+15550002222".into(),
        persona: None,
        parameters: Default::default(),
    }
}
