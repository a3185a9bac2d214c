//! The conversation engine: one session per call tying the audio engine (denoise, VAD, Smart
//! Turn), the providers (STT, LLM, TTS) and the persona together.
//!
//! Everything shared between calls lives in [`ConversationDeps`] and is read-only or internally
//! batched (the VAD and Smart Turn engines); each call owns its own state, so no lock is shared
//! on the audio path and one call's failure stays in its task.

mod build;
mod dtmf;
mod reply;
mod session;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;

use tracing::Instrument;

use super::persona::PersonaProvider;
use super::{CallInfo, SessionFactory, SessionFuture, SessionIo};
use crate::audio::turn::SmartTurnHandle;
use crate::audio::vad::VadEngine;
use crate::metrics::Metrics;
use crate::services::llm::ChatModel;
use crate::services::stt::SpeechToText;
use crate::services::tts::TextToSpeech;

pub use build::build;
pub use dtmf::tones as dtmf_tones;

/// What every call's session shares.
pub struct ConversationDeps {
    pub vad: Arc<VadEngine>,
    pub smart_turn: SmartTurnHandle,
    pub stt: Arc<dyn SpeechToText>,
    pub llm: Arc<dyn ChatModel>,
    pub tts: Arc<dyn TextToSpeech>,
    pub personas: Arc<dyn PersonaProvider>,
    pub metrics: Arc<Metrics>,
    /// Where recordings and transcripts go (`RECORDINGS_DIR`).
    pub recordings_dir: PathBuf,
}

/// Starts a conversation session per call.
#[derive(Clone)]
pub struct Conversation {
    deps: Arc<ConversationDeps>,
}

impl Conversation {
    pub fn new(deps: ConversationDeps) -> Self {
        Self { deps: Arc::new(deps) }
    }
}

impl SessionFactory for Conversation {
    fn start(&self, info: CallInfo, io: SessionIo) -> SessionFuture {
        let deps = self.deps.clone();
        Box::pin(session::run(deps, info, io).in_current_span())
    }

    fn persona_names(&self) -> Vec<String> {
        self.deps.personas.names()
    }
}
