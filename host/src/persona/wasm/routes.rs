//! `routes.toml` in `PERSONAS_DIR`: which persona answers which number, the default persona,
//! and what each persona is granted (HTTP hosts, limits, secrets).
//!
//! ```toml
//! default = "receptionist"
//!
//! [routes]
//! "+15550001111" = "support-desk"
//!
//! [personas.support-desk]
//! allowed_hosts = ["orders.example.com", "127.0.0.1:8089"]
//! hook_timeout_ms = 200
//! memory_mib = 64
//! [personas.support-desk.secrets]
//! orders_api = "https://orders.example.com"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::http::{AllowedHost, AllowlistError};
use crate::call::ids::is_e164;
use crate::call::{CallInfo, Direction};
use crate::persona::BUILTIN_NAME;

/// The file name inside `PERSONAS_DIR`.
pub const ROUTES_FILE: &str = "routes.toml";

/// Per-hook CPU deadline unless a persona sets its own.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_millis(200);
/// Per-request HTTP timeout unless a persona sets its own.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP requests one hook may make unless a persona sets its own. With the timeout above a
/// hook stays under the ~5 s of caller audio the call's input queue holds while a hook runs.
pub const DEFAULT_HTTP_REQUESTS_PER_HOOK: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("routes.toml: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("routes.toml: route key {0:?} is not an E.164 number")]
    Number(String),
    #[error("routes.toml: {0:?} is not a persona name ([a-z0-9][a-z0-9_-]{{0,63}})")]
    Name(String),
    #[error("routes.toml: persona {persona:?}: {source}")]
    Allowlist { persona: String, source: AllowlistError },
    #[error("routes.toml: persona {persona:?}: {what} must be within {range}")]
    Limit { persona: String, what: &'static str, range: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    default: Option<String>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    personas: BTreeMap<String, PersonaFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonaFile {
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    memory_mib: Option<u32>,
    hook_timeout_ms: Option<u64>,
    http_timeout_ms: Option<u64>,
    http_requests_per_hook: Option<u32>,
}

/// What one persona may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Grants {
    pub allowed_hosts: Vec<AllowedHost>,
    pub secrets: BTreeMap<String, String>,
    pub limits: Limits,
}

/// Per-instance limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: usize,
    /// CPU time per hook (wasm execution; time waiting on HTTP is not counted).
    pub hook_timeout: Duration,
    pub http_timeout: Duration,
    pub http_requests_per_hook: u32,
}

impl Limits {
    /// The defaults under an engine whose instances may use at most `max_memory` bytes.
    pub fn defaults(max_memory: usize) -> Self {
        Limits {
            memory_bytes: max_memory,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            http_requests_per_hook: DEFAULT_HTTP_REQUESTS_PER_HOOK,
        }
    }

    /// Longest a hook may take on the wall clock: its CPU budget plus its HTTP allowance, and a
    /// margin for scheduling. Past this the call stops waiting for the hook.
    pub fn wall_budget(&self) -> Duration {
        self.hook_timeout + self.http_timeout * self.http_requests_per_hook + Duration::from_millis(500)
    }
}

/// The parsed, checked routing table.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    pub default: Option<String>,
    pub by_number: HashMap<String, String>,
    grants: HashMap<String, Arc<Grants>>,
    default_grants: Arc<Grants>,
}

impl Routes {
    /// No routes: every call gets the default persona, if any, with default grants.
    pub fn empty(max_memory: usize) -> Self {
        Routes {
            default: None,
            by_number: HashMap::new(),
            grants: HashMap::new(),
            default_grants: Arc::new(Grants {
                allowed_hosts: Vec::new(),
                secrets: BTreeMap::new(),
                limits: Limits::defaults(max_memory),
            }),
        }
    }

    /// Parses `routes.toml`; `max_memory` is the engine's per-instance ceiling.
    pub fn parse(text: &str, max_memory: usize) -> Result<Self, RoutesError> {
        let file: RoutesFile = toml::from_str(text)?;
        let mut routes = Routes::empty(max_memory);
        if let Some(d) = file.default {
            check_name(&d)?;
            routes.default = Some(d);
        }
        for (number, name) in file.routes {
            if !is_e164(&number) {
                return Err(RoutesError::Number(number));
            }
            check_name(&name)?;
            routes.by_number.insert(number, name);
        }
        for (name, p) in file.personas {
            check_name(&name)?;
            let grants = grants(&name, p, max_memory)?;
            routes.grants.insert(name, Arc::new(grants));
        }
        Ok(routes)
    }

    /// The persona a call asks for: a persona named in the call's (signed) set-up wins — the
    /// `/dialout` persona, or the one picked in the playground, where `built-in` asks for no
    /// plugin at all; else inbound by `To`, outbound by `From`. `loaded` says which names exist;
    /// anything else falls back to the default.
    pub fn select<'a>(&'a self, call: &'a CallInfo, loaded: impl Fn(&str) -> bool) -> Option<&'a str> {
        let requested = call.persona.as_deref();
        if let Some(name) = requested.filter(|p| loaded(p)) {
            return Some(name);
        }
        if requested == Some(BUILTIN_NAME) {
            return None;
        }
        let by_number = |n: &str| self.by_number.get(n).map(String::as_str).filter(|p| loaded(p));
        let chosen = match call.direction {
            Direction::Inbound => by_number(&call.to),
            Direction::Outbound => by_number(&call.from),
        };
        chosen.or_else(|| self.default.as_deref().filter(|p| loaded(p)))
    }

    pub fn grants(&self, persona: &str) -> Arc<Grants> {
        self.grants.get(persona).cloned().unwrap_or_else(|| self.default_grants.clone())
    }
}

