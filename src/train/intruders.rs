//! Intruder dimensions (Shuttleworth et al., "LoRA vs Full Fine-tuning: An Illusion of
//! Equivalence", 2024): of the top k left singular vectors of a tuned matrix W0 + ΔW, those whose
//! largest |cosine| with every left singular vector of the base matrix W0 is below epsilon. LoRA
//! tends to make them and full fine-tuning mostly not; forgetting concentrates there.
//!
//! The base's singular vectors are taken once, when the run starts: from each adapter's frozen
//! weight (LoRA: the adapted matrices) or from each projection weight that trains (full
//! fine-tuning). Reported as `intruder_dimensions` (the mean count over matrices) and
//! `intruder_dimensions_<module>` (the mean over layers). LoRA measures its adapted modules and
//! full fine-tuning every projection, so compare the methods module by module.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::eval::Evaluator;
use super::spectral::module_of;
use super::TrainError;
use crate::model::llama::Llama;
use crate::model::tokenizer::Tokenizer;

/// Top singular vectors examined per matrix, as in the paper.
pub const DEFAULT_K: usize = 10;
/// The cosine below which a singular vector is an intruder, as in the paper.
pub const DEFAULT_EPSILON: f64 = 0.5;

/// Left singular vectors of `w` (columns, by decreasing singular value), computed in f64 and
/// kept in f32 on the CPU (a 7B model's bases would otherwise hold tens of GB on the GPU).
fn left_singular(w: &Tensor) -> Result<Tensor, TrainError> {
    let (u, _, _) = w.f_to_kind(Kind::Double)?.f_svd(true, true)?;
    Ok(u.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?)
}

/// How many of the top `k` left singular vectors of `tuned` have a largest |cosine| below
/// `epsilon` with every column of `base_u` (the base matrix's left singular vectors).
pub fn count_intruders(
    base_u: &Tensor,
    tuned: &Tensor,
    k: usize,
    epsilon: f64,
) -> Result<usize, TrainError> {
    Ok(intruders_among(&left_singular(tuned)?, base_u, k, epsilon)?.len())
}

/// The indices among the top `k` columns of `u` (a tuned matrix's left singular vectors) whose
/// largest |cosine| with every column of `base_u` is below `epsilon`.
fn intruders_among(
    u: &Tensor,
    base_u: &Tensor,
    k: usize,
    epsilon: f64,
) -> Result<Vec<i64>, TrainError> {
    let k = (k as i64).min(u.size()[1]);
    let top = u.f_narrow(1, 0, k)?.f_to_kind(Kind::Float)?;
    // (k, r): |cos| of each top vector with each base vector (all unit length).
    let cos = top
        .f_tr()?
        .f_matmul(&base_u.f_to_kind(Kind::Float)?)?
        .f_abs()?;
    let (best, _) = cos.f_max_dim(1, false)?;
    let best = Vec::<f64>::try_from(best.f_to_kind(Kind::Double)?)?;
    Ok((0..best.len() as i64)
        .filter(|&i| best[i as usize] < epsilon)
        .collect())
}

/// The part of `tuned` along its intruder dimensions, the sum of s_i u_i v_i^T over them
/// (computed in f64, returned in `tuned`'s kind and device); None when it has none. Scaling
/// the intruders' singular values by lambda is adding (lambda - 1) times this part.
pub fn intruder_part(
    base_u: &Tensor,
    tuned: &Tensor,
    k: usize,
    epsilon: f64,
) -> Result<Option<Tensor>, TrainError> {
    Ok(intruders_and_part(base_u, tuned, k, epsilon)?.1)
}

