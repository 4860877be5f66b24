//! What one rank of a run holds at its peak, before anything runs: weights, gradients, optimizer
//! state and activations, from the trainer's own layout (f32 master weights; bf16 compute halves
//! what the matmuls keep for the backward pass), at the run's micro-batch, world size, sharding
//! and checkpointing. An estimate: `scripts/bench-memory` prints it beside measured peaks.

use super::run::TrainingConfig;
use super::MethodConfig;
use crate::model::config::LlamaConfig;
use crate::spec::{Optimizer, Precision};

/// Bytes a process of the trainer holds besides the model's tensors (libtorch, the data, the
/// tokenizer), measured on the CPU: the peak RSS of runs minus their tensors.
pub const PROCESS_BYTES: f64 = 350e6;

/// Logits alive at once in a training step, at most (unless one row of them is larger): the
/// trainer runs the head and its loss over chunks of this many bytes of f32 logits.
pub const LOGIT_CHUNK_BYTES: usize = 64 << 20;

/// Rows (tokens) of the residual stream per head chunk for a vocabulary of `vocab`.
pub fn head_chunk_rows(vocab: usize) -> usize {
    (LOGIT_CHUNK_BYTES / (vocab.max(1) * 4)).max(1)
}

/// The per-rank memory of one run shape, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Memory {
    /// Every parameter in f32 (the base model and the adapters).
    pub weights: f64,
    /// A gradient for every trainable parameter (f32). Sharded too (ZeRO stage 2) with
    /// activation checkpointing, which reduces them block by block: 1/N of them per rank and one
    /// block's; without checkpointing the backward holds them all before they are reduced.
    pub gradients: f64,
    /// AdamW's two moments or LionW's one, per trainable parameter (f32); 1/N of it per rank
    /// when sharded.
    pub optimizer: f64,
    /// What the forward pass keeps for the backward pass of one micro-batch, the logits and
    /// their gradient included.
    pub activations: f64,
}

impl Memory {
    /// Everything, the process's own bytes included.
    pub fn total(&self) -> f64 {
        self.weights + self.gradients + self.optimizer + self.activations + PROCESS_BYTES
    }
}

/// The trainable parameters of a method on a shape.
pub fn trainable_params(shape: &LlamaConfig, method: &MethodConfig, t: &TrainingConfig) -> u64 {
    match method {
        MethodConfig::Full if t.freeze_embeddings_and_norms => {
            let d = shape.hidden_size as u64;
            shape.matmul_params() - shape.vocab_size as u64 * d
        }
        MethodConfig::Full => shape.total_params(),
        MethodConfig::Lora {
            rank,
            target_modules,
            ..
        } => shape.lora_params(target_modules, *rank as usize),
    }
}

/// Full fine-tuning's trainable parameters outside the transformer blocks: the embeddings, the
/// untied head and the final norm.
fn outside_blocks(shape: &LlamaConfig, t: &TrainingConfig) -> f64 {
    if t.freeze_embeddings_and_norms {
        return 0.0;
    }
    let (v, d) = (shape.vocab_size as f64, shape.hidden_size as f64);
    let heads = if shape.tie_word_embeddings { 1.0 } else { 2.0 };
    heads * v * d + d
}

