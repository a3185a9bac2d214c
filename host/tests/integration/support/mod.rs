//! Test support: provider fakes and the browser test runner.

pub mod browser;
pub mod twilio_rest;
