//! Configuration: command line > environment > `.env` > `switchboard.toml` > defaults, into one
//! typed [`Config`] validated at start-up.
//!
//! The environment variable names are a contract with deployments and scripts (see
//! `env.example`); `switchboard.toml` uses the same names in lower case.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::telephony::twilio::rest::DEFAULT_BASE_URL as TWILIO_DEFAULT_BASE_URL;

pub const DEFAULT_DEEPGRAM_BASE_URL: &str = "https://api.deepgram.com";
pub const DEFAULT_GROQ_BASE_URL: &str = "https://api.groq.com/openai/v1";
pub const DEFAULT_PORT: u16 = 7860;
/// Where the call history lives unless `DATABASE_PATH` says otherwise (beside `recordings/`).
pub const DEFAULT_DATABASE_PATH: &str = "data/switchboard.db";
/// Where the local models live unless `LOCAL_MODELS_DIR` says otherwise (`models/fetch-*.sh`).
pub const DEFAULT_LOCAL_MODELS_DIR: &str = "models/local";
/// Calls at once when the LLM runs on this machine and `MAX_CALLS` is unset: on 2 cores a third
/// local call makes every reply slow (docs/local.md has the figures).
pub const LOCAL_MAX_CALLS: usize = 2;

/// Where one stage of the conversation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// The hosted provider (Deepgram for speech, Groq for the LLM).
    Cloud,
    /// A model inside this process (models/local).
    Local,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Cloud => "cloud",
            ProviderKind::Local => "local",
        }
    }
}

/// Which provider each stage uses. `forced`: the choice was explicit (`PROVIDERS` or the stage's
/// own variable), so a local model that can't load is an error instead of a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Providers {
    pub stt: ProviderKind,
    pub llm: ProviderKind,
    pub tts: ProviderKind,
    pub forced: bool,
}

/// A configuration value that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {problem}")]
    Invalid { name: &'static str, problem: String },
    #[error("reading {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Toml { path: PathBuf, source: Box<toml::de::Error> },
}

/// Twilio account credentials.
#[derive(Clone)]
pub struct TwilioCredentials {
    pub account_sid: String,
    pub auth_token: String,
}

impl std::fmt::Debug for TwilioCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioCredentials").field("account_sid", &self.account_sid).finish_non_exhaustive()
    }
}

/// Everything the server needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Public base URL Twilio reaches us at; `None` = derive it from each request's headers.
    pub public_url: Option<Url>,
    pub twilio: Option<TwilioCredentials>,
    pub twilio_api_base_url: Url,
    pub deepgram_api_key: Option<String>,
    pub deepgram_base_url: Url,
    pub groq_api_key: Option<String>,
    pub groq_base_url: Url,
    pub dialout_api_key: Option<String>,
    /// Opens the browser playground to non-local visitors who present it (`None`: localhost only).
    pub playground_key: Option<String>,
    pub recordings_dir: PathBuf,
    pub personas_dir: PathBuf,
    /// The call history's SQLite file; `None` = history off (`HISTORY=off` or empty `DATABASE_PATH`).
    pub database_path: Option<PathBuf>,
    /// Calls (rows, recordings and transcripts) older than this are deleted by the history's
    /// writer; `None` keeps everything (`HISTORY_RETENTION_DAYS` unset or 0).
    pub history_retention: Option<Duration>,
    /// Key for `/api/*`; when unset the API answers only direct requests from this machine.
    pub api_key: Option<String>,
    /// Secret for stream tokens; derived from the Twilio auth token when unset.
    pub stream_token_secret: Option<String>,
    pub drain_timeout: Duration,
    pub insecure_skip_signature: bool,
    pub providers: Providers,
    pub local_models_dir: PathBuf,
    /// Calls at once; more are refused (Twilio gets a 503 and plays its fallback). `None`: no
    /// limit (`serve` sets [`LOCAL_MAX_CALLS`] when the LLM runs locally and `MAX_CALLS` is unset).
    pub max_calls: Option<usize>,
}

/// Command-line values that win over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub public_url: Option<String>,
    pub config_file: Option<PathBuf>,
    pub insecure_skip_signature: bool,
    pub drain_timeout_secs: Option<u64>,
}

/// Where values come from, in precedence order.
struct Sources {
    env: HashMap<String, String>,
    file: HashMap<String, String>,
}

