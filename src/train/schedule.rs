//! Learning-rate schedules as pure functions of the optimizer step.
//!
//! Every schedule starts with a linear warmup to the peak over `warmup_steps`. Then: `cosine`
//! decays to `final_fraction * peak` at the last step; `inverse_sqrt` decays as
//! peak / sqrt(1 + (s - warmup) / t_scale) and, over the last `cooldown_steps`, falls linearly
//! from its value at the cooldown's start towards zero; `constant` holds the peak.
//!
//! `inverse_sqrt` is LLM Foundry's InverseSquareRootWithWarmupScheduler (the paper's CPT schedule)
//! step for step, with its defaults alpha_f_decay = alpha_f_cooldown = 0: at step s (the batches
//! done before it) the factor is s / warmup during the warmup (0 at the first step), then
//! 1 / sqrt((s - warmup + t_scale) / t_scale), then from the cooldown's start c (at least the
//! warmup's end) alpha_c * (1 - (s - c) / cooldown). The other schedules' warmups reach the peak
//! at the warmup's last step: step s uses peak * (s + 1) / warmup.

use crate::plan::run::TrainingConfig;
use crate::spec::Schedule;

/// A schedule with every length resolved to steps.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    /// Which curve.
    pub kind: Schedule,
    /// Peak learning rate.
    pub peak: f64,
    /// Optimizer steps of the whole run.
    pub total_steps: u64,
    /// Linear warmup steps.
    pub warmup_steps: u64,
    /// Inverse-sqrt time scale in steps (at least 1).
    pub t_scale: u64,
    /// Inverse-sqrt linear cooldown steps at the end.
    pub cooldown_steps: u64,
    /// Cosine's final learning rate as a fraction of the peak.
    pub final_fraction: f64,
}

