//! The inference thread: owns the llama.cpp context (the KV cache), takes one job at a time from
//! a bounded queue, and streams events back. Nothing here runs on the async runtime.
//!
//! The KV cache is kept between jobs: a new prompt re-evaluates only what differs from the
//! tokens already in it (the system prompt and earlier turns are usually the same), which is what
//! [`super::LocalLlm::warm_up`] prepares.

use std::num::NonZeroU32;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use super::prompt::{trim_to_fit, ChatTemplate};
use super::reply::{ReplyParser, CLOSE, OPEN};
use super::{backend, LocalLlmConfig, LocalLlmError, WarmUp};
use crate::services::llm::{ChatMessage, ChatRequest, FinishReason, LlmError, LlmEvent, ToolChoice, Usage};

/// Work for the inference thread.
pub enum Job {
    Chat {
        request: ChatRequest,
        events: mpsc::Sender<Result<LlmEvent, LlmError>>,
        queued: Instant,
        id: u64,
    },
    WarmUp {
        messages: Vec<ChatMessage>,
        tools: Vec<crate::services::llm::ToolSpec>,
        done: oneshot::Sender<Result<WarmUp, LocalLlmError>>,
    },
}

/// Starts the thread; returns once its context exists (or failed to).
pub fn start(
    model: Arc<LlamaModel>,
    template: ChatTemplate,
    config: &LocalLlmConfig,
) -> Result<std_mpsc::SyncSender<Job>, LocalLlmError> {
    let (jobs_tx, jobs_rx) = std_mpsc::sync_channel::<Job>(config.queue_capacity);
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), LocalLlmError>>();
    let config = config.clone();
    std::thread::Builder::new()
        .name("local-llm".into())
        .spawn(move || {
            let span = tracing::info_span!("local_llm_worker");
            let _entered = span.enter();
            let mut engine = match Engine::new(&model, template, &config) {
                Ok(engine) => {
                    let _ = ready_tx.send(Ok(()));
                    engine
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // Ends when every LocalLlm clone (every sender) is gone.
            while let Ok(job) = jobs_rx.recv() {
                match job {
                    Job::Chat { request, events, queued, id } => engine.chat(id, request, &events, queued),
                    Job::WarmUp { messages, tools, done } => {
                        let _ = done.send(engine.warm_up(&messages, &tools));
                    }
                }
            }
            tracing::debug!("local LLM worker stopped");
        })
        .map_err(LocalLlmError::Thread)?;
    ready_rx.recv().map_err(|_| LocalLlmError::WorkerStopped)??;
    Ok(jobs_tx)
}

struct Engine<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    template: ChatTemplate,
    batch: LlamaBatch<'static>,
    /// The tokens whose keys and values are in the cache, in position order.
    cached: Vec<LlamaToken>,
    /// `<tool_call>` and `</tool_call>` where the vocabulary has them as single tokens.
    tags: Vec<(LlamaToken, &'static str)>,
    config: LocalLlmConfig,
}

/// How a generation ended early.
enum Stop {
    /// The stream was dropped (barge-in): nobody is listening.
    Cancelled,
    Failed(LlmError),
}

impl<'m> Engine<'m> {
    fn new(model: &'m LlamaModel, template: ChatTemplate, config: &LocalLlmConfig) -> Result<Self, LocalLlmError> {
        let threads = i32::try_from(config.threads.max(1)).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(config.context_tokens))
            .with_n_batch(config.prefill_chunk)
            .with_n_ubatch(config.prefill_chunk)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .new_context(backend()?, params)
            .map_err(|e| LocalLlmError::Context(format!("{e} (context of {} tokens)", config.context_tokens)))?;
        let batch = LlamaBatch::new(config.prefill_chunk as usize, 1);
        let tags = [OPEN, CLOSE]
            .into_iter()
            .filter_map(|tag| match model.vocab().tokenize(tag.as_bytes(), false, true)[..] {
                [token] => Some((token, tag)),
                _ => None,
            })
            .collect();
        Ok(Self { model, ctx, template, batch, cached: Vec::new(), tags, config: config.clone() })
    }

    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        // The template already wrote any BOS it wants; special tokens are parsed as such.
        self.model.vocab().tokenize(text.as_bytes(), false, true)
    }

    /// Evaluates `tokens` into the cache, reusing the longest prefix already there. Leaves the
    /// logits of the last token ready for sampling. Checks `cancelled` between chunks.
    fn evaluate(&mut self, tokens: &[LlamaToken], cancelled: &dyn Fn() -> bool) -> Result<usize, Stop> {
        let mut common = self.cached.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        // At least one token must be decoded to have logits to sample from.
        if common == tokens.len() {
            common = tokens.len().saturating_sub(1);
        }
        if self.ctx.kv_cache_seq_rm(0, Some(common as u32), None).is_err() {
            self.ctx.clear_kv_cache();
            common = 0;
        }
        self.cached.truncate(common);
        let reused = common;
        let chunk = self.config.prefill_chunk as usize;
        let mut pos = common;
        while pos < tokens.len() {
            if cancelled() {
                return Err(Stop::Cancelled);
            }
            let end = (pos + chunk).min(tokens.len());
            self.batch.clear();
            for (i, token) in tokens[pos..end].iter().enumerate() {
                let at = pos + i;
                self.batch
                    .add(*token, at as i32, &[0], at + 1 == tokens.len())
                    .map_err(|e| Stop::Failed(stream_error(format!("building the prompt batch: {e}"))))?;
            }
            self.ctx.decode(&mut self.batch).map_err(|e| {
                Stop::Failed(stream_error(format!(
                    "evaluating the prompt (tokens {pos}..{end} of {}): {e}",
                    tokens.len()
                )))
            })?;
            self.cached.extend_from_slice(&tokens[pos..end]);
            pos = end;
        }
        Ok(reused)
    }

    /// Renders and tokenizes the conversation, dropping the oldest turns until prompt and reply
    /// fit the context.
    fn prompt(
        &self,
        request: &ChatRequest,
        reply_tokens: u32,
        prime: &str,
    ) -> Result<(Vec<LlamaToken>, usize), LlmError> {
        let budget = self.config.context_tokens.saturating_sub(reply_tokens) as usize;
        let tools = match &request.tool_choice {
            Some(ToolChoice::None) => Vec::new(),
            Some(ToolChoice::Function(name)) => request.tools.iter().filter(|t| &t.name == name).cloned().collect(),
            _ => request.tools.clone(),
        };
        let mut messages = request.messages.clone();
        let mut tokens = Vec::new();
        let dropped = trim_to_fit(&mut messages, |m| {
            let mut text = self.template.render(m, &tools, true).map_err(LlmError::Config)?;
            text.push_str(prime);
            tokens = self.tokenize(&text);
            Ok::<_, LlmError>(tokens.len() <= budget)
        })?;
        match dropped {
            Some(dropped) => Ok((tokens, dropped)),
            None => Err(LlmError::Config(format!(
                "the prompt needs {} tokens even with only the system prompt and the last message, more than the {budget} \
                 the local LLM's context leaves beside the reply ({} context - {reply_tokens} reply tokens)",
                tokens.len(),
                self.config.context_tokens
            ))),
        }
    }

    fn warm_up(
        &mut self,
        messages: &[ChatMessage],
        tools: &[crate::services::llm::ToolSpec],
    ) -> Result<WarmUp, LocalLlmError> {
        let started = Instant::now();
        let text = self.template.render(messages, tools, false).map_err(LocalLlmError::Template)?;
        let tokens = self.tokenize(&text);
        let reused = match self.evaluate(&tokens, &|| false) {
            Ok(reused) => reused,
            Err(Stop::Failed(e)) => return Err(LocalLlmError::Inference(e.to_string())),
            Err(Stop::Cancelled) => unreachable!("warm-up is never cancelled"),
        };
        let warm = WarmUp { tokens: tokens.len(), reused, elapsed: started.elapsed() };
        tracing::info!(
            tokens = warm.tokens,
            reused = warm.reused,
            ms = warm.elapsed.as_millis() as u64,
            "local LLM prompt prefix evaluated"
        );
        Ok(warm)
    }

    fn chat(
        &mut self,
        id: u64,
        request: ChatRequest,
        events: &mpsc::Sender<Result<LlmEvent, LlmError>>,
        queued: Instant,
    ) {
        let span =
            tracing::info_span!("local_llm_chat", id, messages = request.messages.len(), tools = request.tools.len());
        let _entered = span.enter();
        if events.is_closed() {
            tracing::debug!("dropped while queued");
            return;
        }
        let started = Instant::now();
        match self.generate(id, &request, events) {
            Ok(stats) => tracing::info!(
                queued_ms = started.duration_since(queued).as_millis() as u64,
                prompt_tokens = stats.prompt_tokens,
                reused_tokens = stats.reused,
                first_token_ms = stats.first_token.map(|d| d.as_millis() as u64),
                completion_tokens = stats.completion_tokens,
                ms = started.elapsed().as_millis() as u64,
                "local LLM reply"
            ),
            Err(Stop::Cancelled) => {
                tracing::debug!(ms = started.elapsed().as_millis() as u64, "local LLM reply cancelled (stream dropped)")
            }
            Err(Stop::Failed(e)) => {
                tracing::warn!(error = %e, "local LLM reply failed");
                let _ = events.blocking_send(Err(e));
            }
        }
    }

    fn generate(
        &mut self,
        id: u64,
        request: &ChatRequest,
        events: &mpsc::Sender<Result<LlmEvent, LlmError>>,
    ) -> Result<Stats, Stop> {
        let max_reply =
            request.max_tokens.map_or(self.config.max_reply_tokens, |m| m.min(self.config.max_reply_tokens)).max(1);
        // A required call is primed: the reply starts inside an opened tool call.
        let prime = match &request.tool_choice {
            Some(ToolChoice::Required) if !request.tools.is_empty() => format!("{OPEN}\n"),
            // The opened `{` makes the arguments an object.
            Some(ToolChoice::Function(name)) => {
                format!("{OPEN}\n{{\"name\": {}, \"arguments\": {{", serde_json::Value::from(name.as_str()))
            }
            _ => String::new(),
        };
        let (prompt, dropped) = self.prompt(request, max_reply, &prime).map_err(Stop::Failed)?;
        if dropped > 0 {
            tracing::info!(dropped, prompt_tokens = prompt.len(), "oldest turns trimmed to fit the context");
        }
        let cancelled = || events.is_closed();
        let reused = self.evaluate(&prompt, &cancelled)?;

        let mut sampler = sampler(request.temperature.unwrap_or(self.config.temperature), self.config.seed);
        let mut parser = ReplyParser::new(format!("local-{id}"));
        if let Some(body) = prime.strip_prefix(OPEN) {
            parser.start_in_call(body);
        }
        let model = self.model;
        let vocab = model.vocab();
        let started = Instant::now();
        let mut first_token = None;
        let mut completion = 0u32;
        let mut finish = FinishReason::Length;
        let mut piece = Vec::with_capacity(32);
        while completion < max_reply {
            if cancelled() {
                return Err(Stop::Cancelled);
            }
            let token = sampler.sample(&self.ctx, self.batch.n_tokens() - 1);
            if first_token.is_none() {
                first_token = Some(started.elapsed());
            }
            if vocab.is_eog(token) {
                finish = FinishReason::Stop;
                break;
            }
            completion += 1;
            piece.clear();
            // The call tags are written out whatever attributes the GGUF gave their tokens;
            // other special tokens (control markup) are never text.
            match self.tags.iter().find(|(t, _)| *t == token) {
                Some((_, tag)) => piece.extend_from_slice(tag.as_bytes()),
                None => vocab.token_to_piece_into(token, &mut piece, false, None),
            }
            let text = parser.push(&piece);
            if !text.is_empty() && events.blocking_send(Ok(LlmEvent::TextDelta(text))).is_err() {
                return Err(Stop::Cancelled);
            }
            if completion == max_reply {
                break;
            }
            self.batch.clear();
            let pos = self.cached.len() as i32;
            self.batch.add(token, pos, &[0], true).map_err(|e| Stop::Failed(stream_error(format!("batch: {e}"))))?;
            self.ctx.decode(&mut self.batch).map_err(|e| {
                Stop::Failed(stream_error(format!("generating token {completion} at position {pos}: {e}")))
            })?;
            self.cached.push(token);
        }
        let (tail, calls, unreadable) = parser.finish();
        if !tail.is_empty() && events.blocking_send(Ok(LlmEvent::TextDelta(tail))).is_err() {
            return Err(Stop::Cancelled);
        }
        if !unreadable.is_empty() {
            tracing::warn!(?unreadable, "the local model wrote tool calls that are not JSON with a name; ignored");
        }
        if !calls.is_empty() {
            finish = FinishReason::ToolCalls;
            if events.blocking_send(Ok(LlmEvent::ToolCalls(calls))).is_err() {
                return Err(Stop::Cancelled);
            }
        }
        let usage = Usage {
            prompt_tokens: prompt.len() as u32,
            completion_tokens: completion,
            total_tokens: prompt.len() as u32 + completion,
        };
        let _ = events.blocking_send(Ok(LlmEvent::Done { finish_reason: finish, usage: Some(usage) }));
        Ok(Stats { prompt_tokens: prompt.len(), reused, first_token, completion_tokens: completion })
    }
}

struct Stats {
    prompt_tokens: usize,
    reused: usize,
    first_token: Option<Duration>,
    completion_tokens: u32,
}

fn sampler(temperature: f32, seed: u32) -> LlamaSampler {
    if temperature <= 0.0 {
        return LlamaSampler::greedy();
    }
    LlamaSampler::chain_simple([
        LlamaSampler::top_k(40),
        LlamaSampler::top_p(0.9, 1),
        LlamaSampler::min_p(0.05, 1),
        LlamaSampler::temp(temperature),
        LlamaSampler::dist(seed),
    ])
}

fn stream_error(message: String) -> LlmError {
    LlmError::Stream { message: format!("local LLM: {message}"), error_type: Some("local_llm".into()), code: None }
}
