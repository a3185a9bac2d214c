//! In-band DTMF (ITU-T Q.23 tone pairs) as μ-law, for personas that navigate phone menus.

use crate::audio::mulaw;

fn pair(digit: char) -> Option<(f64, f64)> {
    let low = match digit {
        '1' | '2' | '3' | 'A' => 697.0,
        '4' | '5' | '6' | 'B' => 770.0,
        '7' | '8' | '9' | 'C' => 852.0,
        '*' | '0' | '#' | 'D' => 941.0,
        _ => return None,
    };
    let high = match digit {
        '1' | '4' | '7' | '*' => 1209.0,
        '2' | '5' | '8' | '0' => 1336.0,
        '3' | '6' | '9' | '#' => 1477.0,
        _ => 1633.0,
    };
    Some((low, high))
}

/// 100 ms of each digit's tone pair followed by 100 ms of silence; unknown characters are skipped.
pub fn tones(digits: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (low, high) in digits.chars().filter_map(pair) {
        for i in 0..800 {
            let t = i as f64 / 8000.0;
            let s =
                0.35 * ((2.0 * std::f64::consts::PI * low * t).sin() + (2.0 * std::f64::consts::PI * high * t).sin());
            out.push(mulaw::encode((s * 16384.0) as i16));
        }
        out.extend(std::iter::repeat_n(0xFF, 800));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goertzel power of `freq` in `x`.
    fn power(x: &[i16], freq: f64) -> f64 {
        let k = 2.0 * (2.0 * std::f64::consts::PI * freq / 8000.0).cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s = v as f64 + k * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - k * s1 * s2
    }

    #[test]
    fn each_digit_carries_its_two_frequencies() {
        let pcm = mulaw::decode_vec(&tones("5#x"));
        assert_eq!(pcm.len(), 2 * 1600, "the unknown character is skipped");
        let five = &pcm[..800];
        assert!(power(five, 770.0) > 50.0 * power(five, 697.0));
        assert!(power(five, 1336.0) > 50.0 * power(five, 1209.0));
        let hash = &pcm[1600..2400];
        assert!(power(hash, 941.0) > 50.0 * power(hash, 852.0));
        assert!(power(hash, 1477.0) > 50.0 * power(hash, 1336.0));
    }
}
