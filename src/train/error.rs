//! The trainer's error type.

use std::path::PathBuf;

use crate::model::tokenizer::TokenizerError;
use crate::model::ModelError;

/// An error of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The model could not be built or loaded.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The run file cannot be used.
    #[error("run file {path}: {msg}")]
    RunFile {
        /// The run.json.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The model's tokenizer could not be built or failed on the data.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Data could not be found or read.
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// metrics.jsonl or result.json could not be written.
    #[error("writing outputs: {0}")]
    Output(String),
    /// A generation or likelihood metric failed.
    #[error("metric: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    /// A setting this trainer does not support yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// The requested device is not available.
    #[error("{0}")]
    Device(String),
    /// A setting of how the trainer runs (an environment variable, a flag) is not valid.
    #[error("{0}")]
    Setting(String),
    /// Another trainer holds the run.
    #[error("{0}")]
    Busy(String),
    /// A collective of a multi-process run failed (a rank died, hung or cannot be reached).
    #[error(transparent)]
    Dist(#[from] crate::dist::DistError),
}
