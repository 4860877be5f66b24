//! A user's training program as a sweep's trainer (`[trainer] command = [...]`): `sweep train
//! RUN.json` runs it instead of the builtin trainer, so that planning, both executors, retries
//! and the report work the same for an HF PEFT, TRL or torchtune script.
//!
//! The contract, which the README documents:
//! - The command's arguments may name the run's settings as `{placeholder}`s ([`PLACEHOLDERS`];
//!   `{{` and `}}` are braces); every one is also in the environment as `SWEEP_NAME` (upper
//!   case), and the whole resolved configuration is `{run_json}`.
//! - The program writes `{run_dir}/metrics.jsonl`, one JSON object per line with `tokens`
//!   (training tokens so far) and, optionally, `step`, `lr`, `train_loss`; every other numeric
//!   key is an evaluation metric (`target_loss`, `source_loss`, `gsm8k_strict`, ...) measured at
//!   those tokens. The base model's evaluation is the line at 0 tokens; then one at each of
//!   `{eval_at}`. A line may give the items of its proportions: `"items": {"gsm8k_strict": 1319}`.
//! - It exits 0 when the run is trained to its budget; `sweep` then writes result.json from
//!   metrics.jsonl. Any other exit is a failure (its output is the run's train.log).
//! - On SIGTERM or SIGUSR1 (a time limit, a preemption, `sweep cancel`) it checkpoints into
//!   `{run_dir}` and exits; started again, it resumes from there. `sweep` passes the signal on
//!   and writes no result, so the run is resumed, not counted.
//! - A Hugging Face Trainer with `output_dir = {run_dir}` checkpoints as `checkpoint-N`
//!   folders: with `[trainer] resume = ["--resume_from_checkpoint", "{resume_from}"]` those
//!   arguments are added when one exists (the newest with its trainer_state.json), and
//!   metrics.jsonl keeps its lines up to that checkpoint's step, since the rest is measured
//!   again ([`hf_checkpoint`], [`keep_lines_to`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use crate::plan::run::{run_hash, ModelSource, RunFile};
use crate::tracking::mlflow::RunEnd;

/// How long a finished run waits for the MLflow server to take the rest of its lines.
const MLFLOW_WAIT: std::time::Duration = std::time::Duration::from_secs(20);
use crate::results::{EvalRecord, MetricsLine, RunResult, RunStatus, RESULT_SCHEMA};
pub use crate::spec::trainer::{check, PLACEHOLDERS};

/// The value of every placeholder for a run whose run.json is `run_json`.
pub fn values(run: &RunFile, dir: &Path, run_json: &Path) -> BTreeMap<&'static str, String> {
    let t = &run.shared.training;
    let ([rank, alpha, dropout], modules) = run.point.method.lora_texts();
    let modules: Vec<&str> = modules.iter().map(|m| m.name()).collect();
    let modules = modules.join(",");
    let model = match &run.shared.model {
        ModelSource::Builtin { shape, .. } => format!("builtin:{shape}"),
        ModelSource::Hf { path } | ModelSource::Gguf { path } => path.display().to_string(),
    };
    let eval_at: Vec<String> = run.point.eval_at.iter().map(u64::to_string).collect();
    BTreeMap::from([
        ("run_dir", dir.display().to_string()),
        ("run_json", run_json.display().to_string()),
        ("id", run.id.clone()),
        ("config_id", run.config_id.clone()),
        ("sweep", run.sweep.clone()),
        ("seed", run.seed.to_string()),
        ("method", run.point.method.method_name().to_string()),
        ("learning_rate", run.point.learning_rate.to_string()),
        ("rank", rank),
        ("alpha", alpha),
        ("dropout", dropout),
        ("target_modules", modules),
        ("token_budget", run.point.token_budget.to_string()),
        ("eval_at", eval_at.join(",")),
        ("batch_size", t.batch_size.to_string()),
        ("micro_batch_size", t.micro_batch_size.to_string()),
        ("seq_len", t.seq_len.to_string()),
        ("model", model),
        ("target", run.shared.data.target.clone()),
        ("source", run.shared.data.source.clone()),
    ])
}

