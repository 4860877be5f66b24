//! What a finished run leaves behind, as read by the executors and the report: `result.json`.
//! The trainer writes it; nothing here needs libtorch.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Layout version of result.json.
pub const RESULT_SCHEMA: u32 = 1;

/// The folder of a run that holds its trained LoRA adapter, in PEFT's layout.
pub const ADAPTER_DIR: &str = "adapter";

/// The adapter's config in [`ADAPTER_DIR`].
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The adapter's tensors in [`ADAPTER_DIR`].
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// The files of [`ADAPTER_DIR`].
pub const ADAPTER_FILES: [&str; 2] = [ADAPTER_CONFIG, ADAPTER_WEIGHTS];

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Trained to its budget.
    Completed,
    /// The loss became NaN, infinite or larger than `max_loss`.
    Diverged,
    /// An error stopped it.
    Failed,
    /// Stopped early on request, resumable from its checkpoint (no result.json is written).
    Interrupted,
}

/// Metrics measured at one point of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen (0: the base model).
    pub tokens: u64,
    /// Metric name to value (`target_loss`, `source_loss`, ...).
    pub metrics: BTreeMap<String, f64>,
}

/// result.json: how the run ended and what it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Layout version.
    pub schema: u32,
    /// Run id.
    pub id: String,
    /// Config id.
    pub config_id: String,
    /// How it ended.
    pub status: RunStatus,
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Steps the budget needs.
    pub total_steps: u64,
    /// The last training loss.
    pub final_train_loss: Option<f64>,
    /// Evaluations, the first at 0 tokens (the base model), then at each `eval_at` reached.
    pub evals: Vec<EvalRecord>,
    /// Requested metrics that this trainer does not measure yet.
    pub metrics_not_measured: Vec<String>,
    /// Trainable parameters.
    pub trainable_params: i64,
    /// All parameters (base and adapters).
    pub total_params: i64,
    /// Wall time of all sessions, seconds.
    pub wall_s: f64,
    /// Peak resident memory of the last session in KiB (VmHWM), where the OS reports it.
    pub peak_rss_kib: Option<u64>,
    /// The error, for failed runs; the divergence, for diverged ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the last session trained and the kind it computed in, e.g. `cuda:0 bf16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Warnings and provenance: skipped malformed data lines, where the base model's shared
    /// evaluation came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The step of the checkpoint each later session resumed from (empty: trained in one go).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed_from: Vec<u64>,
}

/// Why a result.json could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// There is none (the run has not finished).
    #[error("{0}: no result.json yet")]
    Missing(String),
    /// It exists but does not parse.
    #[error("{path}: unreadable result.json ({reason}); rerun the run or delete the file")]
    Corrupt {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Read a run's result.json.
pub fn read_result(path: &Path) -> Result<RunResult, ResultError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ResultError::Missing(path.display().to_string()),
        _ => ResultError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        },
    })?;
    serde_json::from_str(&text).map_err(|e| ResultError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}
