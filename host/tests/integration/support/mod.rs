//! Test support: provider fakes.

pub mod twilio_rest;
