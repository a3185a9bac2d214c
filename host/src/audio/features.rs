//! Smart Turn v3's front end: the Whisper log-mel spectrogram of an 8 s, 16 kHz window,
//! computed exactly as Pipecat 1.14's `_whisper_features.py` does:
//!
//! 1. zero-mean / unit-variance scaling **in float32** over all 128 000 samples (numpy's
//!    pairwise float32 sums, reproduced here bit for bit);
//! 2. reflect padding of 200 on each side, float64 from here on;
//! 3. 801 frames of 400 every 160 samples, periodic Hann window, 400-point real FFT,
//!    power spectrum;
//! 4. 80 Slaney mel filters (0–8 kHz, area-normalised), floor 1e-10, log10;
//! 5. drop the last frame, clamp below at max − 8, then (x + 4) / 4, as float32.
//!
//! The window, filters and FFT plan are built once per [`WhisperFeatures`]; computing a
//! window allocates nothing.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// Samples in the model's window: 8 s at 16 kHz.
pub const N_SAMPLES: usize = 128_000;
/// Mel bands.
pub const N_MELS: usize = 80;
/// Frames given to the model (801 computed, the last dropped).
pub const N_FRAMES: usize = 800;
/// Values in one feature matrix, `[N_MELS][N_FRAMES]` row-major.
pub const N_FEATURES: usize = N_MELS * N_FRAMES;

const N_FFT: usize = 400;
const HOP: usize = 160;
const N_BINS: usize = N_FFT / 2 + 1;
const PAD: usize = N_FFT / 2;
const SAMPLE_RATE: f64 = 16_000.0;

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("feature output needs {N_FEATURES} values, got {0}")]
    OutputSize(usize),
    #[error("the FFT failed: {0}")]
    Fft(String),
}

/// One mel filter's non-zero span over the FFT bins.
#[derive(Debug, Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// The Whisper log-mel front end with its precomputed window, filters and buffers.
pub struct WhisperFeatures {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    filters: Vec<MelFilter>,
    normalized: Vec<f32>,
    padded: Vec<f64>,
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
    /// Mel energies, then read back for the log and clamp.
    log_mel: Vec<f64>,
}

impl Default for WhisperFeatures {
    fn default() -> Self {
        Self::new()
    }
}

impl WhisperFeatures {
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        WhisperFeatures {
            fft,
            window: periodic_hann(N_FFT),
            filters: mel_filters(),
            normalized: vec![0.0; N_SAMPLES],
            padded: vec![0.0; N_SAMPLES + 2 * PAD],
            frame: vec![0.0; N_FFT],
            spectrum,
            scratch,
            power: vec![0.0; N_BINS],
            log_mel: vec![0.0; N_FEATURES],
        }
    }

    /// Computes the `[80][800]` features of `audio` (16 kHz). Like the reference, audio
    /// shorter than 8 s is zero-padded at the end and longer audio keeps its first 8 s; the
    /// turn analyzer always passes exactly [`N_SAMPLES`] (see [`fit_to_window`]).
    pub fn compute(&mut self, audio: &[f32], out: &mut [f32]) -> Result<(), FeatureError> {
        if out.len() != N_FEATURES {
            return Err(FeatureError::OutputSize(out.len()));
        }
        self.normalize(audio);
        self.reflect_pad();
        // Mel energies first (linear); log10 only where the final clamp does not decide.
        let mut max_energy = 1e-10f64;
        for f in 0..N_FRAMES {
            self.power_spectrum(f)?;
            for (m, filter) in self.filters.iter().enumerate() {
                let bins = &self.power[filter.first_bin..filter.first_bin + filter.weights.len()];
                let energy: f64 = filter.weights.iter().zip(bins).map(|(w, p)| w * p).sum();
                let energy = energy.max(1e-10);
                max_energy = max_energy.max(energy);
                self.log_mel[m * N_FRAMES + f] = energy;
            }
        }
        let floor = max_energy.log10() - 8.0;
        // Well below max·1e-8 the clamp wins for sure; near it, compare in the log domain.
        let surely_clamped = max_energy * 0.999e-8;
        let clamped = ((floor + 4.0) / 4.0) as f32;
        for (dst, &energy) in out.iter_mut().zip(&self.log_mel) {
            *dst = if energy < surely_clamped { clamped } else { ((energy.log10().max(floor) + 4.0) / 4.0) as f32 };
        }
        Ok(())
    }

    /// `(x - mean) / sqrt(var + 1e-7)` in float32 with numpy's summation order.
    fn normalize(&mut self, audio: &[f32]) {
        let n = audio.len().min(N_SAMPLES);
        self.normalized[..n].copy_from_slice(&audio[..n]);
        self.normalized[n..].fill(0.0);
        let count = N_SAMPLES as f32;
        let mean = pairwise_sum(&self.normalized) / count;
        let var_sum = pairwise_sum_map(&self.normalized, |x| {
            let d = x - mean;
            d * d
        });
        let std = (var_sum / count + 1e-7f32).sqrt();
        for x in &mut self.normalized {
            *x = (*x - mean) / std;
        }
    }

    fn reflect_pad(&mut self) {
        let x = &self.normalized;
        for (i, dst) in self.padded[PAD..PAD + N_SAMPLES].iter_mut().enumerate() {
            *dst = f64::from(x[i]);
        }
        for i in 0..PAD {
            self.padded[PAD - 1 - i] = f64::from(x[i + 1]);
            self.padded[PAD + N_SAMPLES + i] = f64::from(x[N_SAMPLES - 2 - i]);
        }
    }

    fn power_spectrum(&mut self, frame: usize) -> Result<(), FeatureError> {
        let start = frame * HOP;
        for ((dst, &x), &w) in self.frame.iter_mut().zip(&self.padded[start..start + N_FFT]).zip(&self.window) {
            *dst = x * w;
        }
        self.fft
            .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch)
            .map_err(|e| FeatureError::Fft(e.to_string()))?;
        // |X|² directly (numpy squares hypot(re, im); the two differ by an ulp of f64,
        // far below the f32 output's resolution).
        for (p, c) in self.power.iter_mut().zip(&self.spectrum) {
            *p = c.re * c.re + c.im * c.im;
        }
        Ok(())
    }
}

