//! Protocol-faithful fakes of the providers the conversation engine talks to, on 127.0.0.1:0:
//! Deepgram live STT (`/v1/listen`), Deepgram Aura TTS (`/v1/speak`, WebSocket and REST) and Groq's
//! OpenAI-compatible chat completions (`/openai/v1/chat/completions`, SSE).
//!
//! They follow the public API references (message shapes, auth, error bodies, close codes, SSE
//! framing, tool-call deltas), not our clients: what a real provider refuses, they refuse. Each
//! records what it received and has switches for latency and faults that tests can flip while a
//! call runs. Point a client at one with its `base_url()`.

// Each test uses a different part of the fakes.
#![allow(dead_code)]

pub mod deepgram_stt;
pub mod deepgram_tts;
pub mod groq;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use tokio::sync::oneshot;
use url::Url;

/// A fake's HTTP server; stops when dropped.
pub struct FakeServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(app: Router) -> FakeServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a fake provider");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        FakeServer { addr, shutdown: Some(tx), task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> Url {
        Url::parse(&format!("http://{}", self.addr)).expect("loopback URL")
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// A UUID-shaped id, unique in this process (request ids in provider answers).
pub fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// Splits a query string into decoded pairs, in order.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else { return Vec::new() };
    url::form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// The value of `name` in decoded query pairs.
pub fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Polls `check` every 5 ms until it holds (true) or `limit` passes (false).
pub async fn poll_until(limit: std::time::Duration, check: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A Deepgram error answer: JSON body plus the `dg-request-id` and `dg-error` headers.
pub fn deepgram_error(status: axum::http::StatusCode, code: &str, message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let id = request_id();
    let body = serde_json::json!({"err_code": code, "err_msg": message, "request_id": id}).to_string();
    let headers = [("content-type", "application/json".to_string()), ("dg-request-id", id), ("dg-error", body.clone())];
    (status, headers, body).into_response()
}
