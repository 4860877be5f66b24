//! Exports: a trained LoRA adapter in PEFT's layout (`adapter_model.safetensors` and
//! `adapter_config.json`), loadable by `PeftModel.from_pretrained` on the base model; and a run's
//! model (LoRA merged, or fully tuned) as a Hugging Face folder of its family (LlamaForCausalLM, Qwen2ForCausalLM, ...).

use std::io::Write;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::{build_model, checkpoint, read_run_file, TrainError, TrainOptions};
use crate::model::llama::{Llama, LoraOptions};
use crate::model::tokenizer::Tokenizer;
use crate::plan::run::ModelSource;
use crate::results::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};

/// What `write_hf_model` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HfExport {
    /// The optimizer step of the checkpoint exported.
    pub step: u64,
    /// The run's total steps.
    pub total_steps: u64,
    /// LoRA adapters were merged into the base weights.
    pub merged_lora: bool,
    /// A tokenizer.json was written.
    pub tokenizer: bool,
}

/// Files of a Hugging Face source folder copied along with the tokenizer, when present.
const HF_SIDE_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Write the model of the run in `run_dir`, at its latest checkpoint, into `out` as a Hugging
/// Face folder: config.json, model.safetensors (LoRA merged into the base weights, `kind`
/// tensors) and the tokenizer where the model has a `tokenizers` one. `out` is written whole
/// or not at all, and an existing non-empty `out` is refused.
pub fn write_hf_model(
    run_dir: &Path,
    out: &Path,
    opts: &TrainOptions,
    kind: Kind,
) -> Result<HfExport, TrainError> {
    let err = |msg: String| TrainError::Output(format!("{}: {msg}", out.display()));
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        return Err(err(
            "exists and is not empty; pick a new folder or remove it".into(),
        ));
    }
    let run = read_run_file(&run_dir.join("run.json"))?;
    let ckpt_dir = run_dir.join("checkpoints");
    let loaded = checkpoint::load_latest(&ckpt_dir)?.ok_or_else(|| {
        TrainError::Checkpoint(format!(
            "{}: no checkpoint yet; train the run first (sweep train {})",
            ckpt_dir.display(),
            run_dir.join("run.json").display()
        ))
    })?;
    if loaded.state.config_id != run.config_id {
        return Err(TrainError::Checkpoint(format!(
            "{} belongs to config {}, not {}",
            loaded.path.display(),
            loaded.state.config_id,
            run.config_id
        )));
    }
    // The adapter (or tuned weights) only make sense on the base the run trained from.
    let then: std::collections::BTreeMap<_, _> = loaded
        .state
        .inputs
        .iter()
        .filter(|(k, _)| k.starts_with("model:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(what) = crate::fingerprint::changes(&then, &super::model_inputs(&run, opts)?) {
        return Err(TrainError::Checkpoint(format!(
            "the base model changed since {} was trained on it ({what}): exporting would merge the run into weights it was never trained on; restore the base model the run trained from",
            loaded.path.display()
        )));
    }
    let (model, tokenizer) = build_model(&run, opts, Device::Cpu)?;
    model.load_named(&loaded.model, false, &loaded.path.display().to_string())?;
    let merged_lora = !model.adapters().is_empty();
    let weights = model
        .merged_weights()?
        .into_iter()
        .map(|(n, t)| Ok((n, t.f_to_kind(kind)?)))
        .collect::<Result<Vec<_>, TrainError>>()?;

    let specials = tokenizer.specials();
    let dtype = if kind == Kind::BFloat16 {
        "bfloat16"
    } else {
        "float32"
    };
    let config = export_config(&model.cfg, specials.bos, specials.eos, dtype).map_err(err)?;
    let text = serde_json::to_vec_pretty(&config).map_err(|e| err(e.to_string()))?;
    let wrote_tokenizer = matches!(tokenizer, Tokenizer::Hf { .. });
    crate::util::write_dir_atomic(
        out,
        |e| err(e.to_string()),
        |tmp| {
            Tensor::write_safetensors(&weights, tmp.join("model.safetensors"))?;
            std::fs::write(tmp.join("config.json"), &text).map_err(|e| err(e.to_string()))?;
            if let Tokenizer::Hf { inner, .. } = &tokenizer {
                inner
                    .save(tmp.join("tokenizer.json"), false)
                    .map_err(|e| err(format!("tokenizer.json: {e}")))?;
            }
            if let ModelSource::Hf { path } = &run.shared.model {
                for name in HF_SIDE_FILES {
                    if path.join(name).exists() {
                        std::fs::copy(path.join(name), tmp.join(name))
                            .map_err(|e| err(format!("copying {name}: {e}")))?;
                    }
                }
            }
            Ok(())
        },
    )?;
    Ok(HfExport {
        step: loaded.state.step,
        total_steps: run
            .point
            .token_budget
            .div_ceil(run.shared.training.tokens_per_step())
            .max(1),
        merged_lora,
        tokenizer: wrote_tokenizer,
    })
}