/// An argument with its placeholders replaced (checked by [`check`] at plan time).
pub fn substitute(arg: &str, values: &BTreeMap<&'static str, String>) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let (c, after) = (rest.as_bytes()[i], &rest[i + 1..]);
        if after.as_bytes().first() == Some(&c) || c == b'}' {
            out.push(c as char);
            rest = after.strip_prefix(c as char).unwrap_or(after);
            continue;
        }
        let end = after.find('}').unwrap_or(after.len());
        out.push_str(values.get(&after[..end]).map_or("", String::as_str));
        rest = after.get(end + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// `sweep train RUN.json` of a sweep with a `[trainer] command`: run the program (signals
/// passed on), then write result.json from its metrics.jsonl, or a failed one.
pub fn train(
    run_json: &Path,
    trainer: &crate::spec::TrainerSpec,
    quiet: bool,
    force: bool,
    nproc: Option<usize>,
) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    if nproc.is_some_and(|n| n > 1) {
        anyhow::bail!(
            "{}: --nproc starts the builtin trainer's ranks; a [trainer] command starts its own processes (torchrun, accelerate launch): give them in the command",
            run_json.display()
        );
    }
    let text = std::fs::read_to_string(run_json)
        .with_context(|| format!("reading {}", run_json.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a run.json", run_json.display()))?;
    let run: RunFile = serde_json::from_value(value.clone()).with_context(|| {
        format!(
            "{}: not a run.json of this sweep version",
            run_json.display()
        )
    })?;
    let dir = run_json
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // One writer of the result: the process of rank 0, or the only one (under srun every
    // rank starts the command; the others run it and report nothing).
    let main = std::env::var("RANK").map_or(true, |r| r.trim() == "0");
    let _lock = if main {
        Some(crate::run_lock::RunLock::acquire(dir)?)
    } else {
        None
    };
    let who = crate::results::RunIdentity {
        id: run.id.clone(),
        config_id: run.config_id.clone(),
        run_hash: run_hash(&value),
    };
    if main {
        match crate::results::read_result_of(&dir.join("result.json"), &who) {
            Ok(r) if !force && matches!(r.status, RunStatus::Completed | RunStatus::Diverged) => {
                if !quiet {
                    eprintln!(
                        "{}: already {:?} ({} kept as it is); `sweep train --force` trains it again (the program's own checkpoints in {} are its to clear)",
                        run.id,
                        r.status,
                        dir.join("result.json").display(),
                        dir.display()
                    );
                }
                return Ok(());
            }
            had => {
                let _ = std::fs::remove_file(dir.join("result.json"));
                // Trained again from scratch: a new MLflow run, even for the same first line.
                if force && had.is_ok() {
                    crate::tracking::mlflow::retire(dir)?;
                }
            }
        }
    }
    let mut vals = values(&run, dir, run_json);
    // A program that goes on from Hugging Face Trainer checkpoints ([trainer] resume): the
    // newest whole one, unless the run is trained again from scratch (--force).
    let resumes =
        !trainer.resume.is_empty() || trainer.command.iter().any(|a| a.contains("{resume_from}"));
    let (checkpoint, skipped) = match resumes && !force {
        true => hf_checkpoint(dir),
        false => (None, Vec::new()),
    };
    vals.insert(
        "resume_from",
        checkpoint
            .as_ref()
            .map_or(String::new(), |(p, _)| p.display().to_string()),
    );
    let mut args: Vec<String> = trainer
        .command
        .iter()
        .map(|a| substitute(a, &vals))
        .collect();
    if checkpoint.is_some() {
        args.extend(trainer.resume.iter().map(|a| substitute(a, &vals)));
    }
    if resumes && main {
        for s in skipped.iter().filter(|_| !quiet) {
            eprintln!("{}: {s}", run.id);
        }
        keep_what_is_not_measured_again(dir, &run, checkpoint.as_ref(), quiet)?;
    }
    let mut cmd = std::process::Command::new(&args[0]);
    cmd.args(&args[1..]);
    for (k, v) in &vals {
        cmd.env(format!("SWEEP_{}", k.to_uppercase()), v);
    }
    crate::util::stop_with_parent(&mut cmd);
    // Its own process group: a stop reaches it once, passed on from here, not also from a
    // terminal's Ctrl-C or an executor's signal to this group.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let signals = [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR1,
    ];
    let received = Arc::new(std::sync::atomic::AtomicI32::new(0));
    for sig in signals {
        let (stop, received) = (stop.clone(), received.clone());
        // SAFETY: the handler only stores to atomics (async-signal-safe).
        unsafe {
            signal_hook::low_level::register(sig, move || {
                received.store(sig, Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
            })
        }
        .with_context(|| format!("installing the handler of signal {sig}"))?;
    }
    if stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    let mut mlflow = main
        .then(|| crate::tracking::mlflow::Live::start(dir, &run))
        .flatten();
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "starting the trainer command {:?} ([trainer] command): is it installed and on PATH?",
            args[0]
        )
    })?;
    let mut forwarded = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if stop.load(Ordering::SeqCst) && !forwarded {
            // SAFETY: kill(2) on our own child; no memory effects.
            unsafe { libc::kill(child.id() as i32, received.load(Ordering::SeqCst)) };
            forwarded = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let lines = read_metrics(&dir.join("metrics.jsonl"));
    if main {
        crate::tracking::tensorboard::rewrite(dir)
            .with_context(|| format!("writing the TensorBoard events of {}", dir.display()))?;
    }
    // Stopped before the budget: no result, so that the run resumes. A program that finished
    // its budget as the signal came has its result all the same.
    let trained = status.success()
        && lines
            .as_ref()
            .is_ok_and(|l| l.last().is_some_and(|l| l.tokens >= run.point.token_budget));
    if stop.load(Ordering::SeqCst) && !trained {
        if let Some(live) = mlflow.take() {
            live.finish(RunEnd::Killed, MLFLOW_WAIT);
        }
        if !quiet {
            eprintln!(
                "{}: stopped by a signal; the trainer command checkpoints into {} and resumes from there when started again",
                run.id,
                dir.display()
            );
        }
        return Ok(());
    }
    if !main {
        anyhow::ensure!(
            status.success(),
            "{}: the trainer command exited with {status} on rank {}",
            run.id,
            std::env::var("RANK").unwrap_or_default()
        );
        return Ok(());
    }
    let failure = match (status.success(), &lines) {
        (false, _) => Some(format!(
            "the trainer command {:?} exited with {status}; its output is in {}",
            args[0],
            dir.join("train.log").display()
        )),
        (true, Err(e)) => Some(format!(
            "the trainer command exited 0 but {e}: it must write a line per evaluation with `tokens` and the metrics ([trainer] contract in the README)"
        )),
        (true, Ok(_)) => None,
    };
    let lines = lines.unwrap_or_default();
    let mut result = result_of(
        &run,
        &value,
        &lines,
        failure.clone(),
        t0.elapsed().as_secs_f64(),
    );
    result.metric_items = read_items(&dir.join("metrics.jsonl"));
    crate::util::write_atomic(&dir.join("result.json"), |w| {
        serde_json::to_writer_pretty(&mut *w, &result)?;
        writeln!(w)
    })
    .with_context(|| format!("writing {}", dir.join("result.json").display()))?;
    if let Some(live) = mlflow.take() {
        let end = match failure {
            Some(_) => RunEnd::Failed,
            None => RunEnd::Finished,
        };
        live.finish(end, MLFLOW_WAIT);
    }
    match failure {
        Some(f) => anyhow::bail!("{}: {f}", run.id),
        None => {
            if !quiet {
                eprintln!(
                    "{}: completed by the trainer command ({} tokens, {} evaluations)",
                    run.id,
                    result.tokens,
                    result.evals.len()
                );
            }
            Ok(())
        }
    }
}

/// Before a program that resumes from `checkpoint` (None: it starts over, with no whole
/// checkpoint yet or trained again from scratch) starts: metrics.jsonl keeps the lines up to
/// the checkpoint's step, or none, since the program measures the rest again; MLflow sends
/// those again, or logs the new start as a new run.
fn keep_what_is_not_measured_again(
    dir: &Path,
    run: &RunFile,
    checkpoint: Option<&(PathBuf, u64)>,
    quiet: bool,
) -> anyhow::Result<()> {
    let metrics = dir.join("metrics.jsonl");
    let step = checkpoint.map(|(_, s)| *s);
    let dropped = keep_lines_to(&metrics, step, run.shared.training.tokens_per_step())
        .with_context(|| format!("keeping the lines of {} measured before", metrics.display()))?;
    let kept = read_metrics(&metrics).unwrap_or_default();
    match kept.last() {
        Some(last) => {
            let at = kept.iter().filter(|l| l.tokens == last.tokens).count();
            crate::tracking::mlflow::rewind(dir, (last.tokens, at))?;
        }
        None if dropped > 0 => crate::tracking::mlflow::retire(dir)?,
        None => {}
    }
    if quiet {
        return Ok(());
    }
    match checkpoint {
        Some((path, step)) => eprintln!(
            "{}: goes on from {} (step {step}); metrics.jsonl keeps its lines up to there ({dropped} later ones dropped: measured again)",
            run.id,
            path.display()
        ),
        None if dropped > 0 => eprintln!(
            "{}: no whole checkpoint to go on from: starts over ({dropped} lines of metrics.jsonl from before dropped)",
            run.id
        ),
        None => {}
    }
    Ok(())
}

/// The newest complete Hugging Face Trainer checkpoint in a run's folder, `checkpoint-N` with
/// the `global_step` of its trainer_state.json (the Trainer writes that file last, so a save cut
/// short by a kill has none), and what was passed over on the way to it.
pub fn hf_checkpoint(dir: &Path) -> (Option<(PathBuf, u64)>, Vec<String>) {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().is_dir().then(|| (n, e.path()))
        })
        .collect();
    found.sort();
    let mut skipped = Vec::new();
    for (_, path) in found.into_iter().rev() {
        let state = path.join("trainer_state.json");
        let step = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("global_step")?.as_u64());
        match step {
            Some(step) => return (Some((path, step)), skipped),
            None => skipped.push(format!(
                "{} has no readable trainer_state.json with a global_step (a save cut short): passed over",
                path.display()
            )),
        }
    }
    (None, skipped)
}