/// [`count_intruders`] and [`intruder_part`] from one SVD.
fn intruders_and_part(
    base_u: &Tensor,
    tuned: &Tensor,
    k: usize,
    epsilon: f64,
) -> Result<(usize, Option<Tensor>), TrainError> {
    let (u, s, v) = tuned.f_to_kind(Kind::Double)?.f_svd(true, true)?;
    let idx = intruders_among(&u.f_to_device(tch::Device::Cpu)?, base_u, k, epsilon)?;
    if idx.is_empty() {
        return Ok((0, None));
    }
    let count = idx.len();
    let idx = Tensor::f_from_slice(&idx)?.f_to_device(u.device())?;
    let ui = u.f_index_select(1, &idx)?;
    let si = s.f_index_select(0, &idx)?;
    let vi = v.f_index_select(1, &idx)?;
    let part = ui.f_mul(&si.f_unsqueeze(0)?)?.f_matmul(&vi.f_tr()?)?;
    Ok((
        count,
        Some(part.f_to_kind(tuned.kind())?.f_to_device(tuned.device())?),
    ))
}

/// The `intruder_dimensions` metrics of the counts per module: the mean over every matrix,
/// and per module; nothing when no matrix was measured.
fn intruder_metrics(per_module: BTreeMap<&'static str, Vec<usize>>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let all: Vec<usize> = per_module.values().flatten().copied().collect();
    if all.is_empty() {
        return out;
    }
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    out.insert("intruder_dimensions".to_string(), mean(&all));
    for (m, v) in per_module {
        out.insert(format!("intruder_dimensions_{m}"), mean(&v));
    }
    out
}

/// One matrix measured: its variable name (full fine-tuning) or adapter name (LoRA), and its
/// base's left singular vectors.
#[derive(Debug)]
struct Matrix {
    name: String,
    module: &'static str,
    base_u: Tensor,
}

/// The `intruder_dimensions` metrics.
#[derive(Debug)]
pub struct IntruderEval {
    matrices: Vec<Matrix>,
    lora: bool,
    k: usize,
    epsilon: f64,
}

impl IntruderEval {
    /// The base singular vectors of the matrices that will change.
    pub fn snapshot(model: &Llama, k: usize, epsilon: f64) -> Result<IntruderEval, TrainError> {
        let _g = tch::no_grad_guard();
        let mut matrices = Vec::new();
        let adapters = model.adapters();
        for (name, lora) in &adapters {
            if let Some(m) = module_of(name) {
                matrices.push(Matrix {
                    name: name.clone(),
                    module: m.name(),
                    base_u: left_singular(&lora.base)?,
                });
            }
        }
        if adapters.is_empty() {
            for (name, t) in model.trainable() {
                if let Some(m) = module_of(&name) {
                    matrices.push(Matrix {
                        name,
                        module: m.name(),
                        base_u: left_singular(&t)?,
                    });
                }
            }
        }
        Ok(IntruderEval {
            matrices,
            lora: !adapters.is_empty(),
            k,
            epsilon,
        })
    }
}

impl Evaluator for IntruderEval {
    // Which matrices are measured depends on the method and the adapted modules.
    fn of_outputs_only(&self) -> bool {
        false
    }

    fn evaluate(
        &self,
        model: &Llama,
        _: &Tokenizer,
        _: super::eval::Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let _g = tch::no_grad_guard();
        let adapters = model.adapters();
        let vars = model.vs.variables();
        let mut per_module: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
        for m in &self.matrices {
            let tuned = if self.lora {
                adapters.get(&m.name).map(|l| l.merge()).transpose()?
            } else {
                vars.get(&m.name).map(|t| t.f_detach()).transpose()?
            };
            let Some(tuned) = tuned else { continue };
            per_module
                .entry(m.module)
                .or_default()
                .push(count_intruders(&m.base_u, &tuned, self.k, self.epsilon)?);
        }
        Ok(intruder_metrics(per_module))
    }
}

/// Post-hoc intruder scaling (Shuttleworth et al.): for each lambda, the held-out losses with
/// the singular values of every measured matrix's intruder dimensions multiplied by lambda (0
/// removes them), as `intruders_x<lambda>_<loss>`: learning-forgetting points of the same run
/// with no retraining. The weights are restored, bit for bit, after each evaluation. With
/// `counts`, also the `intruder_dimensions` metrics of [`IntruderEval`], from the same SVDs
/// (one SVD per matrix per evaluation, not two).
#[derive(Debug)]
pub struct IntruderScalingEval {
    intruders: IntruderEval,
    lambdas: Vec<f64>,
    losses: Vec<super::eval::LossEval>,
    counts: bool,
}

