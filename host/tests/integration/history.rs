//! Call history end to end: the simulator calls a real server running the conversation engine
//! against the provider fakes, the history records each call on its writer thread, and the tests
//! read it back through `/api/calls` and `/dashboard` as a user would.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use switchboard::call::events::{CallEvent, CallEvents};
use switchboard::config::Overrides;
use switchboard::history::{History, HistoryOptions, SCHEMA_VERSION};
use switchboard::metrics::Metrics;
use switchboard::sim::{self, SimulateArgs};

use crate::conversation::{fixture, Rig, TestPersona};
use crate::harness::{ProbeSessions, TestServer, ACCOUNT_SID, AUTH_TOKEN};
use crate::support::browser;

/// A history in its own directory, shared with the test so it can flush and inspect it.
pub(crate) fn open_history(dir: &Path, options: HistoryOptions, metrics: Arc<Metrics>) -> Arc<History> {
    Arc::new(History::open(&dir.join("data/switchboard.db"), options, metrics).expect("history opens"))
}

pub(crate) async fn flush(history: &Arc<History>) {
    let h = history.clone();
    assert!(tokio::task::spawn_blocking(move || h.flush(Duration::from_secs(60))).await.unwrap(), "history flushed");
}

async fn rig_with_history(
    extra_env: &[(&str, &str)],
    options: HistoryOptions,
) -> (Rig, Arc<History>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let history_slot: Arc<std::sync::Mutex<Option<Arc<History>>>> = Default::default();
    let slot = history_slot.clone();
    let path = dir.path().to_path_buf();
    let rig = Rig::start_with(TestPersona::default(), extra_env, move |state| {
        let history = open_history(&path, options, state.metrics.clone());
        let state = state.with_history(&history);
        *slot.lock().unwrap() = Some(history);
        state
    })
    .await;
    let history = history_slot.lock().unwrap().take().unwrap();
    (rig, history, dir)
}

/// A server without the conversation engine, for API behaviour that needs no real call.
async fn api_server(env: &[(&str, &str)], history: Option<&Arc<History>>) -> TestServer {
    let (sessions, _calls) = ProbeSessions::new();
    TestServer::start_customised(env, Overrides::default(), sessions, Arc::new(Metrics::new()), |s| match history {
        Some(h) => s.with_history(h),
        None => s,
    })
    .await
}

