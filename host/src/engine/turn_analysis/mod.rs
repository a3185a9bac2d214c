//! `switchboard analyze --turns DIR --labels FILE`: the call path's turn taking, scored on a
//! folder of labelled real recordings.
//!
//! Each file is played through the same [`Listener`](crate::engine::listener::Listener) and
//! [`InboundPipeline`](crate::audio::pipeline::InboundPipeline) a call runs, with the real
//! models, on a virtual clock ([`driver`]); its end-of-turn decisions are then placed against
//! the labelled gaps ([`report`]): cut-offs in pauses, late and missed turn ends, decisions
//! during speech, and the decision latency from the end of speech.

pub mod driver;
pub mod labels;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::audio::models::ModelPaths;
use crate::audio::turn::{SmartTurnConfig, SmartTurnEngine};
use crate::audio::vad::{VadEngine, VadEngineConfig};
use crate::services::stt::local::{LocalStt, LocalSttConfig};
use driver::{DriverOptions, Engines, RATE};
use labels::{FileLabels, Labels};
use report::{FileRun, Report};

/// Most files played at once (the machine this is tuned on has two cores).
pub const MAX_THREADS: usize = 2;

/// Where the labelled recordings and models are, and how to play them.
#[derive(Debug, Clone)]
pub struct TurnAnalysis {
    pub dir: PathBuf,
    pub labels: PathBuf,
    pub models: ModelPaths,
    pub stt: LocalSttConfig,
    pub driver: DriverOptions,
    /// Files played in parallel (1..=[`MAX_THREADS`]).
    pub threads: usize,
}

/// Checks the labels and every file first, then plays them all and scores the decisions.
/// Blocking; call it from `spawn_blocking` in async code.
pub fn run(opts: &TurnAnalysis) -> anyhow::Result<Report> {
    let started = Instant::now();
    let labels = Labels::load(&opts.labels)?;
    let mut audio = Vec::with_capacity(labels.files.len());
    for f in &labels.files {
        let path = opts.dir.join(&f.file);
        let pcm = read_call_wav(&path)?;
        check_fits(f, pcm.len(), &path)?;
        audio.push(pcm);
    }
    opts.models.check().context("the turn models (run models/fetch.sh)")?;
    let threads = opts.threads.clamp(1, MAX_THREADS).min(labels.files.len());
    let stt = LocalStt::open(LocalSttConfig { workers: threads, ..opts.stt.clone() }).with_context(|| {
        format!("loading the local STT from {} (run models/fetch-stt.sh)", opts.stt.model_dir.display())
    })?;

    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<anyhow::Result<FileRun>>>> =
        Mutex::new((0..labels.files.len()).map(|_| None).collect());
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    // Engines per worker, as each call shares them in the host: no queueing
                    // behind the other file's inference.
                    let vad =
                        VadEngine::start(&opts.models, VadEngineConfig::default()).context("starting Silero VAD")?;
                    let smart_turn = SmartTurnEngine::start(&opts.models, SmartTurnConfig::default())
                        .context("starting Smart Turn")?;
                    let engines = Engines { vad: &vad, smart_turn: smart_turn.handle(), stt: &stt };
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(pcm) = audio.get(i) else { return Ok(()) };
                        let name = &labels.files[i].file;
                        let run =
                            driver::run_file(pcm, &engines, &opts.driver).with_context(|| format!("playing {name}"));
                        tracing::debug!(file = %name, ok = run.is_ok(), "played");
                        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(run);
                    }
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(r) => r?,
                Err(_) => bail!("a turn-analysis worker panicked"),
            }
        }
        Ok(())
    })?;

    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut scores = Vec::with_capacity(results.len());
    for (f, run) in labels.files.iter().zip(results) {
        let run = run.with_context(|| format!("{}: not played", f.file))??;
        scores.push(report::score_file(f, run));
    }
    let stt_ms = opts.driver.stt_latency.as_secs_f64() * 1000.0;
    Ok(Report::new(scores, stt_ms, started.elapsed().as_secs_f64()))
}

/// A recording as a call carries it: 8 kHz, 16-bit, mono.
pub fn read_call_wav(path: &Path) -> anyhow::Result<Vec<i16>> {
    let mut reader = hound::WavReader::open(path).with_context(|| format!("reading {}", path.display()))?;
    let spec = reader.spec();
    if spec.sample_rate != RATE
        || spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        bail!(
            "{}: {} Hz, {} channel(s), {}-bit {:?}; turn analysis needs 8 kHz 16-bit mono (a phone call's audio)",
            path.display(),
            spec.sample_rate,
            spec.channels,
            spec.bits_per_sample,
            spec.sample_format
        );
    }
    reader.samples::<i16>().collect::<Result<_, _>>().with_context(|| format!("reading {}", path.display()))
}

