//! A persona backed by a plugin instance: one fresh instance per call.
//!
//! Guest code never runs on a Tokio worker: each hook moves the call's store onto the blocking
//! pool (`spawn_blocking`), runs there under the epoch deadline, and comes back. A hook is CPU
//! work of unknown length (up to its deadline); on the blocking pool it can neither stall other
//! calls' audio tasks nor need fuel-style yielding. Plugin HTTP blocks that pool thread on the
//! runtime's reactor, which is what the pool is for.
//!
//! When a hook traps, overruns or its instance can't be made, the fault is logged and counted,
//! the instance is dropped, and this call goes on with the built-in behaviour.

use std::sync::Arc;

use tokio::task::JoinError;
use wasmtime::Store;

use super::bindings::{self, Persona as PersonaWorld, Warnings};
use super::ctx::{Ctx, CtxParts, Tag};
use super::kv::KvStore;
use super::routes::Grants;
use super::runtime::{ticks, Compiled, Runtime};
use crate::call::CallInfo;
use crate::metrics::Metrics;
use crate::persona::{Action, BuiltinPersona, CallSummary, HookFuture, Persona, PersonaSetup, ToolOutcome};

/// The persona a call was routed to, as loaded when the call started.
#[derive(Clone)]
pub(crate) struct Selected {
    pub name: Arc<str>,
    pub compiled: Arc<Compiled>,
    pub grants: Arc<Grants>,
    pub kv: Arc<KvStore>,
}

/// One call's instance of a persona: a fresh store with its limits armed, instantiated from
/// the persona's `InstancePre`. Its hooks run synchronously on the calling thread (the engine
/// uses [`WasmPersona`], which runs them on the blocking pool); tools and benchmarks use it
/// directly.
pub struct PluginInstance {
    store: Store<Ctx>,
    world: PersonaWorld,
}

impl PluginInstance {
    /// Instantiates `compiled` for call `call_sid` under `grants`, with a private key-value store.
    pub fn new(
        runtime: &Runtime,
        compiled: &Compiled,
        grants: Arc<Grants>,
        call_sid: &str,
    ) -> Result<Self, wasmtime::Error> {
        let tag = Tag { persona: "instance".into(), call_sid: call_sid.into() };
        Self::with_parts(runtime, compiled, CtxParts::new(runtime, tag, grants, Arc::new(KvStore::default())))
            .map_err(|(_, e)| e)
    }

    fn with_parts(
        runtime: &Runtime,
        compiled: &Compiled,
        parts: CtxParts,
    ) -> Result<Self, (Store<Ctx>, wasmtime::Error)> {
        let mut store = runtime.store(parts);
        match runtime.instantiate(compiled, &mut store) {
            Ok(world) => Ok(PluginInstance { store, world }),
            Err(e) => Err((store, e)),
        }
    }

    fn call<R>(
        &mut self,
        hook: &'static str,
        f: impl FnOnce(&mut Store<Ctx>, &PersonaWorld) -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        self.store.data_mut().begin_hook(hook);
        let budget = self.store.data().grants.limits.hook_timeout;
        self.store.set_epoch_deadline(ticks(budget));
        f(&mut self.store, &self.world)
    }

    /// `on-call-start`, with the plugin's values checked.
    pub fn on_call_start(&mut self, call: &CallInfo) -> Result<PersonaSetup, wasmtime::Error> {
        let wit_call = bindings::call_info(call);
        let setup =
            self.call("on_call_start", |s, w| w.switchboard_persona_hooks().call_on_call_start(s, &wit_call))?;
        Ok(bindings::setup(setup, &mut Warnings::default()))
    }

    /// `on-idle`, with the plugin's action checked.
    pub fn on_idle(&mut self, attempt: u32) -> Result<Action, wasmtime::Error> {
        let a = self.call("on_idle", |s, w| w.switchboard_persona_hooks().call_on_idle(s, attempt))?;
        Ok(bindings::action(a, &mut Warnings::default()))
    }

    /// `on-user-turn`, with the plugin's action checked.
    pub fn on_user_turn(&mut self, transcript: &str) -> Result<Action, wasmtime::Error> {
        let a = self.call("on_user_turn", |s, w| w.switchboard_persona_hooks().call_on_user_turn(s, transcript))?;
        Ok(bindings::action(a, &mut Warnings::default()))
    }
}

/// A failed hook, classified for logs and metrics.
struct Fault {
    kind: &'static str,
    detail: String,
}

