//! A Piper voice's `.onnx.json`: its sample rate, espeak-ng voice, inference scales and the map
//! from IPA phonemes to the ids the model reads.

use std::collections::HashMap;

use icu_normalizer::DecomposingNormalizerBorrowed;
use serde::Deserialize;

/// Beginning, end and padding symbols of every Piper voice.
const BOS: char = '^';
const EOS: char = '$';
const PAD: char = '_';

/// What synthesis needs from a voice's config.
#[derive(Debug, Clone)]
pub(crate) struct VoiceConfig {
    pub sample_rate: u32,
    /// The espeak-ng voice the model was trained with (e.g. `en-us`).
    pub espeak_voice: String,
    /// `[noise_scale, length_scale, noise_w]`, the model's `scales` input.
    pub scales: [f32; 3],
    /// The dataset name (e.g. `joe`), accepted as a short voice name.
    pub dataset: Option<String>,
    ids: HashMap<char, Vec<i64>>,
}

#[derive(Deserialize)]
struct RawConfig {
    audio: RawAudio,
    espeak: RawEspeak,
    inference: RawInference,
    #[serde(default)]
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    dataset: Option<String>,
}

#[derive(Deserialize)]
struct RawAudio {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct RawEspeak {
    voice: String,
}

#[derive(Deserialize)]
struct RawInference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl VoiceConfig {
    /// Parses a voice's `.onnx.json`; the message says what is wrong.
    pub(crate) fn parse(json: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if let Some(kind) = raw.phoneme_type.as_deref().filter(|k| *k != "espeak") {
            return Err(format!("phoneme_type {kind:?} is not supported (only espeak)"));
        }
        if raw.audio.sample_rate == 0 {
            return Err("audio.sample_rate is 0".into());
        }
        // The voice name goes to espeak-ng's command line: keep it to a plain voice name.
        let voice_ok = |v: &str| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_+".contains(c));
        if !voice_ok(&raw.espeak.voice) || raw.espeak.voice.starts_with('-') {
            return Err(format!("espeak.voice {:?} is not a voice name", raw.espeak.voice));
        }
        let mut ids = HashMap::with_capacity(raw.phoneme_id_map.len());
        for (symbol, symbol_ids) in raw.phoneme_id_map {
            let mut chars = symbol.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !symbol_ids.is_empty() => {
                    ids.insert(c, symbol_ids);
                }
                _ => return Err(format!("phoneme_id_map entry {symbol:?} is not one symbol with ids")),
            }
        }
        for required in [BOS, EOS, PAD] {
            if !ids.contains_key(&required) {
                return Err(format!("phoneme_id_map lacks {required:?}"));
            }
        }
        let inf = raw.inference;
        Ok(VoiceConfig {
            sample_rate: raw.audio.sample_rate,
            espeak_voice: raw.espeak.voice,
            scales: [inf.noise_scale, inf.length_scale, inf.noise_w],
            dataset: raw.dataset,
            ids,
        })
    }

    /// The model input for one utterance: `^ _ p₁ _ p₂ _ … pₙ _ $`, as Piper builds it. Phonemes
    /// are decomposed first (NFD, e.g. `ç` → `c` + U+0327), as at training. Returns the ids and
    /// the symbols the voice does not know (skipped).
    pub(crate) fn phoneme_ids(&self, phonemes: &str) -> (Vec<i64>, Vec<char>) {
        let pad = &self.ids[&PAD];
        let mut out = Vec::with_capacity(phonemes.len() * 2 + 4);
        let mut unknown = Vec::new();
        out.extend_from_slice(&self.ids[&BOS]);
        out.extend_from_slice(pad);
        for c in DecomposingNormalizerBorrowed::new_nfd().normalize(phonemes).chars() {
            match self.ids.get(&c) {
                Some(ids) => {
                    out.extend_from_slice(ids);
                    out.extend_from_slice(pad);
                }
                None => unknown.push(c),
            }
        }
        out.extend_from_slice(&self.ids[&EOS]);
        (out, unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"{
        "audio": {"sample_rate": 22050},
        "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_id_map": {"_": [0], "^": [1], "$": [2], " ": [3], "h": [20], "i": [21], "c": [16], "̧": [140]},
        "num_speakers": 1,
        "dataset": "joe"
    }"#;

    #[test]
    fn ids_are_padded_and_framed_like_piper() {
        let cfg = VoiceConfig::parse(SMALL).unwrap();
        assert_eq!(cfg.sample_rate, 22050);
        assert_eq!(cfg.espeak_voice, "en-us");
        assert_eq!(cfg.scales, [0.667, 1.0, 0.8]);
        assert_eq!(cfg.dataset.as_deref(), Some("joe"));
        let (ids, unknown) = cfg.phoneme_ids("hi h");
        assert_eq!(ids, [1, 0, 20, 0, 21, 0, 3, 0, 20, 0, 2]);
        assert!(unknown.is_empty());
        // A precomposed symbol is decomposed; a symbol the voice lacks is skipped and reported.
        let (ids, unknown) = cfg.phoneme_ids("çx");
        assert_eq!(ids, [1, 0, 16, 0, 140, 0, 2]);
        assert_eq!(unknown, ['x']);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            (SMALL.replace(r#""espeak": {"voice": "en-us"}"#, r#""espeak": {"voice": "-w /tmp/x"}"#), "voice name"),
            (SMALL.replace(r#""phoneme_type": "espeak""#, r#""phoneme_type": "text""#), "not supported"),
            (SMALL.replace(r#""^": [1], "#, ""), "lacks '^'"),
            (SMALL.replace(r#""h": [20]"#, r#""hh": [20]"#), "not one symbol"),
            (SMALL.replace("22050", "0"), "sample_rate"),
            ("{}".to_string(), "missing field"),
        ];
        for (json, want) in cases {
            let err = VoiceConfig::parse(&json).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
