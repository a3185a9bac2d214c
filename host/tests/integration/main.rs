//! Integration tests: one crate, one binary, modules per capability.

mod audio_parity;
mod conversation;
mod diagnostic;
mod fakes;
mod harness;
mod history;
mod local_mode;
mod playground;
mod plugins;
mod scale_out;
mod services;
mod sim;
mod support;
mod telephony;
mod telephony_rest;

#[global_allocator]
static HEAP: support::heap::CountingAllocator = support::heap::CountingAllocator;
