//! Twilio's WebSocket half: `connected`, `start`, caller `media` every 20 ms by absolute deadlines,
//! `dtmf` at planned times, bot audio through the playout buffer with `mark` echoes, and `stop`.
//!
//! Timing: `t0` is when `start` was sent. Tick `n` (at `t0 + n × 20 ms`) sends caller frame `n − 1`
//! (the 20 ms that ended at that moment, `chunk` `n`, `timestamp` `(n − 1) × 20`) and starts playing
//! the bot frame heard during `[n × 20, n × 20 + 20)`. A late tick is caught up at once rather than
//! shifting every later frame, so call time stays true under load; lateness is reported.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::caller::{CallerAudio, FRAME_MS, FRAME_SAMPLES};
use super::playout::{CallerPlayout, MULAW_SILENCE};
use super::recorder::Recorder;
use super::report::{round1, CallEnd, CallReport};
use super::DtmfEvent;
use crate::telephony::twilio::media::{parse_bot_message, twilio_side, BotMessage, MediaFormat, StartInfo};

/// Largest message accepted from the bot.
const MAX_BOT_MESSAGE: usize = 1 << 20;
/// A bot `media` arriving more than this after the previous one starts a new talk spurt.
const SPURT_GAP: Duration = Duration::from_millis(200);
/// A tick later than this counts as late.
const LATE_TICK: Duration = Duration::from_millis(10);
/// How long to wait for the server to finish the closing handshake after `stop`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// A send blocked this long means the server stopped reading: the call is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bot talk-spurt start times kept per call.
const MAX_SPURTS_KEPT: usize = 100_000;
/// Spacing of the digits of one DTMF entry.
pub const DTMF_DIGIT_SPACING_MS: u64 = 200;
/// Bot messages quoted in error messages up to this many characters.
const QUOTE: usize = 120;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the stream half needs.
pub(crate) struct StreamPlan<'a> {
    pub ws_url: Url,
    pub account_sid: &'a str,
    pub call_sid: &'a str,
    pub stream_sid: String,
    pub parameters: Vec<(String, String)>,
    pub caller: &'a CallerAudio,
    pub hangup_after_ms: u64,
    pub dtmf: &'a [DtmfEvent],
    pub record: Option<&'a Path>,
    pub connect_timeout: Duration,
    pub max_playout_bytes: usize,
    pub end_signal: Option<CancellationToken>,
    /// Keep sending (silent) media after the caller's audio ends, as Twilio does.
    pub media_after_audio: bool,
}

enum End {
    Hangup,
    Ended,
    ServerClosed,
}

/// Runs the stream to its end, filling `report`. Never panics on anything the server does.
pub(crate) async fn run(plan: StreamPlan<'_>, report: &mut CallReport) {
    report.stream_url = Some(plan.ws_url.to_string());
    report.stream_sid = Some(plan.stream_sid.clone());
    report.custom_parameters = plan.parameters.clone();
    let ws = match connect(&plan.ws_url, plan.connect_timeout).await {
        Ok(ws) => ws,
        Err(e) => {
            report.outcome = CallEnd::Failed;
            report.note_error(e);
            return;
        }
    };
    let recorder = match plan.record.map(Recorder::create).transpose() {
        Ok(r) => r,
        Err(e) => {
            report.note_error(e);
            None
        }
    };
    let mut session = Session::new(&plan, ws, recorder, report);
    let end = session.run(&plan).await;
    session.finish(end).await;
}

async fn connect(url: &Url, limit: Duration) -> Result<Ws, String> {
    let config =
        WebSocketConfig::default().max_message_size(Some(MAX_BOT_MESSAGE)).max_frame_size(Some(MAX_BOT_MESSAGE));
    let attempt = tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
    match tokio::time::timeout(limit, attempt).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("WebSocket connect to {url} failed: {e}")),
        Err(_) => Err(format!("WebSocket connect to {url} timed out after {limit:?}")),
    }
}

