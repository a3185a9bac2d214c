//! The coordinator: one call's conversation. It owns the listener, the speaker, the persona's
//! hooks and the chat context, and maps what happens to what is done next:
//!
//! - a turn starts → barge-in (the speaker cuts an interruptible reply; the context keeps
//!   only what the caller heard);
//! - a pause with settled words → a held (speculative) reply;
//! - a turn ends → the persona's `on-user-turn`, then the LLM reply (or the held one played);
//! - the LLM asks for tools → the persona runs them, their results go back to the LLM;
//! - a reply was heard → idle timing, or the hang-up / transfer it announced.
//!
//! Hooks are asked through [`Hooks`] and their answers polled with everything else, so a slow
//! hook never stops the caller being heard. Each request carries a [`Why`] that says what the
//! answer is for; an answer that arrives after the caller moved on is handled as a barge-in
//! would handle it.

use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::context::{ChatContext, MAX_TOOL_ROUNDS};
use super::hooks::{HookAnswer, Hooks};
use super::listener::{Frontend, ListenEvent, Listener};
use super::speaker::{dtmf_tones, After, FinishedReply, SpeakEvent, Speaker};
use super::writer::CallWriter;
use crate::call::events::{CallEvent, CallEventsHandle};
use crate::call::transcript::{Role, TranscriptLine, TurnLatency};
use crate::call::{CallInput, CallOutput, Outcome, FRAME_SAMPLES};
use crate::persona::{Action, CallSummary, Greeting, PersonaSetup};
use crate::services::llm::ChatMessage;

/// Said when a turn had no words and interrupted the bot (the reference's empty-turn recovery).
/// Said when the caller spoke but no words came through (after an interruption, or before the
/// first reply). A fixed line, not an LLM instruction: it is heard at once, and small local
/// models read such instructions out and then repeat them every turn.
pub(crate) const EMPTY_TURN_REPLY: &str = "Sorry, I didn't catch that. Could you say it again?";
/// Said before a transfer.
const TRANSFER_NOTICE: &str = "Please hold while I transfer your call.";

/// When the caller's speech ended and how long its words took: carried to the reply.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TurnTiming {
    pub speech_ended: Option<Instant>,
    pub stt_final_ms: Option<f64>,
}

/// What a hook's answer is for.
#[derive(Debug)]
pub enum Why {
    /// `on-user-turn` for caller turn number `turn`.
    UserTurn {
        text: String,
        turn: u64,
        timing: TurnTiming,
        speculative: bool,
    },
    Dtmf {
        digits: String,
    },
    Idle {
        turn: u64,
    },
    /// One tool of a round; results go into the context in the order the LLM asked.
    Tool {
        round: u64,
        call_id: String,
    },
    /// An empty turn's recovery, after whatever hooks were outstanding.
    EmptyTurn,
}

/// A round of tool calls waiting for its results.
struct ToolRound {
    id: u64,
    /// The speaker's reply the round belongs to.
    reply: u64,
    remaining: usize,
    then: Vec<Action>,
}

/// Everything a call's coordinator is built from.
pub struct CoordinatorParts<F: Frontend> {
    pub listener: Listener<F>,
    pub speaker: Speaker,
    pub hooks: Hooks<Why>,
    pub setup: PersonaSetup,
    pub out: mpsc::Sender<CallOutput>,
    pub events: CallEventsHandle,
    pub writer: Option<CallWriter>,
    pub started: Instant,
}

/// One call's conversation state.
pub struct Coordinator<F: Frontend> {
    listener: Listener<F>,
    speaker: Speaker,
    hooks: Hooks<Why>,
    context: ChatContext,
    setup: PersonaSetup,
    out: mpsc::Sender<CallOutput>,
    events: CallEventsHandle,
    writer: Option<CallWriter>,
    started: Instant,
    /// The user text a held reply answers, while the speaker holds one.
    speculation: Option<String>,
    /// Caller turns started so far: an answer for an older turn is stale.
    turn: u64,
    turn_started_ms: Option<u64>,
    turn_span: tracing::Span,
    /// The call's span: each turn's span is its child (not the previous turn's).
    call_span: tracing::Span,
    turn_interrupted_bot: bool,
    recovered_empty_turn: bool,
    idle_deadline: Option<Instant>,
    idle_attempts: u32,
    tool_rounds: u32,
    rounds: Vec<ToolRound>,
    next_round: u64,
    ending: bool,
    /// How the bot ended the call, once it did.
    ended_by: Option<Outcome>,
    transcript: Vec<(String, String)>,
}

