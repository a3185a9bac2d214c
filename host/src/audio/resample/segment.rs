//! 8 → 16 kHz for a Smart Turn segment, one-shot. The reference resamples each segment with
//! `soxr.resample(x, 8000, 16000, "HQ")`; the int8 model is so sensitive that a resampler differing
//! by −78 dB moves p by up to 0.4, so this calls the system's libsoxr the same way when it can be
//! loaded (bit-identical output) and falls back to rubato otherwise.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, FixedAsync, Resampler, SincInterpolationParameters, SincInterpolationType, WindowFunction};

use super::soxr::SoxrLib;
use super::ResampleError;

/// 8 → 16 kHz for whole segments: libsoxr when present, else rubato.
pub struct SegmentResampler {
    backend: Backend,
    padded: Vec<f32>,
    out: Vec<f32>,
}

enum Backend {
    Soxr(SoxrLib),
    Rubato(Box<Async<f32>>),
}

/// Which implementation a [`SegmentResampler`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResamplerKind {
    /// libsoxr "HQ", one-shot: identical to the reference.
    Soxr,
    /// rubato: 256-tap Blackman-Harris² sinc, cutoff 0.957 × 4 kHz. soxr HQ is linear
    /// phase, flat to 3.65 kHz, −3 dB at 3.8 kHz and −130 dB from 4 kHz; this follows it
    /// to about −78 dB on speech, differing in the 3.6–4.2 kHz transition band.
    Rubato,
}

/// rubato's sinc trims one input sample (two output samples) more delay than its filter
/// has at ratio 2; a leading zero input sample puts the output back in phase.
const LEAD_IN: usize = 1;

impl SegmentResampler {
    /// libsoxr when the system has it, else rubato.
    pub fn new() -> Result<Self, ResampleError> {
        match SoxrLib::load() {
            Some(lib) => Ok(Self::with_backend(Backend::Soxr(lib))),
            None => {
                tracing::warn!(
                    "libsoxr.so.0 not found (apt-get install libsoxr0): Smart Turn uses rubato \
                     for 8 -> 16 kHz, so its probabilities differ from the reference's"
                );
                Self::rubato()
            }
        }
    }

    /// The rubato fallback, whatever the system has.
    pub fn rubato() -> Result<Self, ResampleError> {
        let params = SincInterpolationParameters {
            sinc_len: 256,
            f_cutoff: Some(0.957),
            oversampling_factor: 2, // ratio 2 only needs positions 0 and 1/2: exact
            interpolation: SincInterpolationType::Nearest,
            window: WindowFunction::BlackmanHarris2,
        };
        let inner = Async::<f32>::new_sinc(2.0, 1.0, &params, 1024, 1, FixedAsync::Input)
            .map_err(|e| ResampleError::Segment(e.to_string()))?;
        Ok(Self::with_backend(Backend::Rubato(Box::new(inner))))
    }

    fn with_backend(backend: Backend) -> Self {
        SegmentResampler { backend, padded: Vec::new(), out: Vec::new() }
    }

    pub fn kind(&self) -> ResamplerKind {
        match self.backend {
            Backend::Soxr(_) => ResamplerKind::Soxr,
            Backend::Rubato(_) => ResamplerKind::Rubato,
        }
    }

    /// Resamples a whole clip 8 → 16 kHz; the output has exactly twice the input length.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), ResampleError> {
        out.clear();
        if input.is_empty() {
            return Ok(());
        }
        let want = 2 * input.len();
        match &mut self.backend {
            Backend::Soxr(lib) => {
                out.resize(want, 0.0);
                let done = lib.process(8000.0, 16000.0, input, out)?;
                out.truncate(done);
            }
            Backend::Rubato(inner) => {
                self.padded.clear();
                self.padded.resize(LEAD_IN, 0.0);
                self.padded.extend_from_slice(input);
                let n = self.padded.len();
                inner.reset();
                let needed = inner.process_all_needed_output_len(n);
                self.out.resize(needed, 0.0);
                let size_err = |e: rubato::audioadapter_buffers::SizeError| ResampleError::Segment(e.to_string());
                let inp = InterleavedSlice::new(&self.padded, 1, n).map_err(size_err)?;
                let mut outp = InterleavedSlice::new_mut(&mut self.out, 1, needed).map_err(size_err)?;
                let (_, produced) = inner
                    .process_all_into_buffer(&inp, &mut outp, n, None)
                    .map_err(|e| ResampleError::Segment(e.to_string()))?;
                out.extend_from_slice(&self.out[..produced.min(want)]);
            }
        }
        out.resize(want, 0.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rubato_resampler_doubles_the_length_and_keeps_the_phase() {
        let mut r = SegmentResampler::rubato().unwrap();
        let mut impulse = vec![0.0f32; 2001];
        impulse[1000] = 1.0;
        let mut out = Vec::new();
        r.process(&impulse, &mut out).unwrap();
        assert_eq!(out.len(), 4002);
        // A linear-phase interpolator puts the impulse exactly on output sample 2000,
        // symmetric around it, with the input sample passed through (gain ~1 at t = 0).
        let peak = out.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(peak, 2000);
        assert!((out[2000] - 0.957).abs() < 0.01, "{}", out[2000]);
        for k in 1..100 {
            assert!((out[2000 - k] - out[2000 + k]).abs() < 1e-6, "asymmetric at {k}");
        }
        // A 1 kHz tone keeps its amplitude; nothing above 4 kHz appears.
        let tone: Vec<f32> = (0..8000).map(|n| (2.0 * std::f32::consts::PI * n as f32 / 8.0).sin() * 0.5).collect();
        r.process(&tone, &mut out).unwrap();
        let mid = &out[4000..4032];
        let peak = mid.iter().cloned().fold(0.0f32, f32::max);
        assert!((peak - 0.5).abs() < 0.01, "{peak}");
        for (n, &y) in out[2000..14000].iter().enumerate() {
            let t = (n + 2000) as f32 / 16000.0;
            let want = (2.0 * std::f32::consts::PI * 1000.0 * t).sin() * 0.5;
            assert!((y - want).abs() < 1e-3, "sample {n}: {y} vs {want}");
        }
    }

    #[test]
    fn soxr_backend_is_used_when_present_and_rubato_tracks_it() {
        let mut soxr = SegmentResampler::new().unwrap();
        if soxr.kind() != ResamplerKind::Soxr {
            panic!("libsoxr.so.0 is needed for reference parity: apt-get install libsoxr0");
        }
        let mut rubato = SegmentResampler::rubato().unwrap();
        // Voice-like: harmonics of 140 Hz up to 3.5 kHz with a slow envelope.
        let x: Vec<f32> = (0..16000)
            .map(|n| {
                let t = n as f32 / 8000.0;
                let env = (std::f32::consts::PI * t).sin().abs();
                (1..25).map(|k| (2.0 * std::f32::consts::PI * 140.0 * k as f32 * t).sin() / k as f32).sum::<f32>()
                    * 0.1
                    * env
            })
            .collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        soxr.process(&x, &mut a).unwrap();
        rubato.process(&x, &mut b).unwrap();
        assert_eq!((a.len(), b.len()), (32000, 32000));
        let err: f64 = a.iter().zip(&b).map(|(p, q)| f64::from(p - q).powi(2)).sum();
        let sig: f64 = a.iter().map(|p| f64::from(*p).powi(2)).sum();
        let db = 10.0 * (err / sig).log10();
        assert!(db < -70.0, "rubato vs soxr: {db:.1} dB");
    }
}
