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
        }
    }
}

/// The libtorch device for `--device`/SWEEP_DEVICE: `auto`, `cpu`, `cuda` or `cuda:N`. Asking
/// for CUDA where libtorch sees none is an error, never a silent fall back to the CPU.
pub fn resolve_device(choice: &str) -> Result<Device, TrainError> {
    let cuda = |i: usize| {
        if tch::Cuda::is_available() && i < tch::Cuda::device_count() as usize {
            Ok(Device::Cuda(i))
        } else {
            Err(TrainError::Device(format!(
                "device `{choice}`: libtorch sees {} CUDA device(s) (a GPU build needs \
                 SWEEP_CUDA=1 at build time and libtorch_cuda at run time); use --device cpu",
                tch::Cuda::device_count()
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

/// The kind the model computes in: precision `auto` is bf16 on CUDA and f32 on the CPU; `bf16`
/// is bf16 anywhere (slow on most CPUs, but the same arithmetic as on a GPU).
pub fn compute_kind(precision: Precision, device: Device) -> tch::Kind {
    match (precision, device) {
        (Precision::F32, _) | (Precision::Auto, Device::Cpu) => tch::Kind::Float,
        _ => tch::Kind::BFloat16,
    }
}