impl IntruderScalingEval {
    /// The base singular vectors of the matrices that will change, and the losses to measure
    /// again at each lambda; with `counts`, the intruder counts are reported too.
    pub fn snapshot(
        model: &Llama,
        k: usize,
        epsilon: f64,
        lambdas: Vec<f64>,
        losses: Vec<super::eval::LossEval>,
        counts: bool,
    ) -> Result<IntruderScalingEval, TrainError> {
        Ok(IntruderScalingEval {
            intruders: IntruderEval::snapshot(model, k, epsilon)?,
            lambdas,
            losses,
            counts,
        })
    }

    /// The metric name of `metric` measured with the intruders scaled by `lambda`.
    pub fn name(lambda: f64, metric: &str) -> String {
        format!("intruders_x{lambda}_{metric}")
    }
}

impl Evaluator for IntruderScalingEval {
    fn of_outputs_only(&self) -> bool {
        false
    }

    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: super::eval::Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let _g = tch::no_grad_guard();
        let adapters = model.adapters();
        let vars = model.vs.variables();
        let ev = &self.intruders;
        // (the tensor to change in place, its value now, its intruders' part).
        let mut changed = Vec::new();
        let mut per_module: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
        for m in &ev.matrices {
            let (target, tuned) = if ev.lora {
                match adapters.get(&m.name) {
                    // LoRA computes base + s B A: moving the frozen base moves the sum.
                    Some(l) => (l.base.shallow_clone(), l.merge()?),
                    None => continue,
                }
            } else {
                match vars.get(&m.name) {
                    Some(t) => (t.shallow_clone(), t.f_detach()?),
                    None => continue,
                }
            };
            // Both kept on the CPU: a copy of every measured matrix would not fit beside a
            // large model on its GPU. Copying back restores the same bits.
            let (count, part) = intruders_and_part(&m.base_u, &tuned, ev.k, ev.epsilon)?;
            per_module.entry(m.module).or_default().push(count);
            if let Some(part) = part {
                let now = target.f_detach()?.f_to_device(tch::Device::Cpu)?.copy();
                let part = part.f_to_device(tch::Device::Cpu)?;
                changed.push((target, now, part));
            }
        }
        let measure = |out: &mut BTreeMap<String, f64>| -> Result<(), TrainError> {
            for &lambda in &self.lambdas {
                for (target, now, part) in &changed {
                    let mut t = target.shallow_clone();
                    t.f_copy_(
                        &now.f_add(&part.f_mul_scalar(lambda - 1.0)?)?
                            .f_to_device(t.device())?,
                    )?;
                }
                for loss in &self.losses {
                    for (metric, v) in loss.evaluate(model, tok, stop)? {
                        out.insert(Self::name(lambda, &metric), v);
                    }
                }
            }
            Ok(())
        };
        let mut out = if self.counts {
            intruder_metrics(per_module)
        } else {
            BTreeMap::new()
        };
        let measured = measure(&mut out);
        for (target, now, _) in &changed {
            let mut t = target.shallow_clone();
            t.f_copy_(now)?;
        }
        measured?;
        out.insert("intruder_scaling_matrices".into(), changed.len() as f64);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 16 x 24 base with singular values 16..1 on random orthonormal bases; the tuned matrix
    /// adds one direction of singular value 40 whose left vector is an even mix of the base's 5
    /// weakest left singular vectors (|cosine| 1/sqrt(5) = 0.447 with each) and whose right
    /// vector is outside the base's row space. Its top 10 left singular vectors are that
    /// intruder and the base's 9 strongest, unchanged (the mix is orthogonal to them).
    fn base_and_tuned() -> (Tensor, Tensor, Tensor) {
        let opts = (Kind::Double, tch::Device::Cpu);
        tch::manual_seed(3);
        let (q1, _) = Tensor::randn([16, 16], opts).qr(true);
        let (q2, _) = Tensor::randn([24, 24], opts).qr(true);
        let s = Tensor::arange_start_step(16, 0, -1, opts);
        let v = q2.narrow(1, 0, 16);
        let w0 = q1.matmul(&s.diag(0)).matmul(&v.tr());
        let mix = q1.narrow(1, 11, 5).sum_dim_intlist(1, false, Kind::Double) / 5f64.sqrt();
        let outside = q2.select(1, 20);
        let tuned = &w0 + mix.outer(&outside) * 40.0;
        (left_singular(&w0).unwrap(), w0, tuned)
    }

