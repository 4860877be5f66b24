//! Resumable checkpoints: `checkpoints/step-NNNNNNNN/` holding the trainable tensors (the whole
//! model for full fine-tuning, the adapter for LoRA), the optimizer state and `state.json`.
//!
//! A checkpoint is written into a temporary folder and renamed into place, so a folder named
//! `step-*` is always complete; older ones are removed after a new one lands.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::outputs::EvalRecord;
use super::TrainError;

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The run's config id (a checkpoint of another configuration is refused).
    pub config_id: String,
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Training rows consumed (the sampler's position).
    pub data_position: u64,
    /// The run's seed; per-step RNG seeds derive from it and the step.
    pub seed: u64,
    /// Evaluations done so far.
    pub evals: Vec<EvalRecord>,
    /// Wall time of earlier sessions, in seconds.
    pub wall_s: f64,
    /// The last training loss.
    pub last_train_loss: Option<f64>,
    /// The step each later session resumed from.
    #[serde(default)]
    pub resumed_from: Vec<u64>,
    /// Fingerprints of the files the run trains from (base weights, tokenizer, data), by
    /// `role:path`: a resumed session or an export on other files is refused.
    #[serde(default)]
    pub inputs: std::collections::BTreeMap<String, crate::fingerprint::Fingerprint>,
    /// Ranks whose optimizer-state shards the checkpoint holds (`optim-R.safetensors`, each by
    /// parameter name, so that any world size reads them); 0: one `optim.safetensors`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub optim_shards: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step-{step:08}"))
}

fn err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint(format!("{}: {e}", path.display()))
}

/// Write a checkpoint under `dir` (the run's `checkpoints/`), then drop older ones.
pub fn save(
    dir: &Path,
    state: &TrainState,
    model: &[(String, Tensor)],
    optim: &[(String, Tensor)],
) -> Result<PathBuf, TrainError> {
    let tmp = prepare(dir, state.step)?;
    let written = write_tensors(&tmp.join("optim.safetensors"), optim);
    finish(dir, &tmp, state, model, written)
}

/// The temporary folder of the checkpoint of `step`, made empty: rank 0 makes it, and every
/// rank of a sharded optimizer writes its shard there ([`write_shard`]) before [`finish`].
pub fn prepare(dir: &Path, step: u64) -> Result<PathBuf, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let tmp = dir.join(format!(".tmp-step-{step}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp, e))?;
    Ok(tmp)
}

/// This rank's optimizer-state shard, into the folder of [`prepare`].
pub fn write_shard(tmp: &Path, rank: usize, optim: &[(String, Tensor)]) -> Result<(), TrainError> {
    write_tensors(&tmp.join(format!("optim-{rank}.safetensors")), optim)
}

/// Tensors to one safetensors file, streamed off their device one at a time (the host never
/// holds a whole model's copy).
fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), TrainError> {
    crate::model::safetensors::write_streamed(path, tensors).map_err(|e| {
        // The OS's words (disk full, ...) on one line.
        let first = e.to_string();
        err(path, first.lines().next().unwrap_or(""))
    })
}

/// Complete the checkpoint in `tmp` (whose optimizer state was `optim_written`): the trainable
/// tensors and state.json, then the rename into place; a failure removes the partial folder.
pub fn finish(
    dir: &Path,
    tmp: &Path,
    state: &TrainState,
    model: &[(String, Tensor)],
    optim_written: Result<(), TrainError>,
) -> Result<PathBuf, TrainError> {
    let written = optim_written.and_then(|()| {
        write_tensors(&tmp.join("model.safetensors"), model)?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| err(tmp, e))?;
        crate::util::write_atomic(&tmp.join("state.json"), |w| w.write_all(&json))
            .map_err(|e| err(tmp, e))
    });
    if let Err(e) = written {
        // A partial checkpoint is never left behind (a later one may still fit).
        let _ = std::fs::remove_dir_all(tmp);
        return Err(TrainError::Checkpoint(format!(
            "writing the checkpoint of step {} failed, and the partial one was removed: {}; free space (or fix the folder) and rerun: the run resumes from its last complete checkpoint",
            state.step,
            e.to_string().trim_start_matches("checkpoint: ")
        )));
    }
    let target = step_dir(dir, state.step);
    // A checkpoint of the same step is replaced by renames: moved aside first, so that a
    // complete checkpoint of the step exists at every moment.
    let aside = dir.join(format!(".old-step-{}", state.step));
    if target.exists() {
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(&target, &aside).map_err(|e| err(&target, e))?;
    }
    std::fs::rename(tmp, &target).map_err(|e| err(&target, e))?;
    let _ = std::fs::remove_dir_all(&aside);
    for old in list(dir)? {
        if old != target {
            let _ = std::fs::remove_dir_all(&old);
        }
    }
    Ok(target)
}

/// The complete checkpoints under `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(dir, e)),
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-"))
                && p.join("state.json").exists()
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Loaded {
    /// The folder.
    pub path: PathBuf,
    /// Non-tensor state.
    pub state: TrainState,
    /// Trainable tensors by name.
    pub model: HashMap<String, Tensor>,
    /// Optimizer state by name.
    pub optim: HashMap<String, Tensor>,
}

/// Load the latest checkpoint under `dir`, if any. A corrupt or truncated one (a disk that
/// filled, a copy cut short) is named with what to do, not read.
pub fn load_latest(dir: &Path) -> Result<Option<Loaded>, TrainError> {
    let all = list(dir)?;
    let Some(path) = all.last().cloned() else {
        return Ok(None);
    };
    let corrupt = |what: String| {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("step-?");
        let fix = match all.len() {
            1 => "delete it to start the run over (`sweep train --force`)".to_string(),
            n => format!(
                "delete it to resume from {}",
                all[n - 2]
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("the one before")
            ),
        };
        TrainError::Checkpoint(format!(
            "checkpoint {name} in {} is corrupt ({what}): {fix}",
            dir.display()
        ))
    };
    let text = std::fs::read_to_string(path.join("state.json"))
        .map_err(|e| corrupt(format!("state.json: {e}")))?;
    let state: TrainState =
        serde_json::from_str(&text).map_err(|e| corrupt(format!("state.json: {e}")))?;
    // The optimizer state in one file, or in one shard per rank of the world that wrote it
    // (read whole here: any world size takes from it the state of the parameters it owns).
    let optim_files: Vec<String> = match state.optim_shards {
        0 => vec!["optim.safetensors".into()],
        n => (0..n).map(|r| format!("optim-{r}.safetensors")).collect(),
    };
    for name in std::iter::once("model.safetensors").chain(optim_files.iter().map(String::as_str)) {
        crate::model::safetensors::check_complete(&path.join(name))
            .map_err(|e| corrupt(format!("{name}: {e}")))?;
    }
    // Through a map, tensor by tensor: a resume holds the checkpoint once, not twice.
    let read = |name: &str| -> Result<HashMap<String, Tensor>, TrainError> {
        Ok(crate::model::safetensors::read_streamed(&path.join(name))
            .map_err(|e| corrupt(format!("{name}: {e}")))?
            .into_iter()
            .collect())
    };
    let mut optim = HashMap::new();
    for name in &optim_files {
        optim.extend(read(name)?);
    }
    Ok(Some(Loaded {
        model: read("model.safetensors")?,
        optim,
        state,
        path,
    }))
}
