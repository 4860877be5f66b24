//! End-to-end: the built `sweep` binary trains a tiny run.json and leaves its outputs.
#![cfg(feature = "torch")]

mod common;

use std::path::Path;
use std::process::Command;

fn write_data(dir: &Path) {
    let py = dir.join("data/python");
    std::fs::create_dir_all(&py).unwrap();
    for i in 0..6 {
        let code = format!("def f{i}(x):\n    return x + {i}\n\n").repeat(20);
        std::fs::write(py.join(format!("m{i}.py")), code).unwrap();
    }
    let text = "To be, or not to be, that is the question.\n".repeat(200);
    std::fs::write(dir.join("data/shakespeare.txt"), text).unwrap();
}

fn run_json(dir: &Path, lr: f64, max_loss: Option<f64>) -> std::path::PathBuf {
    let v = serde_json::json!({
        "schema": 1, "sweep": "e2e", "id": "0123456789-s0", "config_id": "0123456789", "seed": 0,
        "model": {"kind": "builtin", "shape": "tiny", "init": "random"},
        "data": {"regime": "cpt", "domain": "code", "target": "builtin:python",
            "source": "builtin:shakespeare", "text_field": "text", "prompt_field": "prompt",
            "response_field": "response", "epoch_tokens": null},
        "training": {"optimizer": "lionw", "betas": [0.9, 0.95], "eps": 1e-8,
            "weight_decay": 0.1, "schedule": "inverse_sqrt", "warmup_fraction": 0.2,
            "warmup_steps": null, "cooldown_fraction": 0.2, "t_scale": null,
            "final_lr_fraction": 0.01, "batch_size": 4, "micro_batch_size": 2, "seq_len": 32,
            "grad_clip": 1.0, "precision": "auto", "rslora": true,
            "freeze_embeddings_and_norms": false, "max_loss": max_loss, "checkpoint_every": 4,
            "log_every": 2},
        "evaluation": {"metrics": ["target_loss", "source_loss"], "checkpoints": [],
            "eval_tokens": 512, "problems": 1, "diversity_samples": 1, "temperature": 1.0,
            "rank_threshold": 0.9, "multiple_choice": null, "humaneval": null},
        "method": "lora", "rank": 4, "alpha": 8.0, "target_modules": ["q", "k", "v", "o"],
        "dropout": 0.05, "learning_rate": lr, "token_budget": 1280, "eval_at": [640, 1280]
    });
    let run_dir = dir.join("results/e2e/runs/0123456789-s0");
    std::fs::create_dir_all(&run_dir).unwrap();
    let p = run_dir.join("run.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    p
}

fn sweep_train(dir: &Path, run: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
        .current_dir(dir)
        .env("SWEEP_DATA", dir.join("data"))
        .env_remove("SWEEP_CACHE")
        .args(["train", run.to_str().unwrap(), "--threads", "1"])
        .output()
        .unwrap()
}

#[test]
fn sweep_train_runs_a_tiny_lora_run() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let run = run_json(dir.path(), 1e-3, None);
    let out = sweep_train(dir.path(), &run);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let run_dir = run.parent().unwrap();
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["status"], "completed");
    assert_eq!(result["tokens"], 1280);
    let evals = result["evals"].as_array().unwrap();
    assert_eq!(evals.len(), 3);
    assert!(evals[2]["metrics"]["target_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
    assert!(evals[2]["metrics"]["source_loss"]
        .as_f64()
        .unwrap()
        .is_finite());
    assert!(result["peak_rss_kib"].as_u64().unwrap() > 0);
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().count() >= 6, "{metrics}");
    let ckpts: Vec<_> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(ckpts, vec!["step-00000010".to_string()]);
    let adapter: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(adapter["use_rslora"], true);
    assert!(run_dir.join("adapter/adapter_model.safetensors").exists());
    // A second call resumes from the final checkpoint and has nothing left to do.
    let again = sweep_train(dir.path(), &run);
    assert!(again.status.success());
    tensorboard_reads_the_runs_metrics(run_dir, &metrics);
}

