//! The URL Twilio used to reach us: needed to check signatures and to build the stream URL.
//!
//! `PUBLIC_URL`/`PROXY_HOST` win; without them it comes from `X-Forwarded-Proto`/
//! `X-Forwarded-Host`/`Host`, as on a serverless platform where the host name isn't known up front.

use axum::http::{HeaderMap, Uri};
use url::Url;

/// Resolves public URLs for requests.
#[derive(Debug, Clone)]
pub struct PublicUrl {
    configured: Option<Url>,
}

impl PublicUrl {
    pub fn new(configured: Option<Url>) -> Self {
        Self { configured }
    }

    /// Base URL without a trailing slash, e.g. `https://bot.example.com`.
    pub fn base(&self, headers: &HeaderMap) -> Option<String> {
        if let Some(u) = &self.configured {
            return Some(u.as_str().trim_end_matches('/').to_string());
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
        };
        let host = header("x-forwarded-host").or_else(|| header("host")).filter(|h| valid_host(h))?;
        // Without a proxy telling us otherwise the request reached us as plain HTTP.
        let proto =
            header("x-forwarded-proto").filter(|p| p == "https" || p == "http").unwrap_or_else(|| "http".into());
        Some(format!("{proto}://{host}"))
    }

    /// The full URL of this request as Twilio signed it.
    pub fn request_url(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Some(format!("{}{}", self.base(headers)?, path))
    }

    /// The media stream URL: `wss://host/ws` (or `ws://` behind plain HTTP).
    pub fn stream_url(&self, headers: &HeaderMap) -> Option<String> {
        let base = self.base(headers)?;
        let ws = match base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}"),
            Some((_, rest)) => format!("ws://{rest}"),
            None => return None,
        };
        Some(format!("{ws}/ws"))
    }
}

/// A host[:port] made of the characters a host header may hold, so it can't smuggle a path.
fn valid_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_headers as headers;

    #[test]
    fn configured_url_wins() {
        let p = PublicUrl::new(Some(Url::parse("https://bot.example.com/").unwrap()));
        let h = headers(&[("host", "127.0.0.1:7860")]);
        assert_eq!(p.base(&h).unwrap(), "https://bot.example.com");
        assert_eq!(p.stream_url(&h).unwrap(), "wss://bot.example.com/ws");
        let uri: Uri = "/incoming?x=1".parse().unwrap();
        assert_eq!(p.request_url(&h, &uri).unwrap(), "https://bot.example.com/incoming?x=1");
    }

    #[test]
    fn derived_from_forwarded_headers_then_host() {
        let p = PublicUrl::new(None);
        let h =
            headers(&[("host", "internal:8000"), ("x-forwarded-host", "x.modal.run"), ("x-forwarded-proto", "https")]);
        assert_eq!(p.stream_url(&h).unwrap(), "wss://x.modal.run/ws");
        let h = headers(&[("host", "127.0.0.1:7860")]);
        assert_eq!(p.base(&h).unwrap(), "http://127.0.0.1:7860");
        assert_eq!(p.stream_url(&h).unwrap(), "ws://127.0.0.1:7860/ws");
        assert!(p.base(&headers(&[("host", "evil.com/path?")])).is_none());
        assert!(p.base(&HeaderMap::new()).is_none());
    }
}