/// Keep the lines of metrics.jsonl measured up to `step` (by their `step`, or by their `tokens`
/// at `tokens_per_step` when they have none; None: none of them), so that a program going on
/// from a checkpoint there does not leave the later ones twice; returns how many were dropped.
/// A line that does not read is kept, for [`read_metrics`] to name.
pub fn keep_lines_to(
    path: &Path,
    step: Option<u64>,
    tokens_per_step: u64,
) -> anyhow::Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let keep = |line: &str| {
        let Some(step) = step else {
            return false;
        };
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(line) else {
            return true;
        };
        match (
            obj.get("step").and_then(|s| s.as_u64()),
            obj.get("tokens").and_then(|t| t.as_u64()),
        ) {
            (Some(s), _) => s <= step,
            (None, Some(t)) => t <= step.saturating_mul(tokens_per_step),
            (None, None) => true,
        }
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    // A last line cut short by the kill is dropped: the program writes it again.
    let cut = lines
        .last()
        .is_some_and(|l| serde_json::from_str::<serde_json::Value>(l).is_err());
    let whole = &lines[..lines.len() - usize::from(cut)];
    let kept: Vec<&str> = whole.iter().copied().filter(|l| keep(l)).collect();
    let dropped = lines.len() - kept.len();
    if dropped > 0 {
        crate::util::write_atomic(path, |w| {
            for l in &kept {
                writeln!(w, "{l}")?;
            }
            Ok(())
        })?;
    }
    Ok(dropped)
}

