//! A sweep on a cluster as `submit`, `follow`, `status`, `cancel` and `collect` drive it: the
//! journal and state of its results folder, worked on through a [`Transport`]. The commands
//! resolve settings, hold the sweep's lock and render events; what is done to the sweep is here,
//! and the unit tests below drive it through a scripted cluster ([`super::transport::fake`]).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::config::{ClusterConfig, ConfigError};
use super::events::Watcher;
use super::executor::{self as ex, Probe};
use super::install::{
    gpu_install_problem, install_files, is_cuda_binary, libtorch_files, InstallReport, LocalFile,
};
use super::journal::{Journal, JOURNAL_SCHEMA};
use super::quote::join;
use super::script::Resources;
use super::transport::Transport;
use super::SlurmError;
use crate::executor::state::{result_state, RunRecord, SweepState};
use crate::executor::{
    count_states, Cancelled, Event, EventSink, Executor, ExecutorError, JobState, Submission,
};
use crate::plan::{MethodConfig, Plan};
use crate::results::{RunIdentity, RunResult, ADAPTER_DIR, ADAPTER_FILES, ADAPTER_WEIGHTS};
use crate::util::write_atomic;

/// Seconds after a batch was journaled before an unconfirmed chunk of it is taken as never
/// submitted.
pub const UNCONFIRMED_GRACE_S: u64 = 3;

/// Unix seconds and milliseconds now.
pub fn now() -> (u64, u128) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs(), d.as_millis())
}

/// What a collect did.
#[derive(Debug, Default, PartialEq)]
pub struct Collected {
    /// Results copied here now.
    pub collected: usize,
    /// Final results that were here already.
    pub already_here: usize,
    /// LoRA adapters copied.
    pub adapters: usize,
    /// Runs whose result on the cluster could not be collected, and why.
    pub incomplete: Vec<String>,
}

/// A sweep's results folder here, bound to a cluster by its journal.
pub struct ClusterSweep<'a> {
    /// results/NAME.
    pub dir: &'a Path,
    /// Its plan.
    pub plan: &'a Plan,
    /// slurm.json.
    pub journal: Journal,
    /// state.json.
    pub state: SweepState,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SlurmError {
    move |e| SlurmError::Local(format!("{what}: {e}"))
}

