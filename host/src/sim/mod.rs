//! The Twilio simulator and load generator behind `switchboard simulate`.
//!
//! It acts as Twilio for one or many calls: signs and posts the voice webhook, reads the TwiML,
//! opens the Media Stream, streams a caller WAV as 20 ms μ-law frames in real time, plays the bot's
//! audio through a Twilio-like playout buffer (marks echoed once played, `clear` honoured), records
//! what the caller heard, and reports latencies per call and over all calls.
//!
//! Library use (tests): build a [`CallerAudio`] once, then a [`CallPlan`] per call, and run
//! [`simulate_call`]; or [`run`] with [`SimulateArgs`] as the CLI does.

mod caller;
mod playout;
mod recorder;
mod report;
mod stream;
mod webhook;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use url::Url;

pub use caller::{CallerAudio, CallerAudioError, Segmentation, SpeechSpan, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
pub use playout::{
    CallerPlayout, Overflow, Played, TooManyMarks, MAX_GAP_TICKS_WITHOUT_MARKS, MAX_PENDING_MARKS, MULAW_SILENCE,
    SPURT_TICKS,
};
pub use report::{Aggregate, CallEnd, CallReport, MarkRecord, Stats, Summary, Turn};
pub use stream::DTMF_DIGIT_SPACING_MS;
pub use webhook::{
    call_params, fetch_twiml, parse_twiml, route, StreamTarget, TwilioDirection, WebhookError, WebhookMethod,
    WebhookRequest,
};

/// Longest simulated call (one hour).
pub const MAX_CALL_SECONDS: f64 = 3600.0;
/// Most concurrent calls one run starts.
pub const MAX_CALLS: u32 = 10_000;
/// How long the caller stays on the line after the WAV ends, by default.
pub const DEFAULT_TAIL: Duration = Duration::from_secs(8);
/// Bot audio the playout buffer holds at most (10 minutes of μ-law).
const MAX_PLAYOUT_BYTES: usize = 8000 * 600;

/// `T:DIGITS`: send the DTMF `DIGITS` (each its own `dtmf` event, 200 ms apart) `T` seconds after
/// the stream started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtmfEvent {
    pub at_ms: u64,
    pub digits: String,
}

impl FromStr for DtmfEvent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (t, digits) = s.split_once(':').ok_or_else(|| format!("DTMF {s:?} is not T:DIGITS"))?;
        let secs: f64 = t.trim().parse().map_err(|_| format!("DTMF time {t:?} is not a number of seconds"))?;
        if !(0.0..=MAX_CALL_SECONDS).contains(&secs) {
            return Err(format!("DTMF time {secs} is outside 0..={MAX_CALL_SECONDS} s"));
        }
        let digits = digits.trim();
        if digits.is_empty() || digits.len() > 64 || !digits.chars().all(|c| c.is_ascii_digit() || "*#ABCD".contains(c))
        {
            return Err(format!("DTMF digits {digits:?} must be 1-64 of 0-9 * # A-D"));
        }
        Ok(Self { at_ms: (secs * 1000.0).round() as u64, digits: digits.to_string() })
    }
}

/// One simulated call.
#[derive(Debug, Clone)]
pub struct CallPlan {
    /// The URL Twilio believes it calls (signed over): the voice webhook for inbound calls, the
    /// call's `Url` for calls created through the REST API.
    pub webhook_url: Url,
    /// Where requests really go when `webhook_url` and the stream URL name a public host: a
    /// loopback base URL (see [`route`]). `None` sends them where they point.
    pub server: Option<Url>,
    pub method: WebhookMethod,
    /// Signs the webhook when set (Twilio's `X-Twilio-Signature`).
    pub auth_token: Option<String>,
    pub account_sid: String,
    pub call_sid: String,
    pub from: String,
    pub to: String,
    pub direction: TwilioDirection,
    /// Added to the webhook form after Twilio's own parameters.
    pub extra_params: Vec<(String, String)>,
    pub caller: Arc<CallerAudio>,
    /// When the caller hangs up, counted from `start`.
    pub hangup_after: Duration,
    pub dtmf: Vec<DtmfEvent>,
    /// Stereo WAV of what the caller heard.
    pub record: Option<PathBuf>,
    pub http_timeout: Duration,
    pub connect_timeout: Duration,
    /// Cancelled when the call is ended from outside (as Twilio does on `Status=completed`): the
    /// stream then gets `stop` and closes.
    pub end_signal: Option<CancellationToken>,
    /// Keep streaming silent media after the caller's audio ends, as Twilio does (default).
    /// `false` acts like a peer that only streams while someone talks.
    pub media_after_audio: bool,
}

