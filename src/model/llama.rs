//! The Llama architecture in libtorch, after candle's llama.rs: embedding, RMSNorm, rotary
//! embeddings, grouped-query attention, SwiGLU MLP, and a tied or untied head.
//!
//! Variables carry Hugging Face LlamaForCausalLM's names (`model.layers.0.self_attn.q_proj.weight`)
//! so real checkpoints load by name. The model knows nothing of training: which weights train is
//! decided once, at build time, by [`BuildOptions`] (frozen weights do not require grad, so an
//! optimizer that takes the trainable variables never sees them).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::config::{LlamaConfig, Module};
use super::lora::{linear, lora_scale, LoraLinear};
use super::ModelError;
use crate::rng::Rng;

/// LoRA settings for building a model with adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraOptions {
    /// Rank r.
    pub rank: u64,
    /// Alpha.
    pub alpha: f64,
    /// Modules that get adapters.
    pub targets: Vec<Module>,
    /// Dropout on the adapter path.
    pub dropout: f64,
    /// Scale alpha/sqrt(r) instead of alpha/r.
    pub rslora: bool,
}

/// How to build a model: init seed, adapters, what is frozen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BuildOptions {
    /// Seed of the random initialisation (base weights and adapters' A).
    pub seed: u64,
    /// Adapters; with them every base weight is frozen.
    pub lora: Option<LoraOptions>,
    /// Full fine-tuning: freeze the embeddings (input and output) and the norms.
    pub freeze_embeddings_and_norms: bool,
}

/// A projection: a plain weight, or a weight with a LoRA adapter.
#[derive(Debug)]
pub enum Proj {
    /// y = x W^T.
    Dense(Tensor),
    /// y = x W^T + s B A x.
    Lora(LoraLinear),
}

impl Proj {
    /// y for x, computed in `kind` (weights are cast to it; f32 master weights stay f32).
    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Result<Tensor, ModelError> {
        match self {
            Proj::Dense(w) => linear(x, w, kind),
            Proj::Lora(l) => l.forward(x, train, kind),
        }
    }

    /// The adapter, if this projection has one.
    pub fn lora(&self) -> Option<&LoraLinear> {
        match self {
            Proj::Dense(_) => None,
            Proj::Lora(l) => Some(l),
        }
    }
}

/// A projection with the bias some families put on it (Qwen2's q, k, v; Llama's with
/// attention_bias or mlp_bias). The bias trains with the base weights (full fine-tuning) and is
/// frozen with them under an adapter, as PEFT leaves a base layer's bias.
#[derive(Debug)]
struct Linear {
    proj: Proj,
    bias: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor, train: bool, kind: Kind) -> Result<Tensor, ModelError> {
        let y = self.proj.forward(x, train, kind)?;
        Ok(match &self.bias {
            Some(b) => y.f_add(&b.f_to_kind(kind)?)?,
            None => y,
        })
    }
}

/// The token after the last position of `logits` (1, T, V): the argmax at temperature 0, else a
/// draw from softmax(logits / temperature) with libtorch's global generator.
pub fn next_token(logits: &Tensor, temperature: f64) -> Result<i64, ModelError> {
    Ok(next_tokens(&logits.f_select(1, -1)?, temperature)?[0])
}

/// [`next_token`] of each row of `logits` (B, V).
pub fn next_tokens(logits: &Tensor, temperature: f64) -> Result<Vec<i64>, ModelError> {
    let picked = if temperature <= 0.0 {
        logits.f_argmax(-1, false)?
    } else {
        logits
            .f_div_scalar(temperature)?
            .f_softmax(-1, Kind::Float)?
            .f_multinomial(1, true)?
            .f_view([-1])?
    };
    Ok(Vec::<i64>::try_from(picked.f_to_device(Device::Cpu)?)?)
}

/// A draw from softmax(row / temperature) for each row of `logits` (B, V), row b by inverse
/// transform of its uniform `u[b]` in [0, 1): what each row draws depends on its own `u` only,
/// not on the other rows of the batch.
pub fn sample_rows(logits: &Tensor, temperature: f64, u: &[f64]) -> Result<Vec<i64>, ModelError> {
    let probs = logits
        .f_div_scalar(temperature.max(1e-6))?
        .f_softmax(-1, Kind::Double)?
        .f_to_device(Device::Cpu)?;
    let v = probs.size()[1] as usize;
    let flat = Vec::<f64>::try_from(probs.f_flatten(0, -1)?)?;
    Ok(flat
        .chunks(v)
        .zip(u)
        .map(|(row, &u)| {
            let target = u * row.iter().sum::<f64>();
            let mut acc = 0.0;
            // The last token with any mass, should rounding leave the sum short of `target`.
            let mut pick = row.iter().rposition(|&p| p > 0.0).unwrap_or(0);
            for (i, p) in row.iter().enumerate() {
                acc += p;
                if acc > target {
                    pick = i;
                    break;
                }
            }
            pick as i64
        })
        .collect())
}

/// Rotary embedding tables, Hugging Face's convention (halves rotated, `rotate_half`).
#[derive(Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    max_len: i64,
}