impl<'a> ClusterSweep<'a> {
    /// The sweep of `dir` when something was ever submitted from it (a journal without batches
    /// is what a first submit that failed before sbatch leaves: it binds the sweep to nothing).
    pub fn open(dir: &'a Path, plan: &'a Plan) -> Result<Option<ClusterSweep<'a>>, SlurmError> {
        let Some(journal) = Journal::load(dir)?.filter(|j| !j.batches.is_empty()) else {
            return Ok(None);
        };
        let state =
            SweepState::load(dir, &plan.name)?.unwrap_or_else(|| SweepState::new(&plan.name));
        Ok(Some(ClusterSweep {
            dir,
            plan,
            journal,
            state,
        }))
    }

    /// The sweep of `dir` for a submit to `cluster` with `config`: its journal with the config
    /// brought up to date, or a new one when nothing was ever sent. A sweep submitted to
    /// another cluster cannot move.
    pub fn for_submit(
        dir: &'a Path,
        plan: &'a Plan,
        cluster: &str,
        config: &ClusterConfig,
    ) -> Result<ClusterSweep<'a>, SlurmError> {
        let state =
            SweepState::load(dir, &plan.name)?.unwrap_or_else(|| SweepState::new(&plan.name));
        let journal = match Journal::load(dir)? {
            Some(j) if j.cluster != cluster && !j.batches.is_empty() => {
                return Err(SlurmError::Moved {
                    sweep: plan.name.clone(),
                    from: j.cluster,
                    to: cluster.to_string(),
                })
            }
            Some(mut j) if !j.batches.is_empty() => {
                j.config = config.clone();
                j
            }
            // Nothing was ever sent: a first submit that failed before sbatch binds nothing.
            _ => Journal {
                schema: JOURNAL_SCHEMA,
                sweep: plan.name.clone(),
                cluster: cluster.to_string(),
                remote_dir: join(&config.work_dir, &format!("sweeps/{}", plan.name)),
                config: config.clone(),
                facts: None,
                last_poll: None,
                batches: vec![],
            },
        };
        Ok(ClusterSweep {
            dir,
            plan,
            journal,
            state,
        })
    }

    /// Why the cluster may not be polled at `now_s` (its poll_floor_s since the last poll has
    /// not passed), if so.
    pub fn too_soon(&self, now_s: u64) -> Option<String> {
        let j = &self.journal;
        let age = now_s.saturating_sub(j.last_poll?);
        let floor = j.config.poll_floor_s;
        (age < floor).then(|| {
            format!(
                "cluster {}: polled {age}s ago; the next poll is allowed in {}s (poll_floor_s)",
                j.cluster,
                floor - age
            )
        })
    }

    /// `slurm:CLUSTER`.
    pub fn backend(&self) -> String {
        format!("slurm:{}", self.journal.cluster)
    }

    /// Seconds to wait before looking up what a killed submit sent: an sbatch of it may still
    /// be landing until its batch is a few seconds old, and it must be found, not sent twice.
    pub fn unconfirmed_wait_s(&self, now_s: u64) -> u64 {
        self.journal
            .batches
            .iter()
            .filter(|b| b.chunks.iter().any(|c| c.job_id.is_none()))
            .map(|b| (b.created + UNCONFIRMED_GRACE_S).saturating_sub(now_s))
            .max()
            .unwrap_or(0)
    }

    /// Probe the cluster, reconcile the journal with what it finds, bring the state up to date
    /// (a final result collected here wins), and save both.
    pub fn refresh(&mut self, t: &mut dyn Transport) -> Result<Probe, SlurmError> {
        let binary = self.journal.config.remote_binary();
        let probe = ex::run_probe(t, &self.journal, &binary, now().0)?;
        self.journal.facts = probe.facts.or(self.journal.facts);
        let backend = self.backend();
        for (bi, ci) in ex::reconcile(&mut self.journal, &probe) {
            let b = self.journal.batches[bi].clone();
            ex::record_chunk(&mut self.state, &backend, &b, &b.chunks[ci]);
        }
        let obs = ex::observe(&self.journal, &probe);
        ex::apply(&mut self.state, &backend, &obs, now().0);
        self.mark_local_results();
        self.journal.last_poll = Some(now().0);
        self.journal.save(self.dir)?;
        self.state.save(self.dir)?;
        Ok(probe)
    }

    /// Mark runs with a final result.json here (collected earlier) as final, and those whose
    /// result.json here is not theirs as invalid.
    fn mark_local_results(&mut self) {
        let backend = self.backend();
        for r in &self.plan.runs {
            let who = RunIdentity::of(self.plan, r);
            let Some((s, detail)) = result_state(&self.dir.join("runs").join(&r.id), &who)
                .filter(|(s, _)| s.is_final() || *s == JobState::Invalid)
            else {
                continue;
            };
            let rec = self
                .state
                .runs
                .entry(r.id.clone())
                .or_insert_with(|| RunRecord {
                    state: s,
                    attempts: 1,
                    backend: backend.clone(),
                    job_id: None,
                    detail: None,
                    progress: Default::default(),
                });
            rec.state = s;
            rec.detail = detail;
        }
    }

    /// The runs to send now, in plan order: what the retry policy allows (failed runs only with
    /// `retry_failed`), never one with a final result on the cluster (marked final here), and,
    /// with `leave_cancelled`, not one a user cancelled.
    pub fn to_send(
        &mut self,
        probe: &Probe,
        retry_failed: bool,
        leave_cancelled: bool,
    ) -> Vec<String> {
        for (id, s) in &probe.results {
            if let Some(r) = self.state.runs.get_mut(id).filter(|_| s.is_final()) {
                r.state = *s;
            }
        }
        let ids: Vec<String> = self.plan.runs.iter().map(|r| r.id.clone()).collect();
        let mut chosen = ex::to_submit(&ids, &self.state, &self.journal.config, retry_failed);
        if leave_cancelled {
            chosen.retain(|id| {
                self.state
                    .runs
                    .get(id)
                    .is_none_or(|r| r.state != JobState::Cancelled)
            });
        }
        chosen
    }

    /// Send the runs `ids` as job arrays running `binary`; returns how many were submitted.
    pub fn send(
        &mut self,
        t: &mut dyn Transport,
        binary: &str,
        resources: Resources,
        ids: &[String],
    ) -> Result<usize, SlurmError> {
        let chosen: std::collections::HashSet<&String> = ids.iter().collect();
        let mut lines = Vec::with_capacity(ids.len());
        for r in self.plan.runs.iter().filter(|r| chosen.contains(&r.id)) {
            let json = serde_json::to_string(&self.plan.run_file(r))
                .map_err(|e| SlurmError::Local(format!("run {}: {e}", r.id)))?;
            lines.push((r.id.clone(), json));
        }
        if lines.is_empty() {
            return Ok(0);
        }
        let backend = self.backend();
        ex::submit_batch(
            t,
            &mut self.journal,
            &mut self.state,
            self.dir,
            &backend,
            binary,
            resources,
            &lines,
            now().1,
        )
    }

    /// Runs of the plan with a final state.
    pub fn done(&self) -> usize {
        self.plan
            .runs
            .iter()
            .filter(|r| {
                self.state
                    .runs
                    .get(&r.id)
                    .is_some_and(|r| r.state.is_final())
            })
            .count()
    }

    /// Copy result.json and metrics.jsonl of the runs `probe` found finished into
    /// runs/ID/ here, each checked to be complete and this run's (TensorBoard events written
    /// from the metrics); with `adapters`, also the adapter/ folder of each completed LoRA run.
    /// Saves the state.
    pub fn collect(
        &mut self,
        t: &mut dyn Transport,
        probe: &Probe,
        adapters: bool,
    ) -> Result<Collected, SlurmError> {
        let mut c = Collected::default();
        let remote = self.journal.remote_dir.clone();
        for r in &self.plan.runs {
            let local = self.dir.join("runs").join(&r.id);
            let rd = join(&remote, &format!("runs/{}", r.id));
            let who = RunIdentity::of(self.plan, r);
            if result_state(&local, &who).is_some_and(|(s, _)| s.is_final()) {
                c.already_here += 1;
            } else {
                if !probe.results.contains_key(&r.id) {
                    continue;
                }
                let Some(result) = t.download(&join(&rd, "result.json"))? else {
                    continue;
                };
                match serde_json::from_slice::<RunResult>(&result) {
                    Err(e) => {
                        c.incomplete
                            .push(format!("{}: incomplete result.json ({e})", r.id));
                        continue;
                    }
                    Ok(res)
                        if res.id != who.id
                            || res.config_id != who.config_id
                            || res.run_hash.as_deref() != Some(who.run_hash.as_str()) =>
                    {
                        c.incomplete.push(format!(
                            "{}: the cluster's result.json is not this run's (run {}, config {}): not collected",
                            r.id, res.id, res.config_id
                        ));
                        continue;
                    }
                    Ok(_) => {}
                }
                if let Some(m) = t.download(&join(&rd, "metrics.jsonl"))? {
                    let path = local.join("metrics.jsonl");
                    write_atomic(&path, |w| w.write_all(&m))
                        .map_err(io(format!("writing {}", path.display())))?;
                    crate::tracking::tensorboard::rewrite(&local).map_err(io(format!(
                        "writing the TensorBoard events of {}",
                        local.display()
                    )))?;
                }
                let path = local.join("result.json");
                write_atomic(&path, |w| w.write_all(&result))
                    .map_err(io(format!("writing {}", path.display())))?;
                c.collected += 1;
            }
            let lora = matches!(
                self.plan.points.get(r.point).map(|p| &p.method),
                Some(MethodConfig::Lora { .. })
            );
            if adapters
                && lora
                && result_state(&local, &who).is_some_and(|(s, _)| s == JobState::Completed)
                && !local.join(ADAPTER_DIR).join(ADAPTER_WEIGHTS).exists()
            {
                if collect_adapter(t, &join(&rd, ADAPTER_DIR), &local)? {
                    c.adapters += 1;
                } else {
                    c.incomplete
                        .push(format!("{}: no {ADAPTER_DIR}/ on the cluster", r.id));
                }
            }
        }
        self.mark_local_results();
        self.state.save(self.dir)?;
        Ok(c)
    }

    /// scancel the sweep's arrays, or the tasks of the runs `only`; returns how many.
    pub fn cancel(&self, t: &mut dyn Transport, only: &[String]) -> Result<usize, SlurmError> {
        ex::cancel(t, &self.journal, &self.state, only)
    }
}

