//! User turns: when the caller started and when they finished, from VAD edges, Smart Turn
//! verdicts and STT transcripts. Pure logic over explicit instants, so every race (late finals,
//! empty turns, speech resuming) is unit-tested without audio.
//!
//! Rules (the reference's user-turn strategies with Switchboard's defaults):
//! - a turn opens at a VAD start, or at any transcript with text while no turn is open;
//! - it ends when Smart Turn said *complete* (or its silence fallback did), some final text is
//!   in hand, and that text answered our `Finalize` — or the STT wait after the VAD stop passed;
//! - it never ends while VAD says the caller is speaking;
//! - a turn opened by a transcript alone (VAD never heard it) counts as complete;
//! - the watchdog force-ends an open turn after `stop_timeout` without any VAD or STT event.

use std::time::{Duration, Instant};

use super::endpoint::{Decision, Endpointer, Rule};

/// The STT p99 time-to-final the reference assumes; the wait after a VAD stop is this minus the
/// VAD stop window (0.35 − 0.2 = 0.15 s with our defaults).
pub const STT_P99: Duration = Duration::from_millis(350);

/// What the tracker tells the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnSignal {
    /// The caller started a turn (barge-in point).
    Started,
    /// The turn is over; `text` is its final transcripts joined (may be empty).
    Ended { text: String },
}

/// Why a turn ended (for analysis and logs; the decision rules do not depend on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Smart Turn scored the segment complete.
    SmartTurn,
    /// An incomplete verdict's silence fallback completed it.
    SilenceFallback,
    /// VAD never heard the turn: a final transcript alone completed it.
    SttOnly,
    /// Nothing completed it in time: the watchdog force-ended it.
    Watchdog,
    /// Smart Turn said incomplete (or was near its threshold) but the words looked finished:
    /// a short wait completed it.
    Words,
}

#[derive(Debug, Clone)]
struct OpenTurn {
    vad_speaking: bool,
    /// VAD took part in this turn (a start or stop was seen).
    vad_seen: bool,
    complete: bool,
    /// What set `complete` last.
    completed_by: EndReason,
    finals: Vec<String>,
    finalized: bool,
    stt_deadline: Option<Instant>,
    watchdog: Instant,
    /// Smart Turn's probability for the segment ending at the last VAD stop.
    probability: Option<f32>,
    /// Where the speech ended, at the last VAD stop.
    speech_ended: Option<Instant>,
    /// The text-aware decision's deadline: ends the turn by this instant if no speech comes.
    wait_until: Option<(Instant, EndReason)>,
}

/// One call's user-turn state.
#[derive(Debug, Clone)]
pub struct TurnTracker {
    vad_stop_window: Duration,
    stop_timeout: Duration,
    open: Option<OpenTurn>,
    /// Why the last turn ended (set with each `Ended`).
    last_end: Option<EndReason>,
    /// The text-aware decision with this caller's adaptive fallback; `None`: Smart Turn's
    /// verdict alone, with the pipeline's fixed silence fallback.
    endpointer: Option<Endpointer>,
    /// VAD's start window: a speech start is reported this long after the speech began.
    vad_start_window: Duration,
}

impl TurnTracker {
    /// `vad_stop_window` is the VAD's stop_secs; `stop_timeout` the watchdog.
    pub fn new(vad_stop_window: Duration, stop_timeout: Duration) -> Self {
        Self {
            vad_stop_window,
            stop_timeout,
            open: None,
            last_end: None,
            endpointer: None,
            vad_start_window: Duration::from_millis(200),
        }
    }

    /// Decides with the words and this caller's pauses too (see [`Endpointer`]).
    pub fn with_endpointer(mut self, endpointer: Endpointer, vad_start_window: Duration) -> Self {
        self.endpointer = Some(endpointer);
        self.vad_start_window = vad_start_window;
        self
    }

