//! `sweep submit --cluster`, and `status`, `cancel`, `collect` of a sweep submitted to a cluster:
//! the Slurm executor driven from a spec. Settings are resolved, the sweep's lock taken and
//! events rendered here; the work is in [`crate::executor::slurm::sweep`].

use anyhow::Context;

use super::{load_plan, sweep_dir, UsageError};
use crate::cli::{CollectArgs, GlobalArgs, SubmitArgs};
use crate::executor::render::TextRenderer;
use crate::executor::slurm::events::Watcher;
use crate::executor::slurm::journal::Journal;
use crate::executor::slurm::sweep::{now, ClusterSweep, Collected, SlurmExecutor};
use crate::executor::slurm::{connect, SlurmError};
use crate::executor::state::{result_state, SweepLock, SweepState};
use crate::executor::{Event, EventSink, Executor, JobState};
use crate::plan::Plan;
use crate::results::RunIdentity;

/// The events of submit and follow: where they go (JSON lines on stdout with `--json`, text on
/// stderr otherwise), and the [`Watcher`] that tells them from each poll's state.
struct Events {
    sink: Box<dyn EventSink>,
    watcher: Option<Watcher>,
}

impl Events {
    fn new(g: &GlobalArgs, quiet: bool) -> Events {
        Events {
            sink: super::event_sink(g, quiet),
            watcher: None,
        }
    }

    /// Tell what changed in `state` since the last look; the first look starts the sweep.
    fn look(&mut self, state: &SweepState, plan: &Plan, executor: &str, parallel: usize) {
        let ids: Vec<String> = plan.runs.iter().map(|r| r.id.clone()).collect();
        match &mut self.watcher {
            Some(w) => w.tell(state, &ids, self.sink.as_mut()),
            None => {
                let sink = self.sink.as_mut();
                let w = Watcher::start(state, &plan.name, &ids, executor, parallel, sink);
                self.watcher = Some(w);
            }
        }
    }
}

/// `sweep submit SPEC --cluster NAME [--install] [--retry-failed]`: one summary line on stdout
/// (with `--json`, the events as JSON lines, the last `submitted`).
pub fn submit(g: &GlobalArgs, args: &SubmitArgs, cluster: &str) -> anyhow::Result<()> {
    let mut events = Events::new(g, true);
    let summary = submit_round(g, args, cluster, &mut events)?;
    if g.json {
        events.sink.emit(&summary);
    } else {
        TextRenderer::new(std::io::stdout(), g.quiet).emit(&summary);
    }
    Ok(())
}

/// Submit what the retry policy allows, telling `events` what changed; returns the `submitted`
/// event.
fn submit_round(
    g: &GlobalArgs,
    args: &SubmitArgs,
    cluster: &str,
    events: &mut Events,
) -> anyhow::Result<Event> {
    let t0 = std::time::Instant::now();
    let (_, c) = super::settings::cluster_entry(args.clusters.as_deref(), cluster)?;
    let (src, plan) = load_plan(&args.spec, false)?;
    if let (Some(gb), false) = (c.gpu_memory_gb, args.no_memory_check) {
        check_memory(&plan, cluster, gb)?;
    }
    let dir = sweep_dir(g, &plan.name);
    let _lock = SweepLock::acquire(&dir)?;
    super::guard_replan(&dir, &plan, false)?;
    let sweep = ClusterSweep::for_submit(&dir, &plan, cluster, &c)?;
    super::target::write_plan_files(&dir, &plan, &src)?;
    let wait = sweep.unconfirmed_wait_s(now().0);
    if wait > 0 {
        std::thread::sleep(std::time::Duration::from_secs(wait));
    }
    let parallel = c
        .max_concurrent
        .map_or(plan.runs.len(), |m| (m as usize).min(plan.runs.len()));
    // The first look starts the sweep's events; later rounds go on from what they saw.
    events.look(&sweep.state, &plan, &sweep.backend(), parallel);
    let mut exe = SlurmExecutor::new(sweep, |c| connect(c).map_err(SlurmError::from));
    if let Some(w) = events.watcher.take() {
        exe.watcher = w;
    }
    exe.resources = resources(g, &plan, &c);
    exe.retry_failed = args.retry_failed;
    exe.leave_cancelled = args.leave_cancelled;
    let installed = if args.install {
        let binary = match &c.install_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("locating the sweep binary")?,
        };
        let local_lib = option_env!("SWEEP_LIBTORCH_LIB").map(std::path::PathBuf::from);
        let sink = &mut events.sink;
        let mut notify = |m: &str| {
            if !g.quiet {
                sink.emit(&Event::Note {
                    message: m.to_string(),
                });
            }
        };
        exe.install(
            &binary,
            local_lib.as_deref(),
            cfg!(feature = "torch"),
            &mut notify,
        )?
    } else {
        Vec::new()
    };
    let result = exe.submit(events.sink.as_mut());
    let round_trips = exe.round_trips();
    let done = exe.sweep.done();
    events.watcher = Some(exe.watcher);
    let submitted = result.map_err(super::lift)?.sent;
    Ok(Event::Submitted {
        sweep: plan.name.clone(),
        cluster: cluster.to_string(),
        runs: plan.runs.len(),
        submitted,
        done,
        round_trips,
        installed,
        wall_s: t0.elapsed().as_secs_f64(),
    })
}

