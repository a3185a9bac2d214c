//! Text → IPA phonemes with espeak-ng, run as a separate program (its GPL stays out of our
//! binary), the way Piper voices were trained.
//!
//! Flags: `-q` (no audio), `--ipa` (IPA as UTF-8 with no separator and no tie marks: the same
//! output as espeak's `espeak_TextToPhonemes` with `espeakPHONEMES_IPA`, which Piper's trainer
//! used), `-b 1` (the input is UTF-8), `-v <voice>` (the voice's `espeak.voice`). With neither
//! `-f` nor `--stdin`, espeak-ng reads stdin line by line, phonemizes each line at once and
//! prints one line per clause, flushed — so one process per worker serves every request and
//! each costs no start-up (~25 ms of CPU for a fresh process).
//!
//! espeak-ng prints no punctuation, so the clauses are ours (see `text`): each goes on its own
//! line followed by a sentinel line, `[[?????]]`. `[[…]]` is espeak's phoneme-input syntax, which
//! sanitised text never contains, so the sentinel's output line marks the end of one clause's
//! output however many lines espeak made of it, and the clause's pause symbol goes after it,
//! as Piper does.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::text::{sanitize, Clause};

/// A line espeak-ng reads as phonemes (five glottal stops): no text can produce it.
const SENTINEL: &str = "[[?????]]";

/// Why phonemizing failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PhonemizeError {
    #[error("starting {program} (is espeak-ng installed? `apt-get install espeak-ng`): {message}")]
    Spawn { program: String, message: String },
    #[error("{program} -v {voice} {message}")]
    Failed { program: String, voice: String, message: String },
}

/// Settings shared by every worker's phonemizer.
#[derive(Debug, Clone)]
pub(crate) struct EspeakConfig {
    pub program: PathBuf,
    /// Longest wait for one request's output before the process is presumed stuck and killed.
    pub timeout: Duration,
}

/// One worker's phonemizer: an espeak-ng process per espeak voice, started on first use and
/// restarted after a failure.
pub(crate) struct Phonemizer {
    config: EspeakConfig,
    processes: HashMap<String, Espeak>,
}

impl Phonemizer {
    pub(crate) fn new(config: EspeakConfig) -> Self {
        Phonemizer { config, processes: HashMap::new() }
    }

    /// The phonemes of `clauses` in `voice`, each followed by its pause symbols. Empty when
    /// espeak-ng finds nothing to say.
    pub(crate) fn phonemize(&mut self, voice: &str, clauses: &[Clause]) -> Result<String, PhonemizeError> {
        let process = match self.processes.remove(voice) {
            Some(p) => p,
            None => Espeak::start(&self.config, voice)?,
        };
        match process.clauses(clauses, self.config.timeout) {
            Ok(phonemes) => {
                self.processes.insert(voice.to_string(), process);
                Ok(join(clauses, &phonemes))
            }
            // The process is dropped (killed); the next request starts a fresh one.
            Err(message) => Err(self.failed(voice, message)),
        }
    }

    fn failed(&self, voice: &str, message: String) -> PhonemizeError {
        PhonemizeError::Failed { program: self.config.program.display().to_string(), voice: voice.to_string(), message }
    }
}

/// Glues clause phonemes and pause symbols; clauses espeak found nothing in are dropped.
fn join(clauses: &[Clause], phonemes: &[String]) -> String {
    let mut out = String::new();
    for (clause, ipa) in clauses.iter().zip(phonemes) {
        if ipa.is_empty() {
            continue;
        }
        out.push_str(ipa);
        out.push_str(clause.pause.map_or(" ", |p| p.symbols()));
    }
    out.truncate(out.trim_end().len());
    out
}

/// A running `espeak-ng -q --ipa` reading stdin line by line.
struct Espeak {
    child: Child,
    stdin: ChildStdin,
    /// Lines of its stdout, read on a thread of its own so a stuck process can time out.
    lines: mpsc::Receiver<String>,
    /// What the sentinel line prints in this espeak-ng version.
    sentinel: String,
}

