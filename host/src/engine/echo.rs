//! `--diagnostic echo`: a session that needs no AI provider, for checking a Twilio number end to
//! end. It plays a short tone, then repeats back each thing the caller says after they pause.
//! `#` ends the call after a goodbye tone; any other key is acknowledged with a beep.

use std::time::Duration;

use tracing::info;

use crate::audio::mulaw;
use crate::call::{CallInfo, CallInput, CallOutput, SessionFactory, SessionFuture, SessionIo, FRAME_SAMPLES};

/// Frames above this level count as speech (dBFS of the frame RMS).
const SPEECH_DBFS: f64 = -40.0;
/// Voiced frames in a row that open an utterance (60 ms).
const START_FRAMES: u32 = 3;
/// Quiet frames in a row that end it (700 ms).
const END_FRAMES: u32 = 35;
/// Frames kept from before the utterance opened, so its first syllable isn't clipped.
const PRE_ROLL_FRAMES: usize = 10;
/// Longest utterance echoed (10 s).
const MAX_UTTERANCE_FRAMES: usize = 500;
/// A call is ended after this long, whatever happens (diagnostics are short).
const MAX_CALL: Duration = Duration::from_secs(600);

/// Factory for echo sessions.
#[derive(Debug, Default, Clone)]
pub struct EchoDiagnostic;

impl SessionFactory for EchoDiagnostic {
    fn start(&self, info: CallInfo, io: SessionIo) -> SessionFuture {
        Box::pin(async move {
            if tokio::time::timeout(MAX_CALL, run(info, io)).await.is_err() {
                info!("diagnostic call reached its time limit");
            }
        })
    }
}

/// A tone as μ-law: `freq` Hz for `ms`, with 5 ms fades so it doesn't click.
pub fn tone(freq: f64, ms: u32, amplitude: f64) -> Vec<u8> {
    let n = (ms as usize) * 8;
    let fade = 40.0;
    (0..n)
        .map(|i| {
            let env = (i as f64 / fade).min((n - i) as f64 / fade).min(1.0);
            let s = (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin() * amplitude * env * 32767.0;
            mulaw::encode(s as i16)
        })
        .collect()
}

fn frame_dbfs(samples: &[i16; FRAME_SAMPLES]) -> f64 {
    let energy: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum::<f64>() / FRAME_SAMPLES as f64;
    10.0 * (energy.max(1e-9) / (32768.0 * 32768.0)).log10()
}

/// Finds utterances in a stream of frames by level.
#[derive(Debug, Default)]
struct Segmenter {
    voiced_run: u32,
    quiet_run: u32,
    in_utterance: bool,
    pre_roll: std::collections::VecDeque<[i16; FRAME_SAMPLES]>,
    utterance: Vec<i16>,
}

impl Segmenter {
    /// Feeds one frame; returns a finished utterance.
    fn push(&mut self, frame: &[i16; FRAME_SAMPLES]) -> Option<Vec<i16>> {
        let voiced = frame_dbfs(frame) > SPEECH_DBFS;
        if !self.in_utterance {
            self.voiced_run = if voiced { self.voiced_run + 1 } else { 0 };
            self.pre_roll.push_back(*frame);
            if self.pre_roll.len() > PRE_ROLL_FRAMES {
                self.pre_roll.pop_front();
            }
            if self.voiced_run >= START_FRAMES {
                self.in_utterance = true;
                self.quiet_run = 0;
                for f in self.pre_roll.drain(..) {
                    self.utterance.extend_from_slice(&f);
                }
            }
            return None;
        }
        self.utterance.extend_from_slice(frame);
        self.quiet_run = if voiced { 0 } else { self.quiet_run + 1 };
        if self.quiet_run >= END_FRAMES || self.utterance.len() >= MAX_UTTERANCE_FRAMES * FRAME_SAMPLES {
            self.in_utterance = false;
            self.voiced_run = 0;
            return Some(std::mem::take(&mut self.utterance));
        }
        None
    }
}

async fn run(info: CallInfo, mut io: SessionIo) {
    info!(from = %info.from, "echo diagnostic started");
    let say = |out: &tokio::sync::mpsc::Sender<CallOutput>, audio: Vec<u8>, mark: String| {
        let out = out.clone();
        async move { out.send(CallOutput::Audio(audio)).await.is_ok() && out.send(CallOutput::Mark(mark)).await.is_ok() }
    };
    if !say(&io.output, tone(440.0, 400, 0.3), "greeting".into()).await {
        return;
    }
    let mut segmenter = Segmenter::default();
    // While the bot is playing, the caller's audio is not listened to.
    let mut playing_until_mark: Option<String> = Some("greeting".into());
    let mut echoes = 0u32;
    let mut ending = false;
    while let Some(input) = io.input.recv().await {
        match input {
            CallInput::Audio { samples, .. } if playing_until_mark.is_none() && !ending => {
                if let Some(utterance) = segmenter.push(&samples) {
                    echoes += 1;
                    let name = format!("echo-{echoes}");
                    info!(ms = utterance.len() / 8, "echoing utterance");
                    if !say(&io.output, mulaw::encode_vec(&utterance), name.clone()).await {
                        return;
                    }
                    playing_until_mark = Some(name);
                }
            }
            CallInput::MarkPlayed(name) => {
                if name == "goodbye" {
                    let _ = io.output.send(CallOutput::HangUp { reason: "caller pressed #".into() }).await;
                    return;
                }
                if playing_until_mark.as_deref() == Some(name.as_str()) {
                    playing_until_mark = None;
                }
            }
            CallInput::Dtmf(digit) if !ending => {
                if digit == "#" {
                    ending = true;
                    let _ = io.output.send(CallOutput::Clear).await;
                    if !say(&io.output, tone(330.0, 600, 0.3), "goodbye".into()).await {
                        return;
                    }
                } else if !say(&io.output, tone(880.0, 120, 0.3), format!("dtmf-{digit}")).await {
                    return;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(level: i16) -> [i16; FRAME_SAMPLES] {
        std::array::from_fn(|i| if i % 2 == 0 { level } else { -level })
    }

    #[test]
    fn segmenter_returns_utterance_with_pre_roll_after_a_pause() {
        let mut s = Segmenter::default();
        for _ in 0..20 {
            assert!(s.push(&frame(0)).is_none());
        }
        for _ in 0..50 {
            assert!(s.push(&frame(8000)).is_none());
        }
        let mut out = None;
        for _ in 0..END_FRAMES {
            out = out.or(s.push(&frame(0)));
        }
        let utt = out.expect("utterance after the pause");
        let frames = utt.len() / FRAME_SAMPLES;
        assert_eq!(frames, PRE_ROLL_FRAMES + (50 - START_FRAMES as usize) + END_FRAMES as usize);
    }

    #[test]
    fn tone_has_the_right_length_and_energy() {
        let t = tone(440.0, 400, 0.3);
        assert_eq!(t.len(), 3200);
        let pcm = mulaw::decode_vec(&t);
        let rms = (pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
        assert!((rms / 32768.0 - 0.3 / 2f64.sqrt()).abs() < 0.02, "rms {rms}");
    }
}
