//! The simulated caller's voice: a WAV file turned once into 20 ms μ-law frames (base64 payloads
//! ready for the wire) that every simulated call shares, plus where the caller's utterances end.
//!
//! SpeechSpan ends come from the audio itself, by a simple energy rule on the 20 ms frames
//! (see [`Segmentation`]); they are what per-turn response latency is measured from.

use std::path::Path;

use base64::Engine as _;

use crate::audio::mulaw;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Length of one frame.
pub const FRAME_MS: u64 = 20;
/// The only rate Twilio streams at.
pub const SAMPLE_RATE: u32 = 8000;
/// Longest caller file accepted (one hour): keeps memory bounded.
const MAX_SECONDS: u64 = 3600;

/// Why caller audio could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CallerAudioError {
    #[error("cannot read WAV {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("WAV {path} is unusable: {reason}")]
    Format { path: String, reason: String },
    #[error("resampling {from} Hz to 8 kHz failed: {reason}")]
    Resample { from: u32, reason: String },
}

/// The energy rule that finds utterance ends in the caller audio.
///
/// A frame is *voiced* when its RMS level is at least `max(floor_dbfs, loudest frame −
/// below_peak_db)`. Voiced runs separated by less than `min_silence_ms` of unvoiced frames belong
/// to one utterance; utterances with less than `min_speech_ms` of voiced frames are ignored
/// (clicks). An utterance ends at the end of its last voiced frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segmentation {
    pub min_silence_ms: u64,
    pub min_speech_ms: u64,
    pub floor_dbfs: f64,
    pub below_peak_db: f64,
}

impl Default for Segmentation {
    fn default() -> Self {
        Self { min_silence_ms: 400, min_speech_ms: 100, floor_dbfs: -45.0, below_peak_db: 30.0 }
    }
}

/// One caller utterance, in call time (ms since the stream started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpeechSpan {
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Caller audio prepared for streaming; build once, share (`Arc`) across calls.
#[derive(Debug)]
pub struct CallerAudio {
    /// What the server decodes (the μ-law round trip of the input), 8 kHz, whole frames.
    pcm: Vec<i16>,
    /// Base64 μ-law payload of each frame.
    payloads: Vec<String>,
    silence_payload: String,
    utterances: Vec<SpeechSpan>,
}

static SILENCE_PCM: [i16; FRAME_SAMPLES] = [0; FRAME_SAMPLES];

impl CallerAudio {
    /// Loads any PCM or float WAV; several channels are mixed down, other rates resampled to 8 kHz.
    pub fn from_wav_file(path: &Path, seg: &Segmentation) -> Result<Self, CallerAudioError> {
        let shown = path.display().to_string();
        let reader = hound::WavReader::open(path)
            .map_err(|e| CallerAudioError::Read { path: shown.clone(), reason: e.to_string() })?;
        let spec = reader.spec();
        let fmt = |reason: String| CallerAudioError::Format { path: shown.clone(), reason };
        if spec.channels == 0 || spec.sample_rate == 0 {
            return Err(fmt("zero channels or zero sample rate".into()));
        }
        let frames = u64::from(reader.duration());
        if frames > MAX_SECONDS * u64::from(spec.sample_rate) {
            return Err(fmt(format!("longer than {MAX_SECONDS} s")));
        }
        let mono = read_mono_f32(reader).map_err(fmt)?;
        Self::from_f32(&mono, spec.sample_rate, seg)
    }

    /// Builds caller audio from 16-bit samples at any rate (tests use this).
    pub fn from_pcm(samples: &[i16], sample_rate: u32, seg: &Segmentation) -> Result<Self, CallerAudioError> {
        let as_f32: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
        Self::from_f32(&as_f32, sample_rate, seg)
    }

