//! One stream's window assembly, model memory, volume gate and state machine: everything but the model.

use super::loudness::VolumeMeter;
use super::machine::Machine;
use super::{VadError, VadEvent, VadParams, VadRate, VadState, VadWindow};

/// Windows of audio between model resets, and the low-confidence run that allows one.
const RESET_INTERVAL_SECS: u64 = 2;
const RESET_MAX_CONFIDENCE: f64 = 0.1;
const RESET_LOW_WINDOWS: u32 = 5;

pub(super) const MAX_INPUT: usize = 576;
pub(super) const STATE_LEN: usize = 256;

/// One stream's window assembly, model memory, volume and state machine.
#[derive(Debug, Clone)]
pub(super) struct VadCore {
    pub(super) rate: VadRate,
    pub(super) params: VadParams,
    /// Samples not yet scored (at most one window plus one frame).
    pub(super) pending: Vec<i16>,
    context: [f32; 64],
    pub(super) state: [f32; STATE_LEN],
    meter: VolumeMeter,
    pub(super) machine: Machine,
    /// What the VAD controller last reported (only SPEAKING/QUIET edges are events).
    reported_speaking: bool,
    windows_since_reset: u64,
    low_confidence_run: u32,
    scored: u64,
}

impl VadCore {
    pub(super) fn new(rate: VadRate, params: VadParams) -> Self {
        VadCore {
            rate,
            params,
            pending: Vec::with_capacity(2 * rate.window()),
            context: [0.0; 64],
            state: [0.0; STATE_LEN],
            meter: VolumeMeter::new(rate),
            machine: Machine::new(rate, &params),
            reported_speaking: false,
            windows_since_reset: 0,
            low_confidence_run: 0,
            scored: 0,
        }
    }

    /// Adds a frame; true when a full window is ready to score.
    pub(super) fn push(&mut self, frame: &[i16]) -> Result<bool, VadError> {
        let max = self.rate.window();
        if frame.len() > max {
            return Err(VadError::FrameTooLong { got: frame.len(), max });
        }
        self.pending.extend_from_slice(frame);
        Ok(self.pending.len() >= max)
    }

    /// Writes the model input (context + window, int16 / 32768) and the recurrent state.
    pub(super) fn load(&self, input: &mut [f32], state: &mut [f32]) {
        let ctx = self.rate.context();
        input[..ctx].copy_from_slice(&self.context[..ctx]);
        for (dst, &s) in input[ctx..self.rate.input_len()].iter_mut().zip(&self.pending[..self.rate.window()]) {
            *dst = f32::from(s) / 32768.0;
        }
        state.copy_from_slice(&self.state);
    }

    /// Applies the model's answer for the pending window and runs the gates and the
    /// state machine, in the reference's order.
    pub(super) fn finish(&mut self, probability: f32, new_state: &[f32]) -> VadWindow {
        let (win, ctx) = (self.rate.window(), self.rate.context());
        self.state.copy_from_slice(new_state);
        for (dst, &s) in self.context[..ctx].iter_mut().zip(&self.pending[win - ctx..win]) {
            *dst = f32::from(s) / 32768.0;
        }
        self.maybe_reset_model(probability);

        let volume = self.meter.push(&self.pending[..win]);
        self.pending.copy_within(win.., 0);
        self.pending.truncate(self.pending.len() - win);

        let speech = probability >= self.params.confidence as f32 && volume >= self.params.min_volume;
        self.machine.step(speech);
        let event = self.edge();
        self.scored += 1;
        let end_sample = self.scored * win as u64;
        VadWindow {
            end_sample,
            t: end_sample as f64 / f64::from(self.rate.hz()),
            probability,
            volume,
            speech,
            state: self.machine.state,
            event,
        }
    }

    /// The reference's reset: after ≥ 2 s of scored audio, at the first window where the
    /// analyzer was QUIET before it and ≥ 5 windows in a row scored < 0.1, zero the state
    /// and context (from the next window on).
    fn maybe_reset_model(&mut self, probability: f32) {
        self.windows_since_reset += 1;
        if f64::from(probability) < RESET_MAX_CONFIDENCE {
            self.low_confidence_run += 1;
        } else {
            self.low_confidence_run = 0;
        }
        let due =
            self.windows_since_reset * self.rate.window() as u64 >= RESET_INTERVAL_SECS * u64::from(self.rate.hz());
        if due && self.machine.state == VadState::Quiet && self.low_confidence_run >= RESET_LOW_WINDOWS {
            self.state = [0.0; STATE_LEN];
            self.context = [0.0; 64];
            self.windows_since_reset = 0;
        }
    }

