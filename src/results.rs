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

/// What training leaves in a run folder besides run.json (and the log): cleared before a run
/// is trained again from scratch.
pub const RUN_OUTPUTS: [&str; 4] = ["result.json", "metrics.jsonl", "checkpoints", ADAPTER_DIR];

/// Clear a run folder's [`RUN_OUTPUTS`] for a fresh start, keeping run.json.
pub fn clear_outputs(dir: &Path) -> std::io::Result<()> {
    for name in RUN_OUTPUTS {
        let p = dir.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", p.display()),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

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

/// One line of metrics.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsLine {
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Mean training loss of the last step (null when not finite).
    pub train_loss: Option<f64>,
    /// Global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Training throughput since the previous line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Of a run of several ranks: the mean milliseconds per step spent in collectives (the
    /// gradient all-reduce and the loss sum, waiting for the slowest rank included) since the
    /// previous line. They do not overlap the backward pass: tch binds no gradient hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_ms_per_step: Option<f64>,
    /// When it was written (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
    /// Evaluation metrics, on evaluation lines.
    #[serde(flatten)]
    pub eval: BTreeMap<String, f64>,
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

impl MetricsLine {
    /// A line read as the [trainer] contract allows: `tokens` (required), optional `step`,
    /// `lr`, `train_loss`, `grad_norm`, `tokens_per_s`, `time`, and every other number an
    /// evaluation metric; keys that are not numbers are left out.
    pub fn lenient(obj: &serde_json::Map<String, serde_json::Value>) -> Option<MetricsLine> {
        let tokens = obj.get("tokens").and_then(|t| t.as_u64())?;
        let num = |k: &str| obj.get(k).and_then(|x| x.as_f64());
        let named = [
            "tokens",
            "step",
            "lr",
            "train_loss",
            "grad_norm",
            "tokens_per_s",
            "comm_ms_per_step",
            "time",
        ];
        Some(MetricsLine {
            step: obj.get("step").and_then(|s| s.as_u64()).unwrap_or(0),
            tokens,
            lr: num("lr").unwrap_or(0.0),
            train_loss: num("train_loss"),
            grad_norm: num("grad_norm"),
            tokens_per_s: num("tokens_per_s"),
            comm_ms_per_step: num("comm_ms_per_step"),
            time: num("time"),
            eval: obj
                .iter()
                .filter(|(k, _)| !named.contains(&k.as_str()))
                .filter_map(|(k, x)| x.as_f64().map(|x| (k.clone(), x)))
                .collect(),
        })
    }
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
    /// How many items each proportion metric is measured on (`math_accuracy`: its problems,
    /// `humaneval_pass@1`: its tasks, ...), the same at every evaluation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metric_items: BTreeMap<String, u64>,
    /// Trainable parameters.
    pub trainable_params: i64,
    /// All parameters (base and adapters).
    pub total_params: i64,
    /// Wall time of all sessions, seconds.
    pub wall_s: f64,
    /// Peak resident memory of the last session in KiB (VmHWM), where the OS reports it.
    pub peak_rss_kib: Option<u64>,
    /// On a GPU: the peak of the bytes libtorch's CUDA allocator handed out in the last session
    /// (rank 0's), what `sweep plan`'s memory estimate is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_gpu_bytes: Option<u64>,
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
    /// sha256 of the run.json it trained ([`crate::plan::run::run_hash`]): checked against the
    /// plan before the result is counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_hash: Option<String>,
    /// The host it trained on: its input fingerprints are checked only there, where its paths
    /// name the same files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The processes of a data-parallel run and their collective backend, e.g. `2 ranks, gloo`
    /// (absent for one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<String>,
    /// Fingerprints of the files it trained from (base weights, tokenizer, data), by
    /// `role:path`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, crate::fingerprint::Fingerprint>,
}

/// What a result.json must say to be the result of one planned run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunIdentity {
    /// Run id.
    pub id: String,
    /// Config id.
    pub config_id: String,
    /// sha256 of the run's run.json as the plan writes it.
    pub run_hash: String,
}

impl RunIdentity {
    /// The identity of a planned run.
    pub fn of(plan: &crate::plan::Plan, run: &crate::plan::PlannedRun) -> RunIdentity {
        RunIdentity {
            id: run.id.clone(),
            config_id: run.config_id.clone(),
            run_hash: plan.run_file(run).hash(),
        }
    }
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
    /// A newer `sweep` wrote it.
    #[error("{path}: result.json of schema {schema}, newer than this sweep reads ({RESULT_SCHEMA}); install a newer sweep")]
    NewerSchema {
        /// The file.
        path: String,
        /// Its schema.
        schema: u64,
    },
    /// It is the result of another run, or of another version of this run's settings.
    #[error("{path}: not this run's result: {reason}")]
    NotThisRun {
        /// The file.
        path: String,
        /// What differs.
        reason: String,
    },
}

impl ResultError {
    /// Whether the run has a result.json that cannot be counted (as opposed to none yet).
    pub fn is_invalid(&self) -> bool {
        !matches!(self, ResultError::Missing(_))
    }
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
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ResultError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    let schema = value.get("schema").and_then(|s| s.as_u64()).unwrap_or(0);
    if schema > u64::from(RESULT_SCHEMA) {
        return Err(ResultError::NewerSchema {
            path: path.display().to_string(),
            schema,
        });
    }
    serde_json::from_value(value).map_err(|e| ResultError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Read a run's result.json and check that it is the result of the run `who`: its run id,
/// config id and run.json hash. A result of another run (a copied folder, an edited run.json)
/// is [`ResultError::NotThisRun`], never counted as this run's.
pub fn read_result_of(path: &Path, who: &RunIdentity) -> Result<RunResult, ResultError> {
    let r = read_result(path)?;
    let not = |reason: String| ResultError::NotThisRun {
        path: path.display().to_string(),
        reason,
    };
    if r.id != who.id {
        return Err(not(format!("it is run {}'s", r.id)));
    }
    if r.config_id != who.config_id {
        return Err(not(format!(
            "it has config {}, the plan {}",
            r.config_id, who.config_id
        )));
    }
    match &r.run_hash {
        Some(h) if *h == who.run_hash => Ok(r),
        Some(_) => Err(not(
            "it trained a run.json other than the plan's (edited or replaced)".into(),
        )),
        None => Err(not(
            "it records no run_hash (written by an older sweep), so it cannot be checked".into(),
        )),
    }
}

/// This machine's host name, as results record it.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// What changed, of the files a result was trained from, among those still where it read them
/// (a file that is gone cannot be checked, and is not counted against the result); None when
/// nothing did. Fingerprints are computed once per file and process.
pub fn inputs_changed(r: &RunResult) -> Option<String> {
    use crate::fingerprint::{changes, of_file};
    // Elsewhere (a cluster), the same paths may name other files: nothing can be told here.
    if r.host.as_deref() != Some(this_host().as_str()) {
        return None;
    }
    thread_local! {
        static SEEN: std::cell::RefCell<BTreeMap<String, Option<crate::fingerprint::Fingerprint>>> =
            const { std::cell::RefCell::new(BTreeMap::new()) };
    }
    let (mut then, mut now) = (BTreeMap::new(), BTreeMap::new());
    for (key, fp) in &r.inputs {
        let path = key.split_once(':').map_or(key.as_str(), |(_, p)| p);
        let current = SEEN.with(|seen| {
            seen.borrow_mut()
                .entry(path.to_string())
                .or_insert_with(|| of_file(Path::new(path)).ok())
                .clone()
        });
        if let Some(c) = current {
            then.insert(key.clone(), fp.clone());
            now.insert(key.clone(), c);
        }
    }
    changes(&then, &now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, hash: Option<&str>, schema: u32) -> String {
        serde_json::json!({"schema": schema, "id": id, "config_id": "c", "status": "completed",
            "step": 1, "tokens": 1, "total_steps": 1, "final_train_loss": null, "evals": [],
            "metrics_not_measured": [], "trainable_params": 1, "total_params": 1, "wall_s": 0.0,
            "peak_rss_kib": null, "run_hash": hash})
        .to_string()
    }

    #[test]
    fn a_result_counts_only_for_its_own_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("result.json");
        let who = RunIdentity {
            id: "c-s0".into(),
            config_id: "c".into(),
            run_hash: "h".into(),
        };
        let check = |text: &str| {
            std::fs::write(&p, text).unwrap();
            read_result_of(&p, &who)
        };
        assert!(check(&result("c-s0", Some("h"), 1)).is_ok());
        let e = check(&result("d-s0", Some("h"), 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is run d-s0's"), "{e}");
        let e = check(&result("c-s0", Some("other"), 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.json other than the plan's"), "{e}");
        let e = check(&result("c-s0", None, 1)).unwrap_err().to_string();
        assert!(e.contains("records no run_hash"), "{e}");
        let e = check(&result("c-s0", Some("h"), 7))
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema 7") && e.contains("newer sweep"), "{e}");
        assert!(matches!(
            check("{\"schema\": 1, \"id\""),
            Err(ResultError::Corrupt { .. })
        ));
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(
            read_result_of(&p, &who),
            Err(ResultError::Missing(_))
        ));
    }
}
