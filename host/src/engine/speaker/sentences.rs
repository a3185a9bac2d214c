//! Cuts streamed LLM text into sentences so each goes to TTS as soon as it is complete.
//!
//! A sentence ends at `.`, `!`, `?` (or `…`, `;`, `:`) once the next non-space character arrives,
//! so "3.5" and "e.g. this" stay whole; the rest is released when the reply ends.

/// Accumulates text deltas and releases whole sentences.
#[derive(Debug, Default)]
pub struct SentenceSplitter {
    buf: String,
}

fn ends_sentence(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | ';' | ':')
}

impl SentenceSplitter {
    /// Adds a delta; returns the sentences it completed.
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        while let Some(cut) = self.find_boundary() {
            let rest = self.buf.split_off(cut);
            let sentence = std::mem::replace(&mut self.buf, rest);
            let sentence = sentence.trim();
            if !sentence.is_empty() {
                out.push(sentence.to_string());
            }
        }
        out
    }

    /// The reply ended: whatever is left is the last sentence.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    /// Byte offset just after a sentence end that is followed by whitespace and then a
    /// non-space character.
    fn find_boundary(&self) -> Option<usize> {
        let mut chars = self.buf.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if !ends_sentence(c) {
                continue;
            }
            // Swallow closing punctuation and repeated marks: `?!`, `."`, `...`.
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = chars.peek() {
                if ends_sentence(n) || matches!(n, '"' | '\'' | ')' | '”' | '’') {
                    end = j + n.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let after = &self.buf[end..];
            let trimmed = after.trim_start();
            if trimmed.len() < after.len() && !trimmed.is_empty() {
                return Some(end);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(deltas: &[&str]) -> Vec<String> {
        let mut s = SentenceSplitter::default();
        let mut out: Vec<String> = deltas.iter().flat_map(|d| s.push(d)).collect();
        out.extend(s.finish());
        out
    }

    #[test]
    fn releases_a_sentence_once_the_next_word_starts() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("Hello there.").is_empty(), "might be 'there.5' or the end");
        assert_eq!(s.push(" How"), vec!["Hello there."]);
        assert!(s.push(" are you?").is_empty());
        assert_eq!(s.finish().as_deref(), Some("How are you?"));
    }

    #[test]
    fn keeps_numbers_and_handles_marks_and_quotes() {
        assert_eq!(split(&["It costs 3", ".5 dollars. Ok"]), vec!["It costs 3.5 dollars.", "Ok"]);
        assert_eq!(split(&["Really?! Yes... \"Fine.\" Bye"]), vec!["Really?!", "Yes...", "\"Fine.\"", "Bye"]);
        assert_eq!(split(&["   "]), Vec::<String>::new());
        assert_eq!(split(&["One. Two. Three."]), vec!["One.", "Two.", "Three."]);
    }
}
