//! Sweep state under results/NAME/: state.json (every write atomic, so a kill -9 at any point
//! leaves the old or the new file) and a lock that refuses a second `sweep` process.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::JobState;
use crate::results::{read_result_of, ResultError, RunIdentity, RunStatus};
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
    /// How far it got on a cluster, for telling a time-limit continuation from a failure.
    #[serde(default, skip_serializing_if = "Progress::is_empty")]
    pub progress: Progress,
}

/// Of a run on a cluster: the attempts that went on from a further checkpoint after a time
/// limit, and the checkpoint steps that tell them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Attempts that continued a run that timed out after checkpointing further than it had
    /// been sent from: not counted against the retry policy's max_attempts.
    #[serde(default)]
    pub continuations: u32,
    /// Its latest checkpoint step seen on the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_step: Option<u64>,
    /// The latest checkpoint step when it was last sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_step: Option<u64>,
    /// The job seen ended without a result.json, waited for: it fails when none comes within
    /// the grace (`executor::slurm::executor::RESULT_GRACE_S`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_wait: Option<String>,
    /// When that wait began (epoch seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_wait_since: Option<u64>,
}

impl Progress {
    fn is_empty(&self) -> bool {
        *self == Progress::default()
    }
}

impl RunRecord {
    /// Whether it timed out after checkpointing further than it had been sent from: sending it
    /// again goes on from there.
    pub fn continues(&self) -> bool {
        self.state == JobState::Timeout
            && self.progress.checkpoint_step > self.progress.submitted_step
    }