/// Makes a connection to a cluster.
pub type Connect<'a> =
    Box<dyn FnMut(&ClusterConfig) -> Result<Box<dyn Transport>, SlurmError> + 'a>;

/// A sweep on a cluster as the [`Executor`] face: the sweep, a connection made when first
/// needed, and the submit's settings.
pub struct SlurmExecutor<'a> {
    /// The sweep.
    pub sweep: ClusterSweep<'a>,
    /// The connection, once made.
    t: Option<Box<dyn Transport>>,
    /// Makes the connection.
    connect: Connect<'a>,
    /// What each job asks Slurm for.
    pub resources: Resources,
    /// Send failed runs again.
    pub retry_failed: bool,
    /// Leave runs a user cancelled cancelled.
    pub leave_cancelled: bool,
    /// Tells the events from how each poll changed the state.
    pub watcher: Watcher,
}

impl<'a> SlurmExecutor<'a> {
    /// The executor of `sweep`, connecting with `connect` when it first needs the cluster.
    pub fn new(
        sweep: ClusterSweep<'a>,
        connect: impl FnMut(&ClusterConfig) -> Result<Box<dyn Transport>, SlurmError> + 'a,
    ) -> SlurmExecutor<'a> {
        let watcher = Watcher::new(&sweep.state);
        SlurmExecutor {
            sweep,
            t: None,
            connect: Box::new(connect),
            resources: Resources::default(),
            retry_failed: false,
            leave_cancelled: false,
            watcher,
        }
    }

    /// The connection (made now if it was not).
    pub fn transport(&mut self) -> Result<&mut dyn Transport, SlurmError> {
        if self.t.is_none() {
            self.t = Some((self.connect)(&self.sweep.journal.config)?);
        }
        Ok(self.t.as_deref_mut().expect("connected above"))
    }

    /// Run `f` on the sweep with the connection (made now if it was not).
    fn on_cluster<R>(
        &mut self,
        f: impl FnOnce(&mut ClusterSweep<'a>, &mut dyn Transport) -> Result<R, SlurmError>,
    ) -> Result<R, SlurmError> {
        self.transport()?;
        let t = self.t.as_deref_mut().expect("connected above");
        f(&mut self.sweep, t)
    }

    /// SSH round trips so far.
    pub fn round_trips(&self) -> u64 {
        self.t.as_ref().map_or(0, |t| t.round_trips())
    }

    /// Put the binary `exe` (and, with `libtorch`, the libtorch it was built against, found at
    /// `local_lib`, unless the cluster names its own) on the cluster; see [`super::install`]
    /// for why that is safe when installs run at once or one is killed. `notify` hears what it
    /// does.
    pub fn install(
        &mut self,
        exe: &Path,
        local_lib: Option<&Path>,
        libtorch: bool,
        notify: &mut dyn FnMut(&str),
    ) -> Result<Vec<InstallReport>, SlurmError> {
        let c = self.sweep.journal.config.clone();
        let cluster = self.sweep.journal.cluster.clone();
        let binary = c.remote_binary();
        if c.asks_gpus() {
            let cuda = is_cuda_binary(exe)
                .map_err(|e| SlurmError::Local(format!("reading {}: {e}", exe.display())))?;
            if let Some(why) =
                gpu_install_problem(&cluster, exe, cuda, c.libtorch.is_some(), local_lib)
            {
                return Err(SlurmError::Config(ConfigError::Unfit(why)));
            }
        }
        let t = self.transport()?;
        let mut reports = Vec::new();
        if libtorch && c.libtorch.is_none() {
            let Some(local) = local_lib else {
                return Err(SlurmError::Local("this binary does not know the libtorch it was built against: set `libtorch` in the cluster config to a libtorch on the cluster".into()));
            };
            if !local.is_dir() {
                return Err(SlurmError::Local(format!("{}: the libtorch this binary was built against is gone: set `libtorch` in the cluster config, or rebuild", local.display())));
            }
            let files = libtorch_files(local)?;
            let lib = join(&c.remote_libtorch(), "lib");
            reports.push(install_files(t, &lib, &files, notify)?);
        }
        let (dir, name) = match binary.rsplit_once('/') {
            Some((d, n)) => (if d.is_empty() { "/" } else { d }, n),
            None => (".", binary.as_str()),
        };
        let file = LocalFile::new(exe, name, 0o755)?;
        reports.push(install_files(t, dir, &[file], notify)?);
        for r in &reports {
            notify(&r.to_string());
        }
        Ok(reports)
    }

    /// Refresh, and tell `sink` what changed since the last look and how far each running run
    /// has got (its last metrics.jsonl line on the cluster).
    fn refresh_telling(&mut self, sink: &mut dyn EventSink) -> Result<Probe, SlurmError> {
        let probe = self.on_cluster(|s, t| s.refresh(t))?;
        self.tell(sink);
        let per_step = self.sweep.plan.shared.training.tokens_per_step();
        for r in &self.sweep.plan.runs {
            let running = self
                .sweep
                .state
                .runs
                .get(&r.id)
                .is_some_and(|x| x.state == JobState::Running);
            let total = self.sweep.plan.points[r.point]
                .token_budget
                .div_ceil(per_step)
                .max(1);
            let Some(p) = probe
                .progress
                .get(&r.id)
                .filter(|_| running)
                .and_then(|line| crate::progress::Progress::from_metrics(line, total))
            else {
                continue;
            };
            if let Some(e) = self.watcher.progress(&r.id, &p) {
                sink.emit(&e);
            }
        }
        Ok(probe)
    }

    fn tell(&mut self, sink: &mut dyn EventSink) {
        let ids = self.ids();
        self.watcher.tell(&self.sweep.state, &ids, sink);
    }

    /// Tell the runs the retry policy leaves (not in `chosen`), each once until sent again.
    fn tell_left(&mut self, sink: &mut dyn EventSink, chosen: &[String]) {
        let policy = &self.sweep.journal.config.retry;
        for r in &self.sweep.plan.runs {
            let Some(rec) = self.sweep.state.runs.get(&r.id) else {
                continue;
            };
            if chosen.contains(&r.id) {
                continue;
            }
            let why = super::retry::why_left(rec, policy, self.retry_failed, self.leave_cancelled);
            if let Some(e) = why.and_then(|w| self.watcher.left(&r.id, rec.state, w)) {
                sink.emit(&e);
            }
        }
    }

    fn ids(&self) -> Vec<String> {
        self.sweep.plan.runs.iter().map(|r| r.id.clone()).collect()
    }
}

