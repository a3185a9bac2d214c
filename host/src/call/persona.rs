//! What a bot *is*: everything a persona decides, behind one trait, so the built-in default and
//! WebAssembly plugins slot into the same engine.
//!
//! Hooks return futures because plugin hooks run off the call's task (a plugin may take up to its
//! CPU deadline); the engine never awaits a hook on the audio path.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::audio::turn::TurnParams;
use crate::audio::vad::VadParams;

use super::{CallInfo, Direction};

/// A boxed hook future.
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The default voice (Deepgram Aura 2).
pub const DEFAULT_VOICE: &str = "aura-2-theia-en";
/// The default LLM (Groq).
pub const DEFAULT_LLM_MODEL: &str = "llama-3.3-70b-versatile";

/// How the bot opens the call.
#[derive(Debug, Clone, PartialEq)]
pub enum Greeting {
    /// The bot waits for the caller.
    None,
    /// Speak this text as is.
    Say(String),
    /// Ask the LLM to open the call with this instruction (as the reference does).
    Generate(String),
}

/// A function the LLM may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// When the caller goes quiet.
#[derive(Debug, Clone, PartialEq)]
pub struct IdlePolicy {
    /// Silence after the caller heard the end of the bot's speech before the idle hook runs.
    pub timeout: Duration,
}

/// Turn-taking values, all overridable by the persona.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnTaking {
    pub vad: VadParams,
    pub turn: TurnParams,
    /// A user turn left open this long with VAD quiet and no transcript is force-ended.
    pub user_turn_stop_timeout: Duration,
    /// RNNoise on caller audio.
    pub denoise: bool,
    /// Start the reply while the VAD stop window runs and hold its audio until the turn is
    /// confirmed: hides up to a stop window of LLM + TTS latency, at the cost of an LLM request
    /// thrown away when the caller goes on talking.
    pub speculative_replies: bool,
}

impl Default for TurnTaking {
    fn default() -> Self {
        Self {
            vad: VadParams::default(),
            turn: TurnParams::default(),
            user_turn_stop_timeout: Duration::from_secs(2),
            denoise: true,
            speculative_replies: true,
        }
    }
}

/// Everything the engine needs to run a call, decided once at call start.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonaSetup {
    pub system_prompt: String,
    pub greeting: Greeting,
    pub voice: String,
    pub llm_model: String,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub tools: Vec<ToolSpec>,
    pub record: bool,
    pub turn_taking: TurnTaking,
    pub idle: IdlePolicy,
}

/// Something a persona asks the engine to do instead of (or after) the LLM.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing special: let the LLM answer.
    None,
    /// Speak this text as is.
    Say(String),
    /// Run the LLM with this instruction added to the context (as a system message).
    Prompt(String),
    /// Hand the call to this number.
    Transfer(String),
    /// Play these DTMF digits into the call.
    SendDtmf(String),
    /// End the call, after speaking the goodbye if one is given.
    HangUp(Option<String>),
}

/// The result of a tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    /// Given to the LLM as the tool's result (usually JSON).
    pub content: String,
    /// Done after the result is recorded.
    pub then: Action,
}

/// What the persona hears when the call ends.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSummary {
    pub duration: Duration,
    pub outcome: String,
    /// `(role, text)` in order.
    pub transcript: Vec<(String, String)>,
}

/// The name the built-in persona goes by (in the call history and the playground).
pub const BUILTIN_NAME: &str = "built-in";

/// Which persona serves a call, for the call history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonaIdentity {
    pub name: String,
    /// The plugin's content hash; `None` for the built-in persona.
    pub version: Option<String>,
}

impl PersonaIdentity {
    pub fn builtin() -> Self {
        Self { name: BUILTIN_NAME.into(), version: None }
    }
}

/// One persona instance serves one call.
pub trait Persona: Send {
    /// Its name and version, once `setup` ran.
    fn identity(&self) -> PersonaIdentity {
        PersonaIdentity::builtin()
    }
    fn setup<'a>(&'a mut self, call: &'a CallInfo) -> HookFuture<'a, PersonaSetup>;
    /// A finished user turn; `Action::None` lets the LLM answer.
    fn on_user_turn<'a>(&'a mut self, transcript: &'a str) -> HookFuture<'a, Action>;
    /// The caller stayed quiet; `attempt` counts from 1 and resets when the caller speaks.
    fn on_idle(&mut self, attempt: u32) -> HookFuture<'_, Action>;
    fn on_tool_call<'a>(&'a mut self, name: &'a str, arguments: &'a str)
        -> HookFuture<'a, Result<ToolOutcome, String>>;
    /// Keys the caller pressed; `Action::None` adds them to the context as user text.
    fn on_dtmf<'a>(&'a mut self, digits: &'a str) -> HookFuture<'a, Action>;
    fn on_call_end<'a>(&'a mut self, summary: &'a CallSummary) -> HookFuture<'a, ()>;
}

