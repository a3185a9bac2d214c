//! One bot reply: its sentences (each its own TTS unit with its own mark), which of them the
//! caller has heard, and what to do once all of it has been heard.

use std::time::Instant;

use crate::call::CallOutput;
use crate::services::tts::ReplyId;

/// What happens once the caller has heard the whole reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    Listen,
    HangUp(String),
    Transfer(String),
}

/// How a reply reaches the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Audio and marks go to the transport as they are made.
    Live,
    /// A speculative reply: what it would send is kept until the turn is confirmed.
    Held(Vec<CallOutput>),
}

/// One sentence on its way to the caller.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub id: ReplyId,
    pub text: String,
    pub sent_at: Instant,
    pub first_audio: Option<Instant>,
    pub heard: bool,
}

/// A reply in progress.
#[derive(Debug)]
pub struct Reply {
    pub utterances: Vec<Utterance>,
    /// No more sentences will be added.
    pub text_complete: bool,
    pub after: After,
    /// When the caller's speech that this reply answers ended (for voice-to-voice latency).
    pub speech_ended: Option<Instant>,
    pub llm_requested: Option<Instant>,
    /// Speech end → the turn's final transcript, when this reply answers a spoken turn.
    pub stt_final_ms: Option<f64>,
    /// When the caller's turn was judged over (for a speculative reply, later than the request).
    pub turn_ended: Option<Instant>,
    /// Whether the caller hears it as it is made, or it is held until the turn is confirmed.
    pub delivery: Delivery,
    /// Tool calls a speculative reply asked for; run only once the turn is confirmed.
    pub parked_tools: Option<Vec<crate::services::llm::ToolCall>>,
    pub llm_first_token: Option<Instant>,
    pub first_audio_sent: Option<Instant>,
    /// Set when an audio frame of this reply has been reported sent.
    pub audio_started: bool,
    pub started_ms: u64,
}

/// The mark name for an utterance.
pub fn mark_name(id: ReplyId) -> String {
    format!("u{}", id.0)
}

/// The utterance a mark names, if it is one of ours.
pub fn parse_mark(name: &str) -> Option<ReplyId> {
    name.strip_prefix('u')?.parse().ok().map(ReplyId)
}

impl Reply {
    pub fn new(after: After, speech_ended: Option<Instant>, started_ms: u64) -> Self {
        Self {
            utterances: Vec::new(),
            text_complete: false,
            after,
            speech_ended,
            llm_requested: None,
            stt_final_ms: None,
            turn_ended: None,
            delivery: Delivery::Live,
            parked_tools: None,
            llm_first_token: None,
            first_audio_sent: None,
            audio_started: false,
            started_ms,
        }
    }

    pub fn utterance_mut(&mut self, id: ReplyId) -> Option<&mut Utterance> {
        self.utterances.iter_mut().find(|u| u.id == id)
    }

    pub fn owns(&self, id: ReplyId) -> bool {
        self.utterances.iter().any(|u| u.id == id)
    }

    /// Everything has been said and heard.
    pub fn all_heard(&self) -> bool {
        self.text_complete && self.utterances.iter().all(|u| u.heard)
    }

    /// The sentences the caller heard, for the context after a barge-in.
    pub fn heard_text(&self) -> String {
        join(self.utterances.iter().filter(|u| u.heard).map(|u| u.text.as_str()))
    }

    pub fn full_text(&self) -> String {
        join(self.utterances.iter().map(|u| u.text.as_str()))
    }

    /// A speculative reply not yet confirmed.
    pub fn is_held(&self) -> bool {
        matches!(self.delivery, Delivery::Held(_))
    }

    /// May the caller cut this reply short? Goodbyes and transfer announcements play out.
    pub fn interruptible(&self) -> bool {
        self.after == After::Listen
    }
}

fn join<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    parts.collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_heard_text_stops_at_the_interruption() {
        assert_eq!(parse_mark(&mark_name(ReplyId(42))), Some(ReplyId(42)));
        assert_eq!(parse_mark("greeting"), None);
        let now = Instant::now();
        let mut r = Reply::new(After::Listen, None, 0);
        for (i, t) in ["One.", "Two.", "Three."].iter().enumerate() {
            r.utterances.push(Utterance {
                id: ReplyId(i as u64),
                text: t.to_string(),
                sent_at: now,
                first_audio: None,
                heard: false,
            });
        }
        r.text_complete = true;
        r.utterance_mut(ReplyId(0)).unwrap().heard = true;
        assert_eq!(r.heard_text(), "One.");
        assert_eq!(r.full_text(), "One. Two. Three.");
        assert!(!r.all_heard());
        r.utterances.iter_mut().for_each(|u| u.heard = true);
        assert!(r.all_heard());
    }
}
