//! The composition root: the one place that reads the configuration and names the concrete
//! providers (Deepgram, Groq) and persona sources, and wires them into the engine.

use std::sync::Arc;

use anyhow::Context as _;

use crate::audio::models::ModelPaths;
use crate::audio::turn::{SmartTurnConfig, SmartTurnEngine};
use crate::audio::vad::{VadEngine, VadEngineConfig};
use crate::config::Config;
use crate::engine::{Conversation, EngineDeps};
use crate::metrics::Metrics;
use crate::persona::{BuiltinProvider, PersonaProvider, PluginHost, PluginHostConfig};
use crate::services::llm::openai_compat::{OpenAiCompat, OpenAiCompatConfig};
use crate::services::stt::deepgram::{DeepgramStt, DeepgramSttConfig};
use crate::services::tts::deepgram::{DeepgramTts, DeepgramTtsConfig};

/// Loads the models (one shared Silero and one Smart Turn session for every call) and the
/// provider clients. Fails with the missing file's name and the fix when a model is absent.
pub fn conversation(
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
    Ok(Conversation::new(EngineDeps {
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

/// Persona plugins from `PERSONAS_DIR` when that directory exists, else the built-in persona.
pub async fn personas(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<dyn PersonaProvider>> {
    if !config.personas_dir.is_dir() {
        tracing::info!(dir = %config.personas_dir.display(), "no personas directory: every call gets the built-in persona");
        return Ok(Arc::new(BuiltinProvider));
    }
    let cfg = PluginHostConfig::new(config.personas_dir.clone());
    let host = tokio::task::spawn_blocking(move || PluginHost::start(cfg, metrics))
        .await
        .context("starting the plugin host")?
        .context("starting the plugin host")?;
    Ok(host)
}
