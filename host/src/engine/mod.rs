//! The conversation engine: one session per call tying the inbound audio pipeline, the
//! providers (STT, LLM, TTS) and the persona together, in three parts a newcomer can hold:
//!
//! - the [`listener`] hears the caller (pipeline, STT, turn tracking) and reports turns;
//! - the [`speaker`] talks (LLM stream, sentences, TTS, held replies, barge-in);
//! - the [`coordinator`] maps what they report, and what the persona's [`hooks`] answer, to
//!   what happens next.
//!
//! Everything shared between calls lives in [`EngineDeps`] and is read-only or internally
//! batched (the VAD and Smart Turn engines); each call owns its own state, so no lock is shared
//! on the audio path and one call's failure stays in its task.

pub mod context;
pub mod coordinator;
pub mod echo;
pub mod hooks;
pub mod listener;
pub mod speaker;
#[cfg(test)]
mod testing;
pub mod turn_analysis;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tracing::{info, warn, Instrument};

use crate::audio::pipeline::{InboundPipeline, PipelineParams};
use crate::audio::turn::SmartTurnHandle;
use crate::audio::vad::{VadEngine, VadRate};
use crate::call::events::CallEvent;
use crate::call::{CallInfo, SessionFactory, SessionFuture, SessionIo};
use crate::metrics::Metrics;
use crate::persona::PersonaProvider;
use crate::services::llm::ChatModel;
use crate::services::stt::{SpeechToText, SttOptions};
use crate::services::tts::{TextToSpeech, TtsOptions};
use coordinator::{Coordinator, CoordinatorParts};
use hooks::Hooks;
use listener::Listener;
use speaker::{Speaker, SpeakerParts};
use writer::CallWriter;

/// What every call's session shares.
pub struct EngineDeps {
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
    deps: Arc<EngineDeps>,
}

impl Conversation {
    pub fn new(deps: EngineDeps) -> Self {
        Self { deps: Arc::new(deps) }
    }
}

impl SessionFactory for Conversation {
    fn start(&self, info: CallInfo, io: SessionIo) -> SessionFuture {
        let deps = self.deps.clone();
        Box::pin(run(deps, info, io).in_current_span())
    }

    fn persona_names(&self) -> Vec<String> {
        self.deps.personas.names()
    }
}

/// Runs one call to its end: the persona's setup (the one hook awaited before the call
/// starts — it decides every turn-taking value), the providers' streams, then the coordinator.
async fn run(deps: Arc<EngineDeps>, info: CallInfo, io: SessionIo) {
    let started = Instant::now();
    let mut persona = deps.personas.persona_for(&info);
    let setup = persona.setup(&info).await;
    let identity = persona.identity();
    io.events.emit(CallEvent::Persona { name: identity.name, version: identity.version });
    info!(voice = %setup.voice, model = %setup.llm_model, tools = setup.tools.len(), "conversation starting");
    let tt = &setup.turn_taking;
    let pipeline = InboundPipeline::new(
        deps.vad.stream(VadRate::Hz8000, tt.vad),
        deps.smart_turn.clone(),
        PipelineParams { vad: tt.vad, turn: tt.turn, denoise: tt.denoise },
    );
    let turns = listener::turn_tracker(tt);
    let (stt, tts) = tokio::join!(
        deps.stt.connect(SttOptions::default()),
        deps.tts.connect(TtsOptions { voice: Some(setup.voice.clone()) })
    );
    let stt = stt
        .inspect_err(|e| {
            deps.metrics.provider_error("stt", e.kind().as_str());
            warn!(error = %e, "speech-to-text unavailable: the caller can't be understood");
        })
        .ok();
    let tts = tts
        .inspect_err(|e| {
            deps.metrics.provider_error("tts", e.kind().as_str());
            warn!(error = %e, "streaming text-to-speech unavailable: using one-shot synthesis");
        })
        .ok();
    let writer = CallWriter::start(&deps.recordings_dir, &info.call_sid, SystemTime::now(), setup.record)
        .inspect_err(
            |e| warn!(error = %e, dir = %deps.recordings_dir.display(), "no recording or transcript for this call"),
        )
        .ok();
    io.events.emit(CallEvent::Files {
        recording: writer.as_ref().and_then(|w| w.recording_path.clone()),
        transcript: writer.as_ref().map(|w| w.transcript_path.clone()),
    });
    let listener = Listener::new(pipeline, stt, turns, tt.speculative_replies, deps.metrics.clone());
    let speaker = Speaker::new(SpeakerParts {
        out: io.output.clone(),
        llm: deps.llm.clone(),
        tts: deps.tts.clone(),
        stream: tts,
        voice: setup.voice.clone(),
        metrics: deps.metrics.clone(),
        started,
    });
    let coordinator = Coordinator::new(CoordinatorParts {
        listener,
        speaker,
        hooks: Hooks::spawn(persona),
        setup,
        out: io.output,
        events: io.events,
        writer,
        started,
    });
    coordinator.run(io.input).await;
}
