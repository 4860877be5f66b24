//! The commands: each resolves its settings, does its work, and hands errors to `main`, which
//! alone turns them into exit codes (0 ok, 1 runtime failure, 2 usage or spec error).

pub mod execute;
pub mod fetch;
pub mod plan;
#[cfg(feature = "torch")]
pub mod pretrain;
pub mod report;
pub mod settings;
pub mod slurm;
pub mod target;
#[cfg(feature = "torch")]
pub mod tokenize;

use std::path::Path;

use anyhow::Context;

use crate::cli::{Cli, Command, GlobalArgs};
use crate::model::config::LlamaConfig;
use crate::plan::{Plan, PlanOptions};
use crate::spec::{self, SpecError};

/// An error the user can fix by changing how they called `sweep` (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A command that needs libtorch, asked of the light orchestrator build (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("`sweep {command}` needs libtorch, and this is the light orchestrator build (--no-default-features): build with the torch feature (`cargo build --release`, the default, or `cargo install --path .`) to {what}; this build plans, submits to clusters, follows and reports")]
pub struct LightBuild {
    /// The command.
    pub command: &'static str,
    /// What the full build does with it.
    pub what: &'static str,
}

/// Exit code for an error: 2 for spec and usage errors, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if let Some(answer) = err.downcast_ref::<Answer>() {
        return answer.0;
    }
    // A mistake in what the user wrote (a spec, a flag, clusters.toml, a device name) is a
    // usage error; everything else is a runtime failure.
    let config = err
        .downcast_ref::<crate::executor::slurm::SlurmError>()
        .is_some_and(|e| {
            matches!(
                e,
                crate::executor::slurm::SlurmError::Config(_)
                    | crate::executor::slurm::SlurmError::Moved { .. }
            )
        })
        || err
            .downcast_ref::<crate::executor::slurm::config::ConfigError>()
            .is_some();
    #[cfg(feature = "torch")]
    let config = config
        || err
            .downcast_ref::<crate::train::TrainError>()
            .is_some_and(|e| {
                matches!(
                    e,
                    crate::train::TrainError::Device(_) | crate::train::TrainError::Setting(_)
                )
            });
    // A results folder of another sweep, found by a cluster command (wrapped in SlurmError).
    let other_sweep = matches!(
        err.downcast_ref::<crate::executor::slurm::SlurmError>(),
        Some(crate::executor::slurm::SlurmError::State(
            crate::executor::state::StateError::OtherSweep { .. }
        ))
    );
    if config
        || other_sweep
        || err.downcast_ref::<SpecError>().is_some()
        || err.downcast_ref::<UsageError>().is_some()
        || err
            .downcast_ref::<crate::executor::state::StateError>()
            .is_some_and(|e| matches!(e, crate::executor::state::StateError::OtherSweep { .. }))
    {
        2
    } else {
        1
    }
}

/// An exit code that is the command's answer, not an error (`sweep -q status`): the binary
/// exits with it and prints nothing.
#[derive(Debug)]
pub struct Answer(pub i32);

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Answer {}

/// Run the parsed command line.
pub fn run(mut cli: Cli) -> anyhow::Result<()> {
    resolve_sweep_folder(&mut cli)?;
    let g = &cli.global;
    match cli.command {
        Command::Plan(args) => plan::run(g, &args),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "sweep", &mut std::io::stdout());
            Ok(())
        }
        Command::Submit(args) => execute::submit(g, &args),
        Command::Follow(args) => slurm::attach(g, &args),
        Command::Status(args) => execute::status(g, &args),
        Command::Cancel(args) => execute::cancel(g, &args),
        Command::Collect(args) => slurm::collect(g, &args),
        Command::Report(args) => report::run(g, &args),
        Command::Train(args) if args.noop => noop_train(&args.run),
        Command::Train(args) if trainer_command(&args.run).is_some() => {
            let trainer = trainer_command(&args.run).unwrap_or_default();
            crate::external_trainer::train(&args.run, &trainer, g.quiet, args.force, args.nproc)
        }
        Command::Train(args) => train(g, &args),
        Command::Export(args) => export(g, &args),
        #[cfg(feature = "torch")]
        Command::Tokenize(args) => tokenize::run(g, &args),
        #[cfg(not(feature = "torch"))]
        Command::Tokenize(_) => Err(LightBuild {
            command: "tokenize",
            what: "tokenize data with a model's tokenizer",
        }
        .into()),
        #[cfg(feature = "torch")]
        Command::Pretrain(args) => pretrain::run(g, &args),
        #[cfg(not(feature = "torch"))]
        Command::Pretrain(_) => Err(LightBuild {
            command: "pretrain",
            what: "pretrain a base model here",
        }
        .into()),
        Command::Run(args) => execute::run(g, &args),
        Command::Fetch(args) => fetch::run(g, &args),
    }
}

