//! A run: the resolved configuration every job trains from (`run.json`), and its stable ids.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::config::Module;
use crate::spec::{DataSpec, EvaluationSpec, Init, Method, Optimizer, Precision, Regime, Schedule};

/// Version of the run.json layout; a reader refuses files from a newer one.
pub const RUN_SCHEMA: u32 = 1;

/// Where the base model comes from, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ModelSource {
    /// A builtin shape.
    Builtin {
        /// Shape name (`tiny`, `small`, ...).
        shape: String,
        /// Pretrained by `sweep pretrain`, or random.
        init: Init,
    },
    /// A Hugging Face directory.
    Hf {
        /// The directory.
        path: PathBuf,
    },
    /// A GGUF file.
    Gguf {
        /// The file.
        path: PathBuf,
    },
}

/// Training settings, with every default resolved (betas filled in per optimizer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingConfig {
    /// Optimizer.
    pub optimizer: Optimizer,
    /// Betas.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Schedule.
    pub schedule: Schedule,
    /// Warmup fraction (when `warmup_steps` is None).
    pub warmup_fraction: f64,
    /// Warmup steps.
    pub warmup_steps: Option<u64>,
    /// Cooldown fraction of `inverse_sqrt`.
    pub cooldown_fraction: f64,
    /// Cooldown steps of `inverse_sqrt` (overrides the fraction).
    pub cooldown_steps: Option<u64>,
    /// Inverse-sqrt time scale in steps.
    pub t_scale: Option<u64>,
    /// Final LR fraction of `cosine`.
    pub final_lr_fraction: f64,
    /// Global batch in sequences.
    pub batch_size: u64,
    /// Micro batch in sequences.
    pub micro_batch_size: u64,
    /// Sequence length.
    pub seq_len: u64,
    /// Gradient clipping norm (0: off).
    pub grad_clip: f64,
    /// Precision.
    pub precision: Precision,
    /// rsLoRA scaling.
    pub rslora: bool,
    /// Full fine-tuning: freeze embeddings and norms.
    pub freeze_embeddings_and_norms: bool,
    /// Divergence bound on the training loss.
    pub max_loss: Option<f64>,
    /// Checkpoint interval in optimizer steps (0: on signals and at the end only).
    pub checkpoint_every: u64,
    /// Metrics line interval in optimizer steps.
    pub log_every: u64,
    /// Nodes one run spans (absent when 1, so that single-node ids do not change).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub nodes: u32,
    /// Ranks of one run per node (absent when 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub ranks_per_node: u32,
    /// Recompute blocks in the backward pass (absent when off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub activation_checkpointing: bool,
    /// Shard the optimizer state over the ranks (absent when off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shard_optimizer: bool,
    /// Shard the reduced gradients over the ranks too, ZeRO stage 2 (absent when off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shard_gradients: bool,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl TrainingConfig {
    /// The ranks of one run: nodes x ranks per node.
    pub fn ranks(&self) -> u32 {
        self.nodes.max(1) * self.ranks_per_node.max(1)
    }

    /// Tokens in one optimizer step.
    pub fn tokens_per_step(&self) -> u64 {
        self.batch_size * self.seq_len
    }

    /// The tokens a run with this budget trains on: whole optimizer steps, the last one
    /// rounding the budget up (16k at 1,024 tokens a step trains 16 steps, 16,384 tokens).
    pub fn trained_tokens(&self, budget: u64) -> u64 {
        let per = self.tokens_per_step().max(1);
        budget.div_ceil(per).max(1) * per
    }
}

/// The method of a run with its method-specific settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum MethodConfig {
    /// Full fine-tuning.
    Full,
    /// LoRA.
    Lora {
        /// Rank r.
        rank: u64,
        /// Alpha (the scale is alpha/r, or alpha/sqrt(r) with rsLoRA).
        alpha: f64,
        /// Target modules, sorted.
        target_modules: Vec<Module>,
        /// Dropout on the LoRA path.
        dropout: f64,
    },
}

