//! The Twilio simulator (`switchboard simulate`) and the fake Twilio REST server, tested against
//! small scripted bots served on 127.0.0.1: webhook signing and routing, the Media Streams
//! messages it writes, mark echo timing, `clear`, underruns, turn latency, recording, bad input,
//! the load generator's summary, and the REST fake's auth, errors and call answering.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::{Form, Router};
use switchboard::audio::mulaw;
use switchboard::sim::{self, CallEnd, CallPlan, CallReport, CallerAudio, Segmentation, SimulateArgs};
use switchboard::telephony::twilio::media::{parse_event, StreamEvent};
use switchboard::telephony::twilio::rest::{NewCall, RestError, TwilioRest};
use switchboard::telephony::twilio::signature;
use switchboard::telephony::twilio::twiml::{Response as Twiml, Verb};
use tokio::time::Instant;
use url::Url;

use crate::support::twilio_rest::{Answer, FakeTwilio};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "sim-test-token";

// ---------------------------------------------------------------- audio helpers

fn tone(ms: u64, amplitude: f64) -> Vec<i16> {
    let n = (ms * 8) as usize;
    (0..n).map(|i| (amplitude * (i as f64 * 440.0 * std::f64::consts::TAU / 8000.0).sin()) as i16).collect()
}

fn silence(ms: u64) -> Vec<i16> {
    vec![0; (ms * 8) as usize]
}

/// 200 ms silence, 800 ms speech, 1 s silence: one utterance ending at 1000 ms.
fn one_utterance() -> Arc<CallerAudio> {
    let mut pcm = silence(200);
    pcm.extend(tone(800, 8000.0));
    pcm.extend(silence(1000));
    Arc::new(CallerAudio::from_pcm(&pcm, 8000, &Segmentation::default()).unwrap())
}

fn bot_frames(frames: usize) -> Vec<Vec<u8>> {
    let pcm = tone(20 * frames as u64, 6000.0);
    pcm.chunks(160).map(|c| c.iter().map(|&s| mulaw::encode(s)).collect()).collect()
}

fn rms(samples: impl Iterator<Item = i16>) -> f64 {
    let (sum, n) = samples.fold((0.0, 0usize), |(s, n), x| (s + f64::from(x) * f64::from(x), n + 1));
    (sum / n.max(1) as f64).sqrt()
}

/// Per-20 ms-frame RMS of the (left, right) channels of a stereo recording.
fn frame_levels(path: &Path) -> Vec<(f64, f64)> {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (2, 8000, 16));
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    samples
        .chunks(320)
        .map(|f| (rms(f.iter().step_by(2).copied()), rms(f.iter().skip(1).step_by(2).copied())))
        .collect()
}

// ---------------------------------------------------------------- a scripted bot

/// What the bot does once the stream has started.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// `frames` of audio at once, then mark "greeting".
    Greeting { frames: usize },
    /// 2 s of audio + mark "long"; clear after 300 ms; then 5 frames + mark "after".
    ClearMidway,
    /// 3 frames, a 120 ms stall, 3 frames, mark "end".
    LateChunk,
    /// Replies (10 frames + mark "reply") after 300 ms of caller silence following speech.
    ReplyAfterSilence,
    /// Malformed messages, then one good frame and a mark.
    Garbage,
    /// Closes the socket 200 ms after `start`.
    CloseEarly,
    /// Listens only.
    Silent,
}

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    event: String,
    seq: u64,
    chunk: u64,
    timestamp: u64,
    detail: String,
}

/// One webhook request: signature verdict (None = not checked), form, headers.
type WebhookSeen = (Option<bool>, Vec<(String, String)>, HeaderMap);

#[derive(Default)]
struct BotLog {
    webhooks: Vec<WebhookSeen>,
    ws_query: Option<String>,
    start: Option<switchboard::telephony::twilio::media::StartInfo>,
    seen: Vec<Seen>,
    /// When the bot sent its `clear`.
    clear_sent: Option<Instant>,
}

#[derive(Clone)]
struct Bot {
    /// Signature check: (URL the bot believes it is reached at, token). None = no check.
    verify: Option<(String, String)>,
    /// What the webhook answers.
    twiml: String,
    script: Script,
    log: Arc<Mutex<BotLog>>,
}

struct BotServer {
    base: String,
    log: Arc<Mutex<BotLog>>,
    _task: tokio::task::JoinHandle<()>,
}

impl BotServer {
    fn log(&self) -> std::sync::MutexGuard<'_, BotLog> {
        self.log.lock().unwrap()
    }

    fn seen(&self, event: &str) -> Vec<Seen> {
        self.log().seen.iter().filter(|s| s.event == event).cloned().collect()
    }
}