/// The spec argument of the commands that act on one sweep (`report` reads a folder itself).
fn sweep_arg(command: &mut Command) -> Option<&mut std::path::PathBuf> {
    match command {
        Command::Plan(a) => Some(&mut a.spec),
        Command::Submit(a) => Some(&mut a.spec),
        Command::Follow(a) => Some(&mut a.spec),
        Command::Status(a) => Some(&mut a.spec),
        Command::Cancel(a) => Some(&mut a.spec),
        Command::Collect(a) => Some(&mut a.spec),
        Command::Run(a) => Some(&mut a.spec),
        Command::Tokenize(a) => Some(&mut a.spec),
        _ => None,
    }
}

/// A command pointed at a sweep's results folder acts on the spec it was planned from, with
/// the folder's parent as the results root, once the plan is checked to be the folder's.
fn resolve_sweep_folder(cli: &mut Cli) -> anyhow::Result<()> {
    let Some(arg) = sweep_arg(&mut cli.command) else {
        return Ok(());
    };
    let Some(folder) = target::sweep_folder(arg)? else {
        return Ok(());
    };
    // An explicit --results elsewhere and a folder argument name two places: say so rather
    // than follow one of them.
    let given = &cli.global.results;
    if given.as_path() != Path::new(crate::cli::DEFAULT_RESULTS)
        && std::fs::canonicalize(given).ok().as_ref() != Some(&folder.root)
    {
        return Err(UsageError(format!(
            "{} is a sweep's results folder in {}, but --results says {}: drop --results (the folder says where the results are), or give the spec",
            arg.display(),
            folder.root.display(),
            given.display()
        ))
        .into());
    }
    let (_, plan) = load_plan(&folder.spec, true)?;
    let dir = std::fs::canonicalize(&*arg).unwrap_or_else(|_| arg.clone());
    target::check_folder_plan(&dir, &plan, &folder.spec)?;
    if let Some(note) = folder.note.filter(|_| !cli.global.quiet) {
        eprintln!("sweep: {note}");
    }
    *arg = folder.spec;
    cli.global.results = folder.root;
    Ok(())
}

