//! Test support: provider fakes and the browser test runner.

pub mod browser;
pub mod heap;
pub mod twilio_rest;
