//! Reading a run.json and finding the run's own final result beside it.

use std::path::Path;

use crate::plan::run::{RunFile, RUN_SCHEMA};

use super::outputs::{RunResult, RunStatus};
use super::TrainError;

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
pub(super) fn check_folder(run: &RunFile, dir: &Path, run_path: &Path) -> Result<(), TrainError> {
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
