//! The base model's evaluation (step 0, tokens 0), computed once per sweep and shared by its runs.
//!
//! Every run starts from the same untrained model: full fine-tuning from the base weights, LoRA
//! from adapters whose B is zero, so that its outputs equal the base model's exactly. The
//! metrics of the model's outputs at step 0 are therefore the same for every run that shares the
//! model, the data and the evaluation settings (and the seed, where the model is randomly
//! initialised or a metric samples). The first run to evaluate the base model writes them to
//! `results/NAME/base_evals/KEY.json`, KEY a hash of everything that influences them; later runs
//! read them instead of evaluating again. Metrics that sample (diversity) are cached apart, per
//! seed, so that the greedy ones (losses, math accuracy, next-line match) are computed once for
//! all seeds. Two runs computing it at once both write the same
//! values, atomically, so a race costs time only. Metrics of the weights themselves (the spectral
//! rank, which depends on the method and the adapted modules) are measured by every run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::eval::Evaluator;
use super::{TrainError, TrainOptions};
use crate::model::llama::Llama;
use crate::model::tokenizer::Tokenizer;
use crate::plan::run::{ModelSource, RunFile};
use crate::spec::{Init, Metric};

/// Version of the cache's key and layout: a change to how base evaluations are computed bumps
/// it, so that no older file is reused.
pub const BASE_EVAL_SCHEMA: u32 = 4;

/// The folder, beside `runs/`, that holds a sweep's base evaluations.
pub const BASE_EVAL_DIR: &str = "base_evals";

/// A cached base evaluation: the key it was computed for, and the metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseEvalFile {
    /// [`BASE_EVAL_SCHEMA`] when written.
    pub schema: u32,
    /// The key (also the file's name).
    pub key: String,
    /// The run that computed it, for people reading the folder.
    pub computed_by: String,
    /// Metric name to value.
    pub metrics: BTreeMap<String, f64>,
}

/// Where one base evaluation is cached.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseEvalCache {
    /// The file.
    pub path: PathBuf,
    /// Its key.
    pub key: String,
}

impl BaseEvalCache {
    /// The cache of a run in `run_dir` with this key: `results/NAME/base_evals/KEY.json` when
    /// the run's folder is `results/NAME/runs/ID` (as plans lay them out); None for a run
    /// elsewhere, which then evaluates the base model itself.
    pub fn for_run_dir(run_dir: &Path, key: String) -> Option<BaseEvalCache> {
        let runs = run_dir.parent()?;
        if runs.file_name()? != "runs" {
            return None;
        }
        let sweep_dir = runs.parent()?;
        Some(BaseEvalCache {
            path: sweep_dir.join(BASE_EVAL_DIR).join(format!("{key}.json")),
            key,
        })
    }

    /// The cached metrics, if a readable file of this key and schema exists (anything else is
    /// a miss: the run evaluates and rewrites it).
    pub fn load(&self) -> Option<BTreeMap<String, f64>> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let file: BaseEvalFile = serde_json::from_str(&text).ok()?;
        (file.schema == BASE_EVAL_SCHEMA && file.key == self.key).then_some(file.metrics)
    }

    /// Write the metrics atomically.
    pub fn store(&self, run_id: &str, metrics: &BTreeMap<String, f64>) -> std::io::Result<()> {
        let file = BaseEvalFile {
            schema: BASE_EVAL_SCHEMA,
            key: self.key.clone(),
            computed_by: run_id.to_string(),
            metrics: metrics.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        crate::util::write_atomic(&self.path, |w| w.write_all(&json))
    }
}

/// The caches of one run's base evaluation: one for the metrics that do not depend on the seed
/// (losses, greedy generations), shared by every seed unless the weights are random, and one for
/// those that sample (diversity), shared by the runs of one seed.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseEvalCaches {
    /// Metrics of deterministic evaluators.
    pub greedy: BaseEvalCache,
    /// Metrics of sampling evaluators.
    pub sampled: BaseEvalCache,
}

impl BaseEvalCaches {
    /// The caches of the run in `run_dir` (None when it is not laid out as a sweep's run, see
    /// [`BaseEvalCache::for_run_dir`]); the arguments are those of [`key`].
    pub fn new(
        run_dir: &Path,
        run: &RunFile,
        opts: &TrainOptions,
        files: &[PathBuf],
        metrics: &[Metric],
        device: &str,
    ) -> Option<BaseEvalCaches> {
        let key = |sampled| key(run, opts, files, metrics, device, sampled);
        Some(BaseEvalCaches {
            greedy: BaseEvalCache::for_run_dir(run_dir, key(false))?,
            sampled: BaseEvalCache::for_run_dir(run_dir, key(true))?,
        })
    }
}

