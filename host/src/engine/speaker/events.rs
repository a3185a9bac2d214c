//! What the speaker's providers report: LLM deltas and tool calls, TTS audio, flushes and
//! failures (retried one-shot), and one-shot results.

use std::time::Instant;

use tracing::warn;

use super::reply::{mark_name, Utterance};
use super::sentences::SentenceSplitter;
use super::{SpeakEvent, Speaker, APOLOGY, MAX_SYNTH_FAILURES};
use crate::call::CallOutput;
use crate::services::llm::{LlmError, LlmEvent};
use crate::services::tts::{ReplyId, TtsEvent};

impl Speaker {
    pub(super) async fn on_llm(&mut self, ev: Option<Result<LlmEvent, LlmError>>) {
        let now = Instant::now();
        if let Some(reply) = &mut self.reply {
            if reply.llm_first_token.is_none() && ev.as_ref().is_some_and(|e| e.is_ok()) {
                reply.llm_first_token = Some(now);
                if let Some(req) = reply.llm_requested {
                    self.metrics.llm_first_token.observe(now.saturating_duration_since(req).as_secs_f64());
                }
            }
        }
        match ev {
            Some(Ok(LlmEvent::TextDelta(delta))) => {
                for sentence in self.splitter.push(&delta) {
                    self.speak_sentence(sentence);
                }
            }
            Some(Ok(LlmEvent::ToolCalls(calls))) => {
                self.llm = None;
                // Words before the tool call are a sentence of their own.
                if let Some(before) = self.splitter.finish() {
                    self.speak_sentence(before);
                }
                // Tools act on the world: a held reply runs them only once confirmed.
                if let Some(reply) = self.reply.as_mut().filter(|r| r.is_held()) {
                    reply.parked_tools = Some(calls);
                    return;
                }
                self.ready.push_back(SpeakEvent::ToolCalls(calls));
            }
            Some(Ok(LlmEvent::Done { .. })) | None => {
                self.llm = None;
                if let Some(last) = self.splitter.finish() {
                    self.speak_sentence(last);
                }
                self.complete_reply_text();
                self.check_reply_heard();
            }
            Some(Err(e)) if self.has_held_reply() => {
                // Nothing was said yet: the confirmed turn asks again.
                self.metrics.provider_error("llm", e.kind().as_str());
                warn!(error = %e, "LLM failed on a speculative reply");
                self.ready.push_back(SpeakEvent::HeldFailed);
            }
            Some(Err(e)) => {
                self.llm = None;
                self.metrics.provider_error("llm", e.kind().as_str());
                warn!(error = %e, "LLM failed; apologising");
                self.splitter = SentenceSplitter::default();
                let spoken = self.reply.as_ref().is_some_and(|r| !r.utterances.is_empty());
                if !spoken {
                    self.speak_sentence(APOLOGY.to_string());
                }
                self.complete_reply_text();
                self.check_reply_heard();
            }
        }
    }

    pub(super) async fn on_tts(&mut self, ev: TtsEvent) {
        match ev {
            TtsEvent::Audio { reply: id, audio, received_at } => {
                let Some(reply) = &mut self.reply else { return };
                let Some(u) = reply.utterance_mut(id) else { return };
                if u.first_audio.is_none() {
                    u.first_audio = Some(received_at.into_std());
                    let waited = received_at.into_std().saturating_duration_since(u.sent_at);
                    self.metrics.tts_first_byte.observe(waited.as_secs_f64());
                }
                self.emit_reply(CallOutput::Audio(audio.to_vec())).await;
            }
            TtsEvent::Flushed { reply: id, .. } => {
                if self.reply.as_ref().is_some_and(|r| r.owns(id)) {
                    self.emit_reply(CallOutput::Mark(mark_name(id))).await;
                }
            }
            TtsEvent::Failed { replies, error } => {
                self.metrics.provider_error("tts", error.kind().as_str());
                warn!(error = %error, "text-to-speech failed; retrying with one-shot synthesis");
                let (retry, partial): (Vec<&Utterance>, Vec<&Utterance>) = match &self.reply {
                    Some(r) => {
                        r.utterances.iter().filter(|u| replies.contains(&u.id)).partition(|u| u.first_audio.is_none())
                    }
                    None => (Vec::new(), Vec::new()),
                };
                let retry: Vec<(ReplyId, String)> = retry.into_iter().map(|u| (u.id, u.text.clone())).collect();
                let partial: Vec<ReplyId> = partial.into_iter().map(|u| u.id).collect();
                for (id, text) in retry {
                    self.synthesize_fallback(id, text);
                }
                // Utterances cut mid-way will get no Flushed: mark them after what did arrive.
                for id in partial {
                    self.emit_reply(CallOutput::Mark(mark_name(id))).await;
                }
            }
            TtsEvent::Disconnected { reason, kind } => {
                self.metrics.provider_error("tts", kind.as_str());
                warn!(%reason, "text-to-speech dropped; reconnecting");
            }
            TtsEvent::Cleared { .. } | TtsEvent::Reconnected { .. } | TtsEvent::Warning { .. } => {}
        }
    }

    pub(super) async fn on_synthesized(&mut self, id: ReplyId, result: Result<Vec<u8>, String>) {
        if !self.reply.as_ref().is_some_and(|r| r.owns(id)) {
            return;
        }
        match result {
            Ok(audio) => {
                self.synth_failures = 0;
                self.emit_reply(CallOutput::Audio(audio)).await;
                self.emit_reply(CallOutput::Mark(mark_name(id))).await;
            }
            Err(e) => {
                self.metrics.provider_error("tts", "fallback");
                self.synth_failures += 1;
                if self.synth_failures >= MAX_SYNTH_FAILURES {
                    warn!(error = %e, "text-to-speech keeps failing");
                    self.drop_reply();
                    self.ready.push_back(SpeakEvent::Mute);
                    return;
                }
                // Skip this sentence (a later mark or this one covers it) and carry on.
                warn!(error = %e, "text-to-speech retry failed; skipping the sentence");
                self.emit_reply(CallOutput::Mark(mark_name(id))).await;
            }
        }
    }
}
