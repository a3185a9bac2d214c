//! The speaker: everything about talking to the caller. It streams a reply from the LLM, cuts it
//! into sentences, sends each to TTS as its own unit with its own mark, delivers the audio live
//! or holds it (a speculative reply), retries with one-shot synthesis when the stream fails,
//! tracks which sentences the caller heard, and cuts the reply short on barge-in.
//!
//! It tells the coordinator only what needs a decision ([`SpeakEvent`]): the LLM wants tools,
//! a reply was heard to its end, a held reply failed, or the bot can no longer speak.

mod dtmf;
mod events;
mod reply;
pub mod sentences;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, Instrument};

pub use dtmf::tones as dtmf_tones;
pub use reply::After;
use reply::{parse_mark, Delivery, Reply, Utterance};
use sentences::SentenceSplitter;

use crate::call::transcript::TurnLatency;
use crate::call::CallOutput;
use crate::metrics::Metrics;
use crate::services::llm::{ChatModel, ChatRequest, LlmError, LlmEvent, LlmStream, ToolCall};
use crate::services::tts::{ReplyId, TextToSpeech, TtsEvent, TtsEvents, TtsHandle, TtsOptions};

/// Said when the LLM fails; the call carries on.
pub const APOLOGY: &str = "Sorry, I had a problem just now. Could you say that again?";
/// One-shot syntheses failing in a row before the bot gives up speaking.
const MAX_SYNTH_FAILURES: u32 = 3;

type SynthFuture = Pin<Box<dyn Future<Output = (ReplyId, Result<Vec<u8>, String>)> + Send>>;

/// What the speaker tells the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum SpeakEvent {
    /// The live reply's LLM asks for tools (the words before them are being spoken). A held
    /// reply keeps them until it is committed.
    ToolCalls(Vec<ToolCall>),
    /// The reply was heard to its end (or had nothing to say).
    Finished(FinishedReply),
    /// The LLM failed while a held reply was being prepared: nothing was said.
    HeldFailed,
    /// Text-to-speech keeps failing: the bot can't speak any more.
    Mute,
}

/// A reply the caller heard to its end.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishedReply {
    pub text: String,
    pub started_ms: u64,
    pub latency: TurnLatency,
    pub after: After,
}

/// A reply cut short by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct CutReply {
    /// The sentences whose marks came back.
    pub heard: String,
    pub said: String,
    pub started_ms: u64,
}

/// Where the speaker's providers and outputs are.
pub struct SpeakerParts {
    pub out: mpsc::Sender<CallOutput>,
    pub llm: Arc<dyn ChatModel>,
    pub tts: Arc<dyn TextToSpeech>,
    /// The TTS stream, if it could be opened (otherwise every sentence is one-shot).
    pub stream: Option<(TtsHandle, TtsEvents)>,
    pub voice: String,
    pub metrics: Arc<Metrics>,
    /// The call's clock.
    pub started: Instant,
}

/// What the speaker waits on besides the coordinator's calls.
enum Made {
    Llm(Option<Result<LlmEvent, LlmError>>),
    Tts(Option<TtsEvent>),
    Synth(ReplyId, Result<Vec<u8>, String>),
}

/// One call's speaker.
pub struct Speaker {
    out: mpsc::Sender<CallOutput>,
    llm_provider: Arc<dyn ChatModel>,
    tts_provider: Arc<dyn TextToSpeech>,
    voice: String,
    metrics: Arc<Metrics>,
    started: Instant,
    tts: Option<TtsHandle>,
    tts_events: Option<TtsEvents>,
    llm: Option<LlmStream>,
    splitter: SentenceSplitter,
    /// One-shot syntheses, delivered in the order they were asked for.
    synth: FuturesOrdered<SynthFuture>,
    synth_failures: u32,
    next_unit: u64,
    /// A unit collecting sentences without a flush (over the provider's flush budget).
    open_unit: Option<ReplyId>,
    reply: Option<Reply>,
    /// Counts replies, so work started for one can tell it is still current.
    generation: u64,
    /// The current reply's span: its LLM, TTS and playout events log inside it.
    reply_span: tracing::Span,
    ready: VecDeque<SpeakEvent>,
}

