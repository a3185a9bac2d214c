//! Compiled components on disk, keyed by the component's SHA-256 and the engine's
//! compatibility hash, so a restart deserializes (milliseconds) instead of compiling.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Deserialized from the cache.
    Hit,
    /// Compiled and written to the cache.
    Miss,
    /// Compiled; no usable cache.
    Off,
}

#[derive(Debug)]
pub(crate) struct CompileCache {
    dir: PathBuf,
    /// Changes whenever compiled code from this engine would not load in another.
    engine_key: String,
}

impl CompileCache {
    /// Opens (creating, owner-only) the cache directory.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        Ok(CompileCache { dir: dir.to_path_buf(), engine_key: format!("{:016x}", h.finish()) })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// The compiled component for `hash`, if cached and loadable.
    pub fn load(&self, engine: &Engine, hash: &str) -> Option<Component> {
        let path = self.path(hash);
        // Read, not mapped (`deserialize_file`): a cache file truncated or rewritten later by
        // anyone must not pull code out from under running instances (SIGBUS).
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: `deserialize` runs these bytes as machine code. Only this host writes this
        // directory (created owner-only above, files renamed into place whole), and wasmtime
        // checks the header and engine compatibility before use.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding an unusable compiled component");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes `component` for `hash` (best effort: a failure only costs a recompile later).
    pub fn store(&self, hash: &str, component: &Component) {
        let path = self.path(hash);
        let tmp = self.dir.join(format!(".{hash}.{:016x}.tmp", rand::random::<u64>()));
        let result = component.serialize().map_err(|e| e.to_string()).and_then(|bytes| {
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)
            };
            write().map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                e.to_string()
            })
        });
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not cache a compiled component");
        }
    }
}
