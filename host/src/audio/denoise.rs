//! RNNoise noise suppression (`nnnoiseless`) for caller audio, streaming, switchable per call.
//!
//! Chain per 10 ms block: PCM16 at 8 or 16 kHz → f32 on the i16 scale → 48 kHz → one RNNoise
//! frame (480 samples) → back to the input rate → PCM16. Input of any length is accepted; a
//! remainder shorter than a block waits for the next call. The output lags the input by
//! [`Denoiser::latency_samples`] (20 ms: 5 ms per resampler, 10 ms RNNoise).
//!
//! Output conversion: truncation toward zero as in the reference (Pipecat casts float32 to int16),
//! but saturating at ±32767/−32768 where the reference's C cast wraps, because a wrapped
//! overshoot is a full-scale click. Rust's `as` does exactly this.

use nnnoiseless::DenoiseState;
use thiserror::Error;

use super::resample::{ResampleError, StreamResampler};

/// RNNoise's sample rate.
pub const RNNOISE_RATE: u32 = 48_000;
/// RNNoise's frame: 10 ms at 48 kHz.
const RNNOISE_FRAME: usize = DenoiseState::FRAME_SIZE;

/// Errors from the denoiser.
#[derive(Debug, Error)]
pub enum DenoiseError {
    /// Only 8 and 16 kHz input is supported.
    #[error("denoiser input rate {0} Hz is not supported (use 8000 or 16000)")]
    UnsupportedRate(u32),
    /// The output slice cannot hold what this call produces.
    #[error("denoiser output buffer holds {got} samples, this call produces {needed}")]
    OutputTooShort {
        /// Output capacity.
        got: usize,
        /// Samples this call writes.
        needed: usize,
    },
    /// A resampler failed.
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

/// Streaming RNNoise denoiser for one call, or a pass-through with the same API.
pub struct Denoiser {
    rate: u32,
    engine: Option<Box<Engine>>,
}

impl std::fmt::Debug for Denoiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denoiser").field("rate", &self.rate).field("enabled", &self.is_enabled()).finish()
    }
}

/// The enabled path: resamplers, RNNoise state and fixed scratch buffers.
struct Engine {
    up: StreamResampler,
    down: StreamResampler,
    rnnoise: Box<DenoiseState<'static>>,
    /// Input samples waiting for a full block (`pending_len` of them are valid).
    pending: Box<[i16]>,
    pending_len: usize,
    block_in: Box<[f32]>,
    up_out: Box<[f32]>,
    rnn_out: Box<[f32]>,
    block_out: Box<[f32]>,
}

impl Denoiser {
    /// An RNNoise denoiser for PCM16 at `input_rate` (8000 or 16000 Hz).
    pub fn new(input_rate: u32) -> Result<Self, DenoiseError> {
        check_rate(input_rate)?;
        Ok(Self { rate: input_rate, engine: Some(Box::new(Engine::new(input_rate)?)) })
    }

    /// A pass-through with the same API: output = input, no latency.
    pub fn passthrough(input_rate: u32) -> Result<Self, DenoiseError> {
        check_rate(input_rate)?;
        Ok(Self { rate: input_rate, engine: None })
    }

    /// `new` or `passthrough`, chosen by a per-call setting.
    pub fn with_enabled(input_rate: u32, enabled: bool) -> Result<Self, DenoiseError> {
        if enabled {
            Self::new(input_rate)
        } else {
            Self::passthrough(input_rate)
        }
    }

    /// Whether RNNoise runs.
    pub fn is_enabled(&self) -> bool {
        self.engine.is_some()
    }

    /// Input (and output) rate in Hz.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Output sample i is the denoised input sample i − latency (0 when passing through).
    pub fn latency_samples(&self) -> usize {
        self.engine.as_ref().map_or(0, |e| e.latency_samples())
    }

    /// Samples that the next call with `input_len` samples will write.
    pub fn output_len(&self, input_len: usize) -> usize {
        match &self.engine {
            None => input_len,
            Some(e) => {
                let block = e.block_len();
                (e.pending_len + input_len) / block * block
            }
        }
    }

    /// Denoises `input` into the start of `output`; returns the samples written (whole 10 ms
    /// blocks; 160 for every 160-sample frame at 8 kHz). Does not allocate.
    pub fn process(&mut self, input: &[i16], output: &mut [i16]) -> Result<usize, DenoiseError> {
        let needed = self.output_len(input.len());
        if output.len() < needed {
            return Err(DenoiseError::OutputTooShort { got: output.len(), needed });
        }
        match &mut self.engine {
            None => {
                output[..input.len()].copy_from_slice(input);
                Ok(input.len())
            }
            Some(e) => e.process(input, &mut output[..needed]),
        }
    }

