//! The reference receptionist: the same behaviour as the host's built-in persona (Pipecat's
//! Twilio inbound and outbound examples). Inbound callers get Miss Harper, outbound calls a
//! friendly assistant; three idle prompts, then a goodbye and a hang-up.

use switchboard_persona::{export_persona, Action, CallInfo, Direction, Greeting, Persona, Setup};

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
/// Idle prompts before the goodbye.
const IDLE_ATTEMPTS: u32 = 3;

struct Receptionist {
    outbound: bool,
}

impl Persona for Receptionist {
    fn start(call: &CallInfo) -> (Self, Setup) {
        let outbound = call.direction == Direction::Outbound;
        let (prompt, greeting) =
            if outbound { (OUTBOUND_PROMPT, OUTBOUND_GREETING) } else { (INBOUND_PROMPT, INBOUND_GREETING) };
        let setup = Setup::new(prompt).greeting(Greeting::Generate(greeting.into())).idle_timeout_ms(5000);
        (Receptionist { outbound }, setup)
    }

    fn idle(&mut self, attempt: u32) -> Action {
        if attempt > IDLE_ATTEMPTS {
            return Action::HangUp(Some(GOODBYE.into()));
        }
        Action::Prompt(if self.outbound { OUTBOUND_IDLE } else { INBOUND_IDLE }.into())
    }
}

export_persona!(Receptionist);
