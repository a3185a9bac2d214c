//! A fake of Deepgram's Aura text-to-speech, after Deepgram's TTS references:
//!
//! - WebSocket `GET /v1/speak?model=…&encoding=…&sample_rate=…`: `Authorization: Token KEY`
//!   (else HTTP 401 with `dg-error`); unknown model, encoding or sample rate, or a `container`
//!   other than `none` → HTTP 400. On open it sends `Metadata`. Text messages: `Speak {text}`,
//!   `Flush`, `Clear`, `Close`; a message it cannot parse closes the socket with 1008
//!   (`DATA-0000`). Audio comes back as binary messages, then `Flushed {sequence_id}` per flush;
//!   `Clear` stops the audio and is answered `Cleared {sequence_id}`; more than 20 flushes in
//!   60 s get a `Warning` instead of being processed; `Close` finishes and closes with 1000.
//! - REST `POST /v1/speak?…` with a JSON `{"text"}` body → the audio (WAV-wrapped unless
//!   `container=none`, as Deepgram's REST default for linear16/μ-law is `wav`).
//!
//! Audio is a 440 Hz tone lasting `ms_per_char` per character of text (never silence, so tests
//! can see it). Complete sentences are synthesised as they arrive (an assumption: Deepgram does not
//! document when it starts before a `Flush`); `Flush` forces out the rest.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use url::Url;

use super::{deepgram_error, param, query_pairs, request_id, FakeServer};

pub const API_KEY: &str = "test-deepgram-key";
pub const VOICES: &[&str] = &[
    "aura-2-theia-en",
    "aura-2-thalia-en",
    "aura-2-helena-en",
    "aura-2-andromeda-en",
    "aura-2-apollo-en",
    "aura-asteria-en",
    "aura-luna-en",
];

/// Switches; change them any time with [`FakeDeepgramTts::configure`].
#[derive(Debug, Clone)]
pub struct TtsSettings {
    pub api_key: String,
    /// Audio length per character of text.
    pub ms_per_char: u32,
    /// Audio per binary message.
    pub chunk_ms: u32,
    /// Delay before the first chunk of each synthesis.
    pub first_byte_delay: Duration,
    /// Delay between chunks.
    pub chunk_delay: Duration,
    /// Chunks still sent after a `Clear` arrives (audio already in flight on a real server).
    pub clear_lag_chunks: usize,
    /// Flushes allowed per window (Deepgram: 20 per 60 s).
    pub flush_limit: usize,
    pub flush_window: Duration,
    /// Accept text but never answer (no audio, no `Flushed`): a provider that hangs.
    pub hang: bool,
    /// Close the socket with this code at the next `Flush`.
    pub close_on_flush: Option<u16>,
    /// Refuse handshakes with this HTTP status while set.
    pub refuse_status: Option<u16>,
    /// REST: answer with this status and a Deepgram error body.
    pub rest_status: Option<u16>,
    /// REST: wait this long before answering.
    pub rest_delay: Duration,
}

impl Default for TtsSettings {
    fn default() -> Self {
        Self {
            api_key: API_KEY.into(),
            ms_per_char: 60,
            chunk_ms: 100,
            first_byte_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            clear_lag_chunks: 0,
            flush_limit: 20,
            flush_window: Duration::from_secs(60),
            hang: false,
            close_on_flush: None,
            refuse_status: None,
            rest_status: None,
            rest_delay: Duration::ZERO,
        }
    }
}

/// What one accepted connection received.
#[derive(Debug, Clone, Default)]
pub struct TtsConnection {
    pub query: String,
    pub params: Vec<(String, String)>,
    pub authorization: Option<String>,
    /// The `text` of every `Speak`, in order.
    pub speaks: Vec<String>,
    pub flushes: usize,
    pub clears: usize,
    pub closes: usize,
    /// Every JSON message sent back.
    pub sent: Vec<Value>,
    pub audio_bytes_sent: usize,
    /// Audio messages sent after a `Clear` arrived and before its `Cleared`.
    pub audio_after_clear: usize,
    pub ended_by: String,
}

impl TtsConnection {
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.params, name)
    }
}

/// One REST request.
#[derive(Debug, Clone)]
pub struct TtsRestRequest {
    pub query: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: String,
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    settings: TtsSettings,
    connections: Vec<TtsConnection>,
    rest: Vec<TtsRestRequest>,
    refused: Vec<(u16, Option<String>)>,
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake.
pub struct FakeDeepgramTts {
    shared: Arc<Shared>,
    server: FakeServer,
}

impl FakeDeepgramTts {
    pub async fn start() -> Self {
        Self::start_with(TtsSettings::default()).await
    }

