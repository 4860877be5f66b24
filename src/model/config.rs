//! Llama model shapes: the serde mirror of a Hugging Face `config.json`, and the builtin shapes.
//!
//! This file needs no libtorch: the planner uses shapes to validate ranks and estimate cost.

use serde::{Deserialize, Serialize};

/// The architecture hyperparameters of a Llama-family model, with the field names of Hugging
/// Face's `LlamaConfig` so that a checkpoint's `config.json` deserializes into it directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of the embedding matrix).
    pub vocab_size: usize,
    /// Model width d.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention when fewer than query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Longest sequence the rotary embedding tables are built for.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Whether the output head shares the token embedding's weights.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// RoPE frequency scaling (Llama 3's, or linear), as transformers computes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Mistral's sliding attention window: each position attends to at most this many. This
    /// model code attends to every earlier position, which is the same while a sequence is no
    /// longer than the window; a longer one is refused (see [`LlamaConfig::check_window`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// config.json's `model_type`: `llama` (also when absent), `mistral`, `qwen2` or `qwen3`;
    /// it decides which projections have biases and whether queries and keys are normed
    /// ([`LlamaConfig::qkv_bias`], [`LlamaConfig::qk_norm`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// The width of one attention head when it is not hidden_size / num_attention_heads
    /// (Qwen3's, some Llama 3.2 and Mistral variants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Llama's and Qwen3's biases on the q, k, v and o projections.
    #[serde(default, skip_serializing_if = "is_false")]
    pub attention_bias: bool,
    /// Llama's biases on the gate, up and down projections.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mlp_bias: bool,
    /// The config.json this shape was read from, as it was: `sweep export` writes it back with
    /// only the fields it must change (none when the shape is a builtin or comes from a GGUF).
    #[serde(skip)]
    pub source: Option<serde_json::Map<String, serde_json::Value>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// RoPE frequency scaling: `llama3` (Llama 3.1/3.2: low frequencies divided by `factor`, high
/// ones kept, a smooth ramp between), `linear` (every frequency divided by `factor`), `yarn`
/// (YaRN: high frequencies kept, low ones divided by `factor`, a linear ramp between the
/// correction dimensions of `beta_fast` and `beta_slow`, and cos/sin multiplied by an attention
/// factor), `dynamic` (dynamic NTK: plain RoPE up to max_position_embeddings, the only positions
/// this model code computes: it refuses longer sequences), or
/// `freq_factors` (a GGUF's `rope_freqs` tensor: frequency i divided by `freq_factors[i]`, which
/// is how llama.cpp carries Llama 3's scaling; never read from a config.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `llama3` or `linear`.
    #[serde(alias = "type")]
    pub rope_type: String,
    /// The context extension factor.
    pub factor: f64,
    /// llama3: wavelengths above original / low_freq_factor are divided by `factor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    /// llama3: wavelengths below original / high_freq_factor are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    /// llama3: the context length the model was pretrained at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    /// freq_factors: the divisor of each rotary frequency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freq_factors: Option<Vec<f64>>,
    /// yarn: the factor on cos and sin (default from `factor`, `mscale` and `mscale_all_dim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    /// yarn: rotations bounding the ramp (defaults 32 and 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_fast: Option<f64>,
    /// yarn: see `beta_fast`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta_slow: Option<f64>,
    /// yarn: DeepSeek's scalars on log(factor) in the attention factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    /// yarn: see `mscale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
    /// yarn: round the ramp's bounds to whole dimensions (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
}

/// The keys of a `rope_scaling` / `rope_parameters` object that are read (any other is refused:
/// it would change the rotation).
const ROPE_KEYS: &[&str] = &[
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "attention_factor",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
    "truncate",
];

/// The inverse frequencies of RoPE for heads of width `head_dim` with base `theta`, scaled as
/// transformers computes them (one per rotary pair), and the factor on cos and sin.
pub fn rope_frequencies(
    head_dim: usize,
    theta: f64,
    scaling: Option<&RopeScaling>,
) -> (Vec<f64>, f64) {
    let plain = |i: usize| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
    let half = head_dim / 2;
    match scaling {
        None => ((0..half).map(plain).collect(), 1.0),
        Some(s) if s.rope_type == "yarn" => s.yarn(head_dim, theta),
        Some(s) => ((0..half).map(|i| s.scale(i, plain(i))).collect(), 1.0),
    }
}

