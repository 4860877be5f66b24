//! Parsing of what Slurm prints: `scontrol show config`, `squeue`, `sacct` (slurmdbd or
//! `sacct -c` for jobcomp/filetxt), `scontrol show job -o`, and the jobs.log the job script
//! appends to. Pure functions: the remote calls are elsewhere.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::script::CHECKPOINTED_EXIT;
use crate::executor::JobState;

/// Where finished jobs can be looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accounting {
    /// slurmdbd: `sacct`.
    Slurmdbd,
    /// jobcomp/filetxt: `sacct -c`.
    Jobcomp,
    /// Neither: `scontrol show job` while the controller remembers the job (MinJobAge).
    Scontrol,
}

/// What `scontrol show config` says that matters here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFacts {
    /// MaxArraySize (1001 when not printed, Slurm's default).
    pub max_array_size: u32,
    /// How to look up finished jobs.
    pub accounting: Accounting,
}

/// Read `scontrol show config` output.
pub fn parse_config(text: &str) -> ClusterFacts {
    let mut max_array_size = 1001;
    let mut storage = String::new();
    let mut jobcomp = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "MaxArraySize" => max_array_size = v.parse().unwrap_or(max_array_size),
            "AccountingStorageType" => storage = v.to_string(),
            "JobCompType" => jobcomp = v.to_string(),
            _ => {}
        }
    }
    let accounting = if storage.contains("slurmdbd") {
        Accounting::Slurmdbd
    } else if jobcomp.contains("filetxt") {
        Accounting::Jobcomp
    } else {
        Accounting::Scontrol
    };
    ClusterFacts {
        max_array_size,
        accounting,
    }
}

/// A Slurm job state (`COMPLETED`, `CANCELLED by 1001`, `FAILED`...) as a [`JobState`], or None
/// for one this tool does not know.
pub fn job_state(state: &str) -> Option<JobState> {
    let word = state
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches('+');
    Some(match word {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_FED" | "REQUEUE_HOLD" | "RESIZING"
        | "SUSPENDED" | "STOPPED" | "RESV_DEL_HOLD" | "SPECIAL_EXIT" => JobState::Pending,
        "RUNNING" | "COMPLETING" | "STAGE_OUT" | "SIGNALING" => JobState::Running,
        "COMPLETED" => JobState::Completed,
        "FAILED" | "BOOT_FAIL" | "DEADLINE" | "REVOKED" => JobState::Failed,
        "TIMEOUT" => JobState::Timeout,
        "PREEMPTED" => JobState::Preempted,
        "NODE_FAIL" => JobState::NodeFail,
        "OUT_OF_MEMORY" => JobState::OutOfMemory,
        "CANCELLED" => JobState::Cancelled,
        _ => return None,
    })
}

/// The state of a finished job from its Slurm state and `ExitCode` (`CODE:SIGNAL`): as
/// [`job_state`], except that a task that exited [`CHECKPOINTED_EXIT`] (it checkpointed at the
/// time-limit warning and stopped before the limit) is a timeout.
pub fn ended_state(state: &str, exit_code: &str) -> Option<JobState> {
    let s = job_state(state)?;
    let code = exit_code.split(':').next().unwrap_or("").trim();
    if s == JobState::Failed && code == CHECKPOINTED_EXIT.to_string() {
        return Some(JobState::Timeout);
    }
    Some(s)
}

/// Slurm's words for a finished job: its state and exit code, and what the exit code means
/// when the job script chose it.
fn ended_detail(state: &str, exit_code: &str, s: JobState) -> String {
    let mut d = format!("{state} exit {exit_code}");
    if s == JobState::Timeout && !state.starts_with("TIMEOUT") {
        d.push_str(": checkpointed at the time-limit warning (--signal)");
    }
    d
}

/// One job (or array task) as the scheduler reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// The job's own id (an array task has one too).
    pub raw_id: String,
    /// The array's job id and the task index, for array tasks.
    pub array: Option<(String, u32)>,
    /// Job name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// Slurm's words: the state, exit code or reason.
    pub detail: String,
}

/// The squeue format this module reads: raw id, array job id, task index, name, state, reason.
pub const SQUEUE_FORMAT: &str = "%A|%F|%K|%j|%T|%r";

/// Read `squeue -h -r -o SQUEUE_FORMAT` output (job names may hold `|`: fields are taken from
/// both ends).
pub fn parse_squeue(text: &str) -> Vec<JobRow> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            if f.len() < 6 {
                return None;
            }
            let n = f.len();
            let state = job_state(f[n - 2])?;
            let task = f[2].parse::<u32>().ok();
            Some(JobRow {
                raw_id: f[0].to_string(),
                array: task.map(|t| (f[1].to_string(), t)),
                name: f[3..n - 2].join("|"),
                state,
                detail: format!("{} ({})", f[n - 2], f[n - 1]),
            })
        })
        .collect()
}

/// The sacct fields this module reads.
pub const SACCT_FIELDS: &str = "JobIDRaw,JobID,JobName,State,ExitCode";

