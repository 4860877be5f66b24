//! The command line, as clap types. Parsing only: [`crate::commands`] does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Plan, run and report sweeps of LoRA versus full fine-tuning, locally or on Slurm over SSH.
#[derive(Debug, Parser)]
#[command(name = "sweep", version, about, long_about = None, after_help = "Example:\n  sweep plan sweeps/quickstart.toml\n  sweep run sweeps/quickstart.toml")]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The results root when `--results` is not given.
pub const DEFAULT_RESULTS: &str = "results";

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Folder that holds every sweep's results (results/NAME/...).
    #[arg(long, global = true, default_value = DEFAULT_RESULTS, value_name = "DIR")]
    pub results: PathBuf,
    /// Machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and a command's closing summary (`status -q`: nothing; its exit code
    /// answers).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Expand a sweep spec into runs with stable ids, show what it will cost, write plan.jsonl.
    #[command(
        after_help = "Example:\n  sweep plan sweeps/paper-code-cpt.toml --tflops 180\n  sweep plan sweeps/quickstart.toml --csv > runs.csv"
    )]
    Plan(PlanArgs),
    /// Send a sweep's runs to a Slurm cluster over SSH, or run them locally (no cluster set up).
    #[command(
        after_help = "Example:\n  sweep submit sweeps/paper-math-ift.toml --cluster mycluster"
    )]
    Submit(SubmitArgs),
    /// Attach to a sweep submitted to a cluster and keep it moving until every run is final
    /// (what `submit --follow` does after its first round); safe to kill and start again.
    #[command(
        after_help = "Example:\n  nohup sweep follow sweeps/paper-math-ift.toml > follow.log 2>&1 &\n\nThe cluster is the one the sweep was submitted to (results/NAME/slurm.json). Each round\nresubmits what the retry policy allows, collects finished results and rebuilds the report;\nthe exit code says whether every run completed. A run cancelled by `sweep cancel` stays\ncancelled."
    )]
    Follow(FollowArgs),
    /// Show the state of a sweep's runs.
    #[command(
        after_help = "With -q nothing is printed and the exit code answers: 0 every run has its result (completed or diverged), 3 runs are pending or running, 4 none is but some ended without a result (failed, timeout, cancelled, invalid); with --watch, 5 when a local sweep's runs wait and no sweep process runs them.\n\nExample:\n  sweep status sweeps/quickstart.toml\n  sweep status results/quickstart -v\n  sweep status results/quickstart --watch\n  sweep -q status results/quickstart --watch 60   # wait for the sweep; then $? says how it ended"
    )]
    Status(StatusArgs),
    /// Cancel a sweep's queued and running jobs.
    #[command(
        after_help = "Example:\n  sweep cancel sweeps/paper-math-ift.toml\n  sweep cancel results/paper-math-ift 1a2b3c4d5e-s0"
    )]
    Cancel(CancelArgs),
    /// Copy results of finished runs back from the cluster.
    #[command(
        after_help = "Example:\n  sweep collect sweeps/paper-math-ift.toml\n  sweep collect sweeps/paper-math-ift.toml --adapters"
    )]
    Collect(CollectArgs),
    /// Summary tables and plots: LR sensitivity, data scaling, learning vs forgetting.
    #[command(
        after_help = "Example:\n  sweep report sweeps/quickstart.toml\n  sweep report results/quickstart\n  sweep report sweeps/reference-code.toml sweeps/reference-math.toml\n\nWith several sweeps, each gets its report, and results/summary/ gets the findings of all of\nthem side by side (summary.md, summary.json), corrected together for the number of tests\n(--summary DIR puts them elsewhere)."
    )]
    Report(ReportArgs),
    /// Train one run from its run.json (what every job runs).
    #[command(
        after_help = "Example:\n  sweep train results/quickstart/runs/1a2b3c4d5e-s0/run.json"
    )]
    Train(TrainArgs),
    /// Write a trained run as a Hugging Face model folder (LoRA merged into the base weights).
    #[command(
        after_help = "Example:\n  sweep export results/quickstart/runs/1a2b3c4d5e-s0 --out tuned/\n  sweep export 1a2b3c4d5e-s0 --out tuned/\n\nThe folder (config.json, model.safetensors and, for models that came with one, tokenizer.json)\nopens with transformers' AutoModelForCausalLM.from_pretrained. LoRA runs also keep their\nPEFT adapter in RUN_DIR/adapter/."
    )]
    Export(ExportArgs),
    /// Tokenize a sweep's data into the token cache its runs read (runs do it on first use).
    #[command(
        after_help = "Example:\n  sweep tokenize sweeps/quickstart.toml\n  SWEEP_CACHE=/shared/sweep-cache sweep tokenize sweeps/paper-code-cpt.toml --threads 32\n\nThe caches go to $SWEEP_CACHE/tokens (default .cache/sweep/tokens), keyed by the data's\nfingerprint, the tokenizer and the reading settings; a changed file or another tokenizer gets\na cache of its own."
    )]
    Tokenize(TokenizeArgs),
    /// Pretrain a builtin model on the source domain (Shakespeare); cached and reused.
    #[command(after_help = "Example:\n  sweep pretrain --shape tiny")]
    Pretrain(PretrainArgs),
    /// Plan, run every run on this machine, wait, and report: the demo.
    #[command(after_help = "Example:\n  sweep run sweeps/quickstart.toml")]
    Run(RunArgs),
    /// Download a model or dataset file into the cache: resumable, checked, Hugging Face URLs too.
    #[command(
        after_help = "Example:\n  sweep fetch https://huggingface.co/HuggingFaceTB/SmolLM2-135M/resolve/main/model.safetensors\n  sweep fetch https://example.org/data/train.jsonl --out data/ --sha256 \"$SHA256\"\n\nA broken download is kept as NAME.part and resumed by the same command. HF_TOKEN, when set,\nis sent to huggingface.co (and to HF_ENDPOINT's host) as a Bearer token."
    )]
    Fetch(FetchArgs),
    /// Print shell completions.
    #[command(
        after_help = "Example:\n  sweep completions bash > ~/.local/share/bash-completion/completions/sweep"
    )]
    Completions(CompletionsArgs),
}