impl RopeScaling {
    /// The scaled inverse frequency of one rotary dimension pair (transformers'
    /// `_compute_llama3_parameters` and linear scaling).
    pub fn scale(&self, i: usize, inv_freq: f64) -> f64 {
        match self.rope_type.as_str() {
            "freq_factors" => {
                inv_freq
                    / self
                        .freq_factors
                        .as_ref()
                        .and_then(|f| f.get(i))
                        .copied()
                        .unwrap_or(1.0)
            }
            "llama3" => {
                let (low, high) = (
                    self.low_freq_factor.unwrap_or(1.0),
                    self.high_freq_factor.unwrap_or(4.0),
                );
                let old = self.original_max_position_embeddings.unwrap_or(8192) as f64;
                let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
                if wavelen < old / high {
                    inv_freq
                } else if wavelen > old / low {
                    inv_freq / self.factor
                } else {
                    let smooth = (old / wavelen - low) / (high - low);
                    (1.0 - smooth) * inv_freq / self.factor + smooth * inv_freq
                }
            }
            // Dynamic NTK rescales only past max_position_embeddings, which Rope refuses.
            "dynamic" => inv_freq,
            _ => inv_freq / self.factor,
        }
    }

    /// YaRN's frequencies and attention factor (transformers' `_compute_yarn_parameters`).
    fn yarn(&self, dim: usize, base: f64) -> (Vec<f64>, f64) {
        let factor = self.factor;
        let mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        let attention = self
            .attention_factor
            .unwrap_or(match (self.mscale, self.mscale_all_dim) {
                (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    mscale(factor, m) / mscale(factor, all)
                }
                _ => mscale(factor, 1.0),
            });
        let original = self.original_max_position_embeddings.unwrap_or(0) as f64;
        let d = dim as f64;
        // The dimension at which a frequency turns `rotations` times over the original context.
        let correction = |rotations: f64| {
            d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln())
        };
        let (mut low, mut high) = (
            // transformers reads `beta or default`: a 0 is the default.
            correction(self.beta_fast.filter(|b| *b != 0.0).unwrap_or(32.0)),
            correction(self.beta_slow.filter(|b| *b != 0.0).unwrap_or(1.0)),
        );
        if self.truncate.unwrap_or(true) {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
        if low == high {
            high += 0.001;
        }
        let freqs = (0..dim / 2)
            .map(|i| {
                let pos = base.powf(2.0 * i as f64 / d);
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation = 1.0 - ramp;
                (1.0 / (factor * pos)) * (1.0 - extrapolation) + (1.0 / pos) * extrapolation
            })
            .collect();
        (freqs, attention)
    }

    /// The scaling of a config's `rope_scaling` (or `rope_parameters`) object, or why it is
    /// not computed.
    fn from_json(v: &serde_json::Value) -> Result<RopeScaling, String> {
        if let Some(k) = v
            .as_object()
            .and_then(|o| o.keys().find(|k| !ROPE_KEYS.contains(&k.as_str())))
        {
            return Err(format!("the key `{k}`, which is not read"));
        }
        let r: RopeScaling = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        match r.rope_type.as_str() {
            "linear" | "dynamic" => Ok(r),
            "yarn" if r.original_max_position_embeddings.is_some() => Ok(r),
            "yarn" => Err("yarn scaling without original_max_position_embeddings".into()),
            "llama3"
                if r.low_freq_factor.is_some()
                    && r.high_freq_factor.is_some()
                    && r.original_max_position_embeddings.is_some() =>
            {
                Ok(r)
            }
            "llama3" => Err("llama3 scaling without low_freq_factor, high_freq_factor and original_max_position_embeddings".into()),
            other => Err(format!("rope_type `{other}` is not supported yet (llama3, linear, yarn and dynamic are)")),
        }
    }
}

fn default_max_positions() -> usize {
    2048
}
fn default_rms_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10_000.0
}

/// The `model_type`s of config.json that this model code computes exactly.
/// Mistral is Llama's architecture with a sliding attention window (honoured while sequences fit
/// it, refused beyond).
/// Qwen2 (Qwen2.5) adds biases to q, k and v; Qwen3 norms each head of q and k before RoPE.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// Check a Hugging Face model folder before anything is loaded from it, so that each problem
/// is named as what it is: a missing folder, a config.json that is missing or not JSON, or a
/// `model_type` this model code does not compute (refused, never loaded as another model).
/// Returns the config.json text.
pub fn check_hf_dir(dir: &std::path::Path) -> Result<String, String> {
    if !dir.exists() {
        return Err(format!(
            "{}: no such folder: point model.hf at a Hugging Face model folder (config.json, *.safetensors, tokenizer.json)",
            dir.display()
        ));
    }
    if !dir.is_dir() {
        return Err(format!(
            "{}: not a folder: model.hf is a Hugging Face model folder (for a .gguf file use model.gguf)",
            dir.display()
        ));
    }
    let path = dir.join("config.json");
    let text =
        crate::util::read_regular_text(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}: not JSON ({e}); it should be the model's config.json",
            path.display()
        )
    })?;
    if !v.is_object() {
        return Err(format!("{}: not a JSON object", path.display()));
    }
    if let Some(t) = v.get("model_type").and_then(|t| t.as_str()) {
        if !SUPPORTED_MODEL_TYPES.contains(&t) {
            return Err(format!(
                "{}: model_type `{t}` is not supported (supported: {}); it would not be computed as that model",
                path.display(),
                SUPPORTED_MODEL_TYPES.join(", ")
            ));
        }
    }
    parse_hf_config(&text, &path.display().to_string())?;
    Ok(text)
}

