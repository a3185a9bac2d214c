//! In-process chat model (no account, no network): a GGUF model on llama.cpp.
//!
//! [`LocalLlm::open`] loads the model once (memory-mapped) and starts one inference thread that
//! every call shares through a bounded queue; [`ChatModel::stream_chat`] streams the reply token
//! by token with the same events as the hosted providers. Dropping the stream stops generation
//! at the next token (barge-in). The conversation is rendered with the model's own chat template,
//! tools included, and `<tool_call>` replies become [`ToolCall`](super::ToolCall)s.
//!
//! Files: `bash models/fetch-llm.sh` puts the model in `models/local/` (see `docs/local-llm.md`).

mod prompt;
mod reply;
#[cfg(test)]
mod tests;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use tokio::sync::{mpsc, oneshot};

use self::prompt::ChatTemplate;
use self::worker::Job;
use super::{ChatMessage, ChatModel, ChatRequest, LlmError, LlmEvent, LlmStream, ToolSpec};

/// The conversation model's file under `models/local/` (fetched by `models/fetch-llm.sh`).
pub const MODEL_FILE: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// Where it lives under the models directory.
pub const MODEL_SUBDIR: &str = "local";

/// Everything the local LLM needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalLlmConfig {
    /// A GGUF file with a chat template.
    pub model_path: PathBuf,
    /// llama.cpp threads for prompt evaluation and generation.
    pub threads: usize,
    /// The context (KV cache) size: prompt plus reply. Older turns are dropped to fit.
    pub context_tokens: u32,
    /// The longest reply; a request's `max_tokens` can only lower it.
    pub max_reply_tokens: u32,
    /// Requests that may wait for the worker; more are refused as rate limited.
    pub queue_capacity: usize,
    /// Prompt tokens evaluated per llama.cpp batch; a dropped stream is noticed between batches.
    pub prefill_chunk: u32,
    /// When the request sets none. Zero samples greedily.
    pub temperature: f32,
    pub seed: u32,
}

impl LocalLlmConfig {
    /// The conversation model in `models_dir/local/`, and the defaults measured on a 2-core
    /// machine (see `docs/local-llm.md`).
    pub fn in_models_dir(models_dir: impl AsRef<Path>) -> Self {
        Self {
            model_path: models_dir.as_ref().join(MODEL_SUBDIR).join(MODEL_FILE),
            threads: 2,
            context_tokens: 4096,
            max_reply_tokens: 256,
            queue_capacity: 8,
            prefill_chunk: 128,
            temperature: 0.6,
            seed: 0x5eed,
        }
    }

    /// `$SWITCHBOARD_MODELS_DIR` (default `models`), with `$LOCAL_LLM_MODEL` (a GGUF path),
    /// `$LOCAL_LLM_THREADS` and `$LOCAL_LLM_CONTEXT` overriding the defaults.
    pub fn from_env() -> Result<Self, LocalLlmError> {
        let dir =
            std::env::var_os("SWITCHBOARD_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"));
        let mut config = Self::in_models_dir(dir);
        if let Some(path) = std::env::var_os("LOCAL_LLM_MODEL") {
            config.model_path = PathBuf::from(path);
        }
        if let Some(threads) = env_number("LOCAL_LLM_THREADS")? {
            config.threads = threads;
        }
        if let Some(tokens) = env_number("LOCAL_LLM_CONTEXT")? {
            config.context_tokens = tokens;
        }
        Ok(config)
    }
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<Option<T>, LocalLlmError> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map(Some).map_err(|_| LocalLlmError::Config(format!("{name}={v:?} is not a number"))),
        Err(_) => Ok(None),
    }
}

/// Why the local LLM could not start or work.
#[derive(Debug, thiserror::Error)]
pub enum LocalLlmError {
    #[error("local LLM model file {} is missing: run `bash models/fetch-llm.sh` (it fetches the pinned GGUF into models/local/), or point LOCAL_LLM_MODEL at a GGUF file", path.display())]
    MissingModel { path: PathBuf },
    #[error("loading the local LLM model {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("the local LLM model {} has no usable chat template: {message}", path.display())]
    NoTemplate { path: PathBuf, message: String },
    #[error("local LLM chat template: {0}")]
    Template(String),
    #[error("initialising llama.cpp: {0}")]
    Backend(String),
    #[error("creating the local LLM context: {0}")]
    Context(String),
    #[error("starting the local LLM thread: {0}")]
    Thread(std::io::Error),
    #[error("local LLM inference: {0}")]
    Inference(String),
    #[error("the local LLM worker has stopped")]
    WorkerStopped,
    #[error("local LLM configuration: {0}")]
    Config(String),
}

/// What [`LocalLlm::warm_up`] evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmUp {
    /// Tokens of the prefix.
    pub tokens: usize,
    /// Of those, already in the cache (not evaluated again).
    pub reused: usize,
    pub elapsed: Duration,
}

/// llama.cpp's process-wide state: initialised once, its log lines sent to `tracing` (target
/// `llama-cpp-2`) instead of stderr.
fn backend() -> Result<&'static LlamaBackend, LocalLlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| LocalLlmError::Backend(e.clone()))
}

/// The local chat model: one model and one inference thread for every call. Cloning shares it;
/// the thread stops when the last clone is gone.
#[derive(Clone)]
pub struct LocalLlm {
    jobs: SyncSender<Job>,
    config: Arc<LocalLlmConfig>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for LocalLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLlm").field("model_path", &self.config.model_path).finish_non_exhaustive()
    }
}

