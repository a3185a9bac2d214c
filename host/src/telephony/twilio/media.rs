//! Twilio Media Streams messages (bidirectional `<Connect><Stream>`), both directions.
//!
//! Parsing goes through one flat, borrowing struct instead of a serde-tagged enum: tagged enums
//! buffer the whole message into an intermediate tree, which doubled the cost of the hot
//! `media` path in measurements. The flat struct is then turned into [`StreamEvent`], the typed
//! enum the rest of the host uses; no JSON values travel past this module.
//!
//! Twilio writes `sequenceNumber`, `chunk` and `timestamp` as JSON strings holding integers;
//! we accept strings and numbers alike and always write strings, as Twilio does.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a message from the wire was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("event {event:?} is missing field {field:?}")]
    MissingField { event: &'static str, field: &'static str },
    #[error("media payload is not valid base64: {0}")]
    Base64(String),
    #[error("media payload of {0} bytes exceeds the limit")]
    PayloadTooLarge(usize),
}

/// Audio format announced in `start.mediaFormat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    pub encoding: String,
    #[serde(deserialize_with = "lenient_u32")]
    pub sample_rate: u32,
    #[serde(deserialize_with = "lenient_u32")]
    pub channels: u32,
}

impl MediaFormat {
    /// The only format Twilio sends on a bidirectional stream.
    pub fn twilio_mulaw() -> Self {
        Self { encoding: "audio/x-mulaw".into(), sample_rate: 8000, channels: 1 }
    }

    pub fn is_mulaw_8k_mono(&self) -> bool {
        self.encoding == "audio/x-mulaw" && self.sample_rate == 8000 && self.channels == 1
    }
}

/// The `start` message's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartInfo {
    pub account_sid: String,
    pub stream_sid: String,
    pub call_sid: String,
    #[serde(default)]
    pub tracks: Vec<String>,
    #[serde(default)]
    pub custom_parameters: BTreeMap<String, String>,
    pub media_format: MediaFormat,
}

/// One caller audio chunk as received; the payload stays base64 until [`MediaChunk::decode_into`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaChunk<'a> {
    pub track: Cow<'a, str>,
    pub chunk: u64,
    /// Milliseconds since the stream started, by Twilio's clock.
    pub timestamp_ms: u64,
    pub payload_b64: Cow<'a, str>,
}

impl MediaChunk<'_> {
    /// Decodes the μ-law payload into `out` (cleared first). Payloads above `max_bytes` are refused
    /// before decoding so a hostile peer can't make us allocate.
    pub fn decode_into(&self, out: &mut Vec<u8>, max_bytes: usize) -> Result<(), ProtocolError> {
        let estimated = self.payload_b64.len() / 4 * 3;
        if estimated > max_bytes {
            return Err(ProtocolError::PayloadTooLarge(estimated));
        }
        out.clear();
        B64.decode_vec(self.payload_b64.as_bytes(), out).map_err(|e| ProtocolError::Base64(e.to_string()))
    }
}

/// A message Twilio sends us, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent<'a> {
    Connected {
        protocol: String,
        version: String,
    },
    Start {
        sequence_number: u64,
        start: StartInfo,
    },
    Media {
        sequence_number: u64,
        media: MediaChunk<'a>,
    },
    Dtmf {
        sequence_number: u64,
        digit: String,
    },
    /// Twilio echoes a mark of ours once the audio queued before it has played.
    Mark {
        sequence_number: u64,
        name: String,
    },
    Stop {
        sequence_number: u64,
    },
}

impl StreamEvent<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            StreamEvent::Connected { .. } => "connected",
            StreamEvent::Start { .. } => "start",
            StreamEvent::Media { .. } => "media",
            StreamEvent::Dtmf { .. } => "dtmf",
            StreamEvent::Mark { .. } => "mark",
            StreamEvent::Stop { .. } => "stop",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    sequence_number: Option<u64>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    start: Option<StartInfo>,
    #[serde(default, borrow)]
    media: Option<RawMedia<'a>>,
    #[serde(default)]
    dtmf: Option<RawDtmf>,
    #[serde(default)]
    mark: Option<RawMark>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(default, borrow)]
    track: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    chunk: Option<u64>,
    #[serde(default, deserialize_with = "lenient_opt_u64")]
    timestamp: Option<u64>,
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawDtmf {
    digit: String,
}

