//! Deepgram Aura text-to-speech: streaming WebSocket `/v1/speak` and the REST fallback.
//!
//! Wire contract (Deepgram's TTS streaming reference): query `model`, `encoding=mulaw`,
//! `sample_rate=8000` (raw audio, no container on the socket — `container=none` is the only value
//! it allows and the default), `Authorization: Token KEY`; text messages `Speak {text}`, `Flush`,
//! `Clear`, `Close`; binary audio back plus JSON `Metadata`, `Flushed {sequence_id}`,
//! `Cleared {sequence_id}`, `Warning {description, code}`. The REST fallback is
//! `POST /v1/speak?…&container=none` with `{"text":…}` (REST would otherwise wrap μ-law in WAV).
//!
//! One socket per call, not per reply: the handshake (TCP + TLS + upgrade, one to three round
//! trips) stays off every reply's time to first byte, and `Clear` plus client-side discarding
//! interrupts a reply without tearing the socket down. Audio is attributed to replies by order:
//! the server answers Speak/Flush in sequence, so audio before the n-th `Flushed` belongs to the
//! text of the n-th `Flush`. After `Clear`, everything up to `Cleared` belongs to cleared replies and is
//! dropped. A socket that owes audio (a `Flush` or `Clear` unanswered) and stays silent for
//! `stall_timeout` is treated as dead: its replies are reported `Failed` and a new socket is opened.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::Instrument;
use url::Url;

use super::TtsStats;
use super::{
    command_channel_with_budget, FlushBudget, ReplyId, TextToSpeech, TtsCommand, TtsError, TtsEvent, TtsEvents,
    TtsHandle, TtsOptions,
};
use crate::services::backoff::Backoff;
use crate::services::deepgram_ws::{self, close_parts, Ws};
use crate::services::error::{deepgram_error_message, truncate};
use crate::services::{join_path, websocket_url};

pub const DEFAULT_VOICE: &str = "aura-2-theia-en";
/// μ-law at 8 kHz: what Twilio plays, so no re-encoding.
pub const ENCODING: &str = "mulaw";
pub const SAMPLE_RATE: u32 = 8000;
/// Deepgram's limit on the text of one request / `Speak`.
const MAX_TEXT_CHARS: usize = 2000;
/// Deepgram accepts 20 `Flush` per 60 s on a socket; keep a margin.
const FLUSH_BUDGET: FlushBudget = FlushBudget { max: 16, window: Duration::from_secs(60) };

/// Everything the Deepgram TTS client needs.
#[derive(Clone)]
pub struct DeepgramTtsConfig {
    /// `DEEPGRAM_BASE_URL` (https → wss for the socket).
    pub base_url: Url,
    pub api_key: String,
    pub voice: String,
    pub connect_timeout: Duration,
    /// A socket that owes audio and sends nothing for this long is dead.
    pub stall_timeout: Duration,
    pub write_timeout: Duration,
    /// Whole-request limit of the REST fallback.
    pub rest_timeout: Duration,
    pub reconnect_initial_backoff: Duration,
    pub reconnect_max_backoff: Duration,
    pub close_timeout: Duration,
    pub event_capacity: usize,
}

impl std::fmt::Debug for DeepgramTtsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeepgramTtsConfig")
            .field("base_url", &self.base_url.as_str())
            .field("voice", &self.voice)
            .finish_non_exhaustive()
    }
}

impl DeepgramTtsConfig {
    pub fn new(base_url: Url, api_key: impl Into<String>) -> Self {
        Self {
            base_url,
            api_key: api_key.into(),
            voice: DEFAULT_VOICE.into(),
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(4),
            write_timeout: Duration::from_secs(2),
            rest_timeout: Duration::from_secs(10),
            reconnect_initial_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(5),
            close_timeout: Duration::from_secs(1),
            event_capacity: 512,
        }
    }

    /// `wss://…/v1/speak?model=…&encoding=mulaw&sample_rate=8000`.
    pub fn speak_socket_url(&self, options: &TtsOptions) -> Result<Url, TtsError> {
        let url = websocket_url(&self.base_url, "/v1/speak").map_err(TtsError::Config)?;
        Ok(self.with_query(url, options, false))
    }

    /// `https://…/v1/speak?model=…&encoding=mulaw&sample_rate=8000&container=none`.
    pub fn speak_rest_url(&self, options: &TtsOptions) -> Url {
        self.with_query(join_path(&self.base_url, "/v1/speak"), options, true)
    }

