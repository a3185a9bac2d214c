//! `switchboard plugin check FILE.wasm` and `switchboard plugin new NAME`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::types::ComponentItem;

use super::kv::KvStore;
use super::plugin::{Selected, WasmPersona};
use super::routes::{is_persona_name, Routes};
use super::runtime::{LoadError, Runtime, RuntimeConfig};
use crate::call::{CallInfo, Direction};
use crate::metrics::Metrics;
use crate::persona::{Greeting, Persona, PersonaSetup};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("plugin engine: {0:#}")]
    Engine(wasmtime::Error),
    #[error("{0}: {1}")]
    Load(PathBuf, LoadError),
}

/// What `plugin check` found.
#[derive(Debug)]
pub struct CheckReport {
    pub file: PathBuf,
    pub bytes: usize,
    pub sha256: String,
    pub compile_time: Duration,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// `(sample call, setup)`; `None` when `on-call-start` faulted (the log says why).
    pub samples: Vec<(String, Option<PersonaSetup>)>,
}

/// Loads `path` as the host would, then runs `on-call-start` for a sample inbound and a sample
/// outbound call (no HTTP hosts or secrets granted). Needs a Tokio runtime.
pub async fn check(path: &Path) -> Result<CheckReport, CheckError> {
    let bytes = tokio::fs::read(path).await.map_err(|e| CheckError::Read(path.to_path_buf(), e))?;
    let config = RuntimeConfig { max_instances: 2, ..Default::default() };
    let runtime = Runtime::new(&config, Arc::new(Metrics::new())).map_err(CheckError::Engine)?;
    let runtime = Arc::new(runtime);
    let loader = runtime.clone();
    let compiled = tokio::task::spawn_blocking(move || loader.load(&bytes).map(|c| (c, bytes.len())))
        .await
        .map_err(|e| CheckError::Engine(wasmtime::Error::msg(e.to_string())))?
        .map_err(|e| CheckError::Load(path.to_path_buf(), e))?;
    let (compiled, size) = compiled;
    let ty = compiled.component.component_type();
    let imports = ty.imports(runtime.engine()).map(|(n, item)| describe(n, &item.ty)).collect();
    let exports = ty.exports(runtime.engine()).map(|(n, item)| describe(n, &item.ty)).collect();
    let compiled = Arc::new(compiled);
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_string();
    let grants = Routes::empty(runtime.max_memory()).grants(&name);
    let mut samples = Vec::new();
    for call in sample_calls(&name) {
        let selected = Selected {
            name: name.as_str().into(),
            compiled: compiled.clone(),
            grants: grants.clone(),
            kv: Arc::new(KvStore::default()),
        };
        let mut persona = WasmPersona::new(runtime.clone(), Some(selected), &call);
        let setup = persona.setup(&call).await;
        let label = format!("{} call {} → {}", call.direction.as_str(), call.from, call.to);
        let label = if call.parameters.is_empty() { label } else { format!("{label} with {:?}", call.parameters) };
        samples.push((label, persona.is_live().then_some(setup)));
    }
    Ok(CheckReport {
        file: path.to_path_buf(),
        bytes: size,
        sha256: compiled.hash.clone(),
        compile_time: compiled.load_time,
        imports,
        exports,
        samples,
    })
}

fn describe(name: &str, item: &ComponentItem) -> String {
    let kind = match item {
        ComponentItem::ComponentInstance(_) => "interface",
        ComponentItem::ComponentFunc(_) => "function",
        ComponentItem::Type(_) => "type",
        ComponentItem::Resource(_) => "resource",
        ComponentItem::Component(_) => "component",
        ComponentItem::Module(_) => "module",
        ComponentItem::CoreFunc(_) => "core function",
    };
    format!("{name} ({kind})")
}

