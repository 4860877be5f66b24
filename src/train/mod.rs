//! `sweep train RUN.json`: train one run and leave metrics.jsonl, result.json and checkpoints in
//! its folder. Reads top to bottom: read the run, build the model and data, resume if a
//! checkpoint exists, then step, log, evaluate and checkpoint until the token budget is spent.
//!
//! The trainer knows nothing of Slurm or sweeps: every input is the run file and
//! [`TrainOptions`].

pub mod base_eval;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod evaluators;
pub mod export;
pub mod optim;
pub mod outputs;
pub mod schedule;
pub mod shards;
pub mod spectral;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Tensor};

use crate::dist::World;
use crate::fingerprint::{self, Fingerprint};
use crate::model::config::{LlamaConfig, BUILTIN_SHAPES};
use crate::model::gguf::{self, GgufFile};
use crate::model::llama::{BuildOptions, Llama, LoraOptions};
use crate::model::tokenizer::{Tokenizer, TokenizerError};
use crate::model::ModelError;
use crate::plan::run::{MethodConfig, ModelSource, RunFile, RUN_SCHEMA};
use crate::run_lock::RunLock;
use crate::spec::values::TokenAmount;
use crate::spec::{Init, Metric, Precision};

use checkpoint::TrainState;
use data::{batch_of, eval_rows, Rows, Sampler};
use eval::{batch_loss_sum, Evaluator, LossEval};
use optim::{Optim, OptimConfig};
use outputs::{EvalRecord, MetricsLine, RunResult, RunStatus, RESULT_SCHEMA};
use schedule::LrSchedule;

/// An error of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The model could not be built or loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The run file cannot be used.
    #[error("run file {path}: {msg}")]
    RunFile {
        /// The run.json.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The model's tokenizer could not be built or failed on the data.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Data could not be found or read.
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// metrics.jsonl or result.json could not be written.
    #[error("writing outputs: {0}")]
    Output(String),
    /// A generation or likelihood metric failed.
    #[error("metric: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    /// A setting this trainer does not support yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// The requested device is not available.
    #[error("{0}")]
    Device(String),
    /// Another trainer holds the run.
    #[error("{0}")]
    Busy(String),
    /// A collective of a multi-process run failed (a rank died, hung or cannot be reached).
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
}

/// How to run the trainer, besides the run file: resolved from the command line and the
/// environment by the command, so that the trainer reads no environment itself.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Intra-op threads (None: libtorch's default).
    pub threads: Option<usize>,
    /// Where `builtin:NAME` data sets live.
    pub data_dir: PathBuf,
    /// Cache folder holding `pretrained/<shape>.safetensors`.
    pub cache_dir: PathBuf,
    /// Stop (resumably, with a checkpoint) after this many steps in this session; for tests
    /// of resumption.
    pub stop_after_steps: Option<u64>,
    /// Use this architecture instead of the run's builtin shape (tests use very small ones).
    pub model_override: Option<LlamaConfig>,
    /// Set (by a SIGTERM/SIGUSR1 handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// `auto` (CUDA when libtorch sees a GPU, else the CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Every step takes at least this long (the trainer sleeps after a faster one): the same
    /// result, paced, so that tests can aim a signal at a run mid-training on any machine.
    pub min_step: Option<std::time::Duration>,
    /// Train from scratch even when the run has its own final result (`sweep train --force`):
    /// its result, metrics, checkpoints and adapter are removed first.
    pub retrain: bool,
    /// The ranks of this run (one process: the world of one). Every rank reads its slice of
    /// each global batch; gradients are summed over ranks; rank 0 alone evaluates and writes.
    pub world: Arc<World>,
}

impl TrainOptions {
    /// Options from `--threads` and the environment: SLURM_CPUS_PER_TASK, SWEEP_DATA (default
    /// `data`), SWEEP_CACHE (default `.cache/sweep`).
    pub fn from_env(threads: Option<usize>) -> TrainOptions {
        let threads = threads.or_else(|| {
            std::env::var("SLURM_CPUS_PER_TASK")
                .ok()
                .and_then(|v| v.trim().parse().ok())
        });
        TrainOptions {
            threads,
            data_dir: std::env::var_os("SWEEP_DATA")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("data")),
            cache_dir: std::env::var_os("SWEEP_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".cache/sweep")),
            stop_after_steps: None,
            model_override: None,
            stop: None,
            device: std::env::var("SWEEP_DEVICE").unwrap_or_else(|_| "auto".into()),
            min_step: None,
            retrain: false,
            world: Arc::new(World::single()),
        }
    }
}

