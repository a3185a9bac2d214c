//! An outbound appointment reminder. Place the call with the `name` and `time` parameters:
//!
//! `switchboard dial --to +1555… --from +1555… --persona reminder --param name=Ada --param "time=3 pm"`
//!
//! It greets with both, then the LLM talks; confirming or rescheduling goes through tools, and
//! the outcome is kept in the persona's key-value store under `appointment:CALLSID`.

use serde_json::json;
use switchboard_persona::{args, export_persona, kv, log, Action, CallInfo, Greeting, Persona, Setup, ToolResult};

struct Reminder {
    call_sid: String,
    name: String,
    time: String,
}

impl Persona for Reminder {
    fn start(call: &CallInfo) -> (Self, Setup) {
        let name = call.param("name").unwrap_or("there").to_string();
        let time = call.param("time").unwrap_or("your booked time").to_string();
        if call.param("name").is_none() || call.param("time").is_none() {
            log::warn("reminder called without the name and time parameters");
        }
        let prompt = format!(
            "You are calling {name} to remind them of their appointment at {time}. Your words are spoken \
             aloud: one or two short sentences, no lists or special characters. If they confirm, call \
             confirm_appointment. If they want another time, ask which, then call reschedule_appointment."
        );
        let greeting =
            format!("Hello {name}, this is a reminder of your appointment at {time}. Can you make it?");
        let setup = Setup::new(prompt)
            .greeting(Greeting::Say(greeting))
            .idle_timeout_ms(6000)
            .tool("confirm_appointment", "The person confirms they will come at the booked time.", json!({
                "type": "object", "properties": {}
            }))
            .tool("reschedule_appointment", "The person wants a different time.", json!({
                "type": "object",
                "properties": {"new_time": {"type": "string", "description": "The time the person asked for"}},
                "required": ["new_time"]
            }));
        (Reminder { call_sid: call.call_sid.clone(), name, time }, setup)
    }

    fn tool_call(&mut self, name: &str, arguments: &str) -> Result<ToolResult, String> {
        let key = format!("appointment:{}", self.call_sid);
        match name {
            "confirm_appointment" => {
                let _ = kv::set(&key, "confirmed");
                let goodbye = format!("Thank you, {}. See you at {}. Goodbye!", self.name, self.time);
                Ok(ToolResult::json(json!({"status": "confirmed", "time": self.time}))
                    .then(Action::HangUp(Some(goodbye))))
            }
            "reschedule_appointment" => {
                let a = args(arguments)?;
                let new_time = a["new_time"].as_str().filter(|t| !t.trim().is_empty()).ok_or("new_time is required")?;
                let _ = kv::set(&key, &format!("rescheduled:{new_time}"));
                Ok(ToolResult::json(json!({"status": "rescheduled", "old_time": self.time, "new_time": new_time})))
            }
            other => Err(format!("no tool named {other:?}")),
        }
    }

    fn idle(&mut self, attempt: u32) -> Action {
        if attempt == 1 {
            Action::Prompt("The person has gone quiet. Ask once more, briefly, whether they can make it.".into())
        } else {
            Action::HangUp(Some("I'll try you again later. Goodbye!".into()))
        }
    }
}

export_persona!(Reminder);
