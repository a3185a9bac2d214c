//! The coordinator on scripted VAD events, an in-memory STT and TTS, a scripted LLM and a test
//! persona: one test per race the engine has had, and the hook that must not stall the caller.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::audio::pipeline::PipelineEvent;
use crate::audio::turn::{TurnError, TurnVerdict};
use crate::call::events::CallEvents;
use crate::engine::listener::turns::TurnTracker;
use crate::engine::speaker::SpeakerParts;
use crate::engine::testing::{
    call_info, eventually, final_text, paused, resumed, started, stopped, stt_stream, tts_stream, verdict, EventLog,
    OneShotTts, ScriptedFrontend, ScriptedLlm, SttRig, TestPersona, TtsRig,
};
use crate::metrics::Metrics;
use crate::persona::{Persona, ToolSpec};
use crate::services::llm::{LlmEvent, ToolCall};
use crate::services::tts::TtsCommand;
use std::sync::Arc;

struct Rig {
    input: mpsc::Sender<CallInput>,
    out: mpsc::Receiver<CallOutput>,
    stt: SttRig,
    tts: TtsRig,
    llm: ScriptedLlm,
    log: Arc<EventLog>,
    calls: Arc<Mutex<Vec<String>>>,
    verdicts: Arc<Mutex<VecDeque<Result<TurnVerdict, TurnError>>>>,
    pushed: Arc<AtomicUsize>,
    sent: usize,
    task: tokio::task::JoinHandle<()>,
}

async fn rig(frames: Vec<Vec<PipelineEvent>>, llm: ScriptedLlm, persona: TestPersona) -> Rig {
    let metrics = Arc::new(Metrics::new());
    let frontend = ScriptedFrontend::new(frames);
    let (verdicts, pushed) = (frontend.verdicts.clone(), frontend.pushed.clone());
    let (stt_stream, stt) = stt_stream();
    let turns = TurnTracker::new(Duration::from_millis(200), Duration::from_secs(2));
    let listener = Listener::new(frontend, Some(stt_stream), turns, true, metrics.clone());
    let (tts_stream, tts) = tts_stream(None);
    let (out_tx, out) = mpsc::channel(256);
    let started = Instant::now();
    let speaker = Speaker::new(SpeakerParts {
        out: out_tx.clone(),
        llm: Arc::new(llm.clone()),
        tts: Arc::new(OneShotTts { fail: false }),
        stream: Some(tts_stream),
        voice: "test".into(),
        metrics: metrics.clone(),
        started,
    });
    let calls = persona.calls.clone();
    let mut p = persona;
    let setup = p.setup(&call_info()).await;
    let hub = CallEvents::new();
    let log = Arc::new(EventLog::default());
    hub.add_sink(log.clone());
    let coordinator = Coordinator::new(CoordinatorParts {
        listener,
        speaker,
        hooks: Hooks::spawn(Box::new(p)),
        setup,
        out: out_tx,
        events: hub.open("CA1"),
        writer: None,
        started,
    });
    let (input, input_rx) = mpsc::channel(256);
    let task = tokio::spawn(coordinator.run(input_rx));
    Rig { input, out, stt, tts, llm, log, calls, verdicts, pushed, sent: 0, task }
}

impl Rig {
    async fn frames(&mut self, n: usize) {
        for _ in 0..n {
            self.input.send(CallInput::Audio { timestamp_ms: 0, samples: [0; 160] }).await.unwrap();
            self.sent += 1;
        }
    }

    async fn processed(&self) {
        let (pushed, sent) = (self.pushed.clone(), self.sent);
        eventually("frames processed", Duration::from_secs(2), || pushed.load(Ordering::SeqCst) >= sent).await;
    }

    async fn stt(&self, ev: crate::services::stt::SttEvent) {
        self.stt.events.send(ev).await.unwrap();
    }

    fn verdict(&self, complete: bool) {
        self.verdicts.lock().unwrap().push_back(verdict(complete));
    }

    /// A whole caller turn: speech, stop, final words, a complete verdict.
    async fn turn(&mut self, text: &str) {
        self.frames(2).await;
        self.processed().await;
        self.stt(final_text(text, true)).await;
        self.verdict(true);
    }

    fn outputs(&mut self) -> Vec<CallOutput> {
        std::iter::from_fn(|| self.out.try_recv().ok()).collect()
    }

    fn spoken(&mut self) -> Vec<String> {
        self.tts
            .drain()
            .into_iter()
            .filter_map(|c| match c {
                TtsCommand::Speak { text, .. } => Some(text),
                _ => None,
            })
            .collect()
    }

    fn vad_events(&self) -> usize {
        self.log.0.lock().unwrap().iter().filter(|e| matches!(e, CallEvent::Vad { .. })).count()
    }

