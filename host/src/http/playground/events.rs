//! `GET /playground/events/{call_sid}`: a call's live feed as Server-Sent Events — what happened
//! so far, then each event as it happens, ending after the call's `ended` event. Every message
//! carries the event's `id`; a browser reconnecting after a network blip sends the last one as
//! `Last-Event-ID` and gets only what came after it, so no line shows twice.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::{self, error::RecvError};

use super::error;
use crate::call::events::FeedEvent;
use crate::http::AppState;

pub(super) async fn stream(
    State(state): State<AppState>,
    Path(call_sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(feed) = state.events.feed(&call_sid) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no live call {call_sid:?} (set one up with POST /playground/call)"),
        );
    };
    // An id we never gave out (garbage) counts as none: the viewer gets everything.
    let after = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let (backlog, rx) = feed.subscribe(after);
    Sse::new(events(backlog.into(), rx, after.unwrap_or(0)))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct Feed {
    backlog: VecDeque<Arc<FeedEvent>>,
    rx: broadcast::Receiver<Arc<FeedEvent>>,
    /// The viewer has everything up to this id.
    seen: u64,
    done: bool,
}

/// The backlog, then the live events, one SSE message each (JSON with a `type`), until the end.
fn events(
    backlog: VecDeque<Arc<FeedEvent>>,
    rx: broadcast::Receiver<Arc<FeedEvent>>,
    seen: u64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(Feed { backlog, rx, seen, done: false }, |mut feed| async move {
        if feed.done {
            return None;
        }
        let event = match feed.backlog.pop_front() {
            Some(e) => e,
            None => match feed.rx.recv().await {
                Ok(e) if e.id <= feed.seen => {
                    // Sent before this subscription; only possible for a reconnecting viewer.
                    return Some((Ok(Event::default().comment("seen")), feed));
                }
                Ok(e) => e,
                // A slow reader missed some events: say so and carry on.
                Err(RecvError::Lagged(n)) => {
                    let note = serde_json::json!({"type": "lagged", "missed": n}).to_string();
                    return Some((Ok(Event::default().data(note)), feed));
                }
                Err(RecvError::Closed) => return None,
            },
        };
        feed.done = event.event.is_end();
        feed.seen = event.id;
        let json = serde_json::to_string(&event.event).unwrap_or_else(|e| {
            serde_json::json!({"type": "error", "message": format!("event not serializable: {e}")}).to_string()
        });
        Some((Ok(Event::default().id(event.id.to_string()).data(json)), feed))
    })
}