impl Rope {
    /// Tables for `max_len` positions of heads of width `head_dim`.
    pub fn new(
        head_dim: i64,
        max_len: i64,
        theta: f64,
        scaling: Option<&super::config::RopeScaling>,
        device: Device,
    ) -> Result<Rope, ModelError> {
        let (inv, attention) = super::config::rope_frequencies(head_dim as usize, theta, scaling);
        let inv: Vec<f32> = inv.into_iter().map(|f| f as f32).collect();
        let inv = Tensor::f_from_slice(&inv)?.f_to_device(device)?;
        let t = Tensor::f_arange(max_len, (Kind::Float, device))?;
        let freqs = t.f_outer(&inv)?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1)?;
        Ok(Rope {
            cos: emb.f_cos()?.f_mul_scalar(attention)?,
            sin: emb.f_sin()?.f_mul_scalar(attention)?,
            max_len,
        })
    }

    /// Rotate x of shape (B, H, T, D) whose first position is `offset`.
    pub fn apply(&self, x: &Tensor, offset: i64) -> Result<Tensor, ModelError> {
        let t = x.size()[2];
        if offset + t > self.max_len {
            return Err(ModelError::Input(format!(
                "sequence of {} positions exceeds max_position_embeddings {}",
                offset + t,
                self.max_len
            )));
        }
        let cos = self.cos.f_narrow(0, offset, t)?;
        let sin = self.sin.f_narrow(0, offset, t)?;
        rotate(x, &cos, &sin)
    }

    /// The tables at `positions` (B, T) (int64), shaped (B, 1, T, D) to rotate (B, H, T, D).
    fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let (b, t) = (positions.size()[0], positions.size()[1]);
        let flat = positions.f_flatten(0, -1)?;
        let pick = |table: &Tensor| -> Result<Tensor, ModelError> {
            let d = table.size()[1];
            Ok(table.f_index_select(0, &flat)?.f_view([b, 1, t, d])?)
        };
        Ok((pick(&self.cos)?, pick(&self.sin)?))
    }
}

/// x * cos + rotate_half(x) * sin.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, ModelError> {
    let d = x.size()[3];
    let x1 = x.f_narrow(-1, 0, d / 2)?;
    let x2 = x.f_narrow(-1, d / 2, d - d / 2)?;
    let rotated = Tensor::f_cat(&[&x2.f_neg()?, &x1], -1)?;
    Ok(x.f_mul(cos)?.f_add(&rotated.f_mul(sin)?)?)
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// Qwen3's RMSNorm over each head of q and of k, before RoPE.
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
}

#[derive(Debug)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug)]
struct Block {
    attn: Attention,
    mlp: Mlp,
    input_norm: Tensor,
    post_norm: Tensor,
}

/// Keys and values of past positions, per layer, for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: i64,
    /// Left padding of each row of a batch (empty: none): row b's first token sits at position
    /// pads[b] of the batch.
    pads: Vec<i64>,
}

/// What the attention of a left-padded batch needs beyond an unpadded one: each row's rotary
/// tables at its own positions (its first token at position 0), and which keys each query sees
/// (the row's own, causally; a padding query sees only itself, so that nothing is NaN).
#[derive(Debug)]
struct Padding {
    cos: Tensor,
    sin: Tensor,
    /// (B, 1, T, keys) bool.
    mask: Tensor,
}

/// Where a forward's new tokens sit: after `offset` cached positions, in a left-padded batch
/// or not.
#[derive(Debug, Clone, Copy)]
struct Position<'a> {
    offset: i64,
    padding: Option<&'a Padding>,
}

impl KvCache {
    /// An empty cache for a batch whose row b is left-padded with `pads[b]` tokens: decoding
    /// it gives each row what decoding that row alone gives (up to the rounding of a batched
    /// product).
    pub fn left_padded(pads: Vec<i64>) -> KvCache {
        KvCache {
            pads,
            ..KvCache::default()
        }
    }

    /// The attention inputs for `t` new positions after `len`; None for an unpadded batch.
    fn padding(&self, t: i64, rope: &Rope, device: Device) -> Result<Option<Padding>, ModelError> {
        if self.pads.iter().all(|&p| p == 0) {
            return Ok(None);
        }
        let longest = self.len + t - self.pads.iter().min().copied().unwrap_or(0);
        if longest > rope.max_len {
            return Err(ModelError::Input(format!(
                "sequence of {longest} positions exceeds max_position_embeddings {}",
                rope.max_len
            )));
        }
        let opts = (Kind::Int64, device);
        let pads = Tensor::f_from_slice(&self.pads)?
            .f_to_device(device)?
            .f_view([-1, 1])?;
        // Absolute positions of the new queries (1, T) and of every key (1, K).
        let queries = Tensor::f_arange_start(self.len, self.len + t, opts)?.f_unsqueeze(0)?;
        let keys = Tensor::f_arange(self.len + t, opts)?.f_unsqueeze(0)?;
        let (cos, sin) = rope.at(&queries.f_sub(&pads)?.f_clamp_min(0)?)?;
        let q = queries.f_unsqueeze(2)?; // (1, T, 1)
        let k = keys.f_unsqueeze(1)?; // (1, 1, K)
        let causal = k.f_le_tensor(&q)?;
        let own = k
            .f_ge_tensor(&pads.f_unsqueeze(2)?)?
            .f_logical_or(&k.f_eq_tensor(&q)?)?;
        let mask = causal.f_logical_and(&own)?.f_unsqueeze(1)?;
        Ok(Some(Padding { cos, sin, mask }))
    }
    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A Llama model with its variables.
#[derive(Debug)]
pub struct Llama {
    /// The variables, named as in Hugging Face checkpoints.
    pub vs: nn::VarStore,
    /// The architecture.
    pub cfg: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    rope: Rope,
    /// The kind matmuls and attention compute in (f32, or bf16 for mixed precision); weights,
    /// norms, the residual stream and the logits stay f32.
    compute: Kind,
}

/// Weight variance of the random init (Hugging Face's `initializer_range`).
const INIT_STD: f64 = 0.02;

struct Builder<'a> {
    /// Draw base weights from `rng`; when false they are zeros, about to be overwritten.
    random_base: bool,
    rng: Rng,
    lora_rng: Rng,
    device: Device,
    opts: &'a BuildOptions,
}

