//! The end-of-turn decision at a VAD stop: Smart Turn's probability and the caller's words
//! together. Pure logic, so every rule is unit-tested on scripted verdicts and finals.
//!
//! Why the words: on real speech the int8 Smart Turn says *complete* at many mid-sentence
//! pauses (the speaker stops after "about", "and", "the") and *incomplete* after short finished
//! answers ("Go ahead.", a sentence read out), and its output moves between CPUs by more than
//! its own margin. The STT final arrives inside the stop window (the early `Finalize`), so the
//! words are in hand when the verdict is. Punctuation is not trusted: local recognizers end
//! every fragment with a full stop. The last word is: a trailing conjunction, article,
//! preposition or filler says the speaker is going on.
//!
//! The silence fallback adapts to the caller: every pause they went on after feeds an EMA,
//! and a caller who pauses long mid-sentence gets a longer wait (LiveKit's dynamic endpointing
//! does the same), one who never does keeps the default.

use std::time::Duration;

/// What the last word says about the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Words {
    /// No words (nothing final yet, or nothing recognisable).
    None,
    /// Ends in a word a sentence can't end on, a comma or a dash: the caller is going on.
    Continues,
    /// A question mark, or a last word a sentence can end on.
    Finished,
}

/// Words after which an English sentence almost never ends: conjunctions, articles,
/// prepositions that need an object, possessives, subject pronouns and fillers. Words that end
/// sentences often enough are not here, measured on the labelled set: auxiliaries ("than he
/// was", "that's what it is"), particles ("standing by", "come in"), and short answers ("no",
/// "you", "it", "that", "me", "there", "well").
const CONTINUES: &[&str] = &[
    "a", "about", "an", "and", "because", "but", "cause", "er", "erm", "for", "from", "he", "her", "his", "hmm", "i",
    "i'd", "i'll", "i'm", "if", "into", "it's", "its", "just", "like", "my", "nor", "of", "or", "our", "she", "so",
    "some", "than", "that's", "the", "their", "there's", "they", "to", "uh", "um", "umm", "very", "we", "what's",
    "when", "which", "while", "who", "with", "your",
];

/// Classifies the text of the turn so far.
pub fn classify(text: &str) -> Words {
    let text = text.trim();
    let Some(last_char) = text.chars().last() else { return Words::None };
    if matches!(last_char, ',' | '-' | '—' | '–' | '…' | ';' | ':') || text.ends_with("...") {
        return Words::Continues;
    }
    let Some(last) = text.split_whitespace().last() else { return Words::None };
    let word: String = last
        .trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
        .chars()
        .map(|c| if c == '’' { '\'' } else { c.to_ascii_lowercase() })
        .collect();
    if word.is_empty() {
        return Words::None;
    }
    // The word before the question mark: recognizers write "Um?" and "And the?" at pauses.
    if CONTINUES.binary_search(&word.as_str()).is_ok() {
        Words::Continues
    } else {
        Words::Finished
    }
}

/// The knobs of the decision (persona-tunable through the WIT turn-taking record).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointParams {
    /// Smart Turn's complete/incomplete threshold.
    pub threshold: f32,
    /// Verdicts this close to the threshold are decided by the words (the int8 model's output
    /// spreads across CPUs by about this much).
    pub margin: f32,
    /// A complete verdict over words that continue waits this long after the speech ended.
    pub hold: Duration,
    /// An incomplete verdict over finished words waits this long after the speech ended.
    pub short_fallback: Duration,
    /// An incomplete verdict over words that continue (or no words): the silence fallback
    /// before this caller's pauses are known.
    pub fallback: Duration,
    /// The adaptive fallback stays within these.
    pub min_fallback: Duration,
    pub max_fallback: Duration,
    /// Weight of the newest pause in the EMA of the caller's pauses.
    pub pause_ema_weight: f64,
    /// The fallback is this many times the caller's typical pause (plus the hold's margin).
    pub pause_factor: f64,
}

