//! Preparing a run: its model and tokenizer, its data and held-out splits, its evaluators,
//! optimizer and schedule, and the fingerprints of every file it reads.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Tensor};

use crate::fingerprint::{self, Fingerprint};
use crate::model::chat::ChatTemplate;
use crate::model::config::{LlamaConfig, BUILTIN_SHAPES};
use crate::model::gguf::{self, GgufFile};
use crate::model::llama::{BuildOptions, Llama, LoraOptions};
use crate::model::tokenizer::Tokenizer;
use crate::model::ModelError;
use crate::plan::run::{MethodConfig, ModelSource, RunFile};
use crate::spec::values::TokenAmount;
use crate::spec::{Init, Metric};

use super::data::{self, Example};
use super::eval::LossEval;
use super::optim::{Optim, OptimConfig};
use super::rows::{eval_rows, Rows, Sampler};
use super::schedule::LrSchedule;
use super::token_cache::{self, TokenCache};
use super::trainer::Trainer;
use super::{
    base_eval, compute_kind, evaluators, resolve_device, spectral, TrainError, TrainOptions,
};

/// Fingerprints of the files a run's model is built from, by `model:path`: an HF folder's
/// files, a GGUF file, or the pretrained cache of a builtin shape (none for random weights).
pub fn model_inputs(
    run: &RunFile,
    opts: &TrainOptions,
) -> Result<BTreeMap<String, Fingerprint>, TrainError> {
    let path = match &run.shared.model {
        ModelSource::Hf { path } | ModelSource::Gguf { path } => path.clone(),
        ModelSource::Builtin {
            shape,
            init: Init::Pretrained,
        } => opts
            .cache_dir
            .join("pretrained")
            .join(format!("{shape}.safetensors")),
        ModelSource::Builtin { .. } => return Ok(BTreeMap::new()),
    };
    fingerprint::of_path("model", &path)
        .map_err(|e| TrainError::Data(format!("fingerprinting the model {}: {e}", path.display())))
}

/// The tokenizer of a run's model, without loading its weights: the byte tokenizer of the
/// builtin shapes, an HF folder's tokenizer.json, a GGUF file's vocabulary.
pub fn load_tokenizer(run: &RunFile) -> Result<Tokenizer, TrainError> {
    match &run.shared.model {
        ModelSource::Builtin { .. } => framed(Tokenizer::Byte, run, None),
        ModelSource::Hf { path } => framed(Tokenizer::from_hf_dir(path)?, run, None),
        ModelSource::Gguf { path } => {
            let file = GgufFile::open(path).map_err(ModelError::from)?;
            framed(Tokenizer::from_gguf(&file)?, run, Some(&file))
        }
    }
}

/// The tokenizer with the chat template `data.chat_template` names, if it names one: `model`
/// (an HF folder's tokenizer_config.json `chat_template`, or `default` of its list; a GGUF's
/// `tokenizer.chat_template`) or a Jinja file.
fn framed(tok: Tokenizer, run: &RunFile, gguf: Option<&GgufFile>) -> Result<Tokenizer, TrainError> {
    let Some(which) = &run.shared.data.chat_template else {
        return Ok(tok);
    };
    let bad = |msg: String| TrainError::Data(format!("data.chat_template: {msg}"));
    // The strings `bos_token` and `eos_token` render as: an HF folder's tokenizer_config.json
    // says them, as transformers passes them; a GGUF's are its BOS and EOS tokens' text.
    let own = tok.special_texts();
    let own = (own.0.as_str(), own.1.as_str());
    let (bos, eos) = match &run.shared.model {
        ModelSource::Hf { path } => ChatTemplate::hf_special_texts(path, own),
        _ => (own.0.to_string(), own.1.to_string()),
    };
    let compile = |source: &str| ChatTemplate::new(source, &bos, &eos).map_err(bad);
    let template = match (which.as_str(), &run.shared.model) {
        ("model", ModelSource::Hf { path }) => ChatTemplate::from_hf_dir(path, own).map_err(bad)?,
        ("model", ModelSource::Gguf { path }) => compile(
            gguf.and_then(|f| f.get_str("tokenizer.chat_template").ok().flatten())
                .ok_or_else(|| {
                    bad(format!(
                        "{} has no tokenizer.chat_template; give a Jinja file instead",
                        path.display()
                    ))
                })?,
        )?,
        ("model", ModelSource::Builtin { .. }) => {
            return Err(bad("the builtin models have no chat template".into()))
        }
        (file, _) => compile(&std::fs::read_to_string(file).map_err(|e| {
            bad(format!(
                "{file}: {e}; give `model` or a path to a Jinja file"
            ))
        })?)?,
    };
    Ok(tok.with_chat_template(template)?)
}