    pub async fn start_with(settings: TtsSettings) -> Self {
        let shared = Arc::new(Shared { inner: Mutex::new(Inner { settings, ..Default::default() }) });
        let app = Router::new().route("/v1/speak", get(speak_socket).post(speak_rest)).with_state(shared.clone());
        let server = FakeServer::start(app).await;
        Self { shared, server }
    }

    pub fn base_url(&self) -> Url {
        self.server.http_url()
    }

    pub fn configure(&self, change: impl FnOnce(&mut TtsSettings)) {
        change(&mut self.shared.lock().settings);
    }

    pub fn connections(&self) -> Vec<TtsConnection> {
        self.shared.lock().connections.clone()
    }

    /// Drops what was recorded (keeps settings); only between calls, for long runs.
    pub fn forget(&self) {
        let mut inner = self.shared.lock();
        inner.connections.clear();
        inner.rest.clear();
        inner.refused.clear();
    }

    pub fn rest_requests(&self) -> Vec<TtsRestRequest> {
        self.shared.lock().rest.clone()
    }

    /// Handshakes refused: (status, authorization header).
    pub fn refused(&self) -> Vec<(u16, Option<String>)> {
        self.shared.lock().refused.clone()
    }

    /// Polls until `check` holds for the connections (true) or `limit` passes (false).
    pub async fn wait_until(&self, limit: Duration, check: impl Fn(&[TtsConnection]) -> bool) -> bool {
        super::poll_until(limit, || check(&self.shared.lock().connections)).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Mulaw,
    Linear16,
}

/// Checks the query; the audio format, or why it is refused.
fn check_query(params: &[(String, String)], socket: bool) -> Result<(Encoding, u32, bool), String> {
    let model = param(params, "model").unwrap_or("aura-asteria-en");
    if !VOICES.contains(&model) {
        return Err(format!("Invalid model: {model}"));
    }
    let encoding = match param(params, "encoding").unwrap_or("linear16") {
        "mulaw" => Encoding::Mulaw,
        "linear16" => Encoding::Linear16,
        other => return Err(format!("Unsupported encoding for this fake: {other}")),
    };
    let default_rate = if encoding == Encoding::Mulaw { 8000 } else { 24000 };
    let rate = match param(params, "sample_rate") {
        None => default_rate,
        Some(r) => r.parse::<u32>().map_err(|_| format!("Invalid sample_rate: {r}"))?,
    };
    let allowed: &[u32] = match encoding {
        Encoding::Mulaw => &[8000, 16000],
        Encoding::Linear16 => &[8000, 16000, 24000, 32000, 48000],
    };
    if !allowed.contains(&rate) {
        return Err(format!("Invalid sample_rate {rate} for this encoding"));
    }
    let wav = match param(params, "container") {
        None => !socket,
        Some("none") => false,
        Some("wav") if !socket => true,
        Some(other) => return Err(format!("Unsupported container: {other}")),
    };
    Ok((encoding, rate, wav))
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

async fn speak_socket(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let query = query.unwrap_or_default();
    let authorization = header(&headers, "authorization");
    let params = query_pairs(Some(&query));
    let mut inner = shared.lock();
    let expected = format!("Token {}", inner.settings.api_key);
    let refusal = if authorization.as_deref() != Some(expected.as_str()) {
        Some((StatusCode::UNAUTHORIZED, "INVALID_AUTH", "Invalid credentials.".to_string()))
    } else if let Err(problem) = check_query(&params, true) {
        Some((StatusCode::BAD_REQUEST, "Bad Request", problem))
    } else {
        inner.settings.refuse_status.map(|code| {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            (status, "SERVICE_UNAVAILABLE", "The service is temporarily unavailable.".to_string())
        })
    };
    if let Some((status, code, message)) = refusal {
        inner.refused.push((status.as_u16(), authorization));
        return deepgram_error(status, code, &message);
    }
    let Ok((encoding, rate, _)) = check_query(&params, true) else {
        return deepgram_error(StatusCode::BAD_REQUEST, "Bad Request", "invalid query");
    };
    let index = inner.connections.len();
    let model = param(&params, "model").unwrap_or("aura-asteria-en").to_string();
    inner.connections.push(TtsConnection { query, params, authorization, ..Default::default() });
    drop(inner);
    let shared2 = shared.clone();
    ws.on_upgrade(move |socket| session(socket, shared2, index, Voice { encoding, rate, model }))
}

#[derive(Clone)]
struct Voice {
    encoding: Encoding,
    rate: u32,
    model: String,
}

/// The tone for `chars` characters of text.
fn synthesize(chars: usize, ms_per_char: u32, voice: &Voice) -> Vec<u8> {
    let samples = chars * ms_per_char as usize * voice.rate as usize / 1000;
    let mut out = Vec::with_capacity(samples * 2);
    for n in 0..samples {
        let phase = 2.0 * std::f64::consts::PI * 440.0 * n as f64 / voice.rate as f64;
        let s = (phase.sin() * 8000.0) as i16;
        match voice.encoding {
            Encoding::Mulaw => out.push(switchboard::audio::mulaw::encode(s)),
            Encoding::Linear16 => out.extend_from_slice(&s.to_le_bytes()),
        }
    }
    out
}

/// Work for the connection's writer, in order.
enum Job {
    /// Synthesise this text (queued under clear generation `gen`).
    Audio {
        text: String,
        gen: u64,
    },
    Flushed {
        sequence_id: u64,
        gen: u64,
    },
    Cleared {
        sequence_id: u64,
    },
    Json(Value),
    Close {
        code: u16,
        reason: String,
        ended_by: &'static str,
    },
}

type Sink = SplitSink<WebSocket, Message>;

/// Reader half: parses client messages, keeps the text buffer, queues jobs.
async fn session(socket: WebSocket, shared: Arc<Shared>, index: usize, voice: Voice) {
    let (sink, mut stream) = socket.split();
    let generation = Arc::new(AtomicU64::new(0));
    let (jobs, rx) = mpsc::unbounded_channel();
    let metadata = json!({"type": "Metadata", "request_id": request_id(), "model_name": voice.model,
        "model_version": "2025-01-01.0", "model_uuid": "00000000-0000-4000-8000-00000000b002"});
    let _ = jobs.send(Job::Json(metadata));
    let writer = tokio::spawn(writer(sink, rx, shared.clone(), index, voice, generation.clone()));
    let mut reader = Reader {
        shared,
        index,
        jobs,
        generation,
        buffer: String::new(),
        flushes: 0,
        clears: 0,
        recent: VecDeque::new(),
    };
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Text(text)) => {
                if !reader.on_text(text.as_str()) {
                    break;
                }
            }
            Ok(Message::Binary(_)) => {
                reader.close(1003, "DATA-0000: binary messages are not accepted");
                break;
            }
            Ok(Message::Close(_)) | Err(_) => {
                reader.record(|c| c.ended_by = "client".into());
                break;
            }
            Ok(_) => {}
        }
    }
    drop(reader);
    let _ = writer.await;
}

