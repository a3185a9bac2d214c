//! Reload triggers: file changes in `PERSONAS_DIR` (notify) and `SIGHUP`. Events are debounced
//! (a copy is several writes) and reloads run on this module's own thread, so compiling never
//! touches the async runtime.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Weak;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher as _};

use super::host::PluginHost;

/// Quiet time after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a stream of events may postpone a reload.
const MAX_DELAY: Duration = Duration::from_millis(400);

enum Trigger {
    Changed,
    Forced,
    Stop,
}

pub(crate) struct Watcher {
    _notify: Option<notify::RecommendedWatcher>,
    tx: mpsc::Sender<Trigger>,
    signal: Option<tokio::task::JoinHandle<()>>,
}

impl Watcher {
    /// Starts the reload thread, fed by file events (`files`) and `SIGHUP` (`sighup`).
    pub fn start(
        host: &std::sync::Arc<PluginHost>,
        dir: &Path,
        cache_dir: Option<&Path>,
        files: bool,
        sighup: bool,
    ) -> notify::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let notify = if files { Some(watch_dir(dir, cache_dir, tx.clone())?) } else { None };
        let weak = std::sync::Arc::downgrade(host);
        std::thread::Builder::new().name("plugin-reload".into()).spawn(move || reload_loop(weak, rx))?;
        let signal = if sighup { forward_sighup(tx.clone()) } else { None };
        Ok(Watcher { _notify: notify, tx, signal })
    }
}

/// Sends `Changed` for every create, modify or remove in `dir` outside the cache.
fn watch_dir(
    dir: &Path,
    cache_dir: Option<&Path>,
    tx: mpsc::Sender<Trigger>,
) -> notify::Result<notify::RecommendedWatcher> {
    let ignore: Option<PathBuf> = cache_dir.map(Path::to_path_buf);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let relevant = matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_))
            && event.paths.iter().any(|p| ignore.as_ref().is_none_or(|i| !p.starts_with(i)));
        if relevant {
            let _ = tx.send(Trigger::Changed);
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Not joined: the last reference to the host may be dropped on the reload thread itself.
        let _ = self.tx.send(Trigger::Stop);
        if let Some(s) = self.signal.take() {
            s.abort();
        }
    }
}

fn reload_loop(host: Weak<PluginHost>, rx: mpsc::Receiver<Trigger>) {
    while let Ok(first) = rx.recv() {
        let mut forced = match first {
            Trigger::Stop => return,
            Trigger::Forced => true,
            Trigger::Changed => false,
        };
        let started = Instant::now();
        loop {
            let wait = DEBOUNCE.min(MAX_DELAY.saturating_sub(started.elapsed()));
            match rx.recv_timeout(wait) {
                Ok(Trigger::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Trigger::Forced) => forced = true,
                Ok(Trigger::Changed) => {}
                Err(RecvTimeoutError::Timeout) => break,
            }
            if started.elapsed() >= MAX_DELAY {
                break;
            }
        }
        let Some(host) = host.upgrade() else { return };
        let report = if forced { host.reload_forced() } else { host.reload() };
        tracing::debug!(?report, forced, "personas reloaded");
    }
}

/// Forwards `SIGHUP` as a forced reload (needs a Tokio runtime; none → no signal handling).
fn forward_sighup(tx: mpsc::Sender<Trigger>) -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let _guard = handle.enter();
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP reloads unavailable");
                return None;
            }
        };
        Some(handle.spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading personas");
                if tx.send(Trigger::Forced).is_err() {
                    break;
                }
            }
        }))
    }
    #[cfg(not(unix))]
    {
        let _ = tx;
        None
    }
}
