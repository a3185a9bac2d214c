//! One call's turn segmenter (Pipecat's `BaseSmartTurn` bookkeeping): recent audio with speech flags,
//! the segment to score at a VAD stop, and the silence fallback for an incomplete turn.

use std::collections::VecDeque;

use super::{TurnParams, TurnSegment, TurnVerdict};
use crate::audio::vad::VadEvent;

#[derive(Debug, Clone, Copy)]
struct Chunk {
    start: u64,
    end: u64,
    speech: bool,
}

/// One call's turn state: recent audio with speech flags, the speech start, the silence
/// since speech. Feed it every frame, then the VAD events of that frame.
#[derive(Debug, Clone)]
pub struct TurnSegmenter {
    rate: u32,
    params: TurnParams,
    vad_start_secs: f64,
    /// The VAD's speaking flag as the reference's stop strategy sees it.
    user_speaking: bool,
    samples: VecDeque<i16>,
    chunks: VecDeque<Chunk>,
    position: u64,
    speech_triggered: bool,
    speech_start: Option<u64>,
    silence_ms: f64,
}

impl TurnSegmenter {
    /// `vad_start_secs` is the VAD's start_secs (extra pre-speech audio, as the reference).
    pub fn new(rate: u32, params: TurnParams, vad_start_secs: f64) -> Self {
        let keep = max_samples(rate, &params) + rate as usize / 10;
        TurnSegmenter {
            rate,
            params,
            vad_start_secs,
            user_speaking: false,
            samples: VecDeque::with_capacity(keep),
            chunks: VecDeque::with_capacity(keep / 80 + 8),
            position: 0,
            speech_triggered: false,
            speech_start: None,
            silence_ms: 0.0,
        }
    }

    pub fn params(&self) -> &TurnParams {
        &self.params
    }

    /// Appends a frame with the speaking flag from before the VAD saw it. Returns true when
    /// the silence after an incomplete verdict reached `stop_secs`: the turn is complete
    /// without running the model (and the analyzer is cleared).
    pub fn append(&mut self, frame: &[i16]) -> bool {
        let start = self.position;
        self.position += frame.len() as u64;
        self.samples.extend(frame.iter().copied());
        self.chunks.push_back(Chunk { start, end: self.position, speech: self.user_speaking });
        self.trim();
        let complete = self.track(self.user_speaking, frame.len());
        if complete {
            self.clear();
        }
        complete
    }

    /// Speech flag bookkeeping for one appended chunk; true when the fallback fires.
    fn track(&mut self, speech: bool, len: usize) -> bool {
        if speech {
            self.silence_ms = 0.0;
            self.speech_triggered = true;
            if self.speech_start.is_none() {
                self.speech_start = Some(self.position);
            }
            return false;
        }
        if !self.speech_triggered {
            return false;
        }
        self.silence_ms += len as f64 / (f64::from(self.rate) / 1000.0);
        self.silence_ms >= self.params.stop_secs * 1000.0
    }

    /// Keeps whole chunks covering at least the last `max_duration` of audio: the segment
    /// never uses more, so older audio cannot change a verdict.
    fn trim(&mut self) {
        let keep = max_samples(self.rate, &self.params);
        while let Some(oldest) = self.chunks.front().copied() {
            let len = (oldest.end - oldest.start) as usize;
            if self.samples.len() - len < keep {
                break;
            }
            self.chunks.pop_front();
            self.samples.drain(..len);
        }
    }

    /// Handles a VAD edge. At a stop, returns the segment the model must score (None when
    /// there is no audio, as the reference skips the model then).
    pub fn on_vad_event(&mut self, event: VadEvent) -> Option<TurnSegment> {
        match event {
            VadEvent::SpeechStart => {
                self.user_speaking = true;
                None
            }
            VadEvent::SpeechStop => {
                self.user_speaking = false;
                self.segment()
            }
        }
    }

    /// Sets the VAD's start_secs (the reference updates it at every VAD start).
    pub fn set_vad_start_secs(&mut self, secs: f64) {
        self.vad_start_secs = secs;
    }

    /// Whether the VAD currently reports the user speaking.
    pub fn user_speaking(&self) -> bool {
        self.user_speaking
    }

    /// Whether speech has been seen since the last complete turn.
    pub fn speech_triggered(&self) -> bool {
        self.speech_triggered
    }

    /// The segment the model would score if the VAD stopped now; the turn's state is untouched
    /// (`analyze --probe-pause`).
    pub fn segment_so_far(&self) -> Option<TurnSegment> {
        self.segment()
    }

    fn segment(&self) -> Option<TurnSegment> {
        let first = self.chunks.front()?;
        let pre_ms = self.params.pre_speech_ms + self.vad_start_secs * 1000.0;
        let pre = (pre_ms * f64::from(self.rate) / 1000.0).round() as u64;
        let threshold = self.speech_start.unwrap_or(0).saturating_sub(pre);
        let begin = self.chunks.iter().find(|c| c.end >= threshold).map_or(first.start, |c| c.start);
        let from = (begin.max(first.start) - first.start) as usize;
        let len = (self.samples.len() - from).min(max_samples(self.rate, &self.params));
        let skip = self.samples.len() - len;
        let audio = self.samples.range(skip..).map(|&s| f32::from(s) / 32768.0).collect();
        Some(TurnSegment { audio, rate: self.rate, upto: self.position })
    }