struct Reader {
    shared: Arc<Shared>,
    index: usize,
    jobs: mpsc::UnboundedSender<Job>,
    generation: Arc<AtomicU64>,
    buffer: String,
    flushes: u64,
    clears: u64,
    recent: VecDeque<Instant>,
}

impl Reader {
    fn record(&self, f: impl FnOnce(&mut TtsConnection)) {
        if let Some(c) = self.shared.lock().connections.get_mut(self.index) {
            f(c);
        }
    }

    fn settings(&self) -> TtsSettings {
        self.shared.lock().settings.clone()
    }

    fn close(&self, code: u16, reason: &str) {
        let _ = self.jobs.send(Job::Close { code, reason: reason.into(), ended_by: "protocol" });
    }

    /// False when the session ends.
    fn on_text(&mut self, text: &str) -> bool {
        let msg: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                self.close(1008, "DATA-0000: the message could not be parsed as JSON");
                return false;
            }
        };
        let gen = self.generation.load(Ordering::SeqCst);
        match msg["type"].as_str() {
            Some("Speak") => {
                let Some(t) = msg["text"].as_str() else {
                    self.close(1008, "DATA-0000: Speak needs a text string");
                    return false;
                };
                self.record(|c| c.speaks.push(t.to_string()));
                self.buffer.push_str(t);
                self.release_sentences(gen);
            }
            Some("Flush") => self.on_flush(gen),
            Some("Clear") => {
                self.record(|c| c.clears += 1);
                self.buffer.clear();
                self.generation.fetch_add(1, Ordering::SeqCst);
                let _ = self.jobs.send(Job::Cleared { sequence_id: self.clears });
                self.clears += 1;
            }
            Some("Close") => {
                self.record(|c| c.closes += 1);
                let rest = std::mem::take(&mut self.buffer);
                if !rest.trim().is_empty() {
                    let _ = self.jobs.send(Job::Audio { text: rest, gen });
                }
                let _ = self.jobs.send(Job::Close { code: 1000, reason: String::new(), ended_by: "Close" });
                return false;
            }
            _ => {
                self.close(1008, "DATA-0000: unknown message type");
                return false;
            }
        }
        true
    }

    fn on_flush(&mut self, gen: u64) {
        self.record(|c| c.flushes += 1);
        let s = self.settings();
        if let Some(code) = s.close_on_flush {
            let _ = self.jobs.send(Job::Close { code, reason: "NET-0000: internal error".into(), ended_by: "fault" });
            return;
        }
        let now = Instant::now();
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > s.flush_window) {
            self.recent.pop_front();
        }
        if self.recent.len() >= s.flush_limit {
            let warning = json!({"type": "Warning", "code": "FLUSH_LIMIT_EXCEEDED",
                "description": "Flush limit exceeded; no more flushes are processed until the window has passed."});
            let _ = self.jobs.send(Job::Json(warning));
            return;
        }
        self.recent.push_back(now);
        let rest = std::mem::take(&mut self.buffer);
        if !rest.trim().is_empty() {
            let _ = self.jobs.send(Job::Audio { text: rest, gen });
        }
        let _ = self.jobs.send(Job::Flushed { sequence_id: self.flushes, gen });
        self.flushes += 1;
    }

    /// Sends complete sentences (end punctuation followed by whitespace) for synthesis.
    fn release_sentences(&mut self, gen: u64) {
        let bytes = self.buffer.as_bytes();
        let mut cut = None;
        for i in 0..bytes.len().saturating_sub(1) {
            if matches!(bytes[i], b'.' | b'!' | b'?') && bytes[i + 1].is_ascii_whitespace() {
                cut = Some(i + 1);
            }
        }
        if let Some(end) = cut {
            let sentence: String = self.buffer.drain(..end).collect();
            let _ = self.jobs.send(Job::Audio { text: sentence, gen });
        }
    }
}

