//! The local executor, the embedded default: runs `sweep train RUN.json` per run as a child
//! process, N at a time, each in its own process group with its log in its run folder. A stop
//! request (Ctrl-C) sends SIGTERM to every child (the trainer checkpoints on it) and leaves the
//! runs resumable; a rerun skips what finished and resumes the rest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::state::{result_state, RunRecord, StateError, SweepState};
use super::{Event, EventSink, JobState};

/// One run to execute: its id and its folder (holding run.json).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRun {
    /// Run id.
    pub id: String,
    /// Run folder.
    pub dir: PathBuf,
}

/// Settings of the local executor.
#[derive(Debug, Clone)]
pub struct LocalExecutor {
    /// The `sweep` binary to run (`train` is its first argument).
    pub program: PathBuf,
    /// Runs at a time.
    pub parallel: usize,
    /// `--threads` for each run.
    pub threads: usize,
    /// Rerun runs that failed before (else they are reported and left).
    pub retry_failed: bool,
}

/// How a local execution ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Runs per state at the end.
    pub counts: Vec<(JobState, usize)>,
    /// Stopped by a request.
    pub interrupted: bool,
}

struct Active {
    id: String,
    dir: PathBuf,
    child: Child,
    started: Instant,
}

/// Default parallelism: cores / threads per run, at least 1.
pub fn default_parallel(threads: usize) -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    (cores / threads.max(1)).max(1)
}

impl LocalExecutor {
    /// Execute `runs`, updating and saving `state` in `sweep_dir` at every change.
    pub fn run(
        &self,
        sweep_dir: &Path,
        state: &mut SweepState,
        runs: &[LocalRun],
        sink: &mut dyn EventSink,
        stop: &AtomicBool,
    ) -> Result<Outcome, StateError> {
        let t0 = Instant::now();
        // Reconcile with the run folders: a result on disk wins over the recorded state.
        for r in runs {
            let on_disk = result_state(&r.dir);
            let rec = state.runs.entry(r.id.clone()).or_insert_with(|| RunRecord {
                state: JobState::Pending,
                attempts: 0,
                backend: "local".into(),
                job_id: None,
                detail: None,
            });
            match on_disk {
                Some(s) if s.is_final() => rec.state = s,
                // A run left running by a killed executor is resumable: its checkpoint is on disk.
                _ if rec.state == JobState::Running => rec.state = JobState::Pending,
                _ => {}
            }
        }
        state.save(sweep_dir)?;
        let mut queue: Vec<&LocalRun> = runs
            .iter()
            .filter(|r| {
                let s = state.runs[&r.id].state;
                !s.is_final()
                    && (self.retry_failed || !matches!(s, JobState::Failed | JobState::OutOfMemory))
            })
            .collect();
        queue.reverse();
        let done = runs
            .iter()
            .filter(|r| state.runs[&r.id].state.is_final())
            .count();
        sink.emit(&Event::Start {
            sweep: state.sweep.clone(),
            total: runs.len(),
            done,
            parallel: self.parallel,
        });

        let mut active: Vec<Active> = Vec::new();
        let mut interrupted = false;
        loop {
            if stop.load(Ordering::SeqCst) && !interrupted {
                interrupted = true;
                for a in &active {
                    signal_group(&a.child, libc::SIGTERM);
                }
            }
            while !interrupted && active.len() < self.parallel {
                let Some(r) = queue.pop() else { break };
                let rec = state
                    .runs
                    .get_mut(&r.id)
                    .ok_or_else(|| StateError::Io(format!("run {} vanished", r.id)))?;
                rec.attempts += 1;
                rec.state = JobState::Running;
                rec.detail = None;
                let attempt = rec.attempts;
                match self.spawn(r) {
                    Ok(child) => {
                        rec.job_id = Some(format!("pid:{}", child.id()));
                        state.save(sweep_dir)?;
                        sink.emit(&Event::RunStarted {
                            id: r.id.clone(),
                            attempt,
                        });
                        active.push(Active {
                            id: r.id.clone(),
                            dir: r.dir.clone(),
                            child,
                            started: Instant::now(),
                        });
                    }
                    Err(e) => {
                        rec.state = JobState::Failed;
                        rec.detail = Some(e.clone());
                        state.save(sweep_dir)?;
                        sink.emit(&Event::RunEnded {
                            id: r.id.clone(),
                            state: JobState::Failed,
                            wall_s: 0.0,
                            detail: Some(e),
                        });
                    }
                }
            }
            if active.is_empty() && (queue.is_empty() || interrupted) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            let mut i = 0;
            while i < active.len() {
                let status = active[i]
                    .child
                    .try_wait()
                    .map_err(|e| StateError::Io(e.to_string()))?;
                let Some(status) = status else {
                    i += 1;
                    continue;
                };
                let a = active.swap_remove(i);
                let (st, detail) = classify(&a.dir, status);
                let rec = state
                    .runs
                    .get_mut(&a.id)
                    .ok_or_else(|| StateError::Io(format!("run {} vanished", a.id)))?;
                rec.state = st;
                rec.detail = detail.clone();
                rec.job_id = None;
                state.save(sweep_dir)?;
                sink.emit(&Event::RunEnded {
                    id: a.id,
                    state: st,
                    wall_s: a.started.elapsed().as_secs_f64(),
                    detail,
                });
            }
        }
        let counts = count(state, runs);
        sink.emit(&Event::Finish {
            counts: counts.clone(),
            wall_s: t0.elapsed().as_secs_f64(),
            interrupted,
        });
        Ok(Outcome {
            counts,
            interrupted,
        })
    }

