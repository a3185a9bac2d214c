//! `labels.json` of a folder of labelled recordings (schema: `host/tests/fixtures/speech/README.md`):
//! read, then checked so that scoring can rely on it — every gap sits between two speech regions
//! it names exactly, and every silence between regions has its label.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The schema version this reader understands.
pub const VERSION: u32 = 1;

/// Edges are written with 2 decimals: anything closer than this is the same time.
const SAME_TIME: f64 = 1e-6;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    pub version: u32,
    pub files: Vec<FileLabels>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileLabels {
    /// The WAV beside `labels.json`.
    pub file: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub speaker: String,
    #[serde(default)]
    pub words: String,
    /// Voiced regions `[start_s, end_s]`, sorted, not overlapping.
    pub speech: Vec<[f64; 2]>,
    pub gaps: Vec<Gap>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// End of the speech region before the gap.
    pub after_s: f64,
    /// Start of the next region; `None` for the final silence (up to the end of the file).
    pub resume_s: Option<f64>,
    pub label: GapLabel,
    #[serde(default)]
    pub before: String,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub doubtful: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapLabel {
    /// The speaker goes on with the same turn.
    Pause,
    /// A listener could take the turn here.
    TurnEnd,
}

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    // The cause is in the message, not a `source`: anyhow's `{:#}` would print it twice.
    #[error("reading {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{path}: not valid labels JSON: {error}")]
    Json { path: PathBuf, error: serde_json::Error },
    #[error("{path}: version {found}; this tool reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: no files labelled")]
    Empty { path: PathBuf },
    #[error("{path}: {file}: {message}")]
    Invalid { path: PathBuf, file: String, message: String },
}

impl Labels {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Labels, LabelsError> {
        let text = std::fs::read_to_string(path).map_err(|error| LabelsError::Read { path: path.into(), error })?;
        Labels::parse(&text, path)
    }

    /// Parses and checks labels; `origin` names them in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Labels, LabelsError> {
        let labels: Labels =
            serde_json::from_str(text).map_err(|error| LabelsError::Json { path: origin.into(), error })?;
        labels.validate(origin)?;
        Ok(labels)
    }

    fn validate(&self, origin: &Path) -> Result<(), LabelsError> {
        if self.version != VERSION {
            return Err(LabelsError::Version { path: origin.into(), found: self.version });
        }
        if self.files.is_empty() {
            return Err(LabelsError::Empty { path: origin.into() });
        }
        let mut seen = HashSet::new();
        for f in &self.files {
            let invalid = |message: String| LabelsError::Invalid { path: origin.into(), file: f.file.clone(), message };
            if !seen.insert(f.file.as_str()) {
                return Err(invalid("listed twice".into()));
            }
            f.validate().map_err(invalid)?;
        }
        Ok(())
    }
}

impl FileLabels {
    /// The consistency rules of the schema; the message says what is wrong where.
    fn validate(&self) -> Result<(), String> {
        let name = Path::new(&self.file);
        if self.file.is_empty() || name.is_absolute() || name.components().count() != 1 {
            return Err("`file` must be a plain file name beside labels.json".into());
        }
        if self.speech.is_empty() {
            return Err("no speech regions".into());
        }
        for (i, &[start, end]) in self.speech.iter().enumerate() {
            if !(start.is_finite() && end.is_finite() && start >= 0.0 && start < end) {
                return Err(format!("speech region {i} [{start}, {end}] is not a forward span of the file"));
            }
            if let Some(&[next, _]) = self.speech.get(i + 1) {
                if next < end - SAME_TIME {
                    return Err(format!("speech regions {i} and {} overlap or are out of order", i + 1));
                }
            }
        }
        // Gap k must follow region k: one gap between each pair of regions, plus at most the
        // final silence after the last one.
        let regions = self.speech.len();
        if self.gaps.len() != regions - 1 && self.gaps.len() != regions {
            return Err(format!(
                "{} gaps for {regions} speech regions: every silence between regions (and at most a final one) needs a label",
                self.gaps.len()
            ));
        }
        for (k, gap) in self.gaps.iter().enumerate() {
            let end = self.speech[k][1];
            if (gap.after_s - end).abs() > SAME_TIME {
                return Err(format!("gap {k}: after_s {} should be {end}, the end of speech region {k}", gap.after_s));
            }
            match (gap.resume_s, self.speech.get(k + 1)) {
                (Some(resume), Some(&[next, _])) if (resume - next).abs() <= SAME_TIME => {}
                (Some(resume), Some(&[next, _])) => {
                    return Err(format!(
                        "gap {k}: resume_s {resume} should be {next}, the start of speech region {}",
                        k + 1
                    ))
                }
                (None, None) => {}
                (None, Some(&[next, _])) => {
                    return Err(format!("gap {k}: resume_s is null but speech resumes at {next}"))
                }
                (Some(resume), None) => return Err(format!("gap {k}: resume_s {resume} but no speech region follows")),
            }
        }
        Ok(())
    }

