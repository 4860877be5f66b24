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
    let u = left_singular(tuned)?;
    let k = (k as i64).min(u.size()[1]);
    let top = u.f_narrow(1, 0, k)?;
    // (k, r): |cos| of each top vector with each base vector (all unit length).
    let cos = top.f_tr()?.f_matmul(base_u)?.f_abs()?;
    let (best, _) = cos.f_max_dim(1, false)?;
    let best = Vec::<f64>::try_from(best)?;
    Ok(best.iter().filter(|&&c| c < epsilon).count())
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
        let mut out = BTreeMap::new();
        let all: Vec<usize> = per_module.values().flatten().copied().collect();
        if all.is_empty() {
            return Ok(out);
        }
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
        out.insert("intruder_dimensions".to_string(), mean(&all));
        for (m, v) in per_module {
            out.insert(format!("intruder_dimensions_{m}"), mean(&v));
        }
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
}
