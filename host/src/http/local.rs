//! Telling a visitor on this machine from anyone else, for the parts of the server open to local
//! visitors without a key (the playground, the history API), and reading bearer keys.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};

/// Headers a proxy or tunnel adds: with one present, the peer address is the proxy's (a tunnel
/// such as ngrok connects from 127.0.0.1), not the visitor's.
pub(crate) const PROXY_HEADERS: [&str; 9] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
    "cf-connecting-ip",
    "true-client-ip",
    "x-client-ip",
];

/// True for a direct connection from this machine to a local name. The `Host` check stops DNS
/// rebinding: a page on another site can point its own name at 127.0.0.1, but its requests
/// then carry that name. (A same-host reverse proxy that adds no forwarding header at all still
/// looks local: set the key when running behind one.)
pub(crate) fn is_direct_local(peer: Option<SocketAddr>, headers: &HeaderMap) -> bool {
    let loopback = peer.is_some_and(|p| match p.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    });
    loopback && !PROXY_HEADERS.iter().any(|h| headers.contains_key(*h)) && host_is_local(headers)
}

/// `Host` names this machine (any port); a request without one (not a browser) passes.
fn host_is_local(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else { return true };
    let Ok(host) = host.to_str() else { return false };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name == "::1"
        || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// The token of an `Authorization: Bearer …` header (the scheme is case-insensitive).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_headers as headers;

    #[test]
    fn local_means_loopback_peer_no_proxy_header_and_a_local_host_name() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        for host in ["localhost:7860", "127.0.0.1:7860", "[::1]:7860", "LOCALHOST", "app.localhost:80"] {
            assert!(is_direct_local(Some(lo), &headers(&[("host", host)])), "{host}");
        }
        assert!(is_direct_local(Some("[::1]:5000".parse().unwrap()), &HeaderMap::new()));
        assert!(is_direct_local(Some("[::ffff:127.0.0.1]:5000".parse().unwrap()), &HeaderMap::new()));
        // DNS rebinding: loopback peer, foreign name.
        for host in ["evil.example", "evil.example:7860", "127.0.0.1.evil.example"] {
            assert!(!is_direct_local(Some(lo), &headers(&[("host", host)])), "{host}");
        }
        assert!(!is_direct_local(Some("10.0.0.2:5000".parse().unwrap()), &HeaderMap::new()));
        assert!(!is_direct_local(None, &HeaderMap::new()), "unknown peer is not local");
        for h in PROXY_HEADERS {
            assert!(!is_direct_local(Some(lo), &headers(&[(h, "1.2.3.4")])), "{h}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(&headers(&[("authorization", "Bearer k1")])), Some("k1"));
        assert_eq!(bearer(&headers(&[("authorization", "bearer  k2 ")])), Some("k2"));
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