/// The labels must describe this recording: its speech ends before the file does.
fn check_fits(labels: &FileLabels, samples: usize, path: &Path) -> anyhow::Result<()> {
    let duration = samples as f64 / f64::from(RATE);
    let last = labels.speech.last().map_or(0.0, |r| r[1]);
    // Edges have 2 decimals; a region "to the end" may round up past the last sample.
    if last > duration + 0.01 {
        bail!("{}: labelled speech runs to {last:.2} s but the file lasts {duration:.2} s", path.display());
    }
    if labels.has_final_silence() && duration - last < 0.02 {
        bail!("{}: labelled with a final silence after {last:.2} s but the file ends there", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::labels::GapLabel;
    use super::report::Outcome;
    use super::*;
    use crate::audio::models::tests::repo_models;
    use crate::engine::listener::EndReason;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/speech")
    }

    /// Labels for `names` from the fixture set, written to a temp dir (the WAVs stay put).
    fn subset(names: &[&str], tmp: &tempfile::TempDir) -> PathBuf {
        let mut labels = Labels::load(&fixtures().join("labels.json")).unwrap();
        labels.files.retain(|f| names.contains(&f.file.as_str()));
        assert_eq!(labels.files.len(), names.len(), "fixture names");
        let path = tmp.path().join("labels.json");
        std::fs::write(&path, serde_json::to_string(&labels).unwrap()).unwrap();
        path
    }

    fn options(dir: PathBuf, labels: PathBuf) -> TurnAnalysis {
        TurnAnalysis {
            dir,
            labels,
            models: repo_models(),
            stt: LocalSttConfig::in_models_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")),
            driver: DriverOptions::default(),
            threads: MAX_THREADS,
        }
    }

    #[test]
    fn bad_files_are_named_before_any_model_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let labels = subset(&["c2_big_dog_8k.wav"], &tmp);
        // The labels point at a folder without the recording.
        let e = run(&options(tmp.path().into(), labels.clone())).unwrap_err();
        assert!(format!("{e:#}").contains("c2_big_dog_8k.wav"), "{e:#}");
        // A recording a phone call could not carry.
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio/clean_16k.wav"),
            tmp.path().join("c2_big_dog_8k.wav"),
        )
        .unwrap();
        let e = format!("{:#}", run(&options(tmp.path().into(), labels)).unwrap_err());
        assert!(e.contains("c2_big_dog_8k.wav: 16000 Hz") && e.contains("8 kHz 16-bit mono"), "{e}");
        let e = format!("{:#}", run(&options(fixtures(), tmp.path().join("none.json"))).unwrap_err());
        assert!(e.contains("none.json"), "{e}");
    }

    /// The driver on real recordings with the real models: every labelled gap is accounted
    /// for, and the clean files' final silences are decided (a driver that stops deciding fails).
    #[test]
    fn real_recordings_are_played_and_every_gap_is_accounted_for() {
        let names = ["c2_harvard_8k.wav", "ps_cards_005_8k.wav", "c2_big_dog_8k.wav"];
        let tmp = tempfile::tempdir().unwrap();
        let labels_path = subset(&names, &tmp);
        let labels = Labels::load(&labels_path).unwrap();
        let report = run(&options(fixtures(), labels_path)).expect("the fixtures play");

        assert_eq!(report.files.len(), names.len());
        for (f, l) in report.files.iter().zip(&labels.files) {
            assert_eq!(f.file, l.file);
            assert_eq!(f.gaps.len(), l.gaps.len(), "{}: one score per labelled gap", f.file);
            for (g, lg) in f.gaps.iter().zip(&l.gaps) {
                let allowed: &[Outcome] = match lg.label {
                    GapLabel::Pause => &[Outcome::Held, Outcome::CutOff],
                    GapLabel::TurnEnd => &[Outcome::Decided, Outcome::Late, Outcome::Missed],
                };
                assert!(allowed.contains(&g.outcome), "{} gap at {}: {:?}", f.file, g.after_s, g.outcome);
                assert_eq!(g.decision.is_some(), g.outcome != Outcome::Held && g.outcome != Outcome::Missed);
            }
            assert!(!f.stops.is_empty(), "{}: VAD stopped and Smart Turn scored", f.file);
            assert!(f.stops.iter().all(|s| s.probability.is_some_and(|p| (0.0..=1.0).contains(&p))));
        }
        let count = |label| labels.files.iter().flat_map(|f| &f.gaps).filter(|g| g.label == label).count();
        let t = &report.all;
        assert_eq!(t.pause_gaps, count(GapLabel::Pause));
        assert_eq!(t.turn_end_gaps, count(GapLabel::TurnEnd));
        assert_eq!(t.decided + t.late + t.missed, t.turn_end_gaps, "every turn_end is decided, late or missed");
        assert_eq!(t.final_turn_ends, 3);
        assert_eq!(t.missed_final, 0, "each file's last turn ends before the file does: {t:?}");
        assert!(t.decided >= 1, "Smart Turn decides some turn ends: {t:?}");
        assert!(t.latency_p50_ms.is_some_and(|ms| ms > 0.0 && ms < 2000.0), "{t:?}");

        // The decision carries the words the local STT heard.
        let dog = report.files.iter().find(|f| f.file == "c2_big_dog_8k.wav").unwrap();
        let last = dog.gaps.last().and_then(|g| g.decision.as_ref()).expect("the final silence is decided");
        assert!(last.text.to_lowercase().contains("dog"), "{last:?}");
        assert!(matches!(last.reason, EndReason::SmartTurn | EndReason::SilenceFallback), "{last:?}");
    }
}
