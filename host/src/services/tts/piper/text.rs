//! Text → the chunks one inference says: sanitising what espeak-ng would read as commands, then
//! cutting into sentences and, inside long sentences, clauses.
//!
//! Piper voices speak one sentence per inference, with a pause symbol after every clause. Each
//! chunk here is one sentence, or a run of its clauses when the sentence is long, so one
//! inference stays short: a cleared chunk never holds a worker for long. The text's first clause
//! is always a chunk of its own, so the first audio comes after one clause's inference.

/// Longest chunk in characters (about 20 words, 6–7 s of speech, under a second of one core).
pub(crate) const MAX_CHUNK_CHARS: usize = 120;

/// The punctuation Piper voices were trained with at a clause's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pause {
    Period,
    Question,
    Exclamation,
    Comma,
    Colon,
    Semicolon,
}

impl Pause {
    /// The phoneme symbols appended after the clause (Piper puts a space after mid-sentence ones).
    pub(crate) fn symbols(self) -> &'static str {
        match self {
            Pause::Period => ".",
            Pause::Question => "?",
            Pause::Exclamation => "!",
            Pause::Comma => ", ",
            Pause::Colon => ": ",
            Pause::Semicolon => "; ",
        }
    }
}

/// A stretch of text spoken without a break, and the break after it (`None` where a long
/// clause was cut at a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clause {
    pub text: String,
    pub pause: Option<Pause>,
}

/// What one inference says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub clauses: Vec<Clause>,
}

impl Chunk {
    pub(crate) fn chars(&self) -> usize {
        self.clauses.iter().map(|c| c.text.chars().count() + 1).sum()
    }
}

/// Splits `text` into chunks in speaking order. Text with nothing to say gives none.
pub(crate) fn chunks(text: &str) -> Vec<Chunk> {
    let clean = sanitize(text);
    let mut out = Vec::new();
    for sentence in sentences(&clean) {
        let clauses: Vec<Clause> = sentence.into_iter().flat_map(split_long).collect();
        let count = clauses.len();
        let mut current: Vec<Clause> = Vec::new();
        let mut current_len = 0;
        for (i, clause) in clauses.into_iter().enumerate() {
            let len = clause.text.chars().count() + 1;
            if !current.is_empty() && current_len + len > MAX_CHUNK_CHARS {
                out.push(Chunk { clauses: std::mem::take(&mut current) });
                current_len = 0;
            }
            current_len += len;
            current.push(clause);
            // The text's first clause is a chunk of its own: the first audio waits for one
            // clause's inference, not the whole sentence's.
            if out.is_empty() && i == 0 && count > 1 {
                out.push(Chunk { clauses: std::mem::take(&mut current) });
                current_len = 0;
            }
        }
        if !current.is_empty() {
            out.push(Chunk { clauses: current });
        }
    }
    // Unpunctuated text still ends like a sentence (the voice falls in pitch and pauses).
    if let Some(last) = out.last_mut().and_then(|c| c.clauses.last_mut()) {
        last.pause.get_or_insert(Pause::Period);
    }
    out
}

/// Removes what espeak-ng would not read as words: `[[…]]` is its phoneme-input syntax, control
/// characters (0x01 starts an embedded command) and line breaks would break the line protocol
/// of the phonemizer, and Markdown emphasis would be read out as "asterisk".
pub(crate) fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = true;
    for c in text.chars() {
        let c = match c {
            '[' | ']' | '*' | '_' | '`' => ' ',
            c if c.is_control() || c.is_whitespace() => ' ',
            c => c,
        };
        if c == ' ' {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// Abbreviations whose period ends no sentence (lower case, without the period).
const ABBREVIATIONS: [&str; 20] = [
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "a.m", "p.m", "approx", "dept",
    "fig", "inc", "ltd", "mt",
];

/// Characters that may close a sentence after its final punctuation.
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | '”' | '’' | '»')
}

/// Characters that carry nothing to say on their own.
fn is_silent(c: char) -> bool {
    c.is_whitespace() || matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | '"' | '\'' | '(' | ')' | '-' | '—' | '–' | '…')
}

/// Sentences of sanitised text, each a list of clauses (the last with its sentence's pause).
fn sentences(text: &str) -> Vec<Vec<Clause>> {
    let chars: Vec<char> = text.chars().collect();
    let mut sentences = Vec::new();
    let mut clauses = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let Some((pause, end, ends_sentence)) = break_at(&chars, start, i) else {
            i += 1;
            continue;
        };
        push_clause(&mut clauses, &chars[start..i], Some(pause));
        if ends_sentence && !clauses.is_empty() {
            sentences.push(std::mem::take(&mut clauses));
        }
        start = end;
        i = end;
    }
    push_clause(&mut clauses, &chars[start..], None);
    if !clauses.is_empty() {
        sentences.push(clauses);
    }
    sentences
}

