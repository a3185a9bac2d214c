//! `GET /playground/events/{call_sid}`: a call's live feed as Server-Sent Events — what happened
//! so far, then each event as it happens, ending after the call's `ended` event.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::{self, error::RecvError};

use super::error;
use crate::call::events::CallEvent;
use crate::http::AppState;

pub(super) async fn stream(State(state): State<AppState>, Path(call_sid): Path<String>) -> Response {
    let Some(feed) = state.events.feed(&call_sid) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no live call {call_sid:?} (set one up with POST /playground/call)"),
        );
    };
    let (backlog, rx) = feed.subscribe();
    Sse::new(events(backlog.into(), rx)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

struct Feed {
    backlog: VecDeque<Arc<CallEvent>>,
    rx: broadcast::Receiver<Arc<CallEvent>>,
    done: bool,
}

/// The backlog, then the live events, one SSE message each (JSON with a `type`), until the end.
fn events(
    backlog: VecDeque<Arc<CallEvent>>,
    rx: broadcast::Receiver<Arc<CallEvent>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Feed { backlog, rx, done: false }, |mut feed| async move {
        if feed.done {
            return None;
        }
        let event = match feed.backlog.pop_front() {
            Some(e) => e,
            None => match feed.rx.recv().await {
                Ok(e) => e,
                // A slow reader missed some events: say so and carry on.
                Err(RecvError::Lagged(n)) => {
                    let note = serde_json::json!({"type": "lagged", "missed": n}).to_string();
                    return Some((Ok(Event::default().data(note)), feed));
                }
                Err(RecvError::Closed) => return None,
            },
        };
        feed.done = event.is_end();
        let json = serde_json::to_string(&*event).unwrap_or_else(|e| {
            serde_json::json!({"type": "error", "message": format!("event not serializable: {e}")}).to_string()
        });
        Some((Ok(Event::default().data(json)), feed))
    })
}
