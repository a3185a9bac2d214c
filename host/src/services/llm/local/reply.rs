//! Turns the model's token pieces into reply text and tool calls.
//!
//! Pieces are bytes: one character may span two tokens, so text is released only up to the last
//! complete UTF-8 sequence. Qwen-style templates ask for calls as
//! `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`; that markup is never spoken. Text
//! that could still become the opening tag is held back until the next piece decides.

use crate::services::llm::ToolCall;

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

/// Streaming parser of one reply.
#[derive(Debug)]
pub struct ReplyParser {
    /// Bytes of an incomplete UTF-8 sequence at the end of the last piece.
    pending_bytes: Vec<u8>,
    /// Decoded text not yet released (a possible start of `<tool_call>`, or a call's body).
    held: String,
    in_call: bool,
    /// Nothing released yet and the reply opened with `{`: small models sometimes answer a call
    /// as bare JSON, without the tags. Held until the end, then a call if it parses as one.
    bare_json: bool,
    released_any: bool,
    calls: Vec<ToolCall>,
    /// Calls the model wrote but that were not JSON `{"name": …}` objects.
    unreadable: Vec<String>,
    id_prefix: String,
}

impl ReplyParser {
    /// `id_prefix` makes tool call ids unique per request (`{prefix}-{index}`).
    pub fn new(id_prefix: impl Into<String>) -> Self {
        Self {
            pending_bytes: Vec::new(),
            held: String::new(),
            in_call: false,
            bare_json: false,
            released_any: false,
            calls: Vec::new(),
            unreadable: Vec::new(),
            id_prefix: id_prefix.into(),
        }
    }

    /// The reply was primed with the opening tag (a required tool call): what follows is a call.
    pub fn start_in_call(&mut self, primed_body: &str) {
        self.in_call = true;
        self.held.push_str(primed_body);
    }

    /// Feeds one token's bytes; returns the text that is now certain to be speech.
    pub fn push(&mut self, piece: &[u8]) -> String {
        self.pending_bytes.extend_from_slice(piece);
        let decoded = take_utf8(&mut self.pending_bytes);
        self.held.push_str(&decoded);
        self.drain()
    }

    /// The reply ended: releases what was held back and returns the tool calls.
    pub fn finish(mut self) -> (String, Vec<ToolCall>, Vec<String>) {
        if !self.pending_bytes.is_empty() {
            // A sequence cut off by the end of generation: show it as U+FFFD, do not drop it silently.
            self.held.push_str(&String::from_utf8_lossy(&self.pending_bytes));
            self.pending_bytes.clear();
        }
        let mut text = self.drain();
        if self.bare_json {
            let body = std::mem::take(&mut self.held);
            if parse_call(&body).is_some() {
                self.take_call(&body);
            } else {
                text.push_str(&body);
            }
        } else if self.in_call {
            // No closing tag (the model stopped, or ran out of tokens): take the body if it parses.
            let body = std::mem::take(&mut self.held);
            self.take_call(&body);
        } else {
            text.push_str(&std::mem::take(&mut self.held));
        }
        (text, self.calls, self.unreadable)
    }

    fn drain(&mut self) -> String {
        if !self.released_any && !self.in_call {
            match self.held.trim_start().chars().next() {
                Some('{') => self.bare_json = true,
                None => return String::new(),
                Some(_) => {}
            }
        }
        if self.bare_json {
            return String::new();
        }
        let out = self.drain_tags();
        self.released_any |= !out.trim().is_empty();
        out
    }

    fn drain_tags(&mut self) -> String {
        let mut out = String::new();
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else { return out };
                let body: String = self.held[..end].to_string();
                self.held.drain(..end + CLOSE.len());
                self.take_call(&body);
                self.in_call = false;
                continue;
            }
            if let Some(start) = self.held.find(OPEN) {
                out.push_str(&self.held[..start]);
                self.held.drain(..start + OPEN.len());
                self.in_call = true;
                continue;
            }
            // Keep the longest tail that is a prefix of the opening tag.
            let keep = (1..OPEN.len().min(self.held.len() + 1))
                .rev()
                .find(|&n| {
                    self.held.is_char_boundary(self.held.len() - n)
                        && OPEN.starts_with(&self.held[self.held.len() - n..])
                })
                .unwrap_or(0);
            let cut = self.held.len() - keep;
            out.push_str(&self.held[..cut]);
            self.held.drain(..cut);
            return out;
        }
    }

    fn take_call(&mut self, body: &str) {
        match parse_call(body) {
            Some((name, arguments)) => {
                let id = format!("{}-{}", self.id_prefix, self.calls.len());
                self.calls.push(ToolCall { id, name, arguments });
            }
            None => self.unreadable.push(body.trim().to_string()),
        }
    }
}