/// `sweep train RUN.json`: train one run; its folder receives metrics.jsonl, result.json and
/// checkpoints. A diverged run is a result, not an error (exit 0).
#[cfg(feature = "torch")]
fn train(g: &GlobalArgs, args: &crate::cli::TrainArgs) -> anyhow::Result<()> {
    let rendezvous = crate::dist::Rendezvous::from_vars(
        |k| std::env::var(k).ok(),
        std::time::Duration::from_secs(seconds_var("SWEEP_DIST_TIMEOUT_S", 300)?),
        std::time::Duration::from_secs(seconds_var("SWEEP_DIST_MAIN_TIMEOUT_S", 3600)?),
    )?;
    if let Some(n) = args.nproc.filter(|&n| n > 1) {
        if rendezvous.is_some() {
            return Err(UsageError(
                "--nproc inside a multi-process world (WORLD_SIZE is set): give one or the other"
                    .into(),
            )
            .into());
        }
        return launch_ranks(g, args, n);
    }
    let mut opts = crate::train::TrainOptions::from_env(args.threads);
    opts.progress = !g.quiet;
    opts.kernels = crate::train::kernels::Kernels::from_env(
        std::env::var("SWEEP_OPTIMIZER_KERNELS").ok().as_deref(),
    )?;
    if let Some(device) = &args.device {
        opts.device = device.clone();
    }
    if let Some(r) = &rendezvous {
        // Each rank of a node on its own GPU (or the CPU); NCCL on CUDA where it is built in.
        // A world of one is one rank on its node.
        let local_size = r.local_size.or((r.size == 1).then_some(1));
        let device = crate::train::rank_device(&opts.device, r.local_rank, local_size)?;
        let backend = crate::dist::Backend::choose(
            device.is_cuda(),
            crate::train::shares_gpu(&opts.device, local_size),
            std::env::var("SWEEP_DIST_BACKEND").ok().as_deref(),
        )?;
        opts.device = match device {
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        };
        opts.world = std::sync::Arc::new(crate::dist::World::connect(r, backend, device)?);
    }
    let main = opts.world.is_main();
    // SWEEP_MIN_STEP_MS reaches trainers that an executor starts (`sweep run`), for drills.
    let min_step_ms = match (args.min_step_ms, std::env::var("SWEEP_MIN_STEP_MS")) {
        (Some(ms), _) => Some(ms),
        (None, Ok(v)) => Some(v.trim().parse::<u64>().map_err(|_| {
            UsageError(format!(
                "SWEEP_MIN_STEP_MS={v}: give whole milliseconds (or unset it)"
            ))
        })?),
        (None, Err(_)) => None,
    };
    opts.min_step = min_step_ms.map(std::time::Duration::from_millis);
    // Slurm sends SIGTERM before a time limit or preemption (and SIGUSR1 with --signal): stop
    // after the current step with a checkpoint, so that the requeued job resumes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(sig, stop.clone())
            .with_context(|| format!("installing the handler of signal {sig}"))?;
    }
    opts.stop = Some(stop);
    opts.retrain = args.force;
    let dir = args.run.parent().unwrap_or(Path::new("."));
    let already = !args.force
        && crate::train::read_run_file_hashed(&args.run)
            .ok()
            .and_then(|(run, h)| crate::train::finished_result(dir, &run, &h))
            .is_some();
    let result = crate::train::train(&args.run, &opts)
        .with_context(|| format!("training {}", args.run.display()))?;
    if !main {
        return Ok(());
    }
    if already {
        eprintln!(
            "{}: already {} ({} kept as it is); `sweep train --force` trains it again from scratch",
            result.id,
            match result.status {
                crate::train::outputs::RunStatus::Diverged => "diverged",
                _ => "completed",
            },
            dir.join("result.json").display()
        );
    }
    for note in &result.notes {
        eprintln!("{}: {note}", result.id);
    }
    if result.status == crate::train::outputs::RunStatus::Interrupted {
        eprintln!(
            "{}: stopped by a signal after step {}; `sweep train` again resumes from the checkpoint",
            result.id, result.step
        );
    }
    if g.json {
        println!("{}", serde_json::to_string(&result)?);
    } else if !g.quiet {
        let losses: Vec<String> = result
            .evals
            .last()
            .map(|e| {
                e.metrics
                    .iter()
                    .map(|(k, v)| format!("{k}={v:.4}"))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{}: {:?} after {} steps ({} tokens) in {:.1}s {}",
            result.id,
            result.status,
            result.step,
            result.tokens,
            result.wall_s,
            losses.join(" ")
        );
    }
    Ok(())
}

/// Seconds a rank waits for the others at any rendezvous or collective (SWEEP_DIST_TIMEOUT_S,
/// default 300) before it gives up naming the rank: nothing hangs until a time limit.
#[cfg(feature = "torch")]
/// Whole seconds from the environment variable `name` (at least 1), else `default`.
fn seconds_var(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| UsageError(format!("{name}={v}: give whole seconds, 1 or more")).into()),
        Err(_) => Ok(default),
    }
}