    /// Clears all history (filters, RNNoise state, pending input).
    pub fn reset(&mut self) -> Result<(), DenoiseError> {
        if let Some(e) = &mut self.engine {
            **e = Engine::new(self.rate)?;
        }
        Ok(())
    }
}

/// Truncates toward zero like the reference, but saturates instead of wrapping (see module docs).
fn to_pcm16(x: f32) -> i16 {
    x as i16
}

fn check_rate(rate: u32) -> Result<(), DenoiseError> {
    match rate {
        8000 | 16000 => Ok(()),
        other => Err(DenoiseError::UnsupportedRate(other)),
    }
}

impl Engine {
    fn new(rate: u32) -> Result<Self, DenoiseError> {
        let block = (rate / 100) as usize;
        let up = StreamResampler::new(rate, RNNOISE_RATE, block)?;
        let down = StreamResampler::new(RNNOISE_RATE, rate, RNNOISE_FRAME)?;
        debug_assert_eq!(up.output_len(), RNNOISE_FRAME);
        Ok(Self {
            up,
            down,
            rnnoise: DenoiseState::new(),
            pending: vec![0; block].into_boxed_slice(),
            pending_len: 0,
            block_in: vec![0.0; block].into_boxed_slice(),
            up_out: vec![0.0; RNNOISE_FRAME].into_boxed_slice(),
            rnn_out: vec![0.0; RNNOISE_FRAME].into_boxed_slice(),
            block_out: vec![0.0; block].into_boxed_slice(),
        })
    }

    fn block_len(&self) -> usize {
        self.pending.len()
    }

    fn latency_samples(&self) -> usize {
        let rate = self.down.to_hz() as usize;
        let at_48k = self.up.delay_samples() + RNNOISE_FRAME;
        at_48k * rate / RNNOISE_RATE as usize + self.down.delay_samples()
    }

    /// `output` is exactly as long as the whole blocks this call completes.
    fn process(&mut self, mut input: &[i16], output: &mut [i16]) -> Result<usize, DenoiseError> {
        let block = self.block_len();
        let mut written = 0;
        while !input.is_empty() {
            let take = (block - self.pending_len).min(input.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&input[..take]);
            self.pending_len += take;
            input = &input[take..];
            if self.pending_len == block {
                self.run_block(&mut output[written..written + block])?;
                self.pending_len = 0;
                written += block;
            }
        }
        Ok(written)
    }