    /// Applies the model's verdict for a segment. Complete clears the turn (audio up to
    /// the segment's end); frames appended while the model ran are kept and re-flagged, as
    /// if they had arrived after the verdict. Incomplete keeps everything.
    pub fn apply_verdict(&mut self, verdict: &TurnVerdict) {
        if !verdict.complete {
            return;
        }
        while let Some(c) = self.chunks.front().copied() {
            if c.end > verdict.upto {
                break;
            }
            self.chunks.pop_front();
            self.samples.drain(..(c.end - c.start) as usize);
        }
        self.speech_triggered = false;
        self.speech_start = None;
        self.silence_ms = 0.0;
        let later: Vec<Chunk> = self.chunks.iter().copied().collect();
        for c in later {
            let position = self.position;
            self.position = c.end; // speech start is the chunk's own arrival time
            self.track(c.speech, (c.end - c.start) as usize);
            self.position = position;
        }
    }

    /// Forgets the turn (the reference's `clear()`, also called when a turn ends elsewhere).
    pub fn clear(&mut self) {
        self.samples.clear();
        self.chunks.clear();
        self.speech_triggered = false;
        self.speech_start = None;
        self.silence_ms = 0.0;
    }
}

fn max_samples(rate: u32, params: &TurnParams) -> usize {
    (params.max_duration_secs * f64::from(rate)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analyzer(params: TurnParams) -> TurnSegmenter {
        TurnSegmenter::new(8000, params, 0.2)
    }

    /// Frames of 160 samples whose value is the frame index (to see what a segment holds).
    fn feed(a: &mut TurnSegmenter, from: usize, to: usize) -> Vec<bool> {
        (from..to).map(|i| a.append(&[i as i16; 160])).collect()
    }

    fn frames_in(seg: &TurnSegment) -> Vec<i16> {
        let mut ids: Vec<i16> = seg.audio.iter().map(|&x| (x * 32768.0).round() as i16).collect();
        ids.dedup();
        ids
    }

    #[test]
    fn segment_starts_pre_speech_plus_vad_start_before_speech() {
        let mut a = analyzer(TurnParams::default());
        feed(&mut a, 0, 100); // 2 s of non-speech
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 100, 150); // speech chunks: first ends at 101 × 160
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        // Speech start = end of frame 100; 0.7 s = 35 frames earlier is the end of frame 65,
        // exactly on the boundary, so frame 65 is included (t ≥ start).
        assert_eq!(frames_in(&seg).first(), Some(&65));
        assert_eq!(frames_in(&seg).last(), Some(&149));
        assert_eq!(seg.upto, 150 * 160);
    }

    #[test]
    fn reference_seed_keeps_only_the_vad_start_window() {
        let mut a = analyzer(TurnParams::reference_seed());
        feed(&mut a, 0, 50);
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 50, 60);
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        assert_eq!(frames_in(&seg).first(), Some(&(50 - 10)));
    }

    #[test]
    fn segment_is_capped_to_max_duration() {
        let mut a = analyzer(TurnParams::default());
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 0, 600); // 12 s of speech
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        assert_eq!(seg.audio.len(), 64_000);
        assert_eq!(frames_in(&seg).first(), Some(&200));
        // The ring never holds much more than the cap.
        assert!(a.samples.len() < 64_000 + 160);
    }

    #[test]
    fn incomplete_turn_completes_after_stop_secs_of_silence_without_the_model() {
        let mut a = analyzer(TurnParams::default());
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 0, 50);
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        a.apply_verdict(&TurnVerdict { probability: 0.2, complete: false, upto: seg.upto });
        assert!(a.speech_triggered());
        // 74 silent frames = 1.48 s: not yet; the 75th reaches 1.5 s.
        assert!(feed(&mut a, 50, 124).iter().all(|&c| !c));
        assert!(a.append(&[0; 160]));
        assert!(!a.speech_triggered() && a.chunks.is_empty());
    }

    #[test]
    fn new_speech_resets_the_silence_and_the_next_stop_rescores_the_whole_turn() {
        let mut a = analyzer(TurnParams::default());
        feed(&mut a, 0, 40);
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 40, 60);
        let first = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        a.apply_verdict(&TurnVerdict { probability: 0.1, complete: false, upto: first.upto });
        feed(&mut a, 60, 130); // 1.4 s of silence
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 130, 140);
        let second = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        assert_eq!(frames_in(&first)[0], frames_in(&second)[0], "same speech start");
        assert!(second.audio.len() > first.audio.len());
        assert!(feed(&mut a, 140, 214).iter().all(|&c| !c), "silence restarted at speech");
    }

    #[test]
    fn complete_verdict_clears_but_keeps_frames_that_arrived_meanwhile() {
        let mut a = analyzer(TurnParams::default());
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 0, 30);
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        feed(&mut a, 30, 33); // arrive while the model runs
        a.apply_verdict(&TurnVerdict { probability: 0.9, complete: true, upto: seg.upto });
        assert!(!a.speech_triggered());
        assert_eq!(a.chunks.len(), 3);
        assert_eq!(a.samples.len(), 3 * 160);
    }

    #[test]
    fn speech_during_inference_keeps_its_own_start_after_a_complete_verdict() {
        let mut a = analyzer(TurnParams::reference_seed());
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 0, 30);
        let seg = a.on_vad_event(VadEvent::SpeechStop).unwrap();
        a.on_vad_event(VadEvent::SpeechStart);
        feed(&mut a, 30, 32);
        a.apply_verdict(&TurnVerdict { probability: 0.9, complete: true, upto: seg.upto });
        assert!(a.speech_triggered());
        assert_eq!(a.speech_start, Some(31 * 160));
    }

    #[test]
    fn stop_without_any_audio_gives_no_segment() {
        let mut a = analyzer(TurnParams::default());
        assert!(a.on_vad_event(VadEvent::SpeechStop).is_none());
    }
}
