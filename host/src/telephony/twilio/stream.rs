//! The Media Streams transport: one task per call that owns the socket, checks the stream token,
//! decodes caller audio into 20 ms frames for the session, paces bot audio out, relays marks,
//! DTMF and `clear`, and carries out hang-up and transfer through the call's [`CallControl`].
//!
//! It works over any `Stream` of [`WsIn`] and `Sink` of [`WsOut`], so tests drive it with
//! channels and the server with an axum WebSocket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::media::{parse_event, MediaChunk, OutboundEncoder, OutboundMessage, ProtocolError, StartInfo, StreamEvent};
use super::playout::{Due, Playout};
use crate::audio::mulaw;
use crate::call::control::{CallControl, CallControls};
use crate::call::events::{unix_ms, CallEvent, CallEvents};
use crate::call::{CallInfo, CallInput, CallOutput, Direction, Outcome, SessionFactory, SessionIo, FRAME_SAMPLES};
use crate::logs::LogThrottle;
use crate::metrics::Metrics;
use crate::telephony::stream_token::{StreamTokens, TokenError};

/// Session input slots kept free of audio so control events always fit.
const CONTROL_RESERVE: usize = 64;
/// Twilio streams media continuously; this long without any message means the peer is gone.
const INBOUND_SILENCE_LIMIT: Duration = Duration::from_secs(10);
/// A socket write that takes longer than this means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Stream parameter names this host puts in its TwiML.
pub mod params {
    pub const FROM: &str = "from";
    pub const TO: &str = "to";
    pub const CALL_SID: &str = "call_sid";
    pub const DIRECTION: &str = "direction";
    pub const PERSONA: &str = "persona";
    /// The `direction` value of a browser playground stream (its own call control: no phone
    /// call behind it).
    pub const PLAYGROUND: &str = "playground";
    /// Prefix of dial-out custom parameters, so they can't collide with ours.
    pub const CUSTOM_PREFIX: &str = "p.";
}

/// A frame read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsIn {
    Text(String),
    Binary(usize),
    Close,
    /// Ping/pong and the like: nothing to do.
    Other,
}

/// A frame to write to the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsOut {
    Text(String),
    Close { code: u16, reason: String },
}

/// Bounds on what a peer may send.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Largest text frame accepted (Twilio's media messages are ~300 bytes).
    pub max_message_bytes: usize,
    /// Largest decoded media payload.
    pub max_payload_bytes: usize,
    /// How long a peer may take to send `start`.
    pub start_timeout: Duration,
    /// Malformed messages tolerated before the stream is closed.
    pub max_bad_messages: u32,
    /// How far bot audio may run ahead of real time.
    pub playout_lead: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_payload_bytes: 16 * 1024,
            start_timeout: Duration::from_secs(10),
            max_bad_messages: 500,
            playout_lead: Duration::from_millis(100),
        }
    }
}

/// What the transport needs from the server, shared by all calls.
pub struct StreamContext {
    /// `None` disables token checks (only with `--insecure-skip-signature`).
    pub tokens: Option<Arc<StreamTokens>>,
    /// What hang-up and transfer mean for each kind of call.
    pub controls: CallControls,
    pub sessions: Arc<dyn SessionFactory>,
    pub metrics: Arc<Metrics>,
    pub limits: StreamLimits,
    /// Where each call's start and end (and the session's events) are reported.
    pub events: Arc<CallEvents>,
    /// Bad messages are logged at most once a second per kind, across all streams.
    pub bad_message_log: LogThrottle,
}

/// Why a stream ended before a call started.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("socket closed before the stream started")]
    ClosedBeforeStart,
    #[error("no start message within {0:?}")]
    StartTimeout(Duration),
    #[error("stream refused: {0}")]
    Token(#[from] TokenError),
    #[error("unsupported media format {0}")]
    MediaFormat(String),
    #[error("too many malformed messages")]
    TooManyBadMessages,
}

