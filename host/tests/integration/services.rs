//! The provider clients against the protocol fakes, over real loopback sockets.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use switchboard::services::llm::openai_compat::{OpenAiCompat, OpenAiCompatConfig};
use switchboard::services::llm::{
    ChatMessage, ChatModel, ChatRequest, FinishReason, LlmError, LlmEvent, LlmTimeout, ToolCall, ToolChoice, ToolSpec,
};
use switchboard::services::stt::deepgram::{DeepgramStt, DeepgramSttConfig};
use switchboard::services::stt::{Frame, SttError, SttEvent, SttEvents, SttHandle, SttOptions, SttStats, Transcript};
use switchboard::services::tts::deepgram::{DeepgramTts, DeepgramTtsConfig};
use switchboard::services::tts::{ReplyId, TextToSpeech, TtsError, TtsEvent, TtsEvents, TtsOptions, TtsStats};
use switchboard::services::{ErrorKind, HandshakeError};
use tokio::time::{timeout, Instant};

use crate::fakes::deepgram_stt::{self, DropFault, DropMode, FakeDeepgramStt};
use crate::fakes::deepgram_tts::{self, FakeDeepgramTts};
use crate::fakes::groq::{self, FakeGroq, Fault, Reply};

const WAIT: Duration = Duration::from_secs(5);

// ---------- helpers ----------

/// A 20 ms frame of a 300 Hz tone (speech to the fake's energy detector).
fn tone(n: usize) -> Frame {
    let mut f = [0i16; 160];
    for (i, s) in f.iter_mut().enumerate() {
        let t = (n * 160 + i) as f64 / 8000.0;
        *s = ((2.0 * std::f64::consts::PI * 300.0 * t).sin() * 6000.0) as i16;
    }
    f
}

const SILENCE: Frame = [0i16; 160];

/// Sends frames a little faster than real time (the fake judges by audio time, not wall time).
async fn send(stt: &SttHandle, frames: impl IntoIterator<Item = Frame>, per_frame: Duration) {
    for f in frames {
        assert!(stt.send_audio(&f), "the audio queue must not overflow at this pace");
        tokio::time::sleep(per_frame).await;
    }
}

fn speech(ms: usize) -> Vec<Frame> {
    (0..ms / 20).map(tone).collect()
}

fn silence(ms: usize) -> Vec<Frame> {
    vec![SILENCE; ms / 20]
}

const FAST: Duration = Duration::from_millis(2);

fn stt_config(fake: &FakeDeepgramStt, key: &str) -> DeepgramSttConfig {
    let mut c = DeepgramSttConfig::new(fake.base_url(), key);
    c.reconnect_initial_backoff = Duration::from_millis(20);
    c.reconnect_max_backoff = Duration::from_millis(100);
    c
}

/// The next event matching `pick`, skipping others; panics after `limit`.
async fn next_stt<T>(events: &mut SttEvents, limit: Duration, mut pick: impl FnMut(SttEvent) -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, events.recv()).await {
            Ok(Some(e)) => {
                if let Some(t) = pick(e) {
                    return t;
                }
            }
            Ok(None) => panic!("the STT event channel closed"),
            Err(_) => panic!("no matching STT event within {limit:?}"),
        }
    }
}

fn final_transcript(e: SttEvent) -> Option<Transcript> {
    match e {
        SttEvent::Transcript(t) if t.is_final => Some(t),
        _ => None,
    }
}

// ---------- Deepgram STT ----------

