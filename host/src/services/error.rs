//! What the provider clients share about failures: a coarse kind for metrics and the call's
//! fault policy, and reading Deepgram's error bodies.

use serde::Deserialize;

/// The coarse class of a provider failure: the label of `provider_errors_total{kind}` and what
/// the engine's fault policy keys on (retry, apologise, or give up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 401/403: the API key is wrong or lacks access. Retrying will not help.
    Auth,
    /// The provider refused the request as malformed (unknown model, bad parameter).
    BadRequest,
    /// 429 or a quota limit.
    RateLimited,
    /// 5xx, or the provider reported an internal error.
    Server,
    /// A connect, first-byte or idle deadline passed.
    Timeout,
    /// The connection failed or dropped.
    Network,
    /// The provider sent something we could not understand.
    Protocol,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Auth => "auth",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Network => "network",
            ErrorKind::Protocol => "protocol",
        }
    }

    /// The kind an HTTP status maps to.
    pub fn from_status(status: u16) -> ErrorKind {
        match status {
            401 | 403 => ErrorKind::Auth,
            408 | 504 => ErrorKind::Timeout,
            429 => ErrorKind::RateLimited,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::BadRequest,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deepgram's two documented error body shapes: `{err_code, err_msg, request_id}` and
/// `{category, message, details, request_id}`.
#[derive(Deserialize)]
struct DeepgramErrorBody {
    err_code: Option<String>,
    err_msg: Option<String>,
    category: Option<String>,
    message: Option<String>,
    details: Option<String>,
}

/// The human-readable message of a Deepgram error body (or of the `dg-error` handshake header,
/// which carries the same JSON), falling back to the raw text.
pub(crate) fn deepgram_error_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(parsed) = serde_json::from_slice::<DeepgramErrorBody>(body) else {
        return truncate(text.trim(), 300);
    };
    let code = parsed.err_code.or(parsed.category);
    let message = match (parsed.err_msg.or(parsed.message), parsed.details) {
        (Some(m), Some(d)) => format!("{m} ({d})"),
        (Some(m), None) => m,
        (None, Some(d)) => d,
        (None, None) => truncate(text.trim(), 300),
    };
    match code {
        Some(c) => format!("{c}: {message}"),
        None => message,
    }
}

/// At most `max` characters of `s`, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_deepgram_error_shapes() {
        let a = br#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"x"}"#;
        assert_eq!(deepgram_error_message(a), "INVALID_AUTH: Invalid credentials.");
        let b = br#"{"category":"INVALID_JSON","message":"Invalid JSON submitted.","details":"eof","request_id":"x"}"#;
        assert_eq!(deepgram_error_message(b), "INVALID_JSON: Invalid JSON submitted. (eof)");
        assert_eq!(deepgram_error_message(b"gateway down"), "gateway down");
    }

    #[test]
    fn status_kinds() {
        assert_eq!(ErrorKind::from_status(401), ErrorKind::Auth);
        assert_eq!(ErrorKind::from_status(429), ErrorKind::RateLimited);
        assert_eq!(ErrorKind::from_status(503), ErrorKind::Server);
        assert_eq!(ErrorKind::from_status(404), ErrorKind::BadRequest);
    }
}
