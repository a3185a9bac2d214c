//! A fake of Deepgram's live transcription WebSocket (`GET /v1/listen`), after Deepgram's
//! streaming reference:
//!
//! - Handshake: `Authorization: Token KEY` required (else HTTP 401 with `dg-error` and a JSON body
//!   `{err_code, err_msg, request_id}`); unknown `model` or `encoding`, `encoding` without
//!   `sample_rate`, or a boolean parameter that is not `true`/`false` → HTTP 400.
//! - Binary messages are audio (`linear16` little-endian or `mulaw` are understood); text messages
//!   are `KeepAlive`, `Finalize`, `CloseStream`; anything else gets an `Error` message
//!   (`variant: SchemaError`).
//! - `Results` messages with `channel.alternatives[0].transcript`, `is_final`, `speech_final`,
//!   `from_finalize`, `start`, `duration`, words; `Metadata` before the server's 1000 close after
//!   `CloseStream`; 1011 `NET-0001` after `idle_timeout` (10 s) without audio or `KeepAlive`.
//!
//! Transcripts are scripted: speech is found by energy (20 ms frames; an utterance ends after
//! `endpointing` of silence), interim results carry a growing prefix of the next scripted text,
//! the final carries all of it (`is_final` + `speech_final`), or at once on `Finalize`
//! (`is_final` + `from_finalize`, `speech_final: false` — endpointing did not fire). An empty
//! script falls back to "utterance N".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::time::{sleep_until, Instant};
use url::Url;

use super::{deepgram_error, param, query_pairs, request_id, FakeServer};

/// The key the fake accepts unless told otherwise.
pub const API_KEY: &str = "test-deepgram-key";

pub const MODELS: &[&str] = &[
    "nova-3",
    "nova-3-general",
    "nova-3-medical",
    "nova-2",
    "nova-2-general",
    "nova-2-phonecall",
    "nova-2-meeting",
    "nova",
    "enhanced",
    "base",
];
const ENCODINGS: &[&str] =
    &["linear16", "linear32", "flac", "alaw", "mulaw", "amr-nb", "amr-wb", "opus", "ogg-opus", "speex", "g729"];
const BOOL_PARAMS: &[&str] = &[
    "multichannel",
    "interim_results",
    "punctuate",
    "smart_format",
    "numerals",
    "diarize",
    "dictation",
    "detect_entities",
    "profanity_filter",
    "vad_events",
    "filler_words",
];

/// Switches; change them any time with [`FakeDeepgramStt::configure`].
#[derive(Debug, Clone)]
pub struct SttSettings {
    pub api_key: String,
    /// RMS (PCM16 units) at or above which a 20 ms frame counts as speech.
    pub speech_rms: f64,
    /// Voiced audio an utterance needs before it produces results (shorter blips are ignored).
    pub min_speech: Duration,
    /// Silence that ends an utterance (final with `speech_final`).
    pub endpointing: Duration,
    /// Audio time between interim results.
    pub interim_every: Duration,
    /// Wall-clock delay before each interim result is sent.
    pub result_delay: Duration,
    /// Wall-clock delay before each final result is sent (endpointing or `Finalize`).
    pub final_delay: Duration,
    /// Close with 1011 `NET-0001` after this long without audio or `KeepAlive`.
    pub idle_timeout: Duration,
    /// Answer a `Finalize` with no speech pending with an empty `from_finalize` result.
    pub ack_idle_finalize: bool,
    /// Text when the script is empty; `{n}` is the utterance number.
    pub fallback: String,
    /// Refuse handshakes with this HTTP status while set (e.g. 503 during an outage).
    pub refuse_status: Option<u16>,
    /// Keep every connection's audio in [`SttConnection::audio`] (off for long runs).
    pub keep_audio: bool,
}

impl Default for SttSettings {
    fn default() -> Self {
        Self {
            api_key: API_KEY.into(),
            speech_rms: 300.0,
            min_speech: Duration::from_millis(60),
            endpointing: Duration::from_millis(300),
            interim_every: Duration::from_millis(250),
            result_delay: Duration::ZERO,
            final_delay: Duration::ZERO,
            idle_timeout: Duration::from_secs(10),
            ack_idle_finalize: true,
            fallback: "utterance {n}".into(),
            refuse_status: None,
            keep_audio: true,
        }
    }
}