/// config.json fields this model code reads and computes exactly (some only at one value,
/// checked by [`parse_hf_config`]).
const FORWARD_FIELDS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "tie_word_embeddings",
    "head_dim",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "attention_dropout",
    "pretraining_tp",
    "rope_interleaved",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "model_type",
];

/// config.json fields that do not change the forward pass (ids, dtypes, provenance, flags of
/// the transformers API).
const NO_FORWARD_FIELDS: &[&str] = &[
    "architectures",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "initializer_range",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "is_llama_config",
    "transformers.js_config",
];

/// A Hugging Face config.json as this model code computes it, or the field it does not: every
/// field either changes the forward and is read (at the values supported), or is listed as not
/// changing it; anything else is refused with its name. RoPE's base frequency is read from the
/// top level (transformers 4) or from `rope_parameters` (transformers 5).
pub fn parse_hf_config(text: &str, path: &str) -> Result<LlamaConfig, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("{path}: not JSON ({e})"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{path}: not a JSON object"))?;
    let refuse = |field: &str, why: String| {
        Err(format!(
            "{path}: `{field}` {why}; this model code would compute another model, so it is refused"
        ))
    };
    for k in obj.keys() {
        if !k.starts_with('_')
            && !FORWARD_FIELDS.contains(&k.as_str())
            && !NO_FORWARD_FIELDS.contains(&k.as_str())
        {
            return refuse(
                k,
                "is not a field this model code knows (it may change the forward pass)".into(),
            );
        }
    }
    let get = |k: &str| obj.get(k).filter(|x| !x.is_null());
    let mut scaling = None;
    if let Some(x) = get("rope_scaling") {
        match RopeScaling::from_json(x) {
            Ok(r) => scaling = Some(r),
            Err(why) => return refuse("rope_scaling", format!("= {x}: {why}")),
        }
    }
    let mut theta = get("rope_theta").and_then(|t| t.as_f64());
    if let Some(rp) = get("rope_parameters") {
        let kind = rp
            .get("rope_type")
            .or_else(|| rp.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        if let Some(k) = rp
            .as_object()
            .and_then(|o| o.keys().find(|k| !ROPE_KEYS.contains(&k.as_str())))
        {
            return refuse(
                "rope_parameters",
                format!("has the key `{k}`, which is not read"),
            );
        }
        if kind != "default" {
            match RopeScaling::from_json(rp) {
                Ok(r) => scaling = Some(r),
                Err(why) => return refuse("rope_parameters", format!("has {why}")),
            }
        }
        if let Some(t) = rp.get("rope_theta").and_then(|t| t.as_f64()) {
            theta = Some(t);
        }
    }
    let flag = |k: &str| get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    if flag("rope_interleaved") {
        return refuse(
            "rope_interleaved",
            "= true (interleaved RoPE pairs) is not supported: this model code rotates halves"
                .into(),
        );
    }
    let model_type = get("model_type")
        .and_then(|t| t.as_str())
        .unwrap_or("llama");
    // Where the family's transformers code has no such bias, a `true` there would be read as a
    // different model by another tool: refused rather than guessed.
    let biases_read: &[&str] = match model_type {
        "llama" => &["attention_bias", "mlp_bias"],
        "qwen3" => &["attention_bias"],
        _ => &[],
    };
    for k in ["attention_bias", "mlp_bias"] {
        if flag(k) && !biases_read.contains(&k) {
            return refuse(
                k,
                format!("= true is not a field of {model_type}'s architecture, whose projections have fixed biases"),
            );
        }
    }
    if let Some(act) = get("hidden_act")
        .and_then(|a| a.as_str())
        .filter(|a| *a != "silu")
    {
        return refuse(
            "hidden_act",
            format!("= `{act}`: only silu (SwiGLU) is computed"),
        );
    }
    if let Some(p) = get("attention_dropout")
        .and_then(|p| p.as_f64())
        .filter(|p| *p != 0.0)
    {
        return refuse(
            "attention_dropout",
            format!("= {p}: attention dropout is not applied"),
        );
    }
    // A null field is an absent one (transformers writes `"rope_theta": null` in some layouts).
    let present: serde_json::Map<String, serde_json::Value> = obj
        .iter()
        .filter(|(_, x)| !x.is_null())
        .map(|(k, x)| (k.clone(), x.clone()))
        .collect();
    let mut cfg: LlamaConfig = serde_json::from_value(serde_json::Value::Object(present))
        .map_err(|e| format!("{path}: {e}"))?;
    if let Some(t) = theta {
        cfg.rope_theta = t;
    }
    // Keys left out take the family's defaults, as its transformers config class has them.
    let absent = |k: &str| !obj.contains_key(k);
    if matches!(model_type, "mistral" | "qwen2" | "qwen3") && absent("rms_norm_eps") {
        cfg.rms_norm_eps = 1e-6;
    }
    if absent("num_key_value_heads") {
        match model_type {
            "mistral" => cfg.num_key_value_heads = Some(8),
            "qwen2" | "qwen3" => cfg.num_key_value_heads = Some(32),
            _ => {}
        }
    }
    if model_type == "qwen3" && absent("head_dim") {
        cfg.head_dim = Some(128);
    }
    cfg.rope_scaling = scaling;
    if cfg.head_dim == Some(0) || !cfg.head_dim().is_multiple_of(2) {
        return refuse(
            "head_dim",
            format!(
                "= {}: RoPE rotates halves of a head, so its width must be even and positive",
                cfg.head_dim()
            ),
        );
    }
    match window_of(model_type, obj, cfg.num_hidden_layers) {
        Ok(w) => cfg.sliding_window = w,
        Err((field, why)) => return refuse(field, why),
    }
    cfg.source = Some(obj.clone());
    Ok(cfg)
}

/// The sliding window a config's layers attend within, as the family's transformers code reads
/// it: Mistral's `sliding_window` holds in every layer; Qwen's only with `use_sliding_window`,
/// in the layers `layer_types` marks `sliding_attention` (by default those from
/// `max_window_layers` on). Llama has none. Err names a field whose value is not understood.
fn window_of(
    model_type: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
    layers: usize,
) -> Result<Option<usize>, (&'static str, String)> {
    let get = |k: &str| obj.get(k).filter(|x| !x.is_null());
    // Mistral's and Qwen's configs default to a window of 4096 when the key is left out (null
    // is no window).
    let window = match obj.get("sliding_window") {
        None if model_type != "llama" => Some(4096),
        _ => get("sliding_window")
            .and_then(|w| w.as_u64())
            .map(|w| w as usize),
    };
    let kinds: Option<Vec<&str>> = match get("layer_types") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|a| a.iter().map(|x| x.as_str()).collect::<Option<Vec<_>>>())
                .ok_or(("layer_types", format!("= {v}: not a list of strings")))?,
        ),
    };
    if let Some(k) = kinds.as_ref() {
        if let Some(bad) = k
            .iter()
            .find(|k| !["full_attention", "sliding_attention"].contains(k))
        {
            return Err((
                "layer_types",
                format!("has `{bad}` (full_attention and sliding_attention are computed)"),
            ));
        }
        if k.len() != layers {
            return Err((
                "layer_types",
                format!("lists {} layers, the model has {layers}", k.len()),
            ));
        }
    }
    let any_sliding = |default: bool| {
        kinds
            .as_ref()
            .map_or(default, |k| k.contains(&"sliding_attention"))
    };
    Ok(match model_type {
        "mistral" => window,
        "qwen2" | "qwen3" => {
            let on = get("use_sliding_window")
                .and_then(|x| x.as_bool())
                .unwrap_or(false);
            let from = get("max_window_layers")
                .and_then(|x| x.as_u64())
                .unwrap_or(28) as usize;
            window.filter(|_| on && any_sliding(layers > from))
        }
        _ if window.is_some() || any_sliding(false) => {
            return Err((
                "sliding_window",
                format!("is set, but {model_type}'s architecture has no sliding window"),
            ))
        }
        _ => None,
    })
}