impl CallPlan {
    /// An inbound call with Twilio-like identifiers and defaults (hang up 8 s after the WAV ends).
    pub fn new(webhook_url: Url, caller: Arc<CallerAudio>) -> Self {
        let hangup_after = Duration::from_millis(caller.duration_ms()) + DEFAULT_TAIL;
        Self {
            webhook_url,
            server: None,
            method: WebhookMethod::Post,
            auth_token: None,
            account_sid: new_sid("AC"),
            call_sid: new_sid("CA"),
            from: "+15005550006".into(),
            to: "+15005550001".into(),
            direction: TwilioDirection::Inbound,
            extra_params: Vec::new(),
            caller,
            hangup_after,
            dtmf: Vec::new(),
            media_after_audio: true,
            record: None,
            http_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            end_signal: None,
        }
    }
}

/// A Twilio-style sid: two letters and 32 lowercase hex digits.
pub fn new_sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// Runs one call: webhook, TwiML, stream. Failures end up in the report, never as a panic.
pub async fn simulate_call(plan: &CallPlan) -> CallReport {
    match http_client() {
        Ok(http) => simulate_call_with(&http, plan).await,
        Err(e) => {
            let mut report = CallReport::new(&plan.call_sid);
            report.note_error(e);
            report
        }
    }
}

/// [`simulate_call`] with a shared HTTP client (what the load generator uses).
pub async fn simulate_call_with(http: &reqwest::Client, plan: &CallPlan) -> CallReport {
    let began = tokio::time::Instant::now();
    let mut report = CallReport::new(&plan.call_sid);
    let mut params = call_params(&plan.account_sid, &plan.call_sid, &plan.from, &plan.to, plan.direction);
    params.extend(plan.extra_params.iter().cloned());
    let request = WebhookRequest {
        url: plan.webhook_url.clone(),
        server: plan.server.clone(),
        method: plan.method,
        auth_token: plan.auth_token.clone(),
        params,
        timeout: plan.http_timeout,
    };
    match fetch_twiml(http, &request).await {
        Ok((status, twiml)) => {
            report.webhook_status = Some(status);
            stream_from_twiml(plan, &twiml, &mut report).await;
        }
        Err(e) => {
            if let WebhookError::Status { status, .. } = &e {
                report.webhook_status = Some(*status);
            }
            report.note_error(e.to_string());
        }
    }
    finish_report(&mut report, plan, began);
    report
}

/// Runs the stream half from TwiML already in hand (as when a call is created with `Twiml=`).
pub async fn simulate_call_from_twiml(plan: &CallPlan, twiml: &str) -> CallReport {
    let began = tokio::time::Instant::now();
    let mut report = CallReport::new(&plan.call_sid);
    stream_from_twiml(plan, twiml, &mut report).await;
    finish_report(&mut report, plan, began);
    report
}