/// How an armed drop ends the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropMode {
    /// A close frame with this code and reason (Deepgram uses 1011 for server-side failures).
    Close { code: u16, reason: String },
    /// The TCP connection just goes away, no close frame.
    Abrupt,
}

/// A one-shot fault: the first connection that has received `after_audio` of audio is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropFault {
    pub after_audio: Duration,
    pub mode: DropMode,
}

/// What one accepted connection received and how it ended.
#[derive(Debug, Clone, Default)]
pub struct SttConnection {
    pub query: String,
    pub params: Vec<(String, String)>,
    pub authorization: Option<String>,
    /// Raw audio bytes, in order.
    pub audio: Vec<u8>,
    pub keepalives: usize,
    pub finalizes: usize,
    pub close_streams: usize,
    /// Every text message, verbatim.
    pub texts: Vec<String>,
    /// Every JSON message sent back.
    pub sent: Vec<Value>,
    /// "client", "CloseStream", "NET-0001", "fault", or empty while open.
    pub ended_by: String,
}

impl SttConnection {
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.params, name)
    }

    /// Audio received, in seconds (linear16 at the connection's rate).
    pub fn audio_secs(&self) -> f64 {
        let rate: f64 = self.param("sample_rate").and_then(|r| r.parse().ok()).unwrap_or(8000.0);
        let bytes_per_sample = if self.param("encoding") == Some("mulaw") { 1.0 } else { 2.0 };
        self.audio.len() as f64 / bytes_per_sample / rate
    }

    /// The results sent with `is_final: true`.
    pub fn finals(&self) -> Vec<&Value> {
        self.sent.iter().filter(|m| m["type"] == "Results" && m["is_final"] == true).collect()
    }
}

/// A handshake as it arrived, accepted or not.
#[derive(Debug, Clone)]
pub struct SttAttempt {
    pub query: String,
    pub authorization: Option<String>,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    settings: SttSettings,
    script: VecDeque<String>,
    utterances: usize,
    drop: Option<DropFault>,
    connections: Vec<SttConnection>,
    attempts: Vec<SttAttempt>,
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_transcript(&self) -> String {
        let mut inner = self.lock();
        inner.utterances += 1;
        let n = inner.utterances;
        match inner.script.pop_front() {
            Some(t) => t,
            None => inner.settings.fallback.replace("{n}", &n.to_string()),
        }
    }
}

/// The running fake.
pub struct FakeDeepgramStt {
    shared: Arc<Shared>,
    server: FakeServer,
}

impl FakeDeepgramStt {
    pub async fn start() -> Self {
        Self::start_with(SttSettings::default()).await
    }

    pub async fn start_with(settings: SttSettings) -> Self {
        let shared = Arc::new(Shared { inner: Mutex::new(Inner { settings, ..Default::default() }) });
        let app = Router::new().route("/v1/listen", get(listen)).with_state(shared.clone());
        let server = FakeServer::start(app).await;
        Self { shared, server }
    }

    /// What `DEEPGRAM_BASE_URL` should be.
    pub fn base_url(&self) -> Url {
        self.server.http_url()
    }

    /// Queues transcripts for the next utterances, in order.
    pub fn script<S: AsRef<str>>(&self, transcripts: &[S]) {
        self.shared.lock().script.extend(transcripts.iter().map(|s| s.as_ref().to_string()));
    }

    pub fn configure(&self, change: impl FnOnce(&mut SttSettings)) {
        change(&mut self.shared.lock().settings);
    }

    /// Arms a one-shot drop of the next connection that reaches `after_audio`.
    pub fn arm_drop(&self, fault: DropFault) {
        self.shared.lock().drop = Some(fault);
    }

    pub fn connections(&self) -> Vec<SttConnection> {
        self.shared.lock().connections.clone()
    }

    /// Drops what was recorded (keeps settings and script); only between calls, for long runs.
    pub fn forget(&self) {
        let mut inner = self.shared.lock();
        inner.connections.clear();
        inner.attempts.clear();
    }

    pub fn attempts(&self) -> Vec<SttAttempt> {
        self.shared.lock().attempts.clone()
    }