/// The estimate for one rank of a run of `method` with training settings `t`, on a GPU
/// (`precision = "auto"` computes in bf16 there) or on the CPU (f32).
pub fn estimate(
    shape: &LlamaConfig,
    method: &MethodConfig,
    t: &TrainingConfig,
    on_gpu: bool,
) -> Memory {
    let trainable = trainable_params(shape, method, t) as f64;
    let adapters = match method {
        MethodConfig::Full => 0.0,
        MethodConfig::Lora { .. } => trainable,
    };
    let states = match t.optimizer {
        Optimizer::Adamw => 2.0,
        Optimizer::Lionw | Optimizer::DecoupledLionw => 1.0,
    };
    let ranks = f64::from(t.ranks().max(1));
    let shards = if t.shard_optimizer { ranks } else { 1.0 };
    // Activations of one micro-batch of T tokens. Per block, what autograd keeps: the residual
    // stream and the normed inputs, q/k/v and the attention output (about 8 x d per token), and
    // the MLP's gate, activation, up and product (4 x ff per token), in the compute kind; the
    // logits, their log-softmax and gradient in f32 (3 x vocab per token) of one head chunk,
    // and when the head runs in chunks, the last block's output as a leaf and its gradient.
    let tokens = (t.micro_batch_size * t.seq_len) as f64;
    let (d, ff, v) = (
        shape.hidden_size as f64,
        shape.intermediate_size as f64,
        shape.vocab_size as f64,
    );
    let bf16 = t.precision == Precision::Bf16 || (on_gpu && t.precision == Precision::Auto);
    let compute = if bf16 { 2.0 } else { 4.0 };
    let per_block = tokens * (8.0 * d + 4.0 * ff) * compute;
    let layers = shape.num_hidden_layers as f64;
    let blocks = if t.activation_checkpointing {
        // Each block's input (f32), and one block's activations while it is recomputed.
        layers * tokens * d * 4.0 + per_block
    } else {
        layers * per_block
    };
    let chunk = (head_chunk_rows(shape.vocab_size) as f64).min(tokens);
    let head = 3.0 * chunk * v * 4.0
        + if chunk < tokens {
            2.0 * tokens * d * 4.0
        } else {
            0.0
        };
    Memory {
        weights: (shape.total_params() as f64 + adapters) * 4.0,
        gradients: if t.shard_optimizer && t.shard_gradients {
            // The blocks' gradients are reduced to their owners as the backward completes each
            // (the shim's hook), so at most about a block's are in flight besides this rank's
            // shard; the head's and the final norm's (and an embedding's) are whole on every
            // rank until the backward ends.
            let layers = shape.num_hidden_layers.max(1) as f64;
            let outside = match method {
                MethodConfig::Full => outside_blocks(shape, t),
                MethodConfig::Lora { .. } => 0.0,
            };
            let in_blocks = trainable - outside;
            (in_blocks / ranks + in_blocks / layers + outside) * 4.0
        } else {
            trainable * 4.0
        },
        optimizer: trainable * 4.0 * states / shards,
        activations: blocks + head,
    }
}

/// The bytes a checkpoint of a run writes: the trainable tensors (f32) and the whole optimizer
/// state (a sharded run's ranks write their shards at once, to the same filesystem).
pub fn checkpoint_bytes(shape: &LlamaConfig, method: &MethodConfig, t: &TrainingConfig) -> f64 {
    let m = estimate(shape, method, t, true);
    let shards = if t.shard_optimizer {
        f64::from(t.ranks().max(1))
    } else {
        1.0
    };
    trainable_params(shape, method, t) as f64 * 4.0 + m.optimizer * shards
}

