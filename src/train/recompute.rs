//! One micro-batch's forward and backward pass, plain or with activation checkpointing.
//!
//! tch has no custom autograd functions, so checkpointing is done by hand, block by block: the
//! blocks run forward without a graph, keeping only each block's input; the head runs with one
//! from the last block's output (a leaf) and back-propagates the loss; then for each block from
//! the last, its input (a leaf again) is run through the block with a graph and
//! `(output * g).sum()` back-propagated, where g is the gradient that reached the output: that
//! accumulates the block's parameter gradients and leaves the gradient of its input for the block
//! before. Activations of one block at a time are alive instead of all of them; the blocks run
//! forward twice. Dropout draws the same masks in both passes ([`Llama::dropout_seeds`]).
//!
//! With or without checkpointing, the head and its loss run over chunks of rows of the last
//! block's output (a leaf), each chunk back-propagated before the next, so that at most
//! [`LOGIT_CHUNK_BYTES`] of logits (and as much of their log-softmax and gradient) are alive
//! instead of 3 x tokens x vocabulary x 4 bytes: 12.6 GB for a micro-batch of 8 x 4096 tokens of
//! Llama-2's vocabulary. One chunk holds the whole batch when it fits, which is the plain pass.

use tch::{Kind, Tensor};

use super::eval::{batch_loss_sum, target_loss_sum};
use super::rows::Batch;
use super::TrainError;
use crate::model::llama::Llama;
use crate::plan::memory::head_chunk_rows;
#[cfg(doc)]
use crate::plan::memory::LOGIT_CHUNK_BYTES;

/// Back-propagate `loss_sum(batch) / denom` into the model's gradients (accumulating) and return
/// that loss, with activation checkpointing when `checkpointed`.
pub fn backward(
    model: &Llama,
    batch: &Batch,
    denom: f64,
    checkpointed: bool,
) -> Result<f64, TrainError> {
    backward_in_chunks(
        model,
        batch,
        denom,
        checkpointed,
        head_chunk_rows(model.cfg.vocab_size),
    )
}

/// [`backward`] with the head run over chunks of `chunk_rows` rows.
fn backward_in_chunks(
    model: &Llama,
    batch: &Batch,
    denom: f64,
    checkpointed: bool,
    chunk_rows: usize,
) -> Result<f64, TrainError> {
    let device = model.vs.device();
    let chunked = batch.targets.numel() > chunk_rows;
    if !checkpointed && !chunked {
        let (loss, _) = batch_loss_sum(model, batch, true)?;
        let loss = loss.f_div_scalar(denom)?;
        loss.f_backward()?;
        return Ok(loss.f_double_value(&[])?);
    }
    let tokens = batch.inputs.f_to_device(device)?;
    let targets = batch.targets.f_to_device(device)?.f_view([-1])?;
    if !checkpointed {
        // The blocks with their graph; the head in chunks from a leaf, whose gradient then
        // flows back through the blocks.
        let last = model.body_forward(&tokens, true)?;
        let (value, g) = head_backward(model, &last, &targets, denom, chunk_rows)?;
        last.f_mul(&g)?.f_sum(Kind::Float)?.f_backward()?;
        return Ok(value);
    }
    let seeds = model.dropout_seeds(true)?;
    let n = model.num_blocks();
    let mut inputs = Vec::with_capacity(n);
    let last = {
        let _g = tch::no_grad_guard();
        let mut x = model.embed_forward(&tokens)?;
        for i in 0..n {
            let y = model.block_forward(i, &x, true, seeds)?;
            inputs.push(x);
            x = y;
        }
        x
    };
    let (value, mut g) = head_backward(model, &last, &targets, denom, chunk_rows)?;
    for i in (0..n).rev() {
        let x = inputs
            .pop()
            .ok_or_else(|| TrainError::Unsupported("checkpointing lost a block input".into()))?
            .f_detach()?
            .f_set_requires_grad(true)?;
        let y = model.block_forward(i, &x, true, seeds)?;
        y.f_mul(&g)?.f_sum(Kind::Float)?.f_backward()?;
        g = x.f_grad()?;
    }
    model.end_dropout(seeds);
    if model.embed_trains() {
        let e: Tensor = model.embed_forward(&tokens)?;
        e.f_mul(&g)?.f_sum(Kind::Float)?.f_backward()?;
    }
    Ok(value)
}

