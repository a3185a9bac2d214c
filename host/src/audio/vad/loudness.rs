//! Loudness: BS.1770 loudness of the last 400 ms, as Pipecat's AudioVolumeTracker measures it.

use super::VadRate;

// Volume: BS.1770 loudness of the last 400 ms, as Pipecat's AudioVolumeTracker measures it.

/// K-weighting (BS.1770 pre-filter: high shelf then RLB high-pass) for `rate`, as one
/// 5-tap IIR `(b, a)`, derived from the analog prototypes by the bilinear transform with
/// prewarping `K = tan(π f0 / fs)` (the same derivation libebur128 uses).
fn k_weighting(rate: f64) -> ([f64; 5], [f64; 5]) {
    // High shelf.
    let (f0, gain_db, q) = (1681.974450955533, 3.999843853973347, 0.7071752369554196);
    let k = (std::f64::consts::PI * f0 / rate).tan();
    let vh = 10f64.powf(gain_db / 20.0);
    let vb = vh.powf(0.4996667741545416);
    let a0 = 1.0 + k / q + k * k;
    let shelf_b = [(vh + vb * k / q + k * k) / a0, 2.0 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0];
    let shelf_a = [1.0, 2.0 * (k * k - 1.0) / a0, (1.0 - k / q + k * k) / a0];
    // High-pass.
    let (f0, q) = (38.13547087602444, 0.5003270373238773);
    let k = (std::f64::consts::PI * f0 / rate).tan();
    let d = 1.0 + k / q + k * k;
    let hp_b = [1.0, -2.0, 1.0];
    let hp_a = [1.0, 2.0 * (k * k - 1.0) / d, (1.0 - k / q + k * k) / d];
    (convolve3(shelf_b, hp_b), convolve3(shelf_a, hp_a))
}

fn convolve3(x: [f64; 3], y: [f64; 3]) -> [f64; 5] {
    let mut out = [0.0; 5];
    for (i, xi) in x.iter().enumerate() {
        for (j, yj) in y.iter().enumerate() {
            out[i + j] += xi * yj;
        }
    }
    out
}

/// Loudness of one block (fresh filter state), quantised like libloudness's histogram and
/// mapped to 0..1 as Pipecat's `calculate_audio_volume` does.
fn block_volume(block: &[i16], b: &[f64; 5], a: &[f64; 5]) -> f64 {
    let mut v = [0.0f64; 5];
    let mut energy = 0.0f64;
    for &s in block {
        // Direct form II, as libebur128 filters.
        let x = f64::from(s) / 32768.0;
        v[0] = x - a[1] * v[1] - a[2] * v[2] - a[3] * v[3] - a[4] * v[4];
        let y = b[0] * v[0] + b[1] * v[1] + b[2] * v[2] + b[3] * v[3] + b[4] * v[4];
        v[4] = v[3];
        v[3] = v[2];
        v[2] = v[1];
        v[1] = v[0];
        energy += y * y;
    }
    let raw = -0.691 + 10.0 * (energy / block.len() as f64).log10();
    if raw.is_nan() || raw < -70.0 {
        return 0.0; // below the absolute gate: -inf LUFS
    }
    let lufs = -70.0 + ((raw + 70.0) * 10.0).floor() / 10.0 + 0.05;
    ((lufs + 110.0) / 100.0).clamp(0.0, 1.0)
}

/// Rolling 400 ms block plus exponential smoothing (factor 0.2).
#[derive(Debug, Clone)]
pub(super) struct VolumeMeter {
    b: [f64; 5],
    a: [f64; 5],
    block: Vec<i16>,
    block_len: usize,
    volume: f64,
    smoothed: f64,
}

impl VolumeMeter {
    pub(super) fn new(rate: VadRate) -> Self {
        let (b, a) = k_weighting(f64::from(rate.hz()));
        let block_len = rate.volume_block();
        VolumeMeter {
            b,
            a,
            block: Vec::with_capacity(block_len + rate.window()),
            block_len,
            volume: 0.0,
            smoothed: 0.0,
        }
    }

