//! results/NAME/slurm.json: what was sent to which cluster. A batch is written here *before*
//! sbatch runs, so that after a crash anywhere in submit the next run can look its job names up
//! in squeue/sacct and record what exists instead of submitting it twice.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::ClusterConfig;
use super::parse::ClusterFacts;
use crate::util::write_atomic;

/// Layout version of slurm.json.
pub const JOURNAL_SCHEMA: u32 = 1;

/// One job array of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// First batch line of index 0.
    pub offset: usize,
    /// Array tasks.
    pub len: usize,
    /// The job name (sweep hash, batch tag, chunk number): what reconciliation looks for.
    pub job_name: String,
    /// The array job id once sbatch answered (or reconciliation found it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// Runs sent together: batches/TAG.{jsonl,ids,sbatch} on the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Tag (hex), unique within the sweep.
    pub tag: String,
    /// Unix seconds when it was written.
    pub created: u64,
    /// Run ids, in array order.
    pub ids: Vec<String>,
    /// Its arrays.
    pub chunks: Vec<ChunkRecord>,
}

/// slurm.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Journal {
    /// Layout version.
    pub schema: u32,
    /// The sweep.
    pub sweep: String,
    /// Cluster name.
    pub cluster: String,
    /// The cluster's resolved config, as submitted (status, cancel and collect use it).
    pub config: ClusterConfig,
    /// The sweep's remote folder.
    pub remote_dir: String,
    /// What the cluster said about itself.
    #[serde(default)]
    pub facts: Option<ClusterFacts>,
    /// Unix seconds of the last scheduler poll.
    #[serde(default)]
    pub last_poll: Option<u64>,
    /// Batches, oldest first.
    pub batches: Vec<Batch>,
}

/// Problems with slurm.json.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// It does not parse.
    #[error("{path}: corrupt Slurm journal ({reason}); it was left as it is")]
    Corrupt {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// I/O.
    #[error("{0}")]
    Io(String),
}

impl Journal {
    /// The file in a sweep folder.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("slurm.json")
    }

    /// Load, or None when the sweep was never submitted to a cluster.
    pub fn load(dir: &Path) -> Result<Option<Journal>, JournalError> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(JournalError::Io(format!("{}: {e}", path.display()))),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Save atomically.
    pub fn save(&self, dir: &Path) -> Result<(), JournalError> {
        let path = Self::path(dir);
        let json = serde_json::to_vec_pretty(self).map_err(|e| JournalError::Io(e.to_string()))?;
        write_atomic(&path, |w| w.write_all(&json))
            .map_err(|e| JournalError::Io(format!("{}: {e}", path.display())))
    }

    /// The job-name prefix of this sweep's jobs: `sweep-` and 8 hex digits of the sweep name and
    /// remote folder (no user text reaches the scheduler's name field).
    pub fn job_prefix(&self) -> String {
        job_prefix(&self.sweep, &self.remote_dir)
    }
}

/// See [`Journal::job_prefix`].
pub fn job_prefix(sweep: &str, remote_dir: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{sweep}\n{remote_dir}").as_bytes());
    format!(
        "sweep-{}-",
        d.iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}
