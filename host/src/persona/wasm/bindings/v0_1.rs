//! Bindings for `switchboard:persona@0.1.0` and the conversions between its types and the
//! engine's. Values from a plugin are checked here: anything out of range falls back to the
//! host's default with a warning, never reaching the engine.
//!
//! A later `@0.2.0` gets its own module beside this one (see [`super`]).

use std::time::Duration;

use crate::audio::turn::TurnParams;
use crate::audio::vad::VadParams;
use crate::call::ids::{is_dtmf, is_e164};
use crate::call::{CallInfo, Direction, Outcome};
use crate::persona::{
    Action, CallSummary, Greeting, IdlePolicy, PersonaSetup, ToolOutcome, ToolSpec, TurnTaking, DEFAULT_LLM_MODEL,
    DEFAULT_VOICE,
};

wasmtime::component::bindgen!({
    world: "persona",
    path: "../wit",
    additional_derives: [PartialEq],
});

pub(crate) use switchboard::persona::{host as host_api, http as http_api, kv as kv_api, types as wit};

/// The idle timeout when a persona sets none (the reference bots' 5 s).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(5);
/// Longest text a plugin may have spoken in one action.
const MAX_SAY_CHARS: usize = 4000;

/// Collects what was wrong with a plugin's answer, for one log line.
#[derive(Debug, Default)]
pub(crate) struct Warnings(pub Vec<String>);

impl Warnings {
    fn push(&mut self, w: impl Into<String>) {
        self.0.push(w.into());
    }
}

