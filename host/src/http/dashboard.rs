//! `GET /dashboard`: the call history page. Plain HTML, CSS and JavaScript embedded in the binary
//! (no CDN, no build step), so it works offline and ships with the server. The page reads
//! `/api/calls`; it holds no data itself and needs no key to load.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

/// The page's files: (path under /dashboard/, content type, bytes).
pub(super) const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../assets/dashboard/app.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../assets/dashboard/style.css")),
    ("icon.svg", "image/svg+xml", include_bytes!("../../assets/dashboard/icon.svg")),
];

const INDEX: &str = include_str!("../../assets/dashboard/index.html");

/// Same-origin only: a page that can't load anything from elsewhere can't leak the API key
/// there either. `blob:` lets the player use a recording fetched with the key.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   media-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

pub(super) fn routes() -> Router<AppState> {
    let mut r = Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(|| async { Redirect::permanent("/dashboard") }));
    for (name, content_type, bytes) in ASSETS {
        r = r.route(&format!("/dashboard/{name}"), get(move || async move { asset(content_type, bytes) }));
    }
    r
}

fn with_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Small files, changed by upgrades: revalidate rather than serve a stale page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn index() -> Response {
    with_headers(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX).into_response())
}

fn asset(content_type: &'static str, bytes: &'static [u8]) -> Response {
    with_headers(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
