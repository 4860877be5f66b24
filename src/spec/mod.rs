//! The sweep spec: one TOML file that describes one study. This module only parses and checks
//! what the user wrote (no I/O beyond reading the file); [`crate::plan`] expands it into runs.

pub mod trainer;
pub use trainer::TrainerSpec;
pub mod tracking;
pub use tracking::TrackingSpec;
pub mod error;
pub mod values;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use error::{SpecError, SpecErrorKind};
use values::{Alpha, LrAxis, ModuleSetSpec, OneOrMany, Seeds, TokenCount};

/// A whole sweep spec, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The sweep's name: its results go to `results/NAME/`.
    pub name: String,
    /// Free text shown by `sweep plan` and the report.
    #[serde(default)]
    pub description: String,
    /// The base model.
    pub model: ModelSpec,
    /// Target-domain training data and source-domain evaluation data.
    pub data: DataSpec,
    /// Training defaults shared by every run.
    #[serde(default)]
    pub training: TrainingSpec,
    /// What every run measures, and when.
    #[serde(default)]
    pub evaluation: EvaluationSpec,
    /// The axes of the sweep.
    pub grid: GridSpec,
    /// Extra points added to the grid (`[[include]]`).
    #[serde(default)]
    pub include: Vec<PointSpec>,
    /// Rules that remove matching points from the grid (`[[exclude]]`).
    #[serde(default)]
    pub exclude: Vec<PointMatch>,
    /// Random sampling of N grid points.
    #[serde(default)]
    pub sample: Option<SampleSpec>,
    /// Another training program instead of the builtin trainer.
    #[serde(default)]
    pub trainer: Option<trainer::TrainerSpec>,
    /// Experiment trackers the runs are logged to (MLflow).
    #[serde(default)]
    pub tracking: Option<tracking::TrackingSpec>,
}

/// Where the base model comes from: exactly one of `builtin`, `hf`, `gguf`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A builtin shape (`tiny`, `small`, ...), randomly initialised or pretrained by `sweep pretrain`.
    #[serde(default)]
    pub builtin: Option<String>,
    /// A Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[serde(default)]
    pub hf: Option<PathBuf>,
    /// A GGUF file.
    #[serde(default)]
    pub gguf: Option<PathBuf>,
    /// For builtin models: `pretrained` (the cached result of `sweep pretrain`) or `random`.
    #[serde(default)]
    pub init: Init,
    /// A builtin shape to plan with when the hf/gguf path cannot be read here (on a laptop).
    #[serde(default)]
    pub shape: Option<String>,
}

/// How a builtin model's weights start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// The cached result of `sweep pretrain` on the source domain.
    #[default]
    Pretrained,
    /// Random initialisation.
    Random,
}

/// The training regime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// Continued pretraining: packed unstructured tokens, loss on every token.
    Cpt,
    /// Instruction fine-tuning: prompt/response pairs, loss only on the response.
    Ift,
}

/// Training data and evaluation data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// `cpt` or `ift`.
    pub regime: Regime,
    /// The target domain's name: `code`, `math`, or anything (it picks the default metrics).
    pub domain: String,
    /// Target-domain data: `builtin:python`, `builtin:math`, or a path: JSONL, text, a folder, or
    /// pre-tokenized `.npy` token shards (a file or a folder of them).
    pub target: String,
    /// Source-domain evaluation data for forgetting: `builtin:shakespeare` or a path.
    #[serde(default = "default_source")]
    pub source: String,
    /// JSONL field holding plain text (CPT).
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// JSONL field holding the prompt (IFT).
    #[serde(default = "default_prompt_field")]
    pub prompt_field: String,
    /// JSONL field holding the response (IFT).
    #[serde(default = "default_response_field")]
    pub response_field: String,
    /// Tokens in one pass over the target data; needed when budgets are given in epochs ("2ep").
    #[serde(default)]
    pub epoch_tokens: Option<TokenCount>,
    /// What a malformed JSONL line does: `fail` the run (default) or `skip` it with a warning.
    /// Left out of run.json when `fail`, so that config ids stay what they were.
    #[serde(default, skip_serializing_if = "BadLine::is_fail")]
    pub on_bad_line: BadLine,
    /// IFT: frame each pair with a chat template: `model` (the model's own, from its
    /// tokenizer_config.json or its GGUF's tokenizer.chat_template) or a path to a Jinja file.
    /// Left out: the prompt and response are concatenated as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
}

