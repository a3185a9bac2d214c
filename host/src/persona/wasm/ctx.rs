//! What one call's store holds, and the host functions plugins import: log, monotonic time,
//! secrets, the persona's key-value store and allowlisted HTTP. WASI is linked with nothing
//! granted (no preopened directories, no environment, no arguments, sockets denied) so that
//! components built for `wasm32-wasip2` run, but cannot reach the host through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::bindings::host_api::LogLevel;
use super::bindings::http_api::{HttpError, Request, Response};
use super::bindings::kv_api::KvError;
use super::bindings::{host_api, http_api, kv_api, wit};
use super::kv::KvStore;
use super::routes::Grants;
use crate::metrics::Metrics;

/// Longest log line a plugin may write.
const MAX_LOG_BYTES: usize = 2048;
/// Log lines per hook before further lines are dropped.
const MAX_LOG_LINES_PER_HOOK: u32 = 100;
/// Guest stderr kept for the fault log (a panic message).
const STDERR_CAPACITY: usize = 4096;

/// Who a store belongs to, for logs.
#[derive(Debug, Clone)]
pub(crate) struct Tag {
    pub persona: Arc<str>,
    pub call_sid: Arc<str>,
}

/// The current hook's clock and counters.
#[derive(Debug)]
pub(crate) struct HookState {
    pub name: &'static str,
    started: Instant,
    /// Time spent in host functions (HTTP), not charged to the hook's CPU budget.
    host_time: Duration,
    http_requests: u32,
    log_lines: u32,
    pub deadline_hit: bool,
}

impl HookState {
    fn new() -> Self {
        HookState {
            name: "instantiate",
            started: Instant::now(),
            host_time: Duration::ZERO,
            http_requests: 0,
            log_lines: 0,
            deadline_hit: false,
        }
    }

    /// Time the guest itself has run in this hook.
    pub fn guest_time(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.host_time)
    }
}

/// Caps one store's linear memory, logging what it refused.
pub(crate) struct MemoryLimiter {
    max: usize,
    tag: Tag,
    /// The largest size refused, if any.
    pub refused: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired <= self.max {
            return Ok(true);
        }
        if self.refused.is_none() {
            tracing::warn!(
                persona = %self.tag.persona, call_sid = %self.tag.call_sid,
                current_mib = current >> 20, desired_mib = desired >> 20, limit_mib = self.max >> 20,
                "plugin memory growth refused"
            );
        }
        self.refused = Some(self.refused.unwrap_or(0).max(desired));
        Ok(false)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The data of one call's store.
pub(crate) struct Ctx {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub hook: HookState,
    pub tag: Tag,
    pub grants: Arc<Grants>,
    kv: Arc<KvStore>,
    http: reqwest::Client,
    /// Runs plugin HTTP requests; `None` outside a Tokio runtime (HTTP then fails cleanly).
    runtime: Option<tokio::runtime::Handle>,
    born: Instant,
    stderr: MemoryOutputPipe,
    metrics: Arc<Metrics>,
}

/// What a new store needs.
pub(crate) struct CtxParts {
    pub tag: Tag,
    pub grants: Arc<Grants>,
    pub kv: Arc<KvStore>,
    pub http: reqwest::Client,
    pub metrics: Arc<Metrics>,
}

impl CtxParts {
    pub fn new(runtime: &super::runtime::Runtime, tag: Tag, grants: Arc<Grants>, kv: Arc<KvStore>) -> Self {
        CtxParts { tag, grants, kv, http: runtime.http.clone(), metrics: runtime.metrics.clone() }
    }
}

impl Ctx {
    pub fn new(parts: CtxParts) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Ctx {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter { max: parts.grants.limits.memory_bytes, tag: parts.tag.clone(), refused: None },
            hook: HookState::new(),
            tag: parts.tag,
            grants: parts.grants,
            kv: parts.kv,
            http: parts.http,
            runtime: tokio::runtime::Handle::try_current().ok(),
            born: Instant::now(),
            stderr,
            metrics: parts.metrics,
        }
    }

    /// Resets the hook clock and counters before a hook runs.
    pub fn begin_hook(&mut self, name: &'static str) {
        self.hook = HookState { name, ..HookState::new() };
    }

    /// What the guest wrote to stderr (a panic message, typically), lossy UTF-8.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_string()
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::Host for Ctx {}

impl host_api::Host for Ctx {
    fn log(&mut self, level: LogLevel, message: String) {
        self.hook.log_lines += 1;
        if self.hook.log_lines > MAX_LOG_LINES_PER_HOOK {
            return;
        }
        let message = truncate(&message, MAX_LOG_BYTES);
        let (persona, call_sid, hook) = (&*self.tag.persona, &*self.tag.call_sid, self.hook.name);
        match level {
            LogLevel::Trace => tracing::trace!(target: "persona", persona, call_sid, hook, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "persona", persona, call_sid, hook, "{message}"),
            LogLevel::Info => tracing::info!(target: "persona", persona, call_sid, hook, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "persona", persona, call_sid, hook, "{message}"),
            LogLevel::Error => tracing::error!(target: "persona", persona, call_sid, hook, "{message}"),
        }
        if self.hook.log_lines == MAX_LOG_LINES_PER_HOOK {
            tracing::warn!(target: "persona", persona, call_sid, hook, "further log lines in this hook dropped");
        }
    }

    fn monotonic_now(&mut self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn secret(&mut self, name: String) -> Option<String> {
        self.grants.secrets.get(&name).cloned()
    }
}

impl kv_api::Host for Ctx {
    fn get(&mut self, key: String) -> Option<String> {
        self.kv.get(&key)
    }

    fn set(&mut self, key: String, value: String) -> Result<(), KvError> {
        self.kv.set(key, value)
    }

    fn delete(&mut self, key: String) {
        self.kv.delete(&key)
    }
}

impl http_api::Host for Ctx {
    fn send(&mut self, request: Request) -> Result<Response, HttpError> {
        let limits = self.grants.limits;
        if self.hook.http_requests >= limits.http_requests_per_hook {
            return Err(HttpError::TooManyRequests);
        }
        self.hook.http_requests += 1;
        let checked = super::http::check(request, &self.grants.allowed_hosts).inspect_err(|e| {
            if let HttpError::NotAllowed(host) = e {
                tracing::warn!(
                    persona = %self.tag.persona, call_sid = %self.tag.call_sid, hook = self.hook.name, %host,
                    "plugin HTTP request refused: host not on the persona's allowlist"
                );
                Metrics::inc(&self.metrics.plugin_faults, "kind", "http_denied");
            }
        })?;
        let Some(runtime) = self.runtime.clone() else {
            return Err(HttpError::Transport("no async runtime to send requests on".into()));
        };
        let started = Instant::now();
        let result = super::http::send_blocking(&self.http, &runtime, checked, limits.http_timeout);
        self.hook.host_time += started.elapsed();
        result
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
