//! The command line: `serve`, `dial`, and the tools around them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audio::models::ModelPaths;
use crate::call::SessionFactory;
use crate::compose;
use crate::config::{Config, Overrides, ProviderKind, LOCAL_MAX_CALLS};
use crate::engine::echo::EchoDiagnostic;
use crate::http::{self, AppState};
use crate::metrics::Metrics;

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "Native voice host for AI phone agents on Twilio")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Answer and place calls: Twilio webhooks, /dialout, /twiml and the media WebSocket.
    Serve(ServeArgs),
    /// Place an outbound call through a running server's /dialout.
    Dial(DialArgs),
    /// Act as Twilio: place simulated calls against a server (also the load generator).
    Simulate(Box<crate::sim::SimulateArgs>),
    /// Run the inbound audio path (denoise, Silero VAD, Smart Turn) over a WAV file offline.
    Analyze(AnalyzeArgs),
    /// Persona plugins: check a component, scaffold a new persona crate.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate a persona component against the WIT world and show what it does for sample calls.
    Check {
        /// The `.wasm` component.
        file: PathBuf,
    },
    /// Scaffold a persona crate that builds with `plugins/build.sh`.
    New {
        /// Crate name, e.g. `front-desk`.
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path to the persona SDK crate (default: plugins/sdk of this source tree).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// A mono WAV file, any sample rate.
    #[arg(required_unless_present = "turns", conflicts_with = "turns")]
    pub file: Option<PathBuf>,
    /// Score the call path's end-of-turn decisions on a folder of labelled 8 kHz recordings
    /// (host/tests/fixtures/speech): cut-offs, late and missed turn ends, decision latency.
    #[arg(long, value_name = "DIR")]
    pub turns: Option<PathBuf>,
    /// The labels of `--turns` (default: DIR/labels.json).
    #[arg(long, value_name = "FILE", requires = "turns")]
    pub labels: Option<PathBuf>,
    /// With --turns: Finalize → final transcript on the virtual clock, ms.
    #[arg(long, value_name = "MS", default_value_t = 150, requires = "turns")]
    pub stt_latency_ms: u64,
    /// With --turns: files played at once (at most 2).
    #[arg(long, value_name = "N", default_value_t = 2, requires = "turns",
          value_parser = clap::value_parser!(u32).range(1..=2))]
    pub threads: u32,
    /// Skip RNNoise.
    #[arg(long)]
    pub no_denoise: bool,
    /// JSON lines: one per VAD window, VAD events, and the Smart Turn verdict at each stop.
    /// With --turns: the report as JSON, with every gap's decision and the trace behind it.
    #[arg(long)]
    pub json: bool,
    /// Use the reference bots' values (VAD stop 0.5 s, Smart Turn pre-speech 0 ms).
    #[arg(long)]
    pub reference_seed: bool,
    /// With --turns: Smart Turn's verdict alone and the fixed silence fallback, without the
    /// words and the adaptive fallback calls use, for before/after comparisons.
    #[arg(long)]
    pub verdict_only: bool,
    /// Also run Smart Turn N quiet VAD windows (32 ms each) into every pause, before the VAD
    /// stop, to see how its verdict moves with trailing silence. Repeatable. N must be below
    /// the stop window (6 windows by default, 16 with --reference-seed) to probe anything.
    #[arg(long = "probe-pause", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub probe_pauses: Vec<u32>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST")]
    pub host: Option<String>,
    /// Port to listen on (default 7860).
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    /// Public base URL Twilio reaches this server at (wins over PUBLIC_URL / PROXY_HOST).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Optional configuration file (default: ./switchboard.toml if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Accept unsigned webhooks and streams without a token. Local experiments only.
    #[arg(long)]
    pub insecure_skip_signature: bool,
    /// Run a diagnostic session instead of the voice agent.
    #[arg(long, value_enum)]
    pub diagnostic: Option<Diagnostic>,
    /// Seconds calls in progress may take to finish after SIGTERM.
    #[arg(long)]
    pub drain_timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Diagnostic {
    /// Play a tone, then repeat back what the caller says after each pause.
    Echo,
}