/// The token cache of a data source under `cache_dir`: built on first use on `threads` threads,
/// read as it is after that; with how the build went when it was built now.
pub fn tokens_of(
    path: &Path,
    regime: crate::spec::Regime,
    spec: &crate::spec::DataSpec,
    tokenizer: &Tokenizer,
    cache_dir: &Path,
    threads: usize,
) -> Result<(std::sync::Arc<TokenCache>, Option<token_cache::BuildStats>), TrainError> {
    let (cache, built) = token_cache::prepare(
        path,
        regime,
        spec,
        tokenizer,
        cache_dir,
        threads,
        token_cache::Layout::default(),
    )?;
    Ok((cache, built))
}

/// The cache of a run's data source, and on stderr how its build went when it was built now.
fn run_tokens(
    path: &Path,
    regime: crate::spec::Regime,
    spec: &crate::spec::DataSpec,
    tokenizer: &Tokenizer,
    cache_dir: &Path,
) -> Result<std::sync::Arc<TokenCache>, TrainError> {
    // Every core of the machine tokenizes (once: later runs and resumes read the cache).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (cache, built) = tokens_of(path, regime, spec, tokenizer, cache_dir, cores)?;
    if let Some(b) = &built {
        let m = cache.meta();
        eprintln!(
            "tokenized {}: {} documents, {} tokens in {:.1} s ({:.1} MB/s per thread, {} threads) into {}",
            path.display(),
            m.docs,
            m.tokens,
            b.seconds,
            b.mb_per_s_per_thread(),
            b.threads,
            cache.dir().display()
        );
    }
    Ok(cache)
}

/// The documents `which` of a cache as examples.
fn examples(cache: &TokenCache, which: &[u32]) -> Result<Vec<Example>, TrainError> {
    which.iter().map(|&i| cache.example(i as usize)).collect()
}

/// The adapter settings of a LoRA run.
pub fn lora_options(run: &RunFile) -> Option<LoraOptions> {
    match &run.point.method {
        MethodConfig::Full => None,
        MethodConfig::Lora {
            rank,
            alpha,
            target_modules,
            dropout,
        } => Some(LoraOptions {
            rank: *rank,
            alpha: *alpha,
            targets: target_modules.clone(),
            dropout: *dropout,
            rslora: run.shared.training.rslora,
        }),
    }
}

/// The base model's name for exported adapters: the builtin shape or the path.
fn base_model_name(run: &RunFile) -> String {
    match &run.shared.model {
        ModelSource::Builtin { shape, .. } => shape.clone(),
        ModelSource::Hf { path } | ModelSource::Gguf { path } => path.display().to_string(),
    }
}

