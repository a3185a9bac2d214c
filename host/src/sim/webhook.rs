//! Twilio's HTTP half: the signed voice webhook, the TwiML it returns, and loopback routing (so a
//! public URL such as `https://example.ngrok.app` can be signed while the request goes to a local
//! server).

use std::net::IpAddr;
use std::time::Duration;

use url::Url;

use crate::telephony::twilio::signature;

/// Largest TwiML document accepted.
const MAX_TWIML_BYTES: usize = 64 * 1024;
/// Error bodies are quoted up to this many characters.
const MAX_BODY_QUOTE: usize = 300;

/// Why the HTTP half of a simulated call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {url} could not be reached: {reason}")]
    Transport { url: String, reason: String },
    #[error("webhook {url} answered HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("webhook answer is not usable TwiML: {0}")]
    Twiml(String),
}

/// Which way the call goes, as Twilio's `Direction` parameter says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TwilioDirection {
    Inbound,
    OutboundApi,
}

impl TwilioDirection {
    pub fn as_twilio(self) -> &'static str {
        match self {
            TwilioDirection::Inbound => "inbound",
            TwilioDirection::OutboundApi => "outbound-api",
        }
    }
}

/// HTTP method Twilio uses for the webhook (a call's `Method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMethod {
    Post,
    Get,
}

/// One webhook request as Twilio would make it.
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    /// The URL Twilio believes it calls: signed over, and sent as `Host`/`X-Forwarded-*`.
    pub url: Url,
    /// Where the request really goes (the loopback server), if different.
    pub server: Option<Url>,
    pub method: WebhookMethod,
    pub auth_token: Option<String>,
    pub params: Vec<(String, String)>,
    pub timeout: Duration,
}

/// What the TwiML asks for: the stream to open and its `<Parameter>`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    pub url: String,
    pub parameters: Vec<(String, String)>,
}