impl Default for EndpointParams {
    fn default() -> Self {
        EndpointParams {
            threshold: 0.5,
            margin: 0.1,
            hold: Duration::from_millis(1500),
            short_fallback: Duration::from_millis(800),
            fallback: Duration::from_millis(1500),
            // Never shorter than the fixed fallback: a short adaptive one cut callers off at
            // pauses of 1–1.5 s on the labelled set; it only lengthens for slow talkers.
            min_fallback: Duration::from_millis(1500),
            // Within the 2 s turn watchdog, which restarts at the verdict ~0.25 s after the speech.
            max_fallback: Duration::from_millis(2000),
            pause_ema_weight: 0.3,
            pause_factor: 1.5,
        }
    }
}

/// What to do at a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The turn is over (once its final words are in hand).
    End,
    /// Wait for more speech; end the turn if none comes this long after the speech ended.
    Wait(Duration),
}

/// Why a wait was chosen, for the trace and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Confident complete verdict, words agree (or none).
    Model,
    /// Complete verdict, but the words continue.
    WordsContinue,
    /// Incomplete verdict, but the words look finished: a short fallback.
    WordsFinished,
    /// Near the threshold: the words decided.
    Margin,
    /// Incomplete verdict: the (adaptive) silence fallback.
    Fallback,
}

/// One caller's end-of-turn decisions.
#[derive(Debug, Clone)]
pub struct Endpointer {
    params: EndpointParams,
    /// EMA of the pauses this caller went on after, seconds.
    pause_ema: Option<f64>,
}

impl Endpointer {
    pub fn new(params: EndpointParams) -> Self {
        Endpointer { params, pause_ema: None }
    }

    pub fn params(&self) -> &EndpointParams {
        &self.params
    }

    /// The decision for a verdict of `probability` over the turn's words so far.
    pub fn decide(&self, probability: f32, text: &str) -> (Decision, Rule) {
        let p = &self.params;
        let words = classify(text);
        let confident_complete = probability >= p.threshold + p.margin;
        let confident_incomplete = probability < p.threshold - p.margin;
        match words {
            _ if confident_complete && words == Words::Continues => (Decision::Wait(p.hold), Rule::WordsContinue),
            _ if confident_complete => (Decision::End, Rule::Model),
            Words::Finished if confident_incomplete => (Decision::Wait(p.short_fallback), Rule::WordsFinished),
            Words::Finished => (Decision::End, Rule::Margin),
            Words::Continues if !confident_incomplete => (Decision::Wait(self.fallback()), Rule::Margin),
            Words::None if !confident_incomplete && probability >= p.threshold => (Decision::End, Rule::Model),
            _ => (Decision::Wait(self.fallback()), Rule::Fallback),
        }
    }

    /// The silence fallback for this caller now.
    pub fn fallback(&self) -> Duration {
        let p = &self.params;
        match self.pause_ema {
            None => p.fallback,
            Some(ema) => {
                let secs = (ema * p.pause_factor).clamp(p.min_fallback.as_secs_f64(), p.max_fallback.as_secs_f64());
                Duration::from_secs_f64(secs)
            }
        }
    }