impl<F: Frontend> Coordinator<F> {
    pub fn new(parts: CoordinatorParts<F>) -> Self {
        Coordinator {
            context: ChatContext::new(&parts.setup),
            listener: parts.listener,
            speaker: parts.speaker,
            hooks: parts.hooks,
            setup: parts.setup,
            out: parts.out,
            events: parts.events,
            writer: parts.writer,
            started: parts.started,
            speculation: None,
            turn: 0,
            turn_started_ms: None,
            turn_span: tracing::Span::none(),
            call_span: tracing::Span::current(),
            turn_interrupted_bot: false,
            recovered_empty_turn: false,
            idle_deadline: None,
            idle_attempts: 0,
            tool_rounds: 0,
            rounds: Vec::new(),
            next_round: 0,
            ending: false,
            ended_by: None,
            transcript: Vec::new(),
        }
    }

    /// Runs the call until its input closes (the transport ended it).
    pub async fn run(mut self, mut input: mpsc::Receiver<CallInput>) {
        self.greet();
        loop {
            let span = self.turn_span.clone();
            self.drain().instrument(span.clone()).await;
            let deadline = self.next_deadline();
            tokio::select! {
                msg = input.recv() => match msg {
                    Some(msg) => self.on_input(msg).instrument(span).await,
                    None => break,
                },
                () = self.listener.wait() => {}
                () = self.speaker.wait() => {}
                (why, answer) = self.hooks.next() => self.on_hook(why, answer).instrument(span).await,
                () = sleep_until_opt(deadline) => self.on_timer(!input.is_empty()),
            }
        }
        self.finish().await;
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn next_deadline(&self) -> Option<Instant> {
        [self.listener.next_deadline(), self.idle_deadline].into_iter().flatten().min()
    }

    /// Handles what the listener and the speaker decided, until neither has more.
    async fn drain(&mut self) {
        loop {
            if let Some(ev) = self.listener.pop() {
                self.on_listen(ev).await;
            } else if let Some(ev) = self.speaker.pop() {
                self.on_speak(ev).await;
            } else {
                return;
            }
        }
    }

    async fn emit(&mut self, out: CallOutput) {
        // The transport only goes away when the call ends; the loop sees that on its input.
        let _ = self.out.send(out).await;
    }

    // ----- call start ---------------------------------------------------------------------

    fn greet(&mut self) {
        match self.setup.greeting.clone() {
            Greeting::None => self.arm_idle(),
            Greeting::Say(text) => self.say(&text, After::Listen),
            Greeting::Generate(instruction) => {
                self.context.push(ChatMessage::system(instruction));
                self.start_llm_reply(TurnTiming::default());
            }
        }
    }

    // ----- the transport ------------------------------------------------------------------

    async fn on_input(&mut self, input: CallInput) {
        match input {
            CallInput::Audio { timestamp_ms, samples } => {
                if let Some(w) = &mut self.writer {
                    w.caller(timestamp_ms, samples);
                }
                self.listener.on_audio(&samples, Instant::now()).await;
            }
            CallInput::Dtmf(digits) => self.on_dtmf(digits),
            CallInput::MarkPlayed(name) => self.speaker.on_mark(&name),
            CallInput::BotAudioPlayed { playout_ms, mulaw } => {
                self.speaker.on_audio_sent(Instant::now());
                if let Some(w) = &mut self.writer {
                    let mut pcm = [0i16; FRAME_SAMPLES];
                    for (o, &c) in pcm.iter_mut().zip(mulaw.iter()) {
                        *o = crate::audio::mulaw::decode(c);
                    }
                    w.bot(playout_ms, pcm);
                }
            }
            CallInput::Cleared { at_ms } => {
                if let Some(w) = &mut self.writer {
                    w.clear_bot(at_ms);
                }
            }
        }
    }

    fn on_timer(&mut self, input_pending: bool) {
        let now = Instant::now();
        self.listener.poll(now, input_pending);
        if self.idle_deadline.is_some_and(|d| now >= d) {
            self.idle_deadline = None;
            self.on_idle();
        }
    }

    // ----- what the listener heard ----------------------------------------------------------

    async fn on_listen(&mut self, ev: ListenEvent) {
        match ev {
            ListenEvent::Vad { speaking } => {
                self.events.emit(CallEvent::Vad { speaking, at_ms: self.now_ms() });
            }
            ListenEvent::Interim { text } => self.events.emit(CallEvent::Interim { text }),
            ListenEvent::TurnStarted => {
                self.abort_speculation();
                self.idle_deadline = None;
                self.idle_attempts = 0;
                self.turn += 1;
                self.turn_span = tracing::info_span!(parent: &self.call_span, "turn", n = self.turn);
                self.turn_started_ms = Some(self.now_ms());
                self.turn_interrupted_bot = self.barge_in().await;
            }
            ListenEvent::Settled { text, paused_at } => self.maybe_speculate(text, paused_at),
            ListenEvent::Resumed => self.abort_speculation(),
            ListenEvent::TurnEnded { text, speech_ended, stt_final_ms, .. } => {
                self.on_user_turn(text, TurnTiming { speech_ended, stt_final_ms }).await;
            }
        }
    }

    /// Cuts the current reply short if the caller may interrupt it. True if something was cut.
    async fn barge_in(&mut self) -> bool {
        let Some(cut) = self.speaker.barge_in().await else { return false };
        if !cut.heard.is_empty() {
            self.context.push(ChatMessage::assistant(cut.heard.clone()));
        }
        self.log_line(Role::Assistant, cut.heard, cut.started_ms, true, None);
        true
    }

    async fn on_user_turn(&mut self, text: String, timing: TurnTiming) {
        let start = self.turn_started_ms.take().unwrap_or_else(|| self.now_ms());
        // A speculative reply for exactly this text waits for the persona's answer; anything
        // else goes.
        let speculative = match self.speculation.as_deref() {
            Some(spoken) if spoken == text => true,
            Some(_) => {
                self.abort_speculation();
                false
            }
            None => false,
        };
        if text.is_empty() {
            let first_reply_pending = self.transcript.iter().all(|(role, _)| role != Role::Assistant.as_str());
            if (self.turn_interrupted_bot || first_reply_pending) && !self.recovered_empty_turn && !self.ending {
                self.recovered_empty_turn = true;
                // After any hook still running, so its results are in the context first.
                self.hooks.barrier(Why::EmptyTurn);
            } else if !self.speaker.has_reply() {
                self.arm_idle();
            }
            return;
        }
        self.recovered_empty_turn = false;
        info!(text = %text, "user turn");
        // A reply started meanwhile (e.g. by a keypress during the turn) gives way.
        self.barge_in().await;
        self.log_line(Role::User, text.clone(), start, false, None);
        if self.ending {
            self.abort_speculation();
            return;
        }
        self.hooks.user_turn(text.clone(), Why::UserTurn { text, turn: self.turn, timing, speculative });
    }

    /// The persona answered a finished turn.
    async fn on_turn_answer(&mut self, text: String, turn: u64, timing: TurnTiming, speculative: bool, action: Action) {
        self.context.push(ChatMessage::user(text.clone()));
        if turn != self.turn || self.ending {
            // The caller started another turn while the persona decided (or the call is
            // ending): as with a barge-in, only what acts on the call itself still happens.
            debug!("persona answered a turn the caller has moved on from");
            if matches!(action, Action::HangUp(_) | Action::Transfer(_)) && !self.ending {
                self.perform(action, TurnTiming::default()).await;
            }
            return;
        }
        // A reply started while the persona decided (a keypress) gives way.
        self.barge_in().await;
        let held = speculative && self.speculation.as_deref() == Some(text.as_str()) && self.speaker.has_held_reply();
        match (action, held) {
            (Action::None, true) => {
                self.speculation = None;
                let parked = self.speaker.commit_held(timing.speech_ended, timing.stt_final_ms).await;
                if !parked.is_empty() {
                    self.run_tools(parked);
                }
            }
            (other, _) => {
                // The persona answered the turn itself (or nothing was prepared).
                self.abort_speculation();
                self.perform(other, timing).await;
            }
        }
    }

    // ----- speculative replies ----------------------------------------------------------------

    /// Starts a held reply to the turn's settled text, if nothing else is going on.
    fn maybe_speculate(&mut self, text: String, paused_at: Instant) {
        if self.speculation.is_some() || self.speaker.has_reply() || self.ending || self.hooks.busy() {
            return;
        }
        debug!(%text, "speculative reply");
        self.tool_rounds = 0;
        // The request carries the user's words; the context gets them only if the turn holds.
        let request = self.context.request_answering(&text);
        self.speaker.start_llm_reply(request, Some(paused_at), None, true);
        self.speculation = Some(text);
    }

    /// Drops a held reply; nothing of it was played.
    fn abort_speculation(&mut self) {
        if self.speculation.take().is_some() {
            self.speaker.discard_held();
        }
    }

    // ----- keys and silence -------------------------------------------------------------------

    fn on_dtmf(&mut self, digits: String) {
        info!(%digits, "dtmf");
        if self.ending {
            return;
        }
        self.abort_speculation();
        self.hooks.dtmf(digits.clone(), Why::Dtmf { digits });
    }

    async fn on_dtmf_answer(&mut self, digits: String, action: Action) {
        if self.ending {
            return;
        }
        self.barge_in().await;
        match action {
            Action::None => {
                let text = format!("(pressed {digits} on the keypad)");
                self.log_line(Role::User, text.clone(), self.now_ms(), false, None);
                self.context.push(ChatMessage::user(text));
                self.start_llm_reply(TurnTiming::default());
            }
            other => self.perform(other, TurnTiming::default()).await,
        }
    }

    fn on_idle(&mut self) {
        if self.ending || self.speaker.has_reply() || self.listener.turn_open() {
            return;
        }
        if self.hooks.busy() {
            // A hook is still deciding something: count the silence from its answer.
            self.arm_idle();
            return;
        }
        self.idle_attempts += 1;
        info!(attempt = self.idle_attempts, "caller idle");
        self.hooks.idle(self.idle_attempts, Why::Idle { turn: self.turn });
    }

    fn arm_idle(&mut self) {
        if !self.ending {
            self.idle_deadline = Some(Instant::now() + self.setup.idle.timeout);
        }
    }

    // ----- hook answers -----------------------------------------------------------------------

    async fn on_hook(&mut self, why: Why, answer: HookAnswer) {
        match (why, answer) {
            (Why::UserTurn { text, turn, timing, speculative }, HookAnswer::Action(action)) => {
                self.on_turn_answer(text, turn, timing, speculative, action).await;
            }
            (Why::Dtmf { digits }, HookAnswer::Action(action)) => self.on_dtmf_answer(digits, action).await,
            (Why::Idle { turn }, HookAnswer::Action(action)) => {
                if self.ending || turn != self.turn || self.speaker.has_reply() || self.listener.turn_open() {
                    return; // the caller came back meanwhile
                }
                match action {
                    Action::None => self.arm_idle(),
                    other => self.perform(other, TurnTiming::default()).await,
                }
            }
            (Why::Tool { round, call_id }, HookAnswer::Tool(result)) => {
                self.on_tool_result(round, call_id, result).await
            }
            (Why::EmptyTurn, _) => {
                if !self.ending {
                    self.say(EMPTY_TURN_REPLY, After::Listen);
                }
            }
            (why, answer) => warn!(?why, ?answer, "hook answer of the wrong kind ignored"),
        }
    }

    // ----- what the speaker needs decided ------------------------------------------------------

    async fn on_speak(&mut self, ev: SpeakEvent) {
        match ev {
            SpeakEvent::ToolCalls(calls) if self.tool_rounds >= MAX_TOOL_ROUNDS => {
                warn!(
                    rounds = self.tool_rounds,
                    calls = calls.len(),
                    "the LLM keeps calling tools; answering with an apology"
                );
                self.speaker.apologize();
            }
            SpeakEvent::ToolCalls(calls) => self.run_tools(calls),
            SpeakEvent::Finished(reply) => self.on_reply_heard(reply).await,
            SpeakEvent::HeldFailed => self.abort_speculation(),
            SpeakEvent::Mute => {
                self.abort_speculation();
                self.set_ending();
                self.hang_up("text-to-speech unavailable".into()).await;
            }
        }
    }

    /// The whole reply was heard: record it and do what comes after.
    async fn on_reply_heard(&mut self, reply: FinishedReply) {
        if !reply.text.is_empty() {
            self.context.push_assistant_once(&reply.text);
            self.log_line(Role::Assistant, reply.text, reply.started_ms, false, Some(reply.latency));
        }
        match reply.after {
            After::Listen => self.arm_idle(),
            After::HangUp(reason) => self.hang_up(reason).await,
            After::Transfer(to) => {
                self.ended_by = Some(Outcome::Transferred(to.clone()));
                self.emit(CallOutput::Transfer { to }).await;
            }
        }
    }

    // ----- actions ------------------------------------------------------------------------------

    /// Carries out a persona's action.
    async fn perform(&mut self, action: Action, timing: TurnTiming) {
        match action {
            Action::None => self.start_llm_reply(timing),
            Action::Say(text) => self.say(&text, After::Listen),
            Action::Prompt(instruction) => {
                self.context.push(ChatMessage::system(instruction));
                self.start_llm_reply(timing);
            }
            Action::Transfer(to) => {
                self.set_ending();
                self.say(TRANSFER_NOTICE, After::Transfer(to));
            }
            Action::SendDtmf(digits) => {
                self.emit(CallOutput::Audio(dtmf_tones(&digits))).await;
                self.arm_idle();
            }
            Action::HangUp(goodbye) => {
                self.set_ending();
                match goodbye {
                    Some(text) if !text.trim().is_empty() => self.say(&text, After::HangUp("goodbye".into())),
                    _ => {
                        let reason = "persona ended the call".to_string();
                        // Let what is already queued play out first.
                        if !self.speaker.then_after_current(After::HangUp(reason.clone())) {
                            self.hang_up(reason).await;
                        }
                    }
                }
            }
        }
    }

    fn start_llm_reply(&mut self, timing: TurnTiming) {
        self.idle_deadline = None;
        self.tool_rounds = 0;
        let request = self.context.request(0);
        self.speaker.start_llm_reply(request, timing.speech_ended, timing.stt_final_ms, false);
    }

    fn say(&mut self, text: &str, after: After) {
        self.idle_deadline = None;
        self.speaker.say(text, after);
    }

    async fn hang_up(&mut self, reason: String) {
        self.ended_by = Some(Outcome::BotHungUp(reason.clone()));
        self.emit(CallOutput::HangUp { reason }).await;
    }

    fn set_ending(&mut self) {
        self.ending = true;
        self.listener.set_early_finalize(false);
    }

    fn log_line(&mut self, role: Role, text: String, start_ms: u64, interrupted: bool, latency: Option<TurnLatency>) {
        self.transcript.push((role.as_str().to_string(), text.clone()));
        let end_ms = self.now_ms();
        let line = TranscriptLine { role, text, start_ms, end_ms, interrupted, latency };
        self.events.emit(CallEvent::Line(line.clone()));
        if let Some(w) = &mut self.writer {
            w.line(line);
        }
    }

    // ----- call end -----------------------------------------------------------------------------

    async fn finish(mut self) {
        self.listener.close();
        self.speaker.close();
        let end_ms = self.now_ms();
        if let Some(w) = self.writer.take() {
            w.finish(end_ms).await;
        }
        let summary = CallSummary {
            duration: self.started.elapsed(),
            outcome: self.ended_by.take().unwrap_or(Outcome::CallerHungUp),
            transcript: std::mem::take(&mut self.transcript),
        };
        let (turns, duration_s) = (summary.transcript.len(), summary.duration.as_secs_f64());
        self.hooks.end(summary).await;
        info!(turns, duration_s, "conversation ended");
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

mod tools;

#[cfg(test)]
mod tests;