#[derive(Debug, Args)]
pub struct DialArgs {
    /// Number to call (E.164).
    #[arg(long, env = "TO_NUMBER")]
    pub to: String,
    /// Your Twilio number to call from (E.164).
    #[arg(long, env = "FROM_NUMBER")]
    pub from: String,
    /// The Switchboard server.
    #[arg(long, env = "SWITCHBOARD_SERVER", default_value = "http://localhost:7860")]
    pub server: String,
    /// Persona to use for the call.
    #[arg(long)]
    pub persona: Option<String>,
    /// Custom parameter for the persona, NAME=VALUE (repeatable).
    #[arg(long = "param", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// API key for /dialout.
    #[arg(long, env = "DIALOUT_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Dial(args) => {
            println!("{}", dial(args).await?);
            Ok(())
        }
        Command::Analyze(args) if args.turns.is_some() => {
            // Blocking work (model loads, inference on worker threads) off the async runtime.
            tokio::task::spawn_blocking(move || analyze_turns(args)).await.context("turn analysis")?
        }
        // `analyze FILE` runs its own runtime: it must not start inside this one.
        Command::Analyze(args) => tokio::task::spawn_blocking(move || analyze(args)).await.context("analyze")?,
        Command::Plugin(cmd) => plugin(cmd).await,
        Command::Simulate(args) => {
            let summary = crate::sim::run(*args).await?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        public_url: args.public_url,
        config_file: args.config,
        insecure_skip_signature: args.insecure_skip_signature,
        drain_timeout_secs: args.drain_timeout,
    };
    let (mut config, warnings) = Config::load(&overrides).context("configuration")?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if config.insecure_skip_signature {
        tracing::warn!("INSECURE: --insecure-skip-signature accepts unsigned webhooks and token-less streams; never use this in production");
    }
    let metrics = Arc::new(Metrics::new());
    let sessions: Arc<dyn SessionFactory> = match args.diagnostic {
        Some(Diagnostic::Echo) => Arc::new(EchoDiagnostic),
        None => {
            let models = ModelPaths::from_env();
            let personas = compose::personas(&config, metrics.clone()).await?;
            let composed = compose::conversation(&config, &models, personas, metrics.clone())?;
            config.providers = composed.providers;
            if config.max_calls.is_none() && config.providers.llm == ProviderKind::Local {
                config.max_calls = Some(LOCAL_MAX_CALLS);
                tracing::info!(max_calls = LOCAL_MAX_CALLS, "the LLM runs on this machine: taking at most {LOCAL_MAX_CALLS} calls at once (set MAX_CALLS to change)");
            }
            Arc::new(composed.conversation)
        }
    };
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, public_url = ?config.public_url.as_ref().map(|u| u.as_str()), "switchboard listening");
    let port = listener.local_addr().map_or(config.port, |a| a.port());
    // One line a new user can act on, whatever the log level.
    println!(
        "Switchboard is ready: open http://localhost:{port}/playground and press Call ({})",
        http::playground::describe_providers(&config.providers).join(", ")
    );
    let history = {
        let (config, metrics) = (config.clone(), metrics.clone());
        tokio::task::spawn_blocking(move || crate::history::open_for_server(&config, metrics))
            .await
            .context("opening the call history")?
    };
    let mut state = AppState::new(config, sessions, metrics)?;
    if let Some(h) = &history {
        state = state.with_history(h);
    }
    let served = http::serve(listener, state, shutdown_signal()).await;
    if let Some(h) = history {
        // Write what the last calls reported before exiting.
        let _ = tokio::task::spawn_blocking(move || h.close()).await;
    }
    served
}

async fn plugin(cmd: PluginCommand) -> anyhow::Result<()> {
    use crate::persona::tools;
    match cmd {
        PluginCommand::Check { file } => {
            let report = tools::check(&file).await.with_context(|| format!("checking {}", file.display()))?;
            println!("{report}");
        }
        PluginCommand::New { name, dir, sdk } => {
            let sdk =
                sdk.or_else(tools::default_sdk_dir).context("no persona SDK found: pass --sdk path/to/plugins/sdk")?;
            let path = tools::new_plugin(&name, &dir, &sdk)?;
            println!("created {}; build it with plugins/build.sh {}", path.display(), path.display());
        }
    }
    Ok(())
}

fn analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    use crate::audio::analyze::{run, AnalyzeOptions};
    use crate::audio::turn::TurnParams;
    use crate::audio::vad::VadParams;
    let mut opts = AnalyzeOptions {
        denoise: !args.no_denoise,
        json: args.json,
        models: ModelPaths::from_env(),
        probe_pauses: args.probe_pauses,
        ..Default::default()
    };
    if args.reference_seed {
        opts.vad = VadParams::reference_seed();
        opts.turn = TurnParams::reference_seed();
    }
    let file = args.file.context("a WAV file to analyse, or --turns DIR")?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    run(&file, &opts, &mut out).with_context(|| format!("analysing {}", file.display()))?;
    std::io::Write::flush(&mut out)?;
    Ok(())
}

fn analyze_turns(args: AnalyzeArgs) -> anyhow::Result<()> {
    use crate::engine::turn_analysis::{driver::DriverOptions, run, TurnAnalysis};
    use crate::services::stt::local::LocalSttConfig;
    let dir = args.turns.context("--turns DIR")?;
    let mut driver =
        DriverOptions { stt_latency: std::time::Duration::from_millis(args.stt_latency_ms), ..Default::default() };
    driver.turn_taking.denoise = !args.no_denoise;
    if args.verdict_only {
        driver.turn_taking.endpoint = None;
    }
    if args.reference_seed {
        driver.turn_taking.vad = crate::audio::vad::VadParams::reference_seed();
        driver.turn_taking.turn = crate::audio::turn::TurnParams::reference_seed();
    }
    let opts = TurnAnalysis {
        labels: args.labels.unwrap_or_else(|| dir.join("labels.json")),
        dir,
        models: ModelPaths::from_env(),
        stt: LocalSttConfig::from_env(),
        driver,
        threads: args.threads as usize,
    };
    let report = run(&opts).with_context(|| format!("analysing the turns in {}", opts.dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Posts to the server's `/dialout` and returns its JSON answer.
pub async fn dial(args: DialArgs) -> anyhow::Result<String> {
    let url = format!("{}/dialout", args.server.trim_end_matches('/'));
    let params: std::collections::BTreeMap<_, _> = args.params.into_iter().collect();
    let body = serde_json::json!({
        "to_number": args.to, "from_number": args.from, "persona": args.persona, "parameters": params,
    });
    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth(&args.api_key)
        .json(&body)
        .timeout(std::time::Duration::from_secs(15))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("dial-out failed ({status}): {text}");
    }
    Ok(text)
}