/// What a malformed JSONL line (not JSON, or without the configured string fields) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadLine {
    /// Stop with the file and line number.
    #[default]
    Fail,
    /// Leave the line out, and warn with the count and the first line numbers.
    Skip,
}

impl BadLine {
    /// Whether this is the default, `fail`.
    pub fn is_fail(&self) -> bool {
        *self == BadLine::Fail
    }
}

fn default_source() -> String {
    "builtin:shakespeare".into()
}
fn default_text_field() -> String {
    "text".into()
}
fn default_prompt_field() -> String {
    "prompt".into()
}
fn default_response_field() -> String {
    "response".into()
}

/// The optimizer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// AdamW with decoupled weight decay.
    #[default]
    Adamw,
    /// Lion with weight decay lr x weight_decay per step (torch-style).
    Lionw,
    /// LLM Foundry's DecoupledLionW, the paper's optimizer: Lion whose weight decay per step is
    /// (lr / peak lr) x weight_decay, scaled by the schedule and not by the learning rate.
    DecoupledLionw,
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warmup, then cosine decay to `final_lr_fraction` (the paper's IFT).
    #[default]
    Cosine,
    /// Linear warmup, inverse square root decay, then a linear cooldown to zero (the paper's CPT).
    InverseSqrt,
    /// Linear warmup, then constant.
    Constant,
}

/// Numeric precision of training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 on CPU, bf16 on CUDA.
    #[default]
    Auto,
    /// f32 everywhere.
    F32,
    /// bf16 compute with f32 master weights (CUDA).
    Bf16,
}

/// Training settings shared by every run of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSpec {
    /// `adamw` or `lionw`.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// Optimizer betas; default (0.9, 0.999) for AdamW and (0.9, 0.95) for LionW.
    #[serde(default)]
    pub betas: Option<[f64; 2]>,
    /// AdamW epsilon.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay (not applied to norms and biases).
    #[serde(default)]
    pub weight_decay: f64,
    /// `cosine`, `inverse_sqrt` or `constant`.
    #[serde(default)]
    pub schedule: Schedule,
    /// Warmup as a fraction of the run's steps (used when `warmup_steps` is not set).
    #[serde(default = "default_warmup_fraction")]
    pub warmup_fraction: f64,
    /// Warmup in optimizer steps; overrides `warmup_fraction`.
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Linear cooldown at the end of an `inverse_sqrt` schedule, as a fraction of the steps.
    #[serde(default = "default_cooldown_fraction")]
    pub cooldown_fraction: f64,
    /// Cooldown in optimizer steps; overrides `cooldown_fraction`.
    #[serde(default)]
    pub cooldown_steps: Option<u64>,
    /// Time scale of the inverse-sqrt decay in steps (default: the warmup).
    #[serde(default)]
    pub t_scale: Option<u64>,
    /// Final learning rate of the cosine schedule as a fraction of the peak.
    #[serde(default = "default_final_lr_fraction")]
    pub final_lr_fraction: f64,
    /// Global batch size in sequences.
    #[serde(default = "default_batch_size")]
    pub batch_size: u64,
    /// Sequences per forward pass; the global batch is reached by gradient accumulation.
    #[serde(default)]
    pub micro_batch_size: Option<u64>,
    /// Tokens per sequence.
    #[serde(default = "default_seq_len")]
    pub seq_len: u64,
    /// Clip the global gradient norm to this value (0 disables).
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// `auto`, `f32` or `bf16`.
    #[serde(default)]
    pub precision: Precision,
    /// rsLoRA scaling alpha/sqrt(r) instead of alpha/r.
    #[serde(default)]
    pub rslora: bool,
    /// Full fine-tuning only: keep the embeddings and norms frozen.
    #[serde(default)]
    pub freeze_embeddings_and_norms: bool,
    /// A training loss above this ends the run as diverged (a NaN or infinite loss always does).
    #[serde(default)]
    pub max_loss: Option<f64>,
    /// Save a resumable checkpoint every N optimizer steps (0: only on SIGTERM/SIGUSR1 and at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Write a metrics line every N optimizer steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Nodes one run spans (data-parallel; on a cluster, `--nodes`).
    #[serde(default = "default_one")]
    pub nodes: u32,
    /// Ranks (processes) of one run per node: one per GPU on a GPU node (with the cluster's
    /// `gres`), or CPU processes on Gloo.
    #[serde(default = "default_one")]
    pub ranks_per_node: u32,
    /// Recompute each transformer block in the backward pass instead of keeping its
    /// activations: the same gradients, less memory, about a third more compute.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// With several ranks, each keeps the optimizer state of the parameters it owns (ZeRO
    /// stage 1): the same updates, about 1/N of the state per rank.
    #[serde(default)]
    pub shard_optimizer: bool,
    /// With `shard_optimizer`, each rank also keeps only the reduced gradients of the
    /// parameters it owns (ZeRO stage 2): every micro-batch's gradients are reduced to their
    /// owners and freed elsewhere; the same updates, about 1/N of the gradients per rank.
    #[serde(default)]
    pub shard_gradients: bool,
}