impl Espeak {
    fn start(config: &EspeakConfig, voice: &str) -> Result<Espeak, PhonemizeError> {
        let program = config.program.display().to_string();
        let spawn_err = |message: String| PhonemizeError::Spawn { program: program.clone(), message };
        let mut child = Command::new(&config.program)
            .args(["-q", "--ipa", "-b", "1", "-v", voice])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_err(e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            kill(&mut child);
            return Err(spawn_err("no pipes to the process".into()));
        };
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::Builder::new().name("espeak-reader".into()).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        if let Err(e) = reader {
            kill(&mut child);
            return Err(spawn_err(format!("starting its reader thread: {e}")));
        }
        let mut espeak = Espeak { child, stdin, lines, sentinel: String::new() };
        // Learn the sentinel's output; an unknown voice or a broken install fails here.
        let learned = espeak
            .write(&format!("{SENTINEL}\n"))
            .and_then(|()| espeak.read_line(Instant::now() + config.timeout))
            .map(|line| line.trim().to_string());
        match learned {
            Ok(line) if !line.is_empty() => {
                espeak.sentinel = line;
                Ok(espeak)
            }
            Ok(_) => Err(PhonemizeError::Failed {
                program,
                voice: voice.into(),
                message: "printed nothing for its phoneme input".into(),
            }),
            Err(message) => {
                let stderr = espeak.stderr_text();
                Err(PhonemizeError::Failed { program, voice: voice.into(), message: format!("{message}{stderr}") })
            }
        }
    }

    /// One phoneme string per clause (espeak's lines for it joined by spaces).
    fn clauses(&self, clauses: &[Clause], timeout: Duration) -> Result<Vec<String>, String> {
        let mut request = String::new();
        for clause in clauses {
            // `text` sanitised already; done again here because the protocol depends on it.
            request.push_str(&sanitize(&clause.text));
            request.push('\n');
            request.push_str(SENTINEL);
            request.push('\n');
        }
        self.write(&request)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(clauses.len());
        for _ in clauses {
            let mut phonemes = String::new();
            loop {
                let line = self.read_line(deadline)?;
                let line = line.trim();
                if line == self.sentinel {
                    break;
                }
                if !line.is_empty() {
                    if !phonemes.is_empty() {
                        phonemes.push(' ');
                    }
                    phonemes.push_str(line);
                }
            }
            out.push(phonemes);
        }
        Ok(out)
    }

    fn write(&self, text: &str) -> Result<(), String> {
        let mut stdin = &self.stdin;
        stdin.write_all(text.as_bytes()).and_then(|()| stdin.flush()).map_err(|e| format!("stopped reading: {e}"))
    }

    fn read_line(&self, deadline: Instant) -> Result<String, String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("gave no answer within {wait:?}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("exited".into()),
        }
    }

    /// What the process wrote to stderr, once it has exited (for the error message).
    fn stderr_text(&mut self) -> String {
        kill(&mut self.child);
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        }
        let text = text.trim();
        if text.is_empty() {
            String::new()
        } else {
            format!(": {}", text.chars().take(300).collect::<String>())
        }
    }
}

impl Drop for Espeak {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Checks that `program` runs and has `voice` (at startup, so a missing espeak-ng fails there
/// rather than on the first call). espeak-ng itself falls back to another voice without a word
/// when a name is unknown, so the name is looked up in its `--voices` list.
pub(crate) fn check(config: &EspeakConfig, voice: &str) -> Result<(), PhonemizeError> {
    let program = config.program.display().to_string();
    let listing = Command::new(&config.program)
        .arg("--voices")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| PhonemizeError::Spawn { program: program.clone(), message: e.to_string() })?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    if !voice_listed(&listing, voice) {
        return Err(PhonemizeError::Failed {
            program,
            voice: voice.into(),
            message: "is not one of the voices `espeak-ng --voices` lists (is espeak-ng-data complete?)".into(),
        });
    }
    Espeak::start(config, voice).map(drop)
}

/// Whether `voice` is a language or voice name in `espeak-ng --voices` output
/// (`Pty Language Age/Gender VoiceName File Other…`).
fn voice_listed(listing: &str, voice: &str) -> bool {
    listing.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        [1, 3].iter().any(|&i| cols.get(i).is_some_and(|c| c.eq_ignore_ascii_case(voice)))
    })
}

/// `espeak-ng` on `PATH`.
pub(crate) fn default_program() -> PathBuf {
    PathBuf::from("espeak-ng")
}

#[cfg(test)]
mod tests {
    use super::super::text::{chunks, Pause};
    use super::*;

