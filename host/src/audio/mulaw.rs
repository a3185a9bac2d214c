//! G.711 μ-law codec, bit-exact with Python's `audioop` (what Pipecat uses).
//!
//! Decoding is the standard 256-entry table (0x00 → −32124, 0x80 → +32124, 0x7F and 0xFF → 0).
//! Encoding follows `audioop.lin2ulaw`: the 16-bit sample is shifted right arithmetically by two
//! bits, then coded as 14-bit linear with bias 33 and magnitude clip 8159 (so −1 → 0x7E and
//! 0 → 0xFF). Both directions are table lookups; the tables are built at compile time.

use thiserror::Error;

/// Errors from the slice codecs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MulawError {
    /// The output slice is shorter than the input.
    #[error("μ-law output buffer too short: {input} input samples, room for {output}")]
    OutputTooShort {
        /// Input length in samples.
        input: usize,
        /// Output capacity in samples.
        output: usize,
    },
}

/// Bias added to the 14-bit magnitude before segment search (G.711: 33 in 14-bit units).
const BIAS: i32 = 33;
/// Largest 14-bit magnitude that is coded without saturating.
const CLIP: i32 = 8159;

/// Decoded value of every code, as 16-bit linear PCM.
static DECODE: [i16; 256] = build_decode();
/// Code of every 14-bit linear value, indexed by `(sample >> 2) + 8192`.
static ENCODE: [u8; 16384] = build_encode();

const fn decode_code(code: u8) -> i16 {
    let inv = !code;
    let exponent = ((inv >> 4) & 0x07) as i32;
    let mantissa = (inv & 0x0F) as i32;
    // Interval midpoint of the biased magnitude, bias removed, scaled 14 → 16 bits.
    let magnitude = ((((mantissa << 1) + BIAS) << exponent) - BIAS) << 2;
    if inv & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn encode_14bit(value: i32) -> u8 {
    // Codes are stored inverted; the sign bit is set for non-negative values.
    let (magnitude, mask) = if value < 0 { (-value, 0x7F) } else { (value, 0xFF) };
    let clipped = if magnitude > CLIP { CLIP } else { magnitude };
    let biased = clipped + BIAS;
    // Segment = position of the top bit above bit 5 (biased is 33..=8192).
    let top_bit = 31 - (biased as u32).leading_zeros() as i32;
    let segment = top_bit - 5;
    if segment >= 8 {
        return 0x7F ^ mask;
    }
    let code = ((segment << 4) | ((biased >> (segment + 1)) & 0x0F)) as u8;
    code ^ mask
}

const fn build_decode() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = decode_code(code as u8);
        code += 1;
    }
    table
}

const fn build_encode() -> [u8; 16384] {
    let mut table = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        table[i] = encode_14bit(i as i32 - 8192);
        i += 1;
    }
    table
}

/// Decodes one μ-law code to 16-bit linear PCM.
#[inline]
pub fn decode(code: u8) -> i16 {
    DECODE[code as usize]
}

/// Encodes one 16-bit linear PCM sample to μ-law (as `audioop.lin2ulaw` does).
#[inline]
pub fn encode(sample: i16) -> u8 {
    ENCODE[((sample >> 2) as i32 + 8192) as usize]
}

/// Decodes `codes` into the start of `out`; returns the number of samples written.
pub fn decode_into(codes: &[u8], out: &mut [i16]) -> Result<usize, MulawError> {
    let room = out.len();
    let out = out.get_mut(..codes.len()).ok_or(MulawError::OutputTooShort { input: codes.len(), output: room })?;
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = decode(c);
    }
    Ok(codes.len())
}

/// Encodes `pcm` into the start of `out`; returns the number of codes written.
pub fn encode_into(pcm: &[i16], out: &mut [u8]) -> Result<usize, MulawError> {
    let room = out.len();
    let out = out.get_mut(..pcm.len()).ok_or(MulawError::OutputTooShort { input: pcm.len(), output: room })?;
    for (o, &s) in out.iter_mut().zip(pcm) {
        *o = encode(s);
    }
    Ok(pcm.len())
}

/// Decodes a whole buffer into a new vector (allocates; for offline use).
pub fn decode_vec(codes: &[u8]) -> Vec<i16> {
    codes.iter().map(|&c| decode(c)).collect()
}