    fn spawn(&self, r: &LocalRun) -> Result<Child, String> {
        use std::os::unix::process::CommandExt;
        let log_path = r.dir.join("train.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        Command::new(&self.program)
            .arg("train")
            .arg(r.dir.join("run.json"))
            .arg("--threads")
            .arg(self.threads.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))
    }
}

/// The state of a run whose process ended: its result.json decides; without one, a signal or
/// an exit of 0/130/143 means it was stopped (resumable), anything else that it failed.
fn classify(dir: &Path, status: std::process::ExitStatus) -> (JobState, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    if let Some(s) = result_state(dir) {
        let detail = crate::results::read_result(&dir.join("result.json"))
            .ok()
            .and_then(|r| r.error);
        return (s, detail);
    }
    let log = dir.join("train.log");
    match (status.code(), status.signal()) {
        // The trainer exits 0 without a result when a signal stopped it after a checkpoint.
        (Some(0 | 130 | 143), _) | (None, Some(_)) => (
            JobState::Cancelled,
            Some("stopped; rerun to resume from its checkpoint".into()),
        ),
        (Some(code), _) => (
            JobState::Failed,
            Some(format!(
                "{}; see {}",
                last_line(&log).unwrap_or_else(|| format!("exit code {code}")),
                log.display()
            )),
        ),
        (None, None) => (JobState::Failed, Some("ended without a status".into())),
    }
}

/// The last non-empty line of a log, trimmed to 200 characters.
fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.chars().take(200).collect())
}

