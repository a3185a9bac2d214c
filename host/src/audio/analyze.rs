//! `switchboard analyze FILE.wav [--no-denoise] [--json]`: the inbound path offline.
//!
//! Reads a mono WAV (any rate; 8–32-bit int or 32-bit float), denoises it (RNNoise, on by
//! default), runs Silero at the file's rate when it is 8 or 16 kHz (otherwise resamples to
//! 16 kHz first), and Smart Turn at every speech stop (always on 16 kHz audio), through the
//! call path's own [`InboundPipeline`]: 20 ms frames in the reference's order (turn segmenter,
//! then VAD, then the verdict).
//!
//! JSON lines (`--json`), `t` in seconds of the file:
//! * every VAD window: `{"t", "vad"}` (t = end of the 32 ms window)
//! * VAD edges: `{"t", "event": "speech_start" | "speech_stop"}`
//! * at each speech stop: `{"t", "turn_probability", "turn_complete"}`
//! * an incomplete turn ended by `stop_secs` of silence: `{"t", "event": "turn_fallback"}`
//! * with `--probe-pause N`: `{"t", "pause_windows": N, "probe_probability"}` N quiet windows
//!   into each pause

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::denoise::{DenoiseError, Denoiser};
use super::models::ModelPaths;
use super::pipeline::{InboundPipeline, PipelineError, PipelineEvent, PipelineParams};
use super::resample::{resample_all, ResampleError};
use super::turn::{SmartTurnConfig, SmartTurnEngine, SmartTurnModel, TurnError, TurnParams};
use super::vad::{VadEngine, VadEngineConfig, VadError, VadEvent, VadParams, VadRate, VadWindow};

/// Options of `switchboard analyze`.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalyzeOptions {
    /// Run RNNoise before the models (as on a call).
    pub denoise: bool,
    /// JSON lines instead of a short summary.
    pub json: bool,
    pub vad: VadParams,
    pub turn: TurnParams,
    pub models: ModelPaths,
    /// Also score the turn so far this many quiet VAD windows into each pause (before the VAD
    /// stop): how Smart Turn's verdict moves as the trailing silence grows. The turn itself
    /// is still decided at the stop.
    pub probe_pauses: Vec<u32>,
}