#[tokio::test]
async fn stt_sends_the_reference_query_token_header_and_closes_cleanly() {
    let fake = FakeDeepgramStt::start().await;
    let stt = DeepgramStt::new(stt_config(&fake, deepgram_stt::API_KEY));
    let (handle, mut events) = stt.open(SttOptions::default()).await.expect("connect");
    send(&handle, silence(200), FAST).await;
    handle.close();
    while timeout(WAIT, events.recv()).await.expect("channel closes after close()").is_some() {}

    let conns = fake.connections();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!(
        c.query,
        "model=nova-3&language=en&encoding=linear16&sample_rate=8000&channels=1&multichannel=false\
         &interim_results=true&punctuate=true&smart_format=false&numerals=false&diarize=false&dictation=false\
         &detect_entities=false"
    );
    assert_eq!(c.authorization.as_deref(), Some("Token test-deepgram-key"));
    assert_eq!(c.audio.len(), 10 * 320, "ten 20 ms PCM16 frames");
    assert_eq!((c.close_streams, c.finalizes, c.keepalives), (1, 0, 0));
    assert_eq!(c.ended_by, "CloseStream");
    assert_eq!(c.texts, vec![r#"{"type":"CloseStream"}"#]);
    assert!(!handle.is_open(), "the session task ended");
}

#[tokio::test]
async fn stt_delivers_interim_then_final_transcripts_with_session_times() {
    let fake = FakeDeepgramStt::start().await;
    fake.script(&["Hello there, how are you today?", "Second question."]);
    let stt = DeepgramStt::new(stt_config(&fake, deepgram_stt::API_KEY));
    let (handle, mut events) = stt.open(SttOptions::default()).await.expect("connect");

    let mut frames = silence(200);
    frames.extend(speech(1000));
    frames.extend(silence(400));
    frames.extend(speech(600));
    frames.extend(silence(400));
    send(&handle, frames, FAST).await;

    let mut interims = Vec::new();
    let first = next_stt(&mut events, WAIT, |e| match e {
        SttEvent::Transcript(t) if !t.is_final => {
            interims.push(t.text.clone());
            None
        }
        e => final_transcript(e),
    })
    .await;
    assert!(!interims.is_empty(), "interim results come before the final");
    assert!("Hello there, how are you today?".starts_with(interims[0].as_str()));
    assert_eq!(first.text, "Hello there, how are you today?");
    assert!(first.speech_final && !first.from_finalize);
    assert!((first.start_secs - 0.2).abs() < 0.03, "start {}", first.start_secs);
    assert!((first.duration_secs - 1.0).abs() < 0.05, "duration {}", first.duration_secs);
    let second = next_stt(&mut events, WAIT, final_transcript).await;
    assert_eq!(second.text, "Second question.");
    assert!((second.start_secs - 1.6).abs() < 0.03, "start {}", second.start_secs);
    assert_eq!(SttStats::get(&handle.stats().frames_dropped), 0);
}

#[tokio::test]
async fn stt_finalize_flushes_the_turn_before_endpointing() {
    let fake = FakeDeepgramStt::start().await;
    fake.configure(|s| s.endpointing = Duration::from_secs(2));
    fake.script(&["Book a table for two."]);
    let stt = DeepgramStt::new(stt_config(&fake, deepgram_stt::API_KEY));
    let (handle, mut events) = stt.open(SttOptions::default()).await.expect("connect");
    let mut frames = speech(800);
    frames.extend(silence(100));
    send(&handle, frames, FAST).await;
    handle.finalize();
    let t = next_stt(&mut events, Duration::from_secs(1), final_transcript).await;
    assert_eq!(t.text, "Book a table for two.");
    assert!(t.from_finalize && t.is_final && !t.speech_final);

    // With nothing pending, Finalize is still answered (an empty from_finalize result).
    handle.finalize();
    let empty = next_stt(&mut events, Duration::from_secs(1), final_transcript).await;
    assert!(empty.text.is_empty() && empty.from_finalize);
    let c = &fake.connections()[0];
    assert_eq!(c.finalizes, 2);
    assert_eq!(SttStats::get(&handle.stats().finalizes_sent), 2);
}

#[tokio::test]
async fn stt_keepalive_only_while_no_audio_flows() {
    let fake = FakeDeepgramStt::start().await;
    fake.configure(|s| s.idle_timeout = Duration::from_millis(700));
    let mut config = stt_config(&fake, deepgram_stt::API_KEY);
    config.keepalive_interval = Duration::from_millis(200);
    let (handle, mut events) = DeepgramStt::new(config).open(SttOptions::default()).await.expect("connect");

    send(&handle, silence(600), Duration::from_millis(10)).await;
    assert_eq!(fake.connections()[0].keepalives, 0, "flowing audio needs no KeepAlive");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = &fake.connections()[0];
    assert!(c.keepalives >= 4, "KeepAlive every 200 ms of quiet, got {}", c.keepalives);
    assert!(c.ended_by.is_empty(), "the fake's idle timeout never fired: {}", c.ended_by);
    assert_eq!(fake.connections().len(), 1);
    assert!(c.texts.iter().all(|t| t == r#"{"type":"KeepAlive"}"#));
    assert!(events.try_recv().is_err(), "no disconnect was reported");
    assert_eq!(SttStats::get(&handle.stats().keepalives_sent), c.keepalives as u64);
}

#[tokio::test]
async fn stt_without_keepalive_deepgram_closes_1011_and_the_client_reconnects() {
    let fake = FakeDeepgramStt::start().await;
    fake.configure(|s| s.idle_timeout = Duration::from_millis(200));
    let mut config = stt_config(&fake, deepgram_stt::API_KEY);
    config.keepalive_interval = Duration::from_secs(60);
    let (_handle, mut events) = DeepgramStt::new(config).open(SttOptions::default()).await.expect("connect");
    let (reason, kind) = next_stt(&mut events, WAIT, |e| match e {
        SttEvent::Disconnected { reason, kind } => Some((reason, kind)),
        _ => None,
    })
    .await;
    assert!(reason.contains("1011") && reason.contains("NET-0001"), "{reason}");
    assert_eq!(kind, ErrorKind::Server);
    next_stt(&mut events, WAIT, |e| matches!(e, SttEvent::Reconnected { .. }).then_some(())).await;
}

/// Frame `n` of a numbered sequence: every sample holds `1000 + n`, loud enough to be speech.
fn numbered(n: usize) -> Frame {
    [1000 + n as i16; 160]
}

fn frame_numbers(audio: &[u8]) -> Vec<i16> {
    audio.chunks_exact(320).map(|f| i16::from_le_bytes([f[0], f[1]]) - 1000).collect()
}

#[tokio::test]
async fn stt_reconnects_after_a_1011_drop_and_resends_audio_buffered_meanwhile() {
    let fake = FakeDeepgramStt::start().await;
    fake.configure(|s| s.speech_rms = 100_000.0);
    fake.arm_drop(DropFault {
        after_audio: Duration::from_millis(400),
        mode: DropMode::Close { code: 1011, reason: "NET-0000: internal error".into() },
    });
    let stt = DeepgramStt::new(stt_config(&fake, deepgram_stt::API_KEY));
    let (handle, mut events) = stt.open(SttOptions::default()).await.expect("connect");

    // The outage lasts until the fake accepts handshakes again.
    let sender = {
        let handle = handle.clone();
        tokio::spawn(async move { send(&handle, (0..100).map(numbered), Duration::from_millis(10)).await })
    };
    let (reason, kind) = next_stt(&mut events, WAIT, |e| match e {
        SttEvent::Disconnected { reason, kind } => Some((reason, kind)),
        _ => None,
    })
    .await;
    fake.configure(|s| s.refuse_status = Some(503));
    assert!(reason.contains("1011"), "{reason}");
    assert_eq!(kind, ErrorKind::Server);
    tokio::time::sleep(Duration::from_millis(250)).await;
    fake.configure(|s| s.refuse_status = None);
    let (resent, lost) = next_stt(&mut events, WAIT, |e| match e {
        SttEvent::Reconnected { resent_frames, lost_frames, .. } => Some((resent_frames, lost_frames)),
        _ => None,
    })
    .await;
    sender.await.expect("sender");
    assert!(resent >= 10, "audio offered during the outage was buffered, resent {resent}");
    assert_eq!(lost, 0);
    assert!(fake.attempts().iter().any(|a| a.status == 503), "reconnect attempts were refused meanwhile");

    assert!(fake.wait_until(WAIT, |c| c.len() == 2 && frame_numbers(&c[1].audio).last() == Some(&99)).await);
    handle.close();
    assert!(fake.wait_until(WAIT, |c| c[1].ended_by == "CloseStream").await);
    let conns = fake.connections();
    let first = frame_numbers(&conns[0].audio);
    let second = frame_numbers(&conns[1].audio);
    assert!(first.windows(2).all(|w| w[1] == w[0] + 1) && first[0] == 0);
    assert!(second.windows(2).all(|w| w[1] == w[0] + 1), "buffered audio first, in order, then live audio");
    assert_eq!(*second.last().unwrap(), 99);
    // Frames the server never read before its close are the only possible gap (at most a few).
    let gap = second[0] - first.last().unwrap() - 1;
    assert!((-1..=3).contains(&gap), "gap of {gap} frames at the drop");
}

#[tokio::test]
async fn stt_abrupt_drop_reconnects_and_keeps_transcript_times_on_the_session_clock() {
    let fake = FakeDeepgramStt::start().await;
    fake.script(&["After the drop."]);
    fake.arm_drop(DropFault { after_audio: Duration::from_millis(300), mode: DropMode::Abrupt });
    let stt = DeepgramStt::new(stt_config(&fake, deepgram_stt::API_KEY));
    let (handle, mut events) = stt.open(SttOptions::default()).await.expect("connect");
    let mut frames = silence(600);
    frames.extend(speech(800));
    frames.extend(silence(400));
    send(&handle, frames, Duration::from_millis(5)).await;
    let kind = next_stt(&mut events, WAIT, |e| match e {
        SttEvent::Disconnected { kind, .. } => Some(kind),
        _ => None,
    })
    .await;
    assert_eq!(kind, ErrorKind::Network);
    let t = next_stt(&mut events, WAIT, final_transcript).await;
    assert_eq!(t.text, "After the drop.");
    assert!((t.start_secs - 0.6).abs() < 0.08, "start on the session clock, got {}", t.start_secs);
    assert_eq!(SttStats::get(&handle.stats().reconnects), 1);
}

#[tokio::test]
async fn stt_bad_credentials_are_a_typed_auth_error_at_connect_and_on_reconnect() {
    let fake = FakeDeepgramStt::start().await;
    let err = DeepgramStt::new(stt_config(&fake, "wrong-key")).open(SttOptions::default()).await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    match &err {
        SttError::Handshake(HandshakeError::Auth { status: 401, message }) => {
            assert!(message.contains("INVALID_AUTH") && message.contains("Invalid credentials"), "{message}")
        }
        other => panic!("expected a 401 auth error, got {other:?}"),
    }

    // A key revoked mid-call: the reconnect fails for good with the same typed error.
    let (handle, mut events) =
        DeepgramStt::new(stt_config(&fake, deepgram_stt::API_KEY)).open(SttOptions::default()).await.expect("connect");
    fake.configure(|s| s.api_key = "rotated".into());
    fake.arm_drop(DropFault { after_audio: Duration::ZERO, mode: DropMode::Abrupt });
    // The session ends on the failed reconnect, so later frames may be refused: not asserted.
    for _ in 0..5 {
        handle.send_audio(&SILENCE);
        tokio::time::sleep(FAST).await;
    }
    let failure = next_stt(&mut events, WAIT, |e| match e {
        SttEvent::Failed(e) => Some(e),
        _ => None,
    })
    .await;
    assert!(failure.is_auth(), "{failure}");
}

#[tokio::test]
async fn stt_unknown_model_is_refused_with_deepgrams_message() {
    let fake = FakeDeepgramStt::start().await;
    let stt = DeepgramStt::new(stt_config(&fake, deepgram_stt::API_KEY));
    let options = SttOptions { model: Some("nova-9".into()), language: None };
    let err = stt.open(options).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest);
    assert!(err.to_string().contains("No such model"), "{err}");
}

// ---------- Groq / OpenAI-compatible LLM ----------

fn llm(fake: &FakeGroq, key: &str) -> OpenAiCompat {
    OpenAiCompat::new(OpenAiCompatConfig::new(fake.base_url(), key)).expect("client")
}

fn hello_request() -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage::system("You are brief."), ChatMessage::user("hello there")],
        ..Default::default()
    }
}

