//! The lock of one run folder: one trainer per run. `sweep train` holds it (an flock on
//! `RUN_DIR/.train.lock`, holding the trainer's pid) for as long as it lives; the kernel
//! releases it when the process dies, however it dies. Executors ask who holds it before they
//! start a trainer.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in a run folder.
pub const RUN_LOCK: &str = ".train.lock";

/// Taking a run's lock failed.
#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    /// Another live process trains the run.
    #[error("another trainer{pid} is training the run in {dir}: wait for it to finish, or stop it (kill -TERM checkpoints it)")]
    Held {
        /// The run folder.
        dir: String,
        /// " (pid N)" when known.
        pid: String,
    },
    /// The lock file cannot be opened.
    #[error("{path}: cannot open the run's lock file: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A held run lock; released on drop (or by the kernel when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

fn open(dir: &Path) -> Result<File, RunLockError> {
    let path = dir.join(RUN_LOCK);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| RunLockError::Io { path, source })
}

fn pid_in(file: &mut File) -> Option<String> {
    let mut pid = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut pid);
    let pid = pid.trim();
    (!pid.is_empty()).then(|| pid.to_string())
}

impl RunLock {
    /// Take the lock of the run folder `dir` (which must exist), or say who holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock, RunLockError> {
        let mut file = open(dir)?;
        // `holder` probes by taking the lock for an instant (`sweep status`): a trainer that
        // starts in that instant tries again before it calls the run held.
        let mut held = file.try_lock().is_err();
        for _ in 0..10 {
            if !held {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            held = file.try_lock().is_err();
        }
        if held {
            return Err(RunLockError::Held {
                dir: dir.display().to_string(),
                pid: pid_in(&mut file).map_or(String::new(), |p| format!(" (pid {p})")),
            });
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(RunLock { _file: file })
    }

    /// Who holds the lock of `dir` now: Some(pid, or "" when unknown) while a trainer lives,
    /// None when no one does (or the folder has no lock file yet).
    pub fn holder(dir: &Path) -> Option<String> {
        if !dir.join(RUN_LOCK).exists() {
            return None;
        }
        let mut file = open(dir).ok()?;
        if file.try_lock().is_ok() {
            let _ = file.unlock();
            return None;
        }
        Some(pid_in(&mut file).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_trainer_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunLock::holder(dir.path()), None);
        let lock = RunLock::acquire(dir.path()).unwrap();
        let me = std::process::id().to_string();
        assert_eq!(RunLock::holder(dir.path()), Some(me.clone()));
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("(pid {me})")), "{e}");
        drop(lock);
        // Released; a child another test of this process forks at that instant holds a copy
        // of the descriptor until it execs, so the release may show a moment later.
        let t0 = std::time::Instant::now();
        while RunLock::holder(dir.path()).is_some() {
            assert!(t0.elapsed().as_secs() < 10, "the lock was never released");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        RunLock::acquire(dir.path()).unwrap();
    }
}
