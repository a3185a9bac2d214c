//! What happens on a call, as a stream of events for whoever watches: the call history (a
//! durable sink that sees every call) and live views such as the playground (a feed per call,
//! created only when someone asks to watch that call).
//!
//! The transport reports a call's start and end (it knows the real outcome); the session reports
//! the persona, its files, VAD changes, interim transcripts and finished transcript lines.
//! Emitting never blocks and never takes a lock shared between calls: sinks must hand events
//! off without waiting, and a live feed is looked up once, when the call opens.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use super::transcript::TranscriptLine;
use super::CallInfo;

/// Events a late subscriber to a live feed is replayed.
const LIVE_BACKLOG: usize = 256;
/// A feed nobody opened a call on is forgotten after this long.
const UNCLAIMED_FEED_TTL: Duration = Duration::from_secs(600);

/// One thing that happened on a call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEvent {
    /// The stream started (transport).
    Started {
        /// `inbound`, `outbound` or `playground`.
        direction: String,
        from: String,
        to: String,
        /// Persona asked for at set-up, if any.
        requested_persona: Option<String>,
        /// Milliseconds since the Unix epoch.
        started_at_ms: u64,
    },
    /// The persona serving the call (session); `version` is the plugin's content hash.
    Persona { name: String, version: Option<String> },
    /// Where the call's recording and transcript are written (session).
    Files { recording: Option<PathBuf>, transcript: Option<PathBuf> },
    /// The caller's voice activity changed (session); `at_ms` is on the call's clock.
    Vad { speaking: bool, at_ms: u64 },
    /// A not-yet-final transcript of what the caller is saying (session).
    Interim { text: String },
    /// A finished transcript line, with per-turn latencies on assistant lines (session).
    Line(TranscriptLine),
    /// The call is over (transport).
    Ended {
        /// A short label: `caller_hung_up`, `bot_hung_up`, `transferred`, `failed`.
        outcome: String,
        detail: Option<String>,
        /// Milliseconds since the Unix epoch.
        ended_at_ms: u64,
    },
}

impl CallEvent {
    pub fn is_end(&self) -> bool {
        matches!(self, CallEvent::Ended { .. })
    }

    /// VAD flips and interim text are only news while they happen: a late subscriber gets the
    /// lasting events (start, persona, lines, end) without them crowding the backlog.
    fn is_momentary(&self) -> bool {
        matches!(self, CallEvent::Vad { .. } | CallEvent::Interim { .. })
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A consumer that sees every call's events, such as the call history.
pub trait CallEventSink: Send + Sync {
    /// Called on the call's own task: hand the event off without blocking.
    fn record(&self, call_sid: &str, event: &CallEvent);
}

/// One event of a live feed, numbered from 1 in the order the call emitted them: the id lets a
/// reconnecting viewer (SSE `Last-Event-ID`) skip what it has already seen.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEvent {
    pub id: u64,
    pub event: CallEvent,
}

/// A live feed of one call's events: a bounded backlog for late subscribers plus a broadcast.
pub struct LiveFeed {
    inner: Mutex<LiveInner>,
}

struct LiveInner {
    backlog: VecDeque<Arc<FeedEvent>>,
    tx: broadcast::Sender<Arc<FeedEvent>>,
    last_id: u64,
    ended: bool,
}

impl LiveFeed {
    fn new() -> Self {
        let (tx, _) = broadcast::channel(LIVE_BACKLOG);
        Self { inner: Mutex::new(LiveInner { backlog: VecDeque::new(), tx, last_id: 0, ended: false }) }
    }

    fn push(&self, event: CallEvent) {
        let mut inner = lock(&self.inner);
        inner.last_id += 1;
        let event = Arc::new(FeedEvent { id: inner.last_id, event });
        inner.ended |= event.event.is_end();
        if !event.event.is_momentary() {
            if inner.backlog.len() == LIVE_BACKLOG {
                inner.backlog.pop_front();
            }
            inner.backlog.push_back(event.clone());
        }
        // No subscriber yet is fine: the backlog keeps it.
        let _ = inner.tx.send(event);
    }

    /// What happened so far after event `after` (all of it for `None`), and a receiver for what
    /// follows (no gap, no duplicate).
    pub fn subscribe(&self, after: Option<u64>) -> (Vec<Arc<FeedEvent>>, broadcast::Receiver<Arc<FeedEvent>>) {
        let inner = lock(&self.inner);
        let after = after.unwrap_or(0);
        (inner.backlog.iter().filter(|e| e.id > after).cloned().collect(), inner.tx.subscribe())
    }

    /// True once the call's end was pushed.
    pub fn ended(&self) -> bool {
        lock(&self.inner).ended
    }
}

/// The process-wide hub: durable sinks and the live feeds being watched.
#[derive(Default)]
pub struct CallEvents {
    sinks: RwLock<Vec<Arc<dyn CallEventSink>>>,
    live: Mutex<HashMap<String, (Arc<LiveFeed>, Instant)>>,
}

impl CallEvents {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a sink that sees every call opened from now on.
    pub fn add_sink(&self, sink: Arc<dyn CallEventSink>) {
        self.sinks.write().unwrap_or_else(|p| p.into_inner()).push(sink);
    }

    /// The live feed for `call_sid`, created if nobody asked for it yet. A call opened later
    /// with this sid publishes into it.
    pub fn watch(&self, call_sid: &str) -> Arc<LiveFeed> {
        let mut live = lock(&self.live);
        let now = Instant::now();
        live.retain(|_, (feed, created)| {
            Arc::strong_count(feed) > 1 || now.duration_since(*created) < UNCLAIMED_FEED_TTL
        });
        live.entry(call_sid.to_string()).or_insert_with(|| (Arc::new(LiveFeed::new()), now)).0.clone()
    }

