//! One utterance from the voice (float samples at 22.05 kHz) → μ-law 8 kHz for Twilio.
//!
//! Level: Piper scales every utterance so its peak is full scale; we scale to a peak of −1 dBFS
//! (μ-law keeps no headroom) and cap the gain, so a near-silent utterance is not blown up into
//! noise. Resampling is rubato's FFT resampler with its filter delay removed
//! ([`resample_all`]), flat to ~99% of the 4 kHz band with the alias band well below −40 dB:
//! each utterance is a complete clip, so no streaming state is needed between chunks.

use crate::audio::mulaw;
use crate::audio::resample::{resample_all, ResampleError};

/// Twilio's rate.
pub(crate) const OUTPUT_HZ: u32 = 8000;
/// Peak after scaling: −1 dBFS.
const TARGET_PEAK: f32 = 0.891;
/// Most an utterance is amplified (the voice's raw peaks are around 0.5).
const MAX_GAIN: f32 = 4.0;

/// μ-law 8 kHz of `samples` at `rate_hz`.
pub(crate) fn to_mulaw_8k(samples: &[f32], rate_hz: u32) -> Result<Vec<u8>, ResampleError> {
    let peak = samples.iter().fold(0.0f32, |m, s| if s.is_finite() { m.max(s.abs()) } else { m });
    let gain = if peak > 0.0 { (TARGET_PEAK / peak).min(MAX_GAIN) } else { 1.0 };
    let scaled: Vec<f32> = samples.iter().map(|s| if s.is_finite() { s * gain } else { 0.0 }).collect();
    let resampled = resample_all(&scaled, rate_hz, OUTPUT_HZ)?;
    // The resampler's ripple can overshoot the peak a little: clamp before the cast.
    Ok(resampled.iter().map(|s| mulaw::encode((s.clamp(-1.0, 1.0) * 32767.0) as i16)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f32::consts::PI;

    fn tone(freq: f32, rate: u32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n).map(|i| amp * (2.0 * PI * freq * i as f32 / rate as f32).sin()).collect()
    }

    fn rms(codes: &[u8]) -> f64 {
        let pcm = mulaw::decode_vec(codes);
        (pcm.iter().map(|&s| (s as f64 / 32768.0).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt()
    }

    #[test]
    fn speech_band_tone_comes_out_at_8k_scaled_to_the_target_peak() {
        let out = to_mulaw_8k(&tone(440.0, 22050, 1.0, 0.5), 22050).unwrap();
        assert_eq!(out.len(), 8000);
        let pcm = mulaw::decode_vec(&out[400..7600]);
        let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap() as f32 / 32768.0;
        assert!((peak - TARGET_PEAK).abs() < 0.03, "peak {peak}");
        // Zero crossings of a 440 Hz tone: 880 per second.
        let crossings = pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count() as f32 / 0.9;
        assert!((crossings - 880.0).abs() < 10.0, "{crossings}");
    }

    #[test]
    fn content_above_4k_is_filtered_not_aliased() {
        let loud = to_mulaw_8k(&tone(1000.0, 22050, 1.0, 0.5), 22050).unwrap();
        // 6 kHz would alias to 2 kHz without the filter; mix it with a quiet tone so the gain
        // stays that of the 1 kHz case.
        let mixed: Vec<f32> =
            tone(1000.0, 22050, 1.0, 0.25).iter().zip(tone(6000.0, 22050, 1.0, 0.25)).map(|(a, b)| a + b).collect();
        let out = to_mulaw_8k(&mixed, 22050).unwrap();
        let (r_loud, r_mixed) = (rms(&loud[400..7600]), rms(&out[400..7600]));
        // What is left is the 1 kHz half: its level relative to the all-1 kHz clip.
        let ratio_db = 20.0 * (r_mixed / r_loud).log10();
        assert!(ratio_db < -4.0, "{ratio_db} dB: the 6 kHz half came through");
    }

    #[test]
    fn silence_and_garbage_samples_stay_quiet_and_finite() {
        let out = to_mulaw_8k(&[0.0; 22050], 22050).unwrap();
        assert_eq!(out.len(), 8000);
        assert!(mulaw::decode_vec(&out).iter().all(|&s| s.abs() <= 8));
        let noisy = [f32::NAN, f32::INFINITY, 0.001, -0.001].repeat(5000);
        let out = to_mulaw_8k(&noisy, 22050).unwrap();
        // Tiny input is amplified at most MAX_GAIN times.
        assert!(mulaw::decode_vec(&out).iter().all(|&s| (s as f32).abs() < 0.01 * 32768.0));
        assert!(to_mulaw_8k(&[], 22050).unwrap().is_empty());
    }
}