impl Sources {
    /// Like `get`, but tells "set to empty" (`Some("")`) from "not set" (`None`).
    fn raw(&self, name: &str) -> Option<String> {
        self.env.get(name).or_else(|| self.file.get(&name.to_ascii_lowercase())).map(|v| v.trim().to_string())
    }

    fn get(&self, name: &str) -> Option<String> {
        self.env
            .get(name)
            .or_else(|| self.file.get(&name.to_ascii_lowercase()))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }
}

impl Config {
    /// Loads `.env` (without overriding the real environment), then builds the config.
    pub fn load(overrides: &Overrides) -> Result<(Config, Vec<String>), ConfigError> {
        let _ = dotenvy::dotenv();
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::from_sources(overrides, env)
    }

    /// Builds the config from an explicit environment (tests use this).
    pub fn from_sources(
        overrides: &Overrides,
        env: HashMap<String, String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let file_path = overrides.config_file.clone().or_else(|| {
            let default = PathBuf::from("switchboard.toml");
            default.exists().then_some(default)
        });
        let file = match &file_path {
            Some(p) => read_toml(p)?,
            None => HashMap::new(),
        };
        let src = Sources { env, file };
        let mut warnings = Vec::new();

        let public_url = match overrides.public_url.clone().or_else(|| src.get("PUBLIC_URL")) {
            Some(u) => Some(parse_url("PUBLIC_URL", &u)?),
            None => match src.get("PROXY_HOST") {
                Some(h) => Some(proxy_host_url(&h, &mut warnings)?),
                None => None,
            },
        };
        let twilio = match (src.get("TWILIO_ACCOUNT_SID"), src.get("TWILIO_AUTH_TOKEN")) {
            (Some(account_sid), Some(auth_token)) => Some(TwilioCredentials { account_sid, auth_token }),
            (sid, token) => {
                let missing: Vec<&str> =
                    [("TWILIO_ACCOUNT_SID", sid.is_none()), ("TWILIO_AUTH_TOKEN", token.is_none())]
                        .into_iter()
                        .filter_map(|(n, m)| m.then_some(n))
                        .collect();
                warnings.push(format!(
                    "{} not set: Twilio webhooks can't be verified (they will be refused), and caller info, hang-up and dial-out are off",
                    missing.join(" and ")
                ));
                None
            }
        };
        let dialout_api_key = src.get("DIALOUT_API_KEY");
        if dialout_api_key.is_none() {
            warnings.push("DIALOUT_API_KEY not set: POST /dialout is disabled".into());
        }
        let deepgram_api_key = src.get("DEEPGRAM_API_KEY");
        let groq_api_key = src.get("GROQ_API_KEY");
        let providers = providers(&src, deepgram_api_key.is_some(), groq_api_key.is_some())?;
        for (stage, kind, key, var) in [
            ("speech recognition", providers.stt, &deepgram_api_key, "DEEPGRAM_API_KEY"),
            ("the LLM", providers.llm, &groq_api_key, "GROQ_API_KEY"),
            ("speech synthesis", providers.tts, &deepgram_api_key, "DEEPGRAM_API_KEY"),
        ] {
            if kind == ProviderKind::Cloud
                && key.is_none()
                && !(var == "GROQ_API_KEY" && src.get("GROQ_BASE_URL").is_some())
            {
                warnings.push(format!("{var} not set but {stage} is set to the cloud provider: it will fail"));
            }
        }
        let max_calls = match src.get("MAX_CALLS") {
            None => None,
            Some(n) => match n.parse::<usize>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => return Err(invalid("MAX_CALLS", format!("not a number of calls: {n:?}"))),
            },
        };
        let port = match overrides.port {
            Some(p) => p,
            None => match src.get("PORT") {
                Some(p) => p.parse().map_err(|_| invalid("PORT", format!("not a port number: {p:?}")))?,
                None => DEFAULT_PORT,
            },
        };
        let drain_secs = match overrides.drain_timeout_secs {
            Some(s) => s,
            None => match src.get("DRAIN_TIMEOUT_SECS") {
                Some(s) => s.parse().map_err(|_| invalid("DRAIN_TIMEOUT_SECS", format!("not a number: {s:?}")))?,
                None => 60,
            },
        };
        let history_on = match src.get("HISTORY").map(|v| v.to_ascii_lowercase()) {
            None => true,
            Some(v) if matches!(v.as_str(), "on" | "true" | "1" | "yes") => true,
            Some(v) if matches!(v.as_str(), "off" | "false" | "0" | "no") => false,
            Some(v) => return Err(invalid("HISTORY", format!("expected on or off, got {v:?}"))),
        };
        let database_path = match src.raw("DATABASE_PATH") {
            _ if !history_on => None,
            Some(p) if p.is_empty() => None,
            Some(p) => Some(PathBuf::from(p)),
            None => Some(PathBuf::from(DEFAULT_DATABASE_PATH)),
        };
        let history_retention = match src.get("HISTORY_RETENTION_DAYS") {
            None => None,
            Some(d) => match d.parse::<u32>() {
                Ok(0) => None,
                Ok(days) => Some(Duration::from_secs(u64::from(days) * 86_400)),
                Err(_) => return Err(invalid("HISTORY_RETENTION_DAYS", format!("not a number of days: {d:?}"))),
            },
        };
        if history_retention.is_some() && database_path.is_none() {
            warnings.push("HISTORY_RETENTION_DAYS needs the call history: recordings are kept forever".into());
        }
        let api_key = src.get("API_KEY");
        if api_key.is_none() && database_path.is_some() {
            warnings
                .push("API_KEY not set: /api/* (call history) answers only direct requests from this machine".into());
        }
        let config = Config {
            host: overrides.host.clone().or_else(|| src.get("HOST")).unwrap_or_else(|| "0.0.0.0".into()),
            port,
            public_url,
            twilio,
            twilio_api_base_url: url_or("TWILIO_API_BASE_URL", &src, TWILIO_DEFAULT_BASE_URL)?,
            deepgram_api_key,
            deepgram_base_url: url_or("DEEPGRAM_BASE_URL", &src, DEFAULT_DEEPGRAM_BASE_URL)?,
            groq_api_key,
            groq_base_url: url_or("GROQ_BASE_URL", &src, DEFAULT_GROQ_BASE_URL)?,
            dialout_api_key,
            playground_key: src.get("PLAYGROUND_KEY"),
            recordings_dir: src.get("RECORDINGS_DIR").map(PathBuf::from).unwrap_or_else(|| "recordings".into()),
            personas_dir: src.get("PERSONAS_DIR").map(PathBuf::from).unwrap_or_else(|| "personas".into()),
            database_path,
            history_retention,
            api_key,
            stream_token_secret: src.get("STREAM_TOKEN_SECRET"),
            drain_timeout: Duration::from_secs(drain_secs),
            insecure_skip_signature: overrides.insecure_skip_signature,
            providers,
            local_models_dir: src
                .get("LOCAL_MODELS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_LOCAL_MODELS_DIR.into()),
            max_calls,
        };
        Ok((config, warnings))
    }
}

