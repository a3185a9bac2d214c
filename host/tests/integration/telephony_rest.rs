//! The telephony core against the fake Twilio REST API: caller info, hang-up, transfer,
//! dial-out's exact request and error mapping, and the outbound `/twiml` step.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use switchboard::call::{CallOutput, Direction};
use switchboard::config::Overrides;
use switchboard::telephony::twilio::media::{twilio_side, MediaFormat, StartInfo};
use switchboard::telephony::twilio::signature;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{ProbeSessions, TestServer, ACCOUNT_SID, AUTH_TOKEN};
use crate::support::twilio_rest::FakeTwilio;

const T: Duration = Duration::from_secs(5);

fn env(rest: &FakeTwilio, dialout_key: Option<&'static str>) -> Vec<(&'static str, String)> {
    let mut e = vec![
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_string()),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.to_string()),
        ("TWILIO_API_BASE_URL", rest.base_url().to_string()),
    ];
    if let Some(k) = dialout_key {
        e.push(("DIALOUT_API_KEY", k.to_string()));
    }
    e
}

async fn start_server(rest: &FakeTwilio, key: Option<&'static str>, public: Option<&str>) -> (TestServer, ProbeRx) {
    let (sessions, calls) = ProbeSessions::new();
    let e = env(rest, key);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let overrides = Overrides { public_url: public.map(str::to_string), ..Default::default() };
    (TestServer::start(&e, overrides, sessions).await, calls)
}

type ProbeRx = tokio::sync::mpsc::UnboundedReceiver<crate::harness::ProbeCall>;

/// Opens a stream for `call_sid` with a token minted by the server over `params`.
async fn open_with(
    server: &TestServer,
    call_sid: &str,
    params: &[(&str, &str)],
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let token = server.state.tokens.mint(call_sid, &params, SystemTime::now());
    let mut custom: BTreeMap<String, String> = params.into_iter().collect();
    custom.insert("token".into(), token);
    let start = StartInfo {
        account_sid: ACCOUNT_SID.into(),
        stream_sid: format!("MZ{call_sid}"),
        call_sid: call_sid.into(),
        tracks: vec!["inbound".into()],
        custom_parameters: custom,
        media_format: MediaFormat::twilio_mulaw(),
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.unwrap();
    ws.send(Message::text(twilio_side::connected())).await.unwrap();
    ws.send(Message::text(twilio_side::start(1, &start))).await.unwrap();
    ws
}

async fn wait_for<F: Fn(&FakeTwilio) -> bool>(rest: &FakeTwilio, cond: F) -> bool {
    let deadline = tokio::time::Instant::now() + T;
    while tokio::time::Instant::now() < deadline {
        if cond(rest) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn caller_info_is_fetched_when_the_stream_lacks_numbers() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    rest.seed_call("CA20", "+15551110000", "+15552220000", "inbound", "in-progress");
    let (server, mut calls) = start_server(&rest, None, None).await;
    let _ws = open_with(&server, "CA20", &[("direction", "inbound")]).await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    assert_eq!((call.info.from.as_str(), call.info.to.as_str()), ("+15551110000", "+15552220000"));
    let fetch = rest.requests().into_iter().find(|r| r.method == "GET").expect("a fetch");
    assert_eq!(fetch.path, format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/CA20.json"));
    assert!(fetch.authorized, "Basic auth with account sid and token");
}

#[tokio::test]
async fn hang_up_completes_the_call_via_rest_and_closes_the_stream() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    rest.seed_call("CA21", "+15551110000", "+15552220000", "inbound", "in-progress");
    let (server, mut calls) = start_server(&rest, None, None).await;
    let mut ws = open_with(&server, "CA21", &[("direction", "inbound"), ("from", "+1"), ("to", "+2")]).await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    assert!(rest.requests().iter().all(|r| r.method != "GET"), "numbers known: no fetch");
    call.outputs.send(CallOutput::HangUp { reason: "goodbye heard".into() }).await.unwrap();
    assert!(wait_for(&rest, |r| r.call("CA21").is_some_and(|c| c.status == "completed")).await);
    let update = rest.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!(update.path, format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/CA21.json"));
    assert_eq!(update.form, vec![("Status".to_string(), "completed".to_string())]);
    assert!(update.authorized);
    // The stream is closed normally.
    let closed = tokio::time::timeout(T, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(1000));
}

#[tokio::test]
async fn a_caller_hang_up_never_calls_rest() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let (server, mut calls) = start_server(&rest, None, None).await;
    let mut ws = open_with(&server, "CA22", &[("direction", "inbound"), ("from", "+1"), ("to", "+2")]).await;
    let _call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    ws.send(Message::text(twilio_side::stop(2, "MZCA22", ACCOUNT_SID, "CA22"))).await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while server.state.drain.active() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.state.drain.active(), 0);
    assert!(rest.requests().is_empty(), "{:?}", rest.requests());
}

#[tokio::test]
async fn transfer_redirects_the_call_to_a_dial() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    rest.seed_call("CA23", "+15551110000", "+15552220000", "inbound", "in-progress");
    let (server, mut calls) = start_server(&rest, None, None).await;
    let _ws = open_with(&server, "CA23", &[("direction", "inbound"), ("from", "+1"), ("to", "+2")]).await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    call.outputs.send(CallOutput::Transfer { to: "+15559990000".into() }).await.unwrap();
    assert!(wait_for(&rest, |r| r.call("CA23").is_some_and(|c| c.twiml.is_some())).await);
    let twiml = rest.call("CA23").unwrap().twiml.unwrap();
    assert!(twiml.contains("<Dial><Number>+15559990000</Number></Dial>"), "{twiml}");
}

