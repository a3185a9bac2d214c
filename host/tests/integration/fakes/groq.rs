//! A fake of Groq's OpenAI-compatible chat completions (`POST /openai/v1/chat/completions`),
//! after the OpenAI/Groq API references:
//!
//! - `Authorization: Bearer KEY` required (else 401 `invalid_api_key`); malformed JSON, a missing
//!   `model`, bad `messages` (unknown role, a `tool` message whose `tool_call_id` no earlier
//!   assistant `tool_calls` announced, …), bad `tools`/`tool_choice`, out-of-range `temperature`,
//!   `stream_options` without `stream` → 400 `invalid_request_error`; an unknown model → 404
//!   `model_not_found`. Error bodies are `{"error":{"message","type","code"}}`.
//! - `stream: true` answers `text/event-stream`: `data: {chat.completion.chunk}` events (first the
//!   assistant role, then one word of text per chunk, or a tool call whose `arguments` arrive in
//!   fragments), a `finish_reason` chunk carrying `x_groq.usage`, a usage chunk with
//!   `choices: []` when `stream_options.include_usage`, then `data: [DONE]`. Without `stream` it
//!   answers one `chat.completion` object.
//!
//! Replies are scripted ([`Reply`]); with an empty script it answers "You said: <last user
//! message>" (or "The tool said: <result>" right after a tool result). Faults are queued and each
//! request takes the next one.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use url::Url;

use super::{request_id, FakeServer};

pub const API_KEY: &str = "test-groq-key";
pub const MODELS: &[&str] = &[
    "llama-3.3-70b-versatile",
    "llama-3.1-8b-instant",
    "openai/gpt-oss-120b",
    "openai/gpt-oss-20b",
    "meta-llama/llama-4-scout-17b-16e-instruct",
];

/// One scripted assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Streamed one word per chunk.
    Text(String),
    /// Tool calls: (function name, arguments JSON text), streamed as id/name first, then argument
    /// fragments of `argument_fragment` characters.
    ToolCalls(Vec<(String, String)>),
}

/// A fault for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status and body.
    Status { status: u16, body: Value },
    /// Never answer (no headers).
    HangBeforeHeaders,
    /// Send the SSE headers, then nothing.
    HangAfterHeaders,
    /// Stream this many text chunks, then an `event: error` frame and end.
    ErrorAfter { chunks: usize, message: String },
    /// Stream this many text chunks, then go silent (connection stays open).
    StallAfter { chunks: usize },
}

impl Fault {
    pub fn server_error() -> Fault {
        Fault::Status {
            status: 500,
            body: json!({"error": {"message": "Internal Server Error", "type": "internal_server_error"}}),
        }
    }

    pub fn rate_limited() -> Fault {
        Fault::Status {
            status: 429,
            body: json!({"error": {"message": "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_fake` on tokens per minute (TPM): Limit 6000, Used 5990, Requested 120. Please try again in 1.1s.",
                "type": "tokens", "code": "rate_limit_exceeded"}}),
        }
    }
}

/// Switches; change them any time with [`FakeGroq::configure`].
#[derive(Debug, Clone)]
pub struct GroqSettings {
    pub api_key: String,
    pub first_token_delay: Duration,
    pub chunk_delay: Duration,
    pub argument_fragment: usize,
    /// Split every SSE event across two writes (mid-JSON) to exercise client reassembly.
    pub split_events: bool,
    /// Send `: keep-alive` comment lines before and between events.
    pub comments: bool,
}

