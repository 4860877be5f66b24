//! AdamW and LionW on tch tensors: decoupled weight decay (none on 1-D parameters such as norms
//! and biases), global gradient-norm clipping, and state that checkpoints can save. The updates
//! run through libtorch's fused and multi-tensor kernels ([`super::kernels`]) by default; the
//! hand-written per-tensor path is their reference.

use std::collections::HashMap;

use tch::Tensor;

use crate::spec::Optimizer;

use super::kernels::{self, Kernels};
use super::TrainError;

/// Optimizer hyperparameters (the learning rate comes per step from the schedule).
#[derive(Debug, Clone, PartialEq)]
pub struct OptimConfig {
    /// AdamW or LionW.
    pub kind: Optimizer,
    /// (beta1, beta2).
    pub betas: [f64; 2],
    /// AdamW's epsilon.
    pub eps: f64,
    /// Decoupled weight decay, multiplied by the learning rate (AdamW, LionW) or by the
    /// schedule's factor lr / peak_lr (DecoupledLionW).
    pub weight_decay: f64,
    /// The peak learning rate: DecoupledLionW's decay scales with lr / peak_lr.
    pub peak_lr: f64,
}

#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    decay: bool,
    /// The rank that updates it and holds its state (and, with sharded gradients, its
    /// reduced gradient).
    owner: usize,
    /// Whether this rank is its owner (every parameter, unsharded).
    owned: bool,
    exp_avg: Tensor,
    exp_avg_sq: Option<Tensor>,
}

/// An optimizer over named parameters that require grad.
#[derive(Debug)]
pub struct Optim {
    cfg: OptimConfig,
    params: Vec<Param>,
    steps: u64,
    /// Sharded over ranks (ZeRO stage 1): each rank holds the state of, and updates, the
    /// parameters it owns; the updated parameters are then summed over the ranks, the others
    /// contributing zeros, so that every rank has every parameter (exactly: x + 0 = x).
    sharded: bool,
    /// The reduced gradients sharded too (ZeRO stage 2): each micro-batch's gradients are
    /// reduced to their owners ([`Optim::reduce_grads`]) and freed on the other ranks.
    shard_grads: bool,
    /// Fused kernels or the per-tensor reference.
    kernels: Kernels,
    /// The step count as fused AdamW reads it: an f32 scalar on the parameters' device.
    step_tensor: Option<Tensor>,
}

/// The owner of each parameter among `ranks`: the largest first, each to the rank that holds
/// the fewest elements so far (ties to the lowest rank). Deterministic, so every rank agrees.
pub fn owners(sizes: &[i64], ranks: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let mut load = vec![0i64; ranks.max(1)];
    let mut owner = vec![0; sizes.len()];
    for i in order {
        let r = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
        load[r] += sizes[i];
        owner[i] = r;
    }
    owner
}

impl Optim {
    /// An optimizer over `params` (name, variable); state starts at zero.
    pub fn new(params: Vec<(String, Tensor)>, cfg: OptimConfig) -> Result<Optim, TrainError> {
        Optim::sharded(params, cfg, &crate::dist::World::single(), false)
    }