/// Runs one media stream to its end.
pub async fn serve_stream<I, O>(
    mut incoming: I,
    mut outgoing: O,
    ctx: Arc<StreamContext>,
) -> Result<Outcome, StreamError>
where
    I: Stream<Item = WsIn> + Unpin,
    O: Sink<WsOut> + Unpin,
{
    let mut bad = 0u32;
    let start = match tokio::time::timeout(ctx.limits.start_timeout, wait_for_start(&mut incoming, &ctx, &mut bad))
        .await
    {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return Err(reject(&mut outgoing, &ctx, e).await),
        Err(_) => return Err(reject(&mut outgoing, &ctx, StreamError::StartTimeout(ctx.limits.start_timeout)).await),
    };
    if let Err(e) = admit(&start, &ctx) {
        return Err(reject(&mut outgoing, &ctx, e).await);
    }
    // The parameters are authenticated by the token, so a browser can't claim a phone call.
    let control = ctx.controls.for_direction(start.custom_parameters.get(params::DIRECTION).map(String::as_str));
    let mut info = call_info(start);
    control.complete_info(&mut info).await;
    let kind = control.label(&info);
    let span = tracing::info_span!("call", call_sid = %info.call_sid, stream_sid = %info.stream_sid, direction = kind);
    run_call(incoming, outgoing, ctx, info, bad, control).instrument(span).await
}

async fn wait_for_start<I>(incoming: &mut I, ctx: &StreamContext, bad: &mut u32) -> Result<StartInfo, StreamError>
where
    I: Stream<Item = WsIn> + Unpin,
{
    while let Some(frame) = incoming.next().await {
        let WsIn::Text(text) = frame else {
            if frame == WsIn::Close {
                return Err(StreamError::ClosedBeforeStart);
            }
            continue;
        };
        match check_size(&text, &ctx.limits).and_then(|()| parse_event(&text)) {
            Ok(StreamEvent::Start { start, .. }) => return Ok(start),
            Ok(StreamEvent::Connected { .. }) => {}
            Ok(StreamEvent::Stop { .. }) => return Err(StreamError::ClosedBeforeStart),
            Ok(other) => count_bad(ctx, bad, "before_start", &format!("{} before start", other.name()))?,
            Err(e) => count_bad(ctx, bad, error_kind(&e), &e.to_string())?,
        }
    }
    Err(StreamError::ClosedBeforeStart)
}

fn admit(start: &StartInfo, ctx: &StreamContext) -> Result<(), StreamError> {
    if !start.media_format.is_mulaw_8k_mono() {
        let f = &start.media_format;
        return Err(StreamError::MediaFormat(format!("{} {} Hz x{}", f.encoding, f.sample_rate, f.channels)));
    }
    if let Some(tokens) = &ctx.tokens {
        tokens.verify(&start.call_sid, &start.custom_parameters, SystemTime::now())?;
    }
    Ok(())
}

async fn reject<O: Sink<WsOut> + Unpin>(outgoing: &mut O, ctx: &StreamContext, err: StreamError) -> StreamError {
    let reason = match &err {
        StreamError::ClosedBeforeStart => "closed_before_start",
        StreamError::StartTimeout(_) => "start_timeout",
        StreamError::Token(_) => "token",
        StreamError::MediaFormat(_) => "media_format",
        StreamError::TooManyBadMessages => "bad_messages",
    };
    Metrics::inc(&ctx.metrics.streams_rejected, "reason", reason);
    warn!(error = %err, "media stream refused");
    // 1008: policy violation. Best effort: the peer may already be gone.
    let close = WsOut::Close { code: 1008, reason: err.to_string().chars().take(100).collect() };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, outgoing.send(close)).await;
    err
}