impl Executor for SlurmExecutor<'_> {
    fn name(&self) -> String {
        self.sweep.backend()
    }

    /// Refresh (the remote binary must be this version), then send what the retry policy
    /// allows and return: the cluster runs them.
    fn submit(&mut self, sink: &mut dyn EventSink) -> Result<Submission, ExecutorError> {
        let probe = self.refresh_telling(sink)?;
        let binary = self.sweep.journal.config.remote_binary();
        super::check_version(&probe.version, &binary, &self.sweep.journal.cluster)?;
        let chosen = self
            .sweep
            .to_send(&probe, self.retry_failed, self.leave_cancelled);
        self.tell(sink);
        self.tell_left(sink, &chosen);
        let sent = if chosen.is_empty() {
            0
        } else {
            let resources = self.resources;
            self.on_cluster(|s, t| s.send(t, &binary, resources, &chosen))?
        };
        self.tell(sink);
        Ok(Submission {
            sent,
            counts: count_states(&self.sweep.state, &self.ids()),
            interrupted: false,
        })
    }

    /// One probe, at most once per the cluster's poll_floor_s.
    fn poll(&mut self) -> Result<Option<String>, ExecutorError> {
        let cluster = self.sweep.journal.cluster.clone();
        if let Some(note) = self.sweep.too_soon(now().0) {
            return Ok(Some(note));
        }
        let probe = self.refresh_telling(&mut NoSink)?;
        let n = self.round_trips();
        let acct = probe
            .acct_error
            .map(|e| format!("; the accounting could not be read ({e}): jobs that ended are not seen until it can"))
            .unwrap_or_default();
        Ok(Some(format!(
            "cluster {cluster}: polled now ({n} SSH round trip{}){acct}",
            if n == 1 { "" } else { "s" }
        )))
    }

    /// scancel the sweep's arrays, or the tasks of the runs `only` that are queued or running.
    fn cancel(&mut self, only: &[String]) -> Result<Cancelled, ExecutorError> {
        // What is queued or running now, not when state.json was last written.
        self.refresh_telling(&mut NoSink)?;
        let live = |id: &String, s: &SweepState| {
            s.runs
                .get(id)
                .is_some_and(|r| matches!(r.state, JobState::Pending | JobState::Running))
        };
        let named: Vec<String> = if only.is_empty() {
            self.ids()
        } else {
            only.to_vec()
        };
        let (runs, not_running): (Vec<String>, Vec<String>) = named
            .into_iter()
            .partition(|id| live(id, &self.sweep.state));
        self.on_cluster(|s, t| s.cancel(t, only))?;
        Ok(Cancelled {
            sweep: self.sweep.plan.name.clone(),
            executor: self.name(),
            runs,
            not_running: if only.is_empty() { vec![] } else { not_running },
        })
    }

    fn collect(&mut self, adapters: bool) -> Result<Collected, ExecutorError> {
        let probe = self.refresh_telling(&mut NoSink)?;
        Ok(self.on_cluster(|s, t| s.collect(t, &probe, adapters))?)
    }

    fn state(&self) -> &SweepState {
        &self.sweep.state
    }
}

