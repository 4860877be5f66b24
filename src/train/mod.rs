//! `sweep train RUN.json`: train one run and leave metrics.jsonl, result.json and checkpoints in
//! its folder. Reads top to bottom: read the run, build the model and data, resume if a
//! checkpoint exists, then step, log, evaluate and checkpoint until the token budget is spent.
//!
//! The trainer knows nothing of Slurm or sweeps: every input is the run file and
//! [`TrainOptions`].

pub mod base_eval;
pub mod checkpoint;
pub mod data;
mod error;
pub mod eval;
pub mod evaluators;
pub mod export;
pub mod intruders;
pub mod kernels;
pub mod optim;
mod options;
pub mod outputs;
mod recompute;
pub mod rows;
mod run_file;
pub mod schedule;
mod setup;
pub mod shards;
pub mod spectral;
pub mod token_cache;
mod trainer;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::run_lock::RunLock;

pub use error::TrainError;
pub use options::{
    compute_kind, loaded_libtorch, rank_device, resolve_device, shares_gpu, TrainOptions,
};
use outputs::{RunResult, RunStatus, RESULT_SCHEMA};
use run_file::check_folder;
pub use run_file::{finished_result, read_run_file, read_run_file_hashed};
pub use setup::{build_model, load_tokenizer, lora_options, model_inputs, tokens_of};
use trainer::Trainer;

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
    // Rank 0 logs to MLflow (from a thread of its own) when the run names a server.
    let mlflow = opts
        .world
        .is_main()
        .then(|| crate::tracking::mlflow::Live::start(&dir, &run))
        .flatten();
    // A retraining clears the old outputs only once the model and the data loaded: bad input
    // loses nothing.
    let outcome = Trainer::new(&run, &run_hash, &dir, opts).and_then(|t| {
        if opts.retrain && opts.world.is_main() {
            crate::results::clear_outputs(&dir).map_err(|e| TrainError::Output(e.to_string()))?;
            crate::tracking::mlflow::retire(&dir).map_err(|e| TrainError::Output(e.to_string()))?;
        }
        // Every rank starts from the state rank 0 is in (after its clearing).
        opts.world.barrier()?;
        t.run(started)
    });
    if let Some(live) = mlflow {
        let status = outcome.as_ref().map_or(RunStatus::Failed, |r| r.status);
        live.finish(
            crate::tracking::mlflow::RunEnd::of(status),
            std::time::Duration::from_secs(20),
        );
    }
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
                metric_items: BTreeMap::new(),
                trainable_params: 0,
                total_params: 0,
                wall_s: started.elapsed().as_secs_f64(),
                peak_rss_kib: outputs::peak_rss_kib(),
                peak_gpu_bytes: None,
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

#[cfg(test)]
mod tests;