    /// Polls until `check` holds for the connections (true) or `limit` passes (false).
    pub async fn wait_until(&self, limit: Duration, check: impl Fn(&[SttConnection]) -> bool) -> bool {
        super::poll_until(limit, || check(&self.shared.lock().connections)).await
    }
}

/// Why the query is refused, if it is.
fn check_query(params: &[(String, String)]) -> Option<String> {
    if let Some(model) = param(params, "model") {
        if !MODELS.contains(&model) {
            return Some(format!("No such model/language/tier combination found: model {model}"));
        }
    }
    if let Some(encoding) = param(params, "encoding") {
        if !ENCODINGS.contains(&encoding) {
            return Some(format!("Unsupported encoding: {encoding}"));
        }
        if param(params, "sample_rate").is_none() {
            return Some("sample_rate is required when encoding is set".into());
        }
    }
    if let Some(rate) = param(params, "sample_rate") {
        if rate.parse::<u32>().map_or(true, |r| r == 0) {
            return Some(format!("Invalid sample_rate: {rate}"));
        }
    }
    if let Some(channels) = param(params, "channels") {
        if channels.parse::<u32>().map_or(true, |c| c == 0) {
            return Some(format!("Invalid channels: {channels}"));
        }
    }
    for name in BOOL_PARAMS {
        if let Some(v) = param(params, name) {
            if v != "true" && v != "false" {
                return Some(format!("Invalid value for {name}: {v}"));
            }
        }
    }
    None
}

async fn listen(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let query = query.unwrap_or_default();
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let params = query_pairs(Some(&query));
    let (status, refusal) = {
        let inner = shared.lock();
        let expected = format!("Token {}", inner.settings.api_key);
        if authorization.as_deref() != Some(expected.as_str()) {
            (StatusCode::UNAUTHORIZED, Some(("INVALID_AUTH", "Invalid credentials.".to_string())))
        } else if let Some(problem) = check_query(&params) {
            (StatusCode::BAD_REQUEST, Some(("Bad Request", problem)))
        } else if let Some(code) = inner.settings.refuse_status {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (status, Some(("SERVICE_UNAVAILABLE", "The service is temporarily unavailable.".to_string())))
        } else {
            (StatusCode::SWITCHING_PROTOCOLS, None)
        }
    };
    let mut inner = shared.lock();
    inner.attempts.push(SttAttempt {
        query: query.clone(),
        authorization: authorization.clone(),
        status: status.as_u16(),
    });
    if let Some((code, message)) = refusal {
        return deepgram_error(status, code, &message);
    }
    let index = inner.connections.len();
    inner.connections.push(SttConnection { query, params: params.clone(), authorization, ..Default::default() });
    drop(inner);
    let format = AudioFormat::from_params(&params);
    let shared2 = shared.clone();
    ws.on_upgrade(move |socket| async move {
        let conn = Conn::new(shared2, index, format);
        conn.run(socket).await;
    })
}

#[derive(Clone, Copy)]
struct AudioFormat {
    sample_rate: u32,
    mulaw: bool,
    /// Only linear16 and mulaw are decoded; anything else is stored and counted, never "heard".
    decodable: bool,
}

impl AudioFormat {
    fn from_params(params: &[(String, String)]) -> Self {
        let encoding = param(params, "encoding").unwrap_or("linear16");
        let sample_rate = param(params, "sample_rate").and_then(|r| r.parse().ok()).unwrap_or(16000);
        Self { sample_rate, mulaw: encoding == "mulaw", decodable: matches!(encoding, "linear16" | "mulaw") }
    }
}

/// Where utterance texts come from (the script).
type NextText = dyn Fn() -> String + Send + Sync;

/// A result the detector produced.
struct Found {
    is_final: bool,
    speech_final: bool,
    from_finalize: bool,
    start: f64,
    duration: f64,
    /// Words of the utterance's transcript to show (all for finals).
    prefix_words: Option<usize>,
    text: String,
}

struct Utterance {
    start: f64,
    voiced: f64,
    last_voice_end: f64,
    last_interim: f64,
    text: Option<String>,
}

