//! Generated bindings, one module per `switchboard:persona` world version the host serves, and
//! the conversions between each version's types and the engine's. A new version gets a module
//! of its own beside the others (see `wit/README.md`); older ones stay as they are.

pub mod v0_1;

pub(crate) use v0_1::*;

/// World versions this host serves, newest first.
pub const VERSIONS: &[&str] = &["0.1.0"];
