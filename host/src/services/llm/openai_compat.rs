//! OpenAI-compatible streaming chat completions (Groq by default; any compatible endpoint by
//! changing the base URL and model).
//!
//! Wire contract: `POST {base}/chat/completions`, `Authorization: Bearer KEY`, JSON body with
//! `model`, `messages`, `stream: true`, `stream_options.include_usage: true`, optional `tools`,
//! `tool_choice`, `temperature`, `max_tokens`. The answer is SSE: `data:` chunks with
//! `choices[0].delta.content` or `delta.tool_calls[]` (index, id, function name, argument
//! fragments), a chunk with `finish_reason`, a usage chunk (`choices: []`; Groq also in
//! `x_groq.usage`), then `data: [DONE]`. Errors: a non-2xx status with
//! `{"error":{"message","type","code"}}`, or mid-stream an `event: error` / `{"error":…}` chunk.
//!
//! Deadlines: TCP connect; first token (text, tool call or finish) within `first_token_timeout`
//! of sending, whatever keep-alives arrive; then at most `idle_timeout` between reads. A hanging
//! provider fails this request, never the call.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, AUTHORIZATION, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use url::Url;

use super::sse::{SseDecoder, SseEvent};
use super::{
    ChatMessage, ChatModel, ChatRequest, FinishReason, LlmError, LlmEvent, LlmStream, LlmTimeout, ToolCall, ToolChoice,
    Usage, DEFAULT_MODEL,
};
use crate::services::error::truncate;
use crate::services::join_path;

/// How long to wait for the rest of the body after `[DONE]`, so the connection can be reused.
const DRAIN_AFTER_DONE: Duration = Duration::from_millis(50);

/// Everything the client needs.
#[derive(Clone)]
pub struct OpenAiCompatConfig {
    /// `GROQ_BASE_URL`, e.g. `https://api.groq.com/openai/v1`.
    pub base_url: Url,
    pub api_key: String,
    pub model: String,
    pub connect_timeout: Duration,
    pub first_token_timeout: Duration,
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for OpenAiCompatConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompatConfig")
            .field("base_url", &self.base_url.as_str())
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiCompatConfig {
    pub fn new(base_url: Url, api_key: impl Into<String>) -> Self {
        Self {
            base_url,
            api_key: api_key.into(),
            model: DEFAULT_MODEL.into(),
            connect_timeout: Duration::from_secs(3),
            first_token_timeout: Duration::from_secs(6),
            idle_timeout: Duration::from_secs(5),
        }
    }
}

/// A chat completions client; clones share one connection pool (keep-alive saves a TLS
/// handshake per turn).
#[derive(Clone)]
pub struct OpenAiCompat {
    inner: Arc<Inner>,
}

struct Inner {
    config: OpenAiCompatConfig,
    url: Url,
    http: reqwest::Client,
}

impl std::fmt::Debug for OpenAiCompat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiCompat").field("config", &self.inner.config).finish()
    }
}

impl OpenAiCompat {
    pub fn new(config: OpenAiCompatConfig) -> Result<Self, LlmError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| LlmError::Config(format!("HTTP client: {e}")))?;
        let url = join_path(&config.base_url, "chat/completions");
        Ok(Self { inner: Arc::new(Inner { config, url, http }) })
    }

    /// The JSON body this client sends for `request` (also what the tests compare against).
    pub fn request_body(&self, request: &ChatRequest) -> serde_json::Value {
        let model = request.model.as_deref().unwrap_or(&self.inner.config.model);
        serde_json::to_value(WireRequest::new(model, request)).unwrap_or_default()
    }
}

impl ChatModel for OpenAiCompat {
    fn stream_chat(&self, request: ChatRequest) -> LlmStream {
        let state = Completion::new(self.inner.clone(), request);
        futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed()
    }
}

/// One request in flight.
struct Completion {
    inner: Arc<Inner>,
    request: Option<ChatRequest>,
    response: Option<reqwest::Response>,
    decoder: SseDecoder,
    reply: ReplyState,
    queue: VecDeque<LlmEvent>,
    /// First-token deadline, from when the request was sent.
    deadline: Instant,
    got_first: bool,
    finished: bool,
}

impl Completion {
    fn new(inner: Arc<Inner>, request: ChatRequest) -> Self {
        Self {
            inner,
            request: Some(request),
            response: None,
            decoder: SseDecoder::default(),
            reply: ReplyState::default(),
            queue: VecDeque::new(),
            deadline: Instant::now(),
            got_first: false,
            finished: false,
        }
    }