struct Session<'r> {
    ws: Ws,
    report: &'r mut CallReport,
    account_sid: String,
    stream_sid: String,
    seq: u64,
    t0: Instant,
    playout: CallerPlayout,
    recorder: Option<Recorder>,
    echo: Vec<String>,
    played: [u8; FRAME_SAMPLES],
    /// The frame played during the previous tick, written to the recording one tick later.
    heard: [u8; FRAME_SAMPLES],
    last_media: Option<Instant>,
    spurt_break: bool,
    next_dtmf: usize,
    dtmf_schedule: Vec<(u64, String)>,
    media_after_audio: bool,
    closed: bool,
}

impl<'r> Session<'r> {
    fn new(plan: &StreamPlan<'_>, ws: Ws, recorder: Option<Recorder>, report: &'r mut CallReport) -> Self {
        let dtmf_schedule = dtmf_schedule(plan.dtmf);
        Self {
            ws,
            report,
            account_sid: plan.account_sid.to_string(),
            stream_sid: plan.stream_sid.clone(),
            seq: 0,
            t0: Instant::now(),
            playout: CallerPlayout::new(plan.max_playout_bytes),
            recorder,
            echo: Vec::with_capacity(8),
            played: [MULAW_SILENCE; FRAME_SAMPLES],
            heard: [MULAW_SILENCE; FRAME_SAMPLES],
            last_media: None,
            spurt_break: true,
            next_dtmf: 0,
            dtmf_schedule,
            media_after_audio: plan.media_after_audio,
            closed: false,
        }
    }

    fn call_ms(&self, at: Instant) -> f64 {
        round1(at.saturating_duration_since(self.t0).as_secs_f64() * 1000.0)
    }

    async fn run(&mut self, plan: &StreamPlan<'_>) -> End {
        let start = StartInfo {
            account_sid: plan.account_sid.to_string(),
            stream_sid: self.stream_sid.clone(),
            call_sid: plan.call_sid.to_string(),
            tracks: vec!["inbound".into()],
            custom_parameters: plan.parameters.iter().cloned().collect(),
            media_format: MediaFormat::twilio_mulaw(),
        };
        if !self.send(twilio_side::connected()).await {
            return End::ServerClosed;
        }
        self.seq = 1;
        if !self.send(twilio_side::start(1, &start)).await {
            return End::ServerClosed;
        }
        self.t0 = Instant::now();
        let total_ticks = plan.hangup_after_ms.div_ceil(FRAME_MS);
        let end_signal = plan.end_signal.clone();
        let ended = async move {
            match end_signal {
                Some(t) => t.cancelled_owned().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(ended);
        let mut n: u64 = 1;
        while n <= total_ticks {
            let deadline = self.t0 + tick_offset(n);
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    while n <= total_ticks && self.t0 + tick_offset(n) <= now {
                        self.note_lag(now.saturating_duration_since(self.t0 + tick_offset(n)));
                        if !self.tick(n, plan.caller).await {
                            return End::ServerClosed;
                        }
                        n += 1;
                    }
                }
                msg = self.ws.next() => {
                    if !self.on_message(msg).await {
                        return End::ServerClosed;
                    }
                }
                () = &mut ended => return End::Ended,
            }
        }
        End::Hangup
    }

    fn note_lag(&mut self, lag: Duration) {
        let ms = lag.as_secs_f64() * 1000.0;
        if ms > self.report.max_tick_lag_ms {
            self.report.max_tick_lag_ms = round1(ms);
        }
        if lag > LATE_TICK {
            self.report.late_ticks += 1;
        }
    }

    /// One 20 ms step; false once the socket is gone.
    async fn tick(&mut self, n: u64, caller: &CallerAudio) -> bool {
        let now_ms = n * FRAME_MS;
        while let Some((at, digit)) = self.dtmf_schedule.get(self.next_dtmf) {
            if *at >= now_ms {
                break;
            }
            self.seq += 1;
            let msg = twilio_side::dtmf(self.seq, &self.stream_sid, digit);
            self.next_dtmf += 1;
            self.report.dtmf_sent += 1;
            if !self.send(msg).await {
                return false;
            }
        }
        let frame = n - 1;
        if self.media_after_audio || frame < caller.frames() {
            self.seq += 1;
            let msg = media_message(self.seq, &self.stream_sid, n, frame * FRAME_MS, caller.payload(frame));
            if !self.send(msg).await {
                return false;
            }
            self.report.media_frames_sent += 1;
        }
        let played = self.playout.tick(n, &mut self.played, &mut self.echo);
        self.report.bot_audio_played_ms += (played.audio_bytes as u64 * 1000).div_ceil(8000);
        if !self.send_echoes(false).await {
            return false;
        }
        self.record(caller.pcm_frame(frame));
        self.heard = self.played;
        true
    }

