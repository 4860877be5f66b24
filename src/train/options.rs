//! How the trainer runs besides the run file: threads, folders, device, world, pacing.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tch::Device;

use crate::dist::World;
use crate::model::config::LlamaConfig;
use crate::spec::Precision;

use super::TrainError;

/// How to run the trainer, besides the run file: resolved from the command line and the
/// environment by the command, so that the trainer reads no environment itself.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Intra-op threads (None: libtorch's default).
    pub threads: Option<usize>,
    /// Where `builtin:NAME` data sets live.
    pub data_dir: PathBuf,
    /// Cache folder holding `pretrained/<shape>.safetensors`.
    pub cache_dir: PathBuf,
    /// Stop (resumably, with a checkpoint) after this many steps in this session; for tests
    /// of resumption.
    pub stop_after_steps: Option<u64>,
    /// Use this architecture instead of the run's builtin shape (tests use very small ones).
    pub model_override: Option<LlamaConfig>,
    /// Set (by a SIGTERM/SIGUSR1 handler) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// `auto` (CUDA when libtorch sees a GPU, else the CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Every step takes at least this long (the trainer sleeps after a faster one): the same
    /// result, paced, so that tests can aim a signal at a run mid-training on any machine.
    pub min_step: Option<std::time::Duration>,
    /// Train from scratch even when the run has its own final result (`sweep train --force`):
    /// its result, metrics, checkpoints and adapter are removed first.
    pub retrain: bool,
    /// The ranks of this run (one process: the world of one). Every rank reads its slice of
    /// each global batch; gradients are summed over ranks; rank 0 alone evaluates and writes.
    pub world: Arc<World>,
    /// The optimizer's kernels (SWEEP_OPTIMIZER_KERNELS, read by the command).
    pub kernels: super::kernels::Kernels,
    /// Print a progress line (step of all, loss, speed, time left, evaluations) on stderr at
    /// every metrics line.
    pub progress: bool,
}

impl TrainOptions {
    /// Options from `--threads` and the environment: SLURM_CPUS_PER_TASK, SWEEP_DATA (default
    /// `data`), SWEEP_CACHE (default `.cache/sweep`).
    pub fn from_env(threads: Option<usize>) -> TrainOptions {
        let threads = threads.or_else(|| {
            std::env::var("SLURM_CPUS_PER_TASK")
                .ok()
                .and_then(|v| v.trim().parse().ok())
        });
        TrainOptions {
            threads,
            data_dir: std::env::var_os("SWEEP_DATA")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("data")),
            cache_dir: std::env::var_os("SWEEP_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".cache/sweep")),
            stop_after_steps: None,
            model_override: None,
            stop: None,
            device: std::env::var("SWEEP_DEVICE").unwrap_or_else(|_| "auto".into()),
            min_step: None,
            retrain: false,
            world: Arc::new(World::single()),
            kernels: super::kernels::Kernels::Fused,
            progress: false,
        }
    }
}

/// The libtorch device for `--device`/SWEEP_DEVICE: `auto`, `cpu`, `cuda` or `cuda:N`. Asking
/// for CUDA where libtorch sees none is an error naming the libtorch loaded, never a silent fall
/// back to the CPU.
pub fn resolve_device(choice: &str) -> Result<Device, TrainError> {
    let cuda = |i: usize| {
        let n = tch::Cuda::device_count() as usize;
        if tch::Cuda::is_available() && i < n {
            Ok(Device::Cuda(i))
        } else if n > 0 {
            Err(TrainError::Device(format!(
                "device `{choice}`: libtorch sees {n} CUDA device(s) (cuda:0..cuda:{}); use one of those",
                n - 1
            )))
        } else {
            Err(TrainError::Device(format!(
                "device `{choice}`: libtorch sees no CUDA device; {}",
                loaded_libtorch()
            )))
        }
    };
    match choice.trim() {
        "auto" | "" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => Err(TrainError::Device(format!(
                "device `{other}`: use auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

/// The device of local rank `local_rank` of a multi-process run. `auto` (where libtorch sees a
/// GPU) and `cuda` give each rank of a node its own GPU, cuda:LOCAL_RANK; an explicit `cuda:N`
/// puts every rank on GPU N (asked for, e.g. two Gloo ranks on one GPU); `cpu` is the CPU.
/// More ranks on a node than it has GPUs is an error, on every rank of the node where
/// `local_size` (LOCAL_WORLD_SIZE) says how many there are, so that none waits for the others.
pub fn rank_device(
    choice: &str,
    local_rank: usize,
    local_size: Option<usize>,
) -> Result<Device, TrainError> {
    match choice.trim() {
        "auto" | "" if !tch::Cuda::is_available() => Ok(Device::Cpu),
        "auto" | "" | "cuda" => {
            let n = tch::Cuda::device_count() as usize;
            if n == 0 {
                return resolve_device("cuda");
            }
            let ranks = local_size.unwrap_or(0).max(local_rank + 1);
            if ranks > n {
                return Err(TrainError::Device(format!(
                    "{ranks} ranks on this node, one GPU each, but libtorch sees {n} CUDA device(s) here: run at most {n} ranks per node (training.ranks_per_node, --nproc), or give --device cuda:K to put every rank on GPU K"
                )));
            }
            Ok(Device::Cuda(local_rank))
        }
        other => resolve_device(other),
    }
}

/// Whether several ranks of a node share one GPU: an explicit `cuda:K` puts them all there.
pub fn shares_gpu(choice: &str, local_size: Option<usize>) -> bool {
    choice.trim().starts_with("cuda:") && local_size.is_none_or(|n| n > 1)
}

/// Which libtorch this process loaded, for an error about a missing GPU: the path of
/// libtorch_cpu.so and whether libtorch_cuda.so is loaded too (from /proc/self/maps).
pub fn loaded_libtorch() -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let find = |name: &str| {
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.ends_with(name))
            .map(str::to_owned)
    };
    let visible = std::env::var("CUDA_VISIBLE_DEVICES")
        .map(|v| format!(" (CUDA_VISIBLE_DEVICES={v:?})"))
        .unwrap_or_default();
    match (find("/libtorch_cpu.so"), find("/libtorch_cuda.so")) {
        (Some(cpu), None) => format!(
            "the libtorch loaded is {cpu} without libtorch_cuda.so: a CPU-only build. Build sweep with scripts/build-cuda (SWEEP_CUDA=1 and a CUDA libtorch) and run it where that libtorch is, or use --device cpu"
        ),
        (_, Some(cuda)) => format!(
            "libtorch's CUDA part {cuda} is loaded, but no GPU is visible{visible}: check the node's GPUs (nvidia-smi) and the job's GPU request, or use --device cpu"
        ),
        (None, None) => "libtorch's libraries were not found in this process's maps; use --device cpu".into(),
    }
}

/// The kind the model computes in: precision `auto` is bf16 on CUDA and f32 on the CPU; `bf16`
/// is bf16 anywhere (slow on most CPUs, but the same arithmetic as on a GPU).
pub fn compute_kind(precision: Precision, device: Device) -> tch::Kind {
    match (precision, device) {
        (Precision::F32, _) | (Precision::Auto, Device::Cpu) => tch::Kind::Float,
        _ => tch::Kind::BFloat16,
    }
}