/// `sweep plan`.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
    /// One CSV row per run on stdout.
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// Achieved TFLOP/s per GPU for the GPU-hours estimate.
    #[arg(long, value_name = "TFLOPS")]
    pub tflops: Option<f64>,
    /// Plan grids larger than 10 million runs, and replace the plan of a results folder whose
    /// finished runs the new plan drops.
    #[arg(long)]
    pub force: bool,
    /// Do not write results/NAME/plan.jsonl.
    #[arg(long)]
    pub dry_run: bool,
    /// List every run, not only the groups.
    #[arg(long)]
    pub runs: bool,
}

/// `sweep submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
    /// A cluster from clusters.toml; without it, runs go to the local executor.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Resubmit runs that failed.
    #[arg(long)]
    pub retry_failed: bool,
    /// Upload the sweep binary (and libtorch) to the cluster first.
    #[arg(long)]
    pub install: bool,
    /// The clusters file (default: $SWEEP_CLUSTERS, else ~/.config/sweep/clusters.toml).
    #[arg(long, value_name = "FILE")]
    pub clusters: Option<PathBuf>,
    /// Submit even where the memory estimate exceeds the cluster's gpu_memory_gb.
    #[arg(long)]
    pub no_memory_check: bool,
    /// Keep the sweep moving until every run is final: poll at the cluster's poll_floor_s,
    /// resubmit what the retry policy allows, collect results as runs finish and rebuild the
    /// report; exits non-zero when a run ended without completing. Safe to kill and restart
    /// (nohup or tmux on a login node).
    #[arg(long)]
    pub follow: bool,
    /// Without a cluster: runs at a time (default: cores / threads per run), as `sweep run`.
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one, conflicts_with = "cluster")]
    pub jobs: Option<usize>,
    /// Without a cluster: threads per run (default 1), as `sweep run`.
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one, conflicts_with = "cluster")]
    pub threads: Option<usize>,
    /// Without a cluster: the GPUs to lend runs, as `sweep run --gpus`.
    #[arg(long, value_name = "LIST", conflicts_with = "cluster")]
    pub gpus: Option<String>,
    /// Print the settings it would act with (the command line, the spec, the cluster's entry
    /// and the environment, merged) and do nothing else.
    #[arg(long)]
    pub show_settings: bool,
    /// Leave cancelled runs cancelled (follow's later rounds: a user's cancel wins).
    #[arg(skip)]
    pub leave_cancelled: bool,
}