fn default_one() -> u32 {
    1
}

fn default_eps() -> f64 {
    1e-8
}
fn default_warmup_fraction() -> f64 {
    0.1
}
fn default_cooldown_fraction() -> f64 {
    0.2
}
fn default_final_lr_fraction() -> f64 {
    0.01
}
fn default_batch_size() -> u64 {
    8
}
fn default_seq_len() -> u64 {
    256
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_log_every() -> u64 {
    10
}

impl Default for TrainingSpec {
    fn default() -> Self {
        // An empty table takes every serde default; this cannot fail.
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty [training] is valid"))
    }
}

/// A metric a run can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Held-out loss and perplexity on the target domain (learning).
    TargetLoss,
    /// Held-out loss on the source domain, and its change from the base model (forgetting).
    SourceLoss,
    /// Exact-match accuracy of greedy answers to held-out math problems.
    MathAccuracy,
    /// HumanEval pass@k, executing generated code in a sandboxed python3.
    Humaneval,
    /// Held-out next-line exact match on code (for small code models).
    NextLine,
    /// Multiple-choice accuracy by log-likelihood on a user's HellaSwag/ARC/WinoGrande-style JSONL.
    MultipleChoice,
    /// GSM8K accuracy as lm-evaluation-harness scores it (strict-match and flexible-extract),
    /// from a local JSONL of {"question", "answer"}.
    Gsm8k,
    /// HellaSwag acc and acc_norm as lm-evaluation-harness scores them (`evaluation.hellaswag`).
    Hellaswag,
    /// ARC-Challenge acc and acc_norm as lm-evaluation-harness scores them
    /// (`evaluation.arc_challenge`).
    ArcChallenge,
    /// WinoGrande acc by partial scoring, as lm-evaluation-harness (`evaluation.winogrande`).
    Winogrande,
    /// Rank of the weight change needed to explain a share of its variance.
    SpectralRank,
    /// Intruder dimensions (Shuttleworth et al., 2024): top singular vectors of a tuned matrix
    /// that no singular vector of the base matrix resembles.
    IntruderDimensions,
    /// Diversity of sampled generations.
    Diversity,
}