/// Builds the call's info from the (authenticated) stream parameters.
fn call_info(start: StartInfo) -> CallInfo {
    let p = &start.custom_parameters;
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    let direction = if get(params::DIRECTION) == "outbound" { Direction::Outbound } else { Direction::Inbound };
    let parameters: BTreeMap<String, String> = p
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(params::CUSTOM_PREFIX).map(|name| (name.to_string(), v.clone())))
        .collect();
    CallInfo {
        call_sid: start.call_sid.clone(),
        stream_sid: start.stream_sid.clone(),
        account_sid: start.account_sid.clone(),
        direction,
        from: get(params::FROM),
        to: get(params::TO),
        persona: p.get(params::PERSONA).filter(|s| !s.is_empty()).cloned(),
        parameters,
    }
}

/// Per-call transport state.
struct Transport {
    ctx: Arc<StreamContext>,
    stream_sid: String,
    started: Instant,
    playout: Playout,
    encoder: OutboundEncoder,
    to_session: mpsc::Sender<CallInput>,
    payload: Vec<u8>,
    pcm: Vec<i16>,
    frame: [i16; FRAME_SAMPLES],
    frame_fill: usize,
    frame_start_ms: u64,
    bad: u32,
    info: CallInfo,
    control: Arc<dyn CallControl>,
}

