//! The speaker on an in-memory TTS stream and a scripted LLM.

use std::time::Duration;

use super::*;
use crate::engine::testing::{tts_audio, tts_stream, OneShotTts, ScriptedLlm, TtsRig};
use crate::services::llm::ChatRequest;
use crate::services::tts::{FlushBudget, TtsCommand};

struct Rig {
    speaker: Speaker,
    tts: TtsRig,
    out: mpsc::Receiver<CallOutput>,
    llm: ScriptedLlm,
}

fn rig(llm: ScriptedLlm, budget: Option<FlushBudget>, one_shot_fails: bool) -> Rig {
    let (stream, tts) = tts_stream(budget);
    let (out_tx, out) = mpsc::channel(256);
    let speaker = Speaker::new(SpeakerParts {
        out: out_tx,
        llm: Arc::new(llm.clone()),
        tts: Arc::new(OneShotTts { fail: one_shot_fails }),
        stream: Some(stream),
        voice: "test".into(),
        metrics: Arc::new(Metrics::new()),
        started: Instant::now(),
    });
    Rig { speaker, tts, out, llm }
}

impl Rig {
    /// Lets the speaker act on everything available, for a moment.
    async fn settle(&mut self) {
        for _ in 0..50 {
            if tokio::time::timeout(Duration::from_millis(2), self.speaker.wait()).await.is_err() {
                break;
            }
        }
    }

    fn outputs(&mut self) -> Vec<CallOutput> {
        std::iter::from_fn(|| self.out.try_recv().ok()).collect()
    }

    fn events(&mut self) -> Vec<SpeakEvent> {
        std::iter::from_fn(|| self.speaker.pop()).collect()
    }

