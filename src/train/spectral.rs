//! The spectral rank of the weight change: how many singular directions of ΔW explain a share
//! of its squared singular values (the paper's "full fine-tuning learns high-rank changes").
//!
//! For LoRA ΔW is the adapter's s·B·A; for full fine-tuning it is W - W₀, against a copy of the
//! projection weights taken before training.

use std::collections::{BTreeMap, HashMap};

use tch::{Kind, Tensor};

use super::eval::Evaluator;
use super::TrainError;
use crate::model::config::Module;
use crate::model::llama::Llama;
use crate::model::tokenizer::Tokenizer;

/// The smallest k whose top-k squared singular values reach `share` of their sum (0 for a
/// zero matrix). `singular` may be in any order.
pub fn rank_for_share(singular: &[f64], share: f64) -> usize {
    let mut sq: Vec<f64> = singular.iter().map(|s| s * s).collect();
    sq.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sq.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return 0;
    }
    let mut acc = 0.0;
    for (i, v) in sq.iter().enumerate() {
        acc += v;
        if acc >= share * total * (1.0 - 1e-12) {
            return i + 1;
        }
    }
    sq.len()
}

/// Spectral rank of the weight change of every projection, reported as `spectral_rank` (the
/// mean over matrices) and `spectral_rank_<module>` (the mean over layers), beside
/// `spectral_rank_random`: the same mean for Gaussian random matrices of the same shapes (the
/// paper's baseline; the rank for a share of the variance does not depend on the norm).
#[derive(Debug)]
pub struct SpectralRankEval {
    /// Projection weights before training, by name (full fine-tuning); empty for LoRA.
    pub base: HashMap<String, Tensor>,
    /// Share of the squared singular values to explain.
    pub threshold: f64,
    /// Mean rank of Gaussian matrices shaped like the measured ones (None: nothing measured).
    pub random: Option<f64>,
}

/// The rank for `share` of a seeded Gaussian matrix of shape (rows, cols).
pub fn gaussian_rank(rows: usize, cols: usize, share: f64) -> Result<usize, TrainError> {
    let mut rng = crate::rng::Rng::new(0x5eed, (rows * 1_000_003 + cols) as u64);
    let m = Tensor::f_from_slice(&rng.normal_vec(rows * cols, 0.0, 1.0))?
        .f_reshape([rows as i64, cols as i64])?;
    Ok(rank_for_share(&singular_values(&m)?, share))
}

impl SpectralRankEval {
    /// Copy the projection weights of `model` that train (full fine-tuning).
    pub fn snapshot(model: &Llama, threshold: f64) -> Result<SpectralRankEval, TrainError> {
        let _g = tch::no_grad_guard();
        let mut base = HashMap::new();
        for (name, t) in model.trainable() {
            if module_of(&name).is_some() && !name.contains(".lora_") {
                // Multiplying by one makes a fresh tensor that training will not update.
                base.insert(name, t.f_detach()?.f_mul_scalar(1.0)?);
            }
        }
        // The shapes that `evaluate` will measure: the adapters' (LoRA) or the copied weights'.
        let mut shapes: Vec<Vec<i64>> = Vec::new();
        for (name, lora) in model.adapters() {
            if module_of(&name).is_some() {
                shapes.push(lora.delta()?.size());
            }
        }
        shapes.extend(base.values().map(|t| t.size()));
        let mut cache: HashMap<Vec<i64>, usize> = HashMap::new();
        let mut ranks = Vec::with_capacity(shapes.len());
        for sh in shapes.into_iter().filter(|s| s.len() == 2) {
            let r = match cache.get(&sh) {
                Some(r) => *r,
                None => {
                    let r = gaussian_rank(sh[0] as usize, sh[1] as usize, threshold)?;
                    cache.insert(sh.clone(), r);
                    r
                }
            };
            ranks.push(r as f64);
        }
        let random = (!ranks.is_empty()).then(|| ranks.iter().sum::<f64>() / ranks.len() as f64);
        Ok(SpectralRankEval {
            base,
            threshold,
            random,
        })
    }
}

/// The module of a projection weight's name (`...self_attn.q_proj.weight` -> Q).
pub(super) fn module_of(name: &str) -> Option<Module> {
    let stem = name.strip_suffix(".weight").unwrap_or(name);
    Module::ALL
        .into_iter()
        .find(|m| stem.ends_with(m.hf_path()))
}

fn singular_values(delta: &Tensor) -> Result<Vec<f64>, TrainError> {
    let (_, s, _) = delta.f_to_kind(Kind::Double)?.f_svd(true, false)?;
    Ok(Vec::<f64>::try_from(s)?)
}

impl Evaluator for SpectralRankEval {
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
        let mut per_module: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
        for (name, lora) in model.adapters() {
            if let Some(m) = module_of(&name) {
                let s = singular_values(&lora.delta()?)?;
                per_module
                    .entry(m.name())
                    .or_default()
                    .push(rank_for_share(&s, self.threshold));
            }
        }
        let vars = model.vs.variables();
        for (name, w0) in &self.base {
            if let (Some(m), Some(w)) = (module_of(name), vars.get(name)) {
                let s = singular_values(&w.f_sub(w0)?)?;
                per_module
                    .entry(m.name())
                    .or_default()
                    .push(rank_for_share(&s, self.threshold));
            }
        }
        let mut out = BTreeMap::new();
        let all: Vec<usize> = per_module.values().flatten().copied().collect();
        if all.is_empty() {
            return Ok(out);
        }
        let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
        out.insert("spectral_rank".to_string(), mean(&all));
        if let Some(r) = self.random {
            out.insert("spectral_rank_random".to_string(), r);
        }
        for (m, v) in per_module {
            out.insert(format!("spectral_rank_{m}"), mean(&v));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_for_share_by_hand() {
        // squares 9, 4, 1 (sum 14): 9/14 = 0.64, 13/14 = 0.93.
        assert_eq!(rank_for_share(&[1.0, 3.0, 2.0], 0.5), 1);
        assert_eq!(rank_for_share(&[1.0, 3.0, 2.0], 0.9), 2);
        assert_eq!(rank_for_share(&[1.0, 3.0, 2.0], 1.0), 3);
        assert_eq!(rank_for_share(&[0.0, 0.0], 0.9), 0);
    }

    #[test]
    fn a_gaussian_matrix_needs_about_half_its_rank_for_90_percent() {
        // The paper's baseline: about 51% of full rank for a square Gaussian matrix.
        let r = gaussian_rank(128, 128, 0.9).unwrap();
        assert!((55..=75).contains(&r), "{r} of 128");
        assert_eq!(r, gaussian_rank(128, 128, 0.9).unwrap(), "seeded");
    }

    #[test]
    fn low_rank_change_has_low_spectral_rank() {
        let a = Tensor::randn([8, 2], (Kind::Float, tch::Device::Cpu));
        let b = Tensor::randn([2, 10], (Kind::Float, tch::Device::Cpu));
        let s = singular_values(&a.matmul(&b)).unwrap();
        assert_eq!(s.len(), 8);
        assert_eq!(rank_for_share(&s, 0.999_999), 2);
    }
}
