//! An incremental Server-Sent Events decoder (WHATWG "event stream interpretation"): events may
//! be split anywhere across reads, lines end in LF, CRLF or CR, `data:` lines join with LF,
//! `:` lines are comments (keep-alives), unknown fields are ignored.

/// Longest line accepted; a provider sending more is broken.
const MAX_LINE: usize = 1 << 20;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field; empty for the default ("message").
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    /// The previous byte ended a line with CR: a following LF belongs to it.
    after_cr: bool,
}

impl SseDecoder {
    /// Feeds bytes; complete events are appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.on_line(&line, out)?;
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(format!("event stream line longer than {MAX_LINE} bytes"));
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(())
    }

    /// End of the body: an event missing only its blank line is still delivered (some servers
    /// end the body right after the last `data:` line).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), String> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(&line, out)?;
        }
        self.dispatch(out);
        Ok(())
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|e| format!("event stream is not UTF-8: {e}"))?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = value.to_string(),
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = std::mem::take(&mut self.event);
        if std::mem::take(&mut self.has_data) {
            out.push(SseEvent { event, data: std::mem::take(&mut self.data) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut d = SseDecoder::default();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            d.feed(chunk, &mut out).unwrap();
        }
        d.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn events_survive_any_split() {
        let input = ": keep-alive\n\ndata: {\"a\":1}\r\n\r\nevent: error\ndata: line1\ndata:line2\n\ndata: [DONE]\n\n";
        for piece in 1..input.len() {
            let out = decode_in_pieces(input.as_bytes(), piece);
            assert_eq!(
                out,
                vec![
                    SseEvent { event: String::new(), data: "{\"a\":1}".into() },
                    SseEvent { event: "error".into(), data: "line1\nline2".into() },
                    SseEvent { event: String::new(), data: "[DONE]".into() },
                ],
                "split every {piece} bytes"
            );
        }
    }

    #[test]
    fn cr_only_line_ends_and_missing_final_blank_line() {
        let out = decode_in_pieces(b"data: a\r\rdata: b", 3);
        assert_eq!(out.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let out = decode_in_pieces("data: héllo ✓\n\n".as_bytes(), 1);
        assert_eq!(out[0].data, "héllo ✓");
    }
}
