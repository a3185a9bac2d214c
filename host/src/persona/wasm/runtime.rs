//! The one wasmtime `Engine` of the process, configured in one place: the pooling allocator
//! (falling back to on-demand allocation when its address space can't be reserved), epoch
//! interruption driven by one ticker thread, the compiled-code cache, and the `Linker` that
//! grants plugins their imports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

use super::bindings::{Persona as PersonaWorld, PersonaPre};
use super::cache::{CacheOutcome, CompileCache};
use super::ctx::{Ctx, CtxParts};
use crate::metrics::Metrics;

/// One epoch tick; hook deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Concurrent plugin instances the pool is sized for, by default.
pub const DEFAULT_MAX_INSTANCES: u32 = 256;
/// Linear memory per instance, by default (personas may ask for less in `routes.toml`).
pub const DEFAULT_MAX_MEMORY: usize = 64 << 20;

/// Engine-wide settings (fixed for the process; per-persona limits live in `routes.toml`).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instances the pooling allocator reserves room for (one per call in progress).
    pub max_instances: u32,
    /// The largest linear memory any instance may have.
    pub max_memory: usize,
    /// Where compiled components are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { max_instances: DEFAULT_MAX_INSTANCES, max_memory: DEFAULT_MAX_MEMORY, cache_dir: None }
    }
}

/// Why a component was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid WebAssembly component: {0:#}")]
    Compile(wasmtime::Error),
    /// Its imports or exports don't match the `switchboard:persona@0.1.0` world.
    #[error("does not match the switchboard:persona@0.1.0 world: {0:#}")]
    World(wasmtime::Error),
}

/// A component compiled and checked against the world, ready to instantiate per call.
pub struct Compiled {
    /// SHA-256 of the component's bytes, hex.
    pub hash: String,
    pub component: Component,
    pub(crate) pre: PersonaPre<Ctx>,
    pub cache: CacheOutcome,
    pub load_time: Duration,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("hash", &self.hash).field("cache", &self.cache).finish_non_exhaustive()
    }
}

/// The engine and everything shared by all plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<Ctx>,
    pooling: bool,
    max_memory: usize,
    cache: Option<CompileCache>,
    pub(crate) http: reqwest::Client,
    pub(crate) metrics: Arc<Metrics>,
    _ticker: EpochTicker,
}

impl Runtime {
    pub fn new(config: &RuntimeConfig, metrics: Arc<Metrics>) -> Result<Self, wasmtime::Error> {
        let (engine, pooling) = engine(config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        PersonaWorld::add_to_linker::<Ctx, HasSelf<Ctx>>(&mut linker, |c| c)?;
        let cache = config.cache_dir.as_deref().and_then(|dir| match CompileCache::open(dir, &engine) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "plugin compile cache unavailable; compiling every load");
                None
            }
        });
        let ticker = EpochTicker::start(engine.clone())
            .map_err(|e| wasmtime::Error::msg(format!("starting the epoch ticker: {e}")))?;
        Ok(Runtime {
            engine,
            linker,
            pooling,
            max_memory: config.max_memory,
            cache,
            http: super::http::client(),
            metrics,
            _ticker: ticker,
        })
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    pub fn max_memory(&self) -> usize {
        self.max_memory
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or loads from the cache) and checks a component against the world. CPU-heavy
    /// on a cache miss: call it off the async runtime.
    pub fn load(&self, bytes: &[u8]) -> Result<Compiled, LoadError> {
        let started = Instant::now();
        let hash = hex(&Sha256::digest(bytes));
        let cached = self.cache.as_ref().and_then(|c| c.load(&self.engine, &hash));
        let (component, cache) = match cached {
            Some(c) => (c, CacheOutcome::Hit),
            None => {
                let c = Component::new(&self.engine, bytes).map_err(LoadError::Compile)?;
                match &self.cache {
                    Some(cache) => {
                        cache.store(&hash, &c);
                        (c, CacheOutcome::Miss)
                    }
                    None => (c, CacheOutcome::Off),
                }
            }
        };
        let pre = self.linker.instantiate_pre(&component).map_err(LoadError::World)?;
        let pre = PersonaPre::new(pre).map_err(LoadError::World)?;
        Ok(Compiled { hash, component, pre, cache, load_time: started.elapsed() })
    }

    /// A fresh store for one call, with its limits armed.
    pub(crate) fn store(&self, parts: CtxParts) -> Store<Ctx> {
        let mut store = Store::new(&self.engine, Ctx::new(parts));
        store.limiter(|c| &mut c.limiter);
        store.epoch_deadline_callback(|mut cx| {
            let data = cx.data_mut();
            let budget = data.grants.limits.hook_timeout;
            let used = data.hook.guest_time();
            if used >= budget {
                data.hook.deadline_hit = true;
                return Err(wasmtime::Error::msg(format!("hook ran past its {} ms deadline", budget.as_millis())));
            }
            // Time spent waiting on HTTP is not the guest's: extend to the rest of the budget.
            Ok(UpdateDeadline::Continue(ticks(budget - used)))
        });
        store
    }

    /// Instantiates a compiled persona in `store`.
    pub(crate) fn instantiate(
        &self,
        compiled: &Compiled,
        store: &mut Store<Ctx>,
    ) -> Result<PersonaWorld, wasmtime::Error> {
        compiled.pre.instantiate(&mut *store)
    }
}

/// Epoch ticks covering `d` (at least one).
pub(crate) fn ticks(d: Duration) -> u64 {
    (d.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1)
}

fn base_config(max_memory: usize) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    // Reserve only what an instance may use: many slots fit, bounds checks are explicit.
    c.memory_reservation(max_memory as u64);
    c.memory_guard_size(2 << 20);
    c.memory_reservation_for_growth(0);
    c
}

/// The engine with the pooling allocator, or without it when the pool can't be reserved.
fn engine(config: &RuntimeConfig) -> Result<(Engine, bool), wasmtime::Error> {
    let n = config.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(config.max_memory)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(8)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20);
    let mut pooled = base_config(config.max_memory);
    pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&pooled) {
        Ok(e) => Ok((e, true)),
        Err(e) => {
            tracing::warn!(error = %e, instances = n, "plugin instance pool unavailable; allocating instances on demand");
            Ok((Engine::new(&base_config(config.max_memory))?, false))
        }
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Without the ticker no deadline fires, so failing to start it is fatal.
    fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })?;
        Ok(EpochTicker { stop, thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