/// `sweep train RUN --nproc N`: start N ranks of the run on this machine (RANK, WORLD_SIZE,
/// MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, as torchrun does), pass SIGTERM, SIGINT and
/// SIGUSR1 on to them (they checkpoint and stop together), and when one fails stop the rest
/// and say which.
#[cfg(feature = "torch")]
fn launch_ranks(g: &GlobalArgs, args: &crate::cli::TrainArgs, n: usize) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    if !crate::dist::World::available() {
        return Err(crate::dist::DistError::NotBuilt.into());
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the ranks' rendezvous")?
        .port();
    let exe = std::env::current_exe().context("locating the sweep binary")?;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
    ] {
        signal_hook::flag::register(sig, stop.clone())
            .with_context(|| format!("installing the handler of signal {sig}"))?;
    }
    let mut ranks = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = std::process::Command::new(&exe);
        if g.quiet {
            cmd.arg("-q");
        }
        if g.json {
            cmd.arg("--json");
        }
        cmd.arg("train").arg(&args.run);
        if let Some(t) = args.threads {
            cmd.args(["--threads", &t.to_string()]);
        }
        if let Some(d) = &args.device {
            cmd.args(["--device", d]);
        }
        if let Some(ms) = args.min_step_ms {
            cmd.args(["--min-step-ms", &ms.to_string()]);
        }
        if args.force {
            cmd.arg("--force");
        }
        cmd.env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        crate::util::stop_with_parent(&mut cmd);
        ranks.push(Some(
            cmd.spawn()
                .with_context(|| format!("starting rank {rank} of {n}"))?,
        ));
    }
    let signal_all = |ranks: &[Option<std::process::Child>], sig: libc::c_int| {
        for c in ranks.iter().flatten() {
            // SAFETY: kill(2) on a child we started; no memory effects.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    };
    let (mut forwarded, mut failed) = (false, Vec::<(usize, std::process::ExitStatus)>::new());
    loop {
        if stop.load(Ordering::SeqCst) && !forwarded {
            signal_all(&ranks, libc::SIGTERM);
            forwarded = true;
        }
        // The ranks that failed in the first pass that saw any failure, before any was stopped.
        let first_failure = failed.is_empty() && !forwarded;
        for (rank, slot) in ranks.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            if let Some(status) = child.try_wait()? {
                *slot = None;
                if !status.success() && first_failure {
                    failed.push((rank, status));
                }
            }
        }
        if !failed.is_empty() && !forwarded {
            signal_all(&ranks, libc::SIGTERM);
            forwarded = true;
        }
        if ranks.iter().all(Option::is_none) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    match first_cause(&failed) {
        Some((rank, status)) => {
            let also: Vec<String> = failed
                .iter()
                .filter(|(r, _)| *r != rank)
                .map(|(r, s)| format!("rank {r} ({s})"))
                .collect();
            let also = if also.is_empty() {
                String::new()
            } else {
                format!("; at the same time {}", also.join(", "))
            };
            anyhow::bail!(
                "rank {rank} of {n} failed ({status}){also}; the other ranks were stopped (their errors are above)"
            )
        }
        None => Ok(()),
    }
}

/// Of ranks seen failing at the same moment, the one that failed first by its own cause: a
/// rank killed by a signal (the launcher had sent none yet) before ranks that exited with an
/// error, which is what a rank does when a collective loses its peer; then the lowest rank.
#[cfg(feature = "torch")]
fn first_cause(
    failed: &[(usize, std::process::ExitStatus)],
) -> Option<(usize, std::process::ExitStatus)> {
    use std::os::unix::process::ExitStatusExt;
    failed
        .iter()
        .min_by_key(|(rank, status)| (status.signal().is_none(), *rank))
        .copied()
}

/// `sweep export RUN_DIR --out DIR`: the run's latest checkpoint as a Hugging Face folder.
#[cfg(feature = "torch")]
fn export(g: &GlobalArgs, args: &crate::cli::ExportArgs) -> anyhow::Result<()> {
    let opts = crate::train::TrainOptions::from_env(None);
    let kind = match args.dtype {
        crate::cli::ExportDtype::F32 => tch::Kind::Float,
        crate::cli::ExportDtype::Bf16 => tch::Kind::BFloat16,
    };
    let (run_dir, best) = match args.best {
        Some(of) => {
            let (dir, best, learn) = report::best_run(g, &args.run_dir, of)?;
            if !g.json && !g.quiet {
                println!(
                    "best {} run: {} (config {}, lr {:.0e}, mean {learn} {:.4} at {} tokens)",
                    best.method,
                    best.run_id,
                    best.config_id,
                    best.learning_rate,
                    best.learning_mean,
                    best.budget_tokens
                );
            }
            (dir, Some(best))
        }
        None => (target::run_folder(&g.results, &args.run_dir)?, None),
    };
    let written = crate::train::export::write_hf_model(&run_dir, &args.out, &opts, kind)?;
    if g.json {
        let mut doc = serde_json::to_value(&written)?;
        if let Some(best) = &best {
            doc["best"] = serde_json::to_value(best)?;
        }
        println!("{doc}");
    } else if !g.quiet {
        println!(
            "{}: step {} of {} ({}) written as a Hugging Face model folder{}",
            args.out.display(),
            written.step,
            written.total_steps,
            if written.merged_lora {
                "LoRA merged into the base weights"
            } else {
                "all weights"
            },
            if written.tokenizer {
                ""
            } else {
                "; no tokenizer.json: builtin models read UTF-8 bytes (ids 0-255, specials from 256)"
            }
        );
    }
    Ok(())
}

#[cfg(not(feature = "torch"))]
fn export(_: &GlobalArgs, _: &crate::cli::ExportArgs) -> anyhow::Result<()> {
    Err(LightBuild {
        command: "export",
        what: "export a run as a Hugging Face folder",
    }
    .into())
}

/// Without libtorch there is no trainer: say so, and how to get one.
#[cfg(not(feature = "torch"))]
fn train(_: &GlobalArgs, _: &crate::cli::TrainArgs) -> anyhow::Result<()> {
    Err(LightBuild {
        command: "train",
        what: "train runs here",
    }
    .into())
}

/// The `[trainer]` of a run.json, when its sweep names one (a run.json that does not read is
/// the builtin trainer's to report).
fn trainer_command(run: &Path) -> Option<crate::spec::TrainerSpec> {
    let text = std::fs::read_to_string(run).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value::<crate::spec::TrainerSpec>(v.get("trainer")?.clone()).ok()
}

/// `sweep train RUN.json --noop`: a train mode that does no work. It writes a completed
/// result.json with no evaluations beside run.json, for executor tests and benchmarks.
fn noop_train(run: &Path) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Ids {
        id: String,
        config_id: String,
    }
    let text =
        std::fs::read_to_string(run).with_context(|| format!("reading {}", run.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a run.json", run.display()))?;
    let run_hash = crate::plan::run::run_hash(&value);
    let ids: Ids = serde_json::from_value(value)
        .with_context(|| format!("{}: not a run.json", run.display()))?;
    let result = crate::results::RunResult {
        schema: crate::results::RESULT_SCHEMA,
        id: ids.id,
        config_id: ids.config_id,
        status: crate::results::RunStatus::Completed,
        step: 0,
        tokens: 0,
        total_steps: 0,
        final_train_loss: None,
        evals: vec![],
        metrics_not_measured: vec![],
        metric_items: Default::default(),
        trainable_params: 0,
        total_params: 0,
        wall_s: 0.0,
        peak_rss_kib: None,
        peak_gpu_bytes: None,
        error: None,
        device: None,
        notes: vec![],
        resumed_from: Vec::new(),
        run_hash: Some(run_hash),
        host: None,
        world: None,
        inputs: Default::default(),
    };
    let path = run.parent().unwrap_or(Path::new(".")).join("result.json");
    let json = serde_json::to_vec_pretty(&result)?;
    crate::util::write_atomic(&path, |w| w.write_all(&json))
        .with_context(|| format!("writing {}", path.display()))
}

/// Load a spec and plan it, locating any problem in the file. Shared by every command that
/// takes a spec.
pub fn load_plan(path: &Path, force: bool) -> anyhow::Result<(spec::SpecSource, Plan)> {
    let (src, spec) = spec::load(path)?;
    let shape = resolve_shape(&spec, path);
    let plan = crate::plan::plan(&spec, &PlanOptions { shape, force })
        .map_err(|p| SpecError::at(&src, &p))?;
    Ok((src, plan))
}

/// The base model's shape: a builtin's, an HF directory's config.json or a GGUF file's header
/// when it can be read here, or the spec's `model.shape`. Relative paths are taken from the spec's folder.
fn resolve_shape(spec: &spec::Spec, spec_path: &Path) -> Option<LlamaConfig> {
    if let Some(b) = &spec.model.builtin {
        return LlamaConfig::builtin(b);
    }
    if let Some(dir) = &spec.model.hf {
        let dir = spec_path.parent().unwrap_or(Path::new(".")).join(dir);
        if let Ok(text) = std::fs::read_to_string(dir.join("config.json")) {
            if let Ok(cfg) = crate::model::config::parse_hf_config(&text, "config.json") {
                return Some(cfg);
            }
        }
    }
    if let Some(file) = &spec.model.gguf {
        let file = spec_path.parent().unwrap_or(Path::new(".")).join(file);
        if let Ok(cfg) = crate::model::gguf::GgufFile::read_llama_config(&file) {
            return Some(cfg);
        }
    }
    spec.model.shape.as_deref().and_then(LlamaConfig::builtin)
}

/// An executor's error as the error it wraps, so that [`exit_code`] sees it (a cluster's
/// configuration error, a held lock) and `Unsupported` is a usage error.
pub fn lift(e: crate::executor::ExecutorError) -> anyhow::Error {
    use crate::executor::ExecutorError;
    match e {
        ExecutorError::State(e) => e.into(),
        ExecutorError::Slurm(e) => e.into(),
        ExecutorError::Unsupported(m) => UsageError(m).into(),
    }
}

/// Where a command's executor events go: JSON lines on stdout with `--json`; else, on a
/// terminal, a bar of the runs with the lines above it; else lines on stderr (`quiet`: only the
/// summaries; `-v`: also each running run's progress).
pub fn event_sink(g: &GlobalArgs, quiet: bool) -> Box<dyn crate::executor::EventSink> {
    use crate::executor::render::{BarRenderer, JsonLinesRenderer, TextRenderer};
    if g.json {
        return Box::new(JsonLinesRenderer::new(std::io::stdout()));
    }
    let verbose = g.verbose > 0;
    match BarRenderer::on_terminal(verbose).filter(|_| !quiet) {
        Some(bar) => Box::new(bar),
        None => Box::new(TextRenderer::new(std::io::stderr(), quiet).verbose(verbose)),
    }
}

/// The results folder of a sweep.
pub fn sweep_dir(g: &GlobalArgs, name: &str) -> std::path::PathBuf {
    g.results.join(name)
}

/// Read the run ids of a previous plan.jsonl, if there is one.
pub fn previous_run_ids(path: &Path) -> anyhow::Result<Option<Vec<String>>> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut ids = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // A line that does not parse (a partial write by an old version) is skipped, not fatal.
        if let Ok(r) = serde_json::from_str::<IdOnly>(line) {
            ids.push(r.id);
        }
    }
    Ok(Some(ids))
}

