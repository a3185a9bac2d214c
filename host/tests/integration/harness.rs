//! Starts a real server on 127.0.0.1:0 and gives tests a probe session they drive by hand.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchboard::call::{CallInfo, CallInput, CallOutput, SessionFactory, SessionFuture, SessionIo};
use switchboard::config::{Config, Overrides};
use switchboard::http::{self, AppState};
use tokio::sync::{mpsc, oneshot};

pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000001";
pub const AUTH_TOKEN: &str = "test-auth-token";

/// A server running in this test process.
pub struct TestServer {
    pub base: String,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    pub finished: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(env: &[(&str, &str)], overrides: Overrides, sessions: Arc<dyn SessionFactory>) -> TestServer {
        Self::start_with_metrics(env, overrides, sessions, Arc::new(switchboard::metrics::Metrics::new())).await
    }

    /// Like `start`, sharing `metrics` with sessions built by the test.
    pub async fn start_with_metrics(
        env: &[(&str, &str)],
        overrides: Overrides,
        sessions: Arc<dyn SessionFactory>,
        metrics: Arc<switchboard::metrics::Metrics>,
    ) -> TestServer {
        Self::start_customised(env, overrides, sessions, metrics, |s| s).await
    }

    /// Like `start_with_metrics`, letting the test adjust the state (attach a history, …)
    /// before the server starts.
    pub async fn start_customised(
        env: &[(&str, &str)],
        overrides: Overrides,
        sessions: Arc<dyn SessionFactory>,
        metrics: Arc<switchboard::metrics::Metrics>,
        customise: impl FnOnce(AppState) -> AppState,
    ) -> TestServer {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let (config, _warnings) = Config::from_sources(&overrides, env).expect("config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = customise(AppState::new(config, sessions, metrics).expect("state"));
        let (tx, rx) = oneshot::channel::<()>();
        let finished = tokio::spawn(http::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        TestServer { base, state, shutdown: Some(tx), finished: Some(finished) }
    }

    pub fn ws_url(&self) -> String {
        self.base.replacen("http://", "ws://", 1) + "/ws"
    }

    /// Starts the graceful drain (as SIGTERM does).
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.finished.take() {
            h.abort();
        }
    }
}

/// One call as seen by the probe: what the transport sent, and a way to answer.
pub struct ProbeCall {
    pub info: CallInfo,
    pub inputs: mpsc::UnboundedReceiver<CallInput>,
    pub outputs: mpsc::Sender<CallOutput>,
}

impl ProbeCall {
    /// Next input that isn't caller audio or a played-audio report, within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<CallInput> {
        tokio::time::timeout(timeout, async {
            loop {
                match self.inputs.recv().await? {
                    CallInput::Audio { .. } | CallInput::BotAudioPlayed { .. } => continue,
                    other => return Some(other),
                }
            }
        })
        .await
        .ok()
        .flatten()
    }
}

/// Session factory handing every call to the test.
pub struct ProbeSessions {
    calls: mpsc::UnboundedSender<ProbeCall>,
}

impl ProbeSessions {
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<ProbeCall>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Self { calls: tx }), rx)
    }
}

impl SessionFactory for ProbeSessions {
    fn start(&self, info: CallInfo, mut io: SessionIo) -> SessionFuture {
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let _ = self.calls.send(ProbeCall { info, inputs: in_rx, outputs: io.output.clone() });
        Box::pin(async move {
            // Stay alive for the whole call, relaying inputs to the test.
            while let Some(input) = io.input.recv().await {
                let _ = in_tx.send(input);
            }
        })
    }
}