impl Fault {
    fn from_error(ctx: &Ctx, e: &wasmtime::Error) -> Self {
        let kind = if ctx.hook.deadline_hit {
            "deadline"
        } else if ctx.limiter.refused.is_some() {
            "memory"
        } else if e.downcast_ref::<wasmtime::Trap>().is_some() {
            "trap"
        } else {
            "error"
        };
        let mut detail = format!("{e:#}");
        if let Some(refused) = ctx.limiter.refused {
            detail.push_str(&format!(" (memory growth to {} MiB refused)", refused >> 20));
        }
        let stderr = ctx.stderr_text();
        if !stderr.is_empty() {
            detail.push_str(&format!("; stderr: {stderr}"));
        }
        Fault { kind, detail }
    }

    fn join(e: JoinError) -> Self {
        Fault { kind: "host_panic", detail: e.to_string() }
    }
}

/// A call's persona: the plugin while it behaves, the built-in persona after a fault.
pub struct WasmPersona {
    runtime: Arc<Runtime>,
    selected: Option<Selected>,
    live: Option<PluginInstance>,
    fallback: BuiltinPersona,
    call_sid: Arc<str>,
}

impl WasmPersona {
    pub(crate) fn new(runtime: Arc<Runtime>, selected: Option<Selected>, call: &CallInfo) -> Self {
        WasmPersona {
            runtime,
            selected,
            live: None,
            fallback: BuiltinPersona::new(),
            call_sid: call.call_sid.as_str().into(),
        }
    }

    /// The persona's name, or `None` when the call runs on the built-in persona.
    pub fn persona_name(&self) -> Option<&str> {
        self.selected.as_ref().map(|s| &*s.name)
    }

    /// Whether the plugin instance is still in use (no fault so far).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }

    fn fault(&mut self, hook: &'static str, fault: Fault) {
        self.live = None;
        let persona = self.persona_name().unwrap_or_default();
        tracing::warn!(
            persona, call_sid = %self.call_sid, hook, kind = fault.kind, error = %fault.detail,
            "persona plugin fault; the call continues with the built-in behaviour"
        );
        Metrics::inc(&self.runtime.metrics.plugin_faults, "kind", fault.kind);
    }

    fn warn(&self, hook: &'static str, warnings: Warnings) {
        if !warnings.0.is_empty() {
            tracing::warn!(
                persona = self.persona_name().unwrap_or_default(), call_sid = %self.call_sid, hook,
                problems = %warnings.0.join("; "), "persona plugin returned values the host corrected"
            );
        }
    }

    /// Runs `f` on the call's instance on the blocking pool; `None` when there is no instance
    /// (any more) or the hook failed.
    async fn run<R: Send + 'static>(
        &mut self,
        hook: &'static str,
        f: impl FnOnce(&mut Store<Ctx>, &PersonaWorld) -> wasmtime::Result<R> + Send + 'static,
    ) -> Option<R> {
        let mut live = self.live.take()?;
        let wall = live.store.data().grants.limits.wall_budget();
        let task = tokio::task::spawn_blocking(move || {
            let r = live.call(hook, f);
            (live, r)
        });
        match tokio::time::timeout(wall, task).await {
            Ok(Ok((live, Ok(r)))) => {
                self.live = Some(live);
                Some(r)
            }
            Ok(Ok((live, Err(e)))) => {
                let fault = Fault::from_error(live.store.data(), &e);
                self.fault(hook, fault);
                None
            }
            Ok(Err(e)) => {
                self.fault(hook, Fault::join(e));
                None
            }
            Err(_) => {
                // The epoch deadline stops the guest; its store is dropped on the pool thread.
                self.fault(
                    hook,
                    Fault { kind: "timeout", detail: format!("no answer within {} ms", wall.as_millis()) },
                );
                None
            }
        }
    }

    /// Instantiates the plugin and runs `on-call-start`, both on the blocking pool.
    async fn start(&mut self, call: &CallInfo) -> Option<PersonaSetup> {
        let sel = self.selected.clone()?;
        let runtime = self.runtime.clone();
        let wit_call = bindings::call_info(call);
        let tag = Tag { persona: sel.name.clone(), call_sid: self.call_sid.clone() };
        let task = tokio::task::spawn_blocking(move || {
            let parts = CtxParts::new(&runtime, tag, sel.grants.clone(), sel.kv.clone());
            let mut live = match PluginInstance::with_parts(&runtime, &sel.compiled, parts) {
                Ok(live) => live,
                Err((store, e)) => {
                    let mut fault = Fault::from_error(store.data(), &e);
                    if fault.kind != "memory" {
                        fault.kind = "instantiate";
                    }
                    return Err(fault);
                }
            };
            match live.call("on_call_start", |s, w| w.switchboard_persona_hooks().call_on_call_start(s, &wit_call)) {
                Ok(setup) => Ok((live, setup)),
                Err(e) => Err(Fault::from_error(live.store.data(), &e)),
            }
        });
        let wall = self.selected.as_ref()?.grants.limits.wall_budget();
        let result = match tokio::time::timeout(wall, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(Fault::join(e)),
            Err(_) => Err(Fault { kind: "timeout", detail: format!("no answer within {} ms", wall.as_millis()) }),
        };
        match result {
            Ok((live, setup)) => {
                self.live = Some(live);
                let mut warnings = Warnings::default();
                let setup = bindings::setup(setup, &mut warnings);
                self.warn("on_call_start", warnings);
                Some(setup)
            }
            Err(fault) => {
                self.fault("on_call_start", fault);
                None
            }
        }
    }

    fn action(&self, hook: &'static str, a: bindings::wit::Action) -> Action {
        let mut warnings = Warnings::default();
        let action = bindings::action(a, &mut warnings);
        self.warn(hook, warnings);
        action
    }
}