impl LocalLlm {
    /// Loads the model and starts the inference thread. Blocks (well under a second with the
    /// file in the page cache, a few seconds from a cold disk): call it at startup or from
    /// `spawn_blocking`.
    pub fn open(config: LocalLlmConfig) -> Result<Self, LocalLlmError> {
        let span = tracing::info_span!("local_llm_open", model = %config.model_path.display());
        let _entered = span.enter();
        if config.context_tokens < 256
            || config.max_reply_tokens == 0
            || config.max_reply_tokens >= config.context_tokens
        {
            return Err(LocalLlmError::Config(format!(
                "context_tokens ({}) must be at least 256 and larger than max_reply_tokens ({}, at least 1)",
                config.context_tokens, config.max_reply_tokens
            )));
        }
        if config.queue_capacity == 0 || config.prefill_chunk == 0 || config.threads == 0 {
            return Err(LocalLlmError::Config("queue_capacity, prefill_chunk and threads must be at least 1".into()));
        }
        if !config.model_path.is_file() {
            return Err(LocalLlmError::MissingModel { path: config.model_path.clone() });
        }
        let started = Instant::now();
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, &config.model_path, &LlamaModelParams::default())
            .map_err(|e| LocalLlmError::Load { path: config.model_path.clone(), message: e.to_string() })?;
        let no_template = |message: String| LocalLlmError::NoTemplate { path: config.model_path.clone(), message };
        let source = model
            .chat_template(None)
            .map_err(|e| no_template(e.to_string()))?
            .to_string()
            .map_err(|e| no_template(e.to_string()))?;
        let vocab = model.vocab();
        let token_text = |t| String::from_utf8_lossy(&vocab.token_to_piece(t, true, None)).into_owned();
        let (bos, eos) = (token_text(vocab.bos()), token_text(vocab.eos()));
        let template = ChatTemplate::new(source, bos, eos).map_err(no_template)?;
        let parameters = model.n_params();
        let trained_context = model.n_ctx_train();
        let jobs = worker::start(Arc::new(model), template, &config)?;
        tracing::info!(
            parameters,
            trained_context,
            context_tokens = config.context_tokens,
            threads = config.threads,
            load_ms = started.elapsed().as_millis() as u64,
            "local LLM loaded"
        );
        Ok(Self { jobs, config: Arc::new(config), next_id: Arc::new(AtomicU64::new(1)) })
    }

    pub fn config(&self) -> &LocalLlmConfig {
        &self.config
    }

    /// Evaluates the system prompt (with the tools the calls will offer) into the cache, so a
    /// call's first reply only evaluates its own turns. Waits behind queued requests.
    pub async fn warm_up(&self, system_prompt: &str, tools: &[ToolSpec]) -> Result<WarmUp, LocalLlmError> {
        let (done, result) = oneshot::channel();
        let job = Job::WarmUp { messages: vec![ChatMessage::system(system_prompt)], tools: tools.to_vec(), done };
        let jobs = self.jobs.clone();
        // A full queue blocks the sender: wait on a blocking thread, not on the runtime.
        let queued = tokio::task::spawn_blocking(move || jobs.send(job).is_ok())
            .await
            .map_err(|e| LocalLlmError::Inference(format!("queueing the warm-up: {e}")))?;
        if !queued {
            return Err(LocalLlmError::WorkerStopped);
        }
        result.await.map_err(|_| LocalLlmError::WorkerStopped)?
    }

    /// Queues a request; the receiver yields its events.
    fn submit(&self, request: ChatRequest) -> Result<mpsc::Receiver<Result<LlmEvent, LlmError>>, LlmError> {
        if let Some(model) = request.model.as_deref() {
            tracing::debug!(model, "the local LLM has one model; the requested model is ignored");
        }
        let (events, rx) = mpsc::channel(64);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(Job::Chat { request, events, queued: Instant::now(), id }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(LlmError::RateLimited {
                message: format!("local LLM busy: {} requests already waiting", self.config.queue_capacity),
                retry_after: None,
            }),
            Err(TrySendError::Disconnected(_)) => Err(LlmError::Stream {
                message: "local LLM: the inference thread has stopped".into(),
                error_type: Some("local_llm".into()),
                code: None,
            }),
        }
    }
}

impl ChatModel for LocalLlm {
    fn stream_chat(&self, request: ChatRequest) -> LlmStream {
        let llm = self.clone();
        // Queued on first poll, as the trait promises; dropping the stream closes the receiver,
        // which the worker checks before every token.
        futures_util::stream::once(async move { llm.submit(request) })
            .flat_map(|submitted| match submitted {
                Ok(rx) => futures_util::stream::unfold(Some(rx), |rx| async move {
                    let mut rx = rx?;
                    match rx.recv().await {
                        Some(event) => {
                            let last = matches!(event, Ok(LlmEvent::Done { .. }) | Err(_));
                            Some((event, (!last).then_some(rx)))
                        }
                        // The worker gave up on the request without saying why (it panicked).
                        None => Some((
                            Err(LlmError::Stream {
                                message: "local LLM: the reply ended without finishing".into(),
                                error_type: Some("local_llm".into()),
                                code: None,
                            }),
                            None,
                        )),
                    }
                })
                .boxed(),
                Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
            })
            .boxed()
    }
}