    #[test]
    fn a_matrix_built_with_one_intruder_has_one() {
        crate::rng::alone(
            "train::intruders::tests::a_matrix_built_with_one_intruder_has_one",
            || {
                let (base_u, w0, tuned) = base_and_tuned();
                assert_eq!(count_intruders(&base_u, &tuned, 10, 0.5).unwrap(), 1);
                assert_eq!(
                    count_intruders(&base_u, &w0, 10, 0.5).unwrap(),
                    0,
                    "unchanged"
                );
                // At epsilon 0.4 the mix (0.447 with each) no longer counts.
                assert_eq!(count_intruders(&base_u, &tuned, 10, 0.4).unwrap(), 0);
                // A small dense change rotates nothing far: no intruders.
                let noise = w0.randn_like() * 0.01;
                assert_eq!(
                    count_intruders(&base_u, &(&w0 + noise), 10, 0.5).unwrap(),
                    0
                );
            },
        );
    }

    /// On a model: LoRA measures its adapted matrices (none changed at the start: no intruders;
    /// a large random adapter update makes some), full fine-tuning every projection.
    #[test]
    fn the_evaluator_measures_the_adapted_matrices() {
        use crate::model::config::Module;
        use crate::model::llama::tests::tiny_cfg;
        use crate::model::llama::{BuildOptions, LoraOptions};
        let stop = std::sync::atomic::AtomicBool::new(false);
        let lora = LoraOptions {
            rank: 4,
            alpha: 8.0,
            targets: vec![Module::Q, Module::V],
            dropout: 0.0,
            rslora: false,
        };
        let opts = BuildOptions {
            lora: Some(lora),
            ..BuildOptions::default()
        };
        let model = Llama::new(&tiny_cfg(), &opts, tch::Device::Cpu).unwrap();
        let eval = IntruderEval::snapshot(&model, 10, 0.5).unwrap();
        assert_eq!(eval.matrices.len(), 2 * tiny_cfg().num_hidden_layers);
        let at_start = eval
            .evaluate(&model, &Tokenizer::Byte, Some(&stop))
            .unwrap();
        assert_eq!(at_start["intruder_dimensions"], 0.0, "{at_start:?}");
        assert!(
            at_start.contains_key("intruder_dimensions_q"),
            "{at_start:?}"
        );
        for (name, t) in model.trainable() {
            if name.contains("lora_B") {
                let _g = tch::no_grad_guard();
                let _ = t.shallow_clone().f_add_(&(t.randn_like() * 5.0)).unwrap();
            }
        }
        let moved = eval
            .evaluate(&model, &Tokenizer::Byte, Some(&stop))
            .unwrap();
        assert!(moved["intruder_dimensions"] > 0.0, "{moved:?}");
        let full = Llama::new(&tiny_cfg(), &BuildOptions::default(), tch::Device::Cpu).unwrap();
        let e = IntruderEval::snapshot(&full, 10, 0.5).unwrap();
        assert_eq!(e.matrices.len(), 7 * tiny_cfg().num_hidden_layers);
    }

    #[test]
    fn scaling_the_built_intruder_by_zero_removes_it() {
        crate::rng::alone(
            "train::intruders::tests::scaling_the_built_intruder_by_zero_removes_it",
            || {
                let (base_u, w0, tuned) = base_and_tuned();
                let part = intruder_part(&base_u, &tuned, 10, 0.5).unwrap().unwrap();
                // One direction of singular value about 40 (the built one, a little mixed).
                let s = Vec::<f64>::try_from(part.svd(true, true).1).unwrap();
                assert!((s[0] - 40.0).abs() < 2.0 && s[1] < 1e-6, "{:?}", &s[..3]);
                let removed = &tuned - &part;
                assert_eq!(count_intruders(&base_u, &removed, 10, 0.5).unwrap(), 0);
                let diff = f64::try_from((&removed - &w0).abs().max()).unwrap();
                assert!(diff < 2.0, "what is left is close to the base: {diff}");
                assert!(intruder_part(&base_u, &w0, 10, 0.5).unwrap().is_none());
            },
        );
    }

