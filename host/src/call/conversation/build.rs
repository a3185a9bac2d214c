//! Builds the shared engines and provider clients from the configuration, once per process.

use std::sync::Arc;

use anyhow::Context as _;

use super::{Conversation, ConversationDeps};
use crate::audio::models::ModelPaths;
use crate::audio::turn::{SmartTurnConfig, SmartTurnEngine};
use crate::audio::vad::{VadEngine, VadEngineConfig};
use crate::call::persona::PersonaProvider;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::services::llm::openai_compat::{OpenAiCompat, OpenAiCompatConfig};
use crate::services::stt::deepgram::{DeepgramStt, DeepgramSttConfig};
use crate::services::tts::deepgram::{DeepgramTts, DeepgramTtsConfig};

/// Loads the models (one shared Silero and one Smart Turn session for every call) and the
/// provider clients. Fails with the missing file's name and the fix when a model is absent.
pub fn build(
    config: &Config,
    models: &ModelPaths,
    personas: Arc<dyn PersonaProvider>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Conversation> {
    models.check().context("models")?;
    let vad = VadEngine::start(models, VadEngineConfig::default()).context("starting Silero VAD")?;
    let smart_turn = SmartTurnEngine::start(models, SmartTurnConfig::default()).context("starting Smart Turn")?;
    let groq_key = config.groq_api_key.clone().unwrap_or_default();
    let deepgram_key = config.deepgram_api_key.clone().unwrap_or_default();
    let llm =
        OpenAiCompat::new(OpenAiCompatConfig::new(config.groq_base_url.clone(), groq_key)).context("LLM client")?;
    let stt = DeepgramStt::new(DeepgramSttConfig::new(config.deepgram_base_url.clone(), deepgram_key.clone()));
    let tts = DeepgramTts::new(DeepgramTtsConfig::new(config.deepgram_base_url.clone(), deepgram_key))
        .context("TTS client")?;
    Ok(Conversation::new(ConversationDeps {
        vad: Arc::new(vad),
        // The worker thread lives as long as any handle; the engine itself can go.
        smart_turn: smart_turn.handle(),
        stt: Arc::new(stt),
        llm: Arc::new(llm),
        tts: Arc::new(tts),
        personas,
        metrics,
        recordings_dir: config.recordings_dir.clone(),
    }))
}