/// What would make a run fit in `limit` bytes per GPU, if it does not: the changes a user can
/// make, each with its estimate, the most effective first.
pub fn what_fits(
    shape: &LlamaConfig,
    method: &MethodConfig,
    t: &TrainingConfig,
    limit: f64,
    on_gpu: bool,
) -> Vec<(String, f64)> {
    let mut options: Vec<(String, TrainingConfig)> = Vec::new();
    if !t.activation_checkpointing {
        let mut c = t.clone();
        c.activation_checkpointing = true;
        options.push(("training.activation_checkpointing = true".into(), c));
    }
    if !t.shard_optimizer && t.ranks() > 1 {
        let mut c = t.clone();
        c.shard_optimizer = true;
        options.push(("training.shard_optimizer = true".into(), c));
    }
    if !t.shard_gradients && t.ranks() > 1 {
        let mut c = t.clone();
        c.shard_optimizer = true;
        c.shard_gradients = true;
        options.push((
            "training.shard_optimizer and shard_gradients = true".into(),
            c.clone(),
        ));
        if !t.activation_checkpointing {
            c.activation_checkpointing = true;
            options.push((
                "training.shard_optimizer, shard_gradients and activation_checkpointing = true"
                    .into(),
                c,
            ));
        }
    }
    let mut micro = t.micro_batch_size / 2;
    while micro >= 1 {
        if t.batch_size
            .is_multiple_of(micro * u64::from(t.ranks().max(1)))
        {
            let mut c = t.clone();
            c.micro_batch_size = micro;
            options.push((format!("training.micro_batch_size = {micro}"), c));
            break;
        }
        micro /= 2;
    }
    let mut both = t.clone();
    both.activation_checkpointing = true;
    both.shard_optimizer = t.ranks() > 1;
    both.shard_gradients = t.ranks() > 1;
    both.micro_batch_size = 1.max(t.micro_batch_size / 2);
    if both != *t {
        options.push(("all of these".into(), both));
    }
    let mut out: Vec<(String, f64)> = options
        .into_iter()
        .map(|(what, c)| (what, estimate(shape, method, &c, on_gpu).total()))
        .filter(|(_, bytes)| *bytes <= limit)
        .collect();
    out.sort_by(|a, b| a.1.total_cmp(&b.1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Module;

    fn training(toml_text: &str) -> TrainingConfig {
        let spec: crate::spec::TrainingSpec = toml::from_str(toml_text).unwrap();
        TrainingConfig {
            optimizer: spec.optimizer,
            betas: [0.9, 0.999],
            eps: spec.eps,
            weight_decay: spec.weight_decay,
            schedule: spec.schedule,
            warmup_fraction: spec.warmup_fraction,
            warmup_steps: None,
            cooldown_fraction: spec.cooldown_fraction,
            cooldown_steps: None,
            t_scale: None,
            final_lr_fraction: spec.final_lr_fraction,
            batch_size: spec.batch_size,
            micro_batch_size: spec.micro_batch_size.unwrap_or(spec.batch_size),
            seq_len: spec.seq_len,
            grad_clip: spec.grad_clip,
            precision: spec.precision,
            rslora: false,
            freeze_embeddings_and_norms: false,
            max_loss: None,
            checkpoint_every: 0,
            log_every: 10,
            nodes: spec.nodes,
            ranks_per_node: spec.ranks_per_node,
            activation_checkpointing: spec.activation_checkpointing,
            shard_optimizer: spec.shard_optimizer,
            shard_gradients: spec.shard_gradients,
        }
    }

    /// A checkpoint holds the trainable tensors and the optimizer state: 12 bytes a parameter
    /// for full fine-tuning of Llama-2-7B with AdamW (81 GB), sharded or not (the shards are
    /// written at once), little for LoRA.
    #[test]
    fn checkpoint_bytes_are_the_trainable_tensors_and_the_state() {
        let shape = LlamaConfig::builtin("llama2-7b").unwrap();
        let t = training("");
        let full = checkpoint_bytes(&shape, &MethodConfig::Full, &t);
        assert!((full / 1e9 - 80.9).abs() < 0.5, "{full}");
        let sharded = training("ranks_per_node = 8\nshard_optimizer = true\nbatch_size = 64");
        let all_ranks = checkpoint_bytes(&shape, &MethodConfig::Full, &sharded);
        assert!(
            (all_ranks - full).abs() < 1e6,
            "{all_ranks}: the shards together"
        );
        let lora = MethodConfig::Lora {
            rank: 16,
            alpha: 32.0,
            target_modules: vec![Module::Q, Module::V],
            dropout: 0.0,
        };
        let l = checkpoint_bytes(&shape, &lora, &t);
        assert!((l / 1e6 - 100.7).abs() < 1.0, "{l}");
    }

    /// Llama-2-7B full fine-tuning with AdamW holds about 107 GB before activations (f32
    /// weights, gradients and two moments: 16 bytes per parameter); sharding the state over 8
    /// ranks leaves an eighth of the 54 GB of moments on each; LoRA's state is tiny.
    #[test]
    fn the_paper_scale_in_bytes() {
        let shape = LlamaConfig::builtin("llama2-7b").unwrap();
        let t = training(
            "batch_size = 192\nmicro_batch_size = 8\nseq_len = 4096\nprecision = \"bf16\"\n",
        );
        let full = estimate(&shape, &MethodConfig::Full, &t, true);
        let before = full.weights + full.gradients + full.optimizer;
        assert!((before / 1e9 - 107.8).abs() < 1.0, "{}", before / 1e9);
        let sharded = training("batch_size = 192\nmicro_batch_size = 8\nseq_len = 4096\nranks_per_node = 8\nshard_optimizer = true\n");
        let s = estimate(&shape, &MethodConfig::Full, &sharded, true);
        assert!((s.optimizer / full.optimizer - 0.125).abs() < 1e-9);
        assert_eq!(s.gradients, full.gradients, "stage 1 keeps every gradient");
        // ZeRO stage 2: an eighth of the blocks' gradients, one block's (of 32) in flight and
        // the embedding's and head's whole (Llama-2's are untied: 0.26B + 0.26B of 6.7B), with
        // or without checkpointing (the blocks' are reduced during the backward either way);
        // the checkpoint is the same.
        let mut stage2 = sharded.clone();
        stage2.shard_gradients = true;
        let no_ckpt = estimate(&shape, &MethodConfig::Full, &stage2, true);
        stage2.activation_checkpointing = true;
        let s2 = estimate(&shape, &MethodConfig::Full, &stage2, true);
        assert_eq!(no_ckpt.gradients, s2.gradients);
        let ratio = s2.gradients / full.gradients;
        let outside = 2.0 * 32000.0 * 4096.0 / 6.74e9;
        let want = (1.0 - outside) * (0.125 + 1.0 / 32.0) + outside;
        assert!((ratio - want).abs() < 0.01, "{ratio} vs {want}");
        assert_eq!(s2.optimizer, s.optimizer);
        let ck = |t| checkpoint_bytes(&shape, &MethodConfig::Full, t);
        assert!((ck(&stage2) - ck(&sharded)).abs() < 1.0);
        // Where only stage 2 saves enough, it is what the refusal offers.
        let limit = s2.total() + 1e6;
        let mut stage1_ckpt = sharded.clone();
        stage1_ckpt.activation_checkpointing = true;
        assert!(estimate(&shape, &MethodConfig::Full, &stage1_ckpt, true).total() > limit);
        let fits = what_fits(&shape, &MethodConfig::Full, &sharded, limit, true);
        assert!(
            fits.iter().any(|(w, _)| w.contains("shard_gradients")),
            "{fits:?}"
        );
        let lora = MethodConfig::Lora {
            rank: 16,
            alpha: 32.0,
            target_modules: Module::ALL.to_vec(),
            dropout: 0.0,
        };
        let l = estimate(&shape, &lora, &t, true);
        assert!(l.optimizer < 0.01 * full.optimizer);
        // Activations of a micro-batch of 8 x 4096 dominate LoRA; checkpointing cuts them.
        assert!(l.activations > l.weights, "{l:?}");
        let mut ck = t.clone();
        ck.activation_checkpointing = true;
        let lc = estimate(&shape, &lora, &ck, true);
        assert!(lc.activations < 0.25 * l.activations);
        // Checkpointed: 32 block inputs of 32,768 tokens x 4,096 in f32 (17.2 GB), one block
        // recomputed in bf16 (5.0 GB) and the head in 64 MiB chunks (0.2 GB, and 1.1 GB for the
        // last block's output and its gradient), not 12.6 GB of whole-batch logits.
        assert!(
            (lc.activations / 1e9 - 23.5).abs() < 0.2,
            "{}",
            lc.activations / 1e9
        );
        // What fits in 80 GB: checkpointing is the first thing to try for LoRA.
        let fits = what_fits(&shape, &lora, &t, 80e9, true);
        assert!(
            fits.iter()
                .any(|(w, _)| w.contains("activation_checkpointing")),
            "{fits:?}"
        );
    }
}
