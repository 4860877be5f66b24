//! `sweep pretrain`: train a builtin model on the source domain (Shakespeare) from random weights,
//! so that fine-tuning has something to forget. The result is cached by a hash of its recipe and
//! data, at `$SWEEP_CACHE/pretrained/<shape>.safetensors`, where `init = "pretrained"` finds it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cli::{GlobalArgs, PretrainArgs};
use crate::plan::{plan, PlanOptions};
use crate::spec::values::{format_tokens, parse_token_amount, TokenAmount};
use crate::util::write_atomic;

/// What the cache records beside the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainRecord {
    /// Hash of the recipe and the data it saw.
    pub key: String,
    /// Builtin shape.
    pub shape: String,
    /// Tokens trained.
    pub tokens: u64,
    /// Held-out loss on the source domain at the end (nats per byte).
    pub heldout_loss: Option<f64>,
    /// Held-out loss of the random initialisation.
    pub initial_loss: Option<f64>,
    /// Seconds it took.
    pub wall_s: f64,
}

/// The recipe as a spec: full training from random weights on the source domain.
pub fn recipe(shape: &str, tokens: u64) -> String {
    format!(
        r#"name = "pretrain-{shape}"
[model]
builtin = "{shape}"
init = "random"
[data]
regime = "cpt"
domain = "english"
target = "builtin:shakespeare"
source = "builtin:shakespeare"
[training]
optimizer = "adamw"
weight_decay = 0.01
schedule = "cosine"
warmup_fraction = 0.05
final_lr_fraction = 0.1
batch_size = 16
seq_len = 128
checkpoint_every = 100
log_every = 20
[evaluation]
metrics = ["target_loss"]
eval_tokens = "32k"
[grid]
method = ["full"]
learning_rate = 3e-3
token_budget = {tokens}
seeds = [0]
"#
    )
}

/// A fingerprint of a data folder: relative paths and sizes of its files, sorted.
fn data_fingerprint(dir: &Path) -> anyhow::Result<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out)?;
            } else {
                out.push(format!(
                    "{} {}",
                    p.strip_prefix(root).unwrap_or(&p).display(),
                    e.metadata()?.len()
                ));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files).with_context(|| {
        format!(
            "{}: the source-domain data is missing: run scripts/setup-data",
            dir.display()
        )
    })?;
    files.sort();
    Ok(files.join("\n"))
}