/// Encodes a whole buffer into a new vector (allocates; for offline use).
pub fn encode_vec(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().map(|&s| encode(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    const GOLDEN: &str = include_str!("../../tests/fixtures/dsp/mulaw_golden.txt");

    fn golden_line(key: &str) -> &'static str {
        GOLDEN
            .lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .unwrap_or_else(|| panic!("golden file lacks {key}"))
    }

    /// ITU-T G.711 μ-law, written from the standard's segment description rather than the
    /// bit tricks above: code = sign | segment (0..7) | 4-bit step, all inverted; segment s
    /// covers biased magnitudes [32·2^s, 64·2^s) in steps of 2^(s+1).
    fn itu_decode(code: u8) -> i32 {
        let c = !code;
        let s = i32::from((c >> 4) & 7);
        let step = i32::from(c & 15);
        let biased_lo = (32 << s) + step * (2 << s);
        let mid = biased_lo + (1 << s) - 33; // midpoint of the interval, bias removed
        let sign = if c & 0x80 != 0 { -1 } else { 1 };
        sign * mid * 4
    }

    fn itu_encode(sample: i16) -> u8 {
        let v = i32::from(sample).div_euclid(4); // audioop: arithmetic >> 2
        let (neg, mag) = (v < 0, v.abs().min(8159));
        let biased = mag + 33;
        // Linear search over segments and steps for the interval holding `biased`.
        let mut found = None;
        'outer: for s in 0..8 {
            for step in 0..16 {
                let lo = (32 << s) + step * (2 << s);
                let hi = lo + (2 << s);
                if (lo..hi).contains(&biased) {
                    found = Some(((s << 4) | step) as u8);
                    break 'outer;
                }
            }
        }
        let code = found.unwrap_or(0x7F); // biased == 8192 saturates to the top code
        if neg {
            !(code) & 0x7F
        } else {
            !code
        }
    }

    #[test]
    fn decode_matches_audioop_for_all_codes() {
        let want: Vec<i16> = golden_line("decode").split_whitespace().map(|v| v.parse().unwrap()).collect();
        assert_eq!(want.len(), 256);
        for code in 0..=255u8 {
            assert_eq!(decode(code), want[code as usize], "code {code:#04x}");
        }
        assert_eq!(decode(0x00), -32124);
        assert_eq!(decode(0x80), 32124);
        assert_eq!(decode(0x7F), 0);
        assert_eq!(decode(0xFF), 0);
    }

    #[test]
    fn encode_matches_audioop_for_all_pcm_values() {
        let table: Vec<u8> = (i16::MIN..=i16::MAX).map(encode).collect();
        let digest = Sha256::digest(&table);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        for pair in golden_line("encode_sample").split_whitespace() {
            let (s, c) = pair.split_once(':').unwrap();
            let s: i16 = s.parse().unwrap();
            assert_eq!(encode(s), c.parse::<u8>().unwrap(), "sample {s}");
        }
        assert_eq!(hex, golden_line("encode_sha256"));
        assert_eq!(encode(-1), 0x7E);
        assert_eq!(encode(0), 0xFF);
    }

    #[test]
    fn matches_independent_itu_formulas() {
        for code in 0..=255u8 {
            assert_eq!(i32::from(decode(code)), itu_decode(code), "code {code:#04x}");
        }
        for s in i16::MIN..=i16::MAX {
            assert_eq!(encode(s), itu_encode(s), "sample {s}");
        }
    }

    #[test]
    fn decode_then_encode_is_identity_except_negative_zero() {
        for code in 0..=255u8 {
            let back = encode(decode(code));
            let want = if code == 0x7F { 0xFF } else { code };
            assert_eq!(back, want, "code {code:#04x}");
        }
    }

    #[test]
    fn slice_codecs_write_into_caller_buffers() {
        let pcm: Vec<i16> = (0..160).map(|i| (i * 397 - 30000) as i16).collect();
        let mut codes = [0u8; 200];
        assert_eq!(encode_into(&pcm, &mut codes), Ok(160));
        let mut back = [0i16; 160];
        assert_eq!(decode_into(&codes[..160], &mut back), Ok(160));
        assert_eq!(codes[..160].to_vec(), encode_vec(&pcm));
        assert_eq!(back.to_vec(), decode_vec(&codes[..160]));
        assert_eq!(decode_into(&codes, &mut back), Err(MulawError::OutputTooShort { input: 200, output: 160 }));
        assert!(encode_into(&pcm, &mut codes[..10]).is_err());
    }
}