/// `sweep submit SPEC --cluster NAME --show-settings` (and `sweep follow SPEC --show-settings`):
/// the settings a submit to `cluster` would act with.
pub fn show_settings(g: &GlobalArgs, args: &SubmitArgs, cluster: &str) -> anyhow::Result<()> {
    let (clusters_file, entry) = super::settings::cluster_entry(args.clusters.as_deref(), cluster)?;
    let (_, plan) = load_plan(&args.spec, false)?;
    super::settings::Settings {
        sweep: plan.name.clone(),
        spec: args.spec.clone(),
        results: sweep_dir(g, &plan.name),
        runs: plan.runs.len(),
        executor: format!("slurm:{cluster}"),
        local: None,
        cluster: Some(super::settings::Cluster {
            name: cluster.to_string(),
            clusters_file,
            entry,
            install: args.install,
            follow: args.follow,
            retry_failed: args.retry_failed,
            memory_check: !args.no_memory_check,
        }),
        environment: super::settings::environment(),
    }
    .show(g.json)
}

/// What each job of the plan asks Slurm for, with the checkpoint size its warning before the
/// time limit must leave time for (said when the model's size is not known here).
fn resources(
    g: &GlobalArgs,
    plan: &Plan,
    c: &crate::executor::slurm::config::ClusterConfig,
) -> crate::executor::slurm::script::Resources {
    let tc = &plan.shared.training;
    let checkpoint_bytes = match plan.shape.as_ref() {
        Some(shape) => plan
            .points
            .iter()
            .map(|p| crate::plan::memory::checkpoint_bytes(shape, &p.method, tc))
            .fold(0.0, f64::max),
        None => {
            let bytes = crate::executor::slurm::config::UNKNOWN_CHECKPOINT_BYTES;
            if c.checkpoint_signal_s.is_none() && !g.quiet {
                eprintln!(
                    "sweep: the model's size is not known here (its config.json or GGUF is not on this machine): jobs are warned {} s before their time limit, time for a {:.0} GB checkpoint; set checkpoint_signal_s in the cluster's entry to choose",
                    crate::executor::slurm::config::default_signal_s(bytes),
                    bytes / 1e9
                );
            }
            bytes
        }
    };
    crate::executor::slurm::script::Resources {
        nodes: tc.nodes,
        ranks_per_node: tc.ranks_per_node,
        checkpoint_bytes,
    }
}