/// What every run measures and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSpec {
    /// Metrics to measure; default: losses, spectral rank and diversity, plus math accuracy for
    /// `domain = "math"` and next-line match for `domain = "code"`.
    #[serde(default)]
    pub metrics: Option<Vec<Metric>>,
    /// Extra token counts at which to evaluate, besides every token budget.
    #[serde(default)]
    pub checkpoints: Vec<TokenCount>,
    /// Held-out tokens per loss evaluation.
    #[serde(default = "default_eval_tokens")]
    pub eval_tokens: TokenCount,
    /// Per evaluation: math problems, next-line cases, diversity prompts, multiple-choice,
    /// GSM8K and forgetting-benchmark items (the file's first ones) each; HumanEval takes
    /// `humaneval_tasks`.
    #[serde(default = "default_eval_problems")]
    pub problems: u64,
    /// Samples per prompt for diversity.
    #[serde(default = "default_diversity_samples")]
    pub diversity_samples: u64,
    /// Sampling temperature for diversity.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Share of the squared singular values the spectral rank must explain.
    #[serde(default = "default_rank_threshold")]
    pub rank_threshold: f64,
    /// Intruder dimensions: how many top singular vectors of each tuned matrix are examined
    /// (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intruder_k: Option<u64>,
    /// Intruder dimensions: a top singular vector is an intruder when its largest |cosine| with
    /// any singular vector of the base matrix is below this (default 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intruder_epsilon: Option<f64>,
    /// Post-hoc intruder scaling: at every evaluation, target_loss and source_loss measured
    /// again with the singular values of each tuned matrix's intruder dimensions multiplied by
    /// each of these (0 removes them), as `intruders_x<lambda>_target_loss` and
    /// `intruders_x<lambda>_source_loss`; the weights are restored after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intruder_scaling: Option<Vec<f64>>,
    /// A multiple-choice JSONL (context, choices, label) for the `multiple_choice` metric.
    #[serde(default)]
    pub multiple_choice: Option<PathBuf>,
    /// GSM8K test JSONL ({"question", "answer"} lines, answers ending in "#### N") for the
    /// `gsm8k` metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsm8k: Option<PathBuf>,
    /// GSM8K train JSONL the few-shot examples come from (its first `gsm8k_shots`); without
    /// one, they are the test file's first, which are then not scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsm8k_train: Option<PathBuf>,
    /// Few-shot examples per GSM8K prompt (default 5, the harness's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gsm8k_shots: Option<u64>,
    /// HellaSwag JSONL (the validation split's lines) for the `hellaswag` metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hellaswag: Option<PathBuf>,
    /// ARC-Challenge JSONL (the test split's lines) for the `arc_challenge` metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc_challenge: Option<PathBuf>,
    /// WinoGrande JSONL (the validation split's lines) for the `winogrande` metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winogrande: Option<PathBuf>,
    /// HumanEval: tasks per evaluation (default: every task of the file, 164 for HumanEval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub humaneval_tasks: Option<u64>,
    /// HumanEval: samples per task for pass@k at `humaneval_temperature`, beside greedy pass@1
    /// (default 0: greedy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub humaneval_samples: Option<u64>,
    /// HumanEval: the sampling temperature (default 0.2, Codex's for pass@1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub humaneval_temperature: Option<f64>,
    /// HumanEval JSONL(.gz) for the `humaneval` metric (default: the one scripts/setup-data fetches).
    #[serde(default)]
    pub humaneval: Option<PathBuf>,
    /// Frame each evaluation question (math_accuracy, gsm8k, humaneval, multiple choice and the
    /// forgetting benchmarks) as a user turn of `data.chat_template`, opened for the assistant's
    /// answer, as lm-evaluation-harness's `--apply_chat_template` does (few-shot examples stay
    /// in the one user turn). Default: true when `data.chat_template` is set; it needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_chat_template: Option<bool>,
}

impl EvaluationSpec {
    /// Whether evaluation questions are framed by the chat template (`apply_chat_template`,
    /// else whether the data has one).
    pub fn chat_framed(&self, data: &DataSpec) -> bool {
        self.apply_chat_template
            .unwrap_or(data.chat_template.is_some())
    }
}

fn default_eval_tokens() -> TokenCount {
    TokenCount::Int(16_384)
}
fn default_eval_problems() -> u64 {
    50
}
fn default_diversity_samples() -> u64 {
    4
}
fn default_temperature() -> f64 {
    1.0
}
fn default_rank_threshold() -> f64 {
    0.9
}

impl Default for EvaluationSpec {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("empty [evaluation] is valid"))
    }
}

/// Full fine-tuning or LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every weight trains.
    Full,
    /// Low-rank adapters on the target modules; base weights frozen.
    Lora,
}

/// Whether token budgets are separate runs or checkpoints of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetMode {
    /// One run per budget, each with its own schedule and cooldown (the paper's).
    SeparateRuns,
    /// One run to the largest budget, evaluated at each (cheaper).
    #[default]
    Checkpoints,
}

/// The grid: every combination of the axes is a configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// Methods to compare.
    #[serde(default = "default_methods")]
    pub method: Vec<Method>,
    /// Learning rates (a list or a log range); may be set per method instead.
    #[serde(default)]
    pub learning_rate: Option<LrAxis>,
    /// LoRA ranks.
    #[serde(default)]
    pub rank: Option<OneOrMany<u64>>,
    /// LoRA alpha: numbers or rules such as "2r".
    #[serde(default)]
    pub alpha: Option<OneOrMany<Alpha>>,
    /// LoRA target-module sets.
    #[serde(default)]
    pub target_modules: Option<OneOrMany<ModuleSetSpec>>,
    /// LoRA dropout.
    #[serde(default)]
    pub lora_dropout: Option<OneOrMany<f64>>,
    /// Token budgets.
    pub token_budget: OneOrMany<TokenCount>,
    /// `checkpoints` (default) or `separate_runs`.
    #[serde(default)]
    pub budget_mode: BudgetMode,
    /// Seed replicates: a count or a list.
    #[serde(default)]
    pub seeds: Seeds,
    /// Axes that apply to full fine-tuning only (`[grid.full]`, or several `[[grid.full]]`).
    #[serde(default)]
    pub full: Option<OneOrMany<MethodGrid>>,
    /// Axes that apply to LoRA only (`[grid.lora]`, or several `[[grid.lora]]`).
    #[serde(default)]
    pub lora: Option<OneOrMany<MethodGrid>>,
}