fn grants(name: &str, p: PersonaFile, max_memory: usize) -> Result<Grants, RoutesError> {
    let limit = |what: &'static str, range: String| RoutesError::Limit { persona: name.to_string(), what, range };
    let max_mib = max_memory / (1 << 20);
    let mut limits = Limits::defaults(max_memory);
    if let Some(m) = p.memory_mib {
        if m == 0 || m as usize > max_mib {
            return Err(limit("memory_mib", format!("1..={max_mib}")));
        }
        limits.memory_bytes = m as usize * (1 << 20);
    }
    if let Some(ms) = p.hook_timeout_ms {
        if !(10..=5000).contains(&ms) {
            return Err(limit("hook_timeout_ms", "10..=5000".into()));
        }
        limits.hook_timeout = Duration::from_millis(ms);
    }
    if let Some(ms) = p.http_timeout_ms {
        if !(100..=30_000).contains(&ms) {
            return Err(limit("http_timeout_ms", "100..=30000".into()));
        }
        limits.http_timeout = Duration::from_millis(ms);
    }
    if let Some(n) = p.http_requests_per_hook {
        if n > 16 {
            return Err(limit("http_requests_per_hook", "0..=16".into()));
        }
        limits.http_requests_per_hook = n;
    }
    let allowed_hosts = p
        .allowed_hosts
        .iter()
        .map(|h| h.parse::<AllowedHost>())
        .collect::<Result<_, _>>()
        .map_err(|source| RoutesError::Allowlist { persona: name.to_string(), source })?;
    Ok(Grants { allowed_hosts, secrets: p.secrets, limits })
}

/// Persona names are file stems: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn is_persona_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

fn check_name(s: &str) -> Result<(), RoutesError> {
    if is_persona_name(s) {
        Ok(())
    } else {
        Err(RoutesError::Name(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB64: usize = 64 << 20;

    fn call(direction: Direction, from: &str, to: &str, persona: Option<&str>) -> CallInfo {
        CallInfo {
            call_sid: "CA1".into(),
            stream_sid: "MZ1".into(),
            account_sid: "AC1".into(),
            direction,
            from: from.into(),
            to: to.into(),
            persona: persona.map(String::from),
            parameters: BTreeMap::new(),
        }
    }

    const FILE: &str = r#"
        default = "front"
        [routes]
        "+15550001111" = "support"
        "+15550002222" = "reminder"
        [personas.support]
        allowed_hosts = ["127.0.0.1:8089", "api.example.com"]
        hook_timeout_ms = 300
        [personas.support.secrets]
        key = "s3cret"
    "#;

    #[test]
    fn routes_by_direction_with_fallback_to_the_default() {
        let r = Routes::parse(FILE, MIB64).unwrap();
        let all = |_: &str| true;
        assert_eq!(r.select(&call(Direction::Inbound, "+1999", "+15550001111", None), all), Some("support"));
        assert_eq!(r.select(&call(Direction::Inbound, "+1999", "+15559999999", None), all), Some("front"));
        let out = call(Direction::Outbound, "+15550002222", "+1999", Some("support"));
        assert_eq!(r.select(&out, all), Some("support"), "the dial-out persona wins");
        let out = call(Direction::Outbound, "+15550002222", "+1999", None);
        assert_eq!(r.select(&out, all), Some("reminder"), "else by From");
        // A persona whose file is gone falls back to the default; no default → none.
        let no_support = |p: &str| p != "support";
        assert_eq!(r.select(&call(Direction::Inbound, "", "+15550001111", None), no_support), Some("front"));
        assert_eq!(r.select(&call(Direction::Inbound, "", "+15550001111", None), |_| false), None);
    }

    #[test]
    fn a_persona_named_at_set_up_wins_for_inbound_streams_too() {
        // Playground streams are inbound and name their persona in a signed parameter.
        let r = Routes::parse(FILE, MIB64).unwrap();
        let all = |_: &str| true;
        let pick = |p: Option<&str>| call(Direction::Inbound, "browser", "playground", p);
        assert_eq!(r.select(&pick(Some("reminder")), all), Some("reminder"));
        let plugins = |p: &str| p != "built-in";
        assert_eq!(r.select(&pick(Some("built-in")), plugins), None, "built-in means no plugin, not the default");
        assert_eq!(r.select(&pick(Some("gone")), |p: &str| p != "gone"), Some("front"));
        assert_eq!(r.select(&pick(None), all), Some("front"));
    }

    #[test]
    fn grants_and_limits_are_parsed() {
        let r = Routes::parse(FILE, MIB64).unwrap();
        let g = r.grants("support");
        assert_eq!(g.limits.hook_timeout, Duration::from_millis(300));
        assert_eq!(g.limits.memory_bytes, MIB64);
        assert_eq!(g.secrets.get("key").map(String::as_str), Some("s3cret"));
        assert_eq!(g.allowed_hosts.len(), 2);
        assert!(r.grants("front").allowed_hosts.is_empty(), "unlisted personas get nothing");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let e = |t: &str| Routes::parse(t, MIB64).unwrap_err().to_string();
        assert!(e("[routes]\n\"5550001111\" = \"a\"").contains("E.164"));
        assert!(e("default = \"Bad Name\"").contains("persona name"));
        assert!(e("[personas.a]\nmemory_mib = 128").contains("memory_mib"));
        assert!(e("[personas.a]\nallowed_hosts = [\"http://\"]").contains("persona \"a\""));
        assert!(e("defualt = \"a\"").contains("unknown field"));
    }
}
