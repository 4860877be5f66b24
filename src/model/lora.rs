//! `LoraLinear`: a frozen base weight plus a trainable low-rank update, y = W x + s B(A(drop(x))).
//!
//! Variable names follow PEFT (`<module>.lora_A.weight`, `<module>.lora_B.weight`) so that an
//! adapter exports without a renaming table. A starts Kaiming-uniform (PEFT's bound 1/sqrt(in)),
//! B starts at zero, so a fresh adapter leaves the model's output exactly unchanged.

use tch::{nn, Kind, Tensor};

use super::ModelError;
use crate::rng::Rng;

/// x W^T with both cast to `kind`: the mixed-precision matmul of every projection, dense or
/// under an adapter. The cast is differentiable, so gradients reach f32 master weights in f32;
/// a cast to the tensor's own kind is free.
pub(crate) fn linear(x: &Tensor, w: &Tensor, kind: Kind) -> Result<Tensor, ModelError> {
    Ok(x.f_to_kind(kind)?
        .f_linear::<Tensor>(&w.f_to_kind(kind)?, None)?)
}

/// The scale of a LoRA update: alpha/r, or alpha/sqrt(r) with rsLoRA.
pub fn lora_scale(alpha: f64, rank: u64, rslora: bool) -> f64 {
    let r = rank.max(1) as f64;
    if rslora {
        alpha / r.sqrt()
    } else {
        alpha / r
    }
}

/// A linear layer with a frozen base weight and a low-rank adapter.
#[derive(Debug)]
pub struct LoraLinear {
    /// The frozen base weight, (out, in).
    pub base: Tensor,
    /// The down projection A, (r, in).
    pub a: Tensor,
    /// The up projection B, (out, r).
    pub b: Tensor,
    /// The scale s multiplying B A.
    pub scale: f64,
    /// Dropout probability on the adapter's input.
    pub dropout: f64,
}

impl LoraLinear {
    /// Register the adapter's variables under `path` (the module's path, e.g.
    /// `model.layers.0.self_attn.q_proj`) around an existing frozen `base` weight.
    pub fn new(
        path: &nn::Path,
        base: Tensor,
        rank: u64,
        scale: f64,
        dropout: f64,
        rng: &mut Rng,
    ) -> Result<LoraLinear, ModelError> {
        let size = base.size();
        let (out, inp) = match size.as_slice() {
            [o, i] => (*o, *i),
            _ => {
                return Err(ModelError::Config(format!(
                    "LoRA base must be 2-D, got {size:?}"
                )))
            }
        };
        let r = rank as i64;
        if r < 1 {
            return Err(ModelError::Config("LoRA rank must be at least 1".into()));
        }
        let bound = 1.0 / (inp as f64).sqrt();
        let a = Tensor::f_from_slice(&rng.uniform_vec((r * inp) as usize, -bound, bound))?
            .f_reshape([r, inp])?
            .f_to_device(path.device())?;
        let b = Tensor::f_zeros([out, r], (tch::Kind::Float, path.device()))?;
        let a = path.sub("lora_A").add("weight", a, true);
        let b = path.sub("lora_B").add("weight", b, true);
        Ok(LoraLinear {
            base,
            a,
            b,
            scale,
            dropout,
        })
    }

    /// y = x W^T + s (drop(x) A^T) B^T; dropout only when `train`; matmuls in `kind`.
    pub fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Result<Tensor, ModelError> {
        let x = x.f_to_kind(kind)?;
        let y = linear(&x, &self.base, kind)?;
        let xd = if self.dropout > 0.0 && train {
            x.f_dropout(self.dropout, true)?
        } else {
            x.shallow_clone()
        };
        let delta = linear(&linear(&xd, &self.a, kind)?, &self.b, kind)?;
        Ok(y.f_add(&delta.f_mul_scalar(self.scale)?)?)
    }

    /// The update s B A alone, (out, in).
    pub fn delta(&self) -> Result<Tensor, ModelError> {
        let _g = tch::no_grad_guard();
        Ok(self.b.f_matmul(&self.a)?.f_mul_scalar(self.scale)?)
    }

    /// The merged weight W + s B A, detached.
    pub fn merge(&self) -> Result<Tensor, ModelError> {
        let _g = tch::no_grad_guard();
        Ok(self.base.f_add(&self.delta()?)?.f_detach()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_rules() {
        assert_eq!(lora_scale(32.0, 16, false), 2.0);
        assert_eq!(lora_scale(32.0, 16, true), 8.0);
    }

    #[test]
    fn fresh_adapter_is_identity_and_merge_matches() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let base = Tensor::randn([6, 5], (tch::Kind::Float, tch::Device::Cpu));
        let mut rng = Rng::new(0, 0);
        let l = LoraLinear::new(
            &(vs.root() / "q"),
            base.shallow_clone(),
            2,
            2.0,
            0.0,
            &mut rng,
        )
        .unwrap();
        let x = Tensor::randn([3, 5], (tch::Kind::Float, tch::Device::Cpu));
        let y = l.forward(&x, true, Kind::Float).unwrap();
        assert!(y.equal(&x.linear::<Tensor>(&base, None)));
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.contains(&"q.lora_A.weight".to_string()), "{names:?}");
        // Give B a value, then the merged weight must reproduce the adapter's output.
        tch::no_grad(|| {
            let mut b = l.b.shallow_clone();
            b.copy_(&Tensor::randn([6, 2], (tch::Kind::Float, tch::Device::Cpu)));
        });
        let y = l.forward(&x, false, Kind::Float).unwrap();
        let merged = x.linear::<Tensor>(&l.merge().unwrap(), None);
        let diff = (y - merged).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
    }
}