/// TensorBoard's own reader (the tensorboard package, in the venv scripts/test makes and names
/// in SWEEP_TEST_PYTHON) finds every metrics.jsonl line's loss and evaluations in the run's
/// event file, at its tokens; the resume above wrote the file again without doubling it.
fn tensorboard_reads_the_runs_metrics(run_dir: &Path, metrics: &str) {
    let Some(python) = common::test_python("TensorBoard reader") else {
        return;
    };
    let read = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;
    let got: std::collections::BTreeMap<String, Vec<(u64, f64)>> =
        common::python_json(&python, read, &[run_dir.join("tb").as_os_str()]);
    let (mut losses, mut evals) = (Vec::new(), Vec::new());
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let tokens = v["tokens"].as_u64().unwrap();
        if let Some(l) = v["train_loss"].as_f64() {
            losses.push((tokens, l));
        }
        if let Some(l) = v["target_loss"].as_f64() {
            evals.push((tokens, l));
        }
    }
    let close = |tag: &str, want: &[(u64, f64)]| {
        let have = &got[tag];
        assert_eq!(have.len(), want.len(), "{tag}: {have:?} vs {want:?}");
        for ((ts, a), (ws, b)) in have.iter().zip(want) {
            assert_eq!(ts, ws, "{tag}");
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{tag}: {a} vs {b}"
            );
        }
    };
    assert!(
        losses.len() >= 5 && evals.len() == 3,
        "{losses:?} {evals:?}"
    );
    close("train/loss", &losses);
    close("eval/target_loss", &evals);
    assert!(
        got.contains_key("train/lr") && got.contains_key("eval/source_loss"),
        "{got:?}"
    );
}

#[test]
fn sweep_train_reports_divergence_and_refuses_newer_schemas() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let run = run_json(dir.path(), 1e3, Some(20.0));
    let out = sweep_train(dir.path(), &run);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = std::fs::read_to_string(run.parent().unwrap().join("result.json")).unwrap();
    assert!(result.contains("\"diverged\""), "{result}");

    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&run).unwrap()).unwrap();
    v["schema"] = 2.into();
    std::fs::write(&run, v.to_string()).unwrap();
    let out = sweep_train(dir.path(), &run);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run.json") && stderr.contains("newer"),
        "{stderr}"
    );
}

/// A malformed JSONL line stops `sweep train` with one line naming the file, the line and the
/// fix; with `on_bad_line = "skip"` the run trains and says what it left out. A second run of
/// the sweep reads the base model's evaluation that the first one cached.
#[test]
fn sweep_train_reports_bad_lines_and_shares_the_base_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let mut jsonl = String::new();
    for i in 0..60 {
        jsonl.push_str(&format!(
            "{{\"text\": \"def g{i}(y):\\n    return y * {i}\\n\"}}\n"
        ));
        if i == 2 {
            jsonl.push_str("{\"text\": unquoted}\n");
        }
    }
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, jsonl).unwrap();
    let run = run_json(dir.path(), 1e-3, None);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&run).unwrap()).unwrap();
    v["data"]["target"] = bad.to_str().unwrap().into();
    std::fs::write(&run, v.to_string()).unwrap();
    let out = sweep_train(dir.path(), &run);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bad.jsonl:4: not JSON") && stderr.contains("data.on_bad_line = \"skip\""),
        "{stderr}"
    );

    v["data"]["on_bad_line"] = "skip".into();
    std::fs::write(&run, v.to_string()).unwrap();
    std::fs::remove_file(run.parent().unwrap().join("result.json")).unwrap();
    let out = sweep_train(dir.path(), &run);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("bad.jsonl: skipped 1 malformed line of 61 (lines 4;"),
        "{stderr}"
    );
    let cache = dir.path().join("results/e2e/base_evals");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);

    // Another learning rate, same sweep: the base evaluation is read, not computed.
    v["learning_rate"] = 3e-3.into();
    v["id"] = "abcdefabcd-s0".into();
    let other = dir.path().join("results/e2e/runs/abcdefabcd-s0/run.json");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, v.to_string()).unwrap();
    let out = sweep_train(dir.path(), &other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("base model evaluation (step 0) read from"),
        "{stderr}"
    );
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let first = read(&run.parent().unwrap().join("result.json"));
    let second = read(&other.parent().unwrap().join("result.json"));
    assert_eq!(first["evals"][0], second["evals"][0]);
}