impl Persona for WasmPersona {
    fn identity(&self) -> crate::persona::PersonaIdentity {
        match &self.selected {
            Some(s) => {
                crate::persona::PersonaIdentity { name: s.name.to_string(), version: Some(s.compiled.hash.clone()) }
            }
            None => crate::persona::PersonaIdentity::builtin(),
        }
    }

    fn setup<'a>(&'a mut self, call: &'a CallInfo) -> HookFuture<'a, PersonaSetup> {
        Box::pin(async move {
            // The fallback learns the call's direction whether or not the plugin starts.
            let builtin = self.fallback.setup(call).await;
            let setup = self.start(call).await;
            tracing::info!(
                persona = self.persona_name().unwrap_or("built-in"), call_sid = %self.call_sid,
                plugin = self.is_live(), "persona selected"
            );
            setup.unwrap_or(builtin)
        })
    }

    fn on_user_turn<'a>(&'a mut self, transcript: &'a str) -> HookFuture<'a, Action> {
        let text = transcript.to_string();
        Box::pin(async move {
            let hook = "on_user_turn";
            match self.run(hook, move |s, w| w.switchboard_persona_hooks().call_on_user_turn(s, &text)).await {
                Some(a) => self.action(hook, a),
                None => self.fallback.on_user_turn(transcript).await,
            }
        })
    }

    fn on_idle(&mut self, attempt: u32) -> HookFuture<'_, Action> {
        Box::pin(async move {
            let hook = "on_idle";
            match self.run(hook, move |s, w| w.switchboard_persona_hooks().call_on_idle(s, attempt)).await {
                Some(a) => self.action(hook, a),
                None => self.fallback.on_idle(attempt).await,
            }
        })
    }

    fn on_tool_call<'a>(
        &'a mut self,
        name: &'a str,
        arguments: &'a str,
    ) -> HookFuture<'a, Result<ToolOutcome, String>> {
        let (n, args) = (name.to_string(), arguments.to_string());
        Box::pin(async move {
            let hook = "on_tool_call";
            match self.run(hook, move |s, w| w.switchboard_persona_hooks().call_on_tool_call(s, &n, &args)).await {
                Some(r) => {
                    let mut warnings = Warnings::default();
                    let r = bindings::tool_result(r, &mut warnings);
                    self.warn(hook, warnings);
                    r
                }
                // The LLM hears that the tool failed rather than that it doesn't exist.
                None if self.selected.is_some() => Err(format!("the tool {name:?} is unavailable")),
                None => self.fallback.on_tool_call(name, arguments).await,
            }
        })
    }

    fn on_dtmf<'a>(&'a mut self, digits: &'a str) -> HookFuture<'a, Action> {
        let d = digits.to_string();
        Box::pin(async move {
            let hook = "on_dtmf";
            match self.run(hook, move |s, w| w.switchboard_persona_hooks().call_on_dtmf(s, &d)).await {
                Some(a) => self.action(hook, a),
                None => self.fallback.on_dtmf(digits).await,
            }
        })
    }

    fn on_call_end<'a>(&'a mut self, summary: &'a CallSummary) -> HookFuture<'a, ()> {
        let s = bindings::summary(summary);
        Box::pin(async move {
            self.run("on_call_end", move |st, w| w.switchboard_persona_hooks().call_on_call_end(st, &s)).await;
            // Give the instance's pool slot back now rather than when the session is dropped.
            self.live = None;
        })
    }
}