    /// Adds a window and returns the smoothed volume. Reads 0 until 400 ms have arrived.
    pub(super) fn push(&mut self, samples: &[i16]) -> f64 {
        self.block.extend_from_slice(samples);
        if self.block.len() > self.block_len {
            let excess = self.block.len() - self.block_len;
            self.block.copy_within(excess.., 0);
            self.block.truncate(self.block_len);
        }
        if self.block.len() == self.block_len {
            self.volume = block_volume(&self.block, &self.b, &self.a);
        }
        self.smoothed += 0.2 * (self.volume - self.smoothed);
        self.smoothed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_filter_derivation_reproduces_the_reference_8k_coefficients() {
        let (b, a) = k_weighting(8000.0);
        let want_b = [1.32162357, -3.36950263, 3.07226080, -1.32250798, 0.29812625];
        let want_a = [1.0, -2.23439413, 1.69821542, -0.63905783, 0.17601473];
        for (got, want) in b.iter().zip(want_b).chain(a.iter().zip(want_a)) {
            assert!((got - want).abs() < 6e-9, "{got} vs {want}");
        }
    }

    fn gain_db(rate: f64, f: f64) -> f64 {
        let (b, a) = k_weighting(rate);
        let w = 2.0 * std::f64::consts::PI * f / rate;
        let magnitude = |c: &[f64; 5]| {
            let (mut re, mut im) = (0.0, 0.0);
            for (k, ck) in c.iter().enumerate() {
                re += ck * (w * k as f64).cos();
                im -= ck * (w * k as f64).sin();
            }
            re.hypot(im)
        };
        20.0 * (magnitude(&b) / magnitude(&a)).log10()
    }

    #[test]
    fn k_filter_derivation_tracks_the_48k_design_at_16k_and_8k() {
        // At 48 kHz the derivation gives BS.1770's curve: +0.691 dB at 997 Hz (cancelled by
        // the -0.691 offset) and a +4 dB shelf. At 16 kHz the bilinear warp bends it by
        // < 0.15 dB over the band; at 8 kHz (the reference's own coefficients) by < 0.45 dB.
        assert!((gain_db(48000.0, 997.0) - 0.691).abs() < 1e-3);
        assert!((gain_db(48000.0, 7000.0) - 4.0).abs() < 0.05);
        for f in [20.0, 50.0, 100.0, 500.0, 997.0, 2000.0, 3000.0, 5000.0, 7000.0] {
            let d16 = gain_db(16000.0, f) - gain_db(48000.0, f);
            assert!(d16.abs() < 0.15, "16 kHz at {f} Hz off by {d16} dB");
            if f < 4000.0 {
                let d8 = gain_db(8000.0, f) - gain_db(48000.0, f);
                assert!(d8.abs() < 0.45, "8 kHz at {f} Hz off by {d8} dB");
            }
        }
        assert!(gain_db(16000.0, 20.0) < -13.0, "38 Hz high-pass");
    }

    #[test]
    fn volume_reads_zero_until_400ms_then_quantises_and_smooths() {
        let mut meter = VolumeMeter::new(VadRate::Hz8000);
        // A 1 kHz tone at -20 dBFS peak.
        let tone: Vec<i16> = (0..8000)
            .map(|n| (3277.0 * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 8000.0).sin()) as i16)
            .collect();
        let mut smoothed = Vec::new();
        for w in tone.chunks(256).take(20) {
            smoothed.push(meter.push(w));
        }
        assert!(smoothed[..12].iter().all(|&v| v == 0.0), "{smoothed:?}");
        assert!(smoothed[12] > 0.0);
        // Steady tone: raw volume constant, smoothing converges geometrically towards it.
        let raw = meter.volume;
        let bin = raw * 100.0 - 110.0 + 70.0 - 0.05; // LUFS back to histogram bin index / 10
        assert!((bin * 10.0 - (bin * 10.0).round()).abs() < 1e-9, "not on a 0.1 LU bin: {raw}");
        // -20 dBFS sine ≈ -23 LUFS (+0.69 K gain, -3 dB rms, -0.691) → volume ≈ 0.87.
        assert!((raw - 0.87).abs() < 0.01, "{raw}");
        let expected = raw * (1.0 - 0.8f64.powi(8));
        assert!((smoothed[19] - expected).abs() < 1e-12, "{} vs {expected}", smoothed[19]);
    }

    #[test]
    fn silence_and_quiet_blocks_are_gated_to_zero() {
        let (b, a) = k_weighting(8000.0);
        assert_eq!(block_volume(&[0; 3200], &b, &a), 0.0);
        assert_eq!(block_volume(&[3; 3200], &b, &a), 0.0); // DC, removed by the high-pass
        let faint: Vec<i16> = (0..3200).map(|n| if n % 2 == 0 { 8 } else { -8 }).collect();
        let v = block_volume(&faint, &b, &a);
        assert!(v > 0.0 && v < 0.6, "{v}");
    }
}