/// The names of the builtin shapes, for error messages and `--help`.
pub const BUILTIN_SHAPES: &[&str] = &["tiny", "small", "smollm2-135m", "llama-1b", "llama2-7b"];

impl LlamaConfig {
    /// A builtin shape by name: `tiny` (~1M parameters, byte-level, the demo's), `small` (~25M,
    /// d=512, 8 layers), and the shapes of real models used for planning and benchmarks.
    pub fn builtin(name: &str) -> Option<LlamaConfig> {
        let (vocab, d, ff, layers, heads, kv, tied, theta, eps) = match name {
            "tiny" => (BYTE_VOCAB, 128, 352, 4, 4, 2, true, 10_000.0, 1e-5),
            "small" => (BYTE_VOCAB, 512, 1376, 8, 8, 4, true, 10_000.0, 1e-5),
            "smollm2-135m" => (49_152, 576, 1536, 30, 9, 3, true, 100_000.0, 1e-5),
            "llama-1b" => (32_000, 2048, 5632, 22, 32, 4, false, 10_000.0, 1e-5),
            "llama2-7b" => (32_000, 4096, 11_008, 32, 32, 32, false, 10_000.0, 1e-5),
            _ => return None,
        };
        Some(LlamaConfig {
            vocab_size: vocab,
            hidden_size: d,
            intermediate_size: ff,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv),
            max_position_embeddings: if name == "llama2-7b" { 4096 } else { 2048 },
            rms_norm_eps: eps,
            rope_theta: theta,
            tie_word_embeddings: tied,
            rope_scaling: None,
            sliding_window: None,
            model_type: None,
            head_dim: None,
            attention_bias: false,
            mlp_bias: false,
            source: None,
        })
    }

    /// The family this config describes (`llama` when config.json names none).
    pub fn family(&self) -> &str {
        self.model_type.as_deref().unwrap_or("llama")
    }

    /// Whether q, k and v have biases (Qwen2's always; Llama's and Qwen3's with attention_bias).
    pub fn qkv_bias(&self) -> bool {
        self.family() == "qwen2" || self.attention_bias
    }

    /// Whether o has a bias.
    pub fn o_bias(&self) -> bool {
        self.family() != "qwen2" && self.attention_bias
    }

    /// Whether each head of q and k is RMS-normed before RoPE (Qwen3).
    pub fn qk_norm(&self) -> bool {
        self.family() == "qwen3"
    }

    /// Whether a projection has a bias.
    pub fn has_bias(&self, module: Module) -> bool {
        match module {
            Module::Q | Module::K | Module::V => self.qkv_bias(),
            Module::O => self.o_bias(),
            Module::Gate | Module::Up | Module::Down => self.mlp_bias,
        }
    }

    /// That a sequence of `len` positions is computed exactly: within the sliding window, when
    /// the model has one.
    pub fn check_window(&self, len: usize) -> Result<(), String> {
        match self.sliding_window {
            Some(w) if len > w => Err(format!(
                "a sequence of {len} positions is longer than the model's sliding_window of {w} (config.json), and this model code attends to every earlier position, not to a window: keep sequences (training.seq_len, prompts) within {w} positions"
            )),
            _ => Ok(()),
        }
    }

    /// Key/value heads, defaulting to the query heads as Hugging Face does.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head: config.json's head_dim, else hidden_size / heads.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The (out, in) shape of a projection matrix in one block.
    pub fn module_shape(&self, module: Module) -> (usize, usize) {
        let d = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.kv_heads() * self.head_dim();
        let ff = self.intermediate_size;
        match module {
            Module::Q => (q, d),
            Module::O => (d, q),
            Module::K | Module::V => (kv, d),
            Module::Gate | Module::Up => (ff, d),
            Module::Down => (d, ff),
        }
    }

    /// Parameters in the matrices that a token's forward pass multiplies by: every projection
    /// of every block plus the output head. Embedding lookups and norms cost no matmul FLOPs.
    pub fn matmul_params(&self) -> u64 {
        let per_block: usize = Module::ALL
            .iter()
            .map(|&m| {
                let (o, i) = self.module_shape(m);
                o * i
            })
            .sum();
        (per_block * self.num_hidden_layers + self.vocab_size * self.hidden_size) as u64
    }

    /// Every trainable parameter of the base model (embeddings, norms and the untied head too).
    pub fn total_params(&self) -> u64 {
        let d = self.hidden_size;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        let norms = (2 * self.num_hidden_layers + 1) * d;
        let per_block: usize = Module::ALL
            .iter()
            .filter(|&&m| self.has_bias(m))
            .map(|&m| self.module_shape(m).0)
            .sum::<usize>()
            + if self.qk_norm() {
                2 * self.head_dim()
            } else {
                0
            };
        self.matmul_params() + (head + norms + per_block * self.num_hidden_layers) as u64
    }

    /// Parameters of a LoRA adapter of rank `rank` on the given modules of every block.
    pub fn lora_params(&self, modules: &[Module], rank: usize) -> u64 {
        let per_block: usize = modules
            .iter()
            .map(|&m| {
                let (o, i) = self.module_shape(m);
                rank * (o + i)
            })
            .sum();
        (per_block * self.num_hidden_layers) as u64
    }

    /// The largest LoRA rank that makes sense for a module: min(out, in).
    pub fn max_rank(&self, module: Module) -> usize {
        let (o, i) = self.module_shape(module);
        o.min(i)
    }
}

