//! The listener on scripted VAD events and transcripts: no models, sockets or real audio.

use std::time::{Duration, Instant};

use super::*;
use crate::engine::testing::{
    final_text, interim, paused, resumed, started, stopped, stt_stream, verdict, ScriptedFrontend, SttRig,
};

fn listener(frames: Vec<Vec<PipelineEvent>>) -> (Listener<ScriptedFrontend>, SttRig) {
    let (stt, rig) = stt_stream();
    let turns = TurnTracker::new(Duration::from_millis(200), Duration::from_secs(2));
    let l = Listener::new(ScriptedFrontend::new(frames), Some(stt), turns, true, Arc::new(Metrics::new()));
    (l, rig)
}

async fn frame(l: &mut Listener<ScriptedFrontend>, at: Instant) {
    l.on_audio(&[0; 160], at).await;
}

fn drain(l: &mut Listener<ScriptedFrontend>) -> Vec<ListenEvent> {
    std::iter::from_fn(|| l.pop()).collect()
}

fn ended(events: &[ListenEvent]) -> Option<String> {
    events.iter().find_map(|e| match e {
        ListenEvent::TurnEnded { text, .. } => Some(text.clone()),
        _ => None,
    })
}

#[tokio::test]
async fn a_pause_with_final_words_is_settled_and_a_complete_stop_ends_the_turn_with_its_timing() {
    let t0 = Instant::now();
    let (mut l, mut stt) = listener(vec![vec![started()], vec![paused()], vec![stopped()]]);
    frame(&mut l, t0).await;
    assert_eq!(drain(&mut l), [ListenEvent::Vad { speaking: true }, ListenEvent::Resumed, ListenEvent::TurnStarted]);
    frame(&mut l, t0 + Duration::from_millis(500)).await;
    assert_eq!(stt.finalizes(), 1, "the pause asks for the words at once");
    l.on_stt(final_text("What time is it?", true), t0 + Duration::from_millis(560));
    let settled = drain(&mut l);
    assert!(matches!(&settled[..], [ListenEvent::Settled { text, .. }] if text == "What time is it?"), "{settled:?}");
    let stop_at = t0 + Duration::from_millis(700);
    frame(&mut l, stop_at).await;
    assert_eq!(stt.finalizes(), 0, "only silence since the pause's Finalize");
    l.on_verdict(verdict(true), stop_at + Duration::from_millis(30));
    let events = drain(&mut l);
    let Some(ListenEvent::TurnEnded { text, speech_ended, stt_final_ms, reason }) = events.last().cloned() else {
        panic!("{events:?}")
    };
    assert_eq!(text, "What time is it?");
    assert_eq!(reason, EndReason::SmartTurn);
    assert_eq!(speech_ended, Some(stop_at - Duration::from_millis(200)), "one stop window before the stop");
    let stt_ms = stt_final_ms.expect("measured from the end of speech");
    assert!((stt_ms - 124.0).abs() < 1.0, "pause start minus two windows → the final: {stt_ms}");
    assert!(!l.turn_open());
}

#[tokio::test]
async fn speech_resuming_after_a_finalize_keeps_the_turn_open_until_the_new_words_are_final() {
    let t0 = Instant::now();
    let (mut l, mut stt) = listener(vec![vec![started()], vec![paused()], vec![resumed()], vec![stopped()]]);
    frame(&mut l, t0).await;
    frame(&mut l, t0 + Duration::from_millis(400)).await;
    assert_eq!(stt.finalizes(), 1);
    frame(&mut l, t0 + Duration::from_millis(500)).await;
    assert!(drain(&mut l).contains(&ListenEvent::Resumed), "what was prepared answers the wrong words");
    // The answer to the pause's Finalize arrives after the caller went on: words, not the end.
    l.on_stt(final_text("I would like", true), t0 + Duration::from_millis(520));
    frame(&mut l, t0 + Duration::from_millis(1200)).await;
    assert_eq!(stt.finalizes(), 1, "the stop asks again");
    l.on_verdict(verdict(true), t0 + Duration::from_millis(1230));
    assert_eq!(ended(&drain(&mut l)), None, "waits for the words after the pause");
    l.on_stt(final_text("a table for two.", true), t0 + Duration::from_millis(1260));
    assert_eq!(ended(&drain(&mut l)).as_deref(), Some("I would like a table for two."));
}

