//! Outbound pacing: bot audio leaves in 20 ms μ-law frames at the rate Twilio plays them, never
//! more than `lead` ahead of real time, so a `clear` silences the caller within that lead.
//! Marks follow the audio queued before them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::call::FRAME_SAMPLES;

/// μ-law silence, used to pad the last partial frame of an utterance.
const MULAW_SILENCE: u8 = 0xFF;
const FRAME: Duration = Duration::from_millis(20);

/// Something ready to go out on the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// One frame and the instant Twilio will start playing it.
    Frame {
        mulaw: [u8; FRAME_SAMPLES],
        plays_at: Instant,
    },
    Mark(String),
}

#[derive(Debug)]
enum Queued {
    Frame([u8; FRAME_SAMPLES]),
    Mark(String),
}

/// The pacing queue of one call.
#[derive(Debug)]
pub struct Playout {
    queue: VecDeque<Queued>,
    partial: Vec<u8>,
    /// When everything sent so far will have finished playing.
    played_until: Option<Instant>,
    lead: Duration,
}

impl Playout {
    pub fn new(lead: Duration) -> Self {
        Self {
            queue: VecDeque::new(),
            partial: Vec::with_capacity(FRAME_SAMPLES),
            played_until: None,
            lead: lead.max(FRAME),
        }
    }

    pub fn push_audio(&mut self, mut mulaw: &[u8]) {
        while !mulaw.is_empty() {
            let take = (FRAME_SAMPLES - self.partial.len()).min(mulaw.len());
            self.partial.extend_from_slice(&mulaw[..take]);
            mulaw = &mulaw[take..];
            if self.partial.len() == FRAME_SAMPLES {
                self.flush_partial();
            }
        }
    }

    /// Queues a mark after all audio pushed so far (a partial frame is padded with silence).
    pub fn push_mark(&mut self, name: String) {
        if !self.partial.is_empty() {
            self.partial.resize(FRAME_SAMPLES, MULAW_SILENCE);
            self.flush_partial();
        }
        self.queue.push_back(Queued::Mark(name));
    }

    /// Sends out a trailing partial frame (padded with silence) even though no mark follows it:
    /// used when the session has ended, so its last words still play and the call can end.
    pub fn pad_partial(&mut self) {
        if !self.partial.is_empty() {
            self.partial.resize(FRAME_SAMPLES, MULAW_SILENCE);
            self.flush_partial();
        }
    }

    fn flush_partial(&mut self) {
        let mut frame = [MULAW_SILENCE; FRAME_SAMPLES];
        frame[..self.partial.len()].copy_from_slice(&self.partial);
        self.partial.clear();
        self.queue.push_back(Queued::Frame(frame));
    }

    /// True while audio is queued here or still playing at Twilio.
    pub fn is_active(&self, now: Instant) -> bool {
        !self.queue.is_empty() || !self.partial.is_empty() || self.played_until.is_some_and(|t| t > now)
    }

    /// Drops everything not yet sent and restarts the clock. Returns whether any bot audio was
    /// queued or playing, i.e. whether Twilio needs a `clear`.
    pub fn clear(&mut self, now: Instant) -> bool {
        let active = self.is_active(now);
        self.queue.clear();
        self.partial.clear();
        self.played_until = None;
        active
    }

    /// When the next item may go out, if anything is queued.
    pub fn next_due(&self, now: Instant) -> Option<Instant> {
        match self.queue.front()? {
            Queued::Mark(_) => Some(now),
            Queued::Frame(_) => match self.played_until {
                Some(until) if until + FRAME > now + self.lead => Some(until + FRAME - self.lead),
                _ => Some(now),
            },
        }
    }

    /// Takes the next item if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        if self.next_due(now)? > now {
            return None;
        }
        match self.queue.pop_front()? {
            Queued::Mark(name) => Some(Due::Mark(name)),
            Queued::Frame(mulaw) => {
                let plays_at = self.played_until.map_or(now, |t| t.max(now));
                self.played_until = Some(plays_at + FRAME);
                Some(Due::Frame { mulaw, plays_at })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(p: &mut Playout, now: Instant) -> Vec<Due> {
        std::iter::from_fn(|| p.pop_due(now)).collect()
    }

    #[test]
    fn sends_at_most_the_lead_ahead_then_one_frame_per_20ms() {
        let t0 = Instant::now();
        let mut p = Playout::new(Duration::from_millis(100));
        p.push_audio(&[1u8; FRAME_SAMPLES * 20]);
        assert_eq!(drain(&mut p, t0).len(), 5, "100 ms lead = 5 frames");
        assert_eq!(p.next_due(t0), Some(t0 + Duration::from_millis(20)));
        assert_eq!(drain(&mut p, t0 + Duration::from_millis(20)).len(), 1);
        assert_eq!(drain(&mut p, t0 + Duration::from_millis(60)).len(), 2);
    }

    #[test]
    fn frames_carry_their_playout_time_and_marks_follow_audio() {
        let t0 = Instant::now();
        let mut p = Playout::new(Duration::from_millis(100));
        p.push_audio(&[7u8; 200]);
        p.push_mark("utt-1".into());
        let out = drain(&mut p, t0);
        assert_eq!(out.len(), 3);
        let Due::Frame { mulaw, plays_at } = &out[1] else { panic!("frame expected") };
        assert_eq!(*plays_at, t0 + FRAME);
        assert_eq!(mulaw[39], 7);
        assert_eq!(mulaw[40], MULAW_SILENCE, "partial frame padded with silence");
        assert_eq!(out[2], Due::Mark("utt-1".into()));
    }

    #[test]
    fn clear_reports_activity_and_resets() {
        let t0 = Instant::now();
        let mut p = Playout::new(Duration::from_millis(100));
        assert!(!p.clear(t0), "nothing to clear when silent");
        p.push_audio(&[1u8; FRAME_SAMPLES * 3]);
        drain(&mut p, t0);
        assert!(p.is_active(t0));
        assert!(p.clear(t0 + Duration::from_millis(10)));
        assert!(!p.is_active(t0 + Duration::from_millis(10)));
        p.push_audio(&[1u8; FRAME_SAMPLES]);
        let Some(Due::Frame { plays_at, .. }) = p.pop_due(t0 + Duration::from_millis(10)) else { panic!() };
        assert_eq!(plays_at, t0 + Duration::from_millis(10), "clock restarts after clear");
    }

    #[test]
    fn a_trailing_partial_frame_can_be_padded_out_without_a_mark() {
        let t0 = Instant::now();
        let mut p = Playout::new(Duration::from_millis(100));
        p.push_audio(&[3u8; 100]);
        assert!(drain(&mut p, t0).is_empty(), "a partial frame waits for more audio or a mark");
        assert!(p.is_active(t0));
        p.pad_partial();
        let out = drain(&mut p, t0);
        assert_eq!(out.len(), 1);
        assert!(!p.is_active(t0 + FRAME), "played out: the call may end");
    }

    #[test]
    fn a_late_tick_never_bursts_beyond_the_lead() {
        let t0 = Instant::now();
        let mut p = Playout::new(Duration::from_millis(100));
        p.push_audio(&[1u8; FRAME_SAMPLES * 50]);
        drain(&mut p, t0);
        // The task was starved for a second: playback underran, so restart from now.
        assert_eq!(drain(&mut p, t0 + Duration::from_secs(1)).len(), 5);
    }
}