impl Default for GroqSettings {
    fn default() -> Self {
        Self {
            api_key: API_KEY.into(),
            first_token_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            argument_fragment: 7,
            split_events: false,
            comments: false,
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct GroqRequest {
    pub authorization: Option<String>,
    pub body: Value,
    pub status: u16,
    /// The stream was sent to the end (`[DONE]` written).
    pub completed: bool,
    /// The client went away before the stream ended.
    pub client_gone: bool,
}

#[derive(Default)]
struct Inner {
    settings: GroqSettings,
    script: VecDeque<Reply>,
    faults: VecDeque<Fault>,
    requests: Vec<GroqRequest>,
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running fake.
pub struct FakeGroq {
    shared: Arc<Shared>,
    server: FakeServer,
}

impl FakeGroq {
    pub async fn start() -> Self {
        Self::start_with(GroqSettings::default()).await
    }

    pub async fn start_with(settings: GroqSettings) -> Self {
        let shared = Arc::new(Shared { inner: Mutex::new(Inner { settings, ..Default::default() }) });
        let app = Router::new().route("/openai/v1/chat/completions", post(completions)).with_state(shared.clone());
        let server = FakeServer::start(app).await;
        Self { shared, server }
    }

    /// What `GROQ_BASE_URL` should be (`http://127.0.0.1:PORT/openai/v1`).
    pub fn base_url(&self) -> Url {
        self.server.http_url().join("/openai/v1").expect("base URL")
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.lock().script.extend(replies);
    }

    pub fn push_fault(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    pub fn configure(&self, change: impl FnOnce(&mut GroqSettings)) {
        change(&mut self.shared.lock().settings);
    }

    pub fn requests(&self) -> Vec<GroqRequest> {
        self.shared.lock().requests.clone()
    }

    /// Drops what was recorded (keeps settings and script), for long runs.
    pub fn forget(&self) {
        self.shared.lock().requests.clear();
    }

    /// Polls until `check` holds for the requests (true) or `limit` passes (false).
    pub async fn wait_until(&self, limit: Duration, check: impl Fn(&[GroqRequest]) -> bool) -> bool {
        super::poll_until(limit, || check(&self.shared.lock().requests)).await
    }
}

fn api_error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let mut error = json!({"message": message, "type": kind});
    if let Some(c) = code {
        error["code"] = json!(c);
    }
    (status, [("content-type", "application/json")], json!({ "error": error }).to_string()).into_response()
}

/// Why a request body is refused.
struct Refusal {
    status: StatusCode,
    message: String,
    code: Option<&'static str>,
}

impl Refusal {
    fn into_response(self) -> Response {
        api_error(self.status, &self.message, "invalid_request_error", self.code)
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, message: message.into(), code: None }
}

/// Why the body is refused, if it is.
fn validate(body: &Value) -> Result<(), Refusal> {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return Err(invalid("property 'model' is missing"));
    };
    if !MODELS.contains(&model) {
        let message = format!("The model `{model}` does not exist or you do not have access to it.");
        return Err(Refusal { status: StatusCode::NOT_FOUND, message, code: Some("model_not_found") });
    }
    let Some(messages) = body.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty()) else {
        return Err(invalid("'messages' must be a non-empty array"));
    };
    validate_messages(messages).map_err(invalid)?;
    if let Some(tools) = body.get("tools") {
        validate_tools(tools).map_err(invalid)?;
    }
    if let Some(choice) = body.get("tool_choice") {
        let ok = matches!(choice.as_str(), Some("auto" | "none" | "required"))
            || (choice["type"] == "function" && choice["function"]["name"].is_string());
        if !ok || body.get("tools").is_none() && choice.as_str() != Some("none") {
            return Err(invalid("'tool_choice' is invalid or set without 'tools'"));
        }
    }
    if let Some(t) = body.get("temperature") {
        if !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
            return Err(invalid("'temperature' must be a number between 0 and 2"));
        }
    }
    if let Some(m) = body.get("max_tokens") {
        if !matches!(m.as_u64(), Some(n) if n > 0) {
            return Err(invalid("'max_tokens' must be a positive integer"));
        }
    }
    if body.get("stream_options").is_some() && body.get("stream") != Some(&json!(true)) {
        return Err(invalid("'stream_options' is only allowed when 'stream' is true"));
    }
    Ok(())
}

fn validate_messages(messages: &[Value]) -> Result<(), String> {
    let mut announced: HashSet<String> = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let content_ok = |m: &Value| m["content"].is_string() || m["content"].is_array();
        match m["role"].as_str() {
            Some("system" | "user" | "developer") if content_ok(m) => {}
            Some("assistant") => {
                let calls = m.get("tool_calls").and_then(Value::as_array);
                if !content_ok(m) && calls.is_none_or(|c| c.is_empty()) {
                    return Err(format!("messages[{i}]: an assistant message needs 'content' or 'tool_calls'"));
                }
                for call in calls.into_iter().flatten() {
                    let id = call["id"].as_str().filter(|s| !s.is_empty());
                    let named = call["function"]["name"].is_string() && call["function"]["arguments"].is_string();
                    match id {
                        Some(id) if call["type"] == "function" && named => {
                            announced.insert(id.to_string());
                        }
                        _ => return Err(format!("messages[{i}].tool_calls: each needs id, type and function")),
                    }
                }
            }
            Some("tool") => {
                let id = m["tool_call_id"].as_str().unwrap_or_default();
                if !announced.contains(id) || !m["content"].is_string() {
                    return Err(format!("messages[{i}]: 'tool_call_id' {id:?} answers no earlier tool call"));
                }
            }
            Some(role @ ("system" | "user" | "developer")) => {
                return Err(format!("messages[{i}]: a {role} message needs 'content'"))
            }
            other => return Err(format!("messages[{i}]: unknown role {other:?}")),
        }
    }
    Ok(())
}