/// A sink for what no one is told (a status poll, a collect: their state is what counts).
struct NoSink;

impl EventSink for NoSink {
    fn emit(&mut self, _: &Event) {}
}

/// Copy a run's adapter folder from the cluster into `local`/adapter, whole or not at all (a
/// temporary folder, then a rename). False when the cluster has no complete adapter.
fn collect_adapter(t: &mut dyn Transport, remote: &str, local: &Path) -> Result<bool, SlurmError> {
    let tmp = local.join(format!(".tmp-{ADAPTER_DIR}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    for name in ADAPTER_FILES {
        let Some(data) = t.download(&join(remote, name))? else {
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok(false);
        };
        std::fs::write(tmp.join(name), data)
            .map_err(io(format!("writing {}", tmp.join(name).display())))?;
    }
    let dest = local.join(ADAPTER_DIR);
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(io(format!("replacing {}", dest.display())))?;
    }
    std::fs::rename(&tmp, &dest).map_err(io(format!("writing {}", dest.display())))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::*;
    use crate::executor::slurm::config::ClustersFile;
    use crate::executor::slurm::transport::fake::FakeTransport;
    use crate::executor::slurm::transport::ExecOutput;
    use crate::plan::{plan, PlanOptions};

    /// A scripted Slurm: the array tasks sbatch made, by (array job id, task), with their job
    /// name, state word and exit code; squeue shows the live ones, sacct (slurmdbd) the rest.
    #[derive(Default)]
    struct Cluster {
        next_job: u32,
        tasks: BTreeMap<(u32, u32), (String, &'static str, &'static str)>,
        cancelled: Vec<String>,
    }

    impl Cluster {
        fn set(&mut self, task: u32, state: &'static str, exit: &'static str) {
            for ((_, k), v) in self.tasks.iter_mut() {
                if *k == task {
                    v.1 = state;
                    v.2 = exit;
                }
            }
        }

        fn answer(&mut self, cmd: &str, files: &BTreeMap<String, Vec<u8>>) -> ExecOutput {
            let mut out = String::new();
            if cmd.contains("@@config") {
                out.push_str("@@config\nAccountingStorageType = accounting_storage/slurmdbd\n");
                out.push_str(&format!(
                    "@@version\nsweep {}\n@@squeue\n",
                    env!("CARGO_PKG_VERSION")
                ));
                let live = |s: &str| matches!(s, "PENDING" | "RUNNING");
                for ((j, k), (name, state, _)) in &self.tasks {
                    if live(state) {
                        out.push_str(&format!("{}|{j}|{k}|{name}|{state}|None\n", j * 100 + k));
                    }
                }
                out.push_str("@@acct\n");
                for ((j, k), (name, state, exit)) in &self.tasks {
                    if !live(state) {
                        out.push_str(&format!("{}|{j}_{k}|{name}|{state}|{exit}\n", j * 100 + k));
                    }
                }
                out.push_str("@@results\n");
                for (path, data) in files {
                    let Some(rest) = path.strip_prefix("w/sweeps/t/") else {
                        continue;
                    };
                    // As the probe's grep: the status word, whether the file parses or not.
                    let text = String::from_utf8_lossy(data).replace("\": \"", "\":\"");
                    if let Some(i) = text
                        .find("\"status\":\"")
                        .filter(|_| rest.ends_with("/result.json"))
                    {
                        let word: String =
                            text[i + 10..].chars().take_while(|c| *c != '"').collect();
                        out.push_str(&format!("{rest}:\"status\": \"{word}\"\n"));
                    }
                }
                out.push_str("@@jobslog\n@@checkpoints\n@@progress\n");
                for (path, data) in files {
                    let Some(rest) = path.strip_prefix("w/sweeps/t/") else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(data);
                    if let (true, Some(last)) =
                        (rest.ends_with("/metrics.jsonl"), text.lines().last())
                    {
                        out.push_str(&format!("{rest}:{last}\n"));
                    }
                }
            } else if cmd.contains("sbatch --parsable") {
                for part in cmd.split("sbatch --parsable").skip(1) {
                    let word = |key: &str| {
                        part.split_whitespace()
                            .find_map(|w| w.strip_prefix(key))
                            .unwrap()
                            .trim_matches('\'')
                            .to_string()
                    };
                    let (name, array) = (word("--job-name="), word("--array="));
                    let range = array.split('%').next().unwrap();
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    self.next_job += 1;
                    for k in a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap() {
                        self.tasks
                            .insert((self.next_job, k), (name.clone(), "PENDING", "0:0"));
                    }
                    out.push_str(&format!("{}\n", self.next_job));
                }
            } else if cmd.contains("scancel") {
                self.cancelled.push(cmd.to_string());
            }
            ExecOutput {
                stdout: out,
                ..Default::default()
            }
        }
    }

    fn connect(cluster: &Rc<RefCell<Cluster>>) -> FakeTransport {
        let c = cluster.clone();
        FakeTransport::new(move |cmd, files| c.borrow_mut().answer(cmd, files))
    }

    fn config() -> ClusterConfig {
        ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\nmax_concurrent = 4\n",
            "c",
        )
        .unwrap()
        .clusters["a"]
            .clone()
    }

    /// Two runs (full fine-tuning at two learning rates).
    fn two_runs() -> Plan {
        let spec: crate::spec::Spec = toml::from_str(
            "name = \"t\"\n[model]\nbuiltin = \"tiny\"\n[data]\nregime = \"cpt\"\ndomain = \"code\"\ntarget = \"builtin:python\"\n[training]\nbatch_size = 2\nseq_len = 16\n[grid]\nmethod = [\"full\"]\ntoken_budget = [64]\n[grid.full]\nlearning_rate = [1e-3, 3e-3]\n",
        )
        .unwrap();
        plan(&spec, &PlanOptions::default()).unwrap()
    }

    /// A result.json of `run` as the trainer writes it, or of another run.
    fn result(plan: &Plan, run: usize, hash: Option<&str>) -> Vec<u8> {
        let who = RunIdentity::of(plan, &plan.runs[run]);
        format!(
            "{{\"schema\":1,\"id\":\"{}\",\"config_id\":\"{}\",\"status\":\"completed\",\"step\":1,\"tokens\":64,\"total_steps\":1,\"final_train_loss\":1.0,\"evals\":[],\"metrics_not_measured\":[],\"trainable_params\":1,\"total_params\":1,\"wall_s\":0.1,\"peak_rss_kib\":null,\"run_hash\":\"{}\"}}",
            who.id,
            who.config_id,
            hash.unwrap_or(&who.run_hash)
        )
        .into_bytes()
    }

    fn state_of(s: &ClusterSweep, run: usize) -> JobState {
        s.state.runs[&s.plan.runs[run].id].state
    }

    #[test]
    fn a_sweep_is_sent_followed_and_collected_and_a_failed_run_waits_for_retry_failed() {
        let dir = tempfile::tempdir().unwrap();
        let plan = two_runs();
        let cluster = Rc::new(RefCell::new(Cluster::default()));
        let mut t = connect(&cluster);
        let mut s = ClusterSweep::for_submit(dir.path(), &plan, "a", &config()).unwrap();
        assert_eq!(s.journal.remote_dir, "w/sweeps/t");
        let probe = s.refresh(&mut t).unwrap();
        let ids = s.to_send(&probe, false, false);
        assert_eq!(ids.len(), 2);
        assert_eq!(
            s.send(&mut t, "bin", Resources::default(), &ids).unwrap(),
            2
        );
        assert_eq!(cluster.borrow().tasks.len(), 2, "one array of two tasks");
        // Queued: nothing is sent twice.
        let probe = s.refresh(&mut t).unwrap();
        assert_eq!(state_of(&s, 0), JobState::Pending);
        assert!(s.to_send(&probe, true, false).is_empty());

        // Run 0 completes with its result on the cluster; run 1 fails.
        cluster.borrow_mut().set(0, "COMPLETED", "0:0");
        cluster.borrow_mut().set(1, "FAILED", "3:0");
        t.files.insert(
            format!("w/sweeps/t/runs/{}/result.json", plan.runs[0].id),
            result(&plan, 0, None),
        );
        let probe = s.refresh(&mut t).unwrap();
        assert_eq!(state_of(&s, 0), JobState::Completed);
        assert_eq!(state_of(&s, 1), JobState::Failed);
        let c = s.collect(&mut t, &probe, false).unwrap();
        assert_eq!((c.collected, c.already_here, c.incomplete.len()), (1, 0, 0));
        let here = dir
            .path()
            .join("runs")
            .join(&plan.runs[0].id)
            .join("result.json");
        assert_eq!(std::fs::read(&here).unwrap(), result(&plan, 0, None));
        let c = s.collect(&mut t, &probe, false).unwrap();
        assert_eq!((c.collected, c.already_here), (0, 1), "collected once");
        assert_eq!(s.done(), 1);

        // A failed run waits for --retry-failed; then it alone is sent, as a second attempt.
        assert!(s.to_send(&probe, false, false).is_empty());
        let again = s.to_send(&probe, true, false);
        assert_eq!(again, [plan.runs[1].id.clone()]);
        assert_eq!(
            s.send(&mut t, "bin", Resources::default(), &again).unwrap(),
            1
        );
        assert_eq!(s.state.runs[&plan.runs[1].id].attempts, 2);
        // Another command opening the folder sees the same sweep.
        let reopened = ClusterSweep::open(dir.path(), &plan).unwrap().unwrap();
        assert_eq!(reopened.state, s.state);
        assert_eq!(reopened.journal, s.journal);
        // It cannot move to another cluster.
        let e = ClusterSweep::for_submit(dir.path(), &plan, "b", &config())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("submitted to cluster `a`; it cannot move to `b`"),
            "{e}"
        );
        // Cancelling one run scancels its task only.
        assert_eq!(s.cancel(&mut t, &[plan.runs[1].id.clone()]).unwrap(), 1);
        assert!(
            cluster.borrow().cancelled[0].contains("2_0"),
            "{:?}",
            cluster.borrow().cancelled
        );
    }

    #[test]
    fn a_result_on_the_cluster_that_is_not_the_runs_is_named_and_not_collected() {
        let dir = tempfile::tempdir().unwrap();
        let plan = two_runs();
        let cluster = Rc::new(RefCell::new(Cluster::default()));
        let mut t = connect(&cluster);
        let mut s = ClusterSweep::for_submit(dir.path(), &plan, "a", &config()).unwrap();
        let probe = s.refresh(&mut t).unwrap();
        let ids = s.to_send(&probe, false, false);
        s.send(&mut t, "bin", Resources::default(), &ids).unwrap();
        cluster.borrow_mut().set(0, "COMPLETED", "0:0");
        let id = &plan.runs[0].id;
        t.files.insert(
            format!("w/sweeps/t/runs/{id}/result.json"),
            result(&plan, 0, Some("another run.json")),
        );
        t.files.insert(
            format!("w/sweeps/t/runs/{}/result.json", plan.runs[1].id),
            b"{\"status\": \"completed\"".to_vec(),
        );
        let probe = s.refresh(&mut t).unwrap();
        let c = s.collect(&mut t, &probe, false).unwrap();
        assert_eq!(c.collected, 0);
        assert_eq!(c.incomplete.len(), 2, "{:?}", c.incomplete);
        assert!(
            c.incomplete
                .iter()
                .any(|m| m.starts_with(id.as_str()) && m.contains("is not this run's")),
            "{:?}",
            c.incomplete
        );
        assert!(
            c.incomplete
                .iter()
                .any(|m| m.contains("incomplete result.json")),
            "{:?}",
            c.incomplete
        );
        assert!(!dir
            .path()
            .join("runs")
            .join(id)
            .join("result.json")
            .exists());
    }

    /// The fake transport shared between the test and an executor that owns its connection.
    struct Shared(Rc<RefCell<FakeTransport>>);

    impl Transport for Shared {
        fn exec(
            &mut self,
            command: &str,
        ) -> Result<ExecOutput, crate::executor::slurm::transport::TransportError> {
            self.0.borrow_mut().exec(command)
        }
        fn upload(
            &mut self,
            data: &[u8],
            remote: &str,
            mode: i32,
        ) -> Result<(), crate::executor::slurm::transport::TransportError> {
            self.0.borrow_mut().upload(data, remote, mode)
        }
        fn download(
            &mut self,
            remote: &str,
        ) -> Result<Option<Vec<u8>>, crate::executor::slurm::transport::TransportError> {
            self.0.borrow_mut().download(remote)
        }
        fn round_trips(&self) -> u64 {
            self.0.borrow().round_trips()
        }
    }

    /// Collects the events it is told.
    #[derive(Default)]
    struct Told(Vec<Event>);

    impl EventSink for Told {
        fn emit(&mut self, e: &Event) {
            self.0.push(e.clone());
        }
    }

    #[test]
    fn the_executor_face_submits_polls_cancels_and_collects_with_the_local_events() {
        let dir = tempfile::tempdir().unwrap();
        let plan = two_runs();
        let cluster = Rc::new(RefCell::new(Cluster::default()));
        let t = Rc::new(RefCell::new(connect(&cluster)));
        let sweep = ClusterSweep::for_submit(dir.path(), &plan, "a", &config()).unwrap();
        let shared = t.clone();
        let mut connects = 0;
        let mut exe = SlurmExecutor::new(sweep, |_| {
            connects += 1;
            Ok(Box::new(Shared(shared.clone())) as Box<dyn Transport>)
        });
        assert_eq!(exe.name(), "slurm:a");
        let mut told = Told::default();
        let sub = exe.submit(&mut told).unwrap();
        assert_eq!(sub.sent, 2);
        assert_eq!(sub.counts[0], (JobState::Pending, 2));
        let kinds: Vec<&str> = told
            .0
            .iter()
            .map(|e| match e {
                Event::RunQueued { .. } => "run_queued",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["run_queued", "run_queued"]);
        // Poll: one probe (the dev floor here is the default 30 s, and the last poll was now).
        let note = exe.poll().unwrap().unwrap();
        assert!(note.contains("the next poll is allowed in"), "{note}");
        exe.sweep.journal.last_poll = Some(0);
        cluster.borrow_mut().set(0, "RUNNING", "0:0");
        let note = exe.poll().unwrap().unwrap();
        assert!(note.contains("cluster a: polled now"), "{note}");
        assert_eq!(exe.state().runs[&plan.runs[0].id].state, JobState::Running);
        // A running run's progress, from its metrics.jsonl on the cluster, told once per step.
        t.borrow_mut().files.insert(
            format!("w/sweeps/t/runs/{}/metrics.jsonl", plan.runs[0].id),
            b"{\"step\":0,\"tokens\":0}\n{\"step\":1,\"tokens\":32,\"train_loss\":4.5}\n".to_vec(),
        );
        let mut told = Told::default();
        assert_eq!(exe.submit(&mut told).unwrap().sent, 0);
        assert_eq!(
            told.0,
            [Event::RunProgress {
                id: plan.runs[0].id.clone(),
                step: 1,
                total_steps: 2,
                tokens: 32,
                train_loss: Some(4.5),
                tokens_per_s: None
            }]
        );
        let mut told = Told::default();
        exe.submit(&mut told).unwrap();
        assert!(told.0.is_empty(), "not told twice: {:?}", told.0);
        // Cancel names what it stopped and what was not running.
        cluster.borrow_mut().set(1, "COMPLETED", "0:0");
        t.borrow_mut().files.insert(
            format!("w/sweeps/t/runs/{}/result.json", plan.runs[1].id),
            result(&plan, 1, None),
        );
        let c = exe.collect(false).unwrap();
        assert_eq!(c.collected, 1);
        let all = [plan.runs[0].id.clone(), plan.runs[1].id.clone()];
        let cancelled = exe.cancel(&all).unwrap();
        assert_eq!(cancelled.runs, [plan.runs[0].id.clone()]);
        assert_eq!(cancelled.not_running, [plan.runs[1].id.clone()]);
        assert_eq!(cancelled.executor, "slurm:a");
        drop(exe);
        assert_eq!(connects, 1, "one connection, made when first needed");
    }

    /// A run that failed is told as left (`run_skipped`, as the local executor tells it), after
    /// its `run_ended`, once however many rounds a follow makes; sent again with
    /// `--retry-failed`, it is queued, not left.
    #[test]
    fn a_failed_run_the_policy_leaves_is_told_once_as_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let plan = two_runs();
        let cluster = Rc::new(RefCell::new(Cluster::default()));
        let t = Rc::new(RefCell::new(connect(&cluster)));
        let sweep = ClusterSweep::for_submit(dir.path(), &plan, "a", &config()).unwrap();
        let shared = t.clone();
        let mut exe = SlurmExecutor::new(sweep, |_| {
            Ok(Box::new(Shared(shared.clone())) as Box<dyn Transport>)
        });
        exe.submit(&mut Told::default()).unwrap();
        cluster.borrow_mut().set(0, "FAILED", "3:0");
        let failed = plan.runs[0].id.clone();
        let mut told = Told::default();
        assert_eq!(exe.submit(&mut told).unwrap().sent, 0);
        let kinds: Vec<String> = told
            .0
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds, ["run_ended", "run_skipped"], "{:?}", told.0);
        match &told.0[1] {
            Event::RunSkipped { id, state, detail } => {
                assert_eq!((id, *state), (&failed, JobState::Failed));
                assert!(
                    detail.contains("`--retry-failed` sends it again"),
                    "{detail}"
                );
            }
            e => panic!("{e:?}"),
        }
        let mut told = Told::default();
        exe.submit(&mut told).unwrap();
        assert!(told.0.is_empty(), "told once: {:?}", told.0);
        exe.retry_failed = true;
        let mut told = Told::default();
        assert_eq!(exe.submit(&mut told).unwrap().sent, 1);
        assert!(
            told.0
                .iter()
                .all(|e| matches!(e, Event::RunQueued { attempt: 2, .. })),
            "{:?}",
            told.0
        );
    }

    #[test]
    fn a_batch_whose_sbatch_may_still_land_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let plan = two_runs();
        let mut s = ClusterSweep::for_submit(dir.path(), &plan, "a", &config()).unwrap();
        assert_eq!(s.unconfirmed_wait_s(1000), 0, "nothing sent");
        s.journal
            .batches
            .push(crate::executor::slurm::journal::Batch {
                tag: "x".into(),
                created: 1000,
                ids: vec![plan.runs[0].id.clone()],
                chunks: vec![crate::executor::slurm::journal::ChunkRecord {
                    offset: 0,
                    len: 1,
                    job_name: "n".into(),
                    job_id: None,
                }],
            });
        assert_eq!(s.unconfirmed_wait_s(1001), UNCONFIRMED_GRACE_S - 1);
        assert_eq!(s.unconfirmed_wait_s(1000 + UNCONFIRMED_GRACE_S), 0);
        s.journal.batches[0].chunks[0].job_id = Some("7".into());
        assert_eq!(s.unconfirmed_wait_s(1001), 0, "confirmed: no wait");
    }
}
