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
    /// How far a running run has got (from its metrics.jsonl; shown with `-v`).
    RunProgress {
        /// Run id.
        id: String,
        /// Optimizer steps done.
        step: u64,
        /// Steps of the whole run.
        total_steps: u64,
        /// Training tokens seen.
        tokens: u64,
        /// The last training loss.
        train_loss: Option<f64>,
        /// Training tokens per second at the last log line.
        tokens_per_s: Option<f64>,
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
    /// Something the user should read that is not a run's: a follow round that failed and is
    /// tried again, a result on the cluster that cannot be collected, what an install did.
    Note {
        /// What happened.
        message: String,
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

impl Event {
    /// The `run_progress` event of run `id` at `p`.
    pub fn progress(id: &str, p: &crate::progress::Progress) -> Event {
        Event::RunProgress {
            id: id.to_string(),
            step: p.step,
            total_steps: p.total_steps,
            tokens: p.tokens,
            train_loss: p.train_loss,
            tokens_per_s: p.tokens_per_s,
        }
    }
}

/// A consumer of events (a renderer).
pub trait EventSink {
    /// Handle one event.
    fn emit(&mut self, event: &Event);
}

/// What a submit did: runs sent, and runs per state when it returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// Runs started (local) or queued (a cluster) now.
    pub sent: usize,
    /// Runs per state when it returned.
    pub counts: Vec<(JobState, usize)>,
    /// Stopped by a request (Ctrl-C) before every run ended (local).
    pub interrupted: bool,
}

/// What a cancel stopped.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cancelled {
    /// The sweep.
    pub sweep: String,
    /// `local` or `slurm:CLUSTER`.
    pub executor: String,
    /// Runs told to stop (they checkpoint first and stay resumable).
    pub runs: Vec<String>,
    /// Runs named that were neither queued nor running: nothing to stop.
    pub not_running: Vec<String>,
}

/// Why an executor could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The sweep state.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The cluster.
    #[error(transparent)]
    Slurm(#[from] slurm::SlurmError),
    /// Something this executor does not do, and what to do instead.
    #[error("{0}")]
    Unsupported(String),
}

/// One face for both executors: the sweep of a results folder, wherever its runs go. The
/// commands resolve the settings, hold the sweep's lock, choose the executor (a cluster when
/// the folder's slurm.json says the sweep was submitted to one) and render what it tells.
pub trait Executor {
    /// `local` or `slurm:CLUSTER`.
    fn name(&self) -> String;
    /// Hand it the runs its retry policy allows, telling `sink` what happens: the local executor
    /// trains them here and returns once they ended (or a stop was asked); a cluster's queues
    /// them and returns.
    fn submit(&mut self, sink: &mut dyn EventSink) -> Result<Submission, ExecutorError>;
    /// Bring the sweep state up to date with where the runs are; a note on how fresh it is.
    fn poll(&mut self) -> Result<Option<String>, ExecutorError>;
    /// Stop the runs `only` (every queued or running one when empty).
    fn cancel(&mut self, only: &[String]) -> Result<Cancelled, ExecutorError>;
    /// Bring the results of ended runs into the results folder (with `adapters`, LoRA adapters
    /// too).
    fn collect(&mut self, adapters: bool) -> Result<slurm::sweep::Collected, ExecutorError>;
    /// The sweep state as last seen.
    fn state(&self) -> &state::SweepState;
}

/// Runs per state of `ids` in `state`, every state listed (in display order).
pub fn count_states(state: &state::SweepState, ids: &[String]) -> Vec<(JobState, usize)> {
    JobState::ALL
        .iter()
        .map(|s| {
            let n = ids
                .iter()
                .filter(|id| state.runs.get(*id).is_some_and(|r| r.state == *s))
                .count();
            (*s, n)
        })
        .collect()
}
