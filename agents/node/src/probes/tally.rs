//! How results in a row become a probe's verdict (kubelet's `resultRun`): a verdict changes
//! only after `successThreshold` successes, or `failureThreshold` failures, in a row.

use super::Timing;

#[derive(Debug, Clone)]
pub struct Tally {
    success_threshold: u32,
    failure_threshold: u32,
    /// The last result and how many times in a row it came.
    last: Option<bool>,
    run: u32,
    /// The verdict in force (None: none yet, as for a startup probe).
    verdict: Option<bool>,
}

impl Tally {
    pub fn new(timing: &Timing, initial: Option<bool>) -> Tally {
        Tally {
            success_threshold: timing.success_threshold.max(1),
            failure_threshold: timing.failure_threshold.max(1),
            last: None,
            run: 0,
            verdict: initial,
        }
    }

    /// Counts one result; returns the new verdict when it changes.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok { self.success_threshold } else { self.failure_threshold };
        if self.run < threshold || self.verdict == Some(ok) {
            return None;
        }
        self.verdict = Some(ok);
        Some(ok)
    }
}
