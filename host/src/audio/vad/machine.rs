//! The quiet → starting → speaking → stopping state machine (Pipecat's `VADAnalyzer`).

use super::{VadParams, VadRate, VadState};

#[derive(Debug, Clone)]
pub(super) struct Machine {
    pub(super) state: VadState,
    starting: u32,
    stopping: u32,
    start_windows: u32,
    stop_windows: u32,
}

impl Machine {
    pub(super) fn new(rate: VadRate, params: &VadParams) -> Self {
        let secs_per_window = rate.window() as f64 / f64::from(rate.hz());
        let windows = |secs: f64| (secs / secs_per_window).round_ties_even().max(0.0) as u32;
        Machine {
            state: VadState::Quiet,
            starting: 0,
            stopping: 0,
            start_windows: windows(params.start_secs),
            stop_windows: windows(params.stop_secs),
        }
    }

    /// One window's transition, then the start/stop thresholds (checked after every
    /// window; the reference checks after each chunk, which holds at most one window when
    /// chunks are no longer than a window).
    pub(super) fn step(&mut self, speech: bool) {
        use VadState::*;
        match (speech, self.state) {
            (true, Quiet) => {
                self.state = Starting;
                self.starting = 1;
            }
            (true, Starting) => self.starting += 1,
            (true, Stopping) => {
                self.state = Speaking;
                self.stopping = 0;
            }
            (false, Starting) => {
                self.state = Quiet;
                self.starting = 0;
            }
            (false, Speaking) => {
                self.state = Stopping;
                self.stopping = 1;
            }
            (false, Stopping) => self.stopping += 1,
            (true, Speaking) | (false, Quiet) => {}
        }
        if self.state == Starting && self.starting >= self.start_windows {
            self.state = Speaking;
            self.starting = 0;
        }
        if self.state == Stopping && self.stopping >= self.stop_windows {
            self.state = Quiet;
            self.stopping = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(start: f64, stop: f64) -> Machine {
        let params = VadParams { start_secs: start, stop_secs: stop, ..VadParams::default() };
        Machine::new(VadRate::Hz8000, &params)
    }

    #[test]
    fn window_counts_round_half_to_even_like_python() {
        let m = machine(0.2, 0.5);
        assert_eq!((m.start_windows, m.stop_windows), (6, 16));
        // 0.176 s / 0.032 = 5.5 → 6 (even); 0.144 / 0.032 = 4.5 → 4.
        assert_eq!(machine(0.176, 0.144).start_windows, 6);
        assert_eq!(machine(0.176, 0.144).stop_windows, 4);
    }

    #[test]
    fn state_machine_needs_consecutive_windows() {
        use VadState::*;
        let mut m = machine(0.2, 0.2); // 6 and 6 windows
        for _ in 0..5 {
            m.step(true);
            assert_eq!(m.state, Starting);
        }
        m.step(false);
        assert_eq!(m.state, Quiet, "one non-speech window restarts the count");
        for _ in 0..5 {
            m.step(true);
        }
        m.step(true);
        assert_eq!(m.state, Speaking);
        for _ in 0..5 {
            m.step(false);
            assert_eq!(m.state, Stopping);
        }
        m.step(true);
        assert_eq!((m.state, m.stopping), (Speaking, 0));
        for _ in 0..6 {
            m.step(false);
        }
        assert_eq!(m.state, Quiet);
    }
}