impl Default for AnalyzeOptions {
    fn default() -> Self {
        AnalyzeOptions {
            denoise: true,
            json: false,
            vad: VadParams::default(),
            turn: TurnParams::default(),
            models: ModelPaths::from_env(),
            probe_pauses: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("reading {path}: {source}")]
    Wav { path: PathBuf, source: hound::Error },
    #[error("{path}: {channels} channels; analyze needs a mono file")]
    NotMono { path: PathBuf, channels: u16 },
    #[error("{path}: unsupported sample format ({bits}-bit {format:?})")]
    Format { path: PathBuf, bits: u16, format: hound::SampleFormat },
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error(transparent)]
    Turn(#[from] TurnError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("denoising: {0}")]
    Denoise(#[from] DenoiseError),
    #[error("resampling to 16 kHz: {0}")]
    Resample(#[from] ResampleError),
    #[error("starting the analysis runtime: {0}")]
    Runtime(std::io::Error),
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

/// What an analysis found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnalyzeSummary {
    /// Rate the models ran at (8000 or 16000).
    pub rate: u32,
    pub seconds: f64,
    pub windows: usize,
    pub speech_windows: usize,
    /// (start, stop) of each VAD speech segment, seconds.
    pub segments: Vec<(f64, Option<f64>)>,
    /// (t, probability, complete) at each speech stop.
    pub turns: Vec<(f64, f32, bool)>,
    /// Times an incomplete turn ended by the silence fallback.
    pub fallbacks: Vec<f64>,
    /// (t, quiet windows, probability): Smart Turn scored on the turn so far, `quiet windows`
    /// into a pause (`AnalyzeOptions::probe_pauses`).
    pub probes: Vec<(f64, u32, f32)>,
}

/// Analyzes `path`, writing JSON lines or a summary to `out`.
pub fn run(path: &Path, opts: &AnalyzeOptions, out: &mut impl Write) -> Result<AnalyzeSummary, AnalyzeError> {
    let (rate, pcm) = read_wav(path)?;
    let (rate, pcm) = to_model_rate(rate, pcm)?;
    let pcm = if opts.denoise { denoise(rate, &pcm)? } else { pcm };
    let summary = analyze_pcm(rate, &pcm, opts, out)?;
    if !opts.json {
        write_summary(path, opts, &summary, out)?;
    }
    Ok(summary)
}

/// Runs VAD and Smart Turn over 8 or 16 kHz PCM (already denoised or not) through the call
/// path's [`InboundPipeline`] (denoise off: `run` denoised the whole file with its latency
/// removed, so times stay those of the file), on engines of its own.
pub fn analyze_pcm(
    rate: u32,
    pcm: &[i16],
    opts: &AnalyzeOptions,
    out: &mut impl Write,
) -> Result<AnalyzeSummary, AnalyzeError> {
    let vad_rate = VadRate::from_hz(rate).ok_or(TurnError::Rate(rate))?;
    let vad = VadEngine::start(&opts.models, VadEngineConfig::default())?;
    let smart_turn = SmartTurnEngine::start(&opts.models, SmartTurnConfig::default())?;
    let params = PipelineParams { vad: opts.vad, turn: opts.turn, denoise: false };
    let mut pipeline = InboundPipeline::new(vad.stream(vad_rate, opts.vad), smart_turn.handle(), params);
    let mut probe = SmartTurnModel::open(&opts.models, 1)?;
    let runtime = tokio::runtime::Builder::new_current_thread().build().map_err(AnalyzeError::Runtime)?;
    let mut summary = AnalyzeSummary { rate, seconds: pcm.len() as f64 / f64::from(rate), ..AnalyzeSummary::default() };
    let mut emit = |line: serde_json::Value| -> std::io::Result<()> {
        if opts.json {
            writeln!(out, "{line}")?;
        }
        Ok(())
    };
    runtime.block_on(async {
        for frame in pcm.chunks(pipeline.frame_len()) {
            pipeline.push(frame, |_| {}).await?;
            let events: Vec<PipelineEvent> = pipeline.drain_events().collect();
            for event in events {
                match event {
                    PipelineEvent::Fallback { t } => {
                        summary.fallbacks.push(t);
                        emit(json!({"t": t, "event": "turn_fallback"}))?;
                    }
                    PipelineEvent::Window(window) => {
                        record_window(&window, &mut summary);
                        emit(json!({"t": window.t, "vad": f64::from(window.probability)}))?;
                    }
                    PipelineEvent::QuietWindow { t, n } if opts.probe_pauses.contains(&n) => {
                        if let Some(segment) = pipeline.segment_so_far() {
                            let probability = probe.predict(&segment.audio, segment.rate)?;
                            summary.probes.push((t, n, probability));
                            emit(json!({"t": t, "pause_windows": n, "probe_probability": f64::from(probability)}))?;
                        }
                    }
                    PipelineEvent::SpeechStarted { t } => emit(json!({"t": t, "event": "speech_start"}))?,
                    PipelineEvent::SpeechStopped { t, scoring, .. } => {
                        emit(json!({"t": t, "event": "speech_stop"}))?;
                        if scoring {
                            let verdict = pipeline.verdict().await?;
                            summary.turns.push((t, verdict.probability, verdict.complete));
                            emit(json!({
                                "t": t,
                                "turn_probability": f64::from(verdict.probability),
                                "turn_complete": verdict.complete,
                            }))?;
                        }
                    }
                    PipelineEvent::QuietWindow { .. }
                    | PipelineEvent::PauseStarted { .. }
                    | PipelineEvent::PauseEnded { .. } => {}
                }
            }
        }
        Ok::<(), AnalyzeError>(())
    })?;
    Ok(summary)
}

fn record_window(window: &VadWindow, summary: &mut AnalyzeSummary) {
    summary.windows += 1;
    summary.speech_windows += usize::from(window.speech);
    match window.event {
        Some(VadEvent::SpeechStart) => summary.segments.push((window.t, None)),
        Some(VadEvent::SpeechStop) => {
            if let Some(last) = summary.segments.last_mut() {
                last.1 = Some(window.t);
            }
        }
        None => {}
    }
}

fn write_summary(path: &Path, opts: &AnalyzeOptions, s: &AnalyzeSummary, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: {:.2} s, models at {} Hz, denoise {}",
        path.display(),
        s.seconds,
        s.rate,
        if opts.denoise { "on" } else { "off" }
    )?;
    writeln!(out, "VAD: {} windows, {} speech ({} speech segments)", s.windows, s.speech_windows, s.segments.len())?;
    for (start, stop) in &s.segments {
        match stop {
            Some(stop) => writeln!(out, "  speech {start:.3} – {stop:.3} s")?,
            None => writeln!(out, "  speech {start:.3} s – end of file")?,
        }
    }
    for (t, windows, p) in &s.probes {
        writeln!(out, "  probe {windows} quiet windows into a pause at {t:.3} s: p = {p:.3}")?;
    }
    for (t, p, complete) in &s.turns {
        let verdict = if *complete { "complete" } else { "incomplete" };
        writeln!(out, "  turn at {t:.3} s: p = {p:.3} ({verdict})")?;
    }
    for t in &s.fallbacks {
        writeln!(out, "  turn ended by {:.1} s of silence at {t:.3} s", opts.turn.stop_secs)?;
    }
    Ok(())
}

/// Reads a mono WAV as 16-bit PCM at its own rate.
fn read_wav(path: &Path) -> Result<(u32, Vec<i16>), AnalyzeError> {
    let wav_err = |source| AnalyzeError::Wav { path: path.to_path_buf(), source };
    let mut reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    if spec.channels != 1 {
        return Err(AnalyzeError::NotMono { path: path.to_path_buf(), channels: spec.channels });
    }
    let pcm = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Int, 16) => reader.samples::<i16>().collect::<Result<_, _>>(),
        (hound::SampleFormat::Int, bits @ (8 | 24 | 32)) => {
            let shift = u32::from(bits) - 16;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| if bits == 8 { (v << 8) as i16 } else { (v >> shift) as i16 }))
                .collect()
        }
        (hound::SampleFormat::Float, 32) => reader.samples::<f32>().map(|s| s.map(float_to_pcm)).collect(),
        (format, bits) => return Err(AnalyzeError::Format { path: path.to_path_buf(), bits, format }),
    }
    .map_err(wav_err)?;
    Ok((spec.sample_rate, pcm))
}