    /// On a LoRA model moved far from its base: lambda = 1 measures what the model measures
    /// unscaled, lambda = 0 something else, and the weights are the same bits afterwards.
    #[test]
    fn scaled_losses_restore_the_weights() {
        use crate::model::config::Module;
        use crate::model::llama::tests::tiny_cfg;
        use crate::model::llama::{BuildOptions, LoraOptions};
        use crate::train::eval::LossEval;
        let stop = std::sync::atomic::AtomicBool::new(false);
        tch::manual_seed(11);
        let opts = BuildOptions {
            lora: Some(LoraOptions {
                rank: 4,
                alpha: 8.0,
                targets: vec![Module::Q, Module::V],
                dropout: 0.0,
                rslora: false,
            }),
            ..BuildOptions::default()
        };
        let model = Llama::new(&tiny_cfg(), &opts, tch::Device::Cpu).unwrap();
        for (name, t) in model.trainable() {
            if name.contains("lora_B") {
                let _g = tch::no_grad_guard();
                let _ = t.shallow_clone().f_add_(&(t.randn_like() * 5.0)).unwrap();
            }
        }
        let rows: Vec<crate::train::rows::Row> = (0..3)
            .map(|r| {
                let x: Vec<i64> = (0..16).map(|i| (i * 7 + r * 3) % 250).collect();
                (x[..15].to_vec(), x[1..].to_vec())
            })
            .collect();
        let loss = LossEval {
            name: "target".into(),
            rows,
            seq_len: 15,
            micro_batch: 2,
        };
        let before: Vec<Tensor> = model.adapters().values().map(|l| l.base.copy()).collect();
        let plain = loss
            .evaluate(&model, &Tokenizer::Byte, Some(&stop))
            .unwrap();
        let eval = IntruderScalingEval::snapshot(
            &model,
            10,
            0.5,
            vec![1.0, 0.0],
            vec![loss.clone()],
            false,
        )
        .unwrap();
        let scaled = eval
            .evaluate(&model, &Tokenizer::Byte, Some(&stop))
            .unwrap();
        assert!(scaled["intruder_scaling_matrices"] > 0.0, "{scaled:?}");
        assert!(!scaled.contains_key("intruder_dimensions"), "{scaled:?}");
        // With counts on, the intruder_dimensions metrics from the same SVDs are those the
        // counting evaluator measures, and the rest is unchanged.
        let counted =
            IntruderScalingEval::snapshot(&model, 10, 0.5, vec![1.0, 0.0], vec![loss], true)
                .unwrap()
                .evaluate(&model, &Tokenizer::Byte, Some(&stop))
                .unwrap();
        let counts = IntruderEval::snapshot(&model, 10, 0.5)
            .unwrap()
            .evaluate(&model, &Tokenizer::Byte, Some(&stop))
            .unwrap();
        assert!(counts["intruder_dimensions"] > 0.0, "{counts:?}");
        let mut want = scaled.clone();
        want.extend(counts);
        assert_eq!(counted, want);
        let (one, zero) = (
            scaled["intruders_x1_target_loss"],
            scaled["intruders_x0_target_loss"],
        );
        assert!(
            (one - plain["target_loss"]).abs() < 1e-5,
            "{one} vs {plain:?}"
        );
        assert!(
            (zero - one).abs() > 1e-4,
            "removing the intruders changes the loss: {zero}"
        );
        for (b, l) in before.iter().zip(model.adapters().values()) {
            assert!(
                b.equal(&l.base),
                "the base weights are restored bit for bit"
            );
        }
        let again = eval
            .evaluate(&model, &Tokenizer::Byte, Some(&stop))
            .unwrap();
        assert_eq!(again, scaled, "and measure the same again");
    }
}