/// `sweep follow`.
#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
    /// Resubmit runs that failed, once, in the first round.
    #[arg(long)]
    pub retry_failed: bool,
    /// The clusters file (default: $SWEEP_CLUSTERS, else ~/.config/sweep/clusters.toml).
    #[arg(long, value_name = "FILE")]
    pub clusters: Option<PathBuf>,
    /// Submit even where the memory estimate exceeds the cluster's gpu_memory_gb.
    #[arg(long)]
    pub no_memory_check: bool,
    /// Print the settings it would act with (the command line, the spec, the cluster's entry
    /// and the environment, merged) and do nothing else.
    #[arg(long)]
    pub show_settings: bool,
}

/// `sweep cancel`.
#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
    /// Cancel only these runs (ids as `sweep status -v` lists them); default: every job of
    /// the sweep.
    #[arg(value_name = "RUN_ID")]
    pub runs: Vec<String>,
    /// The same as a RUN_ID (repeatable; the older spelling).
    #[arg(long = "run", value_name = "ID", hide = true)]
    pub run_flags: Vec<String>,
}

/// Commands that act on one sweep.
#[derive(Debug, Clone, Args)]
pub struct SweepArg {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
}

/// `sweep report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The sweep specs (TOML), or the sweeps' results folders (results/NAME): one report each.
    #[arg(required = true, num_args = 1..)]
    pub specs: Vec<PathBuf>,
    /// With several sweeps, where their findings side by side go (default: the results
    /// folder's summary/).
    #[arg(long, value_name = "DIR")]
    pub summary: Option<PathBuf>,
}

/// `sweep collect`.
#[derive(Debug, Clone, Args)]
pub struct CollectArgs {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
    /// Also bring back each LoRA run's trained adapter (runs/ID/adapter/, PEFT's layout), for
    /// runs collected earlier too.
    #[arg(long)]
    pub adapters: bool,
}

/// `sweep status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
    /// Rebuild state.json from the run folders (after it was corrupted).
    #[arg(long)]
    pub rebuild: bool,
    /// Show the status again every SECONDS (default 10) until no run is pending or running:
    /// redrawn in place on a terminal; with --json, one JSON array per line.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "10", conflicts_with = "rebuild", value_parser = positive_seconds)]
    pub watch: Option<f64>,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds > 0 (such as 2 or 0.5)"
        )),
    }
}

/// `sweep train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// The run's run.json (written by `sweep plan`/`submit`).
    pub run: PathBuf,
    /// Intra-op threads (default: SLURM_CPUS_PER_TASK, else all cores).
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// auto (CUDA if libtorch sees a GPU), cpu, cuda or cuda:N (default: SWEEP_DEVICE, else auto).
    #[arg(long)]
    pub device: Option<String>,
    /// Do no work: write a completed result.json with no evaluations (for testing executors and
    /// benchmarking the scheduler path without the trainer).
    #[arg(long)]
    pub noop: bool,
    /// Make every training step take at least this many milliseconds (sleeping after it): the
    /// same computation, paced, so that a signal or a fault can be aimed at a run mid-training
    /// whatever the machine's speed (fault drills, the Slurm tests, demos). Default:
    /// SWEEP_MIN_STEP_MS, which also reaches the trainers `sweep run` starts.
    #[arg(long, value_name = "MS")]
    pub min_step_ms: Option<u64>,
    /// Train from scratch even when the run already has its final result (its result,
    /// metrics, checkpoints and adapter are removed first); without it, that is a no-op.
    #[arg(long)]
    pub force: bool,
    /// Train data-parallel over N processes on this machine (like torchrun --standalone): each
    /// takes a slice of every batch, gradients are summed over them (c10d, Gloo on the CPU).
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = at_least_one)]
    pub nproc: Option<usize>,
}