/// Starts a bot; `twiml` may contain `{ws}` for its own ws://127.0.0.1:PORT/ws.
async fn start_bot(script: Script, twiml: &str, verify: Option<(&str, &str)>) -> BotServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let log = Arc::new(Mutex::new(BotLog::default()));
    let bot = Bot {
        verify: verify.map(|(u, t)| (u.replace("{base}", &base), t.to_string())),
        twiml: twiml.replace("{ws}", &format!("ws://{addr}/ws")),
        script,
        log: Arc::clone(&log),
    };
    let app = Router::new()
        .route("/", post(webhook))
        .route("/incoming", post(webhook))
        .route("/twiml", post(webhook))
        .route("/ws", any(ws_upgrade))
        .with_state(bot);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    BotServer { base, log, _task: task }
}

fn stream_twiml(url: &str, params: &[(&str, &str)]) -> String {
    Twiml::new()
        .verb(Verb::ConnectStream {
            url: url.into(),
            parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
        .to_xml()
}

async fn webhook(State(bot): State<Bot>, headers: HeaderMap, Form(form): Form<Vec<(String, String)>>) -> Response {
    let valid = bot.verify.as_ref().map(|(url, token)| {
        let sig = headers.get(signature::SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        signature::is_valid(token, url, &form, sig)
    });
    bot.log.lock().unwrap().webhooks.push((valid, form, headers));
    if valid == Some(false) {
        return (StatusCode::FORBIDDEN, "bad signature").into_response();
    }
    ([("content-type", "text/xml")], bot.twiml.clone()).into_response()
}

async fn ws_upgrade(State(bot): State<Bot>, RawQuery(q): RawQuery, ws: WebSocketUpgrade) -> Response {
    bot.log.lock().unwrap().ws_query = q;
    ws.on_upgrade(move |socket| run_bot(bot, socket))
}

async fn send(socket: &mut WebSocket, text: String) {
    let _ = socket.send(Message::Text(text.into())).await;
}

fn media(sid: &str, audio: &[u8]) -> String {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.encode(audio);
    serde_json::json!({"event": "media", "streamSid": sid, "media": {"payload": payload}}).to_string()
}

fn mark(sid: &str, name: &str) -> String {
    serde_json::json!({"event": "mark", "streamSid": sid, "mark": {"name": name}}).to_string()
}

/// Reads until `start`, then runs the script while logging everything the simulator sends.
async fn run_bot(bot: Bot, mut socket: WebSocket) {
    let mut sid = String::new();
    let mut state = ReplyState::default();
    let mut deadline: Option<(Instant, u8)> = None;
    loop {
        let due = deadline;
        let timer = async move {
            match due {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(Message::Text(text))) = msg else { return };
                let Some(event) = log_event(&bot.log, text.as_str()) else { continue };
                match event {
                    Logged::Start(s) => {
                        sid = s;
                        deadline = on_start(&bot, &mut socket, &sid).await;
                    }
                    Logged::Media(level) => {
                        if matches!(bot.script, Script::ReplyAfterSilence) && state.on_frame(level) {
                            for f in bot_frames(10) {
                                send(&mut socket, media(&sid, &f)).await;
                            }
                            send(&mut socket, mark(&sid, "reply")).await;
                        }
                    }
                    Logged::Stop => return,
                    Logged::Other => {}
                }
            }
            () = timer => {
                let step = deadline.take().map(|(_, s)| s).unwrap_or(0);
                deadline = on_timer(&bot, &mut socket, &sid, step).await;
                if matches!(bot.script, Script::CloseEarly) {
                    return;
                }
            }
        }
    }
}

async fn on_start(bot: &Bot, socket: &mut WebSocket, sid: &str) -> Option<(Instant, u8)> {
    let later = |ms: u64, step: u8| Some((Instant::now() + Duration::from_millis(ms), step));
    match bot.script {
        Script::Greeting { frames } => {
            for f in bot_frames(frames) {
                send(socket, media(sid, &f)).await;
            }
            send(socket, mark(sid, "greeting")).await;
            None
        }
        Script::ClearMidway => {
            for f in bot_frames(100) {
                send(socket, media(sid, &f)).await;
            }
            send(socket, mark(sid, "long")).await;
            later(300, 1)
        }
        Script::LateChunk => {
            for f in bot_frames(3) {
                send(socket, media(sid, &f)).await;
            }
            later(120, 1)
        }
        Script::Garbage => {
            send(socket, "not json".into()).await;
            send(socket, r#"{"event":"media","media":{"payload":"AAAA"}}"#.into()).await;
            let _ = socket.send(Message::Binary(vec![1u8, 2, 3].into())).await;
            send(socket, serde_json::json!({"event": "bogus", "streamSid": sid}).to_string()).await;
            send(socket, media("MZwrong", &[0xFF; 160])).await;
            send(socket, media(sid, &bot_frames(1)[0])).await;
            send(socket, mark(sid, "ok")).await;
            None
        }
        Script::CloseEarly => later(200, 1),
        Script::ReplyAfterSilence | Script::Silent => None,
    }
}

async fn on_timer(bot: &Bot, socket: &mut WebSocket, sid: &str, _step: u8) -> Option<(Instant, u8)> {
    match bot.script {
        Script::ClearMidway => {
            send(socket, serde_json::json!({"event": "clear", "streamSid": sid}).to_string()).await;
            bot.log.lock().unwrap().clear_sent = Some(Instant::now());
            for f in bot_frames(5) {
                send(socket, media(sid, &f)).await;
            }
            send(socket, mark(sid, "after")).await;
        }
        Script::LateChunk => {
            for f in bot_frames(3) {
                send(socket, media(sid, &f)).await;
            }
            send(socket, mark(sid, "end")).await;
        }
        Script::CloseEarly => {
            let _ = socket.send(Message::Close(None)).await;
        }
        _ => {}
    }
    None
}

/// Detects the end of caller speech: 15 silent frames (300 ms) after at least one loud one.
#[derive(Default)]
struct ReplyState {
    heard_speech: bool,
    quiet: u32,
}

impl ReplyState {
    fn on_frame(&mut self, level: f64) -> bool {
        if level > 500.0 {
            self.heard_speech = true;
            self.quiet = 0;
            return false;
        }
        if !self.heard_speech {
            return false;
        }
        self.quiet += 1;
        if self.quiet == 15 {
            self.heard_speech = false;
            return true;
        }
        false
    }
}

enum Logged {
    Start(String),
    Media(f64),
    Stop,
    Other,
}

fn log_event(log: &Mutex<BotLog>, text: &str) -> Option<Logged> {
    let event = parse_event(text).ok()?;
    let at = Instant::now();
    let mut log = log.lock().unwrap();
    let mut seen = Seen { at, event: event.name().to_string(), seq: 0, chunk: 0, timestamp: 0, detail: String::new() };
    let result = match event {
        StreamEvent::Connected { protocol, version } => {
            seen.detail = format!("{protocol} {version}");
            Logged::Other
        }
        StreamEvent::Start { sequence_number, start } => {
            seen.seq = sequence_number;
            let sid = start.stream_sid.clone();
            log.start = Some(start);
            Logged::Start(sid)
        }
        StreamEvent::Media { sequence_number, media } => {
            seen.seq = sequence_number;
            seen.chunk = media.chunk;
            seen.timestamp = media.timestamp_ms;
            seen.detail = media.track.to_string();
            let mut codes = Vec::new();
            media.decode_into(&mut codes, 4096).ok()?;
            Logged::Media(rms(codes.iter().map(|&c| mulaw::decode(c))))
        }
        StreamEvent::Dtmf { sequence_number, digit } => {
            seen.seq = sequence_number;
            seen.detail = digit;
            Logged::Other
        }
        StreamEvent::Mark { sequence_number, name } => {
            seen.seq = sequence_number;
            seen.detail = name;
            Logged::Other
        }
        StreamEvent::Stop { sequence_number } => {
            seen.seq = sequence_number;
            Logged::Stop
        }
    };
    log.seen.push(seen);
    Some(result)
}

fn plan(bot: &BotServer, caller: Arc<CallerAudio>, hangup_ms: u64) -> CallPlan {
    let mut plan = CallPlan::new(Url::parse(&format!("{}/", bot.base)).unwrap(), caller);
    plan.account_sid = ACCOUNT.into();
    plan.hangup_after = Duration::from_millis(hangup_ms);
    plan
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    b.saturating_duration_since(a).as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_media_streams_messages_exactly_as_twilio_does() {
    let bot = start_bot(Script::Silent, &stream_twiml("{ws}", &[("token", "t<&>\"1")]), None).await;
    let mut p = plan(&bot, one_utterance(), 600);
    p.dtmf = vec!["0.1:12".parse().unwrap()];
    let report = sim::simulate_call(&p).await;
    assert_eq!(report.outcome, CallEnd::Completed, "{:?}", report.errors);
    assert_eq!(report.error_count, 0, "{:?}", report.errors);

    let log = bot.log();
    let events: Vec<&str> = log.seen.iter().map(|s| s.event.as_str()).collect();
    assert_eq!(events.first(), Some(&"connected"));
    assert_eq!(log.seen[0].detail, "Call 1.0.0");
    assert_eq!(events.get(1), Some(&"start"));
    assert_eq!(events.last(), Some(&"stop"));
    // Sequence numbers: 1 for start, then +1 for every later message.
    let seqs: Vec<u64> = log.seen[1..].iter().map(|s| s.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let start = log.start.as_ref().unwrap();
    assert!(start.stream_sid.starts_with("MZ") && start.stream_sid.len() == 34);
    assert_eq!((start.call_sid.as_str(), start.account_sid.as_str()), (p.call_sid.as_str(), ACCOUNT));
    assert_eq!(start.tracks, vec!["inbound".to_string()]);
    assert!(start.media_format.is_mulaw_8k_mono());
    assert_eq!(start.custom_parameters.get("token").map(String::as_str), Some("t<&>\"1"));
    // 600 ms = 30 frames, chunk 1.., timestamp (chunk − 1) × 20, track inbound.
    let media: Vec<&Seen> = log.seen.iter().filter(|s| s.event == "media").collect();
    assert_eq!(media.len(), 30);
    assert_eq!(report.media_frames_sent, 30);
    for (i, m) in media.iter().enumerate() {
        assert_eq!((m.chunk, m.timestamp, m.detail.as_str()), (i as u64 + 1, i as u64 * 20, "inbound"));
    }
    // Real-time pacing: 30 frames over ~600 ms, not dumped at once.
    let spread = ms_between(media[0].at, media[29].at);
    assert!((520.0..700.0).contains(&spread), "frames spread over {spread} ms");
    // DTMF digits 200 ms apart, in order.
    let dtmf: Vec<&Seen> = log.seen.iter().filter(|s| s.event == "dtmf").collect();
    assert_eq!(dtmf.iter().map(|d| d.detail.as_str()).collect::<Vec<_>>(), ["1", "2"]);
    let gap = ms_between(dtmf[0].at, dtmf[1].at);
    assert!((150.0..260.0).contains(&gap), "DTMF spacing {gap} ms");
    assert_eq!(report.dtmf_sent, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_come_back_when_their_audio_has_played_and_the_recording_shows_it() {
    let bot = start_bot(Script::Greeting { frames: 25 }, &stream_twiml("{ws}", &[]), None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = plan(&bot, one_utterance(), 1500);
    p.record = Some(dir.path().join("heard.wav"));
    let report = sim::simulate_call(&p).await;
    assert_eq!(report.outcome, CallEnd::Completed, "{:?}", report.errors);
    assert_eq!((report.bot_audio_bytes, report.bot_audio_played_ms), (25 * 160, 500));
    assert!(report.first_audio_ms.unwrap() < 150.0, "{:?}", report.first_audio_ms);
    assert_eq!((report.marks_received, report.marks_echoed, report.underruns, report.clears), (1, 1, 0, 0));
    let m = &report.marks[0];
    assert_eq!(m.name, "greeting");
    assert!(!m.cleared);
    let waited = m.echoed_ms.unwrap() - m.received_ms;
    assert!((470.0..620.0).contains(&waited), "mark echoed {waited} ms after it arrived (500 ms of audio)");
    // The bot saw its mark come back about 500 ms after the stream started.
    let echoed = bot.seen("mark");
    assert_eq!(echoed.len(), 1);
    assert_eq!(echoed[0].detail, "greeting");
    let since_start = ms_between(bot.seen("start")[0].at, echoed[0].at);
    assert!((470.0..650.0).contains(&since_start), "echo at {since_start} ms");

    // Recording: 1.5 s stereo; bot audio on the right exactly in frames 1..=25 (20–520 ms),
    // the caller's speech on the left in frames 10..50 (200–1000 ms).
    assert_eq!(report.recording.as_deref(), p.record.as_deref());
    let levels = frame_levels(p.record.as_ref().unwrap());
    assert_eq!(levels.len(), 75);
    let bot_frames: Vec<usize> = (0..levels.len()).filter(|&i| levels[i].1 > 1000.0).collect();
    // Audio that arrived before the first tick plays from frame 1 (20 ms); allow one tick of
    // scheduling slack on a loaded machine.
    let first = bot_frames[0];
    assert!((1..=2).contains(&first), "{bot_frames:?}");
    assert_eq!(bot_frames, (first..first + 25).collect::<Vec<_>>());
    let caller_frames: Vec<usize> = (0..levels.len()).filter(|&i| levels[i].0 > 1000.0).collect();
    assert_eq!(caller_frames, (10..50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_drops_queued_audio_and_returns_pending_marks_at_once() {
    let bot = start_bot(Script::ClearMidway, &stream_twiml("{ws}", &[]), None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut p = plan(&bot, one_utterance(), 1500);
    p.record = Some(dir.path().join("clear.wav"));
    let report = sim::simulate_call(&p).await;
    assert_eq!(report.outcome, CallEnd::Completed, "{:?}", report.errors);
    assert_eq!((report.clears, report.marks_received, report.marks_echoed), (1, 2, 2));
    let long = &report.marks[0];
    assert_eq!((long.name.as_str(), long.cleared), ("long", true));
    let after = &report.marks[1];
    assert_eq!((after.name.as_str(), after.cleared), ("after", false));
    // The pending mark came back right at the clear, not after its 2 s of audio.
    let clear_sent = bot.log().clear_sent.unwrap();
    let echoes = bot.seen("mark");
    assert_eq!(echoes.iter().map(|m| m.detail.as_str()).collect::<Vec<_>>(), ["long", "after"]);
    let delay = ms_between(clear_sent, echoes[0].at);
    assert!(delay < 80.0, "cleared mark returned {delay} ms after the clear");
    let after_wait = ms_between(echoes[0].at, echoes[1].at);
    assert!((70.0..200.0).contains(&after_wait), "5 frames after the clear played in {after_wait} ms");
    // About 300 ms played before the clear, 100 ms after; the 2 s reply was not heard.
    let played = report.bot_audio_played_ms;
    assert!((340..=480).contains(&played), "played {played} ms");
    let levels = frame_levels(p.record.as_ref().unwrap());
    let heard = levels.iter().filter(|l| l.1 > 1000.0).count() as u64;
    assert_eq!(heard * 20, played);
    assert!(levels[40..].iter().all(|l| l.1 < 1.0), "nothing plays after the clear's follow-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_chunk_inside_an_utterance_is_an_underrun() {
    let bot = start_bot(Script::LateChunk, &stream_twiml("{ws}", &[]), None).await;
    let report = sim::simulate_call(&plan(&bot, one_utterance(), 800)).await;
    assert_eq!(report.outcome, CallEnd::Completed, "{:?}", report.errors);
    assert_eq!(report.underruns, 1, "{report:?}");
    assert!((20..=140).contains(&report.underrun_ms), "gap {} ms", report.underrun_ms);
    assert_eq!(report.bot_audio_played_ms, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_latency_runs_from_the_end_of_the_callers_utterance_to_the_reply() {
    let bot = start_bot(Script::ReplyAfterSilence, &stream_twiml("{ws}", &[]), None).await;
    let report = sim::simulate_call(&plan(&bot, one_utterance(), 1800)).await;
    assert_eq!(report.outcome, CallEnd::Completed, "{:?}", report.errors);
    assert_eq!(report.utterances.len(), 1);
    assert_eq!(report.utterances[0].end_ms, 1000);
    assert_eq!(report.turns.len(), 1);
    // The bot answers after 15 silent frames: the 15th is sent at 1300 ms of call time.
    let latency = report.turns[0].latency_ms.expect("the bot replied");
    assert!((290.0..420.0).contains(&latency), "turn latency {latency} ms");
    assert_eq!(report.bot_spurts_ms.len(), 1);
    assert_eq!(report.first_audio_ms, Some(report.bot_spurts_ms[0]));
    assert_eq!(report.marks_echoed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bot_messages_are_counted_and_the_call_carries_on() {
    let bot = start_bot(Script::Garbage, &stream_twiml("{ws}", &[]), None).await;
    let report = sim::simulate_call(&plan(&bot, one_utterance(), 600)).await;
    assert_eq!(report.outcome, CallEnd::Completed);
    assert_eq!(report.error_count, 5, "{:?}", report.errors);
    let all = report.errors.join("\n");
    for needle in ["not json", "streamSid", "binary frame", "bogus", "unknown streamSid"] {
        assert!(all.contains(needle), "no error mentions {needle:?}: {all}");
    }
    assert_eq!((report.bot_audio_bytes, report.marks_echoed), (160, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_the_stream_early_ends_the_call_cleanly() {
    let bot = start_bot(Script::CloseEarly, &stream_twiml("{ws}", &[]), None).await;
    let report = sim::simulate_call(&plan(&bot, one_utterance(), 5000)).await;
    assert_eq!(report.outcome, CallEnd::ServerClosed);
    assert!(report.duration_ms < 2000.0, "{}", report.duration_ms);
    assert!(report.media_frames_sent >= 5 && report.media_frames_sent < 50, "{}", report.media_frames_sent);
    assert!(bot.seen("stop").is_empty(), "no stop on a closed socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_and_twiml_failures_are_reported_not_panicked() {
    // Signature required but the simulator has no token: 403.
    let bot = start_bot(Script::Silent, &stream_twiml("{ws}", &[]), Some(("{base}/", TOKEN))).await;
    let report = sim::simulate_call(&plan(&bot, one_utterance(), 500)).await;
    assert_eq!((report.outcome, report.webhook_status), (CallEnd::Failed, Some(403)));
    assert!(report.errors[0].contains("HTTP 403") && report.errors[0].contains("bad signature"), "{:?}", report.errors);

    // TwiML without a stream.
    let say = Twiml::new().verb(Verb::Say("hello".into())).verb(Verb::Hangup).to_xml();
    let bot = start_bot(Script::Silent, &say, None).await;
    let report = sim::simulate_call(&plan(&bot, one_utterance(), 500)).await;
    assert_eq!((report.outcome, report.webhook_status), (CallEnd::Failed, Some(200)));
    assert!(report.errors[0].contains("no <Connect><Stream>"), "{:?}", report.errors);

    // A stream URL nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("ws://{}/ws", closed.local_addr().unwrap());
    drop(closed);
    let bot = start_bot(Script::Silent, &stream_twiml(&dead, &[]), None).await;
    let report = sim::simulate_call(&plan(&bot, one_utterance(), 500)).await;
    assert_eq!(report.outcome, CallEnd::Failed);
    assert!(report.errors[0].contains("WebSocket connect"), "{:?}", report.errors);

    // Nothing listening for the webhook at all.
    let mut p = plan(&bot, one_utterance(), 500);
    p.webhook_url = Url::parse(&dead.replace("ws://", "http://")).unwrap();
    let report = sim::simulate_call(&p).await;
    assert_eq!((report.outcome, report.webhook_status), (CallEnd::Failed, None));
    assert!(report.errors[0].contains("could not be reached"), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_over_the_public_url_and_routes_public_names_to_the_local_server() {
    let twiml = stream_twiml("wss://bot.example.com/ws?room=7", &[("From", "+15005550006"), ("token", "abc.def")]);
    let bot =
        start_bot(Script::Greeting { frames: 5 }, &twiml, Some(("https://bot.example.com/incoming", TOKEN))).await;
    let mut p = plan(&bot, one_utterance(), 500);
    p.webhook_url = Url::parse("https://bot.example.com/incoming").unwrap();
    p.server = Some(Url::parse(&bot.base).unwrap());
    p.auth_token = Some(TOKEN.into());
    let report = sim::simulate_call(&p).await;
    assert_eq!(report.outcome, CallEnd::Completed, "{:?}", report.errors);
    assert_eq!(report.stream_url.as_deref(), Some(format!("{}/ws?room=7", bot.base.replace("http", "ws")).as_str()));
    let log = bot.log();
    let (valid, form, headers) = &log.webhooks[0];
    assert_eq!(*valid, Some(true));
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(field("CallSid"), Some(p.call_sid.as_str()));
    assert_eq!(field("AccountSid"), Some(ACCOUNT));
    assert_eq!((field("Direction"), field("CallStatus")), (Some("inbound"), Some("ringing")));
    assert_eq!(field("ApiVersion"), Some("2010-04-01"));
    assert_eq!(headers.get("x-forwarded-host").unwrap().to_str().unwrap(), "bot.example.com");
    assert_eq!(headers.get("x-forwarded-proto").unwrap().to_str().unwrap(), "https");
    assert_eq!(log.ws_query.as_deref(), Some("room=7"));
    let params = &log.start.as_ref().unwrap().custom_parameters;
    assert_eq!(
        (params.get("From").unwrap().as_str(), params.get("token").unwrap().as_str()),
        ("+15005550006", "abc.def")
    );
    assert_eq!(report.custom_parameters.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_drives_concurrent_calls_and_summarises_them() {
    let bot = start_bot(Script::Greeting { frames: 10 }, &stream_twiml("{ws}", &[]), Some(("{base}/", TOKEN))).await;
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("caller.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for s in silence(400).into_iter().chain(tone(300, 9000.0)).chain(silence(300)) {
        // Written at 16 kHz: each 8 kHz sample twice.
        w.write_sample(s).unwrap();
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let args = SimulateArgs {
        server: Url::parse(&bot.base).unwrap(),
        caller: wav,
        record: Some(dir.path().join("out.wav")),
        calls: 3,
        ramp: 0.2,
        public_url: None,
        webhook_path: "/".into(),
        auth_token: Some(TOKEN.into()),
        account_sid: Some(ACCOUNT.into()),
        from: "+15005550006".into(),
        to: "+15005550001".into(),
        hangup_after: Some(1.2),
        dtmf: Vec::new(),
        min_silence_ms: 400,
        no_media_after_audio: false,
    };
    let summary = sim::run(args).await.unwrap();
    assert!(summary.all_ok(), "{}", summary.to_json());
    let agg = &summary.aggregate;
    assert_eq!((agg.calls, agg.completed, agg.marks_echoed, agg.underruns), (3, 3, 3, 0));
    assert_eq!(agg.bot_audio_bytes, 3 * 10 * 160);
    assert_eq!(agg.first_audio_ms.count, 3);
    assert!(agg.first_audio_ms.p95.unwrap() < 200.0, "{:?}", agg.first_audio_ms);
    let sids: std::collections::HashSet<&str> = summary.calls.iter().map(|c| c.call_sid.as_str()).collect();
    assert_eq!(sids.len(), 3);
    for (i, name) in ["out.wav", "out-1.wav", "out-2.wav"].iter().enumerate() {
        let path = dir.path().join(name);
        assert_eq!(summary.calls[i].recording.as_deref(), Some(path.as_path()));
        assert_eq!(frame_levels(&path).len(), 60);
    }
    // The 16 kHz file was resampled: its one utterance ends at 700 ms.
    assert_eq!(summary.calls[0].utterances.len(), 1);
    assert!(summary.calls[0].utterances[0].end_ms.abs_diff(700) <= 20);
    assert!(summary.generator.as_ref().unwrap().cpu_ms.is_some());
    let json: serde_json::Value = serde_json::from_str(&summary.to_json()).unwrap();
    assert_eq!(json["aggregate"]["calls"], 3);
    assert_eq!(json["calls"][0]["outcome"], "completed");
    // Bad arguments are refused up front.
    let mut bad = SimulateArgs { calls: 0, ..sim_args_for(&bot, dir.path()) };
    assert!(sim::run(bad.clone()).await.is_err());
    bad.calls = 1;
    bad.caller = dir.path().join("missing.wav");
    assert!(sim::run(bad).await.is_err());
}

fn sim_args_for(bot: &BotServer, dir: &Path) -> SimulateArgs {
    SimulateArgs {
        server: Url::parse(&bot.base).unwrap(),
        caller: dir.join("caller.wav"),
        record: None,
        calls: 1,
        ramp: 0.0,
        public_url: None,
        webhook_path: "/".into(),
        auth_token: None,
        account_sid: None,
        from: "+15005550006".into(),
        to: "+15005550001".into(),
        hangup_after: None,
        dtmf: Vec::new(),
        min_silence_ms: 400,
        no_media_after_audio: false,
    }
}

// ---------------------------------------------------------------- the fake Twilio REST server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_rest_authenticates_validates_and_answers_like_twilio() {
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let wrong = TwilioRest::new(fake.base_url(), ACCOUNT, "nope").unwrap();
    match wrong.fetch_call("CA00000000000000000000000000000000").await {
        Err(RestError::Api { status: 401, code: Some(20003), more_info, .. }) => {
            assert_eq!(more_info.as_deref(), Some("https://www.twilio.com/docs/errors/20003"));
        }
        other => panic!("expected 401/20003, got {other:?}"),
    }
    let rest = TwilioRest::new(fake.base_url(), ACCOUNT, TOKEN).unwrap();
    let unknown = rest.fetch_call("CAffffffffffffffffffffffffffffffff").await.unwrap_err();
    assert!(matches!(unknown, RestError::Api { status: 404, code: Some(20404), .. }), "{unknown:?}");
    assert!(rest.end_call("CAffffffffffffffffffffffffffffffff").await.is_ok(), "an ended call counts as done");

    fake.seed_call("CA11111111111111111111111111111111", "+15005550006", "+15005550001", "inbound", "in-progress");
    let call = rest.fetch_call("CA11111111111111111111111111111111").await.unwrap();
    assert_eq!(
        (call.from.as_str(), call.to.as_str(), call.direction.as_str()),
        ("+15005550006", "+15005550001", "inbound")
    );

    // A slow Twilio.
    fake.set_delay(Duration::from_millis(300));
    let began = Instant::now();
    rest.fetch_call("CA11111111111111111111111111111111").await.unwrap();
    assert!(began.elapsed() >= Duration::from_millis(300));
    fake.set_delay(Duration::ZERO);

    let bad_to =
        NewCall { to: "5551234", from: "+15005550006", twiml_url: "https://x.example/twiml", status_callback: None };
    let err = rest.create_call(&bad_to).await.unwrap_err();
    assert_eq!(err.twilio_code(), Some(21211));

    fake.fail_next(1, 503, 20503, "Service Unavailable");
    let good = NewCall {
        to: "+15005550001",
        from: "+15005550006",
        twiml_url: "https://x.example/twiml",
        status_callback: None,
    };
    assert_eq!(rest.create_call(&good).await.unwrap_err().twilio_code(), Some(20503));
    let created = rest.create_call(&good).await.unwrap();
    assert!(created.sid.starts_with("CA") && created.sid.len() == 34);
    assert_eq!((created.status.as_str(), created.direction.as_str()), ("queued", "outbound-api"));
    assert_eq!(fake.call(&created.sid).unwrap().url.as_deref(), Some("https://x.example/twiml"));

    rest.update_twiml(&created.sid, "<Response><Dial>+15005550009</Dial></Response>").await.unwrap();
    assert!(fake.call(&created.sid).unwrap().twiml.unwrap().contains("<Dial>"));
    rest.end_call(&created.sid).await.unwrap();
    assert_eq!(fake.call(&created.sid).unwrap().status, "completed");

    // Recordings, with a plain client.
    let http = reqwest::Client::new();
    let rec_url = |sid: &str| format!("{}/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}/Recordings.json", fake.base_url());
    let resp = http
        .post(rec_url(&created.sid))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("RecordingChannels", "dual")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["sid"].as_str().unwrap().starts_with("RE"));
    assert_eq!((body["call_sid"].as_str(), body["channels"].as_u64()), (Some(created.sid.as_str()), Some(2)));
    let resp =
        http.post(rec_url("CA22222222222222222222222222222222")).basic_auth(ACCOUNT, Some(TOKEN)).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Every request was recorded with its method, path, user and form.
    let requests = fake.requests();
    assert_eq!(requests.len(), 12);
    assert_eq!((requests[0].auth_user.as_deref(), requests[0].authorized), (Some(ACCOUNT), false));
    let create = requests.iter().rev().find(|r| r.path.ends_with("/Calls.json")).unwrap();
    assert_eq!(create.method, "POST");
    assert_eq!(create.path, format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"));
    assert_eq!(
        (create.field("To"), create.field("From"), create.field("Url"), create.field("Method")),
        (Some("+15005550001"), Some("+15005550006"), Some("https://x.example/twiml"), Some("POST"))
    );
    let end = &requests[requests.len() - 3];
    assert_eq!((end.method.as_str(), end.field("Status")), ("POST", Some("completed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_rest_answers_created_calls_by_running_the_simulator() {
    let bot = start_bot(
        Script::Greeting { frames: 5 },
        &stream_twiml("{ws}", &[("direction", "outbound")]),
        Some(("{base}/twiml", TOKEN)),
    )
    .await;
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let mut answer = Answer::new(one_utterance());
    answer.hangup_after = Some(Duration::from_millis(800));
    fake.answer_calls(answer);
    let rest = TwilioRest::new(fake.base_url(), ACCOUNT, TOKEN).unwrap();
    let twiml_url = format!("{}/twiml", bot.base);
    let call = rest
        .create_call(&NewCall {
            to: "+15005550001",
            from: "+15005550006",
            twiml_url: &twiml_url,
            status_callback: None,
        })
        .await
        .unwrap();
    let report: CallReport = fake.wait_answered(&call.sid, Duration::from_secs(10)).await.expect("answered");
    assert_eq!((report.outcome, report.webhook_status), (CallEnd::Completed, Some(200)), "{:?}", report.errors);
    assert_eq!((report.call_sid.as_str(), report.marks_echoed), (call.sid.as_str(), 1));
    assert_eq!(fake.call(&call.sid).unwrap().status, "completed");
    let log = bot.log();
    let (valid, form, _) = &log.webhooks[0];
    assert_eq!(*valid, Some(true), "signed over the exact Url");
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!((field("CallSid"), field("Direction")), (Some(call.sid.as_str()), Some("outbound-api")));
    assert_eq!((field("From"), field("To")), (Some("+15005550006"), Some("+15005550001")));
    assert_eq!(log.start.as_ref().unwrap().custom_parameters.get("direction").map(String::as_str), Some("outbound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_call_through_rest_ends_its_stream() {
    let bot = start_bot(Script::Silent, &stream_twiml("{ws}", &[]), None).await;
    let fake = FakeTwilio::start(ACCOUNT, TOKEN).await;
    let rest = TwilioRest::new(fake.base_url(), ACCOUNT, TOKEN).unwrap();
    // An inbound call the server will end through REST.
    let mut p = plan(&bot, one_utterance(), 30_000);
    fake.seed_call(&p.call_sid, &p.from, &p.to, "inbound", "in-progress");
    p.end_signal = Some(fake.end_signal(&p.call_sid));
    let sid = p.call_sid.clone();
    let running = tokio::spawn(async move { sim::simulate_call(&p).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    rest.end_call(&sid).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(5), running).await.expect("ended promptly").unwrap();
    assert_eq!(report.outcome, CallEnd::EndedByApi);
    assert!(report.duration_ms < 3000.0, "{}", report.duration_ms);
    assert_eq!(bot.seen("stop").len(), 1, "Twilio sends stop when the call ends");
    assert_eq!(fake.call(&sid).unwrap().status, "completed");
}