/// Energy-based utterance finder over 20 ms frames.
struct Detector {
    frame: usize,
    frame_secs: f64,
    pending: Vec<i16>,
    odd_byte: Option<u8>,
    t: f64,
    silence: f64,
    utt: Option<Utterance>,
}

impl Detector {
    fn new(sample_rate: u32) -> Self {
        let frame = (sample_rate as usize / 50).max(1);
        Self {
            frame,
            frame_secs: frame as f64 / sample_rate.max(1) as f64,
            pending: Vec::new(),
            odd_byte: None,
            t: 0.0,
            silence: 0.0,
            utt: None,
        }
    }

    fn push_bytes(&mut self, bytes: &[u8], format: AudioFormat) {
        if format.mulaw {
            self.pending.extend(bytes.iter().map(|&b| switchboard::audio::mulaw::decode(b)));
            return;
        }
        let mut iter = bytes.iter().copied();
        if let Some(lo) = self.odd_byte.take() {
            match iter.next() {
                Some(hi) => self.pending.push(i16::from_le_bytes([lo, hi])),
                None => {
                    self.odd_byte = Some(lo);
                    return;
                }
            }
        }
        let rest: Vec<u8> = iter.collect();
        let mut pairs = rest.chunks_exact(2);
        for p in &mut pairs {
            self.pending.push(i16::from_le_bytes([p[0], p[1]]));
        }
        self.odd_byte = pairs.remainder().first().copied();
    }

    /// Runs whole frames through the detector.
    fn run(&mut self, s: &SttSettings, next_text: &NextText, out: &mut Vec<Found>) {
        let mut offset = 0;
        while self.pending.len() - offset >= self.frame {
            let frame = &self.pending[offset..offset + self.frame];
            offset += self.frame;
            let rms = (frame.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>() / frame.len() as f64).sqrt();
            self.step(rms >= s.speech_rms, s, next_text, out);
        }
        self.pending.drain(..offset);
    }

    fn step(&mut self, voiced: bool, s: &SttSettings, next_text: &NextText, out: &mut Vec<Found>) {
        let end = self.t + self.frame_secs;
        if voiced {
            self.silence = 0.0;
            let utt = self.utt.get_or_insert(Utterance {
                start: self.t,
                voiced: 0.0,
                last_voice_end: end,
                last_interim: self.t,
                text: None,
            });
            utt.voiced += self.frame_secs;
            utt.last_voice_end = end;
        } else {
            self.silence += self.frame_secs;
        }
        self.t = end;
        let min_speech = s.min_speech.as_secs_f64();
        let Some(utt) = self.utt.as_mut() else { return };
        if self.silence >= s.endpointing.as_secs_f64() {
            if utt.voiced >= min_speech {
                let text = utt.text.take().unwrap_or_else(next_text);
                out.push(Found {
                    is_final: true,
                    speech_final: true,
                    from_finalize: false,
                    start: utt.start,
                    duration: utt.last_voice_end - utt.start,
                    prefix_words: None,
                    text,
                });
            }
            self.utt = None;
            return;
        }
        if voiced && utt.voiced >= min_speech && end - utt.last_interim >= s.interim_every.as_secs_f64() {
            utt.last_interim = end;
            let text = utt.text.get_or_insert_with(next_text).clone();
            let words = 1 + (utt.voiced / 0.3) as usize;
            out.push(Found {
                is_final: false,
                speech_final: false,
                from_finalize: false,
                start: utt.start,
                duration: end - utt.start,
                prefix_words: Some(words),
                text,
            });
        }
    }

    /// Ends the utterance in progress now (`Finalize` / `CloseStream`).
    fn finalize(&mut self, s: &SttSettings, next_text: &NextText, from_finalize: bool) -> Option<Found> {
        let utt = self.utt.take()?;
        if utt.voiced < s.min_speech.as_secs_f64() {
            return None;
        }
        let text = utt.text.unwrap_or_else(next_text);
        Some(Found {
            is_final: true,
            speech_final: false,
            from_finalize,
            start: utt.start,
            duration: self.t - utt.start,
            prefix_words: None,
            text,
        })
    }
}