/// Writer half: the only task writing to the socket.
async fn writer(
    mut sink: Sink,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    shared: Arc<Shared>,
    index: usize,
    voice: Voice,
    generation: Arc<AtomicU64>,
) {
    let record = Recorder { shared: shared.clone(), index };
    while let Some(job) = jobs.recv().await {
        let s = shared.lock().settings.clone();
        let sent = match job {
            _ if s.hang => continue,
            Job::Json(v) => send_json(&mut sink, &record, v).await,
            Job::Audio { gen, .. } | Job::Flushed { gen, .. } if gen != generation.load(Ordering::SeqCst) => continue,
            Job::Audio { text, gen } => stream_audio(&mut sink, &record, &s, &voice, &text, gen, &generation).await,
            Job::Flushed { sequence_id, .. } => {
                send_json(&mut sink, &record, json!({"type": "Flushed", "sequence_id": sequence_id})).await
            }
            Job::Cleared { sequence_id } => {
                send_json(&mut sink, &record, json!({"type": "Cleared", "sequence_id": sequence_id})).await
            }
            Job::Close { code, reason, ended_by } => {
                record.note(|c| c.ended_by = ended_by.into());
                let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                return;
            }
        };
        if !sent {
            return;
        }
    }
}

/// Notes what a connection sent.
struct Recorder {
    shared: Arc<Shared>,
    index: usize,
}

impl Recorder {
    fn note(&self, f: impl FnOnce(&mut TtsConnection)) {
        if let Some(c) = self.shared.lock().connections.get_mut(self.index) {
            f(c);
        }
    }
}

async fn send_json(sink: &mut Sink, record: &Recorder, v: Value) -> bool {
    let text = v.to_string();
    record.note(|c| c.sent.push(v));
    sink.send(Message::Text(text.into())).await.is_ok()
}

