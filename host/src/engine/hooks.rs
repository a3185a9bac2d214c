//! Persona hooks off the call loop. One task per call owns the persona and runs its hooks one
//! at a time, in the order they were asked for; the coordinator polls their answers alongside
//! caller audio, STT, LLM and TTS. While a hook runs — a plugin tool doing an HTTP lookup for
//! seconds — the caller is still heard (VAD, barge-in, idle timing), and nothing is dropped.
//!
//! Each request carries a tag of the coordinator's choosing, handed back with the answer, so
//! the coordinator can tell whether what it asked for still matters when the answer arrives.

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{warn, Instrument};

use crate::persona::{Action, CallSummary, Persona, ToolOutcome};

/// A hook's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum HookAnswer {
    Action(Action),
    Tool(Result<ToolOutcome, String>),
    /// A barrier passed: every hook asked for before it has answered.
    Passed,
}

enum HookCall {
    UserTurn(String),
    Idle(u32),
    Tool { name: String, arguments: String },
    Dtmf(String),
    Barrier,
    End(CallSummary),
}

impl HookCall {
    fn name(&self) -> &'static str {
        match self {
            HookCall::UserTurn(_) => "on_user_turn",
            HookCall::Idle(_) => "on_idle",
            HookCall::Tool { .. } => "on_tool_call",
            HookCall::Dtmf(_) => "on_dtmf",
            HookCall::Barrier => "barrier",
            HookCall::End(_) => "on_call_end",
        }
    }
}

type Request = (HookCall, oneshot::Sender<HookAnswer>);

/// One call's persona, behind its own task.
pub struct Hooks<T> {
    tx: mpsc::UnboundedSender<Request>,
    pending: FuturesOrdered<BoxFuture<'static, (T, HookAnswer)>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Send + 'static> Hooks<T> {
    /// Moves `persona` (already set up) onto its task.
    pub fn spawn(persona: Box<dyn Persona>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve(persona, rx).in_current_span());
        Hooks { tx, pending: FuturesOrdered::new(), task }
    }

    /// Whether answers are outstanding.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn user_turn(&mut self, text: String, tag: T) {
        self.ask(HookCall::UserTurn(text), tag);
    }

    pub fn idle(&mut self, attempt: u32, tag: T) {
        self.ask(HookCall::Idle(attempt), tag);
    }

    pub fn tool_call(&mut self, name: String, arguments: String, tag: T) {
        self.ask(HookCall::Tool { name, arguments }, tag);
    }

    pub fn dtmf(&mut self, digits: String, tag: T) {
        self.ask(HookCall::Dtmf(digits), tag);
    }

    /// Answers once every hook asked for before it has: keeps work that must follow them (an
    /// LLM request whose context they complete) in order.
    pub fn barrier(&mut self, tag: T) {
        self.ask(HookCall::Barrier, tag);
    }

    fn ask(&mut self, call: HookCall, tag: T) {
        let (reply, rx) = oneshot::channel();
        let fallback = fallback_answer(&call);
        if self.tx.send((call, reply)).is_err() {
            warn!("persona task gone; using the built-in answer");
        }
        self.pending.push_back(rx.map(move |answer| (tag, answer.unwrap_or(fallback))).boxed());
    }

    /// The next answer, in the order asked. Pending while nothing is outstanding; cancel-safe.
    pub async fn next(&mut self) -> (T, HookAnswer) {
        match self.pending.next().await {
            Some(done) => done,
            None => std::future::pending().await,
        }
    }

    /// `on-call-end`, after every outstanding hook; waits for the persona task to finish.
    pub async fn end(self, summary: CallSummary) {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send((HookCall::End(summary), reply));
        let _ = rx.await;
        drop(self.tx);
        let _ = self.task.await;
    }
}

