//! Local mode end to end: a server composed from a configuration with no provider keys (so the
//! composition root picks the local speech recognizer, LLM and voice), called by the simulator
//! with a recording of a real person. The caller's words must reach the LLM, and the bot's
//! audio must say what the LLM wrote — checked by recognizing the recording's bot channel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchboard::audio::models::ModelPaths;
use switchboard::compose;
use switchboard::config::{Config, Overrides, ProviderKind};
use switchboard::http::{self, AppState};
use switchboard::metrics::Metrics;
use switchboard::persona::BuiltinProvider;
use switchboard::services::stt::local::{LocalStt, LocalSttConfig};
use switchboard::sim::{simulate_call, CallPlan, CallerAudio, Segmentation};

use crate::harness::{ACCOUNT_SID, AUTH_TOKEN};
use crate::support::twilio_rest::FakeTwilio;

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Lower-case words without punctuation.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == '-')
        .map(|w| w.chars().filter(|c| c.is_alphanumeric() || *c == '\'').collect::<String>().to_lowercase())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Word error rate of `hyp` against `reference` (Levenshtein over words).
fn word_error_rate(reference: &[String], hyp: &[String]) -> f64 {
    let mut row: Vec<usize> = (0..=hyp.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, h) in hyp.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(r != h)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[hyp.len()] as f64 / reference.len().max(1) as f64
}

/// Share of `expected`'s words that `heard` contains.
fn recall(expected: &[String], heard: &[String]) -> f64 {
    let hits = expected.iter().filter(|w| heard.contains(w)).count();
    hits as f64 / expected.len().max(1) as f64
}

/// The bot channel of a stereo recording, cut into stretches of sound at 0.4 s silences.
fn bot_utterances(path: &Path) -> Vec<Vec<f32>> {
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!((r.spec().channels, r.spec().sample_rate), (2, 8000));
    let all: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let bot: Vec<f32> = all.iter().skip(1).step_by(2).map(|&s| f32::from(s) / 32768.0).collect();
    let frame = 160;
    let loud: Vec<bool> =
        bot.chunks(frame).map(|f| (f.iter().map(|x| x * x).sum::<f32>() / f.len() as f32).sqrt() > 0.003).collect();
    let mut out = Vec::new();
    let (mut start, mut quiet) = (None, 0);
    for (i, &l) in loud.iter().enumerate() {
        match (l, start) {
            (true, None) => (start, quiet) = (Some(i), 0),
            (true, Some(_)) => quiet = 0,
            (false, Some(s)) => {
                quiet += 1;
                if quiet >= 20 {
                    out.push(bot[s * frame..(i + 1 - quiet) * frame].to_vec());
                    start = None;
                }
            }
            (false, None) => {}
        }
    }
    if let Some(s) = start {
        out.push(bot[s * frame..].to_vec());
    }
    out
}

