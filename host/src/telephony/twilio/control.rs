//! A Twilio phone call's control: caller numbers fetched, hang-up and `<Dial>` transfer through
//! the REST API, failures logged and counted.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tracing::{info, warn};

use super::rest::TwilioRest;
use super::twiml::{Response, Verb};
use crate::call::control::CallControl;
use crate::call::CallInfo;
use crate::metrics::Metrics;

pub struct TwilioCall {
    /// `None` without Twilio credentials: nothing to tell Twilio, the socket closes.
    pub rest: Option<TwilioRest>,
    pub metrics: Arc<Metrics>,
}

impl CallControl for TwilioCall {
    fn complete_info<'a>(&'a self, info: &'a mut CallInfo) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !info.from.is_empty() && !info.to.is_empty() {
                return;
            }
            let Some(rest) = &self.rest else { return };
            match rest.fetch_call(&info.call_sid).await {
                Ok(call) => {
                    info.from = call.from;
                    info.to = call.to;
                }
                Err(e) => warn!(call_sid = %info.call_sid, error = %e, "could not fetch caller info"),
            }
        })
    }

    fn hang_up<'a>(&'a self, info: &'a CallInfo, reason: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            info!(reason, "hanging up");
            let Some(rest) = &self.rest else { return };
            if let Err(e) = rest.end_call(&info.call_sid).await {
                Metrics::inc(&self.metrics.twilio_rest_errors, "operation", "end_call");
                warn!(error = %e, code = ?e.twilio_code(), "hang-up via REST failed");
            }
        })
    }

    fn transfer<'a>(&'a self, info: &'a CallInfo, to: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            info!(to, "transferring");
            let Some(rest) = &self.rest else { return };
            let twiml = Response::new().verb(Verb::Dial { number: to.to_string(), caller_id: None }).to_xml();
            if let Err(e) = rest.update_twiml(&info.call_sid, &twiml).await {
                Metrics::inc(&self.metrics.twilio_rest_errors, "operation", "transfer");
                warn!(error = %e, code = ?e.twilio_code(), "transfer via REST failed");
            }
        })
    }
}