/// `PROVIDERS=auto|cloud|local` (default auto: the cloud provider where its key is set, else the
/// local model), then `STT_PROVIDER`, `LLM_PROVIDER`, `TTS_PROVIDER` per stage. An LLM base URL
/// without a key counts as cloud: a self-hosted OpenAI-compatible server needs no key.
fn providers(src: &Sources, deepgram_key: bool, groq_key: bool) -> Result<Providers, ConfigError> {
    fn kind(name: &'static str, value: &str) -> Result<Option<ProviderKind>, ConfigError> {
        match value.to_ascii_lowercase().as_str() {
            "auto" => Ok(None),
            "cloud" => Ok(Some(ProviderKind::Cloud)),
            "local" => Ok(Some(ProviderKind::Local)),
            other => Err(invalid(name, format!("expected auto, cloud or local, got {other:?}"))),
        }
    }
    let all = match src.get("PROVIDERS") {
        Some(v) => kind("PROVIDERS", &v)?,
        None => None,
    };
    let mut forced = all.is_some();
    let mut stage = |name: &'static str, has_key: bool| -> Result<ProviderKind, ConfigError> {
        let own = match src.get(name) {
            Some(v) => kind(name, &v)?,
            None => None,
        };
        forced |= own.is_some();
        Ok(own.or(all).unwrap_or(if has_key { ProviderKind::Cloud } else { ProviderKind::Local }))
    };
    let stt = stage("STT_PROVIDER", deepgram_key)?;
    let llm = stage("LLM_PROVIDER", groq_key || src.get("GROQ_BASE_URL").is_some())?;
    let tts = stage("TTS_PROVIDER", deepgram_key)?;
    Ok(Providers { stt, llm, tts, forced })
}

fn invalid(name: &'static str, problem: String) -> ConfigError {
    ConfigError::Invalid { name, problem }
}