/// Build the run's model and its tokenizer: a builtin shape (byte tokenizer), randomly
/// initialised from the run's seed or loaded from `sweep pretrain`'s cache; a Hugging Face folder
/// (safetensors and tokenizer.json); or a GGUF file (dequantized, with the tokenizer of its
/// metadata). LoRA runs get adapters.
pub fn build_model(
    run: &RunFile,
    opts: &TrainOptions,
    device: Device,
) -> Result<(Llama, Tokenizer), TrainError> {
    let t = &run.shared.training;
    let build = BuildOptions {
        seed: run.seed,
        lora: lora_options(run),
        freeze_embeddings_and_norms: t.freeze_embeddings_and_norms,
    };
    let (shape, init) = match &run.shared.model {
        ModelSource::Builtin { shape, init } => (shape.clone(), *init),
        ModelSource::Hf { path } => {
            crate::model::config::check_hf_dir(path).map_err(ModelError::Config)?;
            let tokenizer = framed(Tokenizer::from_hf_dir(path)?, run, None)?;
            let model = Llama::from_hf_dir(path, &build, device)?;
            check_vocabulary(&tokenizer, &model.cfg, &path.display().to_string())?;
            return Ok((model, tokenizer));
        }
        ModelSource::Gguf { path } => {
            let file = GgufFile::open(path).map_err(ModelError::from)?;
            let tokenizer = framed(Tokenizer::from_gguf(&file)?, run, Some(&file))?;
            let model = gguf::load_llama(&file, &build, device)?;
            check_vocabulary(&tokenizer, &model.cfg, &path.display().to_string())?;
            return Ok((model, tokenizer));
        }
    };
    let cfg = match &opts.model_override {
        Some(c) => c.clone(),
        None => LlamaConfig::builtin(&shape).ok_or_else(|| {
            TrainError::Unsupported(format!(
                "unknown builtin shape `{shape}` (known: {})",
                BUILTIN_SHAPES.join(", ")
            ))
        })?,
    };
    let tokenizer = Tokenizer::Byte;
    if cfg.vocab_size < tokenizer.vocab_size() {
        return Err(TrainError::Unsupported(format!(
            "builtin shape `{shape}` has vocabulary {}, but the byte tokenizer needs {}; \
             only byte-level builtin shapes (tiny, small) can train here (real models load \
             with model.hf or model.gguf)",
            cfg.vocab_size,
            tokenizer.vocab_size()
        )));
    }
    let model = Llama::new(&cfg, &build, device)?;
    if init == Init::Pretrained {
        let path = opts
            .cache_dir
            .join("pretrained")
            .join(format!("{shape}.safetensors"));
        if !path.exists() {
            return Err(TrainError::Unsupported(format!(
                "model.init = \"pretrained\" needs {}, which `sweep pretrain` writes; run it \
                 first, or set init = \"random\" in the spec",
                path.display()
            )));
        }
        if let Err(why) = crate::model::safetensors::check_complete(&path) {
            return Err(TrainError::Unsupported(format!(
                "the pretrained model {} is corrupt ({why}): run `sweep pretrain --shape {shape} --force` to make it again",
                path.display()
            )));
        }
        let tensors = Tensor::read_safetensors(&path).map_err(|e| ModelError::Load {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        model.load_named(
            &tensors.into_iter().collect(),
            true,
            &path.display().to_string(),
        )?;
    }
    Ok((model, tokenizer))
}

/// The tokenizer the evaluators see: with the data's chat template when evaluation questions are
/// framed by it (`evaluation.apply_chat_template`, said in the notes), else without.
fn evaluation_tokenizer(tokenizer: Tokenizer, run: &RunFile, notes: &mut Vec<String>) -> Tokenizer {
    if tokenizer.chat().is_none() {
        return tokenizer;
    }
    if run.shared.evaluation.chat_framed(&run.shared.data) {
        notes.push(
            "evaluation: each question (math_accuracy, gsm8k, humaneval, multiple choice, the \
             forgetting benchmarks) is framed by data.chat_template as a user turn opened for \
             the answer (evaluation.apply_chat_template)"
                .into(),
        );
        tokenizer
    } else {
        notes.push(
            "evaluation: questions are plain text (evaluation.apply_chat_template = false), \
             though training pairs are framed by data.chat_template"
                .into(),
        );
        tokenizer.without_chat()
    }
}

/// Refuse a tokenizer that produces ids beyond the model's embedding rows.
fn check_vocabulary(tok: &Tokenizer, cfg: &LlamaConfig, source: &str) -> Result<(), TrainError> {
    if tok.vocab_size() > cfg.vocab_size {
        return Err(ModelError::Load {
            path: source.to_string(),
            msg: format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tok.vocab_size(),
                cfg.vocab_size
            ),
        }
        .into());
    }
    Ok(())
}

/// The metrics this trainer measures; the others requested are reported as not measured.
fn measured(metric: Metric) -> bool {
    matches!(
        metric,
        Metric::TargetLoss | Metric::SourceLoss | Metric::SpectralRank | Metric::IntruderDimensions
    ) || evaluators::METRICS.contains(&metric)
}

impl<'a> Trainer<'a> {
    pub(super) fn new(
        run: &'a RunFile,
        run_hash: &str,
        dir: &Path,
        opts: &'a TrainOptions,
    ) -> Result<Trainer<'a>, TrainError> {
        let t = &run.shared.training;
        if let Some(n) = opts.threads {
            tch::set_num_threads(n.max(1) as i32);
        }
        let device = resolve_device(&opts.device)?;
        if t.batch_size == 0 || t.seq_len == 0 || t.micro_batch_size == 0 {
            return Err(TrainError::Unsupported(
                "batch_size, micro_batch_size and seq_len must be positive".into(),
            ));
        }
        let ranks = opts.world.size() as u64;
        if !t.batch_size.is_multiple_of(ranks) {
            return Err(TrainError::Unsupported(format!(
                "training.batch_size = {} does not divide over {ranks} ranks: give a multiple of {ranks} (each rank takes an equal slice of every batch)",
                t.batch_size
            )));
        }
        let (mut model, tokenizer) = build_model(run, opts, device)?;
        // Training windows beyond a sliding window would not be computed as the model does.
        model.cfg.check_window(t.seq_len as usize).map_err(|e| {
            TrainError::Unsupported(format!("training.seq_len = {}: {e}", t.seq_len))
        })?;
        let kind = compute_kind(t.precision, device);
        model.set_compute_kind(kind);
        let device_label = format!(
            "{} {}",
            match device {
                Device::Cuda(i) => format!("cuda:{i}"),
                _ => "cpu".into(),
            },
            if kind == tch::Kind::BFloat16 {
                "bf16"
            } else {
                "f32"
            }
        );
        let pad = tokenizer.specials().pad;
        let seq_len = t.seq_len as usize;
        let data = &run.shared.data;
        let eval_tokens = match run.shared.evaluation.eval_tokens.amount() {
            TokenAmount::Tokens(n) => n,
            TokenAmount::Epochs(_) => {
                return Err(TrainError::Unsupported(
                    "evaluation.eval_tokens in epochs; give a token count".into(),
                ))
            }
        };
        let micro = t.micro_batch_size as usize;

        let target_path = data::resolve_source(&data.target, &opts.data_dir)?;
        let target = run_tokens(&target_path, data.regime, data, &tokenizer, &opts.cache_dir)?;
        let mut notes = target.meta().warnings.clone();
        if t.shard_gradients && !t.shard_optimizer {
            return Err(TrainError::Setting(
                "training.shard_gradients = true shards the gradients of the optimizer's shards (ZeRO stage 2): set training.shard_optimizer = true too".into(),
            ));
        }
        if t.activation_checkpointing {
            if model.num_blocks() == 0 {
                return Err(TrainError::Unsupported(
                    "training.activation_checkpointing = true, but the model has no transformer blocks to recompute: set it to false".into(),
                ));
            }
            notes.push(format!(
                "activation checkpointing: the {} blocks are recomputed in the backward pass",
                model.num_blocks()
            ));
        }
        let mut files_read = vec![target_path];
        let held = target.held_out(eval_tokens)?;
        let held_docs = examples(&target, &held)?;
        let train_rows = Rows::cached(
            target,
            &held,
            data.regime,
            seq_len,
            pad,
            "target training data",
        )?;
        let sampler = Sampler::new(train_rows, run.seed);

        let metrics = run
            .shared
            .evaluation
            .metrics
            .clone()
            .unwrap_or_else(|| vec![Metric::TargetLoss, Metric::SourceLoss]);
        let generation: Vec<Metric> = metrics.iter().copied().filter(|m| measured(*m)).collect();
        let mut evaluators = evaluators::build(
            &generation,
            &run.shared.evaluation,
            &opts.data_dir,
            data.regime,
            &held_docs,
            run.seed,
            &tokenizer,
        )?;
        notes.extend(evaluators.iter().filter_map(|e| e.scoring()));
        if let Some((eval, note)) = evaluators::source_tasks(
            &metrics,
            &run.shared.evaluation,
            run.shared.evaluation.problems as usize,
        )? {
            evaluators.push(Box::new(eval));
            notes.push(note);
        }
        if metrics.contains(&Metric::Gsm8k) {
            let (eval, note) = evaluators::gsm8k(
                &run.shared.evaluation,
                run.shared.evaluation.problems as usize,
            )?;
            evaluators.push(Box::new(eval));
            notes.push(note);
        }
        // The losses, kept for post-hoc intruder scaling to measure again.
        let mut losses = Vec::new();
        if metrics.contains(&Metric::TargetLoss) && !held_docs.is_empty() {
            let rows = Rows::new(held_docs, data.regime, seq_len, pad, "held-out target data")?;
            losses.push(LossEval {
                name: "target".into(),
                rows: eval_rows(&rows, eval_tokens)?,
                seq_len,
                micro_batch: micro,
            });
        }
        if metrics.contains(&Metric::SourceLoss) {
            let source_path = data::resolve_source(&data.source, &opts.data_dir)?;
            let source = run_tokens(
                &source_path,
                crate::spec::Regime::Cpt,
                data,
                &tokenizer,
                &opts.cache_dir,
            )?;
            notes.extend(source.meta().warnings.iter().cloned());
            files_read.push(source_path);
            let rows = Rows::new(
                examples(&source, &source.held_out(eval_tokens)?)?,
                crate::spec::Regime::Cpt,
                seq_len,
                pad,
                "held-out source data",
            )?;
            losses.push(LossEval {
                name: "source".into(),
                rows: eval_rows(&rows, eval_tokens)?,
                seq_len,
                micro_batch: micro,
            });
        }
        for loss in &losses {
            evaluators.push(Box::new(loss.clone()));
        }
        if metrics.contains(&Metric::SpectralRank) {
            evaluators.push(Box::new(spectral::SpectralRankEval::snapshot(
                &model,
                run.shared.evaluation.rank_threshold,
            )?));
        }
        let e = &run.shared.evaluation;
        let intruder_k = e.intruder_k.unwrap_or(super::intruders::DEFAULT_K as u64) as usize;
        let intruder_epsilon = e
            .intruder_epsilon
            .unwrap_or(super::intruders::DEFAULT_EPSILON);
        let scaling = e.intruder_scaling.clone().filter(|l| !l.is_empty());
        // With scaling on, its evaluator counts the intruders too, from the same SVDs.
        if metrics.contains(&Metric::IntruderDimensions) && scaling.is_none() {
            evaluators.push(Box::new(super::intruders::IntruderEval::snapshot(
                &model,
                intruder_k,
                intruder_epsilon,
            )?));
        }
        if let Some(lambdas) = scaling {
            if losses.is_empty() {
                return Err(TrainError::Setting(
                    "evaluation.intruder_scaling measures target_loss and source_loss again with the intruders scaled: add one of them to evaluation.metrics".into(),
                ));
            }
            evaluators.push(Box::new(super::intruders::IntruderScalingEval::snapshot(
                &model,
                intruder_k,
                intruder_epsilon,
                lambdas,
                losses,
                metrics.contains(&Metric::IntruderDimensions),
            )?));
        }
        let not_measured = metrics
            .iter()
            .filter(|m| !measured(**m))
            .map(|m| {
                serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| format!("{m:?}"))
            })
            .collect();

        let optim = Optim::sharded(
            model.trainable(),
            OptimConfig {
                kind: t.optimizer,
                betas: t.betas,
                eps: t.eps,
                weight_decay: t.weight_decay,
                peak_lr: run.point.learning_rate,
            },
            &opts.world,
            t.shard_optimizer,
        )?;
        let optim = optim
            .with_kernels(opts.kernels)
            .with_sharded_gradients(t.shard_gradients);
        if opts.kernels == super::kernels::Kernels::Reference {
            notes.push("optimizer: the hand-written per-tensor reference kernels (SWEEP_OPTIMIZER_KERNELS=reference), not libtorch's fused ones".into());
        }
        if t.shard_optimizer {
            let mb = optim.state_bytes() as f64 / 1e6;
            notes.push(if optim.is_sharded() {
                format!(
                    "optimizer state sharded over {} ranks: rank 0 holds {mb:.2} MB of it",
                    opts.world.size()
                )
            } else {
                format!("shard_optimizer with one rank: nothing to shard ({mb:.2} MB of optimizer state)")
            });
        }
        if t.shard_gradients && !optim.shards_gradients() {
            notes.push("shard_gradients with one rank: nothing to shard".into());
        }
        // ZeRO stage 2: the blocks' gradients go to their owners as the backward completes
        // each; the rest (embeddings, final norm, head) after each micro-batch's backward,
        // since the head's chunks complete its gradient several times per pass.
        let in_backward = if optim.shards_gradients() {
            let blocks: Vec<(&Tensor, usize)> = optim
                .owners()
                .filter(|(name, _, _)| Llama::block_of(name).is_some())
                .map(|(_, t, owner)| (t, owner))
                .collect();
            opts.world.reduce_in_backward(&blocks)?
        } else {
            None
        };
        let total_steps = run.point.token_budget.div_ceil(t.tokens_per_step()).max(1);
        let schedule = LrSchedule::from_config(t, run.point.learning_rate, total_steps);
        let eval = &run.shared.evaluation;
        files_read.extend(eval.multiple_choice.clone());
        files_read.extend(eval.gsm8k.clone());
        files_read.extend(eval.gsm8k_train.clone());
        files_read.extend(eval.hellaswag.clone());
        files_read.extend(eval.arc_challenge.clone());
        files_read.extend(eval.winogrande.clone());
        // A chat template of its own frames what is trained and asked: it is read like data.
        files_read.extend(
            data.chat_template
                .as_deref()
                .filter(|t| *t != "model")
                .map(std::path::PathBuf::from),
        );
        if metrics.contains(&Metric::Humaneval) {
            files_read.push(
                eval.humaneval
                    .clone()
                    .unwrap_or_else(|| crate::metrics::humaneval::default_path(&opts.data_dir)),
            );
        }
        let device_name = format!("{:?}", model.vs.device());
        let base_cache =
            base_eval::BaseEvalCaches::new(dir, run, opts, &files_read, &metrics, &device_name);
        let mut inputs = model_inputs(run, opts)?;
        for f in &files_read {
            inputs.extend(
                fingerprint::of_path("data", f).map_err(|e| {
                    TrainError::Data(format!("fingerprinting {}: {e}", f.display()))
                })?,
            );
        }
        Ok(Trainer {
            adapter: lora_options(run).map(|l| (l, base_model_name(run))),
            bar: None,
            comm: Default::default(),
            in_backward,
            inputs,
            run,
            run_hash: run_hash.to_string(),
            dir: dir.to_path_buf(),
            opts,
            model,
            optim,
            sampler,
            evaluators,
            not_measured,
            schedule,
            total_steps,
            device_label,
            tokenizer: evaluation_tokenizer(tokenizer, run, &mut notes),
            base_cache,
            notes,
        })
    }
}
