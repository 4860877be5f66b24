//! The training loop of one prepared run: resume or evaluate the base, then step, log,
//! evaluate and checkpoint until the token budget is spent, then write the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::fingerprint::{self, Fingerprint};
use crate::model::llama::Llama;
use crate::model::tokenizer::Tokenizer;
use crate::plan::run::RunFile;

use super::checkpoint::{self, TrainState};
use super::eval::{self, Evaluator};
use super::optim::Optim;
use super::outputs::{self, EvalRecord, MetricsLine, RunResult, RunStatus, RESULT_SCHEMA};
use super::rows::{batch_of, Sampler};
use super::schedule::LrSchedule;
use super::{base_eval, export, recompute, TrainError, TrainOptions};

/// What one optimizer step did.
enum Stepped {
    /// The update was applied; the gradient's global norm before clipping.
    Applied { grad_norm: f64 },
    /// The loss diverged (why); nothing was applied.
    Diverged(String),
}

/// A prepared run: model, optimizer, data and evaluators.
pub(super) struct Trainer<'a> {
    pub(super) run: &'a RunFile,
    /// sha256 of the run.json read, for result.json.
    pub(super) run_hash: String,
    pub(super) dir: PathBuf,
    pub(super) opts: &'a TrainOptions,
    pub(super) model: Llama,
    pub(super) optim: Optim,
    pub(super) sampler: Sampler,
    pub(super) evaluators: Vec<Box<dyn Evaluator>>,
    pub(super) not_measured: Vec<String>,
    pub(super) schedule: LrSchedule,
    pub(super) total_steps: u64,
    /// Device and compute kind, e.g. `cuda:0 bf16`, for result.json.
    pub(super) device_label: String,
    /// The model's tokenizer, for the generation metrics.
    pub(super) tokenizer: Tokenizer,
    /// Where the base model's evaluation is shared with the sweep's other runs.
    pub(super) base_cache: Option<base_eval::BaseEvalCaches>,
    /// Warnings and provenance for result.json (skipped data lines, a shared base evaluation).
    pub(super) notes: Vec<String>,
    /// Time in collectives and the steps it was spent over, since the last metrics line.
    pub(super) comm: (std::time::Duration, u64),
    /// With sharded gradients, the hooks that reduce the blocks' during the backward pass.
    pub(super) in_backward: Option<crate::dist::InBackward>,
    /// A LoRA run's adapter settings and base model name, for the PEFT adapter it writes.
    pub(super) adapter: Option<(crate::model::llama::LoraOptions, String)>,
    /// Fingerprints of the files trained from, checked against a checkpoint's on resume.
    pub(super) inputs: BTreeMap<String, Fingerprint>,
    /// The progress shown as it trains (with `opts.progress`, on the main rank).
    pub(super) bar: Option<crate::progress::StepBar>,
}