    /// Whether the text-aware decision is on.
    pub fn text_aware(&self) -> bool {
        self.endpointer.is_some()
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    fn stt_wait(&self) -> Duration {
        STT_P99.saturating_sub(self.vad_stop_window)
    }

    fn open_turn(&mut self, now: Instant) -> &mut OpenTurn {
        let watchdog = now + self.stop_timeout;
        self.open.get_or_insert(OpenTurn {
            vad_speaking: false,
            vad_seen: false,
            complete: false,
            completed_by: EndReason::Watchdog,
            finals: Vec::new(),
            finalized: false,
            stt_deadline: None,
            watchdog,
            probability: None,
            speech_ended: None,
            wait_until: None,
        })
    }

    /// VAD heard speech start.
    pub fn vad_start(&mut self, now: Instant) -> Option<TurnSignal> {
        let started = self.open.is_none();
        let timeout = self.stop_timeout;
        let start_window = self.vad_start_window;
        let turn = self.open_turn(now);
        // The caller went on after a pause VAD had called a stop: this caller's pause length.
        let pause = turn.speech_ended.take().map(|ended| (now - start_window).saturating_duration_since(ended));
        turn.probability = None;
        turn.wait_until = None;
        turn.vad_speaking = true;
        turn.vad_seen = true;
        // Speech resumed: any earlier verdict is stale, the next stop re-runs the model, and a
        // finalized result no longer covers everything said (Pipecat clears it here too).
        turn.complete = false;
        turn.finalized = false;
        turn.stt_deadline = None;
        turn.watchdog = now + timeout;
        if let (Some(pause), Some(e)) = (pause, &mut self.endpointer) {
            e.observe_pause(pause);
        }
        started.then_some(TurnSignal::Started)
    }

    /// VAD heard speech stop (the engine sends STT `Finalize` and runs Smart Turn now).
    pub fn vad_stop(&mut self, now: Instant) {
        let wait = self.stt_wait();
        let timeout = self.stop_timeout;
        let stop_window = self.vad_stop_window;
        if let Some(turn) = &mut self.open {
            turn.vad_speaking = false;
            turn.vad_seen = true;
            turn.stt_deadline = Some(now + wait);
            turn.watchdog = now + timeout;
            turn.speech_ended = Some(now - stop_window);
        }
    }

    /// Smart Turn's probability for the segment ending at the last VAD stop. With the
    /// text-aware decision on, the words decide together with it once they are in hand;
    /// otherwise `probability > 0.5` is the verdict.
    pub fn verdict_scored(&mut self, probability: f32, now: Instant) -> Option<TurnSignal> {
        if self.endpointer.is_none() {
            return self.verdict(probability > 0.5, now);
        }
        let timeout = self.stop_timeout;
        let turn = self.open.as_mut()?;
        if turn.vad_speaking {
            return None;
        }
        turn.probability = Some(probability);
        turn.wait_until = None;
        turn.watchdog = now + timeout;
        self.poll(now)
    }

    /// Smart Turn's verdict for the segment ending at the last VAD stop (or its silence fallback).
    pub fn verdict(&mut self, complete: bool, now: Instant) -> Option<TurnSignal> {
        self.verdict_by(complete, EndReason::SmartTurn, now)
    }

    /// The pipeline's silence fallback after an incomplete verdict: complete, by the clock.
    /// The text-aware decision keeps its own (adaptive) fallback and takes this one only when
    /// no verdict came at all.
    pub fn fallback(&mut self, now: Instant) -> Option<TurnSignal> {
        if self.endpointer.is_some() && self.open.as_ref().is_some_and(|t| t.probability.is_some()) {
            return self.poll(now);
        }
        self.verdict_by(true, EndReason::SilenceFallback, now)
    }

    fn verdict_by(&mut self, complete: bool, by: EndReason, now: Instant) -> Option<TurnSignal> {
        let timeout = self.stop_timeout;
        let turn = self.open.as_mut()?;
        if turn.vad_speaking {
            return None; // the caller went on talking while the model ran
        }
        turn.complete = complete;
        turn.completed_by = by;
        turn.watchdog = now + timeout;
        self.poll(now)
    }

    /// A transcript from STT.
    pub fn transcript(&mut self, text: &str, is_final: bool, from_finalize: bool, now: Instant) -> Option<TurnSignal> {
        let text = text.trim();
        let started = self.open.is_none() && !text.is_empty();
        if self.open.is_none() && !started {
            return None; // an empty result between turns carries nothing
        }
        let timeout = self.stop_timeout;
        let wait = self.stt_wait();
        let turn = self.open_turn(now);
        turn.watchdog = now + timeout;
        if is_final {
            if !text.is_empty() {
                turn.finals.push(text.to_string());
            }
            if from_finalize {
                turn.finalized = true;
            }
            if !turn.vad_seen {
                // VAD never heard this speech: the transcript alone decides the turn.
                turn.complete = true;
                turn.completed_by = EndReason::SttOnly;
                turn.stt_deadline.get_or_insert(now + wait);
            }
        } else if !text.is_empty() {
            turn.finalized = false;
        }
        if started {
            return Some(TurnSignal::Started);
        }
        self.poll(now)
    }

    /// Ends the turn when its conditions hold at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<TurnSignal> {
        let turn = self.open.as_ref()?;
        if turn.vad_speaking {
            return None;
        }
        let text_ready = !turn.finals.is_empty() && (turn.finalized || turn.stt_deadline.is_some_and(|d| now >= d));
        // Our Finalize was answered with nothing: the caller said nothing recognisable.
        let empty_ready = turn.finals.is_empty() && turn.finalized;
        if turn.vad_seen && !turn.complete && (text_ready || empty_ready) {
            self.decide_with_words(now);
        }
        let turn = self.open.as_ref()?;
        let completed = turn.complete && (text_ready || empty_ready);
        if !completed && now < turn.watchdog {
            return None;
        }
        let turn = self.open.take()?;
        self.last_end = Some(if completed { turn.completed_by } else { EndReason::Watchdog });
        Some(TurnSignal::Ended { text: turn.finals.join(" ") })
    }

