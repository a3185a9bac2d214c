//! The browser playground: a page that calls the bot over the same Media Streams protocol Twilio
//! speaks on `/ws`, so a browser call runs the exact phone pipeline with no Twilio account.
//!
//! - `GET /playground` and `GET /playground/assets/{file}`: the page, embedded in the binary.
//! - `GET /playground/personas`: what the page can pick.
//! - `POST /playground/call {"persona"}`: sets up a call as the TwiML step does for a phone call
//!   (a call sid and signed stream parameters with a stream token) and starts a live feed for it.
//! - `GET /playground/events/{call_sid}`: that call's events (transcript, VAD, latencies, end) as
//!   Server-Sent Events.
//!
//! Every route is behind [`access::guard`]; `/ws` stays protected by the stream token as always.

pub mod access;
mod assets;
pub mod control;
mod events;

use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tracing::info;

use super::AppState;
use crate::config::{ProviderKind, Providers};
use crate::http::error::error;
use crate::persona::BUILTIN_NAME;
use crate::telephony::stream_token::TOKEN_PARAMETER;
use crate::telephony::twilio::stream::params;

/// What a playground call reports as its caller and callee.
pub const CALLER: &str = "browser";
pub const CALLEE: &str = "playground";

/// The playground's routes, guarded.
pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/playground", get(assets::page))
        .route("/playground/assets/{file}", get(assets::asset))
        .route("/playground/personas", get(personas))
        .route("/playground/call", post(call))
        .route("/playground/events/{call_sid}", get(events::stream))
        .layer(axum::middleware::from_fn_with_state(state, access::guard))
}

/// The built-in persona first, then every loaded plugin persona.
fn persona_names(state: &AppState) -> Vec<String> {
    let mut names = vec![BUILTIN_NAME.to_string()];
    for n in state.streams.sessions.persona_names() {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// Where each stage of a call runs, as the page and the start-up line show it.
pub fn describe_providers(providers: &Providers) -> Vec<String> {
    let name = |stage: &str, kind: ProviderKind, cloud: &str, local: &str| {
        format!("{stage}: {}", if kind == ProviderKind::Local { local } else { cloud })
    };
    vec![
        name("speech recognition", providers.stt, "Deepgram nova-3", "Moonshine on this machine"),
        name("LLM", providers.llm, "Groq (OpenAI-compatible)", "on this machine"),
        name("voice", providers.tts, "Deepgram Aura", "Piper on this machine"),
    ]
}

async fn personas(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({
        "personas": persona_names(&state),
        "providers": describe_providers(&state.config.providers),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct CallRequest {
    persona: Option<String>,
}

/// An id shaped like Twilio's: two letters and 32 hex digits.
fn sid(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

async fn call(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if state.drain.is_draining() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server is draining; not taking calls");
    }
    if state.full() {
        return error(StatusCode::SERVICE_UNAVAILABLE, state.full_message());
    }
    let req: CallRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    let available = persona_names(&state);
    let persona = req.persona.filter(|p| !p.is_empty()).unwrap_or_else(|| BUILTIN_NAME.to_string());
    if !available.contains(&persona) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown persona {persona:?}; available: {}", available.join(", ")),
        );
    }
    let call_sid = sid("PG");
    let stream_sid = sid("MZ");
    // The same parameters and token a phone call's TwiML carries; `direction=playground` tells
    // the transport there is no Twilio call behind the stream.
    let mut parameters = vec![
        (params::CALL_SID.to_string(), call_sid.clone()),
        (params::DIRECTION.to_string(), params::PLAYGROUND.to_string()),
        (params::FROM.to_string(), CALLER.to_string()),
        (params::TO.to_string(), CALLEE.to_string()),
        (params::PERSONA.to_string(), persona.clone()),
    ];
    let token = state.tokens.mint(&call_sid, &parameters, SystemTime::now());
    parameters.push((TOKEN_PARAMETER.to_string(), token));
    // Watch before the stream opens, so the page sees the call from its first event.
    state.events.watch(&call_sid);
    info!(call_sid = %call_sid, persona = %persona, "playground call set up");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let secure = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes() == b"https");
    let ws_url = format!("{}://{host}/ws", if secure { "wss" } else { "ws" });
    let parameters: serde_json::Map<String, serde_json::Value> =
        parameters.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    Json(serde_json::json!({
        "call_sid": call_sid,
        "stream_sid": stream_sid,
        "account_sid": CALLEE,
        "persona": persona,
        "ws_url": ws_url,
        "ws_path": "/ws",
        "events_url": format!("/playground/events/{call_sid}"),
        "parameters": parameters,
    }))
    .into_response()
}