/// `sweep export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The run's folder (results/NAME/runs/ID, holding run.json and checkpoints/), or its id
    /// (found among the sweeps of --results); with --best, the sweep's spec or results folder.
    #[arg(value_name = "RUN")]
    pub run_dir: PathBuf,
    /// The folder to write (created; refused if it exists and is not empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Tensor type of the written weights.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: ExportDtype,
    /// Export a sweep's best run instead: RUN is then its spec or results folder, and METHOD
    /// the best of `full`, `lora` or, by default, both (the run `sweep report` names in its
    /// "Best configuration per method" table: the best configuration's seed that learned most).
    #[arg(
        long,
        value_enum,
        value_name = "METHOD",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "any"
    )]
    pub best: Option<BestOf>,
}

/// Which best run `sweep export --best` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BestOf {
    /// The best of every method.
    Any,
    /// Full fine-tuning's best.
    Full,
    /// LoRA's best.
    Lora,
}

/// Tensor types `sweep export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportDtype {
    /// float32.
    F32,
    /// bfloat16 (half the size).
    Bf16,
}

/// `sweep tokenize`.
#[derive(Debug, Clone, Args)]
pub struct TokenizeArgs {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
    /// Tokenizing threads (default: all cores).
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one)]
    pub threads: Option<usize>,
}

/// `sweep pretrain`.
#[derive(Debug, Clone, Args)]
pub struct PretrainArgs {
    /// Builtin shape to pretrain.
    #[arg(long, default_value = "tiny")]
    pub shape: String,
    /// Tokens to train on.
    #[arg(long, default_value = "2M")]
    pub tokens: String,
    /// Intra-op threads (default: all cores).
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Retrain even when a cached model matches.
    #[arg(long)]
    pub force: bool,
}

/// `sweep run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The sweep spec (TOML), or the sweep's results folder (results/NAME).
    pub spec: PathBuf,
    /// Runs at a time (default: cores / threads per run).
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one)]
    pub jobs: Option<usize>,
    /// Threads per run (default 1).
    #[arg(long, allow_hyphen_values = true, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// Rerun runs that failed before.
    #[arg(long)]
    pub retry_failed: bool,
    /// Train runs whose result cannot be counted (`invalid` in `sweep status`: unreadable,
    /// another run's, its result.json gone) again from scratch, clearing their folders first.
    #[arg(long)]
    pub retrain_invalid: bool,
    /// The GPUs to lend runs, each run of N ranks taking N of its own (CUDA_VISIBLE_DEVICES):
    /// `auto` (CUDA_VISIBLE_DEVICES, else every GPU libtorch sees), `none`, or ids such as
    /// `0,1,2,3` (an id twice lets two runs share that GPU).
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,
    /// Print the settings it would act with (the command line, the spec, the cluster's entry
    /// and the environment, merged) and do nothing else.
    #[arg(long)]
    pub show_settings: bool,
}

/// `sweep fetch`.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// The file's URL (http or https; redirects are followed).
    pub url: String,
    /// Expected SHA-256 (64 hex digits): checked after the download; a file already in place
    /// that matches is not downloaded again.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Where to put the file (a folder keeps the URL's file name); default: the cache.
    #[arg(long, value_name = "PATH", conflicts_with = "cache")]
    pub out: Option<PathBuf>,
    /// The downloads cache (default: $SWEEP_CACHE/downloads, else .cache/sweep/downloads).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

/// `sweep completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    pub shell: clap_complete::Shell,
}

/// A count of at least 1 (`--jobs`, `--threads`): 0 and negative numbers are refused.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n as usize),
        Ok(n) => Err(format!("{n} is not allowed: give 1 or more")),
        Err(_) => Err(format!("`{s}` is not a whole number: give 1 or more")),
    }
}
