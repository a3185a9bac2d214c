//! Provider clients: speech-to-text, LLM, text-to-speech.
//!
//! Each provider sits behind a small trait ([`stt::SpeechToText`], [`llm::ChatModel`],
//! [`tts::TextToSpeech`]) so the call engine can run against in-memory fakes and other providers
//! slot in. The handles the traits hand out ([`stt::SttHandle`], [`tts::TtsHandle`]) are plain
//! channel ends, the same for every provider. Wire details stay in the provider modules.

mod backoff;
mod deepgram_ws;
pub mod error;
pub mod llm;
pub mod stt;
pub mod tts;

pub use deepgram_ws::HandshakeError;
pub use error::ErrorKind;

use url::Url;

/// `base` with `path` appended to its path and the scheme turned into its WebSocket twin
/// (`https` → `wss`, `http` → `ws`). A base with a path prefix (a proxy) keeps it.
pub(crate) fn websocket_url(base: &Url, path: &str) -> Result<Url, String> {
    let mut url = join_path(base, path);
    let scheme = match base.scheme() {
        "https" | "wss" => "wss",
        "http" | "ws" => "ws",
        other => return Err(format!("unsupported URL scheme {other:?} in {base}")),
    };
    url.set_scheme(scheme).map_err(|()| format!("cannot use scheme {scheme} with {base}"))?;
    Ok(url)
}

/// `base` with `path` appended to its path (no double slash), query and fragment dropped.
pub(crate) fn join_path(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}/{}", base.path().trim_end_matches('/'), path.trim_start_matches('/'));
    url.set_path(&joined);
    url.set_query(None);
    url.set_fragment(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_url_maps_scheme_and_keeps_prefix() {
        let u = websocket_url(&Url::parse("https://api.deepgram.com").unwrap(), "/v1/listen").unwrap();
        assert_eq!(u.as_str(), "wss://api.deepgram.com/v1/listen");
        let u = websocket_url(&Url::parse("http://127.0.0.1:9000/proxy/").unwrap(), "v1/speak").unwrap();
        assert_eq!(u.as_str(), "ws://127.0.0.1:9000/proxy/v1/speak");
        assert!(websocket_url(&Url::parse("ftp://x").unwrap(), "/v1").is_err());
    }

    #[test]
    fn join_path_appends_without_double_slash() {
        let u = join_path(&Url::parse("https://api.groq.com/openai/v1/").unwrap(), "/chat/completions");
        assert_eq!(u.as_str(), "https://api.groq.com/openai/v1/chat/completions");
    }
}