    fn config() -> EspeakConfig {
        EspeakConfig { program: default_program(), timeout: Duration::from_secs(5) }
    }

    fn say(p: &mut Phonemizer, text: &str) -> Vec<String> {
        chunks(text).iter().map(|c| p.phonemize("en-us", &c.clauses).expect("espeak-ng runs")).collect()
    }

    #[test]
    fn a_known_sentence_gives_piper_style_ipa_with_pauses() {
        let mut p = Phonemizer::new(config());
        let clauses = [
            Clause { text: "Hello there".into(), pause: Some(Pause::Comma) },
            Clause { text: "how are you today".into(), pause: Some(Pause::Question) },
        ];
        assert_eq!(p.phonemize("en-us", &clauses).unwrap(), "həlˈoʊ ðˈɛɹ, hˌaʊ ɑːɹ juː tədˈeɪ?");
        assert_eq!(say(&mut p, "The quick brown fox."), ["ðə kwˈɪk bɹˈaʊn fˈɑːks."]);
        // Numbers are read out; the abbreviation espeak splits off stays inside one clause.
        assert_eq!(say(&mut p, "Dr. Smith has 42 cats; fine!"), ["dˈɑːktɚ smˈɪθ hɐz fˈoːɹɾi tˈuː kˈæts;", "fˈaɪn!"]);
    }

    #[test]
    fn espeak_command_syntax_is_read_as_text_not_obeyed() {
        let mut p = Phonemizer::new(config());
        // Unsanitised, `[[h@loU]]` would be taken as phonemes; here the brackets are gone
        // and the sentinel can't be forged, so every clause still gets its own answer.
        let got = say(&mut p, "[[?????]] one, [[h@'loU]] two. <speak>three</speak>");
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].starts_with("wˈʌn,") && !got.concat().contains("ʔʔʔ"), "{got:?}");
        assert!(got[1].ends_with("tˈuː.") && got[2].contains("θɹˈiː"), "{got:?}");
        // The process is still in step afterwards.
        assert_eq!(say(&mut p, "Yes."), ["jˈɛs."]);
    }

    #[test]
    fn clauses_with_nothing_to_say_are_dropped_and_the_rest_kept() {
        let mut p = Phonemizer::new(config());
        let clauses = [
            Clause { text: "...".into(), pause: Some(Pause::Comma) },
            Clause { text: "okay".into(), pause: Some(Pause::Period) },
        ];
        assert_eq!(p.phonemize("en-us", &clauses).unwrap(), "oʊkˈeɪ.");
        assert_eq!(p.phonemize("en-us", &[]).unwrap(), "");
    }

    #[test]
    fn non_ascii_text_is_phonemized_without_error() {
        let mut p = Phonemizer::new(config());
        let got = say(&mut p, "Grüße aus Zürich, café 🎉 日本");
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|g| !g.is_empty()), "{got:?}");
    }

    #[test]
    fn a_missing_program_or_voice_is_a_clear_error() {
        let missing = EspeakConfig { program: "/nonexistent/espeak-ng".into(), timeout: Duration::from_secs(5) };
        let err = check(&missing, "en-us").unwrap_err();
        assert!(matches!(err, PhonemizeError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("apt-get install espeak-ng"), "{err}");
        let err = check(&config(), "zz-nonexistent").unwrap_err();
        assert!(matches!(err, PhonemizeError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("zz-nonexistent"), "{err}");
        check(&config(), "en-us").expect("Debian's espeak-ng has en-us");
    }

    #[test]
    fn a_stuck_process_times_out_and_the_next_request_restarts_it() {
        // `cat` echoes its input: the sentinel comes back unchanged, so start-up passes, but a
        // program that never answers must time out rather than hang the worker.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("stuck");
        std::fs::write(&script, "#!/bin/sh\nread line\necho \"$line\"\nexec sleep 30\n").unwrap();
        let mut perms = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&script, perms).unwrap();
        let mut p = Phonemizer::new(EspeakConfig { program: script, timeout: Duration::from_millis(300) });
        let clause = [Clause { text: "hello".into(), pause: None }];
        let started = Instant::now();
        let err = p.phonemize("en-us", &clause).unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(p.processes.is_empty(), "the stuck process is dropped");
    }
}
