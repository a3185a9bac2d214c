//! The conversation as the LLM sees it: the messages so far, the persona's tools and model
//! settings, and the requests built from them.

use crate::persona::PersonaSetup;
use crate::services::llm::{ChatMessage, ChatRequest, ToolSpec};

/// Tool-call rounds per reply before the LLM must answer in words.
pub const MAX_TOOL_ROUNDS: u32 = 5;

/// One call's chat context.
pub struct ChatContext {
    messages: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    model: String,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
}

impl ChatContext {
    pub fn new(setup: &PersonaSetup) -> Self {
        ChatContext {
            messages: vec![ChatMessage::system(setup.system_prompt.clone())],
            tools: setup.tools.clone(),
            model: setup.llm_model.clone(),
            temperature: setup.temperature,
            max_tokens: setup.max_tokens,
        }
    }

    pub fn push(&mut self, message: ChatMessage) {
        self.messages.push(message);
    }

    /// Adds what the bot said, unless it is already the last thing in the context.
    pub fn push_assistant_once(&mut self, text: &str) {
        let already =
            matches!(self.messages.last(), Some(ChatMessage::Assistant { content: Some(c), .. }) if c == text);
        if !already {
            self.messages.push(ChatMessage::assistant(text));
        }
    }

    /// The request for the next LLM round; tools are offered only while rounds remain.
    pub fn request(&self, tool_rounds: u32) -> ChatRequest {
        ChatRequest {
            model: Some(self.model.clone()),
            messages: self.messages.clone(),
            tools: if tool_rounds < MAX_TOOL_ROUNDS { self.tools.clone() } else { Vec::new() },
            tool_choice: None,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
        }
    }

    /// A request answering `user_text` without adding it to the context: a speculative reply,
    /// whose words enter the context only if the turn holds.
    pub fn request_answering(&self, user_text: &str) -> ChatRequest {
        let mut request = self.request(0);
        request.messages.push(ChatMessage::user(user_text));
        request
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{CallInfo, Direction};
    use crate::persona::{BuiltinPersona, Persona};

    fn setup() -> PersonaSetup {
        let info = CallInfo {
            call_sid: "CA1".into(),
            stream_sid: "MZ1".into(),
            account_sid: "AC1".into(),
            direction: Direction::Inbound,
            from: "+15550001111".into(),
            to: "+15550002222".into(),
            persona: None,
            parameters: Default::default(),
        };
        let mut p = BuiltinPersona::new();
        futures_util::FutureExt::now_or_never(p.setup(&info)).expect("built-in setup is ready at once")
    }

    #[test]
    fn speculative_requests_leave_the_context_alone_and_tools_stop_after_the_last_round() {
        let mut setup = setup();
        setup.tools.push(ToolSpec { name: "t".into(), description: "d".into(), parameters: serde_json::json!({}) });
        let mut ctx = ChatContext::new(&setup);
        let r = ctx.request_answering("hi");
        assert_eq!(r.messages.last(), Some(&ChatMessage::user("hi")));
        assert_eq!(ctx.messages().len(), 1, "only the system prompt");
        assert_eq!(ctx.request(MAX_TOOL_ROUNDS - 1).tools.len(), 1);
        assert!(ctx.request(MAX_TOOL_ROUNDS).tools.is_empty());
        ctx.push_assistant_once("Hello.");
        ctx.push_assistant_once("Hello.");
        assert_eq!(ctx.messages().len(), 2, "a heard line enters once");
    }
}
