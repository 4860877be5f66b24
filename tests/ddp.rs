//! Data-parallel training through the real binary: `sweep train --nproc 2` starts two ranks on
//! this machine that meet through libtorch's c10d (Gloo on the CPU), and they train as one
//! process with the same global batch does.
#![cfg(feature = "torch")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A run.json in `dir/name/`: 20 steps of 4 rows x 32 tokens, `micro` rows per micro-batch.
fn run_json(
    dir: &Path,
    name: &str,
    method: &str,
    optimizer: &str,
    micro: u32,
    steps: u64,
) -> PathBuf {
    let mut v = serde_json::json!({
        "schema": 1, "sweep": "ddp", "id": "0123456789-s0", "config_id": "0123456789", "seed": 0,
        "model": {"kind": "builtin", "shape": "tiny", "init": "random"},
        "data": {"regime": "cpt", "domain": "code", "target": dir.join("code.txt"),
            "source": dir.join("english.txt"), "text_field": "text", "prompt_field": "prompt",
            "response_field": "response", "epoch_tokens": null},
        "training": {"optimizer": optimizer, "betas": [0.9, 0.95], "eps": 1e-8,
            "weight_decay": 0.01, "schedule": "cosine", "warmup_fraction": 0.1,
            "warmup_steps": null, "cooldown_fraction": 0.2, "t_scale": null,
            "final_lr_fraction": 0.1, "batch_size": 4, "micro_batch_size": micro, "seq_len": 32,
            "grad_clip": 1.0, "precision": "auto", "rslora": false,
            "freeze_embeddings_and_norms": false, "max_loss": null, "checkpoint_every": 2,
            "log_every": 1},
        "evaluation": {"metrics": ["target_loss", "source_loss"], "checkpoints": [],
            "eval_tokens": 256, "problems": 1, "diversity_samples": 1, "temperature": 1.0,
            "rank_threshold": 0.9, "multiple_choice": null, "humaneval": null},
        "method": "full", "learning_rate": 1e-3, "token_budget": steps * 128,
        "eval_at": [steps * 64, steps * 128]
    });
    if method == "lora" {
        let o = v.as_object_mut().unwrap();
        o.insert("method".into(), "lora".into());
        o.insert("rank".into(), 4.into());
        o.insert("alpha".into(), 8.0.into());
        o.insert(
            "target_modules".into(),
            serde_json::json!(["q", "k", "v", "o"]),
        );
        o.insert("dropout".into(), 0.0.into());
        o.insert("learning_rate".into(), 3e-3.into());
    }
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("run.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    p
}

fn train(dir: &Path, run: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
        .current_dir(dir)
        .args(["train", run.to_str().unwrap(), "--threads", "1"])
        .args(extra)
        .env_remove("SWEEP_MIN_STEP_MS")
        .output()
        .unwrap()
}

fn result(run: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(run.parent().unwrap().join("result.json")).unwrap(),
    )
    .unwrap()
}

/// (step, train_loss) of every metrics line past the base.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    common::train_losses(&run.parent().unwrap().join("metrics.jsonl"))
}

fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), lb.len(), "{what}: the same steps");
    for ((sa, xa), (sb, xb)) in la.iter().zip(&lb) {
        assert_eq!(sa, sb);
        assert!(
            (xa - xb).abs() < 1e-5,
            "{what}: step {sa}: loss {xa} vs {xb}"
        );
    }
    let (ra, rb) = (result(a), result(b));
    let evals = |r: &serde_json::Value| -> Vec<(f64, f64)> {
        r["evals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["metrics"]["target_loss"].as_f64().unwrap(),
                    e["metrics"]["source_loss"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    for (ea, eb) in evals(&ra).iter().zip(evals(&rb).iter()) {
        assert!(
            (ea.0 - eb.0).abs() < 1e-5,
            "{what}: target loss {ea:?} vs {eb:?}"
        );
        assert!(
            (ea.1 - eb.1).abs() < 1e-5,
            "{what}: source loss {ea:?} vs {eb:?}"
        );
    }
}

/// 2 ranks x micro-batch 2 train as 1 rank does with the same global batch of 4, within 1e-5
/// after 20 steps: full fine-tuning and LoRA, AdamW and LionW. The 1-rank run accumulates the
/// same two micro-batches of 2 (the float sums are then the same); 1 rank x micro-batch 4 is
/// compared too, for AdamW (LionW's sign update turns the last-digit differences of another
/// micro-batch size, one process or two, into 2e-5 after 20 steps).
#[test]
fn two_ranks_train_as_one_process_with_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    for (method, opt) in [
        ("full", "adamw"),
        ("lora", "lionw"),
        ("full", "lionw"),
        ("lora", "adamw"),
    ] {
        let two = run_json(dir.path(), &format!("{method}-{opt}-2"), method, opt, 2, 20);
        let o = train(dir.path(), &two, &["--nproc", "2"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(result(&two)["status"], "completed");
        assert_eq!(result(&two)["world"], "2 ranks, gloo");
        let mut micros = vec![2];
        if opt == "adamw" {
            micros.push(4);
        }
        for micro in micros {
            let name = format!("{method}-{opt}-1x{micro}");
            let one = run_json(dir.path(), &name, method, opt, micro, 20);
            let o = train(dir.path(), &one, &[]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let what = format!("{method} {opt}, 1 rank x micro-batch {micro}");
            assert_same_run(&one, &two, &what);
        }
    }
}

/// Activation checkpointing changes memory, not results: on 1 and on 2 ranks, full and LoRA
/// runs train as a plain process does (1e-5 after 12 steps).
#[test]
fn checkpointed_runs_train_as_plain_ones() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    let checkpointed = |p: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["training"]["activation_checkpointing"] = true.into();
        std::fs::write(p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    };
    for method in ["full", "lora"] {
        let plain = run_json(
            dir.path(),
            &format!("{method}-plain"),
            method,
            "adamw",
            2,
            12,
        );
        let o = train(dir.path(), &plain, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for nproc in ["1", "2"] {
            let name = format!("{method}-ckpt-{nproc}");
            let ckpt = run_json(dir.path(), &name, method, "adamw", 2, 12);
            checkpointed(&ckpt);
            let o = train(dir.path(), &ckpt, &["--nproc", nproc]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert_same_run(&plain, &ckpt, &name);
            let notes = result(&ckpt)["notes"].to_string();
            assert!(
                notes.contains("blocks are recomputed in the backward pass"),
                "{notes}"
            );
        }
    }
}

fn set_training(p: &Path, key: &str, value: serde_json::Value) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v["training"][key] = value;
    std::fs::write(p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// The note of result.json `r` that starts with `prefix`.
fn note_of(r: &serde_json::Value, prefix: &str) -> String {
    r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .find(|n| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no note {prefix:?}: {r:#}"))
        .to_string()
}

/// The number in `text` just after `after` (up to the next space).
fn number_after(text: &str, after: &str) -> f64 {
    text.split(after)
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no number after {after:?} in {text:?}"))
}

/// ZeRO stage 1: with the optimizer state sharded over 2 ranks, full and LoRA runs (AdamW and
/// LionW) train as unsharded ones do, rank 0 holds about half the state, and a sharded
/// checkpoint (one shard file per rank) resumes on 1 rank where an uninterrupted run ends.
#[test]
fn a_sharded_optimizer_trains_as_an_unsharded_one() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    for (method, opt, per_param) in [("full", "adamw", 2.0), ("lora", "lionw", 1.0)] {
        let plain = run_json(dir.path(), &format!("{method}-plain"), method, opt, 2, 12);
        let sharded = run_json(dir.path(), &format!("{method}-sharded"), method, opt, 2, 12);
        set_training(&sharded, "shard_optimizer", true.into());
        for (run, n) in [(&plain, "2"), (&sharded, "2")] {
            let o = train(dir.path(), run, &["--nproc", n]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        assert_same_run(&plain, &sharded, &format!("{method} {opt} sharded"));
        let r = result(&sharded);
        let note = note_of(&r, "optimizer state sharded over 2 ranks");
        let held = number_after(&note, "holds ");
        let whole = r["trainable_params"].as_f64().unwrap() * 4.0 * per_param / 1e6;
        assert!(
            held > 0.3 * whole && held < 0.7 * whole,
            "rank 0 holds {held} MB of {whole} MB"
        );
    }

    // Stopped mid-run, a sharded 2-rank run resumes on 1 rank.
    let whole = run_json(dir.path(), "whole", "full", "adamw", 2, 20);
    let split = run_json(dir.path(), "split", "full", "adamw", 2, 20);
    set_training(&split, "shard_optimizer", true.into());
    let o = train(dir.path(), &whole, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let child = start_two_ranks(dir.path(), &split, 150, &[]);
    wait_for_step(&split, 5);
    // SAFETY: SIGTERM to the launcher we started; it passes it on to both ranks.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = std::fs::read_dir(split.parent().unwrap().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .unwrap();
    for f in [
        "optim-0.safetensors",
        "optim-1.safetensors",
        "model.safetensors",
    ] {
        assert!(ckpt.join(f).exists(), "{} lacks {f}", ckpt.display());
    }
    assert!(!ckpt.join("optim.safetensors").exists());
    let o = train(dir.path(), &split, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(result(&split)["status"], "completed");
    assert_same_run(&whole, &split, "sharded on 2 ranks, resumed on 1");
}

/// The `(step, grad_norm)` of every metrics line that has one.
fn grad_norms(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.parent().unwrap().join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v["grad_norm"].as_f64()?)))
        .collect()
}

/// ZeRO stage 2: with the reduced gradients sharded too, full and LoRA runs (AdamW and LionW,
/// one and two micro-batches per rank, clipped at 1.0, with and without activation
/// checkpointing, 2 ranks and 3 with frozen embeddings and norms) train as unsharded ones do,
/// with the same gradient norms, and rank 0 holds about 1/N of the gradients between steps.
/// Without shard_optimizer the run is refused.
#[test]
fn sharded_gradients_train_as_unsharded_ones() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    for (method, opt, micro, ckpt, ranks) in [
        ("full", "adamw", 1, false, 2),
        ("lora", "lionw", 2, false, 2),
        ("full", "adamw", 1, true, 2),
        ("lora", "adamw", 2, true, 2),
        ("full", "lionw", 1, false, 3),
    ] {
        let name = format!("{method}-{opt}-{micro}-{ckpt}-{ranks}");
        let plain = run_json(dir.path(), &format!("{name}-plain"), method, opt, micro, 12);
        let sharded = run_json(dir.path(), &format!("{name}-zero2"), method, opt, micro, 12);
        for run in [&plain, &sharded] {
            set_training(run, "activation_checkpointing", ckpt.into());
            if ranks == 3 {
                // 3 ranks x 1 x 2 micro-batches; the embeddings and norms frozen, so that only
                // the blocks' gradients are sharded (the hooks' alone).
                set_training(run, "batch_size", 6.into());
                set_training(run, "freeze_embeddings_and_norms", true.into());
            }
        }
        set_training(&sharded, "shard_optimizer", true.into());
        set_training(&sharded, "shard_gradients", true.into());
        let nproc = ranks.to_string();
        for run in [&plain, &sharded] {
            let o = train(dir.path(), run, &["--nproc", &nproc]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let what = format!("{name}, gradients sharded");
        assert_same_run(&plain, &sharded, &what);
        let (a, b) = (grad_norms(&plain), grad_norms(&sharded));
        let steps = if ranks == 3 { 8 } else { 12 };
        assert_eq!(a.len(), steps, "{what}: {a:?}");
        assert_eq!(b.len(), steps, "{what}: {b:?}");
        assert!(
            a.iter().any(|(_, n)| *n > 1.0),
            "{what}: clipping is exercised: {a:?}"
        );
        for ((s, x), (_, y)) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() < 1e-4 * x.max(1.0),
                "{what}: step {s}: grad norm {x} vs {y}"
            );
        }
        let r = result(&sharded);
        let note = note_of(&r, &format!("gradients sharded over {ranks} ranks"));
        let (held, whole) = (
            number_after(&note, "holds "),
            number_after(&note, "steps, of "),
        );
        let trainable = r["trainable_params"].as_f64().unwrap() * 4.0 / 1e6;
        assert!(
            (whole - trainable).abs() < 0.01,
            "{note}: of {trainable} MB"
        );
        let share = held / whole * ranks as f64;
        assert!(
            share > 0.6 && share < 1.4,
            "{note}: rank 0 holds {share:.2}/{ranks}"
        );
    }
    let bad = run_json(dir.path(), "bad", "full", "adamw", 2, 4);
    set_training(&bad, "shard_gradients", true.into());
    let o = train(dir.path(), &bad, &["--nproc", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("set training.shard_optimizer = true too"),
        "{err}"
    );
}

/// A world of one through a named backend (what scripts/gpu-check does with NCCL on one GPU)
/// goes through c10d and trains as one plain process; ranks asked to train on a GPU this
/// CPU-only libtorch cannot see stop at once, naming the libtorch.
#[test]
fn a_world_of_one_through_gloo_trains_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    let plain = run_json(dir.path(), "plain", "full", "adamw", 2, 6);
    let one = run_json(dir.path(), "one", "full", "adamw", 2, 6);
    let o = train(dir.path(), &plain, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .current_dir(dir.path())
        .args(["train", one.to_str().unwrap(), "--threads", "1"])
        .envs([
            ("WORLD_SIZE", "1"),
            ("RANK", "0"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("SWEEP_DIST_BACKEND", "gloo"),
        ])
        .env("MASTER_PORT", port.to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(result(&one)["world"], "1 rank, gloo");
    assert_eq!(result(&plain)["world"], serde_json::Value::Null);
    assert_same_run(&plain, &one, "a world of one through Gloo");

    let gpu = run_json(dir.path(), "gpu", "full", "adamw", 2, 6);
    let o = train(dir.path(), &gpu, &["--nproc", "2", "--device", "cuda"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("libtorch_cpu.so without libtorch_cuda.so"),
        "names the CPU-only libtorch: {err}"
    );
    assert!(!gpu.parent().unwrap().join("metrics.jsonl").exists());
}

/// A 2-rank run stopped by a signal resumes on 1 rank, and ends where an uninterrupted
/// 1-rank run does.
#[test]
fn a_two_rank_checkpoint_resumes_on_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    let whole = run_json(dir.path(), "whole", "lora", "adamw", 2, 20);
    let split = run_json(dir.path(), "split", "lora", "adamw", 2, 20);
    let o = train(dir.path(), &whole, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let child = start_two_ranks(dir.path(), &split, 150, &[]);
    wait_for_step(&split, 6);
    // SAFETY: SIGTERM to the launcher we started; it passes it on to both ranks.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "stopped with a checkpoint: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!split.parent().unwrap().join("result.json").exists());
    let o = train(dir.path(), &split, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = result(&split);
    assert_eq!(r["status"], "completed");
    let from = r["resumed_from"][0].as_u64().unwrap();
    assert!((6..20).contains(&from), "resumed mid-run: {r:#}");
    assert_same_run(&whole, &split, "resumed on another world size");
}

/// SIGUSR1 (Slurm's time-limit warning) to one rank alone stops both after the same step with
/// one checkpoint; the launcher ends as a stop, not a failure, and the run resumes to the end.
#[test]
fn a_signal_to_one_rank_stops_every_rank_after_the_same_step() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    let run = run_json(dir.path(), "usr1", "lora", "adamw", 2, 40);
    let child = start_two_ranks(dir.path(), &run, 150, &[]);
    wait_for_step(&run, 4);
    let rank1 = rank_pid(child.id(), 1).expect("rank 1 runs");
    // SAFETY: SIGUSR1 to rank 1, a child of the launcher we started.
    unsafe { libc::kill(rank1, libc::SIGUSR1) };
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = run.parent().unwrap();
    assert!(!d.join("result.json").exists(), "stopped, not finished");
    let steps: Vec<String> = std::fs::read_dir(d.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    let last = losses(&run).last().unwrap().0;
    assert!(last < 40, "stopped mid-run at step {last}");
    assert!(
        steps.contains(&format!("step-{last:08}")),
        "one checkpoint at the step both ranks stopped after ({last}): {steps:?}"
    );
    let o = train(dir.path(), &run, &["--nproc", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = result(&run);
    assert_eq!(r["status"], "completed");
    assert_eq!(r["resumed_from"][0].as_u64(), Some(last));
}

/// A rank killed mid-run stops the run: the launcher ends non-zero within a bounded time,
/// naming the rank, and leaves no rank behind.
#[test]
fn a_killed_rank_stops_the_run_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    let run = run_json(dir.path(), "killed", "full", "adamw", 2, 200);
    let child = start_two_ranks(dir.path(), &run, 100, &[("SWEEP_DIST_TIMEOUT_S", "20")]);
    wait_for_step(&run, 3);
    let rank0 = rank_pid(child.id(), 0).expect("rank 0 runs");
    let rank1 = rank_pid(child.id(), 1).expect("rank 1 runs");
    // SAFETY: SIGKILL to rank 1, a child of the launcher we started.
    unsafe { libc::kill(rank1, libc::SIGKILL) };
    let t1 = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(
        t1.elapsed() < Duration::from_secs(60),
        "bounded: {:?}",
        t1.elapsed()
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("rank 1 of 2 failed"), "{err}");
    // Rank 0 lost its peer in a collective: it says so and exits, it is not killed by the pipe.
    assert!(!err.contains("SIGPIPE"), "{err}");
    // The launcher waited for rank 0 (reaped): nothing is left of it.
    assert!(
        !Path::new(&format!("/proc/{rank0}")).exists(),
        "no rank left behind"
    );
}

/// `sweep train RUN --nproc 2` in the background, each step paced to `step_ms`, stderr piped.
fn start_two_ranks(
    dir: &Path,
    run: &Path,
    step_ms: u64,
    envs: &[(&str, &str)],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
        .current_dir(dir)
        .args([
            "train",
            run.to_str().unwrap(),
            "--threads",
            "1",
            "--nproc",
            "2",
        ])
        .args(["--min-step-ms", &step_ms.to_string()])
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait (at most 120 s) until the run has logged step `step`.
fn wait_for_step(run: &Path, step: u64) {
    let t0 = Instant::now();
    while losses_or_empty(run).iter().all(|(s, _)| *s < step) {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run trains");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn losses_or_empty(run: &Path) -> Vec<(u64, f64)> {
    if run.parent().unwrap().join("metrics.jsonl").exists() {
        losses(run)
    } else {
        Vec::new()
    }
}

/// The pid of a child of `parent` whose environment says RANK=`rank`.
fn rank_pid(parent: u32, rank: usize) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let has = environ
                .split(|b| *b == 0)
                .any(|v| v == format!("RANK={rank}").as_bytes());
            (ppid == parent && has).then_some(pid)
        })
}

/// `sweep run` trains a run that asks for 2 ranks as `sweep train --nproc 2`, and refuses one
/// that spans 2 nodes, saying where it can run.
#[test]
fn sweep_run_starts_the_ranks_a_run_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    let spec = |extra: &str| {
        format!(
            "name = \"ranks\"\n[model]\nbuiltin = \"tiny\"\ninit = \"random\"\n[data]\nregime = \"cpt\"\ndomain = \"code\"\ntarget = \"code.txt\"\nsource = \"english.txt\"\n[training]\nbatch_size = 4\nseq_len = 32\n{extra}[evaluation]\neval_tokens = 128\nmetrics = [\"target_loss\"]\n[grid]\nmethod = [\"full\"]\ntoken_budget = [256]\nseeds = 1\n[grid.full]\nlearning_rate = [1e-3]\n"
        )
    };
    std::fs::write(dir.path().join("spec.toml"), spec("ranks_per_node = 2\n")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .current_dir(dir.path())
        .args(["run", "spec.toml"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs = dir.path().join("results/ranks/runs");
    let run = std::fs::read_dir(&runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(result(&run.join("run.json"))["world"], "2 ranks, gloo");

    std::fs::write(
        dir.path().join("spec.toml"),
        spec("nodes = 2\n").replace("\"ranks\"", "\"nodes\""),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .current_dir(dir.path())
        .args(["run", "spec.toml"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("spans 2 nodes") && err.contains("--cluster"),
        "{err}"
    );
}