/// All events of a stream, or the error that ended it.
async fn drain(client: &OpenAiCompat, request: ChatRequest) -> (Vec<LlmEvent>, Option<LlmError>) {
    let mut stream = client.stream_chat(request);
    let mut events = Vec::new();
    while let Some(item) = timeout(WAIT, stream.next()).await.expect("stream stalled") {
        match item {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

fn text_of(events: &[LlmEvent]) -> String {
    events.iter().filter_map(|e| if let LlmEvent::TextDelta(t) = e { Some(t.as_str()) } else { None }).collect()
}

#[tokio::test]
async fn llm_streams_text_and_sends_the_expected_body() {
    let fake = FakeGroq::start().await;
    let client = llm(&fake, groq::API_KEY);
    let (events, error) = drain(&client, hello_request()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), "You said: hello there");
    let deltas = events.iter().filter(|e| matches!(e, LlmEvent::TextDelta(_))).count();
    assert_eq!(deltas, 4, "one delta per word");
    match events.last() {
        Some(LlmEvent::Done { finish_reason: FinishReason::Stop, usage: Some(u) }) => assert!(u.total_tokens > 0),
        other => panic!("expected Done with usage, got {other:?}"),
    }
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer test-groq-key"));
    assert_eq!(
        requests[0].body,
        json!({
            "model": "llama-3.3-70b-versatile",
            "messages": [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "hello there"}],
            "stream": true,
            "stream_options": {"include_usage": true}
        })
    );
    assert!(requests[0].completed);
}

#[tokio::test]
async fn llm_reassembles_events_split_across_reads_and_skips_keepalive_comments() {
    let fake = FakeGroq::start().await;
    fake.configure(|s| {
        s.split_events = true;
        s.comments = true;
    });
    fake.script([Reply::Text("Ünïcode survives — every split.".into())]);
    let request = ChatRequest { temperature: Some(0.3), max_tokens: Some(200), ..hello_request() };
    let (events, error) = drain(&llm(&fake, groq::API_KEY), request).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text_of(&events), "Ünïcode survives — every split.");
    let body = &fake.requests()[0].body;
    assert_eq!(body["max_tokens"], 200);
    assert!((body["temperature"].as_f64().unwrap() - 0.3).abs() < 1e-6);
}