    /// An optimizer whose state is sharded over the ranks of `world` when `shard` (and the
    /// world has more than one rank): this rank keeps the state of the parameters it owns.
    pub fn sharded(
        params: Vec<(String, Tensor)>,
        cfg: OptimConfig,
        world: &crate::dist::World,
        shard: bool,
    ) -> Result<Optim, TrainError> {
        let sharded = shard && world.size() > 1;
        let sizes: Vec<i64> = params.iter().map(|(_, t)| t.numel() as i64).collect();
        let owner = owners(&sizes, if sharded { world.size() } else { 1 });
        let mut out = Vec::with_capacity(params.len());
        for ((name, tensor), owner) in params.into_iter().zip(owner) {
            let owned = !sharded || owner == world.rank();
            let state = || -> Result<Tensor, TrainError> {
                Ok(if owned {
                    tensor.f_zeros_like()?
                } else {
                    Tensor::f_empty([0], (tch::Kind::Float, tensor.device()))?
                })
            };
            let exp_avg = state()?;
            let exp_avg_sq = match cfg.kind {
                Optimizer::Adamw => Some(state()?),
                Optimizer::Lionw | Optimizer::DecoupledLionw => None,
            };
            out.push(Param {
                name,
                decay: tensor.dim() >= 2,
                owner: if sharded { owner } else { world.rank() },
                owned,
                tensor,
                exp_avg,
                exp_avg_sq,
            });
        }
        Ok(Optim {
            cfg,
            params: out,
            steps: 0,
            sharded,
            shard_grads: false,
            kernels: Kernels::Fused,
            step_tensor: None,
        })
    }

    /// The same optimizer with its gradients sharded too (ZeRO stage 2), where its state is
    /// sharded.
    pub fn with_sharded_gradients(mut self, on: bool) -> Optim {
        self.shard_grads = on && self.sharded;
        self
    }

    /// Whether the reduced gradients are sharded over the ranks.
    pub fn shards_gradients(&self) -> bool {
        self.shard_grads
    }

    /// The same optimizer with other kernels.
    pub fn with_kernels(mut self, kernels: Kernels) -> Optim {
        self.kernels = kernels;
        self
    }

    /// The gradients that are defined, with their parameters.
    fn grads(&self) -> Vec<(&Param, Tensor)> {
        self.params
            .iter()
            .map(|p| (p, p.tensor.grad()))
            .filter(|(_, g)| g.defined())
            .collect()
    }

    /// Each parameter by name, with the rank that owns it.
    pub fn owners(&self) -> impl Iterator<Item = (&str, &Tensor, usize)> {
        self.params
            .iter()
            .map(|p| (p.name.as_str(), &p.tensor, p.owner))
    }

    /// Bytes of optimizer state this rank holds.
    pub fn state_bytes(&self) -> u64 {
        self.params
            .iter()
            .flat_map(|p| std::iter::once(&p.exp_avg).chain(p.exp_avg_sq.as_ref()))
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum()
    }

    /// Bytes of gradients this rank holds now.
    pub fn grad_bytes(&self) -> u64 {
        self.grads()
            .iter()
            .map(|(_, g)| (g.numel() * g.kind().elt_size_in_bytes()) as u64)
            .sum()
    }

    /// Bytes of the parameters the optimizer updates (on every rank together).
    pub fn param_bytes(&self) -> u64 {
        self.params
            .iter()
            .map(|p| (p.tensor.numel() * p.tensor.kind().elt_size_in_bytes()) as u64)
            .sum()
    }