fn validate_tools(tools: &Value) -> Result<(), String> {
    let Some(list) = tools.as_array() else { return Err("'tools' must be an array".into()) };
    for (i, t) in list.iter().enumerate() {
        let name = t["function"]["name"].as_str().unwrap_or_default();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let params_ok = t["function"].get("parameters").is_none_or(Value::is_object);
        if t["type"] != "function" || !name_ok || !params_ok {
            return Err(format!("tools[{i}]: needs type 'function', a valid name and object parameters"));
        }
    }
    Ok(())
}

/// The reply to give: scripted, or the default rule.
fn choose_reply(inner: &mut Inner, messages: &[Value]) -> Reply {
    if let Some(r) = inner.script.pop_front() {
        return r;
    }
    let last = messages.last().cloned().unwrap_or_default();
    if last["role"] == "tool" {
        return Reply::Text(format!("The tool said: {}", last["content"].as_str().unwrap_or_default()));
    }
    let user = messages.iter().rev().find(|m| m["role"] == "user").and_then(|m| m["content"].as_str());
    Reply::Text(format!("You said: {}", user.unwrap_or("nothing")))
}

async fn completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, raw: Bytes) -> Response {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let index = {
        let mut inner = shared.lock();
        inner.requests.push(GroqRequest {
            authorization: authorization.clone(),
            body: body.clone(),
            status: 0,
            completed: false,
            client_gone: false,
        });
        inner.requests.len() - 1
    };
    let response = answer(&shared, index, authorization.as_deref(), &raw, body).await;
    if let Some(r) = shared.lock().requests.get_mut(index) {
        r.status = response.status().as_u16();
    }
    response
}

async fn answer(shared: &Arc<Shared>, index: usize, authorization: Option<&str>, raw: &[u8], body: Value) -> Response {
    let (settings, fault) = {
        let mut inner = shared.lock();
        (inner.settings.clone(), inner.faults.pop_front())
    };
    if authorization != Some(format!("Bearer {}", settings.api_key).as_str()) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "Invalid API Key",
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    if serde_json::from_slice::<Value>(raw).is_err() || !body.is_object() {
        return invalid("We could not parse the JSON body of your request.").into_response();
    }
    if let Err(refusal) = validate(&body) {
        return refusal.into_response();
    }
    match &fault {
        Some(Fault::Status { status, body }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, [("content-type", "application/json")], body.to_string()).into_response();
            if status == StatusCode::TOO_MANY_REQUESTS {
                response.headers_mut().insert("retry-after", "2".parse().expect("header"));
            }
            return response;
        }
        Some(Fault::HangBeforeHeaders) => std::future::pending::<()>().await,
        _ => {}
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let reply = choose_reply(&mut shared.lock(), &messages);
    let model = body["model"].as_str().unwrap_or_default().to_string();
    if body.get("stream") != Some(&json!(true)) {
        shared.lock().requests[index].completed = true;
        return (StatusCode::OK, [("content-type", "application/json")], completion_object(&model, &reply).to_string())
            .into_response();
    }
    let include_usage = body["stream_options"]["include_usage"] == true;
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let plan = StreamPlan { model, reply, include_usage, settings, fault };
    tokio::spawn(stream_reply(tx, plan, shared.clone(), index));
    let body =
        Body::from_stream(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        ));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("x-request-id", format!("req_{}", request_id()))
        .body(body)
        .expect("SSE response")
}

struct StreamPlan {
    model: String,
    reply: Reply,
    include_usage: bool,
    settings: GroqSettings,
    fault: Option<Fault>,
}

fn usage(completion: usize) -> Value {
    json!({"queue_time": 0.01, "prompt_tokens": 20, "prompt_time": 0.002, "completion_tokens": completion,
           "completion_time": 0.01, "total_tokens": 20 + completion, "total_time": 0.012})
}

fn completion_object(model: &str, reply: &Reply) -> Value {
    let (message, finish) = match reply {
        Reply::Text(t) => (json!({"role": "assistant", "content": t}), "stop"),
        Reply::ToolCalls(calls) => {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    json!({"id": format!("call_{i}_{}", request_id()), "type": "function",
                    "function": {"name": name, "arguments": args}})
                })
                .collect();
            (json!({"role": "assistant", "tool_calls": calls}), "tool_calls")
        }
    };
    json!({"id": format!("chatcmpl-{}", request_id()), "object": "chat.completion", "created": 1_767_225_600,
           "model": model, "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
           "usage": usage(5)})
}