fn signal_group(child: &Child, sig: libc::c_int) {
    // The child leads its own process group (process_group(0)), so -pid reaches it and its children.
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

fn count(state: &SweepState, runs: &[LocalRun]) -> Vec<(JobState, usize)> {
    JobState::ALL
        .iter()
        .map(|&s| {
            (
                s,
                runs.iter()
                    .filter(|r| state.runs.get(&r.id).is_some_and(|x| x.state == s))
                    .count(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::render::TextRenderer;

    /// A fake `sweep` that follows the protocol: it writes result.json, fails, or hangs.
    fn fake_program(dir: &Path) -> PathBuf {
        let p = dir.join("fake-sweep");
        std::fs::write(
            &p,
            r#"#!/bin/sh
run="$2"; d=$(dirname "$run")
case "$(cat "$run")" in
  *ok*) printf '{"schema":1,"id":"x","config_id":"x","status":"completed","step":1,"tokens":1,"total_steps":1,"final_train_loss":1.0,"evals":[],"metrics_not_measured":[],"trainable_params":1,"total_params":1,"wall_s":0.1,"peak_rss_kib":null}' > "$d/result.json"; echo trained >> "$d/count" ;;
  *fail*) echo "error: something broke" >&2; exit 1 ;;
  *hang*) trap 'exit 143' TERM; while true; do sleep 0.05; done ;;
esac
"#,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn setup(kinds: &[&str]) -> (tempfile::TempDir, Vec<LocalRun>, LocalExecutor) {
        let dir = tempfile::tempdir().unwrap();
        let runs = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let d = dir.path().join("runs").join(format!("r{i}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join("run.json"), k).unwrap();
                LocalRun {
                    id: format!("r{i}"),
                    dir: d,
                }
            })
            .collect();
        let exe = LocalExecutor {
            program: fake_program(dir.path()),
            parallel: 2,
            threads: 1,
            retry_failed: false,
        };
        (dir, runs, exe)
    }

    #[test]
    fn runs_everything_once_and_records_failures() {
        let (dir, runs, exe) = setup(&["ok", "fail", "ok"]);
        let mut state = SweepState::new("s");
        let mut out = Vec::new();
        let o = exe
            .run(
                dir.path(),
                &mut state,
                &runs,
                &mut TextRenderer::new(&mut out, false),
                &AtomicBool::new(false),
            )
            .unwrap();
        assert!(!o.interrupted);
        assert_eq!(state.runs["r0"].state, JobState::Completed);
        assert_eq!(state.runs["r1"].state, JobState::Failed);
        assert!(state.runs["r1"]
            .detail
            .as_deref()
            .unwrap()
            .contains("error: something broke"));
        // A rerun never runs a finished run twice, and leaves failures alone unless asked.
        let o = exe
            .run(
                dir.path(),
                &mut state,
                &runs,
                &mut TextRenderer::new(&mut out, false),
                &AtomicBool::new(false),
            )
            .unwrap();
        assert_eq!(
            o.counts
                .iter()
                .find(|c| c.0 == JobState::Completed)
                .unwrap()
                .1,
            2
        );
        assert_eq!(
            std::fs::read_to_string(runs[0].dir.join("count")).unwrap(),
            "trained\n"
        );
        assert_eq!(state.runs["r1"].attempts, 1);
        let retry = LocalExecutor {
            retry_failed: true,
            ..exe.clone()
        };
        retry
            .run(
                dir.path(),
                &mut state,
                &runs,
                &mut TextRenderer::new(&mut out, false),
                &AtomicBool::new(false),
            )
            .unwrap();
        assert_eq!(state.runs["r1"].attempts, 2);
        assert_eq!(
            SweepState::load(dir.path(), "s").unwrap().unwrap(),
            state,
            "every change is saved"
        );
    }

    #[test]
    fn a_stop_request_terminates_children_and_leaves_them_resumable() {
        let (dir, runs, exe) = setup(&["hang", "hang", "ok"]);
        let mut state = SweepState::new("s");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            s2.store(true, Ordering::SeqCst);
        });
        let mut out = Vec::new();
        let o = exe
            .run(
                dir.path(),
                &mut state,
                &runs,
                &mut TextRenderer::new(&mut out, false),
                &stop,
            )
            .unwrap();
        t.join().unwrap();
        assert!(o.interrupted);
        assert_eq!(state.runs["r0"].state, JobState::Cancelled);
        assert_eq!(state.runs["r1"].state, JobState::Cancelled);
        assert_eq!(
            state.runs["r2"].state,
            JobState::Pending,
            "not started after the stop"
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("interrupted (rerun to resume)"));
    }
}