async fn get(url: &str) -> (StatusCode, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

/// Records one finished call directly through an event hub, as a session and transport would.
fn record_call(history: &History, sid: &str, started_at_ms: u64, ended: bool) {
    let hub = CallEvents::new();
    hub.add_sink(history.sink());
    let call = hub.open(sid);
    call.emit(CallEvent::Started {
        direction: "inbound".into(),
        from: "+15550001".into(),
        to: "+15550002".into(),
        requested_persona: None,
        started_at_ms,
    });
    if ended {
        call.emit(CallEvent::Ended { outcome: "caller_hung_up".into(), detail: None, ended_at_ms: started_at_ms + 1 });
    }
}

#[tokio::test]
async fn a_call_is_recorded_with_persona_outcome_latencies_and_a_seekable_recording() {
    let (rig, history, _dir) = rig_with_history(&[], HistoryOptions::default()).await;
    rig.stt.script(&["What time is it?"]);
    let plan = rig.plan("turns_8k.wav", Duration::from_secs(9));
    let sid = plan.call_sid.clone();
    let report = rig.call(plan.clone()).await;
    assert!(report.ok(), "{report:?}");
    flush(&history).await;
    let base = &rig.server.base;

    let (status, call) = get(&format!("{base}/api/calls/{sid}")).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["direction"], "inbound");
    assert_eq!((call["from"].as_str(), call["to"].as_str()), (Some(plan.from.as_str()), Some(plan.to.as_str())));
    assert_eq!(call["persona"]["name"], "built-in");
    assert_eq!(call["persona"]["version"], Value::Null, "the built-in persona has no content hash");
    assert_eq!(call["outcome"], "caller_hung_up");
    let duration = call["duration_ms"].as_i64().unwrap();
    assert!((8_000..12_000).contains(&duration), "about the 9 s the caller stayed: {duration}");
    assert_eq!(call["ended_at_ms"].as_i64().unwrap() - call["started_at_ms"].as_i64().unwrap(), duration);

    // The lines are the transcript file's, latencies included.
    let file_lines = rig.transcript_lines();
    let api_lines = call["lines"].as_array().unwrap();
    assert!(file_lines.len() >= 3, "greeting, question, answer: {file_lines:?}");
    assert_eq!(api_lines.len(), file_lines.len());
    for (i, (api, file)) in api_lines.iter().zip(&file_lines).enumerate() {
        assert_eq!(api["seq"], i as i64);
        for field in ["role", "text", "start_ms", "end_ms", "interrupted"] {
            assert_eq!(api[field], file[field], "line {i} {field}");
        }
        assert_eq!(api["latency"], *file.get("latency").unwrap_or(&Value::Null), "line {i} latency");
    }
    let answered =
        api_lines.iter().filter(|l| l["role"] == "assistant" && l["latency"]["voice_to_voice_ms"].is_f64()).count();
    assert!(answered >= 1, "an answer with its voice-to-voice latency: {api_lines:?}");
    let users = api_lines.iter().filter(|l| l["role"] == "user").count() as i64;
    assert_eq!(call["turns"], users);

    // The list has it too.
    let (_, page) = get(&format!("{base}/api/calls")).await;
    assert_eq!(page["calls"][0]["call_sid"], sid.as_str());
    assert_eq!(page["calls"][0]["has_recording"], true);

    // The recording is the recorder's file, served with ranges.
    let file = std::fs::read(call["recording_path"].as_str().unwrap()).unwrap();
    let client = reqwest::Client::new();
    let url = format!("{base}/api/calls/{sid}/recording");
    let full = client.get(&url).send().await.unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.headers()["content-type"], "audio/wav");
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert_eq!(full.bytes().await.unwrap(), file);
    let part = client.get(&url).header("Range", "bytes=0-43").send().await.unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], format!("bytes 0-43/{}", file.len()).as_str());
    let head = part.bytes().await.unwrap();
    assert_eq!(&head[..], &file[..44]);
    assert_eq!(&head[..4], b"RIFF");
    let tail = client.get(&url).header("Range", "bytes=-100").send().await.unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&tail.bytes().await.unwrap()[..], &file[file.len() - 100..]);
    let beyond = client.get(&url).header("Range", format!("bytes={}-", file.len() + 10)).send().await.unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_simulated_calls_are_listed_paged_and_shown_in_the_dashboard() {
    let (rig, history, _dir) = rig_with_history(&[], HistoryOptions::default()).await;
    let args = SimulateArgs {
        server: rig.server.base.parse().unwrap(),
        caller: fixture("turns_8k.wav"),
        record: None,
        calls: 20,
        ramp: 2.0,
        public_url: None,
        webhook_path: "/".into(),
        auth_token: Some(AUTH_TOKEN.into()),
        account_sid: Some(ACCOUNT_SID.into()),
        from: "+15005550006".into(),
        to: "+15005550001".into(),
        // Long enough for the greeting, the first question and its answer.
        hangup_after: Some(8.0),
        dtmf: Vec::new(),
        min_silence_ms: 400,
        no_media_after_audio: false,
    };
    let summary = sim::run(args).await.expect("simulate runs");
    assert_eq!(summary.calls.len(), 20);
    assert!(summary.calls.iter().all(|c| c.ok()), "{:?}", summary.calls);
    // The transport reports the end after the simulator has gone: wait for every call to close.
    for _ in 0..200 {
        if rig.server.state.drain.active() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    flush(&history).await;
    let base = &rig.server.base;
    let (status, page) = get(&format!("{base}/api/calls?limit=50")).await;
    assert_eq!(status, StatusCode::OK);
    let calls = page["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 20, "{page}");
    assert_eq!(page["next_before"], Value::Null);
    let starts: Vec<i64> = calls.iter().map(|c| c["started_at_ms"].as_i64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]), "newest first: {starts:?}");
    for c in calls {
        assert_eq!(c["outcome"], "caller_hung_up", "{c}");
        assert_eq!(c["persona"]["name"], "built-in");
        assert_eq!(c["has_recording"], true);
    }
    // Pages of 7 chain to the same 20, each once.
    let mut seen = Vec::new();
    let mut url = format!("{base}/api/calls?limit=7");
    loop {
        let (_, page) = get(&url).await;
        seen.extend(page["calls"].as_array().unwrap().iter().map(|c| c["call_sid"].as_str().unwrap().to_string()));
        match page["next_before"].as_str() {
            Some(next) => url = format!("{base}/api/calls?limit=7&before={}", urlencode(next)),
            None => break,
        }
    }
    let all: Vec<String> = calls.iter().map(|c| c["call_sid"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen, all);
    let (_, outbound) = get(&format!("{base}/api/calls?direction=outbound")).await;
    assert_eq!(outbound["calls"].as_array().unwrap().len(), 0);
    let metrics = rig.metrics.render();
    assert_eq!(metric(&metrics, "switchboard_history_dropped_events_total"), 0, "{metrics}");
    assert_eq!(metric(&metrics, "switchboard_history_errors_total"), 0, "{metrics}");

    // The same history in the dashboard, in a real browser: the list, then one answered call.
    let mut answered = None;
    for sid in &all {
        let (_, call) = get(&format!("{base}/api/calls/{sid}")).await;
        let lines = call["lines"].as_array().unwrap();
        if lines.iter().any(|l| l["role"] == "assistant" && l["latency"]["voice_to_voice_ms"].is_f64()) {
            answered = Some(sid.clone());
            break;
        }
    }
    let sid = answered.expect("a call whose question was answered");
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let expect = all.len().to_string();
    browser::run_node_tests(
        &["dashboard.test.mjs"],
        &[
            ("BASE_URL", base.as_str()),
            ("EXPECT_CALLS", expect.as_str()),
            ("CALL_SID", sid.as_str()),
            ("SCREENSHOTS", shots.to_str().unwrap()),
        ],
        Duration::from_secs(60),
    )
    .await;
    // `UPDATE_SCREENSHOTS=1` refreshes the ones in the docs.
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let docs = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
        for name in ["dashboard-list.png", "dashboard-call.png"] {
            std::fs::copy(shots.join(name), docs.join(name)).expect("copy the screenshot into docs/img");
        }
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn a_locked_database_never_breaks_a_call_and_is_counted() {
    let options = HistoryOptions {
        busy_timeout: Duration::from_millis(100),
        retry_for: Duration::from_secs(60),
        ..Default::default()
    };
    let (rig, history, dir) = rig_with_history(&[], options).await;
    // Another process holds the write lock for the whole call.
    let lock = rusqlite::Connection::open(dir.path().join("data/switchboard.db")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    rig.stt.script(&["What time is it?"]);
    let plan = rig.plan("turns_8k.wav", Duration::from_secs(9));
    let sid = plan.call_sid.clone();
    let report = rig.call(plan).await;
    assert!(report.ok(), "{report:?}");
    assert!(report.first_audio_ms.is_some(), "the greeting was heard");
    assert!(report.turns.iter().any(|t| t.latency_ms.is_some()), "the question was answered: {:?}", report.turns);
    assert_eq!(report.underruns, 0, "the audio path never waited for the database");
    let metrics = rig.metrics.render();
    assert!(metric(&metrics, "switchboard_history_errors_total{kind=\"busy\"}") >= 1, "{metrics}");
    // The lock goes: the batches held back are written, nothing lost.
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    flush(&history).await;
    let (status, call) = get(&format!("{}/api/calls/{sid}", rig.server.base)).await;
    assert_eq!(status, StatusCode::OK, "{call}");
    assert_eq!(call["outcome"], "caller_hung_up");
    assert_eq!(call["lines"].as_array().unwrap().len(), rig.transcript_lines().len());
    assert_eq!(metric(&rig.metrics.render(), "switchboard_history_dropped_events_total"), 0);
}

#[tokio::test]
async fn the_api_key_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let history = open_history(dir.path(), HistoryOptions::default(), Arc::new(Metrics::new()));
    record_call(&history, "CAkeyed", 1_000, true);
    flush(&history).await;
    let server = api_server(&[("API_KEY", "s3cret-key")], Some(&history)).await;
    let client = reqwest::Client::new();
    for path in ["/api/calls", "/api/calls/CAkeyed", "/api/calls/CAkeyed/recording"] {
        let url = format!("{}{path}", server.base);
        let none = client.get(&url).send().await.unwrap();
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        assert!(none.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("API key"));
        let wrong = client.get(&url).bearer_auth("s3cret-kez").send().await.unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let ok = client.get(format!("{}/api/calls", server.base)).bearer_auth("s3cret-key").send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.json::<Value>().await.unwrap()["calls"][0]["call_sid"], "CAkeyed");
    // Through a tunnel, with the key: fine.
    let tunnelled = client
        .get(format!("{}/api/calls", server.base))
        .bearer_auth("s3cret-key")
        .header("X-Forwarded-For", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(tunnelled.status(), StatusCode::OK);
    // The page itself holds no data and loads without a key.
    assert_eq!(client.get(format!("{}/dashboard", server.base)).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn without_a_key_only_direct_local_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let history = open_history(dir.path(), HistoryOptions::default(), Arc::new(Metrics::new()));
    record_call(&history, "CAlocal", 1_000, true);
    flush(&history).await;
    let server = api_server(&[], Some(&history)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/calls/CAlocal", server.base);
    assert_eq!(client.get(&url).send().await.unwrap().status(), StatusCode::OK, "loopback, no proxy headers");
    for (h, v) in [
        ("X-Forwarded-For", "198.51.100.7"),
        ("Forwarded", "for=198.51.100.7;proto=https"),
        ("X-Forwarded-Host", "abc.ngrok.app"),
    ] {
        let resp = client.get(&url).header(h, v).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{h}");
        assert!(resp.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("API_KEY"));
    }
    // A key sent to a server that has none doesn't open anything up.
    let resp = client.get(&url).bearer_auth("anything").header("X-Forwarded-For", "1.2.3.4").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let history = open_history(dir.path(), HistoryOptions::default(), Arc::new(Metrics::new()));
    record_call(&history, "CAnorec", 1_000, true);
    flush(&history).await;
    let server = api_server(&[], Some(&history)).await;
    let base = &server.base;
    let cases = [
        ("/api/calls/CAmissing", StatusCode::NOT_FOUND, "no call"),
        ("/api/calls/CAmissing/recording", StatusCode::NOT_FOUND, "no call"),
        ("/api/calls/CAnorec/recording", StatusCode::NOT_FOUND, "no recording"),
        ("/api/calls/bad%20sid", StatusCode::BAD_REQUEST, "not a call sid"),
        ("/api/calls/..%2F..%2Fetc/recording", StatusCode::BAD_REQUEST, "not a call sid"),
        ("/api/calls?limit=0", StatusCode::BAD_REQUEST, "limit"),
        ("/api/calls?limit=lots", StatusCode::BAD_REQUEST, "limit"),
        ("/api/calls?before=yesterday", StatusCode::BAD_REQUEST, "before"),
        ("/api/calls?direction=up", StatusCode::BAD_REQUEST, "direction"),
        ("/api/calls?order=asc", StatusCode::BAD_REQUEST, "unknown parameter"),
    ];
    for (path, status, says) in cases {
        let (got, body) = get(&format!("{base}{path}")).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(says)), "{path}: {body}");
    }
    // A server with history off says so.
    let off = api_server(&[], None).await;
    let (status, body) = get(&format!("{}/api/calls", off.base)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["error"].as_str().unwrap().contains("off"), "{body}");
}

#[tokio::test]
async fn reopening_migrates_once_and_marks_unfinished_calls_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/switchboard.db");
    {
        let history = open_history(dir.path(), HistoryOptions::default(), Arc::new(Metrics::new()));
        record_call(&history, "CAcrashed", 1_000, false);
        record_call(&history, "CAfinished", 2_000, true);
        flush(&history).await;
        // The process "dies" here: CAcrashed never got its end.
    }
    for _ in 0..2 {
        let history = open_history(dir.path(), HistoryOptions::default(), Arc::new(Metrics::new()));
        let server = api_server(&[], Some(&history)).await;
        let (_, crashed) = get(&format!("{}/api/calls/CAcrashed", server.base)).await;
        assert_eq!(crashed["outcome"], "interrupted", "{crashed}");
        assert_eq!(crashed["ended_at_ms"], Value::Null);
        let (_, finished) = get(&format!("{}/api/calls/CAfinished", server.base)).await;
        assert_eq!(finished["outcome"], "caller_hung_up");
        let (_, page) = get(&format!("{}/api/calls", server.base)).await;
        assert_eq!(page["calls"].as_array().unwrap().len(), 2, "reopening keeps every call once");
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[tokio::test]
async fn the_dashboard_is_served_from_embedded_assets_only() {
    let server = api_server(&[], None).await;
    let client = reqwest::Client::new();
    let page = client.get(format!("{}/dashboard", server.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    // Every src/href is one of the page's own files or an in-page link.
    let refs: Vec<&str> = ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1).map(|rest| rest.split('"').next().unwrap()))
        .collect();
    assert!(refs.len() >= 4, "{refs:?}");
    let mut js = String::new();
    let mut css = String::new();
    for r in &refs {
        if r.starts_with('#') {
            continue;
        }
        assert!(r.starts_with("/dashboard/"), "only embedded assets: {r}");
        let resp = client.get(format!("{}{r}", server.base)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{r}");
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let expected = match r.rsplit('.').next().unwrap() {
            "js" => "text/javascript",
            "css" => "text/css",
            "svg" => "image/svg+xml",
            other => panic!("unexpected asset type {other}"),
        };
        assert!(ct.starts_with(expected), "{r}: {ct}");
        let body = resp.text().await.unwrap();
        match expected {
            "text/javascript" => js = body,
            "text/css" => css = body,
            _ => {}
        }
    }
    // Nothing is fetched from elsewhere (the SVG namespace is a name, not a request).
    for (name, text) in [("html", &html), ("js", &js), ("css", &css)] {
        let outside = text.replace("http://www.w3.org/2000/svg", "");
        assert!(!outside.contains("http://") && !outside.contains("https://"), "{name} refers outside");
        assert!(!outside.contains("@import"), "{name} imports");
    }
    // Every element the script looks up exists in the page, and the test hooks are there.
    let ids: Vec<&str> = js.split("$(\"").skip(1).map(|rest| rest.split('"').next().unwrap()).collect();
    assert!(ids.len() > 10);
    for id in ids {
        assert!(html.contains(&format!("id=\"{id}\"")), "the page lacks #{id}");
    }
    for hook in ["id=\"calls\"", "id=\"transcript\"", "<audio id=\"recording\"", "id=\"latency-chart\""] {
        assert!(html.contains(hook), "{hook}");
    }
    for hook in ["dataset: { sid:", "class: `line ", "dataset: { turn:"] {
        assert!(js.contains(hook), "{hook}");
    }
    let slash = client.get(format!("{}/dashboard/", server.base)).send().await.unwrap();
    assert_eq!(slash.url().path(), "/dashboard", "/dashboard/ redirects");
    let missing = client.get(format!("{}/dashboard/nope.js", server.base)).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
