//! The provider end to end on the real voice (`bash models/fetch-piper.sh` first), plus the
//! `#[ignore]`d cost measurement.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::*;
use crate::audio::models::tests::repo_models;
use crate::audio::mulaw;
use crate::services::tts::TtsStats;

fn repo_voice_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/local"))
}

fn repo_config() -> PiperConfig {
    PiperConfig { ort_dylib: repo_models().ort_dylib, ..PiperConfig::in_dir(repo_voice_dir()) }
}

/// One provider for every test (loading the voice takes about a second).
fn shared() -> &'static PiperTts {
    static TTS: OnceLock<PiperTts> = OnceLock::new();
    TTS.get_or_init(|| PiperTts::open(repo_config()).expect("run `bash models/fetch-piper.sh` first"))
}

const WAIT: Duration = Duration::from_secs(60);

async fn next_event(events: &mut TtsEvents) -> TtsEvent {
    tokio::time::timeout(WAIT, events.recv()).await.expect("an event in time").expect("the session is open")
}

/// Events until `Flushed` of `reply` (inclusive).
async fn until_flushed(events: &mut TtsEvents, reply: ReplyId) -> Vec<TtsEvent> {
    let mut got = Vec::new();
    loop {
        let ev = next_event(events).await;
        let done = matches!(ev, TtsEvent::Flushed { reply: r, .. } if r == reply);
        got.push(ev);
        if done {
            return got;
        }
    }
}