impl<'a> Trainer<'a> {
    /// Rank 0 evaluates while the other ranks wait for it (through the store, so that no
    /// collective times out during a long evaluation): one evaluation, one writer, and the same
    /// numbers as a single process. A stop signal ends the evaluation within one item (an
    /// [`eval::interrupted`] error; the others are released all the same).
    fn evaluate(&self, step: u64, tokens: u64) -> Result<EvalRecord, TrainError> {
        let mut metrics = BTreeMap::new();
        let stop = self.opts.stop.as_deref();
        let mut outcome = Ok(());
        for e in self.evaluators.iter().filter(|_| self.opts.world.is_main()) {
            match e.evaluate(&self.model, &self.tokenizer, stop) {
                Ok(m) => metrics.extend(m),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        self.opts.world.after_main("evaluation")?;
        // Every rank learns how rank 0's evaluation went (1: stopped, 2: failed): a stopped one
        // is recorded by none, a failed one fails every rank at once (not at the next
        // collective's timeout).
        let world = &self.opts.world;
        let code = match &outcome {
            Ok(()) => 0.0,
            Err(e) if eval::interrupted(e) => 1.0,
            Err(_) => 2.0,
        };
        let code = if world.size() > 1 {
            world.sum_f64(code)?
        } else {
            code
        };
        outcome?;
        if code >= 2.0 {
            return Err(TrainError::Output(
                "rank 0's evaluation failed (its log says why)".into(),
            ));
        }
        if code >= 1.0 {
            return Err(crate::metrics::MetricsError::Interrupted.into());
        }
        Ok(EvalRecord {
            step,
            tokens,
            metrics,
        })
    }

    /// Whether the state is due an evaluation it has not had: a token checkpoint passed, or
    /// the end reached unevaluated.
    fn eval_due(&self, state: &TrainState) -> bool {
        let evaluated = state.evals.last().map_or(0, |e| e.tokens);
        let next_eval = self
            .run
            .point
            .eval_at
            .iter()
            .copied()
            .find(|&b| b > evaluated);
        next_eval.is_some_and(|b| state.tokens >= b)
            || (state.step == self.total_steps && evaluated < state.tokens)
    }

    /// A metrics.jsonl line, and its scalars in the run's TensorBoard event file, written by
    /// rank 0 alone.
    fn append_metrics(&self, path: &Path, line: &MetricsLine) -> Result<(), TrainError> {
        if self.opts.world.is_main() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let line = MetricsLine {
                time: line.time.or(Some(now)),
                ..line.clone()
            };
            outputs::append_metrics(path, &line)?;
            crate::tracking::tensorboard::append(&self.dir, &line).map_err(|e| self.tb_error(e))?;
        }
        Ok(())
    }

    fn tb_error(&self, e: std::io::Error) -> TrainError {
        TrainError::Output(format!(
            "{}: {e}",
            self.dir.join(crate::tracking::tensorboard::DIR).display()
        ))
    }

    /// Rank 0 saves; the others wait for it outside any collective. With a sharded optimizer
    /// every rank writes its own shard of the state into rank 0's temporary folder at once.
    fn checkpoint(&self, state: &TrainState) -> Result<(), TrainError> {
        let (world, dir) = (&self.opts.world, self.dir.join("checkpoints"));
        if !self.optim.is_sharded() {
            if world.is_main() {
                let optim = self.optim.state_tensors();
                checkpoint::save(&dir, state, &self.model.trainable(), &optim)?;
            }
            world.after_main("checkpoint")?;
            return Ok(());
        }
        let tmp = if world.is_main() {
            checkpoint::prepare(&dir, state.step)?
        } else {
            dir.join(format!(".tmp-step-{}", state.step))
        };
        world.after_main("checkpoint folder")?;
        let mine = checkpoint::write_shard(&tmp, world.rank(), &self.optim.state_tensors());
        // Every rank says how its shard went: one that failed fails the checkpoint everywhere.
        let failed = world.sum_f64(if mine.is_err() { 1.0 } else { 0.0 })?;
        let mine = match (mine, failed > 0.0) {
            (Err(e), _) => Err(e),
            (Ok(()), true) => Err(TrainError::Checkpoint(format!(
                "{failed} rank(s) could not write their optimizer shard of step {}",
                state.step
            ))),
            (Ok(()), false) => Ok(()),
        };
        if world.is_main() {
            let state = TrainState {
                optim_shards: world.size() as u32,
                ..state.clone()
            };
            checkpoint::finish(&dir, &tmp, &state, &self.model.trainable(), mine)?;
        } else {
            mine?;
        }
        world.after_main("checkpoint")?;
        Ok(())
    }

    /// One optimizer step's forward and backward passes over micro-batches; the gradient is that
    /// of the mean loss over every target token of the batch. Returns that mean loss.
    fn accumulate(&mut self, position: &mut u64) -> Result<f64, TrainError> {
        let t = &self.run.shared.training;
        let batch = t.batch_size as usize;
        let micro = (t.micro_batch_size as usize).min(batch);
        // Each rank reads its slice of the batch; normalized by the whole batch's target count,
        // the ranks' gradients sum to the single-process gradient.
        let world = &self.opts.world;
        let (mine, targets) = self
            .sampler
            .batch(*position, batch, world.rank(), world.size())?;
        *position += batch as u64;
        let denom = targets.max(1) as f64;
        let mut loss_sum = 0.0;
        let zero2 = self.optim.shards_gradients();
        let in_backward_before = self.in_backward.as_ref().map(|r| r.spent());
        let mut comm = std::time::Duration::ZERO;
        for chunk in mine.chunks(micro.max(1)) {
            let b = batch_of(chunk, t.seq_len as usize)?;
            // With sharded gradients the blocks' are reduced during this backward
            // (`in_backward`), the rest after it.
            loss_sum += recompute::backward(&self.model, &b, denom, t.activation_checkpointing)?;
            if zero2 {
                let started = Instant::now();
                self.optim
                    .reduce_grads(world, &|n: &str| Llama::block_of(n).is_none())?;
                comm += started.elapsed();
            }
            if self.model.vs.device() == tch::Device::Cpu {
                crate::util::trim_heap();
            }
        }
        let comm_started = Instant::now();
        if !zero2 {
            self.optim.all_reduce_grads(world)?;
        }
        let loss = world.sum_f64(loss_sum)?;
        if let (Some(r), Some(before)) = (&self.in_backward, in_backward_before) {
            comm += r.spent() - before;
        }
        self.comm.0 += comm + comm_started.elapsed();
        self.comm.1 += 1;
        Ok(loss)
    }

    /// Train to the end of the token budget (or a stop), then write the result.
    pub(super) fn run(mut self, started: Instant) -> Result<RunResult, TrainError> {
        let t = self.run.shared.training.clone();
        let mut state = self.resume_or_start()?;
        let wall_before = state.wall_s;
        let mut session_steps = 0u64;
        let mut last_log = (Instant::now(), state.tokens);
        let mut status = RunStatus::Completed;
        let mut error = None;
        // The step of the last checkpoint this session wrote.
        let mut checkpointed = None;
        // An evaluation that a stop cut short is done first.
        if state.step > 0 && self.eval_due(&state) {
            let lr = self.schedule.lr(state.step - 1);
            self.log_and_evaluate(&mut state, lr, None, &mut last_log)?;
        }

        while state.step < self.total_steps {
            if self.stop_requested(session_steps)? {
                status = RunStatus::Interrupted;
                break;
            }
            let step_started = Instant::now();
            let lr = self.schedule.lr(state.step);
            let grad_norm = match self.step(&mut state, lr)? {
                Stepped::Applied { grad_norm } => grad_norm,
                Stepped::Diverged(why) => {
                    status = RunStatus::Diverged;
                    error = Some(why);
                    break;
                }
            };
            session_steps += 1;
            if let Some(rest) = self
                .opts
                .min_step
                .and_then(|m| m.checked_sub(step_started.elapsed()))
            {
                std::thread::sleep(rest);
            }
            self.log_and_evaluate(&mut state, lr, Some(grad_norm), &mut last_log)?;
            if t.checkpoint_every > 0
                && state.step % t.checkpoint_every == 0
                && state.step < self.total_steps
            {
                state.wall_s = wall_before + started.elapsed().as_secs_f64();
                self.checkpoint(&state)?;
                checkpointed = Some(state.step);
            }
        }
        // The last evaluation stopped by a signal: not complete yet (it resumes to evaluate).
        if status == RunStatus::Completed && self.eval_due(&state) {
            status = RunStatus::Interrupted;
        }
        state.wall_s = wall_before + started.elapsed().as_secs_f64();
        self.finish(state, status, error, checkpointed)
    }

    fn metrics_path(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// The state to train from: the latest checkpoint's (checked against this run and its
    /// inputs), or step 0 after evaluating the base model.
    fn resume_or_start(&mut self) -> Result<TrainState, TrainError> {
        let metrics_path = self.metrics_path();
        let Some(loaded) = checkpoint::load_latest(&self.dir.join("checkpoints"))? else {
            return self.start();
        };
        if loaded.state.config_id != self.run.config_id {
            return Err(TrainError::Checkpoint(format!(
                "{} belongs to config {}, not {}",
                loaded.path.display(),
                loaded.state.config_id,
                self.run.config_id
            )));
        }
        if !loaded.state.inputs.is_empty() {
            if let Some(what) = fingerprint::changes(&loaded.state.inputs, &self.inputs) {
                return Err(TrainError::Checkpoint(format!(
                    "the files this run trains from changed since its checkpoint {} ({what}); resuming would continue on other inputs: restore them, or `sweep train --force` to start over",
                    loaded.path.display()
                )));
            }
        }
        // The checkpoint holds the trainable tensors only (the adapter, for LoRA); the frozen
        // rest was rebuilt from the seed or the pretrained file.
        if let Some((name, _)) = self
            .model
            .trainable()
            .into_iter()
            .find(|(n, _)| !loaded.model.contains_key(n))
        {
            return Err(TrainError::Checkpoint(format!(
                "{} lacks {name}",
                loaded.path.display()
            )));
        }
        self.model
            .load_named(&loaded.model, false, &loaded.path.display().to_string())?;
        self.optim.load_state(&loaded.optim, loaded.state.step)?;
        if self.opts.world.is_main() {
            outputs::truncate_metrics(&metrics_path, loaded.state.step)?;
            crate::tracking::tensorboard::rewrite(&self.dir).map_err(|e| self.tb_error(e))?;
        }
        let mut state = loaded.state;
        if state.step < self.total_steps {
            state.resumed_from.push(state.step);
        }
        Ok(state)
    }

    /// Step 0: the base model's evaluation (shared with the sweep's other runs where it can be).
    fn start(&mut self) -> Result<TrainState, TrainError> {
        let metrics_path = self.metrics_path();
        let main = self.opts.world.is_main();
        if main {
            let _ = std::fs::remove_file(&metrics_path);
            crate::tracking::tensorboard::rewrite(&self.dir).map_err(|e| self.tb_error(e))?;
        }
        let (metrics, note) = if main {
            base_eval::evaluate(
                &self.evaluators,
                &self.model,
                &self.tokenizer,
                self.base_cache.as_ref(),
                &self.run.id,
            )?
        } else {
            (BTreeMap::new(), None)
        };
        self.opts.world.after_main("base evaluation")?;
        self.notes.extend(note);
        let base = EvalRecord {
            step: 0,
            tokens: 0,
            metrics,
        };
        self.append_metrics(
            &metrics_path,
            &MetricsLine {
                step: 0,
                tokens: 0,
                lr: 0.0,
                train_loss: None,
                grad_norm: None,
                tokens_per_s: None,
                comm_ms_per_step: None,
                time: None,
                eval: base.metrics.clone(),
            },
        )?;
        Ok(TrainState {
            config_id: self.run.config_id.clone(),
            step: 0,
            tokens: 0,
            data_position: 0,
            seed: self.run.seed,
            evals: vec![base],
            wall_s: 0.0,
            last_train_loss: None,
            resumed_from: Vec::new(),
            inputs: self.inputs.clone(),
            optim_shards: 0,
        })
    }

    /// A signal (to any rank: every rank stops after the same step) or `stop_after_steps`.
    fn stop_requested(&self, session_steps: u64) -> Result<bool, TrainError> {
        let signalled = self
            .opts
            .stop
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        let signalled = if self.opts.world.size() > 1 {
            self.opts.world.sum_f64(if signalled { 1.0 } else { 0.0 })? > 0.0
        } else {
            signalled
        };
        Ok(signalled
            || self
                .opts
                .stop_after_steps
                .is_some_and(|n| session_steps >= n))
    }

    /// One optimizer step at `lr`: forward and backward over the batch, clip, update, advance
    /// the state; a diverged loss is logged and the step not applied.
    fn step(&mut self, state: &mut TrainState, lr: f64) -> Result<Stepped, TrainError> {
        let t = &self.run.shared.training;
        let (max_loss, grad_clip, tokens_per_step) = (t.max_loss, t.grad_clip, t.tokens_per_step());
        self.optim.zero_grad()?;
        // Dropout draws from libtorch's global generator: seed it per step so that a resumed run
        // draws what an uninterrupted one would.
        tch::manual_seed((state.seed.wrapping_mul(1_000_003) ^ state.step) as i64);
        let mut position = state.data_position;
        let loss = self.accumulate(&mut position)?;
        if !loss.is_finite() || max_loss.is_some_and(|m| loss > m) {
            self.append_metrics(
                &self.metrics_path(),
                &MetricsLine {
                    step: state.step + 1,
                    tokens: state.tokens + tokens_per_step,
                    lr,
                    train_loss: Some(loss),
                    grad_norm: None,
                    tokens_per_s: None,
                    comm_ms_per_step: None,
                    time: None,
                    eval: BTreeMap::new(),
                },
            )?;
            state.last_train_loss = Some(loss);
            return Ok(Stepped::Diverged(format!(
                "training loss {loss} at step {} (max_loss {max_loss:?})",
                state.step + 1
            )));
        }
        let grad_norm = self.optim.clip_grad_norm(grad_clip, &self.opts.world)?;
        self.optim.step(lr)?;
        self.optim.share_updates(&self.opts.world)?;
        state.step += 1;
        state.tokens += tokens_per_step;
        state.data_position = position;
        state.last_train_loss = Some(loss);
        Ok(Stepped::Applied { grad_norm })
    }

    /// After a step: evaluate at the run's token checkpoints (and at the end), and write a
    /// metrics line when evaluating, every `log_every` steps and at the end.
    fn log_and_evaluate(
        &mut self,
        state: &mut TrainState,
        lr: f64,
        grad_norm: Option<f64>,
        last_log: &mut (Instant, u64),
    ) -> Result<(), TrainError> {
        let log_every = self.run.shared.training.log_every;
        let end = state.step == self.total_steps;
        let eval_now = self.eval_due(state);
        let log_now = log_every > 0 && state.step.is_multiple_of(log_every);
        if !(eval_now || log_now || end) {
            return Ok(());
        }
        let eval = if eval_now {
            let rec = match self.evaluate(state.step, state.tokens) {
                // Stopped by a signal: nothing of it is recorded; the stop check before the next
                // step ends the run with a checkpoint, and the resumed run evaluates first.
                Err(e) if eval::interrupted(&e) => return Ok(()),
                other => other?,
            };
            let m = rec.metrics.clone();
            state.evals.push(rec);
            m
        } else {
            BTreeMap::new()
        };
        let (comm, steps) = std::mem::take(&mut self.comm);
        let comm_ms_per_step = (self.opts.world.size() > 1 && steps > 0)
            .then(|| comm.as_secs_f64() * 1e3 / steps as f64);
        let secs = last_log.0.elapsed().as_secs_f64();
        let tps = (secs > 0.0).then(|| (state.tokens - last_log.1) as f64 / secs);
        self.append_metrics(
            &self.metrics_path(),
            &MetricsLine {
                step: state.step,
                tokens: state.tokens,
                lr,
                train_loss: state.last_train_loss,
                grad_norm,
                tokens_per_s: tps,
                comm_ms_per_step,
                time: None,
                eval,
            },
        )?;
        *last_log = (Instant::now(), state.tokens);
        if self.opts.progress && self.opts.world.is_main() {
            let p = crate::progress::Progress {
                step: state.step,
                total_steps: self.total_steps,
                tokens: state.tokens,
                train_loss: state.last_train_loss,
                tokens_per_s: tps,
            };
            let evals: String = state
                .evals
                .last()
                .filter(|e| e.step == state.step)
                .map(|e| {
                    e.metrics
                        .iter()
                        .map(|(k, v)| format!(", {k} {v:.4}"))
                        .collect()
                })
                .unwrap_or_default();
            let per_step = self.run.shared.training.tokens_per_step();
            let bar = self.bar.get_or_insert_with(|| {
                crate::progress::StepBar::new(&self.run.id, self.total_steps, state.step)
            });
            bar.show(&self.run.id, &p, per_step, &evals);
        }
        Ok(())
    }

    /// The last checkpoint, the adapter of a completed LoRA run, and result.json (not for an
    /// interrupted run, which resumes from its checkpoint).
    fn finish(
        mut self,
        state: TrainState,
        status: RunStatus,
        error: Option<String>,
        checkpointed: Option<u64>,
    ) -> Result<RunResult, TrainError> {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        // Not twice for one step (a stop right after a periodic checkpoint): the warning before
        // a time limit leaves time for one.
        if status != RunStatus::Diverged && checkpointed != Some(state.step) {
            self.checkpoint(&state)?;
        }
        let main = self.opts.world.is_main();
        if self.optim.shards_gradients() && state.step > 0 {
            self.notes.push(format!(
                "gradients sharded over {} ranks (ZeRO stage 2): rank 0 holds {:.2} MB of them between steps, of {:.2} MB",
                self.opts.world.size(),
                self.optim.grad_bytes() as f64 / 1e6,
                self.optim.param_bytes() as f64 / 1e6
            ));
        }
        if status == RunStatus::Completed && main {
            if let Some((lora, base)) = &self.adapter {
                export::write_peft_adapter(
                    &self.dir.join(crate::results::ADAPTER_DIR),
                    &self.model,
                    lora,
                    base,
                )?;
            }
        }
        let (trainable, total) = self.model.param_counts();
        let result = RunResult {
            schema: RESULT_SCHEMA,
            id: self.run.id.clone(),
            config_id: self.run.config_id.clone(),
            status,
            step: state.step,
            tokens: state.tokens,
            total_steps: self.total_steps,
            final_train_loss: state.last_train_loss,
            evals: state.evals,
            metrics_not_measured: self.not_measured,
            metric_items: self.evaluators.iter().flat_map(|e| e.items()).collect(),
            trainable_params: trainable,
            total_params: total,
            wall_s: state.wall_s,
            peak_rss_kib: outputs::peak_rss_kib(),
            peak_gpu_bytes: match self.model.vs.device() {
                tch::Device::Cuda(i) => super::kernels::cuda_peak_allocated(i, false),
                _ => None,
            },
            error,
            device: Some(self.device_label),
            notes: self.notes,
            resumed_from: state.resumed_from,
            run_hash: Some(self.run_hash),
            host: Some(crate::results::this_host()),
            world: self.opts.world.describe(),
            inputs: self.inputs,
        };
        if status != RunStatus::Interrupted && main {
            outputs::write_result(&self.dir.join("result.json"), &result)?;
        }
        Ok(result)
    }
}
