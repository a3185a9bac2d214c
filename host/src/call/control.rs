//! What hanging up or handing off means for the kind of call behind a media stream: a phone
//! call goes through the provider's REST API; a browser playground call just closes its socket.
//! The transport asks the control chosen for the stream and never branches on the kind itself.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{CallInfo, Outcome};

/// One kind of call's side effects.
pub trait CallControl: Send + Sync {
    /// The label this kind of call carries in events and logs, given the call's direction.
    fn label(&self, info: &CallInfo) -> &'static str {
        info.direction.as_str()
    }
    /// Fills in what the stream's parameters lack (the caller's numbers).
    fn complete_info<'a>(&'a self, info: &'a mut CallInfo) -> BoxFuture<'a, ()>;
    /// Ends the call (after the caller heard what they should).
    fn hang_up<'a>(&'a self, info: &'a CallInfo, reason: &'a str) -> BoxFuture<'a, ()>;
    /// Hands the call to a phone number.
    fn transfer<'a>(&'a self, info: &'a CallInfo, to: &'a str) -> BoxFuture<'a, ()>;
    /// The reason written in the stream's close frame (who reads it learns how the call ended).
    fn close_reason(&self, _outcome: &Outcome) -> String {
        String::new()
    }
}

/// The controls a server knows: phone calls by default, others by the stream's (authenticated)
/// `direction` parameter.
#[derive(Clone)]
pub struct CallControls {
    phone: Arc<dyn CallControl>,
    by_direction: HashMap<String, Arc<dyn CallControl>>,
}

impl CallControls {
    pub fn new(phone: Arc<dyn CallControl>) -> Self {
        CallControls { phone, by_direction: HashMap::new() }
    }

    /// Streams whose `direction` parameter is `direction` get `control`.
    pub fn with(mut self, direction: &str, control: Arc<dyn CallControl>) -> Self {
        self.by_direction.insert(direction.to_string(), control);
        self
    }

    pub fn for_direction(&self, direction: Option<&str>) -> Arc<dyn CallControl> {
        direction.and_then(|d| self.by_direction.get(d)).unwrap_or(&self.phone).clone()
    }
}
