//! Outbound HTTP for plugins: every URL is checked against the persona's allowlist before a
//! connection is made; redirects are not followed (they could leave the allowlist); bodies and
//! time are capped.

use std::str::FromStr;
use std::time::{Duration, Instant};

use url::Url;

use super::bindings::http_api::{HttpError, Method, Request, Response};

/// Largest request body a plugin may send.
pub const MAX_REQUEST_BODY: usize = 64 << 10;
/// Largest response body a plugin may receive.
pub const MAX_RESPONSE_BODY: usize = 256 << 10;
/// Headers the host sets itself.
const RESERVED_HEADERS: [&str; 5] = ["host", "content-length", "connection", "transfer-encoding", "upgrade"];

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("allowed host {entry:?}: {reason}")]
pub struct AllowlistError {
    entry: String,
    reason: &'static str,
}

/// One `allowed_hosts` entry: `[http://|https://]host[:port]`, host may start with `*.`.
/// Without a port only the scheme's default port is allowed.
#[derive(Debug, Clone, PartialEq)]
pub struct AllowedHost {
    scheme: Option<String>,
    /// Lowercase; for a wildcard, the suffix after `*.`.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl FromStr for AllowedHost {
    type Err = AllowlistError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let err = |reason| AllowlistError { entry: entry.to_string(), reason };
        let (scheme, rest) = match entry.split_once("://") {
            Some((s @ ("http" | "https"), rest)) => (Some(s.to_string()), rest),
            Some(_) => return Err(err("the scheme must be http or https")),
            None => (None, entry),
        };
        let (wildcard, rest) = match rest.strip_prefix("*.") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', '*']) {
            return Err(err("expected host or host:port"));
        }
        let url = Url::parse(&format!("http://{rest}")).map_err(|_| err("not a valid host"))?;
        let host = url.host_str().ok_or_else(|| err("not a valid host"))?.to_ascii_lowercase();
        Ok(AllowedHost { scheme, host, wildcard, port: url.port() })
    }
}

impl AllowedHost {
    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else { return false };
        if self.scheme.as_deref().is_some_and(|s| s != url.scheme()) {
            return false;
        }
        let host_ok = if self.wildcard {
            host.strip_suffix(&self.host).is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1)
        } else {
            host == self.host
        };
        let port_ok = match self.port {
            Some(p) => url.port_or_known_default() == Some(p),
            None => url.port().is_none(),
        };
        host_ok && port_ok
    }
}

/// A request checked against the allowlist and the caps, ready to send.
pub(crate) struct Checked {
    request: reqwest::Request,
}

pub(crate) fn check(req: Request, allowed: &[AllowedHost]) -> Result<Checked, HttpError> {
    let url = Url::parse(&req.url).map_err(|e| HttpError::InvalidRequest(format!("url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HttpError::InvalidRequest("only http and https URLs".into()));
    }
    if !allowed.iter().any(|a| a.allows(&url)) {
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        return Err(HttpError::NotAllowed(authority));
    }
    if req.body.len() > MAX_REQUEST_BODY {
        return Err(HttpError::InvalidRequest(format!("body over {MAX_REQUEST_BODY} bytes")));
    }
    let method = match req.method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
        Method::Head => reqwest::Method::HEAD,
    };
    let mut request = reqwest::Request::new(method, url);
    for (name, value) in req.headers {
        if RESERVED_HEADERS.iter().any(|r| name.eq_ignore_ascii_case(r)) {
            return Err(HttpError::InvalidRequest(format!("header {name:?} is set by the host")));
        }
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpError::InvalidRequest(format!("header name {name:?}")))?;
        let value = reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| HttpError::InvalidRequest(format!("header {name} value")))?;
        request.headers_mut().append(name, value);
    }
    if !req.body.is_empty() {
        *request.body_mut() = Some(req.body.into());
    }
    Ok(Checked { request })
}

/// Sends a checked request on `runtime`, blocking this (non-async) thread until the whole
/// response is in or `timeout` passes.
pub(crate) fn send_blocking(
    client: &reqwest::Client,
    runtime: &tokio::runtime::Handle,
    checked: Checked,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    runtime.block_on(async {
        match tokio::time::timeout_at(deadline.into(), exchange(client, checked.request)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    })
}

async fn exchange(client: &reqwest::Client, request: reqwest::Request) -> Result<Response, HttpError> {
    let mut resp = client.execute(request).await.map_err(|e| HttpError::Transport(transport_message(&e)))?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| HttpError::Transport(transport_message(&e)))? {
        if body.len() + chunk.len() > MAX_RESPONSE_BODY {
            return Err(HttpError::ResponseTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response { status, headers, body })
}

/// The error and its causes.
fn transport_message(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The client all plugins share: no redirects.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("switchboard-persona/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, url: &str) -> bool {
        entry.parse::<AllowedHost>().unwrap().allows(&Url::parse(url).unwrap())
    }

    #[test]
    fn allowlist_matches_host_port_and_scheme() {
        assert!(allows("api.example.com", "https://api.example.com/x"));
        assert!(allows("api.example.com", "http://API.example.com/x"));
        assert!(!allows("api.example.com", "https://api.example.com:8443/x"), "only the default port");
        assert!(!allows("api.example.com", "https://evil.com/?api.example.com"));
        assert!(!allows("api.example.com", "https://api.example.com.evil.com/"));
        assert!(allows("127.0.0.1:8089", "http://127.0.0.1:8089/orders/1"));
        assert!(!allows("127.0.0.1:8089", "http://127.0.0.1:8090/"));
        assert!(allows("https://api.example.com", "https://api.example.com/"));
        assert!(!allows("https://api.example.com", "http://api.example.com/"));
        assert!(allows("*.example.com", "https://a.b.example.com/"));
        assert!(!allows("*.example.com", "https://example.com/"));
        assert!(!allows("*.example.com", "https://badexample.com/"));
        assert!(allows("[::1]:9000", "http://[::1]:9000/"));
    }

    #[test]
    fn bad_entries_are_refused() {
        for e in ["", "ftp://x.com", "x.com/path", "*", "user@x.com", "*.*.com"] {
            assert!(e.parse::<AllowedHost>().is_err(), "{e:?}");
        }
    }

    #[test]
    fn requests_are_checked_before_sending() {
        let allowed = vec!["127.0.0.1:8089".parse().unwrap()];
        let req = |url: &str, headers: Vec<(String, String)>, body: Vec<u8>| Request {
            method: Method::Get,
            url: url.into(),
            headers,
            body,
        };
        let denied = check(req("http://10.0.0.1:8089/", vec![], vec![]), &allowed).err().unwrap();
        assert_eq!(denied, HttpError::NotAllowed("10.0.0.1:8089".into()));
        let host_header = vec![("Host".to_string(), "evil".to_string())];
        assert!(matches!(
            check(req("http://127.0.0.1:8089/", host_header, vec![]), &allowed),
            Err(HttpError::InvalidRequest(_))
        ));
        let big = vec![0u8; MAX_REQUEST_BODY + 1];
        assert!(matches!(
            check(req("http://127.0.0.1:8089/", vec![], big), &allowed),
            Err(HttpError::InvalidRequest(_))
        ));
        assert!(matches!(
            check(req("file:///etc/passwd", vec![], vec![]), &allowed),
            Err(HttpError::InvalidRequest(_))
        ));
        assert!(check(req("http://127.0.0.1:8089/orders/1", vec![], vec![]), &allowed).is_ok());
    }
}
