//! Deepgram live transcription over WebSocket (`/v1/listen`).
//!
//! Wire contract (see Deepgram's streaming reference): the query the reference bot sends on
//! Pipecat 1.14, `Authorization: Token KEY`, PCM16 8 kHz mono as binary messages (one 20 ms frame
//! each), text control messages `KeepAlive`, `Finalize` and `CloseStream`; JSON `Results`,
//! `Metadata`, `SpeechStarted`, `UtteranceEnd` and `Error` back; errors as close frames (1008 bad
//! data, 1011 server side incl. `NET-0001` after 10 s without audio).
//!
//! Choices: `KeepAlive` is sent only when nothing was written for `keepalive_interval` (5 s) —
//! the engine streams audio continuously, so it normally sends none, and a stalled transport still
//! stays well inside Deepgram's 10 s limit. A dropped socket (any close but ours, except 1008
//! "bad data" which would only repeat) is reconnected with exponential back-off; audio offered
//! meanwhile is kept in a bounded buffer (last `reconnect_buffer`, 5 s) and sent first on the new
//! socket, followed by a `Finalize` if one was asked for meanwhile. Transcript times are put back
//! on the session's clock (the new socket's zero is the first re-sent frame).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tracing::Instrument;
use url::Url;

use super::{
    command_channel, seq_to_secs, Frame, SpeechToText, SttCommand, SttCommandReceiver, SttError, SttEvent, SttEvents,
    SttHandle, SttOptions, SttStats, Transcript, FRAME_SAMPLES,
};
use crate::services::backoff::Backoff;
use crate::services::deepgram_ws::{self, close_parts, Ws};
use crate::services::error::{truncate, ErrorKind};
use crate::services::websocket_url;

pub const DEFAULT_MODEL: &str = "nova-3";
pub const DEFAULT_LANGUAGE: &str = "en";
/// The audio the STT path carries: 20 ms PCM16 frames at 8 kHz.
pub const ENCODING: &str = "linear16";
pub const SAMPLE_RATE: u32 = 8000;

const FRAMES_PER_SEC: f64 = 50.0;
const KEEPALIVE: &str = r#"{"type":"KeepAlive"}"#;
const FINALIZE: &str = r#"{"type":"Finalize"}"#;
const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;

/// Everything the Deepgram STT client needs.
#[derive(Clone)]
pub struct DeepgramSttConfig {
    /// `DEEPGRAM_BASE_URL` (https → wss, http → ws).
    pub base_url: Url,
    pub api_key: String,
    pub model: String,
    pub language: String,
    /// Appended after the reference's parameters (e.g. `keyterm`, `endpointing`).
    pub extra_params: Vec<(String, String)>,
    pub connect_timeout: Duration,
    /// Send `KeepAlive` after this long without writing anything.
    pub keepalive_interval: Duration,
    /// A write that does not complete in this time counts as a dropped connection.
    pub write_timeout: Duration,
    /// Audio waiting for the socket before `send_audio` starts dropping.
    pub send_queue: Duration,
    /// Audio kept while reconnecting (oldest dropped first).
    pub reconnect_buffer: Duration,
    pub reconnect_initial_backoff: Duration,
    pub reconnect_max_backoff: Duration,
    /// Stop reconnecting (and report `Failed`) after this long without a connection.
    pub reconnect_give_up: Duration,
    /// How long `close()` waits for the last results and Deepgram's close.
    pub close_timeout: Duration,
    pub event_capacity: usize,
}

impl std::fmt::Debug for DeepgramSttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeepgramSttConfig")
            .field("base_url", &self.base_url.as_str())
            .field("model", &self.model)
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

impl DeepgramSttConfig {
    /// The reference's settings (`nova-3`, `en`) and production timeouts.
    pub fn new(base_url: Url, api_key: impl Into<String>) -> Self {
        Self {
            base_url,
            api_key: api_key.into(),
            model: DEFAULT_MODEL.into(),
            language: DEFAULT_LANGUAGE.into(),
            extra_params: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
            write_timeout: Duration::from_secs(2),
            send_queue: Duration::from_secs(1),
            reconnect_buffer: Duration::from_secs(5),
            reconnect_initial_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(2),
            reconnect_give_up: Duration::from_secs(30),
            close_timeout: Duration::from_secs(2),
            event_capacity: 256,
        }
    }

