//! A support desk. Order status comes from the orders API named by the `orders_api` secret
//! (its host must be in `allowed_hosts`); pressing 0 transfers to the `human_number` secret;
//! the persona ends the call itself when the caller is done or stays silent.
//!
//! ```toml
//! [personas.support-desk]
//! allowed_hosts = ["orders.example.com"]
//! [personas.support-desk.secrets]
//! orders_api = "https://orders.example.com"
//! human_number = "+15550100000"
//! ```

use serde_json::json;
use switchboard_persona::{
    args, export_persona, http, log, secret, Action, CallInfo, Greeting, Persona, Setup, ToolResult,
};

const GREETING: &str = "Thanks for calling support. You can press 0 at any time to reach a person. How can I help?";
const GOODBYE: &str = "Thanks for calling. Goodbye!";
const DEFAULT_HUMAN: &str = "+15550100000";

struct SupportDesk;

fn order_status(arguments: &str) -> Result<ToolResult, String> {
    let a = args(arguments)?;
    let id = a["order_id"].as_str().unwrap_or_default().trim().to_string();
    if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("order_id must be letters, digits or dashes".into());
    }
    let base = secret("orders_api").ok_or("the orders API is not configured")?;
    let resp = http::get(&format!("{}/orders/{id}", base.trim_end_matches('/'))).map_err(|e| {
        log::warn(&format!("order lookup failed: {}", e.message()));
        format!("order lookup failed: {}", e.message())
    })?;
    match resp.status {
        200 => Ok(ToolResult { content: resp.json()?.to_string(), then: Action::None }),
        404 => Ok(ToolResult::json(json!({"order_id": id, "error": "no such order"}))),
        s => Err(format!("the orders API answered {s}")),
    }
}

impl Persona for SupportDesk {
    fn start(_call: &CallInfo) -> (Self, Setup) {
        let prompt = "You are a support agent for an online shop on a phone call. Your words are spoken aloud: \
             short sentences, no lists or special characters. Use order_status to look up an order when the \
             caller gives an order number. When the caller has nothing more to ask, call end_call.";
        let setup = Setup::new(prompt)
            .greeting(Greeting::Say(GREETING.into()))
            .idle_timeout_ms(8000)
            .tool("order_status", "Look up the status of an order by its number.", json!({
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "The order number"}},
                "required": ["order_id"]
            }))
            .tool("end_call", "End the call once the caller is done.", json!({"type": "object", "properties": {}}));
        (SupportDesk, setup)
    }

    fn user_turn(&mut self, transcript: &str) -> Action {
        let t = transcript.to_lowercase();
        if t.contains("goodbye") || t.contains("that's all") {
            return Action::HangUp(Some(GOODBYE.into()));
        }
        Action::None
    }

    fn tool_call(&mut self, name: &str, arguments: &str) -> Result<ToolResult, String> {
        match name {
            "order_status" => order_status(arguments),
            "end_call" => Ok(ToolResult::json(json!({"ok": true})).then(Action::HangUp(Some(GOODBYE.into())))),
            other => Err(format!("no tool named {other:?}")),
        }
    }

    fn dtmf(&mut self, digits: &str) -> Action {
        if digits.contains('0') {
            return Action::Transfer(secret("human_number").unwrap_or_else(|| DEFAULT_HUMAN.into()));
        }
        Action::None
    }

    fn idle(&mut self, attempt: u32) -> Action {
        if attempt == 1 {
            Action::Say("Are you still there?".into())
        } else {
            Action::HangUp(Some(GOODBYE.into()))
        }
    }
}

export_persona!(SupportDesk);