#[tokio::test]
async fn llm_tool_call_streamed_in_fragments_round_trips() {
    let fake = FakeGroq::start().await;
    let args = r#"{"city": "Paris", "unit": "celsius", "days": 3}"#;
    fake.script([Reply::ToolCalls(vec![("get_weather".into(), args.into())]), Reply::Text("Sunny all week.".into())]);
    let client = llm(&fake, groq::API_KEY);
    let schema = r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;
    let tool = ToolSpec::from_schema_text("get_weather", "Weather forecast", schema).expect("schema");
    let mut request = hello_request();
    request.tools = vec![tool];
    request.tool_choice = Some(ToolChoice::Auto);

    let (events, error) = drain(&client, request.clone()).await;
    assert!(error.is_none(), "{error:?}");
    let calls = match events.as_slice() {
        [LlmEvent::ToolCalls(calls), LlmEvent::Done { finish_reason: FinishReason::ToolCalls, .. }] => calls.clone(),
        other => panic!("expected one ToolCalls then Done, got {other:?}"),
    };
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].name, "get_weather");
    assert_eq!(calls[0].arguments, args, "fragments joined in order");
    assert!(calls[0].id.starts_with("call_"));

    request.messages.push(ChatMessage::assistant_tool_calls(calls.clone()));
    request.messages.push(ChatMessage::tool_result(calls[0].id.clone(), r#"{"forecast":"sunny"}"#));
    let (events, error) = drain(&client, request).await;
    assert!(error.is_none(), "the fake accepted the tool result: {error:?}");
    assert_eq!(text_of(&events), "Sunny all week.");
    let second = &fake.requests()[1].body;
    assert_eq!(second["messages"][2]["tool_calls"][0]["id"], calls[0].id.as_str());
    assert_eq!(
        second["messages"][3],
        json!({"role": "tool", "tool_call_id": calls[0].id, "content": "{\"forecast\":\"sunny\"}"})
    );
    assert_eq!(second["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(second["tool_choice"], "auto");
}

#[tokio::test]
async fn llm_tool_result_for_an_unknown_call_is_refused_by_the_fake() {
    let fake = FakeGroq::start().await;
    let mut request = hello_request();
    let call = ToolCall { id: "call_1".into(), name: "f".into(), arguments: "{}".into() };
    request.messages.push(ChatMessage::assistant_tool_calls(vec![call]));
    request.messages.push(ChatMessage::tool_result("call_2", "x"));
    let (_, error) = drain(&llm(&fake, groq::API_KEY), request).await;
    match error {
        Some(LlmError::Api { status: 400, message, .. }) => assert!(message.contains("call_2"), "{message}"),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn llm_error_bodies_are_surfaced_as_typed_errors() {
    let fake = FakeGroq::start().await;
    let (_, error) = drain(&llm(&fake, "wrong"), hello_request()).await;
    match error {
        Some(e @ LlmError::Auth { status: 401, .. }) => {
            assert!(e.is_auth() && e.to_string().contains("Invalid API Key"), "{e}")
        }
        other => panic!("expected Auth, got {other:?}"),
    }

    let client = llm(&fake, groq::API_KEY);
    let (_, error) = drain(&client, ChatRequest { model: Some("llama-9".into()), ..hello_request() }).await;
    match error {
        Some(LlmError::Api { status: 404, code: Some(code), message, .. }) => {
            assert_eq!(code, "model_not_found");
            assert!(message.contains("llama-9"), "{message}");
        }
        other => panic!("expected model_not_found, got {other:?}"),
    }

    fake.push_fault(Fault::rate_limited());
    let (_, error) = drain(&client, hello_request()).await;
    match error {
        Some(e @ LlmError::RateLimited { .. }) => {
            assert_eq!(e.kind(), ErrorKind::RateLimited);
            let LlmError::RateLimited { message, retry_after } = e else { unreachable!() };
            assert!(message.contains("Rate limit reached"), "{message}");
            assert_eq!(retry_after, Some(Duration::from_secs(2)));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }

    fake.push_fault(Fault::server_error());
    let (_, error) = drain(&client, hello_request()).await;
    match error {
        Some(e @ LlmError::Api { status: 500, .. }) => {
            assert_eq!(e.kind(), ErrorKind::Server);
            assert!(e.to_string().contains("Internal Server Error"), "{e}");
        }
        other => panic!("expected a 500, got {other:?}"),
    }

    fake.script([Reply::Text("one two three four five".into())]);
    fake.push_fault(Fault::ErrorAfter { chunks: 2, message: "Groq is over capacity".into() });
    let (events, error) = drain(&client, hello_request()).await;
    assert_eq!(text_of(&events), "one two ");
    match error {
        Some(LlmError::Stream { message, error_type, .. }) => {
            assert_eq!(message, "Groq is over capacity");
            assert_eq!(error_type.as_deref(), Some("internal_server_error"));
        }
        other => panic!("expected a mid-stream error, got {other:?}"),
    }
}

#[tokio::test]
async fn llm_hanging_provider_fails_the_request_on_time() {
    let fake = FakeGroq::start().await;
    let mut config = OpenAiCompatConfig::new(fake.base_url(), groq::API_KEY);
    config.first_token_timeout = Duration::from_millis(300);
    config.idle_timeout = Duration::from_millis(200);
    let client = OpenAiCompat::new(config).expect("client");

    for fault in [Fault::HangBeforeHeaders, Fault::HangAfterHeaders] {
        fake.push_fault(fault.clone());
        let started = Instant::now();
        let (events, error) = drain(&client, hello_request()).await;
        let took = started.elapsed();
        assert!(events.is_empty());
        assert!(
            matches!(error, Some(LlmError::Timeout(LlmTimeout::FirstToken(_)))),
            "{fault:?}: expected a first-token timeout, got {error:?}"
        );
        assert!(took >= Duration::from_millis(280) && took < Duration::from_secs(2), "{fault:?} took {took:?}");
    }

    fake.script([Reply::Text("one two three four".into())]);
    fake.push_fault(Fault::StallAfter { chunks: 2 });
    let (events, error) = drain(&client, hello_request()).await;
    assert_eq!(text_of(&events), "one two ");
    assert!(matches!(error, Some(LlmError::Timeout(LlmTimeout::Idle(_)))), "{error:?}");
    assert_eq!(error.map(|e| e.kind()), Some(ErrorKind::Timeout));
}

#[tokio::test]
async fn llm_unreachable_provider_is_a_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let base = url::Url::parse(&format!("http://127.0.0.1:{port}/openai/v1")).expect("url");
    let client = OpenAiCompat::new(OpenAiCompatConfig::new(base, groq::API_KEY)).expect("client");
    let (events, error) = drain(&client, hello_request()).await;
    assert!(events.is_empty());
    assert_eq!(error.map(|e| e.kind()), Some(ErrorKind::Network));
}

#[tokio::test]
async fn llm_dropping_the_stream_cancels_the_request() {
    let fake = FakeGroq::start().await;
    fake.configure(|s| s.chunk_delay = Duration::from_millis(30));
    fake.script([Reply::Text("word ".repeat(60))]);
    let client = llm(&fake, groq::API_KEY);
    let mut stream = client.stream_chat(hello_request());
    for _ in 0..2 {
        let item = timeout(WAIT, stream.next()).await.expect("a delta").expect("not ended");
        assert!(matches!(item, Ok(LlmEvent::TextDelta(_))));
    }
    drop(stream);
    assert!(
        fake.wait_until(Duration::from_secs(2), |r| r.len() == 1 && r[0].client_gone).await,
        "the fake saw the client go away"
    );
    assert!(!fake.requests()[0].completed);
}

// ---------- Deepgram TTS ----------

fn tts(fake: &FakeDeepgramTts, key: &str) -> DeepgramTts {
    let mut c = DeepgramTtsConfig::new(fake.base_url(), key);
    c.stall_timeout = Duration::from_millis(400);
    c.reconnect_initial_backoff = Duration::from_millis(20);
    DeepgramTts::new(c).expect("client")
}

/// Events until `stop` matches (inclusive).
async fn tts_until(events: &mut TtsEvents, stop: impl Fn(&TtsEvent) -> bool) -> Vec<TtsEvent> {
    let mut seen = Vec::new();
    loop {
        let e = timeout(WAIT, events.recv()).await.expect("TTS event in time").expect("channel open");
        let done = stop(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

fn audio_of(events: &[TtsEvent], reply: ReplyId) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if let TtsEvent::Audio { reply: r, audio, .. } = e {
            if *r == reply {
                out.extend_from_slice(audio);
            }
        }
    }
    out
}

/// μ-law bytes of a 60 ms/char tone: 480 bytes per character.
fn expected_bytes(text: &str) -> usize {
    text.chars().count() * 480
}

fn is_tone(audio: &[u8]) -> bool {
    let loud = audio.iter().filter(|&&b| switchboard::audio::mulaw::decode(b).unsigned_abs() > 1000).count();
    loud > audio.len() / 4
}

#[tokio::test]
async fn tts_streams_speak_and_flush_audio_tagged_by_reply() {
    let fake = FakeDeepgramTts::start().await;
    let (handle, mut events) = tts(&fake, deepgram_tts::API_KEY).open(TtsOptions::default()).await.expect("connect");
    let r1 = ReplyId(1);
    let sent_at = Instant::now();
    handle.speak(r1, "Hello there. ");
    handle.speak(r1, "How are you? ");
    handle.flush(r1);
    let seen = tts_until(&mut events, |e| matches!(e, TtsEvent::Flushed { .. })).await;
    let first_audio = seen.iter().find_map(|e| match e {
        TtsEvent::Audio { received_at, .. } => Some(*received_at),
        _ => None,
    });
    assert!(first_audio.expect("audio arrived") >= sent_at, "time to first byte is measurable");
    assert!(matches!(seen.last(), Some(TtsEvent::Flushed { reply, .. }) if *reply == r1));
    let audio = audio_of(&seen, r1);
    // Whitespace between and after sentences is not spoken.
    assert_eq!(audio.len(), expected_bytes("Hello there. How are you?"));
    assert!(is_tone(&audio), "audible audio, not silence");

    // A second reply on the same socket.
    handle.speak(ReplyId(2), "Bye.");
    handle.flush(ReplyId(2));
    let seen = tts_until(&mut events, |e| matches!(e, TtsEvent::Flushed { .. })).await;
    assert_eq!(audio_of(&seen, ReplyId(2)).len(), expected_bytes("Bye."));
    assert!(audio_of(&seen, r1).is_empty());

    let c = &fake.connections()[0];
    assert_eq!(c.query, "model=aura-2-theia-en&encoding=mulaw&sample_rate=8000");
    assert_eq!(c.authorization.as_deref(), Some("Token test-deepgram-key"));
    assert_eq!(c.speaks, vec!["Hello there. ", "How are you? ", "Bye."]);
    assert_eq!(c.flushes, 2);
    assert_eq!(fake.connections().len(), 1, "one socket for the whole call");
    handle.close();
    assert!(fake.wait_until(WAIT, |c| c[0].closes == 1).await);
}

#[tokio::test]
async fn tts_a_reply_flushed_per_sentence_keeps_all_its_audio() {
    let fake = FakeDeepgramTts::start().await;
    fake.configure(|s| s.chunk_delay = Duration::from_millis(5));
    let (handle, mut events) = tts(&fake, deepgram_tts::API_KEY).open(TtsOptions::default()).await.expect("connect");
    let r = ReplyId(5);
    handle.speak(r, "One. ");
    handle.flush(r);
    handle.speak(r, "Two more words.");
    handle.flush(r);
    handle.speak(ReplyId(6), "Next.");
    handle.flush(ReplyId(6));
    let seen = tts_until(&mut events, |e| matches!(e, TtsEvent::Flushed { reply, .. } if *reply == ReplyId(6))).await;
    let flushed: Vec<ReplyId> =
        seen.iter().filter_map(|e| if let TtsEvent::Flushed { reply, .. } = e { Some(*reply) } else { None }).collect();
    assert_eq!(flushed, vec![r, r, ReplyId(6)], "one Flushed per flush");
    assert_eq!(audio_of(&seen, r).len(), expected_bytes("One.") + expected_bytes("Two more words."));
    assert_eq!(audio_of(&seen, ReplyId(6)).len(), expected_bytes("Next."));
}

#[tokio::test]
async fn tts_clear_discards_the_interrupted_replys_late_audio() {
    let fake = FakeDeepgramTts::start().await;
    fake.configure(|s| {
        s.chunk_delay = Duration::from_millis(20);
        s.clear_lag_chunks = 3;
    });
    let (handle, mut events) = tts(&fake, deepgram_tts::API_KEY).open(TtsOptions::default()).await.expect("connect");
    let (r1, r2) = (ReplyId(7), ReplyId(8));
    handle.speak(r1, "This is a long answer that the caller is going to interrupt halfway through. ");
    handle.flush(r1);
    tts_until(&mut events, |e| matches!(e, TtsEvent::Audio { .. })).await;

    // Barge-in: clear, then the next reply right away.
    handle.clear();
    handle.speak(r2, "Sure, go ahead.");
    handle.flush(r2);
    let after = tts_until(&mut events, |e| matches!(e, TtsEvent::Flushed { reply, .. } if *reply == r2)).await;
    let cleared_at = after.iter().position(|e| matches!(e, TtsEvent::Cleared { .. })).expect("Cleared reported");
    assert!(
        after[cleared_at..].iter().all(|e| !matches!(e, TtsEvent::Audio { reply, .. } if *reply == r1)),
        "no audio of the interrupted reply after Cleared"
    );
    assert!(
        after.iter().all(|e| !matches!(e, TtsEvent::Flushed { reply, .. } if *reply == r1)),
        "the interrupted reply never reports Flushed"
    );
    assert_eq!(audio_of(&after, r2).len(), expected_bytes("Sure, go ahead."));
    let c = &fake.connections()[0];
    assert_eq!(c.clears, 1);
    assert_eq!(c.audio_after_clear, 3, "the fake kept sending after Clear, as a real server can");
    assert!(TtsStats::get(&handle.stats().discarded_bytes) >= 3 * 800, "those chunks were dropped by the client");
}

#[tokio::test]
async fn tts_rest_fallback_returns_raw_mulaw() {
    let fake = FakeDeepgramTts::start().await;
    let client = tts(&fake, deepgram_tts::API_KEY);
    let audio = client.synthesize("Sorry about that.".into(), TtsOptions::default()).await.expect("REST audio");
    assert_eq!(audio.len(), expected_bytes("Sorry about that."), "raw μ-law, no WAV header");
    assert!(is_tone(&audio));
    let r = &fake.rest_requests()[0];
    assert_eq!(r.query, "model=aura-2-theia-en&encoding=mulaw&sample_rate=8000&container=none");
    assert_eq!(r.authorization.as_deref(), Some("Token test-deepgram-key"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.body).unwrap(), json!({"text": "Sorry about that."}));

    fake.configure(|s| s.rest_status = Some(503));
    let err = client.synthesize("Hi.".into(), TtsOptions::default()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server);
    assert!(err.to_string().contains("503"), "{err}");

    let err = tts(&fake, "wrong").synthesize("Hi.".into(), TtsOptions::default()).await.unwrap_err();
    assert!(
        matches!(&err, TtsError::Auth { status: 401, message } if message.contains("Invalid credentials")),
        "{err}"
    );
}

#[tokio::test]
async fn tts_bad_key_and_unknown_voice_are_refused_at_the_handshake() {
    let fake = FakeDeepgramTts::start().await;
    let err = tts(&fake, "wrong").open(TtsOptions::default()).await.unwrap_err();
    assert!(err.is_auth(), "{err}");
    assert!(err.to_string().contains("Invalid credentials"), "{err}");
    let options = TtsOptions { voice: Some("aura-9-nobody-en".into()) };
    let err = tts(&fake, deepgram_tts::API_KEY).open(options).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadRequest);
    assert!(err.to_string().contains("aura-9-nobody-en"), "{err}");
}

#[tokio::test]
async fn tts_stall_fails_the_reply_and_a_new_socket_serves_the_next() {
    let fake = FakeDeepgramTts::start().await;
    let (handle, mut events) = tts(&fake, deepgram_tts::API_KEY).open(TtsOptions::default()).await.expect("connect");
    fake.configure(|s| s.hang = true);
    handle.speak(ReplyId(1), "Anyone there?");
    handle.flush(ReplyId(1));
    let started = Instant::now();
    let seen = tts_until(&mut events, |e| matches!(e, TtsEvent::Failed { .. })).await;
    let Some(TtsEvent::Failed { replies, error }) = seen.last() else { unreachable!() };
    assert_eq!(replies, &vec![ReplyId(1)]);
    assert!(matches!(error, TtsError::Stalled(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));

    fake.configure(|s| s.hang = false);
    tts_until(&mut events, |e| matches!(e, TtsEvent::Reconnected { .. })).await;
    handle.speak(ReplyId(2), "Back again.");
    handle.flush(ReplyId(2));
    let seen = tts_until(&mut events, |e| matches!(e, TtsEvent::Flushed { .. })).await;
    assert_eq!(audio_of(&seen, ReplyId(2)).len(), expected_bytes("Back again."));
    assert_eq!(fake.connections().len(), 2);
}

#[tokio::test]
async fn tts_server_close_mid_reply_fails_it_with_the_close_code() {
    let fake = FakeDeepgramTts::start().await;
    let (handle, mut events) = tts(&fake, deepgram_tts::API_KEY).open(TtsOptions::default()).await.expect("connect");
    fake.configure(|s| s.close_on_flush = Some(1011));
    handle.speak(ReplyId(3), "Hello.");
    handle.flush(ReplyId(3));
    let seen = tts_until(&mut events, |e| matches!(e, TtsEvent::Failed { .. })).await;
    let Some(TtsEvent::Failed { replies, error }) = seen.last() else { unreachable!() };
    assert_eq!(replies, &vec![ReplyId(3)]);
    assert!(matches!(error, TtsError::Closed { code: 1011, .. }), "{error}");
    assert_eq!(error.kind(), ErrorKind::Server);
}

// ---------- cost and latency on loopback (run with --ignored --nocapture) ----------

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// Resident set size, from /proc (Linux).
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: cargo test --test integration services::measure -- --ignored --nocapture"]
async fn measure_stt_cpu_per_call_minute() {
    const CALLS: usize = 40;
    const SECS: usize = 15;
    let fake = FakeDeepgramStt::start().await;
    let stt = DeepgramStt::new(stt_config(&fake, deepgram_stt::API_KEY));
    let rss0 = rss_bytes();
    let mut sessions = Vec::new();
    for _ in 0..CALLS {
        sessions.push(stt.open(SttOptions::default()).await.expect("connect"));
    }
    let rss_per_session = rss_bytes().saturating_sub(rss0) / CALLS;
    let cpu0 = cpu_seconds();
    let mut tasks = Vec::new();
    for (handle, mut events) in sessions {
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for n in 0..SECS * 50 {
                tick.tick().await;
                // 1 s of speech, 1 s of silence: interim and final results flow too.
                let frame = if (n / 50) % 2 == 0 { tone(n) } else { SILENCE };
                handle.send_audio(&frame);
                while events.try_recv().is_ok() {}
            }
            SttStats::get(&handle.stats().frames_dropped)
        }));
    }
    let mut dropped = 0;
    for t in tasks {
        dropped += t.await.expect("call");
    }
    let per_call_minute = (cpu_seconds() - cpu0) / (CALLS * SECS) as f64 * 60.0;
    eprintln!(
        "STT client + fake: {per_call_minute:.3} CPU-s per call-minute, ~{} KiB RSS per open session \
         ({CALLS} calls, {dropped} frames dropped)",
        rss_per_session / 1024
    );
    assert_eq!(dropped, 0);
    assert!(per_call_minute < 1.0, "{per_call_minute}");
}

#[tokio::test]
#[ignore = "measurement: cargo test --test integration services::measure -- --ignored --nocapture"]
async fn measure_llm_and_tts_first_byte_on_loopback() {
    let groq = FakeGroq::start().await;
    let client = llm(&groq, groq::API_KEY);
    let mut ttft = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let mut stream = client.stream_chat(hello_request());
        while let Some(Ok(e)) = stream.next().await {
            if matches!(e, LlmEvent::TextDelta(_)) && ttft.len() < 50 {
                ttft.push(started.elapsed());
                break;
            }
        }
    }
    let tts_fake = FakeDeepgramTts::start().await;
    // Deepgram allows 20 flushes a minute; this loop needs more.
    tts_fake.configure(|s| s.flush_limit = 1000);
    let (handle, mut events) = tts(&tts_fake, deepgram_tts::API_KEY).open(TtsOptions::default()).await.expect("tts");
    let mut ttfb = Vec::new();
    for n in 0..50 {
        let started = Instant::now();
        handle.speak(ReplyId(n), "A short sentence.");
        handle.flush(ReplyId(n));
        let seen = tts_until(&mut events, |e| matches!(e, TtsEvent::Flushed { .. })).await;
        let first =
            seen.iter()
                .find_map(|e| if let TtsEvent::Audio { received_at, .. } = e { Some(*received_at) } else { None });
        ttfb.push(first.expect("audio") - started);
    }
    let (l, t) = (median(ttft), median(ttfb));
    eprintln!("loopback, zero-delay fakes: LLM time to first token p50 {l:?}; TTS time to first byte p50 {t:?}");
    assert!(l < Duration::from_millis(50) && t < Duration::from_millis(50));
}