    async fn next(&mut self) -> Option<Result<LlmEvent, LlmError>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.step().await {
                self.finished = true;
                self.response = None;
                return Some(Err(e));
            }
        }
    }

    /// Sends the request or reads one more piece of the body.
    async fn step(&mut self) -> Result<(), LlmError> {
        if let Some(request) = self.request.take() {
            self.deadline = Instant::now() + self.inner.config.first_token_timeout;
            self.response = Some(self.send(&request).await?);
            return Ok(());
        }
        let Some(response) = self.response.as_mut() else {
            self.finished = true;
            return Ok(());
        };
        let (limit, on_timeout) = if self.got_first {
            (self.inner.config.idle_timeout, LlmTimeout::Idle(self.inner.config.idle_timeout))
        } else {
            let left = self.deadline.saturating_duration_since(Instant::now());
            (left, LlmTimeout::FirstToken(self.inner.config.first_token_timeout))
        };
        let chunk = match tokio::time::timeout(limit, response.chunk()).await {
            Err(_) => return Err(LlmError::Timeout(on_timeout)),
            Ok(Err(e)) => return Err(network_error(e, self.inner.config.connect_timeout)),
            Ok(Ok(chunk)) => chunk,
        };
        let mut events = Vec::new();
        match &chunk {
            Some(bytes) => self.decoder.feed(bytes, &mut events).map_err(LlmError::Protocol)?,
            None => self.decoder.finish(&mut events).map_err(LlmError::Protocol)?,
        }
        for event in events {
            if self.on_event(event)? {
                self.complete().await;
                return Ok(());
            }
        }
        if chunk.is_none() {
            self.end_of_body()?;
        }
        Ok(())
    }

    async fn send(&self, request: &ChatRequest) -> Result<reqwest::Response, LlmError> {
        let config = &self.inner.config;
        let model = request.model.as_deref().unwrap_or(&config.model);
        let send = self
            .inner
            .http
            .post(self.inner.url.clone())
            .header(AUTHORIZATION, format!("Bearer {}", config.api_key))
            .header(ACCEPT, "text/event-stream")
            .json(&WireRequest::new(model, request))
            .send();
        let left = self.deadline.saturating_duration_since(Instant::now());
        let response = match tokio::time::timeout(left, send).await {
            Err(_) => return Err(LlmError::Timeout(LlmTimeout::FirstToken(config.first_token_timeout))),
            Ok(Err(e)) => return Err(network_error(e, config.connect_timeout)),
            Ok(Ok(r)) => r,
        };
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.http_error(response).await)
    }

    async fn http_error(&self, response: reqwest::Response) -> LlmError {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let body = tokio::time::timeout(self.inner.config.idle_timeout, response.bytes()).await;
        let body = match body {
            Ok(Ok(b)) => b.to_vec(),
            _ => Vec::new(),
        };
        let (message, error_type, code) = match serde_json::from_slice::<ErrorEnvelope>(&body) {
            Ok(ErrorEnvelope { error: Some(e) }) => e.parts(),
            _ => (truncate(String::from_utf8_lossy(&body).trim(), 300), None, None),
        };
        match status {
            401 | 403 => LlmError::Auth { status, message },
            429 => LlmError::RateLimited { message, retry_after },
            _ => LlmError::Api { status, message, error_type, code },
        }
    }

    /// Handles one SSE event; `Ok(true)` at `[DONE]`.
    fn on_event(&mut self, event: SseEvent) -> Result<bool, LlmError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        if event.event == "error" {
            return Err(stream_error(data));
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|e| LlmError::Protocol(format!("unreadable chunk ({e}): {}", truncate(data, 200))))?;
        if let Some(error) = chunk.error {
            let (message, error_type, code) = error.parts();
            return Err(LlmError::Stream { message, error_type, code });
        }
        let before = self.queue.len();
        self.reply.on_chunk(chunk, &mut self.queue)?;
        // Text, a finish, or a tool call being streamed all count as the model answering.
        if self.queue.len() > before || self.reply.finish.is_some() || !self.reply.tool_calls.is_empty() {
            self.got_first = true;
        }
        Ok(false)
    }

    /// `[DONE]`: flush what is pending and finish; read the body's end briefly so the
    /// connection goes back to the pool.
    async fn complete(&mut self) {
        if let Some(mut response) = self.response.take() {
            let _ = tokio::time::timeout(DRAIN_AFTER_DONE, async { while let Ok(Some(_)) = response.chunk().await {} })
                .await;
        }
        self.reply.finish(&mut self.queue);
        self.finished = true;
    }

    /// The body ended without `[DONE]`: fine if the model said it finished, broken otherwise.
    fn end_of_body(&mut self) -> Result<(), LlmError> {
        self.response = None;
        if self.reply.finish.is_none() {
            return Err(LlmError::Protocol("the stream ended before the reply was complete".into()));
        }
        self.reply.finish(&mut self.queue);
        self.finished = true;
        Ok(())
    }
}

