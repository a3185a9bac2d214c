//! The call's transcript as the rest of the product sees it (files, history, live views): who
//! said what, when, and what each reply cost.

use serde::Serialize;

/// Who spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One line of the transcript.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TranscriptLine {
    pub role: Role,
    pub text: String,
    /// Milliseconds since the stream started.
    pub start_ms: u64,
    pub end_ms: u64,
    pub interrupted: bool,
    /// Per-turn latencies in milliseconds (assistant lines), when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<TurnLatency>,
}

/// What one reply cost, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TurnLatency {
    pub stt_final_ms: Option<f64>,
    /// Speech end → the turn was judged over and the reply requested (VAD stop window, Smart
    /// Turn, waiting for the final transcript).
    pub endpoint_ms: Option<f64>,
    pub llm_first_token_ms: Option<f64>,
    pub tts_first_byte_ms: Option<f64>,
    pub voice_to_voice_ms: Option<f64>,
}
