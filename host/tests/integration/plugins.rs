//! Persona plugins end to end: real components built from `plugins/` by `plugins/build.sh`,
//! loaded by the plugin host, driving the real conversation engine against the provider fakes.
//! Hostile plugins each get their own test; every call in them must still complete.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use switchboard::call::{CallInfo, Direction};
use switchboard::config::Overrides;
use switchboard::metrics::Metrics;
use switchboard::persona::{
    Action, BuiltinPersona, CallSummary, Greeting, HookFuture, Persona, PersonaProvider, PersonaSetup, ToolOutcome,
};
use switchboard::persona::{PluginHost, PluginHostConfig, RuntimeConfig, WasmPersona};
use switchboard::sim::{self, simulate_call, CallPlan, CallReport, CallerAudio, DtmfEvent, Segmentation};

use crate::conversation::{engine_with_fakes, fixture};
use crate::fakes::deepgram_stt::FakeDeepgramStt;
use crate::fakes::deepgram_tts::FakeDeepgramTts;
use crate::fakes::groq::{FakeGroq, Reply};
use crate::harness::{TestServer, ACCOUNT_SID, AUTH_TOKEN};
use crate::support::eventually;
use crate::support::twilio_rest::FakeTwilio;

// ----- plugins and persona directories -------------------------------------------------------

/// The components `plugins/build.sh` builds, once per test binary (seconds when up to date).
pub(crate) fn built_plugins() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
        let out = Command::new("bash").arg(plugins.join("build.sh")).output().expect("running plugins/build.sh");
        assert!(
            out.status.success(),
            "plugins/build.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        plugins.join("target/personas")
    })
}

pub(crate) fn plugin(name: &str) -> PathBuf {
    built_plugins().join(format!("{name}.wasm"))
}

