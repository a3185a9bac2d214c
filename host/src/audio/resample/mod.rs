//! Sample-rate conversion with rubato's FFT resampler: streaming for the call path, one-shot for
//! offline tools.
//!
//! The streaming resampler transforms 10 ms blocks with a Blackman-windowed sinc as long as the
//! block (measured: speech band 200–3400 Hz reproduced to −90 dB, −1.3 dB at 3.6 kHz, everything
//! above the lower Nyquist rate ≥ 120 dB down). The FFT resampler delays by half a block, so the
//! group delay is 5 ms at every rate pair; [`StreamResampler::delay_samples`] reports it in output
//! samples. rubato's default window (squared Blackman–Harris) would need 20 ms blocks and 10 ms of
//! delay per stage to stay flat to 3.4 kHz.

mod segment;
mod soxr;

pub use segment::{ResamplerKind, SegmentResampler};
pub use soxr::SoxrError;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};
use thiserror::Error;

/// Errors from building or running a resampler.
#[derive(Debug, Error)]
pub enum ResampleError {
    /// The rate pair or frame length cannot be served by the streaming resampler.
    #[error("cannot resample {from_hz} Hz → {to_hz} Hz in frames of {frame_len}: {reason}")]
    Unsupported {
        /// Input rate.
        from_hz: u32,
        /// Output rate.
        to_hz: u32,
        /// Requested input frame length.
        frame_len: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A buffer passed to `process` has the wrong length.
    #[error("resampler buffer length: {what} has {got} samples, needs {needed}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length required.
        needed: usize,
    },
    /// rubato refused to build the resampler.
    #[error("building the resampler: {0}")]
    Construction(#[from] rubato::ResamplerConstructionError),
    /// rubato failed while processing.
    #[error("resampling: {0}")]
    Process(#[from] rubato::ResampleError),
    /// The system's libsoxr failed.
    #[error(transparent)]
    Soxr(#[from] SoxrError),
    /// A one-shot segment resample failed.
    #[error("resampling a segment: {0}")]
    Segment(String),
}

/// Samples per 10 ms at `rate_hz` (the streaming resampler's FFT block).
fn block_len(rate_hz: u32) -> usize {
    (rate_hz / 100) as usize
}

/// A streaming mono resampler with fixed-size input and output frames.
///
/// Filter state carries across calls, so consecutive frames join without clicks. After
/// construction `process` does not allocate.
pub struct StreamResampler {
    inner: Fft<f32>,
    from_hz: u32,
    to_hz: u32,
    input_len: usize,
    output_len: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from_hz", &self.from_hz)
            .field("to_hz", &self.to_hz)
            .field("input_len", &self.input_len)
            .field("output_len", &self.output_len)
            .finish()
    }
}

impl StreamResampler {
    /// Builds a resampler from `from_hz` to `to_hz` that takes `frame_len` input samples per call.
    ///
    /// Both rates must be different multiples of 200 Hz and `frame_len` a positive multiple of
    /// 10 ms at the input rate (e.g. 160 for 20 ms at 8 kHz).
    pub fn new(from_hz: u32, to_hz: u32, frame_len: usize) -> Result<Self, ResampleError> {
        let unsupported = |reason| ResampleError::Unsupported { from_hz, to_hz, frame_len, reason };
        // Even 10 ms blocks on both sides keep rubato's filter centred (see `resample_all`).
        if from_hz == 0 || to_hz == 0 || !from_hz.is_multiple_of(200) || !to_hz.is_multiple_of(200) {
            return Err(unsupported("rates must be positive multiples of 200 Hz"));
        }
        if from_hz == to_hz {
            return Err(unsupported("the rates are equal; use the input as is"));
        }
        let block = block_len(from_hz);
        if frame_len == 0 || !frame_len.is_multiple_of(block) {
            return Err(unsupported("frame length must be a multiple of 10 ms"));
        }
        let inner = Fft::<f32>::new_custom(
            from_hz as usize,
            to_hz as usize,
            frame_len,
            frame_len / block,
            1,
            WindowFunction::Blackman,
            FixedSync::Input,
        )?;
        let output_len = frame_len * to_hz as usize / from_hz as usize;
        if inner.fft_size_in() != block
            || inner.input_frames_next() != frame_len
            || inner.output_frames_next() != output_len
        {
            return Err(unsupported("rubato chose a different block layout"));
        }
        Ok(Self { inner, from_hz, to_hz, input_len: frame_len, output_len })
    }

    /// Input rate in Hz.
    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    /// Output rate in Hz.
    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Input samples taken by each call to [`process`](Self::process).
    pub fn input_len(&self) -> usize {
        self.input_len
    }

    /// Output samples produced by each call to [`process`](Self::process).
    pub fn output_len(&self) -> usize {
        self.output_len
    }

    /// Group delay in output samples: an input event at time t appears at t + delay.
    pub fn delay_samples(&self) -> usize {
        self.inner.output_delay()
    }

    /// Resamples exactly [`input_len`](Self::input_len) samples into the start of `output`
    /// (which must hold at least [`output_len`](Self::output_len)); returns the samples written.
    pub fn process(&mut self, input: &[f32], output: &mut [f32]) -> Result<usize, ResampleError> {
        if input.len() != self.input_len {
            return Err(length_error("input", input.len(), self.input_len));
        }
        if output.len() < self.output_len {
            return Err(length_error("output", output.len(), self.output_len));
        }
        let inp = InterleavedSlice::new(input, 1, self.input_len)
            .map_err(|_| length_error("input", input.len(), self.input_len))?;
        let mut out = InterleavedSlice::new_mut(&mut output[..self.output_len], 1, self.output_len)
            .map_err(|_| length_error("output", self.output_len, self.output_len))?;
        let (_, written) = self.inner.process_into_buffer(&inp, &mut out, None)?;
        Ok(written)
    }

    /// Forgets all history, as if newly built.
    pub fn reset(&mut self) {
        self.inner.reset();
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn length_error(what: &'static str, got: usize, needed: usize) -> ResampleError {
    ResampleError::Length { what, got, needed }
}

/// Resamples a whole clip at once, with the filter delay removed; output length is
/// ⌈len · to / from⌉. Any positive rates are accepted; equal rates return a copy.
pub fn resample_all(input: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, ResampleError> {
    if from_hz == 0 || to_hz == 0 {
        return Err(ResampleError::Unsupported {
            from_hz,
            to_hz,
            frame_len: input.len(),
            reason: "rates must be positive",
        });
    }
    if from_hz == to_hz || input.is_empty() {
        return Ok(input.to_vec());
    }
    // Offline, delay is free: long blocks give the sharpest filter (flat to ~99% of Nyquist).
    // rubato's filter is off by half a sample when either FFT block is odd (its delay is
    // rounded down), so both are kept even: an even count of minimal blocks.
    let (from, to) = (from_hz as usize, to_hz as usize);
    let min_block = from / gcd(from, to);
    let blocks = 4096usize.div_ceil(min_block).next_multiple_of(2);
    let mut r =
        Fft::<f32>::new_custom(from, to, blocks * min_block, 1, 1, WindowFunction::BlackmanHarris2, FixedSync::Input)?;
    let inp =
        InterleavedSlice::new(input, 1, input.len()).map_err(|_| length_error("input", input.len(), input.len()))?;
    let out = r.process_all(&inp, input.len(), None)?;
    Ok(out.take_data())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    const PAIRS: [(u32, u32); 6] =
        [(8000, 16000), (16000, 8000), (8000, 48000), (48000, 8000), (16000, 48000), (48000, 16000)];

    fn tone(freq: f64, rate: u32, len: usize, delay: f64) -> Vec<f64> {
        (0..len).map(|i| 0.5 * (2.0 * PI * freq * (i as f64 - delay) / f64::from(rate)).sin()).collect()
    }

    /// Streams `input` through `r` in its frame size (input is cut to whole frames).
    fn stream(r: &mut StreamResampler, input: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        let mut buf = vec![0.0; r.output_len()];
        for frame in input.chunks_exact(r.input_len()) {
            let n = r.process(frame, &mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// A 20 ms frame at the input rate.
    fn frame_20ms(rate: u32) -> usize {
        (rate / 50) as usize
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    fn to_f32(x: &[f64]) -> Vec<f32> {
        x.iter().map(|v| *v as f32).collect()
    }

    #[test]
    fn tones_in_the_speech_band_pass_at_unity_gain_without_clicks() {
        for (from, to) in PAIRS {
            for freq in [300.0, 1000.0, 3000.0] {
                let mut r = StreamResampler::new(from, to, frame_20ms(from)).unwrap();
                let out = stream(&mut r, &to_f32(&tone(freq, from, from as usize, 0.0)));
                let ideal = tone(freq, to, out.len(), r.delay_samples() as f64);
                // Skip the filter start-up; every later sample, frame joins included, must track
                // the ideal sine closely (a click would show as a large sample error).
                let skip = 2 * r.delay_samples() + r.output_len();
                let worst =
                    out[skip..].iter().zip(&ideal[skip..]).map(|(y, x)| (f64::from(*y) - x).abs()).fold(0.0, f64::max);
                assert!(worst < 2e-3, "{from}->{to} {freq} Hz: worst error {worst}");
                let gain_db = 20.0 * (rms(&out[skip..]) / (0.5 / 2f64.sqrt())).log10();
                assert!(gain_db.abs() < 0.5, "{from}->{to} {freq} Hz: {gain_db} dB");
            }
        }
    }

    #[test]
    fn tones_above_the_output_nyquist_are_removed_when_downsampling() {
        let cases = [
            (16000, 8000, [4500.0, 6000.0, 7500.0]),
            (48000, 8000, [4500.0, 9000.0, 20000.0]),
            (48000, 16000, [8500.0, 12000.0, 20000.0]),
        ];
        for (from, to, freqs) in cases {
            for freq in freqs {
                let mut r = StreamResampler::new(from, to, frame_20ms(from)).unwrap();
                let out = stream(&mut r, &to_f32(&tone(freq, from, from as usize, 0.0)));
                let level_db = 20.0 * (rms(&out[out.len() / 4..]) / (0.5 / 2f64.sqrt())).log10();
                assert!(level_db < -40.0, "{from}->{to} {freq} Hz: {level_db} dB");
            }
        }
    }

    #[test]
    fn reported_delay_matches_an_impulse() {
        for (from, to) in PAIRS {
            let mut r = StreamResampler::new(from, to, frame_20ms(from)).unwrap();
            // An impulse at an input index that maps to a whole output index, mid-frame.
            let step = from as usize / gcd(from as usize, to as usize);
            let at_in = 37 * step;
            let mut input = vec![0.0f32; frame_20ms(from) * 10];
            input[at_in] = 1.0;
            let out = stream(&mut r, &input);
            let peak = out.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).map(|(i, _)| i).unwrap();
            let at_out = at_in * to as usize / from as usize;
            assert_eq!(peak, at_out + r.delay_samples(), "{from}->{to}");
            // 5 ms at the output rate for every pair.
            assert_eq!(r.delay_samples(), (to / 200) as usize, "{from}->{to}");
        }
    }

    /// A linear chirp from 200 to 3400 Hz at `rate`.
    fn chirp(rate: u32, len: usize) -> Vec<f32> {
        let dur = len as f64 / f64::from(rate);
        (0..len)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                (0.5 * (2.0 * PI * (200.0 * t + 0.5 * (3200.0 / dur) * t * t)).sin()) as f32
            })
            .collect()
    }

    #[test]
    fn streaming_equals_one_shot_resampling() {
        for (from, to) in PAIRS {
            let input = chirp(from, from as usize);
            let whole = resample_all(&input, from, to).unwrap();
            let mut r = StreamResampler::new(from, to, frame_20ms(from)).unwrap();
            let streamed = stream(&mut r, &input);
            let d = r.delay_samples();
            // Compare away from the clip edges, where the two filters see different padding.
            let edge = (to / 20) as usize; // 50 ms
            let worst = (edge..whole.len() - edge).map(|i| (streamed[i + d] - whole[i]).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-3, "{from}->{to}: worst difference {worst}");
        }
    }

    #[test]
    fn state_carries_across_frames_of_any_allowed_size() {
        // 10 ms and 40 ms frames give the same samples as 20 ms frames.
        let input = chirp(8000, 8000);
        let mut a = StreamResampler::new(8000, 48000, 80).unwrap();
        let mut b = StreamResampler::new(8000, 48000, 320).unwrap();
        let (ya, yb) = (stream(&mut a, &input), stream(&mut b, &input));
        assert_eq!(a.delay_samples(), b.delay_samples());
        let worst = ya.iter().zip(&yb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "worst {worst}");
        // And reset returns to the initial state.
        a.reset();
        let again = stream(&mut a, &input);
        assert_eq!(again, ya);
    }

    #[test]
    fn rejects_bad_configurations_and_buffers() {
        assert!(StreamResampler::new(8000, 8000, 160).is_err());
        assert!(StreamResampler::new(0, 8000, 160).is_err());
        assert!(StreamResampler::new(8050, 16000, 160).is_err());
        assert!(StreamResampler::new(44100, 16000, 882).is_err());
        assert!(StreamResampler::new(8000, 16000, 100).is_err());
        assert!(StreamResampler::new(8000, 16000, 0).is_err());
        let mut r = StreamResampler::new(8000, 16000, 160).unwrap();
        let mut out = [0.0f32; 320];
        assert!(matches!(r.process(&[0.0; 159], &mut out), Err(ResampleError::Length { what: "input", .. })));
        assert!(matches!(r.process(&[0.0; 160], &mut out[..319]), Err(ResampleError::Length { what: "output", .. })));
        assert_eq!(r.process(&[0.0; 160], &mut out).unwrap(), 320);
        assert!(resample_all(&[0.0; 10], 0, 16000).is_err());
    }

    #[test]
    fn one_shot_handles_arbitrary_rates_with_delay_removed() {
        for from in [11025u32, 22050, 44100, 32000, 8000, 48000] {
            let n = from as usize / 2 + 7;
            let input = to_f32(&tone(1000.0, from, n, 0.0));
            let out = resample_all(&input, from, 16000).unwrap();
            let want_len = (n as u64 * 16000).div_ceil(u64::from(from)) as usize;
            assert_eq!(out.len(), want_len, "{from}");
            let ideal = tone(1000.0, 16000, out.len(), 0.0);
            let worst = (800..out.len() - 800).map(|i| (f64::from(out[i]) - ideal[i]).abs()).fold(0.0, f64::max);
            assert!(worst < 1e-3, "{from}: worst {worst}");
        }
        assert_eq!(resample_all(&[0.25, 0.5], 16000, 16000).unwrap(), [0.25, 0.5]);
    }
}