    /// The `/v1/listen` URL with exactly the reference's query (Pipecat 1.14, §2.1), in its order.
    pub fn listen_url(&self, options: &SttOptions) -> Result<Url, SttError> {
        let mut url = websocket_url(&self.base_url, "/v1/listen").map_err(SttError::Config)?;
        let model = options.model.as_deref().unwrap_or(&self.model);
        let language = options.language.as_deref().unwrap_or(&self.language);
        let rate = SAMPLE_RATE.to_string();
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in [
                ("model", model),
                ("language", language),
                ("encoding", ENCODING),
                ("sample_rate", rate.as_str()),
                ("channels", "1"),
                ("multichannel", "false"),
                ("interim_results", "true"),
                ("punctuate", "true"),
                ("smart_format", "false"),
                ("numerals", "false"),
                ("diarize", "false"),
                ("dictation", "false"),
                ("detect_entities", "false"),
            ] {
                q.append_pair(k, v);
            }
            for (k, v) in &self.extra_params {
                q.append_pair(k, v);
            }
        }
        Ok(url)
    }

    fn frames(d: Duration) -> usize {
        (d.as_secs_f64() * FRAMES_PER_SEC).ceil().max(1.0) as usize
    }
}

/// Deepgram streaming STT.
#[derive(Debug, Clone)]
pub struct DeepgramStt {
    config: Arc<DeepgramSttConfig>,
}

impl DeepgramStt {
    pub fn new(config: DeepgramSttConfig) -> Self {
        Self { config: Arc::new(config) }
    }

    /// Opens a session: returns once Deepgram accepted the handshake.
    pub async fn open(&self, options: SttOptions) -> Result<(SttHandle, SttEvents), SttError> {
        let config = self.config.clone();
        let url = config.listen_url(&options)?;
        let ws = deepgram_ws::connect(&url, &config.api_key, config.connect_timeout).await?;
        let (handle, cmds) = command_channel(DeepgramSttConfig::frames(config.send_queue));
        let (events_tx, events) = mpsc::channel(config.event_capacity.max(1));
        let session = Session::new(config, url, cmds, events_tx);
        tokio::spawn(session.run(ws).instrument(tracing::Span::current()));
        Ok((handle, events))
    }
}

impl SpeechToText for DeepgramStt {
    fn connect(&self, options: SttOptions) -> BoxFuture<'static, Result<(SttHandle, SttEvents), SttError>> {
        let this = self.clone();
        Box::pin(async move { this.open(options).await })
    }
}

/// How one connection ended.
enum Ended {
    /// We closed the stream (or every handle is gone).
    Closed,
    /// Lost mid-call: reconnect.
    Dropped { reason: String, kind: ErrorKind },
    /// Reconnecting would not help.
    Fatal(SttError),
}

type Sink = SplitSink<Ws, Message>;

/// The task behind one STT session.
struct Session {
    config: Arc<DeepgramSttConfig>,
    url: Url,
    cmds: SttCommandReceiver,
    events: mpsc::Sender<SttEvent>,
    /// Audio not yet written to a socket (filled while reconnecting).
    backlog: VecDeque<(u64, Frame)>,
    backlog_cap: usize,
    finalize_pending: bool,
    closing: bool,
    /// Session seconds at the current socket's audio zero.
    time_base: f64,
    /// Whether the current socket has carried audio yet (its zero is its first frame).
    base_set: bool,
}

impl Session {
    fn new(config: Arc<DeepgramSttConfig>, url: Url, cmds: SttCommandReceiver, events: mpsc::Sender<SttEvent>) -> Self {
        let backlog_cap = DeepgramSttConfig::frames(config.reconnect_buffer);
        Self {
            config,
            url,
            cmds,
            events,
            backlog: VecDeque::new(),
            backlog_cap,
            finalize_pending: false,
            closing: false,
            time_base: 0.0,
            base_set: false,
        }
    }

    fn stats(&self) -> &SttStats {
        self.cmds.stats()
    }

    async fn emit(&self, event: SttEvent) {
        // A dropped receiver means the call is ending; keep serving the handle until it closes.
        let _ = self.events.send(event).await;
    }