fn results_message(found: &Found, request: &str) -> Value {
    let all: Vec<&str> = found.text.split_whitespace().collect();
    let shown = &all[..found.prefix_words.map_or(all.len(), |n| n.min(all.len()))];
    let step = if shown.is_empty() { 0.0 } else { found.duration / shown.len() as f64 };
    let words: Vec<Value> = shown
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let start = found.start + step * i as f64;
            let bare: String = w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect();
            json!({"word": bare.to_lowercase(), "start": start, "end": start + step, "confidence": 0.98,
                   "punctuated_word": w})
        })
        .collect();
    json!({
        "type": "Results",
        "channel_index": [0, 1],
        "duration": found.duration,
        "start": found.start,
        "is_final": found.is_final,
        "speech_final": found.speech_final,
        "from_finalize": found.from_finalize,
        "channel": {"alternatives": [{"transcript": shown.join(" "), "confidence": 0.98, "words": words}]},
        "metadata": {"request_id": request, "model_info": {"name": "general-nova-3", "version": "2025-01-01.0",
                     "arch": "nova-3"}, "model_uuid": "00000000-0000-4000-8000-00000000a003"}
    })
}

/// One accepted connection.
struct Conn {
    shared: Arc<Shared>,
    index: usize,
    format: AudioFormat,
    request: String,
    detector: Detector,
    /// Messages waiting for their send time, in time order.
    outbox: VecDeque<(Instant, Value)>,
    last_input: Instant,
    audio_bytes: usize,
}

enum Next {
    Continue,
    Stop,
}

impl Conn {
    fn new(shared: Arc<Shared>, index: usize, format: AudioFormat) -> Self {
        Self {
            shared,
            index,
            format,
            request: request_id(),
            detector: Detector::new(format.sample_rate),
            outbox: VecDeque::new(),
            last_input: Instant::now(),
            audio_bytes: 0,
        }
    }

    fn settings(&self) -> SttSettings {
        self.shared.lock().settings.clone()
    }

    fn record(&self, f: impl FnOnce(&mut SttConnection)) {
        if let Some(c) = self.shared.lock().connections.get_mut(self.index) {
            f(c);
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        loop {
            let idle_at = self.last_input + self.settings().idle_timeout;
            let due = self.outbox.front().map(|(t, _)| *t);
            tokio::select! {
                msg = socket.recv() => {
                    if let Next::Stop = self.on_message(&mut socket, msg).await {
                        return;
                    }
                }
                _ = sleep_until(due.unwrap_or(idle_at)), if due.is_some() => {
                    if let Some((_, msg)) = self.outbox.pop_front() {
                        if self.send(&mut socket, msg).await.is_err() {
                            return;
                        }
                    }
                }
                _ = sleep_until(idle_at) => {
                    let reason = "NET-0001: did not receive audio data or a text message within the timeout window";
                    self.close(&mut socket, 1011, reason, "NET-0001").await;
                    return;
                }
            }
        }
    }

    async fn send(&self, socket: &mut WebSocket, msg: Value) -> Result<(), axum::Error> {
        let text = msg.to_string();
        self.record(|c| c.sent.push(msg));
        socket.send(Message::Text(text.into())).await
    }

    async fn close(&self, socket: &mut WebSocket, code: u16, reason: &str, ended_by: &str) {
        self.record(|c| c.ended_by = ended_by.into());
        let frame = CloseFrame { code, reason: reason.to_string().into() };
        let _ = socket.send(Message::Close(Some(frame))).await;
    }

    fn schedule(&mut self, delay: Duration, msg: Value) {
        let at = Instant::now() + delay;
        let pos = self.outbox.iter().position(|(t, _)| *t > at).unwrap_or(self.outbox.len());
        self.outbox.insert(pos, (at, msg));
    }

    fn schedule_found(&mut self, found: Vec<Found>, s: &SttSettings) {
        for f in found {
            let delay = if f.is_final { s.final_delay } else { s.result_delay };
            let msg = results_message(&f, &self.request);
            self.schedule(delay, msg);
        }
    }

    async fn on_message(&mut self, socket: &mut WebSocket, msg: Option<Result<Message, axum::Error>>) -> Next {
        match msg {
            Some(Ok(Message::Binary(bytes))) => self.on_audio(socket, &bytes).await,
            Some(Ok(Message::Text(text))) => self.on_text(socket, text.as_str()).await,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                self.record(|c| c.ended_by = "client".into());
                Next::Stop
            }
            Some(Ok(_)) => Next::Continue,
        }
    }