    /// The text-aware decision, once a verdict and the words are in hand: complete now, or
    /// complete at a deadline after the end of speech unless the caller goes on.
    fn decide_with_words(&mut self, now: Instant) {
        let (Some(endpointer), Some(turn)) = (&self.endpointer, &mut self.open) else { return };
        let Some(probability) = turn.probability else { return };
        let ended = turn.speech_ended.unwrap_or(now);
        let (deadline, reason) = match turn.wait_until {
            Some(w) => w,
            None => {
                let text = turn.finals.join(" ");
                let (decision, rule) = endpointer.decide(probability, &text);
                let reason = match rule {
                    Rule::Model | Rule::WordsContinue => EndReason::SmartTurn,
                    Rule::WordsFinished | Rule::Margin => EndReason::Words,
                    Rule::Fallback => EndReason::SilenceFallback,
                };
                let deadline = match decision {
                    Decision::End => now,
                    Decision::Wait(d) => ended + d,
                };
                tracing::debug!(probability, text = %text, ?rule, wait_ms = deadline.saturating_duration_since(ended).as_millis() as u64, "end of turn decision");
                turn.wait_until = Some((deadline, reason));
                (deadline, reason)
            }
        };
        if now >= deadline {
            turn.complete = true;
            turn.completed_by = reason;
        }
    }

    /// Why the turn behind the last `Ended` ended.
    pub fn last_end_reason(&self) -> Option<EndReason> {
        self.last_end
    }

    /// The next instant `poll` may change its answer.
    pub fn next_deadline(&self) -> Option<Instant> {
        let turn = self.open.as_ref()?;
        if turn.vad_speaking {
            return None; // VAD will report the stop; nothing times out while speaking
        }
        let stt = turn.stt_deadline.filter(|_| {
            let waits_for_words = turn.complete || (self.endpointer.is_some() && turn.probability.is_some());
            waits_for_words && !turn.finals.is_empty() && !turn.finalized
        });
        let decided = turn.wait_until.map(|(d, _)| d).filter(|_| !turn.complete);
        Some([Some(turn.watchdog), stt, decided].into_iter().flatten().min().unwrap_or(turn.watchdog))
    }

    /// The caller spoke again within VAD's stop window (no VAD start edge): a `Finalize`
    /// answered so far no longer covers everything said, and the STT wait starts over.
    pub fn speech_resumed(&mut self) {
        if let Some(turn) = &mut self.open {
            turn.finalized = false;
            turn.stt_deadline = None;
            turn.wait_until = None;
        }
    }

    /// The open turn's text if it is already final and answered our `Finalize`: what the turn
    /// will say unless the caller goes on talking (the basis for a speculative reply). VAD may
    /// still report speech: the engine asks during the stop window.
    pub fn settled_text(&self) -> Option<String> {
        let turn = self.open.as_ref()?;
        (turn.finalized && !turn.finals.is_empty()).then(|| turn.finals.join(" "))
    }

