//! Scale-out: two real instances behind one public name, sharing nothing but their secrets.
//! `/dialout` and the outbound call's `/twiml` land on instance A, the Media Stream on instance B,
//! as a load balancer may route them. The call runs on B with the dial-out's persona and
//! parameters, because they travel in the stream's signed parameters; A never sees the call.
//! Altered parameters, a token from a deployment with another secret, and a second use of the
//! same token are refused.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::call::{CallInfo, Direction};
use switchboard::config::Overrides;
use switchboard::metrics::Metrics;
use switchboard::persona::{
    Action, BuiltinPersona, CallSummary, Greeting, HookFuture, Persona, PersonaProvider, PersonaSetup, ToolOutcome,
};
use switchboard::sim::{self, CallPlan, CallReport, CallerAudio, Segmentation, WebhookMethod, WebhookRequest};
use url::Url;

use crate::conversation::engine_with_fakes;
use crate::fakes::deepgram_stt::FakeDeepgramStt;
use crate::fakes::deepgram_tts::FakeDeepgramTts;
use crate::fakes::groq::FakeGroq;
use crate::harness::{TestServer, ACCOUNT_SID, AUTH_TOKEN};
use crate::support::twilio_rest::FakeTwilio;

/// The name Twilio knows every instance by (the load balancer's).
const PUBLIC_URL: &str = "https://voice.example.com";
const DIALOUT_KEY: &str = "scale-out-key";
const TO: &str = "+15550003333";
const FROM: &str = "+15550002222";
const T: Duration = Duration::from_secs(10);

/// A persona that greets with the dial-out parameters, and remembers every call it was asked for.
#[derive(Clone, Default)]
struct GreetWithParameters {
    seen: Arc<Mutex<Vec<CallInfo>>>,
}

struct GreetWithParametersCall {
    inner: BuiltinPersona,
}

impl PersonaProvider for GreetWithParameters {
    fn persona_for(&self, call: &CallInfo) -> Box<dyn Persona> {
        self.seen.lock().unwrap().push(call.clone());
        Box::new(GreetWithParametersCall { inner: BuiltinPersona::new() })
    }
}

impl Persona for GreetWithParametersCall {
    fn setup<'a>(&'a mut self, call: &'a CallInfo) -> HookFuture<'a, PersonaSetup> {
        Box::pin(async move {
            let mut setup = self.inner.setup(call).await;
            let param = |k: &str| call.parameters.get(k).cloned().unwrap_or_else(|| "?".into());
            let persona = call.persona.clone().unwrap_or_else(|| "none".into());
            setup.greeting =
                Greeting::Say(format!("Hello {}, your {} is at {}.", param("name"), persona, param("time")));
            setup
        })
    }
    fn on_user_turn<'a>(&'a mut self, transcript: &'a str) -> HookFuture<'a, Action> {
        self.inner.on_user_turn(transcript)
    }
    fn on_idle(&mut self, attempt: u32) -> HookFuture<'_, Action> {
        self.inner.on_idle(attempt)
    }
    fn on_tool_call<'a>(
        &'a mut self,
        name: &'a str,
        arguments: &'a str,
    ) -> HookFuture<'a, Result<ToolOutcome, String>> {
        self.inner.on_tool_call(name, arguments)
    }
    fn on_dtmf<'a>(&'a mut self, digits: &'a str) -> HookFuture<'a, Action> {
        self.inner.on_dtmf(digits)
    }
    fn on_call_end<'a>(&'a mut self, summary: &'a CallSummary) -> HookFuture<'a, ()> {
        self.inner.on_call_end(summary)
    }
}

/// One instance: its own process-level state (metrics, recordings, providers), as on its own host.
struct Instance {
    server: TestServer,
    personas: GreetWithParameters,
    metrics: Arc<Metrics>,
    tts: FakeDeepgramTts,
    _stt: FakeDeepgramStt,
    _groq: FakeGroq,
    recordings: tempfile::TempDir,
}