#[derive(Deserialize)]
struct RawMark {
    name: String,
}

/// Parses one text frame from Twilio.
pub fn parse_event(text: &str) -> Result<StreamEvent<'_>, ProtocolError> {
    let raw: RawEvent<'_> = serde_json::from_str(text).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let seq = raw.sequence_number.unwrap_or(0);
    let event = match raw.event.as_ref() {
        "connected" => StreamEvent::Connected {
            protocol: raw.protocol.unwrap_or_default(),
            version: raw.version.unwrap_or_default(),
        },
        "start" => StreamEvent::Start {
            sequence_number: seq,
            start: raw.start.ok_or(ProtocolError::MissingField { event: "start", field: "start" })?,
        },
        "media" => {
            let m = raw.media.ok_or(ProtocolError::MissingField { event: "media", field: "media" })?;
            StreamEvent::Media {
                sequence_number: seq,
                media: MediaChunk {
                    track: m.track.unwrap_or(Cow::Borrowed("inbound")),
                    chunk: m.chunk.unwrap_or(0),
                    timestamp_ms: m.timestamp.unwrap_or(0),
                    payload_b64: m.payload,
                },
            }
        }
        "dtmf" => StreamEvent::Dtmf {
            sequence_number: seq,
            digit: raw.dtmf.ok_or(ProtocolError::MissingField { event: "dtmf", field: "dtmf" })?.digit,
        },
        "mark" => StreamEvent::Mark {
            sequence_number: seq,
            name: raw.mark.ok_or(ProtocolError::MissingField { event: "mark", field: "mark" })?.name,
        },
        "stop" => StreamEvent::Stop { sequence_number: seq },
        other => return Err(ProtocolError::UnknownEvent(truncate(other, 64).to_string())),
    };
    Ok(event)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A message we send to Twilio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundMessage<'a> {
    /// μ-law audio, raw bytes (base64-encoded on the way out).
    Media(&'a [u8]),
    Mark(&'a str),
    Clear,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutMedia<'a> {
    event: &'static str,
    stream_sid: &'a str,
    media: OutPayload<'a>,
}

#[derive(Serialize)]
struct OutPayload<'a> {
    payload: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutMark<'a> {
    event: &'static str,
    stream_sid: &'a str,
    mark: OutName<'a>,
}

#[derive(Serialize, Deserialize)]
struct OutName<'a> {
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutClear<'a> {
    event: &'static str,
    stream_sid: &'a str,
}

/// Encodes outbound messages, reusing its buffers between calls.
#[derive(Debug, Default)]
pub struct OutboundEncoder {
    b64: String,
}

impl OutboundEncoder {
    pub fn encode(&mut self, stream_sid: &str, msg: &OutboundMessage<'_>) -> String {
        let json = match msg {
            OutboundMessage::Media(audio) => {
                self.b64.clear();
                B64.encode_string(audio, &mut self.b64);
                serde_json::to_string(&OutMedia {
                    event: "media",
                    stream_sid,
                    media: OutPayload { payload: &self.b64 },
                })
            }
            OutboundMessage::Mark(name) => {
                serde_json::to_string(&OutMark { event: "mark", stream_sid, mark: OutName { name } })
            }
            OutboundMessage::Clear => serde_json::to_string(&OutClear { event: "clear", stream_sid }),
        };
        // Serializing these plain structs of strings cannot fail.
        json.unwrap_or_default()
    }
}