    fn with_query(&self, mut url: Url, options: &TtsOptions, raw_container: bool) -> Url {
        let voice = options.voice.as_deref().unwrap_or(&self.voice);
        let rate = SAMPLE_RATE.to_string();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("model", voice).append_pair("encoding", ENCODING).append_pair("sample_rate", &rate);
            if raw_container {
                q.append_pair("container", "none");
            }
        }
        url
    }
}

/// Deepgram TTS (streaming + REST).
#[derive(Debug, Clone)]
pub struct DeepgramTts {
    config: Arc<DeepgramTtsConfig>,
    http: reqwest::Client,
}

impl DeepgramTts {
    pub fn new(config: DeepgramTtsConfig) -> Result<Self, TtsError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| TtsError::Config(format!("HTTP client: {e}")))?;
        Ok(Self { config: Arc::new(config), http })
    }

    /// Opens a streaming session: returns once Deepgram accepted the handshake.
    pub async fn open(&self, options: TtsOptions) -> Result<(TtsHandle, TtsEvents), TtsError> {
        let url = self.config.speak_socket_url(&options)?;
        let ws = deepgram_ws::connect(&url, &self.config.api_key, self.config.connect_timeout).await?;
        let (handle, cmds, stats) = command_channel_with_budget(FLUSH_BUDGET);
        let (events_tx, events) = mpsc::channel(self.config.event_capacity.max(1));
        let session = Session::new(self.config.clone(), url, cmds, events_tx, stats);
        tokio::spawn(session.run(ws).instrument(tracing::Span::current()));
        Ok((handle, events))
    }

    /// One-shot synthesis over REST: the whole text's μ-law audio.
    pub async fn speak_rest(&self, text: &str, options: &TtsOptions) -> Result<Bytes, TtsError> {
        let limit = self.config.rest_timeout;
        let request = self
            .http
            .post(self.config.speak_rest_url(options))
            .header(AUTHORIZATION, format!("Token {}", self.config.api_key))
            .header(CONTENT_TYPE, "application/json")
            .body(serde_json::json!({ "text": text }).to_string());
        let attempt = async {
            let response = request.send().await.map_err(|e| TtsError::Network(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|e| TtsError::Network(e.to_string()))?;
            match status {
                200..=299 => Ok(strip_wav_header(body)),
                401 | 403 => Err(TtsError::Auth { status, message: deepgram_error_message(&body) }),
                _ => Err(TtsError::Api { status, message: deepgram_error_message(&body) }),
            }
        };
        tokio::time::timeout(limit, attempt).await.map_err(|_| TtsError::Timeout(limit))?
    }
}

impl TextToSpeech for DeepgramTts {
    fn connect(&self, options: TtsOptions) -> BoxFuture<'static, Result<(TtsHandle, TtsEvents), TtsError>> {
        let this = self.clone();
        Box::pin(async move { this.open(options).await })
    }

    fn synthesize(&self, text: String, options: TtsOptions) -> BoxFuture<'static, Result<Bytes, TtsError>> {
        let this = self.clone();
        Box::pin(async move { this.speak_rest(&text, &options).await })
    }
}

/// Raw audio from a body that may carry a RIFF/WAVE header (REST's default container).
fn strip_wav_header(body: Bytes) -> Bytes {
    if body.len() < 12 || &body[0..4] != b"RIFF" || &body[8..12] != b"WAVE" {
        return body;
    }
    let mut pos = 12;
    while pos + 8 <= body.len() {
        let id = &body[pos..pos + 4];
        let size = u32::from_le_bytes([body[pos + 4], body[pos + 5], body[pos + 6], body[pos + 7]]) as usize;
        if id == b"data" {
            let end = (pos + 8).saturating_add(size).min(body.len());
            return body.slice(pos + 8..end);
        }
        pos = pos + 8 + size + (size & 1);
    }
    body
}

