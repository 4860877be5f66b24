//! Evaluations run during training. Each is an [`Evaluator`] that maps the model to named
//! metrics; a new metric is one more implementation, and the training loop does not change.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Reduction, Tensor};

use super::data::IGNORE;
use super::rows::{batch_of, Batch, Row};
use super::TrainError;
use crate::model::llama::Llama;
use crate::model::tokenizer::Tokenizer;

/// A stop flag an evaluation checks between its items (set by a stop signal); None: never.
pub type Stop<'a> = Option<&'a AtomicBool>;

/// Whether an error is an evaluation stopped by [`Stop`].
pub fn interrupted(e: &TrainError) -> bool {
    matches!(
        e,
        TrainError::Metrics(crate::metrics::MetricsError::Interrupted)
    )
}

/// Something measured on the model at an evaluation point.
pub trait Evaluator {
    /// Metric names to values; fails with [`crate::metrics::MetricsError::Interrupted`] within
    /// one item (a batch, a problem, a task) of `stop` being set.
    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError>;

    /// Whether the metrics depend on the model's outputs only, so that their value on the
    /// untrained model is the same for every method (LoRA at init computes what the base does)
    /// and [`super::base_eval`] can share it between runs. False for metrics of the weights.
    fn of_outputs_only(&self) -> bool {
        true
    }

    /// Whether the metrics sample with the run's seed, so that runs of different seeds measure
    /// different values on the same model.
    fn samples(&self) -> bool {
        false
    }

    /// How many items (problems, lines, tasks) each metric it reports is a proportion of:
    /// result.json's `metric_items`, which the report's intervals and its too-few-items check
    /// read. Empty for metrics that are not proportions of items.
    fn items(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }

    /// How a benchmark's metrics are scored, its prompt format and its item count, for
    /// result.json's notes; None for metrics that are not benchmarks of items.
    fn scoring(&self) -> Option<String> {
        None
    }
}

/// Summed next-token loss over the target tokens of a batch, and the count of target tokens
/// (`train` turns adapter dropout on).
pub fn batch_loss_sum(
    model: &Llama,
    batch: &Batch,
    train: bool,
) -> Result<(Tensor, f64), TrainError> {
    let device = model.vs.device();
    let logits = model.forward(&batch.inputs.f_to_device(device)?, train)?;
    let targets = batch.targets.f_to_device(device)?.f_view([-1])?;
    let loss = target_loss_sum(&logits, &targets)?;
    let count = targets
        .f_ne(IGNORE)?
        .f_sum(Kind::Float)?
        .f_double_value(&[])?;
    Ok((loss, count))
}

/// The summed next-token cross-entropy of logits (B, T, V) against flat targets (B x T), the
/// IGNORE ones left out.
pub fn target_loss_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor, TrainError> {
    let v = logits.size().last().copied().unwrap_or(1);
    Ok(logits.f_view([-1, v])?.f_cross_entropy_loss::<Tensor>(
        targets,
        None,
        Reduction::Sum,
        IGNORE,
        0.0,
    )?)
}

/// Held-out loss on fixed rows, reported as `<name>_loss`.
#[derive(Debug, Clone)]
pub struct LossEval {
    /// Metric prefix (`target`, `source`).
    pub name: String,
    /// The held-out rows.
    pub rows: Vec<Row>,
    /// Sequence length of the rows.
    pub seq_len: usize,
    /// Rows per forward pass.
    pub micro_batch: usize,
}

impl Evaluator for LossEval {
    fn evaluate(
        &self,
        model: &Llama,
        _: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let _g = tch::no_grad_guard();
        let mut sum = 0.0;
        let mut count = 0.0;
        for chunk in self.rows.chunks(self.micro_batch.max(1)) {
            if stop.is_some_and(|f| f.load(Ordering::SeqCst)) {
                return Err(crate::metrics::MetricsError::Interrupted.into());
            }
            let b = batch_of(chunk, self.seq_len)?;
            let (loss, n) = batch_loss_sum(model, &b, false)?;
            sum += loss.f_double_value(&[])?;
            count += n;
        }
        let mut out = BTreeMap::new();
        if count > 0.0 {
            out.insert(format!("{}_loss", self.name), sum / count);
        }
        Ok(out)
    }
}
