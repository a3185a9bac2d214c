//! The browser playground: a real call from headless Chromium with a fake microphone against the
//! server running the conversation engine on the provider fakes, and — over plain HTTP and
//! WebSockets — its access control, its live event feed and how a playground stream ends
//! without Twilio.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchboard::call::events::{CallEvent, CallEventSink};
use switchboard::call::{CallInfo, CallOutput, Direction};
use switchboard::config::Overrides;
use switchboard::history::HistoryOptions;
use switchboard::metrics::Metrics;
use switchboard::persona::{
    Action, BuiltinPersona, CallSummary, HookFuture, Persona, PersonaIdentity, PersonaProvider, PersonaSetup,
    ToolOutcome,
};
use switchboard::telephony::twilio::media::{parse_bot_message, twilio_side, BotMessage, MediaFormat, StartInfo};
use tokio_tungstenite::tungstenite::Message;

use crate::conversation::engine_with_fakes;
use crate::fakes::deepgram_stt::FakeDeepgramStt;
use crate::fakes::deepgram_tts::FakeDeepgramTts;
use crate::fakes::groq::{FakeGroq, Reply};
use crate::harness::{ProbeSessions, TestServer, ACCOUNT_SID, AUTH_TOKEN};
use crate::history::{flush, open_history};
use crate::support::browser;
use crate::support::twilio_rest::FakeTwilio;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const T: Duration = Duration::from_secs(5);
/// What the fake microphone says, and what the fake STT hears.
const USER_TEXT: &str = "What time is it?";
const GREETING: &str = "Hello, I am your tutor.";

/// Offers one plugin-like persona, `tutor`, and records the calls it was asked for.
#[derive(Default)]
struct Personas {
    seen: Mutex<Vec<CallInfo>>,
}

impl PersonaProvider for Personas {
    fn persona_for(&self, call: &CallInfo) -> Box<dyn Persona> {
        self.seen.lock().unwrap().push(call.clone());
        let name = call.persona.clone().filter(|p| p == "tutor");
        Box::new(Named { name, inner: BuiltinPersona::new() })
    }

    fn names(&self) -> Vec<String> {
        vec!["tutor".into()]
    }
}

/// The built-in behaviour under the name the call asked for.
struct Named {
    name: Option<String>,
    inner: BuiltinPersona,
}

impl Persona for Named {
    fn identity(&self) -> PersonaIdentity {
        match &self.name {
            Some(n) => PersonaIdentity { name: n.clone(), version: Some("test".into()) },
            None => PersonaIdentity::builtin(),
        }
    }
    fn setup<'a>(&'a mut self, call: &'a CallInfo) -> HookFuture<'a, PersonaSetup> {
        self.inner.setup(call)
    }
    fn on_user_turn<'a>(&'a mut self, transcript: &'a str) -> HookFuture<'a, Action> {
        self.inner.on_user_turn(transcript)
    }
    fn on_idle(&mut self, attempt: u32) -> HookFuture<'_, Action> {
        self.inner.on_idle(attempt)
    }
    fn on_tool_call<'a>(&'a mut self, n: &'a str, args: &'a str) -> HookFuture<'a, Result<ToolOutcome, String>> {
        self.inner.on_tool_call(n, args)
    }
    fn on_dtmf<'a>(&'a mut self, digits: &'a str) -> HookFuture<'a, Action> {
        self.inner.on_dtmf(digits)
    }
    fn on_call_end<'a>(&'a mut self, summary: &'a CallSummary) -> HookFuture<'a, ()> {
        self.inner.on_call_end(summary)
    }
}

/// Every call event the server reported.
#[derive(Default)]
struct EventLog(Mutex<Vec<(String, CallEvent)>>);

impl CallEventSink for EventLog {
    fn record(&self, call_sid: &str, event: &CallEvent) {
        self.0.lock().unwrap().push((call_sid.to_string(), event.clone()));
    }
}

fn twilio_env(rest: &FakeTwilio) -> Vec<(&'static str, String)> {
    vec![
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_string()),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.to_string()),
        ("TWILIO_API_BASE_URL", rest.base_url().to_string()),
    ]
}

