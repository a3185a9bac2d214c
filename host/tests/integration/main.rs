//! Integration tests: one crate, one binary, modules per capability.

mod diagnostic;
mod harness;
mod sim;
mod support;
mod telephony;
mod telephony_rest;