/// Back-propagate the head's loss sum / `denom` on the last block's output `last` (B, T, d)
/// against the flat targets into the head's gradients, `chunk_rows` rows at a time; return that
/// loss and the gradient that reached `last`. Each chunk is a leaf of its own whose gradient is
/// copied into place (back-propagating through a narrow view of one leaf would add a whole
/// tokens x d gradient per chunk).
fn head_backward(
    model: &Llama,
    last: &Tensor,
    targets: &Tensor,
    denom: f64,
    chunk_rows: usize,
) -> Result<(f64, Tensor), TrainError> {
    let d = last.size().last().copied().unwrap_or(1);
    let flat = last.f_detach()?.f_view([-1, d])?;
    let rows = flat.size()[0];
    let grad = flat.f_zeros_like()?;
    let chunk = chunk_rows.max(1) as i64;
    let mut value = 0.0;
    let mut start = 0;
    while start < rows {
        let len = chunk.min(rows - start);
        let h = flat
            .f_narrow(0, start, len)?
            .f_detach()?
            .f_set_requires_grad(true)?;
        let logits = model.head_forward(&h)?;
        let loss =
            target_loss_sum(&logits, &targets.f_narrow(0, start, len)?)?.f_div_scalar(denom)?;
        loss.f_backward()?;
        value += loss.f_double_value(&[])?;
        let _g = tch::no_grad_guard();
        grad.f_narrow(0, start, len)?.f_copy_(&h.f_grad()?)?;
        start += len;
    }
    Ok((value, grad.f_view(last.size().as_slice())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Module;
    use crate::model::llama::tests::tiny_cfg;
    use crate::model::llama::{BuildOptions, LoraOptions};
    use tch::Device;

    fn grads(model: &Llama) -> Vec<(String, Tensor)> {
        model
            .trainable()
            .into_iter()
            .map(|(n, t)| (n, t.grad().copy()))
            .collect()
    }

    /// The same loss and the same gradient of every trainable tensor with and without
    /// checkpointing, and with the head in one chunk or several (within 1e-5 of the largest):
    /// full fine-tuning (tied embeddings: the embedding's gradient comes from both ends) and
    /// LoRA with dropout, whose masks must repeat.
    #[test]
    fn checkpointing_gives_the_same_loss_and_gradients() {
        crate::rng::alone(
            "train::recompute::tests::checkpointing_gives_the_same_loss_and_gradients",
            same_loss_and_gradients,
        );
    }

    fn same_loss_and_gradients() {
        let rows: Vec<_> = (0..3)
            .map(|r| {
                let ids: Vec<i64> = (0..17).map(|i| (i * 7 + r * 13) % 250 + 3).collect();
                (ids[..16].to_vec(), ids[1..].to_vec())
            })
            .collect();
        let batch = crate::train::rows::batch_of(&rows, 16).unwrap();
        let lora = LoraOptions {
            rank: 4,
            alpha: 8.0,
            targets: Module::ALL.to_vec(),
            dropout: 0.25,
            rslora: false,
        };
        for opts in [
            BuildOptions::default(),
            BuildOptions {
                lora: Some(lora),
                ..BuildOptions::default()
            },
        ] {
            let model = Llama::new(&tiny_cfg(), &opts, Device::Cpu).unwrap();
            // LoRA's B starts at zero: move it so that the adapters' gradients are not trivial.
            for (_, t) in model.trainable() {
                let _g = tch::no_grad_guard();
                let _ = t.shallow_clone().f_add_(&(t.randn_like() * 0.05)).unwrap();
            }
            let mut out = Vec::new();
            // Plain, then checkpointed, each with the head in one chunk and in chunks of 5 rows
            // of the 48 (the last one short).
            for (checkpointed, chunk) in [(false, 48), (true, 48), (false, 5), (true, 5)] {
                for (_, t) in model.trainable() {
                    t.shallow_clone().zero_grad();
                }
                tch::manual_seed(7);
                let loss = backward_in_chunks(&model, &batch, 40.0, checkpointed, chunk).unwrap();
                out.push((loss, grads(&model)));
            }
            let (l0, g0) = &out[0];
            for (l1, g1) in &out[1..] {
                assert!((l0 - l1).abs() < 1e-6, "loss {l0} vs {l1}");
                assert_eq!(g0.len(), g1.len());
                for ((name, a), (_, b)) in g0.iter().zip(g1) {
                    let scale = a.abs().max().double_value(&[]).max(1e-12);
                    let diff = (a - b).abs().max().double_value(&[]);
                    assert!(scale > 1e-9, "{name} has a gradient");
                    assert!(diff <= 1e-5 * scale, "{name}: {diff} of {scale}");
                }
            }
        }
    }
}
