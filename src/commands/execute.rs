//! `sweep run`, `sweep submit` (local), `sweep status` and `sweep cancel`: the local executor
//! driven from a spec; a sweep on a cluster is handed to [`super::slurm`].

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use super::{load_plan, settings, sweep_dir, UsageError};
use crate::cli::{CancelArgs, GlobalArgs, RunArgs, StatusArgs, SubmitArgs};
use crate::executor::local::{default_parallel, parse_gpus, LocalExecutor, LocalRun, LocalSweep};
use crate::executor::render::JsonLinesRenderer;
use crate::executor::state::{local_result_state, reconcile, SweepLock, SweepState};
use crate::executor::{Event, EventSink, Executor, JobState, Submission};
use crate::plan::run::run_hash;
use crate::plan::Plan;
use crate::results::RunIdentity;
use crate::util::write_atomic;

/// Write plan.jsonl, spec.toml (and spec.origin) and each run's run.json (when missing) under results/NAME/. A
/// run.json that is not the plan's (another run's, or edited) is left as it is and the run
/// marked with the problem, unless `retrain_invalid` says to replace it (its folder is then
/// cleared by the executor).
fn stage(
    dir: &Path,
    plan: &Plan,
    src: &crate::spec::SpecSource,
    retrain_invalid: bool,
) -> anyhow::Result<Vec<LocalRun>> {
    super::target::write_plan_files(dir, plan, src)?;
    let mut runs = Vec::with_capacity(plan.runs.len());
    for r in &plan.runs {
        let run_dir = dir.join("runs").join(&r.id);
        let run_json = run_dir.join("run.json");
        let who = RunIdentity::of(plan, r);
        let text = std::fs::read(&run_json).ok();
        let on_disk = text.as_ref().map(|t| {
            serde_json::from_slice::<serde_json::Value>(t)
                .map(|v| run_hash(&v))
                .unwrap_or_default()
        });
        let json = serde_json::to_vec_pretty(&plan.run_file(r))?;
        let mut problem = None;
        match on_disk {
            // The same run; its [tracking] may have changed since.
            Some(h) if h == who.run_hash => {
                if text.as_deref() != Some(json.as_slice()) {
                    write_atomic(&run_json, |w| w.write_all(&json))
                        .with_context(|| format!("writing {}", run_json.display()))?;
                }
            }
            Some(_) if !retrain_invalid => {
                problem = Some(format!(
                    "{} is not the plan's run.json for this run (another run's, or edited); nothing was trained from it here: `sweep run SPEC --retrain-invalid` replaces it and trains the run",
                    run_json.display()
                ));
            }
            _ => {
                write_atomic(&run_json, |w| w.write_all(&json))
                    .with_context(|| format!("writing {}", run_json.display()))?;
            }
        }
        let t = &plan.shared.training;
        runs.push(LocalRun {
            id: r.id.clone(),
            dir: run_dir,
            who,
            problem,
            ranks: (t.nodes, t.ranks_per_node),
            total_steps: plan.points[r.point]
                .token_budget
                .div_ceil(t.tokens_per_step())
                .max(1),
        });
    }
    Ok(runs)
}

/// The GPUs a local execution lends its runs: `--gpus LIST|none`; else the ones
/// CUDA_VISIBLE_DEVICES names; else every GPU libtorch sees. None where SWEEP_DEVICE=cpu.
fn local_gpus(arg: Option<&str>) -> Result<Vec<String>, UsageError> {
    let bad = |e: String| UsageError(format!("--gpus: {e}"));
    if let Some(list) = arg.filter(|a| a.trim() != "auto") {
        return parse_gpus(list).map_err(bad);
    }
    if std::env::var("SWEEP_DEVICE").is_ok_and(|d| d.trim() == "cpu") {
        return Ok(Vec::new());
    }
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return parse_gpus(&v).map_err(|e| UsageError(format!("CUDA_VISIBLE_DEVICES={v}: {e}")));
    }
    #[cfg(feature = "torch")]
    {
        Ok((0..tch::Cuda::device_count())
            .map(|i| i.to_string())
            .collect())
    }
    #[cfg(not(feature = "torch"))]
    Ok(Vec::new())
}

