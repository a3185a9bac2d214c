//! The page and its scripts, compiled into the binary: no CDN, no build step, works offline.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../../assets/playground/index.html");

/// `(file name, content type, content)`.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../../assets/playground/app.js")),
    ("audio.js", "text/javascript; charset=utf-8", include_str!("../../../assets/playground/audio.js")),
    (
        "capture-worklet.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../assets/playground/capture-worklet.js"),
    ),
    ("mulaw.js", "text/javascript; charset=utf-8", include_str!("../../../assets/playground/mulaw.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../../assets/playground/style.css")),
];

/// The page may only load its own scripts and talk to its own origin.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        INDEX,
    )
        .into_response()
}

pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "no-cache")], *body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such playground asset").into_response(),
    }
}
