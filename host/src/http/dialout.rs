//! `POST /dialout`: place an outbound call. Bearer-authenticated with `DIALOUT_API_KEY`; numbers
//! must be E.164; Twilio's errors come back as JSON with Twilio's code.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::Mac;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::AppState;
use crate::metrics::Metrics;
use crate::telephony::twilio::rest::{NewCall, RestError};
use crate::telephony::twilio::stream::params;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialoutRequest {
    pub to_number: String,
    pub from_number: String,
    #[serde(default)]
    pub persona: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

use crate::call::ids::is_e164;
use crate::http::error::error;

/// Compares keys without leaking their contents through timing.
pub(super) fn same_key(given: &str, expected: &str) -> bool {
    let mac = |s: &str| {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"dialout-key").expect("any key length");
        m.update(s.as_bytes());
        m
    };
    mac(given).verify_slice(&mac(expected).finalize().into_bytes()).is_ok()
}

pub(super) async fn dialout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(key) = state.config.dialout_api_key.as_deref() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "dial-out is disabled: set DIALOUT_API_KEY on the server");
    };
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|b| same_key(b.trim(), key)) {
        Metrics::inc(&state.metrics.webhooks_rejected, "reason", "dialout_auth");
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    if state.drain.is_draining() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server is draining; not placing calls");
    }
    if state.full() {
        return error(StatusCode::SERVICE_UNAVAILABLE, state.full_message());
    }
    let req: DialoutRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    for (field, n) in [("to_number", &req.to_number), ("from_number", &req.from_number)] {
        if !is_e164(n) {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{field} must be an E.164 number like +15551234567, got {n:?}"),
            );
        }
    }
    if let Some(bad) = req.parameters.keys().find(|k| k.is_empty() || k.len() > 64) {
        return error(StatusCode::BAD_REQUEST, format!("parameter names must be 1-64 characters: {bad:?}"));
    }
    let Some(rest) = &state.rest else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Twilio credentials are not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN",
        );
    };
    let Some(base) = state.public_url.base(&headers) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "cannot tell the public URL: set PUBLIC_URL");
    };
    let twiml_url = twiml_url(&base, &req);
    let call = NewCall { to: &req.to_number, from: &req.from_number, twiml_url: &twiml_url, status_callback: None };
    match rest.create_call(&call).await {
        Ok(created) => {
            info!(call_sid = %created.sid, to = %req.to_number, persona = ?req.persona, "outbound call created");
            Json(json!({ "call_sid": created.sid, "status": created.status, "to_number": req.to_number }))
                .into_response()
        }
        Err(e) => {
            Metrics::inc(&state.metrics.twilio_rest_errors, "operation", "create_call");
            warn!(error = %e, "dial-out failed");
            rest_error_response(e)
        }
    }
}

/// `{public}/twiml?persona=…&p.NAME=…`: Twilio signs this URL when it calls it back.
fn twiml_url(base: &str, req: &DialoutRequest) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(p) = &req.persona {
        query.append_pair(params::PERSONA, p);
    }
    for (k, v) in &req.parameters {
        query.append_pair(&format!("{}{k}", params::CUSTOM_PREFIX), v);
    }
    let query = query.finish();
    if query.is_empty() {
        format!("{base}/twiml")
    } else {
        format!("{base}/twiml?{query}")
    }
}

fn rest_error_response(e: RestError) -> Response {
    match e {
        RestError::Api { status, code, message, more_info } => {
            // Twilio's 4xx about the call itself (bad number, unverified caller ID) are the
            // client's to fix; anything else is our side or Twilio's.
            let ours = if status == 400 || status == 404 { StatusCode::BAD_REQUEST } else { StatusCode::BAD_GATEWAY };
            (
                ours,
                Json(json!({ "error": message, "twilio_code": code, "twilio_status": status, "more_info": more_info })),
            )
                .into_response()
        }
        other => error(StatusCode::BAD_GATEWAY, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164() {
        for ok in ["+15551234567", "+442071838750", "+12"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in ["15551234567", "+", "+0123", "+1555-123", "+1234567890123456", " +1555", "+1"] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn twiml_url_carries_persona_and_parameters_encoded() {
        let req = DialoutRequest {
            to_number: "+1".into(),
            from_number: "+2".into(),
            persona: Some("reminder".into()),
            parameters: [("name".to_string(), "Ada & Bob".to_string())].into(),
        };
        assert_eq!(twiml_url("https://h", &req), "https://h/twiml?persona=reminder&p.name=Ada+%26+Bob");
    }
}
