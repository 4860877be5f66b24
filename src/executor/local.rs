//! The local executor, the embedded default: runs `sweep train RUN.json` per run as a child
//! process, N at a time, each in its own process group with its log in its run folder. A stop
//! request (Ctrl-C) sends SIGTERM to every child (the trainer checkpoints on it) and leaves the
//! runs resumable; a rerun skips what finished and resumes the rest.
//!
//! Where the machine has GPUs, the executor lends them out: a run of N ranks takes N free GPUs
//! (its CUDA_VISIBLE_DEVICES), and a run waits while too few are free, so two runs never share a
//! GPU unless the GPU list names one twice.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::slurm::sweep::Collected;
use super::state::{
    local_result_state, reconcile, result_state, RunRecord, StateError, SweepState,
};
use super::{Cancelled, Event, EventSink, Executor, ExecutorError, JobState, Submission};
use crate::results::RunIdentity;
use crate::run_lock::RunLock;

/// One run to execute: its id and its folder (holding run.json).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRun {
    /// Run id.
    pub id: String,
    /// Run folder.
    pub dir: PathBuf,
    /// What its result.json must say to be counted as its result.
    pub who: RunIdentity,
    /// Why the folder cannot be trained as it is (its run.json is not the plan's), if so.
    pub problem: Option<String>,
    /// Nodes and ranks per node the run asks for: more than one rank runs as `sweep train
    /// --nproc N` here; more than one node cannot run here.
    pub ranks: (u32, u32),
    /// Optimizer steps of the whole run (for its progress).
    pub total_steps: u64,
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
    /// Train runs whose result cannot be counted ([`JobState::Invalid`]) again, from scratch
    /// (else they are reported and left as they are).
    pub retrain_invalid: bool,
    /// The GPUs lent to runs, one slot each (CUDA ids; an id listed twice is two slots, for runs
    /// asked to share it). Empty: runs train where their device says, with no GPU assigned.
    pub gpus: Vec<String>,
}

/// The GPU list of `sweep run --gpus`: comma-separated CUDA ids ("0,1,2,3"; an id twice lets
/// two runs share it), or `none`.
pub fn parse_gpus(list: &str) -> Result<Vec<String>, String> {
    let list = list.trim();
    if list == "none" || list.is_empty() {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|g| {
            let g = g.trim();
            let id = !g.is_empty() && g.chars().all(|c| c.is_ascii_digit());
            if id || g.starts_with("GPU-") || g.starts_with("MIG-") {
                Ok(g.to_string())
            } else {
                Err(format!(
                    "GPU `{g}`: give CUDA ids separated by commas (0,1,2,3), GPU-/MIG- UUIDs, or none"
                ))
            }
        })
        .collect()
}

/// Which GPU slots are lent out.
struct GpuPool {
    ids: Vec<String>,
    busy: Vec<bool>,
}

impl GpuPool {
    /// `n` free slots of distinct GPUs (a run's ranks each need their own), if there are.
    fn take(&mut self, n: usize) -> Option<Vec<usize>> {
        let mut got: Vec<usize> = Vec::new();
        for i in 0..self.ids.len() {
            if got.len() == n {
                break;
            }
            if !self.busy[i] && !got.iter().any(|&j| self.ids[j] == self.ids[i]) {
                got.push(i);
            }
        }
        (got.len() == n).then(|| {
            for &i in &got {
                self.busy[i] = true;
            }
            got
        })
    }

    fn give_back(&mut self, slots: &[usize]) {
        for &i in slots {
            self.busy[i] = false;
        }
    }