impl Instance {
    /// `extra` env on top of the shared Twilio account, dial-out key and public URL.
    async fn start(rest: &FakeTwilio, extra: &[(&str, &str)]) -> Instance {
        let stt = FakeDeepgramStt::start().await;
        let tts = FakeDeepgramTts::start().await;
        let groq = FakeGroq::start().await;
        let recordings = tempfile::tempdir().unwrap();
        let personas = GreetWithParameters::default();
        let metrics = Arc::new(Metrics::new());
        let conversation =
            engine_with_fakes(&stt, &tts, &groq, Arc::new(personas.clone()), metrics.clone(), recordings.path());
        let mut env = vec![
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
            ("TWILIO_API_BASE_URL", rest.base_url()),
            ("DIALOUT_API_KEY", DIALOUT_KEY),
            ("PUBLIC_URL", PUBLIC_URL),
        ];
        env.extend_from_slice(extra);
        let server =
            TestServer::start_with_metrics(&env, Overrides::default(), Arc::new(conversation), metrics.clone()).await;
        Instance { server, personas, metrics, tts, _stt: stt, _groq: groq, recordings }
    }

    fn base(&self) -> Url {
        self.server.base.parse().unwrap()
    }

    fn seen(&self) -> Vec<CallInfo> {
        self.personas.seen.lock().unwrap().clone()
    }

    fn spoken(&self) -> String {
        self.tts.connections().iter().flat_map(|c| c.speaks.clone()).collect::<Vec<_>>().join(" ")
    }

    fn metric(&self, line_start: &str) -> Option<f64> {
        self.metrics.render().lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
    }