/// `sweep submit --cluster NAME --follow`: submit, then until every run is final (completed,
/// diverged, or failed with no retry left): refresh, resubmit what the retry policy allows,
/// collect what finished, rebuild the report when something changed, and wait the cluster's
/// poll_floor_s. Each round is a whole `submit` and `collect`, which the journal and the sweep
/// lock make safe to kill and start again: nothing is lost and nothing sent twice. Ends with a
/// summary; fails when a run ended without completing.
pub fn follow(g: &GlobalArgs, args: &SubmitArgs, cluster: &str) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let quiet = GlobalArgs {
        quiet: true,
        json: false,
        ..g.clone()
    };
    let mut events = Events::new(g, g.quiet);
    let mut round = 0u64;
    let mut failures = 0u64;
    let mut last: Option<(usize, usize)> = None;
    loop {
        // --install and --retry-failed act once, in the first round; later rounds leave a run
        // that was cancelled meanwhile cancelled (the user's cancel wins).
        let submit_args = SubmitArgs {
            install: args.install && round == 0,
            retry_failed: args.retry_failed && round == 0,
            follow: false,
            leave_cancelled: args.leave_cancelled || round > 0,
            ..args.clone()
        };
        if round == 0 {
            submit_round(g, &submit_args, cluster, &mut events)?;
        } else if let Err(e) = submit_round(&quiet, &submit_args, cluster, &mut events) {
            // A later round's failure (an SSH hiccup, a held lock) is said and tried again,
            // up to a limit.
            failures += 1;
            if failures >= MAX_FOLLOW_FAILURES {
                return Err(e.context(format!(
                    "sweep: {failures} follow rounds in a row failed; the last"
                )));
            }
            events.sink.emit(&Event::Note {
                message: format!("this round failed ({e:#}); trying again"),
            });
            std::thread::sleep(std::time::Duration::from_secs((10 * failures).max(1)));
            continue;
        }
        failures = 0;
        let collect_args = CollectArgs {
            spec: args.spec.clone(),
            adapters: false,
        };
        if let Err(e) = collect(&quiet, &collect_args) {
            // An incomplete result on the cluster is said and looked at again next round.
            if !g.quiet {
                events.sink.emit(&Event::Note {
                    message: format!("{e:#}"),
                });
            }
        }
        let (_, plan) = load_plan(&args.spec, false)?;
        let dir = sweep_dir(g, &plan.name);
        let state =
            SweepState::load(&dir, &plan.name)?.unwrap_or_else(|| SweepState::new(&plan.name));
        let Some(policy) = Journal::load(&dir)?.map(|j| j.config) else {
            anyhow::bail!(
                "sweep {}: submitted, but {} has no slurm.json",
                plan.name,
                dir.display()
            );
        };
        events.look(&state, &plan, &format!("slurm:{cluster}"), plan.runs.len());
        // Settled: no longer queued or running, not something the next submit resends (a run
        // cancelled meanwhile stays cancelled), and, when it completed, its result collected.
        let collected = |r: &crate::plan::PlannedRun| {
            result_state(&dir.join("runs").join(&r.id), &RunIdentity::of(&plan, r))
                .is_some_and(|(s, _)| s.is_final())
        };
        let settled = |r: &crate::plan::PlannedRun| {
            state.runs.get(&r.id).is_some_and(|s| {
                !matches!(s.state, JobState::Pending | JobState::Running)
                    && (s.state == JobState::Cancelled
                        || !crate::executor::slurm::retry::resubmit_record(s, &policy.retry, false))
                    && (!s.state.is_final() || collected(r))
            })
        };
        let ids: Vec<&str> = plan.runs.iter().map(|r| r.id.as_str()).collect();
        let done = plan.runs.iter().filter(|r| settled(r)).count();
        let completed =
            ids.iter()
                .filter(|id| {
                    state.runs.get(**id).is_some_and(|r| {
                        matches!(r.state, JobState::Completed | JobState::Diverged)
                    })
                })
                .count();
        if last != Some((done, completed)) {
            last = Some((done, completed));
            let input = crate::report::load::load(&dir)?;
            let report = dir.join("report");
            super::report::write_report(&crate::report::build(&input), &report)?;
            events.sink.emit(&Event::Report {
                path: report.display().to_string(),
            });
        }
        if done == ids.len() {
            let counts: Vec<(JobState, usize)> = JobState::ALL
                .iter()
                .map(|s| {
                    let n = ids
                        .iter()
                        .filter(|id| state.runs.get(**id).is_some_and(|r| r.state == *s))
                        .count();
                    (*s, n)
                })
                .collect();
            events.sink.emit(&Event::Finish {
                counts,
                wall_s: t0.elapsed().as_secs_f64(),
                interrupted: false,
            });
            let failed: Vec<&str> = ids
                .iter()
                .copied()
                .filter(|id| {
                    state.runs.get(*id).is_some_and(|r| {
                        !matches!(r.state, JobState::Completed | JobState::Diverged)
                    })
                })
                .collect();
            if failed.is_empty() {
                if !g.quiet && !g.json {
                    println!(
                        "sweep {}: every run is final; followed for {} rounds",
                        plan.name,
                        round + 1
                    );
                }
                return Ok(());
            }
            anyhow::bail!(
                "sweep {}: {} of {} runs ended without completing ({}): `sweep status {}` shows why; `sweep submit {} --cluster {cluster} --retry-failed --follow` reruns them",
                plan.name,
                failed.len(),
                ids.len(),
                failed.join(", "),
                dir.display(),
                dir.display()
            );
        }
        round += 1;
        std::thread::sleep(std::time::Duration::from_secs(policy.poll_floor_s.max(1)));
    }
}