/// Whether a clause ends at `chars[i]`: its pause, where the next clause starts, and whether
/// the sentence ends too. A break needs a space (or the end) after it, so "3.5" and "1,000" stay.
fn break_at(chars: &[char], start: usize, i: usize) -> Option<(Pause, usize, bool)> {
    let c = chars[i];
    let followed_by_space = |j: usize| j >= chars.len() || chars[j] == ' ';
    match c {
        '.' | '!' | '?' | '…' => {
            let mut j = i;
            while j < chars.len() && matches!(chars[j], '.' | '!' | '?' | '…') {
                j += 1;
            }
            let run = &chars[i..j];
            while j < chars.len() && is_closer(chars[j]) {
                j += 1;
            }
            if !followed_by_space(j) {
                return None;
            }
            let pause = if run.contains(&'?') {
                Pause::Question
            } else if run.contains(&'!') {
                Pause::Exclamation
            } else if run.len() > 1 || run[0] == '…' {
                // An ellipsis is a hesitation inside the sentence.
                return Some((Pause::Comma, j, false));
            } else if is_abbreviation(&chars[start..i]) {
                return None;
            } else {
                Pause::Period
            };
            Some((pause, j, true))
        }
        ',' | ';' | ':' if followed_by_space(i + 1) => {
            let pause = match c {
                ',' => Pause::Comma,
                ';' => Pause::Semicolon,
                _ => Pause::Colon,
            };
            Some((pause, i + 1, false))
        }
        '—' | '–' => Some((Pause::Comma, i + 1, false)),
        '-' if i > 0 && chars[i - 1] == ' ' && followed_by_space(i + 1) => Some((Pause::Comma, i + 1, false)),
        _ => None,
    }
}

/// Whether the last word before a period is an abbreviation or an initial ("J. Smith").
fn is_abbreviation(before: &[char]) -> bool {
    let text: String = before.iter().collect();
    let word = text.rsplit(' ').next().unwrap_or_default().trim_start_matches(['(', '"', '\'']).to_lowercase();
    let mut letters = word.chars();
    let initial = matches!((letters.next(), letters.next()), (Some(c), None) if c.is_alphabetic());
    initial || ABBREVIATIONS.contains(&word.as_str())
}

fn push_clause(clauses: &mut Vec<Clause>, chars: &[char], pause: Option<Pause>) {
    let text: String = chars.iter().collect();
    let text = text.trim();
    if text.chars().all(is_silent) {
        // Nothing to say, but a sentence's end still belongs to the clause before it.
        if let (Some(last), Some(p)) = (clauses.last_mut(), pause) {
            if matches!(p, Pause::Period | Pause::Question | Pause::Exclamation) {
                last.pause = Some(p);
            }
        }
        return;
    }
    clauses.push(Clause { text: text.to_string(), pause });
}