    fn marks(outputs: &[CallOutput]) -> Vec<String> {
        outputs
            .iter()
            .filter_map(|o| match o {
                CallOutput::Mark(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }
}

fn request() -> ChatRequest {
    ChatRequest::default()
}

#[tokio::test]
async fn each_sentence_is_its_own_unit_and_the_reply_finishes_once_every_mark_is_back() {
    let mut r = rig(ScriptedLlm::answering(vec![ScriptedLlm::words("Hello there. How are you today?")]), None, false);
    r.speaker.start_llm_reply(request(), None, None, false);
    r.settle().await;
    let cmds = r.tts.drain();
    let units: Vec<&TtsCommand> = cmds.iter().filter(|c| matches!(c, TtsCommand::Flush { .. })).collect();
    assert_eq!(units.len(), 2, "two sentences, two flushes: {cmds:?}");
    for reply in [ReplyId(1), ReplyId(2)] {
        r.tts.events.send(tts_audio(reply)).await.unwrap();
        r.tts.events.send(TtsEvent::Flushed { reply, received_at: tokio::time::Instant::now() }).await.unwrap();
    }
    r.settle().await;
    let out = r.outputs();
    assert_eq!(Rig::marks(&out), ["u1", "u2"]);
    assert!(r.events().is_empty(), "not heard yet");
    r.speaker.on_mark("u1");
    assert!(r.events().is_empty());
    r.speaker.on_mark("u2");
    let events = r.events();
    let [SpeakEvent::Finished(done)] = &events[..] else { panic!("{events:?}") };
    assert_eq!(done.text, "Hello there. How are you today?");
    assert_eq!(done.after, After::Listen);
    assert!(!r.speaker.has_reply());
}

#[tokio::test]
async fn a_later_mark_vouches_for_earlier_ones_when_a_mark_is_lost() {
    let mut r = rig(ScriptedLlm::answering(vec![ScriptedLlm::words("One. Two. Three.")]), None, false);
    r.speaker.start_llm_reply(request(), None, None, false);
    r.settle().await;
    r.tts.answer_all().await;
    r.settle().await;
    r.speaker.on_mark("u3");
    assert!(matches!(&r.events()[..], [SpeakEvent::Finished(_)]), "u1 and u2 were heard before u3");
}

#[tokio::test]
async fn barge_in_clears_and_keeps_only_what_was_heard() {
    let mut r = rig(ScriptedLlm::answering(vec![ScriptedLlm::words("First part. Second part.")]), None, false);
    r.speaker.start_llm_reply(request(), None, None, false);
    r.settle().await;
    r.tts.answer_all().await;
    r.settle().await;
    r.speaker.on_mark("u1");
    let cut = r.speaker.barge_in().await.expect("an interruptible reply");
    assert_eq!(cut.heard, "First part.");
    assert_eq!(cut.said, "First part. Second part.");
    assert!(r.outputs().contains(&CallOutput::Clear));
    assert!(r.tts.drain().contains(&TtsCommand::Clear));
    assert!(r.speaker.barge_in().await.is_none(), "nothing left to cut");
}

#[tokio::test]
async fn a_goodbye_appended_to_a_reply_plays_after_it_and_the_hang_up_waits_for_its_mark() {
    let mut r = rig(ScriptedLlm::answering(vec![ScriptedLlm::words("Your order shipped.")]), None, false);
    r.speaker.start_llm_reply(request(), None, None, false);
    r.settle().await;
    r.speaker.say("Goodbye!", After::HangUp("goodbye".into()));
    assert!(r.speaker.barge_in().await.is_none(), "a goodbye is not interruptible");
    let flushed = r.tts.answer_all().await;
    assert_eq!(flushed, [ReplyId(1), ReplyId(2)], "the answer first, then the goodbye");
    r.settle().await;
    r.speaker.on_mark("u1");
    assert!(r.events().is_empty(), "the goodbye has not been heard");
    r.speaker.on_mark("u2");
    let events = r.events();
    let [SpeakEvent::Finished(done)] = &events[..] else { panic!("{events:?}") };
    assert_eq!(done.after, After::HangUp("goodbye".into()));
    assert_eq!(done.text, "Your order shipped. Goodbye!");
}

#[tokio::test]
async fn a_held_reply_plays_nothing_until_committed_and_keeps_its_tools_until_then() {
    let tools = vec![
        Ok(LlmEvent::TextDelta("Let me check. ".into())),
        Ok(LlmEvent::ToolCalls(vec![ToolCall { id: "c1".into(), name: "lookup".into(), arguments: "{}".into() }])),
    ];
    let mut r = rig(ScriptedLlm::answering(vec![tools]), None, false);
    r.speaker.start_llm_reply(request(), None, None, true);
    r.settle().await;
    r.tts.answer_all().await;
    r.settle().await;
    assert!(r.outputs().is_empty(), "held: nothing reaches the caller");
    assert!(r.events().is_empty(), "held: the tools wait");
    assert!(r.speaker.barge_in().await.is_none(), "barge-in leaves a held reply to its owner");
    let parked = r.speaker.commit_held(None, None).await;
    assert_eq!(parked.len(), 1, "the tools run once the turn is confirmed");
    let out = r.outputs();
    assert!(matches!(out[..], [CallOutput::Audio(_), CallOutput::Mark(_)]), "{out:?}");
}

#[tokio::test]
async fn a_discarded_held_reply_never_speaks() {
    let mut r = rig(ScriptedLlm::answering(vec![ScriptedLlm::words("Prepared answer.")]), None, false);
    r.speaker.start_llm_reply(request(), None, None, true);
    r.settle().await;
    r.speaker.discard_held();
    assert!(!r.speaker.has_reply());
    assert!(r.tts.drain().contains(&TtsCommand::Clear));
    r.tts.events.send(tts_audio(ReplyId(1))).await.unwrap();
    r.settle().await;
    assert!(r.outputs().is_empty(), "late audio of a discarded reply is dropped");
}

#[tokio::test]
async fn over_the_flush_budget_the_rest_of_a_reply_shares_one_unit() {
    let budget = FlushBudget { max: 2, window: Duration::from_secs(60) };
    let mut r =
        rig(ScriptedLlm::answering(vec![ScriptedLlm::words("A one. B two. C three. D four.")]), Some(budget), false);
    r.speaker.start_llm_reply(request(), None, None, false);
    r.settle().await;
    let cmds = r.tts.drain();
    let flushes: Vec<ReplyId> = cmds
        .iter()
        .filter_map(|c| match c {
            TtsCommand::Flush { reply } => Some(*reply),
            _ => None,
        })
        .collect();
    assert_eq!(flushes, [ReplyId(1), ReplyId(2), ReplyId(3)], "the third unit holds C and D: {cmds:?}");
    let speaks = cmds.iter().filter(|c| matches!(c, TtsCommand::Speak { reply: ReplyId(3), .. })).count();
    assert_eq!(speaks, 2);
}

#[tokio::test]
async fn a_failed_stream_is_retried_one_shot_and_three_failures_in_a_row_make_the_bot_mute() {
    let mut r = rig(ScriptedLlm::answering(vec![ScriptedLlm::words("Hi. Again. Once more.")]), None, false);
    r.speaker.start_llm_reply(request(), None, None, false);
    r.settle().await;
    r.tts.drain();
    let error = crate::services::tts::TtsError::Network("reset".into());
    r.tts.events.send(TtsEvent::Failed { replies: vec![ReplyId(1), ReplyId(2), ReplyId(3)], error }).await.unwrap();
    r.settle().await;
    assert_eq!(Rig::marks(&r.outputs()), ["u1", "u2", "u3"], "one-shot audio, in order");

    let mut r = rig(ScriptedLlm::answering(vec![ScriptedLlm::words("Hi. Again. Once more.")]), None, true);
    r.speaker.start_llm_reply(request(), None, None, false);
    r.settle().await;
    let error = crate::services::tts::TtsError::Network("reset".into());
    r.tts.events.send(TtsEvent::Failed { replies: vec![ReplyId(1), ReplyId(2), ReplyId(3)], error }).await.unwrap();
    r.settle().await;
    assert_eq!(r.events(), [SpeakEvent::Mute]);
    assert!(!r.speaker.has_reply());
}

#[tokio::test]
async fn an_llm_error_before_any_words_is_an_apology_and_on_a_held_reply_a_quiet_failure() {
    let fail = || vec![Err(LlmError::Network("reset".into()))];
    let mut r = rig(ScriptedLlm::answering(vec![fail(), fail()]), None, false);
    r.speaker.start_llm_reply(request(), None, None, false);
    r.settle().await;
    let said: Vec<String> = r
        .tts
        .drain()
        .into_iter()
        .filter_map(|c| match c {
            TtsCommand::Speak { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(said, [APOLOGY]);
    r.speaker.barge_in().await;
    r.speaker.start_llm_reply(request(), None, None, true);
    r.settle().await;
    assert_eq!(r.events(), [SpeakEvent::HeldFailed]);
    assert_eq!(r.llm.requests.lock().unwrap().len(), 2);
}