async fn run_call<I, O>(
    mut incoming: I,
    mut outgoing: O,
    ctx: Arc<StreamContext>,
    info: CallInfo,
    bad: u32,
    control: Arc<dyn CallControl>,
) -> Result<Outcome, StreamError>
where
    I: Stream<Item = WsIn> + Unpin,
    O: Sink<WsOut> + Unpin,
{
    info!(from = %info.from, to = %info.to, persona = ?info.persona, "call started");
    ctx.metrics.calls_active.inc();
    let (in_tx, in_rx) = mpsc::channel(256);
    let (out_tx, mut out_rx) = mpsc::channel(256);
    let events = ctx.events.open(&info.call_sid);
    events.started(&info, control.label(&info));
    let io = SessionIo { input: in_rx, output: out_tx, events: events.clone() };
    let session = tokio::spawn(ctx.sessions.start(info.clone(), io).in_current_span());
    let mut session = std::pin::pin!(session);
    let mut t = Transport {
        playout: Playout::new(ctx.limits.playout_lead),
        ctx: ctx.clone(),
        stream_sid: info.stream_sid.clone(),
        started: Instant::now(),
        encoder: OutboundEncoder::default(),
        to_session: in_tx,
        payload: Vec::with_capacity(512),
        pcm: Vec::with_capacity(512),
        frame: [0; FRAME_SAMPLES],
        frame_fill: 0,
        frame_start_ms: 0,
        bad,
        info: info.clone(),
        control: control.clone(),
    };
    let mut session_done = false;
    let mut last_inbound = Instant::now();
    let outcome = loop {
        let next_due = t.playout.next_due(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep_until((last_inbound + INBOUND_SILENCE_LIMIT).into()) => {
                warn!("no message from the peer for {INBOUND_SILENCE_LIMIT:?}: ending the call");
                break Outcome::Failed("peer went silent".into());
            }
            frame = incoming.next() => {
                last_inbound = Instant::now();
                match frame {
                None | Some(WsIn::Close) => break Outcome::CallerHungUp,
                Some(WsIn::Text(text)) => match t.on_text(&text) {
                    Ok(true) => break Outcome::CallerHungUp,
                    Ok(false) => {}
                    Err(e) => break Outcome::Failed(e.to_string()),
                },
                Some(WsIn::Binary(len)) => {
                    if t.count_bad("binary", &format!("unexpected binary frame of {len} bytes")).is_err() {
                        break Outcome::Failed(StreamError::TooManyBadMessages.to_string());
                    }
                }
                Some(WsIn::Other) => {}
                }
            }
            cmd = out_rx.recv(), if !session_done => match cmd {
                Some(CallOutput::Audio(audio)) => t.playout.push_audio(&audio),
                Some(CallOutput::Mark(name)) => t.playout.push_mark(name),
                Some(CallOutput::Clear) => {
                    let now = Instant::now();
                    if t.playout.clear(now) {
                        let _ = t.to_session.try_send(CallInput::Cleared { at_ms: t.ms_at(now) });
                        if t.send(&mut outgoing, OutboundMessage::Clear).await.is_err() {
                            break Outcome::CallerHungUp;
                        }
                    }
                }
                Some(CallOutput::HangUp { reason }) => {
                    t.hang_up(&reason).await;
                    break Outcome::BotHungUp(reason);
                }
                Some(CallOutput::Transfer { to }) => {
                    t.transfer(&to).await;
                    break Outcome::Transferred(to);
                }
                None => {
                    session_done = true;
                    t.playout.pad_partial();
                }
            },
            _ = sleep_until_opt(next_due) => {
                if t.send_due(&mut outgoing).await.is_err() {
                    break Outcome::CallerHungUp;
                }
            }
            res = &mut session, if !session_done => {
                session_done = true;
                t.playout.pad_partial();
                if let Err(e) = res {
                    warn!(error = %e, "session task failed");
                    break Outcome::Failed(format!("session failed: {e}"));
                }
            }
        }
        if session_done && !t.playout.is_active(Instant::now()) && out_rx.is_empty() {
            // The session ended on its own and everything it said has played: end the call.
            t.hang_up("session ended").await;
            break Outcome::BotHungUp("session ended".into());
        }
    };
    drop(t.to_session);
    // Stop reading the session's output so a session blocked sending to us sees the call end.
    drop(out_rx);
    if !session_done {
        // Give the session a moment to see its input close and finish its own clean-up.
        if tokio::time::timeout(Duration::from_secs(2), &mut session).await.is_err() {
            session.abort();
        }
    }
    // A browser learns how the call ended from the close reason; Twilio gets none.
    let reason = control.close_reason(&outcome);
    let _ = tokio::time::timeout(WRITE_TIMEOUT, outgoing.send(WsOut::Close { code: 1000, reason })).await;
    ctx.metrics.calls_active.dec();
    Metrics::inc(&ctx.metrics.calls_total, "outcome", outcome.label());
    events.emit(CallEvent::Ended {
        outcome: outcome.label().to_string(),
        detail: outcome.detail().map(str::to_string),
        ended_at_ms: unix_ms(SystemTime::now()),
    });
    info!(outcome = ?outcome, "call ended");
    Ok(outcome)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

impl Transport {
    fn ms_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_millis() as u64
    }

    /// Handles one text frame; `Ok(true)` means the stream stopped.
    fn on_text(&mut self, text: &str) -> Result<bool, StreamError> {
        let event = match check_size(text, &self.ctx.limits).and_then(|()| parse_event(text)) {
            Ok(ev) => ev,
            Err(e) => {
                self.count_bad(error_kind(&e), &e.to_string())?;
                return Ok(false);
            }
        };
        match event {
            StreamEvent::Media { media, .. } => self.on_media(&media)?,
            StreamEvent::Dtmf { digit, .. } => {
                if digit.len() == 1 && crate::call::ids::is_dtmf(&digit) {
                    debug!(digit = %digit, "dtmf");
                    self.forward(CallInput::Dtmf(digit));
                } else {
                    self.count_bad("dtmf", &format!("invalid DTMF digit {digit:?}"))?;
                }
            }
            StreamEvent::Mark { name, .. } => self.forward(CallInput::MarkPlayed(name)),
            StreamEvent::Stop { .. } => return Ok(true),
            StreamEvent::Connected { .. } | StreamEvent::Start { .. } => {
                self.count_bad("duplicate", "connected/start after the stream started")?;
            }
        }
        Ok(false)
    }

    fn on_media(&mut self, media: &MediaChunk<'_>) -> Result<(), StreamError> {
        if media.track != "inbound" && media.track != "inbound_track" {
            return Ok(()); // only the caller's track is ours to hear
        }
        if let Err(e) = media.decode_into(&mut self.payload, self.ctx.limits.max_payload_bytes) {
            return self.count_bad(error_kind(&e), &e.to_string());
        }
        self.pcm.clear();
        self.pcm.extend(self.payload.iter().map(|&code| mulaw::decode(code)));
        if self.frame_fill == 0 {
            self.frame_start_ms = media.timestamp_ms;
        }
        // Re-chunk into exact 20 ms frames whatever size Twilio's chunks are.
        let mut offset = 0;
        while offset < self.pcm.len() {
            let take = (FRAME_SAMPLES - self.frame_fill).min(self.pcm.len() - offset);
            self.frame[self.frame_fill..self.frame_fill + take].copy_from_slice(&self.pcm[offset..offset + take]);
            self.frame_fill += take;
            offset += take;
            if self.frame_fill == FRAME_SAMPLES {
                let input = CallInput::Audio { timestamp_ms: self.frame_start_ms, samples: self.frame };
                // Audio may be dropped when the session lags; the last slots stay free for marks,
                // DTMF and clears, which must never be lost.
                if self.to_session.capacity() <= CONTROL_RESERVE || self.to_session.try_send(input).is_err() {
                    self.ctx.metrics.caller_frames_dropped.inc();
                }
                self.frame_fill = 0;
                self.frame_start_ms = media.timestamp_ms + (offset as u64) / 8;
            }
        }
        Ok(())
    }

    fn forward(&self, input: CallInput) {
        if self.to_session.try_send(input).is_err() {
            warn!("session input full or closed; event dropped");
        }
    }

    fn count_bad(&mut self, kind: &'static str, detail: &str) -> Result<(), StreamError> {
        count_bad(&self.ctx, &mut self.bad, kind, detail)
    }

    async fn send<O: Sink<WsOut> + Unpin>(&mut self, out: &mut O, msg: OutboundMessage<'_>) -> Result<(), ()> {
        let text = self.encoder.encode(&self.stream_sid, &msg);
        match tokio::time::timeout(WRITE_TIMEOUT, out.send(WsOut::Text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(()),
        }
    }

    async fn send_due<O: Sink<WsOut> + Unpin>(&mut self, out: &mut O) -> Result<(), ()> {
        let now = Instant::now();
        while let Some(due) = self.playout.pop_due(now) {
            match due {
                Due::Frame { mulaw, plays_at } => {
                    self.send(out, OutboundMessage::Media(&mulaw)).await?;
                    let played = CallInput::BotAudioPlayed { playout_ms: self.ms_at(plays_at), mulaw };
                    if self.to_session.capacity() > CONTROL_RESERVE {
                        let _ = self.to_session.try_send(played);
                    }
                }
                Due::Mark(name) => self.send(out, OutboundMessage::Mark(&name)).await?,
            }
        }
        Ok(())
    }

    async fn hang_up(&self, reason: &str) {
        self.control.hang_up(&self.info, reason).await;
    }

    async fn transfer(&self, to: &str) {
        self.control.transfer(&self.info, to).await;
    }
}

fn check_size(text: &str, limits: &StreamLimits) -> Result<(), ProtocolError> {
    if text.len() > limits.max_message_bytes {
        return Err(ProtocolError::PayloadTooLarge(text.len()));
    }
    Ok(())
}

fn error_kind(e: &ProtocolError) -> &'static str {
    match e {
        ProtocolError::Json(_) => "json",
        ProtocolError::UnknownEvent(_) => "unknown_event",
        ProtocolError::MissingField { .. } => "missing_field",
        ProtocolError::Base64(_) => "base64",
        ProtocolError::PayloadTooLarge(_) => "oversized",
    }
}

fn count_bad(ctx: &StreamContext, bad: &mut u32, kind: &'static str, detail: &str) -> Result<(), StreamError> {
    Metrics::inc(&ctx.metrics.stream_messages_rejected, "kind", kind);
    *bad += 1;
    // A flood of bad messages must not flood the logs too.
    if let Some(suppressed) = ctx.bad_message_log.allow(kind) {
        warn!(kind, detail, count = *bad, suppressed, "bad media stream message");
    }
    if *bad > ctx.limits.max_bad_messages {
        return Err(StreamError::TooManyBadMessages);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