/// Cuts a clause longer than a chunk at spaces (or, for one endless word, anywhere).
fn split_long(clause: Clause) -> Vec<Clause> {
    if clause.text.chars().count() < MAX_CHUNK_CHARS {
        return vec![clause];
    }
    let mut pieces: Vec<Clause> = Vec::new();
    let mut current = String::new();
    let mut current_len = 0;
    for word in clause.text.split(' ') {
        let mut word = word;
        loop {
            let word_len = word.chars().count();
            if current_len > 0 && current_len + 1 + word_len >= MAX_CHUNK_CHARS {
                pieces.push(Clause { text: std::mem::take(&mut current), pause: None });
                current_len = 0;
            }
            if word_len < MAX_CHUNK_CHARS {
                if current_len > 0 {
                    current.push(' ');
                    current_len += 1;
                }
                current.push_str(word);
                current_len += word_len;
                break;
            }
            let cut = word.char_indices().nth(MAX_CHUNK_CHARS - 1).map_or(word.len(), |(i, _)| i);
            pieces.push(Clause { text: word[..cut].to_string(), pause: None });
            word = &word[cut..];
        }
    }
    if !current.is_empty() {
        pieces.push(Clause { text: current, pause: None });
    }
    if let Some(last) = pieces.last_mut() {
        last.pause = clause.pause;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(chunks: &[Chunk]) -> Vec<Vec<(String, Option<Pause>)>> {
        chunks.iter().map(|c| c.clauses.iter().map(|cl| (cl.text.clone(), cl.pause)).collect()).collect()
    }

    fn clause(text: &str, pause: Option<Pause>) -> (String, Option<Pause>) {
        (text.to_string(), pause)
    }

    #[test]
    fn sentences_become_chunks_with_their_clause_pauses() {
        let got = texts(&chunks("Hello there, how are you? I'm fine: thanks; really! Dr. Smith lives at 5 Elm St. OK"));
        assert_eq!(
            got,
            vec![
                // The first clause goes alone, for the first audio's sake.
                vec![clause("Hello there", Some(Pause::Comma))],
                vec![clause("how are you", Some(Pause::Question))],
                vec![
                    clause("I'm fine", Some(Pause::Colon)),
                    clause("thanks", Some(Pause::Semicolon)),
                    clause("really", Some(Pause::Exclamation)),
                ],
                // "Dr." and "St." are abbreviations: the sentence goes on.
                vec![clause("Dr. Smith lives at 5 Elm St. OK", Some(Pause::Period))],
            ]
        );
    }

    #[test]
    fn numbers_initials_ellipses_and_dashes() {
        let got =
            texts(&chunks("It costs 3.5 dollars, or 1,000 cents. J. R. Smith said… well... maybe — or not - fine?!"));
        assert_eq!(
            got,
            vec![
                vec![clause("It costs 3.5 dollars", Some(Pause::Comma))],
                vec![clause("or 1,000 cents", Some(Pause::Period))],
                vec![
                    clause("J. R. Smith said", Some(Pause::Comma)),
                    clause("well", Some(Pause::Comma)),
                    clause("maybe", Some(Pause::Comma)),
                    clause("or not", Some(Pause::Comma)),
                    clause("fine", Some(Pause::Question)),
                ],
            ]
        );
    }

    #[test]
    fn quotes_after_the_period_stay_with_the_sentence() {
        let got = texts(&chunks("He said \"stop.\" Then he left."));
        assert_eq!(
            got,
            vec![
                vec![clause("He said \"stop", Some(Pause::Period))],
                vec![clause("Then he left", Some(Pause::Period))]
            ]
        );
    }

    #[test]
    fn nothing_to_say_gives_no_chunk() {
        for text in ["", "   ", "...", "?!", " , . ; ", "\n\t", "[[ ]]", "***"] {
            assert!(chunks(text).is_empty(), "{text:?}");
        }
        // A trailing lone punctuation mark attaches its pause to the clause before it.
        assert_eq!(texts(&chunks("Yes , ?")), vec![vec![clause("Yes", Some(Pause::Question))]]);
    }

    #[test]
    fn espeak_command_syntax_and_control_characters_are_neutralised() {
        assert_eq!(
            sanitize("[[h@'loU]] \u{1}5S a\nb\r\tc **bold** `code` snake_case"),
            "h@'loU 5S a b c bold code snake case"
        );
        let got = chunks("say [[ʔ]] this\u{1}\n");
        assert_eq!(texts(&got), vec![vec![clause("say ʔ this", Some(Pause::Period))]]);
    }

    #[test]
    fn long_text_is_cut_into_bounded_chunks_without_losing_words() {
        let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
        let text = words.join(" ");
        let got = chunks(&text);
        assert!(got.len() > 10);
        for c in &got {
            assert!(c.chars() <= MAX_CHUNK_CHARS + 1, "{}", c.chars());
        }
        let rejoined: Vec<String> = got.iter().flat_map(|c| c.clauses.iter().map(|cl| cl.text.clone())).collect();
        assert_eq!(rejoined.join(" "), text);
        // Only the very end gets a pause; the cuts inside the clause get none.
        let pauses: Vec<Option<Pause>> = got.iter().flat_map(|c| c.clauses.iter().map(|cl| cl.pause)).collect();
        assert_eq!(pauses.last(), Some(&Some(Pause::Period)));
        assert!(pauses[..pauses.len() - 1].iter().all(Option::is_none));
    }

    #[test]
    fn one_endless_word_is_cut_at_character_boundaries() {
        let text = "é".repeat(500);
        let got = chunks(&text);
        assert!(got.len() >= 4);
        let rejoined: String = got.iter().flat_map(|c| c.clauses.iter().map(|cl| cl.text.clone())).collect();
        assert_eq!(rejoined, text);
    }

    #[test]
    fn long_sentences_split_at_clauses_and_short_clauses_share_a_chunk() {
        let text = "First we check the account balance for you, then we look at the recent payments, \
                    after that we review the open invoices together, and finally we set up the new plan.";
        let got = chunks(text);
        assert_eq!(got.len(), 2, "{:?}", texts(&got));
        assert!(got.iter().all(|c| c.chars() <= MAX_CHUNK_CHARS));
        assert_eq!((got[0].clauses.len(), got[1].clauses.len()), (1, 3));
        assert_eq!(got[1].clauses.last().map(|c| c.pause), Some(Some(Pause::Period)));
        // Later sentences are grouped up to the limit, with no first-clause cut.
        let later = chunks(&format!("Yes. {text}"));
        assert_eq!(later.iter().map(|c| c.clauses.len()).collect::<Vec<_>>(), [1, 2, 2]);
    }
}