    async fn on_audio(&mut self, socket: &mut WebSocket, bytes: &[u8]) -> Next {
        self.last_input = Instant::now();
        self.audio_bytes += bytes.len();
        let s = self.settings();
        if s.keep_audio {
            self.record(|c| c.audio.extend_from_slice(bytes));
        }
        if self.format.decodable {
            self.detector.push_bytes(bytes, self.format);
            let shared = self.shared.clone();
            let mut found = Vec::new();
            self.detector.run(&s, &move || shared.next_transcript(), &mut found);
            self.schedule_found(found, &s);
        }
        self.maybe_drop(socket).await
    }

    /// Fires an armed drop once this connection has carried enough audio.
    async fn maybe_drop(&mut self, socket: &mut WebSocket) -> Next {
        let bytes_per_sec = self.format.sample_rate as f64 * if self.format.mulaw { 1.0 } else { 2.0 };
        let heard = self.audio_bytes as f64 / bytes_per_sec;
        let fault = {
            let mut inner = self.shared.lock();
            match &inner.drop {
                Some(f) if heard >= f.after_audio.as_secs_f64() => inner.drop.take(),
                _ => None,
            }
        };
        match fault.map(|f| f.mode) {
            None => Next::Continue,
            Some(DropMode::Close { code, reason }) => {
                self.close(socket, code, &reason, "fault").await;
                Next::Stop
            }
            Some(DropMode::Abrupt) => {
                self.record(|c| c.ended_by = "fault".into());
                Next::Stop
            }
        }
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str) -> Next {
        self.last_input = Instant::now();
        self.record(|c| c.texts.push(text.to_string()));
        let kind = serde_json::from_str::<Value>(text).ok().and_then(|v| v["type"].as_str().map(str::to_string));
        let s = self.settings();
        let shared = self.shared.clone();
        let next_text = move || shared.next_transcript();
        match kind.as_deref() {
            Some("KeepAlive") => self.record(|c| c.keepalives += 1),
            Some("Finalize") => {
                self.record(|c| c.finalizes += 1);
                match self.detector.finalize(&s, &next_text, true) {
                    Some(found) => self.schedule_found(vec![found], &s),
                    None if s.ack_idle_finalize => {
                        let t = self.detector.t;
                        let empty = Found {
                            is_final: true,
                            speech_final: false,
                            from_finalize: true,
                            start: t,
                            duration: 0.0,
                            prefix_words: None,
                            text: String::new(),
                        };
                        self.schedule_found(vec![empty], &s);
                    }
                    None => {}
                }
            }
            Some("CloseStream") => {
                self.record(|c| c.close_streams += 1);
                self.close_stream(socket, &s, &next_text).await;
                return Next::Stop;
            }
            _ => {
                let error = json!({"type": "Error", "variant": "SchemaError",
                    "description": "Could not parse the text message as a known control message.", "message": text});
                if self.send(socket, error).await.is_err() {
                    return Next::Stop;
                }
            }
        }
        Next::Continue
    }

    /// `CloseStream`: the last results (after their delays), `Metadata`, then a 1000 close.
    async fn close_stream(&mut self, socket: &mut WebSocket, s: &SttSettings, next_text: &NextText) {
        if let Some(found) = self.detector.finalize(s, next_text, false) {
            self.schedule_found(vec![found], s);
        }
        while let Some((at, msg)) = self.outbox.pop_front() {
            tokio::time::sleep_until(at).await;
            if self.send(socket, msg).await.is_err() {
                return;
            }
        }
        let metadata = json!({"type": "Metadata", "transaction_key": "deprecated", "request_id": self.request,
            "sha256": "0".repeat(64), "created": "2026-01-01T00:00:00.000Z", "duration": self.detector.t,
            "channels": 1, "models": ["00000000-0000-4000-8000-00000000a003"],
            "model_info": {"00000000-0000-4000-8000-00000000a003": {"name": "general-nova-3",
                           "version": "2025-01-01.0", "arch": "nova-3"}}});
        let _ = self.send(socket, metadata).await;
        self.close(socket, 1000, "", "CloseStream").await;
    }
}
