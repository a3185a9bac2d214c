//! The conversation engine end to end: the simulator calls a real server whose sessions run the
//! real audio engine (RNNoise, Silero VAD, Smart Turn v3 through ONNX Runtime) against the
//! Deepgram and Groq fakes, with speech clips made by espeak-ng.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use switchboard::audio::models::ModelPaths;
use switchboard::audio::turn::{SmartTurnConfig, SmartTurnEngine, SmartTurnHandle, TurnParams};
use switchboard::audio::vad::{VadEngine, VadEngineConfig, VadParams};
use switchboard::call::events::{CallEvent, CallEventSink};
use switchboard::call::transcript::TurnLatency;
use switchboard::call::CallInfo;
use switchboard::config::Overrides;
use switchboard::engine::{Conversation, EngineDeps};
use switchboard::http::AppState;
use switchboard::metrics::Metrics;
use switchboard::persona::{
    Action, BuiltinPersona, CallSummary, HookFuture, Persona, PersonaProvider, PersonaSetup, ToolOutcome, ToolSpec,
};
use switchboard::services::llm::openai_compat::{OpenAiCompat, OpenAiCompatConfig};
use switchboard::services::stt::deepgram::{DeepgramStt, DeepgramSttConfig};
use switchboard::services::tts::deepgram::{DeepgramTts, DeepgramTtsConfig};
use switchboard::sim::{simulate_call, CallPlan, CallReport, CallerAudio, DtmfEvent, Segmentation};

use crate::fakes::deepgram_stt::{self, DropFault, DropMode, FakeDeepgramStt};
use crate::fakes::deepgram_tts::{self, FakeDeepgramTts};
use crate::fakes::groq::{self, FakeGroq, Reply};
use crate::harness::{TestServer, ACCOUNT_SID, AUTH_TOKEN};
use crate::support::twilio_rest::FakeTwilio;

pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conversation").join(name)
}

/// One Silero and one Smart Turn session for the whole test binary, as in the server.
/// The conversation engine on the shared models, talking to these provider fakes.
pub(crate) fn engine_with_fakes(
    stt: &FakeDeepgramStt,
    tts: &FakeDeepgramTts,
    groq: &FakeGroq,
    personas: Arc<dyn PersonaProvider>,
    metrics: Arc<Metrics>,
    recordings: &std::path::Path,
) -> Conversation {
    let (vad, smart_turn) = engines();
    Conversation::new(EngineDeps {
        vad,
        smart_turn,
        stt: Arc::new(DeepgramStt::new(DeepgramSttConfig::new(stt.base_url(), deepgram_stt::API_KEY))),
        llm: Arc::new(OpenAiCompat::new(OpenAiCompatConfig::new(groq.base_url(), groq::API_KEY)).unwrap()),
        tts: Arc::new(DeepgramTts::new(DeepgramTtsConfig::new(tts.base_url(), deepgram_tts::API_KEY)).unwrap()),
        personas,
        metrics,
        recordings_dir: recordings.to_path_buf(),
    })
}

pub(crate) fn engines() -> (Arc<VadEngine>, SmartTurnHandle) {
    static ENGINES: OnceLock<(Arc<VadEngine>, SmartTurnHandle)> = OnceLock::new();
    ENGINES
        .get_or_init(|| {
            let paths = ModelPaths::in_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
            paths.check().expect("models present: run `bash models/fetch.sh`");
            let vad = VadEngine::start(&paths, VadEngineConfig::default()).expect("VAD engine");
            let turn = SmartTurnEngine::start(&paths, SmartTurnConfig::default()).expect("Smart Turn engine");
            let handle = turn.handle();
            // The worker lives as long as a handle does.
            std::mem::forget(turn);
            (Arc::new(vad), handle)
        })
        .clone()
}