fn network_error(e: reqwest::Error, connect_timeout: Duration) -> LlmError {
    if e.is_connect() && e.is_timeout() {
        LlmError::Timeout(LlmTimeout::Connect(connect_timeout))
    } else {
        LlmError::Network(e.to_string())
    }
}

fn stream_error(data: &str) -> LlmError {
    match serde_json::from_str::<ErrorEnvelope>(data) {
        Ok(ErrorEnvelope { error: Some(e) }) => {
            let (message, error_type, code) = e.parts();
            LlmError::Stream { message, error_type, code }
        }
        _ => LlmError::Stream { message: truncate(data, 300), error_type: None, code: None },
    }
}

/// What has been streamed of the reply so far.
#[derive(Default)]
struct ReplyState {
    tool_calls: BTreeMap<u32, PartialToolCall>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

#[derive(Default)]
struct PartialToolCall {
    id: String,
    name: String,
    arguments: String,
}

impl ReplyState {
    fn on_chunk(&mut self, chunk: Chunk, out: &mut VecDeque<LlmEvent>) -> Result<(), LlmError> {
        if let Some(usage) = chunk.usage.or(chunk.x_groq.and_then(|x| x.usage)) {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else {
            return Ok(());
        };
        if let Some(text) = choice.delta.content.filter(|t| !t.is_empty()) {
            out.push_back(LlmEvent::TextDelta(text));
        }
        for (position, delta) in choice.delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let index = delta.index.unwrap_or(position as u32);
            let call = self.tool_calls.entry(index).or_default();
            if let Some(id) = delta.id.filter(|s| !s.is_empty()) {
                call.id = id;
            }
            if let Some(function) = delta.function {
                if let Some(name) = function.name.filter(|s| !s.is_empty()) {
                    call.name.push_str(&name);
                }
                if let Some(args) = function.arguments {
                    call.arguments.push_str(&args);
                }
            }
        }
        if let Some(reason) = choice.finish_reason {
            self.finish = Some(FinishReason::parse(&reason));
            self.flush_tool_calls(out)?;
        }
        Ok(())
    }

    fn flush_tool_calls(&mut self, out: &mut VecDeque<LlmEvent>) -> Result<(), LlmError> {
        if self.tool_calls.is_empty() {
            return Ok(());
        }
        let mut calls = Vec::with_capacity(self.tool_calls.len());
        for (index, call) in std::mem::take(&mut self.tool_calls) {
            if call.name.is_empty() {
                return Err(LlmError::Protocol(format!("tool call {index} has no function name")));
            }
            let id = if call.id.is_empty() { format!("call_{index}") } else { call.id };
            let arguments = if call.arguments.trim().is_empty() { "{}".to_string() } else { call.arguments };
            calls.push(ToolCall { id, name: call.name, arguments });
        }
        out.push_back(LlmEvent::ToolCalls(calls));
        Ok(())
    }

    /// Emits tool calls still pending and `Done` (once).
    fn finish(&mut self, out: &mut VecDeque<LlmEvent>) {
        if self.done {
            return;
        }
        self.done = true;
        if let Err(e) = self.flush_tool_calls(out) {
            tracing::warn!(error = %e, "dropping an incomplete tool call");
        }
        let finish_reason = self.finish.clone().unwrap_or(FinishReason::Stop);
        out.push_back(LlmEvent::Done { finish_reason, usage: self.usage });
    }
}

// ---- wire types: request ----

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

impl<'a> WireRequest<'a> {
    fn new(model: &'a str, request: &'a ChatRequest) -> Self {
        Self {
            model,
            messages: request.messages.iter().map(WireMessage::from).collect(),
            stream: true,
            stream_options: StreamOptions { include_usage: true },
            tools: request.tools.iter().map(|t| WireTool::new(&t.name, &t.description, &t.parameters)).collect(),
            tool_choice: request.tool_choice.as_ref().map(tool_choice_json),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
        }
    }
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
    },
    Assistant {
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a str,
    },
}

impl<'a> From<&'a ChatMessage> for WireMessage<'a> {
    fn from(m: &'a ChatMessage) -> Self {
        match m {
            ChatMessage::System(content) => WireMessage::System { content },
            ChatMessage::User(content) => WireMessage::User { content },
            ChatMessage::Assistant { content, tool_calls } => WireMessage::Assistant {
                // An assistant turn with neither text nor calls still needs a content field.
                content: content.as_deref().or(tool_calls.is_empty().then_some("")),
                tool_calls: tool_calls
                    .iter()
                    .map(|c| WireToolCall {
                        id: &c.id,
                        kind: "function",
                        function: WireFunctionCall { name: &c.name, arguments: &c.arguments },
                    })
                    .collect(),
            },
            ChatMessage::Tool { tool_call_id, content } => WireMessage::Tool { tool_call_id, content },
        }
    }
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

