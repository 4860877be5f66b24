//! The retry policy by fault class: which ended runs `sweep submit` sends again.

use super::config::RetryPolicy;
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