    /// Forgets any open turn (the call is ending).
    pub fn reset(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn tracker() -> TurnTracker {
        TurnTracker::new(ms(200), ms(2000))
    }

    #[test]
    fn settled_text_needs_a_finalized_final_and_is_cleared_by_more_words() {
        let t0 = Instant::now();
        let mut t = tracker();
        assert_eq!(t.settled_text(), None, "no turn");
        t.vad_start(t0);
        assert_eq!(t.transcript("I would like", false, false, t0 + ms(300)), None);
        assert_eq!(t.settled_text(), None, "interim only");
        t.transcript("I would like to order", true, true, t0 + ms(700));
        assert_eq!(t.settled_text().as_deref(), Some("I would like to order"), "asked during the pause");
        t.transcript("a pizza", false, false, t0 + ms(900));
        assert_eq!(t.settled_text(), None, "the caller went on");
        t.transcript("a pizza", true, true, t0 + ms(1200));
        assert_eq!(t.settled_text().as_deref(), Some("I would like to order a pizza"));
    }

    #[test]
    fn speech_resuming_in_the_stop_window_undoes_an_earlier_finalize() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.transcript("I would like to order", true, true, t0 + ms(700));
        t.speech_resumed();
        assert_eq!(t.settled_text(), None);
        t.vad_stop(t0 + ms(1500));
        assert_eq!(t.verdict(true, t0 + ms(1540)), None, "waits for the words after the pause");
        assert_eq!(
            t.transcript("a pizza", true, true, t0 + ms(1560)),
            Some(TurnSignal::Ended { text: "I would like to order a pizza".into() })
        );
    }

    #[test]
    fn finalized_text_and_complete_verdict_end_the_turn_at_once() {
        let t0 = Instant::now();
        let mut t = tracker();
        assert_eq!(t.vad_start(t0), Some(TurnSignal::Started));
        assert_eq!(t.transcript("what time", false, false, t0 + ms(300)), None);
        t.vad_stop(t0 + ms(900));
        assert_eq!(t.transcript("What time is it?", true, true, t0 + ms(950)), None, "no verdict yet");
        assert_eq!(t.verdict(true, t0 + ms(960)), Some(TurnSignal::Ended { text: "What time is it?".into() }));
        assert!(!t.is_open());
    }

