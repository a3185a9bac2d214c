//! The built-in persona: the reference bots' behaviour (Pipecat's Twilio inbound and outbound
//! examples), serving every call no plugin claims.

use std::time::Duration;

use super::api::{
    Action, CallSummary, Greeting, HookFuture, IdlePolicy, Persona, PersonaProvider, PersonaSetup, ToolOutcome,
    TurnTaking, DEFAULT_LLM_MODEL, DEFAULT_VOICE,
};
use crate::call::{CallInfo, Direction};

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

    /// The system prompt of its inbound (and playground) calls: what a local LLM evaluates
    /// ahead of the first call.
    pub fn inbound_prompt() -> &'static str {
        INBOUND_PROMPT
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
