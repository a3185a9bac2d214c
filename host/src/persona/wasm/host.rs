//! The personas in `PERSONAS_DIR`, routed per call and reloaded in place.
//!
//! A reload reads `routes.toml` and every `NAME.wasm`, compiles only what changed (off the
//! async runtime), and swaps the whole catalog atomically. Calls in progress hold the compiled
//! persona they started with. A file that fails to load is reported once and the previous
//! version, if any, keeps serving; a removed persona's numbers fall back to the default.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use super::kv::KvStore;
use super::plugin::{Selected, WasmPersona};
use super::routes::{is_persona_name, Routes, ROUTES_FILE};
use super::runtime::{Compiled, Runtime, RuntimeConfig};
use super::watch::Watcher;
use crate::call::CallInfo;
use crate::metrics::Metrics;
use crate::persona::{Persona, PersonaProvider};

/// Where the compiled-code cache goes unless configured: inside the personas directory.
pub const DEFAULT_CACHE_SUBDIR: &str = ".cache";

/// How to run the plugin host.
#[derive(Debug, Clone)]
pub struct PluginHostConfig {
    /// `PERSONAS_DIR`: `NAME.wasm` files and `routes.toml`.
    pub personas_dir: PathBuf,
    pub runtime: RuntimeConfig,
    /// Reload when files in the directory change (notify).
    pub watch: bool,
    /// Reload on `SIGHUP` (needs a Tokio runtime when starting).
    pub reload_on_sighup: bool,
}

