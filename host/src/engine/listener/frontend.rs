//! What the listener needs from the inbound audio pipeline, as a trait: calls use
//! [`InboundPipeline`]; tests script VAD events without models.

use std::future::Future;

use crate::audio::pipeline::{InboundPipeline, PipelineError, PipelineEvent};
use crate::audio::turn::{TurnError, TurnVerdict};

/// The inbound audio path as the listener drives it.
pub trait Frontend: Send {
    /// Feeds one frame of caller audio; `on_clean` gets each denoised frame (for STT).
    fn push(
        &mut self,
        raw: &[i16],
        on_clean: impl FnMut(&[i16]) + Send,
    ) -> impl Future<Output = Result<(), PipelineError>> + Send;
    /// Moves the events of the frames pushed so far into `out`.
    fn drain_into(&mut self, out: &mut Vec<PipelineEvent>);
    /// The verdict of the last stop; pending while nothing is scored. Cancel-safe.
    fn verdict(&mut self) -> impl Future<Output = Result<TurnVerdict, TurnError>> + Send;
    fn user_speaking(&self) -> bool;
    /// Whether a verdict is on its way.
    fn scoring(&self) -> bool;
    /// Reports a speech stop now if one is due (events follow in `drain_into`).
    fn force_stop(&mut self) -> bool;
    /// Forgets the current turn.
    fn clear_turn(&mut self);
}

impl Frontend for InboundPipeline {
    fn push(
        &mut self,
        raw: &[i16],
        on_clean: impl FnMut(&[i16]) + Send,
    ) -> impl Future<Output = Result<(), PipelineError>> + Send {
        InboundPipeline::push(self, raw, on_clean)
    }

    fn drain_into(&mut self, out: &mut Vec<PipelineEvent>) {
        out.extend(self.drain_events());
    }

    fn verdict(&mut self) -> impl Future<Output = Result<TurnVerdict, TurnError>> + Send {
        InboundPipeline::verdict(self)
    }

    fn user_speaking(&self) -> bool {
        InboundPipeline::user_speaking(self)
    }

    fn scoring(&self) -> bool {
        InboundPipeline::scoring(self)
    }

    fn force_stop(&mut self) -> bool {
        InboundPipeline::force_stop(self)
    }

    fn clear_turn(&mut self) {
        InboundPipeline::clear_turn(self)
    }
}
