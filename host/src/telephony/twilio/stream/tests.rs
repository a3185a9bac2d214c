//! The Media Streams transport over in-memory channels: no socket, no Twilio, no models.

use std::sync::Mutex;

use super::*;
use crate::call::control::CallControl;
use crate::telephony::twilio::media::{twilio_side, MediaFormat};
use futures_util::future::BoxFuture;

/// A session that records what it was given, echoes each DTMF digit back as a mark, hangs up
/// on `#`, and says one second of audio when the stream starts.
#[derive(Default)]
struct Recorder {
    inputs: Arc<Mutex<Vec<CallInput>>>,
}

impl SessionFactory for Recorder {
    fn start(&self, _info: CallInfo, mut io: SessionIo) -> crate::call::SessionFuture {
        let inputs = self.inputs.clone();
        Box::pin(async move {
            let _ = io.output.send(CallOutput::Audio(vec![0xFF; 8000])).await;
            let _ = io.output.send(CallOutput::Mark("greeting".into())).await;
            while let Some(input) = io.input.recv().await {
                let hang_up = input == CallInput::Dtmf("#".into());
                inputs.lock().unwrap().push(input);
                if hang_up {
                    let _ = io.output.send(CallOutput::HangUp { reason: "caller pressed #".into() }).await;
                }
            }
        })
    }
}

/// A call control that records what the transport asked of it.
#[derive(Default)]
struct Spy {
    asked: Mutex<Vec<String>>,
    close: &'static str,
}

impl CallControl for Spy {
    fn complete_info<'a>(&'a self, info: &'a mut CallInfo) -> BoxFuture<'a, ()> {
        info.from = "+15550001111".into();
        Box::pin(std::future::ready(()))
    }
    fn hang_up<'a>(&'a self, info: &'a CallInfo, reason: &'a str) -> BoxFuture<'a, ()> {
        self.asked.lock().unwrap().push(format!("hang_up {} {reason}", info.call_sid));
        Box::pin(std::future::ready(()))
    }
    fn transfer<'a>(&'a self, _info: &'a CallInfo, to: &'a str) -> BoxFuture<'a, ()> {
        self.asked.lock().unwrap().push(format!("transfer {to}"));
        Box::pin(std::future::ready(()))
    }
    fn close_reason(&self, _outcome: &Outcome) -> String {
        self.close.to_string()
    }
}

struct Rig {
    to_server: mpsc::UnboundedSender<WsIn>,
    from_server: mpsc::UnboundedReceiver<WsOut>,
    inputs: Arc<Mutex<Vec<CallInput>>>,
    phone: Arc<Spy>,
    browser: Arc<Spy>,
    metrics: Arc<Metrics>,
    done: tokio::task::JoinHandle<Result<Outcome, StreamError>>,
}

const SECRET: &[u8] = b"test-secret";

fn rig(limits: StreamLimits) -> Rig {
    let (to_server, incoming) = mpsc::unbounded_channel();
    let (outgoing, from_server) = mpsc::unbounded_channel();
    let incoming =
        Box::pin(futures_util::stream::unfold(incoming, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) }));
    let outgoing =
        Box::pin(futures_util::sink::unfold(outgoing, |tx: mpsc::UnboundedSender<WsOut>, out: WsOut| async move {
            tx.send(out).map_err(|_| ())?;
            Ok::<_, ()>(tx)
        }));
    let recorder = Recorder::default();
    let inputs = recorder.inputs.clone();
    let phone = Arc::new(Spy { close: "", ..Default::default() });
    let browser = Arc::new(Spy { close: "browser", ..Default::default() });
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(StreamContext {
        tokens: Some(Arc::new(StreamTokens::new(SECRET, Duration::from_secs(60)))),
        controls: CallControls::new(phone.clone()).with(params::PLAYGROUND, browser.clone()),
        sessions: Arc::new(recorder),
        metrics: metrics.clone(),
        limits,
        events: CallEvents::new(),
        bad_message_log: LogThrottle::new(Duration::from_secs(1)),
    });
    let done = tokio::spawn(serve_stream(incoming, outgoing, ctx));
    Rig { to_server, from_server, inputs, phone, browser, metrics, done }
}

fn start(direction: &str, signed: bool) -> String {
    let mut params: Vec<(String, String)> = vec![(params::DIRECTION.into(), direction.into())];
    let token = StreamTokens::new(SECRET, Duration::from_secs(60)).mint("CA1", &params, SystemTime::now());
    let token = if signed { token } else { format!("x{token}") };
    params.push((crate::telephony::stream_token::TOKEN_PARAMETER.into(), token));
    let info = StartInfo {
        account_sid: "AC1".into(),
        stream_sid: "MZ1".into(),
        call_sid: "CA1".into(),
        tracks: vec!["inbound".into()],
        custom_parameters: params.into_iter().collect(),
        media_format: MediaFormat::twilio_mulaw(),
    };
    twilio_side::start(1, &info)
}

impl Rig {
    fn send(&self, text: String) {
        self.to_server.send(WsIn::Text(text)).unwrap();
    }