impl Builder<'_> {
    fn normal(
        &mut self,
        p: &nn::Path,
        name: &str,
        dims: &[i64],
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let t = if self.random_base {
            let n: i64 = dims.iter().product();
            Tensor::f_from_slice(&self.rng.normal_vec(n as usize, 0.0, INIT_STD))?
                .f_reshape(dims)?
                .f_to_device(self.device)?
        } else {
            Tensor::f_zeros(dims, (Kind::Float, self.device))?
        };
        Ok(p.add(name, t, train))
    }

    fn ones(&self, p: &nn::Path, name: &str, dim: i64, train: bool) -> Result<Tensor, ModelError> {
        let t = Tensor::f_ones([dim], (Kind::Float, self.device))?;
        Ok(p.add(name, t, train))
    }

    fn zeros(&self, p: &nn::Path, name: &str, dim: i64, train: bool) -> Result<Tensor, ModelError> {
        let t = Tensor::f_zeros([dim], (Kind::Float, self.device))?;
        Ok(p.add(name, t, train))
    }

    fn linear(
        &mut self,
        block: &nn::Path,
        cfg: &LlamaConfig,
        m: Module,
    ) -> Result<Linear, ModelError> {
        let mut p = block.clone();
        for part in m.hf_path().split('.') {
            p = p.sub(part);
        }
        let proj = self.proj(&p, cfg, m)?;
        let bias = if cfg.has_bias(m) {
            let out = cfg.module_shape(m).0 as i64;
            Some(self.zeros(&p, "bias", out, self.opts.lora.is_none())?)
        } else {
            None
        };
        Ok(Linear { proj, bias })
    }

    fn proj(&mut self, p: &nn::Path, cfg: &LlamaConfig, m: Module) -> Result<Proj, ModelError> {
        let p = p.clone();
        let (o, i) = cfg.module_shape(m);
        match &self.opts.lora {
            None => {
                let w = self.normal(&p, "weight", &[o as i64, i as i64], true)?;
                Ok(Proj::Dense(w))
            }
            Some(l) => {
                let w = self.normal(&p, "weight", &[o as i64, i as i64], false)?;
                if l.targets.contains(&m) {
                    let scale = lora_scale(l.alpha, l.rank, l.rslora);
                    let lin = LoraLinear::new(&p, w, l.rank, scale, l.dropout, &mut self.lora_rng)?;
                    Ok(Proj::Lora(lin))
                } else {
                    Ok(Proj::Dense(w))
                }
            }
        }
    }
}

impl Llama {
    /// Build a randomly initialised model (weights normal(0, 0.02), norms one), deterministic in
    /// `opts.seed`; the same seed gives the same base weights with or without adapters.
    pub fn new(
        cfg: &LlamaConfig,
        opts: &BuildOptions,
        device: Device,
    ) -> Result<Llama, ModelError> {
        Llama::build(cfg, opts, device, true)
    }

    /// Build a model whose base weights are zeros, for a caller that overwrites every one of
    /// them with [`Llama::load_named`] (strict): drawing 100M+ random numbers first would only
    /// waste time. Adapters are initialised as in [`Llama::new`].
    pub fn new_for_loading(
        cfg: &LlamaConfig,
        opts: &BuildOptions,
        device: Device,
    ) -> Result<Llama, ModelError> {
        Llama::build(cfg, opts, device, false)
    }

