//! Who may use the playground: direct loopback visitors always; anyone else only with
//! `PLAYGROUND_KEY`, given once as `?key=` (answered with a cookie) or as a bearer token.
//!
//! A request that came through a proxy (it carries `Forwarded`, `X-Forwarded-*` or `X-Real-IP`)
//! is never local, even from 127.0.0.1: a tunnel such as ngrok connects from loopback.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::warn;

use crate::http::AppState;
use crate::metrics::Metrics;

/// The cookie that remembers a visitor who presented the key.
pub const COOKIE: &str = "switchboard_playground";

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Allow,
    /// The key came in the query string: let it in and remember it in a cookie.
    AllowAndRemember,
    Deny(StatusCode, &'static str),
}

/// True for a direct connection from this machine (see [`crate::http::local`]).
pub fn is_direct_loopback(peer: Option<SocketAddr>, headers: &HeaderMap) -> bool {
    crate::http::local::is_direct_local(peer, headers)
}

/// Decides on a request from its peer, headers and query string.
pub fn decide(local: bool, key: Option<&str>, headers: &HeaderMap, query: Option<&str>) -> Access {
    if local {
        return Access::Allow;
    }
    let Some(key) = key else {
        return Access::Deny(
            StatusCode::FORBIDDEN,
            "the playground is open to direct localhost visitors only; set PLAYGROUND_KEY on the server to open it to others",
        );
    };
    let from_query = query
        .and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "key").map(|(_, v)| v.into_owned()));
    if let Some(given) = from_query {
        return if same_secret(&given, key) {
            Access::AllowAndRemember
        } else {
            Access::Deny(StatusCode::FORBIDDEN, "wrong playground key")
        };
    }
    if let Some(given) = crate::http::local::bearer(headers) {
        return if same_secret(given, key) {
            Access::Allow
        } else {
            Access::Deny(StatusCode::FORBIDDEN, "wrong playground key")
        };
    }
    if cookie(headers, COOKIE).is_some_and(|c| same_secret(&c, &cookie_value(key))) {
        return Access::Allow;
    }
    Access::Deny(StatusCode::UNAUTHORIZED, "the playground needs its key: open /playground?key=<PLAYGROUND_KEY>")
}

/// The cookie holds a digest of the key, not the key itself.
pub fn cookie_value(key: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"switchboard playground cookie").expect("any key length");
    mac.update(key.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets without leaking their contents through timing.
fn same_secret(given: &str, expected: &str) -> bool {
    let mac = |s: &str| {
        let mut m = Hmac::<Sha256>::new_from_slice(b"playground-key").expect("any key length");
        m.update(s.as_bytes());
        m
    };
    mac(given).verify_slice(&mac(expected).finalize().into_bytes()).is_ok()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Middleware guarding every playground route.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let local = is_direct_loopback(peer, req.headers());
    match decide(local, state.config.playground_key.as_deref(), req.headers(), req.uri().query()) {
        Access::Allow => next.run(req).await,
        Access::AllowAndRemember => {
            let secure = req.headers().get("x-forwarded-proto").is_some_and(|p| p.as_bytes() == b"https");
            let key = state.config.playground_key.as_deref().unwrap_or_default();
            let cookie = format!(
                "{COOKIE}={}; Path=/playground; HttpOnly; SameSite=Strict; Max-Age=2592000{}",
                cookie_value(key),
                if secure { "; Secure" } else { "" }
            );
            // The page itself: reload it without the key so it doesn't stay in the address bar.
            let mut resp = if req.method() == axum::http::Method::GET && req.uri().path() == "/playground" {
                (StatusCode::SEE_OTHER, [(header::LOCATION, "/playground")]).into_response()
            } else {
                next.run(req).await
            };
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Access::Deny(status, message) => {
            Metrics::inc(&state.metrics.webhooks_rejected, "reason", "playground_access");
            warn!(?peer, status = status.as_u16(), path = req.uri().path(), message, "playground request refused");
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_headers as headers;

    #[test]
    fn loopback_without_proxy_headers_is_local() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo6: SocketAddr = "[::1]:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let lan: SocketAddr = "192.168.1.10:5000".parse().unwrap();
        for peer in [lo, lo6, mapped] {
            assert!(is_direct_loopback(Some(peer), &HeaderMap::new()), "{peer}");
        }
        assert!(!is_direct_loopback(Some(lan), &HeaderMap::new()));
        assert!(!is_direct_loopback(None, &HeaderMap::new()), "unknown peer is not local");
        for h in crate::http::local::PROXY_HEADERS {
            assert!(!is_direct_loopback(Some(lo), &headers(&[(h, "1.2.3.4")])), "{h}");
        }
    }

    #[test]
    fn keys_open_the_playground_to_others() {
        let none = HeaderMap::new();
        assert_eq!(decide(true, None, &none, None), Access::Allow);
        assert!(matches!(decide(false, None, &none, Some("key=x")), Access::Deny(StatusCode::FORBIDDEN, _)));
        assert!(matches!(decide(false, Some("k1"), &none, None), Access::Deny(StatusCode::UNAUTHORIZED, _)));
        assert_eq!(decide(false, Some("k1"), &none, Some("a=b&key=k1")), Access::AllowAndRemember);
        assert!(matches!(decide(false, Some("k1"), &none, Some("key=k2")), Access::Deny(StatusCode::FORBIDDEN, _)));
        assert_eq!(decide(false, Some("k1"), &headers(&[("authorization", "Bearer k1")]), None), Access::Allow);
        assert!(matches!(
            decide(false, Some("k1"), &headers(&[("authorization", "Bearer k2")]), None),
            Access::Deny(StatusCode::FORBIDDEN, _)
        ));
        let good = format!("a=1; {COOKIE}={}", cookie_value("k1"));
        assert_eq!(decide(false, Some("k1"), &headers(&[("cookie", &good)]), None), Access::Allow);
        let raw = format!("{COOKIE}=k1");
        assert!(matches!(decide(false, Some("k1"), &headers(&[("cookie", &raw)]), None), Access::Deny(..)));
    }
}
