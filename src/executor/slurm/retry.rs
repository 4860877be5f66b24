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

/// Why an ended run is not sent again (and what would send it), or `None` for a run that is
/// sent, still queued or running, or done: the `run_skipped` event's detail.
pub fn why_left(
    rec: &RunRecord,
    policy: &RetryPolicy,
    retry_failed: bool,
    leave_cancelled: bool,
) -> Option<String> {
    let state = rec.state;
    let detail = rec
        .detail
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    match state {
        JobState::Completed | JobState::Diverged | JobState::Pending | JobState::Running => None,
        JobState::Cancelled if leave_cancelled => {
            Some("cancelled; left cancelled (a cancel stands while a follow runs, and with --leave-cancelled; a `sweep submit` sends it again)".into())
        }
        _ if resubmit_record(rec, policy, retry_failed) => None,
        JobState::Invalid => Some(format!(
            "its result cannot be counted{detail}; a person looks at it"
        )),
        JobState::Failed | JobState::OutOfMemory => Some(format!(
            "{} before{detail}; `--retry-failed` sends it again",
            state.name()
        )),
        _ if !policy.retry_on.contains(&state) => Some(format!(
            "{}{detail}; the cluster's retry policy does not retry it (add \"{}\" to [retry] retry_on)",
            state.name(),
            state.name()
        )),
        _ => Some(format!(
            "{}{detail}; {} of max_attempts = {} attempts spent (raise [retry] max_attempts in the cluster's entry to send it again)",
            state.name(),
            rec.counted_attempts(),
            policy.max_attempts
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a follow says of each run it leaves: the reason and the way to send it again.
    #[test]
    fn a_run_left_says_why_and_what_would_send_it() {
        let p = RetryPolicy::default();
        let rec = |state, attempts, detail: Option<&str>| RunRecord {
            state,
            attempts,
            backend: "slurm:x".into(),
            job_id: None,
            detail: detail.map(str::to_string),
            progress: Default::default(),
        };
        let why = |r: &RunRecord, retry: bool, leave: bool| why_left(r, &p, retry, leave);
        let failed = rec(JobState::Failed, 1, Some("exit 3"));
        assert_eq!(
            why(&failed, false, false).unwrap(),
            "failed before (exit 3); `--retry-failed` sends it again"
        );
        assert_eq!(why(&failed, true, false), None, "sent again");
        let spent = rec(JobState::NodeFail, 3, None);
        assert!(why(&spent, true, false)
            .unwrap()
            .contains("3 of max_attempts = 3 attempts spent"));
        assert_eq!(why(&rec(JobState::NodeFail, 1, None), false, false), None);
        let strict = RetryPolicy {
            retry_on: vec![],
            ..RetryPolicy::default()
        };
        assert!(
            why_left(&rec(JobState::Preempted, 1, None), &strict, false, false)
                .unwrap()
                .contains("does not retry it (add \"preempted\"")
        );
        let cancelled = rec(JobState::Cancelled, 1, None);
        assert_eq!(why(&cancelled, false, false), None, "a rerun resumes it");
        assert!(why(&cancelled, false, true)
            .unwrap()
            .contains("--leave-cancelled"));
        assert!(
            why(&rec(JobState::Invalid, 1, Some("wrong hash")), true, false)
                .unwrap()
                .contains("cannot be counted (wrong hash)")
        );
        for done in [JobState::Completed, JobState::Diverged, JobState::Running] {
            assert_eq!(why(&rec(done, 1, None), true, true), None);
        }
    }

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
                ..Progress::default()
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