/// Read `sacct -n -P -o SACCT_FIELDS` output (with or without `-c`); steps (`123.batch`) are
/// skipped. For jobcomp/filetxt JobID is the raw id: the array task comes from jobs.log.
pub fn parse_sacct(text: &str) -> Vec<JobRow> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.trim().split('|').collect();
            if f.len() < 5 || f[0].contains('.') || f[1].contains('.') {
                return None;
            }
            let n = f.len();
            let state = ended_state(f[n - 2], f[n - 1])?;
            let array = f[1]
                .split_once('_')
                .and_then(|(j, t)| t.parse::<u32>().ok().map(|t| (j.to_string(), t)));
            Some(JobRow {
                raw_id: f[0].to_string(),
                array,
                name: f[2..n - 2].join("|"),
                state,
                detail: ended_detail(f[n - 2], f[n - 1], state),
            })
        })
        .collect()
}

/// Read `scontrol show job -o` output: one job per line of `Key=Value` words.
pub fn parse_scontrol_jobs(text: &str) -> Vec<JobRow> {
    text.lines()
        .filter_map(|l| {
            let kv: HashMap<&str, &str> = l
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect();
            let raw = kv.get("JobId")?;
            let (word, exit) = (kv.get("JobState")?, kv.get("ExitCode").unwrap_or(&"?"));
            let state = ended_state(word, exit)?;
            let array = match (kv.get("ArrayJobId"), kv.get("ArrayTaskId")) {
                (Some(j), Some(t)) => t.parse::<u32>().ok().map(|t| (j.to_string(), t)),
                _ => None,
            };
            Some(JobRow {
                raw_id: raw.to_string(),
                array,
                name: kv.get("JobName").unwrap_or(&"").to_string(),
                state,
                detail: ended_detail(word, exit, state),
            })
        })
        .collect()
}

/// Read jobs.log (`RAW ARRAY_TASK RUN_ID` per line, appended by each task as it starts): run id
/// and `ARRAY_TASK` job id by raw job id.
pub fn parse_jobs_log(text: &str) -> HashMap<String, (String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let raw = w.next()?;
            let array_task = w.next()?;
            let id = w.next()?;
            Some((raw.to_string(), (id.to_string(), array_task.to_string())))
        })
        .collect()
}

/// Read the result lines the status probe prints: `runs/ID/result.json:"status": "completed"`
/// (grep output), as run id to the state the result says.
pub fn parse_results(text: &str) -> HashMap<String, JobState> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("runs/")?;
            let (id, rest) = rest.split_once("/result.json:")?;
            let rest = rest.strip_prefix("\"status\"")?;
            let status = rest.rsplit('"').nth(1)?;
            let state = match status {
                "completed" => JobState::Completed,
                "diverged" => JobState::Diverged,
                "failed" => JobState::Failed,
                _ => return None,
            };
            Some((id.to_string(), state))
        })
        .collect()
}

/// The latest checkpoint step of each run, from the probe's `runs/ID/checkpoints/step-N` lines
/// (the builtin trainer's) and `runs/ID/checkpoint-N/trainer_state.json` lines (a Hugging Face
/// Trainer's whole checkpoints, of a user's trainer).
pub fn parse_checkpoints(text: &str) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for l in text.lines() {
        let Some(rest) = l.trim().strip_prefix("runs/") else {
            continue;
        };
        let found = rest.split_once("/checkpoints/step-").or_else(|| {
            let (id, step) = rest.split_once("/checkpoint-")?;
            Some((id, step.strip_suffix("/trainer_state.json")?))
        });
        if let Some((id, Ok(step))) = found.map(|(id, s)| (id, s.parse::<u64>())) {
            let e = out.entry(id.to_string()).or_insert(step);
            *e = (*e).max(step);
        }
    }
    out
}

/// The last metrics.jsonl line of each unfinished run, from the probe's
/// `runs/ID/metrics.jsonl:LINE` lines.
pub fn parse_progress(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (id, line) = l.strip_prefix("runs/")?.split_once("/metrics.jsonl:")?;
            Some((id.to_string(), line.to_string()))
        })
        .collect()
}

