//! The HTTP surface: Twilio webhooks, dial-out, the media WebSocket, the browser playground,
//! health and metrics.

mod dashboard;
mod dialout;
mod drain;
pub mod error;
mod history_api;
mod local;
mod media_ws;
pub mod playground;
mod public_url;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;

pub use drain::Drain;
pub use public_url::PublicUrl;

use crate::call::control::CallControls;
use crate::call::events::CallEvents;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::telephony::stream_token::StreamTokens;
use crate::telephony::twilio::control::TwilioCall;
use crate::telephony::twilio::rest::TwilioRest;
use crate::telephony::twilio::stream::{params, StreamContext};

/// How long a stream token stays valid after the TwiML that carries it was served.
const STREAM_TOKEN_TTL: Duration = Duration::from_secs(120);

/// Shared state of the server.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub tokens: Arc<StreamTokens>,
    pub rest: Option<TwilioRest>,
    pub streams: Arc<StreamContext>,
    pub metrics: Arc<Metrics>,
    pub drain: Arc<Drain>,
    pub public_url: PublicUrl,
    /// Call events: the history's sink and live feeds hang off it.
    pub events: Arc<CallEvents>,
    /// The call history's reader for `/api/calls`; `None` when history is off.
    pub history: Option<Arc<crate::history::HistoryReader>>,
}

impl AppState {
    /// Builds the state from a validated config, the session factory for calls and the
    /// process's metrics (shared with the sessions).
    pub fn new(
        config: Config,
        sessions: Arc<dyn crate::call::SessionFactory>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let secret = match (&config.stream_token_secret, &config.twilio) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(t)) => t.auth_token.as_bytes().to_vec(),
            // Nothing shared to derive it from: a per-process secret still protects /ws.
            (None, None) => rand::random::<[u8; 32]>().to_vec(),
        };
        let tokens = Arc::new(StreamTokens::new(&secret, STREAM_TOKEN_TTL));
        let rest = match &config.twilio {
            Some(t) => Some(TwilioRest::new(config.twilio_api_base_url.as_str(), &t.account_sid, &t.auth_token)?),
            None => None,
        };
        let events = CallEvents::new();
        let phone = Arc::new(TwilioCall { rest: rest.clone(), metrics: metrics.clone() });
        let controls = CallControls::new(phone).with(params::PLAYGROUND, Arc::new(playground::control::PlaygroundCall));
        let streams = Arc::new(StreamContext {
            tokens: (!config.insecure_skip_signature).then(|| tokens.clone()),
            controls,
            sessions,
            metrics: metrics.clone(),
            limits: Default::default(),
            events: events.clone(),
            bad_message_log: crate::logs::LogThrottle::new(Duration::from_secs(1)),
        });
        let public_url = PublicUrl::new(config.public_url.clone());
        Ok(Self {
            config: Arc::new(config),
            tokens,
            rest,
            streams,
            metrics,
            drain: Arc::new(Drain::default()),
            public_url,
            events,
            history: None,
        })
    }

    /// At the `MAX_CALLS` limit: new calls are refused until one ends.
    pub fn full(&self) -> bool {
        self.config.max_calls.is_some_and(|max| self.drain.active() >= max)
    }

    /// The refusal text when [`Self::full`].
    pub fn full_message(&self) -> String {
        format!("at the limit of {} calls at once (MAX_CALLS); not taking more", self.config.max_calls.unwrap_or(0))
    }

    /// Records every call in `history` and serves it on `/api/calls`.
    pub fn with_history(mut self, history: &crate::history::History) -> Self {
        self.events.add_sink(history.sink());
        self.history = Some(history.reader());
        self
    }
}

/// A header map from name/value pairs, for tests.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> axum::http::HeaderMap {
    let mut h = axum::http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    h
}

/// All routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", post(webhooks::incoming))
        .route("/incoming", post(webhooks::incoming))
        .route("/twiml", post(webhooks::outbound_twiml))
        .route("/dialout", post(dialout::dialout))
        .route("/ws", get(media_ws::upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(history_api::routes(state.clone()))
        .merge(dashboard::routes())
        .merge(playground::routes(state.clone()))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// 503 while draining or full, so a load balancer stops sending new calls to this instance.
async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let status = if state.drain.is_draining() {
        "draining"
    } else if state.full() {
        "full"
    } else {
        "ok"
    };
    let code = if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Json(serde_json::json!({
        "status": status,
        "active_calls": state.drain.active(),
        "max_calls": state.config.max_calls,
    }));
    (code, body)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// Serves until `shutdown` resolves, then drains: new calls are refused while calls in progress
/// get up to the configured drain timeout to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let drain = state.drain.clone();
    let timeout = state.config.drain_timeout;
    let app = router(state);
    let graceful = async move {
        shutdown.await;
        drain.begin();
        tracing::info!(active_calls = drain.active(), ?timeout, "draining: refusing new calls");
        if drain.wait_idle(timeout).await {
            tracing::info!("drained: all calls finished");
        } else {
            tracing::warn!(active_calls = drain.active(), "drain timeout: stopping with calls in progress");
        }
    };
    // The peer address lets /api/* and the playground tell a local visitor from a remote one.
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(graceful)
        .await?;
    Ok(())
}
