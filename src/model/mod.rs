//! Llama-architecture models: shapes (always available) and, with the `torch` feature, the
//! libtorch implementation.

pub mod config;
