//! What a bot *is*: everything a persona decides, behind one trait, so the built-in default and
//! WebAssembly plugins slot into the same engine.
//!
//! Hooks return futures because plugin hooks run off the call's task (a plugin may take up to its
//! CPU deadline); the engine polls them beside the caller's audio and never awaits one inline.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::audio::turn::TurnParams;
use crate::audio::vad::VadParams;

use crate::call::CallInfo;

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

/// A function the LLM may call (the LLM client's type: one definition).
pub use crate::services::llm::ToolSpec;

/// When the caller goes quiet.
#[derive(Debug, Clone, PartialEq)]
pub struct IdlePolicy {
    /// Silence after the caller heard the end of the bot's speech before the idle hook runs.
    pub timeout: Duration,
}

pub use crate::engine::listener::endpoint::EndpointParams;

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
    /// End-of-turn decisions with the words and an adaptive silence fallback
    /// (`engine::listener::endpoint`); `None`: Smart Turn's verdict alone with `turn.stop_secs`.
    pub endpoint: Option<EndpointParams>,
}

impl Default for TurnTaking {
    fn default() -> Self {
        Self {
            vad: VadParams::default(),
            turn: TurnParams::default(),
            user_turn_stop_timeout: Duration::from_secs(2),
            denoise: true,
            speculative_replies: true,
            // Measured on real speech against Smart Turn alone (docs/turn-taking.md): no more
            // cut-offs, no waits for the fallback on finished turns, a shorter p95.
            endpoint: Some(EndpointParams::default()),
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
    /// How the session ended, in the call's one outcome vocabulary.
    pub outcome: crate::call::Outcome,
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