pub(crate) fn call_info(info: &CallInfo) -> wit::CallInfo {
    wit::CallInfo {
        call_sid: info.call_sid.clone(),
        direction: match info.direction {
            Direction::Inbound => wit::Direction::Inbound,
            Direction::Outbound => wit::Direction::Outbound,
        },
        from: info.from.clone(),
        to: info.to.clone(),
        persona: info.persona.clone(),
        parameters: info.parameters.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

pub(crate) fn summary(s: &CallSummary) -> wit::CallSummary {
    wit::CallSummary {
        duration_ms: u64::try_from(s.duration.as_millis()).unwrap_or(u64::MAX),
        // 0.1 documents two values.
        outcome: if s.outcome == Outcome::CallerHungUp { "caller_hung_up" } else { "bot_ended" }.to_string(),
        transcript: s
            .transcript
            .iter()
            .map(|(role, text)| wit::TranscriptLine { role: role.clone(), text: text.clone() })
            .collect(),
    }
}

/// A plugin's setup as the engine's, with the host's defaults where it set none.
pub(crate) fn setup(s: wit::Setup, warn: &mut Warnings) -> PersonaSetup {
    let llm = s.llm;
    PersonaSetup {
        system_prompt: s.system_prompt,
        greeting: match s.greeting {
            wit::Greeting::None => Greeting::None,
            wit::Greeting::Say(t) => Greeting::Say(cap_text(t, warn)),
            wit::Greeting::Generate(t) => Greeting::Generate(t),
        },
        voice: non_empty(s.voice).unwrap_or_else(|| DEFAULT_VOICE.to_string()),
        llm_model: non_empty(llm.model).unwrap_or_else(|| DEFAULT_LLM_MODEL.to_string()),
        temperature: checked(llm.temperature, "temperature", |t| (0.0..=2.0).contains(t), warn),
        max_tokens: checked(llm.max_tokens, "max-tokens", |n| (1..=32_768).contains(n), warn),
        tools: tools(s.tools, warn),
        record: s.record_call,
        turn_taking: turn_taking(s.turn_taking, warn),
        idle: IdlePolicy {
            timeout: checked_ms(s.idle_timeout_ms, "idle-timeout-ms", 200..=600_000, warn).unwrap_or(DEFAULT_IDLE),
        },
    }
}

fn turn_taking(t: wit::TurnTaking, warn: &mut Warnings) -> TurnTaking {
    let d = TurnTaking::default();
    let secs = |v: Option<u32>, name: &str, range, default: f64, warn: &mut Warnings| {
        checked_ms(v, name, range, warn).map_or(default, |d| d.as_secs_f64())
    };
    let unit = |v: Option<f32>, name: &str, default: f64, warn: &mut Warnings| {
        checked(v, name, |x| (0.0..=1.0).contains(x), warn).map_or(default, f64::from)
    };
    TurnTaking {
        vad: VadParams {
            confidence: unit(t.vad_confidence, "vad-confidence", d.vad.confidence, warn),
            start_secs: secs(t.vad_start_ms, "vad-start-ms", 0..=2000, d.vad.start_secs, warn),
            stop_secs: secs(t.vad_stop_ms, "vad-stop-ms", 0..=5000, d.vad.stop_secs, warn),
            min_volume: unit(t.vad_min_volume, "vad-min-volume", d.vad.min_volume, warn),
        },
        turn: TurnParams {
            stop_secs: secs(t.turn_stop_ms, "turn-stop-ms", 0..=10_000, d.turn.stop_secs, warn),
            pre_speech_ms: checked(t.pre_speech_ms, "pre-speech-ms", |v| *v <= 2000, warn)
                .map_or(d.turn.pre_speech_ms, f64::from),
            max_duration_secs: secs(t.max_turn_ms, "max-turn-ms", 1000..=8000, d.turn.max_duration_secs, warn),
        },
        user_turn_stop_timeout: checked_ms(
            t.user_turn_stop_timeout_ms,
            "user-turn-stop-timeout-ms",
            200..=30_000,
            warn,
        )
        .unwrap_or(d.user_turn_stop_timeout),
        denoise: t.denoise.unwrap_or(d.denoise),
        speculative_replies: d.speculative_replies,
        // Persona API 0.1 has no end-of-turn fields: the measured defaults.
        endpoint: d.endpoint,
    }
}

fn tools(list: Vec<wit::Tool>, warn: &mut Warnings) -> Vec<ToolSpec> {
    let mut out: Vec<ToolSpec> = Vec::with_capacity(list.len());
    for t in list {
        let valid_name = !t.name.is_empty()
            && t.name.len() <= 64
            && t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name || out.iter().any(|o| o.name == t.name) {
            warn.push(format!("tool {:?} dropped: names must be unique [a-zA-Z0-9_-]{{1,64}}", t.name));
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(&t.parameters_schema) {
            Ok(schema) if schema.is_object() => {
                out.push(ToolSpec { name: t.name, description: t.description, parameters: schema })
            }
            _ => warn.push(format!("tool {:?} dropped: parameters-schema is not a JSON object", t.name)),
        }
    }
    out
}

/// A plugin's action, or `None` (with a warning) when it is malformed.
pub(crate) fn action(a: wit::Action, warn: &mut Warnings) -> Action {
    match a {
        wit::Action::None => Action::None,
        wit::Action::Say(t) => Action::Say(cap_text(t, warn)),
        wit::Action::Prompt(t) => Action::Prompt(t),
        wit::Action::Transfer(to) if is_e164(&to) => Action::Transfer(to),
        wit::Action::Transfer(to) => {
            warn.push(format!("transfer to {to:?} ignored: not an E.164 number"));
            Action::None
        }
        wit::Action::SendDtmf(d) if is_dtmf(&d) => Action::SendDtmf(d),
        wit::Action::SendDtmf(d) => {
            warn.push(format!("send-dtmf {d:?} ignored: 1-64 of 0-9 * # A-D"));
            Action::None
        }
        wit::Action::HangUp(goodbye) => Action::HangUp(goodbye.map(|t| cap_text(t, warn))),
    }
}

pub(crate) fn tool_result(r: Result<wit::ToolResult, String>, warn: &mut Warnings) -> Result<ToolOutcome, String> {
    r.map(|r| ToolOutcome { content: r.content, then: action(r.then, warn) })
}

fn cap_text(mut t: String, warn: &mut Warnings) -> String {
    if t.chars().count() > MAX_SAY_CHARS {
        warn.push(format!("spoken text cut to {MAX_SAY_CHARS} characters"));
        t = t.chars().take(MAX_SAY_CHARS).collect();
    }
    t
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn checked<T: std::fmt::Debug>(v: Option<T>, name: &str, ok: impl Fn(&T) -> bool, warn: &mut Warnings) -> Option<T> {
    match v {
        Some(x) if ok(&x) => Some(x),
        Some(x) => {
            warn.push(format!("{name} {x:?} out of range; using the default"));
            None
        }
        None => None,
    }
}

fn checked_ms(
    v: Option<u32>,
    name: &str,
    range: std::ops::RangeInclusive<u32>,
    warn: &mut Warnings,
) -> Option<Duration> {
    checked(v, name, |x| range.contains(x), warn).map(|ms| Duration::from_millis(u64::from(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit_setup() -> wit::Setup {
        wit::Setup {
            system_prompt: "p".into(),
            greeting: wit::Greeting::Say("hi".into()),
            voice: None,
            llm: wit::LlmSettings { model: None, temperature: Some(5.0), max_tokens: Some(100) },
            turn_taking: wit::TurnTaking {
                vad_confidence: Some(0.5),
                vad_start_ms: None,
                vad_stop_ms: Some(300),
                vad_min_volume: Some(3.0),
                turn_stop_ms: None,
                pre_speech_ms: None,
                max_turn_ms: None,
                user_turn_stop_timeout_ms: None,
                denoise: Some(false),
            },
            idle_timeout_ms: Some(50),
            record_call: false,
            tools: vec![
                wit::Tool {
                    name: "ok".into(),
                    description: "d".into(),
                    parameters_schema: "{\"type\":\"object\"}".into(),
                },
                wit::Tool { name: "bad name".into(), description: "d".into(), parameters_schema: "{}".into() },
                wit::Tool { name: "bad_schema".into(), description: "d".into(), parameters_schema: "[1]".into() },
                wit::Tool { name: "ok".into(), description: "dup".into(), parameters_schema: "{}".into() },
            ],
        }
    }

    #[test]
    fn setup_keeps_valid_values_and_defaults_the_rest() {
        let mut w = Warnings::default();
        let s = setup(wit_setup(), &mut w);
        assert_eq!(s.voice, DEFAULT_VOICE);
        assert_eq!(s.llm_model, DEFAULT_LLM_MODEL);
        assert_eq!(s.temperature, None, "5.0 is out of range");
        assert_eq!(s.max_tokens, Some(100));
        assert_eq!(s.turn_taking.vad.confidence, 0.5);
        assert_eq!(s.turn_taking.vad.stop_secs, 0.3);
        assert_eq!(s.turn_taking.vad.min_volume, VadParams::default().min_volume);
        assert!(!s.turn_taking.denoise);
        assert_eq!(s.idle.timeout, DEFAULT_IDLE, "50 ms is below the minimum");
        assert!(!s.record);
        assert_eq!(s.tools.len(), 1);
        assert_eq!(s.tools[0].name, "ok");
        assert_eq!(w.0.len(), 6, "{:?}", w.0);
    }

    #[test]
    fn malformed_actions_become_none() {
        let mut w = Warnings::default();
        assert_eq!(action(wit::Action::Transfer("12345".into()), &mut w), Action::None);
        assert_eq!(
            action(wit::Action::Transfer("+15550001111".into()), &mut w),
            Action::Transfer("+15550001111".into())
        );
        assert_eq!(action(wit::Action::SendDtmf("12x".into()), &mut w), Action::None);
        assert_eq!(action(wit::Action::SendDtmf("1#".into()), &mut w), Action::SendDtmf("1#".into()));
        let long = "a".repeat(MAX_SAY_CHARS + 10);
        assert_eq!(action(wit::Action::Say(long), &mut w), Action::Say("a".repeat(MAX_SAY_CHARS)));
        assert_eq!(w.0.len(), 3);
    }
}