    /// The feed for `call_sid` if someone is watching it.
    pub fn feed(&self, call_sid: &str) -> Option<Arc<LiveFeed>> {
        lock(&self.live).get(call_sid).map(|(f, _)| f.clone())
    }

    /// Opens a call: its events go to every sink, and to a live feed if one is being watched.
    pub fn open(self: &Arc<Self>, call_sid: &str) -> CallEventsHandle {
        let sinks = self.sinks.read().unwrap_or_else(|p| p.into_inner()).clone();
        let live = self.feed(call_sid);
        CallEventsHandle {
            inner: Some(Arc::new(HandleInner { call_sid: call_sid.into(), sinks, live, hub: Arc::downgrade(self) })),
        }
    }
}

/// One call's end of the hub; cheap to clone. A disabled handle drops every event.
#[derive(Clone, Default)]
pub struct CallEventsHandle {
    inner: Option<Arc<HandleInner>>,
}

struct HandleInner {
    call_sid: Arc<str>,
    sinks: Vec<Arc<dyn CallEventSink>>,
    live: Option<Arc<LiveFeed>>,
    hub: std::sync::Weak<CallEvents>,
}

impl std::fmt::Debug for CallEventsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEventsHandle").field("call_sid", &self.inner.as_ref().map(|i| &i.call_sid)).finish()
    }
}

impl CallEventsHandle {
    /// A handle that goes nowhere (tests, tools).
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn emit(&self, event: CallEvent) {
        let Some(inner) = &self.inner else { return };
        for sink in &inner.sinks {
            sink.record(&inner.call_sid, &event);
        }
        if let Some(feed) = &inner.live {
            let end = event.is_end();
            feed.push(event);
            if end {
                // Subscribers keep their own reference; the hub forgets the call.
                if let Some(hub) = inner.hub.upgrade() {
                    lock(&hub.live).remove(&*inner.call_sid);
                }
            }
        }
    }

    /// The transport's `Started` event for `info`.
    pub fn started(&self, info: &CallInfo, direction: &str) {
        self.emit(CallEvent::Started {
            direction: direction.to_string(),
            from: info.from.clone(),
            to: info.to.clone(),
            requested_persona: info.persona.clone(),
            started_at_ms: unix_ms(SystemTime::now()),
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, CallEvent)>>);
    impl CallEventSink for Collect {
        fn record(&self, call_sid: &str, event: &CallEvent) {
            self.0.lock().unwrap().push((call_sid.to_string(), event.clone()));
        }
    }

    fn persona(name: &str) -> CallEvent {
        CallEvent::Persona { name: name.into(), version: None }
    }

    fn ended() -> CallEvent {
        CallEvent::Ended { outcome: "caller_hung_up".into(), detail: None, ended_at_ms: 1 }
    }

    #[test]
    fn sinks_see_every_call_and_feeds_only_watched_ones() {
        let hub = CallEvents::new();
        let sink = Arc::new(Collect::default());
        hub.add_sink(sink.clone());
        let feed = hub.watch("CA2");
        let a = hub.open("CA1");
        let b = hub.open("CA2");
        a.emit(persona("a"));
        b.emit(persona("b"));
        let seen: Vec<_> = sink.0.lock().unwrap().iter().map(|(s, _)| s.clone()).collect();
        assert_eq!(seen, ["CA1", "CA2"]);
        let (backlog, _) = feed.subscribe(None);
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].event, persona("b"));
        assert!(hub.feed("CA1").is_none());
    }

    #[tokio::test]
    async fn late_subscribers_get_the_backlog_then_the_rest_and_the_end_forgets_the_call() {
        let hub = CallEvents::new();
        let feed = hub.watch("CA1");
        let call = hub.open("CA1");
        call.emit(persona("a"));
        call.emit(CallEvent::Vad { speaking: true, at_ms: 20 });
        let (backlog, mut rx) = feed.subscribe(None);
        assert_eq!(backlog.len(), 1, "VAD flips are live-only: {backlog:?}");
        assert_eq!(backlog[0].id, 1);
        // A viewer that saw event 1 already gets nothing from the backlog.
        assert!(feed.subscribe(Some(1)).0.is_empty());
        call.emit(CallEvent::Vad { speaking: false, at_ms: 40 });
        call.emit(ended());
        let next = rx.recv().await.unwrap();
        assert_eq!(
            (next.id, &next.event),
            (3, &CallEvent::Vad { speaking: false, at_ms: 40 }),
            "ids count every event"
        );
        assert!(rx.recv().await.unwrap().event.is_end());
        assert!(feed.ended());
        assert!(hub.feed("CA1").is_none(), "the hub forgets a call once it ended");
    }

    #[test]
    fn the_backlog_is_bounded() {
        let hub = CallEvents::new();
        let feed = hub.watch("CA1");
        let call = hub.open("CA1");
        for i in 0..(LIVE_BACKLOG + 10) {
            call.emit(persona(&i.to_string()));
            call.emit(CallEvent::Interim { text: "crowding".into() });
        }
        let (backlog, _) = feed.subscribe(None);
        assert_eq!(backlog.len(), LIVE_BACKLOG);
        assert_eq!(backlog[0].event, persona("10"));
        let seen = backlog[backlog.len() - 4].id;
        let rest: Vec<u64> = feed.subscribe(Some(seen)).0.iter().map(|e| e.id).collect();
        assert_eq!(rest, backlog[backlog.len() - 3..].iter().map(|e| e.id).collect::<Vec<_>>(), "after {seen}");
    }

    #[test]
    fn a_disabled_handle_is_silent() {
        CallEventsHandle::disabled().emit(ended());
    }
}