    async fn run(mut self, first: Ws) {
        let mut ws = first;
        loop {
            match self.pump(ws).await {
                Ended::Closed => return,
                Ended::Fatal(e) => {
                    tracing::warn!(error = %e, "Deepgram STT stream failed");
                    self.emit(SttEvent::Failed(e)).await;
                    return;
                }
                Ended::Dropped { reason, kind } => {
                    tracing::warn!(%reason, "Deepgram STT connection dropped; reconnecting");
                    self.emit(SttEvent::Disconnected { reason: reason.clone(), kind }).await;
                    match self.reconnect().await {
                        Some(next) => ws = next,
                        None => return,
                    }
                }
            }
        }
    }

    /// Serves one connection until it ends.
    async fn pump(&mut self, ws: Ws) -> Ended {
        let (mut sink, mut stream) = ws.split();
        self.base_set = false;
        if let Err(end) = self.send_backlog(&mut sink).await {
            return end;
        }
        let mut last_write = Instant::now();
        let mut close_deadline = None;
        if self.closing {
            if let Err(end) = self.write_text(&mut sink, CLOSE_STREAM).await {
                return end;
            }
            close_deadline = Some(Instant::now() + self.config.close_timeout);
        }
        loop {
            let keepalive_at = last_write + self.config.keepalive_interval;
            let close_at = close_deadline.unwrap_or(keepalive_at);
            tokio::select! {
                msg = stream.next() => {
                    if let Some(end) = self.on_message(msg).await {
                        return end;
                    }
                }
                cmd = self.cmds.recv(), if close_deadline.is_none() => {
                    if let Err(end) = self.on_command(&mut sink, cmd).await {
                        return end;
                    }
                    if self.closing {
                        close_deadline = Some(Instant::now() + self.config.close_timeout);
                    }
                    last_write = Instant::now();
                }
                _ = sleep_until(keepalive_at), if close_deadline.is_none() => {
                    if let Err(end) = self.write_text(&mut sink, KEEPALIVE).await {
                        return end;
                    }
                    SttStats::add(&self.stats().keepalives_sent, 1);
                    last_write = Instant::now();
                }
                _ = sleep_until(close_at), if close_deadline.is_some() => {
                    tracing::debug!("Deepgram STT did not close in time after CloseStream");
                    return Ended::Closed;
                }
            }
        }
    }

    async fn on_command(&mut self, sink: &mut Sink, cmd: Option<SttCommand>) -> Result<(), Ended> {
        match cmd {
            Some(SttCommand::Audio { seq, samples }) => self.write_audio(sink, seq, samples).await,
            Some(SttCommand::Finalize) => {
                self.write_text(sink, FINALIZE).await?;
                SttStats::add(&self.stats().finalizes_sent, 1);
                Ok(())
            }
            Some(SttCommand::Close) | None => {
                self.closing = true;
                self.write_text(sink, CLOSE_STREAM).await
            }
        }
    }

    /// Sends audio buffered during an outage, then a `Finalize` asked for meanwhile. What is not
    /// sent stays buffered, in order, for the next socket.
    async fn send_backlog(&mut self, sink: &mut Sink) -> Result<(), Ended> {
        while let Some(&(seq, samples)) = self.backlog.front() {
            self.write_frame(sink, seq, &samples).await?;
            self.backlog.pop_front();
        }
        if self.finalize_pending {
            self.write_text(sink, FINALIZE).await?;
            self.finalize_pending = false;
            SttStats::add(&self.stats().finalizes_sent, 1);
        }
        Ok(())
    }

    /// Sends a live frame; one that may not have arrived is kept for the next socket.
    async fn write_audio(&mut self, sink: &mut Sink, seq: u64, samples: Frame) -> Result<(), Ended> {
        let result = self.write_frame(sink, seq, &samples).await;
        if result.is_err() {
            self.buffer(seq, samples);
        }
        result
    }