fn default_methods() -> Vec<Method> {
    vec![Method::Full, Method::Lora]
}

/// Per-method axes that replace the grid's for that method. Several tables for one method are a
/// union of sub-grids (the paper's LoRA learning rate depends on the rank).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodGrid {
    /// Learning rates for this method.
    #[serde(default)]
    pub learning_rate: Option<LrAxis>,
    /// Ranks (LoRA only).
    #[serde(default)]
    pub rank: Option<OneOrMany<u64>>,
    /// Alphas (LoRA only).
    #[serde(default)]
    pub alpha: Option<OneOrMany<Alpha>>,
    /// Target modules (LoRA only).
    #[serde(default)]
    pub target_modules: Option<OneOrMany<ModuleSetSpec>>,
    /// Dropout (LoRA only).
    #[serde(default)]
    pub lora_dropout: Option<OneOrMany<f64>>,
    /// Token budgets for this method.
    #[serde(default)]
    pub token_budget: Option<OneOrMany<TokenCount>>,
}

/// One extra grid point (`[[include]]`): single values; unset LoRA fields take the grid's first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointSpec {
    /// Method of the point.
    pub method: Method,
    /// Learning rate of the point.
    pub learning_rate: f64,
    /// Rank (LoRA).
    #[serde(default)]
    pub rank: Option<u64>,
    /// Alpha (LoRA).
    #[serde(default)]
    pub alpha: Option<Alpha>,
    /// Target modules (LoRA).
    #[serde(default)]
    pub target_modules: Option<ModuleSetSpec>,
    /// Dropout (LoRA).
    #[serde(default)]
    pub lora_dropout: Option<f64>,
    /// Token budget; default: the grid's budgets.
    #[serde(default)]
    pub token_budget: Option<OneOrMany<TokenCount>>,
}

/// A rule matching grid points (`[[exclude]]`): every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointMatch {
    /// Match this method.
    #[serde(default)]
    pub method: Option<Method>,
    /// Match this learning rate (relative tolerance 1e-9).
    #[serde(default)]
    pub learning_rate: Option<f64>,
    /// Match this rank.
    #[serde(default)]
    pub rank: Option<u64>,
    /// Match this alpha (after resolving rules).
    #[serde(default)]
    pub alpha: Option<Alpha>,
    /// Match this module set.
    #[serde(default)]
    pub target_modules: Option<ModuleSetSpec>,
    /// Match points whose budgets include this one.
    #[serde(default)]
    pub token_budget: Option<TokenCount>,
}

/// Random sampling of grid points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    /// How many grid points (configurations; each keeps all its seeds).
    pub points: usize,
    /// The sampling seed: the same seed picks the same points.
    #[serde(default)]
    pub seed: u64,
}

/// A spec together with where it came from, for error messages.
#[derive(Debug, Clone)]
pub struct SpecSource {
    /// The file's path as the user gave it.
    pub path: PathBuf,
    /// The file's text.
    pub text: String,
}

impl SpecSource {
    /// Read a spec file.
    pub fn read(path: &Path) -> Result<SpecSource, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::io(path, &e))?;
        Ok(SpecSource {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Parse the TOML into a [`Spec`], turning serde's errors into located ones.
    pub fn parse(&self) -> Result<Spec, SpecError> {
        toml::from_str::<Spec>(&self.text).map_err(|e| SpecError::from_toml(self, &e))
    }
}

/// Read and parse a spec file (the checks that need the grid happen in the planner).
pub fn load(path: &Path) -> Result<(SpecSource, Spec), SpecError> {
    let src = SpecSource::read(path)?;
    let spec = src.parse()?;
    Ok((src, spec))
}
