//! A typed TwiML builder. Every attribute value and text node is escaped on output, so caller
//! numbers, persona names and custom parameters can't inject markup.

use std::fmt::Write as _;

/// One `<Response>` document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    verbs: Vec<Verb>,
}

/// The TwiML verbs Switchboard uses.
#[derive(Debug, Clone, PartialEq)]
pub enum Verb {
    /// `<Connect><Stream url=…>` with `<Parameter>`s: a bidirectional Media Stream.
    ConnectStream {
        url: String,
        parameters: Vec<(String, String)>,
    },
    Say(String),
    Pause {
        seconds: u32,
    },
    /// `<Dial>` a number: used to transfer a call to a human.
    Dial {
        number: String,
        caller_id: Option<String>,
    },
    Hangup,
}

impl Response {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn verb(mut self, verb: Verb) -> Self {
        self.verbs.push(verb);
        self
    }

    /// The document as sent to Twilio (`text/xml`).
    pub fn to_xml(&self) -> String {
        let mut out = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Response>"#);
        for verb in &self.verbs {
            write_verb(&mut out, verb);
        }
        out.push_str("</Response>");
        out
    }
}

fn write_verb(out: &mut String, verb: &Verb) {
    // `write!` into a String cannot fail.
    match verb {
        Verb::ConnectStream { url, parameters } => {
            let _ = write!(out, r#"<Connect><Stream url="{}">"#, escape(url));
            for (name, value) in parameters {
                let _ = write!(out, r#"<Parameter name="{}" value="{}"/>"#, escape(name), escape(value));
            }
            out.push_str("</Stream></Connect>");
        }
        Verb::Say(text) => {
            let _ = write!(out, "<Say>{}</Say>", escape(text));
        }
        Verb::Pause { seconds } => {
            let _ = write!(out, r#"<Pause length="{seconds}"/>"#);
        }
        Verb::Dial { number, caller_id } => {
            match caller_id {
                Some(id) => {
                    let _ = write!(out, r#"<Dial callerId="{}">"#, escape(id));
                }
                None => out.push_str("<Dial>"),
            }
            let _ = write!(out, "<Number>{}</Number></Dial>", escape(number));
        }
        Verb::Hangup => out.push_str("<Hangup/>"),
    }
}

/// XML-escapes text for both attribute values and text nodes. Control characters that XML 1.0
/// forbids are dropped rather than passed through.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => {
                let _ = write!(out, "&#{};", c as u32);
            }
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_stream_with_parameters() {
        let xml = Response::new()
            .verb(Verb::ConnectStream {
                url: "wss://example.com/ws".into(),
                parameters: vec![("From".into(), "+15551234567".into()), ("token".into(), "a.b".into())],
            })
            .verb(Verb::Pause { seconds: 20 })
            .to_xml();
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://example.com/ws"><Parameter name="From" value="+15551234567"/><Parameter name="token" value="a.b"/></Stream></Connect><Pause length="20"/></Response>"#
        );
    }

    #[test]
    fn hostile_values_are_escaped() {
        let xml = Response::new()
            .verb(Verb::ConnectStream {
                url: "wss://h/ws?a=1&b=2".into(),
                parameters: vec![("x\"/><Hangup/>".into(), "<evil attr='1'>&\u{1}".into())],
            })
            .to_xml();
        assert!(xml.contains(r#"url="wss://h/ws?a=1&amp;b=2""#));
        assert!(xml.contains(r#"name="x&quot;/&gt;&lt;Hangup/&gt;""#));
        assert!(xml.contains(r#"value="&lt;evil attr=&apos;1&apos;&gt;&amp;""#));
        assert!(!xml.contains("<Hangup/>"));
    }

    #[test]
    fn dial_for_transfer() {
        let xml = Response::new().verb(Verb::Dial { number: "+15550001111".into(), caller_id: None }).to_xml();
        assert!(xml.ends_with("<Response><Dial><Number>+15550001111</Number></Dial></Response>"));
    }
}