/// The form Twilio posts for a call (voice webhook for inbound calls, the `Url` fetch for calls
/// created through the REST API).
pub fn call_params(
    account_sid: &str,
    call_sid: &str,
    from: &str,
    to: &str,
    direction: TwilioDirection,
) -> Vec<(String, String)> {
    let status = match direction {
        TwilioDirection::Inbound => "ringing",
        TwilioDirection::OutboundApi => "in-progress",
    };
    [
        ("AccountSid", account_sid),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call_sid),
        ("CallStatus", status),
        ("Called", to),
        ("Caller", from),
        ("Direction", direction.as_twilio()),
        ("From", from),
        ("To", to),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Sends the webhook and returns (HTTP status, TwiML body). Non-2xx is an error quoting the body.
pub async fn fetch_twiml(http: &reqwest::Client, req: &WebhookRequest) -> Result<(u16, String), WebhookError> {
    let shown = req.url.to_string();
    let target = match &req.server {
        Some(server) => route(&req.url, server),
        None => req.url.clone(),
    };
    let transport = |e: reqwest::Error| WebhookError::Transport { url: shown.clone(), reason: error_chain(&e) };
    let mut builder = match req.method {
        WebhookMethod::Post => http.post(target).form(&req.params),
        WebhookMethod::Get => {
            let mut with_query = target;
            with_query.query_pairs_mut().extend_pairs(&req.params);
            http.get(with_query)
        }
    };
    if let Some(token) = &req.auth_token {
        let (signed_url, signed_params) = match req.method {
            WebhookMethod::Post => (req.url.to_string(), req.params.as_slice()),
            WebhookMethod::Get => {
                let mut u = req.url.clone();
                u.query_pairs_mut().extend_pairs(&req.params);
                (u.to_string(), &[][..])
            }
        };
        builder = builder.header(signature::SIGNATURE_HEADER, signature::compute(token, &signed_url, signed_params));
    }
    if req.server.is_some() {
        // What a tunnel or proxy in front of the server would add.
        builder = builder.header("X-Forwarded-Proto", req.url.scheme()).header("X-Forwarded-Host", host_port(&req.url));
    }
    let resp = builder.timeout(req.timeout).send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let body = read_limited(resp).await.map_err(transport)?;
    if !(200..300).contains(&status) {
        let body: String = body.chars().take(MAX_BODY_QUOTE).collect();
        return Err(WebhookError::Status { url: shown, status, body });
    }
    Ok((status, body))
}

async fn read_limited(mut resp: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_TWIML_BYTES.saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room < chunk.len() {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The error and its causes ("error sending request: … Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn host_port(u: &Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// Finds `<Response><Connect><Stream url>` and its `<Parameter>`s.
pub fn parse_twiml(xml: &str) -> Result<StreamTarget, WebhookError> {
    let bad = |m: String| WebhookError::Twiml(m);
    if xml.len() > MAX_TWIML_BYTES {
        return Err(bad(format!("document larger than {MAX_TWIML_BYTES} bytes")));
    }
    let doc = roxmltree::Document::parse(xml).map_err(|e| bad(format!("not XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() != "Response" {
        return Err(bad(format!("root element is <{}>, not <Response>", root.tag_name().name())));
    }
    let stream = root
        .children()
        .filter(|n| n.has_tag_name("Connect"))
        .flat_map(|c| c.children())
        .find(|n| n.has_tag_name("Stream"));
    let Some(stream) = stream else {
        let verbs: Vec<&str> = root.children().filter(|n| n.is_element()).map(|n| n.tag_name().name()).collect();
        return Err(bad(format!("no <Connect><Stream> (verbs: {verbs:?})")));
    };
    let url = stream.attribute("url").ok_or_else(|| bad("<Stream> has no url attribute".into()))?;
    let parsed = Url::parse(url).map_err(|e| bad(format!("stream url {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "ws" | "wss") {
        return Err(bad(format!("stream url {url:?} is not ws:// or wss://")));
    }
    let mut parameters = Vec::new();
    for p in stream.children().filter(|n| n.has_tag_name("Parameter")) {
        let (Some(name), Some(value)) = (p.attribute("name"), p.attribute("value")) else {
            return Err(bad("<Parameter> without name or value".into()));
        };
        parameters.push((name.to_string(), value.to_string()));
    }
    Ok(StreamTarget { url: url.to_string(), parameters })
}

/// Sends a request meant for a public name to a loopback `server` instead: when `target`'s host
/// is not loopback but `server`'s is, the result keeps `target`'s path and query and takes
/// `server`'s host and port (and its scheme, as ws/wss for WebSocket targets).
pub fn route(target: &Url, server: &Url) -> Url {
    if is_loopback(target) || !is_loopback(server) {
        return target.clone();
    }
    let secure = server.scheme() == "https" || server.scheme() == "wss";
    let scheme = match (target.scheme(), secure) {
        ("ws" | "wss", true) => "wss",
        ("ws" | "wss", false) => "ws",
        (_, true) => "https",
        (_, false) => "http",
    };
    let mut out = server.clone();
    // Both schemes are "special" (http/https/ws/wss), so switching between them cannot fail.
    let _ = out.set_scheme(scheme);
    out.set_path(target.path());
    out.set_query(target.query());
    out.set_fragment(None);
    out
}

fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_stream_with_escaped_parameters() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://h.example/ws?a=1&amp;b=2"><Parameter name="From" value="+1555"/><Parameter name="x&quot;y" value="&lt;v&gt;&amp;"/></Stream></Connect><Pause length="20"/></Response>"#;
        let t = parse_twiml(xml).unwrap();
        assert_eq!(t.url, "wss://h.example/ws?a=1&b=2");
        assert_eq!(t.parameters, vec![("From".into(), "+1555".into()), ("x\"y".into(), "<v>&".into())]);
    }

    #[test]
    fn rejects_unusable_twiml_with_reasons() {
        let err = |x: &str| parse_twiml(x).unwrap_err().to_string();
        assert!(err("<Response><Say>hi</Say><Hangup/></Response>").contains("[\"Say\", \"Hangup\"]"));
        assert!(err("not xml").contains("not XML"));
        assert!(err("<Foo/>").contains("<Foo>"));
        assert!(err("<Response><Connect><Stream/></Connect></Response>").contains("no url"));
        assert!(err(r#"<Response><Connect><Stream url="http://x/ws"/></Connect></Response>"#).contains("not ws"));
        assert!(err(r#"<!DOCTYPE r [<!ENTITY e "x">]><Response/>"#).contains("not XML"));
    }

    #[test]
    fn routes_public_names_to_a_loopback_server() {
        let server = Url::parse("http://127.0.0.1:7860").unwrap();
        let ws = Url::parse("wss://example.ngrok.app/ws?t=1").unwrap();
        assert_eq!(route(&ws, &server).as_str(), "ws://127.0.0.1:7860/ws?t=1");
        let hook = Url::parse("https://example.ngrok.app/incoming").unwrap();
        assert_eq!(route(&hook, &server).as_str(), "http://127.0.0.1:7860/incoming");
        let local = Url::parse("ws://localhost:9000/ws").unwrap();
        assert_eq!(route(&local, &server), local);
        let public_server = Url::parse("https://sb.example.com").unwrap();
        assert_eq!(route(&ws, &public_server), ws);
    }

    #[test]
    fn call_params_look_like_twilios() {
        let p = call_params("AC1", "CA1", "+1555", "+1666", TwilioDirection::OutboundApi);
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("Direction"), Some("outbound-api"));
        assert_eq!(get("CallStatus"), Some("in-progress"));
        assert_eq!(get("ApiVersion"), Some("2010-04-01"));
        assert_eq!((get("From"), get("To")), (Some("+1555"), Some("+1666")));
    }
}
