//! The telephony core over real sockets on 127.0.0.1: webhooks and signatures, TwiML, stream
//! tokens, the Media Streams protocol, bad input, dial-out and drain.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchboard::call::{CallInput, CallOutput, Direction};
use switchboard::config::Overrides;
use switchboard::telephony::twilio::media::{parse_bot_message, twilio_side, BotMessage, MediaFormat, StartInfo};
use switchboard::telephony::twilio::signature;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{ProbeSessions, TestServer, ACCOUNT_SID, AUTH_TOKEN};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const T: Duration = Duration::from_secs(5);

fn creds_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("TWILIO_API_BASE_URL", "http://127.0.0.1:9"),
    ]
}

fn form(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn inbound_form(call_sid: &str) -> Vec<(String, String)> {
    form(&[
        ("CallSid", call_sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", "+15550001111"),
        ("To", "+15550002222"),
        ("CallStatus", "ringing"),
        ("Direction", "inbound"),
    ])
}

/// POSTs a webhook signed for `signed_url` (None = unsigned) and returns (status, body).
async fn post_webhook(url: &str, signed_url: Option<&str>, params: &[(String, String)]) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url).form(params);
    if let Some(su) = signed_url {
        req = req.header("X-Twilio-Signature", signature::compute(AUTH_TOKEN, su, params));
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// Pulls the stream URL and `<Parameter>`s out of TwiML.
fn stream_of(twiml: &str) -> (String, BTreeMap<String, String>) {
    let url_start = twiml.find("<Stream url=\"").expect("a Stream") + 13;
    let url = unescape(&twiml[url_start..url_start + twiml[url_start..].find('"').unwrap()]);
    let mut params = BTreeMap::new();
    for chunk in twiml.split("<Parameter ").skip(1) {
        let attr = |name: &str| {
            let s = chunk.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            unescape(&chunk[s..s + chunk[s..].find('"').unwrap()])
        };
        params.insert(attr("name"), attr("value"));
    }
    (url, params)
}

fn start_info(call_sid: &str, custom: BTreeMap<String, String>) -> StartInfo {
    StartInfo {
        account_sid: ACCOUNT_SID.into(),
        stream_sid: format!("MZ{call_sid}"),
        call_sid: call_sid.into(),
        tracks: vec!["inbound".into()],
        custom_parameters: custom,
        media_format: MediaFormat::twilio_mulaw(),
    }
}

/// Opens `/ws` and sends `connected` + `start`.
async fn open_stream(server: &TestServer, start: &StartInfo) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.expect("ws connect");
    ws.send(Message::text(twilio_side::connected())).await.unwrap();
    ws.send(Message::text(twilio_side::start(1, start))).await.unwrap();
    ws
}

/// Runs the inbound webhook for `call_sid` and opens its stream with the TwiML's parameters.
async fn answer_inbound(server: &TestServer, call_sid: &str) -> Ws {
    let url = format!("{}/", server.base);
    let (status, twiml) = post_webhook(&url, Some(&url), &inbound_form(call_sid)).await;
    assert_eq!(status, 200, "{twiml}");
    let (_, params) = stream_of(&twiml);
    open_stream(server, &start_info(call_sid, params)).await
}

/// Next bot message, skipping nothing; None on close or timeout.
async fn next_bot(ws: &mut Ws) -> Option<BotMessage> {
    loop {
        match tokio::time::timeout(T, ws.next()).await.ok()?? {
            Ok(Message::Text(t)) => return Some(parse_bot_message(&t).expect("bot message is valid")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Waits for the socket to be closed by the server; returns the close code.
async fn closed_with(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("server closes in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            None | Some(Err(_)) => return None,
        }
    }
}

#[tokio::test]
async fn signed_webhook_gets_stream_twiml_with_token() {
    let (sessions, _calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    for path in ["/", "/incoming"] {
        let url = format!("{}{path}", server.base);
        let resp = reqwest::Client::new()
            .post(&url)
            .header("X-Twilio-Signature", signature::compute(AUTH_TOKEN, &url, &inbound_form("CA1")))
            .form(&inbound_form("CA1"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/xml"));
        let twiml = resp.text().await.unwrap();
        assert!(twiml.contains("<Response><Connect><Stream url="), "{twiml}");
        let (stream_url, params) = stream_of(&twiml);
        assert_eq!(stream_url, server.ws_url());
        assert_eq!(params["from"], "+15550001111");
        assert_eq!(params["to"], "+15550002222");
        assert_eq!(params["call_sid"], "CA1");
        assert_eq!(params["direction"], "inbound");
        assert!(params["token"].starts_with("v1."));
    }
}

#[tokio::test]
async fn webhook_signature_is_enforced() {
    let (sessions, _calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    let url = format!("{}/", server.base);
    let params = inbound_form("CA2");
    // Unsigned.
    assert_eq!(post_webhook(&url, None, &params).await.0, 403);
    // Signed for another URL.
    assert_eq!(post_webhook(&url, Some("https://elsewhere.example/"), &params).await.0, 403);
    // A parameter altered after signing.
    let sig = signature::compute(AUTH_TOKEN, &url, &params);
    let mut altered = params.clone();
    altered[2].1 = "+19990000000".into();
    let resp = reqwest::Client::new().post(&url).header("X-Twilio-Signature", sig).form(&altered).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("<Response>"), "no TwiML for a refused webhook");
    // Signed with another token.
    let foreign = signature::compute("not-the-token", &url, &params);
    let resp =
        reqwest::Client::new().post(&url).header("X-Twilio-Signature", foreign).form(&params).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    // And the genuine one passes.
    assert_eq!(post_webhook(&url, Some(&url), &params).await.0, 200);
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchboard_webhooks_rejected_total{reason=\"bad_signature\"} 3"), "{metrics}");
    assert!(metrics.contains("switchboard_webhooks_rejected_total{reason=\"unsigned\"} 1"), "{metrics}");
}

#[tokio::test]
async fn signature_uses_public_url_when_configured() {
    let (sessions, _calls) = ProbeSessions::new();
    let overrides = Overrides { public_url: Some("https://bot.example.com".into()), ..Default::default() };
    let server = TestServer::start(&creds_env(), overrides, sessions).await;
    let params = inbound_form("CA3");
    let local = format!("{}/", server.base);
    assert_eq!(post_webhook(&local, Some(&local), &params).await.0, 403, "signed for the local URL");
    let (status, twiml) = post_webhook(&local, Some("https://bot.example.com/"), &params).await;
    assert_eq!(status, 200);
    assert_eq!(stream_of(&twiml).0, "wss://bot.example.com/ws");
}

#[tokio::test]
async fn forwarded_headers_give_the_public_url_when_none_is_configured() {
    let (sessions, _calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    let params = inbound_form("CA4");
    let resp = reqwest::Client::new()
        .post(format!("{}/", server.base))
        .header("X-Forwarded-Host", "abc.modal.run")
        .header("X-Forwarded-Proto", "https")
        .header("X-Twilio-Signature", signature::compute(AUTH_TOKEN, "https://abc.modal.run/", &params))
        .form(&params)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stream_of(&resp.text().await.unwrap()).0, "wss://abc.modal.run/ws");
}

#[tokio::test]
async fn twiml_escapes_hostile_caller_values() {
    let (sessions, _calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    let url = format!("{}/", server.base);
    let params = form(&[("CallSid", "CA5"), ("From", "\"/><Hangup/><x a=\"&"), ("To", "+1<2>")]);
    let (status, twiml) = post_webhook(&url, Some(&url), &params).await;
    assert_eq!(status, 200);
    assert!(!twiml.contains("<Hangup/>"), "{twiml}");
    assert!(!twiml.contains("<x a"), "{twiml}");
    let (_, p) = stream_of(&twiml);
    assert_eq!(p["from"], "\"/><Hangup/><x a=\"&");
    assert_eq!(p["to"], "+1<2>");
}

#[tokio::test]
async fn webhook_without_auth_token_configured_is_refused_not_served() {
    let (sessions, _calls) = ProbeSessions::new();
    let server = TestServer::start(&[], Overrides::default(), sessions).await;
    let url = format!("{}/", server.base);
    let (status, body) = post_webhook(&url, Some(&url), &inbound_form("CA6")).await;
    assert_eq!(status, 503);
    assert!(body.contains("TWILIO_AUTH_TOKEN"), "{body}");
}

#[tokio::test]
async fn streams_without_a_valid_token_are_closed_before_any_session() {
    let (sessions, mut calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    // No token at all.
    let mut ws = open_stream(&server, &start_info("CA7", BTreeMap::new())).await;
    assert_eq!(closed_with(&mut ws).await, Some(1008));
    // A genuine token, but presented for another call.
    let url = format!("{}/", server.base);
    let (_, twiml) = post_webhook(&url, Some(&url), &inbound_form("CA8")).await;
    let (_, params) = stream_of(&twiml);
    let mut ws = open_stream(&server, &start_info("CA9", params.clone())).await;
    assert_eq!(closed_with(&mut ws).await, Some(1008));
    // The right call with a tampered parameter.
    let mut tampered = params.clone();
    tampered.insert("from".into(), "+15557777777".into());
    let mut ws = open_stream(&server, &start_info("CA8", tampered)).await;
    assert_eq!(closed_with(&mut ws).await, Some(1008));
    assert!(calls.try_recv().is_err(), "no session may start for a refused stream");
    // The genuine stream works once...
    let mut ws = open_stream(&server, &start_info("CA8", params.clone())).await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    assert_eq!(call.info.call_sid, "CA8");
    ws.send(Message::text(twilio_side::stop(2, "MZCA8", ACCOUNT_SID, "CA8"))).await.unwrap();
    // ...and a replay of the same token is refused.
    let mut replay = open_stream(&server, &start_info("CA8", params)).await;
    assert_eq!(closed_with(&mut replay).await, Some(1008));
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("switchboard_streams_rejected_total{reason=\"token\"} 4"), "{metrics}");
}

#[tokio::test]
async fn media_dtmf_marks_and_stop_reach_the_session() {
    let (sessions, mut calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    let mut ws = answer_inbound(&server, "CA10").await;
    let mut call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    assert_eq!(call.info.direction, Direction::Inbound);
    assert_eq!((call.info.from.as_str(), call.info.to.as_str()), ("+15550001111", "+15550002222"));
    // Two 20 ms chunks of a known code, then one 30 ms chunk that must be re-framed.
    ws.send(Message::text(twilio_side::media(2, "MZCA10", 1, 0, &[0x00; 160]))).await.unwrap();
    ws.send(Message::text(twilio_side::media(3, "MZCA10", 2, 20, &[0x80; 160]))).await.unwrap();
    ws.send(Message::text(twilio_side::media(4, "MZCA10", 3, 40, &[0xFF; 240]))).await.unwrap();
    ws.send(Message::text(twilio_side::dtmf(5, "MZCA10", "7"))).await.unwrap();
    let mut frames = Vec::new();
    while frames.len() < 3 {
        match tokio::time::timeout(T, call.inputs.recv()).await.unwrap().unwrap() {
            CallInput::Audio { timestamp_ms, samples } => frames.push((timestamp_ms, samples)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(frames[0].0, 0);
    assert!(frames[0].1.iter().all(|&s| s == -32124), "0x00 decodes to -32124");
    assert_eq!(frames[1].0, 20);
    assert!(frames[1].1.iter().all(|&s| s == 32124), "0x80 decodes to +32124");
    assert_eq!(frames[2].0, 40);
    assert_eq!(call.next_event(T).await, Some(CallInput::Dtmf("7".into())));
    // The session speaks: 300 ms of audio and a mark.
    call.outputs.send(CallOutput::Audio(vec![0x55; 2400])).await.unwrap();
    call.outputs.send(CallOutput::Mark("utt-1".into())).await.unwrap();
    let mut media = 0;
    let mut first_at = None;
    let mut early = 0;
    loop {
        match next_bot(&mut ws).await.expect("bot message") {
            BotMessage::Media { stream_sid, audio } => {
                assert_eq!(stream_sid, "MZCA10");
                assert_eq!(audio.len(), 160, "20 ms frames");
                media += 1;
                let first = *first_at.get_or_insert_with(Instant::now);
                if first.elapsed() < Duration::from_millis(40) {
                    early += 1;
                }
            }
            BotMessage::Mark { name, .. } => {
                assert_eq!(name, "utt-1");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(media, 15, "300 ms = 15 frames, mark after all of them");
    assert!(early <= 7, "paced, not dumped: {early} frames in the first 40 ms");
    // Twilio echoes the mark once played.
    ws.send(Message::text(twilio_side::mark(6, "MZCA10", "utt-1"))).await.unwrap();
    assert_eq!(call.next_event(T).await, Some(CallInput::MarkPlayed("utt-1".into())));
    ws.send(Message::text(twilio_side::stop(7, "MZCA10", ACCOUNT_SID, "CA10"))).await.unwrap();
    assert_eq!(closed_with(&mut ws).await, Some(1000));
}

#[tokio::test]
async fn clear_is_sent_only_when_bot_audio_is_queued_or_playing() {
    let (sessions, mut calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    let mut ws = answer_inbound(&server, "CA11").await;
    let mut call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    // Nothing playing: no clear goes out.
    call.outputs.send(CallOutput::Clear).await.unwrap();
    // Two seconds of audio, then barge-in after the first frames.
    call.outputs.send(CallOutput::Audio(vec![0x11; 16000])).await.unwrap();
    let mut before_clear = 0;
    while before_clear < 3 {
        match next_bot(&mut ws).await.expect("audio arrives") {
            BotMessage::Media { .. } => before_clear += 1,
            other => panic!("nothing was playing, so no clear may go out: got {other:?}"),
        }
    }
    call.outputs.send(CallOutput::Clear).await.unwrap();
    let mut after = 0;
    loop {
        match next_bot(&mut ws).await.expect("clear arrives") {
            BotMessage::Clear { stream_sid } => {
                assert_eq!(stream_sid, "MZCA11");
                break;
            }
            BotMessage::Media { .. } => after += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(before_clear + after <= 12, "at most the ~100 ms lead beyond what had played ({before_clear}+{after})");
    assert!(matches!(call.next_event(T).await, Some(CallInput::Cleared { .. })));
    // Nothing more arrives after the clear.
    assert!(tokio::time::timeout(Duration::from_millis(200), ws.next()).await.is_err(), "no audio after clear");
}

#[tokio::test]
async fn bad_input_is_counted_and_never_breaks_the_call_or_others() {
    let (sessions, mut calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    // A peer that sends media before start, then garbage, then starts properly.
    let (mut early, _) = tokio_tungstenite::connect_async(server.ws_url()).await.unwrap();
    early.send(Message::text(twilio_side::media(1, "MZ", 1, 0, &[0; 160]))).await.unwrap();
    early.send(Message::text("{not json")).await.unwrap();
    early.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let mut a = answer_inbound(&server, "CA12").await;
    let mut call_a = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    let mut b = answer_inbound(&server, "CA13").await;
    let mut call_b = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    let bad = [
        "not json at all".to_string(),
        r#"{"event":"launch_missiles","streamSid":"MZ"}"#.to_string(),
        r#"{"event":"media","streamSid":"MZ","media":{"payload":"!!!not-base64!!!"}}"#.to_string(),
        r#"{"event":"media","streamSid":"MZ"}"#.to_string(),
        r#"{"event":"dtmf","streamSid":"MZ","dtmf":{"digit":"xyz"}}"#.to_string(),
        r#"{"event":"media","sequenceNumber":"abc","media":{"payload":""}}"#.to_string(),
        twilio_side::start(9, &start_info("CA12", BTreeMap::new())),
    ];
    for m in &bad {
        a.send(Message::text(m.clone())).await.unwrap();
    }
    a.send(Message::binary(vec![0u8; 10])).await.unwrap();
    // Call A still works after all that...
    a.send(Message::text(twilio_side::media(20, "MZCA12", 1, 0, &[0x80; 160]))).await.unwrap();
    assert!(matches!(tokio::time::timeout(T, call_a.inputs.recv()).await.unwrap(), Some(CallInput::Audio { .. })));
    // ...and call B never noticed.
    b.send(Message::text(twilio_side::dtmf(2, "MZCA13", "5"))).await.unwrap();
    assert_eq!(call_b.next_event(T).await, Some(CallInput::Dtmf("5".into())));
    // An oversized frame ends only the call that sent it.
    a.send(Message::text("x".repeat(70 * 1024))).await.ok();
    // The server closes that socket (closed_with fails the test on a timeout).
    closed_with(&mut a).await;
    b.send(Message::text(twilio_side::dtmf(3, "MZCA13", "6"))).await.unwrap();
    assert_eq!(call_b.next_event(T).await, Some(CallInput::Dtmf("6".into())));
    let metrics = reqwest::get(format!("{}/metrics", server.base)).await.unwrap().text().await.unwrap();
    for kind in ["json", "unknown_event", "base64", "missing_field", "dtmf", "duplicate", "binary", "before_start"] {
        assert!(
            metrics.contains(&format!("switchboard_stream_messages_rejected_total{{kind=\"{kind}\"}}")),
            "{kind}: {metrics}"
        );
    }
    drop(early);
}

#[tokio::test]
async fn a_stream_that_never_starts_times_out_quietly() {
    let (sessions, mut calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.unwrap();
    ws.send(Message::text(twilio_side::connected())).await.unwrap();
    ws.close(None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(calls.try_recv().is_err());
    assert_eq!(server.state.drain.active(), 0, "no call left behind");
}

#[tokio::test]
async fn drain_refuses_new_calls_and_waits_for_calls_in_progress() {
    let (sessions, mut calls) = ProbeSessions::new();
    let overrides = Overrides { drain_timeout_secs: Some(10), ..Default::default() };
    let mut server = TestServer::start(&creds_env(), overrides, sessions).await;
    let mut ws = answer_inbound(&server, "CA14").await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.state.drain.is_draining());
    // Load balancers see it leave the pool.
    let health = reqwest::get(format!("{}/healthz", server.base)).await.unwrap();
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<serde_json::Value>().await.unwrap()["status"], "draining");
    // The call in progress still works.
    call.outputs.send(CallOutput::Audio(vec![0x22; 160])).await.unwrap();
    assert!(matches!(next_bot(&mut ws).await, Some(BotMessage::Media { .. })));
    // New calls are refused: webhook 503 (Twilio then uses the fallback URL).
    let url = format!("{}/", server.base);
    let (status, _) = post_webhook(&url, Some(&url), &inbound_form("CA15")).await;
    assert_eq!(status, 503);
    let finished = server.finished.take().unwrap();
    assert!(!finished.is_finished(), "server waits for the call");
    ws.send(Message::text(twilio_side::stop(3, "MZCA14", ACCOUNT_SID, "CA14"))).await.unwrap();
    let result = tokio::time::timeout(T, finished).await.expect("server stops once the call ended");
    assert!(result.unwrap().is_ok());
}

#[tokio::test]
async fn at_max_calls_the_webhook_sends_twilio_to_the_fallback_and_health_says_full() {
    let (sessions, mut calls) = ProbeSessions::new();
    let mut env = creds_env();
    env.extend([("MAX_CALLS", "1"), ("DIALOUT_API_KEY", "sekrit")]);
    let server = TestServer::start(&env, Overrides::default(), sessions).await;
    let health = || async {
        let r = reqwest::get(format!("{}/healthz", server.base)).await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(health().await.0, 200);
    let mut ws = answer_inbound(&server, "CA40").await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    let (code, body) = health().await;
    assert_eq!((code, body["status"].as_str(), body["max_calls"].as_u64()), (503, Some("full"), Some(1)));
    // The second caller is refused with a reason (Twilio then plays the number's fallback).
    let url = format!("{}/", server.base);
    let (status, text) = post_webhook(&url, Some(&url), &inbound_form("CA41")).await;
    assert_eq!(status, 503);
    assert!(text.contains("MAX_CALLS"), "{text}");
    let dial = reqwest::Client::new()
        .post(format!("{}/dialout", server.base))
        .bearer_auth("sekrit")
        .json(&serde_json::json!({"to_number": "+15550003333", "from_number": "+15550002222"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dial.status(), 503);
    // The call in progress is untouched.
    call.outputs.send(CallOutput::Audio(vec![0x22; 160])).await.unwrap();
    assert!(matches!(next_bot(&mut ws).await, Some(BotMessage::Media { .. })));
    // Once it ends, calls are taken again.
    ws.send(Message::text(twilio_side::stop(3, "MZCA40", ACCOUNT_SID, "CA40"))).await.unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if health().await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "health is ok again after the call");
    let (status, _) = post_webhook(&url, Some(&url), &inbound_form("CA42")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn dialout_requires_a_configured_key_a_bearer_token_and_e164_numbers() {
    let (sessions, _calls) = ProbeSessions::new();
    let server = TestServer::start(&creds_env(), Overrides::default(), sessions.clone()).await;
    let body = serde_json::json!({"to_number": "+15550003333", "from_number": "+15550002222"});
    let resp = reqwest::Client::new().post(format!("{}/dialout", server.base)).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.text().await.unwrap().contains("DIALOUT_API_KEY"));

    let mut env = creds_env();
    env.push(("DIALOUT_API_KEY", "sekrit"));
    let server = TestServer::start(&env, Overrides::default(), sessions).await;
    let post = |auth: Option<&'static str>, body: serde_json::Value| {
        let mut r = reqwest::Client::new().post(format!("{}/dialout", server.base)).json(&body);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        async move {
            let resp = r.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(post(None, body.clone()).await.0, 401);
    assert_eq!(post(Some("Bearer wrong"), body.clone()).await.0, 401);
    assert_eq!(post(Some("sekrit"), body.clone()).await.0, 401);
    let (status, msg) =
        post(Some("Bearer sekrit"), serde_json::json!({"to_number": "555-1234", "from_number": "+15550002222"})).await;
    assert_eq!(status, 400);
    assert!(msg.contains("to_number"), "{msg}");
    let (status, msg) = post(Some("Bearer sekrit"), serde_json::json!({"to_number": "+15550003333"})).await;
    assert_eq!(status, 400, "{msg}");
}
