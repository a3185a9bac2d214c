//! Telephony providers and the stream security shared by them.

pub mod stream_token;
pub mod twilio;
