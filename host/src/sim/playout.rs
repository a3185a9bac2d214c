//! Twilio's side of bot audio: a playout buffer that plays 160 μ-law bytes per 20 ms of call time,
//! echoes a `mark` once the audio queued before it has finished playing, and empties itself on
//! `clear` — returning every pending mark at once, as Twilio documents for `clear`.
//!
//! Time is counted in ticks: tick `n` happens at `n × 20 ms` of call time and starts playing the
//! frame heard during `[n × 20, n × 20 + 20)` ms. Pure state, no I/O: the stream loop drives it.
//!
//! **Underruns** (audio the bot delivered late): the buffer runs dry during a talk spurt — audio
//! was played in the previous tick, some arrived within the last [`SPURT_TICKS`] ticks, and no
//! `mark`/`clear` has come since the last audio (a mark closes an utterance, so the silence after
//! it is intended) — and then more audio arrives before any `mark`/`clear`. One underrun per dry
//! period; its length is summed in `underrun_ms`. A bot that never sends marks can't say where its
//! utterances end, so for it a dry period longer than [`MAX_GAP_TICKS_WITHOUT_MARKS`] counts as a
//! pause between utterances rather than an underrun.

use std::collections::VecDeque;

use super::caller::{FRAME_MS, FRAME_SAMPLES};

/// Audio arrived within this many ticks (200 ms) ⇒ a talk spurt is in progress.
pub const SPURT_TICKS: u64 = 10;
/// For bots without marks: longer dry periods (1 s) are pauses, not underruns.
pub const MAX_GAP_TICKS_WITHOUT_MARKS: u64 = 50;
/// μ-law code for silence.
pub const MULAW_SILENCE: u8 = 0xFF;

/// The queue would exceed its limit; the audio was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("playout buffer full ({queued} bytes queued, limit {limit}); {dropped} bytes dropped")]
pub struct Overflow {
    pub queued: usize,
    pub limit: usize,
    pub dropped: usize,
}

/// Marks waiting for their audio at most.
pub const MAX_PENDING_MARKS: usize = 10_000;

/// The bot sent more marks than can wait for their audio; the mark was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {MAX_PENDING_MARKS} marks waiting for their audio; mark dropped")]
pub struct TooManyMarks;

/// What one tick played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Played {
    /// Bytes of bot audio in this frame (the rest is silence).
    pub audio_bytes: usize,
}

/// The playout buffer of one call.
#[derive(Debug)]
pub struct CallerPlayout {
    queue: VecDeque<u8>,
    max_bytes: usize,
    /// Total bytes ever queued / taken out (played or cleared): positions of marks.
    enqueued: u64,
    consumed: u64,
    /// Pending marks: (position in the byte stream, name).
    marks: VecDeque<(u64, String)>,
    last_tick: Option<u64>,
    last_audio_tick: Option<u64>,
    /// The latest tick processed when audio last arrived.
    last_arrival_tick: Option<u64>,
    /// A mark or clear came after the last audio: the utterance is over.
    spurt_closed: bool,
    seen_marks: bool,
    dry_since: Option<u64>,
    underruns: u32,
    underrun_ticks: u64,
}