/// The local part of the settings: `jobs` runs at a time (default: the cores over each run's
/// threads and ranks), `threads` each (default 1), the GPUs lent.
fn local_settings(
    plan: &Plan,
    jobs: Option<usize>,
    threads: Option<usize>,
    gpus: Option<&str>,
    retry_failed: bool,
    retrain_invalid: bool,
) -> anyhow::Result<settings::Local> {
    let threads = threads.unwrap_or(1).max(1);
    Ok(settings::Local {
        // A run of N ranks takes N processes of `threads` threads each.
        jobs: jobs
            .unwrap_or_else(|| {
                default_parallel(threads * plan.shared.training.ranks_per_node as usize)
            })
            .max(1),
        threads,
        gpus: local_gpus(gpus)?,
        retry_failed,
        retrain_invalid,
    })
}

/// The local executor of `local`.
fn local_executor(local: &settings::Local) -> anyhow::Result<LocalExecutor> {
    Ok(LocalExecutor {
        program: std::env::current_exe().context("locating the sweep binary")?,
        parallel: local.jobs,
        threads: local.threads,
        retry_failed: local.retry_failed,
        retrain_invalid: local.retrain_invalid,
        gpus: local.gpus.clone(),
    })
}

/// The settings of a local `run` or `submit` of `spec`: printed with `show`, else executed.
#[allow(clippy::too_many_arguments)]
fn run_locally(
    g: &GlobalArgs,
    spec: &Path,
    jobs: Option<usize>,
    threads: Option<usize>,
    gpus: Option<&str>,
    retry_failed: bool,
    retrain_invalid: bool,
    show: bool,
) -> anyhow::Result<Option<(Plan, Submission)>> {
    let (_, plan) = load_plan(spec, false)?;
    let local = local_settings(&plan, jobs, threads, gpus, retry_failed, retrain_invalid)?;
    if show {
        settings::Settings {
            sweep: plan.name.clone(),
            spec: spec.to_path_buf(),
            results: sweep_dir(g, &plan.name),
            runs: plan.runs.len(),
            executor: "local".into(),
            local: Some(local),
            cluster: None,
            environment: settings::environment(),
        }
        .show(g.json)?;
        return Ok(None);
    }
    execute_locally(g, spec, &local).map(Some)
}