    /// Whether the state is sharded over ranks.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// After [`Optim::step`] of a sharded optimizer: every rank gets every updated parameter
    /// (one flat sum in which the parameters a rank does not own are zeros).
    pub fn share_updates(&mut self, world: &crate::dist::World) -> Result<(), TrainError> {
        if !self.sharded {
            return Ok(());
        }
        let _g = tch::no_grad_guard();
        let mut tensors: Vec<Tensor> = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let mut t = p.tensor.shallow_clone();
            if !p.owned {
                let _ = t.f_zero_()?;
            }
            tensors.push(t);
        }
        world.all_reduce_sum_flat(&mut tensors)?;
        Ok(())
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Zero every gradient.
    pub fn zero_grad(&mut self) -> Result<(), TrainError> {
        if self.kernels == Kernels::Fused {
            let grads: Vec<Tensor> = self.grads().into_iter().map(|(_, g)| g).collect();
            return kernels::foreach_zero(&grads.iter().collect::<Vec<_>>());
        }
        for p in &self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.f_detach_()?;
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// The global L2 norm of every gradient (of every rank's shard, when the gradients are
    /// sharded); when above `max_norm` (> 0), scale the gradients down to it. Returns the norm
    /// before clipping.
    pub fn clip_grad_norm(
        &mut self,
        max_norm: f64,
        world: &crate::dist::World,
    ) -> Result<f64, TrainError> {
        let _g = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.grads().into_iter().map(|(_, g)| g).collect();
        let refs: Vec<&Tensor> = grads.iter().collect();
        let local = if grads.is_empty() {
            0.0
        } else if self.kernels == Kernels::Fused {
            kernels::foreach_norm(&refs)?
        } else {
            // One device sync for the whole model, not one per parameter: the per-tensor norms
            // stay on the device until their norm is read.
            let norms: Vec<Tensor> = grads.iter().map(|g| g.f_norm()).collect::<Result<_, _>>()?;
            Tensor::f_stack(&norms, 0)?.f_norm()?.f_double_value(&[])?
        };
        // The shards are disjoint: the squares add up to the whole gradient's.
        let norm = if self.shard_grads {
            world.sum_f64(local * local)?.sqrt()
        } else {
            local
        };
        if max_norm > 0.0 && norm > max_norm && !grads.is_empty() {
            let factor = max_norm / (norm + 1e-6);
            if self.kernels == Kernels::Fused {
                kernels::foreach_mul(&refs, factor)?;
            } else {
                for g in &grads {
                    let _ = g.shallow_clone().f_mul_scalar_(factor)?;
                }
            }
        }
        Ok(norm)
    }

    /// Sum every gradient over the ranks of `world` in one flat bucket (a no-op for one rank).
    pub fn all_reduce_grads(&mut self, world: &crate::dist::World) -> Result<(), TrainError> {
        let mut grads: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(|g| g.defined())
            .collect();
        world.all_reduce_sum_flat(&mut grads)?;
        Ok(())
    }

    /// With sharded gradients, as a micro-batch's backward completes the gradients of the
    /// parameters `which` names: they are summed into their owners' (one flat bucket per owner,
    /// in the same order on every rank), and every other rank frees them, so that the next
    /// backward starts them from nothing. The owner's gradient keeps what earlier micro-batches
    /// summed, the others' only this one's: over micro-batches and ranks the sum is that of
    /// [`Optim::all_reduce_grads`]. Every rank must name the same parameters.
    pub fn reduce_grads(
        &mut self,
        world: &crate::dist::World,
        which: &dyn Fn(&str) -> bool,
    ) -> Result<(), TrainError> {
        let _g = tch::no_grad_guard();
        let chosen: Vec<&Param> = self.params.iter().filter(|p| which(&p.name)).collect();
        for root in 0..world.size() {
            let mine: Vec<&&Param> = chosen.iter().filter(|p| p.owner == root).collect();
            if mine.is_empty() {
                continue;
            }
            // A gradient this rank does not have (freed, or its parameter unused) adds zeros,
            // so that every rank's bucket has the same layout. An owner without one has a
            // parameter no rank's graph reached (the ranks run the same model): its sum is zero
            // and, as unsharded, the parameter is not updated.
            let mut grads: Vec<Tensor> = Vec::with_capacity(mine.len());
            for p in &mine {
                let g = p.tensor.grad();
                grads.push(if g.defined() {
                    g
                } else {
                    p.tensor.f_zeros_like()?
                });
            }
            world.reduce_sum_flat(&mut grads, root)?;
        }
        let others: Vec<&Tensor> = chosen
            .iter()
            .filter(|p| !p.owned)
            .map(|p| &p.tensor)
            .collect();
        kernels::free_grads(&others)
    }

    /// One update at learning rate `lr` from the current gradients.
    pub fn step(&mut self, lr: f64) -> Result<(), TrainError> {
        let _g = tch::no_grad_guard();
        self.steps += 1;
        if self.kernels == Kernels::Fused {
            return self.step_fused(lr);
        }
        let [b1, b2] = self.cfg.betas;
        let t = self.steps as i32;
        for p in &mut self.params {
            let g = p.tensor.grad();
            if !g.defined() || !p.owned {
                continue;
            }
            let mut w = p.tensor.shallow_clone();
            if p.decay && self.cfg.weight_decay > 0.0 {
                // LLM Foundry's DecoupledLionW: the decay follows the schedule, not the lr.
                let factor = match self.cfg.kind {
                    Optimizer::DecoupledLionw if self.cfg.peak_lr > 0.0 => lr / self.cfg.peak_lr,
                    _ => lr,
                };
                let _ = w.f_mul_scalar_(1.0 - factor * self.cfg.weight_decay)?;
            }
            match (self.cfg.kind, p.exp_avg_sq.as_mut()) {
                (Optimizer::Adamw, Some(v)) => {
                    // m += (1-b1)(g-m); v += (1-b2)(g^2-v); w -= lr/bc1 m / (sqrt(v/bc2) + eps),
                    // in 8 kernels (in-place where possible: each launch costs on a GPU).
                    let _ = p.exp_avg.f_lerp_(&g, 1.0 - b1)?;
                    let _ = v.f_lerp_(&g.f_square()?, 1.0 - b2)?;
                    let bc1 = 1.0 - b1.powi(t);
                    let bc2 = 1.0 - b2.powi(t);
                    let mut denom = v.f_sqrt()?;
                    let _ = denom.f_div_scalar_(bc2.sqrt())?;
                    let _ = denom.f_add_scalar_(self.cfg.eps)?;
                    let _ = denom.f_mul_scalar_(-bc1 / lr)?;
                    let _ = w.f_addcdiv_(&p.exp_avg, &denom)?;
                }
                _ => {
                    // Lion: the sign of an interpolation of momentum and gradient, then the
                    // momentum moves towards the gradient with beta2.
                    let c = p
                        .exp_avg
                        .f_mul_scalar(b1)?
                        .f_add(&g.f_mul_scalar(1.0 - b1)?)?;
                    let _ = w.f_sub_(&c.f_sign()?.f_mul_scalar(lr)?)?;
                    let _ = p.exp_avg.f_mul_scalar_(b2)?;
                    let _ = p.exp_avg.f_add_(&g.f_mul_scalar(1.0 - b2)?)?;
                }
            }
        }
        Ok(())
    }

    /// [`Optim::step`] through the fused and multi-tensor kernels: one call for the parameters
    /// that decay and one for those that do not.
    fn step_fused(&mut self, lr: f64) -> Result<(), TrainError> {
        let cfg = self.cfg.clone();
        let steps = self.steps as f64;
        let held_step = self.step_tensor.take();
        let mine: Vec<(&Param, Tensor)> =
            self.grads().into_iter().filter(|(p, _)| p.owned).collect();
        let Some((first, _)) = mine.first() else {
            return Ok(());
        };
        let device = first.tensor.device();
        let step_tensor = match held_step {
            Some(t) if t.device() == device => t,
            _ => Tensor::f_zeros([], (tch::Kind::Float, device))?,
        };
        let _ = step_tensor.shallow_clone().f_fill_(steps)?;
        for decay in [true, false] {
            let group: Vec<&(&Param, Tensor)> =
                mine.iter().filter(|(p, _)| p.decay == decay).collect();
            if group.is_empty() {
                continue;
            }
            let params: Vec<&Tensor> = group.iter().map(|(p, _)| &p.tensor).collect();
            let grads: Vec<&Tensor> = group.iter().map(|(_, g)| g).collect();
            let m: Vec<&Tensor> = group.iter().map(|(p, _)| &p.exp_avg).collect();
            let wd = if decay { cfg.weight_decay } else { 0.0 };
            match cfg.kind {
                Optimizer::Adamw => {
                    let v: Vec<&Tensor> = group
                        .iter()
                        .filter_map(|(p, _)| p.exp_avg_sq.as_ref())
                        .collect();
                    kernels::fused_adamw(
                        &params,
                        &grads,
                        &m,
                        &v,
                        &step_tensor,
                        lr,
                        cfg.betas,
                        wd,
                        cfg.eps,
                    )?;
                }
                Optimizer::Lionw | Optimizer::DecoupledLionw => {
                    // LLM Foundry's DecoupledLionW: the decay follows the schedule, not the lr.
                    let factor = match cfg.kind {
                        Optimizer::DecoupledLionw if cfg.peak_lr > 0.0 => lr / cfg.peak_lr,
                        _ => lr,
                    };
                    kernels::foreach_lion(&params, &grads, &m, lr, cfg.betas, 1.0 - factor * wd)?;
                }
            }
        }
        drop(mine);
        self.step_tensor = Some(step_tensor);
        Ok(())
    }

    /// The state tensors by name (`exp_avg.<param>`, `exp_avg_sq.<param>`), for a checkpoint:
    /// of the parameters this rank owns (all of them, unsharded).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in self.params.iter().filter(|p| p.owned) {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.shallow_clone()));
            if let Some(v) = &p.exp_avg_sq {
                out.push((format!("exp_avg_sq.{}", p.name), v.shallow_clone()));
            }
        }
        out
    }

    /// Restore state saved by [`Optim::state_tensors`] after `steps` steps.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        steps: u64,
    ) -> Result<(), TrainError> {
        let _g = tch::no_grad_guard();
        let get = |key: String| {
            tensors
                .get(&key)
                .ok_or_else(|| TrainError::Checkpoint(format!("optimizer state lacks {key}")))
        };
        for p in self.params.iter_mut().filter(|p| p.owned) {
            p.exp_avg.f_copy_(get(format!("exp_avg.{}", p.name))?)?;
            if let Some(v) = p.exp_avg_sq.as_mut() {
                v.f_copy_(get(format!("exp_avg_sq.{}", p.name))?)?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-element parameter whose gradient is set to `g` by a linear loss.
    fn set_grad(opt: &mut Optim, p: &Tensor, g: [f32; 2]) {
        opt.zero_grad().unwrap();
        let loss = (p * Tensor::from_slice(&g)).sum(tch::Kind::Float);
        loss.backward();
    }

    fn values(p: &Tensor) -> Vec<f64> {
        Vec::<f32>::try_from(p.detach().flatten(0, -1))
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    fn close(a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-6, "{a:?} != {b:?}");
        }
    }

    fn param() -> Tensor {
        // A 2-D parameter so that weight decay applies.
        Tensor::from_slice(&[1.0f32, -2.0])
            .reshape([1, 2])
            .set_requires_grad(true)
    }

    /// Owners balance the elements over the ranks, the same way on every rank.
    #[test]
    fn owners_balance_the_state() {
        let sizes = [100, 10, 10, 60, 30, 1];
        let o = owners(&sizes, 2);
        assert_eq!(o, owners(&sizes, 2), "deterministic");
        let load = |r: usize| -> i64 { (0..6).filter(|&i| o[i] == r).map(|i| sizes[i]).sum() };
        assert_eq!((load(0), load(1)), (110, 101));
        assert_eq!(owners(&sizes, 1), vec![0; 6]);
        let p = param();
        let world = crate::dist::World::single();
        let cfg = OptimConfig {
            kind: Optimizer::Adamw,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            peak_lr: 1.0,
        };
        let one = Optim::sharded(vec![("w".into(), p)], cfg, &world, true).unwrap();
        assert!(!one.is_sharded(), "one rank: nothing to shard");
        assert_eq!(one.state_bytes(), 16, "exp_avg and exp_avg_sq of 2 f32");
    }

    #[test]
    fn adamw_step_by_hand() {
        let p = param();
        let cfg = OptimConfig {
            kind: Optimizer::Adamw,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            peak_lr: 1.0,
        };
        let mut opt = Optim::new(vec![("p".into(), p.shallow_clone())], cfg).unwrap();
        set_grad(&mut opt, &p, [0.5, -0.1]);
        opt.step(0.1).unwrap();
        // decay: p * (1 - 0.1 * 0.01); the bias-corrected first step is lr * g / (|g| + eps).
        close(&values(&p), &[0.999 - 0.1, -1.998 + 0.1]);
        // Second step with gradient (0.25, 0.1): m = 0.9*m1 + 0.1*g, v likewise.
        set_grad(&mut opt, &p, [0.25, 0.1]);
        opt.step(0.1).unwrap();
        let expect = |p0: f64, g1: f64, g2: f64| {
            let m = (0.9 * 0.1 * g1 + 0.1 * g2) / (1.0 - 0.81);
            let v = (0.999 * 0.001 * g1 * g1 + 0.001 * g2 * g2) / (1.0 - 0.999f64.powi(2));
            p0 * 0.999 - 0.1 * m / (v.sqrt() + 1e-8)
        };
        close(
            &values(&p),
            &[expect(0.899, 0.5, 0.25), expect(-1.898, -0.1, 0.1)],
        );
    }

    /// LLM Foundry's DecoupledLionW: the same sign update as Lion, but the weight decay per step
    /// is (lr / peak_lr) x wd, the schedule's factor, not lr x wd.
    #[test]
    fn decoupled_lionw_decays_by_the_schedule_factor() {
        let p = param();
        let cfg = OptimConfig {
            kind: Optimizer::DecoupledLionw,
            betas: [0.9, 0.99],
            eps: 0.0,
            weight_decay: 0.1,
            peak_lr: 0.2,
        };
        let mut opt = Optim::new(vec![("p".into(), p.shallow_clone())], cfg).unwrap();
        set_grad(&mut opt, &p, [0.5, -0.1]);
        // Halfway down the schedule: lr 0.1 of a 0.2 peak decays by 0.5 x 0.1 = 5%.
        opt.step(0.1).unwrap();
        close(&values(&p), &[1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1]);
        // At a learning rate of 1e-4 (a peak of 2e-4) the decay is still 0.5 x wd, where
        // torch-style Lion would decay by 1e-5.
        let q = param();
        let mut opt = Optim::new(
            vec![("q".into(), q.shallow_clone())],
            OptimConfig {
                peak_lr: 2e-4,
                ..opt.cfg.clone()
            },
        )
        .unwrap();
        set_grad(&mut opt, &q, [0.5, -0.1]);
        opt.step(1e-4).unwrap();
        close(&values(&q), &[0.95 - 1e-4, -1.9 + 1e-4]);
    }

    #[test]
    fn lionw_steps_by_hand() {
        let p = param();
        let cfg = OptimConfig {
            kind: Optimizer::Lionw,
            betas: [0.9, 0.99],
            eps: 0.0,
            weight_decay: 0.1,
            peak_lr: 1.0,
        };
        let mut opt = Optim::new(vec![("p".into(), p.shallow_clone())], cfg).unwrap();
        set_grad(&mut opt, &p, [0.5, -0.1]);
        opt.step(0.1).unwrap();
        close(&values(&p), &[0.89, -1.88]);
        // m = 0.01 g1 = (0.005, -0.001); c = 0.9 m + 0.1 g2 = (0.0035, 0.0291): both positive.
        set_grad(&mut opt, &p, [-0.01, 0.3]);
        opt.step(0.1).unwrap();
        close(&values(&p), &[0.89 * 0.99 - 0.1, -1.88 * 0.99 - 0.1]);
        let state = opt.state_tensors();
        assert_eq!(state.len(), 1);
        close(
            &values(&state[0].1),
            &[0.99 * 0.005 - 0.0001, -0.99 * 0.001 + 0.003],
        );
    }

    #[test]
    fn no_decay_on_vectors_and_clipping() {
        let v = Tensor::from_slice(&[3.0f32, 4.0]).set_requires_grad(true);
        let cfg = OptimConfig {
            kind: Optimizer::Lionw,
            betas: [0.9, 0.99],
            eps: 0.0,
            weight_decay: 0.5,
            peak_lr: 1.0,
        };
        let mut opt = Optim::new(vec![("n.weight".into(), v.shallow_clone())], cfg).unwrap();
        set_grad(&mut opt, &v, [3.0, 4.0]);
        let norm = opt
            .clip_grad_norm(1.0, &crate::dist::World::single())
            .unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        close(&values(&v.grad()), &[0.6, 0.8]);
        opt.step(0.1).unwrap();
        close(&values(&v), &[2.9, 3.9]);
    }

    /// libtorch's fused AdamW and multi-tensor LionW make the updates of the hand-written
    /// reference: parameters that decay and those that do not, several steps, clipping, state.
    #[test]
    fn fused_kernels_update_as_the_reference_does() {
        let shapes: [&[i64]; 4] = [&[8, 16], &[16], &[3, 5, 7], &[32]];
        for kind in [
            Optimizer::Adamw,
            Optimizer::Lionw,
            Optimizer::DecoupledLionw,
        ] {
            let run = |kernels: Kernels| -> (Vec<Vec<f64>>, Vec<Vec<f64>>, Vec<f64>) {
                // Values from the project's own generator: libtorch's global one is shared with
                // tests on other threads.
                let params: Vec<(String, Tensor)> = shapes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let n = s.iter().product::<i64>() as usize;
                        let v = crate::rng::Rng::new(3, i as u64).normal_vec(n, 0.0, 1.0);
                        let t = Tensor::from_slice(&v).reshape(*s);
                        (format!("p{i}"), t.set_requires_grad(true))
                    })
                    .collect();
                let cfg = OptimConfig {
                    kind,
                    betas: [0.9, 0.95],
                    eps: 1e-8,
                    weight_decay: 0.1,
                    peak_lr: 2e-2,
                };
                let shallow = params
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect();
                let mut opt = Optim::new(shallow, cfg).unwrap().with_kernels(kernels);
                let start = values(&params[0].1);
                let mut norms = Vec::new();
                for step in 0..5 {
                    opt.zero_grad().unwrap();
                    let loss: Tensor = params
                        .iter()
                        .enumerate()
                        .map(|(i, (_, p))| {
                            (p * p * (i as f64 + 1.0) + p.sin()).sum(tch::Kind::Float)
                        })
                        .fold(Tensor::from(0.0f32), |a, b| a + b);
                    loss.backward();
                    norms.push(
                        opt.clip_grad_norm(
                            if step % 2 == 0 { 1.0 } else { 0.0 },
                            &crate::dist::World::single(),
                        )
                        .unwrap(),
                    );
                    opt.step(2e-2 * (1.0 - 0.1 * step as f64)).unwrap();
                }
                let moved = values(&params[0].1)
                    .iter()
                    .zip(&start)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(
                    moved > 1e-2,
                    "{kind:?} with {kernels:?} moved the parameters by {moved}"
                );
                let state = opt.state_tensors().iter().map(|(_, t)| values(t)).collect();
                (
                    params.iter().map(|(_, p)| values(p)).collect(),
                    state,
                    norms,
                )
            };
            let (p_ref, s_ref, n_ref) = run(Kernels::Reference);
            let (p_fused, s_fused, n_fused) = run(Kernels::Fused);
            for (a, b) in p_ref.iter().zip(&p_fused).chain(s_ref.iter().zip(&s_fused)) {
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                        "{kind:?}: {x} vs {y}"
                    );
                }
            }
            for (x, y) in n_ref.iter().zip(&n_fused) {
                assert!((x - y).abs() <= 1e-5 * x.abs(), "{kind:?} norm: {x} vs {y}");
            }
        }
    }
}