fn float_to_pcm(x: f32) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// 8 and 16 kHz stay; any other rate goes to 16 kHz.
fn to_model_rate(rate: u32, pcm: Vec<i16>) -> Result<(u32, Vec<i16>), AnalyzeError> {
    if VadRate::from_hz(rate).is_some() {
        return Ok((rate, pcm));
    }
    let input: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32768.0).collect();
    let resampled = resample_all(&input, rate, 16_000)?;
    Ok((16_000, resampled.into_iter().map(float_to_pcm).collect()))
}

/// RNNoise over the whole clip, with its latency removed so times stay those of the file.
fn denoise(rate: u32, pcm: &[i16]) -> Result<Vec<i16>, AnalyzeError> {
    let mut denoiser = Denoiser::new(rate)?;
    let latency = denoiser.latency_samples();
    let frame = rate as usize / 100;
    let mut out = Vec::with_capacity(pcm.len() + latency + frame);
    let mut buf = vec![0i16; frame * 2];
    let tail = vec![0i16; latency + frame];
    for chunk in pcm.chunks(frame).chain(tail.chunks(frame)) {
        let n = denoiser.process(chunk, &mut buf)?;
        out.extend_from_slice(&buf[..n]);
    }
    let end = (latency + pcm.len()).min(out.len());
    Ok(out[latency.min(end)..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_wav(
        path: &Path,
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<std::io::BufWriter<std::fs::File>>),
    ) {
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        write(&mut w);
        w.finalize().unwrap();
    }

    #[test]
    fn reads_float_and_24_bit_files_as_pcm16() {
        let dir = tempfile::tempdir().unwrap();
        let float = dir.path().join("f.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        write_wav(&float, spec, |w| {
            for x in [0.0f32, 0.5, -1.0, 2.0] {
                w.write_sample(x).unwrap();
            }
        });
        assert_eq!(read_wav(&float).unwrap(), (16000, vec![0, 16384, -32768, 32767]));
        let int24 = dir.path().join("i.wav");
        let spec =
            hound::WavSpec { bits_per_sample: 24, sample_format: hound::SampleFormat::Int, sample_rate: 8000, ..spec };
        write_wav(&int24, spec, |w| {
            for x in [256i32, -8_388_608] {
                w.write_sample(x).unwrap();
            }
        });
        assert_eq!(read_wav(&int24).unwrap(), (8000, vec![1, -32768]));
    }

    #[test]
    fn stereo_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        write_wav(&path, spec, |w| {
            w.write_sample(0i16).unwrap();
            w.write_sample(0i16).unwrap();
        });
        let err = read_wav(&path).unwrap_err();
        assert!(matches!(err, AnalyzeError::NotMono { channels: 2, .. }));
        assert!(err.to_string().contains("stereo.wav"));
    }

    #[test]
    fn other_rates_go_to_16k() {
        let pcm: Vec<i16> = (0..44100).map(|n| ((n as f32 * 0.05).sin() * 8000.0) as i16).collect();
        let (rate, out) = to_model_rate(44100, pcm).unwrap();
        assert_eq!(rate, 16000);
        assert!((out.len() as i64 - 16000).abs() <= 1, "{}", out.len());
        let (rate, out) = to_model_rate(8000, vec![1, 2, 3]).unwrap();
        assert_eq!((rate, out), (8000, vec![1, 2, 3]));
    }

    #[test]
    fn denoise_keeps_length_and_alignment() {
        // A loud 200 Hz tone burst: RNNoise keeps most of it; its onset must stay in place.
        let mut pcm = vec![0i16; 8000];
        for (n, s) in pcm[4000..6000].iter_mut().enumerate() {
            *s = ((2.0 * std::f32::consts::PI * 200.0 * n as f32 / 8000.0).sin() * 12000.0) as i16;
        }
        let out = denoise(8000, &pcm).unwrap();
        assert_eq!(out.len(), pcm.len());
        let energy = |s: &[i16]| s.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>();
        assert!(energy(&out[3900..3990]) < 0.01 * energy(&out[4100..4190]));
    }
}