/// Streams one synthesis; stops `clear_lag_chunks` chunks after a `Clear`.
async fn stream_audio(
    sink: &mut Sink,
    record: &Recorder,
    s: &TtsSettings,
    voice: &Voice,
    text: &str,
    gen: u64,
    generation: &AtomicU64,
) -> bool {
    let audio = synthesize(text.chars().count(), s.ms_per_char, voice);
    let bytes_per_ms = voice.rate as usize / 1000 * if voice.encoding == Encoding::Mulaw { 1 } else { 2 };
    let chunk = (s.chunk_ms as usize * bytes_per_ms).max(1);
    let mut lag = s.clear_lag_chunks;
    tokio::time::sleep(s.first_byte_delay).await;
    for (i, piece) in audio.chunks(chunk).enumerate() {
        let cleared = generation.load(Ordering::SeqCst) != gen;
        if cleared {
            if lag == 0 {
                return true;
            }
            lag -= 1;
        }
        if i > 0 {
            tokio::time::sleep(s.chunk_delay).await;
        }
        let len = piece.len();
        record.note(|c| {
            c.audio_bytes_sent += len;
            if cleared {
                c.audio_after_clear += 1;
            }
        });
        if sink.send(Message::Binary(Bytes::copy_from_slice(piece))).await.is_err() {
            return false;
        }
    }
    true
}

async fn speak_rest(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    let authorization = header(&headers, "authorization");
    let content_type = header(&headers, "content-type");
    let s = shared.lock().settings.clone();
    let text_body = String::from_utf8_lossy(&body).into_owned();
    let response = rest_answer(&s, &query, authorization.as_deref(), content_type.as_deref(), &body).await;
    shared.lock().rest.push(TtsRestRequest {
        query,
        authorization,
        content_type,
        body: text_body,
        status: response.status().as_u16(),
    });
    response
}

async fn rest_answer(
    s: &TtsSettings,
    query: &str,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    tokio::time::sleep(s.rest_delay).await;
    if authorization != Some(format!("Token {}", s.api_key).as_str()) {
        return deepgram_error(StatusCode::UNAUTHORIZED, "INVALID_AUTH", "Invalid credentials.");
    }
    if let Some(code) = s.rest_status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return deepgram_error(status, "INTERNAL_SERVER_ERROR", "The fake was told to fail.");
    }
    let params = query_pairs(Some(query));
    let (encoding, rate, wav) = match check_query(&params, false) {
        Ok(f) => f,
        Err(problem) => return deepgram_error(StatusCode::BAD_REQUEST, "Bad Request", &problem),
    };
    if !content_type.is_some_and(|c| c.starts_with("application/json")) {
        return deepgram_error(StatusCode::BAD_REQUEST, "Bad Request", "Content-Type must be application/json.");
    }
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(v) => match v["text"].as_str() {
            Some(t) if !t.trim().is_empty() => t.to_string(),
            _ => {
                let error = json!({"category": "INVALID_JSON", "message": "Invalid JSON submitted.",
                    "details": "missing field `text`", "request_id": request_id()});
                return (StatusCode::BAD_REQUEST, [("content-type", "application/json")], error.to_string())
                    .into_response();
            }
        },
        Err(e) => {
            let error = json!({"category": "INVALID_JSON", "message": "Invalid JSON submitted.",
                "details": format!("Json deserialize error: {e}"), "request_id": request_id()});
            return (StatusCode::BAD_REQUEST, [("content-type", "application/json")], error.to_string())
                .into_response();
        }
    };
    let model = param(&params, "model").unwrap_or("aura-asteria-en").to_string();
    let voice = Voice { encoding, rate, model: model.clone() };
    let mut audio = synthesize(text.chars().count(), s.ms_per_char, &voice);
    if wav {
        audio = wav_wrap(&audio, &voice);
    }
    let content = if wav {
        "audio/wav"
    } else if encoding == Encoding::Mulaw {
        "audio/basic"
    } else {
        "audio/l16"
    };
    let headers = [
        ("content-type", content.to_string()),
        ("dg-request-id", request_id()),
        ("dg-model-name", model),
        ("dg-char-count", text.chars().count().to_string()),
    ];
    (StatusCode::OK, headers, audio).into_response()
}

fn wav_wrap(audio: &[u8], voice: &Voice) -> Vec<u8> {
    let (format, bits): (u16, u16) = if voice.encoding == Encoding::Mulaw { (7, 8) } else { (1, 16) };
    let block = bits / 8;
    let mut out = Vec::with_capacity(44 + audio.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + audio.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&voice.rate.to_le_bytes());
    out.extend_from_slice(&(voice.rate * block as u32).to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(audio.len() as u32).to_le_bytes());
    out.extend_from_slice(audio);
    out
}