    fn edge(&mut self) -> Option<VadEvent> {
        match self.machine.state {
            VadState::Speaking if !self.reported_speaking => {
                self.reported_speaking = true;
                Some(VadEvent::SpeechStart)
            }
            VadState::Quiet if self.reported_speaking => {
                self.reported_speaking = false;
                Some(VadEvent::SpeechStop)
            }
            _ => None,
        }
    }

    pub(super) fn set_params(&mut self, params: VadParams) {
        // As the reference: the state machine restarts, volume and model memory carry on.
        self.params = params;
        self.machine = Machine::new(self.rate, &params);
    }

    /// The controller's forced stop (no audio for a while during speech). The analyzer's
    /// own state is untouched, so speech resuming reports a new start.
    pub(super) fn force_stop(&mut self) -> Option<VadEvent> {
        std::mem::take(&mut self.reported_speaking).then_some(VadEvent::SpeechStop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_with(state: VadState) -> VadCore {
        let mut core = VadCore::new(VadRate::Hz8000, VadParams::default());
        core.machine.state = state;
        core.state = [0.5; STATE_LEN];
        core.context = [0.25; 64];
        core
    }

    #[test]
    fn model_reset_waits_for_two_seconds_quiet_and_five_low_windows() {
        let mut core = core_with(VadState::Quiet);
        // 62 windows (1.984 s) of low confidence: not yet due.
        for _ in 0..62 {
            core.maybe_reset_model(0.01);
        }
        assert_eq!(core.state[0], 0.5);
        core.maybe_reset_model(0.01); // 63rd window: 2.016 s
        assert_eq!((core.state[0], core.context[0]), (0.0, 0.0));
        assert_eq!(core.windows_since_reset, 0);
        assert_eq!(core.low_confidence_run, 63, "the low run is not cleared by a reset");
    }

    #[test]
    fn model_reset_is_held_off_by_speech_state_and_recent_confidence() {
        let mut core = core_with(VadState::Speaking);
        for _ in 0..100 {
            core.maybe_reset_model(0.01);
        }
        assert_eq!(core.state[0], 0.5, "no reset unless QUIET");
        core.maybe_reset_model(0.1); // not < 0.1: breaks the run
        core.machine.state = VadState::Quiet;
        for _ in 0..4 {
            core.maybe_reset_model(0.05);
        }
        assert_eq!(core.state[0], 0.5, "needs 5 consecutive windows < 0.1");
        core.maybe_reset_model(0.05);
        assert_eq!(core.state[0], 0.0);
    }

    #[test]
    fn events_follow_the_controller_edges_and_force_stop() {
        let mut core = VadCore::new(VadRate::Hz8000, VadParams::default());
        core.machine.state = VadState::Speaking;
        assert_eq!(core.edge(), Some(VadEvent::SpeechStart));
        assert_eq!(core.edge(), None);
        assert_eq!(core.force_stop(), Some(VadEvent::SpeechStop));
        // Analyzer still SPEAKING: the next window reports a new start.
        assert_eq!(core.edge(), Some(VadEvent::SpeechStart));
        core.machine.state = VadState::Stopping;
        assert_eq!(core.edge(), None);
        core.machine.state = VadState::Quiet;
        assert_eq!(core.edge(), Some(VadEvent::SpeechStop));
        assert_eq!(core.force_stop(), None);
    }

    #[test]
    fn frames_longer_than_a_window_are_refused() {
        let mut core = VadCore::new(VadRate::Hz8000, VadParams::default());
        assert!(matches!(core.push(&[0; 257]), Err(VadError::FrameTooLong { got: 257, max: 256 })));
        assert!(!core.push(&[0; 160]).unwrap());
        assert!(core.push(&[0; 160]).unwrap());
    }
}
