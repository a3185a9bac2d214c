//! The echo diagnostic end to end: `switchboard simulate`'s engine calls a real server over
//! loopback (signed webhook → TwiML → Media Stream), speaks a real speech clip, and the
//! recording of what the caller heard must contain that speech echoed back.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use switchboard::config::Overrides;
use switchboard::engine::echo::EchoDiagnostic;
use switchboard::sim::{simulate_call, CallPlan, CallerAudio, Segmentation};

use crate::harness::{TestServer, ACCOUNT_SID, AUTH_TOKEN};

fn speech_8k() -> Vec<i16> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dsp/speech_8k.wav");
    let mut reader = hound::WavReader::open(&path).expect("speech fixture");
    assert_eq!(reader.spec().sample_rate, 8000);
    reader.samples::<i16>().map(|s| s.unwrap()).collect()
}

/// RMS of each 20 ms frame.
fn envelope(x: &[i16]) -> Vec<f64> {
    x.chunks(160).map(|c| (c.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / c.len() as f64).sqrt()).collect()
}

fn normalized_correlation(a: &[i16], b: &[i16]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-9)
}

#[tokio::test]
async fn echo_call_through_the_simulator_hears_its_own_speech_back() {
    let env = [("TWILIO_ACCOUNT_SID", ACCOUNT_SID), ("TWILIO_AUTH_TOKEN", AUTH_TOKEN)];
    let server = TestServer::start(&env, Overrides::default(), Arc::new(EchoDiagnostic)).await;
    // One second of silence, the clip, then silence while the echo plays.
    let mut caller = vec![0i16; 8000];
    let speech = speech_8k();
    caller.extend_from_slice(&speech);
    let audio = Arc::new(CallerAudio::from_pcm(&caller, 8000, &Segmentation::default()).expect("caller audio"));
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("heard.wav");
    let mut plan = CallPlan::new(format!("{}/", server.base).parse().unwrap(), audio);
    plan.auth_token = Some(AUTH_TOKEN.into());
    plan.account_sid = ACCOUNT_SID.into();
    plan.record = Some(record.clone());
    plan.hangup_after = Duration::from_millis(1000 + speech.len() as u64 / 8 * 2 + 3000);
    let report = simulate_call(&plan).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.webhook_status, Some(200));
    assert!(
        report.first_audio_ms.is_some_and(|ms| ms < 1000.0),
        "greeting tone heard at once: {:?}",
        report.first_audio_ms
    );
    assert!(report.marks_echoed >= 2, "greeting and at least one echo played: {}", report.marks_echoed);
    assert_eq!(report.underruns, 0, "paced audio never ran dry mid-utterance");

    // The recording: caller left, bot right. Find the caller's first second of speech in the
    // bot channel, coarsely by envelope, then check the waveform itself matches.
    let mut reader = hound::WavReader::open(&record).expect("recording written");
    assert_eq!((reader.spec().channels, reader.spec().sample_rate), (2, 8000));
    let samples: Vec<i16> = reader.samples::<i16>().map(|s| s.unwrap()).collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    let onset = envelope(&left).iter().position(|&e| e > 500.0).expect("caller speech in the left channel");
    let probe = &left[onset * 160..(onset + 50) * 160];
    let probe_env = envelope(probe);
    let right_env = envelope(&right);
    let best_frame = (onset + 50..right_env.len().saturating_sub(50))
        .max_by(|&a, &b| {
            let score = |k: usize| {
                probe_env.iter().zip(&right_env[k..]).map(|(p, r)| p * r).sum::<f64>()
                    / right_env[k..k + 50].iter().map(|r| r * r).sum::<f64>().sqrt().max(1e-9)
            };
            score(a).total_cmp(&score(b))
        })
        .expect("room for an echo");
    let best = (best_frame.saturating_sub(1) * 160..(best_frame + 1) * 160)
        .map(|lag| normalized_correlation(probe, &right[lag..lag + probe.len()]))
        .fold(f64::MIN, f64::max);
    assert!(best > 0.9, "the bot channel carries the caller's speech echoed back (correlation {best:.3})");
}
