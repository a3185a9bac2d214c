//! The composition root: the one place that reads the configuration and names the concrete
//! providers (Deepgram, Groq, or the local models) and persona sources, and wires them into the engine.

use std::sync::Arc;

use anyhow::Context as _;

use crate::audio::models::ModelPaths;
use crate::audio::turn::{SmartTurnConfig, SmartTurnEngine};
use crate::audio::vad::{VadEngine, VadEngineConfig};
use crate::config::{Config, ProviderKind, Providers};
use crate::engine::{Conversation, EngineDeps};
use crate::metrics::Metrics;
use crate::persona::{BuiltinProvider, PersonaProvider, PluginHost, PluginHostConfig};
use crate::services::llm::openai_compat::{OpenAiCompat, OpenAiCompatConfig};
use crate::services::llm::ChatModel;
use crate::services::stt::deepgram::{DeepgramStt, DeepgramSttConfig};
use crate::services::stt::local::{LocalStt, LocalSttConfig};
use crate::services::stt::SpeechToText;
use crate::services::tts::deepgram::{DeepgramTts, DeepgramTtsConfig};
use crate::services::tts::piper::{PiperConfig, PiperTts};
use crate::services::tts::TextToSpeech;

/// The local recognizer's folder under `LOCAL_MODELS_DIR` (`models/fetch-stt.sh`).
const LOCAL_STT_DIR: &str = "moonshine-base-en";

/// The conversation engine and where each stage actually runs (a local model that could not
/// load falls back to the cloud provider unless the choice was explicit).
pub struct Composed {
    pub conversation: Conversation,
    pub providers: Providers,
}

/// Loads the models (one shared Silero and one Smart Turn session for every call) and the
/// provider clients. Fails with the missing file's name and the fix when a model is absent.
pub fn conversation(
    config: &Config,
    models: &ModelPaths,
    personas: Arc<dyn PersonaProvider>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Composed> {
    models.check().context("models")?;
    let vad = VadEngine::start(models, VadEngineConfig::default()).context("starting Silero VAD")?;
    let smart_turn = SmartTurnEngine::start(models, SmartTurnConfig::default()).context("starting Smart Turn")?;
    let mut actual = config.providers;
    let stt = stt(config, models, &mut actual.stt)?;
    let llm = llm(config, &mut actual.llm)?;
    let tts = tts(config, models, &mut actual.tts)?;
    tracing::info!(stt = actual.stt.as_str(), llm = actual.llm.as_str(), tts = actual.tts.as_str(), "providers");
    let conversation = Conversation::new(EngineDeps {
        vad: Arc::new(vad),
        // The worker thread lives as long as any handle; the engine itself can go.
        smart_turn: smart_turn.handle(),
        stt,
        llm,
        tts,
        personas,
        metrics,
        recordings_dir: config.recordings_dir.clone(),
    });
    Ok(Composed { conversation, providers: actual })
}

/// A local model that could not load: an error when it was asked for by name, otherwise a
/// warning and the cloud provider (which needs its key).
fn unavailable(config: &Config, stage: &str, error: anyhow::Error, kind: &mut ProviderKind) -> anyhow::Result<()> {
    if config.providers.forced {
        return Err(error.context(format!("the local {stage} was asked for but can't start")));
    }
    tracing::warn!(error = format!("{error:#}"), "local {stage} unavailable: using the cloud provider");
    *kind = ProviderKind::Cloud;
    Ok(())
}

fn stt(config: &Config, models: &ModelPaths, kind: &mut ProviderKind) -> anyhow::Result<Arc<dyn SpeechToText>> {
    if *kind == ProviderKind::Local {
        let mut local = LocalSttConfig::in_models_dir(".");
        local.model_dir = config.local_models_dir.join(LOCAL_STT_DIR);
        local.ort_dylib = models.ort_dylib.clone();
        match LocalStt::open(local) {
            Ok(stt) => return Ok(Arc::new(stt)),
            Err(e) => unavailable(config, "speech recognition", e.into(), kind)?,
        }
    }
    let key = config.deepgram_api_key.clone().unwrap_or_default();
    Ok(Arc::new(DeepgramStt::new(DeepgramSttConfig::new(config.deepgram_base_url.clone(), key))))
}

fn tts(config: &Config, models: &ModelPaths, kind: &mut ProviderKind) -> anyhow::Result<Arc<dyn TextToSpeech>> {
    if *kind == ProviderKind::Local {
        let mut local = PiperConfig::in_dir(&config.local_models_dir);
        local.ort_dylib = models.ort_dylib.clone();
        match PiperTts::open(local) {
            Ok(tts) => return Ok(Arc::new(tts)),
            Err(e) => unavailable(config, "speech synthesis", e.into(), kind)?,
        }
    }
    let key = config.deepgram_api_key.clone().unwrap_or_default();
    Ok(Arc::new(DeepgramTts::new(DeepgramTtsConfig::new(config.deepgram_base_url.clone(), key)).context("TTS client")?))
}

fn llm(config: &Config, kind: &mut ProviderKind) -> anyhow::Result<Arc<dyn ChatModel>> {
    if *kind == ProviderKind::Local {
        match local_llm(config) {
            Ok(llm) => return Ok(llm),
            Err(e) => unavailable(config, "LLM", e, kind)?,
        }
    }
    let key = config.groq_api_key.clone().unwrap_or_default();
    Ok(Arc::new(OpenAiCompat::new(OpenAiCompatConfig::new(config.groq_base_url.clone(), key)).context("LLM client")?))
}

#[cfg(feature = "local-llm")]
fn local_llm(config: &Config) -> anyhow::Result<Arc<dyn ChatModel>> {
    use crate::services::llm::local::{LocalLlm, LocalLlmConfig, MODEL_FILE};
    let mut local = LocalLlmConfig::from_env().context("local LLM settings")?;
    if std::env::var_os("LOCAL_LLM_MODEL").is_none() {
        local.model_path = config.local_models_dir.join(MODEL_FILE);
    }
    let llm = Arc::new(LocalLlm::open(local).context("loading the local LLM")?);
    // Evaluate the built-in persona's prompt now (the worker caches one prefix): the first
    // call's first token then takes ~0.2 s instead of ~2.5 s. In the background, so the server
    // listens at once.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let warm = llm.clone();
        runtime.spawn(async move {
            match warm.warm_up(crate::persona::BuiltinPersona::inbound_prompt(), &[]).await {
                Ok(w) => {
                    tracing::info!(tokens = w.tokens, elapsed_ms = w.elapsed.as_millis() as u64, "local LLM warmed up")
                }
                Err(e) => tracing::warn!(error = %e, "local LLM warm-up failed"),
            }
        });
    }
    Ok(llm)
}

#[cfg(not(feature = "local-llm"))]
fn local_llm(_config: &Config) -> anyhow::Result<Arc<dyn ChatModel>> {
    anyhow::bail!("this build has no local LLM (built without the `local-llm` feature)")
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