fn sample_calls(persona: &str) -> [CallInfo; 2] {
    let inbound = CallInfo {
        call_sid: "CA00000000000000000000000000000001".into(),
        stream_sid: "MZ00000000000000000000000000000001".into(),
        account_sid: "AC00000000000000000000000000000001".into(),
        direction: Direction::Inbound,
        from: "+15550002222".into(),
        to: "+15550001111".into(),
        persona: None,
        parameters: BTreeMap::new(),
    };
    let outbound = CallInfo {
        call_sid: "CA00000000000000000000000000000002".into(),
        direction: Direction::Outbound,
        from: "+15550001111".into(),
        to: "+15550002222".into(),
        persona: Some(persona.to_string()),
        parameters: [("name", "Ada"), ("time", "3 pm")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..inbound.clone()
    };
    [inbound, outbound]
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} bytes, sha256 {}", self.file.display(), self.bytes, self.sha256)?;
        writeln!(
            f,
            "matches switchboard:persona@{} (compiled in {:.0} ms)",
            super::bindings::VERSIONS[0],
            self.compile_time.as_secs_f64() * 1e3
        )?;
        writeln!(f, "imports:")?;
        for i in &self.imports {
            writeln!(f, "  {i}")?;
        }
        writeln!(f, "exports:")?;
        for e in &self.exports {
            writeln!(f, "  {e}")?;
        }
        for (label, setup) in &self.samples {
            writeln!(f, "{label}:")?;
            match setup {
                Some(s) => write_setup(f, s)?,
                None => writeln!(f, "  on-call-start failed (see the log); calls would use the built-in persona")?,
            }
        }
        Ok(())
    }
}

fn write_setup(f: &mut fmt::Formatter<'_>, s: &PersonaSetup) -> fmt::Result {
    writeln!(f, "  system prompt: {}", s.system_prompt)?;
    match &s.greeting {
        Greeting::None => writeln!(f, "  greeting: none (waits for the caller)")?,
        Greeting::Say(t) => writeln!(f, "  greeting: says {t:?}")?,
        Greeting::Generate(t) => writeln!(f, "  greeting: LLM told {t:?}")?,
    }
    writeln!(f, "  voice: {}", s.voice)?;
    writeln!(f, "  llm: {} (temperature {:?}, max tokens {:?})", s.llm_model, s.temperature, s.max_tokens)?;
    let (vad, turn) = (&s.turn_taking.vad, &s.turn_taking.turn);
    writeln!(
        f,
        "  turn-taking: vad confidence {} start {} s stop {} s min volume {}; turn stop {} s, pre-speech {} ms, max {} s; denoise {}",
        vad.confidence, vad.start_secs, vad.stop_secs, vad.min_volume, turn.stop_secs, turn.pre_speech_ms,
        turn.max_duration_secs, s.turn_taking.denoise
    )?;
    writeln!(f, "  idle timeout: {} ms; record: {}", s.idle.timeout.as_millis(), s.record)?;
    if s.tools.is_empty() {
        writeln!(f, "  tools: none")?;
    }
    for t in &s.tools {
        writeln!(f, "  tool {}: {} {}", t.name, t.description, t.parameters)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0:?} is not a persona name: use [a-z0-9][a-z0-9_-]{{0,63}}")]
    Name(String),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("the SDK crate {0} was not found (pass its path)")]
    Sdk(PathBuf),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

/// The SDK next to this source tree (`plugins/sdk`), when it exists.
pub fn default_sdk_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk");
    dir.join("Cargo.toml").is_file().then(|| dir.canonicalize().unwrap_or(dir))
}