fn borrow_env<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A mic recording: a pause (the greeting plays), the question, then silence until hang-up.
/// 16-bit PCM: Chromium's fake microphone plays 24-bit or μ-law WAVs as silence.
fn mic_wav(dir: &Path) -> PathBuf {
    let speech = dir.join("speech.wav");
    let mic = dir.join("mic.wav");
    let ok = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(&speech)
        .arg(USER_TEXT)
        .status()
        .expect("espeak-ng runs (scripts/setup.sh installs it)")
        .success();
    assert!(ok, "espeak-ng failed");
    let ok = std::process::Command::new("sox")
        .arg(&speech)
        .args(["-b", "16"])
        .arg(&mic)
        .args(["pad", "3", "15"])
        .status()
        .expect("sox runs (scripts/setup.sh installs it)")
        .success();
    assert!(ok, "sox failed");
    mic
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_call_in_headless_chromium() {
    if let Some(problem) = browser::missing_prerequisites() {
        panic!("{problem}");
    }
    let stt = FakeDeepgramStt::start().await;
    let tts = FakeDeepgramTts::start().await;
    let groq = FakeGroq::start().await;
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    stt.script(&[USER_TEXT]);
    groq.script([Reply::Text(GREETING.into())]);
    let recordings = tempfile::tempdir().unwrap();
    let personas = Arc::new(Personas::default());
    let metrics = Arc::new(Metrics::new());
    let conversation = engine_with_fakes(&stt, &tts, &groq, personas.clone(), metrics.clone(), recordings.path());
    let env = twilio_env(&rest);
    let data = tempfile::tempdir().unwrap();
    let history = open_history(data.path(), HistoryOptions::default(), metrics.clone());
    let server = TestServer::start_customised(
        &borrow_env(&env),
        Overrides::default(),
        Arc::new(conversation),
        metrics,
        |state| state.with_history(&history),
    )
    .await;
    let events = Arc::new(EventLog::default());
    server.state.events.add_sink(events.clone());

    let work = tempfile::tempdir().unwrap();
    let mic = mic_wav(work.path());
    let result = work.path().join("state.json");
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("playground.png");
    let started = std::time::Instant::now();
    browser::run_node_tests(
        &["audio.test.mjs", "playground.test.mjs"],
        &[
            ("BASE_URL", server.base.as_str()),
            ("MIC_WAV", mic.to_str().unwrap()),
            ("PERSONA", "tutor"),
            ("USER_TEXT", USER_TEXT),
            ("SCREENSHOT", screenshot.to_str().unwrap()),
            ("RESULT_JSON", result.to_str().unwrap()),
        ],
        Duration::from_secs(60),
    )
    .await;
    eprintln!("browser test took {:?}", started.elapsed());
    // `UPDATE_SCREENSHOTS=1` refreshes the one in the docs.
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/img/playground.png");
        std::fs::copy(&screenshot, docs).expect("copy the screenshot into docs/img");
    }

    // The server side of the same call.
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    let call_sid = state["callSid"].as_str().expect("the page knew its call sid").to_string();
    assert!(call_sid.starts_with("PG") && call_sid.len() == 34, "{call_sid}");
    for _ in 0..100 {
        if server.state.drain.active() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.state.drain.active(), 0, "the call is over on the server too");
    // The persona the page picked served the call, which ran as an inbound call from the browser.
    let seen = personas.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!((seen[0].persona.as_deref(), seen[0].direction), (Some("tutor"), Direction::Inbound));
    assert_eq!((seen[0].from.as_str(), seen[0].to.as_str()), ("browser", "playground"));
    // The LLM heard the caller's words.
    let heard = groq.requests().iter().any(|r| {
        r.body["messages"].as_array().unwrap().iter().any(|m| m["role"] == "user" && m["content"] == USER_TEXT)
    });
    assert!(heard, "the LLM got the caller's words: {:?}", groq.requests().iter().map(|r| &r.body).collect::<Vec<_>>());
    // The transcript is on disk, named by the call sid.
    let transcript = std::fs::read_dir(recordings.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .expect("a transcript file");
    assert!(transcript.file_name().unwrap().to_string_lossy().contains(&call_sid), "{transcript:?}");
    let lines: Vec<Value> =
        std::fs::read_to_string(&transcript).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["role"] == "user" && l["text"] == USER_TEXT), "{lines:?}");
    assert!(lines.iter().any(|l| l["role"] == "assistant" && l["text"] == GREETING), "{lines:?}");
    // Started as a playground call, ended cleanly by the caller.
    let log = events.0.lock().unwrap().clone();
    assert!(log.iter().all(|(sid, _)| *sid == call_sid), "one call");
    assert!(
        matches!(&log[0].1, CallEvent::Started { direction, requested_persona: Some(p), .. } if direction == "playground" && p == "tutor"),
        "{:?}",
        log[0]
    );
    assert!(
        matches!(&log.last().unwrap().1, CallEvent::Ended { outcome, .. } if outcome == "caller_hung_up"),
        "{:?}",
        log.last()
    );
    // And Twilio was never involved.
    assert!(rest.requests().is_empty(), "no Twilio REST calls: {:?}", rest.requests());
    // The call is in the history, as a playground call.
    flush(&history).await;
    let call: Value =
        reqwest::get(format!("{}/api/calls/{call_sid}", server.base)).await.unwrap().json().await.unwrap();
    assert_eq!(call["direction"], "playground", "{call}");
    assert_eq!(call["requested_persona"], "tutor", "{call}");
    assert_eq!(call["persona"]["name"], "tutor", "{call}");
    assert_eq!(call["outcome"], "caller_hung_up", "{call}");
    let answered = call["lines"].as_array().unwrap().iter().any(|l| {
        l["role"] == "assistant" && l["latency"]["voice_to_voice_ms"].is_f64() && l["latency"]["stt_final_ms"].is_f64()
    });
    assert!(answered, "an answered turn with its latencies: {call}");
}