/// A personas directory holding `(persona name, built plugin)` pairs and `routes`.
pub(crate) fn personas_dir(plugins: &[(&str, &str)], routes: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, built) in plugins {
        std::fs::copy(plugin(built), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    std::fs::write(dir.path().join("routes.toml"), routes).unwrap();
    dir
}

/// Replaces `dir/name.wasm` atomically with a built plugin (as a deploy should).
pub(crate) fn install(dir: &Path, name: &str, built: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(plugin(built), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

pub(crate) fn start_host(dir: &Path, watch: bool, metrics: Arc<Metrics>) -> Arc<PluginHost> {
    let mut config = PluginHostConfig::new(dir);
    config.watch = watch;
    config.reload_on_sighup = watch;
    // A small pool: tests run in parallel, each with its own engine.
    config.runtime = RuntimeConfig { max_instances: 24, ..config.runtime };
    PluginHost::start(config, metrics).expect("plugin host")
}

pub(crate) fn inbound(to: &str) -> CallInfo {
    CallInfo {
        call_sid: sim::new_sid("CA"),
        stream_sid: sim::new_sid("MZ"),
        account_sid: ACCOUNT_SID.into(),
        direction: Direction::Inbound,
        from: "+15005550006".into(),
        to: to.into(),
        persona: None,
        parameters: BTreeMap::new(),
    }
}

fn outbound(persona: Option<&str>, params: &[(&str, &str)]) -> CallInfo {
    CallInfo {
        direction: Direction::Outbound,
        from: "+15550002222".into(),
        to: "+15559998888".into(),
        persona: persona.map(String::from),
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..inbound("+15559998888")
    }
}

/// `count` of `family{label}` in the metrics text, 0 when absent.
fn metric(text: &str, family: &str, label: &str) -> u64 {
    let prefix = format!("switchboard_{family}_total{{{label}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok()).unwrap_or(0)
}

// ----- a provider that records what the plugin did ---------------------------------------------

/// Wraps the plugin host and records, after each hook, whether the plugin (`live`) or the
/// built-in fallback answered.
#[derive(Clone)]
struct Spy {
    host: Arc<PluginHost>,
    events: Arc<Mutex<Vec<String>>>,
}

impl Spy {
    fn new(host: Arc<PluginHost>) -> Self {
        Spy { host, events: Arc::default() }
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

struct SpyPersona {
    inner: WasmPersona,
    events: Arc<Mutex<Vec<String>>>,
}

impl SpyPersona {
    fn note(&self, hook: &str) {
        let who = match (self.inner.persona_name(), self.inner.is_live()) {
            (Some(name), true) => name.to_string(),
            _ => "fallback".to_string(),
        };
        self.events.lock().unwrap().push(format!("{hook}:{who}"));
    }
}

impl PersonaProvider for Spy {
    fn persona_for(&self, call: &CallInfo) -> Box<dyn Persona> {
        Box::new(SpyPersona { inner: self.host.persona(call), events: self.events.clone() })
    }
}

impl Persona for SpyPersona {
    fn setup<'a>(&'a mut self, call: &'a CallInfo) -> HookFuture<'a, PersonaSetup> {
        Box::pin(async move {
            let r = self.inner.setup(call).await;
            self.note("setup");
            r
        })
    }
    fn on_user_turn<'a>(&'a mut self, transcript: &'a str) -> HookFuture<'a, Action> {
        Box::pin(async move {
            let r = self.inner.on_user_turn(transcript).await;
            self.note("turn");
            r
        })
    }
    fn on_idle(&mut self, attempt: u32) -> HookFuture<'_, Action> {
        Box::pin(async move {
            let r = self.inner.on_idle(attempt).await;
            self.note("idle");
            r
        })
    }
    fn on_tool_call<'a>(
        &'a mut self,
        name: &'a str,
        arguments: &'a str,
    ) -> HookFuture<'a, Result<ToolOutcome, String>> {
        Box::pin(async move {
            let r = self.inner.on_tool_call(name, arguments).await;
            self.note("tool");
            r
        })
    }
    fn on_dtmf<'a>(&'a mut self, digits: &'a str) -> HookFuture<'a, Action> {
        Box::pin(async move {
            let r = self.inner.on_dtmf(digits).await;
            self.note("dtmf");
            r
        })
    }
    fn on_call_end<'a>(&'a mut self, summary: &'a CallSummary) -> HookFuture<'a, ()> {
        Box::pin(async move {
            self.note("end");
            self.inner.on_call_end(summary).await
        })
    }
}

// ----- the engine rig ------------------------------------------------------------------------

/// A server running the conversation engine with every provider faked, its personas from a
/// plugin host.
struct Rig {
    server: TestServer,
    stt: FakeDeepgramStt,
    tts: FakeDeepgramTts,
    groq: FakeGroq,
    rest: FakeTwilio,
    metrics: Arc<Metrics>,
    _recordings: tempfile::TempDir,
}

impl Rig {
    async fn start(personas: Arc<dyn PersonaProvider>, metrics: Arc<Metrics>) -> Rig {
        let stt = FakeDeepgramStt::start().await;
        let tts = FakeDeepgramTts::start().await;
        let groq = FakeGroq::start().await;
        let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
        let recordings = tempfile::tempdir().unwrap();
        let conversation = engine_with_fakes(&stt, &tts, &groq, personas, metrics.clone(), recordings.path());
        let env = [
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_string()),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.to_string()),
            ("TWILIO_API_BASE_URL", rest.base_url().to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server =
            TestServer::start_with_metrics(&env, Overrides::default(), Arc::new(conversation), metrics.clone()).await;
        Rig { server, stt, tts, groq, rest, metrics, _recordings: recordings }
    }

    /// An inbound call to `to` with the caller speaking `turns_8k.wav` (or silent).
    fn plan(&self, to: &str, hangup_after: Duration, silent: bool) -> CallPlan {
        let audio = if silent {
            CallerAudio::from_pcm(&vec![0i16; 8000], 8000, &Segmentation::default()).unwrap()
        } else {
            CallerAudio::from_wav_file(&fixture("turns_8k.wav"), &Segmentation::default()).expect("clip")
        };
        let mut plan = CallPlan::new(format!("{}/", self.server.base).parse().unwrap(), Arc::new(audio));
        plan.auth_token = Some(AUTH_TOKEN.into());
        plan.account_sid = ACCOUNT_SID.into();
        plan.to = to.into();
        plan.hangup_after = hangup_after;
        plan
    }

    /// An outbound call placed for `persona` with `/dialout`-style parameters.
    fn outbound_plan(&self, persona: &str, params: &[(&str, &str)], hangup_after: Duration) -> CallPlan {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.append_pair("persona", persona);
        for (k, v) in params {
            query.append_pair(&format!("p.{k}"), v);
        }
        let mut plan = self.plan("+15559998888", hangup_after, false);
        plan.webhook_url = format!("{}/twiml?{}", self.server.base, query.finish()).parse().unwrap();
        plan.direction = sim::TwilioDirection::OutboundApi;
        plan.from = "+15550002222".into();
        plan
    }

    async fn call(&self, mut plan: CallPlan) -> CallReport {
        self.rest.seed_call(&plan.call_sid, &plan.from, &plan.to, "inbound", "in-progress");
        plan.end_signal = Some(self.rest.end_signal(&plan.call_sid));
        let report = simulate_call(&plan).await;
        for _ in 0..150 {
            if self.server.state.drain.active() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report
    }

    fn spoken(&self) -> String {
        self.tts.connections().iter().flat_map(|c| c.speaks.clone()).collect::<Vec<_>>().join(" ")
    }

    fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    fn hung_up(&self, call_sid: &str) -> bool {
        self.rest.requests().iter().any(|r| r.path.contains(call_sid) && r.field("Status") == Some("completed"))
    }
}

/// A host on a fresh directory, a spy over it and a rig, sharing one metrics registry.
async fn rig_with(plugins: &[(&str, &str)], routes: &str) -> (Rig, Spy, tempfile::TempDir) {
    let dir = personas_dir(plugins, routes);
    let metrics = Arc::new(Metrics::new());
    let host = start_host(dir.path(), false, metrics.clone());
    let spy = Spy::new(host);
    let rig = Rig::start(Arc::new(spy.clone()), metrics).await;
    (rig, spy, dir)
}

const SUPPORT_NUMBER: &str = "+15550001111";
const HOSTILE_NUMBER: &str = "+15550006666";
const OTHER_NUMBER: &str = "+15550009999";

fn hostile_routes(mode: &str, extra: &str) -> String {
    format!(
        "default = \"receptionist\"\n[routes]\n\"{HOSTILE_NUMBER}\" = \"hostile\"\n\
         [personas.hostile]\n{extra}\n[personas.hostile.secrets]\nmode = \"{mode}\"\n"
    )
}

/// A hostile call and, at the same time, a well-behaved call on the same server: the hostile
/// plugin's fault is contained to its own call's hook, the other call doesn't notice.
async fn hostile_call(mode: &str, extra: &str) -> (Rig, Spy, CallReport, CallReport) {
    let routes = hostile_routes(mode, extra);
    let (rig, spy, _dir) = rig_with(&[("hostile", "hostile"), ("receptionist", "receptionist")], &routes).await;
    // Both calls share the STT fake: every utterance of either is the same question.
    rig.stt.configure(|s| s.fallback = "What time is it?".into());
    let bad = rig.plan(HOSTILE_NUMBER, Duration::from_secs(9), false);
    let good = rig.plan(OTHER_NUMBER, Duration::from_secs(9), false);
    let (bad, good) = tokio::join!(rig.call(bad), rig.call(good));
    (rig, spy, bad, good)
}

/// Caller turns the bot answered with audio.
fn answered(r: &CallReport) -> usize {
    r.turns.iter().filter(|t| t.latency_ms.is_some()).count()
}

// ----- the reference receptionist ------------------------------------------------------------

#[tokio::test]
async fn receptionist_plugin_runs_a_call_through_the_engine() {
    let (rig, spy, _dir) = rig_with(&[("receptionist", "receptionist")], "default = \"receptionist\"\n").await;
    rig.groq.script([Reply::Text("Hello, I am Miss Harper, your teacher.".into())]);
    rig.stt.script(&["What time is it?"]);
    let report = rig.call(rig.plan(OTHER_NUMBER, Duration::from_secs(9), false)).await;
    assert!(report.ok(), "{report:?}");
    let spoken = rig.spoken();
    assert!(spoken.contains("Hello, I am Miss Harper, your teacher."), "the generated greeting was spoken: {spoken}");
    assert!(spoken.contains("You said: What time is it?"), "{spoken}");
    let first = &rig.groq.requests()[0].body;
    assert!(first["messages"][0]["content"].as_str().unwrap().contains("Miss Harper"), "{first}");
    assert!(first["messages"].to_string().contains("introduce yourself as Miss Harper"), "{first}");
    let events = spy.events();
    assert_eq!(events.first().map(String::as_str), Some("setup:receptionist"), "{events:?}");
    assert!(events.iter().all(|e| e.ends_with(":receptionist")), "the plugin answered every hook: {events:?}");
    assert!(events.iter().any(|e| e == "turn:receptionist"), "{events:?}");
    assert_eq!(metric(&rig.metrics_text(), "plugin_faults", "kind=\"trap\""), 0);
}

#[tokio::test]
async fn receptionist_plugin_matches_the_builtin_persona() {
    let dir = personas_dir(&[("receptionist", "receptionist")], "default = \"receptionist\"\n");
    let host = start_host(dir.path(), false, Arc::new(Metrics::new()));
    for call in [inbound(OTHER_NUMBER), outbound(None, &[])] {
        let mut plugin = host.persona(&call);
        let mut builtin = BuiltinPersona::new();
        assert_eq!(plugin.setup(&call).await, builtin.setup(&call).await, "{:?}", call.direction);
        assert!(plugin.is_live());
        for attempt in 1..=4 {
            assert_eq!(plugin.on_idle(attempt).await, builtin.on_idle(attempt).await, "idle {attempt}");
        }
        assert_eq!(plugin.on_user_turn("hi").await, Action::None);
        assert_eq!(plugin.on_dtmf("5").await, Action::None);
        assert!(plugin.is_live(), "no hook faulted");
    }
}

// ----- hostile plugins -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_hits_the_deadline_and_the_call_continues() {
    let (rig, spy, bad, good) = hostile_call("loop", "").await;
    assert!(bad.ok(), "{bad:?}");
    assert!(good.ok(), "the other call is unaffected: {good:?}");
    let spoken = rig.spoken();
    assert!(spoken.contains("Hostile persona here."), "the hostile greeting: {spoken}");
    // The looping turn hook was stopped and the built-in behaviour (let the LLM answer) took over.
    assert!(answered(&bad) >= 1 && answered(&good) >= 1, "both calls got answers: {bad:?} {good:?}");
    assert!(spoken.contains("You said: What time is it?"), "{spoken}");
    let events = spy.events();
    assert!(events.contains(&"turn:fallback".to_string()), "{events:?}");
    assert!(events.contains(&"turn:receptionist".to_string()), "{events:?}");
    assert_eq!(metric(&rig.metrics_text(), "plugin_faults", "kind=\"deadline\""), 1);
    // The answer came about one deadline (200 ms) later than the other call's, not seconds.
    let latency = |r: &CallReport| r.turns.iter().find_map(|t| t.latency_ms).unwrap_or(f64::MAX);
    let (b, g) = (latency(&bad), latency(&good));
    assert!(b - g < 1500.0, "the loop cost one deadline, not more: {b} ms vs {g} ms");
}

#[tokio::test]
async fn an_infinite_loop_at_call_start_falls_back_to_the_builtin_persona() {
    let routes = hostile_routes("loop", "") + "hook = \"start\"\n";
    let dir = personas_dir(&[("hostile", "hostile")], &routes);
    let metrics = Arc::new(Metrics::new());
    let host = start_host(dir.path(), false, metrics.clone());
    let call = inbound(HOSTILE_NUMBER);
    let mut persona = host.persona(&call);
    let started = Instant::now();
    let setup = persona.setup(&call).await;
    let took = started.elapsed();
    assert_eq!(setup, BuiltinPersona::new().setup(&call).await, "the built-in setup");
    assert!(!persona.is_live());
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(800), "{took:?}");
    assert_eq!(metric(&metrics.render(), "plugin_faults", "kind=\"deadline\""), 1);
    assert_eq!(persona.on_idle(4).await, BuiltinPersona::new().on_idle(4).await);
}

#[tokio::test]
async fn a_memory_bomb_hits_the_limit_and_the_call_continues() {
    let (rig, spy, bad, good) = hostile_call("bomb", "memory_mib = 32").await;
    assert!(bad.ok() && good.ok(), "{bad:?} {good:?}");
    assert!(answered(&bad) >= 1 && answered(&good) >= 1, "both calls got answers: {bad:?} {good:?}");
    assert!(spy.events().contains(&"turn:fallback".to_string()), "{:?}", spy.events());
    assert_eq!(metric(&rig.metrics_text(), "plugin_faults", "kind=\"memory\""), 1);
}

#[tokio::test]
async fn a_panic_traps_and_the_call_continues() {
    let (rig, spy, bad, good) = hostile_call("panic", "").await;
    assert!(bad.ok() && good.ok(), "{bad:?} {good:?}");
    assert!(answered(&bad) >= 1 && answered(&good) >= 1, "both calls got answers: {bad:?} {good:?}");
    assert!(spy.events().contains(&"turn:fallback".to_string()), "{:?}", spy.events());
    assert_eq!(metric(&rig.metrics_text(), "plugin_faults", "kind=\"trap\""), 1);
}

/// Accepts connections on 127.0.0.1 and counts them.
async fn counting_listener() -> (SocketAddr, Arc<Mutex<u32>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((_sock, _)) = listener.accept().await {
            *c.lock().unwrap() += 1;
        }
    });
    (addr, count)
}

