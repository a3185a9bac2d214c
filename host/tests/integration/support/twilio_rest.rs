//! A fake of Twilio's REST API (2010-04-01) on 127.0.0.1:0, for the calls Switchboard makes:
//! create (`POST …/Calls.json`), fetch (`GET …/Calls/{CA}.json`), update (`POST …/Calls/{CA}.json`
//! with `Status=completed` or `Twiml=`) and start a recording (`POST …/Calls/{CA}/Recordings.json`).
//!
//! It checks HTTP Basic auth, answers with Twilio's JSON shapes and error bodies, records every
//! request for assertions, can fail or delay requests on demand, and — when told to answer calls —
//! acts as Twilio after a create: fetches the call's `Url` (signed) and runs the simulator's stream
//! against the TwiML it gets, so the outbound path can be tested end to end.

// Each test uses a different part of this fake.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use switchboard::sim::{self, CallPlan, CallReport, CallerAudio, DtmfEvent, TwilioDirection, WebhookMethod};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use url::Url;

const API: &str = "/2010-04-01/Accounts/";

/// One request as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// User name of the Basic credentials, if any were sent.
    pub auth_user: Option<String>,
    /// True when the Basic credentials matched the configured sid and token.
    pub authorized: bool,
    /// Form fields of the body, in order.
    pub form: Vec<(String, String)>,
}

impl RecordedRequest {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A call the fake knows about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCall {
    pub sid: String,
    pub from: String,
    pub to: String,
    pub direction: String,
    pub status: String,
    /// TwiML set by an update (`Twiml=`), e.g. a transfer's `<Dial>`.
    pub twiml: Option<String>,
    /// `Url` of a created call.
    pub url: Option<String>,
    pub recordings: Vec<String>,
}

/// How created calls are answered: the simulator plays `caller` into the stream.
#[derive(Debug, Clone)]
pub struct Answer {
    pub caller: Arc<CallerAudio>,
    /// Loopback base to send requests to when the call's `Url` names a public host.
    pub server: Option<Url>,
    /// Default: the caller audio's length plus 8 s.
    pub hangup_after: Option<Duration>,
    pub record: Option<PathBuf>,
    pub dtmf: Vec<DtmfEvent>,
}

impl Answer {
    pub fn new(caller: Arc<CallerAudio>) -> Self {
        Self { caller, server: None, hangup_after: None, record: None, dtmf: Vec::new() }
    }
}

#[derive(Debug, Clone)]
struct Fault {
    remaining: u32,
    status: u16,
    code: u32,
    message: String,
}

#[derive(Default)]
struct Inner {
    requests: Vec<RecordedRequest>,
    calls: HashMap<String, FakeCall>,
    fault: Option<Fault>,
    delay: Duration,
    answer: Option<Answer>,
    /// Ends a simulated call when the REST API completes or redirects it.
    end_signals: HashMap<String, CancellationToken>,
    reports: HashMap<String, CallReport>,
}

struct Shared {
    account_sid: String,
    auth_token: String,
    base_url: String,
    inner: Mutex<Inner>,
    answered: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running fake; stops when dropped.
pub struct FakeTwilio {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTwilio {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.abort();
        for token in self.shared.lock().end_signals.values() {
            token.cancel();
        }
    }
}

impl FakeTwilio {
    /// Starts the fake for one account.
    pub async fn start(account_sid: &str, auth_token: &str) -> FakeTwilio {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake Twilio REST");
        let base_url = format!("http://{}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            account_sid: account_sid.to_string(),
            auth_token: auth_token.to_string(),
            base_url,
            inner: Mutex::new(Inner::default()),
            answered: Notify::new(),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&shared));
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        FakeTwilio { shared, shutdown: Some(tx), server }
    }

    /// `http://127.0.0.1:PORT`: what `TWILIO_API_BASE_URL` should be.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    pub fn account_sid(&self) -> &str {
        &self.shared.account_sid
    }