/// Splits text longer than Deepgram's limit at whitespace (rare: the engine speaks sentences).
fn split_text(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > MAX_TEXT_CHARS {
        let limit = rest.char_indices().nth(MAX_TEXT_CHARS).map(|(i, _)| i).unwrap_or(rest.len());
        let cut = rest[..limit].rfind(char::is_whitespace).filter(|&i| i > 0).unwrap_or(limit);
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts.push(rest);
    parts
}

/// Text of one reply up to one `Flush` (or not flushed yet).
#[derive(Debug, Clone, Copy)]
struct Segment {
    reply: ReplyId,
    flushed: bool,
}

enum Ended {
    Closed,
    Dropped { error: TtsError },
}

type Sink = SplitSink<Ws, Message>;

/// The task behind one TTS session.
struct Session {
    config: Arc<DeepgramTtsConfig>,
    url: Url,
    cmds: mpsc::UnboundedReceiver<TtsCommand>,
    events: mpsc::Sender<TtsEvent>,
    stats: Arc<TtsStats>,
    /// Text on the current socket not yet answered by `Flushed`, in order: one segment per
    /// `Flush` (a reply flushed per sentence has several), plus the unflushed tail.
    segments: VecDeque<Segment>,
    /// `Flush`es sent and not yet answered.
    flushes_owed: usize,
    /// `Clear` sent, `Cleared` not yet received: incoming audio belongs to cleared replies.
    discarding: bool,
    /// Commands that arrived while no socket was up.
    outbox: VecDeque<TtsCommand>,
    closing: bool,
}

impl Session {
    fn new(
        config: Arc<DeepgramTtsConfig>,
        url: Url,
        cmds: mpsc::UnboundedReceiver<TtsCommand>,
        events: mpsc::Sender<TtsEvent>,
        stats: Arc<TtsStats>,
    ) -> Self {
        Self {
            config,
            url,
            cmds,
            events,
            stats,
            segments: VecDeque::new(),
            flushes_owed: 0,
            discarding: false,
            outbox: VecDeque::new(),
            closing: false,
        }
    }

    async fn emit(&self, event: TtsEvent) {
        let _ = self.events.send(event).await;
    }

    async fn run(mut self, first: Ws) {
        let mut next = Some(first);
        loop {
            let ws = match next.take() {
                Some(ws) => ws,
                None => match self.reconnect().await {
                    Some(ws) => ws,
                    None => return,
                },
            };
            match self.pump(ws).await {
                Ended::Closed => return,
                Ended::Dropped { error } => {
                    tracing::warn!(%error, "Deepgram TTS connection lost");
                    self.fail_open(error.clone()).await;
                    let reason = error.to_string();
                    self.emit(TtsEvent::Disconnected { reason, kind: error.kind() }).await;
                }
            }
        }
    }

    /// Reports every reply still owed audio as failed and forgets the socket's state.
    async fn fail_open(&mut self, error: TtsError) {
        self.flushes_owed = 0;
        self.discarding = false;
        let mut replies: Vec<ReplyId> = Vec::new();
        for seg in self.segments.drain(..) {
            if replies.last() != Some(&seg.reply) {
                replies.push(seg.reply);
            }
        }
        if !replies.is_empty() {
            self.emit(TtsEvent::Failed { replies, error }).await;
        }
    }

    async fn pump(&mut self, ws: Ws) -> Ended {
        let (mut sink, mut stream) = ws.split();
        while let Some(cmd) = self.outbox.pop_front() {
            if let Err(end) = self.on_command(&mut sink, Some(cmd)).await {
                return end;
            }
        }
        let mut stall_from = self.owes_audio().then(Instant::now);
        let mut close_deadline = None;
        loop {
            let stall_at = stall_from.map(|t| t + self.config.stall_timeout);
            tokio::select! {
                msg = stream.next() => {
                    if let Some(end) = self.on_message(msg).await {
                        return end;
                    }
                    stall_from = self.owes_audio().then(Instant::now);
                }
                cmd = self.cmds.recv(), if close_deadline.is_none() => {
                    let owed_before = self.owes_audio();
                    if let Err(end) = self.on_command(&mut sink, cmd).await {
                        return end;
                    }
                    if self.closing {
                        close_deadline = Some(Instant::now() + self.config.close_timeout);
                    }
                    if !owed_before && self.owes_audio() {
                        stall_from = Some(Instant::now());
                    }
                }
                _ = sleep_until(stall_at.unwrap_or_else(Instant::now)), if stall_at.is_some() && close_deadline.is_none() => {
                    return Ended::Dropped { error: TtsError::Stalled(self.config.stall_timeout) };
                }
                _ = sleep_until(close_deadline.unwrap_or_else(Instant::now)), if close_deadline.is_some() => {
                    return Ended::Closed;
                }
            }
        }
    }

    fn owes_audio(&self) -> bool {
        self.flushes_owed > 0 || self.discarding
    }

    async fn on_command(&mut self, sink: &mut Sink, cmd: Option<TtsCommand>) -> Result<(), Ended> {
        match cmd {
            Some(TtsCommand::Speak { reply, text }) => {
                self.open_segment(reply);
                for part in split_text(&text) {
                    let msg = serde_json::json!({ "type": "Speak", "text": part }).to_string();
                    self.write(sink, Message::text(msg)).await?;
                    TtsStats::add(&self.stats.speaks_sent, 1);
                }
            }
            Some(TtsCommand::Flush { reply }) => {
                self.open_segment(reply);
                self.write(sink, Message::text(r#"{"type":"Flush"}"#)).await?;
                if let Some(seg) = self.segments.back_mut() {
                    seg.flushed = true;
                }
                self.flushes_owed += 1;
                TtsStats::add(&self.stats.flushes_sent, 1);
            }
            Some(TtsCommand::Clear) => {
                // Forget the cleared replies first: if the write fails they are not "failed".
                self.segments.clear();
                self.flushes_owed = 0;
                self.discarding = true;
                self.write(sink, Message::text(r#"{"type":"Clear"}"#)).await?;
                TtsStats::add(&self.stats.clears_sent, 1);
            }
            Some(TtsCommand::Close) | None => {
                self.closing = true;
                self.write(sink, Message::text(r#"{"type":"Close"}"#)).await?;
            }
        }
        Ok(())
    }

    /// Makes the last segment an unflushed one of `reply`.
    fn open_segment(&mut self, reply: ReplyId) {
        match self.segments.back() {
            Some(seg) if seg.reply == reply && !seg.flushed => {}
            _ => self.segments.push_back(Segment { reply, flushed: false }),
        }
    }

    /// `Flushed` answers the oldest flush: its segment (and any unflushed text before it, which
    /// the server spoke with it) is done.
    fn pop_flushed(&mut self) -> Option<ReplyId> {
        while let Some(seg) = self.segments.pop_front() {
            if seg.flushed {
                return Some(seg.reply);
            }
        }
        None
    }

    async fn write(&self, sink: &mut Sink, msg: Message) -> Result<(), Ended> {
        match tokio::time::timeout(self.config.write_timeout, sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) if self.closing => Err(Ended::Closed),
            Ok(Err(e)) => Err(Ended::Dropped { error: TtsError::Network(format!("write failed: {e}")) }),
            Err(_) => Err(Ended::Dropped { error: TtsError::Stalled(self.config.write_timeout) }),
        }
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Ended> {
        match msg {
            Some(Ok(Message::Binary(audio))) => {
                self.on_audio(audio).await;
                None
            }
            Some(Ok(Message::Text(text))) => {
                self.on_text(text.as_str()).await;
                None
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = close_parts(frame.as_ref());
                Some(if self.closing {
                    Ended::Closed
                } else {
                    Ended::Dropped { error: TtsError::Closed { code, reason } }
                })
            }
            Some(Ok(_)) => None,
            Some(Err(_)) | None if self.closing => Some(Ended::Closed),
            Some(Err(e)) => Some(Ended::Dropped { error: TtsError::Network(format!("connection lost: {e}")) }),
            None => Some(Ended::Dropped { error: TtsError::Network("connection ended without a close frame".into()) }),
        }
    }

    async fn on_audio(&mut self, audio: Bytes) {
        let len = audio.len() as u64;
        match self.segments.front().map(|s| s.reply) {
            Some(reply) if !self.discarding => {
                TtsStats::add(&self.stats.audio_bytes, len);
                self.emit(TtsEvent::Audio { reply, audio, received_at: Instant::now() }).await;
            }
            _ => TtsStats::add(&self.stats.discarded_bytes, len),
        }
    }

    async fn on_text(&mut self, text: &str) {
        let event = match serde_json::from_str::<ServerMessage>(text) {
            Ok(ServerMessage::Flushed { .. }) if self.discarding => return,
            Ok(ServerMessage::Flushed { sequence_id }) => {
                self.flushes_owed = self.flushes_owed.saturating_sub(1);
                match self.pop_flushed() {
                    Some(reply) => TtsEvent::Flushed { reply, received_at: Instant::now() },
                    None => {
                        tracing::debug!(?sequence_id, "Deepgram TTS Flushed with no open reply");
                        return;
                    }
                }
            }
            Ok(ServerMessage::Cleared { sequence_id }) => {
                tracing::debug!(?sequence_id, "Deepgram TTS cleared");
                self.discarding = false;
                TtsEvent::Cleared { received_at: Instant::now() }
            }
            Ok(ServerMessage::Warning { description, code }) => TtsEvent::Warning { code, message: description },
            Ok(ServerMessage::Error { description, err_msg, code, err_code }) => TtsEvent::Warning {
                code: code.or(err_code).unwrap_or_default(),
                message: description.or(err_msg).unwrap_or_default(),
            },
            Ok(ServerMessage::Metadata { request_id }) => {
                tracing::debug!(?request_id, "Deepgram TTS metadata");
                return;
            }
            Ok(ServerMessage::Other) => return,
            Err(e) => TtsEvent::Warning {
                code: "unreadable".into(),
                message: format!("unreadable Deepgram message ({e}): {}", truncate(text, 200)),
            },
        };
        self.emit(event).await;
    }

    /// Opens a new socket with back-off. Commands meanwhile wait in the outbox; when an attempt
    /// fails, replies waiting in it are reported failed (the engine falls back) rather than held.
    async fn reconnect(&mut self) -> Option<Ws> {
        let mut backoff = Backoff::new(self.config.reconnect_initial_backoff, self.config.reconnect_max_backoff);
        loop {
            let attempts = backoff.attempt();
            let (url, config) = (self.url.clone(), self.config.clone());
            let connect = async move { deepgram_ws::connect(&url, &config.api_key, config.connect_timeout).await };
            match self.queueing(connect).await? {
                Ok(ws) => {
                    TtsStats::add(&self.stats.reconnects, 1);
                    self.emit(TtsEvent::Reconnected { attempts, downtime: backoff.elapsed() }).await;
                    return Some(ws);
                }
                Err(e) => {
                    tracing::debug!(attempts, error = %e, "Deepgram TTS reconnect attempt failed");
                    let fatal = !e.is_retryable();
                    self.fail_outbox(TtsError::Handshake(e), fatal).await;
                    if fatal {
                        return None;
                    }
                }
            }
            self.queueing(sleep(backoff.delay())).await?;
        }
    }

    /// Reports the replies waiting in the outbox as failed; `last` reports even none (the
    /// session ends, e.g. on revoked credentials).
    async fn fail_outbox(&mut self, error: TtsError, last: bool) {
        let mut replies: Vec<ReplyId> = Vec::new();
        for cmd in self.outbox.drain(..) {
            if let TtsCommand::Speak { reply, .. } | TtsCommand::Flush { reply } = cmd {
                if replies.last() != Some(&reply) {
                    replies.push(reply);
                }
            }
        }
        if last || !replies.is_empty() {
            self.emit(TtsEvent::Failed { replies, error }).await;
        }
    }

    /// Runs `fut` while queueing commands; `None` when the session is being closed.
    async fn queueing<F: std::future::Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.cmds.recv() => match cmd {
                    Some(TtsCommand::Clear) => {
                        self.outbox.clear();
                        self.emit(TtsEvent::Cleared { received_at: Instant::now() }).await;
                    }
                    Some(TtsCommand::Close) | None => {
                        self.closing = true;
                        return None;
                    }
                    Some(cmd) => self.outbox.push_back(cmd),
                },
            }
        }
    }
}

/// The server messages we read; anything else is ignored.
#[derive(Deserialize)]
#[serde(tag = "type")]
enum ServerMessage {
    Metadata {
        #[serde(default)]
        request_id: Option<String>,
    },
    Flushed {
        #[serde(default)]
        sequence_id: Option<u64>,
    },
    Cleared {
        #[serde(default)]
        sequence_id: Option<u64>,
    },
    Warning {
        #[serde(default)]
        description: String,
        #[serde(default)]
        code: String,
    },
    Error {
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        err_msg: Option<String>,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        err_code: Option<String>,
    },
    #[serde(other)]
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_ask_for_mulaw_8k_and_raw_rest_audio() {
        let cfg = DeepgramTtsConfig::new(Url::parse("https://api.deepgram.com").unwrap(), "k");
        let ws = cfg.speak_socket_url(&TtsOptions::default()).unwrap();
        assert_eq!(
            ws.as_str(),
            "wss://api.deepgram.com/v1/speak?model=aura-2-theia-en&encoding=mulaw&sample_rate=8000"
        );
        let rest = cfg.speak_rest_url(&TtsOptions { voice: Some("aura-2-thalia-en".into()) });
        assert_eq!(
            rest.as_str(),
            "https://api.deepgram.com/v1/speak?model=aura-2-thalia-en&encoding=mulaw&sample_rate=8000&container=none"
        );
    }

    #[test]
    fn wav_header_is_stripped_and_raw_audio_kept() {
        let mut wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
        wav.extend_from_slice(&[0u8; 16]);
        wav.extend_from_slice(b"data\x03\0\0\0");
        wav.extend_from_slice(&[1, 2, 3]);
        assert_eq!(&strip_wav_header(Bytes::from(wav))[..], &[1, 2, 3]);
        assert_eq!(&strip_wav_header(Bytes::from_static(&[9, 9]))[..], &[9, 9]);
    }

    #[test]
    fn long_text_splits_at_whitespace_within_the_limit() {
        let text = "word ".repeat(1000);
        let parts = split_text(&text);
        assert!(parts.len() >= 3);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_TEXT_CHARS));
        assert_eq!(parts.concat(), text);
    }
}