/// The libtorch device for `--device`/SWEEP_DEVICE: `auto`, `cpu`, `cuda` or `cuda:N`. Asking
/// for CUDA where libtorch sees none is an error, never a silent fall back to the CPU.
pub fn resolve_device(choice: &str) -> Result<Device, TrainError> {
    let cuda = |i: usize| {
        if tch::Cuda::is_available() && i < tch::Cuda::device_count() as usize {
            Ok(Device::Cuda(i))
        } else {
            Err(TrainError::Device(format!(
                "device `{choice}`: libtorch sees {} CUDA device(s) (a GPU build needs \
                 SWEEP_CUDA=1 at build time and libtorch_cuda at run time); use --device cpu",
                tch::Cuda::device_count()
            )))
        }
    };
    match choice.trim() {
        "auto" | "" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(TrainError::Device(format!(
                "device `{other}`: use auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// The kind the model computes in: precision `auto` is bf16 on CUDA and f32 on the CPU; `bf16`
/// is bf16 anywhere (slow on most CPUs, but the same arithmetic as on a GPU).
pub fn compute_kind(precision: Precision, device: Device) -> tch::Kind {
    match (precision, device) {
        (Precision::F32, _) | (Precision::Auto, Device::Cpu) => tch::Kind::Float,
        _ => tch::Kind::BFloat16,
    }
}

/// Read a run.json, refusing one written by a newer `sweep`.
pub fn read_run_file(path: &Path) -> Result<RunFile, TrainError> {
    let bad = |msg: String| TrainError::RunFile {
        path: path.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let schema = value.get("schema").and_then(|s| s.as_u64()).unwrap_or(0);
    if schema > RUN_SCHEMA as u64 {
        return Err(bad(format!(
            "schema {schema} is newer than this sweep reads ({RUN_SCHEMA}); install a newer sweep"
        )));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// [`read_run_file`] and the [`crate::plan::run::run_hash`] of what it read.
pub fn read_run_file_hashed(path: &Path) -> Result<(RunFile, String), TrainError> {
    let run = read_run_file(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::RunFile {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| TrainError::RunFile {
            path: path.to_path_buf(),
            msg: format!("not JSON: {e}"),
        })?;
    Ok((run, crate::plan::run::run_hash(&value)))
}

/// The run's own final result (completed or diverged) in `dir`, if it has one: a result of
/// another run or of another run.json does not count.
pub fn finished_result(dir: &Path, run: &RunFile, run_hash: &str) -> Option<RunResult> {
    let who = crate::results::RunIdentity {
        id: run.id.clone(),
        config_id: run.config_id.clone(),
        run_hash: run_hash.to_string(),
    };
    crate::results::read_result_of(&dir.join("result.json"), &who)
        .ok()
        .filter(|r| matches!(r.status, RunStatus::Completed | RunStatus::Diverged))
}

/// A run folder inside a sweep's `runs/` is named by its run id: refuse another run's run.json
/// there, whose results would be filed under the wrong run.
fn check_folder(run: &RunFile, dir: &Path, run_path: &Path) -> Result<(), TrainError> {
    let in_runs = dir
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "runs");
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if in_runs && name != run.id {
        return Err(TrainError::RunFile {
            path: run_path.to_path_buf(),
            msg: format!(
                "it holds run {}, but its folder is run {name}'s: results would be filed under the wrong run. Put it back with `sweep run SPEC` (which writes each run's run.json), or train it in a folder of its own",
                run.id
            ),
        });
    }
    Ok(())
}

/// Train the run of `run_path`; its folder receives the outputs. One trainer per run: the
/// folder's [`RunLock`] is held throughout, and a second trainer is refused. A run that already
/// has its own final result is not trained again (that result is returned) unless
/// `opts.retrain` says to start over. A run that fails leaves a result.json with status
/// `failed`.
pub fn train(run_path: &Path, opts: &TrainOptions) -> Result<RunResult, TrainError> {
    let (run, run_hash) = read_run_file_hashed(run_path)?;
    let dir = run_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    check_folder(&run, &dir, run_path)?;
    // Rank 0 holds the run's lock for all the ranks of a multi-process run.
    let _lock = if opts.world.is_main() {
        Some(RunLock::acquire(&dir).map_err(|e| TrainError::Busy(e.to_string()))?)
    } else {
        None
    };
    if !opts.retrain {
        if let Some(done) = finished_result(&dir, &run, &run_hash) {
            return Ok(done);
        }
    }
    let started = Instant::now();
    // A retraining clears the old outputs only once the model and the data loaded: bad input
    // loses nothing.
    let outcome = Trainer::new(&run, &run_hash, &dir, opts).and_then(|t| {
        if opts.retrain && opts.world.is_main() {
            crate::results::clear_outputs(&dir).map_err(|e| TrainError::Output(e.to_string()))?;
        }
        // Every rank starts from the state rank 0 is in (after its clearing).
        opts.world.barrier()?;
        t.run(started)
    });
    match outcome {
        Ok(r) => Ok(r),
        // A finished result is never replaced by a failure; rank 0 alone writes.
        Err(e) if !opts.world.is_main() || finished_result(&dir, &run, &run_hash).is_some() => {
            Err(e)
        }
        Err(e) => {
            let result = RunResult {
                schema: RESULT_SCHEMA,
                id: run.id.clone(),
                config_id: run.config_id.clone(),
                status: RunStatus::Failed,
                step: 0,
                tokens: 0,
                total_steps: 0,
                final_train_loss: None,
                evals: Vec::new(),
                metrics_not_measured: Vec::new(),
                trainable_params: 0,
                total_params: 0,
                wall_s: started.elapsed().as_secs_f64(),
                peak_rss_kib: outputs::peak_rss_kib(),
                error: Some(e.to_string()),
                device: None,
                notes: Vec::new(),
                resumed_from: Vec::new(),
                run_hash: Some(run_hash),
                host: Some(crate::results::this_host()),
                world: None,
                inputs: BTreeMap::new(),
            };
            // The original error matters more than a failure to record it.
            let _ = outputs::write_result(&dir.join("result.json"), &result);
            Err(e)
        }
    }
}

/// Fingerprints of the files a run's model is built from, by `model:path`: an HF folder's
/// files, a GGUF file, or the pretrained cache of a builtin shape (none for random weights).
pub fn model_inputs(
    run: &RunFile,
    opts: &TrainOptions,
) -> Result<BTreeMap<String, Fingerprint>, TrainError> {
    let path = match &run.shared.model {
        ModelSource::Hf { path } | ModelSource::Gguf { path } => path.clone(),
        ModelSource::Builtin {
            shape,
            init: Init::Pretrained,
        } => opts
            .cache_dir
            .join("pretrained")
            .join(format!("{shape}.safetensors")),
        ModelSource::Builtin { .. } => return Ok(BTreeMap::new()),
    };
    fingerprint::of_path("model", &path)
        .map_err(|e| TrainError::Data(format!("fingerprinting the model {}: {e}", path.display())))
}

/// The adapter settings of a LoRA run.
pub fn lora_options(run: &RunFile) -> Option<LoraOptions> {
    match &run.point.method {
        MethodConfig::Full => None,
        MethodConfig::Lora {
            rank,
            alpha,
            target_modules,
            dropout,
        } => Some(LoraOptions {
            rank: *rank,
            alpha: *alpha,
            targets: target_modules.clone(),
            dropout: *dropout,
            rslora: run.shared.training.rslora,
        }),
    }
}

/// The base model's name for exported adapters: the builtin shape or the path.
fn base_model_name(run: &RunFile) -> String {
    match &run.shared.model {
        ModelSource::Builtin { shape, .. } => shape.clone(),
        ModelSource::Hf { path } | ModelSource::Gguf { path } => path.display().to_string(),
    }
}

/// Build the run's model and its tokenizer: a builtin shape (byte tokenizer), randomly
/// initialised from the run's seed or loaded from `sweep pretrain`'s cache; a Hugging Face folder
/// (safetensors and tokenizer.json); or a GGUF file (dequantized, with the tokenizer of its
/// metadata). LoRA runs get adapters.
pub fn build_model(
    run: &RunFile,
    opts: &TrainOptions,
    device: Device,
) -> Result<(Llama, Tokenizer), TrainError> {
    let t = &run.shared.training;
    let build = BuildOptions {
        seed: run.seed,
        lora: lora_options(run),
        freeze_embeddings_and_norms: t.freeze_embeddings_and_norms,
    };
    let (shape, init) = match &run.shared.model {
        ModelSource::Builtin { shape, init } => (shape.clone(), *init),
        ModelSource::Hf { path } => {
            crate::model::config::check_hf_dir(path).map_err(ModelError::Config)?;
            let tokenizer = Tokenizer::from_hf_dir(path)?;
            let model = Llama::from_hf_dir(path, &build, device)?;
            check_vocabulary(&tokenizer, &model.cfg, &path.display().to_string())?;
            return Ok((model, tokenizer));
        }
        ModelSource::Gguf { path } => {
            let file = GgufFile::open(path).map_err(ModelError::from)?;
            let tokenizer = Tokenizer::from_gguf(&file)?;
            let model = gguf::load_llama(&file, &build, device)?;
            check_vocabulary(&tokenizer, &model.cfg, &path.display().to_string())?;
            return Ok((model, tokenizer));
        }
    };
    let cfg = match &opts.model_override {
        Some(c) => c.clone(),
        None => LlamaConfig::builtin(&shape).ok_or_else(|| {
            TrainError::Unsupported(format!(
                "unknown builtin shape `{shape}` (known: {})",
                BUILTIN_SHAPES.join(", ")
            ))
        })?,
    };
    let tokenizer = Tokenizer::Byte;
    if cfg.vocab_size < tokenizer.vocab_size() {
        return Err(TrainError::Unsupported(format!(
            "builtin shape `{shape}` has vocabulary {}, but the byte tokenizer needs {}; \
             only byte-level builtin shapes (tiny, small) can train here (real models load \
             with model.hf or model.gguf)",
            cfg.vocab_size,
            tokenizer.vocab_size()
        )));
    }
    let model = Llama::new(&cfg, &build, device)?;
    if init == Init::Pretrained {
        let path = opts
            .cache_dir
            .join("pretrained")
            .join(format!("{shape}.safetensors"));
        if !path.exists() {
            return Err(TrainError::Unsupported(format!(
                "model.init = \"pretrained\" needs {}, which `sweep pretrain` writes; run it \
                 first, or set init = \"random\" in the spec",
                path.display()
            )));
        }
        if let Err(why) = crate::model::safetensors::check_complete(&path) {
            return Err(TrainError::Unsupported(format!(
                "the pretrained model {} is corrupt ({why}): run `sweep pretrain --shape {shape} --force` to make it again",
                path.display()
            )));
        }
        let tensors = Tensor::read_safetensors(&path).map_err(|e| ModelError::Load {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        model.load_named(
            &tensors.into_iter().collect(),
            true,
            &path.display().to_string(),
        )?;
    }
    Ok((model, tokenizer))
}

/// Refuse a tokenizer that produces ids beyond the model's embedding rows.
fn check_vocabulary(tok: &Tokenizer, cfg: &LlamaConfig, source: &str) -> Result<(), TrainError> {
    if tok.vocab_size() > cfg.vocab_size {
        return Err(ModelError::Load {
            path: source.to_string(),
            msg: format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tok.vocab_size(),
                cfg.vocab_size
            ),
        }
        .into());
    }
    Ok(())
}

/// The metrics this trainer measures; the others requested are reported as not measured.
fn measured(metric: Metric) -> bool {
    matches!(
        metric,
        Metric::TargetLoss | Metric::SourceLoss | Metric::SpectralRank
    ) || evaluators::METRICS.contains(&metric)
}

/// A prepared run: model, optimizer, data and evaluators.
struct Trainer<'a> {
    run: &'a RunFile,
    /// sha256 of the run.json read, for result.json.
    run_hash: String,
    dir: PathBuf,
    opts: &'a TrainOptions,
    model: Llama,
    optim: Optim,
    sampler: Sampler,
    evaluators: Vec<Box<dyn Evaluator>>,
    not_measured: Vec<String>,
    schedule: LrSchedule,
    total_steps: u64,
    /// Device and compute kind, e.g. `cuda:0 bf16`, for result.json.
    device_label: String,
    /// The model's tokenizer, for the generation metrics.
    tokenizer: Tokenizer,
    /// Where the base model's evaluation is shared with the sweep's other runs.
    base_cache: Option<base_eval::BaseEvalCaches>,
    /// Warnings and provenance for result.json (skipped data lines, a shared base evaluation).
    notes: Vec<String>,
    /// Fingerprints of the files trained from, checked against a checkpoint's on resume.
    inputs: BTreeMap<String, Fingerprint>,
}

impl<'a> Trainer<'a> {
    fn new(
        run: &'a RunFile,
        run_hash: &str,
        dir: &Path,
        opts: &'a TrainOptions,
    ) -> Result<Trainer<'a>, TrainError> {
        let t = &run.shared.training;
        if let Some(n) = opts.threads {
            tch::set_num_threads(n.max(1) as i32);
        }
        let device = resolve_device(&opts.device)?;
        if t.batch_size == 0 || t.seq_len == 0 || t.micro_batch_size == 0 {
            return Err(TrainError::Unsupported(
                "batch_size, micro_batch_size and seq_len must be positive".into(),
            ));
        }
        if opts.world.size() > 1 && device != Device::Cpu {
            return Err(TrainError::Unsupported(format!(
                "{} ranks on {device:?}: data-parallel training on CUDA needs c10d's NCCL backend, which this sweep does not build yet; train the ranks on the CPU (--device cpu) or the run on one GPU",
                opts.world.size()
            )));
        }
        let ranks = opts.world.size() as u64;
        if !t.batch_size.is_multiple_of(ranks) {
            return Err(TrainError::Unsupported(format!(
                "training.batch_size = {} does not divide over {ranks} ranks: give a multiple of {ranks} (each rank takes an equal slice of every batch)",
                t.batch_size
            )));
        }
        let (mut model, tokenizer) = build_model(run, opts, device)?;
        let kind = compute_kind(t.precision, device);
        model.set_compute_kind(kind);
        let device_label = format!(
            "{} {}",
            match device {
                Device::Cuda(i) => format!("cuda:{i}"),
                _ => "cpu".into(),
            },
            if kind == tch::Kind::BFloat16 {
                "bf16"
            } else {
                "f32"
            }
        );
        let pad = tokenizer.specials().pad;
        let seq_len = t.seq_len as usize;
        let data = &run.shared.data;
        let eval_tokens = match run.shared.evaluation.eval_tokens.amount() {
            TokenAmount::Tokens(n) => n,
            TokenAmount::Epochs(_) => {
                return Err(TrainError::Unsupported(
                    "evaluation.eval_tokens in epochs; give a token count".into(),
                ))
            }
        };
        let micro = t.micro_batch_size as usize;

        let target_path = data::resolve_source(&data.target, &opts.data_dir)?;
        let docs = data::read_documents(&target_path, data.regime, data, &tokenizer)?;
        let mut notes = docs.warnings;
        let mut files_read = vec![target_path];
        let (train_docs, held_docs) = data::split_heldout(docs.docs, eval_tokens, &tokenizer)?;
        let train_rows = Rows::new(
            train_docs,
            data.regime,
            seq_len,
            pad,
            "target training data",
        )?;
        let sampler = Sampler::new(train_rows, run.seed);

        let metrics = run
            .shared
            .evaluation
            .metrics
            .clone()
            .unwrap_or_else(|| vec![Metric::TargetLoss, Metric::SourceLoss]);
        let generation: Vec<Metric> = metrics.iter().copied().filter(|m| measured(*m)).collect();
        let mut evaluators = evaluators::build(
            &generation,
            &run.shared.evaluation,
            &opts.data_dir,
            data.regime,
            &held_docs,
            run.seed,
            &tokenizer,
        )?;
        if metrics.contains(&Metric::TargetLoss) && !held_docs.is_empty() {
            let rows = Rows::new(held_docs, data.regime, seq_len, pad, "held-out target data")?;
            evaluators.push(Box::new(LossEval {
                name: "target".into(),
                rows: eval_rows(&rows, eval_tokens),
                seq_len,
                micro_batch: micro,
            }));
        }
        if metrics.contains(&Metric::SourceLoss) {
            let source_path = data::resolve_source(&data.source, &opts.data_dir)?;
            let docs =
                data::read_documents(&source_path, crate::spec::Regime::Cpt, data, &tokenizer)?;
            notes.extend(docs.warnings);
            files_read.push(source_path);
            let (_, held) = data::split_heldout(docs.docs, eval_tokens, &tokenizer)?;
            let rows = Rows::new(
                held,
                crate::spec::Regime::Cpt,
                seq_len,
                pad,
                "held-out source data",
            )?;
            evaluators.push(Box::new(LossEval {
                name: "source".into(),
                rows: eval_rows(&rows, eval_tokens),
                seq_len,
                micro_batch: micro,
            }));
        }
        if metrics.contains(&Metric::SpectralRank) {
            evaluators.push(Box::new(spectral::SpectralRankEval::snapshot(
                &model,
                run.shared.evaluation.rank_threshold,
            )?));
        }
        let not_measured = metrics
            .iter()
            .filter(|m| !measured(**m))
            .map(|m| {
                serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{m:?}"))
            })
            .collect();

        let optim = Optim::new(
            model.trainable(),
            OptimConfig {
                kind: t.optimizer,
                betas: t.betas,
                eps: t.eps,
                weight_decay: t.weight_decay,
            },
        )?;
        let total_steps = run.point.token_budget.div_ceil(t.tokens_per_step()).max(1);
        let schedule = LrSchedule::from_config(t, run.point.learning_rate, total_steps);
        let eval = &run.shared.evaluation;
        files_read.extend(eval.multiple_choice.clone());
        if metrics.contains(&Metric::Humaneval) {
            files_read.push(
                eval.humaneval
                    .clone()
                    .unwrap_or_else(|| crate::metrics::humaneval::default_path(&opts.data_dir)),
            );
        }
        let device_name = format!("{:?}", model.vs.device());
        let base_cache =
            base_eval::BaseEvalCaches::new(dir, run, opts, &files_read, &metrics, &device_name);
        let mut inputs = model_inputs(run, opts)?;
        for f in &files_read {
            inputs.extend(
                fingerprint::of_path("data", f).map_err(|e| {
                    TrainError::Data(format!("fingerprinting {}: {e}", f.display()))
                })?,
            );
        }
        Ok(Trainer {
            inputs,
            run,
            run_hash: run_hash.to_string(),
            dir: dir.to_path_buf(),
            opts,
            model,
            optim,
            sampler,
            evaluators,
            not_measured,
            schedule,
            total_steps,
            device_label,
            tokenizer,
            base_cache,
            notes,
        })
    }

    /// Rank 0 evaluates while the other ranks go on to the next step's collective, where they
    /// wait for it: one evaluation, one writer, and the same numbers as a single process.
    fn evaluate(&self, step: u64, tokens: u64) -> Result<EvalRecord, TrainError> {
        let mut metrics = BTreeMap::new();
        for e in self.evaluators.iter().filter(|_| self.opts.world.is_main()) {
            metrics.extend(e.evaluate(&self.model, &self.tokenizer)?);
        }
        Ok(EvalRecord {
            step,
            tokens,
            metrics,
        })
    }

    /// A metrics.jsonl line, written by rank 0 alone.
    fn append_metrics(&self, path: &Path, line: &MetricsLine) -> Result<(), TrainError> {
        if self.opts.world.is_main() {
            outputs::append_metrics(path, line)?;
        }
        Ok(())
    }

    fn checkpoint(&self, state: &TrainState) -> Result<(), TrainError> {
        if !self.opts.world.is_main() {
            return Ok(());
        }
        checkpoint::save(
            &self.dir.join("checkpoints"),
            state,
            &self.model.trainable(),
            &self.optim.state_tensors(),
        )?;
        Ok(())
    }

    /// One optimizer step's forward and backward passes over micro-batches; the gradient is that
    /// of the mean loss over every target token of the batch. Returns that mean loss.
    fn accumulate(&mut self, position: &mut u64) -> Result<f64, TrainError> {
        let t = &self.run.shared.training;
        let batch = t.batch_size as usize;
        let micro = (t.micro_batch_size as usize).min(batch);
        let rows = self.sampler.rows_at(*position, batch);
        *position += batch as u64;
        let targets: usize = rows
            .iter()
            .map(|r| r.1.iter().filter(|&&x| x != data::IGNORE).count())
            .sum();
        let denom = targets.max(1) as f64;
        // Each rank takes its slice of the batch; normalized by the whole batch's target count,
        // the ranks' gradients sum to the single-process gradient.
        let world = &self.opts.world;
        let per_rank = batch / world.size();
        let mine = &rows[world.rank() * per_rank..(world.rank() + 1) * per_rank];
        let mut loss_sum = 0.0;
        for chunk in mine.chunks(micro.max(1)) {
            let b = batch_of(chunk, t.seq_len as usize)?;
            let (loss, _) = batch_loss_sum(&self.model, &b, true)?;
            let loss = loss.f_div_scalar(denom)?;
            loss.f_backward()?;
            loss_sum += loss.f_double_value(&[])?;
        }
        self.optim.all_reduce_grads(world)?;
        Ok(world.sum_f64(loss_sum)?)
    }

    fn run(mut self, started: Instant) -> Result<RunResult, TrainError> {
        let t = self.run.shared.training.clone();
        let tokens_per_step = t.tokens_per_step();
        let metrics_path = self.dir.join("metrics.jsonl");
        let ckpt_dir = self.dir.join("checkpoints");

        let mut state = match checkpoint::load_latest(&ckpt_dir)? {
            Some(loaded) => {
                if loaded.state.config_id != self.run.config_id {
                    return Err(TrainError::Checkpoint(format!(
                        "{} belongs to config {}, not {}",
                        loaded.path.display(),
                        loaded.state.config_id,
                        self.run.config_id
                    )));
                }
                if !loaded.state.inputs.is_empty() {
                    if let Some(what) = fingerprint::changes(&loaded.state.inputs, &self.inputs) {
                        return Err(TrainError::Checkpoint(format!(
                            "the files this run trains from changed since its checkpoint {} ({what}); resuming would continue on other inputs: restore them, or `sweep train --force` to start over",
                            loaded.path.display()
                        )));
                    }
                }
                // The checkpoint holds the trainable tensors only (the adapter, for LoRA); the
                // frozen rest was rebuilt from the seed or the pretrained file.
                if let Some((name, _)) = self
                    .model
                    .trainable()
                    .into_iter()
                    .find(|(n, _)| !loaded.model.contains_key(n))
                {
                    return Err(TrainError::Checkpoint(format!(
                        "{} lacks {name}",
                        loaded.path.display()
                    )));
                }
                self.model
                    .load_named(&loaded.model, false, &loaded.path.display().to_string())?;
                self.optim.load_state(&loaded.optim, loaded.state.step)?;
                if self.opts.world.is_main() {
                    outputs::truncate_metrics(&metrics_path, loaded.state.step)?;
                }
                let mut state = loaded.state;
                if state.step < self.total_steps {
                    state.resumed_from.push(state.step);
                }
                state
            }
            None => {
                let main = self.opts.world.is_main();
                if main {
                    let _ = std::fs::remove_file(&metrics_path);
                }
                let (metrics, note) = if main {
                    base_eval::evaluate(
                        &self.evaluators,
                        &self.model,
                        &self.tokenizer,
                        self.base_cache.as_ref(),
                        &self.run.id,
                    )?
                } else {
                    (BTreeMap::new(), None)
                };
                self.notes.extend(note);
                let base = EvalRecord {
                    step: 0,
                    tokens: 0,
                    metrics,
                };
                self.append_metrics(
                    &metrics_path,
                    &MetricsLine {
                        step: 0,
                        tokens: 0,
                        lr: 0.0,
                        train_loss: None,
                        grad_norm: None,
                        tokens_per_s: None,
                        eval: base.metrics.clone(),
                    },
                )?;
                TrainState {
                    config_id: self.run.config_id.clone(),
                    step: 0,
                    tokens: 0,
                    data_position: 0,
                    seed: self.run.seed,
                    evals: vec![base],
                    wall_s: 0.0,
                    last_train_loss: None,
                    resumed_from: Vec::new(),
                    inputs: self.inputs.clone(),
                }
            }
        };
        let wall_before = state.wall_s;
        let mut session_steps = 0u64;
        let mut last_log = (Instant::now(), state.tokens);
        let mut status = RunStatus::Completed;
        let mut error = None;

        while state.step < self.total_steps {
            let signalled = self
                .opts
                .stop
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst));
            // A signal to any rank stops every rank after the same step.
            let signalled = if self.opts.world.size() > 1 {
                self.opts.world.sum_f64(if signalled { 1.0 } else { 0.0 })? > 0.0
            } else {
                signalled
            };
            if signalled
                || self
                    .opts
                    .stop_after_steps
                    .is_some_and(|n| session_steps >= n)
            {
                status = RunStatus::Interrupted;
                break;
            }
            let step_started = Instant::now();
            let lr = self.schedule.lr(state.step);
            self.optim.zero_grad()?;
            // Dropout draws from libtorch's global generator: seed it per step so that a resumed
            // run draws what an uninterrupted one would.
            tch::manual_seed((state.seed.wrapping_mul(1_000_003) ^ state.step) as i64);
            let mut position = state.data_position;
            let loss = self.accumulate(&mut position)?;
            let too_big = t.max_loss.is_some_and(|m| loss > m);
            if !loss.is_finite() || too_big {
                status = RunStatus::Diverged;
                error = Some(format!(
                    "training loss {loss} at step {} (max_loss {:?})",
                    state.step + 1,
                    t.max_loss
                ));
                self.append_metrics(
                    &metrics_path,
                    &MetricsLine {
                        step: state.step + 1,
                        tokens: state.tokens + tokens_per_step,
                        lr,
                        train_loss: Some(loss),
                        grad_norm: None,
                        tokens_per_s: None,
                        eval: BTreeMap::new(),
                    },
                )?;
                state.last_train_loss = Some(loss);
                break;
            }
            let grad_norm = self.optim.clip_grad_norm(t.grad_clip)?;
            self.optim.step(lr)?;
            state.step += 1;
            session_steps += 1;
            state.tokens += tokens_per_step;
            state.data_position = position;
            state.last_train_loss = Some(loss);
            if let Some(rest) = self
                .opts
                .min_step
                .and_then(|m| m.checked_sub(step_started.elapsed()))
            {
                std::thread::sleep(rest);
            }

            let next_eval = self
                .run
                .point
                .eval_at
                .iter()
                .copied()
                .find(|&b| b > state.evals.last().map_or(0, |e| e.tokens));
            let eval_now = next_eval.is_some_and(|b| state.tokens >= b)
                || (state.step == self.total_steps
                    && state.evals.last().map_or(0, |e| e.tokens) < state.tokens);
            let log_now = t.log_every > 0 && state.step % t.log_every == 0;
            if eval_now || log_now || state.step == self.total_steps {
                let eval = if eval_now {
                    let rec = self.evaluate(state.step, state.tokens)?;
                    let m = rec.metrics.clone();
                    state.evals.push(rec);
                    m
                } else {
                    BTreeMap::new()
                };
                let secs = last_log.0.elapsed().as_secs_f64();
                let tps = (secs > 0.0).then(|| (state.tokens - last_log.1) as f64 / secs);
                self.append_metrics(
                    &metrics_path,
                    &MetricsLine {
                        step: state.step,
                        tokens: state.tokens,
                        lr,
                        train_loss: Some(loss),
                        grad_norm: Some(grad_norm),
                        tokens_per_s: tps,
                        eval,
                    },
                )?;
                last_log = (Instant::now(), state.tokens);
            }
            if t.checkpoint_every > 0
                && state.step % t.checkpoint_every == 0
                && state.step < self.total_steps
            {
                state.wall_s = wall_before + started.elapsed().as_secs_f64();
                self.checkpoint(&state)?;
            }
        }

        state.wall_s = wall_before + started.elapsed().as_secs_f64();
        if status != RunStatus::Diverged {
            self.checkpoint(&state)?;
        }
        if status == RunStatus::Completed && self.opts.world.is_main() {
            if let Some(lora) = lora_options(self.run) {
                export::write_peft_adapter(
                    &self.dir.join(crate::results::ADAPTER_DIR),
                    &self.model,
                    &lora,
                    &base_model_name(self.run),
                )?;
            }
        }
        let (trainable, total) = self.model.param_counts();
        let result = RunResult {
            schema: RESULT_SCHEMA,
            id: self.run.id.clone(),
            config_id: self.run.config_id.clone(),
            status,
            step: state.step,
            tokens: state.tokens,
            total_steps: self.total_steps,
            final_train_loss: state.last_train_loss,
            evals: state.evals,
            metrics_not_measured: self.not_measured.clone(),
            trainable_params: trainable,
            total_params: total,
            wall_s: state.wall_s,
            peak_rss_kib: outputs::peak_rss_kib(),
            error,
            device: Some(self.device_label.clone()),
            notes: self.notes.clone(),
            resumed_from: state.resumed_from,
            run_hash: Some(self.run_hash.clone()),
            host: Some(crate::results::this_host()),
            world: (self.opts.world.size() > 1)
                .then(|| format!("{} ranks, gloo", self.opts.world.size())),
            inputs: self.inputs.clone(),
        };
        if status != RunStatus::Interrupted && self.opts.world.is_main() {
            outputs::write_result(&self.dir.join("result.json"), &result)?;
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests;
