//! The call history API: `GET /api/calls`, `GET /api/calls/{sid}` and the call's recording.
//!
//! Access: with `API_KEY` set, every request needs `Authorization: Bearer <key>`. Without it, only
//! direct requests from this machine are answered: a loopback peer carrying no proxy headers. A
//! local tunnel (ngrok, cloudflared) also connects from loopback but adds `X-Forwarded-For` or
//! `Forwarded`, so it is refused.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::dialout::same_key;
use super::AppState;
use crate::history::{is_call_sid, HistoryError, HistoryReader, ListQuery, MAX_PAGE};
use crate::http::error::{error, HttpError};

pub(super) fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/calls", get(list))
        .route("/api/calls/{sid}", get(detail))
        .route("/api/calls/{sid}/recording", get(recording))
        .route_layer(middleware::from_fn_with_state(state, guard))
}

/// Why a request may not use the API.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Denied {
    /// A key is configured and the request's is missing or wrong.
    Key,
    /// No key is configured and the request isn't a direct local one.
    NotLocal,
}

/// The access rule, on plain values so it is easy to test.
pub(super) fn check_access(api_key: Option<&str>, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<(), Denied> {
    match api_key {
        Some(key) => {
            let given = super::local::bearer(headers);
            if given.is_some_and(|g| same_key(g, key)) {
                Ok(())
            } else {
                Err(Denied::Key)
            }
        }
        None => {
            if super::local::is_direct_local(peer, headers) {
                Ok(())
            } else {
                Err(Denied::NotLocal)
            }
        }
    }
}

async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    match check_access(state.config.api_key.as_deref(), req.headers(), peer) {
        Ok(()) => next.run(req).await,
        Err(Denied::Key) => {
            let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer <API_KEY>)");
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            resp
        }
        Err(Denied::NotLocal) => error(
            StatusCode::FORBIDDEN,
            "API_KEY is not set on the server: the history API answers only direct requests from the server's own machine",
        ),
    }
}

/// Runs a blocking read on the history, mapping "off" and failures to JSON errors.
async fn read<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&HistoryReader) -> Result<T, HistoryError> + Send + 'static,
) -> Result<T, HttpError> {
    let Some(reader) = state.history.clone() else {
        return Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "call history is off on this server"));
    };
    match tokio::task::spawn_blocking(move || f(&reader)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "call history read failed");
            Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, format!("call history unavailable: {e}")))
        }
        Err(e) => Err(HttpError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("call history read failed: {e}"))),
    }
}

/// Parses `limit`, `before` and `direction`; anything else is an error.
fn parse_list_query(raw: Option<&str>) -> Result<ListQuery, String> {
    let mut q = ListQuery::default();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "limit" => {
                q.limit = v
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| format!("limit must be a whole number from 1 to {MAX_PAGE}, got {v:?}"))?;
            }
            "before" if !v.is_empty() => q.before = Some(v.parse()?),
            "before" => {}
            "direction" if v.is_empty() => {}
            "direction" => {
                if !matches!(&*v, "inbound" | "outbound" | "playground") {
                    return Err(format!("direction must be inbound, outbound or playground, got {v:?}"));
                }
                q.direction = Some(v.into_owned());
            }
            other => return Err(format!("unknown parameter {other:?}: use limit, before, direction")),
        }
    }
    Ok(q)
}

async fn list(State(state): State<AppState>, RawQuery(raw): RawQuery) -> Response {
    let q = match parse_list_query(raw.as_deref()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match read(&state, move |r| r.list(&q)).await {
        Ok(page) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

fn check_sid(sid: &str) -> Result<(), HttpError> {
    if is_call_sid(sid) {
        Ok(())
    } else {
        Err(HttpError::new(StatusCode::BAD_REQUEST, "not a call sid: letters, digits, - and _ only, at most 64"))
    }
}

async fn detail(State(state): State<AppState>, Path(sid): Path<String>) -> Response {
    if let Err(e) = check_sid(&sid) {
        return e.into_response();
    }
    let key = sid.clone();
    match read(&state, move |r| r.call(&key)).await {
        Ok(Some(call)) => Json(call).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no call {sid} in the history")),
        Err(e) => e.into_response(),
    }
}

/// The stereo WAV the recorder wrote for the call (left caller, right bot), with Range support so
/// a player can seek. Only the path the history recorded is ever served.
async fn recording(State(state): State<AppState>, Path(sid): Path<String>, req: Request) -> Response {
    if let Err(e) = check_sid(&sid) {
        return e.into_response();
    }
    let key = sid.clone();
    let path = match read(&state, move |r| r.recording_path(&key)).await {
        Ok(Some(Some(path))) => path,
        Ok(Some(None)) => return error(StatusCode::NOT_FOUND, format!("call {sid} has no recording")),
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no call {sid} in the history")),
        Err(e) => return e.into_response(),
    };
    if !tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
        return error(StatusCode::NOT_FOUND, format!("the recording of call {sid} is no longer on disk"));
    }
    // Only the method and the range/conditional headers matter to ServeFile.
    let (parts, _) = req.into_parts();
    let req = Request::from_parts(parts, Body::empty());
    match tower_http::services::ServeFile::new(&path).try_call(req).await {
        Ok(resp) => {
            let mut resp = resp.map(Body::new);
            resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("private, no-cache"));
            resp
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the recording: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_headers as headers;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_configured_key_is_required_from_everyone() {
        let ok = headers(&[("authorization", "Bearer sekrit")]);
        assert_eq!(check_access(Some("sekrit"), &ok, addr("203.0.113.9:5000")), Ok(()));
        assert_eq!(check_access(Some("sekrit"), &HeaderMap::new(), addr("127.0.0.1:5000")), Err(Denied::Key));
        let wrong = headers(&[("authorization", "Bearer sekrit2")]);
        assert_eq!(check_access(Some("sekrit"), &wrong, addr("127.0.0.1:5000")), Err(Denied::Key));
        let basic = headers(&[("authorization", "Basic sekrit")]);
        assert_eq!(check_access(Some("sekrit"), &basic, addr("127.0.0.1:5000")), Err(Denied::Key));
    }

    #[test]
    fn without_a_key_only_direct_loopback_requests_pass() {
        let none = HeaderMap::new();
        assert_eq!(check_access(None, &none, addr("127.0.0.1:1")), Ok(()));
        assert_eq!(check_access(None, &none, addr("[::1]:1")), Ok(()));
        assert_eq!(check_access(None, &none, addr("[::ffff:127.0.0.1]:1")), Ok(()));
        assert_eq!(check_access(None, &none, addr("192.168.1.4:1")), Err(Denied::NotLocal));
        assert_eq!(check_access(None, &none, None), Err(Denied::NotLocal), "unknown peer");
        for h in crate::http::local::PROXY_HEADERS {
            let proxied = headers(&[(h, "1.2.3.4")]);
            assert_eq!(check_access(None, &proxied, addr("127.0.0.1:1")), Err(Denied::NotLocal), "{h}");
        }
    }

    #[test]
    fn list_parameters_are_validated() {
        assert_eq!(parse_list_query(None).unwrap(), ListQuery::default());
        let q = parse_list_query(Some("limit=5&before=1700000000000%3ACA1&direction=outbound")).unwrap();
        assert_eq!(q.limit, 5);
        assert_eq!(q.before.unwrap().to_string(), "1700000000000:CA1");
        assert_eq!(q.direction.as_deref(), Some("outbound"));
        for bad in ["limit=0", "limit=501", "limit=x", "before=yesterday", "direction=sideways", "sort=asc"] {
            assert!(parse_list_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
