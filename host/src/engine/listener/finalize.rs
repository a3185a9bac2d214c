//! The STT `Finalize` requests of one call: how many are unanswered, and which of those were
//! sent before the caller spoke again — their answers cover only the older words, so they must
//! not end the turn.

/// Counts `Finalize`s sent and answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FinalizeLedger {
    in_flight: u32,
    stale: u32,
}

impl FinalizeLedger {
    /// A `Finalize` went to the STT.
    pub fn sent(&mut self) {
        self.in_flight += 1;
    }

    /// The caller spoke again: every unanswered `Finalize` is now stale.
    pub fn speech_resumed(&mut self) {
        self.stale = self.in_flight;
    }

    /// A final answering one of our `Finalize`s arrived. True if it still finalizes the turn
    /// (it answers a request sent after the caller's latest words).
    pub fn answered(&mut self) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.stale > 0 {
            self.stale -= 1;
            return false;
        }
        true
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_to_requests_sent_before_the_caller_went_on_do_not_finalize() {
        let mut f = FinalizeLedger::default();
        f.sent(); // at the pause
        f.speech_resumed(); // the caller went on
        f.sent(); // at the VAD stop
        assert!(!f.answered(), "answers the pause's request: older words only");
        assert!(f.answered(), "answers the stop's request: everything said");
        assert_eq!(f.in_flight(), 0);
        assert!(f.answered(), "an unexpected answer is taken at its word");
    }
}
