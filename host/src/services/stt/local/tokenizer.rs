//! Moonshine's `tokenizer.bin`: token id → bytes, for turning decoder output into text.
//!
//! The file is the vocabulary in id order, each entry a length followed by that many bytes: a
//! length byte below 128 is the length itself (0 is an empty entry), a byte of 128 or more is the
//! low seven bits of a two-byte length whose second byte holds the high part
//! (`len = second * 128 + first - 128`). Ids 0–2 are `<unk>`, `<s>` and `</s>`, ids 3–258 the
//! 256 byte-fallback tokens (one raw byte each), then SentencePiece pieces where `▁` (U+2581)
//! marks a word start. The decoder's logits are wider than the file (32 768 vs 32 000): ids past
//! the end have no text.

use std::path::Path;

/// Start of transcript: the decoder's first input.
pub const BOS: i64 = 1;
/// End of transcript: greedy decoding stops here.
pub const EOS: i64 = 2;
/// Ids below this are control tokens with no text.
const FIRST_TEXT_ID: usize = 3;
/// SentencePiece's word-start marker.
const WORD_START: &str = "\u{2581}";

/// Why `tokenizer.bin` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("tokenizer.bin is truncated: entry {entry} at byte {offset} runs past the end")]
    Truncated { entry: usize, offset: usize },
    #[error("tokenizer.bin has only {0} entries; a Moonshine vocabulary has thousands")]
    TooSmall(usize),
}

/// The vocabulary of one model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    pieces: Vec<Vec<u8>>,
}

impl Tokenizer {
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let data =
            std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })?;
        Self::from_bytes(&data)
    }

    pub fn from_bytes(data: &[u8]) -> Result<Self, TokenizerError> {
        let mut pieces = Vec::with_capacity(32_000);
        let mut at = 0;
        while at < data.len() {
            let entry = pieces.len();
            let truncated = || TokenizerError::Truncated { entry, offset: at };
            let first = data[at] as usize;
            let (len, header) = if first < 128 {
                (first, 1)
            } else {
                let second = *data.get(at + 1).ok_or_else(truncated)? as usize;
                (second * 128 + first - 128, 2)
            };
            let bytes = data.get(at + header..at + header + len).ok_or_else(truncated)?;
            pieces.push(bytes.to_vec());
            at += header + len;
        }
        // Byte fallback alone needs 259 entries; anything that small is not a vocabulary.
        if pieces.len() <= FIRST_TEXT_ID + 256 {
            return Err(TokenizerError::TooSmall(pieces.len()));
        }
        Ok(Self { pieces })
    }

    /// Entries in the file.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Whether `id` is only punctuation (after an optional word start), like "." or "▁,".
    pub fn is_punctuation(&self, id: i64) -> bool {
        let Some(piece) = usize::try_from(id).ok().filter(|&i| i >= FIRST_TEXT_ID).and_then(|i| self.pieces.get(i))
        else {
            return false;
        };
        let text = String::from_utf8_lossy(piece).replace(WORD_START, "");
        !text.is_empty() && text.chars().all(|c| c.is_ascii_punctuation() && c != '\'')
    }

    /// The text of `ids`: control tokens and unknown ids are skipped, byte-fallback tokens are
    /// joined byte by byte (invalid UTF-8 becomes U+FFFD), word starts become spaces.
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let Ok(id) = usize::try_from(id) else { continue };
            if id < FIRST_TEXT_ID {
                continue;
            }
            if let Some(piece) = self.pieces.get(id) {
                bytes.extend_from_slice(piece);
            }
        }
        let text = String::from_utf8_lossy(&bytes).replace(WORD_START, " ");
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary shaped like Moonshine's: three control tokens, 256 byte tokens, then pieces.
    fn vocab(pieces: &[&[u8]]) -> Vec<u8> {
        let mut data = Vec::new();
        for special in [&b"<unk>"[..], b"<s>", b"</s>"] {
            data.push(special.len() as u8);
            data.extend_from_slice(special);
        }
        for b in 0..=255u8 {
            data.extend_from_slice(&[1, b]);
        }
        for piece in pieces {
            if piece.len() < 128 {
                data.push(piece.len() as u8);
            } else {
                data.push((piece.len() % 128 + 128) as u8);
                data.push((piece.len() / 128) as u8);
            }
            data.extend_from_slice(piece);
        }
        data
    }

    #[test]
    fn decodes_pieces_words_and_byte_fallback() {
        let long = vec![b'x'; 300];
        let data = vocab(&["\u{2581}Hello".as_bytes(), b",", "\u{2581}w".as_bytes(), b"orld", b"", &long]);
        let tok = Tokenizer::from_bytes(&data).unwrap();
        assert_eq!(tok.len(), 259 + 6);
        let (hello, comma, w, orld, empty, long_id) = (259, 260, 261, 262, 263, 264);
        assert_eq!(tok.decode(&[BOS, hello, comma, w, orld, EOS]), "Hello, world");
        // "é" as two byte-fallback tokens (0xC3 0xA9 → ids 3 + byte).
        assert_eq!(tok.decode(&[hello, 3 + 0xC3, 3 + 0xA9]), "Helloé");
        assert_eq!(tok.decode(&[3 + 0xC3]), "\u{FFFD}", "a lone lead byte is replaced, not an error");
        assert_eq!(tok.decode(&[empty, 40_000, -1, 0]), "", "empty, unknown and control ids have no text");
        assert_eq!(tok.decode(&[long_id]).len(), 300, "two-byte lengths are read");
    }

    #[test]
    fn truncated_or_tiny_files_are_refused() {
        let mut data = vocab(&[b"abc"]);
        data.truncate(data.len() - 1);
        assert!(matches!(Tokenizer::from_bytes(&data), Err(TokenizerError::Truncated { entry: 259, .. })));
        assert!(matches!(Tokenizer::from_bytes(&[0x85]), Err(TokenizerError::Truncated { entry: 0, .. })));
        assert!(matches!(Tokenizer::from_bytes(b"\x03abc"), Err(TokenizerError::TooSmall(1))));
        assert!(matches!(Tokenizer::from_bytes(&[]), Err(TokenizerError::TooSmall(0))));
    }
}