async fn stream_from_twiml(plan: &CallPlan, twiml: &str, report: &mut CallReport) {
    let target = match parse_twiml(twiml) {
        Ok(t) => t,
        Err(e) => return report.note_error(e.to_string()),
    };
    // parse_twiml checked that the url parses.
    let Ok(stream_url) = Url::parse(&target.url) else { return };
    let ws_url = match &plan.server {
        Some(server) => route(&stream_url, server),
        None => stream_url,
    };
    let stream_plan = stream::StreamPlan {
        ws_url,
        account_sid: &plan.account_sid,
        call_sid: &plan.call_sid,
        stream_sid: new_sid("MZ"),
        parameters: target.parameters,
        caller: &plan.caller,
        hangup_after_ms: plan.hangup_after.as_millis().min(u128::from(u64::MAX)) as u64,
        dtmf: &plan.dtmf,
        record: plan.record.as_deref(),
        connect_timeout: plan.connect_timeout,
        max_playout_bytes: MAX_PLAYOUT_BYTES,
        end_signal: plan.end_signal.clone(),
        media_after_audio: plan.media_after_audio,
    };
    stream::run(stream_plan, report).await;
}

fn finish_report(report: &mut CallReport, plan: &CallPlan, began: tokio::time::Instant) {
    report.utterances = plan.caller.utterances().to_vec();
    report.compute_turns();
    report.duration_ms = report::round1(began.elapsed().as_secs_f64() * 1000.0);
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// `switchboard simulate`: act as Twilio for one or many calls against a server.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Base URL of the server to call (where requests really go).
    #[arg(long, default_value = "http://127.0.0.1:7860")]
    pub server: Url,
    /// The caller's voice: any WAV (mixed to mono, resampled to 8 kHz).
    #[arg(long)]
    pub caller: PathBuf,
    /// Write what the caller heard (stereo 8 kHz: left caller, right bot). With --calls N, call 0
    /// writes this file and call K writes NAME-K.wav beside it.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Number of concurrent calls (the load generator).
    #[arg(long, default_value_t = 1)]
    pub calls: u32,
    /// Spread call starts evenly over this many seconds.
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,
    /// The public base URL the server believes it is reached at (signed over); requests still go
    /// to --server when that is loopback.
    #[arg(long)]
    pub public_url: Option<Url>,
    /// Path of the voice webhook.
    #[arg(long, default_value = "/")]
    pub webhook_path: String,
    /// Auth token to sign the webhook with; unsigned when absent.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Account sid sent as AccountSid (random AC… when absent).
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub account_sid: Option<String>,
    #[arg(long, default_value = "+15005550006")]
    pub from: String,
    #[arg(long, default_value = "+15005550001")]
    pub to: String,
    /// Seconds after the stream starts when the caller hangs up (default: WAV length + 8 s).
    #[arg(long)]
    pub hangup_after: Option<f64>,
    /// DTMF to send, T:DIGITS (seconds:digits), comma-separated or repeated.
    #[arg(long, value_delimiter = ',')]
    pub dtmf: Vec<DtmfEvent>,
    /// Minimum silence (ms) that ends a caller utterance, for turn latencies.
    #[arg(long, default_value_t = 400)]
    pub min_silence_ms: u64,
    /// Stop sending media when the WAV ends instead of streaming silence as Twilio does: checks
    /// that turns still end when a peer only streams while someone talks.
    #[arg(long)]
    pub no_media_after_audio: bool,
}

/// Runs the calls `args` describes and summarises them. Errors only for bad arguments or an
/// unreadable caller WAV; call failures are in the summary.
pub async fn run(args: SimulateArgs) -> anyhow::Result<Summary> {
    validate(&args)?;
    let seg = Segmentation { min_silence_ms: args.min_silence_ms, ..Segmentation::default() };
    let path = args.caller.clone();
    let caller = tokio::task::spawn_blocking(move || CallerAudio::from_wav_file(&path, &seg))
        .await
        .context("loading the caller WAV")??;
    let caller = Arc::new(caller);
    let http = http_client().map_err(anyhow::Error::msg)?;
    let plans: Vec<CallPlan> = (0..args.calls).map(|i| plan_for(&args, &caller, i)).collect::<anyhow::Result<_>>()?;
    let cpu_before = cpu_time();
    let wall = tokio::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, plan) in plans.into_iter().enumerate() {
        let http = http.clone();
        let delay = Duration::from_secs_f64(args.ramp * i as f64 / f64::from(args.calls));
        set.spawn(async move {
            tokio::time::sleep(delay).await;
            (i, simulate_call_with(&http, &plan).await)
        });
    }
    let mut reports = Vec::with_capacity(args.calls as usize);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => reports.push(r),
            Err(e) => anyhow::bail!("a simulated call task failed: {e}"),
        }
    }
    reports.sort_by_key(|(i, _)| *i);
    let mut summary = Summary::from_calls(reports.into_iter().map(|(_, r)| r).collect());
    summary.generator = Some(report::GeneratorStats::measure(cpu_before, cpu_time(), wall.elapsed()));
    Ok(summary)
}