    /// The caller went on after a pause of `pause` (speech end to speech start) inside a turn.
    pub fn observe_pause(&mut self, pause: Duration) {
        let secs = pause.as_secs_f64().min(self.params.max_fallback.as_secs_f64());
        let w = self.params.pause_ema_weight;
        self.pause_ema = Some(match self.pause_ema {
            None => secs,
            Some(ema) => ema + w * (secs - ema),
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Fixed values, so the rules are tested apart from the tuned defaults.
    pub(crate) fn params() -> EndpointParams {
        EndpointParams {
            threshold: 0.5,
            margin: 0.15,
            hold: ms(1000),
            short_fallback: ms(600),
            fallback: ms(1500),
            min_fallback: ms(1000),
            max_fallback: ms(2000),
            pause_ema_weight: 0.3,
            pause_factor: 1.5,
        }
    }

    #[test]
    fn the_continuation_list_is_sorted_for_binary_search() {
        assert!(CONTINUES.windows(2).all(|w| w[0] < w[1]), "CONTINUES must stay sorted and unique");
    }

    #[test]
    fn the_last_word_not_the_full_stop_says_whether_the_caller_goes_on() {
        assert_eq!(classify("I was thinking about."), Words::Continues, "a recognizer's stop after a pause");
        assert_eq!(classify("so what I'm having is the"), Words::Continues);
        assert_eq!(classify("Um."), Words::Continues);
        assert_eq!(classify("Press 1 to record your message,"), Words::Continues);
        assert_eq!(classify("I'd like to book a table and"), Words::Continues);
        assert_eq!(classify("They took the cross-town bus."), Words::Finished);
        assert_eq!(classify("Go ahead."), Words::Finished);
        assert_eq!(classify("Can you hear me"), Words::Finished);
        assert_eq!(classify("been made still more respectable than he was."), Words::Finished);
        assert_eq!(classify("calling CQ and standing by."), Words::Finished);
        assert_eq!(classify("What time is it?"), Words::Finished);
        assert_eq!(
            classify("I think they probably ought to. But Uh?"),
            Words::Continues,
            "a filler, whatever the mark"
        );
        assert_eq!(classify("No, really, um?"), Words::Continues);
        assert_eq!(classify("No."), Words::Finished, "a short answer");
        assert_eq!(classify("Thank you"), Words::Finished);
        assert_eq!(classify("I’M"), Words::Continues, "curly apostrophe and case");
        assert_eq!(classify("  "), Words::None);
        assert_eq!(classify("..."), Words::Continues);
    }

    #[test]
    fn a_complete_verdict_over_a_trailing_conjunction_waits() {
        let e = Endpointer::new(params());
        assert_eq!(e.decide(0.95, "I want to order a pizza and"), (Decision::Wait(ms(1000)), Rule::WordsContinue));
        assert_eq!(e.decide(0.95, "I want to order a pizza."), (Decision::End, Rule::Model));
        assert_eq!(e.decide(0.95, ""), (Decision::End, Rule::Model), "no words: the model decides");
    }

    #[test]
    fn an_incomplete_verdict_over_finished_words_does_not_wait_the_full_fallback() {
        let e = Endpointer::new(params());
        assert_eq!(e.decide(0.1, "They took the cross-town bus."), (Decision::Wait(ms(600)), Rule::WordsFinished));
        assert_eq!(e.decide(0.1, "so what I'm having is the"), (Decision::Wait(ms(1500)), Rule::Fallback));
        assert_eq!(e.decide(0.1, ""), (Decision::Wait(ms(1500)), Rule::Fallback));
    }

    #[test]
    fn near_the_threshold_the_words_decide_either_way() {
        let e = Endpointer::new(params());
        for p in [0.36, 0.45, 0.55, 0.64] {
            assert_eq!(e.decide(p, "Go ahead."), (Decision::End, Rule::Margin), "p={p}");
            assert_eq!(e.decide(p, "and then the"), (Decision::Wait(ms(1500)), Rule::Margin), "p={p}");
        }
        assert_eq!(e.decide(0.55, "").0, Decision::End);
        assert_eq!(e.decide(0.45, "").0, Decision::Wait(ms(1500)));
    }

    #[test]
    fn the_fallback_follows_the_callers_pauses_within_bounds() {
        let mut e = Endpointer::new(params());
        assert_eq!(e.fallback(), ms(1500));
        e.observe_pause(ms(400));
        assert_eq!(e.fallback(), ms(1000), "short pauses: the floor");
        for _ in 0..10 {
            e.observe_pause(ms(1400));
        }
        let long = e.fallback();
        assert!(long > ms(1900) && long <= ms(2000), "{long:?}");
        for _ in 0..20 {
            e.observe_pause(ms(5000));
        }
        assert_eq!(e.fallback(), ms(2000), "the ceiling");
    }
}