    async fn write_frame(&mut self, sink: &mut Sink, seq: u64, samples: &Frame) -> Result<(), Ended> {
        if !self.base_set {
            self.time_base = seq_to_secs(seq);
            self.base_set = true;
        }
        let mut bytes = Vec::with_capacity(FRAME_SAMPLES * 2);
        for s in samples {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        self.write(sink, Message::Binary(Bytes::from(bytes))).await?;
        SttStats::add(&self.stats().frames_sent, 1);
        Ok(())
    }

    async fn write_text(&self, sink: &mut Sink, text: &'static str) -> Result<(), Ended> {
        self.write(sink, Message::text(text)).await
    }

    async fn write(&self, sink: &mut Sink, msg: Message) -> Result<(), Ended> {
        match tokio::time::timeout(self.config.write_timeout, sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if self.closing => {
                tracing::debug!(error = %e, "Deepgram STT write failed while closing");
                Err(Ended::Closed)
            }
            Ok(Err(e)) => Err(Ended::Dropped { reason: format!("write failed: {e}"), kind: ErrorKind::Network }),
            Err(_) => Err(Ended::Dropped {
                reason: format!("write stalled for {:?}", self.config.write_timeout),
                kind: ErrorKind::Timeout,
            }),
        }
    }

    async fn on_message(
        &mut self,
        msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Ended> {
        match msg {
            Some(Ok(Message::Text(text))) => {
                self.on_text(text.as_str()).await;
                None
            }
            Some(Ok(Message::Close(frame))) => Some(self.on_close(close_parts(frame.as_ref()))),
            Some(Ok(_)) => None,
            Some(Err(_)) | None if self.closing => Some(Ended::Closed),
            Some(Err(e)) => Some(Ended::Dropped { reason: format!("connection lost: {e}"), kind: ErrorKind::Network }),
            None => Some(Ended::Dropped {
                reason: "connection ended without a close frame".into(),
                kind: ErrorKind::Network,
            }),
        }
    }

    fn on_close(&self, (code, reason): (u16, String)) -> Ended {
        if self.closing {
            return Ended::Closed;
        }
        match code {
            // DATA-0000: Deepgram could not decode our audio; a new socket would get the same.
            1008 => Ended::Fatal(SttError::Closed { code, reason }),
            1011 => Ended::Dropped { reason: format!("closed by Deepgram (1011): {reason}"), kind: ErrorKind::Server },
            _ => Ended::Dropped { reason: format!("closed by Deepgram ({code}): {reason}"), kind: ErrorKind::Network },
        }
    }

    async fn on_text(&mut self, text: &str) {
        let event = match serde_json::from_str::<ServerMessage>(text) {
            Ok(ServerMessage::Results(r)) => SttEvent::Transcript(r.into_transcript(self.time_base)),
            Ok(ServerMessage::SpeechStarted { timestamp }) => {
                SttEvent::SpeechStarted { at_secs: self.time_base + timestamp }
            }
            Ok(ServerMessage::UtteranceEnd { last_word_end }) => {
                SttEvent::UtteranceEnd { last_word_end_secs: self.time_base + last_word_end }
            }
            Ok(ServerMessage::Error { description, variant }) => {
                SttEvent::Warning { message: format!("Deepgram error {}: {description}", variant.unwrap_or_default()) }
            }
            Ok(ServerMessage::Metadata { request_id }) => {
                tracing::debug!(?request_id, "Deepgram STT metadata");
                return;
            }
            Ok(ServerMessage::Other) => return,
            Err(e) => {
                SttEvent::Warning { message: format!("unreadable Deepgram message ({e}): {}", truncate(text, 200)) }
            }
        };
        self.emit(event).await;
    }

    /// Reconnects with back-off, buffering commands meanwhile. `None`: give up (reported) or closing.
    async fn reconnect(&mut self) -> Option<Ws> {
        let lost_before = SttStats::get(&self.stats().frames_lost);
        let mut backoff = Backoff::new(self.config.reconnect_initial_backoff, self.config.reconnect_max_backoff);
        loop {
            let attempts = backoff.attempt();
            let (url, config) = (self.url.clone(), self.config.clone());
            let connect = async move { deepgram_ws::connect(&url, &config.api_key, config.connect_timeout).await };
            match self.buffering(connect).await? {
                Ok(ws) => {
                    SttStats::add(&self.stats().reconnects, 1);
                    let lost_frames = SttStats::get(&self.stats().frames_lost) - lost_before;
                    let resent_frames = self.backlog.len();
                    tracing::info!(attempts, resent_frames, lost_frames, "Deepgram STT reconnected");
                    let downtime = backoff.elapsed();
                    self.emit(SttEvent::Reconnected { attempts, downtime, resent_frames, lost_frames }).await;
                    return Some(ws);
                }
                Err(e) if !e.is_retryable() => {
                    self.emit(SttEvent::Failed(e.into())).await;
                    return None;
                }
                Err(e) if backoff.elapsed() >= self.config.reconnect_give_up => {
                    let (elapsed, last) = (backoff.elapsed(), e.to_string());
                    self.emit(SttEvent::Failed(SttError::ReconnectExhausted { attempts, elapsed, last })).await;
                    return None;
                }
                Err(e) => tracing::debug!(attempts, error = %e, "Deepgram STT reconnect attempt failed"),
            }
            self.buffering(sleep(backoff.delay())).await?;
        }
    }

    /// Runs `fut` while keeping the command queue drained into the backlog. `None` when the
    /// stream is being closed (nothing left to reconnect for).
    async fn buffering<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Some(out),
                cmd = self.cmds.recv() => match cmd {
                    Some(SttCommand::Audio { seq, samples }) => self.buffer(seq, samples),
                    Some(SttCommand::Finalize) => self.finalize_pending = true,
                    Some(SttCommand::Close) | None => {
                        self.closing = true;
                        return None;
                    }
                },
            }
        }
    }

    fn buffer(&mut self, seq: u64, samples: Frame) {
        if self.backlog.len() >= self.backlog_cap {
            self.backlog.pop_front();
            SttStats::add(&self.stats().frames_lost, 1);
        }
        self.backlog.push_back((seq, samples));
    }
}