    /// Distinct GPUs: the most ranks one run can have.
    fn distinct(&self) -> usize {
        let mut ids = self.ids.clone();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    fn visible(&self, slots: &[usize]) -> String {
        slots
            .iter()
            .map(|&i| self.ids[i].as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
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
    run: LocalRun,
    child: Child,
    started: Instant,
    /// The step of its last `run_progress` event, and when its metrics were last read.
    told: (u64, Instant),
    /// Its GPU slots, given back when it ends.
    gpus: Vec<usize>,
}

/// How often a running run's metrics.jsonl is read for its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

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
            let rec = state.runs.entry(r.id.clone()).or_insert_with(|| RunRecord {
                state: JobState::Pending,
                attempts: 0,
                backend: "local".into(),
                job_id: None,
                detail: None,
                progress: Default::default(),
            });
            let (st, detail) = reconcile(Some(rec), local_result_state(&r.dir, &r.who));
            rec.state = st;
            rec.detail = detail;
            if let Some(p) = &r.problem {
                rec.state = JobState::Invalid;
                rec.detail = Some(p.clone());
            }
            if rec.state == JobState::Invalid && self.retrain_invalid && r.problem.is_none() {
                reset_outputs(&r.dir).map_err(|e| {
                    StateError::Io(format!("clearing {} to retrain it: {e}", r.dir.display()))
                })?;
                rec.state = JobState::Pending;
                rec.detail = None;
            }
        }
        state.save(sweep_dir)?;
        let mut queue: Vec<&LocalRun> = runs
            .iter()
            .filter(|r| {
                let s = state.runs[&r.id].state;
                !s.is_final()
                    && s != JobState::Invalid
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
            executor: "local".into(),
            total: runs.len(),
            done,
            parallel: self.parallel,
        });
        for r in runs {
            let rec = &state.runs[&r.id];
            let why = match rec.state {
                JobState::Invalid => rec.detail.clone().unwrap_or_default(),
                JobState::Failed | JobState::OutOfMemory if !self.retry_failed => format!(
                    "{} before{}; `--retry-failed` runs it again",
                    rec.state.name(),
                    rec.detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
                _ => continue,
            };
            sink.emit(&Event::RunSkipped {
                id: r.id.clone(),
                state: rec.state,
                detail: why,
            });
        }

        let mut active: Vec<Active> = Vec::new();
        let mut interrupted = false;
        let mut waiting = std::collections::HashSet::new();
        let mut pool = GpuPool {
            ids: self.gpus.clone(),
            busy: vec![false; self.gpus.len()],
        };
        loop {
            if stop.load(Ordering::SeqCst) && !interrupted {
                interrupted = true;
                for a in &active {
                    signal_group(&a.child, libc::SIGTERM);
                }
            }
            let mut deferred: Vec<&LocalRun> = Vec::new();
            while !interrupted && active.len() < self.parallel {
                let Some(r) = queue.pop() else { break };
                // A trainer of this run still lives (one a killed executor left, or a
                // `sweep train` started by hand): never a second one; try again later.
                if let Some(pid) = RunLock::holder(&r.dir) {
                    if waiting.insert(r.id.clone()) {
                        sink.emit(&Event::RunWaiting {
                            id: r.id.clone(),
                            detail: format!(
                                "another trainer{} still trains it; it starts when that one ends",
                                if pid.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (pid {pid})")
                                }
                            ),
                        });
                    }
                    deferred.push(r);
                    continue;
                }
                // Its ranks' GPUs: wait while too few are free; fail if it could never fit.
                let need = r.ranks.1.max(1) as usize;
                let slots = if pool.ids.is_empty() || r.ranks.0 > 1 {
                    Some(Vec::new())
                } else if need > pool.distinct() {
                    None
                } else if let Some(slots) = pool.take(need) {
                    Some(slots)
                } else {
                    if waiting.insert(r.id.clone()) {
                        sink.emit(&Event::RunWaiting {
                            id: r.id.clone(),
                            detail: format!("it waits for {need} free GPU(s)"),
                        });
                    }
                    deferred.push(r);
                    continue;
                };
                let rec = state
                    .runs
                    .get_mut(&r.id)
                    .ok_or_else(|| StateError::Io(format!("run {} vanished", r.id)))?;
                rec.attempts += 1;
                rec.state = JobState::Running;
                rec.detail = None;
                let attempt = rec.attempts;
                let spawned = match &slots {
                    Some(slots) => self.spawn(r, &pool.visible(slots)),
                    None => Err(format!(
                        "the run has {need} ranks (training.ranks_per_node), each on a GPU of its own, but this machine lends {} GPU(s) ({}): give --gpus more, or fewer ranks",
                        pool.distinct(),
                        pool.ids.join(",")
                    )),
                };
                let slots = slots.unwrap_or_default();
                if spawned.is_err() {
                    pool.give_back(&slots);
                }
                match spawned {
                    Ok(child) => {
                        rec.job_id = Some(format!("pid:{}", child.id()));
                        state.save(sweep_dir)?;
                        sink.emit(&Event::RunStarted {
                            id: r.id.clone(),
                            attempt,
                        });
                        active.push(Active {
                            id: r.id.clone(),
                            run: r.clone(),
                            child,
                            started: Instant::now(),
                            told: (0, Instant::now()),
                            gpus: slots,
                        });
                    }
                    Err(e) => {
                        rec.state = JobState::Failed;
                        rec.detail = Some(e.clone());
                        state.save(sweep_dir)?;
                        sink.emit(&Event::RunEnded {
                            id: r.id.clone(),
                            state: JobState::Failed,
                            wall_s: Some(0.0),
                            detail: Some(e),
                        });
                    }
                }
            }
            queue.extend(deferred);
            if active.is_empty() && (queue.is_empty() || interrupted) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            // How far each run has got, from its own metrics.jsonl, every second or so.
            for a in active.iter_mut() {
                if a.told.1.elapsed() < PROGRESS_EVERY {
                    continue;
                }
                a.told.1 = Instant::now();
                if let Some(p) = crate::progress::Progress::of_run(&a.run.dir, a.run.total_steps)
                    .filter(|p| p.step > a.told.0)
                {
                    a.told.0 = p.step;
                    sink.emit(&Event::progress(&a.id, &p));
                }
            }
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
                pool.give_back(&a.gpus);
                let (st, detail) = classify(&a.run, status);
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
                    wall_s: Some(a.started.elapsed().as_secs_f64()),
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

    /// Start the run's trainer; `gpus` (CUDA ids, comma-separated) becomes its
    /// CUDA_VISIBLE_DEVICES unless empty.
    fn spawn(&self, r: &LocalRun, gpus: &str) -> Result<Child, String> {
        let (nodes, per_node) = r.ranks;
        if nodes > 1 {
            return Err(format!(
                "the run spans {nodes} nodes (training.nodes): submit it to a cluster with `sweep submit SPEC --cluster NAME`, or set nodes = 1 to train its {per_node} ranks here"
            ));
        }
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
        let mut cmd = Command::new(&self.program);
        cmd.arg("train")
            .arg(r.dir.join("run.json"))
            .arg("--threads")
            .arg(self.threads.to_string())
            .args(if per_node > 1 {
                vec!["--nproc".to_string(), per_node.to_string()]
            } else {
                vec![]
            })
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        if !gpus.is_empty() {
            // A run lent GPUs trains on them or fails at start, never on the CPU.
            cmd.env("CUDA_VISIBLE_DEVICES", gpus);
            if std::env::var_os("SWEEP_DEVICE").is_none() {
                cmd.env("SWEEP_DEVICE", "cuda");
            }
        }
        crate::util::stop_with_parent(&mut cmd);
        cmd.spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))
    }
}