/// Chooses the persona for each call.
pub trait PersonaProvider: Send + Sync {
    fn persona_for(&self, call: &CallInfo) -> Box<dyn Persona>;
    /// Names of the personas a call can ask for by name (the built-in one is always available
    /// and not listed).
    fn names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The reference bots' behaviour (Pipecat's Twilio inbound and outbound examples), built in.
#[derive(Debug, Clone, Default)]
pub struct BuiltinPersona {
    direction: Option<Direction>,
}

/// Idle attempts before the built-in persona says goodbye and hangs up.
pub const BUILTIN_IDLE_ATTEMPTS: u32 = 3;

const INBOUND_PROMPT: &str = "You are Miss Harper, an elementary school teacher on an audio call with a student. \
Your output will be converted to audio, so don't include special characters, lists or formatting in your answers. \
Respond to what the student said in one very short sentence.";
const INBOUND_GREETING: &str = "Say hello and briefly introduce yourself as Miss Harper.";
const INBOUND_IDLE: &str = "The student has gone quiet. Carry on teaching.";

const OUTBOUND_PROMPT: &str = "You are a friendly assistant placing an outbound phone call. \
Your responses will be read aloud, so keep them short and conversational, with no special characters or formatting. \
Begin by politely greeting the person and explaining why you are calling.";
const OUTBOUND_GREETING: &str = "Greet the person and introduce yourself.";
const OUTBOUND_IDLE: &str = "The person has gone quiet. Carry on the conversation.";

const GOODBYE: &str = "It seems you've stepped away. Goodbye for now!";

impl BuiltinPersona {
    pub fn new() -> Self {
        Self::default()
    }

    fn outbound(&self) -> bool {
        self.direction == Some(Direction::Outbound)
    }
}

impl Persona for BuiltinPersona {
    fn setup<'a>(&'a mut self, call: &'a CallInfo) -> HookFuture<'a, PersonaSetup> {
        self.direction = Some(call.direction);
        let (prompt, greeting) =
            if self.outbound() { (OUTBOUND_PROMPT, OUTBOUND_GREETING) } else { (INBOUND_PROMPT, INBOUND_GREETING) };
        Box::pin(std::future::ready(PersonaSetup {
            system_prompt: prompt.to_string(),
            greeting: Greeting::Generate(greeting.to_string()),
            voice: DEFAULT_VOICE.to_string(),
            llm_model: DEFAULT_LLM_MODEL.to_string(),
            temperature: None,
            max_tokens: None,
            tools: Vec::new(),
            record: true,
            turn_taking: TurnTaking::default(),
            idle: IdlePolicy { timeout: Duration::from_secs(5) },
        }))
    }

    fn on_user_turn<'a>(&'a mut self, _transcript: &'a str) -> HookFuture<'a, Action> {
        Box::pin(std::future::ready(Action::None))
    }

    fn on_idle(&mut self, attempt: u32) -> HookFuture<'_, Action> {
        let action = if attempt > BUILTIN_IDLE_ATTEMPTS {
            Action::HangUp(Some(GOODBYE.to_string()))
        } else {
            Action::Prompt(if self.outbound() { OUTBOUND_IDLE } else { INBOUND_IDLE }.to_string())
        };
        Box::pin(std::future::ready(action))
    }

    fn on_tool_call<'a>(
        &'a mut self,
        name: &'a str,
        _arguments: &'a str,
    ) -> HookFuture<'a, Result<ToolOutcome, String>> {
        Box::pin(std::future::ready(Err(format!("no tool named {name:?}"))))
    }

    fn on_dtmf<'a>(&'a mut self, _digits: &'a str) -> HookFuture<'a, Action> {
        // The default: the digits become user text and the LLM answers.
        Box::pin(std::future::ready(Action::None))
    }

    fn on_call_end<'a>(&'a mut self, _summary: &'a CallSummary) -> HookFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Gives every call the built-in persona.
#[derive(Debug, Default)]
pub struct BuiltinProvider;

impl PersonaProvider for BuiltinProvider {
    fn persona_for(&self, _call: &CallInfo) -> Box<dyn Persona> {
        Box::new(BuiltinPersona::new())
    }
}
