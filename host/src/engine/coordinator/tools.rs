//! Tool rounds: the LLM's tool calls go to the persona's hooks; every result enters the context
//! in the order asked (a tool call needs its answer, even for a reply cut short); once a round
//! is complete the reply goes on — or, if the caller cut it short meanwhile, only what acts on
//! the call itself (hang-up, transfer, keys) still happens.

use tracing::info;

use super::{Coordinator, ToolRound, TurnTiming, Why};
use crate::call::CallOutput;
use crate::engine::listener::Frontend;
use crate::engine::speaker::dtmf_tones;
use crate::persona::{Action, ToolOutcome};
use crate::services::llm::{ChatMessage, ToolCall};

impl<F: Frontend> Coordinator<F> {
    pub(super) fn run_tools(&mut self, calls: Vec<ToolCall>) {
        self.tool_rounds += 1;
        self.context.push(ChatMessage::assistant_tool_calls(calls.clone()));
        let id = self.next_round;
        self.next_round += 1;
        self.rounds.push(ToolRound { id, reply: self.speaker.generation(), remaining: calls.len(), then: Vec::new() });
        for call in calls {
            info!(tool = %call.name, "tool call");
            self.hooks.tool_call(call.name, call.arguments, Why::Tool { round: id, call_id: call.id });
        }
    }

    pub(super) async fn on_tool_result(&mut self, round: u64, call_id: String, result: Result<ToolOutcome, String>) {
        let Some(index) = self.rounds.iter().position(|r| r.id == round) else { return };
        let content = match result {
            Ok(outcome) => {
                if outcome.then != Action::None {
                    self.rounds[index].then.push(outcome.then);
                }
                outcome.content
            }
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        };
        // Every result goes in, even for a reply cut short: a tool call needs its answer.
        self.context.push(ChatMessage::tool_result(call_id, content));
        self.rounds[index].remaining -= 1;
        if self.rounds[index].remaining > 0 {
            return;
        }
        let done = self.rounds.remove(index);
        let first = done.then.into_iter().next();
        if !self.speaker.reply_is(done.reply) {
            // The reply these tools served was cut short: only what acts on the call happens.
            if let Some(action @ (Action::HangUp(_) | Action::Transfer(_) | Action::SendDtmf(_))) = first {
                self.perform(action, TurnTiming::default()).await;
            }
            return;
        }
        match first {
            // A tool that ends or transfers the call wins over further talk.
            Some(action @ (Action::HangUp(_) | Action::Transfer(_) | Action::Say(_))) => {
                self.perform(action, TurnTiming::default()).await;
            }
            Some(Action::SendDtmf(digits)) => {
                self.emit(CallOutput::Audio(dtmf_tones(&digits))).await;
                self.continue_llm();
            }
            Some(Action::Prompt(p)) => {
                self.context.push(ChatMessage::system(p));
                self.continue_llm();
            }
            Some(Action::None) | None => self.continue_llm(),
        }
    }

    fn continue_llm(&mut self) {
        let request = self.context.request(self.tool_rounds);
        self.speaker.continue_llm(request);
    }
}
