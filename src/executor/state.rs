//! Sweep state under results/NAME/: state.json (every write atomic, so a kill -9 at any point
//! leaves the old or the new file) and a lock that refuses a second `sweep` process.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::JobState;
use crate::results::{read_result, ResultError, RunStatus};
use crate::util::write_atomic;

/// Layout version of state.json.
pub const STATE_SCHEMA: u32 = 1;

/// What the executor knows of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its state.
    pub state: JobState,
    /// Attempts started.
    pub attempts: u32,
    /// `local` or `slurm:CLUSTER`.
    pub backend: String,
    /// The scheduler's job id, for Slurm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The last error or divergence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// state.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepState {
    /// Layout version.
    pub schema: u32,
    /// The sweep.
    pub sweep: String,
    /// Runs by id.
    pub runs: BTreeMap<String, RunRecord>,
}

/// Problems with the sweep state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process holds the lock.
    #[error("another sweep process{pid} is working on {dir}: wait for it to finish or stop it")]
    Locked {
        /// The sweep folder.
        dir: String,
        /// " (pid N)" when known.
        pid: String,
    },
    /// state.json does not parse: refused, never overwritten.
    #[error("{path}: corrupt sweep state ({reason}); it was left as it is: run `sweep status SPEC --rebuild` to rebuild it from the run folders")]
    Corrupt {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// state.json belongs to another sweep.
    #[error("{path} belongs to sweep `{found}`, not `{expected}`: use another --results folder")]
    OtherSweep {
        /// The file.
        path: String,
        /// Its sweep.
        found: String,
        /// Ours.
        expected: String,
    },
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
}

/// The exclusive lock of a sweep folder, held while a process changes its state.
#[derive(Debug)]
pub struct SweepLock {
    _file: File,
}

impl SweepLock {
    /// Take the lock of `dir` (creating the folder), or say who holds it.
    pub fn acquire(dir: &Path) -> Result<SweepLock, StateError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StateError::Io(format!("{}: {e}", dir.display())))?;
        let path = dir.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StateError::Io(format!("{}: {e}", path.display())))?;
        if file.try_lock().is_err() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StateError::Locked {
                dir: dir.display().to_string(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(SweepLock { _file: file })
    }
}

impl SweepState {
    /// An empty state for a sweep.
    pub fn new(sweep: &str) -> SweepState {
        SweepState {
            schema: STATE_SCHEMA,
            sweep: sweep.to_string(),
            runs: BTreeMap::new(),
        }
    }

    /// The state file of a sweep folder.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Load the state of `dir`, or None when there is none yet.
    pub fn load(dir: &Path, sweep: &str) -> Result<Option<SweepState>, StateError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StateError::Io(format!("{}: {e}", path.display()))),
        };
        let state: SweepState = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if state.sweep != sweep {
            return Err(StateError::OtherSweep {
                path: path.display().to_string(),
                found: state.sweep,
                expected: sweep.to_string(),
            });
        }
        Ok(Some(state))
    }

    /// Save atomically.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let path = Self::path(dir);
        let json = serde_json::to_vec_pretty(self).map_err(|e| StateError::Io(e.to_string()))?;
        write_atomic(&path, |w| w.write_all(&json))
            .map_err(|e| StateError::Io(format!("{}: {e}", path.display())))
    }

    /// Rebuild the state from the run folders (`runs/ID/result.json`), for `--rebuild` after a
    /// corrupt state file. Runs without a result are pending.
    pub fn rebuild(dir: &Path, sweep: &str, ids: &[String]) -> SweepState {
        let mut s = SweepState::new(sweep);
        for id in ids {
            let state = result_state(&dir.join("runs").join(id)).unwrap_or(JobState::Pending);
            s.runs.insert(
                id.clone(),
                RunRecord {
                    state,
                    attempts: 0,
                    backend: "local".into(),
                    job_id: None,
                    detail: None,
                },
            );
        }
        s
    }
}

/// The state a run folder's result.json says the run is in (None without a result).
pub fn result_state(run_dir: &Path) -> Option<JobState> {
    match read_result(&run_dir.join("result.json")) {
        Ok(r) => Some(match r.status {
            RunStatus::Completed => JobState::Completed,
            RunStatus::Diverged => JobState::Diverged,
            RunStatus::Failed => JobState::Failed,
            RunStatus::Interrupted => JobState::Cancelled,
        }),
        Err(ResultError::Missing(_)) => None,
        Err(ResultError::Corrupt { .. }) => Some(JobState::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let lock = SweepLock::acquire(dir.path()).unwrap();
        let err = SweepLock::acquire(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(lock);
        SweepLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn corrupt_state_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(SweepState::path(dir.path()), "{\"schema\": 1, \"swe").unwrap();
        let err = SweepState::load(dir.path(), "s").unwrap_err();
        assert!(err.to_string().contains("--rebuild"), "{err}");
        assert_eq!(
            std::fs::read_to_string(SweepState::path(dir.path())).unwrap(),
            "{\"schema\": 1, \"swe"
        );
    }

    #[test]
    fn state_round_trips_and_checks_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SweepState::new("s");
        s.runs.insert(
            "a-s0".into(),
            RunRecord {
                state: JobState::Completed,
                attempts: 1,
                backend: "local".into(),
                job_id: None,
                detail: None,
            },
        );
        s.save(dir.path()).unwrap();
        assert_eq!(SweepState::load(dir.path(), "s").unwrap(), Some(s));
        assert!(matches!(
            SweepState::load(dir.path(), "t"),
            Err(StateError::OtherSweep { .. })
        ));
    }
}