fn validate(args: &SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=MAX_CALLS).contains(&args.calls), "--calls must be 1..={MAX_CALLS}");
    anyhow::ensure!(
        args.ramp.is_finite() && (0.0..=MAX_CALL_SECONDS).contains(&args.ramp),
        "--ramp must be 0..=3600 s"
    );
    if let Some(h) = args.hangup_after {
        anyhow::ensure!(h.is_finite() && h > 0.0 && h <= MAX_CALL_SECONDS, "--hangup-after must be in (0, 3600] s");
    }
    anyhow::ensure!(args.webhook_path.starts_with('/'), "--webhook-path must start with '/'");
    for u in std::iter::once(&args.server).chain(args.public_url.as_ref()) {
        anyhow::ensure!(matches!(u.scheme(), "http" | "https"), "{u} is not an http(s) URL");
    }
    Ok(())
}

fn plan_for(args: &SimulateArgs, caller: &Arc<CallerAudio>, index: u32) -> anyhow::Result<CallPlan> {
    let base = args.public_url.as_ref().unwrap_or(&args.server);
    let webhook_url = base.join(&args.webhook_path).with_context(|| format!("webhook URL from {base}"))?;
    let mut plan = CallPlan::new(webhook_url, Arc::clone(caller));
    plan.server = Some(args.server.clone());
    plan.auth_token = args.auth_token.clone().filter(|t| !t.is_empty());
    if let Some(sid) = &args.account_sid {
        plan.account_sid = sid.clone();
    }
    plan.from = args.from.clone();
    plan.to = args.to.clone();
    if let Some(secs) = args.hangup_after {
        plan.hangup_after = Duration::from_secs_f64(secs);
    }
    plan.dtmf = args.dtmf.clone();
    plan.media_after_audio = !args.no_media_after_audio;
    plan.record = args.record.as_deref().map(|p| recording_path(p, index));
    Ok(plan)
}

/// Call 0 records to `path`; call K to `stem-K.ext` beside it.
pub fn recording_path(path: &Path, index: u32) -> PathBuf {
    if index == 0 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "recording".into());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    path.with_file_name(name)
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Option<Duration> {
    // SAFETY: getrusage only writes the struct we pass it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_option_parses_and_validates() {
        assert_eq!("2.5:12#".parse::<DtmfEvent>().unwrap(), DtmfEvent { at_ms: 2500, digits: "12#".into() });
        assert!("12".parse::<DtmfEvent>().is_err());
        assert!("x:1".parse::<DtmfEvent>().is_err());
        assert!("1:9x".parse::<DtmfEvent>().is_err());
        assert!("-1:1".parse::<DtmfEvent>().is_err());
    }

    #[test]
    fn recording_paths_per_call() {
        assert_eq!(recording_path(Path::new("/t/out.wav"), 0), PathBuf::from("/t/out.wav"));
        assert_eq!(recording_path(Path::new("/t/out.wav"), 3), PathBuf::from("/t/out-3.wav"));
        assert_eq!(recording_path(Path::new("out"), 2), PathBuf::from("out-2"));
    }

    #[test]
    fn sids_look_like_twilios() {
        let sid = new_sid("CA");
        assert_eq!(sid.len(), 34);
        assert!(sid.starts_with("CA") && sid[2..].chars().all(|c| c.is_ascii_hexdigit()));
    }
}