/// The server messages we read; anything else is ignored.
#[derive(Deserialize)]
#[serde(tag = "type")]
enum ServerMessage {
    Results(ResultsMessage),
    Metadata {
        #[serde(default)]
        request_id: Option<String>,
    },
    SpeechStarted {
        #[serde(default)]
        timestamp: f64,
    },
    UtteranceEnd {
        #[serde(default)]
        last_word_end: f64,
    },
    Error {
        #[serde(default)]
        description: String,
        #[serde(default)]
        variant: Option<String>,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct ResultsMessage {
    #[serde(default)]
    start: f64,
    #[serde(default)]
    duration: f64,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    #[serde(default)]
    from_finalize: bool,
    channel: ResultsChannel,
}

#[derive(Deserialize)]
struct ResultsChannel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
    #[serde(default)]
    confidence: f32,
}

impl ResultsMessage {
    fn into_transcript(self, time_base: f64) -> Transcript {
        let best = self.channel.alternatives.into_iter().next();
        let (text, confidence) = best.map(|a| (a.transcript, a.confidence)).unwrap_or_default();
        Transcript {
            text,
            is_final: self.is_final,
            speech_final: self.speech_final,
            from_finalize: self.from_finalize,
            start_secs: time_base + self.start,
            duration_secs: self.duration,
            confidence,
            received_at: Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_exactly_the_references() {
        let cfg = DeepgramSttConfig::new(Url::parse("https://api.deepgram.com").unwrap(), "k");
        let url = cfg.listen_url(&SttOptions::default()).unwrap();
        assert_eq!(
            url.as_str(),
            "wss://api.deepgram.com/v1/listen?model=nova-3&language=en&encoding=linear16&sample_rate=8000\
             &channels=1&multichannel=false&interim_results=true&punctuate=true&smart_format=false\
             &numerals=false&diarize=false&dictation=false&detect_entities=false"
        );
        let opts = SttOptions { model: Some("nova-2".into()), language: Some("en-US".into()) };
        let url = cfg.listen_url(&opts).unwrap();
        assert!(url.query().unwrap().starts_with("model=nova-2&language=en-US&"));
    }

    #[test]
    fn parses_results_and_tolerates_unknown_types() {
        let json = r#"{"type":"Results","channel_index":[0,1],"duration":1.2,"start":0.5,"is_final":true,
            "speech_final":false,"from_finalize":true,"channel":{"alternatives":[{"transcript":"hi there",
            "confidence":0.9,"words":[]}]},"metadata":{"request_id":"r"}}"#;
        let Ok(ServerMessage::Results(r)) = serde_json::from_str::<ServerMessage>(json) else { panic!("not Results") };
        let t = r.into_transcript(2.0);
        assert_eq!(t.text, "hi there");
        assert!(t.is_final && !t.speech_final && t.from_finalize);
        assert!((t.start_secs - 2.5).abs() < 1e-9);
        assert!(matches!(
            serde_json::from_str::<ServerMessage>(r#"{"type":"Brand-New","x":1}"#),
            Ok(ServerMessage::Other)
        ));
        assert!(matches!(
            serde_json::from_str::<ServerMessage>(r#"{"type":"Metadata","request_id":"a","sha256":"b"}"#),
            Ok(ServerMessage::Metadata { .. })
        ));
    }
}