/// PEFT's tensor names: the model's, under `base_model.model.`.
pub fn peft_name(name: &str) -> String {
    format!("base_model.model.{name}")
}

/// The config.json of an exported model: the one the model was read from, as it was, with only
/// the weights' dtype changed (merging adapters changes no field); for a builtin shape or a GGUF,
/// the shape's fields with the architecture, activation and special tokens a loader needs.
fn export_config(
    cfg: &crate::model::config::LlamaConfig,
    bos: Option<i64>,
    eos: i64,
    dtype: &str,
) -> Result<serde_json::Value, String> {
    if let Some(source) = &cfg.source {
        let mut c = source.clone();
        // transformers 5 names the field `dtype`, 4 `torch_dtype`: each one it has is set (the
        // latter when it has neither).
        let keys: Vec<&str> = ["dtype", "torch_dtype"]
            .into_iter()
            .filter(|k| c.contains_key(*k))
            .collect();
        for k in if keys.is_empty() {
            vec!["torch_dtype"]
        } else {
            keys
        } {
            c.insert(k.into(), dtype.into());
        }
        return Ok(serde_json::Value::Object(c));
    }
    if cfg
        .rope_scaling
        .as_ref()
        .is_some_and(|s| s.freq_factors.is_some())
    {
        return Err(
            "the model's RoPE scaling came from a GGUF's rope_freqs tensor, which a config.json cannot express; export a run of the Hugging Face checkpoint instead (its rope_scaling is written back as read)"
                .into(),
        );
    }
    let mut config = serde_json::to_value(cfg).map_err(|e| e.to_string())?;
    if let Some(c) = config.as_object_mut() {
        let model_type = match (cfg.model_type.as_deref(), cfg.sliding_window) {
            (Some(t), _) => t,
            // A sliding window is Mistral's (its weights are named as Llama's).
            (None, Some(_)) => "mistral",
            (None, None) => "llama",
        };
        let arch = match model_type {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        c.insert("architectures".into(), serde_json::json!([arch]));
        c.insert("model_type".into(), model_type.into());
        c.insert("hidden_act".into(), "silu".into());
        c.insert("bos_token_id".into(), bos.into());
        c.insert("eos_token_id".into(), eos.into());
        c.insert("torch_dtype".into(), dtype.into());
    }
    Ok(config)
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
    let tensors: Vec<(String, Tensor)> = model
        .trainable()
        .into_iter()
        .filter(|(n, _)| n.contains(".lora_"))
        .map(|(n, t)| Ok((peft_name(&n), t.f_detach()?.f_to_device(tch::Device::Cpu)?)))
        .collect::<Result<_, TrainError>>()?;
    let cfg = serde_json::to_vec_pretty(&adapter_config(lora, base_model)).map_err(|e| err(&e))?;
    crate::util::write_dir_atomic(
        dir,
        |e| err(&e),
        |tmp| {
            Tensor::write_safetensors(&tensors, tmp.join(ADAPTER_WEIGHTS))?;
            std::fs::File::create(tmp.join(ADAPTER_CONFIG))
                .and_then(|mut f| f.write_all(&cfg))
                .map_err(|e| err(&e))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Module;

    /// A shape from a GGUF gets its family's architecture name; RoPE scaling that only a
    /// GGUF's rope_freqs carries is refused, not written as plain RoPE.
    #[test]
    fn exported_configs_name_the_family_or_refuse() {
        use crate::model::config::{LlamaConfig, RopeScaling};
        let mut cfg = LlamaConfig::builtin("tiny").unwrap();
        cfg.model_type = Some("qwen2".into());
        let c = export_config(&cfg, None, 2, "float32").unwrap();
        assert_eq!(c["architectures"][0], "Qwen2ForCausalLM");
        assert_eq!(
            (c["model_type"].as_str(), c["eos_token_id"].as_i64()),
            (Some("qwen2"), Some(2))
        );
        cfg.rope_scaling = Some(RopeScaling {
            rope_type: "freq_factors".into(),
            factor: 1.0,
            freq_factors: Some(vec![1.0; 16]),
            ..Default::default()
        });
        let e = export_config(&cfg, None, 2, "float32").unwrap_err();
        assert!(e.contains("rope_freqs"), "{e}");
    }

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