/// Evaluate the base model: the metrics of its outputs from `caches` when a run of the sweep
/// computed them already (else computed here and cached), the others measured here. Returns the
/// metrics and a note saying where shared ones came from, or why they could not be cached.
pub fn evaluate(
    evaluators: &[Box<dyn Evaluator>],
    model: &Llama,
    tok: &Tokenizer,
    caches: Option<&BaseEvalCaches>,
    run_id: &str,
) -> Result<(BTreeMap<String, f64>, Option<String>), TrainError> {
    let mut metrics = BTreeMap::new();
    let mut read = Vec::new();
    let mut failed = Vec::new();
    // The base evaluation runs to its end (a stop signal is honoured after it): before it there
    // is no state to checkpoint.
    for sampled in [false, true] {
        let group: Vec<&dyn Evaluator> = evaluators
            .iter()
            .map(|e| e.as_ref())
            .filter(|e| e.of_outputs_only() && e.samples() == sampled)
            .collect();
        if group.is_empty() {
            continue;
        }
        let cache = caches.map(|c| if sampled { &c.sampled } else { &c.greedy });
        if let Some((c, m)) = cache.and_then(|c| c.load().map(|m| (c, m))) {
            metrics.extend(m);
            read.push(c.path.display().to_string());
            continue;
        }
        let mut shared = BTreeMap::new();
        for e in group {
            shared.extend(e.evaluate(model, tok, None)?);
        }
        if let Some(c) = cache {
            // The values as a later run reads them back (serde_json's default float parsing may
            // differ in the last bit), so that every run of the sweep records the same origin.
            if let Ok(back) = serde_json::to_string(&shared).and_then(|j| serde_json::from_str(&j))
            {
                shared = back;
            }
            // Another run evaluates it again; this one's results are complete either way.
            if let Err(e) = c.store(run_id, &shared) {
                failed.push(format!("{}: {e}", c.path.display()));
            }
        }
        metrics.extend(shared);
    }
    for e in evaluators.iter().filter(|e| !e.of_outputs_only()) {
        metrics.extend(e.evaluate(model, tok, None)?);
    }
    let note = if !failed.is_empty() {
        Some(format!(
            "could not cache the base model evaluation ({})",
            failed.join("; ")
        ))
    } else if !read.is_empty() {
        Some(format!(
            "base model evaluation (step 0) read from {}",
            read.join(" and ")
        ))
    } else {
        None
    };
    Ok((metrics, note))
}

/// What identifies a file's content cheaply: its path, size and modification time; a folder's is
/// that of every file under it, in name order. A path that cannot be read counts as absent.
pub fn fingerprint(path: &Path) -> serde_json::Value {
    fn walk(p: &Path, out: &mut Vec<serde_json::Value>) {
        let Ok(meta) = std::fs::metadata(p) else {
            out.push(serde_json::json!([p, null]));
            return;
        };
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            entries.sort();
            for e in entries {
                walk(&e, out);
            }
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string());
            out.push(serde_json::json!([p, meta.len(), mtime]));
        }
    }
    let mut out = Vec::new();
    walk(path, &mut out);
    serde_json::Value::Array(out)
}

/// The key of a run's base evaluation: sha256 of everything that influences the step-0 metrics
/// of the model's outputs. The model (source, init, architecture, the files it loads from) and
/// its tokenizer; the data settings and the files read (`files`: the resolved target and source
/// data, evaluation sets); the evaluation settings; the sequence length, micro batch and
/// precision; the device; and the seed when the weights are random or the metrics are those
/// that sample (`sampled`). The method, LoRA settings and learning rate are left out: they do
/// not change the model at init.
pub fn key(
    run: &RunFile,
    opts: &TrainOptions,
    files: &[PathBuf],
    metrics: &[Metric],
    device: &str,
    sampled: bool,
) -> String {
    let model_file = match &run.shared.model {
        ModelSource::Builtin {
            shape,
            init: Init::Pretrained,
        } => Some(
            opts.cache_dir
                .join("pretrained")
                .join(format!("{shape}.safetensors")),
        ),
        ModelSource::Builtin { .. } => None,
        ModelSource::Hf { path } | ModelSource::Gguf { path } => Some(path.clone()),
    };
    let random_init = matches!(
        run.shared.model,
        ModelSource::Builtin {
            init: Init::Random,
            ..
        }
    );
    let t = &run.shared.training;
    let inputs = serde_json::json!({
        "schema": BASE_EVAL_SCHEMA,
        "sweep_version": env!("CARGO_PKG_VERSION"),
        "model": run.shared.model,
        "architecture": opts.model_override,
        "model_file": model_file.map(|p| fingerprint(&p)),
        "data": run.shared.data,
        "files": files.iter().map(|p| fingerprint(p)).collect::<Vec<_>>(),
        "evaluation": run.shared.evaluation,
        "metrics": metrics,
        "seq_len": t.seq_len,
        "micro_batch_size": t.micro_batch_size,
        "precision": t.precision,
        "device": device,
        "sampled": sampled,
        "seed": (random_init || sampled).then_some(run.seed),
    });
    let digest = Sha256::digest(inputs.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_lives_beside_runs_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("results/q/runs/abc-s0");
        let cache = BaseEvalCache::for_run_dir(&run_dir, "k1".into()).unwrap();
        assert_eq!(
            cache.path,
            dir.path()
                .join("results/q")
                .join(BASE_EVAL_DIR)
                .join("k1.json")
        );
        assert!(BaseEvalCache::for_run_dir(&dir.path().join("elsewhere"), "k".into()).is_none());
        assert_eq!(cache.load(), None);
        let mut m = BTreeMap::new();
        m.insert("target_loss".to_string(), 2.5);
        cache.store("abc-s0", &m).unwrap();
        assert_eq!(cache.load(), Some(m));
        // A file of another key (renamed by hand, say) is a miss.
        let other = BaseEvalCache {
            path: cache.path.clone(),
            key: "k2".into(),
        };
        assert_eq!(other.load(), None);
    }

    #[test]
    fn fingerprints_change_with_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "one").unwrap();
        let before = fingerprint(dir.path());
        assert_eq!(before, fingerprint(dir.path()));
        std::fs::write(&f, "three").unwrap();
        assert_ne!(before, fingerprint(dir.path()));
        assert_eq!(
            fingerprint(&dir.path().join("missing")),
            serde_json::json!([[dir.path().join("missing"), null]])
        );
    }
}