/// The lines of metrics.jsonl a program wrote (`tokens` required; a line cut short by a kill
/// is skipped), or why there are none.
fn read_metrics(path: &Path) -> Result<Vec<MetricsLine>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{} cannot be read ({e})", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if i + 1 == text.lines().count() => continue,
            Err(e) => return Err(format!("{}:{}: not JSON ({e})", path.display(), i + 1)),
        };
        let Some(obj) = v.as_object() else {
            return Err(format!("{}:{}: not a JSON object", path.display(), i + 1));
        };
        let line = MetricsLine::lenient(obj)
            .ok_or_else(|| format!("{}:{}: no `tokens` (a whole number)", path.display(), i + 1))?;
        out.push(line);
    }
    if out.is_empty() {
        return Err(format!("{} has no lines", path.display()));
    }
    Ok(out)
}

/// The item counts a program gave with its lines (`"items": {"gsm8k_strict": 1319}` on any
/// line; a later line's count of a metric wins): result.json's `metric_items`.
fn read_items(path: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Ok(serde_json::Value::Object(obj)) = serde_json::from_str(line) else {
            continue;
        };
        for (m, n) in obj
            .get("items")
            .and_then(|i| i.as_object())
            .into_iter()
            .flatten()
        {
            if let Some(n) = n.as_u64() {
                out.insert(m.clone(), n);
            }
        }
    }
    out
}