/// Writes the SSE reply; notes whether the client stayed to the end.
async fn stream_reply(
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    plan: StreamPlan,
    shared: Arc<Shared>,
    index: usize,
) {
    let mut out =
        Sse { tx, settings: plan.settings.clone(), id: format!("chatcmpl-{}", request_id()), model: plan.model };
    let finished = out.run(&plan.reply, plan.include_usage, plan.fault.as_ref()).await;
    let mut inner = shared.lock();
    if let Some(r) = inner.requests.get_mut(index) {
        r.completed = finished == Some(true);
        r.client_gone = finished.is_none();
    }
}

struct Sse {
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    settings: GroqSettings,
    id: String,
    model: String,
}

impl Sse {
    /// `Some(true)`: `[DONE]` sent; `Some(false)`: ended early on purpose; `None`: client gone.
    async fn run(&mut self, reply: &Reply, include_usage: bool, fault: Option<&Fault>) -> Option<bool> {
        if let Some(Fault::HangAfterHeaders) = fault {
            self.raw(": connected\n\n").await?;
            std::future::pending::<()>().await;
        }
        if self.settings.comments {
            self.raw(": keep-alive\n\n").await?;
        }
        tokio::time::sleep(self.settings.first_token_delay).await;
        self.chunk(json!({"role": "assistant", "content": ""}), None, None).await?;
        let (count, finish) = match reply {
            Reply::Text(text) => (self.text(text, fault).await?, "stop"),
            Reply::ToolCalls(calls) => (self.tool_calls(calls).await?, "tool_calls"),
        };
        if count == usize::MAX {
            return Some(false);
        }
        let x_groq = json!({"id": format!("req_{}", request_id()), "usage": usage(count)});
        self.chunk(json!({}), Some(finish), Some(x_groq)).await?;
        if include_usage {
            let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": 1_767_225_600,
                "model": self.model, "choices": [], "usage": usage(count)});
            self.event(&chunk.to_string()).await?;
        }
        self.event("[DONE]").await?;
        Some(true)
    }

    /// Streams words; `usize::MAX` when a fault ended the stream early.
    async fn text(&mut self, text: &str, fault: Option<&Fault>) -> Option<usize> {
        let words: Vec<&str> = text.split_inclusive(' ').collect();
        for (i, word) in words.iter().enumerate() {
            match fault {
                Some(Fault::ErrorAfter { chunks, message }) if i == *chunks => {
                    let error = json!({"error": {"message": message, "type": "internal_server_error"}});
                    self.raw(&format!("event: error\ndata: {error}\n\n")).await?;
                    return Some(usize::MAX);
                }
                Some(Fault::StallAfter { chunks }) if i == *chunks => std::future::pending::<()>().await,
                _ => {}
            }
            if i > 0 {
                tokio::time::sleep(self.settings.chunk_delay).await;
            }
            self.chunk(json!({"content": word}), None, None).await?;
        }
        Some(words.len())
    }

    async fn tool_calls(&mut self, calls: &[(String, String)]) -> Option<usize> {
        let mut count = 0;
        for (i, (name, args)) in calls.iter().enumerate() {
            let id = format!("call_{}", request_id().replace('-', ""));
            let head = json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}}]});
            self.chunk(head, None, None).await?;
            let chars: Vec<char> = args.chars().collect();
            for piece in chars.chunks(self.settings.argument_fragment.max(1)) {
                tokio::time::sleep(self.settings.chunk_delay).await;
                let fragment: String = piece.iter().collect();
                self.chunk(json!({"tool_calls": [{"index": i, "function": {"arguments": fragment}}]}), None, None)
                    .await?;
                count += 1;
            }
        }
        Some(count)
    }

    async fn chunk(&mut self, delta: Value, finish: Option<&str>, x_groq: Option<Value>) -> Option<()> {
        let mut chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": 1_767_225_600,
            "model": self.model, "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if let Some(x) = x_groq {
            chunk["x_groq"] = x;
        }
        self.event(&chunk.to_string()).await
    }

    async fn event(&mut self, data: &str) -> Option<()> {
        let frame = format!("data: {data}\n\n");
        if self.settings.split_events && frame.len() > 2 {
            let mid = frame.char_indices().nth(frame.chars().count() / 2).map_or(0, |(i, _)| i);
            self.raw(&frame[..mid]).await?;
            // Long enough for the first half to leave as its own write.
            tokio::time::sleep(Duration::from_millis(2)).await;
            self.raw(&frame[mid..]).await?;
        } else {
            self.raw(&frame).await?;
        }
        if self.settings.comments {
            self.raw(": keep-alive\n\n").await?;
        }
        Some(())
    }

    async fn raw(&mut self, text: &str) -> Option<()> {
        self.tx.send(Ok(Bytes::copy_from_slice(text.as_bytes()))).await.ok()
    }
}