impl MethodConfig {
    /// The method without its settings.
    pub fn method(&self) -> Method {
        match self {
            MethodConfig::Full => Method::Full,
            MethodConfig::Lora { .. } => Method::Lora,
        }
    }

    /// LoRA's settings as text (rank, alpha, dropout), and its modules; empty for full
    /// fine-tuning.
    pub fn lora_texts(&self) -> ([String; 3], &[Module]) {
        match self {
            MethodConfig::Full => (Default::default(), &[]),
            MethodConfig::Lora {
                rank,
                alpha,
                target_modules,
                dropout,
            } => (
                [rank.to_string(), alpha.to_string(), dropout.to_string()],
                target_modules,
            ),
        }
    }

    /// `full` or `lora`.
    pub fn method_name(&self) -> &'static str {
        match self {
            MethodConfig::Full => "full",
            MethodConfig::Lora { .. } => "lora",
        }
    }
}

/// What one grid point varies: the part of a run's configuration that differs between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Method and its settings.
    #[serde(flatten)]
    pub method: MethodConfig,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Tokens to train.
    pub token_budget: u64,
    /// Token counts at which to evaluate, ascending, the last one the budget.
    pub eval_at: Vec<u64>,
}

/// What every run of a sweep shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedConfig {
    /// Base model.
    pub model: ModelSource,
    /// Data.
    pub data: DataSpec,
    /// Training settings.
    pub training: TrainingConfig,
    /// Evaluation settings.
    pub evaluation: EvaluationSpec,
    /// The training program, when it is not the builtin trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer: Option<crate::spec::TrainerSpec>,
}

impl SharedConfig {
    /// The regime of the data.
    pub fn regime(&self) -> Regime {
        self.data.regime
    }

    /// A digest of the shared part, computed once per plan and folded into every config id.
    pub fn digest(&self) -> [u8; 32] {
        let json = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&json).into()
    }
}

/// A run's whole resolved configuration: what `sweep train` reads from `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    /// Layout version of this file.
    pub schema: u32,
    /// The sweep the run belongs to.
    pub sweep: String,
    /// Run id: `<config id>-s<seed>`.
    pub id: String,
    /// Config id: shared by the seed replicates of one configuration.
    pub config_id: String,
    /// Seed.
    pub seed: u64,
    /// What every run of the sweep shares.
    #[serde(flatten)]
    pub shared: SharedConfig,
    /// What this run varies.
    #[serde(flatten)]
    pub point: Point,
    /// Where the run is logged besides its folder: left out of [`run_hash`], since it changes
    /// nothing that is trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<crate::spec::TrackingSpec>,
}

/// sha256 (hex) of a run file's JSON value (key order and formatting do not matter): what
/// result.json records as `run_hash`, so that a result is checked against the run the plan
/// says it is. `tracking` is left out: a run logged to another tracker is the same run.
pub fn run_hash(value: &serde_json::Value) -> String {
    let mut value = value.clone();
    if let Some(o) = value.as_object_mut() {
        o.remove("tracking");
    }
    Sha256::digest(serde_json::to_vec(&value).unwrap_or_default())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl RunFile {
    /// [`run_hash`] of this run file.
    pub fn hash(&self) -> String {
        run_hash(&serde_json::to_value(self).unwrap_or_default())
    }
}

/// The config id of a point: the first 10 hex digits of
/// sha256(sha256(shared config JSON) || point JSON). Stable across key order and formatting of
/// the spec, since both are hashed after parsing; changed by anything that changes training.
pub fn config_id(shared_digest: &[u8; 32], point: &Point) -> String {
    let mut h = Sha256::new();
    h.update(shared_digest);
    h.update(serde_json::to_vec(point).unwrap_or_default());
    let d = h.finalize();
    d.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

/// The run id of a seed replicate.
pub fn run_id(config_id: &str, seed: u64) -> String {
    format!("{config_id}-s{seed}")
}