/// `sweep follow SPEC`: [`follow`] the sweep on the cluster it was submitted to, leaving
/// cancelled runs cancelled from the first round.
pub fn attach(g: &GlobalArgs, args: &crate::cli::FollowArgs) -> anyhow::Result<()> {
    let (_, plan) = load_plan(&args.spec, false)?;
    let dir = sweep_dir(g, &plan.name);
    let Some(ClusterSweep { journal: j, .. }) = ClusterSweep::open(&dir, &plan)? else {
        return Err(UsageError(format!(
            "sweep {} was never submitted to a cluster ({} has no slurm.json with jobs): `sweep submit {} --cluster NAME --follow` submits and follows it; a local sweep resumes with `sweep run {}`",
            plan.name,
            dir.display(),
            args.spec.display(),
            args.spec.display()
        ))
        .into());
    };
    let submit = SubmitArgs {
        spec: args.spec.clone(),
        cluster: Some(j.cluster.clone()),
        retry_failed: args.retry_failed,
        install: false,
        clusters: args.clusters.clone(),
        no_memory_check: args.no_memory_check,
        follow: true,
        jobs: None,
        threads: None,
        gpus: None,
        leave_cancelled: true,
        show_settings: args.show_settings,
    };
    if args.show_settings {
        return show_settings(g, &submit, &j.cluster);
    }
    follow(g, &submit, &j.cluster)
}

/// Follow rounds in a row that may fail before `--follow` gives up.
const MAX_FOLLOW_FAILURES: u64 = 10;

/// Refuse a plan one of whose run shapes needs more memory per GPU than the cluster's
/// `gpu_memory_gb` (by the estimate `sweep plan` prints), saying what would fit.
fn check_memory(plan: &Plan, cluster: &str, gb: f64) -> anyhow::Result<()> {
    use crate::plan::memory::{estimate, what_fits};
    let Some(shape) = plan.shape.as_ref() else {
        return Ok(());
    };
    let t = &plan.shared.training;
    let mut seen = std::collections::HashSet::new();
    for p in &plan.points {
        let key = serde_json::to_string(&p.method).unwrap_or_default();
        if !seen.insert(key) {
            continue;
        }
        let need = estimate(shape, &p.method, t, true).total();
        if need <= gb * 1e9 {
            continue;
        }
        let fits = what_fits(shape, &p.method, t, gb * 1e9, true);
        let advice = if fits.is_empty() {
            "nothing in the spec alone fits: more GPUs (training.ranks_per_node, nodes) with shard_optimizer and shard_gradients, a shorter seq_len, or LoRA".to_string()
        } else {
            fits.iter()
                .map(|(w, b)| format!("{w} ({:.1} GB)", b / 1e9))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(UsageError(format!(
            "{} runs need about {:.1} GB per GPU (sweep plan shows the parts), but cluster `{cluster}` has {gb} GB (gpu_memory_gb): what would fit: {advice}; or --no-memory-check to submit anyway",
            p.method.method_name(),
            need / 1e9
        ))
        .into());
    }
    Ok(())
}

/// The executor of a sweep submitted to a cluster from `dir`, with the sweep's lock held; None
/// when the sweep was never submitted to one (it runs here).
pub fn open<'a>(
    dir: &'a std::path::Path,
    plan: &'a Plan,
) -> anyhow::Result<Option<(SweepLock, SlurmExecutor<'a>)>> {
    // Only a cluster sweep's folder is locked here (a local one may not even exist yet).
    if ClusterSweep::open(dir, plan)?.is_none() {
        return Ok(None);
    }
    locked(dir, plan)
}