/// Creates the persona crate `parent/NAME` (Cargo.toml + src/lib.rs) on the SDK at `sdk`.
/// Build it with `plugins/build.sh parent/NAME`.
pub fn new_plugin(name: &str, parent: &Path, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    if !is_persona_name(name) {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    let sdk = sdk.canonicalize().map_err(|_| ScaffoldError::Sdk(sdk.to_path_buf()))?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(ScaffoldError::Sdk(sdk));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let write = |path: PathBuf, text: String| std::fs::write(&path, text).map_err(|e| ScaffoldError::Write(path, e));
    std::fs::create_dir_all(dir.join("src")).map_err(|e| ScaffoldError::Write(dir.clone(), e))?;
    let parent_abs = dir.canonicalize().map_err(|e| ScaffoldError::Write(dir.clone(), e))?;
    let sdk_path = relative(&sdk, &parent_abs).unwrap_or(sdk);
    write(dir.join("Cargo.toml"), cargo_toml(name, &sdk_path))?;
    write(dir.join("src/lib.rs"), LIB_RS.replace("{{name}}", name))?;
    Ok(dir)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
switchboard-persona = {{ path = "{sdk}" }}
serde_json = "1"

# Small, self-contained components: no unwinding, size-optimised.
[profile.release]
panic = "abort"
opt-level = "s"
lto = true
strip = true
codegen-units = 1
"#,
        sdk = sdk.display()
    )
}

const LIB_RS: &str = r#"//! The {{name}} persona. Build: `plugins/build.sh path/to/{{name}}`, then copy
//! `plugins/target/personas/{{name}}.wasm` into `PERSONAS_DIR` and route a number to it in
//! `routes.toml`. Check it with `switchboard plugin check {{name}}.wasm`.

use serde_json::json;
use switchboard_persona::{export_persona, log, Action, CallInfo, Greeting, Persona, Setup, ToolResult};

struct Bot {
    caller: String,
}

impl Persona for Bot {
    fn start(call: &CallInfo) -> (Self, Setup) {
        log::info(&format!("call from {}", call.from));
        let setup = Setup::new(
            "You are a helpful assistant on a phone call. Your words are spoken aloud: keep them short, \
             with no lists or special characters.",
        )
        .greeting(Greeting::Say("Hello! How can I help you today?".into()))
        .tool("caller_number", "The caller's phone number.", json!({"type": "object", "properties": {}}));
        (Bot { caller: call.from.clone() }, setup)
    }

    fn tool_call(&mut self, name: &str, _arguments: &str) -> Result<ToolResult, String> {
        match name {
            "caller_number" => Ok(ToolResult::json(json!({ "number": self.caller }))),
            other => Err(format!("no tool named {other:?}")),
        }
    }

    fn idle(&mut self, attempt: u32) -> Action {
        match attempt {
            1 => Action::Say("Are you still there?".into()),
            _ => Action::HangUp(Some("Goodbye!".into())),
        }
    }
}

export_persona!(Bot);
"#;

/// `target` relative to `base` (both absolute), when they share a root.
fn relative(target: &Path, base: &Path) -> Option<PathBuf> {
    let t: Vec<PathPart> = target.components().collect();
    let b: Vec<PathPart> = base.components().collect();
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return None;
    }
    let mut out: PathBuf = b[common..].iter().map(|_| "..").collect();
    out.extend(&t[common..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/a/b/sdk"), Path::new("/a/c/d")), Some(PathBuf::from("../../b/sdk")));
        assert_eq!(relative(Path::new("/a/sdk"), Path::new("/a")), Some(PathBuf::from("sdk")));
    }

    #[test]
    fn scaffold_writes_a_crate_and_refuses_bad_names_and_existing_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let sdk = tmp.path().join("sdk");
        std::fs::create_dir_all(&sdk).unwrap();
        std::fs::write(sdk.join("Cargo.toml"), "[package]\nname = \"switchboard-persona\"\n").unwrap();
        let dir = new_plugin("front-desk", tmp.path(), &sdk).unwrap();
        let toml = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(toml.contains("name = \"front-desk\""), "{toml}");
        assert!(toml.contains("path = \"../sdk\""), "{toml}");
        assert!(std::fs::read_to_string(dir.join("src/lib.rs")).unwrap().contains("The front-desk persona"));
        assert!(matches!(new_plugin("front-desk", tmp.path(), &sdk), Err(ScaffoldError::Exists(_))));
        assert!(matches!(new_plugin("Front Desk", tmp.path(), &sdk), Err(ScaffoldError::Name(_))));
        assert!(matches!(new_plugin("x", tmp.path(), &tmp.path().join("nope")), Err(ScaffoldError::Sdk(_))));
    }
}