    fn hooks(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    async fn end(self) {
        drop(self.input);
        tokio::time::timeout(Duration::from_secs(2), self.task).await.expect("the call ends").unwrap();
    }
}

fn tool_reply() -> Vec<Result<LlmEvent, crate::services::llm::LlmError>> {
    vec![
        Ok(LlmEvent::TextDelta("Let me check. ".into())),
        Ok(LlmEvent::ToolCalls(vec![ToolCall { id: "c1".into(), name: "lookup".into(), arguments: "{}".into() }])),
    ]
}

#[tokio::test]
async fn a_slow_tool_never_stops_the_caller_being_heard_and_its_result_keeps_the_context_valid() {
    let frames = vec![vec![started()], vec![stopped()], vec![], vec![started()], vec![], vec![stopped()]];
    let llm = ScriptedLlm::answering(vec![tool_reply(), ScriptedLlm::words("Sorry, go on.")]);
    let tools = vec![ToolSpec { name: "lookup".into(), description: "d".into(), parameters: serde_json::json!({}) }];
    let persona = TestPersona { tool_delay: Duration::from_millis(600), tools, ..Default::default() };
    let mut r = rig(frames, llm, persona).await;
    r.turn("Where is my order?").await;
    eventually("the tool runs", Duration::from_secs(2), || r.hooks().contains(&"tool:lookup".to_string())).await;
    let tool_started = Instant::now();
    assert_eq!(r.spoken(), ["Let me check."]);
    r.tts.answer_all().await;
    // While the tool runs: the caller speaks, VAD reports it, and the bot is cut off.
    r.frames(2).await;
    r.processed().await;
    eventually("barge-in", Duration::from_secs(2), || r.out.try_recv().is_ok_and(|o| o == CallOutput::Clear)).await;
    assert!(tool_started.elapsed() < Duration::from_millis(600), "all of it while the tool was running");
    assert_eq!(r.vad_events(), 3, "start, stop, start");
    assert_eq!(r.llm.requests.lock().unwrap().len(), 1, "the cut reply asks the LLM nothing more");
    // The next turn's request carries the tool's result after its call: a valid context.
    r.frames(2).await;
    r.processed().await;
    r.stt(final_text("Never mind.", true)).await;
    r.verdict(true);
    eventually("a second request", Duration::from_secs(3), || r.llm.requests.lock().unwrap().len() == 2).await;
    let request = r.llm.requests.lock().unwrap()[1].clone();
    let kinds: Vec<&str> = request
        .messages
        .iter()
        .map(|m| match m {
            ChatMessage::System(_) => "system",
            ChatMessage::User(_) => "user",
            ChatMessage::Assistant { tool_calls, .. } if !tool_calls.is_empty() => "tool_calls",
            ChatMessage::Assistant { .. } => "assistant",
            ChatMessage::Tool { .. } => "tool",
        })
        .collect();
    assert_eq!(kinds, ["system", "user", "tool_calls", "tool", "user"], "{:?}", request.messages);
    r.end().await;
}

#[tokio::test]
async fn speech_resuming_after_the_pause_discards_the_speculative_reply_and_the_whole_sentence_is_answered() {
    let frames = vec![vec![started()], vec![paused()], vec![resumed()], vec![stopped()]];
    let llm = ScriptedLlm::answering(vec![ScriptedLlm::words("Too early."), ScriptedLlm::words("A table for two.")]);
    let mut r = rig(frames, llm, TestPersona::default()).await;
    r.frames(2).await;
    r.processed().await;
    r.stt(final_text("I would like", true)).await;
    eventually("a speculative request", Duration::from_secs(2), || r.llm.requests.lock().unwrap().len() == 1).await;
    r.tts.answer_all().await;
    r.frames(2).await; // the caller goes on, then stops
    r.processed().await;
    r.stt(final_text("a table for two.", true)).await;
    r.verdict(true);
    eventually("the real request", Duration::from_secs(2), || r.llm.requests.lock().unwrap().len() == 2).await;
    assert_eq!(r.llm.user_texts(), ["I would like", "I would like a table for two."]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let out = r.outputs();
    assert!(!out.iter().any(|o| matches!(o, CallOutput::Audio(_))), "nothing of the held reply was played: {out:?}");
    r.tts.answer_all().await;
    eventually("the answer plays", Duration::from_secs(2), || {
        r.out.try_recv().is_ok_and(|o| matches!(o, CallOutput::Audio(_)))
    })
    .await;
    r.end().await;
}

#[tokio::test]
async fn a_persona_answering_the_turn_itself_discards_the_prepared_reply() {
    let frames = vec![vec![started()], vec![paused()], vec![stopped()]];
    let llm = ScriptedLlm::answering(vec![ScriptedLlm::words("Prepared.")]);
    let persona = TestPersona { turn_action: Some(Action::Say("The persona answers.".into())), ..Default::default() };
    let mut r = rig(frames, llm, persona).await;
    r.frames(2).await;
    r.processed().await;
    r.stt(final_text("Hello?", true)).await;
    eventually("a speculative request", Duration::from_secs(2), || r.llm.requests.lock().unwrap().len() == 1).await;
    r.frames(1).await;
    r.processed().await;
    r.verdict(true);
    eventually("the persona's words", Duration::from_secs(2), || {
        r.tts
            .commands
            .try_recv()
            .is_ok_and(|c| matches!(c, TtsCommand::Speak { text, .. } if text == "The persona answers."))
    })
    .await;
    assert_eq!(r.llm.requests.lock().unwrap().len(), 1, "no LLM for a turn the persona answered");
    r.end().await;
}

#[tokio::test]
async fn a_goodbye_is_heard_before_the_hang_up() {
    let frames = vec![vec![started()], vec![stopped()]];
    let persona = TestPersona { turn_action: Some(Action::HangUp(Some("Goodbye!".into()))), ..Default::default() };
    let mut r = rig(frames, ScriptedLlm::default(), persona).await;
    r.turn("That's all, thanks.").await;
    eventually("the goodbye", Duration::from_secs(2), || r.spoken() == ["Goodbye!"]).await;
    r.tts.events.send(crate::engine::testing::tts_audio(crate::services::tts::ReplyId(1))).await.unwrap();
    let flushed = crate::services::tts::TtsEvent::Flushed {
        reply: crate::services::tts::ReplyId(1),
        received_at: tokio::time::Instant::now(),
    };
    r.tts.events.send(flushed).await.unwrap();
    eventually("the goodbye's mark", Duration::from_secs(2), || {
        r.out.try_recv().is_ok_and(|o| o == CallOutput::Mark("u1".into()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!r.outputs().iter().any(|o| matches!(o, CallOutput::HangUp { .. })), "not before it was heard");
    r.input.send(CallInput::MarkPlayed("u1".into())).await.unwrap();
    eventually("the hang-up", Duration::from_secs(2), || {
        r.out.try_recv().is_ok_and(|o| o == CallOutput::HangUp { reason: "goodbye".into() })
    })
    .await;
    r.end().await;
}

#[tokio::test]
async fn an_answer_for_a_turn_the_caller_moved_on_from_is_not_spoken() {
    let frames = vec![vec![started()], vec![stopped()], vec![started()], vec![stopped()]];
    let persona = TestPersona {
        turn_delay: Duration::from_millis(300),
        turn_action: Some(Action::Say("Stale answer.".into())),
        ..Default::default()
    };
    let mut r = rig(frames, ScriptedLlm::default(), persona).await;
    r.turn("First thing.").await;
    eventually("the hook runs", Duration::from_secs(2), || r.hooks().len() == 1).await;
    r.frames(1).await; // the caller starts again while the persona decides
    r.processed().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(r.spoken().is_empty(), "the first answer is stale");
    r.frames(1).await;
    r.processed().await;
    r.stt(final_text("Second thing.", true)).await;
    r.verdict(true);
    eventually("the second answer", Duration::from_secs(2), || r.spoken() == ["Stale answer."]).await;
    assert_eq!(r.hooks(), ["turn:First thing.", "turn:Second thing."]);
    r.end().await;
}

#[tokio::test]
async fn a_keypress_reaches_the_persona_and_then_the_llm_and_the_call_end_reaches_the_persona() {
    let r = rig(vec![], ScriptedLlm::default(), TestPersona::default()).await;
    r.input.send(CallInput::Dtmf("5".into())).await.unwrap();
    eventually("the LLM hears the key", Duration::from_secs(2), || r.llm.requests.lock().unwrap().len() == 1).await;
    assert_eq!(r.llm.user_texts(), ["(pressed 5 on the keypad)"]);
    let calls = r.calls.clone();
    r.end().await;
    assert_eq!(*calls.lock().unwrap(), ["dtmf:5", "end"]);
}

#[tokio::test]
async fn a_turn_with_no_words_before_any_reply_gets_the_fixed_request_to_repeat() {
    let frames = vec![vec![started()], vec![stopped()]];
    let llm = ScriptedLlm::default();
    let mut r = rig(frames, llm.clone(), TestPersona::default()).await;
    r.turn("").await;
    let mut said = Vec::new();
    eventually("the request to repeat", Duration::from_secs(2), || {
        said.extend(r.spoken());
        said.join(" ") == EMPTY_TURN_REPLY
    })
    .await;
    assert!(llm.requests.lock().unwrap().is_empty(), "no LLM request: the line is fixed");
    r.end().await;
}
