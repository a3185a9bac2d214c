//! Switchboard: a native voice host for AI phone agents on Twilio.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library so that integration
//! tests and benchmarks drive exactly the code the server runs.

pub mod audio;
pub mod call;
pub mod cli;
pub mod compose;
pub mod config;
pub mod engine;
pub mod history;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod persona;
pub mod services;
pub mod sim;
pub mod telephony;
