//! Twilio voice webhooks: `POST /` (inbound call) and `POST /twiml` (an outbound call we placed
//! was answered). Both are signature-checked and answer `<Connect><Stream>` TwiML carrying the
//! stream parameters and a stream token.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use tracing::{info, warn};

use super::AppState;
use crate::metrics::Metrics;
use crate::telephony::stream_token::TOKEN_PARAMETER;
use crate::telephony::twilio::signature::{self, SIGNATURE_HEADER};
use crate::telephony::twilio::stream::params;
use crate::telephony::twilio::twiml;

/// Largest webhook body accepted; Twilio's are a few hundred bytes.
pub const MAX_WEBHOOK_BYTES: usize = 64 * 1024;

/// Why a webhook was refused.
#[derive(Debug)]
pub(super) struct Refusal {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.status, [("content-type", "text/plain; charset=utf-8")], self.message).into_response()
    }
}

fn refuse(state: &AppState, status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refusal {
    let message = message.into();
    Metrics::inc(&state.metrics.webhooks_rejected, "reason", reason);
    warn!(status = status.as_u16(), reason, %message, "webhook refused");
    Refusal { status, message }
}

/// A checked webhook: its form parameters, in order.
pub(super) struct Webhook {
    pub params: Vec<(String, String)>,
}

impl Webhook {
    fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses the form body and checks `X-Twilio-Signature` against the public URL.
pub(super) fn verify(state: &AppState, headers: &HeaderMap, uri: &Uri, body: &Bytes) -> Result<Webhook, Refusal> {
    if state.drain.is_draining() {
        return Err(refuse(state, StatusCode::SERVICE_UNAVAILABLE, "draining", "server is draining; not taking calls"));
    }
    if state.full() {
        // Twilio answers a 503 with the number's fallback URL or its own error message.
        return Err(refuse(state, StatusCode::SERVICE_UNAVAILABLE, "full", state.full_message()));
    }
    if body.len() > MAX_WEBHOOK_BYTES {
        return Err(refuse(state, StatusCode::PAYLOAD_TOO_LARGE, "oversized", "webhook body too large"));
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    if state.config.insecure_skip_signature {
        return Ok(Webhook { params });
    }
    let Some(creds) = &state.config.twilio else {
        return Err(refuse(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_auth_token",
            "TWILIO_AUTH_TOKEN is not configured, so Twilio signatures can't be checked",
        ));
    };
    let Some(sig) = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(refuse(state, StatusCode::FORBIDDEN, "unsigned", "missing X-Twilio-Signature"));
    };
    let Some(url) = state.public_url.request_url(headers, uri) else {
        return Err(refuse(
            state,
            StatusCode::BAD_REQUEST,
            "no_public_url",
            "cannot tell the public URL: set PUBLIC_URL or send a Host header",
        ));
    };
    if !signature::is_valid(&creds.auth_token, &url, &params, sig) {
        return Err(refuse(
            state,
            StatusCode::FORBIDDEN,
            "bad_signature",
            format!("invalid X-Twilio-Signature for {url}"),
        ));
    }
    Ok(Webhook { params })
}

/// The `<Connect><Stream>` answer with a token over all stream parameters.
fn stream_twiml(
    state: &AppState,
    headers: &HeaderMap,
    call_sid: &str,
    mut stream_params: Vec<(String, String)>,
) -> Response {
    let Some(url) = state.public_url.stream_url(headers) else {
        return refuse(state, StatusCode::BAD_REQUEST, "no_public_url", "cannot tell the public URL").into_response();
    };
    let token = state.tokens.mint(call_sid, &stream_params, SystemTime::now());
    stream_params.push((TOKEN_PARAMETER.to_string(), token));
    let xml = twiml::Response::new().verb(twiml::Verb::ConnectStream { url, parameters: stream_params }).to_xml();
    ([("content-type", "text/xml; charset=utf-8")], xml).into_response()
}

/// `POST /` and `POST /incoming`: Twilio's voice webhook for an inbound call.
pub(super) async fn incoming(State(state): State<AppState>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let hook = match verify(&state, &headers, &uri, &body) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let Some(call_sid) = hook.get("CallSid").filter(|s| !s.is_empty()).map(str::to_string) else {
        return refuse(&state, StatusCode::BAD_REQUEST, "no_call_sid", "CallSid is required").into_response();
    };
    let from = hook.get("From").unwrap_or_default().to_string();
    let to = hook.get("To").unwrap_or_default().to_string();
    info!(call_sid = %call_sid, from = %from, to = %to, "inbound call");
    let stream_params = vec![
        (params::CALL_SID.to_string(), call_sid.clone()),
        (params::DIRECTION.to_string(), "inbound".to_string()),
        (params::FROM.to_string(), from),
        (params::TO.to_string(), to),
    ];
    stream_twiml(&state, &headers, &call_sid, stream_params)
}

/// `POST /twiml`: an outbound call we created was answered. Persona and dial-out parameters
/// travel in this URL's query string, which Twilio's signature covers.
pub(super) async fn outbound_twiml(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let hook = match verify(&state, &headers, &uri, &body) {
        Ok(h) => h,
        Err(r) => return r.into_response(),
    };
    let Some(call_sid) = hook.get("CallSid").filter(|s| !s.is_empty()).map(str::to_string) else {
        return refuse(&state, StatusCode::BAD_REQUEST, "no_call_sid", "CallSid is required").into_response();
    };
    let mut stream_params = vec![
        (params::CALL_SID.to_string(), call_sid.clone()),
        (params::DIRECTION.to_string(), "outbound".to_string()),
        (params::FROM.to_string(), hook.get("From").unwrap_or_default().to_string()),
        (params::TO.to_string(), hook.get("To").unwrap_or_default().to_string()),
    ];
    let query = uri.query().unwrap_or_default();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()).into_owned() {
        if k == params::PERSONA || k.starts_with(params::CUSTOM_PREFIX) {
            stream_params.push((k, v));
        }
    }
    info!(call_sid = %call_sid, "outbound call answered");
    stream_twiml(&state, &headers, &call_sid, stream_params)
}