    async fn next_out(&mut self) -> WsOut {
        tokio::time::timeout(Duration::from_secs(3), self.from_server.recv()).await.expect("output").expect("open")
    }

    /// Reads until `want` matches; returns everything read.
    async fn until(&mut self, want: impl Fn(&WsOut) -> bool) -> Vec<WsOut> {
        let mut seen = Vec::new();
        loop {
            let out = self.next_out().await;
            let done = want(&out);
            seen.push(out);
            if done {
                return seen;
            }
        }
    }
}

fn is_mark(out: &WsOut, name: &str) -> bool {
    matches!(out, WsOut::Text(t) if t.contains("\"mark\"") && t.contains(name))
}

#[tokio::test]
async fn a_stream_without_a_valid_token_is_refused_with_1008_and_starts_no_session() {
    let mut r = rig(StreamLimits::default());
    r.send(twilio_side::connected());
    r.send(start("inbound", false));
    let out = r.next_out().await;
    assert!(matches!(out, WsOut::Close { code: 1008, .. }), "{out:?}");
    assert!(matches!(r.done.await.unwrap(), Err(StreamError::Token(_))));
    assert!(r.inputs.lock().unwrap().is_empty());
    assert!(r.metrics.render().contains("reason=\"token\""));
}

#[tokio::test]
async fn caller_audio_is_cut_into_20ms_frames_bot_audio_is_paced_and_marks_come_back_in_order() {
    let mut r = rig(StreamLimits::default());
    r.send(twilio_side::connected());
    r.send(start("inbound", true));
    // 50 ms of caller audio in odd-sized chunks: two whole frames, the rest waits.
    r.send(twilio_side::media(2, "MZ1", 1, 0, &[0xFF; 130]));
    r.send(twilio_side::media(3, "MZ1", 2, 16, &[0xFF; 270]));
    let started = Instant::now();
    let sent = r.until(|o| is_mark(o, "greeting")).await;
    let media = sent.iter().filter(|o| matches!(o, WsOut::Text(t) if t.contains("\"media\""))).count();
    assert_eq!(media, 50, "one second of bot audio in 20 ms frames");
    assert!(started.elapsed() >= Duration::from_millis(800), "paced in real time, not sent at once");
    r.send(twilio_side::mark(4, "MZ1", "greeting"));
    r.send(twilio_side::dtmf(5, "MZ1", "7"));
    r.send(twilio_side::dtmf(6, "MZ1", "not-a-digit"));
    r.send("{ not json".into());
    r.send(twilio_side::dtmf(7, "MZ1", "#"));
    let close = r.until(|o| matches!(o, WsOut::Close { .. })).await;
    assert!(matches!(close.last(), Some(WsOut::Close { code: 1000, reason }) if reason.is_empty()));
    assert!(matches!(r.done.await.unwrap(), Ok(Outcome::BotHungUp(_))));
    let inputs = r.inputs.lock().unwrap().clone();
    let frames = inputs.iter().filter(|i| matches!(i, CallInput::Audio { .. })).count();
    assert_eq!(frames, 2, "400 samples: two whole 20 ms frames");
    let control: Vec<&CallInput> =
        inputs.iter().filter(|i| !matches!(i, CallInput::Audio { .. } | CallInput::BotAudioPlayed { .. })).collect();
    assert_eq!(
        control,
        [&CallInput::MarkPlayed("greeting".into()), &CallInput::Dtmf("7".into()), &CallInput::Dtmf("#".into())]
    );
    assert_eq!(*r.phone.asked.lock().unwrap(), ["hang_up CA1 caller pressed #"]);
    let rendered = r.metrics.render();
    assert!(rendered.contains("kind=\"dtmf\"") && rendered.contains("kind=\"json\""), "bad messages counted");
}

#[tokio::test]
async fn a_playground_stream_uses_its_own_control_and_tells_the_page_how_the_call_ended() {
    let mut r = rig(StreamLimits::default());
    r.send(twilio_side::connected());
    r.send(start(params::PLAYGROUND, true));
    r.send(twilio_side::dtmf(2, "MZ1", "#"));
    let close = r.until(|o| matches!(o, WsOut::Close { .. })).await;
    assert!(matches!(close.last(), Some(WsOut::Close { code: 1000, reason }) if reason == "browser"));
    r.done.await.unwrap().unwrap();
    assert_eq!(r.browser.asked.lock().unwrap().len(), 1, "the browser's control ended it");
    assert!(r.phone.asked.lock().unwrap().is_empty(), "Twilio never hears of it");
}

#[tokio::test]
async fn a_peer_that_never_starts_is_closed_after_the_start_timeout() {
    let limits = StreamLimits { start_timeout: Duration::from_millis(50), ..StreamLimits::default() };
    let mut r = rig(limits);
    r.send(twilio_side::connected());
    let out = r.next_out().await;
    assert!(matches!(out, WsOut::Close { code: 1008, .. }), "{out:?}");
    assert!(matches!(r.done.await.unwrap(), Err(StreamError::StartTimeout(_))));
}