impl<'a> WireTool<'a> {
    fn new(name: &'a str, description: &'a str, parameters: &'a serde_json::Value) -> Self {
        Self { kind: "function", function: WireFunction { name, description, parameters } }
    }
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a serde_json::Value,
}

fn tool_choice_json(choice: &ToolChoice) -> serde_json::Value {
    match choice {
        ToolChoice::Auto => "auto".into(),
        ToolChoice::None => "none".into(),
        ToolChoice::Required => "required".into(),
        ToolChoice::Function(name) => serde_json::json!({"type": "function", "function": {"name": name}}),
    }
}

// ---- wire types: response ----

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct XGroq {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    error: Option<ApiError>,
}

/// `{"message","type","code"}`; `code` may be a string or a number, and some servers send the
/// whole error as a bare string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ApiError {
    Object {
        #[serde(default)]
        message: Option<String>,
        #[serde(default, rename = "type")]
        error_type: Option<String>,
        #[serde(default)]
        code: Option<serde_json::Value>,
    },
    Text(String),
}

impl ApiError {
    /// Message, type and code.
    fn parts(self) -> (String, Option<String>, Option<String>) {
        match self {
            ApiError::Object { message, error_type, code } => {
                let code = match code {
                    Some(serde_json::Value::String(s)) => Some(s),
                    Some(v) if !v.is_null() => Some(v.to_string()),
                    _ => None,
                };
                (message.unwrap_or_else(|| "no message given".into()), error_type, code)
            }
            ApiError::Text(t) => (t, None, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ToolSpec;
    use super::*;

    fn state_after(chunks: &[&str]) -> (Vec<LlmEvent>, ReplyState) {
        let mut reply = ReplyState::default();
        let mut out = VecDeque::new();
        for c in chunks {
            reply.on_chunk(serde_json::from_str(c).unwrap(), &mut out).unwrap();
        }
        reply.finish(&mut out);
        (out.into(), reply)
    }

    #[test]
    fn tool_call_fragments_are_assembled_by_index() {
        let (events, _) = state_after(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"get_weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"get_time","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#,
        ]);
        assert_eq!(
            events,
            vec![
                LlmEvent::ToolCalls(vec![
                    ToolCall {
                        id: "call_a".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into()
                    },
                    ToolCall { id: "call_b".into(), name: "get_time".into(), arguments: "{}".into() },
                ]),
                LlmEvent::Done {
                    finish_reason: FinishReason::ToolCalls,
                    usage: Some(Usage { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 })
                },
            ]
        );
    }

    #[test]
    fn groq_usage_in_x_groq_is_read() {
        let (events, _) = state_after(&[
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"x_groq":{"id":"req_1","usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}}"#,
        ]);
        assert_eq!(events[0], LlmEvent::TextDelta("Hi".into()));
        assert!(matches!(&events[1], LlmEvent::Done { usage: Some(u), .. } if u.total_tokens == 4));
    }

    #[test]
    fn request_body_has_roles_tools_and_only_set_options() {
        let client = OpenAiCompat::new(OpenAiCompatConfig::new(Url::parse("http://x/v1").unwrap(), "k")).unwrap();
        let call = ToolCall { id: "c1".into(), name: "lookup".into(), arguments: "{\"q\":1}".into() };
        let request = ChatRequest {
            messages: vec![
                ChatMessage::system("be brief"),
                ChatMessage::user("hi"),
                ChatMessage::assistant_tool_calls(vec![call]),
                ChatMessage::tool_result("c1", "42"),
            ],
            tools: vec![ToolSpec::from_schema_text("lookup", "Looks up", r#"{"type":"object"}"#).unwrap()],
            tool_choice: Some(ToolChoice::Auto),
            ..Default::default()
        };
        let body = client.request_body(&request);
        assert_eq!(
            body,
            serde_json::json!({
                "model": "llama-3.3-70b-versatile",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "42"}
                ],
                "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "lookup", "description": "Looks up",
                           "parameters": {"type": "object"}}}],
                "tool_choice": "auto"
            })
        );
    }

    #[test]
    fn error_bodies_of_both_shapes() {
        let e = stream_error(r#"{"error":{"message":"over capacity","type":"internal_server_error","code":503}}"#);
        assert!(
            matches!(&e, LlmError::Stream { message, code: Some(c), .. } if message == "over capacity" && c == "503")
        );
        let e = stream_error(r#"{"error":"boom"}"#);
        assert!(matches!(&e, LlmError::Stream { message, .. } if message == "boom"));
    }
}
