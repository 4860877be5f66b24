//! `sweep`: plan, run and report studies of LoRA versus full fine-tuning, after "LoRA Learns Less
//! and Forgets Less" (Biderman et al., 2024).
//!
//! Data flows one way: [`spec`] (what the user wrote) -> [`plan`] (runs with stable ids) ->
//! executors -> run results -> report. The planner does no I/O; the trainer never hears of Slurm.
#![deny(missing_docs)]

pub mod cli;
pub mod commands;
pub mod data;
#[cfg(feature = "torch")]
pub mod dist;
pub mod executor;
pub mod external_trainer;
pub mod fetch;
pub mod fingerprint;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod progress;
pub mod report;
pub mod results;
pub mod rng;
pub mod run_lock;
pub mod spec;
pub mod tracking;
#[cfg(feature = "torch")]
pub mod train;
pub mod util;
