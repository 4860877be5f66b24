//! Cluster configuration: `clusters.toml` (the user's in ~/.config/sweep/, an example in
//! sweeps/clusters.toml), parsed with serde and checked before anything connects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::executor::JobState;

/// The environment variable naming a clusters.toml that wins over the default location.
pub const CLUSTERS_ENV: &str = "SWEEP_CLUSTERS";

/// How to reach the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// The ssh2 crate (libssh2): one session per command, key or agent authentication.
    #[default]
    Ssh2,
    /// The system `ssh` with ControlMaster/ControlPersist: for 2FA, ProxyJump and ssh_config.
    Openssh,
}

/// Which failures are resubmitted by `sweep submit`, and how often.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts per run at most, the first included.
    pub max_attempts: u32,
    /// States resubmitted without being asked (`--retry-failed` adds `failed` and
    /// `out_of_memory`). A timed-out run resumes from its checkpoint.
    pub retry_on: Vec<JobState>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            retry_on: vec![JobState::Preempted, JobState::NodeFail, JobState::Timeout],
        }
    }
}

/// One cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Login node host name or address.
    pub host: String,
    /// SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Remote user.
    pub user: String,
    /// Private key; without it the ssh-agent is used.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
    /// known_hosts file checked for the host key (default ~/.ssh/known_hosts).
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// `ssh2` (default) or `openssh`.
    #[serde(default)]
    pub transport: TransportKind,
    /// Seconds to connect and authenticate.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_s: u64,
    /// Seconds any one remote command or transfer may take.
    #[serde(default = "default_command_timeout")]
    pub command_timeout_s: u64,
    /// Remote work folder (relative paths are from the remote home).
    pub work_dir: String,
    /// The remote `sweep` binary (default: the one `sweep submit --install` puts in WORK/bin/).
    #[serde(default)]
    pub sweep_binary: Option<String>,
    /// The binary `--install` copies (a path on this machine, e.g. a CUDA build from
    /// scripts/build-cuda for a GPU cluster); default: the running `sweep`.
    #[serde(default)]
    pub install_binary: Option<PathBuf>,
    /// A remote libtorch folder (its lib/ goes on LD_LIBRARY_PATH).
    #[serde(default)]
    pub libtorch: Option<String>,
    /// Where `--install` copies this machine's libtorch when `libtorch` is not set (default
    /// [`LIBTORCH_DIR`], under the remote home; shared by every sweep of that user).
    #[serde(default)]
    pub libtorch_install_dir: Option<String>,
    /// `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--account`.
    #[serde(default)]
    pub account: Option<String>,
    /// `--qos`.
    #[serde(default)]
    pub qos: Option<String>,
    /// `--time` (e.g. `04:00:00`).
    #[serde(default)]
    pub time_limit: Option<String>,
    /// `--cpus-per-task`.
    #[serde(default)]
    pub cpus_per_task: Option<u32>,
    /// `--mem` (e.g. `16G`).
    #[serde(default)]
    pub mem: Option<String>,
    /// `--gres` (e.g. `gpu:1`).
    #[serde(default)]
    pub gres: Option<String>,
    /// Every rank trains on a GPU of its own: sbatch asks `--gpus-per-node` = the run's ranks
    /// per node, the trainer is told CUDA (it fails at start rather than train on the CPU), and
    /// `--install` refuses a CPU-only libtorch or binary.
    #[serde(default)]
    pub gpu: bool,
    /// Memory of one GPU in GB: `sweep submit` refuses a run whose estimated memory per rank
    /// exceeds it (`sweep plan` prints the estimate), and says what would fit.
    #[serde(default)]
    pub gpu_memory_gb: Option<f64>,
    /// Extra `#SBATCH` lines, without the `#SBATCH ` prefix (e.g. `--constraint=a100`).
    #[serde(default)]
    pub sbatch_extra: Vec<String>,
    /// Extra arguments of every job's `sweep train` (e.g. `["--noop"]` for executor tests).
    #[serde(default)]
    pub train_args: Vec<String>,
    /// Shell lines run before training (e.g. `module load cuda/12.1`).
    #[serde(default)]
    pub setup: Vec<String>,
    /// Runs of one array at a time (`--array=...%N`).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// The shortest time between two polls of the scheduler, seconds.
    #[serde(default = "default_poll_floor")]
    pub poll_floor_s: u64,
    /// Seconds before the time limit at which the trainer is told to checkpoint (SIGUSR1); by
    /// default enough to write the sweep's largest checkpoint ([`default_signal_s`]).
    #[serde(default)]
    pub checkpoint_signal_s: Option<u64>,
    /// A task stopped at the time-limit warning with a checkpoint further than the one it
    /// started from puts itself back in the queue (`scontrol requeue`: the same job, not a new
    /// attempt) and goes on from it in its next time slot, with no `sweep` process alive; one
    /// that got no further ends as a timeout (exit 75) for the retry policy.
    #[serde(default)]
    pub requeue_on_timeout: bool,
    /// Retries by fault class.
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn default_port() -> u16 {
    22
}
fn default_connect_timeout() -> u64 {
    20
}
fn default_command_timeout() -> u64 {
    300
}
fn default_poll_floor() -> u64 {
    30
}
/// The write speed the default warning time assumes for the cluster's shared filesystem, in
/// bytes per second: modest, since one file server serves many jobs.
pub const CHECKPOINT_WRITE_BPS: f64 = 250e6;

