//! What a plan will cost: tokens, training FLOPs and GPU-hours at a given throughput.

use super::{MethodConfig, Plan, Point};
use crate::model::config::LlamaConfig;

/// Achieved FLOP/s per GPU assumed when neither a flag nor the cluster config gives one
/// (about 40% of an A100's bf16 peak).
pub const DEFAULT_TFLOPS: f64 = 125.0;

/// Training FLOPs per token of a point: 6N for full fine-tuning (forward 2N, backward 4N); for
/// LoRA the frozen weights need no weight gradients, so 4N plus 6 per adapter parameter. Both
/// add the attention score and value products, 6 x layers x seq_len x heads x head_dim (causal,
/// fwd+bwd).
pub fn flops_per_token(shape: &LlamaConfig, point: &Point, seq_len: u64) -> f64 {
    let n = shape.matmul_params() as f64;
    // The width attention computes in: heads x head_dim (Qwen3's differs from hidden_size).
    let width = (shape.num_attention_heads * shape.head_dim()) as f64;
    let attention = 6.0 * shape.num_hidden_layers as f64 * seq_len as f64 * width;
    match &point.method {
        MethodConfig::Full => 6.0 * n + attention,
        MethodConfig::Lora {
            rank,
            target_modules,
            ..
        } => 4.0 * n + 6.0 * shape.lora_params(target_modules, *rank as usize) as f64 + attention,
    }
}

/// Totals of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Cost {
    /// Runs.
    pub runs: u64,
    /// Distinct configurations.
    pub configs: u64,
    /// Training tokens over all runs (whole steps: a budget rounds up to the next step).
    pub tokens: u64,
    /// Training FLOPs over all runs (None when the model shape is unknown).
    pub flops: Option<f64>,
    /// GPU-hours at `tflops` (None when the shape is unknown).
    pub gpu_hours: Option<f64>,
    /// The throughput assumed, in TFLOP/s per GPU.
    pub tflops: f64,
}

/// Cost of the runs selected by `filter` (all runs: `|_| true`).
pub fn cost(plan: &Plan, tflops: f64, filter: impl Fn(&Point) -> bool) -> Cost {
    let seq = plan.shared.training.seq_len;
    let mut c = Cost {
        tflops,
        flops: plan.shape.as_ref().map(|_| 0.0),
        ..Cost::default()
    };
    let mut per_point = vec![0u64; plan.points.len()];
    for r in &plan.runs {
        per_point[r.point] += 1;
    }
    for (p, &n) in plan.points.iter().zip(&per_point) {
        if n == 0 || !filter(p) {
            continue;
        }
        c.configs += 1;
        c.runs += n;
        let trained = plan.shared.training.trained_tokens(p.token_budget);
        c.tokens += n * trained;
        if let (Some(f), Some(shape)) = (c.flops.as_mut(), plan.shape.as_ref()) {
            *f += n as f64 * trained as f64 * flops_per_token(shape, p, seq);
        }
    }
    c.gpu_hours = c.flops.map(|f| f / (tflops * 1e12) / 3600.0);
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Module;

    #[test]
    fn lora_costs_about_two_thirds_of_full() {
        let shape = LlamaConfig::builtin("llama2-7b").unwrap();
        let full = Point {
            method: MethodConfig::Full,
            learning_rate: 1e-5,
            token_budget: 1,
            eval_at: vec![1],
        };
        let lora = Point {
            method: MethodConfig::Lora {
                rank: 16,
                alpha: 32.0,
                target_modules: Module::ALL.to_vec(),
                dropout: 0.0,
            },
            ..full.clone()
        };
        let f = flops_per_token(&shape, &full, 4096);
        let l = flops_per_token(&shape, &lora, 4096);
        // 6N for N ~ 6.6e9 matmul parameters, plus attention.
        assert!(f > 6.0 * 6.5e9 && f < 6.0 * 7.5e9, "{f}");
        assert!((l / f - 0.68).abs() < 0.05, "ratio {}", l / f);
    }
}