    #[test]
    fn a_final_without_finalize_waits_for_the_stt_window() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.transcript("Yes.", true, false, t0 + ms(100));
        t.vad_stop(t0 + ms(400));
        assert_eq!(t.verdict(true, t0 + ms(450)), None, "might still get a finalized result");
        assert_eq!(t.next_deadline(), Some(t0 + ms(550)));
        assert_eq!(t.poll(t0 + ms(549)), None);
        assert_eq!(t.poll(t0 + ms(550)), Some(TurnSignal::Ended { text: "Yes.".into() }));
    }

    #[test]
    fn an_incomplete_verdict_keeps_the_turn_open_until_speech_resumes_and_completes() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(500));
        t.transcript("I'd like to", true, true, t0 + ms(550));
        assert_eq!(t.verdict(false, t0 + ms(560)), None);
        assert_eq!(t.vad_start(t0 + ms(900)), None, "same turn");
        t.vad_stop(t0 + ms(1500));
        t.transcript("book a table.", true, true, t0 + ms(1550));
        assert_eq!(
            t.verdict(true, t0 + ms(1560)),
            Some(TurnSignal::Ended { text: "I'd like to book a table.".into() })
        );
    }

    #[test]
    fn resumed_speech_needs_a_new_finalized_result() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(500));
        t.transcript("I'd like to", true, true, t0 + ms(520));
        assert_eq!(t.verdict(false, t0 + ms(530)), None);
        t.vad_start(t0 + ms(800));
        t.vad_stop(t0 + ms(1500));
        // Complete, but the words after the pause have not come back yet: wait for them.
        assert_eq!(t.verdict(true, t0 + ms(1540)), None);
        assert_eq!(
            t.transcript("book a table.", true, true, t0 + ms(1560)),
            Some(TurnSignal::Ended { text: "I'd like to book a table.".into() })
        );
    }

    #[test]
    fn speech_while_the_model_ran_discards_the_verdict() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(500));
        t.transcript("Hello", true, true, t0 + ms(520));
        t.vad_start(t0 + ms(530));
        assert_eq!(t.verdict(true, t0 + ms(540)), None);
        assert!(t.is_open());
    }

    #[test]
    fn an_empty_finalize_answer_ends_an_empty_turn() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(300));
        t.verdict(true, t0 + ms(310));
        assert_eq!(t.transcript("", true, true, t0 + ms(400)), Some(TurnSignal::Ended { text: String::new() }));
    }

    #[test]
    fn the_watchdog_force_ends_a_quiet_turn() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(300));
        t.verdict(false, t0 + ms(310));
        assert_eq!(t.next_deadline(), Some(t0 + ms(2310)));
        assert_eq!(t.poll(t0 + ms(2309)), None);
        assert_eq!(t.poll(t0 + ms(2310)), Some(TurnSignal::Ended { text: String::new() }));
    }

    #[test]
    fn never_ends_while_vad_says_speaking() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.transcript("long story", true, true, t0 + ms(100));
        assert_eq!(t.poll(t0 + ms(10_000)), None);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn a_transcript_alone_opens_and_ends_a_turn() {
        let t0 = Instant::now();
        let mut t = tracker();
        assert_eq!(t.transcript("", false, false, t0), None, "empty results open nothing");
        assert_eq!(t.transcript("Yes", false, false, t0), Some(TurnSignal::Started));
        assert_eq!(t.transcript("Yes.", true, false, t0 + ms(50)), None);
        assert_eq!(t.poll(t0 + ms(200)), Some(TurnSignal::Ended { text: "Yes.".into() }));
    }

    #[test]
    fn the_end_reason_names_the_rule_that_completed_the_turn() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(300));
        t.transcript("so I was", true, true, t0 + ms(320));
        assert_eq!(t.verdict(false, t0 + ms(340)), None);
        assert_eq!(t.fallback(t0 + ms(1800)), Some(TurnSignal::Ended { text: "so I was".into() }));
        assert_eq!(t.last_end_reason(), Some(EndReason::SilenceFallback));

        t.vad_start(t0 + ms(2000));
        t.vad_stop(t0 + ms(2500));
        t.transcript("Thanks.", true, true, t0 + ms(2520));
        assert!(t.verdict(true, t0 + ms(2540)).is_some());
        assert_eq!(t.last_end_reason(), Some(EndReason::SmartTurn));

        t.transcript("Yes.", true, false, t0 + ms(3000));
        assert!(t.poll(t0 + ms(3200)).is_some());
        assert_eq!(t.last_end_reason(), Some(EndReason::SttOnly), "VAD never heard it");

        t.vad_start(t0 + ms(4000));
        t.vad_stop(t0 + ms(4300));
        t.verdict(false, t0 + ms(4310));
        assert!(t.poll(t0 + ms(6310)).is_some());
        assert_eq!(t.last_end_reason(), Some(EndReason::Watchdog));
    }

    #[test]
    fn an_interim_after_finalize_clears_the_finalized_flag() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(300));
        t.transcript("Okay.", true, true, t0 + ms(320));
        t.transcript("and", false, false, t0 + ms(330));
        assert_eq!(t.verdict(true, t0 + ms(340)), None, "more words are coming");
        assert_eq!(t.poll(t0 + ms(450)), Some(TurnSignal::Ended { text: "Okay.".into() }));
    }

    fn text_aware() -> TurnTracker {
        TurnTracker::new(ms(200), ms(2000))
            .with_endpointer(Endpointer::new(super::super::endpoint::tests::params()), ms(200))
    }

    /// One VAD-heard stretch of speech from `t`, stopping at `stop` with `final_text` answering
    /// the Finalize at `stop + 20 ms` and a verdict of `p` at `stop + 30 ms`.
    fn spoken(t: &mut TurnTracker, start: Instant, stop: Instant, final_text: &str, p: f32) -> Option<TurnSignal> {
        t.vad_start(start);
        t.vad_stop(stop);
        t.transcript(final_text, true, true, stop + ms(20)).or_else(|| t.verdict_scored(p, stop + ms(30)))
    }

    #[test]
    fn a_complete_verdict_over_a_trailing_conjunction_waits_and_the_caller_goes_on() {
        let t0 = Instant::now();
        let mut t = text_aware();
        assert_eq!(spoken(&mut t, t0, t0 + ms(1500), "I'd like a table for two and", 0.93), None, "held");
        let deadline = t.next_deadline().unwrap();
        assert_eq!(deadline, t0 + ms(1300) + ms(1000), "the hold runs from the end of speech");
        // The caller goes on before the hold ends: one turn with all the words.
        t.vad_start(t0 + ms(2300));
        t.vad_stop(t0 + ms(3500));
        t.transcript("a high chair.", true, true, t0 + ms(3520));
        assert_eq!(
            t.verdict_scored(0.9, t0 + ms(3530)),
            Some(TurnSignal::Ended { text: "I'd like a table for two and a high chair.".into() })
        );
        assert_eq!(t.last_end_reason(), Some(EndReason::SmartTurn));
    }

    #[test]
    fn a_held_turn_ends_at_the_hold_when_no_speech_comes() {
        let t0 = Instant::now();
        let mut t = text_aware();
        spoken(&mut t, t0, t0 + ms(1500), "so the thing is that the", 0.9);
        assert_eq!(t.poll(t0 + ms(2200)), None);
        assert!(matches!(t.poll(t0 + ms(2300)), Some(TurnSignal::Ended { .. })));
    }

    #[test]
    fn an_incomplete_verdict_over_finished_words_ends_after_the_short_wait_not_the_fallback() {
        let t0 = Instant::now();
        let mut t = text_aware();
        assert_eq!(spoken(&mut t, t0, t0 + ms(1500), "They took the cross-town bus.", 0.2), None);
        assert_eq!(t.next_deadline(), Some(t0 + ms(1300) + ms(600)));
        assert_eq!(t.poll(t0 + ms(1850)), None);
        assert!(matches!(t.poll(t0 + ms(1900)), Some(TurnSignal::Ended { .. })));
        assert_eq!(t.last_end_reason(), Some(EndReason::Words));
    }

    #[test]
    fn near_the_threshold_finished_words_end_the_turn_at_once() {
        let t0 = Instant::now();
        let mut t = text_aware();
        let ended = spoken(&mut t, t0, t0 + ms(1500), "Go ahead.", 0.42);
        assert_eq!(ended, Some(TurnSignal::Ended { text: "Go ahead.".into() }));
        assert_eq!(t.last_end_reason(), Some(EndReason::Words));
    }

    #[test]
    fn the_verdict_waits_for_the_words_before_deciding() {
        let t0 = Instant::now();
        let mut t = text_aware();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(1500));
        assert_eq!(t.verdict_scored(0.95, t0 + ms(1530)), None, "no words yet");
        assert_eq!(t.transcript("and then um", true, true, t0 + ms(1600)), None, "held by the filler");
        let mut t = text_aware();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(1500));
        t.verdict_scored(0.95, t0 + ms(1530));
        assert!(t.transcript("That's all.", true, true, t0 + ms(1600)).is_some());
    }

    #[test]
    fn a_caller_who_pauses_long_gets_a_longer_fallback() {
        let t0 = Instant::now();
        let mut t = text_aware();
        // Three mid-sentence pauses of ~1.4 s (speech end → next speech start).
        let mut at = t0;
        for _ in 0..3 {
            spoken(&mut t, at, at + ms(1000), "and then the", 0.1);
            at += ms(1000) - ms(200) + ms(1400) + ms(200);
        }
        spoken(&mut t, at, at + ms(1000), "and so", 0.1);
        let wait = t.next_deadline().unwrap() - (at + ms(800));
        assert!(wait > ms(1500), "longer than the default fallback: {wait:?}");
        // The pipeline's own 1.5 s fallback does not cut it short.
        assert_eq!(t.fallback(at + ms(800) + ms(1500)), None);
    }

    #[test]
    fn the_pipeline_fallback_still_ends_a_turn_that_got_no_verdict() {
        let t0 = Instant::now();
        let mut t = text_aware();
        t.vad_start(t0);
        t.vad_stop(t0 + ms(1000));
        t.transcript("hello", true, true, t0 + ms(1020));
        assert!(matches!(t.fallback(t0 + ms(2300)), Some(TurnSignal::Ended { .. })));
        assert_eq!(t.last_end_reason(), Some(EndReason::SilenceFallback));
    }
}