impl CallerPlayout {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            queue: VecDeque::with_capacity(FRAME_SAMPLES * 50),
            max_bytes,
            enqueued: 0,
            consumed: 0,
            marks: VecDeque::new(),
            last_tick: None,
            last_audio_tick: None,
            last_arrival_tick: None,
            spurt_closed: true,
            seen_marks: false,
            dry_since: None,
            underruns: 0,
            underrun_ticks: 0,
        }
    }

    /// Queues bot audio that arrived now (after the latest tick).
    pub fn push_audio(&mut self, audio: &[u8]) -> Result<(), Overflow> {
        let now = self.last_tick.unwrap_or(0);
        if let Some(dry) = self.dry_since.take() {
            let gap = now.saturating_sub(dry) + 1;
            if self.seen_marks || gap <= MAX_GAP_TICKS_WITHOUT_MARKS {
                self.underruns += 1;
                self.underrun_ticks += gap;
            }
        }
        if audio.is_empty() {
            return Ok(());
        }
        self.last_arrival_tick = Some(now);
        self.spurt_closed = false;
        let room = self.max_bytes.saturating_sub(self.queue.len());
        let take = audio.len().min(room);
        self.queue.extend(&audio[..take]);
        self.enqueued += take as u64;
        if take < audio.len() {
            return Err(Overflow { queued: self.queue.len(), limit: self.max_bytes, dropped: audio.len() - take });
        }
        Ok(())
    }

    /// Handles a `mark` from the bot; a mark with nothing left to play is echoed at once (pushed
    /// to `echo`), otherwise when its audio has played. Past [`MAX_PENDING_MARKS`] waiting, the
    /// mark is dropped.
    pub fn push_mark(&mut self, name: String, echo: &mut Vec<String>) -> Result<(), TooManyMarks> {
        self.seen_marks = true;
        self.spurt_closed = true;
        self.dry_since = None;
        let nothing_ahead = self.queue.is_empty() && self.marks.is_empty();
        let still_playing = matches!((self.last_audio_tick, self.last_tick), (Some(a), Some(t)) if a >= t);
        if nothing_ahead && !still_playing {
            echo.push(name);
        } else if self.marks.len() >= MAX_PENDING_MARKS {
            return Err(TooManyMarks);
        } else {
            self.marks.push_back((self.enqueued, name));
        }
        Ok(())
    }

    /// Handles `clear`: drops queued audio and returns every pending mark at once.
    pub fn clear(&mut self, echo: &mut Vec<String>) {
        self.consumed += self.queue.len() as u64;
        self.queue.clear();
        echo.extend(self.marks.drain(..).map(|(_, name)| name));
        self.spurt_closed = true;
        self.dry_since = None;
    }

    /// Runs tick `n`: echoes marks whose audio finished by now, then takes the next frame into
    /// `frame` (silence-padded).
    pub fn tick(&mut self, n: u64, frame: &mut [u8; FRAME_SAMPLES], echo: &mut Vec<String>) -> Played {
        while self.marks.front().is_some_and(|(pos, _)| *pos <= self.consumed) {
            if let Some((_, name)) = self.marks.pop_front() {
                echo.push(name);
            }
        }
        let take = self.queue.len().min(FRAME_SAMPLES);
        for (slot, byte) in frame.iter_mut().zip(self.queue.drain(..take)) {
            *slot = byte;
        }
        frame[take..].fill(MULAW_SILENCE);
        self.consumed += take as u64;
        self.note_dry(n, take);
        if take > 0 {
            self.last_audio_tick = Some(n);
        }
        self.last_tick = Some(n);
        Played { audio_bytes: take }
    }

    fn note_dry(&mut self, n: u64, took: usize) {
        if took == FRAME_SAMPLES || self.dry_since.is_some() || self.spurt_closed {
            return;
        }
        let was_playing = took > 0 || self.last_audio_tick.is_some_and(|a| a + 1 == n);
        let recent = self.last_arrival_tick.is_some_and(|a| n.saturating_sub(a) <= SPURT_TICKS);
        if was_playing && recent {
            self.dry_since = Some(n);
        }
    }

    /// Bytes waiting to be played.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Marks waiting for their audio to play.
    pub fn pending_marks(&self) -> usize {
        self.marks.len()
    }

    pub fn underruns(&self) -> u32 {
        self.underruns
    }

    /// Total silence inserted by underruns.
    pub fn underrun_ms(&self) -> u64 {
        self.underrun_ticks * FRAME_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> [u8; FRAME_SAMPLES] {
        [0; FRAME_SAMPLES]
    }

    #[test]
    fn mark_is_echoed_once_its_audio_has_played() {
        let mut p = CallerPlayout::new(1 << 20);
        let mut echo = Vec::new();
        let mut f = frame();
        p.tick(1, &mut f, &mut echo);
        p.push_audio(&[1; 400]).unwrap(); // 2.5 frames
        p.push_mark("m".into(), &mut echo).unwrap();
        assert!(echo.is_empty());
        assert_eq!(p.tick(2, &mut f, &mut echo).audio_bytes, 160);
        assert_eq!(p.tick(3, &mut f, &mut echo).audio_bytes, 160);
        assert_eq!(p.tick(4, &mut f, &mut echo).audio_bytes, 80);
        assert_eq!(f[79], 1);
        assert_eq!(f[80], MULAW_SILENCE);
        assert!(echo.is_empty(), "the last half frame is still playing");
        p.tick(5, &mut f, &mut echo);
        assert_eq!(echo, vec!["m".to_string()]);
    }

    #[test]
    fn mark_with_nothing_queued_is_echoed_at_once_unless_audio_is_still_playing() {
        let mut p = CallerPlayout::new(1 << 20);
        let mut echo = Vec::new();
        let mut f = frame();
        p.push_mark("first".into(), &mut echo).unwrap();
        assert_eq!(echo, ["first"]);
        p.push_audio(&[1; 160]).unwrap();
        p.tick(1, &mut f, &mut echo);
        p.push_mark("second".into(), &mut echo).unwrap();
        assert_eq!(echo, ["first"], "frame 1 is still playing");
        p.tick(2, &mut f, &mut echo);
        assert_eq!(echo, ["first", "second"]);
        p.push_mark("third".into(), &mut echo).unwrap();
        assert_eq!(echo, ["first", "second", "third"]);
    }

    #[test]
    fn clear_drops_audio_and_returns_pending_marks_in_order() {
        let mut p = CallerPlayout::new(1 << 20);
        let mut echo = Vec::new();
        let mut f = frame();
        p.push_audio(&[1; 1600]).unwrap();
        p.push_mark("a".into(), &mut echo).unwrap();
        p.push_audio(&[2; 1600]).unwrap();
        p.push_mark("b".into(), &mut echo).unwrap();
        p.tick(1, &mut f, &mut echo);
        p.clear(&mut echo);
        assert_eq!(echo, ["a", "b"]);
        assert_eq!((p.queued(), p.pending_marks()), (0, 0));
        assert_eq!(p.tick(2, &mut f, &mut echo).audio_bytes, 0);
        assert_eq!(f, [MULAW_SILENCE; FRAME_SAMPLES]);
        // Audio after the clear plays and its mark comes back normally.
        p.push_audio(&[3; 160]).unwrap();
        p.push_mark("c".into(), &mut echo).unwrap();
        p.tick(3, &mut f, &mut echo);
        assert_eq!(f[0], 3);
        p.tick(4, &mut f, &mut echo);
        assert_eq!(echo, ["a", "b", "c"]);
    }

    #[test]
    fn late_chunk_inside_a_spurt_is_an_underrun_but_the_end_of_an_utterance_is_not() {
        let mut p = CallerPlayout::new(1 << 20);
        let mut echo = Vec::new();
        let mut f = frame();
        p.push_audio(&[1; 320]).unwrap();
        p.tick(1, &mut f, &mut echo);
        p.tick(2, &mut f, &mut echo);
        p.tick(3, &mut f, &mut echo); // dry
        p.tick(4, &mut f, &mut echo);
        p.push_audio(&[1; 320]).unwrap(); // arrives 2 ticks late
        assert_eq!(p.underruns(), 1);
        assert_eq!(p.underrun_ms(), 40);
        p.push_mark("end".into(), &mut echo).unwrap();
        for n in 5..20 {
            p.tick(n, &mut f, &mut echo);
        }
        p.push_audio(&[1; 160]).unwrap(); // next utterance after a mark: not an underrun
        assert_eq!(p.underruns(), 1);
    }

    #[test]
    fn long_pause_of_a_bot_without_marks_is_not_an_underrun() {
        let mut p = CallerPlayout::new(1 << 20);
        let mut echo = Vec::new();
        let mut f = frame();
        p.push_audio(&[1; 160]).unwrap();
        for n in 1..=(2 + MAX_GAP_TICKS_WITHOUT_MARKS) {
            p.tick(n, &mut f, &mut echo);
        }
        p.push_audio(&[1; 160]).unwrap();
        assert_eq!(p.underruns(), 0);
    }

    #[test]
    fn audio_dumped_long_ago_running_out_is_not_a_spurt() {
        let mut p = CallerPlayout::new(1 << 20);
        let mut echo = Vec::new();
        let mut f = frame();
        p.push_audio(&[1; 160 * 30]).unwrap();
        for n in 1..=32 {
            p.tick(n, &mut f, &mut echo);
        }
        p.push_audio(&[1; 160]).unwrap();
        assert_eq!(p.underruns(), 0);
    }

    #[test]
    fn pending_marks_are_bounded() {
        let mut p = CallerPlayout::new(1 << 20);
        let mut echo = Vec::new();
        p.push_audio(&[1; 160]).unwrap();
        for i in 0..MAX_PENDING_MARKS {
            assert!(p.push_mark(i.to_string(), &mut echo).is_ok());
        }
        assert_eq!(p.push_mark("one too many".into(), &mut echo), Err(TooManyMarks));
        assert_eq!(p.pending_marks(), MAX_PENDING_MARKS);
    }

    #[test]
    fn overflow_is_reported_and_bounded() {
        let mut p = CallerPlayout::new(300);
        assert!(p.push_audio(&[1; 200]).is_ok());
        let err = p.push_audio(&[1; 200]).unwrap_err();
        assert_eq!(err, Overflow { queued: 300, limit: 300, dropped: 100 });
    }
}
