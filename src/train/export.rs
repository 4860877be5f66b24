//! Export of a trained LoRA adapter in PEFT's layout (`adapter_model.safetensors` and
//! `adapter_config.json`), loadable by `PeftModel.from_pretrained` on the base model.

use std::io::Write;
use std::path::Path;

use tch::Tensor;

use super::TrainError;
use crate::model::llama::{Llama, LoraOptions};
use crate::results::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};

/// PEFT's tensor names: the model's, under `base_model.model.`.
pub fn peft_name(name: &str) -> String {
    format!("base_model.model.{name}")
}

/// The adapter_config.json of an adapter.
pub fn adapter_config(lora: &LoraOptions, base_model: &str) -> serde_json::Value {
    let mut targets: Vec<String> = lora
        .targets
        .iter()
        .map(|m| {
            let p = m.hf_path();
            p.rsplit('.').next().unwrap_or(p).to_string()
        })
        .collect();
    targets.sort();
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "use_rslora": lora.rslora,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
    })
}

/// Write the adapter of `model` into `dir` (replaced atomically as a whole folder).
pub fn write_peft_adapter(
    dir: &Path,
    model: &Llama,
    lora: &LoraOptions,
    base_model: &str,
) -> Result<(), TrainError> {
    let err = |e: &dyn std::fmt::Display| TrainError::Output(format!("{}: {e}", dir.display()));
    let parent = dir.parent().unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".tmp-adapter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(&e))?;
    let tensors: Vec<(String, Tensor)> = model
        .trainable()
        .into_iter()
        .filter(|(n, _)| n.contains(".lora_"))
        .map(|(n, t)| Ok((peft_name(&n), t.f_detach()?.f_to_device(tch::Device::Cpu)?)))
        .collect::<Result<_, TrainError>>()?;
    Tensor::write_safetensors(&tensors, tmp.join(ADAPTER_WEIGHTS))?;
    let cfg = serde_json::to_vec_pretty(&adapter_config(lora, base_model)).map_err(|e| err(&e))?;
    std::fs::File::create(tmp.join(ADAPTER_CONFIG))
        .and_then(|mut f| f.write_all(&cfg))
        .map_err(|e| err(&e))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Module;

    #[test]
    fn peft_config_names_hf_modules() {
        let lora = LoraOptions {
            rank: 8,
            alpha: 16.0,
            targets: vec![Module::Q, Module::Gate],
            dropout: 0.05,
            rslora: false,
        };
        let c = adapter_config(&lora, "tiny");
        assert_eq!(
            c["target_modules"],
            serde_json::json!(["gate_proj", "q_proj"])
        );
        assert_eq!(c["r"], 8);
        assert_eq!(
            peft_name("model.layers.0.self_attn.q_proj.lora_A.weight"),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
    }
}
