//! Persona plugins: WebAssembly components implementing the `switchboard:persona@0.1.0` world
//! (`wit/persona.wit`), one per `NAME.wasm` in `PERSONAS_DIR`, routed per phone number by
//! `routes.toml`, sandboxed and hot-reloaded.
//!
//! - [`runtime`]: the engine (pooling allocator, epoch deadlines, compiled-code cache, linker).
//! - [`host`]: the directory of personas, routing and reloads; the engine's `PersonaProvider`.
//! - [`plugin`]: one call's instance behind the `Persona` trait, with fallback on faults.
//! - [`routes`], [`http`], [`kv`]: what personas are granted.
//! - [`tools`]: `switchboard plugin check` and `switchboard plugin new`.

mod bindings;
pub mod cache;
mod ctx;
pub mod host;
pub mod http;
pub mod kv;
pub mod plugin;
pub mod routes;
pub mod runtime;
pub mod tools;
mod watch;

pub use cache::CacheOutcome;
pub use host::{PluginHost, PluginHostConfig, PluginHostError, ReloadReport};
pub use plugin::{PluginInstance, WasmPersona};
pub use routes::{Grants, Limits, Routes, RoutesError};
pub use runtime::{Compiled, LoadError, Runtime, RuntimeConfig};
