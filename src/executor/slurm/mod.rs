//! The Slurm-over-SSH executor: stages run configs on a cluster, submits job arrays with sbatch,
//! follows them with one squeue and one sacct call per poll, cancels them and collects results.
//!
//! Pure parts (config, sbatch text, chunking, quoting, parsing, retry policy, the join of what
//! the cluster says with the journal) have unit tests beside them; the transport is a trait with
//! an ssh2 and an openssh implementation, and a fake in tests.

pub mod config;
pub mod events;
pub mod executor;
pub mod install;
pub mod journal;
pub mod openssh;
pub mod parse;
pub mod quote;
pub mod retry;
pub mod script;
pub mod ssh;
pub mod sweep;
pub mod transport;

use config::{ClusterConfig, ConfigError, TransportKind};
use transport::{Transport, TransportError};

/// Slurm executor failures.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// clusters.toml.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// SSH.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// `--install`.
    #[error(transparent)]
    Install(#[from] install::InstallError),
    /// slurm.json.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// state.json.
    #[error(transparent)]
    State(#[from] crate::executor::state::StateError),
    /// A remote command failed.
    #[error("{what} failed on the cluster: {detail}")]
    Remote {
        /// The command.
        what: String,
        /// Its output.
        detail: String,
    },
    /// The remote binary is missing or of another version.
    #[error("the remote sweep binary {binary} {problem} (this is sweep {ours}): run `sweep submit SPEC --cluster {cluster} --install` to put this one there, or set sweep_binary in the cluster config")]
    Binary {
        /// Its path.
        binary: String,
        /// What is wrong.
        problem: String,
        /// Our version.
        ours: String,
        /// The cluster.
        cluster: String,
    },
    /// A sweep submitted to one cluster, submitted to another.
    #[error("sweep {sweep} was submitted to cluster `{from}`; it cannot move to `{to}` (use another --results folder)")]
    Moved {
        /// The sweep.
        sweep: String,
        /// Its cluster.
        from: String,
        /// The one asked for.
        to: String,
    },
    /// Reading or writing files here.
    #[error("{0}")]
    Local(String),
    /// sbatch refused a chunk.
    #[error("sbatch refused the job array ({error}); runs not submitted: {runs} ({submitted} runs were submitted before it)")]
    Sbatch {
        /// sbatch's error.
        error: String,
        /// The runs of the refused chunks.
        runs: String,
        /// Runs submitted.
        submitted: usize,
    },
}

/// Connect with the transport the config names.
pub fn connect(c: &ClusterConfig) -> Result<Box<dyn Transport>, TransportError> {
    Ok(match c.transport {
        TransportKind::Ssh2 => Box::new(ssh::Ssh2Transport::connect(c)?),
        TransportKind::Openssh => Box::new(openssh::OpensshTransport::connect(c)?),
    })
}

/// Check `sweep --version` output against this binary's version.
pub fn check_version(version_output: &str, binary: &str, cluster: &str) -> Result<(), SlurmError> {
    let ours = env!("CARGO_PKG_VERSION");
    let first = version_output.lines().next().unwrap_or("").trim();
    if first == format!("sweep {ours}") {
        return Ok(());
    }
    let problem = if first.starts_with("sweep ") {
        format!("is version {}", first.trim_start_matches("sweep "))
    } else {
        format!(
            "cannot be run ({})",
            version_output.trim().replace('\n', " ")
        )
    };
    Err(SlurmError::Binary {
        binary: binary.to_string(),
        problem,
        ours: ours.to_string(),
        cluster: cluster.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_check_says_how_to_install() {
        let v = env!("CARGO_PKG_VERSION");
        assert!(check_version(&format!("sweep {v}\n"), "b", "c").is_ok());
        let e = check_version(
            "bash: b: No such file or directory\ncannot run: exit 127",
            "b",
            "dev",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--cluster dev --install"), "{e}");
        let e = check_version("sweep 0.0.1", "b", "dev")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is version 0.0.1"), "{e}");
    }
}