/// Refuse to replace the plan of a results folder when the new plan drops runs that finished
/// there (a copied spec that kept its `name`, say): their results would leave the report.
/// `force` (`sweep plan --force`) replaces it anyway; the finished runs stay on disk.
pub fn guard_replan(dir: &Path, plan: &Plan, force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let Some(previous) = previous_run_ids(&dir.join("plan.jsonl"))? else {
        return Ok(());
    };
    let current: std::collections::HashSet<&str> =
        plan.runs.iter().map(|r| r.id.as_str()).collect();
    let dropped = previous
        .iter()
        .filter(|id| !current.contains(id.as_str()))
        .filter(|id| {
            crate::results::read_result(&dir.join("runs").join(id).join("result.json")).is_ok_and(
                |r| {
                    matches!(
                        r.status,
                        crate::results::RunStatus::Completed | crate::results::RunStatus::Diverged
                    )
                },
            )
        })
        .count();
    if dropped > 0 {
        return Err(UsageError(format!(
            "{} holds {dropped} finished run{} of sweep `{}` that this plan drops (it was planned from the spec copied in {}): give this spec a `name` of its own (a copied spec needs one), use another --results folder, or `sweep plan SPEC --force` to replace the plan (the finished runs stay on disk, out of the report)",
            dir.display(),
            if dropped == 1 { "" } else { "s" },
            plan.name,
            dir.join("spec.toml").display()
        ))
        .into());
    }
    Ok(())
}

#[cfg(all(test, feature = "torch"))]
mod tests {
    use super::first_cause;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn the_rank_killed_by_a_signal_is_the_cause_not_the_peer_that_lost_it() {
        let exited = ExitStatus::from_raw(1 << 8);
        let killed = ExitStatus::from_raw(libc::SIGKILL);
        assert_eq!(first_cause(&[(0, exited), (1, killed)]), Some((1, killed)));
        assert_eq!(first_cause(&[(2, exited), (1, exited)]), Some((1, exited)));
        assert_eq!(first_cause(&[]), None);
    }
}

/// Log what the runs' trainers could not send to the sweep's MLflow server (nothing when the
/// spec names none): the runs' folders in `dir`, as the plan has them. A warning line when
/// something is left unsent.
fn sync_trackers(dir: &Path, plan: &Plan) -> Option<String> {
    plan.tracking.as_ref()?.mlflow.as_ref()?;
    crate::tracking::mlflow::sync_runs(
        plan.runs
            .iter()
            .map(|r| (dir.join("runs").join(&r.id), plan.run_file(r))),
    )
}