    fn from_f32(mono: &[f32], sample_rate: u32, seg: &Segmentation) -> Result<Self, CallerAudioError> {
        let at_8k = if sample_rate == SAMPLE_RATE { mono.to_vec() } else { resample_to_8k(mono, sample_rate)? };
        let mut linear: Vec<i16> =
            at_8k.iter().map(|&x| (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16).collect();
        let whole = linear.len().div_ceil(FRAME_SAMPLES) * FRAME_SAMPLES;
        linear.resize(whole, 0);
        let utterances = segment(&linear, seg);
        let codes = mulaw::encode_vec(&linear);
        let pcm = mulaw::decode_vec(&codes);
        let b64 = base64::engine::general_purpose::STANDARD;
        let payloads = codes.chunks(FRAME_SAMPLES).map(|c| b64.encode(c)).collect();
        let silence_payload = b64.encode(mulaw::encode_vec(&SILENCE_PCM));
        Ok(Self { pcm, payloads, silence_payload, utterances })
    }

    /// Number of 20 ms frames of caller audio.
    pub fn frames(&self) -> u64 {
        self.payloads.len() as u64
    }

    pub fn duration_ms(&self) -> u64 {
        self.frames() * FRAME_MS
    }

    /// Base64 μ-law payload of frame `k`; silence past the end (the caller keeps the line open).
    pub fn payload(&self, k: u64) -> &str {
        usize::try_from(k).ok().and_then(|k| self.payloads.get(k)).map_or(&self.silence_payload, String::as_str)
    }

    /// The 8 kHz samples of frame `k` as the server decodes them; silence past the end.
    pub fn pcm_frame(&self, k: u64) -> &[i16] {
        let start = usize::try_from(k).ok().and_then(|k| k.checked_mul(FRAME_SAMPLES));
        match start {
            Some(s) if s + FRAME_SAMPLES <= self.pcm.len() => &self.pcm[s..s + FRAME_SAMPLES],
            _ => &SILENCE_PCM,
        }
    }

    /// The caller's utterances found by the segmentation rule.
    pub fn utterances(&self) -> &[SpeechSpan] {
        &self.utterances
    }
}

fn read_mono_f32<R: std::io::Read>(mut reader: hound::WavReader<R>) -> Result<Vec<f32>, String> {
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(format!("{}-bit float samples are not supported", spec.bits_per_sample));
            }
            reader.samples::<f32>().collect::<Result<_, _>>().map_err(|e| e.to_string())?
        }
        hound::SampleFormat::Int => {
            if !(1..=32).contains(&spec.bits_per_sample) {
                return Err(format!("{}-bit samples are not supported", spec.bits_per_sample));
            }
            let scale = 2f32.powi(i32::from(spec.bits_per_sample) - 1);
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?
        }
    };
    if channels == 1 {
        return Ok(interleaved);
    }
    Ok(interleaved.chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32).collect())
}

fn resample_to_8k(mono: &[f32], from: u32) -> Result<Vec<f32>, CallerAudioError> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::{Fft, FixedSync, Resampler};
    let err = |reason: String| CallerAudioError::Resample { from, reason };
    if mono.is_empty() {
        return Ok(Vec::new());
    }
    let mut resampler = Fft::<f32>::new(from as usize, SAMPLE_RATE as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| err(e.to_string()))?;
    let input = InterleavedSlice::new(mono, 1, mono.len()).map_err(|e| err(e.to_string()))?;
    let out = resampler.process_all(&input, mono.len(), None).map_err(|e| err(e.to_string()))?;
    Ok(out.take_data())
}

/// Finds utterances by the rule documented on [`Segmentation`].
fn segment(pcm: &[i16], seg: &Segmentation) -> Vec<SpeechSpan> {
    let levels: Vec<f64> = pcm.chunks(FRAME_SAMPLES).map(frame_dbfs).collect();
    let Some(loudest) = levels.iter().copied().reduce(f64::max) else { return Vec::new() };
    let threshold = seg.floor_dbfs.max(loudest - seg.below_peak_db);
    let min_gap = seg.min_silence_ms.div_ceil(FRAME_MS).max(1);
    let min_voiced = seg.min_speech_ms.div_ceil(FRAME_MS).max(1);
    let mut out = Vec::new();
    // (first voiced frame, last voiced frame, voiced frame count) of the utterance being built.
    let mut current: Option<(u64, u64, u64)> = None;
    for (k, &level) in (0u64..).zip(&levels) {
        if level < threshold {
            continue;
        }
        current = match current {
            Some((first, last, n)) if k - last <= min_gap => Some((first, k, n + 1)),
            Some(done) => {
                push_utterance(&mut out, done, min_voiced);
                Some((k, k, 1))
            }
            None => Some((k, k, 1)),
        };
    }
    if let Some(done) = current {
        push_utterance(&mut out, done, min_voiced);
    }
    out
}

fn push_utterance(out: &mut Vec<SpeechSpan>, (first, last, voiced): (u64, u64, u64), min_voiced: u64) {
    if voiced >= min_voiced {
        out.push(SpeechSpan { start_ms: first * FRAME_MS, end_ms: (last + 1) * FRAME_MS });
    }
}