/// A persona for tests: the built-in one with a shorter idle timeout, optional tools, and a
/// record of the hooks called.
#[derive(Clone, Default)]
pub(crate) struct TestPersona {
    idle: Option<Duration>,
    /// The VAD stop window, when not the default.
    vad_stop_secs: Option<f64>,
    speculative_replies: Option<bool>,
    /// The reference bots' turn-taking values (VAD stop 0.5 s, Smart Turn pre-speech 0 ms).
    reference_turns: bool,
    tools: Vec<ToolSpec>,
    tool_result: String,
    /// What the tool asks for after its result (default: nothing).
    tool_then: Option<Action>,
    /// How long each tool call takes (a plugin doing an HTTP lookup).
    tool_delay: Option<Duration>,
    /// When the last tool call started and ended.
    tool_window: Arc<Mutex<Option<ToolWindow>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

/// When a tool call started, and ended once it has.
type ToolWindow = (Instant, Option<Instant>);

struct TestPersonaCall {
    cfg: TestPersona,
    inner: BuiltinPersona,
}

impl PersonaProvider for TestPersona {
    fn persona_for(&self, _call: &CallInfo) -> Box<dyn Persona> {
        Box::new(TestPersonaCall { cfg: self.clone(), inner: BuiltinPersona::new() })
    }
}

impl Persona for TestPersonaCall {
    fn setup<'a>(&'a mut self, call: &'a CallInfo) -> HookFuture<'a, PersonaSetup> {
        Box::pin(async move {
            let mut setup = self.inner.setup(call).await;
            if let Some(idle) = self.cfg.idle {
                setup.idle.timeout = idle;
            }
            if self.cfg.reference_turns {
                setup.turn_taking.vad = VadParams::reference_seed();
                setup.turn_taking.turn = TurnParams::reference_seed();
            }
            if let Some(stop) = self.cfg.vad_stop_secs {
                setup.turn_taking.vad.stop_secs = stop;
            }
            if let Some(on) = self.cfg.speculative_replies {
                setup.turn_taking.speculative_replies = on;
            }
            setup.tools = self.cfg.tools.clone();
            setup
        })
    }
    fn on_user_turn<'a>(&'a mut self, transcript: &'a str) -> HookFuture<'a, Action> {
        self.cfg.calls.lock().unwrap().push(format!("turn:{transcript}"));
        self.inner.on_user_turn(transcript)
    }
    fn on_idle(&mut self, attempt: u32) -> HookFuture<'_, Action> {
        self.cfg.calls.lock().unwrap().push(format!("idle:{attempt}"));
        self.inner.on_idle(attempt)
    }
    fn on_tool_call<'a>(
        &'a mut self,
        name: &'a str,
        arguments: &'a str,
    ) -> HookFuture<'a, Result<ToolOutcome, String>> {
        self.cfg.calls.lock().unwrap().push(format!("tool:{name}:{arguments}"));
        let content = self.cfg.tool_result.clone();
        let then = self.cfg.tool_then.clone().unwrap_or(Action::None);
        let (delay, window) = (self.cfg.tool_delay, self.cfg.tool_window.clone());
        Box::pin(async move {
            *window.lock().unwrap() = Some((Instant::now(), None));
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            if let Some((_, end)) = window.lock().unwrap().as_mut() {
                *end = Some(Instant::now());
            }
            Ok(ToolOutcome { content, then })
        })
    }
    fn on_dtmf<'a>(&'a mut self, digits: &'a str) -> HookFuture<'a, Action> {
        self.cfg.calls.lock().unwrap().push(format!("dtmf:{digits}"));
        self.inner.on_dtmf(digits)
    }
    fn on_call_end<'a>(&'a mut self, summary: &'a CallSummary) -> HookFuture<'a, ()> {
        self.cfg.calls.lock().unwrap().push(format!("end:{}", summary.outcome.label()));
        self.inner.on_call_end(summary)
    }
}

/// A server with the conversation engine and every provider faked.
pub(crate) struct Rig {
    pub(crate) server: TestServer,
    pub(crate) stt: FakeDeepgramStt,
    pub(crate) tts: FakeDeepgramTts,
    groq: FakeGroq,
    rest: FakeTwilio,
    pub(crate) recordings: tempfile::TempDir,
    pub(crate) metrics: Arc<Metrics>,
    events: Arc<EventLog>,
}

/// Every call event the server reported, in order, and when each arrived.
#[derive(Default)]
struct EventLog(Mutex<Vec<(String, CallEvent)>>, Mutex<Vec<Instant>>);

impl CallEventSink for EventLog {
    fn record(&self, call_sid: &str, event: &CallEvent) {
        self.0.lock().unwrap().push((call_sid.to_string(), event.clone()));
        self.1.lock().unwrap().push(Instant::now());
    }
}

impl EventLog {
    fn kinds(&self) -> Vec<String> {
        let log = self.0.lock().unwrap();
        log.iter().map(|(_, e)| serde_json::to_value(e).unwrap()["type"].as_str().unwrap().to_string()).collect()
    }
}

impl Rig {
    async fn start(persona: TestPersona) -> Rig {
        Self::start_with(persona, &[], |s| s).await
    }