/// The result.json of a run trained by a program, from its metrics lines.
fn result_of(
    run: &RunFile,
    value: &serde_json::Value,
    lines: &[MetricsLine],
    failure: Option<String>,
    wall_s: f64,
) -> RunResult {
    let last = lines.last();
    let tokens_per_step = run.shared.training.tokens_per_step().max(1);
    RunResult {
        schema: RESULT_SCHEMA,
        id: run.id.clone(),
        config_id: run.config_id.clone(),
        status: if failure.is_some() {
            RunStatus::Failed
        } else {
            RunStatus::Completed
        },
        step: last.map_or(0, |l| l.step),
        tokens: last.map_or(0, |l| l.tokens),
        total_steps: run.point.token_budget.div_ceil(tokens_per_step).max(1),
        final_train_loss: lines.iter().rev().find_map(|l| l.train_loss),
        evals: lines
            .iter()
            .filter(|l| !l.eval.is_empty())
            .map(|l| EvalRecord {
                step: l.step,
                tokens: l.tokens,
                metrics: l.eval.clone(),
            })
            .collect(),
        metrics_not_measured: Vec::new(),
        metric_items: BTreeMap::new(),
        trainable_params: 0,
        total_params: 0,
        wall_s,
        peak_rss_kib: None,
        peak_gpu_bytes: None,
        error: failure,
        device: None,
        notes: vec![
            "trained by the spec's [trainer] command; parameter counts are not reported".into(),
        ],
        resumed_from: Vec::new(),
        run_hash: Some(run_hash(value)),
        host: Some(crate::results::this_host()),
        world: None,
        inputs: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_substituted() {
        let vals = BTreeMap::from([
            ("learning_rate", "0.001".to_string()),
            ("id", "x-s0".into()),
        ]);
        assert_eq!(substitute("--lr={learning_rate}", &vals), "--lr=0.001");
        assert_eq!(substitute("{{id}}={id}}}", &vals), "{id}=x-s0}");
        assert_eq!(substitute("plain", &vals), "plain");
    }

    /// The newest checkpoint-N with its trainer_state.json is the one to go on from (a save cut
    /// short is passed over and named; N compares as a number), and metrics.jsonl keeps the
    /// lines up to its step: by `step`, or by `tokens` where a line has none; a cut last line
    /// goes too.
    #[test]
    fn a_run_goes_on_from_its_newest_whole_hf_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(hf_checkpoint(dir.path()), (None, vec![]));
        for (name, state) in [
            ("checkpoint-9", Some(r#"{"global_step": 9}"#)),
            (
                "checkpoint-12",
                Some(r#"{"global_step": 12, "log_history": []}"#),
            ),
            ("checkpoint-15", None),
            ("checkpoint-x", Some(r#"{"global_step": 99}"#)),
        ] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            if let Some(s) = state {
                std::fs::write(d.join("trainer_state.json"), s).unwrap();
            }
        }
        std::fs::write(dir.path().join("checkpoint-20"), "a file, not a folder").unwrap();
        let (found, skipped) = hf_checkpoint(dir.path());
        assert_eq!(found, Some((dir.path().join("checkpoint-12"), 12)));
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].contains("checkpoint-15") && skipped[0].contains("cut short"));

        let p = dir.path().join("metrics.jsonl");
        assert_eq!(keep_lines_to(&p, Some(12), 64).unwrap(), 0, "no file yet");
        std::fs::write(
            &p,
            "{\"tokens\":0,\"target_loss\":3}\n{\"tokens\":640,\"step\":10}\n{\"tokens\":768}\n{\"tokens\":896,\"step\":14}\n{\"tokens\":900}\n{\"tok",
        )
        .unwrap();
        assert_eq!(keep_lines_to(&p, Some(12), 64).unwrap(), 3);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"tokens\":0,\"target_loss\":3}\n{\"tokens\":640,\"step\":10}\n{\"tokens\":768}\n"
        );
        assert_eq!(
            keep_lines_to(&p, Some(12), 64).unwrap(),
            0,
            "nothing more to drop"
        );
        // Starting over: none of them.
        assert_eq!(keep_lines_to(&p, None, 64).unwrap(), 3);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
    }

    #[test]
    fn metrics_lines_become_evaluations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(
            &p,
            "{\"tokens\":0,\"target_loss\":3.0}\n{\"tokens\":64,\"step\":2,\"train_loss\":2.5}\n{\"tokens\":128,\"step\":4,\"train_loss\":2.0,\"target_loss\":2.2,\"note\":\"x\"}\n{\"tok",
        )
        .unwrap();
        let lines = read_metrics(&p).unwrap();
        assert_eq!(lines.len(), 3, "the cut last line is skipped");
        assert_eq!(
            lines[2].eval,
            BTreeMap::from([("target_loss".to_string(), 2.2)])
        );
        assert!(read_items(&p).is_empty());
        std::fs::write(
            &p,
            "{\"tokens\":0,\"gsm8k_strict\":0.1,\"items\":{\"gsm8k_strict\":1319,\"x\":\"y\"}}\n{\"tokens\":8}\n",
        )
        .unwrap();
        assert_eq!(
            read_items(&p),
            BTreeMap::from([("gsm8k_strict".to_string(), 1319)])
        );
        assert_eq!(
            read_metrics(&p).unwrap()[0].eval.len(),
            1,
            "items is no metric"
        );
        std::fs::write(&p, "{\"step\":1}\n{\"tokens\":1}\n").unwrap();
        assert!(read_metrics(&p).unwrap_err().contains(":1: no `tokens`"));
        std::fs::write(&p, "").unwrap();
        assert!(read_metrics(&p).unwrap_err().contains("no lines"));
    }
}
