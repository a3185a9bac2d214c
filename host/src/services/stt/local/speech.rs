//! Where the speech is in a buffer, by frame energy: what the recognizer is given, whether it is
//! worth running at all, and where a long buffer can be cut.
//!
//! Why before the model: a sequence-to-sequence recognizer always produces *some* answer, and
//! silence or line noise costs as much CPU as speech. Buffers with too little energy are answered
//! as empty without running it, and leading and trailing quiet is trimmed (padded by a little, so
//! soft word edges stay in).

use std::ops::Range;
use std::time::Duration;

/// Energy gate settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechGate {
    /// A 20 ms frame counts as speech above this RMS level (dBFS) ...
    pub floor_dbfs: f32,
    /// ... and no more than this far below the buffer's loudest frame.
    pub below_peak_db: f32,
    /// Less speech than this in a buffer: nothing was said.
    pub min_speech: Duration,
    /// Kept around the first and last speech frame.
    pub padding: Duration,
}

impl Default for SpeechGate {
    /// Speech on a phone line sits around −35…−10 dBFS; denoised silence far below −60.
    fn default() -> Self {
        Self {
            floor_dbfs: -50.0,
            below_peak_db: 40.0,
            min_speech: Duration::from_millis(100),
            padding: Duration::from_millis(200),
        }
    }
}

/// Length of the energy frame.
pub const FRAME: Duration = Duration::from_millis(20);

fn frame_len(rate_hz: u32) -> usize {
    ((rate_hz as f64 * FRAME.as_secs_f64()) as usize).max(1)
}

fn samples_for(d: Duration, rate_hz: u32) -> usize {
    (d.as_secs_f64() * rate_hz as f64).round() as usize
}

/// RMS level in dBFS of samples on the ±1.0 scale (−120 for silence).
pub fn level_dbfs(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return -120.0;
    }
    let mean_sq = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len() as f64;
    (10.0 * mean_sq.max(1e-12).log10()) as f32
}

impl SpeechGate {
    /// The part of `samples` to transcribe, or `None` when it holds no speech.
    pub fn speech_span(&self, samples: &[f32], rate_hz: u32) -> Option<Range<usize>> {
        let frame = frame_len(rate_hz);
        let levels: Vec<f32> = samples.chunks(frame).map(level_dbfs).collect();
        let peak = levels.iter().copied().fold(f32::MIN, f32::max);
        let threshold = self.floor_dbfs.max(peak - self.below_peak_db);
        let loud = |l: &&f32| **l > threshold;
        let speech_frames = levels.iter().filter(loud).count();
        if speech_frames == 0 || (speech_frames * frame) < samples_for(self.min_speech, rate_hz) {
            return None;
        }
        let first = levels.iter().position(|l| *l > threshold)?;
        let last = levels.iter().rposition(|l| *l > threshold)?;
        let pad = samples_for(self.padding, rate_hz);
        let start = (first * frame).saturating_sub(pad);
        let end = ((last + 1) * frame + pad).min(samples.len());
        Some(start..end)
    }

    /// Whether this stretch alone has a speech-level frame (a cheap per-frame check for the
    /// streaming side, without the buffer's peak).
    pub fn is_loud(&self, samples: &[f32]) -> bool {
        level_dbfs(samples) > self.floor_dbfs
    }
}

/// Where a buffer of `len` samples that grew too long may be cut: its second half, at most the
/// last 5 s (a pause to split at is then almost always inside, and the first part stays long).
pub fn cut_window(len: usize, rate_hz: u32) -> Range<usize> {
    let back = (len / 2).min(samples_for(Duration::from_secs(5), rate_hz));
    len - back..len
}

/// The quietest point to cut `samples` at within `window` (a sample index): the middle of the
/// 100 ms stretch with the least energy, so a long buffer is split between words if it can be.
pub fn quietest_cut(samples: &[f32], rate_hz: u32, window: Range<usize>) -> usize {
    let end = window.end.min(samples.len());
    let start = window.start.min(end);
    let span = samples_for(Duration::from_millis(100), rate_hz).max(1);
    let step = frame_len(rate_hz) / 2;
    if end - start <= span {
        return end;
    }
    let mut best = (f32::MAX, end);
    let mut at = start;
    while at + span <= end {
        let level = level_dbfs(&samples[at..at + span]);
        // Later wins ties: a longer first part leaves less to carry over.
        if level <= best.0 {
            best = (level, at + span / 2);
        }
        at += step.max(1);
    }
    best.1
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `secs` of a 300 Hz tone at `dbfs` (RMS).
    pub(crate) fn tone(secs: f64, dbfs: f32, rate: u32) -> Vec<f32> {
        let amp = 10f32.powf(dbfs / 20.0) * std::f32::consts::SQRT_2;
        (0..(secs * rate as f64) as usize)
            .map(|i| amp * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / rate as f32).sin())
            .collect()
    }

    #[test]
    fn level_of_known_signals() {
        assert!((level_dbfs(&tone(0.1, -20.0, 8000)) + 20.0).abs() < 0.1);
        assert_eq!(level_dbfs(&[0.0; 160]), -120.0);
        assert_eq!(level_dbfs(&[]), -120.0);
    }

    #[test]
    fn silence_and_faint_noise_hold_no_speech() {
        let gate = SpeechGate::default();
        assert_eq!(gate.speech_span(&[0.0; 16000], 8000), None);
        assert_eq!(gate.speech_span(&tone(2.0, -65.0, 8000), 8000), None);
        assert_eq!(gate.speech_span(&[], 8000), None);
        // A 40 ms click is shorter than the minimum speech.
        let mut click = vec![0.0; 8000];
        click.splice(4000..4320, tone(0.04, -10.0, 8000));
        assert_eq!(gate.speech_span(&click, 8000), None);
    }

    #[test]
    fn speech_is_trimmed_with_padding() {
        let gate = SpeechGate::default();
        let rate = 16000;
        let mut audio = vec![0.0; rate as usize]; // 1 s quiet
        audio.extend(tone(0.5, -25.0, rate));
        audio.extend(vec![0.0; rate as usize]);
        let span = gate.speech_span(&audio, rate).unwrap();
        assert_eq!(span, (16000 - 3200)..(24000 + 3200));
        // Quiet far below the loudest frame is not speech even above the floor.
        let mut with_hum = tone(1.0, -48.5 + 0.0, rate);
        with_hum.extend(tone(0.5, -5.0, rate));
        let span = gate.speech_span(&with_hum, rate).unwrap();
        assert!(span.start >= 16000 - 3200 - 320, "{span:?}");
    }

    #[test]
    fn cuts_at_the_quiet_gap() {
        let rate = 8000;
        let mut audio = tone(1.0, -20.0, rate);
        audio.extend(vec![0.0; 1600]); // 200 ms gap at 1.0–1.2 s
        audio.extend(tone(1.0, -20.0, rate));
        let cut = quietest_cut(&audio, rate, 0..audio.len());
        assert!((8000..9600).contains(&cut), "{cut}");
        assert_eq!(quietest_cut(&audio, rate, 100..150), 150, "a window shorter than 100 ms cuts at its end");
        assert_eq!(quietest_cut(&audio, rate, 50_000..60_000), audio.len(), "out of range is clamped");
        assert_eq!(cut_window(16000, 8000), 8000..16000);
        assert_eq!(cut_window(160_000, 8000), 120_000..160_000, "at most 5 s back");
    }
}
