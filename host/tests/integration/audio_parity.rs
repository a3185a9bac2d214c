//! Parity of the audio models with the reference (Pipecat 1.14), on the fixture clips.
//!
//! * VAD (fp32, CPU-independent): committed goldens from `tests/parity/make_goldens.sh`.
//! * Smart Turn features: committed goldens, compared tightly.
//! * Smart Turn probability (int8, CPU-dependent): the reference runs *now*, on this
//!   machine, from the venv that `tests/parity/setup_venv.sh` creates (the test runs it;
//!   it is idempotent and quick once done).
//!
//! Needs the models (`bash models/fetch.sh`, also run here) and python3 with venv + PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use switchboard::audio::analyze::{self, AnalyzeOptions};
use switchboard::audio::features::{self, WhisperFeatures, N_FEATURES};
use switchboard::audio::models::ModelPaths;
use switchboard::audio::pipeline::{InboundPipeline, PipelineEvent, PipelineParams};
use switchboard::audio::turn::{SmartTurnConfig, SmartTurnEngine, TurnParams};
use switchboard::audio::vad::{SileroVad, VadEngine, VadEngineConfig, VadEvent, VadParams, VadRate, VadWindow};

const VAD_TOLERANCE: f32 = 1e-3;
const TURN_TOLERANCE: f64 = 1e-3;
const FEATURE_TOLERANCE: f32 = 1e-5;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    crate_dir().join("tests/fixtures/audio").join(format!("{name}.wav"))
}

fn golden(file: &str) -> PathBuf {
    crate_dir().join("tests/fixtures/golden").join(file)
}

fn run_script(script: &Path) {
    let status = Command::new("bash").arg(script).status().expect("bash runs");
    assert!(status.success(), "{} failed", script.display());
}

/// Models fetched and verified (idempotent: only hashes when they are present).
fn models() -> ModelPaths {
    static ONCE: OnceLock<ModelPaths> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = crate_dir().join("../models");
        run_script(&dir.join("fetch.sh"));
        let paths = ModelPaths::in_dir(dir);
        paths.check().expect("models present after fetch.sh");
        paths
    })
    .clone()
}