    /// A rig whose server also gets `extra_env` and whatever `customise` does to its state.
    pub(crate) async fn start_with(
        persona: TestPersona,
        extra_env: &[(&str, &str)],
        customise: impl FnOnce(AppState) -> AppState,
    ) -> Rig {
        let stt = FakeDeepgramStt::start().await;
        let tts = FakeDeepgramTts::start().await;
        let groq = FakeGroq::start().await;
        let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
        let recordings = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let conversation = engine_with_fakes(&stt, &tts, &groq, Arc::new(persona), metrics.clone(), recordings.path());
        let env = [
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_string()),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.to_string()),
            ("TWILIO_API_BASE_URL", rest.base_url().to_string()),
        ];
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend_from_slice(extra_env);
        let server = TestServer::start_customised(
            &env,
            Overrides::default(),
            Arc::new(conversation),
            metrics.clone(),
            customise,
        )
        .await;
        let events = Arc::new(EventLog::default());
        server.state.events.add_sink(events.clone());
        Rig { server, stt, tts, groq, rest, recordings, metrics, events }
    }

    pub(crate) fn plan(&self, clip: &str, hangup_after: Duration) -> CallPlan {
        let audio = CallerAudio::from_wav_file(&fixture(clip), &Segmentation::default()).expect("clip");
        let mut plan = CallPlan::new(format!("{}/", self.server.base).parse().unwrap(), Arc::new(audio));
        plan.auth_token = Some(AUTH_TOKEN.into());
        plan.account_sid = ACCOUNT_SID.into();
        plan.hangup_after = hangup_after;
        plan.record = Some(self.recordings.path().join("heard.wav"));
        plan
    }

    /// Runs the call with the simulator, letting the fake REST end it when the bot hangs up.
    pub(crate) async fn call(&self, mut plan: CallPlan) -> CallReport {
        self.rest.seed_call(&plan.call_sid, &plan.from, &plan.to, "inbound", "in-progress");
        plan.end_signal = Some(self.rest.end_signal(&plan.call_sid));
        let report = simulate_call(&plan).await;
        // Let the session finish its files.
        for _ in 0..100 {
            if self.server.state.drain.active() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report
    }

    /// User and assistant messages of the n-th LLM request.
    fn messages(&self, n: usize) -> Vec<(String, String)> {
        let reqs = self.groq.requests();
        reqs[n].body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let content = m["content"].as_str().unwrap_or_default().to_string();
                (m["role"].as_str().unwrap_or_default().to_string(), content)
            })
            .collect()
    }

    pub(crate) fn transcript_lines(&self) -> Vec<serde_json::Value> {
        let path = std::fs::read_dir(self.recordings.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .expect("a transcript file");
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn spoken_texts(&self) -> Vec<String> {
        self.tts.connections().iter().flat_map(|c| c.speaks.clone()).collect()
    }
}

#[tokio::test]
async fn greeting_then_three_turns_each_get_a_spoken_answer() {
    let rig = Rig::start(TestPersona::default()).await;
    rig.stt.script(&["What time is it?", "Tell me a joke.", "Thank you very much."]);
    let report = rig.call(rig.plan("turns_8k.wav", Duration::from_secs(21))).await;
    assert!(report.ok(), "{report:?}");
    assert!(report.first_audio_ms.is_some(), "the greeting was heard");
    let answered = report.turns.iter().filter(|t| t.latency_ms.is_some()).count();
    assert_eq!(answered, 3, "three caller turns, three spoken answers: {:?}", report.turns);
    assert_eq!(report.underruns, 0);
    // The LLM saw: the greeting instruction, then each user turn in order.
    let reqs = rig.groq.requests();
    assert_eq!(reqs.len(), 4, "greeting + 3 turns");
    assert_eq!(reqs[0].body["model"], "llama-3.3-70b-versatile");
    let last = rig.messages(3);
    let users: Vec<&str> = last.iter().filter(|(r, _)| r == "user").map(|(_, c)| c.as_str()).collect();
    assert_eq!(users, ["What time is it?", "Tell me a joke.", "Thank you very much."]);
    assert!(last[0].1.contains("Miss Harper"), "the built-in inbound prompt");
    let assistants = last.iter().filter(|(r, _)| r == "assistant").count();
    assert_eq!(assistants, 3, "greeting and two answers before the last request");
    // Every answer was spoken through TTS.
    let spoken = rig.spoken_texts().join(" ");
    for t in ["What time is it?", "Tell me a joke.", "Thank you very much."] {
        assert!(spoken.contains(&format!("You said: {t}")), "{spoken}");
    }
    // The transcript on disk matches.
    let lines = rig.transcript_lines();
    let roles: Vec<&str> = lines.iter().map(|l| l["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["assistant", "user", "assistant", "user", "assistant", "user", "assistant"]);
    assert_eq!(lines[1]["text"], "What time is it?");
    for key in ["stt_final_ms", "endpoint_ms", "llm_first_token_ms", "tts_first_byte_ms", "voice_to_voice_ms"] {
        assert!(lines[2]["latency"][key].as_f64().is_some(), "{key}: {:?}", lines[2]);
    }
    // The server's recording lines up with what the simulated caller sent and heard.
    assert_recording_aligned(&rig);
    // And /metrics has the per-turn latencies.
    let metrics = reqwest::get(format!("{}/metrics", rig.server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchboard_voice_to_voice_seconds_count 3"), "{metrics}");
    assert!(metrics.contains("switchboard_llm_first_token_seconds_count 4"), "{metrics}");
    // Each answer was prepared while the caller's pause was still being confirmed.
    assert!(metrics.contains("switchboard_speculative_replies_total{result=\"used\"} 3"), "{metrics}");
    // The call's events came in order: start, persona, files, speech and lines, end.
    let kinds = rig.events.kinds();
    assert_eq!(kinds[..3], ["started", "persona", "files"], "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("ended"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "line").count(), 7, "{kinds:?}");
    assert!(kinds.iter().filter(|k| *k == "vad").count() >= 6, "{kinds:?}");
    let log = rig.events.0.lock().unwrap();
    assert!(log.iter().all(|(sid, _)| *sid == log[0].0), "one call");
    assert!(matches!(&log[1].1, CallEvent::Persona { name, version: None } if name == "built-in"));
}

#[tokio::test]
async fn a_hesitation_discards_the_speculative_reply_and_answers_the_whole_sentence() {
    // A stop window longer than the clip's 350 ms hesitation: the pause starts (a reply is
    // prepared) and ends (it is thrown away) without a VAD stop, whatever Smart Turn thinks.
    let persona = TestPersona { vad_stop_secs: Some(0.8), ..Default::default() };
    let rig = Rig::start(persona).await;
    let report = rig.call(rig.plan("pause_8k.wav", Duration::from_secs(12))).await;
    assert!(report.ok(), "{report:?}");
    let lines = rig.transcript_lines();
    let said = |role: &str| -> Vec<String> {
        lines.iter().filter(|l| l["role"] == role).map(|l| l["text"].as_str().unwrap().to_string()).collect()
    };
    let users = said("user");
    assert_eq!(users.len(), 1, "one turn despite the hesitation: {lines:?}");
    let words = &users[0];
    assert!(words.starts_with("utterance 1 utterance 2"), "the words after the hesitation belong to the turn: {words}");
    // A reply to the words before the hesitation was prepared, then thrown away unheard.
    let requests = rig.groq.requests();
    let speculative: Vec<String> = (0..requests.len())
        .filter_map(|n| rig.messages(n).iter().rev().find(|(r, _)| r == "user").map(|(_, c)| c.clone()))
        .filter(|u| u != words)
        .collect();
    assert!(!speculative.is_empty(), "a speculative request for part of the turn");
    assert!(speculative.iter().all(|u| words.starts_with(u.as_str())), "{speculative:?} vs {words}");
    let assistants = said("assistant");
    assert_eq!(assistants.len(), 2, "greeting and one answer: {assistants:?}");
    assert_eq!(assistants[1], format!("You said: {words}"));
    // The context never saw the partial words as a turn of their own.
    let last = rig.messages(requests.len() - 1);
    assert_eq!(last.iter().filter(|(r, _)| r == "user").count(), 1, "{last:?}");
    assert_eq!(report.turns.iter().filter(|t| t.latency_ms.is_some()).count(), 1, "{:?}", report.turns);
    let metrics = reqwest::get(format!("{}/metrics", rig.server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchboard_speculative_replies_total{result=\"discarded\"}"), "{metrics}");
}

#[tokio::test]
async fn a_peer_that_stops_streaming_mid_sentence_still_gets_an_answer() {
    let rig = Rig::start(TestPersona::default()).await;
    rig.stt.script(&["What time is it?"]);
    // The first question of turns_8k, cut where its sound ends, and no media after it: VAD
    // still says "speaking" when the frames stop, and only frames move VAD.
    let seg = Segmentation::default();
    let full = CallerAudio::from_wav_file(&fixture("turns_8k.wav"), &seg).expect("clip");
    let end_ms = full.utterances()[0].end_ms;
    let pcm: Vec<i16> = (0..end_ms / 20).flat_map(|k| full.pcm_frame(k).to_vec()).collect();
    let mut plan = rig.plan("turns_8k.wav", Duration::from_secs(9));
    plan.caller = Arc::new(CallerAudio::from_pcm(&pcm, 8000, &seg).expect("cut clip"));
    plan.media_after_audio = false;
    let report = rig.call(plan).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.media_frames_sent, end_ms / 20, "the media stopped with the speech");
    // One second without audio stood for the missing silence: the turn ended and was answered.
    let lines = rig.transcript_lines();
    let roles: Vec<&str> = lines.iter().map(|l| l["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["assistant", "user", "assistant"], "{lines:?}");
    assert_eq!(lines[1]["text"], "What time is it?");
    assert_eq!(lines[2]["text"], "You said: What time is it?");
    let latency = report.turns.first().and_then(|t| t.latency_ms).expect("the answer was heard");
    assert!(latency >= 1000.0, "answered {latency} ms after the speech: before the audio idle stop?");
}

/// Runs `n` calls of the first turns_8k question, `at_once` at a time, each hung up by the caller
/// 5 s in (during the answer), and waits until the server has no call left.
async fn run_short_calls(rig: &Rig, n: usize, at_once: usize) {
    let mut started = 0;
    while started < n {
        let wave: Vec<_> = (started..n.min(started + at_once))
            .map(|_| {
                let mut plan = rig.plan("turns_8k.wav", Duration::from_millis(5000));
                plan.record = None;
                rig.rest.seed_call(&plan.call_sid, &plan.from, &plan.to, "inbound", "in-progress");
                plan.end_signal = Some(rig.rest.end_signal(&plan.call_sid));
                async move { simulate_call(&plan).await }
            })
            .collect();
        started += wave.len();
        for report in futures_util::future::join_all(wave).await {
            assert!(report.ok(), "{report:?}");
        }
    }
    wait_for("every call to end", Duration::from_secs(10), || rig.server.state.drain.active() == 0).await;
}

async fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    assert!(crate::support::eventually(limit, done).await, "timed out waiting for {what}");
}

/// A call's end releases everything it held. After 100 calls (hung up mid-answer, with STT, LLM,
/// TTS, VAD and Smart Turn all in use) the server has no call left; a second 100 calls then leave
/// no more tasks, threads or live heap than the first. (The first batch is the baseline because
/// HTTP connection pools on both sides keep a task per idle connection for a while.)
/// Process-wide counts, so other tests must not run beside it: `scripts/test.sh` runs it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "counts the whole process: run alone (scripts/test.sh does)"]
async fn a_hundred_calls_leave_no_task_thread_or_memory_behind() {
    let rig = Rig::start(TestPersona::default()).await;
    rig.stt.configure(|s| {
        s.fallback = "What time is it?".into();
        s.keep_audio = false; // 72 kB per call the fake would keep, not the server
    });
    let runtime = tokio::runtime::Handle::current().metrics();
    let settled = || async {
        // What the fakes and the event log kept is the test's, not the server's: dropped here
        // (their buffers keep their capacity, so the next batch reuses it).
        rig.groq.forget();
        rig.tts.forget();
        rig.stt.forget();
        rig.rest.forget();
        rig.events.0.lock().unwrap().clear();
        // Blocking-pool threads linger 10 s after their last job; tasks of ended calls go at once.
        tokio::time::sleep(Duration::from_secs(11)).await;
        (runtime.num_alive_tasks(), proc_rss_kb("Threads:"), crate::support::heap::live_bytes() / 1024)
    };
    run_short_calls(&rig, 100, 50).await;
    let answered = rig.groq.requests().len();
    assert!(answered >= 200, "every call was greeted and answered once at least: {answered} LLM requests");
    let metrics = reqwest::get(format!("{}/metrics", rig.server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchboard_calls_active 0"), "{metrics}");
    let (tasks, threads, heap) = settled().await;

    run_short_calls(&rig, 100, 50).await;
    let (tasks_2, threads_2, heap_2) = settled().await;
    eprintln!(
        "after 100 calls: {tasks} tasks, {threads} threads, {heap} kB heap; after 200: {tasks_2}, {threads_2}, {heap_2} kB"
    );
    // Idle pooled HTTP connections (a task each, up to one per concurrent call on either side)
    // make the count wander by a few dozen; a leak of even one task per call adds 100.
    assert!(tasks_2 <= tasks + 50, "tasks: {tasks} after 100 calls, {tasks_2} after 200");
    assert!(threads_2 <= threads + 2, "threads: {threads} after 100 calls, {threads_2} after 200");
    // A leaked call would keep ~1.6 MB; 20 kB per call is the bar.
    assert!(heap_2 - heap < 100 * 20, "the heap grew from {heap} to {heap_2} kB over the second 100 calls");
}

#[tokio::test]
async fn barge_in_clears_and_keeps_only_what_was_heard() {
    let rig = Rig::start(TestPersona::default()).await;
    // A long greeting: six sentences, ~60 ms of audio per character.
    let long = "Hello and welcome to the school line. I am Miss Harper and I teach the second grade. \
                Today we will talk about the planets of the solar system. The sun is a star at the centre. \
                Mercury is the closest planet to the sun. Venus is the hottest planet of them all.";
    rig.groq.script([Reply::Text(long.into())]);
    rig.stt.script(&["Wait, stop please."]);
    let report = rig.call(rig.plan("barge_8k.wav", Duration::from_secs(10))).await;
    assert!(report.ok(), "{report:?}");
    assert!(report.clears >= 1, "the bot was told to stop: {report:?}");
    let reqs = rig.groq.requests();
    assert!(reqs.len() >= 2, "an answer to the interruption");
    let msgs = rig.messages(1);
    let assistant = msgs.iter().find(|(r, _)| r == "assistant").map(|(_, c)| c.clone()).unwrap_or_default();
    assert!(!assistant.contains("Venus"), "the unheard end is not in the context: {assistant:?}");
    assert!(
        assistant.starts_with("Hello and welcome"),
        "the sentences heard before the barge-in are kept: {assistant:?}"
    );
    assert!(long.starts_with(assistant.trim()), "what was kept is what was heard: {assistant:?}");
    assert!(msgs.iter().any(|(r, c)| r == "user" && c == "Wait, stop please."));
    let lines = rig.transcript_lines();
    assert!(lines.iter().any(|l| l["role"] == "assistant" && l["interrupted"] == true), "{lines:?}");
}

#[tokio::test]
async fn idle_escalation_says_goodbye_and_hangs_up_via_rest() {
    let persona = TestPersona { idle: Some(Duration::from_millis(700)), ..Default::default() };
    let calls = persona.calls.clone();
    let rig = Rig::start(persona).await;
    let audio_secs = Duration::from_secs(30);
    let report = rig.call(rig.plan("turns_8k.wav", audio_secs).clone_silent()).await;
    assert!(report.ok(), "{report:?}");
    let idle: Vec<String> = calls.lock().unwrap().iter().filter(|c| c.starts_with("idle:")).cloned().collect();
    assert_eq!(idle, ["idle:1", "idle:2", "idle:3", "idle:4"], "three prompts, then the goodbye");
    let carry_on = rig.messages(rig.groq.requests().len() - 1).iter().filter(|(_, c)| c.contains("Carry on")).count();
    assert_eq!(carry_on, 3);
    assert!(rig.spoken_texts().iter().any(|t| t.contains("Goodbye")), "{:?}", rig.spoken_texts());
    let hangup = rig.rest.requests().into_iter().find(|r| r.field("Status") == Some("completed"));
    assert!(hangup.is_some(), "hung up via REST: {:?}", rig.rest.requests());
    assert!(report.duration_ms < 25_000.0, "the bot ended the call, not the caller: {}", report.duration_ms);
}

/// Stereo samples of a WAV as (left, right).
fn channels(path: &std::path::Path) -> (Vec<i16>, Vec<i16>) {
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!((r.spec().channels, r.spec().sample_rate, r.spec().bits_per_sample), (2, 8000, 16));
    let s: Vec<i16> = r.samples::<i16>().map(|x| x.unwrap()).collect();
    (s.iter().step_by(2).copied().collect(), s.iter().skip(1).step_by(2).copied().collect())
}

/// Frame energies (20 ms).
fn energy(x: &[i16]) -> Vec<f64> {
    x.chunks(160).map(|c| c.iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).collect()
}

/// The shift of `b` against `a` (in 20 ms frames) that best matches their energy envelopes.
fn best_lag(a: &[f64], b: &[f64], max: i64) -> i64 {
    let score = |lag: i64| -> f64 {
        let mut sum = 0.0;
        for (i, &x) in a.iter().enumerate() {
            let j = i as i64 + lag;
            if j >= 0 && (j as usize) < b.len() {
                sum += x.sqrt() * b[j as usize].sqrt();
            }
        }
        sum
    };
    (-max..=max).max_by(|&x, &y| score(x).total_cmp(&score(y))).unwrap()
}

fn assert_recording_aligned(rig: &Rig) {
    let dir = rig.recordings.path();
    let server = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wav") && p.file_name().unwrap() != "heard.wav")
        .expect("the server's recording");
    assert!(server.file_name().unwrap().to_string_lossy().starts_with("CA"), "named by call sid: {server:?}");
    let (srv_caller, srv_bot) = channels(&server);
    let (sim_caller, sim_bot) = channels(&dir.join("heard.wav"));
    let (ec, eb) = (energy(&srv_caller), energy(&srv_bot));
    assert!(ec.iter().any(|&e| e > 1e7) && eb.iter().any(|&e| e > 1e7), "both parties are in the recording");
    let caller_lag = best_lag(&energy(&sim_caller), &ec, 25);
    let bot_lag = best_lag(&energy(&sim_bot), &eb, 25);
    assert!(caller_lag.abs() <= 2, "caller track aligned within 40 ms (lag {caller_lag} frames)");
    assert!(bot_lag.abs() <= 3, "bot track aligned within 60 ms (lag {bot_lag} frames)");
    assert!((caller_lag - bot_lag).abs() <= 3, "the two tracks agree with each other");
}

trait SilentPlan {
    fn clone_silent(self) -> CallPlan;
}

impl SilentPlan for CallPlan {
    /// The same call with a caller who never speaks.
    fn clone_silent(mut self) -> CallPlan {
        let silence = vec![0i16; 8000];
        self.caller = Arc::new(CallerAudio::from_pcm(&silence, 8000, &Segmentation::default()).unwrap());
        self
    }
}

#[tokio::test]
async fn a_tool_call_round_trips_through_the_persona() {
    let persona = TestPersona {
        tools: vec![ToolSpec {
            name: "get_time".into(),
            description: "The current time".into(),
            parameters: serde_json::json!({"type": "object", "properties": {"zone": {"type": "string"}}}),
        }],
        tool_result: r#"{"time":"12:00"}"#.into(),
        ..Default::default()
    };
    let calls = persona.calls.clone();
    let rig = Rig::start(persona).await;
    rig.groq.script([
        Reply::Text("Hello!".into()),
        Reply::ToolCalls(vec![("get_time".into(), r#"{"zone":"UTC"}"#.into())]),
        Reply::Text("It is noon.".into()),
    ]);
    rig.stt.script(&["What time is it?"]);
    let report = rig.call(rig.plan("turns_8k.wav", Duration::from_secs(9))).await;
    assert!(report.ok(), "{report:?}");
    assert!(
        calls.lock().unwrap().iter().any(|c| c == r#"tool:get_time:{"zone":"UTC"}"#),
        "{:?}",
        calls.lock().unwrap()
    );
    let reqs = rig.groq.requests();
    assert!(reqs[1].body["tools"][0]["function"]["name"] == "get_time", "tools offered: {}", reqs[1].body);
    let tool_msg = reqs[2].body["messages"].as_array().unwrap().iter().find(|m| m["role"] == "tool").cloned();
    assert_eq!(tool_msg.expect("tool result sent back")["content"], r#"{"time":"12:00"}"#);
    assert!(rig.spoken_texts().iter().any(|t| t.contains("It is noon.")));
}

#[tokio::test]
async fn a_tool_that_ends_the_call_says_goodbye_and_hangs_up_once_heard() {
    let persona = TestPersona {
        tools: vec![ToolSpec {
            name: "end_call".into(),
            description: "End the call".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        }],
        tool_result: r#"{"ok":true}"#.into(),
        tool_then: Some(Action::HangUp(Some("Goodbye now.".into()))),
        ..Default::default()
    };
    let rig = Rig::start(persona).await;
    rig.groq.script([Reply::Text("Hi there.".into()), Reply::ToolCalls(vec![("end_call".into(), "{}".into())])]);
    rig.stt.script(&["Please hang up."]);
    let report = rig.call(rig.plan("turns_8k.wav", Duration::from_secs(15))).await;
    assert!(report.ok(), "{report:?}");
    assert!(rig.spoken_texts().iter().any(|t| t.contains("Goodbye now.")), "the goodbye was spoken");
    let goodbye_heard = report.marks.iter().filter_map(|m| m.echoed_ms).fold(0.0, f64::max);
    let hangup = rig.rest.requests().into_iter().find(|r| r.field("Status") == Some("completed"));
    assert!(hangup.is_some(), "hung up via REST after the goodbye");
    assert!(goodbye_heard > 0.0, "the goodbye's mark came back (it was heard) before the call ended");
    assert!(report.duration_ms < 14_000.0, "the bot ended the call, not the caller: {}", report.duration_ms);
}

#[tokio::test]
async fn a_dtmf_digit_reaches_the_persona_and_the_context() {
    let persona = TestPersona::default();
    let calls = persona.calls.clone();
    let rig = Rig::start(persona).await;
    let mut plan = rig.plan("turns_8k.wav", Duration::from_secs(6)).clone_silent();
    plan.dtmf = vec!["2:5".parse::<DtmfEvent>().unwrap()];
    let report = rig.call(plan).await;
    assert!(report.ok(), "{report:?}");
    assert!(calls.lock().unwrap().iter().any(|c| c == "dtmf:5"));
    let reqs = rig.groq.requests();
    assert!(reqs.len() >= 2);
    let msgs = rig.messages(1);
    assert!(msgs.iter().any(|(r, c)| r == "user" && c.contains("pressed 5")), "{msgs:?}");
}

#[tokio::test]
async fn stt_drop_and_llm_500_are_survived() {
    let rig = Rig::start(TestPersona::default()).await;
    rig.stt.script(&["What time is it?", "Tell me a joke.", "Thank you very much."]);
    // The greeting's LLM request fails with a 500; the STT socket drops after 4 s of audio.
    rig.groq.push_fault(groq::Fault::server_error());
    rig.stt.arm_drop(DropFault { after_audio: Duration::from_secs(4), mode: DropMode::Abrupt });
    let report = rig.call(rig.plan("turns_8k.wav", Duration::from_secs(21))).await;
    assert!(report.ok(), "{report:?}");
    let spoken = rig.spoken_texts();
    assert!(spoken[0].starts_with("Sorry, I had a problem"), "an apology instead of silence: {spoken:?}");
    assert!(rig.stt.attempts().len() >= 2, "STT reconnected after the drop");
    let all = spoken.join(" ");
    assert!(all.contains("You said: Thank you very much."), "later turns still answered: {all}");
    let metrics = reqwest::get(format!("{}/metrics", rig.server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("provider=\"llm\",kind=\"server\""), "{metrics}");
}

#[tokio::test]
async fn a_hanging_tts_is_retried_with_one_shot_synthesis() {
    let rig = Rig::start(TestPersona::default()).await;
    rig.tts.configure(|s| s.hang = true);
    let report = rig.call(rig.plan("turns_8k.wav", Duration::from_secs(9)).clone_silent()).await;
    assert!(report.ok(), "{report:?}");
    assert!(!rig.tts.rest_requests().is_empty(), "the greeting went through the REST fallback");
    assert!(report.first_audio_ms.is_some(), "and was heard: {report:?}");
}

/// Voice-to-voice latency over 21 turns with zero-delay fakes, as the simulator measures it (end
/// of the caller's utterance in the clip → first bot audio). A measurement, not a test:
/// `cargo test --test integration measure_voice_to_voice -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_voice_to_voice() {
    // SPECULATIVE=0 turns speculative replies off; STT_DELAY_MS / LLM_DELAY_MS / TTS_DELAY_MS give
    // the fakes a final-transcript / first-token / first-byte delay like real providers';
    // REFERENCE_TURNS=1 uses the reference bots' turn-taking values (VAD stop 0.5 s).
    let env_ms = |k: &str| Duration::from_millis(std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(0));
    let speculative = std::env::var("SPECULATIVE").map_or(true, |v| v != "0");
    let reference_turns = std::env::var("REFERENCE_TURNS").is_ok_and(|v| v == "1");
    let persona = TestPersona { speculative_replies: Some(speculative), reference_turns, ..Default::default() };
    let rig = Rig::start(persona).await;
    rig.stt.configure(|s| {
        s.fallback = "Hello there.".into();
        s.final_delay = env_ms("STT_DELAY_MS");
    });
    rig.groq.configure(|s| s.first_token_delay = env_ms("LLM_DELAY_MS"));
    rig.tts.configure(|s| s.first_byte_delay = env_ms("TTS_DELAY_MS"));
    eprintln!("speculative replies: {speculative}, reference turn-taking values: {reference_turns}");
    let mut latencies = Vec::new();
    for _ in 0..7 {
        let mut plan = rig.plan("turns_8k.wav", Duration::from_secs(21));
        plan.record = None;
        let report = rig.call(plan).await;
        latencies.extend(report.turns.iter().filter_map(|t| t.latency_ms));
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    eprintln!("turns: {} p50: {:.1} ms p95: {:.1} ms max: {:.1} ms", latencies.len(), pct(0.5), pct(0.95), pct(1.0));
    // Turns Smart Turn scored incomplete wait for the silence fallback (1.5 s).
    eprintln!("answered after more than 1 s: {}", latencies.iter().filter(|l| **l > 1000.0).count());
    // The server's own view of each answered turn, from speech end as the VAD placed it.
    let parts: Vec<TurnLatency> = (rig.events.0.lock().unwrap().iter())
        .filter_map(|(_, e)| match e {
            CallEvent::Line(l) => l.latency.clone().filter(|l| l.voice_to_voice_ms.is_some()),
            _ => None,
        })
        .collect();
    let p50 = |f: fn(&TurnLatency) -> Option<f64>| {
        let mut v: Vec<f64> = parts.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    eprintln!(
        "server p50 (ms from VAD speech end): stt final {:.1}, turn end {:.1}, llm first token {:.1}, \
         tts first byte {:.1}, voice-to-voice {:.1}",
        p50(|l| l.stt_final_ms),
        p50(|l| l.endpoint_ms),
        p50(|l| l.llm_first_token_ms),
        p50(|l| l.tts_first_byte_ms),
        p50(|l| l.voice_to_voice_ms)
    );
    let metrics = reqwest::get(format!("{}/metrics", rig.server.base)).await.unwrap().text().await.unwrap();
    for line in metrics.lines().filter(|l| l.contains("_seconds_sum") || l.contains("_seconds_count")) {
        eprintln!("{line}");
    }
}

fn proc_cpu_secs() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

fn proc_rss_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Load: `LOAD_CALLS` (default 50) concurrent conversations of 21 s, driven by the real
/// `switchboard simulate` in a child process against this process's server and fakes. Prints
/// the server side's CPU per call-minute and RSS per call, and the simulator's view (underruns,
/// turn latency). A measurement, not a test:
/// `LOAD_CALLS=100 cargo test --test integration measure_load -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_load() {
    let calls: usize = std::env::var("LOAD_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let rig = Rig::start(TestPersona::default()).await;
    rig.stt.configure(|s| s.fallback = "Tell me something.".into());
    // Warm up: models loaded, one call through.
    let mut warm = rig.plan("turns_8k.wav", Duration::from_secs(4));
    warm.record = None;
    rig.call(warm).await;
    let rss0 = proc_rss_kb("VmRSS:");
    let cpu0 = proc_cpu_secs();
    let peak_rss = Arc::new(std::sync::atomic::AtomicU64::new(rss0));
    let sampler = {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(proc_rss_kb("VmRSS:"), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["simulate", "--server", &rig.server.base, "--caller"])
        .arg(fixture("turns_8k.wav"))
        .args(["--calls", &calls.to_string(), "--ramp", "5", "--hangup-after", "21"])
        .env("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
        .env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .output()
        .await
        .expect("simulate runs");
    sampler.abort();
    let cpu = proc_cpu_secs() - cpu0;
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("simulate summary");
    let agg = &summary["aggregate"];
    let call_minutes = calls as f64 * 21.0 / 60.0;
    let peak = peak_rss.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "calls {calls}: server+fakes CPU {cpu:.1} s = {:.3} CPU-s per call-minute; RSS {} MB -> peak {} MB = {:.2} MB per call",
        cpu / call_minutes,
        rss0 / 1024,
        peak / 1024,
        (peak.saturating_sub(rss0)) as f64 / 1024.0 / calls as f64
    );
    eprintln!(
        "simulator: completed {} failed {} underruns {} late ticks {} turn latency {} first audio {}",
        agg["completed"],
        agg["failed"],
        agg["underruns"],
        agg["late_ticks"],
        agg["turn_latency_ms"],
        agg["first_audio_ms"]
    );
}

#[tokio::test]
async fn a_slow_tool_never_stops_the_caller_being_heard_barge_in_or_audio() {
    let persona = TestPersona {
        tools: vec![ToolSpec {
            name: "order_status".into(),
            description: "Where an order is".into(),
            parameters: serde_json::json!({"type": "object", "properties": {}}),
        }],
        tool_result: r#"{"status":"shipped"}"#.into(),
        tool_delay: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let (calls, window) = (persona.calls.clone(), persona.tool_window.clone());
    let rig = Rig::start(persona).await;
    rig.groq.script([
        Reply::Text("Hello!".into()),
        Reply::ToolCalls(vec![("order_status".into(), "{}".into())]),
        Reply::Text("Okay, never mind then.".into()),
    ]);
    rig.stt.script(&["Where is my order?", "Actually, never mind."]);
    let report = rig.call(rig.plan("tool_barge_8k.wav", Duration::from_secs(11))).await;
    assert!(report.ok(), "{report:?}");
    assert!(calls.lock().unwrap().iter().any(|c| c.starts_with("tool:order_status")), "{:?}", calls.lock().unwrap());
    let (tool_start, tool_end) = window.lock().unwrap().expect("the tool ran");
    let tool_end = tool_end.expect("the tool finished");
    assert!(tool_end - tool_start >= Duration::from_secs(3));
    // While the tool ran, the caller was heard: VAD events arrived inside its window.
    let log = rig.events.0.lock().unwrap().clone();
    let at = rig.events.1.lock().unwrap().clone();
    let vad_during = log
        .iter()
        .zip(&at)
        .filter(|((_, e), t)| matches!(e, CallEvent::Vad { .. }) && **t > tool_start && **t < tool_end)
        .count();
    assert!(vad_during >= 1, "VAD events during the tool: {vad_during}");
    // The caller cut the reply the tool belonged to short, while the tool ran.
    let metrics = reqwest::get(format!("{}/metrics", rig.server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchboard_barge_ins_total 1"), "{metrics}");
    let cut = log
        .iter()
        .zip(&at)
        .find(|((_, e), _)| matches!(e, CallEvent::Line(l) if l.interrupted))
        .map(|(_, t)| *t)
        .expect("an interrupted assistant line");
    assert!(cut > tool_start && cut < tool_end, "the barge-in happened while the tool ran");
    // No caller audio was dropped, and the second turn was answered with the tool's result in the context.
    assert!(metrics.contains("switchboard_caller_frames_dropped_total 0"), "{metrics}");
    let last = rig.groq.requests().last().unwrap().body.clone();
    let roles: Vec<&str> = last["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    let tool_at = roles.iter().position(|r| *r == "tool").expect("the tool's result in the context");
    assert_eq!(roles[tool_at - 1], "assistant", "the result follows its call: {roles:?}");
    assert_eq!(roles.last(), Some(&"user"), "{roles:?}");
    assert!(rig.spoken_texts().iter().any(|t| t.contains("never mind then")), "{:?}", rig.spoken_texts());
}