/// The checkpoint size assumed where the model's shape is not known on the submitting machine
/// (its config.json or GGUF is on the cluster only): 135 GB, a 7B full fine-tuning with AdamW
/// and room to spare, so that the default warning is 600 s.
pub const UNKNOWN_CHECKPOINT_BYTES: f64 = 135e9;

/// The default warning before the time limit for runs whose checkpoint is `bytes` large: a
/// minute to finish the step under way, plus the checkpoint's writing at
/// [`CHECKPOINT_WRITE_BPS`], at least 120 s, in whole tens of seconds. An evaluation under way
/// stops within one item of the warning.
pub fn default_signal_s(bytes: f64) -> u64 {
    let s = 60.0 + bytes.max(0.0) / CHECKPOINT_WRITE_BPS;
    ((s / 10.0).ceil() as u64 * 10).max(120)
}

/// clusters.toml.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClustersFile {
    /// Clusters by name.
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterConfig>,
}

/// Problems with clusters.toml.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing.
    #[error("no clusters file at {path}: copy sweeps/clusters.toml there (or set {CLUSTERS_ENV}) and describe your cluster")]
    Missing {
        /// Where it was looked for.
        path: String,
    },
    /// It does not parse.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The named cluster is not in it.
    #[error("unknown cluster `{name}` in {path}; known clusters: {known}")]
    Unknown {
        /// Asked for.
        name: String,
        /// The file.
        path: String,
        /// Those it has.
        known: String,
    },
    /// A value that would break the job script.
    #[error("cluster `{cluster}`: {key} {reason}")]
    Invalid {
        /// The cluster.
        cluster: String,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The cluster entry cannot serve these runs as it is (e.g. GPUs asked, a CPU build to
    /// install); the message names the fix.
    #[error("{0}")]
    Unfit(String),
}

/// Where clusters.toml is: `$SWEEP_CLUSTERS`, else `$XDG_CONFIG_HOME/sweep/clusters.toml`, else
/// `~/.config/sweep/clusters.toml`.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os(CLUSTERS_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("sweep").join("clusters.toml")
}

impl ClustersFile {
    /// Parse the text of a clusters.toml (`path` names it in errors) and check every cluster.
    pub fn parse(text: &str, path: &str) -> Result<ClustersFile, ConfigError> {
        let f: ClustersFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        for (name, c) in &f.clusters {
            c.check(name)?;
        }
        Ok(f)
    }