    fn record(&mut self, caller_pcm: &[i16]) {
        let Some(rec) = self.recorder.as_mut() else { return };
        if let Err(e) = rec.write_frame(caller_pcm, &self.heard) {
            self.recorder = None;
            self.report.note_error(e);
        }
    }

    /// Handles one item from the socket; false when the server is gone.
    async fn on_message(&mut self, msg: Option<Result<Message, tungstenite::Error>>) -> bool {
        match msg {
            Some(Ok(Message::Text(text))) => {
                self.on_bot_text(text.as_str()).await;
                !self.closed
            }
            Some(Ok(Message::Binary(b))) => {
                self.report.note_error(format!("binary frame of {} bytes (Twilio expects JSON text)", b.len()));
                true
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => true,
            Some(Ok(Message::Close(_))) | None => false,
            Some(Err(e)) => {
                self.report.note_error(format!("WebSocket error: {e}"));
                false
            }
        }
    }

    async fn on_bot_text(&mut self, text: &str) {
        let now = Instant::now();
        let msg = match parse_bot_message(text) {
            Ok(m) => m,
            Err(e) => {
                self.report.note_error(format!("malformed bot message ({e}): {}", quote(text)));
                return;
            }
        };
        let sid = match &msg {
            BotMessage::Media { stream_sid, .. }
            | BotMessage::Mark { stream_sid, .. }
            | BotMessage::Clear { stream_sid } => stream_sid,
        };
        if *sid != self.stream_sid {
            self.report.note_error(format!("bot message for unknown streamSid {}", quote(sid)));
            return;
        }
        match msg {
            BotMessage::Media { audio, .. } => self.on_bot_audio(&audio, now),
            BotMessage::Mark { name, .. } => {
                let at = self.call_ms(now);
                self.report.note_mark(&name, at);
                self.spurt_break = true;
                if let Err(e) = self.playout.push_mark(name, &mut self.echo) {
                    self.report.note_error(e.to_string());
                }
                self.send_echoes(false).await;
            }
            BotMessage::Clear { .. } => {
                self.report.clears += 1;
                self.spurt_break = true;
                self.playout.clear(&mut self.echo);
                self.send_echoes(true).await;
            }
        }
    }

    fn on_bot_audio(&mut self, audio: &[u8], now: Instant) {
        if audio.is_empty() {
            return;
        }
        let at = self.call_ms(now);
        self.report.first_audio_ms.get_or_insert(at);
        self.report.bot_audio_bytes += audio.len() as u64;
        let new_spurt =
            self.spurt_break || self.last_media.is_none_or(|last| now.saturating_duration_since(last) > SPURT_GAP);
        if new_spurt && self.report.bot_spurts_ms.len() < MAX_SPURTS_KEPT {
            self.report.bot_spurts_ms.push(at);
        }
        self.spurt_break = false;
        self.last_media = Some(now);
        if let Err(e) = self.playout.push_audio(audio) {
            self.report.note_error(e.to_string());
        }
    }

    /// Sends the marks the playout has released; false once the socket is gone.
    async fn send_echoes(&mut self, cleared: bool) -> bool {
        if self.echo.is_empty() {
            return true;
        }
        let names = std::mem::take(&mut self.echo);
        let mut ok = true;
        for name in &names {
            self.seq += 1;
            let msg = twilio_side::mark(self.seq, &self.stream_sid, name);
            if !self.send(msg).await {
                ok = false;
                break;
            }
            let at = self.call_ms(Instant::now());
            self.report.note_echo(name, at, cleared);
        }
        // Hand the (now empty) buffer back so its capacity is reused.
        self.echo = names;
        self.echo.clear();
        ok
    }

    async fn send(&mut self, text: String) -> bool {
        if self.closed {
            return false;
        }
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(Message::Text(text.into()))).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if !matches!(e, tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) {
                    self.report.note_error(format!("sending to the server failed: {e}"));
                }
                self.closed = true;
                false
            }
            Err(_) => {
                self.report.note_error(format!("the server stopped reading: a send blocked for {SEND_TIMEOUT:?}"));
                self.closed = true;
                false
            }
        }
    }

    async fn finish(mut self, end: End) {
        self.report.underruns = self.playout.underruns();
        self.report.underrun_ms = self.playout.underrun_ms();
        self.report.outcome = match end {
            End::Hangup => CallEnd::Completed,
            End::Ended => CallEnd::EndedByApi,
            End::ServerClosed => CallEnd::ServerClosed,
        };
        if !matches!(end, End::ServerClosed) {
            self.seq += 1;
            let stop = twilio_side::stop(self.seq, &self.stream_sid, &self.account_sid, &self.report.call_sid);
            if self.send(stop).await {
                self.close_gracefully().await;
            }
        }
        if let Some(rec) = self.recorder.take() {
            match rec.finish() {
                Ok(path) => self.report.recording = Some(path),
                Err(e) => self.report.note_error(e),
            }
        }
    }

    /// Sends a close frame and waits (bounded) for the server's; messages after `stop` are dropped.
    async fn close_gracefully(&mut self) {
        let close = async {
            if self.ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, close).await;
    }
}

