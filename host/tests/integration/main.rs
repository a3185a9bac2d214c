//! Integration tests: one crate, one binary, modules per capability.

mod audio_parity;
mod conversation;
mod diagnostic;
mod fakes;
mod harness;
mod playground;
mod plugins;
mod services;
mod sim;
mod support;
mod telephony;
mod telephony_rest;
