//! Test support: provider fakes and the browser test runner.

pub mod browser;
pub mod heap;
pub mod twilio_rest;

/// Polls `cond` every 10 ms for up to `limit`; whether it came true.
pub async fn eventually(limit: std::time::Duration, cond: impl Fn() -> bool) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    cond()
}