/// The reference's Python, in the pinned venv.
fn reference_python() -> PathBuf {
    static ONCE: OnceLock<PathBuf> = OnceLock::new();
    ONCE.get_or_init(|| {
        run_script(&crate_dir().join("tests/parity/setup_venv.sh"));
        let venv = std::env::var_os("PARITY_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate_dir().join("../target/parity-venv"));
        venv.join("bin/python")
    })
    .clone()
}

fn run_reference(args: &[&str]) -> String {
    let script = crate_dir().join("tests/parity/reference.py");
    let out = Command::new(reference_python()).arg(script).args(args).output().expect("reference runs");
    assert!(out.status.success(), "reference {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

fn read_pcm(path: &Path) -> (u32, Vec<i16>) {
    let mut reader = hound::WavReader::open(path).expect("fixture opens");
    let rate = reader.spec().sample_rate;
    let samples = reader.samples::<i16>().map(|s| s.expect("sample")).collect();
    (rate, samples)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

/// Golden/reference lines split into windows (t, p, volume) and events (t, name).
struct Reference {
    windows: Vec<(f64, f32, Option<f64>)>,
    events: Vec<(f64, String)>,
    turns: Vec<(f64, f64, bool)>,
}

fn split(lines: &[Value]) -> Reference {
    let mut r = Reference { windows: Vec::new(), events: Vec::new(), turns: Vec::new() };
    for v in lines {
        let t = v["t"].as_f64().expect("t");
        if let Some(p) = v["vad"].as_f64() {
            r.windows.push((t, p as f32, v["volume"].as_f64()));
        } else if let Some(e) = v["event"].as_str() {
            r.events.push((t, e.to_string()));
        } else if let Some(p) = v["turn_probability"].as_f64() {
            r.turns.push((t, p, v["turn_complete"].as_bool().expect("turn_complete")));
        }
    }
    r
}

fn event_name(e: VadEvent) -> &'static str {
    match e {
        VadEvent::SpeechStart => "speech_start",
        VadEvent::SpeechStop => "speech_stop",
    }
}

/// Compares windows and events with the reference; returns the max probability error.
fn compare_vad(name: &str, ours: &[VadWindow], want: &Reference) -> f32 {
    assert_eq!(ours.len(), want.windows.len(), "{name}: window count");
    let mut max_err = 0.0f32;
    for (w, &(t, p, volume)) in ours.iter().zip(&want.windows) {
        assert!((w.t - t).abs() < 1e-9, "{name}: window time {} vs {t}", w.t);
        max_err = max_err.max((w.probability - p).abs());
        if let Some(v) = volume {
            assert!((w.volume - v).abs() < 1e-9, "{name} t={t}: volume {} vs {v}", w.volume);
        }
    }
    assert!(max_err <= VAD_TOLERANCE, "{name}: max |Δp| = {max_err}");
    let events: Vec<(f64, String)> =
        ours.iter().filter_map(|w| w.event.map(|e| (w.t, event_name(e).to_string()))).collect();
    assert_eq!(events.len(), want.events.len(), "{name}: events {events:?} vs {:?}", want.events);
    for (a, b) in events.iter().zip(&want.events) {
        assert!(a.1 == b.1 && (a.0 - b.0).abs() < 1e-9, "{name}: event {a:?} vs {b:?}");
    }
    max_err
}

const CLIPS: [&str; 6] = ["clean", "noisy", "question", "unfinished", "silence", "dialog"];

#[test]
fn vad_matches_reference_goldens_at_8k_and_16k() {
    let paths = models();
    for clip in CLIPS {
        for rate in ["8k", "16k"] {
            let name = format!("{clip}_{rate}");
            let (hz, pcm) = read_pcm(&fixture(&name));
            let want =
                split(&json_lines(&std::fs::read_to_string(golden(&format!("{name}.vad.jsonl"))).expect("golden")));
            let rate = VadRate::from_hz(hz).expect("8 or 16 kHz fixture");
            let mut vad = SileroVad::open(&paths, rate, VadParams::default()).expect("vad");
            let ours: Vec<VadWindow> =
                pcm.chunks(hz as usize / 50).filter_map(|frame| vad.push_frame(frame).expect("window")).collect();
            let err = compare_vad(&name, &ours, &want);
            eprintln!("{name}: {} windows, max |Δp| {err:.2e}", ours.len());
        }
    }
}

#[test]
fn vad_with_the_seed_stop_secs_matches_reference() {
    let (_, pcm) = read_pcm(&fixture("dialog_8k"));
    let want = split(&json_lines(&std::fs::read_to_string(golden("dialog_8k.seed.vad.jsonl")).expect("golden")));
    let mut vad = SileroVad::open(&models(), VadRate::Hz8000, VadParams::reference_seed()).unwrap();
    let ours: Vec<VadWindow> = pcm.chunks(160).filter_map(|frame| vad.push_frame(frame).unwrap()).collect();
    compare_vad("dialog_8k seed", &ours, &want);
}

#[test]
fn batched_vad_engine_matches_reference_goldens() {
    // Every 8 kHz clip as a concurrent "call" on one shared session.
    let engine = VadEngine::start(&models(), VadEngineConfig::default()).expect("engine");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for clip in CLIPS {
            let name = format!("{clip}_8k");
            let (_, pcm) = read_pcm(&fixture(&name));
            let mut stream = engine.stream(VadRate::Hz8000, VadParams::default());
            tasks.push(tokio::spawn(async move {
                let mut windows = Vec::new();
                for frame in pcm.chunks(160) {
                    if let Some(w) = stream.push_frame(frame).await.expect("window") {
                        windows.push(w);
                    }
                }
                (name, windows)
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.expect("task"));
        }
        out
    });
    for (name, windows) in results {
        let want = split(&json_lines(&std::fs::read_to_string(golden(&format!("{name}.vad.jsonl"))).expect("golden")));
        compare_vad(&format!("{name} (batched)"), &windows, &want);
    }
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("golden features")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn smart_turn_features_match_reference_goldens() {
    let mut fe = WhisperFeatures::new();
    let mut window = Vec::new();
    let mut out = vec![0.0f32; N_FEATURES];
    for name in ["clean_16k", "dialog_16k", "silence_16k"] {
        let (_, pcm) = read_pcm(&fixture(name));
        let audio: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32768.0).collect();
        features::fit_to_window(&audio, &mut window);
        fe.compute(&window, &mut out).expect("features");
        let want = read_f32(&golden(&format!("{name}.features.f32")));
        assert_eq!(want.len(), N_FEATURES);
        let max_err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: features max |Δ| {max_err:.2e}");
        assert!(max_err <= FEATURE_TOLERANCE, "{name}: features max |Δ| {max_err}");
    }
}

/// The whole offline path (`analyze --json --no-denoise`) against the reference run now:
/// VAD windows and events, the turn fallback, and the Smart Turn probability at each stop.
#[test]
fn analyze_matches_reference_including_smart_turn() {
    let opts = AnalyzeOptions { denoise: false, json: true, models: models(), ..AnalyzeOptions::default() };
    let mut worst_turn = 0.0f64;
    let mut turns = 0;
    for clip in CLIPS {
        for rate in ["8k", "16k"] {
            let name = format!("{clip}_{rate}");
            let path = fixture(&name);
            let want = split(&json_lines(&run_reference(&["analyze", path.to_str().unwrap()])));
            let mut out = Vec::new();
            analyze::run(&path, &opts, &mut out).expect("analyze");
            let ours = split(&json_lines(std::str::from_utf8(&out).unwrap()));
            assert_eq!(ours.windows.len(), want.windows.len(), "{name}: windows");
            for (a, b) in ours.windows.iter().zip(&want.windows) {
                assert!((a.0 - b.0).abs() < 1e-9 && (a.1 - b.1).abs() <= VAD_TOLERANCE, "{name}: {a:?} vs {b:?}");
            }
            assert_eq!(ours.events, want.events, "{name}: events");
            assert_eq!(ours.turns.len(), want.turns.len(), "{name}: turns");
            for (a, b) in ours.turns.iter().zip(&want.turns) {
                let err = (a.1 - b.1).abs();
                eprintln!("{name} turn at {:.3}s: ours {:.6} reference {:.6} |Δ| {err:.2e}", a.0, a.1, b.1);
                worst_turn = worst_turn.max(err);
                turns += 1;
                assert!((a.0 - b.0).abs() < 1e-9, "{name}: turn time {a:?} vs {b:?}");
                assert_eq!(a.2, b.2, "{name}: verdict at {:.3}s ({a:?} vs {b:?})", a.0);
            }
        }
    }
    eprintln!("{turns} turns, max |Δp| {worst_turn:.2e}");
    assert!(turns >= 10, "fixtures must exercise Smart Turn");
    assert!(worst_turn <= TURN_TOLERANCE, "Smart Turn max |Δp| {worst_turn}");
}

/// The call path: every 8 kHz clip as a concurrent call, each with an `InboundPipeline` on the
/// shared VAD and Smart Turn engines (batched inference off the reactor), must give the
/// reference's events and verdicts.
#[test]
fn call_path_turn_detectors_on_shared_engines_match_reference() {
    let paths = models();
    let vad_engine = VadEngine::start(&paths, VadEngineConfig::default()).expect("vad engine");
    let turn_engine = SmartTurnEngine::start(&paths, SmartTurnConfig::default()).expect("turn engine");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for clip in CLIPS {
            let name = format!("{clip}_8k");
            let (_, pcm) = read_pcm(&fixture(&name));
            let params = VadParams::default();
            let vad = vad_engine.stream(VadRate::Hz8000, params);
            let pipeline_params = PipelineParams { vad: params, turn: TurnParams::default(), denoise: false };
            let mut pipeline = InboundPipeline::new(vad, turn_engine.handle(), pipeline_params);
            tasks.push(tokio::spawn(async move {
                let mut lines = Vec::new();
                for frame in pcm.chunks(160) {
                    pipeline.push(frame, |_| {}).await.expect("frame");
                    let events: Vec<PipelineEvent> = pipeline.drain_events().collect();
                    for event in events {
                        match event {
                            PipelineEvent::Fallback { t } => lines.push((t, "turn_fallback".to_string(), None)),
                            PipelineEvent::SpeechStarted { t } => {
                                lines.push((t, event_name(VadEvent::SpeechStart).to_string(), None));
                            }
                            PipelineEvent::SpeechStopped { t, scoring, .. } => {
                                lines.push((t, event_name(VadEvent::SpeechStop).to_string(), None));
                                if scoring {
                                    let verdict = pipeline.verdict().await.expect("verdict");
                                    lines.push((t, "turn".to_string(), Some((verdict.probability, verdict.complete))));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                (name, lines)
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.expect("task"));
        }
        out
    });
    for (name, lines) in results {
        let path = fixture(&name);
        let want = split(&json_lines(&run_reference(&["analyze", path.to_str().unwrap()])));
        let events: Vec<(f64, String)> = lines.iter().filter(|l| l.2.is_none()).map(|l| (l.0, l.1.clone())).collect();
        assert_eq!(events, want.events, "{name}: events");
        let turns: Vec<(f64, f32, bool)> = lines.iter().filter_map(|l| l.2.map(|(p, c)| (l.0, p, c))).collect();
        assert_eq!(turns.len(), want.turns.len(), "{name}: turns");
        for (a, b) in turns.iter().zip(&want.turns) {
            assert!((f64::from(a.1) - b.1).abs() <= TURN_TOLERANCE && a.2 == b.2, "{name}: {a:?} vs {b:?}");
        }
    }
}

fn events_of(path: &Path, opts: &AnalyzeOptions) -> Vec<(f64, String)> {
    let mut out = Vec::new();
    analyze::run(path, opts, &mut out).expect("analyze");
    split(&json_lines(std::str::from_utf8(&out).unwrap())).events
}

/// Paths the reference has no mode for: a 22.05 kHz file (resampled to 16 kHz) and the
/// default denoising. Both must find the same speech as the plain 16/8 kHz analysis, to
/// within a few windows.
#[test]
fn analyze_resamples_other_rates_and_denoises() {
    let plain = AnalyzeOptions { denoise: false, json: true, models: models(), ..AnalyzeOptions::default() };
    let close = |a: &[(f64, String)], b: &[(f64, String)], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!(x.1 == y.1 && (x.0 - y.0).abs() <= 0.1, "{what}: {x:?} vs {y:?}");
        }
    };
    let reference = events_of(&fixture("question_16k"), &plain);
    assert!(reference.iter().any(|e| e.1 == "speech_start"));
    close(&events_of(&fixture("question_22k"), &plain), &reference, "22.05 kHz");
    let denoised = AnalyzeOptions { denoise: true, ..plain.clone() };
    // Denoising clean speech must not move the VAD edges (turn verdicts may change: the
    // int8 model reacts to any change of the audio).
    let speech_edges = |events: Vec<(f64, String)>| -> Vec<(f64, String)> {
        events.into_iter().filter(|e| e.1.starts_with("speech_")).collect()
    };
    for clip in ["clean_8k", "question_16k"] {
        close(
            &speech_edges(events_of(&fixture(clip), &denoised)),
            &speech_edges(events_of(&fixture(clip), &plain)),
            &format!("{clip} denoised"),
        );
    }
    // The summary names what it found.
    let mut text = Vec::new();
    let summary =
        analyze::run(&fixture("question_8k"), &AnalyzeOptions { json: false, ..denoised }, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert_eq!(summary.rate, 8000);
    assert!(text.contains("speech 1.") && text.contains("turn at"), "{text}");
}

/// `--probe-pause`: Smart Turn scored inside each pause, N quiet windows before the stop
/// decides; the turn verdicts themselves stay those of the stops.
#[test]
fn analyze_probes_pauses_without_changing_the_verdicts() {
    let plain = AnalyzeOptions { denoise: false, json: false, models: models(), ..AnalyzeOptions::default() };
    let probed = AnalyzeOptions { probe_pauses: vec![2, 5], ..plain.clone() };
    let path = fixture("dialog_8k");
    let without = analyze::run(&path, &plain, &mut Vec::new()).expect("analyze");
    let mut text = Vec::new();
    let with = analyze::run(&path, &probed, &mut text).expect("analyze with probes");
    assert!(without.probes.is_empty());
    assert_eq!(with.turns, without.turns, "probing must not change the verdicts");
    assert!(!with.turns.is_empty());
    // Every stop was preceded by a probe 2 and 5 windows into its pause: 4 and 1 windows before it.
    for (stop, _, _) in &with.turns {
        for (windows, before) in [(2, 4.0), (5, 1.0)] {
            let at = stop - before * 0.032;
            assert!(
                with.probes.iter().any(|(t, w, p)| *w == windows && (t - at).abs() < 1e-6 && (0.0..=1.0).contains(p)),
                "no {windows}-window probe at {at:.3} s before the stop at {stop:.3} s: {:?}",
                with.probes
            );
        }
    }
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("quiet windows into a pause"), "{text}");
}