    fn calls_ended(&self) -> f64 {
        self.metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("switchboard_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn token_refusals(&self) -> f64 {
        self.metric("switchboard_streams_rejected_total{reason=\"token\"}").unwrap_or(0.0)
    }

    async fn wait_idle(&self) {
        for _ in 0..250 {
            if self.server.state.drain.active() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("calls still active on {}", self.server.base);
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Asks `server` to place a call; returns the sid and the `Url` Twilio was given.
async fn dial_out(server: &Instance, rest: &FakeTwilio) -> (String, Url) {
    let resp = reqwest::Client::new()
        .post(format!("{}/dialout", server.server.base))
        .bearer_auth(DIALOUT_KEY)
        .json(&serde_json::json!({
            "to_number": TO, "from_number": FROM, "persona": "reminder",
            "parameters": {"name": "Ada Lovelace", "time": "3 pm"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let body: serde_json::Value = resp.json().await.unwrap();
    let sid = body["call_sid"].as_str().unwrap().to_string();
    let url = rest.call(&sid).and_then(|c| c.url).expect("the create request carried a Url");
    (sid, url.parse().unwrap())
}

/// Twilio's half of answering: the signed request for the call's `Url`, sent to `server`.
async fn fetch_twiml(call_sid: &str, url: &Url, server: &Instance) -> String {
    let request = WebhookRequest {
        url: url.clone(),
        server: Some(server.base()),
        method: WebhookMethod::Post,
        auth_token: Some(AUTH_TOKEN.into()),
        params: sim::call_params(ACCOUNT_SID, call_sid, FROM, TO, sim::TwilioDirection::OutboundApi),
        timeout: T,
    };
    let (status, twiml) = sim::fetch_twiml(&reqwest::Client::new(), &request).await.expect("TwiML");
    assert_eq!(status, 200);
    twiml
}

/// Runs the Media Stream the TwiML asks for against `server`, the caller silent for `secs`.
async fn stream_to(call_sid: &str, url: &Url, twiml: &str, server: &Instance, rest: &FakeTwilio) -> CallReport {
    let silence = CallerAudio::from_pcm(&vec![0i16; 8000], 8000, &Segmentation::default()).unwrap();
    let mut plan = CallPlan::new(url.clone(), Arc::new(silence));
    plan.server = Some(server.base());
    plan.account_sid = ACCOUNT_SID.into();
    plan.call_sid = call_sid.into();
    plan.from = FROM.into();
    plan.to = TO.into();
    plan.direction = sim::TwilioDirection::OutboundApi;
    plan.hangup_after = Duration::from_secs(4);
    plan.end_signal = Some(rest.end_signal(call_sid));
    let report = sim::simulate_call_from_twiml(&plan, twiml).await;
    server.wait_idle().await;
    report
}

#[tokio::test]
async fn dialout_on_one_instance_streams_on_another_with_its_parameters() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let a = Instance::start(&rest, &[]).await;
    let b = Instance::start(&rest, &[]).await;

    let (sid, url) = dial_out(&a, &rest).await;
    assert_eq!(url.as_str(), format!("{PUBLIC_URL}/twiml?persona=reminder&p.name=Ada+Lovelace&p.time=3+pm"));
    let twiml = fetch_twiml(&sid, &url, &a).await;
    assert!(twiml.contains("wss://voice.example.com/ws"), "{twiml}");
    let report = stream_to(&sid, &url, &twiml, &b, &rest).await;

    // The call ran on B: the greeting was heard, built from the dial-out's persona and parameters.
    assert!(report.ok(), "{report:?}");
    assert!(report.stream_url.as_deref().is_some_and(|u| u.starts_with(&b.server.ws_url())), "{report:?}");
    assert!(report.first_audio_ms.is_some() && report.bot_audio_played_ms > 500, "greeting heard: {report:?}");
    let seen = b.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let call = &seen[0];
    assert_eq!((call.call_sid.as_str(), call.direction), (sid.as_str(), Direction::Outbound));
    assert_eq!((call.from.as_str(), call.to.as_str()), (FROM, TO));
    assert_eq!(call.persona.as_deref(), Some("reminder"));
    assert_eq!(call.parameters.get("name").map(String::as_str), Some("Ada Lovelace"));
    assert_eq!(call.parameters.get("time").map(String::as_str), Some("3 pm"));
    assert!(b.spoken().contains("Hello Ada Lovelace, your reminder is at 3 pm."), "{}", b.spoken());
    assert_eq!(b.calls_ended(), 1.0);
    let files = files_in(b.recordings.path());
    assert!(files.iter().any(|f| f.starts_with(&sid) && f.ends_with(".wav")), "{files:?}");
    assert!(files.iter().any(|f| f.starts_with(&sid) && f.ends_with(".jsonl")), "{files:?}");

    // A only placed the call and answered /twiml: no session, no audio, no files.
    assert!(a.seen().is_empty());
    assert!(a.tts.connections().is_empty());
    assert_eq!(a.calls_ended(), 0.0);
    assert!(files_in(a.recordings.path()).is_empty());

    // The same stream again, on B, which has used its token: refused.
    let replay = stream_to(&sid, &url, &twiml, &b, &rest).await;
    assert!(replay.first_audio_ms.is_none(), "{replay:?}");
    assert_eq!(b.token_refusals(), 1.0);
    assert_eq!(b.seen().len(), 1);
}

#[tokio::test]
async fn altered_parameters_and_foreign_tokens_are_refused() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let a = Instance::start(&rest, &[]).await;
    let b = Instance::start(&rest, &[]).await;
    // Another deployment on the same Twilio account, with its own stream-token secret.
    let other = Instance::start(&rest, &[("STREAM_TOKEN_SECRET", "another deployment's secret")]).await;

    // A parameter changed between the TwiML and the stream (name and persona both tried).
    let (sid, url) = dial_out(&a, &rest).await;
    let twiml = fetch_twiml(&sid, &url, &a).await;
    for (from, to) in [(r#"value="Ada Lovelace""#, r#"value="Mallory""#), (r#"value="reminder""#, r#"value="admin""#)] {
        assert!(twiml.contains(from), "{twiml}");
        let altered = twiml.replace(from, to);
        let report = stream_to(&sid, &url, &altered, &b, &rest).await;
        assert!(report.first_audio_ms.is_none(), "{report:?}");
    }
    assert_eq!(b.token_refusals(), 2.0);
    let genuine = (sid, url, twiml);

    // A token minted by the other deployment, for a call it placed.
    let (sid, url) = dial_out(&other, &rest).await;
    let twiml = fetch_twiml(&sid, &url, &other).await;
    let report = stream_to(&sid, &url, &twiml, &b, &rest).await;
    assert!(report.first_audio_ms.is_none(), "{report:?}");
    assert_eq!(b.token_refusals(), 3.0);

    // Nothing reached a session, and the refusals did not use up the genuine token: the
    // untouched stream still runs on B.
    assert!(b.seen().is_empty() && b.tts.connections().is_empty());
    assert!(files_in(b.recordings.path()).is_empty());
    let report = stream_to(&genuine.0, &genuine.1, &genuine.2, &b, &rest).await;
    assert!(report.first_audio_ms.is_some(), "{report:?}");
    assert_eq!(b.seen().iter().map(|c| c.call_sid.as_str()).collect::<Vec<_>>(), [genuine.0.as_str()]);
}
