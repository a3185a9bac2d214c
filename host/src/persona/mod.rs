//! Personas: what a bot *is*. The [`Persona`] trait the engine calls ([`api`]), the built-in
//! persona ([`builtin`]), and the WebAssembly host that serves `NAME.wasm` plugins ([`wasm`]).

pub mod api;
pub mod builtin;
pub mod wasm;

pub use api::*;
pub use builtin::{BuiltinPersona, BuiltinProvider, BUILTIN_IDLE_ATTEMPTS};
pub use wasm::{
    tools, CacheOutcome, Compiled, Grants, Limits, LoadError, PluginHost, PluginHostConfig, PluginHostError,
    PluginInstance, ReloadReport, Routes, RoutesError, Runtime, RuntimeConfig, WasmPersona,
};