    /// Read and parse a clusters.toml.
    pub fn load(path: &Path) -> Result<ClustersFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ConfigError::Missing {
                path: path.display().to_string(),
            },
            _ => ConfigError::Parse {
                path: path.display().to_string(),
                reason: e.to_string(),
            },
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The cluster called `name`, or an error listing the known ones.
    pub fn get(&self, name: &str, path: &str) -> Result<&ClusterConfig, ConfigError> {
        self.clusters.get(name).ok_or_else(|| ConfigError::Unknown {
            name: name.to_string(),
            path: path.to_string(),
            known: if self.clusters.is_empty() {
                "none".to_string()
            } else {
                self.clusters.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
    }
}

impl ClusterConfig {
    /// Check what would break the job script: no control characters in values that go on
    /// `#SBATCH` lines, one line per setup entry, a work dir without `~`.
    pub fn check(&self, cluster: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| ConfigError::Invalid {
            cluster: cluster.to_string(),
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let one_line = [
            ("partition", self.partition.as_deref()),
            ("account", self.account.as_deref()),
            ("qos", self.qos.as_deref()),
            ("time_limit", self.time_limit.as_deref()),
            ("mem", self.mem.as_deref()),
            ("gres", self.gres.as_deref()),
            ("sweep_binary", self.sweep_binary.as_deref()),
            ("libtorch", self.libtorch.as_deref()),
            ("libtorch_install_dir", self.libtorch_install_dir.as_deref()),
            ("work_dir", Some(self.work_dir.as_str())),
            ("host", Some(self.host.as_str())),
            ("user", Some(self.user.as_str())),
        ];
        for (key, v) in one_line {
            if v.is_some_and(|v| v.chars().any(|c| c.is_control())) {
                return Err(bad(key, "holds a control character (a newline?)"));
            }
        }
        for (key, v) in [
            ("partition", &self.partition),
            ("account", &self.account),
            ("qos", &self.qos),
            ("time_limit", &self.time_limit),
            ("mem", &self.mem),
            ("gres", &self.gres),
        ] {
            if v.as_deref()
                .is_some_and(|v| v.contains(char::is_whitespace))
            {
                return Err(bad(key, "holds a space"));
            }
        }
        for l in self.sbatch_extra.iter().chain(&self.setup) {
            if l.contains(['\n', '\r']) {
                return Err(bad(
                    "sbatch_extra/setup",
                    "entries are one line each: split them",
                ));
            }
        }
        if self.work_dir.trim().is_empty() || self.work_dir.starts_with('~') {
            return Err(bad(
                "work_dir",
                "is empty or starts with `~`: relative paths are already from the remote home",
            ));
        }
        if self.host.is_empty() || self.user.is_empty() {
            return Err(bad("host/user", "is empty"));
        }
        if self
            .install_binary
            .as_ref()
            .is_some_and(|p| !p.is_absolute())
        {
            return Err(bad(
                "install_binary",
                "is not an absolute path: give the binary's full path on this machine",
            ));
        }
        if self.install_binary.is_some() && self.libtorch.is_none() {
            return Err(bad(
                "install_binary",
                "needs `libtorch`: the libtorch on the cluster that binary runs with (--install copies only this sweep's own libtorch)",
            ));
        }
        if self.gpu && self.gres.as_deref().is_some_and(|g| g.contains("gpu")) {
            return Err(bad(
                "gres",
                "asks for GPUs and so does gpu = true (which asks --gpus-per-node for each run's ranks): keep one",
            ));
        }
        Ok(())
    }

    /// Whether the runs train on GPUs: `gpu = true`, or GPUs asked through `gres` or an
    /// `sbatch_extra` line (--gpus, --gpus-per-node, --gres=gpu...).
    pub fn asks_gpus(&self) -> bool {
        self.gpu
            || self.gres.as_deref().is_some_and(|g| g.contains("gpu"))
            || self.sbatch_extra.iter().any(|l| {
                let flag = l.trim_start().split([' ', '=']).next().unwrap_or("");
                flag == "-G"
                    || flag.starts_with("--gpus")
                    || (flag == "--gres" && l.contains("gpu"))
            })
    }

    /// The remote `sweep` binary: the configured one, or WORK/bin/sweep-VERSION.
    /// The remote libtorch folder: the configured one (a cluster's own, CUDA, build), or where
    /// `sweep submit --install` copies this machine's libtorch.
    pub fn remote_libtorch(&self) -> String {
        self.libtorch
            .clone()
            .or_else(|| self.libtorch_install_dir.clone())
            .unwrap_or_else(|| LIBTORCH_DIR.to_string())
    }

    /// The remote `sweep` binary: the configured one, or where `--install` puts it.
    pub fn remote_binary(&self) -> String {
        self.sweep_binary.clone().unwrap_or_else(|| {
            super::quote::join(
                &self.work_dir,
                &format!("bin/sweep-{}", env!("CARGO_PKG_VERSION")),
            )
        })
    }
}

/// Where `--install` puts libtorch when the config names none: under the remote user's home,
/// shared by every sweep and work dir of that user (it is about 500 MB).
pub const LIBTORCH_DIR: &str = ".cache/sweep/libtorch-2.11.0";

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../sweeps/clusters.toml");

    #[test]
    fn the_example_parses_with_every_key() {
        let f = ClustersFile::parse(EXAMPLE, "sweeps/clusters.toml").unwrap();
        let c = f.get("mycluster", "x").unwrap();
        assert_eq!(c.port, 22);
        assert_eq!(c.partition.as_deref(), Some("gpu"));
        assert!(c.retry.retry_on.contains(&JobState::Timeout));
        assert!(f.clusters.contains_key("jumphost"));
        assert_eq!(f.clusters["jumphost"].transport, TransportKind::Openssh);
    }

    #[test]
    fn unknown_cluster_lists_the_known_ones() {
        let f = ClustersFile::parse(EXAMPLE, "c.toml").unwrap();
        let e = f.get("nope", "c.toml").unwrap_err().to_string();
        assert!(e.contains("jumphost, mycluster"), "{e}");
    }

    #[test]
    fn unknown_keys_and_newlines_are_refused() {
        let base = "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\n";
        assert!(ClustersFile::parse(base, "c").is_ok());
        let e = ClustersFile::parse(&format!("{base}partiton = \"x\"\n"), "c").unwrap_err();
        assert!(e.to_string().contains("partiton"), "{e}");
        let e =
            ClustersFile::parse(&format!("{base}partition = \"a\\nrm -rf x\"\n"), "c").unwrap_err();
        assert!(e.to_string().contains("partition"), "{e}");
        let e = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"~/w\"\n",
            "c",
        )
        .unwrap_err();
        assert!(e.to_string().contains("work_dir"), "{e}");
    }

    #[test]
    fn defaults_fill_in() {
        let f = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w x\"\n",
            "c",
        )
        .unwrap();
        let c = &f.clusters["a"];
        assert_eq!(c.poll_floor_s, 30);
        assert_eq!(c.transport, TransportKind::Ssh2);
        assert_eq!(
            c.remote_binary(),
            format!("w x/bin/sweep-{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
