//! The status of trials and attempts: one enum for the state database, the wire (the proto's
//! `Status` enum mirrors it value for value) and the results, so that every reader classifies
//! a status the same way (a diverged trial is finished but not done, everywhere).

use std::fmt;
use std::str::FromStr;

/// Where a trial stands (`trials.status`) or how an attempt ended (`attempts.outcome`); a
/// worker reports one of `Done`, `Diverged`, `Cancelled`, `Failed` for its attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// Trial: waiting for a lease.
    Queued,
    /// Trial: leased to a worker; attempt: in progress.
    Running,
    /// Finished with a result (a worker reports `ok` as this).
    Done,
    /// Finished: the loss or a metric became non-finite (the step is kept).
    Diverged,
    /// Trial: no attempts left after failures; attempt: the worker reported an error, or the
    /// report was malformed.
    Failed,
    /// Over the sweep's per-attempt time limit.
    Timeout,
    /// Attempt: no heartbeat before its deadline (the trial is re-queued).
    Expired,
    /// Attempt: stopped on request (the trial is re-queued).
    Cancelled,
    /// Attempt: its report arrived after the trial already had a result.
    Ignored,
    /// Finished early on the coordinator's word (`[early_stop]`): its checkpoints are valid
    /// results (curve and last checkpoint's metrics kept), it just did not train to the end.
    Pruned,
}

impl Status {
    pub const ALL: [Status; 10] =
        [Status::Queued, Status::Running, Status::Done, Status::Diverged, Status::Failed, Status::Timeout, Status::Expired, Status::Cancelled, Status::Ignored, Status::Pruned];

    /// The text kept in the state database and written in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Diverged => "diverged",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
            Status::Ignored => "ignored",
            Status::Pruned => "pruned",
        }
    }

    /// A trial in this status will not be leased again (without `--retry-failed`).
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Done | Status::Diverged | Status::Failed | Status::Timeout | Status::Pruned)
    }

    /// Finished with a usable result: only `Done`.
    pub fn is_success(self) -> bool {
        self == Status::Done
    }

    /// Finished without a usable result (counted as failed in summaries and reports). A
    /// pruned trial is neither a success nor unusable: its checkpoints are results, its end
    /// (sampling, final metrics) never came.
    pub fn is_unusable(self) -> bool {
        self.is_finished() && !self.is_success() && self != Status::Pruned
    }

    /// Its recorded checkpoints are valid results (every checkpoint of a done, diverged or
    /// pruned trial up to where it stopped).
    pub fn has_checkpoints(self) -> bool {
        matches!(self, Status::Done | Status::Diverged | Status::Pruned)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status text that is not one of [`Status::as_str`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_classes_are_disjoint() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
            assert!(!(s.is_success() && s.is_unusable()), "{s}");
        }
        assert!("leased".parse::<Status>().is_err());
        // The classification every crate relies on.
        let finished: Vec<_> = Status::ALL.into_iter().filter(|s| s.is_finished()).collect();
        assert_eq!(finished, [Status::Done, Status::Diverged, Status::Failed, Status::Timeout, Status::Pruned]);
        assert!(!Status::Pruned.is_unusable() && !Status::Pruned.is_success());
        assert!(Status::Diverged.is_unusable() && !Status::Diverged.is_success());
    }
}