fn frame_dbfs(frame: &[i16]) -> f64 {
    let energy: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / frame.len().max(1) as f64;
    if energy <= 0.0 {
        return -120.0;
    }
    10.0 * (energy / (32768.0 * 32768.0)).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: u64, amplitude: f64, rate: u32) -> Vec<i16> {
        let n = (ms * u64::from(rate) / 1000) as usize;
        (0..n)
            .map(|i| (amplitude * (i as f64 * 440.0 * std::f64::consts::TAU / f64::from(rate)).sin()) as i16)
            .collect()
    }

    fn silence(ms: u64, rate: u32) -> Vec<i16> {
        vec![0; (ms * u64::from(rate) / 1000) as usize]
    }

    #[test]
    fn segments_utterances_with_minimum_silence() {
        // 1 s speech, 200 ms pause (same utterance), 500 ms speech, 1 s pause, 300 ms speech, 60 ms click.
        let mut pcm = silence(200, 8000);
        pcm.extend(tone(1000, 8000.0, 8000));
        pcm.extend(silence(200, 8000));
        pcm.extend(tone(500, 8000.0, 8000));
        pcm.extend(silence(1000, 8000));
        pcm.extend(tone(300, 8000.0, 8000));
        pcm.extend(silence(1000, 8000));
        pcm.extend(tone(60, 8000.0, 8000));
        pcm.extend(silence(500, 8000));
        let audio = CallerAudio::from_pcm(&pcm, 8000, &Segmentation::default()).unwrap();
        assert_eq!(
            audio.utterances(),
            &[SpeechSpan { start_ms: 200, end_ms: 1900 }, SpeechSpan { start_ms: 2900, end_ms: 3200 }]
        );
        assert_eq!(audio.duration_ms(), 4760);
    }

    #[test]
    fn quiet_background_is_not_speech() {
        let mut pcm = tone(500, 30.0, 8000); // about −60 dBFS
        pcm.extend(tone(500, 10000.0, 8000));
        pcm.extend(tone(1000, 30.0, 8000));
        let audio = CallerAudio::from_pcm(&pcm, 8000, &Segmentation::default()).unwrap();
        assert_eq!(audio.utterances(), &[SpeechSpan { start_ms: 500, end_ms: 1000 }]);
    }

    #[test]
    fn frames_are_mulaw_and_silence_follows_the_end() {
        let pcm = tone(100, 8000.0, 8000);
        let audio = CallerAudio::from_pcm(&pcm, 8000, &Segmentation::default()).unwrap();
        assert_eq!(audio.frames(), 5);
        let b64 = base64::engine::general_purpose::STANDARD;
        let codes = b64.decode(audio.payload(1)).unwrap();
        assert_eq!(codes.len(), FRAME_SAMPLES);
        assert_eq!(mulaw::decode_vec(&codes), audio.pcm_frame(1));
        assert_eq!(b64.decode(audio.payload(99)).unwrap(), vec![0xFF; FRAME_SAMPLES]);
        assert_eq!(audio.pcm_frame(5), &[0i16; FRAME_SAMPLES][..]);
    }

    #[test]
    fn resamples_other_rates_keeping_timing() {
        let mut pcm = silence(500, 16000);
        pcm.extend(tone(1000, 8000.0, 16000));
        pcm.extend(silence(1000, 16000));
        let audio = CallerAudio::from_pcm(&pcm, 16000, &Segmentation::default()).unwrap();
        assert_eq!(audio.duration_ms(), 2500);
        let u = audio.utterances();
        assert_eq!(u.len(), 1);
        assert!(u[0].start_ms.abs_diff(500) <= 20 && u[0].end_ms.abs_diff(1500) <= 20, "{u:?}");
    }

    #[test]
    fn reads_stereo_float_wav() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for s in tone(400, 16000.0, 8000) {
            w.write_sample(f32::from(s) / 32768.0).unwrap();
            w.write_sample(0.0f32).unwrap();
        }
        w.finalize().unwrap();
        let audio = CallerAudio::from_wav_file(&path, &Segmentation::default()).unwrap();
        assert_eq!(audio.frames(), 20);
        let peak = audio.pcm_frame(3).iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((7000..9000).contains(&peak), "mixed down to half level, got {peak}");
        assert!(CallerAudio::from_wav_file(&dir.path().join("missing.wav"), &Segmentation::default()).is_err());
    }
}
