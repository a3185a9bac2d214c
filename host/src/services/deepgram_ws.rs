//! The WebSocket handshake both Deepgram clients share: `Authorization: Token KEY`, a connect
//! deadline, Nagle off, small eagerly-allocated buffers (hundreds of calls each hold two sockets),
//! and Deepgram's handshake errors (HTTP status plus the `dg-error` header or JSON body) as values.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Error as WsError};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

use super::error::{deepgram_error_message, ErrorKind};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Read buffer per socket: control JSON and audio chunks are small.
const READ_BUFFER: usize = 8 * 1024;
/// Largest message accepted from Deepgram.
const MAX_MESSAGE: usize = 4 << 20;
/// Bytes queued for a stuck socket before writes fail instead of growing memory.
const MAX_WRITE_BUFFER: usize = 512 * 1024;

/// Why a Deepgram WebSocket could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandshakeError {
    #[error("Deepgram rejected the credentials (HTTP {status}): {message}")]
    Auth { status: u16, message: String },
    #[error("Deepgram refused the connection (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("Deepgram connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("Deepgram connection failed: {0}")]
    Network(String),
}

impl HandshakeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            HandshakeError::Auth { .. } => ErrorKind::Auth,
            HandshakeError::Rejected { status, .. } => ErrorKind::from_status(*status),
            HandshakeError::Timeout(_) => ErrorKind::Timeout,
            HandshakeError::Network(_) => ErrorKind::Network,
        }
    }

    /// Whether trying again later can succeed (not for bad keys or bad parameters).
    pub fn is_retryable(&self) -> bool {
        !matches!(self.kind(), ErrorKind::Auth | ErrorKind::BadRequest)
    }
}

/// Opens `url` with Deepgram's token header.
pub(crate) async fn connect(url: &Url, api_key: &str, limit: Duration) -> Result<Ws, HandshakeError> {
    let mut request =
        url.as_str().into_client_request().map_err(|e| HandshakeError::Network(format!("bad URL {url}: {e}")))?;
    let token = HeaderValue::from_str(&format!("Token {api_key}"))
        .map_err(|_| HandshakeError::Auth { status: 0, message: "API key is not a valid header value".into() })?;
    request.headers_mut().insert(AUTHORIZATION, token);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let attempt = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(limit, attempt).await {
        Err(_) => Err(HandshakeError::Timeout(limit)),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(WsError::Http(response))) => Err(http_refusal(&response)),
        Ok(Err(e)) => Err(HandshakeError::Network(e.to_string())),
    }
}

fn http_refusal(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> HandshakeError {
    let status = response.status().as_u16();
    let body = response.body().as_deref().filter(|b| !b.is_empty());
    let header = response.headers().get("dg-error").map(|v| v.as_bytes());
    let message = match body.or(header) {
        Some(raw) => deepgram_error_message(raw),
        None => response.status().canonical_reason().unwrap_or("no reason given").to_string(),
    };
    if status == 401 || status == 403 {
        HandshakeError::Auth { status, message }
    } else {
        HandshakeError::Rejected { status, message }
    }
}

/// Code and reason of a close frame (1005 "no status" when the peer sent none).
pub(crate) fn close_parts(frame: Option<&CloseFrame>) -> (u16, String) {
    match frame {
        Some(f) => (u16::from(f.code), f.reason.to_string()),
        None => (u16::from(CloseCode::Status), String::new()),
    }
}
