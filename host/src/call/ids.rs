//! The call's identifiers and keypad input, each validated in one place: E.164 phone numbers,
//! DTMF digits and call sids.

/// `+` then 2–15 digits, the first not 0 (ITU-T E.164).
pub fn is_e164(n: &str) -> bool {
    let Some(digits) = n.strip_prefix('+') else { return false };
    (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// One keypad key: `0`–`9`, `*`, `#`, `A`–`D`.
pub fn is_dtmf_digit(c: char) -> bool {
    c.is_ascii_digit() || "*#ABCD".contains(c)
}

/// Keys to send or report: 1 to 64 keypad keys.
pub fn is_dtmf(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(is_dtmf_digit)
}

/// Call sids as this server hands them out: Twilio's `CA…` or the playground's, letters,
/// digits, `-` and `_`, at most 64. Safe in file names and URLs.
pub fn is_call_sid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keys_and_sids() {
        for ok in ["+15551234567", "+44", "+123456789012345"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in ["15551234567", "+0123", "+1", "+1234567890123456", "+1555-123", ""] {
            assert!(!is_e164(bad), "{bad}");
        }
        assert!(is_dtmf("12*#AD") && !is_dtmf("") && !is_dtmf("1E") && !is_dtmf(&"1".repeat(65)));
        assert!(is_call_sid("CA0123abc") && is_call_sid("pg-1_2"));
        assert!(!is_call_sid("") && !is_call_sid("../x") && !is_call_sid(&"a".repeat(65)));
    }
}