/// The `error` of each failed result.json in the probe's results section (lines
/// `runs/ID/result.json:"error": "..."`, the JSON string as written).
pub fn parse_result_errors(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("runs/")?;
            let (id, rest) = rest.split_once("/result.json:")?;
            let value = rest.strip_prefix("\"error\"")?.trim_start();
            let value = value.strip_prefix(':')?.trim_start();
            let error: String = serde_json::from_str(value).ok()?;
            Some((id.to_string(), error))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_give_states_and_errors() {
        let text = "runs/a/result.json:\"status\": \"failed\"\nruns/a/result.json:\"error\": \"device `cuda`: it said \\\"no\\\" completed\"\nruns/b/result.json:\"status\":\"completed\"\n";
        let states = parse_results(text);
        assert_eq!(states.len(), 2, "an error line is not a state: {states:?}");
        assert_eq!(states["a"], JobState::Failed);
        assert_eq!(states["b"], JobState::Completed);
        let errors = parse_result_errors(text);
        assert_eq!(errors["a"], "device `cuda`: it said \"no\" completed");
        assert!(!errors.contains_key("b"));
    }

    #[test]
    fn config_facts() {
        let text = "Configuration data as of 2026-11-28T16:12:15\nAccountingStorageType   = accounting_storage/none\nJobCompType             = jobcomp/filetxt\nMaxArraySize            = 1001\n";
        assert_eq!(
            parse_config(text),
            ClusterFacts {
                max_array_size: 1001,
                accounting: Accounting::Jobcomp
            }
        );
        let dbd = "AccountingStorageType = accounting_storage/slurmdbd\nMaxArraySize = 40001\n";
        assert_eq!(parse_config(dbd).accounting, Accounting::Slurmdbd);
        assert_eq!(parse_config(dbd).max_array_size, 40001);
        assert_eq!(parse_config("").accounting, Accounting::Scontrol);
    }

    #[test]
    fn states() {
        assert_eq!(job_state("CANCELLED by 1001"), Some(JobState::Cancelled));
        assert_eq!(job_state("COMPLETED"), Some(JobState::Completed));
        assert_eq!(job_state("OUT_OF_MEMORY"), Some(JobState::OutOfMemory));
        assert_eq!(job_state("NODE_FAIL"), Some(JobState::NodeFail));
        assert_eq!(job_state("REQUEUED"), Some(JobState::Pending));
        assert_eq!(job_state("WHATEVER"), None);
    }

    #[test]
    fn a_task_that_checkpointed_at_the_time_limit_warning_is_a_timeout() {
        assert_eq!(ended_state("FAILED", "75:0"), Some(JobState::Timeout));
        assert_eq!(ended_state("FAILED", "3:0"), Some(JobState::Failed));
        assert_eq!(ended_state("TIMEOUT", "0:15"), Some(JobState::Timeout));
        assert_eq!(
            ended_state("CANCELLED by 0", "0:15"),
            Some(JobState::Cancelled)
        );
        assert_eq!(ended_state("COMPLETED", "0:0"), Some(JobState::Completed));
        let jc = parse_sacct("7|7|sweep-x|FAILED|75:0\n");
        assert_eq!(jc[0].state, JobState::Timeout);
        assert!(
            jc[0].detail.contains("time-limit warning"),
            "{}",
            jc[0].detail
        );
        let sc = parse_scontrol_jobs("JobId=8 JobName=y JobState=FAILED ExitCode=75:0\n");
        assert_eq!(sc[0].state, JobState::Timeout);
    }

    #[test]
    fn squeue_rows() {
        let rows = parse_squeue(
            "17|12|5|sweep-ab-c|0|RUNNING|None\n12|12|0|plain|PENDING|Priority\n9|9|N/A|other|PENDING|Resources\n",
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].array, Some(("12".into(), 5)));
        assert_eq!(rows[0].name, "sweep-ab-c|0");
        assert_eq!(rows[0].state, JobState::Running);
        assert_eq!(rows[2].array, None);
    }

    #[test]
    fn sacct_rows_dbd_and_jobcomp() {
        let dbd = parse_sacct(
            "101|100_1|sweep-x|COMPLETED|0:0\n101.batch|100_1.batch|batch|COMPLETED|0:0\n102|100_2|sweep-x|FAILED|3:0\n",
        );
        assert_eq!(dbd.len(), 2);
        assert_eq!(dbd[1].array, Some(("100".into(), 2)));
        assert_eq!(dbd[1].state, JobState::Failed);
        let jc = parse_sacct("3|3|sw-test|COMPLETED|0:0\n4|4|sw-test|TIMEOUT|0:1\n");
        assert_eq!(jc[1].array, None);
        assert_eq!(jc[1].state, JobState::Timeout);
        assert_eq!(jc[1].raw_id, "4");
    }

    #[test]
    fn scontrol_rows() {
        let rows = parse_scontrol_jobs("JobId=4 ArrayJobId=1 ArrayTaskId=2 ArrayTaskThrottle=2 JobName=sw-test UserId=x JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0\nJobId=5 JobName=y JobState=PENDING\n");
        assert_eq!(rows[0].array, Some(("1".into(), 2)));
        assert_eq!(rows[0].state, JobState::Failed);
        assert_eq!(rows[1].state, JobState::Pending);
    }

    #[test]
    fn jobs_log_and_results() {
        let m = parse_jobs_log("17 12_5 abc-s0\nbroken\n18 12_6 abd-s1\n");
        assert_eq!(m["17"], ("abc-s0".to_string(), "12_5".to_string()));
        assert_eq!(m.len(), 2);
        let r = parse_results(
            "runs/abc-s0/result.json:\"status\": \"completed\"\nruns/abd-s1/result.json:\"status\":\"diverged\"\nnoise\n",
        );
        assert_eq!(r["abc-s0"], JobState::Completed);
        assert_eq!(r["abd-s1"], JobState::Diverged);
        let p = parse_progress(
            "runs/abc-s0/metrics.jsonl:{\"step\":3,\"a:b\":1}\nruns/x/checkpoints/step-1\n",
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p["abc-s0"], "{\"step\":3,\"a:b\":1}");
    }
}
