//! Streaming chat completions: the provider-neutral seam the call engine uses.
//!
//! [`ChatModel::stream_chat`] returns a stream of [`LlmEvent`]s ending in `Done` (or one error).
//! Dropping the stream aborts the request — that is how barge-in cancels a reply.

#[cfg(feature = "local-llm")]
pub mod local;
pub mod openai_compat;
mod sse;

use std::time::Duration;

use futures_util::stream::BoxStream;

use super::error::ErrorKind;

/// The default model (the reference READMEs' choice, set explicitly).
pub const DEFAULT_MODEL: &str = "llama-3.3-70b-versatile";

/// A streaming chat model.
pub trait ChatModel: Send + Sync {
    /// Starts a completion. Nothing is sent until the stream is first polled.
    fn stream_chat(&self, request: ChatRequest) -> LlmStream;
}

/// Events until `Done`, or a single error that ends the stream.
pub type LlmStream = BoxStream<'static, Result<LlmEvent, LlmError>>;

/// One message of the conversation, in the roles chat completions know.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatMessage {
    System(String),
    User(String),
    /// An assistant turn: text, tool calls, or both.
    Assistant {
        content: Option<String>,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    Tool {
        tool_call_id: String,
        content: String,
    },
}

impl ChatMessage {
    pub fn system(text: impl Into<String>) -> Self {
        ChatMessage::System(text.into())
    }

    pub fn user(text: impl Into<String>) -> Self {
        ChatMessage::User(text.into())
    }

    pub fn assistant(text: impl Into<String>) -> Self {
        ChatMessage::Assistant { content: Some(text.into()), tool_calls: Vec::new() }
    }

    pub fn assistant_tool_calls(tool_calls: Vec<ToolCall>) -> Self {
        ChatMessage::Assistant { content: None, tool_calls }
    }

    pub fn tool_result(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage::Tool { tool_call_id: tool_call_id.into(), content: content.into() }
    }
}

/// A complete function call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: a JSON object in text (not validated here).
    pub arguments: String,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

impl ToolSpec {
    /// A tool whose schema arrives as text (the persona contract's `parameters-schema`).
    pub fn from_schema_text(name: &str, description: &str, schema: &str) -> Result<Self, LlmError> {
        let parameters = serde_json::from_str(schema)
            .map_err(|e| LlmError::Config(format!("tool {name}: parameters schema is not JSON: {e}")))?;
        Ok(Self { name: name.into(), description: description.into(), parameters })
    }
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

/// One completion request. `temperature` and `max_tokens` are sent only when set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// `None`: the client's configured model.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: Option<ToolChoice>,
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
}

/// What a completion stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum LlmEvent {
    /// The next piece of reply text.
    TextDelta(String),
    /// Every tool call of this reply, complete, in index order (sent once, when the model
    /// finished them).
    ToolCalls(Vec<ToolCall>),
    /// The reply is complete.
    Done { finish_reason: FinishReason, usage: Option<Usage> },
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Other(String),
}

impl FinishReason {
    pub fn parse(s: &str) -> Self {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_string()),
        }
    }
}

/// Token counts the provider reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
    #[serde(default)]
    pub total_tokens: u32,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmTimeout {
    /// The TCP connection was not established in this time.
    Connect(Duration),
    /// No first token (text, tool call or finish) within this time of sending the request.
    FirstToken(Duration),
    /// The stream went quiet for this long after its first token.
    Idle(Duration),
}

impl std::fmt::Display for LlmTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LlmTimeout::Connect(d) => write!(f, "no connection within {d:?}"),
            LlmTimeout::FirstToken(d) => write!(f, "no first token within {d:?}"),
            LlmTimeout::Idle(d) => write!(f, "no data for {d:?} mid-stream"),
        }
    }
}

/// A chat completion failure, with the provider's own message where it gave one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("LLM rejected the credentials (HTTP {status}): {message}")]
    Auth { status: u16, message: String },
    #[error("LLM rate limited (HTTP 429): {message}")]
    RateLimited { message: String, retry_after: Option<Duration> },
    #[error("LLM API error (HTTP {status}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Api { status: u16, message: String, error_type: Option<String>, code: Option<String> },
    #[error("LLM error mid-stream{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Stream { message: String, error_type: Option<String>, code: Option<String> },
    #[error("LLM timed out: {0}")]
    Timeout(LlmTimeout),
    #[error("LLM request failed: {0}")]
    Network(String),
    #[error("LLM sent an unreadable stream: {0}")]
    Protocol(String),
    #[error("LLM request invalid: {0}")]
    Config(String),
}

impl LlmError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            LlmError::Auth { .. } => ErrorKind::Auth,
            LlmError::RateLimited { .. } => ErrorKind::RateLimited,
            LlmError::Api { status, .. } => ErrorKind::from_status(*status),
            LlmError::Stream { code, error_type, .. } => {
                let says = |s: &str| [code, error_type].iter().any(|v| v.as_deref().is_some_and(|v| v.contains(s)));
                if says("rate_limit") {
                    ErrorKind::RateLimited
                } else {
                    ErrorKind::Server
                }
            }
            LlmError::Timeout(_) => ErrorKind::Timeout,
            LlmError::Network(_) => ErrorKind::Network,
            LlmError::Protocol(_) => ErrorKind::Protocol,
            LlmError::Config(_) => ErrorKind::BadRequest,
        }
    }

    /// Bad credentials (HTTP 401/403).
    pub fn is_auth(&self) -> bool {
        matches!(self, LlmError::Auth { .. })
    }
}