    /// Denoises the full `pending` block into `out`.
    fn run_block(&mut self, out: &mut [i16]) -> Result<(), DenoiseError> {
        for (f, &s) in self.block_in.iter_mut().zip(self.pending.iter()) {
            *f = f32::from(s);
        }
        self.up.process(&self.block_in, &mut self.up_out)?;
        self.rnnoise.process_frame(&mut self.rnn_out, &self.up_out);
        self.down.process(&self.rnn_out, &mut self.block_out)?;
        for (o, &f) in out.iter_mut().zip(self.block_out.iter()) {
            *o = to_pcm16(f);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEECH_8K: &[u8] = include_bytes!("../../tests/fixtures/dsp/speech_8k.wav");
    const SPEECH_16K: &[u8] = include_bytes!("../../tests/fixtures/dsp/speech_16k.wav");
    /// The fixtures start and end with 0.4 s of digital silence.
    const PAD_SECS: f64 = 0.4;

    fn load(bytes: &[u8]) -> (Vec<i16>, u32) {
        let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
        let rate = r.spec().sample_rate;
        (r.samples::<i16>().map(Result::unwrap).collect(), rate)
    }

    /// SplitMix64: a fixed-seed generator so the noise is identical on every machine.
    struct Rng(u64);
    impl Rng {
        fn next_f64(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn gaussian(&mut self) -> f64 {
            let u1 = self.next_f64().max(1e-300);
            let u2 = self.next_f64();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
    }

    fn white(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng(seed);
        (0..n).map(|_| rng.gaussian()).collect()
    }

    /// Pink (1/f) noise: white noise through Paul Kellet's three-pole approximation.
    fn pink(n: usize, seed: u64) -> Vec<f64> {
        let (mut b0, mut b1, mut b2) = (0.0, 0.0, 0.0);
        white(n, seed)
            .into_iter()
            .map(|w| {
                b0 = 0.99765 * b0 + w * 0.0990460;
                b1 = 0.96300 * b1 + w * 0.2965164;
                b2 = 0.57000 * b2 + w * 1.0526913;
                b0 + b1 + b2 + w * 0.1848
            })
            .collect()
    }

    fn power(x: impl Iterator<Item = f64>) -> f64 {
        let (mut sum, mut n) = (0.0, 0usize);
        for v in x {
            sum += v * v;
            n += 1;
        }
        sum / n.max(1) as f64
    }

    /// `clean` plus `noise` scaled to `snr_db` below the clean clip's mean power.
    fn mix(clean: &[i16], noise: &[f64], snr_db: f64) -> (Vec<i16>, Vec<f64>) {
        let p_clean = power(clean.iter().map(|&s| f64::from(s)));
        let p_noise = power(noise.iter().copied());
        let k = (p_clean / p_noise / 10f64.powf(snr_db / 10.0)).sqrt();
        let noise: Vec<f64> = noise.iter().map(|v| v * k).collect();
        let noisy = clean
            .iter()
            .zip(&noise)
            .map(|(&s, n)| (f64::from(s) + n).round().clamp(-32768.0, 32767.0) as i16)
            .collect();
        (noisy, noise)
    }

    /// Runs `input` through `d` in 20 ms frames.
    fn run(d: &mut Denoiser, input: &[i16]) -> Vec<i16> {
        let frame = (d.rate() / 50) as usize;
        let mut out = Vec::with_capacity(input.len());
        let mut buf = vec![0i16; frame];
        for chunk in input.chunks(frame) {
            let n = d.process(chunk, &mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// SNR of `test` against `clean`, `test` shifted back by `lag` samples.
    fn snr_db(clean: &[i16], test: &[i16], lag: usize) -> f64 {
        let n = clean.len().min(test.len() - lag);
        let sig = power(clean[..n].iter().map(|&s| f64::from(s)));
        let err = power((0..n).map(|i| f64::from(test[i + lag]) - f64::from(clean[i])));
        10.0 * (sig / err).log10()
    }

    /// (SNR in, SNR out, noise attenuation) for `noise` at `snr_in` dB on the fixture. The
    /// attenuation is measured on the trailing pad (noise only), once RNNoise has adapted: it
    /// needs about half a second of a new noise before it starts to suppress it.
    fn measure(fixture: &[u8], noise: fn(usize, u64) -> Vec<f64>, snr_in: f64) -> (f64, f64, f64) {
        let (clean, rate) = load(fixture);
        let (noisy, _) = mix(&clean, &noise(clean.len(), 7), snr_in);
        let mut d = Denoiser::new(rate).unwrap();
        let out = run(&mut d, &noisy);
        let lag = d.latency_samples();
        let measured_in = snr_db(&clean, &noisy, 0);
        let measured_out = snr_db(&clean, &out, lag);
        let pad = (PAD_SECS * f64::from(rate)) as usize;
        let tail = clean.len() - pad..out.len() - lag;
        let p_in = power(noisy[tail.clone()].iter().map(|&s| f64::from(s)));
        let p_out = power(out[tail.start + lag..].iter().map(|&s| f64::from(s)));
        (measured_in, measured_out, 10.0 * (p_in / p_out).log10())
    }

    #[test]
    fn lowers_noise_on_noisy_speech() {
        type Case = (&'static str, &'static [u8], fn(usize, u64) -> Vec<f64>, f64, f64);
        // (name, fixture, noise, input SNR, minimum SNR gain); measured gains are in the report.
        let cases: [Case; 5] = [
            ("8k white 5 dB", SPEECH_8K, white, 5.0, 3.5),
            ("8k pink 5 dB", SPEECH_8K, pink, 5.0, 5.0),
            ("8k white 0 dB", SPEECH_8K, white, 0.0, 4.0),
            ("16k white 5 dB", SPEECH_16K, white, 5.0, 4.0),
            ("16k pink 5 dB", SPEECH_16K, pink, 5.0, 5.0),
        ];
        for (name, fixture, noise, snr, min_gain) in cases {
            let (snr_in, snr_out, quiet_db) = measure(fixture, noise, snr);
            let gain = snr_out - snr_in;
            eprintln!("{name}: SNR {snr_in:.2} -> {snr_out:.2} dB (gain {gain:.2}), noise-only tail -{quiet_db:.1} dB");
            assert!((snr_in - snr).abs() < 0.1, "{name}: mixed at {snr_in} dB");
            assert!(gain >= min_gain, "{name}: SNR gain {gain:.2} dB < {min_gain}");
            assert!(quiet_db >= 15.0, "{name}: noise-only tail only -{quiet_db:.1} dB");
        }
    }

    #[test]
    fn clean_speech_keeps_its_energy_and_timing() {
        for fixture in [SPEECH_8K, SPEECH_16K] {
            let (clean, rate) = load(fixture);
            let mut d = Denoiser::new(rate).unwrap();
            let out = run(&mut d, &clean);
            let block = (rate / 100) as usize;
            assert_eq!(out.len(), clean.len() / block * block, "whole 10 ms blocks");
            let lag = d.latency_samples();
            assert_eq!(lag, (rate / 50) as usize, "20 ms");
            let n = clean.len() - lag;
            let e_in = power(clean[..n].iter().map(|&s| f64::from(s)));
            let e_out = power(out[lag..].iter().map(|&s| f64::from(s)));
            let change_db = 10.0 * (e_out / e_in).log10();
            let snr = snr_db(&clean, &out, lag);
            eprintln!("{rate} Hz clean: energy {change_db:+.2} dB, SNR vs input {snr:.1} dB");
            assert!(change_db.abs() < 3.0, "{rate} Hz: energy changed {change_db:.2} dB");
            // The reported latency is where the output lines up best with the input.
            let best = (0..3 * lag).max_by(|&a, &b| xcorr(&clean, &out, a).total_cmp(&xcorr(&clean, &out, b))).unwrap();
            assert_eq!(best, lag, "{rate} Hz: cross-correlation peak");
        }
    }

    fn xcorr(x: &[i16], y: &[i16], lag: usize) -> f64 {
        x.iter().zip(&y[lag..]).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
    }

    #[test]
    fn passthrough_has_the_same_api_and_returns_the_input() {
        let (clean, rate) = load(SPEECH_8K);
        let mut d = Denoiser::with_enabled(rate, false).unwrap();
        assert!(!d.is_enabled());
        assert_eq!(d.latency_samples(), 0);
        assert_eq!(run(&mut d, &clean), clean);
        assert!(Denoiser::with_enabled(rate, true).unwrap().is_enabled());
    }

    #[test]
    fn any_chunking_gives_the_same_stream() {
        let (clean, rate) = load(SPEECH_8K);
        let input = &clean[..8000];
        let mut framed = Denoiser::new(rate).unwrap();
        let want = run(&mut framed, input);
        let mut d = Denoiser::new(rate).unwrap();
        let mut got = Vec::new();
        let mut buf = [0i16; 512];
        let mut rest = input;
        for size in [1usize, 37, 160, 333, 80, 79, 2].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let take = (*size).min(rest.len());
            let pending = d.engine.as_ref().unwrap().pending_len;
            assert_eq!(d.output_len(take), (pending + take) / 80 * 80);
            let n = d.process(&rest[..take], &mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            rest = &rest[take..];
        }
        assert_eq!(got, want);
        d.reset().unwrap();
        assert_eq!(run(&mut d, input), want);
    }

    #[test]
    fn rejects_unsupported_rates_and_short_buffers() {
        assert!(matches!(Denoiser::new(44100), Err(DenoiseError::UnsupportedRate(44100))));
        assert!(Denoiser::passthrough(48000).is_err());
        let mut d = Denoiser::new(8000).unwrap();
        let mut small = [0i16; 100];
        assert!(matches!(
            d.process(&[0; 160], &mut small),
            Err(DenoiseError::OutputTooShort { got: 100, needed: 160 })
        ));
        // 79 samples complete no block: nothing is written, nothing is needed.
        assert_eq!(d.process(&[0; 79], &mut small[..0]).unwrap(), 0);
    }

    #[test]
    fn denoiser_can_move_between_threads() {
        fn is_send<T: Send>() {}
        is_send::<Denoiser>();
        is_send::<StreamResampler>();
    }

    #[test]
    fn conversion_truncates_and_saturates() {
        assert_eq!(to_pcm16(1.9), 1);
        assert_eq!(to_pcm16(-1.9), -1);
        assert_eq!(to_pcm16(40000.0), i16::MAX);
        assert_eq!(to_pcm16(-40000.0), i16::MIN);
        assert_eq!(to_pcm16(f32::NAN), 0);
    }
}
