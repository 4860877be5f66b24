//! Executors: take planned runs to completion, locally or on Slurm over SSH, never running a
//! finished run twice. They emit typed [`Event`]s; renderers in [`render`] turn them into terminal
//! lines or JSON lines, so an executor never prints.

pub mod local;
pub mod render;
pub mod slurm;
pub mod state;

use serde::{Deserialize, Serialize};

/// Where a run stands, in the scheduler's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Not started yet.
    Pending,
    /// Training.
    Running,
    /// Finished with a complete result.json.
    Completed,
    /// Ended with an error.
    Failed,
    /// Hit its time limit.
    Timeout,
    /// Preempted by the scheduler.
    Preempted,
    /// Its node failed.
    NodeFail,
    /// Killed for using too much memory.
    OutOfMemory,
    /// Cancelled by the user.
    Cancelled,
    /// The loss diverged: a result, kept and never retried by default.
    Diverged,
    /// Its result.json cannot be counted: unreadable, of a newer schema, or another run's.
    /// Kept as it is; `sweep run --retrain-invalid` trains the run again.
    Invalid,
}

impl JobState {
    /// Every state, in display order.
    pub const ALL: [JobState; 11] = [
        JobState::Pending,
        JobState::Running,
        JobState::Completed,
        JobState::Diverged,
        JobState::Failed,
        JobState::Timeout,
        JobState::Preempted,
        JobState::NodeFail,
        JobState::OutOfMemory,
        JobState::Cancelled,
        JobState::Invalid,
    ];

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Timeout => "timeout",
            JobState::Preempted => "preempted",
            JobState::NodeFail => "node_fail",
            JobState::OutOfMemory => "out_of_memory",
            JobState::Cancelled => "cancelled",
            JobState::Diverged => "diverged",
            JobState::Invalid => "invalid",
        }
    }

    /// A final state: the run has a result (completed or diverged) and is never run again.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Diverged)
    }
}

/// Something that happened while executing a sweep: the one schema of `--json` lines for both
/// executors (`sweep run`, `sweep submit [--cluster NAME] [--follow]`, `sweep follow`), one JSON
/// object per line tagged by `event`. The local executor and the Slurm executor emit the same
/// events for the same happenings; `run_queued` and `submitted` only come from a queue
/// (Slurm), and `finish` ends every command that waits for the runs to end.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Execution starts: how many runs there are and how many are already done.
    Start {
        /// The sweep.
        sweep: String,
        /// `local` or `slurm:CLUSTER`.
        executor: String,
        /// Runs in the plan.
        total: usize,
        /// Runs with a final result already, skipped.
        done: usize,
        /// Runs at a time (on Slurm, the array's concurrency limit, else every run).
        parallel: usize,
    },
    /// A run was sent to the scheduler's queue (Slurm): it starts when the scheduler starts it.
    RunQueued {
        /// Run id.
        id: String,
        /// Attempt number, from 1.
        attempt: u32,
        /// The scheduler's job id (`ARRAY_TASK`).
        job_id: Option<String>,
    },
    /// A run started.
    RunStarted {
        /// Run id.
        id: String,
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// A run is left untrained: its result cannot be counted, or it failed before and failed
    /// runs are not retried unless asked.
    RunSkipped {
        /// Run id.
        id: String,
        /// Its state.
        state: JobState,
        /// Why, and how to train it.
        detail: String,
    },
    /// A run waits: its folder's trainer from before still lives.
    RunWaiting {
        /// Run id.
        id: String,
        /// Why it waits.
        detail: String,
    },
    /// A run ended (for good, or to be sent again when the retry policy allows).
    RunEnded {
        /// Run id.
        id: String,
        /// How.
        state: JobState,
        /// Seconds it ran, as this command saw it (null when it did not see the run start).
        wall_s: Option<f64>,
        /// The error or divergence, when there is one.
        detail: Option<String>,
    },
    /// The report was written (again) from the results there are.
    Report {
        /// Its folder (report.md, report.html, report.json, ...).
        path: String,
    },
    /// A `submit` that does not follow is done: what it sent.
    Submitted {
        /// The sweep.
        sweep: String,
        /// The cluster.
        cluster: String,
        /// Runs in the plan.
        runs: usize,
        /// Runs sent now.
        submitted: usize,
        /// Runs with a final result already.
        done: usize,
        /// SSH round trips this command made.
        round_trips: u64,
        /// What `--install` did in each folder on the cluster (empty without it).
        installed: Vec<slurm::install::InstallReport>,
        /// Seconds it took.
        wall_s: f64,
    },
    /// Execution ended.
    Finish {
        /// Runs per state.
        counts: Vec<(JobState, usize)>,
        /// Seconds it took.
        wall_s: f64,
        /// Whether it was interrupted (Ctrl-C).
        interrupted: bool,
    },
}

/// A consumer of events (a renderer).
pub trait EventSink {
    /// Handle one event.
    fn emit(&mut self, event: &Event);
}
