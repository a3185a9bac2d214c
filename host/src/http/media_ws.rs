//! `GET /ws`: upgrades to a WebSocket and runs the Media Streams transport over it.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};

use super::AppState;
use crate::telephony::twilio::stream::{serve_stream, WsIn, WsOut};

pub(super) async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let Some(guard) = state.drain.enter() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "server is draining").into_response();
    };
    let max = state.streams.limits.max_message_bytes;
    ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| async move {
        run(socket, state).await;
        drop(guard);
    })
}

async fn run(socket: WebSocket, state: AppState) {
    let (sink, stream) = socket.split();
    let incoming = stream.map(|msg| match msg {
        Ok(Message::Text(t)) => WsIn::Text(t.to_string()),
        Ok(Message::Binary(b)) => WsIn::Binary(b.len()),
        Ok(Message::Close(_)) | Err(_) => WsIn::Close,
        Ok(_) => WsIn::Other,
    });
    let outgoing = sink.with(|out: WsOut| async move {
        Ok::<_, axum::Error>(match out {
            WsOut::Text(t) => Message::Text(t.into()),
            WsOut::Close { code, reason } => {
                Message::Close(Some(axum::extract::ws::CloseFrame { code, reason: reason.into() }))
            }
        })
    });
    let incoming = std::pin::pin!(incoming);
    let outgoing = std::pin::pin!(outgoing);
    // Errors are logged and counted inside; the socket is done either way.
    let _ = serve_stream(incoming, outgoing, state.streams.clone()).await;
}