    fn build(
        cfg: &LlamaConfig,
        opts: &BuildOptions,
        device: Device,
        random_base: bool,
    ) -> Result<Llama, ModelError> {
        if cfg.num_attention_heads == 0
            || (cfg.head_dim.is_none() && !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads))
            || !cfg
                .num_attention_heads
                .is_multiple_of(cfg.kv_heads().max(1))
            || cfg.head_dim() == 0
            || !cfg.head_dim().is_multiple_of(2)
        {
            return Err(ModelError::Config(format!(
                "hidden_size {} with {} heads of width {} and {} kv heads is not a valid Llama shape",
                cfg.hidden_size,
                cfg.num_attention_heads,
                cfg.head_dim(),
                cfg.kv_heads()
            )));
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut b = Builder {
            random_base,
            rng: Rng::new(opts.seed, 1),
            lora_rng: Rng::new(opts.seed, 2),
            device,
            opts,
        };
        let base_trains = opts.lora.is_none();
        let emb_trains = base_trains && !opts.freeze_embeddings_and_norms;
        let d = cfg.hidden_size as i64;
        let v = cfg.vocab_size as i64;
        let model = &root / "model";
        let embed = b.normal(&(&model / "embed_tokens"), "weight", &[v, d], emb_trains)?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let bp = &model / "layers" / i;
            let hd = cfg.head_dim() as i64;
            let qk_norm = |name: &str| -> Result<Option<Tensor>, ModelError> {
                cfg.qk_norm()
                    .then(|| b.ones(&(&bp / "self_attn" / name), "weight", hd, emb_trains))
                    .transpose()
            };
            let (q_norm, k_norm) = (qk_norm("q_norm")?, qk_norm("k_norm")?);
            let attn = Attention {
                q: b.linear(&bp, cfg, Module::Q)?,
                k: b.linear(&bp, cfg, Module::K)?,
                v: b.linear(&bp, cfg, Module::V)?,
                o: b.linear(&bp, cfg, Module::O)?,
                q_norm,
                k_norm,
                heads: cfg.num_attention_heads as i64,
                kv_heads: cfg.kv_heads() as i64,
                head_dim: cfg.head_dim() as i64,
            };
            let mlp = Mlp {
                gate: b.linear(&bp, cfg, Module::Gate)?,
                up: b.linear(&bp, cfg, Module::Up)?,
                down: b.linear(&bp, cfg, Module::Down)?,
            };
            let input_norm = b.ones(&(&bp / "input_layernorm"), "weight", d, emb_trains)?;
            let post_norm = b.ones(&(&bp / "post_attention_layernorm"), "weight", d, emb_trains)?;
            blocks.push(Block {
                attn,
                mlp,
                input_norm,
                post_norm,
            });
        }
        let norm = b.ones(&(&model / "norm"), "weight", d, emb_trains)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(b.normal(&(&root / "lm_head"), "weight", &[v, d], emb_trains)?)
        };
        let rope = Rope::new(
            cfg.head_dim() as i64,
            cfg.max_position_embeddings as i64,
            cfg.rope_theta,
            cfg.rope_scaling.as_ref(),
            device,
        )?;
        Ok(Llama {
            vs,
            cfg: cfg.clone(),
            embed,
            blocks,
            norm,
            lm_head,
            rope,
            compute: Kind::Float,
        })
    }

    /// Load a Hugging Face LlamaForCausalLM directory: `config.json` and every `*.safetensors`
    /// file in it (sharded checkpoints too), converted to f32. Adapters, if any, start fresh.
    pub fn from_hf_dir(
        dir: &Path,
        opts: &BuildOptions,
        device: Device,
    ) -> Result<Llama, ModelError> {
        let load_err = |msg: String| ModelError::Load {
            path: dir.display().to_string(),
            msg,
        };
        let text = super::config::check_hf_dir(dir).map_err(ModelError::Config)?;
        let cfg =
            super::config::parse_hf_config(&text, &dir.join("config.json").display().to_string())
                .map_err(ModelError::Config)?;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| load_err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("safetensors"))
            .collect();
        files.sort();
        // Named before libtorch reads them (it would block on a FIFO, and says little of a
        // truncated file).
        for f in &files {
            super::safetensors::check_complete(f).map_err(|why| {
                load_err(format!(
                    "{}: {why}; download it again (e.g. `sweep fetch URL`)",
                    f.display()
                ))
            })?;
        }
        if files.is_empty() {
            return Err(load_err("no *.safetensors files".into()));
        }
        let mut tensors = HashMap::new();
        for f in files {
            for (name, t) in Tensor::read_safetensors(&f)
                .map_err(|e| load_err(format!("{}: {e}", f.display())))?
            {
                tensors.insert(name, t);
            }
        }
        let model = Llama::new_for_loading(&cfg, opts, device)?;
        model.load_named(&tensors, true, &dir.display().to_string())?;
        Ok(model)
    }

    /// Compute matmuls and attention in `kind` (Float or BFloat16) from now on. The variables
    /// stay f32, so the optimizer updates f32 master weights; logits come back as f32.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
    }

    /// The kind matmuls and attention compute in.
    pub fn compute_kind(&self) -> Kind {
        self.compute
    }

    /// Logits (B, T, V) of tokens (B, T) (int64). `train` turns adapter dropout on.
    pub fn forward(&self, tokens: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.forward_inner(tokens, None, train)
    }

    /// Logits of `tokens` that continue the positions held in `cache`, which they extend.
    pub fn forward_cached(
        &self,
        tokens: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        self.forward_inner(tokens, Some(cache), false)
    }

    /// The logits (B, V) of the last of `tokens` (B, T), after the positions held in `cache`,
    /// which they extend: a decoding step, with the head over that position only.
    pub fn next_logits(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        let x = self.body_inner(tokens, Some(cache), false)?;
        self.head_forward(&x.f_select(1, -1)?)
    }

    /// The residual stream (B, T, d) leaving the last block for tokens (B, T): [`Llama::forward`]
    /// without the head, so that a caller can run the head in chunks.
    pub fn body_forward(&self, tokens: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.body_inner(tokens, None, train)
    }

    fn forward_inner(
        &self,
        tokens: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let x = self.body_inner(tokens, cache, train)?;
        self.head_forward(&x)
    }

    fn body_inner(
        &self,
        tokens: &Tensor,
        mut cache: Option<&mut KvCache>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let offset = cache.as_ref().map_or(0, |c| c.len);
        let len = (offset + tokens.size().get(1).copied().unwrap_or(0)).max(0) as usize;
        self.cfg.check_window(len).map_err(ModelError::Input)?;
        if let Some(c) = cache.as_deref_mut() {
            if c.layers.len() != self.blocks.len() {
                c.layers = (0..self.blocks.len()).map(|_| None).collect();
            }
        }
        let padding = match cache.as_deref() {
            Some(c) => c.padding(tokens.size()[1], &self.rope, tokens.device())?,
            None => None,
        };
        let seeds = self.dropout_seeds(train)?;
        let mut x = self.embed_forward(tokens)?;
        for i in 0..self.blocks.len() {
            let layer_cache = match cache.as_deref_mut() {
                Some(c) => c.layers.get_mut(i),
                None => None,
            };
            let at = Position {
                offset,
                padding: padding.as_ref(),
            };
            x = self.block_inner(i, &x, at, layer_cache, train, seeds)?;
        }
        self.end_dropout(seeds);
        if let Some(c) = cache {
            c.len += tokens.size().get(1).copied().unwrap_or(0);
        }
        Ok(x)
    }

    /// The transformer blocks.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The residual stream entering block 0: the token embeddings (B, T, d) of `tokens`.
    pub fn embed_forward(&self, tokens: &Tensor) -> Result<Tensor, ModelError> {
        Ok(Tensor::f_embedding(&self.embed, tokens, -1, false, false)?)
    }

    /// Whether the token embeddings train (full fine-tuning that does not freeze them).
    pub fn embed_trains(&self) -> bool {
        self.embed.requires_grad()
    }

    /// Logits (f32) of the residual stream leaving the last block.
    pub fn head_forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let d = self.cfg.hidden_size as i64;
        let x = x.f_rms_norm(&[d][..], Some(&self.norm), self.cfg.rms_norm_eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(linear(&x, head, self.compute)?.f_to_kind(Kind::Float)?)
    }

    /// Block `i` on the residual stream `x` (no cache), as [`Llama::forward`] runs it; `seeds`
    /// are the forward's dropout seeds ([`Llama::dropout_seeds`]), so that a recomputation draws
    /// the masks the first pass drew.
    pub fn block_forward(
        &self,
        i: usize,
        x: &Tensor,
        train: bool,
        seeds: Option<i64>,
    ) -> Result<Tensor, ModelError> {
        let at = Position {
            offset: 0,
            padding: None,
        };
        self.block_inner(i, x, at, None, train, seeds)
    }

    /// Where the adapters' dropout draws its masks in one training forward: with dropout on, a
    /// base drawn from libtorch's generator, and block `i` draws from a generator seeded with
    /// base + i. A pass that recomputes blocks out of order (activation checkpointing) draws the
    /// same masks. None when nothing draws (evaluation, no dropout).
    pub fn dropout_seeds(&self, train: bool) -> Result<Option<i64>, ModelError> {
        let draws = train
            && self.blocks.iter().any(|b| {
                [
                    &b.attn.q,
                    &b.attn.k,
                    &b.attn.v,
                    &b.attn.o,
                    &b.mlp.gate,
                    &b.mlp.up,
                    &b.mlp.down,
                ]
                .iter()
                .any(|p| p.proj.lora().is_some_and(|l| l.dropout > 0.0))
            });
        if !draws {
            return Ok(None);
        }
        Ok(Some(
            Tensor::f_randint(1 << 40, [1], (Kind::Int64, Device::Cpu))?.f_int64_value(&[0])?,
        ))
    }

    /// After a forward (or its recomputation) with dropout: leave libtorch's generator where
    /// any pass over the blocks leaves it.
    pub fn end_dropout(&self, seeds: Option<i64>) {
        if let Some(base) = seeds {
            tch::manual_seed(base.wrapping_add(self.blocks.len() as i64));
        }
    }

    fn block_inner(
        &self,
        i: usize,
        x: &Tensor,
        at: Position,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
        seeds: Option<i64>,
    ) -> Result<Tensor, ModelError> {
        let blk = &self.blocks[i];
        if let Some(base) = seeds {
            tch::manual_seed(base.wrapping_add(i as i64));
        }
        let (eps, d, kind) = (
            self.cfg.rms_norm_eps,
            self.cfg.hidden_size as i64,
            self.compute,
        );
        let h = x.f_rms_norm(&[d][..], Some(&blk.input_norm), eps)?;
        let a = self.attention(&blk.attn, &h, at, cache, train)?;
        let x = x.f_add(&a)?;
        let h = x.f_rms_norm(&[d][..], Some(&blk.post_norm), eps)?;
        let gate = blk.mlp.gate.forward(&h, train, kind)?.f_silu()?;
        let up = blk.mlp.up.forward(&h, train, kind)?;
        let m = blk.mlp.down.forward(&gate.f_mul(&up)?, train, kind)?;
        Ok(x.f_add(&m)?)
    }

    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        at: Position,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let offset = at.offset;
        let (bsz, t) = match x.size().as_slice() {
            [b, t, _] => (*b, *t),
            s => {
                return Err(ModelError::Input(format!(
                    "expected (B, T, d) input, got {s:?}"
                )))
            }
        };
        let kind = self.compute;
        let eps = self.cfg.rms_norm_eps;
        // (B, T, n, D) -> (B, n, T, D); Qwen3's per-head norm (in f32) over D first.
        let heads = |p: &Linear, n: i64, norm: Option<&Tensor>| -> Result<Tensor, ModelError> {
            let h = p.forward(x, train, kind)?.f_view([bsz, t, n, a.head_dim])?;
            let h = match norm {
                Some(w) => h
                    .f_to_kind(Kind::Float)?
                    .f_rms_norm(&[a.head_dim][..], Some(w), eps)?,
                None => h,
            };
            Ok(h.f_transpose(1, 2)?)
        };
        // RoPE computes in f32; attention takes q, k, v in the compute kind.
        let rope = |h: Tensor| -> Result<Tensor, ModelError> {
            let h = match at.padding {
                Some(p) => rotate(&h, &p.cos, &p.sin)?,
                None => self.rope.apply(&h, offset)?,
            };
            Ok(h.f_to_kind(kind)?)
        };
        let q = rope(heads(&a.q, a.heads, a.q_norm.as_ref())?)?;
        let mut k = rope(heads(&a.k, a.kv_heads, a.k_norm.as_ref())?)?;
        let mut v = heads(&a.v, a.kv_heads, None)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::f_cat(&[pk, &k], 2)?;
                v = Tensor::f_cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.shallow_clone(), v.shallow_clone()));
        }
        let rep = a.heads / a.kv_heads;
        if rep > 1 {
            k = k.f_repeat_interleave_self_int(rep, 1, None)?;
            v = v.f_repeat_interleave_self_int(rep, 1, None)?;
        }
        let total = k.size()[2];
        // With no past, the causal mask is libtorch's; with a past, position i of the new tokens
        // sees every key up to offset + i (a single new token sees them all).
        let y = if let Some(p) = at.padding {
            Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&p.mask),
                0.0,
                false,
                None,
                false,
            )?
        } else if offset == 0 {
            Tensor::f_scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, true, None, false,
            )?
        } else if t == 1 {
            Tensor::f_scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, false, None, false,
            )?
        } else {
            let rows = Tensor::f_arange(t, (Kind::Int64, x.device()))?.f_unsqueeze(1)?;
            let cols = Tensor::f_arange(total, (Kind::Int64, x.device()))?.f_unsqueeze(0)?;
            let mask = cols.f_le_tensor(&rows.f_add_scalar(offset)?)?;
            Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                0.0,
                false,
                None,
                false,
            )?
        };
        let y = y
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_view([bsz, t, a.heads * a.head_dim])?;
        a.o.forward(&y, train, kind)
    }

    /// Generate up to `max_new` tokens after `prompt`: greedy at temperature 0, else sampling
    /// from softmax(logits / temperature). Stops after `stop` if given. Returns the new tokens.
    pub fn generate(
        &self,
        prompt: &[i64],
        max_new: usize,
        temperature: f64,
        stop: Option<i64>,
        use_cache: bool,
    ) -> Result<Vec<i64>, ModelError> {
        let _g = tch::no_grad_guard();
        if prompt.is_empty() {
            return Err(ModelError::Input(
                "generation needs a non-empty prompt".into(),
            ));
        }
        let device = self.vs.device();
        let mut all = prompt.to_vec();
        let mut out = Vec::new();
        let mut cache = KvCache::default();
        let mut next_input = Tensor::f_from_slice(prompt)?
            .f_to_device(device)?
            .f_unsqueeze(0)?;
        for _ in 0..max_new {
            let logits = if use_cache {
                self.forward_cached(&next_input, &mut cache)?
            } else {
                let all_t = Tensor::f_from_slice(&all)?
                    .f_to_device(device)?
                    .f_unsqueeze(0)?;
                self.forward(&all_t, false)?
            };
            let next = next_token(&logits, temperature)?;
            all.push(next);
            out.push(next);
            if Some(next) == stop {
                break;
            }
            next_input = Tensor::f_from_slice(&[next])?
                .f_to_device(device)?
                .f_unsqueeze(0)?;
        }
        Ok(out)
    }

    /// Trainable variables by name, sorted (the optimizer's view).
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The transformer block a variable of this name belongs to (`model.layers.3.…` is block
    /// 3); None for the embeddings, the final norm and the head.
    pub fn block_of(name: &str) -> Option<usize> {
        name.strip_prefix("model.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    }

    /// Every variable by name, sorted.
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Number of elements in trainable variables and in all variables.
    pub fn param_counts(&self) -> (i64, i64) {
        let count = |v: &[(String, Tensor)]| v.iter().map(|(_, t)| t.numel() as i64).sum();
        (count(&self.trainable()), count(&self.variables()))
    }

    /// Copy tensors into the model's variables by name. With `strict`, every variable that is
    /// not an adapter's must be present. Unknown names (buffers of other implementations) are
    /// ignored. `source` names the checkpoint in errors.
    pub fn load_named(
        &self,
        tensors: &HashMap<String, Tensor>,
        strict: bool,
        source: &str,
    ) -> Result<usize, ModelError> {
        let _g = tch::no_grad_guard();
        let mut loaded = 0;
        for (name, var) in self.vs.variables() {
            let Some(src) = tensors.get(&name) else {
                if strict && !name.contains(".lora_") {
                    return Err(ModelError::Load {
                        path: source.into(),
                        msg: format!("missing tensor {name}"),
                    });
                }
                continue;
            };
            if src.size() != var.size() {
                return Err(ModelError::Load {
                    path: source.into(),
                    msg: format!(
                        "{name} has shape {:?}, the model needs {:?}",
                        src.size(),
                        var.size()
                    ),
                });
            }
            let mut dst = var.shallow_clone();
            dst.f_copy_(&src.f_to_kind(var.kind())?.f_to_device(var.device())?)?;
            loaded += 1;
        }
        Ok(loaded)
    }

    /// The adapters, by module path (`model.layers.0.self_attn.q_proj`).
    pub fn adapters(&self) -> BTreeMap<String, &LoraLinear> {
        let mut out = BTreeMap::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let projs = [
                (Module::Q, &b.attn.q),
                (Module::K, &b.attn.k),
                (Module::V, &b.attn.v),
                (Module::O, &b.attn.o),
                (Module::Gate, &b.mlp.gate),
                (Module::Up, &b.mlp.up),
                (Module::Down, &b.mlp.down),
            ];
            for (m, p) in projs {
                if let Some(l) = p.proj.lora() {
                    out.insert(format!("model.layers.{i}.{}", m.hf_path()), l);
                }
            }
        }
        out
    }

    /// Base-model tensors with every adapter merged in (`W + s B A`), HF names, detached.
    pub fn merged_weights(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        let adapters = self.adapters();
        let mut out = Vec::new();
        for (name, t) in self.variables() {
            if name.contains(".lora_") {
                continue;
            }
            let module = name.strip_suffix(".weight").unwrap_or(&name);
            let t = match adapters.get(module) {
                Some(l) => l.merge()?,
                None => t.f_detach()?,
            };
            out.push((name, t));
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// hidden 32, 2 layers, 4 heads, 2 kv heads, byte vocab.
    pub(crate) fn tiny_cfg() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 264,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(2),
            max_position_embeddings: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            rope_scaling: None,
            sliding_window: None,
            model_type: None,
            head_dim: None,
            attention_bias: false,
            mlp_bias: false,
            source: None,
        }
    }

    fn toks(v: &[i64]) -> Tensor {
        Tensor::from_slice(v).unsqueeze(0)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn hf_names_and_shapes() {
        let mut cfg = tiny_cfg();
        cfg.tie_word_embeddings = false;
        let m = Llama::new(&cfg, &BuildOptions::default(), Device::Cpu).unwrap();
        let names: Vec<String> = m.variables().into_iter().map(|(n, _)| n).collect();
        for n in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.norm.weight",
            "lm_head.weight",
        ] {
            assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
        }
        let vars = m.vs.variables();
        assert_eq!(
            vars["model.layers.0.self_attn.k_proj.weight"].size(),
            vec![16, 32]
        );
        let logits = m.forward(&toks(&[1, 2, 3]), false).unwrap();
        assert_eq!(logits.size(), vec![1, 3, 264]);
    }

    #[test]
    fn hf_directory_round_trip() {
        let mut cfg = tiny_cfg();
        cfg.tie_word_embeddings = false;
        let opts = BuildOptions {
            seed: 4,
            ..Default::default()
        };
        let m = Llama::new(&cfg, &opts, Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&cfg).unwrap(),
        )
        .unwrap();
        let vars = m.variables();
        let (a, b) = vars.split_at(5);
        Tensor::write_safetensors(a, dir.path().join("model-00001-of-00002.safetensors")).unwrap();
        Tensor::write_safetensors(b, dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let loaded = Llama::from_hf_dir(dir.path(), &BuildOptions::default(), Device::Cpu).unwrap();
        let x = toks(&[1, 2, 3]);
        assert!(m
            .forward(&x, false)
            .unwrap()
            .equal(&loaded.forward(&x, false).unwrap()));
        std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
        let err =
            Llama::from_hf_dir(dir.path(), &BuildOptions::default(), Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("missing tensor"), "{err}");
    }

    #[test]
    fn freezing_embeddings_and_norms_leaves_projections_trainable() {
        let mut cfg = tiny_cfg();
        cfg.tie_word_embeddings = false;
        let opts = BuildOptions {
            freeze_embeddings_and_norms: true,
            ..Default::default()
        };
        let m = Llama::new(&cfg, &opts, Device::Cpu).unwrap();
        let names: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 7 * 2);
        assert!(
            names.iter().all(|n| n.ends_with("_proj.weight")),
            "{names:?}"
        );
    }

    #[test]
    fn attention_is_causal() {
        let m = Llama::new(&tiny_cfg(), &BuildOptions::default(), Device::Cpu).unwrap();
        let a = m.forward(&toks(&[5, 6, 7, 8, 9, 10]), false).unwrap();
        let b = m.forward(&toks(&[5, 6, 7, 80, 90, 100]), false).unwrap();
        assert!(max_diff(&a.narrow(1, 0, 3), &b.narrow(1, 0, 3)) < 1e-6);
        assert!(max_diff(&a.narrow(1, 3, 3), &b.narrow(1, 3, 3)) > 1e-4);
    }

    #[test]
    fn rope_matches_formula() {
        let d = 8;
        let theta = 10_000.0;
        let rope = Rope::new(d, 16, theta, None, Device::Cpu).unwrap();
        let x = Tensor::randn([1, 1, 3, d], (Kind::Float, Device::Cpu));
        let offset = 5;
        let y = rope.apply(&x, offset).unwrap();
        let xv: Vec<f32> = x.flatten(0, -1).try_into().unwrap();
        let yv: Vec<f32> = y.flatten(0, -1).try_into().unwrap();
        for t in 0..3usize {
            let pos = (t as i64 + offset) as f64;
            for i in 0..(d as usize / 2) {
                let ang = pos / theta.powf(2.0 * i as f64 / d as f64);
                let (c, s) = (ang.cos(), ang.sin());
                let x1 = xv[t * 8 + i] as f64;
                let x2 = xv[t * 8 + i + 4] as f64;
                // HF: out = x*cos + rotate_half(x)*sin, rotate_half = (-x2, x1).
                let e1 = x1 * c - x2 * s;
                let e2 = x2 * c + x1 * s;
                assert!((yv[t * 8 + i] as f64 - e1).abs() < 1e-5);
                assert!((yv[t * 8 + i + 4] as f64 - e2).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn kv_cache_generation_equals_full_recompute() {
        let m = Llama::new(
            &tiny_cfg(),
            &BuildOptions {
                seed: 3,
                ..Default::default()
            },
            Device::Cpu,
        )
        .unwrap();
        let prompt = [256, 72, 101, 108];
        let a = m.generate(&prompt, 12, 0.0, None, true).unwrap();
        let b = m.generate(&prompt, 12, 0.0, None, false).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 12);
        // A chunk of several tokens after a past must also match the full forward.
        let full = m.forward(&toks(&[1, 2, 3, 4, 5, 6]), false).unwrap();
        let mut cache = KvCache::default();
        let _ = m.forward_cached(&toks(&[1, 2, 3]), &mut cache).unwrap();
        let rest = m.forward_cached(&toks(&[4, 5, 6]), &mut cache).unwrap();
        assert!(max_diff(&full.narrow(1, 3, 3), &rest) < 1e-5);
    }

    #[test]
    fn a_left_padded_batch_decodes_each_row_as_alone() {
        let m = Llama::new(
            &tiny_cfg(),
            &BuildOptions {
                seed: 4,
                ..Default::default()
            },
            Device::Cpu,
        )
        .unwrap();
        let prompts: [&[i64]; 3] = [&[7, 8, 9, 10, 11], &[3], &[40, 41, 42]];
        let width = 5;
        let mut input = Vec::new();
        let mut pads = Vec::new();
        for p in prompts {
            let pad = width - p.len();
            pads.push(pad as i64);
            input.extend(std::iter::repeat_n(0i64, pad).chain(p.iter().copied()));
        }
        let mut cache = KvCache::left_padded(pads);
        let mut batch = m
            .next_logits(
                &Tensor::from_slice(&input).view([3, width as i64]),
                &mut cache,
            )
            .unwrap();
        let mut alone: Vec<(KvCache, Tensor)> = prompts
            .iter()
            .map(|p| {
                let mut c = KvCache::default();
                let l = m.next_logits(&toks(p), &mut c).unwrap();
                (c, l)
            })
            .collect();
        // Three decoding steps, each row fed its own next tokens.
        for step in 0..4 {
            for (r, (_, l)) in alone.iter().enumerate() {
                let d = max_diff(&batch.get(r as i64), &l.get(0));
                assert!(d < 1e-5, "step {step}, row {r}: off by {d}");
            }
            if step == 3 {
                break;
            }
            let next: Vec<i64> = (0..3).map(|r| 20 + 7 * r + step).collect();
            batch = m
                .next_logits(&Tensor::from_slice(&next).view([3, 1]), &mut cache)
                .unwrap();
            for ((c, l), t) in alone.iter_mut().zip(&next) {
                *l = m.next_logits(&toks(&[*t]), c).unwrap();
            }
        }
        // The last-position head is the full forward's last row.
        let full = m.forward(&toks(prompts[0]), false).unwrap();
        let mut c = KvCache::default();
        let last = m.next_logits(&toks(prompts[0]), &mut c).unwrap();
        assert!(max_diff(&full.select(1, -1), &last) < 1e-5);
    }

    /// Inverse-transform draws follow softmax(logits / T): 20,000 uniforms on two rows of known
    /// logits (one at T = 1, one at T = 0.5, which sharpens it) land within 0.015 of each
    /// probability; a uniform just below 1 picks the last token.
    #[test]
    fn sampled_rows_follow_the_softmax() {
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 0.0, 1.0, 2.0]).view([2, 3]);
        let mut rng = crate::rng::Rng::new(1, 0);
        let mut counts = [[0usize; 3]; 2];
        let n = 20_000;
        for _ in 0..n {
            let u = [rng.next_f64(), rng.next_f64()];
            for (t, temp) in [1.0, 0.5].into_iter().enumerate() {
                let row = logits.get(t as i64).unsqueeze(0);
                let pick = sample_rows(&row, temp, &u[t..t + 1]).unwrap()[0];
                counts[t][pick as usize] += 1;
            }
        }
        for (t, temp) in [1.0f64, 0.5].into_iter().enumerate() {
            let e: Vec<f64> = [0.0f64, 1.0, 2.0]
                .iter()
                .map(|x| (x / temp).exp())
                .collect();
            let z: f64 = e.iter().sum();
            for k in 0..3 {
                let got = counts[t][k] as f64 / n as f64;
                assert!(
                    (got - e[k] / z).abs() < 0.015,
                    "T = {temp}, token {k}: {got} vs {}",
                    e[k] / z
                );
            }
        }
        assert_eq!(
            sample_rows(&logits, 1.0, &[0.0, 1.0 - 1e-12]).unwrap(),
            [0, 2]
        );
    }

    #[test]
    fn lora_starts_at_base_and_freezes_base() {
        let base = Llama::new(
            &tiny_cfg(),
            &BuildOptions {
                seed: 9,
                ..Default::default()
            },
            Device::Cpu,
        )
        .unwrap();
        let lora = LoraOptions {
            rank: 4,
            alpha: 8.0,
            targets: Module::ALL.to_vec(),
            dropout: 0.0,
            rslora: false,
        };
        let opts = BuildOptions {
            seed: 9,
            lora: Some(lora),
            freeze_embeddings_and_norms: false,
        };
        let m = Llama::new(&tiny_cfg(), &opts, Device::Cpu).unwrap();
        let x = toks(&[3, 1, 4, 1, 5, 9]);
        let a = base.forward(&x, false).unwrap();
        let b = m.forward(&x, true).unwrap();
        assert!(
            a.equal(&b),
            "a fresh adapter must give exactly the base output"
        );
        let trainable = m.trainable();
        assert_eq!(trainable.len(), 2 * 7 * 2);
        assert!(trainable.iter().all(|(n, _)| n.contains(".lora_")));
        assert_eq!(
            trainable[0].0, "model.layers.0.mlp.down_proj.lora_A.weight",
            "PEFT names"
        );
    }

    #[test]
    fn bf16_compute_tracks_f32_and_trains_f32_master_weights() {
        let mut m = Llama::new(&tiny_cfg(), &BuildOptions::default(), Device::Cpu).unwrap();
        let x = toks(&[3, 1, 4, 1, 5, 9, 2, 6]);
        let exact = m.forward(&x, false).unwrap();
        m.set_compute_kind(Kind::BFloat16);
        let mixed = m.forward(&x, true).unwrap();
        assert_eq!(mixed.kind(), Kind::Float, "logits come back in f32");
        let scale = exact.abs().max().double_value(&[]);
        let err = max_diff(&exact, &mixed);
        assert!(err > 0.0, "bf16 must actually compute in bf16");
        assert!(
            err < 0.05 * scale,
            "bf16 logits off by {err} (scale {scale})"
        );
        mixed.sum(Kind::Float).backward();
        for (name, var) in m.trainable() {
            assert_eq!(var.kind(), Kind::Float, "{name} is an f32 master weight");
            let g = var.grad();
            assert!(
                g.defined() && g.kind() == Kind::Float,
                "{name}: f32 gradient"
            );
        }
    }
}