/// Clear a run folder for a fresh start, keeping run.json; the old log goes too.
fn reset_outputs(dir: &Path) -> std::io::Result<()> {
    crate::results::clear_outputs(dir)?;
    crate::tracking::mlflow::retire(dir).map_err(std::io::Error::other)?;
    match std::fs::remove_file(dir.join("train.log")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The state of a run whose process ended: its result.json decides; without one, a signal or
/// an exit of 0/130/143 means it was stopped (resumable), anything else that it failed.
fn classify(r: &LocalRun, status: std::process::ExitStatus) -> (JobState, Option<String>) {
    use std::os::unix::process::ExitStatusExt;
    let dir = &r.dir;
    if let Some(found) = result_state(dir, &r.who) {
        return found;
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
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    super::count_states(state, &ids)
}

/// A sweep run here, as the [`Executor`] face: its folder, state and staged runs, and the
/// local executor's settings.
pub struct LocalSweep<'a> {
    /// The settings.
    pub exe: LocalExecutor,
    /// results/NAME.
    pub dir: &'a Path,
    /// state.json (an empty state when the sweep never ran here).
    pub state: SweepState,
    /// The runs, staged in their folders (for `submit`; the others need only their ids).
    pub runs: Vec<LocalRun>,
    /// Set to stop (Ctrl-C): the runs checkpoint and stay resumable.
    pub stop: std::sync::Arc<AtomicBool>,
}

impl Executor for LocalSweep<'_> {
    fn name(&self) -> String {
        "local".into()
    }

    fn submit(&mut self, sink: &mut dyn EventSink) -> Result<Submission, ExecutorError> {
        let attempts = |s: &SweepState, id: &str| s.runs.get(id).map_or(0, |r| r.attempts);
        let before: Vec<u32> = self
            .runs
            .iter()
            .map(|r| attempts(&self.state, &r.id))
            .collect();
        let o = self
            .exe
            .run(self.dir, &mut self.state, &self.runs, sink, &self.stop)?;
        let sent = self
            .runs
            .iter()
            .zip(before)
            .filter(|(r, b)| attempts(&self.state, &r.id) > *b)
            .count();
        Ok(Submission {
            sent,
            counts: o.counts,
            interrupted: o.interrupted,
        })
    }

    /// The state is this machine's: its trainers write their folders, and `sweep run` the
    /// state. Nothing to ask anyone.
    fn poll(&mut self) -> Result<Option<String>, ExecutorError> {
        Ok(None)
    }

    /// SIGTERM to the process group of each running run (its trainer checkpoints first).
    fn cancel(&mut self, only: &[String]) -> Result<Cancelled, ExecutorError> {
        let mut runs = Vec::new();
        for (id, rec) in &self.state.runs {
            if rec.state != JobState::Running || !(only.is_empty() || only.contains(id)) {
                continue;
            }
            let Some(pid) = rec
                .job_id
                .as_deref()
                .and_then(|j| j.strip_prefix("pid:"))
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            // SAFETY: kill(2) on the run's process group; no memory effects.
            if unsafe { libc::kill(-pid, libc::SIGTERM) } == 0 {
                runs.push(id.clone());
            }
        }
        Ok(Cancelled {
            sweep: self.state.sweep.clone(),
            executor: self.name(),
            not_running: only
                .iter()
                .filter(|id| !runs.contains(id))
                .cloned()
                .collect(),
            runs,
        })
    }

    fn collect(&mut self, _adapters: bool) -> Result<Collected, ExecutorError> {
        Err(ExecutorError::Unsupported(format!(
            "sweep {} was not submitted to a cluster from here ({} has no slurm.json): nothing to collect, its results are in its run folders",
            self.state.sweep,
            self.dir.display()
        )))
    }

    fn state(&self) -> &SweepState {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::render::TextRenderer;

    /// What the fake's results say of themselves.
    fn fake_identity() -> RunIdentity {
        RunIdentity {
            id: "x".into(),
            config_id: "x".into(),
            run_hash: "h".into(),
        }
    }

    /// A fake `sweep` that follows the protocol: it writes result.json, fails, or hangs.
    fn fake_program(dir: &Path) -> PathBuf {
        let p = dir.join("fake-sweep");
        std::fs::write(
            &p,
            r#"#!/bin/sh
run="$2"; d=$(dirname "$run")
case "$(cat "$run")" in
  *ok*) printf '{"schema":1,"id":"x","config_id":"x","status":"completed","step":1,"tokens":1,"total_steps":1,"final_train_loss":1.0,"evals":[],"metrics_not_measured":[],"trainable_params":1,"total_params":1,"wall_s":0.1,"peak_rss_kib":null,"run_hash":"h"}' > "$d/result.json"; echo trained >> "$d/count" ;;
  *fail*) echo "error: something broke" >&2; exit 1 ;;
  *hang*) trap 'exit 143' TERM; while true; do sleep 0.05; done ;;
  *gpu*) locks=$(dirname "$0")/gpu-locks; mkdir -p "$locks"; gpus=$(echo "$CUDA_VISIBLE_DEVICES" | tr , ' ')
    for g in $gpus; do mkdir "$locks/$g" 2>/dev/null || { echo "GPU $g is taken" >&2; exit 1; }; done
    echo "$CUDA_VISIBLE_DEVICES $SWEEP_DEVICE" > "$d/gpus"; sleep 0.3
    for g in $gpus; do rmdir "$locks/$g"; done
    printf '{"schema":1,"id":"x","config_id":"x","status":"completed","step":1,"tokens":1,"total_steps":1,"final_train_loss":1.0,"evals":[],"metrics_not_measured":[],"trainable_params":1,"total_params":1,"wall_s":0.1,"peak_rss_kib":null,"run_hash":"h"}' > "$d/result.json" ;;
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
                    who: fake_identity(),
                    problem: None,
                    ranks: (1, 1),
                    total_steps: 1,
                }
            })
            .collect();
        let exe = LocalExecutor {
            program: fake_program(dir.path()),
            parallel: 2,
            threads: 1,
            retry_failed: false,
            retrain_invalid: false,
            gpus: Vec::new(),
        };
        (dir, runs, exe)
    }

    /// Runs take free GPUs of their own (one per rank) and wait for them; a run with more ranks
    /// than GPUs fails at once, naming both counts.
    #[test]
    fn runs_get_gpus_of_their_own() {
        let (dir, mut runs, exe) = setup(&["gpu", "gpu", "gpu", "gpu", "gpu", "gpu"]);
        runs[4].ranks = (1, 2);
        runs[5].ranks = (1, 3);
        let exe = LocalExecutor {
            parallel: 4,
            gpus: parse_gpus("0,1").unwrap(),
            ..exe
        };
        let mut state = SweepState::new("s");
        let mut out = Vec::new();
        exe.run(
            dir.path(),
            &mut state,
            &runs,
            &mut TextRenderer::new(&mut out, false),
            &AtomicBool::new(false),
        )
        .unwrap();
        let log = String::from_utf8_lossy(&out).to_string();
        for r in &runs[..5] {
            assert_eq!(state.runs[&r.id].state, JobState::Completed, "{log}");
        }
        let gpus = |i: usize| std::fs::read_to_string(runs[i].dir.join("gpus")).unwrap();
        for i in 0..4 {
            assert!(
                ["0 cuda\n", "1 cuda\n"].contains(&gpus(i).as_str()),
                "{}",
                gpus(i)
            );
        }
        assert!(
            ["0,1 cuda\n", "1,0 cuda\n"].contains(&gpus(4).as_str()),
            "{}",
            gpus(4)
        );
        let failed = &state.runs["r5"];
        assert_eq!(failed.state, JobState::Failed);
        let why = failed.detail.as_deref().unwrap();
        assert!(
            why.contains("3 ranks") && why.contains("lends 2 GPU(s)"),
            "{why}"
        );
        assert!(log.contains("waits for"), "runs waited for GPUs: {log}");
    }

    #[test]
    fn gpu_lists_are_ids_or_none() {
        assert_eq!(parse_gpus("0, 1,1").unwrap(), vec!["0", "1", "1"]);
        assert!(parse_gpus("none").unwrap().is_empty());
        assert_eq!(parse_gpus("GPU-abc").unwrap(), vec!["GPU-abc"]);
        let e = parse_gpus("0,x").unwrap_err();
        assert!(e.contains("GPU `x`"), "{e}");
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