    pub fn auth_token(&self) -> &str {
        &self.shared.auth_token
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Drops what was recorded and every call it knew; only between calls, for long runs.
    pub fn forget(&self) {
        let mut inner = self.shared.lock();
        inner.requests.clear();
        inner.calls.clear();
        inner.end_signals.clear();
        inner.reports.clear();
    }

    /// Makes a call known (as an inbound call Twilio would know about).
    pub fn seed_call(&self, sid: &str, from: &str, to: &str, direction: &str, status: &str) {
        let call = FakeCall {
            sid: sid.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            direction: direction.to_string(),
            status: status.to_string(),
            twiml: None,
            url: None,
            recordings: Vec::new(),
        };
        self.shared.lock().calls.insert(sid.to_string(), call);
    }

    /// The call's current state.
    pub fn call(&self, sid: &str) -> Option<FakeCall> {
        self.shared.lock().calls.get(sid).cloned()
    }

    /// Sids of all known calls.
    pub fn call_sids(&self) -> Vec<String> {
        self.shared.lock().calls.keys().cloned().collect()
    }

    /// The next `n` requests fail with `status` and Twilio's error body carrying `code`.
    pub fn fail_next(&self, n: u32, status: u16, code: u32, message: &str) {
        self.shared.lock().fault = Some(Fault { remaining: n, status, code, message: message.to_string() });
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock().delay = delay;
    }

    /// From now on, created calls are answered by the simulator.
    pub fn answer_calls(&self, answer: Answer) {
        self.shared.lock().answer = Some(answer);
    }

    /// A signal for `call_sid` that fires when the REST API completes or redirects that call; put
    /// it in a [`CallPlan::end_signal`] to make a simulated inbound call end as Twilio would.
    pub fn end_signal(&self, call_sid: &str) -> CancellationToken {
        self.shared.lock().end_signals.entry(call_sid.to_string()).or_default().clone()
    }

    /// Waits for the simulated call answered for `call_sid` to finish; `None` on timeout.
    pub async fn wait_answered(&self, call_sid: &str, timeout: Duration) -> Option<CallReport> {
        let wait = async {
            loop {
                let notified = self.shared.answered.notified();
                if let Some(r) = self.shared.lock().reports.get(call_sid) {
                    return r.clone();
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (auth_user, authorized) = check_basic(&headers, &shared.account_sid, &shared.auth_token);
    let request = RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().map(str::to_string),
        auth_user,
        authorized,
        form,
    };
    let (delay, fault) = {
        let mut inner = shared.lock();
        inner.requests.push(request.clone());
        let fault = inner.fault.as_mut().filter(|f| f.remaining > 0).map(|f| {
            f.remaining -= 1;
            f.clone()
        });
        (inner.delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(f) = fault {
        return twilio_error(f.status, f.code, &f.message);
    }
    if !request.authorized {
        let mut resp = twilio_error(401, 20003, "Authenticate");
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"Twilio API\""));
        return resp;
    }
    route(&shared, &method, &request)
}

fn route(shared: &Arc<Shared>, method: &Method, req: &RecordedRequest) -> Response {
    let not_found = || twilio_error(404, 20404, &format!("The requested resource {} was not found", req.path));
    let Some(rest) = req.path.strip_prefix(API) else { return not_found() };
    let segments: Vec<&str> = rest.split('/').collect();
    match (method, segments.as_slice()) {
        (_, [account, ..]) if *account != shared.account_sid => twilio_error(401, 20003, "Authenticate"),
        (&Method::POST, [_, "Calls.json"]) => create_call(shared, req),
        (&Method::GET, [_, "Calls", file]) => match file.strip_suffix(".json") {
            Some(sid) => fetch_call(shared, sid).unwrap_or_else(not_found),
            None => not_found(),
        },
        (&Method::POST, [_, "Calls", file]) => match file.strip_suffix(".json") {
            Some(sid) => update_call(shared, sid, req).unwrap_or_else(not_found),
            None => not_found(),
        },
        (&Method::POST, [_, "Calls", sid, "Recordings.json"]) => {
            start_recording(shared, sid, req).unwrap_or_else(not_found)
        }
        _ => not_found(),
    }
}

fn create_call(shared: &Arc<Shared>, req: &RecordedRequest) -> Response {
    let (to, from) = (req.field("To").unwrap_or(""), req.field("From").unwrap_or(""));
    if to.is_empty() {
        return twilio_error(400, 21201, "No 'To' number is specified");
    }
    if !is_e164(to) {
        return twilio_error(400, 21211, &format!("Invalid 'To' Phone Number: {to}"));
    }
    if from.is_empty() {
        return twilio_error(400, 21603, "A 'From' phone number is required.");
    }
    if !is_e164(from) {
        return twilio_error(400, 21212, &format!("Invalid From Number (caller ID): {from}"));
    }
    let url = req.field("Url").map(str::to_string);
    let twiml = req.field("Twiml").map(str::to_string);
    match (&url, &twiml) {
        (None, None) => return twilio_error(400, 21205, "Either Url or Twiml is required"),
        (Some(u), _) if !matches!(Url::parse(u).map(|p| p.scheme().to_string()).as_deref(), Ok("http" | "https")) => {
            return twilio_error(400, 21205, &format!("Url is not a valid URL: {u}"));
        }
        _ => {}
    }
    let call = FakeCall {
        sid: sim::new_sid("CA"),
        from: from.to_string(),
        to: to.to_string(),
        direction: "outbound-api".into(),
        status: "queued".into(),
        twiml: twiml.clone(),
        url: url.clone(),
        recordings: Vec::new(),
    };
    let body = call_json(&shared.account_sid, &call);
    let answer = {
        let mut inner = shared.lock();
        inner.calls.insert(call.sid.clone(), call.clone());
        inner.answer.clone()
    };
    if let Some(answer) = answer {
        let method = match req.field("Method") {
            Some(m) if m.eq_ignore_ascii_case("GET") => WebhookMethod::Get,
            _ => WebhookMethod::Post,
        };
        spawn_answer(Arc::clone(shared), answer, call, method);
    }
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

/// Answers a created call as Twilio would: fetch TwiML from its `Url` (signed), run the stream.
fn spawn_answer(shared: Arc<Shared>, answer: Answer, call: FakeCall, method: WebhookMethod) {
    let end = shared.lock().end_signals.entry(call.sid.clone()).or_default().clone();
    tokio::spawn(async move {
        set_status(&shared, &call.sid, "in-progress");
        let url = call.url.as_deref().and_then(|u| Url::parse(u).ok());
        let webhook_url = url.clone().unwrap_or_else(|| Url::parse("http://127.0.0.1/").expect("static URL"));
        let mut plan = CallPlan::new(webhook_url, Arc::clone(&answer.caller));
        plan.server = answer.server.clone();
        plan.method = method;
        plan.auth_token = Some(shared.auth_token.clone());
        plan.account_sid = shared.account_sid.clone();
        plan.call_sid = call.sid.clone();
        plan.from = call.from.clone();
        plan.to = call.to.clone();
        plan.direction = TwilioDirection::OutboundApi;
        if let Some(h) = answer.hangup_after {
            plan.hangup_after = h;
        }
        plan.record = answer.record.clone();
        plan.dtmf = answer.dtmf.clone();
        plan.end_signal = Some(end);
        let report = match (url, &call.twiml) {
            (Some(_), _) => sim::simulate_call(&plan).await,
            (None, Some(twiml)) => sim::simulate_call_from_twiml(&plan, twiml).await,
            (None, None) => CallReport::new(&call.sid),
        };
        let final_status = if report.ok() { "completed" } else { "failed" };
        {
            let mut inner = shared.lock();
            if let Some(c) = inner.calls.get_mut(&call.sid) {
                if c.status != "completed" {
                    c.status = final_status.to_string();
                }
            }
            inner.reports.insert(call.sid.clone(), report);
        }
        shared.answered.notify_waiters();
    });
}

fn set_status(shared: &Shared, sid: &str, status: &str) {
    if let Some(c) = shared.lock().calls.get_mut(sid) {
        c.status = status.to_string();
    }
}

fn fetch_call(shared: &Shared, sid: &str) -> Option<Response> {
    let call = shared.lock().calls.get(sid).cloned()?;
    Some((StatusCode::OK, axum::Json(call_json(&shared.account_sid, &call))).into_response())
}

fn update_call(shared: &Shared, sid: &str, req: &RecordedRequest) -> Option<Response> {
    let status = req.field("Status");
    if let Some(s) = status {
        if !matches!(s, "completed" | "canceled") {
            return Some(twilio_error(400, 21218, &format!("Invalid value for Status: {s}")));
        }
    }
    let mut inner = shared.lock();
    let call = inner.calls.get_mut(sid)?;
    if let Some(s) = status {
        call.status = s.to_string();
    }
    let redirected = req.field("Twiml").or(req.field("Url")).is_some();
    if let Some(t) = req.field("Twiml") {
        call.twiml = Some(t.to_string());
    }
    if let Some(u) = req.field("Url") {
        call.url = Some(u.to_string());
    }
    let body = call_json(&shared.account_sid, call);
    // Ending or redirecting a call ends its Media Stream.
    if status.is_some() || redirected {
        if let Some(token) = inner.end_signals.get(sid) {
            token.cancel();
        }
    }
    Some((StatusCode::OK, axum::Json(body)).into_response())
}

fn start_recording(shared: &Shared, call_sid: &str, req: &RecordedRequest) -> Option<Response> {
    let mut inner = shared.lock();
    let call = inner.calls.get_mut(call_sid)?;
    let sid = sim::new_sid("RE");
    call.recordings.push(sid.clone());
    let channels = if req.field("RecordingChannels") == Some("dual") { 2 } else { 1 };
    let now = rfc2822_now();
    let account = &shared.account_sid;
    let body = json!({
        "account_sid": account,
        "api_version": "2010-04-01",
        "call_sid": call_sid,
        "conference_sid": null,
        "date_created": now,
        "date_updated": now,
        "start_time": now,
        "duration": "-1",
        "sid": sid,
        "price": null,
        "price_unit": "USD",
        "status": "in-progress",
        "channels": channels,
        "source": "StartCallRecordingAPI",
        "error_code": null,
        "track": req.field("RecordingTrack").unwrap_or("both"),
        "uri": format!("{API}{account}/Calls/{call_sid}/Recordings/{sid}.json"),
    });
    Some((StatusCode::CREATED, axum::Json(body)).into_response())
}

fn call_json(account: &str, call: &FakeCall) -> Value {
    let now = rfc2822_now();
    let base = format!("{API}{account}/Calls/{}", call.sid);
    json!({
        "account_sid": account,
        "annotation": null,
        "answered_by": null,
        "api_version": "2010-04-01",
        "caller_name": null,
        "date_created": now,
        "date_updated": now,
        "direction": call.direction,
        "duration": null,
        "end_time": null,
        "forwarded_from": null,
        "from": call.from,
        "from_formatted": call.from,
        "group_sid": null,
        "parent_call_sid": null,
        "phone_number_sid": null,
        "price": null,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": call.sid,
        "start_time": null,
        "status": call.status,
        "subresource_uris": {
            "notifications": format!("{base}/Notifications.json"),
            "recordings": format!("{base}/Recordings.json"),
            "payments": format!("{base}/Payments.json"),
            "events": format!("{base}/Events.json"),
            "siprec": format!("{base}/Siprec.json"),
            "streams": format!("{base}/Streams.json"),
            "transcriptions": format!("{base}/Transcriptions.json"),
            "user_defined_message_subscriptions": format!("{base}/UserDefinedMessageSubscriptions.json"),
            "user_defined_messages": format!("{base}/UserDefinedMessages.json"),
        },
        "to": call.to,
        "to_formatted": call.to,
        "trunk_sid": null,
        "uri": format!("{base}.json"),
    })
}

/// Twilio's error body.
fn twilio_error(status: u16, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

/// (user name sent, whether user and password match).
fn check_basic(headers: &HeaderMap, sid: &str, token: &str) -> (Option<String>, bool) {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return (None, false) };
    let Some(encoded) = value.strip_prefix("Basic ") else { return (None, false) };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return (None, false) };
    let text = String::from_utf8_lossy(&decoded);
    let (user, pass) = text.split_once(':').unwrap_or((&text, ""));
    (Some(user.to_string()), user == sid && pass == token)
}

/// E.164: `+`, a non-zero digit, at most 15 digits in all.
pub fn is_e164(n: &str) -> bool {
    let Some(digits) = n.strip_prefix('+') else { return false };
    (2..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) && !digits.starts_with('0')
}

/// "Tue, 31 Aug 2010 20:36:28 +0000", as Twilio writes dates.
fn rfc2822_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[(days.rem_euclid(7)) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_numbers() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(14_852), (2010, 8, 31));
        assert!(is_e164("+14155550100"));
        assert!(!is_e164("14155550100"));
        assert!(!is_e164("+0155"));
        assert!(!is_e164("+1415555010012345"));
        assert!(!is_e164("+1-415"));
    }
}
