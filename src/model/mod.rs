//! Llama-architecture models: shapes (always available) and, with the `torch` feature, the
//! libtorch implementation.

#[cfg(feature = "torch")]
pub mod chat;
pub mod config;
pub mod gguf;
#[cfg(all(test, feature = "torch"))]
pub(crate) mod gguf_tests;
#[cfg(feature = "torch")]
pub mod llama;
#[cfg(feature = "torch")]
pub mod lora;
pub mod safetensors;
pub mod tokenizer;

/// An error building, loading or running a model.
#[cfg(feature = "torch")]
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A libtorch operation failed (shape mismatch, out of memory, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The configuration cannot be built.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// A checkpoint lacks a tensor the model needs, or has it in the wrong shape.
    #[error("checkpoint {path}: {msg}")]
    Load {
        /// The checkpoint file or folder.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A GGUF file cannot be read or mapped onto the model.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// The input is longer than the rotary tables or otherwise out of range.
    #[error("{0}")]
    Input(String),
}