/// Byte-level vocabulary of the builtin models: 256 bytes plus BOS, EOS and PAD, padded to 264.
pub const BYTE_VOCAB: usize = 264;

/// A projection matrix of a Llama block that LoRA can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Module {
    /// self_attn.q_proj
    Q,
    /// self_attn.k_proj
    K,
    /// self_attn.v_proj
    V,
    /// self_attn.o_proj
    O,
    /// mlp.gate_proj
    Gate,
    /// mlp.up_proj
    Up,
    /// mlp.down_proj
    Down,
}

impl Module {
    /// Every module, in checkpoint order.
    pub const ALL: [Module; 7] = [
        Module::Q,
        Module::K,
        Module::V,
        Module::O,
        Module::Gate,
        Module::Up,
        Module::Down,
    ];
    /// The attention set of the paper: q, k, v, o.
    pub const ATTENTION: [Module; 4] = [Module::Q, Module::K, Module::V, Module::O];
    /// The MLP set of the paper: gate, up, down.
    pub const MLP: [Module; 3] = [Module::Gate, Module::Up, Module::Down];

    /// The short name used in specs (`q`, `gate`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q",
            Module::K => "k",
            Module::V => "v",
            Module::O => "o",
            Module::Gate => "gate",
            Module::Up => "up",
            Module::Down => "down",
        }
    }

    /// Parse a short name (`q`) or a Hugging Face name (`q_proj`).
    pub fn parse(name: &str) -> Option<Module> {
        let short = name.strip_suffix("_proj").unwrap_or(name);
        Module::ALL.into_iter().find(|m| m.name() == short)
    }

    /// The parameter path inside a block, as in Hugging Face's LlamaForCausalLM.
    pub fn hf_path(self) -> &'static str {
        match self {
            Module::Q => "self_attn.q_proj",
            Module::K => "self_attn.k_proj",
            Module::V => "self_attn.v_proj",
            Module::O => "self_attn.o_proj",
            Module::Gate => "mlp.gate_proj",
            Module::Up => "mlp.up_proj",
            Module::Down => "mlp.down_proj",
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn hf_folders_are_checked_before_loading() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_hf_dir(&dir.path().join("nope")).unwrap_err();
        assert!(e.contains("no such folder"), "{e}");
        let e = check_hf_dir(dir.path()).unwrap_err();
        assert!(e.contains("config.json"), "missing config.json: {e}");
        std::fs::write(dir.path().join("config.json"), "<html>").unwrap();
        let e = check_hf_dir(dir.path()).unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
        let e = check_hf_dir(dir.path()).unwrap_err();
        assert!(
            e.contains(
                "model_type `gpt2` is not supported (supported: llama, mistral, qwen2, qwen3)"
            ),
            "{e}"
        );
        std::fs::write(dir.path().join("config.json"), LLAMA2).unwrap();
        assert!(check_hf_dir(dir.path()).is_ok());
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
        let e = check_hf_dir(dir.path()).unwrap_err();
        assert!(e.contains("missing field `vocab_size`"), "{e}");
    }

    /// A Llama-2-style config.json as transformers 4 writes it (every field it has).
    const LLAMA2: &str = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "head_dim": 16,
        "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
        "intermediate_size": 128, "max_position_embeddings": 256, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 2,
        "num_key_value_heads": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-06,
        "rope_scaling": null, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "torch_dtype": "float32", "transformers_version": "4.46.0", "use_cache": true,
        "vocab_size": 300}"#;

    /// Every field is read, listed as not changing the forward, or refused with its name; the
    /// RoPE base comes from either layout.
    #[test]
    fn nothing_in_a_config_is_silently_ignored() {
        let cfg = parse_hf_config(LLAMA2, "c").unwrap();
        assert_eq!((cfg.hidden_size, cfg.rope_theta), (64, 10_000.0));
        // SmolLM2's config.json carries a few fields of its own, none of which change the forward.
        let smol = r#"{"architectures": ["LlamaForCausalLM"], "attention_bias": false,
            "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "hidden_size": 576, "initializer_range": 0.041666666666666664,
            "intermediate_size": 1536, "is_llama_config": true, "max_position_embeddings": 8192,
            "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30,
            "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1,
            "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null,
            "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
            "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16"}},
            "transformers_version": "4.42.3", "use_cache": true, "vocab_size": 49152}"#;
        let smol = parse_hf_config(smol, "smol").unwrap();
        assert_eq!((smol.hidden_size, smol.rope_theta), (576, 100_000.0));
        let with = |edit: &str| {
            let mut v: serde_json::Value = serde_json::from_str(LLAMA2).unwrap();
            let e: serde_json::Value = serde_json::from_str(edit).unwrap();
            for (k, x) in e.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse_hf_config(&v.to_string(), "c")
        };
        // transformers 5: theta inside rope_parameters.
        let v5 = with(r#"{"rope_theta": null, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}"#)
            .unwrap();
        assert_eq!(v5.rope_theta, 500_000.0);
        // `type` names the scaling where `rope_type` is missing, as transformers reads it.
        let typed = with(r#"{"rope_theta": null, "rope_parameters": {"type": "linear", "factor": 4.0, "rope_theta": 1e4}}"#)
            .unwrap();
        assert_eq!(typed.rope_scaling.map(|s| s.factor), Some(4.0));
        for (edit, field) in [
            (
                r#"{"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#,
                "`rope_scaling`",
            ),
            (
                r#"{"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}"#,
                "`rope_parameters`",
            ),
            (r#"{"head_dim": 7}"#, "`head_dim`"),
            (
                r#"{"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4, "partial_rotary_factor": 0.5}}"#,
                "`partial_rotary_factor`",
            ),
            (
                r#"{"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#,
                "original_max_position_embeddings",
            ),
            (
                r#"{"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}}"#,
                "`partial_rotary_factor`",
            ),
            (
                r#"{"model_type": "mistral", "attention_bias": true}"#,
                "`attention_bias`",
            ),
            (r#"{"model_type": "qwen3", "mlp_bias": true}"#, "`mlp_bias`"),
            (r#"{"sliding_window": 8}"#, "`sliding_window`"),
            (
                r#"{"layer_types": ["full_attention", "chunked_attention"]}"#,
                "`layer_types`",
            ),
            (r#"{"layer_types": ["full_attention"]}"#, "`layer_types`"),
            (r#"{"hidden_act": "gelu"}"#, "`hidden_act`"),
            (r#"{"attention_dropout": 0.1}"#, "`attention_dropout`"),
            (r#"{"rope_interleaved": true}"#, "`rope_interleaved`"),
            (
                r#"{"quantization_config": {"bits": 4}}"#,
                "`quantization_config`",
            ),
        ] {
            let e = with(edit).unwrap_err();
            assert!(e.contains(field) && e.contains("refused"), "{edit}: {e}");
        }
        // An explicit head width and Llama's biases change the shapes the model is built with.
        let wide = with(r#"{"head_dim": 32, "attention_bias": true, "mlp_bias": true}"#).unwrap();
        assert_eq!(wide.module_shape(Module::Q), (128, 64));
        assert_eq!(wide.module_shape(Module::O), (64, 128));
        assert_eq!(wide.module_shape(Module::K), (64, 64));
        assert!(Module::ALL.iter().all(|&m| wide.has_bias(m)));
        let plain = parse_hf_config(LLAMA2, "c").unwrap();
        let biases = 2 * (128 + 64 + 64 + 64 + 128 + 128 + 64) as u64;
        let extra_q_o = 2 * 2 * 64 * (128 - 64) as u64;
        assert_eq!(wide.head_dim(), 32);
        assert_eq!(
            wide.total_params(),
            plain.total_params() + biases + extra_q_o + 2 * 2 * 64 * 32
        );
    }

    /// Qwen2 has q/k/v biases and no o bias; Qwen3 norms q and k per head and has biases only
    /// with attention_bias; their sliding window holds only with use_sliding_window, in the
    /// layers it marks.
    #[test]
    fn qwen_configs_read_as_their_transformers_code_does() {
        let qwen = |model_type: &str, edit: &str| {
            let mut v: serde_json::Value = serde_json::from_str(LLAMA2).unwrap();
            v["model_type"] = model_type.into();
            for k in ["attention_bias", "mlp_bias", "pretraining_tp"] {
                v.as_object_mut().unwrap().remove(k);
            }
            let e: serde_json::Value = serde_json::from_str(edit).unwrap();
            for (k, x) in e.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse_hf_config(&v.to_string(), "c")
        };
        let q2 = qwen("qwen2", "{}").unwrap();
        assert_eq!(
            Module::ALL.map(|m| q2.has_bias(m)),
            [true, true, true, false, false, false, false]
        );
        assert!(!q2.qk_norm());
        let q3 = qwen("qwen3", "{}").unwrap();
        assert!(q3.qk_norm() && !Module::ALL.iter().any(|&m| q3.has_bias(m)));
        let q3b = qwen("qwen3", r#"{"attention_bias": true}"#).unwrap();
        assert!(Module::ATTENTION.iter().all(|&m| q3b.has_bias(m)) && !q3b.mlp_bias);
        assert_eq!(
            q3b.total_params(),
            q3.total_params() + 2 * (64 + 32 + 32 + 64)
        );
        // Qwen2.5's configs carry a window that is off.
        let off =
            r#"{"sliding_window": 4096, "use_sliding_window": false, "max_window_layers": 0}"#;
        assert_eq!(qwen("qwen2", off).unwrap().sliding_window, None);
        let on = r#"{"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 1}"#;
        assert_eq!(qwen("qwen2", on).unwrap().sliding_window, Some(8));
        // Every layer below max_window_layers attends fully: no window to keep within.
        let below = r#"{"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 2}"#;
        assert_eq!(qwen("qwen3", below).unwrap().sliding_window, None);
        let marked = r#"{"sliding_window": 8, "use_sliding_window": true,
            "layer_types": ["full_attention", "sliding_attention"]}"#;
        assert_eq!(qwen("qwen3", marked).unwrap().sliding_window, Some(8));
        // Keys left out take the family's transformers defaults.
        let v: serde_json::Value = serde_json::from_str(LLAMA2).unwrap();
        let mut o = v.as_object().unwrap().clone();
        for k in [
            "head_dim",
            "rms_norm_eps",
            "num_key_value_heads",
            "attention_bias",
            "mlp_bias",
        ] {
            o.remove(k);
        }
        o.insert("model_type".into(), "qwen3".into());
        let text =
            |o: &serde_json::Map<String, serde_json::Value>| serde_json::to_string(o).unwrap();
        let q3 = parse_hf_config(&text(&o), "c").unwrap();
        assert_eq!(
            (q3.head_dim(), q3.rms_norm_eps, q3.kv_heads()),
            (128, 1e-6, 32)
        );
        o.insert("model_type".into(), "mistral".into());
        let m = parse_hf_config(&text(&o), "c").unwrap();
        assert_eq!(
            (m.sliding_window, m.kv_heads(), m.head_dim()),
            (Some(4096), 8, 16)
        );
        o.insert("sliding_window".into(), serde_json::Value::Null);
        assert_eq!(
            parse_hf_config(&v.to_string(), "c").unwrap().sliding_window,
            None
        );
    }
    use super::*;

    #[test]
    fn builtin_sizes_are_what_the_docs_say() {
        let tiny = LlamaConfig::builtin("tiny").unwrap().total_params();
        assert!((500_000..5_000_000).contains(&tiny), "tiny has {tiny}");
        let small = LlamaConfig::builtin("small").unwrap().total_params();
        assert!(
            (20_000_000..30_000_000).contains(&small),
            "small has {small}"
        );
        let smol = LlamaConfig::builtin("smollm2-135m").unwrap().total_params();
        assert!(
            (130_000_000..140_000_000).contains(&smol),
            "smollm2 has {smol}"
        );
        let l7 = LlamaConfig::builtin("llama2-7b").unwrap().total_params();
        assert!(
            (6_500_000_000..7_000_000_000).contains(&l7),
            "llama2-7b has {l7}"
        );
        for name in BUILTIN_SHAPES {
            assert!(LlamaConfig::builtin(name).is_some(), "{name}");
        }
    }

    #[test]
    fn hf_config_json_deserializes() {
        let json = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":49152,"hidden_size":576,
            "intermediate_size":1536,"num_hidden_layers":30,"num_attention_heads":9,
            "num_key_value_heads":3,"rope_theta":100000.0,"tie_word_embeddings":true}"#;
        let cfg: LlamaConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.head_dim(), 64);
        assert_eq!(cfg.module_shape(Module::K), (192, 576));
        assert_eq!(
            cfg,
            LlamaConfig {
                max_position_embeddings: 2048,
                ..LlamaConfig::builtin("smollm2-135m").unwrap()
            }
        );
    }

    /// Mistral: Llama's architecture and config fields with a sliding window, honoured while a
    /// sequence fits it and refused beyond (naming the field), never computed otherwise.
    #[test]
    fn mistral_configs_load_with_their_window() {
        let text = r#"{"architectures": ["MistralForCausalLM"], "model_type": "mistral",
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
            "max_position_embeddings": 64, "rope_theta": 1000000.0, "sliding_window": 8,
            "head_dim": 8, "hidden_act": "silu", "attention_dropout": 0.0}"#;
        let cfg = parse_hf_config(text, "config.json").unwrap();
        assert_eq!(cfg.sliding_window, Some(8));
        assert!(cfg.check_window(8).is_ok());
        let e = cfg.check_window(9).unwrap_err();
        assert!(
            e.contains("sliding_window of 8") && e.contains("within 8"),
            "{e}"
        );
        // Mistral v0.2 and later: no window.
        let open = parse_hf_config(
            &text.replace("\"sliding_window\": 8", "\"sliding_window\": null"),
            "c",
        )
        .unwrap();
        assert!(open.check_window(4096).is_ok());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        check_hf_dir(dir.path()).unwrap();
    }

    #[test]
    fn lora_params_count_both_factors() {
        let cfg = LlamaConfig::builtin("llama2-7b").unwrap();
        // q at rank 16: 16 * (4096 + 4096) per layer, 32 layers.
        assert_eq!(cfg.lora_params(&[Module::Q], 16), 16 * 8192 * 32);
        assert_eq!(Module::parse("gate_proj"), Some(Module::Gate));
        assert_eq!(Module::parse("qq"), None);
    }
}
