//! The settings stage of the commands that take runs somewhere (`run`, `submit`, `follow`): the
//! command line, the spec, the cluster's entry and the environment merged once, into what the
//! command then uses. `--show-settings` prints them (TOML; JSON with `--json`) and does nothing
//! else, as ripgrep's and uv's do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::UsageError;
use crate::executor::slurm::config::{default_path, ClusterConfig, ClustersFile, CLUSTERS_ENV};
use crate::executor::slurm::SlurmError;

/// How a local execution runs its runs.
#[derive(Debug, Clone, Serialize)]
pub struct Local {
    /// Runs at a time (`--jobs`; default: the cores over each run's threads and ranks).
    pub jobs: usize,
    /// Threads per run (`--threads`; default 1).
    pub threads: usize,
    /// The GPUs lent to runs (`--gpus`, else CUDA_VISIBLE_DEVICES, else every GPU libtorch
    /// sees; none where SWEEP_DEVICE=cpu).
    pub gpus: Vec<String>,
    /// Failed runs are trained again (`--retry-failed`).
    pub retry_failed: bool,
    /// Invalid runs are trained again from scratch (`--retrain-invalid`).
    pub retrain_invalid: bool,
}

/// The cluster a submit goes to.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// Its name.
    pub name: String,
    /// The clusters file it comes from (`--clusters`, else SWEEP_CLUSTERS, else the default).
    pub clusters_file: PathBuf,
    /// Its entry, with every default filled in.
    pub entry: ClusterConfig,
    /// `--install`.
    pub install: bool,
    /// `--follow` (or `sweep follow`).
    pub follow: bool,
    /// Failed runs are sent again (`--retry-failed`).
    pub retry_failed: bool,
    /// Runs are checked against the entry's gpu_memory_gb (`--no-memory-check` turns it off).
    pub memory_check: bool,
}

/// Everything a `run`, `submit` or `follow` acts on.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// The sweep.
    pub sweep: String,
    /// Its spec file.
    pub spec: PathBuf,
    /// Its results folder.
    pub results: PathBuf,
    /// Runs in its plan.
    pub runs: usize,
    /// `local` or `slurm:CLUSTER`.
    pub executor: String,
    /// For the local executor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<Local>,
    /// For a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
    /// The environment variables that change what runs do, as set (secrets only as `set`).
    pub environment: BTreeMap<String, String>,
}

/// Variables read by the executors and the trainer; those that hold secrets are never shown.
const ENVIRONMENT: [&str; 10] = [
    "SWEEP_DATA",
    "SWEEP_CACHE",
    "SWEEP_DEVICE",
    CLUSTERS_ENV,
    "SWEEP_MIN_STEP_MS",
    "SWEEP_OPTIMIZER_KERNELS",
    "SWEEP_DIST_BACKEND",
    "CUDA_VISIBLE_DEVICES",
    "SLURM_CPUS_PER_TASK",
    "HF_ENDPOINT",
];
const SECRETS: [&str; 4] = [
    "HF_TOKEN",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
];

/// The environment part of the settings: each variable set, with the defaults of the data and
/// cache folders filled in.
pub fn environment() -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = ENVIRONMENT
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect();
    env.entry("SWEEP_DATA".into())
        .or_insert_with(|| "data (default)".into());
    env.entry("SWEEP_CACHE".into())
        .or_insert_with(|| ".cache/sweep (default)".into());
    for k in SECRETS {
        if std::env::var_os(k).is_some() {
            env.insert(k.to_string(), "set".into());
        }
    }
    env
}

/// The entry of cluster `name` in `clusters` (else the default clusters file), and the file.
pub fn cluster_entry(
    clusters: Option<&Path>,
    name: &str,
) -> Result<(PathBuf, ClusterConfig), SlurmError> {
    let path = clusters.map(Path::to_path_buf).unwrap_or_else(default_path);
    let file = ClustersFile::load(&path)?;
    let entry = file.get(name, &path.display().to_string())?.clone();
    Ok((path, entry))
}

impl Settings {
    /// Print them (TOML; JSON with `json`).
    pub fn show(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
        } else {
            let text = toml::to_string(self)
                .map_err(|e| UsageError(format!("showing the settings: {e}")))?;
            print!("{text}");
        }
        Ok(())
    }
}