/// Caller audio: `lead` of silence (the greeting plays), one turn of a real person, then quiet.
fn caller(turn: &str, lead: Duration, tail: Duration) -> CallerAudio {
    let mut r = hound::WavReader::open(repo("host/tests/fixtures/speech/turns").join(turn)).unwrap();
    assert_eq!(r.spec().sample_rate, 8000);
    let speech: Vec<i16> = r.samples::<i16>().map(|s| s.unwrap()).collect();
    let silence = |d: Duration| vec![0i16; (d.as_secs_f64() * 8000.0) as usize];
    let pcm = [silence(lead), speech, silence(tail)].concat();
    CallerAudio::from_pcm(&pcm, 8000, &Segmentation::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_keys_the_bot_hears_a_real_caller_and_speaks_what_its_local_llm_wrote() {
    let rest = FakeTwilio::start(ACCOUNT_SID, AUTH_TOKEN).await;
    let recordings = tempfile::tempdir().unwrap();
    let local_models = repo("models/local");
    let env: HashMap<String, String> = [
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_string()),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.to_string()),
        ("TWILIO_API_BASE_URL", rest.base_url().to_string()),
        ("LOCAL_MODELS_DIR", local_models.display().to_string()),
        ("RECORDINGS_DIR", recordings.path().display().to_string()),
        ("HISTORY", "off".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (config, warnings) = Config::from_sources(&Overrides::default(), env).unwrap();
    assert!(!warnings.iter().any(|w| w.contains("DEEPGRAM_API_KEY") || w.contains("GROQ_API_KEY")), "{warnings:?}");
    let metrics = Arc::new(Metrics::new());
    let models = ModelPaths::in_dir(repo("models"));
    let composed = compose::conversation(&config, &models, Arc::new(BuiltinProvider), metrics.clone())
        .expect("local models present: run `bash scripts/setup.sh`");
    let p = composed.providers;
    assert_eq!((p.stt, p.llm, p.tts), (ProviderKind::Local, ProviderKind::Local, ProviderKind::Local));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(config, Arc::new(composed.conversation), metrics.clone()).unwrap();
    let server = tokio::spawn(http::serve(listener, state.clone(), std::future::pending()));

    // "Who's going to implement a 4% global wealth tax?" — a lecturer, recorded at 8 kHz.
    let reference = words("Who's going to implement a four percent global wealth tax?");
    let audio = caller("t05_question_wealth_tax_8k.wav", Duration::from_secs(7), Duration::from_secs(12));
    let mut plan = CallPlan::new(format!("{base}/").parse().unwrap(), Arc::new(audio));
    plan.auth_token = Some(AUTH_TOKEN.into());
    plan.account_sid = ACCOUNT_SID.into();
    plan.hangup_after = Duration::from_secs(22);
    rest.seed_call(&plan.call_sid, &plan.from, &plan.to, "inbound", "in-progress");
    let report = simulate_call(&plan).await;
    assert!(report.ok(), "{report:?}");
    assert!(report.first_audio_ms.is_some(), "the greeting was heard");
    for _ in 0..200 {
        if state.drain.active() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let files: Vec<PathBuf> = std::fs::read_dir(recordings.path()).unwrap().map(|e| e.unwrap().path()).collect();
    let transcript = files.iter().find(|p| p.extension().is_some_and(|e| e == "jsonl")).expect("a transcript");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(transcript).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let said = |role: &str| -> Vec<String> {
        lines.iter().filter(|l| l["role"] == role).map(|l| l["text"].as_str().unwrap_or_default().to_string()).collect()
    };
    // The caller's words reached the LLM (the user line is what it was sent).
    let user = said("user");
    assert_eq!(user.len(), 1, "one caller turn: {lines:?}");
    let wer = word_error_rate(&reference, &words(&user[0]));
    assert!(wer <= 0.4, "the local STT heard {:?} (WER {wer:.2})", user[0]);
    // The bot greeted and answered, with its own words.
    let bot = said("assistant");
    assert!(bot.len() >= 2 && bot.iter().all(|t| words(t).len() >= 2), "greeting and answer: {lines:?}");
    assert!(lines.iter().any(|l| l["role"] == "assistant" && l.get("latency").is_some()), "a timed reply: {lines:?}");

    // And its audio says what the LLM wrote: recognize the bot channel of the server's recording.
    let recording = files.iter().find(|p| p.extension().is_some_and(|e| e == "wav")).expect("a recording");
    let stt = LocalStt::open(LocalSttConfig::in_models_dir(repo("models"))).unwrap();
    let mut heard = Vec::new();
    for utterance in bot_utterances(recording).iter().filter(|u| u.len() >= 2400) {
        let text = stt
            .transcribe_samples(utterance, 8000)
            .unwrap_or_else(|e| panic!("{} s of bot audio: {e}", utterance.len() / 8000));
        heard.extend(words(&text));
    }
    let written = words(&bot.join(" "));
    let r = recall(&written, &heard);
    assert!(r >= 0.6, "the bot's audio says {heard:?}; the LLM wrote {written:?} (recall {r:.2})");
    server.abort();
}

#[test]
fn word_error_rate_counts_edits() {
    let w = |s: &str| words(s);
    assert_eq!(word_error_rate(&w("a b c d"), &w("a b c d")), 0.0);
    assert_eq!(word_error_rate(&w("a b c d"), &w("a x c")), 0.5);
    assert_eq!(recall(&w("One, two."), &w("two three")), 0.5);
}
