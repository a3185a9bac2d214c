//! Stopping a transcription that is no longer wanted, even in the middle of an ONNX Runtime run.
//!
//! An interim superseded by a `Finalize` should give the worker back at once: a flag checked
//! between decoded tokens covers the decoder, and ONNX Runtime's run-level terminate covers the
//! encoder run (up to a few hundred milliseconds for a long buffer).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ort::logging::LogLevel;
use ort::session::RunOptions;

/// Shared between the job's owner (who may cancel) and the worker (who checks).
#[derive(Default)]
pub struct CancelToken {
    cancelled: AtomicBool,
    /// The run options the worker's current runs use, made on first use (on the worker thread,
    /// where ONNX Runtime is loaded).
    run: Mutex<Option<Arc<RunOptions>>>,
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken").field("cancelled", &self.is_cancelled()).finish()
    }
}

impl CancelToken {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        let run = self.run.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = run.as_ref() {
            let _ = run.terminate();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Run options that `cancel` terminates. A token cancelled before this call returns options
    /// already terminated, so no run starts after a cancel.
    pub fn run_options(&self) -> Result<Arc<RunOptions>, ort::Error> {
        let mut slot = self.run.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = slot.as_ref() {
            return Ok(run.clone());
        }
        let mut run = RunOptions::new()?;
        // A terminated run is an expected outcome here, not an error for ONNX Runtime to print.
        run.set_log_level(LogLevel::Fatal)?;
        let run = Arc::new(run);
        if self.is_cancelled() {
            run.terminate()?;
        }
        *slot = Some(run.clone());
        Ok(run)
    }
}