impl Speaker {
    pub fn new(parts: SpeakerParts) -> Self {
        let (tts, tts_events) = parts.stream.map_or((None, None), |(h, e)| (Some(h), Some(e)));
        Speaker {
            out: parts.out,
            llm_provider: parts.llm,
            tts_provider: parts.tts,
            voice: parts.voice,
            metrics: parts.metrics,
            started: parts.started,
            tts,
            tts_events,
            llm: None,
            splitter: SentenceSplitter::default(),
            synth: FuturesOrdered::new(),
            synth_failures: 0,
            next_unit: 1,
            open_unit: None,
            reply: None,
            generation: 0,
            reply_span: tracing::Span::none(),
            ready: VecDeque::with_capacity(2),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The next event already decided, if any.
    pub fn pop(&mut self) -> Option<SpeakEvent> {
        self.ready.pop_front()
    }

    /// Whether a reply (live or held) is in progress.
    pub fn has_reply(&self) -> bool {
        self.reply.is_some()
    }

    /// Whether the reply in progress is a held one.
    pub fn has_held_reply(&self) -> bool {
        self.reply.as_ref().is_some_and(Reply::is_held)
    }

    /// The reply in progress, counted from 1; 0 before the first.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the reply of `generation` is still the one in progress (not cut or finished).
    pub fn reply_is(&self, generation: u64) -> bool {
        self.reply.is_some() && self.generation == generation
    }

    /// Waits for LLM output, TTS events or one-shot audio and acts on them; decisions go to
    /// [`Self::pop`]. Cancel-safe.
    pub async fn wait(&mut self) {
        let made = tokio::select! {
            ev = next_llm(&mut self.llm) => Made::Llm(ev),
            ev = recv_opt(&mut self.tts_events) => Made::Tts(ev),
            (unit, result) = next_synth(&mut self.synth) => Made::Synth(unit, result),
        };
        let span = self.reply_span.clone();
        async {
            match made {
                Made::Llm(ev) => self.on_llm(ev).await,
                Made::Tts(Some(ev)) => self.on_tts(ev).await,
                Made::Tts(None) => self.tts_events = None,
                Made::Synth(unit, result) => self.on_synthesized(unit, result).await,
            }
        }
        .instrument(span)
        .await;
    }

    // ----- starting replies --------------------------------------------------------------

    /// Starts a reply streamed from the LLM. A `held` reply keeps its audio until
    /// [`Self::commit_held`] (and its tool calls until then too).
    pub fn start_llm_reply(
        &mut self,
        request: ChatRequest,
        speech_ended: Option<Instant>,
        stt_final_ms: Option<f64>,
        held: bool,
    ) {
        self.open_unit = None;
        let mut reply = Reply::new(After::Listen, speech_ended, self.now_ms());
        reply.llm_requested = Some(Instant::now());
        if held {
            reply.delivery = Delivery::Held(Vec::new());
        } else {
            reply.turn_ended = reply.llm_requested;
        }
        reply.stt_final_ms = stt_final_ms;
        self.set_reply(reply);
        self.splitter = SentenceSplitter::default();
        self.llm = Some(self.llm_provider.stream_chat(request));
    }

    /// The live reply goes on with another LLM round (after its tools answered).
    pub fn continue_llm(&mut self, request: ChatRequest) {
        self.llm = Some(self.llm_provider.stream_chat(request));
    }

    /// Speaks a fixed text: appended to the reply in progress (so what was already said plays
    /// first), or as a reply of its own. `after` replaces what follows the reply unless it is
    /// `Listen`.
    pub fn say(&mut self, text: &str, after: After) {
        self.llm = None;
        self.splitter = SentenceSplitter::default();
        match &mut self.reply {
            Some(reply) => {
                if after != After::Listen {
                    reply.after = after;
                }
            }
            None => {
                self.open_unit = None;
                let reply = Reply::new(after, None, self.now_ms());
                self.set_reply(reply);
            }
        }
        let mut splitter = SentenceSplitter::default();
        let mut sentences = splitter.push(text);
        sentences.extend(splitter.finish());
        for s in sentences {
            self.speak_sentence(s);
        }
        self.complete_reply_text();
        self.check_reply_heard();
    }

    /// The live reply says sorry instead of more tool rounds.
    pub fn apologize(&mut self) {
        self.speak_sentence(APOLOGY.to_string());
        self.complete_reply_text();
        self.check_reply_heard();
    }

    /// Ends the call once what is already queued has been heard. False when nothing is queued.
    pub fn then_after_current(&mut self, after: After) -> bool {
        let Some(reply) = &mut self.reply else { return false };
        reply.after = after;
        self.llm = None;
        self.complete_reply_text();
        self.check_reply_heard();
        true
    }

    fn set_reply(&mut self, reply: Reply) {
        self.generation += 1;
        self.reply_span = tracing::info_span!("reply", n = self.generation, held = reply.is_held());
        self.reply = Some(reply);
    }

    // ----- held replies ------------------------------------------------------------------

    /// The turn ended as predicted: play what was prepared. Returns the tool calls the held
    /// reply asked for, which run only now.
    pub async fn commit_held(&mut self, speech_ended: Option<Instant>, stt_final_ms: Option<f64>) -> Vec<ToolCall> {
        let Some(reply) = self.reply.as_mut().filter(|r| r.is_held()) else { return Vec::new() };
        Metrics::inc(&self.metrics.speculative_replies, "result", "used");
        reply.speech_ended = speech_ended.or(reply.speech_ended);
        reply.turn_ended = Some(Instant::now());
        reply.stt_final_ms = stt_final_ms;
        let Delivery::Held(held) = std::mem::replace(&mut reply.delivery, Delivery::Live) else {
            return Vec::new();
        };
        let parked = reply.parked_tools.take();
        for out in held {
            self.emit(out).await;
        }
        match parked {
            Some(calls) => calls,
            None => {
                self.check_reply_heard();
                Vec::new()
            }
        }
    }

    /// Drops a held reply and everything feeding it; nothing of it was played.
    pub fn discard_held(&mut self) {
        if !self.has_held_reply() {
            return;
        }
        self.reply = None;
        self.stop_work();
        Metrics::inc(&self.metrics.speculative_replies, "result", "discarded");
    }

    // ----- barge-in --------------------------------------------------------------------

    /// Cuts the live reply short if the caller may interrupt it: `clear` to the transport,
    /// LLM and TTS stopped. Returns what was cut (a held reply is left alone).
    pub async fn barge_in(&mut self) -> Option<CutReply> {
        if !self.reply.as_ref().is_some_and(|r| r.interruptible() && !r.is_held()) {
            return None;
        }
        let reply = self.reply.take()?;
        self.stop_work();
        self.emit(CallOutput::Clear).await;
        self.metrics.barge_ins.inc();
        let cut = CutReply { heard: reply.heard_text(), said: reply.full_text(), started_ms: reply.started_ms };
        info!(heard = %cut.heard, said = %cut.said, "barge-in");
        Some(cut)
    }

    /// Stops everything feeding the current reply: the LLM stream, sentence splitting, one-shot
    /// syntheses and the TTS stream's queued text.
    fn stop_work(&mut self) {
        self.llm = None;
        self.splitter = SentenceSplitter::default();
        self.synth = FuturesOrdered::new();
        self.open_unit = None;
        if let Some(tts) = &self.tts {
            tts.clear();
        }
    }

    /// Forgets the reply without a word to the transport (the bot can't speak any more).
    fn drop_reply(&mut self) {
        self.reply = None;
        self.stop_work();
    }

    // ----- what the transport reports ----------------------------------------------------

    /// A mark came back: Twilio returns marks in order, so it vouches for every earlier
    /// utterance too.
    pub fn on_mark(&mut self, name: &str) {
        let Some(id) = parse_mark(name) else { return };
        if let Some(reply) = &mut self.reply {
            for u in reply.utterances.iter_mut().filter(|u| u.id <= id) {
                u.heard = true;
            }
        }
        self.check_reply_heard();
    }

    /// A frame of bot audio was sent: the first one of a reply ends its voice-to-voice time.
    pub fn on_audio_sent(&mut self, now: Instant) {
        let Some(reply) = self.reply.as_mut().filter(|r| !r.is_held()) else { return };
        if !reply.audio_started {
            reply.audio_started = true;
            reply.first_audio_sent = Some(now);
            if let Some(end) = reply.speech_ended {
                self.metrics.voice_to_voice.observe(now.saturating_duration_since(end).as_secs_f64());
            }
        }
    }

    // ----- sentences → TTS ---------------------------------------------------------------

    fn speak_sentence(&mut self, text: String) {
        if self.reply.is_none() {
            return;
        }
        let now = Instant::now();
        if let (Some(id), Some(tts)) = (self.open_unit, self.tts.as_ref().filter(|t| t.is_open())) {
            // Over the flush budget: this sentence joins the reply's open unit.
            tts.speak(id, text.clone());
            if let Some(u) = self.reply.as_mut().and_then(|r| r.utterance_mut(id)) {
                u.text.push(' ');
                u.text.push_str(&text);
            }
            return;
        }
        let id = ReplyId(self.next_unit);
        self.next_unit += 1;
        if let Some(reply) = &mut self.reply {
            reply.utterances.push(Utterance { id, text: text.clone(), sent_at: now, first_audio: None, heard: false });
        }
        // A stream that failed for good (e.g. a revoked key) takes no more text: synthesize instead.
        match self.tts.as_ref().filter(|t| t.is_open()) {
            Some(tts) => {
                tts.speak(id, text);
                if !tts.try_flush(id) {
                    self.open_unit = Some(id);
                }
            }
            None => self.synthesize_fallback(id, text),
        }
    }

    /// The reply's text is complete: flush a unit left open by the flush budget.
    fn complete_reply_text(&mut self) {
        if let (Some(id), Some(tts)) = (self.open_unit.take(), &self.tts) {
            tts.flush(id);
        }
        if let Some(r) = &mut self.reply {
            r.text_complete = true;
        }
    }

    fn synthesize_fallback(&mut self, id: ReplyId, text: String) {
        let tts = self.tts_provider.clone();
        let options = TtsOptions { voice: Some(self.voice.clone()) };
        self.synth.push_back(Box::pin(async move {
            let result = tts.synthesize(text, options).await.map(|b| b.to_vec()).map_err(|e| e.to_string());
            (id, result)
        }));
    }

    async fn emit(&mut self, out: CallOutput) {
        // The transport only goes away when the call ends; the coordinator sees that on its input.
        let _ = self.out.send(out).await;
    }

    /// Sends the current reply's audio or mark, or keeps it while the reply is held.
    async fn emit_reply(&mut self, out: CallOutput) {
        if let Some(Delivery::Held(held)) = self.reply.as_mut().map(|r| &mut r.delivery) {
            held.push(out);
            return;
        }
        self.emit(out).await;
    }

    /// Once the whole live reply has been heard: hand it to the coordinator.
    fn check_reply_heard(&mut self) {
        if !self.reply.as_ref().is_some_and(|r| r.all_heard() && !r.is_held()) || self.llm.is_some() {
            return;
        }
        let Some(reply) = self.reply.take() else { return };
        let latency = TurnLatency {
            stt_final_ms: reply.stt_final_ms,
            endpoint_ms: ms_between(reply.speech_ended, reply.turn_ended),
            llm_first_token_ms: ms_between(reply.llm_requested, reply.llm_first_token),
            tts_first_byte_ms: reply.utterances.first().and_then(|u| ms_between(Some(u.sent_at), u.first_audio)),
            voice_to_voice_ms: ms_between(reply.speech_ended, reply.first_audio_sent),
        };
        self.ready.push_back(SpeakEvent::Finished(FinishedReply {
            text: reply.full_text(),
            started_ms: reply.started_ms,
            latency,
            after: reply.after,
        }));
    }

    /// Ends the TTS stream (the call is over).
    pub fn close(&mut self) {
        if let Some(tts) = self.tts.take() {
            tts.close();
        }
    }
}

fn ms_between(a: Option<Instant>, b: Option<Instant>) -> Option<f64> {
    Some(b?.checked_duration_since(a?)?.as_secs_f64() * 1000.0)
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_llm(stream: &mut Option<LlmStream>) -> Option<Result<LlmEvent, LlmError>> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The next one-shot synthesis, in request order.
async fn next_synth(futs: &mut FuturesOrdered<SynthFuture>) -> (ReplyId, Result<Vec<u8>, String>) {
    match futs.next().await {
        Some(out) => out,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