#[tokio::test]
async fn http_to_a_host_off_the_allowlist_is_refused() {
    let (addr, connections) = counting_listener().await;
    let extra = "allowed_hosts = [\"127.0.0.1:1\", \"api.example.com\"]\n[personas.hostile.secrets]\n";
    let routes = hostile_routes("http", "").replace("[personas.hostile.secrets]\n", extra)
        + &format!("url = \"http://{addr}/steal\"\n");
    let (rig, spy, _dir) = rig_with(&[("hostile", "hostile"), ("receptionist", "receptionist")], &routes).await;
    rig.stt.script(&["What time is it?"]);
    let report = rig.call(rig.plan(HOSTILE_NUMBER, Duration::from_secs(9), false)).await;
    assert!(report.ok(), "{report:?}");
    let spoken = rig.spoken();
    assert!(spoken.contains(&format!("HTTP refused: host not allowed: {addr}.")), "{spoken}");
    assert_eq!(*connections.lock().unwrap(), 0, "no connection was made");
    assert!(spy.events().contains(&"turn:hostile".to_string()), "a refusal is not a fault: {:?}", spy.events());
    assert_eq!(metric(&rig.metrics_text(), "plugin_faults", "kind=\"http_denied\""), 1);
}

#[tokio::test]
async fn the_sandbox_has_no_filesystem_and_no_environment() {
    let dir = personas_dir(&[("hostile", "hostile")], &hostile_routes("probe", ""));
    let host = start_host(dir.path(), false, Arc::new(Metrics::new()));
    let call = inbound(HOSTILE_NUMBER);
    let mut persona = host.persona(&call);
    persona.setup(&call).await;
    let said = persona.on_user_turn("probe").await;
    assert_eq!(
        said,
        Action::Say("Sandbox: root directory refused, host file refused, 0 environment variables.".into())
    );
}