// --- over plain HTTP and WebSockets ------------------------------------------------------------

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A server whose calls go to the probe sessions, with a fake Twilio REST API.
async fn probe_server(
    extra_env: &[(&'static str, &str)],
) -> (TestServer, FakeTwilio, tokio::sync::mpsc::UnboundedReceiver<crate::harness::ProbeCall>) {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let (sessions, calls) = ProbeSessions::new();
    let mut env = twilio_env(&rest);
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.to_string())));
    let server = TestServer::start(&borrow_env(&env), Overrides::default(), sessions).await;
    (server, rest, calls)
}

/// `POST /playground/call` from loopback; the JSON answer.
async fn set_up_call(server: &TestServer, persona: &str) -> Value {
    let resp = client()
        .post(format!("{}/playground/call", server.base))
        .json(&serde_json::json!({ "persona": persona }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn start_of(setup: &Value) -> StartInfo {
    let custom: BTreeMap<String, String> = setup["parameters"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    StartInfo {
        account_sid: setup["account_sid"].as_str().unwrap().into(),
        stream_sid: setup["stream_sid"].as_str().unwrap().into(),
        call_sid: setup["call_sid"].as_str().unwrap().into(),
        tracks: vec!["inbound".into()],
        custom_parameters: custom,
        media_format: MediaFormat::twilio_mulaw(),
    }
}

async fn open_stream(server: &TestServer, start: &StartInfo) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.expect("ws connect");
    ws.send(Message::text(twilio_side::connected())).await.unwrap();
    ws.send(Message::text(twilio_side::start(1, start))).await.unwrap();
    ws
}

/// The server's close frame: (code, reason).
async fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("server closes in time") {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (0, String::new()),
            Some(Ok(_)) => continue,
        }
    }
}

/// The SSE messages' JSON, read until the server ends the stream.
async fn sse_events(resp: reqwest::Response) -> Vec<Value> {
    let body = tokio::time::timeout(T, resp.text()).await.expect("the feed ends after the call").unwrap();
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect()
}

/// The SSE messages as (id, JSON), read until the server ends the stream.
async fn sse_messages(resp: reqwest::Response) -> Vec<(u64, Value)> {
    let body = tokio::time::timeout(T, resp.text()).await.expect("the feed ends after the call").unwrap();
    body.split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| block.lines().find_map(|l| l.strip_prefix(name));
            Some((field("id: ")?.parse().unwrap(), serde_json::from_str(field("data: ")?).unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn a_reconnecting_viewer_gets_only_the_events_after_its_last_id() {
    let (server, _rest, mut calls) = probe_server(&[]).await;
    let c = client();
    let setup = set_up_call(&server, "built-in").await;
    let url = format!("{}{}", server.base, setup["events_url"].as_str().unwrap());
    let first = c.get(&url).send().await.unwrap();
    let start = start_of(&setup);
    let mut ws = open_stream(&server, &start).await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    // The browser lost its connection after event 1 (`started`) and comes back.
    let again = c.get(&url).header("Last-Event-ID", "1").send().await.unwrap();
    assert_eq!(again.status(), 200);
    // Garbage counts as no id: everything again.
    let garbage = c.get(&url).header("Last-Event-ID", "yesterday").send().await.unwrap();
    call.outputs.send(CallOutput::HangUp { reason: "goodbye".into() }).await.unwrap();
    assert_eq!(close_of(&mut ws).await.0, 1000);
    let kinds = |m: &[(u64, Value)]| -> Vec<(u64, String)> {
        m.iter().map(|(id, v)| (*id, v["type"].as_str().unwrap().to_string())).collect()
    };
    let all = [(1, "started".to_string()), (2, "ended".to_string())];
    assert_eq!(kinds(&sse_messages(first).await), all);
    assert_eq!(kinds(&sse_messages(again).await), all[1..], "nothing it had seen");
    assert_eq!(kinds(&sse_messages(garbage).await), all);
}

#[tokio::test]
async fn playground_access_is_local_only_unless_a_key_is_given() {
    let (server, _rest, _calls) = probe_server(&[]).await;
    let c = client();
    let page = c.get(format!("{}/playground", server.base)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Switchboard playground"));
    let js = c.get(format!("{}/playground/assets/app.js", server.base)).send().await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    let personas: Value =
        c.get(format!("{}/playground/personas", server.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(personas["personas"], serde_json::json!(["built-in"]));
    // Through a proxy (a tunnel connects from loopback too): not local, and no key is set.
    for (h, v) in
        [("x-forwarded-for", "203.0.113.9"), ("forwarded", "for=203.0.113.9"), ("x-forwarded-host", "x.ngrok.app")]
    {
        let resp = c.get(format!("{}/playground", server.base)).header(h, v).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{h}");
        assert!(resp.text().await.unwrap().contains("PLAYGROUND_KEY"));
    }
    let resp = c
        .post(format!("{}/playground/call", server.base))
        .header("x-forwarded-for", "203.0.113.9")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Bad requests from a local visitor get a reason.
    let resp = c
        .post(format!("{}/playground/call", server.base))
        .json(&serde_json::json!({"persona": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("built-in"), "the error lists what is available");
    let resp = c.get(format!("{}/playground/events/PGnope", server.base)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = c.get(format!("{}/playground/assets/../../Cargo.toml", server.base)).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // With a key: `?key=` once gives a cookie and a redirect that drops the key from the URL.
    let (server, _rest, _calls) = probe_server(&[("PLAYGROUND_KEY", "open-sesame")]).await;
    let remote = |req: reqwest::RequestBuilder| req.header("x-forwarded-for", "203.0.113.9");
    let resp = remote(c.get(format!("{}/playground", server.base))).send().await.unwrap();
    assert_eq!(resp.status(), 401, "a key is needed");
    let resp = remote(c.get(format!("{}/playground?key=wrong", server.base))).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = remote(c.get(format!("{}/playground?key=open-sesame", server.base))).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/playground");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("open-sesame"), "the cookie holds a digest, not the key");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let resp = remote(c.get(format!("{}/playground", server.base))).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = remote(c.get(format!("{}/playground/personas", server.base)))
        .header("cookie", "switchboard_playground=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A bearer key works for scripts.
    let resp = remote(c.post(format!("{}/playground/call", server.base)))
        .bearer_auth("open-sesame")
        .json(&serde_json::json!({"persona": "built-in"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let setup: Value = resp.json().await.unwrap();
    assert!(setup["call_sid"].as_str().unwrap().starts_with("PG"));
    assert_eq!(setup["parameters"]["direction"], "playground");
    assert!(setup["parameters"]["token"].as_str().unwrap().starts_with("v1."));
}

#[tokio::test]
async fn a_tampered_or_replayed_playground_token_is_refused_on_ws() {
    let (server, _rest, mut calls) = probe_server(&[]).await;
    let setup = set_up_call(&server, "built-in").await;
    // A browser can't turn its playground stream into something else, or pick another persona.
    for (name, value) in [("direction", "inbound"), ("persona", "admin"), ("from", "+15550001111")] {
        let mut start = start_of(&setup);
        start.custom_parameters.insert(name.into(), value.into());
        let mut ws = open_stream(&server, &start).await;
        assert_eq!(close_of(&mut ws).await.0, 1008, "{name} altered");
    }
    let mut start = start_of(&setup);
    start.call_sid = "PG00000000000000000000000000000000".into();
    assert_eq!(close_of(&mut open_stream(&server, &start).await).await.0, 1008, "another call's sid");
    // The genuine parameters work once.
    let start = start_of(&setup);
    let mut ws = open_stream(&server, &start).await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    assert_eq!(call.info.call_sid, start.call_sid);
    ws.send(Message::text(twilio_side::stop(9, &start.stream_sid, &start.account_sid, &start.call_sid))).await.unwrap();
    assert_eq!(close_of(&mut ws).await, (1000, "caller_hung_up".into()));
    assert_eq!(close_of(&mut open_stream(&server, &start).await).await.0, 1008, "a token is single-use");
}

#[tokio::test]
async fn a_playground_call_ends_without_twilio_and_its_events_stream_live() {
    let (server, rest, mut calls) = probe_server(&[]).await;
    let c = client();
    for (output, outcome, detail) in [
        (CallOutput::HangUp { reason: "goodbye".into() }, "bot_hung_up", "goodbye"),
        (CallOutput::Transfer { to: "+15550009999".into() }, "transferred", "+15550009999"),
    ] {
        let setup = set_up_call(&server, "built-in").await;
        let feed = c.get(format!("{}{}", server.base, setup["events_url"].as_str().unwrap())).send().await.unwrap();
        assert_eq!(feed.status(), 200);
        assert_eq!(feed.headers()["content-type"], "text/event-stream");
        let start = start_of(&setup);
        let mut ws = open_stream(&server, &start).await;
        let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
        assert_eq!(call.info.direction, Direction::Inbound);
        assert_eq!(call.info.persona.as_deref(), Some("built-in"));
        assert!(call.info.parameters.is_empty(), "the transport's own parameters are not the persona's");
        // Bot audio and a mark reach the page as Twilio would send them.
        call.outputs.send(CallOutput::Audio(vec![0x7f; 320])).await.unwrap();
        call.outputs.send(CallOutput::Mark("m1".into())).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            match tokio::time::timeout(T, ws.next()).await.unwrap().unwrap().unwrap() {
                Message::Text(t) => got.push(parse_bot_message(&t).unwrap()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            matches!(&got[2], BotMessage::Mark { name, stream_sid } if name == "m1" && *stream_sid == start.stream_sid)
        );
        call.outputs.send(output).await.unwrap();
        assert_eq!(close_of(&mut ws).await, (1000, outcome.to_string()), "the close says how the call ended");
        let events = sse_events(feed).await;
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["started", "ended"], "{events:?}");
        assert_eq!(events[0]["direction"], "playground");
        assert_eq!(events[0]["requested_persona"], "built-in");
        assert_eq!((events[1]["outcome"].as_str(), events[1]["detail"].as_str()), (Some(outcome), Some(detail)));
    }
    assert!(rest.requests().is_empty(), "no hang-up or transfer via Twilio REST: {:?}", rest.requests());
}