#[tokio::test]
async fn rest_failures_are_counted_with_twilios_code() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    rest.seed_call("CA24", "+1", "+2", "inbound", "in-progress");
    rest.fail_next(1, 500, 20500, "Internal Server Error");
    let (server, mut calls) = start_server(&rest, None, None).await;
    let _ws = open_with(&server, "CA24", &[("direction", "inbound"), ("from", "+1"), ("to", "+2")]).await;
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    call.outputs.send(CallOutput::HangUp { reason: "x".into() }).await.unwrap();
    let metrics_url = format!("{}/metrics", server.base);
    let mut counted = false;
    for _ in 0..100 {
        let m = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        if m.contains("switchboard_twilio_rest_errors_total{operation=\"end_call\"} 1") {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counted);
}

#[tokio::test]
async fn dialout_creates_the_call_with_the_exact_rest_request() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let (server, _calls) = start_server(&rest, Some("k3y"), Some("https://bot.example.com")).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/dialout", server.base))
        .bearer_auth("k3y")
        .json(&serde_json::json!({
            "to_number": "+15550003333", "from_number": "+15550002222",
            "persona": "reminder", "parameters": {"name": "Ada", "time": "3 pm"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let sid = body["call_sid"].as_str().unwrap().to_string();
    assert!(sid.starts_with("CA"));
    assert_eq!(body["status"], "queued");
    let create = rest.requests().into_iter().find(|r| r.path.ends_with("/Calls.json")).unwrap();
    assert_eq!(create.path, format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"));
    assert!(create.authorized);
    assert_eq!(create.field("To"), Some("+15550003333"));
    assert_eq!(create.field("From"), Some("+15550002222"));
    assert_eq!(create.field("Method"), Some("POST"));
    assert_eq!(create.field("Url"), Some("https://bot.example.com/twiml?persona=reminder&p.name=Ada&p.time=3+pm"));
}

#[tokio::test]
async fn dialout_maps_twilio_errors_to_json_with_the_code() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let (server, _calls) = start_server(&rest, Some("k3y"), Some("https://bot.example.com")).await;
    rest.fail_next(1, 400, 21219, "The number is unverified");
    let resp = reqwest::Client::new()
        .post(format!("{}/dialout", server.base))
        .bearer_auth("k3y")
        .json(&serde_json::json!({"to_number": "+15550003333", "from_number": "+15550002222"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["twilio_code"], 21219);
    assert_eq!(body["error"], "The number is unverified");
    rest.fail_next(1, 500, 20500, "Internal");
    let resp = reqwest::Client::new()
        .post(format!("{}/dialout", server.base))
        .bearer_auth("k3y")
        .json(&serde_json::json!({"to_number": "+15550003333", "from_number": "+15550002222"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn outbound_twiml_is_signed_and_carries_persona_and_parameters() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let (server, mut calls) = start_server(&rest, None, None).await;
    let url = format!("{}/twiml?persona=reminder&p.name=Ada", server.base);
    let form: Vec<(String, String)> = [
        ("CallSid", "CA25"),
        ("AccountSid", ACCOUNT_SID),
        ("From", "+15550002222"),
        ("To", "+15550003333"),
        ("Direction", "outbound-api"),
        ("CallStatus", "in-progress"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let unsigned = reqwest::Client::new().post(&url).form(&form).send().await.unwrap();
    assert_eq!(unsigned.status(), 403);
    // Twilio signs the URL including its query: altering the persona breaks the signature.
    let sig = signature::compute(AUTH_TOKEN, &url, &form);
    let forged = format!("{}/twiml?persona=admin&p.name=Ada", server.base);
    let resp =
        reqwest::Client::new().post(&forged).header("X-Twilio-Signature", &sig).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = reqwest::Client::new().post(&url).header("X-Twilio-Signature", &sig).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let twiml = resp.text().await.unwrap();
    for p in [
        r#"name="direction" value="outbound""#,
        r#"name="persona" value="reminder""#,
        r#"name="p.name" value="Ada""#,
        r#"name="from" value="+15550002222""#,
        r#"name="to" value="+15550003333""#,
    ] {
        assert!(twiml.contains(p), "{p} in {twiml}");
    }
    // The stream set up by that TwiML is accepted and described to the session.
    let params: Vec<(String, String)> = twiml
        .split("<Parameter ")
        .skip(1)
        .map(|c| {
            let get = |n: &str| {
                let s = c.find(&format!("{n}=\"")).unwrap() + n.len() + 2;
                c[s..s + c[s..].find('"').unwrap()].to_string()
            };
            (get("name"), get("value"))
        })
        .collect();
    let custom: BTreeMap<String, String> = params.into_iter().collect();
    let start = StartInfo {
        account_sid: ACCOUNT_SID.into(),
        stream_sid: "MZCA25".into(),
        call_sid: "CA25".into(),
        tracks: vec!["inbound".into()],
        custom_parameters: custom,
        media_format: MediaFormat::twilio_mulaw(),
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.unwrap();
    ws.send(Message::text(twilio_side::start(1, &start))).await.unwrap();
    let call = tokio::time::timeout(T, calls.recv()).await.unwrap().unwrap();
    assert_eq!(call.info.direction, Direction::Outbound);
    assert_eq!(call.info.persona.as_deref(), Some("reminder"));
    assert_eq!(call.info.parameters.get("name").map(String::as_str), Some("Ada"));
    assert_eq!(call.info.to, "+15550003333");
}

#[tokio::test]
async fn switchboard_dial_places_a_call_through_dialout() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let (server, _calls) = start_server(&rest, Some("k3y"), Some("https://bot.example.com")).await;
    let args = |key: &str| switchboard::cli::DialArgs {
        to: "+15550003333".into(),
        from: "+15550002222".into(),
        server: server.base.clone(),
        persona: Some("support".into()),
        params: vec![("order".into(), "42".into())],
        api_key: key.into(),
    };
    let answer: serde_json::Value = serde_json::from_str(&switchboard::cli::dial(args("k3y")).await.unwrap()).unwrap();
    assert!(answer["call_sid"].as_str().unwrap().starts_with("CA"));
    let create = rest.requests().into_iter().find(|r| r.path.ends_with("/Calls.json")).unwrap();
    assert_eq!(create.field("Url"), Some("https://bot.example.com/twiml?persona=support&p.order=42"));
    let err = switchboard::cli::dial(args("wrong")).await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
}