/// What Twilio receives from us, parsed — used by the simulator and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotMessage {
    Media { stream_sid: String, audio: Vec<u8> },
    Mark { stream_sid: String, name: String },
    Clear { stream_sid: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBot {
    event: String,
    #[serde(default)]
    stream_sid: Option<String>,
    #[serde(default)]
    media: Option<RawBotMedia>,
    #[serde(default)]
    mark: Option<RawMark>,
}

#[derive(Deserialize)]
struct RawBotMedia {
    payload: String,
}

/// Parses a message a bot sends to Twilio, strictly: a missing `streamSid` is an error, as it is
/// for Twilio.
pub fn parse_bot_message(text: &str) -> Result<BotMessage, ProtocolError> {
    let raw: RawBot = serde_json::from_str(text).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let stream_sid =
        |event: &'static str| raw.stream_sid.clone().ok_or(ProtocolError::MissingField { event, field: "streamSid" });
    match raw.event.as_str() {
        "media" => {
            let sid = stream_sid("media")?;
            let m = raw.media.ok_or(ProtocolError::MissingField { event: "media", field: "media" })?;
            let audio = B64.decode(m.payload.as_bytes()).map_err(|e| ProtocolError::Base64(e.to_string()))?;
            Ok(BotMessage::Media { stream_sid: sid, audio })
        }
        "mark" => {
            let sid = stream_sid("mark")?;
            let m = raw.mark.ok_or(ProtocolError::MissingField { event: "mark", field: "mark" })?;
            Ok(BotMessage::Mark { stream_sid: sid, name: m.name })
        }
        "clear" => Ok(BotMessage::Clear { stream_sid: stream_sid("clear")? }),
        other => Err(ProtocolError::UnknownEvent(truncate(other, 64).to_string())),
    }
}

/// Builds the messages Twilio sends, exactly as Twilio writes them (numbers as strings). Used by
/// the simulator and the tests.
pub mod twilio_side {
    use super::*;
    use serde_json::json;

    pub fn connected() -> String {
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()
    }

    pub fn start(seq: u64, start: &StartInfo) -> String {
        json!({"event": "start", "sequenceNumber": seq.to_string(), "start": start, "streamSid": start.stream_sid})
            .to_string()
    }

    pub fn media(seq: u64, stream_sid: &str, chunk: u64, timestamp_ms: u64, mulaw: &[u8]) -> String {
        json!({
            "event": "media", "sequenceNumber": seq.to_string(), "streamSid": stream_sid,
            "media": {"track": "inbound", "chunk": chunk.to_string(), "timestamp": timestamp_ms.to_string(),
                      "payload": B64.encode(mulaw)}
        })
        .to_string()
    }

    pub fn dtmf(seq: u64, stream_sid: &str, digit: &str) -> String {
        json!({"event": "dtmf", "sequenceNumber": seq.to_string(), "streamSid": stream_sid,
               "dtmf": {"track": "inbound_track", "digit": digit}})
        .to_string()
    }

    pub fn mark(seq: u64, stream_sid: &str, name: &str) -> String {
        json!({"event": "mark", "sequenceNumber": seq.to_string(), "streamSid": stream_sid, "mark": {"name": name}})
            .to_string()
    }

    pub fn stop(seq: u64, stream_sid: &str, account_sid: &str, call_sid: &str) -> String {
        json!({"event": "stop", "sequenceNumber": seq.to_string(), "streamSid": stream_sid,
               "stop": {"accountSid": account_sid, "callSid": call_sid}})
        .to_string()
    }
}

fn lenient_u64_value(v: serde_json::Value) -> Result<Option<u64>, String> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => n.as_u64().map(Some).ok_or_else(|| format!("not a non-negative integer: {n}")),
        serde_json::Value::String(s) => s.trim().parse::<u64>().map(Some).map_err(|_| format!("not an integer: {s:?}")),
        other => Err(format!("expected an integer, got {other}")),
    }
}

fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    lenient_u64_value(v).map_err(serde::de::Error::custom)
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let n = lenient_u64_value(v).map_err(serde::de::Error::custom)?.ok_or_else(|| serde::de::Error::custom("null"))?;
    u32::try_from(n).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_info() -> StartInfo {
        StartInfo {
            account_sid: "AC123".into(),
            stream_sid: "MZ123".into(),
            call_sid: "CA123".into(),
            tracks: vec!["inbound".into()],
            custom_parameters: [("token".to_string(), "t".to_string())].into(),
            media_format: MediaFormat::twilio_mulaw(),
        }
    }

    #[test]
    fn parses_twilio_documented_messages() {
        let connected = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;
        assert_eq!(
            parse_event(connected).unwrap(),
            StreamEvent::Connected { protocol: "Call".into(), version: "1.0.0".into() }
        );
        let start = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC123","streamSid":"MZ123","callSid":"CA123","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{"token":"t"}},"streamSid":"MZ123"}"#;
        assert_eq!(parse_event(start).unwrap(), StreamEvent::Start { sequence_number: 1, start: start_info() });
        let media = r#"{"event":"media","sequenceNumber":"3","media":{"track":"inbound","chunk":"1","timestamp":"5","payload":"/w=="},"streamSid":"MZ123"}"#;
        let StreamEvent::Media { sequence_number, media } = parse_event(media).unwrap() else { panic!("not media") };
        assert_eq!((sequence_number, media.chunk, media.timestamp_ms), (3, 1, 5));
        let mut buf = Vec::new();
        media.decode_into(&mut buf, 1000).unwrap();
        assert_eq!(buf, vec![0xFF]);
        let dtmf =
            r#"{"event":"dtmf","streamSid":"MZ123","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"1"}}"#;
        assert_eq!(parse_event(dtmf).unwrap(), StreamEvent::Dtmf { sequence_number: 5, digit: "1".into() });
        let mark = r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ123","mark":{"name":"my label"}}"#;
        assert_eq!(parse_event(mark).unwrap(), StreamEvent::Mark { sequence_number: 4, name: "my label".into() });
        let stop = r#"{"event":"stop","sequenceNumber":"5","stop":{"accountSid":"AC123","callSid":"CA123"},"streamSid":"MZ123"}"#;
        assert_eq!(parse_event(stop).unwrap(), StreamEvent::Stop { sequence_number: 5 });
    }

    #[test]
    fn accepts_numbers_where_twilio_writes_strings() {
        let media = r#"{"event":"media","sequenceNumber":3,"media":{"track":"inbound","chunk":2,"timestamp":40,"payload":""},"streamSid":"MZ"}"#;
        let StreamEvent::Media { media, .. } = parse_event(media).unwrap() else { panic!("not media") };
        assert_eq!((media.chunk, media.timestamp_ms), (2, 40));
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        assert!(matches!(parse_event("not json"), Err(ProtocolError::Json(_))));
        assert!(matches!(parse_event(r#"{"event":"bogus"}"#), Err(ProtocolError::UnknownEvent(_))));
        assert!(matches!(parse_event(r#"{"event":"media"}"#), Err(ProtocolError::MissingField { .. })));
        assert!(matches!(
            parse_event(r#"{"event":"media","sequenceNumber":"x","media":{"payload":""}}"#),
            Err(ProtocolError::Json(_))
        ));
        let bad_b64 = r#"{"event":"media","media":{"payload":"!!!!"}}"#;
        let StreamEvent::Media { media, .. } = parse_event(bad_b64).unwrap() else { panic!("not media") };
        assert!(matches!(media.decode_into(&mut Vec::new(), 100), Err(ProtocolError::Base64(_))));
        let big = format!(r#"{{"event":"media","media":{{"payload":"{}"}}}}"#, "A".repeat(8000));
        let StreamEvent::Media { media, .. } = parse_event(&big).unwrap() else { panic!("not media") };
        assert!(matches!(media.decode_into(&mut Vec::new(), 1600), Err(ProtocolError::PayloadTooLarge(_))));
    }

    #[test]
    fn outbound_round_trips_through_the_twilio_side_parser() {
        let mut enc = OutboundEncoder::default();
        let audio = [0u8, 1, 2, 255];
        let m = enc.encode("MZ1", &OutboundMessage::Media(&audio));
        assert_eq!(
            parse_bot_message(&m).unwrap(),
            BotMessage::Media { stream_sid: "MZ1".into(), audio: audio.to_vec() }
        );
        let m = enc.encode("MZ1", &OutboundMessage::Mark("utt-1"));
        assert_eq!(parse_bot_message(&m).unwrap(), BotMessage::Mark { stream_sid: "MZ1".into(), name: "utt-1".into() });
        let m = enc.encode("MZ1", &OutboundMessage::Clear);
        assert_eq!(m, r#"{"event":"clear","streamSid":"MZ1"}"#);
        assert!(parse_bot_message(r#"{"event":"clear"}"#).is_err(), "streamSid is required");
    }

    #[test]
    fn twilio_side_messages_parse_back() {
        let s = start_info();
        assert_eq!(
            parse_event(&twilio_side::start(1, &s)).unwrap(),
            StreamEvent::Start { sequence_number: 1, start: s }
        );
        let text = twilio_side::media(2, "MZ", 7, 140, &[1, 2, 3]);
        let StreamEvent::Media { media, .. } = parse_event(&text).unwrap() else { panic!("not media") };
        let mut out = Vec::new();
        media.decode_into(&mut out, 100).unwrap();
        assert_eq!((media.chunk, media.timestamp_ms, out), (7, 140, vec![1, 2, 3]));
    }
}