/// GSM8K and the three forgetting benchmarks from local files the test writes (in
/// lm-evaluation-harness's layouts and scoring) and intruder dimensions are measured at every
/// evaluation, with the forgetting score the mean of the three, and result.json says how they
/// were prompted and scored. Without `evaluation.gsm8k` the run fails at once, naming the key.
#[test]
fn benchmarks_and_intruder_dimensions_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path());
    let file = dir.path().join("gsm8k.jsonl");
    let items: String = (1..=3)
        .map(|i| {
            format!(
                "{{\"question\": \"What is {i} + {i}?\", \"answer\": \"{i} + {i} = {}.\\n#### {}\"}}\n",
                2 * i,
                2 * i
            )
        })
        .collect();
    std::fs::write(&file, items).unwrap();
    let run = run_json(dir.path(), 1e-3, None);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&run).unwrap()).unwrap();
    let tasks = [
        ("hellaswag", "{\"activity_label\": \"Cooking\", \"ctx_a\": \"A man cuts onions.\", \"ctx_b\": \"he\", \"endings\": [\"cries.\", \"sings [title] loudly.\"], \"label\": \"0\"}"),
        ("arc_challenge", "{\"question\": \"What is 1 + 1?\", \"answerKey\": \"B\", \"choices\": {\"text\": [\"1\", \"2\"], \"label\": [\"A\", \"B\"]}}"),
        ("winogrande", "{\"sentence\": \"The cup fit in the box because the _ was small.\", \"option1\": \"cup\", \"option2\": \"box\", \"answer\": \"1\"}"),
    ];
    for (task, line) in tasks {
        let p = dir.path().join(format!("{task}.jsonl"));
        std::fs::write(&p, format!("{line}\n{line}\n")).unwrap();
        v["evaluation"][task] = p.display().to_string().into();
    }
    v["evaluation"]["metrics"] = serde_json::json!([
        "target_loss",
        "gsm8k",
        "math_accuracy",
        "intruder_dimensions",
        "hellaswag",
        "arc_challenge",
        "winogrande"
    ]);
    v["evaluation"]["intruder_scaling"] = serde_json::json!([0.0]);
    // More than the file holds: the 2 items scored are the 3 less the shot.
    v["evaluation"]["problems"] = 10.into();
    v["evaluation"]["gsm8k_shots"] = 1.into();
    std::fs::write(&run, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let out = sweep_train(dir.path(), &run);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no evaluation.gsm8k: {err}");
    assert!(err.contains("evaluation.gsm8k"), "{err}");

    v["evaluation"]["gsm8k"] = file.display().to_string().into();
    std::fs::write(&run, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let out = sweep_train(dir.path(), &run);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.parent().unwrap().join("result.json")).unwrap(),
    )
    .unwrap();
    for e in result["evals"].as_array().unwrap() {
        for m in ["gsm8k_strict", "gsm8k_flexible"] {
            let x = e["metrics"][m].as_f64().unwrap_or(-1.0);
            // Two items: 0, 0.5 or 1.
            assert!([0.0, 0.5, 1.0].contains(&x), "{m} = {x} in {e}");
        }
        let i = e["metrics"]["intruder_dimensions"].as_f64().unwrap();
        assert!((0.0..=10.0).contains(&i), "{e}");
        // Scaling the intruders by 0 measures the loss again: the same where there are none.
        let (scaled, plain) = (
            e["metrics"]["intruders_x0_target_loss"].as_f64().unwrap(),
            e["metrics"]["target_loss"].as_f64().unwrap(),
        );
        let matrices = e["metrics"]["intruder_scaling_matrices"].as_f64().unwrap();
        if matrices == 0.0 {
            assert!((scaled - plain).abs() < 1e-6, "{e}");
        }
        let m = |k: &str| {
            e["metrics"][k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} in {e}"))
        };
        let mean =
            (m("hellaswag_acc_norm") + m("arc_challenge_acc_norm") + m("winogrande_acc")) / 3.0;
        assert!((m("forgetting_score") - mean).abs() < 1e-12, "{e}");
        assert!(
            e["metrics"].get("winogrande_acc_norm").is_none(),
            "WinoGrande reports acc only"
        );
    }
    let notes = result["notes"].to_string();
    assert!(
        notes.contains("1-shot (the first 1 of") && notes.contains("2 items of"),
        "{notes}"
    );
    assert!(
        notes.contains("math_accuracy: exact match of the number after")
            && notes.contains("10 generated held-out problems"),
        "{notes}"
    );
    assert!(
        notes.contains("winogrande (2 items of") && notes.contains("forgetting_score = their mean"),
        "{notes}"
    );
}
