//! The synthesis workers: dedicated threads (never the async reactor) that take the next chunk
//! from the scheduler, synthesise it and hand the audio back to its call.

use std::sync::Arc;

use ort::session::RunOptions;
use tokio_tungstenite::tungstenite::Bytes;

use super::phonemize::{EspeakConfig, Phonemizer};
use super::scheduler::{Call, Done, Scheduler};
use super::synth::Voice;
use super::text::Chunk;
use crate::services::tts::ReplyId;

/// What a call asks of a worker.
#[derive(Debug)]
pub(crate) enum Work {
    Speak {
        reply: ReplyId,
        chunk: Chunk,
        voice: Arc<Voice>,
    },
    /// Answered once everything the call queued before it is done.
    Flush {
        reply: ReplyId,
    },
}

impl Work {
    pub(crate) fn reply(&self) -> ReplyId {
        match self {
            Work::Speak { reply, .. } | Work::Flush { reply } => *reply,
        }
    }
}

/// Starts `count` workers on `scheduler`; they run until it stops.
pub(crate) fn spawn(count: usize, scheduler: &Arc<Scheduler<Work>>, espeak: &EspeakConfig) -> std::io::Result<()> {
    for i in 0..count.max(1) {
        let (scheduler, espeak) = (scheduler.clone(), espeak.clone());
        std::thread::Builder::new().name(format!("piper-{i}")).spawn(move || run(&scheduler, espeak))?;
    }
    Ok(())
}

fn run(scheduler: &Scheduler<Work>, espeak: EspeakConfig) {
    // Each worker has its own espeak-ng process: no lock around phonemizing.
    let mut phonemizer = Phonemizer::new(espeak);
    while let Some((call, work, epoch)) = scheduler.next() {
        perform(&mut phonemizer, &call, work, epoch);
        scheduler.finished(&call);
    }
}

fn perform(phonemizer: &mut Phonemizer, call: &Call, work: Work, epoch: u64) {
    if call.is_stale(epoch) {
        return;
    }
    match work {
        Work::Flush { reply } => call.send(Done::Flushed { reply, epoch }),
        Work::Speak { reply, chunk, voice } => {
            let run = match RunOptions::new() {
                Ok(run) => Arc::new(run),
                Err(e) => return call.send(Done::Failed { reply, epoch, error: format!("Piper run options: {e}") }),
            };
            if !call.start_run(&run, epoch) {
                return;
            }
            let result = voice.synthesize(phonemizer, &chunk, &run);
            call.end_run();
            match result {
                Ok(Some(audio)) => call.send(Done::Audio { reply, epoch, audio: Bytes::from(audio) }),
                Ok(None) => {}
                // A run stopped by `clear` fails; that is what was asked for.
                Err(_) if call.is_stale(epoch) => {}
                Err(e) => {
                    tracing::warn!(error = %e, voice = %voice.name(), "Piper synthesis failed");
                    call.send(Done::Failed { reply, epoch, error: e.to_string() });
                }
            }
        }
    }
}