/// [`open`] of a folder known to hold a cluster sweep: the lock, then the sweep read under it.
fn locked<'a>(
    dir: &'a std::path::Path,
    plan: &'a Plan,
) -> anyhow::Result<Option<(SweepLock, SlurmExecutor<'a>)>> {
    let lock = SweepLock::acquire(dir)?;
    let Some(sweep) = ClusterSweep::open(dir, plan)? else {
        return Ok(None);
    };
    let exe = SlurmExecutor::new(sweep, |c| connect(c).map_err(SlurmError::from));
    Ok(Some((lock, exe)))
}

/// Bring a cluster sweep's state up to date for `sweep status` (at most once per polling
/// floor); returns a note for the table, or None when the sweep was not submitted to a cluster.
pub fn status_refresh(g: &GlobalArgs, plan: &Plan) -> anyhow::Result<Option<String>> {
    let dir = sweep_dir(g, &plan.name);
    let Some(sweep) = ClusterSweep::open(&dir, plan)? else {
        return Ok(None);
    };
    let cluster = sweep.journal.cluster.clone();
    // Within the poll floor, the state as it is: no lock needed (a read-only results folder
    // shows its status too).
    if let Some(note) = sweep.too_soon(now().0) {
        return Ok(Some(note));
    }
    let note = match locked(&dir, plan) {
        Ok(Some((_lock, mut exe))) => exe.poll().map_err(super::lift),
        Ok(None) => Ok(None),
        // A `submit --follow` or `follow` working on the sweep polls it: show its last state
        // rather than wait for it.
        Err(e) => match e.downcast_ref::<crate::executor::state::StateError>() {
            Some(crate::executor::state::StateError::Locked { pid, .. }) => Ok(Some(format!(
                "cluster {cluster}: not polled now: another sweep process{pid} is working on it (a follow polls it); its last state"
            ))),
            _ => Err(e),
        },
    };
    note
}

/// `sweep collect SPEC [--adapters]`: copy result.json and metrics.jsonl of finished runs into
/// results/NAME/runs/ID/, checking that each result is complete; with `--adapters`, also the
/// adapter/ folder of each completed LoRA run (of runs collected earlier too).
pub fn collect(g: &GlobalArgs, args: &CollectArgs) -> anyhow::Result<()> {
    let (_, plan) = load_plan(&args.spec, false)?;
    let dir = sweep_dir(g, &plan.name);
    let Some((_lock, mut exe)) = open(&dir, &plan)? else {
        return Err(UsageError(format!(
            "sweep {} was not submitted to a cluster from here ({} has no slurm.json): nothing to collect",
            plan.name,
            dir.display()
        ))
        .into());
    };
    let Collected {
        collected,
        already_here: have,
        adapters,
        incomplete: bad,
    } = exe.collect(args.adapters).map_err(super::lift)?;
    let trips = exe.round_trips();
    let tracker_warning = super::sync_trackers(&dir, &plan);
    let waiting = plan.runs.len() - collected - have;
    if g.json {
        let j = serde_json::json!({
            "sweep": plan.name,
            "collected": collected,
            "already_here": have,
            "not_finished": waiting,
            "adapters": adapters,
            "incomplete": bad,
            "tracker_warning": tracker_warning,
            "ssh_round_trips": trips,
        });
        println!("{j}");
    } else if !g.quiet {
        println!(
            "sweep {}: collected {collected} runs into {}/runs ({have} were here already, {waiting} not finished or failed){}; {} SSH round trips",
            plan.name,
            dir.display(),
            if args.adapters {
                format!(", and {adapters} LoRA adapters")
            } else {
                String::new()
            },
            trips
        );
        for b in &bad {
            println!("  {b}");
        }
        if let Some(w) = &tracker_warning {
            eprintln!("warning: {w}");
        }
    } else {
        // Even quiet (`--follow` collects quietly), what cannot be collected is said.
        for b in &bad {
            eprintln!("sweep: {b}");
        }
        if let Some(w) = &tracker_warning {
            eprintln!("sweep: warning: {w}");
        }
    }
    if !bad.is_empty() {
        anyhow::bail!(
            "{} runs on the cluster are incomplete ({})",
            bad.len(),
            if g.json {
                "the JSON's `incomplete`"
            } else {
                "listed above"
            }
        );
    }
    Ok(())
}
