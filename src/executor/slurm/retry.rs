//! The retry policy by fault class: which ended runs `sweep submit` sends again.

use super::config::RetryPolicy;
use crate::executor::state::RunRecord;
use crate::executor::JobState;

/// Whether a run that ended in `state` after `attempts` attempts is submitted again.
/// Completed and diverged runs never are; cancelled runs are (a rerun resumes them); preempted,
/// node_fail and timeout runs are while the policy names them and attempts remain (a timed-out
/// run resumes from its checkpoint); failed and out_of_memory runs only when the policy names
/// them or `retry_failed` (`--retry-failed`, which ignores the attempt limit) is given.
pub fn resubmit(state: JobState, attempts: u32, policy: &RetryPolicy, retry_failed: bool) -> bool {
    let within = attempts < policy.max_attempts;
    match state {
        JobState::Completed | JobState::Diverged => false,
        // A result that cannot be counted is looked at by a person, not resubmitted.
        JobState::Invalid => false,
        JobState::Pending | JobState::Running => false,
        JobState::Cancelled => true,
        JobState::Failed | JobState::OutOfMemory => {
            retry_failed || (within && policy.retry_on.contains(&state))
        }
        JobState::Timeout | JobState::Preempted | JobState::NodeFail => {
            within && policy.retry_on.contains(&state)
        }
    }
}

/// Whether a run is submitted again, by its record: a run that timed out after checkpointing
/// further than it was sent from goes on (a time-limit continuation, however many it needs,
/// while the policy retries timeouts); otherwise [`resubmit`] with the attempts that count.
pub fn resubmit_record(rec: &RunRecord, policy: &RetryPolicy, retry_failed: bool) -> bool {
    if rec.continues() && policy.retry_on.contains(&JobState::Timeout) {
        return true;
    }
    resubmit(rec.state, rec.counted_attempts(), policy, retry_failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_fault_class() {
        let p = RetryPolicy::default();
        assert!(resubmit(JobState::Preempted, 1, &p, false));
        assert!(resubmit(JobState::NodeFail, 2, &p, false));
        assert!(resubmit(JobState::Timeout, 1, &p, false));
        assert!(!resubmit(JobState::Timeout, 3, &p, false), "attempts spent");
        assert!(!resubmit(JobState::Failed, 1, &p, false));
        assert!(resubmit(JobState::Failed, 7, &p, true), "--retry-failed");
        assert!(!resubmit(JobState::OutOfMemory, 1, &p, false));
        assert!(!resubmit(JobState::Diverged, 1, &p, true));
        assert!(!resubmit(JobState::Completed, 1, &p, true));
        assert!(!resubmit(JobState::Running, 1, &p, true));
        assert!(resubmit(JobState::Cancelled, 1, &p, false));
    }

    /// A run that timed out after checkpointing further than it was sent from is sent again
    /// however many time slots it has used; one that made no progress counts as an attempt.
    #[test]
    fn continuations_are_not_failures() {
        use crate::executor::state::Progress;
        let p = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let rec = |attempts, continuations, at: Option<u64>, sent: Option<u64>| RunRecord {
            state: JobState::Timeout,
            attempts,
            backend: "slurm:x".into(),
            job_id: None,
            detail: None,
            progress: Progress {
                continuations,
                checkpoint_step: at,
                submitted_step: sent,
            },
        };
        assert!(resubmit_record(&rec(1, 0, Some(100), None), &p, false));
        assert!(resubmit_record(&rec(9, 8, Some(900), Some(800)), &p, false));
        assert!(
            !resubmit_record(&rec(1, 0, None, None), &p, false),
            "no checkpoint"
        );
        assert!(
            !resubmit_record(&rec(9, 8, Some(800), Some(800)), &p, false),
            "no progress"
        );
        // Two counted attempts of three: a stalled timeout still gets its third.
        let three = RetryPolicy::default();
        assert!(resubmit_record(
            &rec(4, 2, Some(800), Some(800)),
            &three,
            false
        ));
        assert!(!resubmit_record(
            &rec(5, 2, Some(800), Some(800)),
            &three,
            false
        ));
        // Timeouts not retried by the policy: not even a continuation.
        let none = RetryPolicy {
            retry_on: vec![],
            ..RetryPolicy::default()
        };
        assert!(!resubmit_record(&rec(1, 0, Some(100), None), &none, false));
    }

    #[test]
    fn configurable() {
        let p = RetryPolicy {
            max_attempts: 2,
            retry_on: vec![JobState::Failed, JobState::OutOfMemory],
        };
        assert!(resubmit(JobState::Failed, 1, &p, false));
        assert!(!resubmit(JobState::Failed, 2, &p, false));
        assert!(resubmit(JobState::OutOfMemory, 1, &p, false));
        assert!(!resubmit(JobState::Timeout, 1, &p, false));
    }
}