fn tick_offset(n: u64) -> Duration {
    Duration::from_millis(n * FRAME_MS)
}

/// Each digit of each entry at its own time, in order.
fn dtmf_schedule(events: &[DtmfEvent]) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = events
        .iter()
        .flat_map(|e| {
            (0u64..).zip(e.digits.chars()).map(move |(i, d)| (e.at_ms + i * DTMF_DIGIT_SPACING_MS, d.to_string()))
        })
        .collect();
    out.sort_by_key(|(at, _)| *at);
    out
}

/// A caller `media` message exactly as [`twilio_side::media`] writes it, from a payload that is
/// already base64: one allocation per frame instead of a JSON tree.
pub(crate) fn media_message(seq: u64, stream_sid: &str, chunk: u64, timestamp_ms: u64, payload_b64: &str) -> String {
    let mut out = String::with_capacity(payload_b64.len() + stream_sid.len() + 140);
    // Stream sids we mint are plain ASCII letters and digits: nothing to escape. `write!` into a
    // String cannot fail.
    let _ = write!(
        out,
        r#"{{"event":"media","sequenceNumber":"{seq}","streamSid":"{stream_sid}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{timestamp_ms}","payload":"{payload_b64}"}}}}"#
    );
    out
}

fn quote(s: &str) -> String {
    let mut q: String = s.chars().take(QUOTE).collect();
    if s.chars().nth(QUOTE).is_some() {
        q.push('…');
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telephony::twilio::media::parse_event;

    #[test]
    fn media_message_matches_twilio_side_builder() {
        use base64::Engine as _;
        let audio = [0x7Fu8, 0x00, 0xFF, 0x12];
        let b64 = base64::engine::general_purpose::STANDARD.encode(audio);
        let ours = media_message(7, "MZabc", 3, 40, &b64);
        let theirs = twilio_side::media(7, "MZabc", 3, 40, &audio);
        let a: serde_json::Value = serde_json::from_str(&ours).unwrap();
        let b: serde_json::Value = serde_json::from_str(&theirs).unwrap();
        assert_eq!(a, b);
        assert_eq!(parse_event(&ours).unwrap(), parse_event(&theirs).unwrap());
    }

    #[test]
    fn dtmf_digits_are_spaced_and_ordered() {
        let events = [DtmfEvent { at_ms: 1000, digits: "12".into() }, DtmfEvent { at_ms: 100, digits: "#".into() }];
        let s = dtmf_schedule(&events);
        assert_eq!(s, vec![(100, "#".into()), (1000, "1".into()), (1200, "2".into())]);
    }
}
