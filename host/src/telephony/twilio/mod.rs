//! Twilio: webhook signatures, TwiML, Media Streams messages and transport, and the REST client.

pub mod control;
pub mod media;
pub mod playout;
pub mod rest;
pub mod signature;
pub mod stream;
pub mod twiml;