    /// The final silence's gap, if the file ends in one.
    pub fn has_final_silence(&self) -> bool {
        self.gaps.last().is_some_and(|g| g.resume_s.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"version": 1, "files": [{
        "file": "a.wav", "source": "s", "speaker": "p", "words": "Does anyone want to see it?",
        "speech": [[0.12, 1.31], [1.71, 2.98]],
        "gaps": [
            {"after_s": 1.31, "resume_s": 1.71, "label": "pause", "before": "Does anyone", "after": "want", "note": "", "doubtful": false},
            {"after_s": 2.98, "resume_s": null, "label": "turn_end", "before": "see it?", "after": null, "note": "", "doubtful": true}
        ]}]}"#;

    fn parse(text: &str) -> Result<Labels, LabelsError> {
        Labels::parse(text, Path::new("labels.json"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn reads_the_documented_schema() {
        let labels = parse(GOOD).unwrap();
        let f = &labels.files[0];
        assert_eq!(f.speech, vec![[0.12, 1.31], [1.71, 2.98]]);
        assert_eq!(f.gaps[0].label, GapLabel::Pause);
        assert_eq!(f.gaps[1].label, GapLabel::TurnEnd);
        assert_eq!(f.gaps[1].resume_s, None);
        assert!(f.gaps[1].doubtful && !f.gaps[0].doubtful);
        assert!(f.has_final_silence());
    }

    #[test]
    fn the_fixture_set_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/speech/labels.json");
        let labels = Labels::load(&path).unwrap();
        let gaps: Vec<&Gap> = labels.files.iter().flat_map(|f| &f.gaps).collect();
        let pauses = gaps.iter().filter(|g| g.label == GapLabel::Pause).count();
        assert_eq!((labels.files.len(), gaps.len(), pauses), (38, 175, 109), "the README's figures");
    }

    #[test]
    fn refuses_what_scoring_could_not_trust() {
        let cases = [
            (GOOD.replace("\"version\": 1", "\"version\": 2"), "version 2"),
            (GOOD.replace("\"pause\"", "\"maybe\""), "unknown variant `maybe`"),
            (GOOD.replace("\"resume_s\": 1.71", "\"resume_s\": 1.75"), "gap 0: resume_s 1.75 should be 1.71"),
            (GOOD.replace("\"after_s\": 2.98", "\"after_s\": 2.9"), "gap 1: after_s 2.9 should be 2.98"),
            (GOOD.replace("[1.71, 2.98]", "[1.2, 2.98]"), "overlap"),
            (GOOD.replace("[0.12, 1.31]", "[1.31, 0.12]"), "not a forward span"),
            (GOOD.replace("\"resume_s\": 1.71", "\"resume_s\": null"), "speech resumes at 1.71"),
            (GOOD.replace("\"a.wav\"", "\"../a.wav\""), "plain file name"),
            (GOOD.replace("\"files\": [", "\"files\": [] , \"x\": ["), "no files"),
        ];
        for (text, expected) in cases {
            let e = error(&text);
            assert!(e.contains(expected), "{expected:?} not in {e:?}");
        }
        let e = error(&GOOD.replace("{\"after_s\": 1.31, \"resume_s\": 1.71, \"label\": \"pause\", \"before\": \"Does anyone\", \"after\": \"want\", \"note\": \"\", \"doubtful\": false},", ""));
        assert!(e.contains("a.wav: gap 0: after_s 2.98 should be 1.31"), "{e}");
        let twice = GOOD.replace("]}]}", "]}, {\"file\": \"a.wav\", \"speech\": [[0.0, 1.0]], \"gaps\": []}]}");
        assert!(error(&twice).contains("a.wav: listed twice"));
        assert!(error("{").starts_with("labels.json: not valid labels JSON"));
    }
}
