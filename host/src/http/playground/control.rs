//! A browser playground call's control: no phone call behind it, so hang-up and transfer never
//! reach Twilio — closing the socket ends the call, and the close frame tells the page how.

use futures_util::future::BoxFuture;
use tracing::{info, warn};

use crate::call::control::CallControl;
use crate::call::{CallInfo, Outcome};
use crate::telephony::twilio::stream::params;

pub struct PlaygroundCall;

impl CallControl for PlaygroundCall {
    fn label(&self, _info: &CallInfo) -> &'static str {
        params::PLAYGROUND
    }

    fn complete_info<'a>(&'a self, _info: &'a mut CallInfo) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn hang_up<'a>(&'a self, _info: &'a CallInfo, reason: &'a str) -> BoxFuture<'a, ()> {
        info!(reason, "hanging up");
        Box::pin(std::future::ready(()))
    }

    fn transfer<'a>(&'a self, _info: &'a CallInfo, to: &'a str) -> BoxFuture<'a, ()> {
        // The page hears about it from the call's `ended` event (outcome `transferred`).
        warn!(to, "a browser call can't be transferred to a phone number: ending it instead");
        Box::pin(std::future::ready(()))
    }

    fn close_reason(&self, outcome: &Outcome) -> String {
        outcome.label().to_string()
    }
}