    /// Attempts that count against the retry policy: all but continuations.
    pub fn counted_attempts(&self) -> u32 {
        self.attempts.saturating_sub(self.progress.continuations)
    }
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

/// How often [`SweepLock::acquire`] tries the lock, 20 ms apart, before saying who holds it.
const LOCK_TRIES: u32 = 25;

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
        // A look by [`SweepLock::is_held`] holds a shared lock for an instant: try again for a
        // moment before saying it is taken.
        let mut tries = 0;
        while file.try_lock().is_err() {
            tries += 1;
            if tries < LOCK_TRIES {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
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

    /// Whether a sweep process holds the lock of `dir` now (a `sweep run`, `submit` or
    /// `follow` working on it), without taking it: a shared lock is tried and let go at once.
    pub fn is_held(dir: &Path) -> bool {
        let Ok(file) = std::fs::File::open(dir.join(".lock")) else {
            return false;
        };
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        }
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
        if state.schema > STATE_SCHEMA {
            return Err(StateError::Io(format!(
                "{}: sweep state of schema {}, newer than this sweep reads ({STATE_SCHEMA}); install a newer sweep",
                path.display(),
                state.schema
            )));
        }
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
    pub fn rebuild(dir: &Path, sweep: &str, runs: &[RunIdentity]) -> SweepState {
        let mut s = SweepState::new(sweep);
        for who in runs {
            let (state, detail) = result_state(&dir.join("runs").join(&who.id), who)
                .unwrap_or((JobState::Pending, None));
            s.runs.insert(
                who.id.clone(),
                RunRecord {
                    state,
                    attempts: 0,
                    backend: "local".into(),
                    job_id: None,
                    detail,
                    progress: Default::default(),
                },
            );
        }
        s
    }
}

/// [`result_state`], with a final result that was trained on this host from files that changed
/// since (still in place, other than its fingerprints) invalid too.
pub fn local_result_state(run_dir: &Path, who: &RunIdentity) -> Option<(JobState, Option<String>)> {
    let found = result_state(run_dir, who)?;
    if !found.0.is_final() {
        return Some(found);
    }
    let changed = crate::results::read_result(&run_dir.join("result.json"))
        .ok()
        .and_then(|r| crate::results::inputs_changed(&r));
    match changed {
        Some(what) => Some((
            JobState::Invalid,
            Some(format!(
                "the files it trained from changed since ({what}): its result is not the result of these inputs (kept as it is; `sweep run SPEC --retrain-invalid` trains it again)"
            )),
        )),
        None => Some(found),
    }
}

/// A run's state from what was recorded and what its folder holds (see [`result_state`]): a
/// final or invalid result on disk wins; a run recorded final here whose result.json is gone
/// is invalid (never counted, never silently retrained); an invalid run stays invalid until
/// it is retrained on request; a run left running by a killed executor is pending again (its
/// checkpoint is on disk).
pub fn reconcile(
    rec: Option<&RunRecord>,
    on_disk: Option<(JobState, Option<String>)>,
) -> (JobState, Option<String>) {
    match (on_disk, rec) {
        (Some((s, d)), _) if s.is_final() || s == JobState::Invalid => (s, d),
        (None, Some(r)) if r.state.is_final() && r.backend == "local" => (
            JobState::Invalid,
            Some(format!(
                "result.json is gone, though the run {} here (`sweep run SPEC --retrain-invalid` trains it again)",
                r.state.name()
            )),
        ),
        (_, Some(r)) if r.state == JobState::Running && r.backend == "local" => {
            (JobState::Pending, r.detail.clone())
        }
        (_, Some(r)) => (r.state, r.detail.clone()),
        (_, None) => (JobState::Pending, None),
    }
}

/// The state a run folder's result.json puts run `who` in, with its detail: None without a
/// result; [`JobState::Invalid`] (and why, and the fix) for one that cannot be counted as this
/// run's.
pub fn result_state(run_dir: &Path, who: &RunIdentity) -> Option<(JobState, Option<String>)> {
    match read_result_of(&run_dir.join("result.json"), who) {
        Ok(r) => Some((
            match r.status {
                RunStatus::Completed => JobState::Completed,
                RunStatus::Diverged => JobState::Diverged,
                RunStatus::Failed => JobState::Failed,
                RunStatus::Interrupted => JobState::Cancelled,
            },
            r.error,
        )),
        Err(ResultError::Missing(_)) => None,
        Err(e) => Some((
            JobState::Invalid,
            Some(format!(
                "{e} (kept as it is; `sweep run SPEC --retrain-invalid` trains the run again)"
            )),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!SweepLock::is_held(dir.path()), "no lock file yet");
        let lock = SweepLock::acquire(dir.path()).unwrap();
        assert!(SweepLock::is_held(dir.path()));
        let err = SweepLock::acquire(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(lock);
        // Released; a child another test of this process forks at that instant holds a copy
        // of the descriptor until it execs, so the release may show a moment later.
        let t0 = std::time::Instant::now();
        while SweepLock::is_held(dir.path()) {
            assert!(t0.elapsed().as_secs() < 10, "the lock was never released");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Looking did not take it.
        let lock = SweepLock::acquire(dir.path()).unwrap();
        drop(lock);
        // A look that holds its shared lock as a sweep starts does not refuse the sweep.
        let look = File::open(dir.path().join(".lock")).unwrap();
        look.try_lock_shared().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            drop(look);
        });
        SweepLock::acquire(dir.path()).expect("taken once the look let go");
        release.join().unwrap();
    }

    fn record(state: JobState, backend: &str) -> RunRecord {
        RunRecord {
            state,
            attempts: 1,
            backend: backend.into(),
            job_id: None,
            detail: None,
            progress: Progress::default(),
        }
    }

    #[test]
    fn the_folder_decides_and_a_vanished_result_is_invalid() {
        let done = Some((JobState::Completed, None));
        let bad = Some((JobState::Invalid, Some("not this run's".to_string())));
        let local = |s| record(s, "local");
        assert_eq!(reconcile(None, None).0, JobState::Pending);
        assert_eq!(
            reconcile(Some(&local(JobState::Failed)), done.clone()).0,
            JobState::Completed
        );
        assert_eq!(
            reconcile(Some(&local(JobState::Completed)), bad.clone()).0,
            JobState::Invalid
        );
        // Completed here, result.json gone since: invalid, not pending (never silently retrained).
        let (st, d) = reconcile(Some(&local(JobState::Completed)), None);
        assert_eq!(st, JobState::Invalid);
        assert!(d.unwrap().contains("result.json is gone"));
        // On a cluster the result is there until collected.
        let remote = record(JobState::Completed, "slurm:dev");
        assert_eq!(reconcile(Some(&remote), None).0, JobState::Completed);
        // Invalid stays invalid while its file is gone; a killed executor's running run resumes.
        assert_eq!(
            reconcile(Some(&local(JobState::Invalid)), None).0,
            JobState::Invalid
        );
        assert_eq!(
            reconcile(Some(&local(JobState::Running)), None).0,
            JobState::Pending
        );
    }

    #[test]
    fn a_newer_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            SweepState::path(dir.path()),
            r#"{"schema": 9, "sweep": "s", "runs": {}}"#,
        )
        .unwrap();
        let e = SweepState::load(dir.path(), "s").unwrap_err().to_string();
        assert!(e.contains("schema 9") && e.contains("newer sweep"), "{e}");
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
                progress: Default::default(),
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