/// Decodes the complete UTF-8 prefix of `bytes`, leaving an incomplete trailing sequence in place.
/// Invalid bytes (never valid whatever follows) become U+FFFD.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[n..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *bytes = keep;
    out
}

/// `{"name": "...", "arguments": {...}}` → (name, arguments as JSON text). Arguments written as a
/// string holding JSON are passed through as that string; missing arguments are `{}`.
fn parse_call(body: &str) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let name = value.get("name")?.as_str()?.trim().to_string();
    if name.is_empty() {
        return None;
    }
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        None | Some(serde_json::Value::Null) => "{}".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some((name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&[u8]]) -> (String, String, Vec<ToolCall>, Vec<String>) {
        let mut parser = ReplyParser::new("t");
        let mut streamed = String::new();
        for piece in pieces {
            streamed.push_str(&parser.push(piece));
        }
        let (tail, calls, bad) = parser.finish();
        (streamed, tail, calls, bad)
    }

    #[test]
    fn text_streams_and_multibyte_characters_split_across_tokens_survive() {
        let euro = "€".as_bytes(); // three bytes
        let mut parser = ReplyParser::new("t");
        assert_eq!(parser.push(b"It costs 5"), "It costs 5");
        assert_eq!(parser.push(&euro[..1]), "");
        assert_eq!(parser.push(&euro[1..]), "€");
        assert_eq!(parser.push(" today.".as_bytes()), " today.");
        let (tail, calls, bad) = parser.finish();
        assert_eq!((tail.as_str(), calls.len(), bad.len()), ("", 0, 0));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (streamed, tail, _, _) = run(&[b"a\xffb", b"\xe2\x82"]);
        assert_eq!(streamed, "a\u{fffd}b");
        assert_eq!(tail, "\u{fffd}");
    }

    #[test]
    fn tool_call_markup_is_parsed_not_spoken() {
        let (streamed, tail, calls, bad) = run(&[
            b"One moment.",
            b"\n<tool",
            b"_call>\n{\"name\": \"transfer_call\", ",
            b"\"arguments\": {\"department\": \"billing\"}}\n</tool_call>",
        ]);
        assert_eq!(format!("{streamed}{tail}"), "One moment.\n");
        assert!(bad.is_empty());
        assert_eq!(
            calls,
            vec![ToolCall {
                id: "t-0".into(),
                name: "transfer_call".into(),
                arguments: r#"{"department":"billing"}"#.into()
            }]
        );
    }

    #[test]
    fn a_held_back_prefix_that_is_not_the_tag_is_released() {
        let mut parser = ReplyParser::new("t");
        assert_eq!(parser.push(b"1 <"), "1 ");
        assert_eq!(parser.push(b" 2"), "< 2");
        assert_eq!(parser.push(b" <tool"), " ");
        let (tail, calls, _) = parser.finish();
        assert_eq!((tail.as_str(), calls.len()), ("<tool", 0));
    }

    #[test]
    fn several_calls_an_unclosed_call_and_an_unreadable_one() {
        let (_, _, calls, bad) = run(&[
            b"<tool_call>{\"name\":\"a\"}</tool_call><tool_call>not json</tool_call>",
            b"<tool_call>{\"name\": \"hang_up\", \"arguments\": \"{}\"}",
        ]);
        let names: Vec<_> = calls.iter().map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(names, vec![("t-0", "a", "{}"), ("t-1", "hang_up", "{}")]);
        assert_eq!(bad, vec!["not json".to_string()]);
    }

    #[test]
    fn a_reply_that_is_bare_call_json_is_a_call_and_other_json_is_text() {
        let (streamed, tail, calls, _) = run(&[b" {\"name\": \"hang_up\",", b" \"arguments\": {}}"]);
        assert_eq!((streamed.as_str(), tail.as_str(), calls.len()), ("", "", 1));
        let (streamed, tail, calls, _) = run(&[b"{braces}", b" are fine"]);
        assert_eq!((format!("{streamed}{tail}"), calls.len()), ("{braces} are fine".to_string(), 0));
        let (streamed, _, _, _) = run(&[b"Sure {", b"x}"]);
        assert_eq!(streamed, "Sure {x}");
    }

    #[test]
    fn a_primed_call_completes_from_the_model_s_continuation() {
        let mut parser = ReplyParser::new("t");
        parser.start_in_call("\n{\"name\": \"hang_up\", \"arguments\": ");
        assert_eq!(parser.push(b"{}}\n</tool_call>"), "");
        let (_, calls, _) = parser.finish();
        assert_eq!(calls[0].name, "hang_up");
    }
}