/// What a hook answers when the persona task is gone (it panicked): the built-in behaviour.
fn fallback_answer(call: &HookCall) -> HookAnswer {
    match call {
        HookCall::Tool { name, .. } => HookAnswer::Tool(Err(format!("tool {name:?} unavailable"))),
        HookCall::Barrier | HookCall::End(_) => HookAnswer::Passed,
        HookCall::UserTurn(_) | HookCall::Idle(_) | HookCall::Dtmf(_) => HookAnswer::Action(Action::None),
    }
}

/// The persona task: one hook at a time, each in its own span.
async fn serve(mut persona: Box<dyn Persona>, mut rx: mpsc::UnboundedReceiver<Request>) {
    while let Some((call, reply)) = rx.recv().await {
        let span = tracing::info_span!("hook", name = call.name());
        let answer = async {
            match call {
                HookCall::UserTurn(text) => HookAnswer::Action(persona.on_user_turn(&text).await),
                HookCall::Idle(attempt) => HookAnswer::Action(persona.on_idle(attempt).await),
                HookCall::Tool { name, arguments } => HookAnswer::Tool(persona.on_tool_call(&name, &arguments).await),
                HookCall::Dtmf(digits) => HookAnswer::Action(persona.on_dtmf(&digits).await),
                HookCall::Barrier => HookAnswer::Passed,
                HookCall::End(summary) => {
                    persona.on_call_end(&summary).await;
                    HookAnswer::Passed
                }
            }
        }
        .instrument(span)
        .await;
        // The coordinator may have ended the call meanwhile.
        let _ = reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persona::{BuiltinPersona, HookFuture, PersonaSetup};
    use std::time::Duration;

    /// A persona whose user-turn hook takes a while and whose tool echoes its arguments.
    struct Slow(BuiltinPersona);
    impl Persona for Slow {
        fn setup<'a>(&'a mut self, call: &'a crate::call::CallInfo) -> HookFuture<'a, PersonaSetup> {
            self.0.setup(call)
        }
        fn on_user_turn<'a>(&'a mut self, t: &'a str) -> HookFuture<'a, Action> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Action::Say(format!("heard {t}"))
            })
        }
        fn on_idle(&mut self, attempt: u32) -> HookFuture<'_, Action> {
            self.0.on_idle(attempt)
        }
        fn on_tool_call<'a>(&'a mut self, name: &'a str, args: &'a str) -> HookFuture<'a, Result<ToolOutcome, String>> {
            Box::pin(std::future::ready(Ok(ToolOutcome { content: format!("{name}:{args}"), then: Action::None })))
        }
        fn on_dtmf<'a>(&'a mut self, d: &'a str) -> HookFuture<'a, Action> {
            self.0.on_dtmf(d)
        }
        fn on_call_end<'a>(&'a mut self, s: &'a CallSummary) -> HookFuture<'a, ()> {
            self.0.on_call_end(s)
        }
    }

    #[tokio::test]
    async fn answers_come_back_in_order_with_their_tags_and_the_loop_is_free_meanwhile() {
        let mut hooks = Hooks::spawn(Box::new(Slow(BuiltinPersona::new())));
        hooks.user_turn("hello".into(), 1);
        hooks.tool_call("lookup".into(), "{}".into(), 2);
        hooks.barrier(3);
        assert!(hooks.busy());
        // The slow hook does not block whoever polls: a timer fires first.
        let first = tokio::select! {
            done = hooks.next() => Some(done),
            _ = tokio::time::sleep(Duration::from_millis(5)) => None,
        };
        assert!(first.is_none(), "the hook is still running");
        assert_eq!(hooks.next().await, (1, HookAnswer::Action(Action::Say("heard hello".into()))));
        assert_eq!(
            hooks.next().await,
            (2, HookAnswer::Tool(Ok(ToolOutcome { content: "lookup:{}".into(), then: Action::None })))
        );
        assert_eq!(hooks.next().await, (3, HookAnswer::Passed));
        assert!(!hooks.busy());
        hooks
            .end(CallSummary {
                duration: Duration::ZERO,
                outcome: crate::call::Outcome::CallerHungUp,
                transcript: vec![],
            })
            .await;
    }
}