#[tokio::test]
async fn an_incomplete_verdict_waits_for_the_fallback_and_interim_words_are_reported() {
    let t0 = Instant::now();
    let (mut l, _stt) = listener(vec![vec![started()], vec![stopped()], vec![PipelineEvent::Fallback { t: 1.7 }]]);
    frame(&mut l, t0).await;
    l.on_stt(interim("so I was"), t0 + Duration::from_millis(100));
    assert!(drain(&mut l).contains(&ListenEvent::Interim { text: "so I was".into() }));
    frame(&mut l, t0 + Duration::from_millis(300)).await;
    l.on_stt(final_text("so I was thinking", true), t0 + Duration::from_millis(340));
    l.on_verdict(verdict(false), t0 + Duration::from_millis(350));
    assert_eq!(ended(&drain(&mut l)), None, "incomplete: the caller may go on");
    frame(&mut l, t0 + Duration::from_millis(1800)).await;
    let events = drain(&mut l);
    assert_eq!(ended(&events).as_deref(), Some("so I was thinking"), "the silence fallback ends it");
    assert!(events.iter().any(|e| matches!(e, ListenEvent::TurnEnded { reason: EndReason::SilenceFallback, .. })));
}

#[tokio::test]
async fn a_forced_stop_waits_for_queued_frames_and_dates_the_speech_end_at_the_last_frame() {
    let t0 = Instant::now();
    let (mut l, mut stt) = listener(vec![vec![started()]]);
    frame(&mut l, t0).await;
    drain(&mut l);
    let late = t0 + AUDIO_IDLE_STOP + Duration::from_millis(10);
    assert_eq!(l.next_deadline(), Some(t0 + AUDIO_IDLE_STOP), "speaking: the audio idle stop is armed");
    l.poll(late, true);
    assert!(drain(&mut l).is_empty(), "frames are queued: the caller is not silent, the task is late");
    l.poll(late, false);
    assert_eq!(drain(&mut l), [ListenEvent::Vad { speaking: false }]);
    assert_eq!(stt.finalizes(), 1);
    assert_eq!(l.speech_ended, Some(t0), "speech ended with the last frame");
    assert_eq!(l.frontend.forced, 1);
    l.poll(late + Duration::from_secs(1), false);
    assert_eq!(l.frontend.forced, 1, "one stop per silence");
}

#[tokio::test]
async fn without_stt_turns_still_start_and_end_by_the_watchdog() {
    let t0 = Instant::now();
    let turns = TurnTracker::new(Duration::from_millis(200), Duration::from_secs(2));
    let frames = vec![vec![started()], vec![stopped()]];
    let mut l = Listener::new(ScriptedFrontend::new(frames), None, turns, true, Arc::new(Metrics::new()));
    frame(&mut l, t0).await;
    assert!(drain(&mut l).contains(&ListenEvent::TurnStarted), "barge-in works without words");
    frame(&mut l, t0 + Duration::from_millis(300)).await;
    l.on_verdict(verdict(true), t0 + Duration::from_millis(320));
    drain(&mut l);
    l.poll(t0 + Duration::from_millis(2400), false);
    let events = drain(&mut l);
    assert_eq!(ended(&events).as_deref(), Some(""), "an empty turn, ended by the watchdog");
    assert!(events.iter().any(|e| matches!(e, ListenEvent::TurnEnded { reason: EndReason::Watchdog, .. })));
}

#[tokio::test]
async fn stt_failing_for_good_stops_finalize_requests() {
    let t0 = Instant::now();
    let (mut l, mut stt) = listener(vec![vec![started()], vec![paused()]]);
    frame(&mut l, t0).await;
    l.on_stt(SttEvent::Failed(crate::services::stt::SttError::Config("revoked".into())), t0);
    frame(&mut l, t0 + Duration::from_millis(300)).await;
    assert_eq!(stt.finalizes(), 0);
}
