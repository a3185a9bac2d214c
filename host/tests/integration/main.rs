//! Integration tests: one crate, one binary, modules per capability.

mod harness;
mod telephony;