impl PluginHostConfig {
    /// The defaults for `dir`: cache in `dir/.cache`, reloads on file changes and `SIGHUP`.
    pub fn new(personas_dir: impl Into<PathBuf>) -> Self {
        let personas_dir = personas_dir.into();
        let runtime = RuntimeConfig { cache_dir: Some(personas_dir.join(DEFAULT_CACHE_SUBDIR)), ..Default::default() };
        PluginHostConfig { personas_dir, runtime, watch: true, reload_on_sighup: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginHostError {
    #[error("personas directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("plugin engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("watching {0}: {1}")]
    Watch(PathBuf, notify::Error),
}

/// What one reload did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadReport {
    pub loaded: Vec<String>,
    pub unchanged: Vec<String>,
    /// `(file, reason)` of everything refused, `routes.toml` included.
    pub rejected: Vec<(String, String)>,
    pub removed: Vec<String>,
}

/// The personas and routes in force.
struct Catalog {
    personas: HashMap<String, Arc<Compiled>>,
    routes: Arc<Routes>,
}

/// Remembered between reloads so a bad file is reported once, not on every reload.
#[derive(Default)]
struct ReloadMemory {
    rejected: HashMap<String, String>,
}

/// Serves personas from a directory. Use it as the engine's [`PersonaProvider`].
pub struct PluginHost {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    catalog: RwLock<Arc<Catalog>>,
    reloading: Mutex<ReloadMemory>,
    kv: Mutex<HashMap<String, Arc<KvStore>>>,
    watcher: Mutex<Option<Watcher>>,
}

impl PluginHost {
    /// Loads every persona in the directory now (synchronously: call before serving), and
    /// starts watching it when configured. `SIGHUP` handling needs a Tokio runtime.
    pub fn start(config: PluginHostConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, PluginHostError> {
        let dir = config.personas_dir.clone();
        let meta = std::fs::metadata(&dir).map_err(|e| PluginHostError::Dir(dir.clone(), e))?;
        if !meta.is_dir() {
            let e = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
            return Err(PluginHostError::Dir(dir, e));
        }
        let runtime = Runtime::new(&config.runtime, metrics).map_err(PluginHostError::Engine)?;
        let routes = Arc::new(Routes::empty(runtime.max_memory()));
        let host = Arc::new(PluginHost {
            runtime: Arc::new(runtime),
            dir,
            catalog: RwLock::new(Arc::new(Catalog { personas: HashMap::new(), routes })),
            reloading: Mutex::new(ReloadMemory::default()),
            kv: Mutex::new(HashMap::new()),
            watcher: Mutex::new(None),
        });
        let report = host.reload();
        tracing::info!(
            dir = %host.dir.display(), personas = ?host.personas(), rejected = report.rejected.len(),
            pooling = host.runtime.pooling(), "persona plugins loaded"
        );
        if config.watch || config.reload_on_sighup {
            let cache = config.runtime.cache_dir.as_deref();
            let watcher = Watcher::start(&host, &host.dir, cache, config.watch, config.reload_on_sighup)
                .map_err(|e| PluginHostError::Watch(host.dir.clone(), e))?;
            *lock(&host.watcher) = Some(watcher);
        }
        Ok(host)
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Names of the personas loaded, sorted.
    pub fn personas(&self) -> Vec<String> {
        let mut names: Vec<String> = self.snapshot().personas.keys().cloned().collect();
        names.sort();
        names
    }

    /// The content hash of a loaded persona.
    pub fn persona_hash(&self, name: &str) -> Option<String> {
        self.snapshot().personas.get(name).map(|c| c.hash.clone())
    }

    /// The persona's key-value store (created on first use; kept across reloads).
    pub fn kv(&self, persona: &str) -> Arc<KvStore> {
        lock(&self.kv).entry(persona.to_string()).or_default().clone()
    }

    fn snapshot(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A call's persona: the routed plugin, as loaded right now.
    pub fn persona(&self, call: &CallInfo) -> WasmPersona {
        let cat = self.snapshot();
        let selected = cat.routes.select(call, |n| cat.personas.contains_key(n)).and_then(|name| {
            Some(Selected {
                name: name.into(),
                compiled: cat.personas.get(name)?.clone(),
                grants: cat.routes.grants(name),
                kv: self.kv(name),
            })
        });
        WasmPersona::new(self.runtime.clone(), selected, call)
    }

    /// Re-reads the directory, loading what changed. Blocking (compiles): call off the async
    /// runtime, as the watcher does.
    pub fn reload(&self) -> ReloadReport {
        let mut memory = lock(&self.reloading);
        let current = self.snapshot();
        let mut report = ReloadReport::default();
        let routes = self.read_routes(&current, &mut memory, &mut report);
        let mut personas = HashMap::new();
        for (name, path) in self.wasm_files() {
            let loaded = self.load_one(&name, &path, &current, &mut memory, &mut report);
            if let Some(c) = loaded.or_else(|| current.personas.get(&name).cloned()) {
                personas.insert(name, c);
            }
        }
        for name in current.personas.keys().filter(|n| !personas.contains_key(*n)) {
            tracing::info!(persona = %name, "persona removed; its numbers fall back to the default persona");
            Metrics::inc(&self.runtime.metrics.plugin_reloads, "result", "removed");
            report.removed.push(name.clone());
        }
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Catalog { personas, routes });
        report
    }

    /// A reload that also retries files rejected before (what `SIGHUP` does).
    pub fn reload_forced(&self) -> ReloadReport {
        lock(&self.reloading).rejected.clear();
        self.reload()
    }

    fn read_routes(&self, current: &Catalog, memory: &mut ReloadMemory, report: &mut ReloadReport) -> Arc<Routes> {
        let path = self.dir.join(ROUTES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Arc::new(Routes::empty(self.runtime.max_memory()));
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "routes.toml unreadable; previous routes keep serving");
                return current.routes.clone();
            }
        };
        match Routes::parse(&text, self.runtime.max_memory()) {
            Ok(r) => {
                memory.rejected.remove(ROUTES_FILE);
                let r = Arc::new(r);
                if r != current.routes {
                    tracing::info!(routes = r.by_number.len(), default = ?r.default, "routes loaded");
                }
                r
            }
            Err(e) => {
                let hash = sha256(text.as_bytes());
                if memory.rejected.get(ROUTES_FILE) != Some(&hash) {
                    tracing::error!(file = %path.display(), error = %e, "routes.toml rejected; previous routes keep serving");
                    Metrics::inc(&self.runtime.metrics.plugin_reloads, "result", "rejected");
                    memory.rejected.insert(ROUTES_FILE.to_string(), hash);
                }
                report.rejected.push((ROUTES_FILE.to_string(), e.to_string()));
                current.routes.clone()
            }
        }
    }

    /// `Some` when the file produced a new version; `None` to keep what is loaded (if any).
    fn load_one(
        &self,
        name: &str,
        path: &Path,
        current: &Catalog,
        memory: &mut ReloadMemory,
        report: &mut ReloadReport,
    ) -> Option<Arc<Compiled>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "persona file unreadable; keeping what is loaded");
                return None;
            }
        };
        let hash = sha256(&bytes);
        let previous = current.personas.get(name);
        if previous.is_some_and(|p| p.hash == hash) {
            report.unchanged.push(name.to_string());
            return previous.cloned();
        }
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if memory.rejected.get(&file) == Some(&hash) {
            report.rejected.push((file, "rejected before; unchanged since".into()));
            return None;
        }
        match self.runtime.load(&bytes) {
            Ok(c) => {
                tracing::info!(
                    persona = name, hash = &c.hash[..12], cache = ?c.cache, ms = c.load_time.as_secs_f64() * 1e3,
                    replaced = previous.is_some(), "persona loaded"
                );
                Metrics::inc(&self.runtime.metrics.plugin_reloads, "result", "ok");
                memory.rejected.remove(&file);
                report.loaded.push(name.to_string());
                Some(Arc::new(c))
            }
            Err(e) => {
                tracing::error!(
                    file = %path.display(), error = %e, previous_version_kept = previous.is_some(),
                    "persona rejected"
                );
                Metrics::inc(&self.runtime.metrics.plugin_reloads, "result", "rejected");
                memory.rejected.insert(file.clone(), hash);
                report.rejected.push((file, e.to_string()));
                None
            }
        }
    }

    /// `(name, path)` of every `NAME.wasm` with a valid persona name.
    fn wasm_files(&self) -> Vec<(String, PathBuf)> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "personas directory unreadable");
                return Vec::new();
            }
        };
        let mut files: Vec<(String, PathBuf)> = entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                if path.extension()? != "wasm" || !path.is_file() {
                    return None;
                }
                let name = path.file_stem()?.to_str()?.to_string();
                if !is_persona_name(&name) {
                    tracing::debug!(file = %path.display(), "ignored: not a persona name ([a-z0-9][a-z0-9_-]*)");
                    return None;
                }
                Some((name, path))
            })
            .collect();
        files.sort();
        files
    }
}

impl PersonaProvider for PluginHost {
    fn persona_for(&self, call: &CallInfo) -> Box<dyn Persona> {
        Box::new(self.persona(call))
    }

    fn names(&self) -> Vec<String> {
        self.personas()
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