/// The last 8 s of `audio`, or all of it with zeros prepended (the reference's left
/// padding), as the model's window.
pub fn fit_to_window(audio: &[f32], out: &mut Vec<f32>) {
    out.clear();
    if audio.len() >= N_SAMPLES {
        out.extend_from_slice(&audio[audio.len() - N_SAMPLES..]);
    } else {
        out.resize(N_SAMPLES - audio.len(), 0.0);
        out.extend_from_slice(audio);
    }
}

/// numpy's float32 pairwise summation (`pairwise_sum` in its loops): 8 accumulators in
/// blocks of up to 128, recursive halving (rounded to multiples of 8) above that.
fn pairwise_sum(values: &[f32]) -> f32 {
    pairwise_sum_map(values, |x| x)
}

fn pairwise_sum_map(values: &[f32], f: impl Fn(f32) -> f32 + Copy) -> f32 {
    let n = values.len();
    if n < 8 {
        return values.iter().fold(-0.0f32, |acc, &x| acc + f(x));
    }
    if n <= 128 {
        let mut r = [0.0f32; 8];
        for (acc, &x) in r.iter_mut().zip(values) {
            *acc = f(x);
        }
        let whole = n - n % 8;
        for block in values[8..whole].chunks_exact(8) {
            for (acc, &x) in r.iter_mut().zip(block) {
                *acc += f(x);
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &values[whole..] {
            res += f(x);
        }
        return res;
    }
    let mut half = n / 2;
    half -= half % 8;
    pairwise_sum_map(&values[..half], f) + pairwise_sum_map(&values[half..], f)
}

/// `np.hanning(n + 1)[:-1]`, computed the way numpy does (`0.5 + 0.5 cos(π k / n)` over
/// k = -n, -n+2, …).
fn periodic_hann(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let k = 2.0 * i as f64 - n as f64;
            0.5 + 0.5 * (std::f64::consts::PI * k / n as f64).cos()
        })
        .collect()
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() * (27.0 / 6.4f64.ln())
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= 15.0 {
        1000.0 * ((6.4f64.ln() / 27.0) * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// Slaney-style triangular filters with area normalisation (80 × 201), kept sparse.
fn mel_filters() -> Vec<MelFilter> {
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0));
    let points = N_MELS + 2;
    let filter_hz: Vec<f64> = (0..points).map(|i| mel_to_hz(linspace(mel_min, mel_max, points, i))).collect();
    let bin_hz: Vec<f64> = (0..N_BINS).map(|i| linspace(0.0, (SAMPLE_RATE as usize / 2) as f64, N_BINS, i)).collect();
    (0..N_MELS)
        .map(|m| {
            let (lo, mid, hi) = (filter_hz[m], filter_hz[m + 1], filter_hz[m + 2]);
            let norm = 2.0 / (hi - lo);
            let dense: Vec<f64> = bin_hz
                .iter()
                .map(|&f| {
                    let down = -(lo - f) / (mid - lo);
                    let up = (hi - f) / (hi - mid);
                    0f64.max(down.min(up)) * norm
                })
                .collect();
            let first = dense.iter().position(|&w| w != 0.0).unwrap_or(0);
            let last = dense.iter().rposition(|&w| w != 0.0).unwrap_or(0);
            MelFilter { first_bin: first, weights: dense[first..=last.max(first)].to_vec() }
        })
        .collect()
}

/// `np.linspace(start, stop, num)[i]`.
fn linspace(start: f64, stop: f64, num: usize, i: usize) -> f64 {
    if i == num - 1 {
        return stop;
    }
    let step = (stop - start) / (num - 1) as f64;
    start + i as f64 * step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_numpy_on_known_values() {
        // Values where naive left-to-right f32 summation differs from numpy's order.
        let v: Vec<f32> = (0..1000).map(|i| 0.1f32 + i as f32 * 0.37f32).collect();
        let naive = v.iter().fold(0.0f32, |a, &x| a + x);
        // numpy: np.sum(np.float32(0.1) + np.arange(1000, dtype=np.float32) * np.float32(0.37))
        assert_eq!(pairwise_sum(&v), 184914.98f32);
        assert_eq!(naive, 184915.0f32);
        assert_eq!(pairwise_sum(&[1.0, 2.0, 3.0]), 6.0);
    }

    #[test]
    fn hann_window_is_periodic() {
        let w = periodic_hann(400);
        assert_eq!(w.len(), 400);
        assert!(w[0].abs() < 1e-15);
        assert!((w[200] - 1.0).abs() < 1e-15);
        assert!((w[100] - 0.5).abs() < 1e-12 && (w[300] - 0.5).abs() < 1e-12);
        assert!((w[1] - w[399]).abs() < 1e-15, "periodic: w[k] == w[n-k]");
    }

    #[test]
    fn mel_filters_have_unit_area_in_hz_and_cover_the_band() {
        let filters = mel_filters();
        assert_eq!(filters.len(), N_MELS);
        for (m, f) in filters.iter().enumerate() {
            // Slaney normalisation: each triangle's area over Hz is 1 (40 Hz per bin).
            let area: f64 = f.weights.iter().sum::<f64>() * 40.0;
            assert!((area - 1.0).abs() < 0.35, "mel {m}: area {area}");
            assert!(f.first_bin + f.weights.len() <= N_BINS);
        }
        assert!(filters[0].first_bin <= 1);
        let last = filters.last().unwrap();
        assert!(last.first_bin + last.weights.len() >= N_BINS - 2);
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((mel_to_hz(hz_to_mel(5000.0)) - 5000.0).abs() < 1e-9);
    }

    #[test]
    fn silence_gives_the_floor_everywhere() {
        let mut fe = WhisperFeatures::new();
        let mut out = vec![0.0; N_FEATURES];
        fe.compute(&[0.0; 1000], &mut out).unwrap();
        // log10(1e-10) = -10, max - 8 = -18 never binds, (-10 + 4) / 4 = -1.5.
        assert!(out.iter().all(|&v| v == -1.5));
    }

    #[test]
    fn a_tone_lights_its_mel_band_and_the_clamp_holds() {
        let mut fe = WhisperFeatures::new();
        let audio: Vec<f32> =
            (0..N_SAMPLES).map(|n| (2.0 * std::f32::consts::PI * 1000.0 * n as f32 / 16000.0).sin() * 0.3).collect();
        let mut out = vec![0.0; N_FEATURES];
        fe.compute(&audio, &mut out).unwrap();
        let band_mean = |m: usize| out[m * N_FRAMES..(m + 1) * N_FRAMES].iter().sum::<f32>() / N_FRAMES as f32;
        let loudest = (0..N_MELS).max_by(|&a, &b| band_mean(a).total_cmp(&band_mean(b))).unwrap();
        let centre = mel_to_hz(linspace(hz_to_mel(0.0), hz_to_mel(8000.0), N_MELS + 2, loudest + 1));
        assert!((centre - 1000.0).abs() < 80.0, "loudest band at {centre} Hz");
        let max = out.iter().cloned().fold(f32::MIN, f32::max);
        let min = out.iter().cloned().fold(f32::MAX, f32::min);
        assert!((max - min - 2.0).abs() < 1e-5, "dynamic range clamps to 8 decades / 4");
    }

    #[test]
    fn fit_to_window_keeps_the_end_or_pads_the_front() {
        let mut out = Vec::new();
        fit_to_window(&[1.0, 2.0], &mut out);
        assert_eq!(out.len(), N_SAMPLES);
        assert_eq!(&out[N_SAMPLES - 2..], &[1.0, 2.0]);
        assert!(out[..N_SAMPLES - 2].iter().all(|&v| v == 0.0));
        let long: Vec<f32> = (0..N_SAMPLES + 5).map(|i| i as f32).collect();
        fit_to_window(&long, &mut out);
        assert_eq!(out[0], 5.0);
        assert_eq!(out[N_SAMPLES - 1], (N_SAMPLES + 4) as f32);
    }

    #[test]
    fn wrong_output_size_is_an_error() {
        let mut fe = WhisperFeatures::new();
        assert!(matches!(fe.compute(&[0.0; 10], &mut [0.0; 10]), Err(FeatureError::OutputSize(10))));
    }
}