/// Plan, stage and execute every run locally; returns the outcome.
fn execute_locally(
    g: &GlobalArgs,
    spec: &Path,
    local: &settings::Local,
) -> anyhow::Result<(Plan, Submission)> {
    let (src, plan) = load_plan(spec, false)?;
    let dir = sweep_dir(g, &plan.name);
    let _lock = SweepLock::acquire(&dir)?;
    super::guard_replan(&dir, &plan, false)?;
    let state = SweepState::load(&dir, &plan.name)?.unwrap_or_else(|| SweepState::new(&plan.name));
    let runs = stage(&dir, &plan, &src, local.retrain_invalid)?;
    let mut exe = LocalSweep {
        exe: local_executor(local)?,
        dir: &dir,
        state,
        runs,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let flag = exe.stop.clone();
    // A second handler cannot be installed in one process; then Ctrl-C simply kills us, and
    // the state on disk stays consistent (every write is atomic) and resumable.
    let _ = ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
    let mut sink = super::event_sink(g, g.quiet);
    let outcome = exe.submit(sink.as_mut()).map_err(super::lift)?;
    if let Some(w) = super::sync_trackers(&dir, &plan) {
        eprintln!("warning: {w}");
    }
    Ok((plan, outcome))
}

/// An error when runs did not all finish: interrupted, or some failed.
fn outcome_error(plan: &Plan, g: &GlobalArgs, o: &Submission) -> anyhow::Result<()> {
    if o.interrupted {
        anyhow::bail!("interrupted: rerun the same command to resume");
    }
    let bad: usize = o
        .counts
        .iter()
        .filter(|(s, _)| !s.is_final())
        .map(|(_, n)| n)
        .sum();
    if bad > 0 {
        // The results folder names the sweep wherever its results are (--results included).
        let dir = sweep_dir(g, &plan.name);
        let n = |pick: &dyn Fn(JobState) -> bool| -> usize {
            o.counts
                .iter()
                .filter(|(s, _)| pick(*s))
                .map(|(_, n)| n)
                .sum()
        };
        let invalid = n(&|s| s == JobState::Invalid);
        let mut rerun = Vec::new();
        if bad > invalid {
            rerun.push(format!(
                "`sweep run {} --retry-failed` reruns {}",
                dir.display(),
                if invalid > 0 {
                    "the failed ones"
                } else {
                    "them"
                }
            ));
        }
        if invalid > 0 {
            rerun.push(format!(
                "`sweep run {} --retrain-invalid` trains the {invalid} invalid ones again from scratch",
                dir.display()
            ));
        }
        anyhow::bail!(
            "{bad} of {} runs did not complete: `sweep status {}` lists them with their errors (logs in {}/runs/ID/train.log); {}",
            plan.runs.len(),
            dir.display(),
            dir.display(),
            rerun.join("; ")
        );
    }
    Ok(())
}

/// `sweep run SPEC`: plan + run locally + wait + report.
pub fn run(g: &GlobalArgs, args: &RunArgs) -> anyhow::Result<()> {
    let Some((plan, outcome)) = run_locally(
        g,
        &args.spec,
        args.jobs,
        args.threads,
        args.gpus.as_deref(),
        args.retry_failed,
        args.retrain_invalid,
        args.show_settings,
    )?
    else {
        return Ok(());
    };
    if !outcome.interrupted {
        // Report what there is, failed runs included (the report lists them); with --json,
        // the last event line says where (`sweep --json report` prints the report itself).
        if g.json {
            let (_, html) = super::report::build_and_write(g, &args.spec)?;
            let path = html.parent().unwrap_or(&html).display().to_string();
            JsonLinesRenderer::new(std::io::stdout()).emit(&Event::Report { path });
        } else {
            super::report::run(
                g,
                &crate::cli::ReportArgs {
                    specs: vec![args.spec.clone()],
                    summary: None,
                },
            )?;
        }
    }
    outcome_error(&plan, g, &outcome)
}

/// `sweep submit SPEC`: without a cluster, the local executor in the foreground.
pub fn submit(g: &GlobalArgs, args: &SubmitArgs) -> anyhow::Result<()> {
    if let Some(cluster) = &args.cluster {
        if args.show_settings {
            return super::slurm::show_settings(g, args, cluster);
        }
        if args.follow {
            return super::slurm::follow(g, args, cluster);
        }
        return super::slurm::submit(g, args, cluster);
    }
    if args.install {
        return Err(UsageError("--install needs --cluster NAME".into()).into());
    }
    let Some((plan, outcome)) = run_locally(
        g,
        &args.spec,
        args.jobs,
        args.threads,
        args.gpus.as_deref(),
        args.retry_failed,
        false,
        args.show_settings,
    )?
    else {
        return Ok(());
    };
    outcome_error(&plan, g, &outcome)
}

#[derive(Serialize)]
struct StatusRow {
    id: String,
    state: JobState,
    attempts: u32,
    /// Attempts that went on after a time limit, not counted against max_attempts.
    continuations: u32,
    detail: Option<String>,
}

/// `sweep status SPEC [--rebuild]`: runs by state, from the state file and the run folders.
/// With `-q` it prints nothing and answers by its exit code ([`Seen::code`]).
pub fn status(g: &GlobalArgs, args: &StatusArgs) -> anyhow::Result<()> {
    let quiet = g.quiet && !g.json;
    let Some(every) = args.watch else {
        let mut out = String::new();
        let seen = status_once(g, args, false, &mut out)?;
        if !quiet {
            print!("{out}");
        }
        return seen.answer(g.quiet);
    };
    // --watch: the table again every few seconds (redrawn in place on a terminal; one after
    // another, or one JSON array per line, otherwise) until no run is pending or running.
    let tty = std::io::stdout().is_terminal();
    loop {
        let mut out = String::new();
        let seen = status_once(g, args, true, &mut out)?;
        if !quiet {
            if tty && !g.json {
                print!("\x1b[2J\x1b[H");
            }
            print!("{out}");
            if !tty && !g.json {
                println!();
            }
            std::io::stdout().flush()?;
        }
        if seen.pending + seen.running == 0 {
            return seen.answer(g.quiet);
        }
        // Pending runs of a local sweep that no sweep process works on stay pending: say how
        // they resume rather than watch them forever. (On a cluster, pending runs are queued.)
        if seen.running == 0 && !seen.on_cluster && !SweepLock::is_held(&seen.dir) {
            if !g.quiet {
                eprintln!(
                    "sweep: {} runs pending and no sweep process runs them: `sweep run {}` resumes them",
                    seen.pending,
                    seen.dir.display()
                );
            }
            // Waited for, they would wait forever: its own answer.
            return match g.quiet {
                true => Err(super::Answer(5).into()),
                false => Ok(()),
            };
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(every));
    }
}

/// What one status saw: runs pending and running, and where.
struct Seen {
    pending: usize,
    running: usize,
    /// Runs with a final result (completed or diverged), of `total`.
    done: usize,
    total: usize,
    /// The sweep was submitted to a cluster.
    on_cluster: bool,
    /// Its results folder.
    dir: PathBuf,
}

impl Seen {
    /// The exit code of `sweep -q status`: 0 when every run has its result (completed or
    /// diverged), 3 while runs are pending or running, 4 when none is but some ended without
    /// a result (failed, timed out, cancelled, invalid: they need a rerun or a look); and 5
    /// from `--watch` of a local sweep whose pending runs no sweep process runs.
    fn code(&self) -> i32 {
        if self.done == self.total {
            0
        } else if self.pending + self.running > 0 {
            3
        } else {
            4
        }
    }

    /// The command's end: with `quiet`, [`Seen::code`] as its exit code.
    fn answer(&self, quiet: bool) -> anyhow::Result<()> {
        match self.code() {
            0 => Ok(()),
            c if quiet => Err(super::Answer(c).into()),
            _ => Ok(()),
        }
    }
}

/// One status of the sweep into `out`; what it saw. `lines`: JSON as one line (for --watch).
fn status_once(
    g: &GlobalArgs,
    args: &StatusArgs,
    lines: bool,
    out: &mut String,
) -> anyhow::Result<Seen> {
    use std::fmt::Write as _;
    let (_, plan) = load_plan(&args.spec, false)?;
    let dir = sweep_dir(g, &plan.name);
    // A sweep on a cluster: one probe (squeue + accounting) refreshes the state first.
    let note = if args.rebuild {
        None
    } else {
        super::slurm::status_refresh(g, &plan)?
    };
    let who: Vec<RunIdentity> = plan
        .runs
        .iter()
        .map(|r| RunIdentity::of(&plan, r))
        .collect();
    let state = if args.rebuild {
        let _lock = SweepLock::acquire(&dir)?;
        let s = SweepState::rebuild(&dir, &plan.name, &who);
        s.save(&dir)?;
        s
    } else {
        SweepState::load(&dir, &plan.name)?.unwrap_or_else(|| SweepState::new(&plan.name))
    };
    let rows: Vec<StatusRow> = who
        .iter()
        .zip(&plan.runs)
        .map(|(w, run)| {
            let rec = state.runs.get(&w.id);
            // A result on disk wins: it may have arrived after the state was written; one that
            // is not this run's is invalid, never completed.
            let run_dir = dir.join("runs").join(&w.id);
            // A result trained on this host is also checked against the files it trained from.
            let on_disk = local_result_state(&run_dir, w);
            let (mut st, mut detail) = reconcile(rec, on_disk);
            // A local run whose trainer is alive (it holds the run's lock) is running; one whose
            // executor died is pending (it resumes). A run training here says how far it has
            // got, from its own metrics.jsonl.
            let local_running =
                rec.is_some_and(|r| r.state == JobState::Running && r.backend == "local");
            if st == JobState::Pending
                && local_running
                && crate::run_lock::RunLock::holder(&run_dir).is_some()
            {
                st = JobState::Running;
            }
            if st == JobState::Running && detail.is_none() {
                let budget = plan.points[run.point].token_budget;
                let per_step = plan.shared.training.tokens_per_step();
                detail =
                    crate::progress::Progress::of_run(&run_dir, budget.div_ceil(per_step).max(1))
                        .map(|p| p.describe(per_step));
            }
            StatusRow {
                id: w.id.clone(),
                state: st,
                attempts: rec.map_or(0, |r| r.attempts),
                continuations: rec.map_or(0, |r| r.progress.continuations),
                detail,
            }
        })
        .collect();
    let seen = Seen {
        pending: rows.iter().filter(|r| r.state == JobState::Pending).count(),
        running: rows.iter().filter(|r| r.state == JobState::Running).count(),
        done: rows.iter().filter(|r| r.state.is_final()).count(),
        total: rows.len(),
        on_cluster: note.is_some(),
        dir: dir.clone(),
    };
    if g.json {
        let json = if lines {
            serde_json::to_string(&rows)?
        } else {
            serde_json::to_string_pretty(&rows)?
        };
        writeln!(out, "{json}")?;
        return Ok(seen);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["state", "runs"]);
    for s in JobState::ALL {
        let n = rows.iter().filter(|r| r.state == s).count();
        if n > 0 {
            t.add_row(vec![s.name().to_string(), n.to_string()]);
        }
    }
    writeln!(out, "sweep {}: {} runs", plan.name, rows.len())?;
    if let Some(n) = &note {
        writeln!(out, "{n}")?;
    }
    writeln!(out, "{t}")?;
    let show_all = g.verbose > 0;
    for r in rows
        .iter()
        .filter(|r| show_all || !(r.state.is_final() || r.state == JobState::Pending))
    {
        writeln!(
            out,
            "{}  {}{}",
            r.id,
            r.state.name(),
            r.detail
                .as_ref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        )?;
    }
    Ok(seen)
}

/// `sweep cancel SPEC`: stop the sweep's running local runs (SIGTERM: they checkpoint first).
pub fn cancel(g: &GlobalArgs, args: &CancelArgs) -> anyhow::Result<()> {
    let (_, plan) = load_plan(&args.spec, false)?;
    let only: Vec<String> = args.runs.iter().chain(&args.run_flags).cloned().collect();
    if let Some(id) = only
        .iter()
        .find(|id| !plan.runs.iter().any(|r| r.id == **id))
    {
        return Err(UsageError(format!(
            "sweep {} has no run `{id}`: `sweep status {} -v` lists its runs",
            plan.name,
            sweep_dir(g, &plan.name).display()
        ))
        .into());
    }
    let dir = sweep_dir(g, &plan.name);
    let cluster = super::slurm::open(&dir, &plan)?;
    let c = match cluster {
        Some((_lock, mut exe)) => exe.cancel(&only).map_err(super::lift)?,
        None => {
            // Local runs are stopped while `sweep run` holds the sweep: no lock taken here.
            let state = SweepState::load(&dir, &plan.name)?.ok_or_else(|| {
                UsageError(format!(
                    "sweep {} has not run here: nothing to cancel ({} has no state.json)",
                    plan.name,
                    dir.display()
                ))
            })?;
            let mut exe = LocalSweep {
                // Cancelling needs none of the settings that start runs.
                exe: local_executor(&settings::Local {
                    jobs: 1,
                    threads: 1,
                    gpus: vec![],
                    retry_failed: false,
                    retrain_invalid: false,
                })?,
                dir: &dir,
                state,
                runs: vec![],
                stop: Default::default(),
            };
            exe.cancel(&only).map_err(super::lift)?
        }
    };
    if g.json {
        println!("{}", serde_json::to_string(&c)?);
    } else if !g.quiet {
        for id in &c.runs {
            println!("cancelled {id}");
        }
        for id in &c.not_running {
            println!("{id} is not queued or running: nothing to stop");
        }
        let resume = match c.executor.strip_prefix("slurm:") {
            Some(cluster) => format!("sweep submit {} --cluster {cluster}", dir.display()),
            None => format!("sweep run {}", dir.display()),
        };
        println!(
            "{} runs cancelled ({}); they stay resumable: `{resume}` resumes them from their checkpoints",
            c.runs.len(),
            c.executor,
        );
    }
    Ok(())
}

/// The run folder of a run id.
pub fn run_dir(g: &GlobalArgs, sweep: &str, id: &str) -> PathBuf {
    sweep_dir(g, sweep).join("runs").join(id)
}