impl LrSchedule {
    /// Resolve a run's training settings for a run of `total_steps` steps at `peak`.
    pub fn from_config(cfg: &TrainingConfig, peak: f64, total_steps: u64) -> LrSchedule {
        let warmup = cfg
            .warmup_steps
            .unwrap_or_else(|| (cfg.warmup_fraction * total_steps as f64).round() as u64)
            .min(total_steps);
        let cooldown = cfg
            .cooldown_steps
            .unwrap_or_else(|| (cfg.cooldown_fraction * total_steps as f64).round() as u64)
            .min(total_steps.saturating_sub(warmup));
        LrSchedule {
            kind: cfg.schedule,
            peak,
            total_steps,
            warmup_steps: warmup,
            t_scale: cfg.t_scale.unwrap_or(warmup).max(1),
            cooldown_steps: cooldown,
            final_fraction: cfg.final_lr_fraction,
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let done = match self.kind {
                Schedule::InverseSqrt => step,
                _ => step + 1,
            };
            return self.peak * done as f64 / self.warmup_steps as f64;
        }
        match self.kind {
            Schedule::Constant => self.peak,
            Schedule::Cosine => {
                let span = self
                    .total_steps
                    .saturating_sub(self.warmup_steps + 1)
                    .max(1);
                let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.peak * (self.final_fraction + (1.0 - self.final_fraction) * cos)
            }
            Schedule::InverseSqrt => {
                let decay = |s: u64| {
                    let since = s.saturating_sub(self.warmup_steps) as f64;
                    self.peak / (1.0 + since / self.t_scale as f64).sqrt()
                };
                let start = self.total_steps.saturating_sub(self.cooldown_steps);
                if self.cooldown_steps > 0 && step >= start {
                    let left = self.total_steps.saturating_sub(step) as f64;
                    decay(start) * left / self.cooldown_steps as f64
                } else {
                    decay(step)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: Schedule, total: u64, warmup: u64) -> LrSchedule {
        LrSchedule {
            kind,
            peak: 1.0,
            total_steps: total,
            warmup_steps: warmup,
            t_scale: 4,
            cooldown_steps: 4,
            final_fraction: 0.1,
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn warmup_is_linear() {
        let s = sched(Schedule::Constant, 10, 4);
        close(s.lr(0), 0.25);
        close(s.lr(1), 0.5);
        close(s.lr(3), 1.0);
        close(s.lr(9), 1.0);
    }

    #[test]
    fn cosine_by_hand() {
        // warmup 1, then 10 decay intervals from step 1 to step 11.
        let s = sched(Schedule::Cosine, 12, 1);
        close(s.lr(0), 1.0);
        close(s.lr(1), 1.0);
        // halfway: 0.1 + 0.9 * 0.5
        close(s.lr(6), 0.55);
        close(s.lr(11), 0.1);
        // no warmup, 9 steps: 8 intervals, so step 2 is a quarter of the way.
        let s = sched(Schedule::Cosine, 9, 0);
        let quarter = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos());
        close(s.lr(2), quarter);
        close(s.lr(8), 0.1);
    }

    /// LLM Foundry's InverseSquareRootWithWarmupScheduler, computed by hand from its definition
    /// (alpha_f_decay = alpha_f_cooldown = 0): t / t_warmup while t < t_warmup; then
    /// 1 / sqrt((t - t_warmup + t_scale) / t_scale) until t_cooldown_start = max(t_warmup,
    /// t_max - t_cooldown); then alpha_i + (t - t_cooldown_start) / t_cooldown * (0 - alpha_i).
    #[test]
    fn inverse_sqrt_with_cooldown_by_hand() {
        // warmup 4, t_scale 4, 20 steps, cooldown over the last 4 (steps 16..20).
        let s = sched(Schedule::InverseSqrt, 20, 4);
        close(s.lr(0), 0.0);
        close(s.lr(1), 0.25);
        close(s.lr(3), 0.75);
        close(s.lr(4), 1.0);
        close(s.lr(8), 1.0 / 2f64.sqrt());
        close(s.lr(16), 1.0 / 4f64.sqrt());
        close(s.lr(15), 1.0 / (1.0 + 11.0 / 4.0f64).sqrt());
        // cooldown: value at 16 is 0.5, falling linearly: step 16 -> 0.5 * 4/4, 18 -> 0.5 * 2/4
        close(s.lr(16), 0.5);
        close(s.lr(17), 0.375);
        close(s.lr(18), 0.25);
        close(s.lr(19), 0.125);
        // The paper's steps: t_scale 1000, warmup 1000, cooldown 5086, here 20,000 steps.
        let p = LrSchedule {
            t_scale: 1000,
            cooldown_steps: 5086,
            ..sched(Schedule::InverseSqrt, 20_000, 1000)
        };
        close(p.lr(500), 0.5);
        close(p.lr(1000), 1.0);
        close(p.lr(4000), 1.0 / 4f64.sqrt());
        let c = 20_000 - 5086;
        let alpha_i = 1.0 / ((c as f64 - 1000.0 + 1000.0) / 1000.0).sqrt();
        close(p.lr(c), alpha_i);
        close(p.lr(c + 2543), alpha_i * 0.5);
        close(p.lr(19_999), alpha_i / 5086.0);
    }

    #[test]
    fn resolves_from_training_config() {
        let cfg: TrainingConfig = serde_json::from_str(
            r#"{"optimizer":"adamw","betas":[0.9,0.999],"eps":1e-8,"weight_decay":0.0,
            "schedule":"inverse_sqrt","warmup_fraction":0.1,"warmup_steps":null,
            "cooldown_fraction":0.2,"t_scale":null,"final_lr_fraction":0.01,"batch_size":8,
            "micro_batch_size":8,"seq_len":128,"grad_clip":1.0,"precision":"auto","rslora":false,
            "freeze_embeddings_and_norms":false,"max_loss":null,"checkpoint_every":0,"log_every":10}"#,
        )
        .unwrap();
        let s = LrSchedule::from_config(&cfg, 3e-4, 100);
        assert_eq!((s.warmup_steps, s.t_scale, s.cooldown_steps), (10, 10, 20));
        assert_eq!(s.final_fraction, 0.01);
    }
}