/// `(reply, kind)` of each event, consecutive audio of one reply counted once.
fn outline(events: &[TtsEvent]) -> Vec<(u64, &'static str)> {
    let mut out: Vec<(u64, &'static str)> = Vec::new();
    for ev in events {
        let item = match ev {
            TtsEvent::Audio { reply, .. } => (reply.0, "audio"),
            TtsEvent::Flushed { reply, .. } => (reply.0, "flushed"),
            TtsEvent::Failed { .. } => (0, "failed"),
            TtsEvent::Cleared { .. } => (0, "cleared"),
            _ => (0, "other"),
        };
        if out.last() != Some(&item) || item.1 != "audio" {
            out.push(item);
        }
    }
    out
}

fn audio_of(events: &[TtsEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for ev in events {
        if let TtsEvent::Audio { audio, .. } = ev {
            out.extend_from_slice(audio);
        }
    }
    out
}

fn rms(codes: &[u8]) -> f64 {
    let pcm = mulaw::decode_vec(codes);
    (pcm.iter().map(|&s| (f64::from(s) / 32768.0).powi(2)).sum::<f64>() / pcm.len().max(1) as f64).sqrt()
}

#[test]
fn pinned_hashes_match_the_sums_file() {
    let sums = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/piper.SHA256SUMS"))
        .expect("models/piper.SHA256SUMS is committed");
    let mut listed: Vec<(String, String)> =
        sums.lines().filter_map(|l| l.split_once("  ")).map(|(h, f)| (f.to_string(), h.to_string())).collect();
    listed.sort();
    let mut ours: Vec<(String, String)> = PINNED.iter().map(|(f, h)| (f.to_string(), h.to_string())).collect();
    ours.sort();
    assert_eq!(listed, ours);
}

#[test]
fn missing_corrupt_and_malformed_voices_are_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let config = |voice: &str| PiperConfig {
        voices: vec![voice.to_string()],
        ort_dylib: repo_models().ort_dylib,
        ..PiperConfig::in_dir(dir.path())
    };
    let err = PiperTts::open(config(DEFAULT_VOICE)).unwrap_err();
    assert!(matches!(err, PiperError::Missing { .. }) && err.to_string().contains("fetch-piper.sh"), "{err}");

    std::fs::write(dir.path().join("en_US-joe-medium.onnx"), b"not a model").unwrap();
    std::fs::copy(repo_voice_dir().join("en_US-joe-medium.onnx.json"), dir.path().join("en_US-joe-medium.onnx.json"))
        .unwrap();
    let err = PiperTts::open(config(DEFAULT_VOICE)).unwrap_err();
    assert!(matches!(err, PiperError::Corrupt { .. }) && err.to_string().contains("fetch-piper.sh"), "{err}");

    std::fs::write(dir.path().join("mine.onnx"), b"x").unwrap();
    std::fs::write(dir.path().join("mine.onnx.json"), b"{\"audio\": 1}").unwrap();
    let err = PiperTts::open(config("mine")).unwrap_err();
    assert!(matches!(err, PiperError::Config { .. }) && err.to_string().contains("mine.onnx.json"), "{err}");

    let err = PiperTts::open(PiperConfig { voices: vec![], ..config("mine") }).unwrap_err();
    assert!(matches!(err, PiperError::NoVoice), "{err}");
}

#[test]
fn unknown_and_cloud_voice_names_fall_back_to_the_default() {
    let tts = shared();
    let default = tts.voice_for(None);
    assert_eq!(default.name(), DEFAULT_VOICE);
    assert!(default.answers_to("en_US-joe-medium") && default.answers_to("JOE"));
    assert!(!default.answers_to("aura-2-theia-en"));
    for name in ["aura-2-theia-en", "", "../../etc/passwd"] {
        assert!(Arc::ptr_eq(tts.voice_for(Some(name)), default), "{name}");
    }
}

#[test]
fn a_sentence_becomes_speech_of_plausible_length_as_8k_mulaw() {
    let tts = shared();
    let voice = tts.voice_for(None);
    let chunk = &text::chunks("The quick brown fox jumps today.")[0];
    let mut phonemizer = phonemize::Phonemizer::new(EspeakConfig {
        program: phonemize::default_program(),
        timeout: Duration::from_secs(5),
    });
    let run = ort::session::RunOptions::new().unwrap();
    let phonemes = voice.phonemes(&mut phonemizer, chunk).unwrap();
    assert_eq!(phonemes, "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps tədˈeɪ.");
    let raw = voice.infer(&phonemes, &run).unwrap().expect("something to say");
    let secs = raw.len() as f64 / f64::from(voice.config.sample_rate);
    assert!((1.5..4.0).contains(&secs), "{secs} s for six words");

    let audio = voice.synthesize(&mut phonemizer, chunk, &run).unwrap().expect("audio");
    // 8 kHz: the sample count follows from the voice's 22.05 kHz output (the noise input makes
    // each run's length differ a little, so compare durations, not exact counts).
    let out_secs = audio.len() as f64 / 8000.0;
    assert!((out_secs - secs).abs() < 0.5, "{out_secs} s out for {secs} s in");
    // Speech: loud parts and pauses. 20 ms frames: some near −20 dBFS, some near silence.
    let frames: Vec<f64> = audio.chunks(160).map(rms).collect();
    let loud = frames.iter().filter(|r| **r > 0.05).count();
    let quiet = frames.iter().filter(|r| **r < 0.005).count();
    assert!(loud * 3 > frames.len(), "{loud} of {} frames loud", frames.len());
    assert!(quiet > 0, "no pause at all");
    assert!(rms(&audio) > 0.03, "overall level {}", rms(&audio));
}

#[tokio::test]
async fn replies_stream_audio_then_flushed_in_order() {
    let (tts, mut events) = shared().connect(TtsOptions { voice: Some("aura-2-theia-en".into()) }).await.unwrap();
    // Reply 1 is two sentences (two chunks); its audio must start before the reply is done.
    tts.speak(ReplyId(1), "Good morning, thanks for calling.");
    tts.speak(ReplyId(1), "How can I help you today?");
    tts.flush(ReplyId(1));
    tts.speak(ReplyId(2), "Sure.");
    tts.flush(ReplyId(2));
    let mut got = until_flushed(&mut events, ReplyId(1)).await;
    let audio_events = got.iter().filter(|e| matches!(e, TtsEvent::Audio { .. })).count();
    assert!(audio_events >= 2, "audio comes per chunk, not per reply ({audio_events})");
    got.extend(until_flushed(&mut events, ReplyId(2)).await);
    assert_eq!(outline(&got), [(1, "audio"), (1, "flushed"), (2, "audio"), (2, "flushed")]);
    let reply1: Vec<u8> = audio_of(&got[..got.iter().position(|e| matches!(e, TtsEvent::Flushed { .. })).unwrap()]);
    let secs = reply1.len() as f64 / 8000.0;
    assert!((2.0..7.0).contains(&secs), "{secs} s for two sentences");
    assert_eq!(TtsStats::get(&tts.stats().audio_bytes), audio_of(&got).len() as u64);
    assert_eq!(TtsStats::get(&tts.stats().speaks_sent), 3);
    tts.close();
}

#[tokio::test]
async fn clear_drops_pending_work_and_answers_cleared() {
    let (tts, mut events) = shared().connect(TtsOptions::default()).await.unwrap();
    let long = "This is a long answer that goes on and on about many things, one clause after another. ".repeat(12);
    tts.speak(ReplyId(1), long);
    tts.flush(ReplyId(1));
    // First audio of the long reply, then barge-in.
    match next_event(&mut events).await {
        TtsEvent::Audio { reply, .. } => assert_eq!(reply, ReplyId(1)),
        other => panic!("expected audio first, got {other:?}"),
    }
    tts.clear();
    tts.speak(ReplyId(2), "Okay.");
    tts.flush(ReplyId(2));
    // Cleared comes next (audio already queued in the channel before it may precede it) and
    // nothing of reply 1 after it.
    let mut after_clear = Vec::new();
    let mut cleared = false;
    loop {
        let ev = next_event(&mut events).await;
        match &ev {
            TtsEvent::Cleared { .. } => cleared = true,
            TtsEvent::Audio { reply, .. } | TtsEvent::Flushed { reply, .. } if cleared => {
                assert_eq!(*reply, ReplyId(2), "reply 1 got {ev:?} after Cleared");
            }
            _ => {}
        }
        let done = matches!(ev, TtsEvent::Flushed { reply: ReplyId(2), .. });
        after_clear.push(ev);
        if done {
            break;
        }
    }
    assert!(cleared);
    assert!(outline(&after_clear).ends_with(&[(2, "audio"), (2, "flushed")]), "{:?}", outline(&after_clear));
    assert_eq!(TtsStats::get(&tts.stats().clears_sent), 1);
    tts.close();
}

#[tokio::test]
async fn bad_input_gives_a_clear_result_and_never_hangs() {
    let tts = shared();
    let options = TtsOptions::default();
    // Nothing to say: no audio, and no error.
    for text in ["", "   ", "?!...", "\u{1}\u{2}", "[[ ]]"] {
        let audio = tts.synthesize(text.to_string(), options.clone()).await.unwrap();
        assert!(audio.is_empty(), "{text:?}");
    }
    // Said as text: non-ASCII, espeak's phoneme syntax, SSML, command-line lookalikes.
    for text in ["Grüße aus Zürich, café 🎉 日本語", "[[h@'loU]] <speak>hi</speak>", "-v de --stdin -w /tmp/x"]
    {
        let audio = tts.synthesize(text.to_string(), options.clone()).await.unwrap();
        assert!(audio.len() > 4000 && rms(&audio) > 0.02, "{text:?}: {} bytes", audio.len());
    }
    // The stream answers an empty reply's flush with Flushed and no audio.
    let (handle, mut events) = tts.connect(options.clone()).await.unwrap();
    handle.speak(ReplyId(5), "");
    handle.flush(ReplyId(5));
    assert_eq!(outline(&until_flushed(&mut events, ReplyId(5)).await), [(5, "flushed")]);
    // Very long text streams chunk by chunk: the first audio comes long before the end.
    handle.speak(ReplyId(6), "word ".repeat(3000));
    handle.flush(ReplyId(6));
    assert!(matches!(next_event(&mut events).await, TtsEvent::Audio { reply: ReplyId(6), .. }));
    handle.clear();
    loop {
        if matches!(next_event(&mut events).await, TtsEvent::Cleared { .. }) {
            break;
        }
    }
    handle.close();
}

#[tokio::test]
async fn a_failing_phonemizer_fails_the_reply_not_the_session() {
    // An "espeak-ng" that lists the voice and answers the start-up probe, then exits.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("espeak-ng");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in --voices) printf 'Pty Language Age/Gender VoiceName File\\n 2 en-us --/M x y\\n'; exit 0;; esac\n\
         read line\necho \"$line\"\nexit 0\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    let broken = PiperTts::open(PiperConfig { espeak_ng: script, workers: 1, ..repo_config() }).unwrap();
    let (handle, mut events) = broken.connect(TtsOptions::default()).await.unwrap();
    handle.speak(ReplyId(1), "Hello there.");
    handle.flush(ReplyId(1));
    match next_event(&mut events).await {
        TtsEvent::Failed { replies, error } => {
            assert_eq!(replies, [ReplyId(1)]);
            assert_eq!(error.kind(), crate::services::ErrorKind::Server);
            assert!(error.to_string().contains("espeak-ng"), "{error}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // The session lives on: a later flush of another reply is still answered (after its own
    // failure, here, since every phonemizer run fails).
    handle.speak(ReplyId(2), "Again.");
    handle.flush(ReplyId(2));
    assert!(matches!(next_event(&mut events).await, TtsEvent::Failed { replies, .. } if replies == [ReplyId(2)]));
    let err = broken.synthesize("Hi.".into(), TtsOptions::default()).await.unwrap_err();
    assert!(matches!(err, TtsError::Synthesis(_)), "{err}");
    handle.close();
}

/// RSS of this process in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Sends `text` seven times on fresh sessions and prints the time to its first audio.
async fn report_first_audio(tts: &PiperTts, what: &str, text: &str) {
    let mut firsts = Vec::new();
    for i in 0..7 {
        let (handle, mut events) = tts.connect(TtsOptions::default()).await.unwrap();
        let sent = tokio::time::Instant::now();
        handle.speak(ReplyId(i), text);
        handle.flush(ReplyId(i));
        let mut first = None;
        loop {
            match next_event(&mut events).await {
                TtsEvent::Audio { received_at, .. } => {
                    first.get_or_insert(received_at - sent);
                }
                TtsEvent::Flushed { .. } => break,
                other => panic!("{other:?}"),
            }
        }
        firsts.extend(first);
        handle.close();
    }
    firsts.sort();
    println!("piper: first audio of {what}: median {:?} (min {:?}, max {:?})", firsts[3], firsts[0], firsts[6]);
}

/// Measurement, not a check: `cargo test -p switchboard --lib -- --ignored --exact
/// services::tts::piper::tests::measure_costs --nocapture` (alone, so the RSS figures are this
/// provider's; the dev profile is fine: the time is ONNX Runtime's, and dependencies are optimised).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[ignore]
async fn measure_costs() {
    // The runtime first, so the voice's RSS is the model's own.
    crate::audio::models::ort_environment(&repo_models()).unwrap();
    let before = rss_bytes();
    let tts = PiperTts::open(PiperConfig { workers: 1, ..repo_config() }).unwrap();
    let loaded = rss_bytes();
    let voice = tts.voice_for(None).clone();
    let sentences = [
        "Thanks for calling, how can I help you today?",
        "Your appointment is confirmed for Tuesday at three in the afternoon.",
        "I can transfer you to billing, or take a message for them.",
        "Sorry, I didn't catch that, could you say it again?",
        "The order shipped yesterday and should arrive by Friday.",
    ];
    let mut phonemizer = phonemize::Phonemizer::new(EspeakConfig {
        program: phonemize::default_program(),
        timeout: Duration::from_secs(5),
    });
    let run = ort::session::RunOptions::new().unwrap();
    let (mut infer_cpu, mut total_cpu, mut audio_secs) = (Duration::ZERO, Duration::ZERO, 0.0);
    for round in 0..3 {
        for chunk in sentences.iter().flat_map(|s| text::chunks(s)) {
            let t0 = thread_cpu();
            let phonemes = voice.phonemes(&mut phonemizer, &chunk).unwrap();
            let t1 = thread_cpu();
            let raw = voice.infer(&phonemes, &run).unwrap().unwrap();
            let t2 = thread_cpu();
            let out = audio::to_mulaw_8k(&raw, voice.config.sample_rate).unwrap();
            let t3 = thread_cpu();
            if round > 0 {
                infer_cpu += t2 - t1;
                total_cpu += t3 - t0;
                audio_secs += out.len() as f64 / 8000.0;
            }
        }
    }
    let peak = rss_bytes();
    println!("piper: audio synthesised {audio_secs:.1} s");
    println!("piper: inference CPU-s per audio second (1 thread): {:.3}", infer_cpu.as_secs_f64() / audio_secs);
    println!("piper: whole chunk CPU-s per audio second (1 thread): {:.3}", total_cpu.as_secs_f64() / audio_secs);

    // Time to first audio through the streaming session.
    let ten_words = "Your appointment is confirmed for Tuesday at three this afternoon.";
    let with_comma = "Sure, I can move your appointment to Tuesday afternoon.";
    report_first_audio(&tts, "a 10-word sentence, 1 thread", ten_words).await;
    report_first_audio(&tts, "a sentence opening with \"Sure,\", 1 thread", with_comma).await;
    let two_threads = PiperTts::open(PiperConfig { workers: 1, threads: 2, ..repo_config() }).unwrap();
    report_first_audio(&two_threads, "a 10-word sentence, 2 threads", ten_words).await;
    drop(two_threads);

    // How fast a clear frees the worker: clear a long reply mid-run, time the next reply.
    let (handle, mut events) = tts.connect(TtsOptions::default()).await.unwrap();
    handle.speak(ReplyId(1), "This sentence is one of many in a very long answer that keeps going. ".repeat(10));
    handle.flush(ReplyId(1));
    let _ = next_event(&mut events).await;
    let cleared_at = Instant::now();
    handle.clear();
    handle.speak(ReplyId(2), "Okay.");
    handle.flush(ReplyId(2));
    loop {
        if let TtsEvent::Audio { reply: ReplyId(2), .. } = next_event(&mut events).await {
            break;
        }
    }
    println!("piper: clear mid-reply → next reply's first audio: {:?}", cleared_at.elapsed());
    handle.close();

    println!(
        "piper: RSS {:.0} MB before, +{:.0} MB with the voice loaded, +{:.0} MB after synthesis (peak)",
        before as f64 / 1e6,
        (loaded.saturating_sub(before)) as f64 / 1e6,
        (peak.saturating_sub(before)) as f64 / 1e6
    );
}