fn parse_url(name: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url =
        Url::parse(value.trim_end_matches('/')).map_err(|e| invalid(name, format!("{value:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https" | "ws" | "wss") || url.host_str().is_none() {
        return Err(invalid(name, format!("{value:?} must be an http(s) URL with a host")));
    }
    Ok(url)
}

fn url_or(name: &'static str, src: &Sources, default: &str) -> Result<Url, ConfigError> {
    parse_url(name, &src.get(name).unwrap_or_else(|| default.to_string()))
}

/// `PROXY_HOST` is a bare host name (the reference strips a protocol with a warning; so do we).
fn proxy_host_url(host: &str, warnings: &mut Vec<String>) -> Result<Url, ConfigError> {
    let bare = match host.split_once("://") {
        Some((_, rest)) => {
            warnings.push(format!("PROXY_HOST should be a host name without protocol; using {rest:?}"));
            rest
        }
        None => host,
    };
    parse_url("PROXY_HOST", &format!("https://{}", bare.trim_end_matches('/')))
}

fn read_toml(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File { path: path.into(), source })?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|source| ConfigError::Toml { path: path.into(), source: Box::new(source) })?;
    Ok(table
        .into_iter()
        .filter_map(|(k, v)| {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => return None,
            };
            Some((k.to_ascii_lowercase(), s))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn public_url_wins_over_proxy_host_and_cli_wins_over_env() {
        let (c, _) = Config::from_sources(
            &Overrides::default(),
            env(&[("PUBLIC_URL", "https://a.example/"), ("PROXY_HOST", "b.example")]),
        )
        .unwrap();
        assert_eq!(c.public_url.unwrap().as_str(), "https://a.example/");
        let (c, w) = Config::from_sources(&Overrides::default(), env(&[("PROXY_HOST", "https://b.example")])).unwrap();
        assert_eq!(c.public_url.unwrap().host_str(), Some("b.example"));
        assert!(w.iter().any(|w| w.contains("PROXY_HOST")));
        let o = Overrides { public_url: Some("https://cli.example".into()), port: Some(9), ..Default::default() };
        let (c, _) = Config::from_sources(&o, env(&[("PUBLIC_URL", "https://a.example"), ("PORT", "1")])).unwrap();
        assert_eq!((c.public_url.unwrap().host_str(), c.port), (Some("cli.example"), 9));
    }

    #[test]
    fn missing_credentials_warn_by_name() {
        let (c, w) = Config::from_sources(&Overrides::default(), env(&[("TWILIO_ACCOUNT_SID", "AC1")])).unwrap();
        assert!(c.twilio.is_none());
        assert!(w.iter().any(|w| w.contains("TWILIO_AUTH_TOKEN") && !w.contains("TWILIO_ACCOUNT_SID")));
        assert!(w.iter().any(|w| w.contains("DIALOUT_API_KEY")));
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        let e = Config::from_sources(&Overrides::default(), env(&[("PORT", "x")])).unwrap_err();
        assert!(e.to_string().starts_with("PORT"));
        let e = Config::from_sources(&Overrides::default(), env(&[("GROQ_BASE_URL", "ftp:nothing")])).unwrap_err();
        assert!(e.to_string().starts_with("GROQ_BASE_URL"));
    }

    #[test]
    fn history_retention_is_days_and_zero_or_unset_keeps_everything() {
        let cfg = |v: &[(&str, &str)]| Config::from_sources(&Overrides::default(), env(v));
        assert_eq!(cfg(&[]).unwrap().0.history_retention, None);
        assert_eq!(cfg(&[("HISTORY_RETENTION_DAYS", "0")]).unwrap().0.history_retention, None);
        let (c, _) = cfg(&[("HISTORY_RETENTION_DAYS", "30")]).unwrap();
        assert_eq!(c.history_retention, Some(Duration::from_secs(30 * 86_400)));
        let e = cfg(&[("HISTORY_RETENTION_DAYS", "a month")]).unwrap_err();
        assert!(e.to_string().starts_with("HISTORY_RETENTION_DAYS"), "{e}");
        let (_, w) = cfg(&[("HISTORY_RETENTION_DAYS", "7"), ("HISTORY", "off")]).unwrap();
        assert!(w.iter().any(|w| w.contains("HISTORY_RETENTION_DAYS needs the call history")), "{w:?}");
    }

    #[test]
    fn history_is_on_by_default_and_off_by_switch_or_empty_path() {
        let (c, w) = Config::from_sources(&Overrides::default(), env(&[])).unwrap();
        assert_eq!(c.database_path.as_deref(), Some(Path::new(DEFAULT_DATABASE_PATH)));
        assert!(c.api_key.is_none());
        assert!(w.iter().any(|w| w.contains("API_KEY not set")), "{w:?}");
        let (c, _) =
            Config::from_sources(&Overrides::default(), env(&[("DATABASE_PATH", "/var/lib/sb/h.db")])).unwrap();
        assert_eq!(c.database_path.as_deref(), Some(Path::new("/var/lib/sb/h.db")));
        let (c, _) = Config::from_sources(&Overrides::default(), env(&[("DATABASE_PATH", "")])).unwrap();
        assert!(c.database_path.is_none(), "an empty path turns history off");
        for off in ["off", "OFF", "false", "0"] {
            let (c, _) =
                Config::from_sources(&Overrides::default(), env(&[("HISTORY", off), ("DATABASE_PATH", "x.db")]))
                    .unwrap();
            assert!(c.database_path.is_none(), "HISTORY={off}");
        }
        let (c, w) = Config::from_sources(&Overrides::default(), env(&[("HISTORY", "on"), ("API_KEY", "k")])).unwrap();
        assert!(c.database_path.is_some());
        assert_eq!(c.api_key.as_deref(), Some("k"));
        assert!(!w.iter().any(|w| w.starts_with("API_KEY")), "{w:?}");
        let e = Config::from_sources(&Overrides::default(), env(&[("HISTORY", "maybe")])).unwrap_err();
        assert!(e.to_string().starts_with("HISTORY"), "{e}");
    }

    #[test]
    fn providers_are_cloud_where_a_key_is_set_and_local_elsewhere_unless_chosen() {
        use ProviderKind::{Cloud, Local};
        let cfg = |v: &[(&str, &str)]| Config::from_sources(&Overrides::default(), env(v));
        let (c, w) = cfg(&[]).unwrap();
        assert_eq!(
            (c.providers.stt, c.providers.llm, c.providers.tts, c.providers.forced),
            (Local, Local, Local, false)
        );
        assert_eq!(c.max_calls, None, "serve applies the local default, not the config");
        assert!(!w.iter().any(|w| w.contains("DEEPGRAM_API_KEY")), "{w:?}");
        let (c, _) = cfg(&[("DEEPGRAM_API_KEY", "d"), ("GROQ_API_KEY", "g")]).unwrap();
        assert_eq!((c.providers.stt, c.providers.llm, c.providers.tts), (Cloud, Cloud, Cloud));
        let (c, _) = cfg(&[("GROQ_BASE_URL", "http://127.0.0.1:9/v1")]).unwrap();
        assert_eq!((c.providers.stt, c.providers.llm), (Local, Cloud), "a base URL without a key is a server");
        let (c, _) = cfg(&[("DEEPGRAM_API_KEY", "d"), ("PROVIDERS", "local"), ("MAX_CALLS", "5")]).unwrap();
        assert_eq!((c.providers.stt, c.providers.tts, c.providers.forced), (Local, Local, true));
        assert_eq!(c.max_calls, Some(5));
        let (c, w) = cfg(&[("PROVIDERS", "local"), ("TTS_PROVIDER", "cloud")]).unwrap();
        assert_eq!((c.providers.stt, c.providers.tts), (Local, Cloud));
        assert!(w.iter().any(|w| w.contains("DEEPGRAM_API_KEY") && w.contains("speech synthesis")), "{w:?}");
        let e = cfg(&[("LLM_PROVIDER", "mars")]).unwrap_err();
        assert!(e.to_string().starts_with("LLM_PROVIDER"), "{e}");
        let e = cfg(&[("MAX_CALLS", "lots")]).unwrap_err();
        assert!(e.to_string().starts_with("MAX_CALLS"), "{e}");
    }

    #[test]
    fn toml_file_fills_in_below_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(&path, "public_url = \"https://file.example\"\ndialout_api_key = \"k\"\nport = 8000\n").unwrap();
        let o = Overrides { config_file: Some(path), ..Default::default() };
        let (c, _) = Config::from_sources(&o, env(&[("PORT", "7000")])).unwrap();
        assert_eq!(c.public_url.unwrap().host_str(), Some("file.example"));
        assert_eq!(c.dialout_api_key.as_deref(), Some("k"));
        assert_eq!(c.port, 7000);
    }
}