/// Run `sweep pretrain`.
pub fn run(g: &GlobalArgs, args: &PretrainArgs) -> anyhow::Result<()> {
    let tokens = match parse_token_amount(&args.tokens) {
        Ok(TokenAmount::Tokens(n)) => n,
        _ => {
            return Err(super::UsageError(format!(
                "--tokens {}: give a token count such as 2M",
                args.tokens
            ))
            .into())
        }
    };
    let mut opts = crate::train::TrainOptions::from_env(args.threads);
    // Minutes of training: say how far it has got as it goes.
    opts.progress = !g.quiet;
    let spec: crate::spec::Spec =
        toml::from_str(&recipe(&args.shape, tokens)).context("the pretraining recipe")?;
    let p = plan(&spec, &PlanOptions::default()).map_err(|e| {
        super::UsageError(format!(
            "pretraining {}: {}: {}",
            args.shape,
            e.dotted(),
            e.message
        ))
    })?;
    let run = p.run_file(&p.runs[0]);
    let fingerprint = data_fingerprint(&opts.data_dir.join("shakespeare"))?;
    let key: String = Sha256::digest(format!("{}\n{fingerprint}", run.config_id))
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let out_dir = opts.cache_dir.join("pretrained");
    let weights = out_dir.join(format!("{}.safetensors", args.shape));
    let record_path = out_dir.join(format!("{}.json", args.shape));
    if !args.force {
        if let Ok(text) = std::fs::read_to_string(&record_path) {
            if let Ok(rec) = serde_json::from_str::<PretrainRecord>(&text) {
                let whole = crate::model::safetensors::check_complete(&weights);
                if let (true, Err(why)) = (rec.key == key && weights.exists(), &whole) {
                    eprintln!(
                        "sweep: the cached {} is corrupt ({why}): pretraining it again",
                        weights.display()
                    );
                }
                if rec.key == key && whole.is_ok() {
                    if g.json {
                        println!("{}", pretrained_json(&rec, &weights, true));
                    } else if !g.quiet {
                        println!(
                            "pretrained {} is cached ({}, held-out loss {:.3}): {}",
                            args.shape,
                            format_tokens(rec.tokens),
                            rec.heldout_loss.unwrap_or(f64::NAN),
                            weights.display()
                        );
                    }
                    return Ok(());
                }
            }
        }
    }
    let run_dir: PathBuf = opts
        .cache_dir
        .join("pretrain")
        .join(format!("{}-{key}", args.shape));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let run_json = run_dir.join("run.json");
    let json = serde_json::to_vec_pretty(&run)?;
    write_atomic(&run_json, |w| w.write_all(&json))
        .with_context(|| format!("writing {}", run_json.display()))?;
    if !g.quiet && !g.json {
        eprintln!(
            "pretraining {} on Shakespeare for {} tokens (resumable; log in {})",
            args.shape,
            format_tokens(tokens),
            run_dir.display()
        );
    }
    let result = crate::train::train(&run_json, &opts)
        .with_context(|| format!("pretraining {}", args.shape))?;
    if result.status != crate::results::RunStatus::Completed {
        anyhow::bail!(
            "pretraining {} ended {:?}: {}",
            args.shape,
            result.status,
            result.error.unwrap_or_default()
        );
    }
    let loaded =
        crate::train::checkpoint::load_latest(&run_dir.join("checkpoints"))?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no final checkpoint to take the weights from",
                run_dir.display()
            )
        })?;
    let named: Vec<(String, tch::Tensor)> = loaded.model.into_iter().collect();
    std::fs::create_dir_all(&out_dir)?;
    let tmp = out_dir.join(format!(".{}.safetensors.tmp", args.shape));
    tch::Tensor::write_safetensors(&named, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &weights).with_context(|| format!("writing {}", weights.display()))?;
    let loss = |i: usize| {
        result
            .evals
            .get(i)
            .and_then(|e| e.metrics.get("target_loss"))
            .copied()
    };
    let rec = PretrainRecord {
        key,
        shape: args.shape.clone(),
        tokens: result.tokens,
        heldout_loss: result
            .evals
            .last()
            .and_then(|e| e.metrics.get("target_loss"))
            .copied(),
        initial_loss: loss(0),
        wall_s: result.wall_s,
    };
    let rj = serde_json::to_vec_pretty(&rec)?;
    write_atomic(&record_path, |w| w.write_all(&rj))?;
    if g.json {
        println!("{}", pretrained_json(&rec, &weights, false));
    } else if !g.quiet {
        println!(
            "pretrained {}: held-out loss {:.3} (random init {:.3}) after {} tokens in {:.0}s: {}",
            args.shape,
            rec.heldout_loss.unwrap_or(f64::NAN),
            rec.initial_loss.unwrap_or(f64::NAN),
            format_tokens(rec.tokens),
            rec.wall_s,
            weights.display()
        );
    }
    Ok(())
}

/// `--json` of `sweep pretrain`: the model it made or found cached.
fn pretrained_json(rec: &PretrainRecord, weights: &Path, cached: bool) -> serde_json::Value {
    serde_json::json!({
        "shape": rec.shape,
        "weights": weights.display().to_string(),
        "cached": cached,
        "tokens": rec.tokens,
        "heldout_loss": rec.heldout_loss,
        "initial_loss": rec.initial_loss,
        "wall_s": rec.wall_s,
    })
}