#[tokio::test]
async fn a_plugin_built_against_the_wrong_world_is_rejected() {
    let routes = format!("default = \"receptionist\"\n[routes]\n\"{SUPPORT_NUMBER}\" = \"old\"\n");
    let dir = personas_dir(&[("old", "wrong-world"), ("receptionist", "receptionist")], &routes);
    let metrics = Arc::new(Metrics::new());
    let host = start_host(dir.path(), false, metrics.clone());
    assert_eq!(host.personas(), ["receptionist"]);
    let report = host.reload_forced();
    let (file, reason) = report.rejected.first().expect("rejected");
    assert_eq!(file, "old.wasm");
    assert!(reason.contains("does not match the switchboard:persona@0.1.0 world"), "{reason}");
    assert!(reason.contains("switchboard:persona/hooks@0.1.0"), "the missing export is named: {reason}");
    // Its number goes to the default persona.
    let call = inbound(SUPPORT_NUMBER);
    let mut persona = host.persona(&call);
    persona.setup(&call).await;
    assert_eq!(persona.persona_name(), Some("receptionist"));
    assert_eq!(metric(&metrics.render(), "plugin_reloads", "result=\"rejected\""), 2, "at start and when forced");
    // The check tool says the same.
    let err = switchboard::persona::tools::check(&plugin("wrong-world")).await.unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[tokio::test]
async fn the_pool_falls_back_to_on_demand_allocation_when_it_cannot_be_reserved() {
    let dir = personas_dir(&[("receptionist", "receptionist")], "default = \"receptionist\"\n");
    let mut config = PluginHostConfig::new(dir.path());
    config.watch = false;
    config.reload_on_sighup = false;
    // 64 instances × 2 memories × 4 TiB is far more address space than a process has.
    config.runtime = RuntimeConfig { max_instances: 64, max_memory: 4 << 40, cache_dir: None };
    let host = PluginHost::start(config, Arc::new(Metrics::new())).unwrap();
    assert!(!host.runtime().pooling());
    let call = inbound(OTHER_NUMBER);
    let mut persona = host.persona(&call);
    persona.setup(&call).await;
    assert!(persona.is_live(), "instances still work without the pool");
    // The normal configuration gets the pool.
    let pooled = start_host(dir.path(), false, Arc::new(Metrics::new()));
    assert!(pooled.runtime().pooling());
}

// ----- routing and the example personas ------------------------------------------------------

const ROUTES: &str = r#"
default = "receptionist"
[routes]
"+15550001111" = "support-desk"
"+15550002222" = "reminder"
"+15550003333" = "gone"
"#;

#[tokio::test]
async fn calls_are_routed_by_number_direction_and_dialout_persona() {
    let dir = personas_dir(
        &[("receptionist", "receptionist"), ("support-desk", "support-desk"), ("reminder", "reminder")],
        ROUTES,
    );
    let host = start_host(dir.path(), false, Arc::new(Metrics::new()));
    let chosen = |call: CallInfo| host.persona(&call).persona_name().map(String::from);
    assert_eq!(chosen(inbound(SUPPORT_NUMBER)).as_deref(), Some("support-desk"), "inbound by To");
    assert_eq!(chosen(inbound(OTHER_NUMBER)).as_deref(), Some("receptionist"), "unrouted → default");
    assert_eq!(chosen(inbound("+15550003333")).as_deref(), Some("receptionist"), "no such file → default");
    assert_eq!(chosen(outbound(Some("support-desk"), &[])).as_deref(), Some("support-desk"), "dial-out persona");
    assert_eq!(chosen(outbound(None, &[])).as_deref(), Some("reminder"), "outbound by From");
    assert_eq!(chosen(outbound(Some("nope"), &[])).as_deref(), Some("reminder"), "unknown persona → From");
    // Without a default, an unrouted call runs on the built-in persona.
    let bare = personas_dir(&[("reminder", "reminder")], "");
    let host = start_host(bare.path(), false, Arc::new(Metrics::new()));
    let call = inbound(OTHER_NUMBER);
    let mut persona = host.persona(&call);
    assert_eq!(persona.persona_name(), None);
    assert_eq!(persona.setup(&call).await, BuiltinPersona::new().setup(&call).await);
}

#[tokio::test]
async fn reminder_uses_its_dialout_parameters_and_confirms_with_a_tool() {
    let (rig, spy, _dir) =
        rig_with(&[("reminder", "reminder"), ("receptionist", "receptionist")], "default = \"receptionist\"\n").await;
    rig.stt.script(&["Yes, I can make it."]);
    rig.groq.script([Reply::ToolCalls(vec![("confirm_appointment".into(), "{}".into())])]);
    let plan = rig.outbound_plan("reminder", &[("name", "Ada"), ("time", "3 pm")], Duration::from_secs(14));
    let sid = plan.call_sid.clone();
    let report = rig.call(plan).await;
    assert!(report.ok(), "{report:?}");
    let spoken = rig.spoken();
    assert!(spoken.contains("Hello Ada, this is a reminder of your appointment at 3 pm."), "{spoken}");
    assert!(spoken.contains("Thank you, Ada. See you at 3 pm. Goodbye!"), "{spoken}");
    let reqs = rig.groq.requests();
    assert_eq!(reqs.len(), 1, "the confirmation ends the call without another LLM round");
    let body = &reqs[0].body;
    assert!(body["messages"][0]["content"].as_str().unwrap().contains("appointment at 3 pm"), "{body}");
    let tools: Vec<&str> =
        body["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(tools, ["confirm_appointment", "reschedule_appointment"]);
    assert!(rig.hung_up(&sid), "the persona ended the call: {:?}", rig.rest.requests());
    assert!(report.duration_ms < 13_000.0, "{}", report.duration_ms);
    let kv = spy.host.kv("reminder");
    assert_eq!(kv.get(&format!("appointment:{sid}")).as_deref(), Some("confirmed"));
    assert!(spy.events().iter().all(|e| e.ends_with(":reminder")), "{:?}", spy.events());
}

#[tokio::test]
async fn reminder_reschedules_and_validates_its_arguments() {
    let dir = personas_dir(&[("reminder", "reminder")], "");
    let host = start_host(dir.path(), false, Arc::new(Metrics::new()));
    let call = outbound(Some("reminder"), &[("name", "Grace"), ("time", "9 am")]);
    let mut p = host.persona(&call);
    let setup = p.setup(&call).await;
    assert_eq!(
        setup.greeting,
        Greeting::Say("Hello Grace, this is a reminder of your appointment at 9 am. Can you make it?".into())
    );
    let moved = p.on_tool_call("reschedule_appointment", r#"{"new_time":"Friday 10 am"}"#).await.unwrap();
    let content: serde_json::Value = serde_json::from_str(&moved.content).unwrap();
    assert_eq!(content["new_time"], "Friday 10 am");
    assert_eq!(content["old_time"], "9 am");
    assert_eq!(moved.then, Action::None);
    assert_eq!(p.on_tool_call("reschedule_appointment", "{}").await, Err("new_time is required".into()));
    assert!(p.is_live(), "a tool error is an answer, not a fault");
    let stored = host.kv("reminder").get(&format!("appointment:{}", call.call_sid));
    assert_eq!(stored.as_deref(), Some("rescheduled:Friday 10 am"));
    assert_eq!(p.on_idle(2).await, Action::HangUp(Some("I'll try you again later. Goodbye!".into())));
}

/// An orders API on 127.0.0.1 recording the paths it was asked for.
async fn orders_api() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use axum::extract::Path as UrlPath;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/orders/{id}",
        axum::routing::get(move |UrlPath(id): UrlPath<String>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(format!("/orders/{id}"));
                match id.as_str() {
                    "slow" => tokio::time::sleep(Duration::from_millis(400)).await,
                    "hang" => tokio::time::sleep(Duration::from_secs(30)).await,
                    _ => {}
                }
                if id == "42" || id == "slow" {
                    Ok(axum::Json(serde_json::json!({"order_id": "42", "status": "shipped", "eta": "tomorrow"})))
                } else {
                    Err(axum::http::StatusCode::NOT_FOUND)
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn support_routes(api: SocketAddr, human: &str) -> String {
    format!(
        "default = \"receptionist\"\n[routes]\n\"{SUPPORT_NUMBER}\" = \"support-desk\"\n\
         [personas.support-desk]\nallowed_hosts = [\"{api}\"]\n\
         [personas.support-desk.secrets]\norders_api = \"http://{api}\"\nhuman_number = \"{human}\"\n"
    )
}

#[tokio::test]
async fn support_desk_looks_up_an_order_over_allowlisted_http_and_ends_the_call() {
    let (api, seen) = orders_api().await;
    let routes = support_routes(api, "+15557770000");
    let (rig, spy, _dir) =
        rig_with(&[("support-desk", "support-desk"), ("receptionist", "receptionist")], &routes).await;
    rig.stt.script(&["Where is my order 42?", "That's all, goodbye."]);
    rig.groq.script([
        Reply::ToolCalls(vec![("order_status".into(), r#"{"order_id":"42"}"#.into())]),
        Reply::Text("Your order 42 has shipped and arrives tomorrow.".into()),
    ]);
    let plan = rig.plan(SUPPORT_NUMBER, Duration::from_secs(21), false);
    let sid = plan.call_sid.clone();
    let report = rig.call(plan).await;
    assert!(report.ok(), "{report:?}");
    let spoken = rig.spoken();
    assert!(spoken.starts_with("Thanks for calling support."), "the persona's own greeting: {spoken}");
    assert_eq!(*seen.lock().unwrap(), ["/orders/42"]);
    let reqs = rig.groq.requests();
    let tool_msg = reqs[1].body["messages"].as_array().unwrap().iter().find(|m| m["role"] == "tool").cloned();
    let content = tool_msg.expect("the tool result went back to the LLM")["content"].as_str().unwrap().to_string();
    assert!(content.contains("\"status\":\"shipped\""), "{content}");
    assert!(spoken.contains("Your order 42 has shipped and arrives tomorrow."), "{spoken}");
    assert!(spoken.ends_with("Thanks for calling. Goodbye!"), "the persona said goodbye: {spoken}");
    assert!(rig.hung_up(&sid), "and hung up: {:?}", rig.rest.requests());
    assert!(report.duration_ms < 20_000.0, "before the caller did: {}", report.duration_ms);
    assert!(spy.events().iter().all(|e| e.ends_with(":support-desk")), "{:?}", spy.events());
}

#[tokio::test]
async fn support_desk_transfers_to_a_human_on_0() {
    let (api, _seen) = orders_api().await;
    let routes = support_routes(api, "+15557770000");
    let (rig, spy, _dir) =
        rig_with(&[("support-desk", "support-desk"), ("receptionist", "receptionist")], &routes).await;
    let mut plan = rig.plan(SUPPORT_NUMBER, Duration::from_secs(9), true);
    plan.dtmf = vec!["3:0".parse::<DtmfEvent>().unwrap()];
    let sid = plan.call_sid.clone();
    let report = rig.call(plan).await;
    assert!(report.ok(), "{report:?}");
    assert!(rig.spoken().contains("Please hold while I transfer your call."), "{}", rig.spoken());
    let twiml = rig.rest.call(&sid).and_then(|c| c.twiml).unwrap_or_default();
    assert!(twiml.contains("<Dial><Number>+15557770000</Number></Dial>"), "{twiml} {:?}", rig.rest.requests());
    assert!(spy.events().contains(&"dtmf:support-desk".to_string()), "{:?}", spy.events());
    assert!(rig.groq.requests().is_empty(), "no LLM round for the keypress");
}

// ----- hot reload ----------------------------------------------------------------------------

const SUPPORT_GREETING: &str =
    "Thanks for calling support. You can press 0 at any time to reach a person. How can I help?";

/// The greeting a new call to `to` gets now.
async fn greeting_now(host: &PluginHost, to: &str) -> Greeting {
    let call = inbound(to);
    host.persona(&call).setup(&call).await.greeting
}

/// Polls until a new call to `to` is greeted with `want`; the time it took.
async fn wait_for_greeting(host: &PluginHost, to: &str, want: &Greeting, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if greeting_now(host, to).await == *want {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn write_atomically(dir: &Path, file: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

fn miss_harper() -> Greeting {
    Greeting::Generate("Say hello and briefly introduce yourself as Miss Harper.".into())
}

#[tokio::test]
async fn a_replaced_persona_serves_new_calls_within_a_second_and_calls_in_progress_keep_theirs() {
    let dir = personas_dir(&[("front", "receptionist")], "default = \"front\"\n");
    let metrics = Arc::new(Metrics::new());
    let host = start_host(dir.path(), true, metrics.clone());
    let call = inbound(OTHER_NUMBER);
    let mut in_progress = host.persona(&call);
    assert_eq!(in_progress.setup(&call).await.greeting, miss_harper());
    // Routed before the swap, set up after it: still the version it was routed to.
    let routed_early = host.persona(&call);
    install(dir.path(), "front", "support-desk");
    let took = wait_for_greeting(&host, OTHER_NUMBER, &Greeting::Say(SUPPORT_GREETING.into()), Duration::from_secs(3))
        .await
        .expect("the new version serves new calls");
    assert!(took < Duration::from_secs(1), "swapped in {took:?}");
    let mut routed_early = routed_early;
    assert_eq!(routed_early.setup(&call).await.greeting, miss_harper());
    assert_eq!(
        in_progress.on_idle(4).await,
        Action::HangUp(Some("It seems you've stepped away. Goodbye for now!".into())),
        "the call in progress keeps its receptionist instance"
    );
    assert!(in_progress.is_live());
    assert_eq!(metric(&metrics.render(), "plugin_reloads", "result=\"ok\""), 2);
}

#[tokio::test]
async fn a_broken_file_is_rejected_once_and_the_previous_version_keeps_serving() {
    let dir = personas_dir(&[("front", "receptionist")], "default = \"front\"\n");
    let metrics = Arc::new(Metrics::new());
    let host = start_host(dir.path(), true, metrics.clone());
    let before = host.persona_hash("front").unwrap();
    let rejected = || metric(&metrics.render(), "plugin_reloads", "result=\"rejected\"");
    write_atomically(dir.path(), "front.wasm", b"\0asm\x0d\0\x01\0 truncated garbage");
    assert!(eventually(Duration::from_secs(2), || rejected() == 1).await, "rejected");
    std::fs::copy(plugin("wrong-world"), dir.path().join(".front.tmp")).unwrap();
    std::fs::rename(dir.path().join(".front.tmp"), dir.path().join("front.wasm")).unwrap();
    assert!(eventually(Duration::from_secs(2), || rejected() == 2).await, "the wrong world is rejected too");
    assert_eq!(host.persona_hash("front"), Some(before.clone()), "the previous version is still loaded");
    assert_eq!(greeting_now(&host, OTHER_NUMBER).await, miss_harper());
    // Unrelated changes reload the directory without reporting the same bad file again.
    std::fs::write(dir.path().join("routes.toml"), "default = \"front\"\n# touched\n").unwrap();
    let report = host.reload();
    assert_eq!(report.rejected, [("front.wasm".to_string(), "rejected before; unchanged since".to_string())]);
    assert_eq!(rejected(), 2);
    // A good file then replaces it.
    install(dir.path(), "front", "support-desk");
    let want = Greeting::Say(SUPPORT_GREETING.into());
    assert!(wait_for_greeting(&host, OTHER_NUMBER, &want, Duration::from_secs(2)).await.is_some());
    assert_eq!(metric(&metrics.render(), "plugin_faults", "kind=\"trap\""), 0);
}

#[tokio::test]
async fn a_removed_persona_falls_back_to_the_default() {
    let routes = format!("default = \"receptionist\"\n[routes]\n\"{SUPPORT_NUMBER}\" = \"support-desk\"\n");
    let dir = personas_dir(&[("receptionist", "receptionist"), ("support-desk", "support-desk")], &routes);
    let metrics = Arc::new(Metrics::new());
    let host = start_host(dir.path(), true, metrics.clone());
    assert_eq!(greeting_now(&host, SUPPORT_NUMBER).await, Greeting::Say(SUPPORT_GREETING.into()));
    std::fs::remove_file(dir.path().join("support-desk.wasm")).unwrap();
    let took = wait_for_greeting(&host, SUPPORT_NUMBER, &miss_harper(), Duration::from_secs(3)).await;
    assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "{took:?}");
    assert_eq!(host.personas(), ["receptionist"]);
    assert_eq!(metric(&metrics.render(), "plugin_reloads", "result=\"removed\""), 1);
}

#[tokio::test]
async fn routes_reload_and_a_bad_routes_file_keeps_the_previous_routes() {
    let dir = personas_dir(
        &[("receptionist", "receptionist"), ("support-desk", "support-desk")],
        "default = \"receptionist\"\n",
    );
    let metrics = Arc::new(Metrics::new());
    let host = start_host(dir.path(), true, metrics.clone());
    assert_eq!(greeting_now(&host, SUPPORT_NUMBER).await, miss_harper());
    let routes = format!("default = \"receptionist\"\n[routes]\n\"{SUPPORT_NUMBER}\" = \"support-desk\"\n");
    write_atomically(dir.path(), "routes.toml", routes.as_bytes());
    let want = Greeting::Say(SUPPORT_GREETING.into());
    assert!(wait_for_greeting(&host, SUPPORT_NUMBER, &want, Duration::from_secs(2)).await.is_some());
    write_atomically(dir.path(), "routes.toml", b"[routes]\n\"not a number\" = \"support-desk\"\n");
    let rejected = || metric(&metrics.render(), "plugin_reloads", "result=\"rejected\"");
    assert!(eventually(Duration::from_secs(2), || rejected() == 1).await);
    assert_eq!(greeting_now(&host, SUPPORT_NUMBER).await, want, "the previous routes keep serving");
}

#[tokio::test]
async fn sighup_forces_a_reload() {
    let dir = personas_dir(&[("receptionist", "receptionist")], "default = \"front\"\n");
    let mut config = PluginHostConfig::new(dir.path());
    config.watch = false;
    config.runtime = RuntimeConfig { max_instances: 8, ..config.runtime };
    let host = PluginHost::start(config, Arc::new(Metrics::new())).unwrap();
    install(dir.path(), "front", "support-desk");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host.personas(), ["receptionist"], "no file watching: nothing happens by itself");
    // SAFETY: raising a signal this process handles (the host registered SIGHUP above).
    assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
    assert!(eventually(Duration::from_secs(2), || host.personas() == ["front", "receptionist"]).await);
}

/// The issue's load scenario: while `simulate --calls 10` runs, the default persona is replaced
/// twice and a broken file dropped in; every call completes, new calls get each new version
/// within a second, the broken file changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_keeps_every_call() {
    let dir = personas_dir(&[("front", "receptionist")], "default = \"front\"\n");
    let metrics = Arc::new(Metrics::new());
    let host = start_host(dir.path(), true, metrics.clone());
    let spy = Spy::new(host.clone());
    let rig = Rig::start(Arc::new(spy.clone()), metrics.clone()).await;
    let args = sim::SimulateArgs {
        server: rig.server.base.parse().unwrap(),
        caller: fixture("turns_8k.wav"),
        record: None,
        calls: 10,
        ramp: 4.0,
        public_url: None,
        webhook_path: "/".into(),
        auth_token: Some(AUTH_TOKEN.into()),
        account_sid: Some(ACCOUNT_SID.into()),
        from: "+15005550006".into(),
        to: OTHER_NUMBER.into(),
        hangup_after: Some(9.0),
        dtmf: Vec::new(),
        min_silence_ms: 400,
        no_media_after_audio: false,
    };
    let load = tokio::spawn(sim::run(args));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    install(dir.path(), "front", "support-desk");
    let support = Greeting::Say(SUPPORT_GREETING.into());
    let first = wait_for_greeting(&host, OTHER_NUMBER, &support, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    install(dir.path(), "front", "reminder");
    let reminder = Greeting::Say(
        "Hello there, this is a reminder of your appointment at your booked time. Can you make it?".into(),
    );
    let second = wait_for_greeting(&host, OTHER_NUMBER, &reminder, Duration::from_secs(3)).await;
    let kept = host.persona_hash("front");
    write_atomically(dir.path(), "front.wasm", b"not a component");
    let rejected = || metric(&metrics.render(), "plugin_reloads", "result=\"rejected\"");
    assert!(eventually(Duration::from_secs(3), || rejected() == 1).await, "the broken file was rejected");
    assert_eq!(host.persona_hash("front"), kept, "and changed nothing");
    assert_eq!(greeting_now(&host, OTHER_NUMBER).await, reminder);
    let summary = load.await.unwrap().expect("simulate ran");
    assert_eq!(summary.calls.len(), 10);
    for call in &summary.calls {
        assert!(call.ok(), "every call completed: {call:?}");
    }
    for took in [first, second] {
        assert!(took.is_some_and(|t| t < Duration::from_secs(1)), "new calls got the new version in {took:?}");
    }
    let spoken = rig.spoken();
    assert!(spoken.contains(SUPPORT_GREETING), "calls started after the first swap heard it: {spoken}");
    let setups: Vec<String> = spy.events().into_iter().filter(|e| e.starts_with("setup:")).collect();
    assert_eq!(setups.len(), 10);
    assert!(setups.contains(&"setup:front".to_string()));
    assert_eq!(metric(&metrics.render(), "plugin_faults", "kind=\"trap\""), 0);
    assert_eq!(metric(&metrics.render(), "plugin_reloads", "result=\"ok\""), 3);
}

// ----- tooling -------------------------------------------------------------------------------

#[tokio::test]
async fn plugin_check_shows_the_world_and_the_setup_for_sample_calls() {
    let report = switchboard::persona::tools::check(&plugin("reminder")).await.unwrap();
    let text = report.to_string();
    println!("{text}");
    assert!(report.exports.contains(&"switchboard:persona/hooks@0.1.0 (interface)".to_string()), "{text}");
    for import in ["switchboard:persona/host@0.1.0", "switchboard:persona/kv@0.1.0"] {
        assert!(report.imports.iter().any(|i| i.starts_with(import)), "{import} in {text}");
    }
    assert_eq!(report.samples.len(), 2);
    let outbound = report.samples[1].1.as_ref().expect("on-call-start ran");
    assert_eq!(
        outbound.greeting,
        Greeting::Say("Hello Ada, this is a reminder of your appointment at 3 pm. Can you make it?".into())
    );
    assert!(text.contains("tool reschedule_appointment"), "{text}");
}

#[tokio::test]
async fn plugin_new_scaffolds_a_crate_that_builds_and_passes_check() {
    let _ = built_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let sdk = switchboard::persona::tools::default_sdk_dir().expect("plugins/sdk");
    let crate_dir = switchboard::persona::tools::new_plugin("front-desk", tmp.path(), &sdk).unwrap();
    let out = tmp.path().join("out");
    let build = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/build.sh"))
        .arg(&crate_dir)
        .env("OUT_DIR", &out)
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let report = switchboard::persona::tools::check(&out.join("front-desk.wasm")).await.unwrap();
    let inbound = report.samples[0].1.as_ref().expect("on-call-start ran");
    assert_eq!(inbound.greeting, Greeting::Say("Hello! How can I help you today?".into()));
    assert_eq!(inbound.tools.len(), 1);
}

#[tokio::test]
async fn the_compiled_cache_makes_restarts_skip_compilation_and_survives_corruption() {
    use switchboard::persona::{CacheOutcome, Runtime};
    let cache = tempfile::tempdir().unwrap();
    let config = RuntimeConfig { max_instances: 4, cache_dir: Some(cache.path().to_path_buf()), ..Default::default() };
    let bytes = std::fs::read(plugin("support-desk")).unwrap();
    let first = Runtime::new(&config, Arc::new(Metrics::new())).unwrap().load(&bytes).unwrap();
    assert_eq!(first.cache, CacheOutcome::Miss);
    // A restart: a new engine over the same cache.
    let runtime = Runtime::new(&config, Arc::new(Metrics::new())).unwrap();
    let second = runtime.load(&bytes).unwrap();
    assert_eq!(second.cache, CacheOutcome::Hit);
    assert_eq!(second.hash, first.hash);
    assert!(second.load_time < first.load_time / 5, "{:?} vs {:?}", second.load_time, first.load_time);
    let grants = switchboard::persona::Routes::empty(runtime.max_memory()).grants("support-desk");
    let mut instance = switchboard::persona::PluginInstance::new(&runtime, &second, grants, "CA1").unwrap();
    assert_eq!(
        instance.on_call_start(&inbound(SUPPORT_NUMBER)).unwrap().greeting,
        Greeting::Say(SUPPORT_GREETING.into())
    );
    // A damaged cache file is discarded and the component compiled again.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    assert_eq!(
        instance.on_idle(1).unwrap(),
        Action::Say("Are you still there?".into()),
        "running code does not depend on the cache file"
    );
    let third = Runtime::new(&config, Arc::new(Metrics::new())).unwrap().load(&bytes).unwrap();
    assert_eq!(third.cache, CacheOutcome::Miss);
}

#[tokio::test]
async fn time_waiting_on_http_is_not_charged_to_the_hook_deadline_but_requests_time_out() {
    let (api, seen) = orders_api().await;
    let routes = support_routes(api, "+15557770000")
        .replace("[personas.support-desk.secrets]", "http_timeout_ms = 700\n[personas.support-desk.secrets]");
    let dir = personas_dir(&[("support-desk", "support-desk")], &routes);
    let host = start_host(dir.path(), false, Arc::new(Metrics::new()));
    let call = inbound(SUPPORT_NUMBER);
    let mut p = host.persona(&call);
    p.setup(&call).await;
    // 400 ms of waiting is twice the 200 ms CPU deadline: still fine.
    let slow = p.on_tool_call("order_status", r#"{"order_id":"slow"}"#).await.unwrap();
    assert!(slow.content.contains("shipped"), "{}", slow.content);
    // A request that never answers times out; the tool reports it and the plugin lives on.
    let started = Instant::now();
    let hung = p.on_tool_call("order_status", r#"{"order_id":"hang"}"#).await;
    assert_eq!(hung, Err("order lookup failed: timed out".into()));
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    assert!(p.is_live());
    assert_eq!(*seen.lock().unwrap(), ["/orders/slow", "/orders/hang"]);
}
