//! Tests of the whole training loop on a very small model (hidden 32, 2 layers).

use std::path::{Path, PathBuf};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tch::{Device, Tensor};

use super::outputs::MetricsLine;
use super::*;
use crate::model::llama::tests::tiny_cfg;
use crate::model::llama::{BuildOptions, Llama};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let text = "the quick brown fox jumps over the lazy dog.\n".repeat(300);
        std::fs::write(dir.path().join("target.txt"), text).unwrap();
        let src = "to be or not to be, that is the question.\n".repeat(300);
        std::fs::write(dir.path().join("source.txt"), src).unwrap();
        Fixture { dir }
    }

    /// A run.json in `name/` with overrides applied to the JSON.
    fn run(&self, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let d = self.dir.path();
        let mut v = serde_json::json!({
            "schema": 1, "sweep": "t", "id": "abc-s0", "config_id": "abc", "seed": 0,
            "model": {"kind": "builtin", "shape": "tiny", "init": "random"},
            "data": {"regime": "cpt", "domain": "code",
                "target": d.join("target.txt"), "source": d.join("source.txt"),
                "text_field": "text", "prompt_field": "prompt", "response_field": "response",
                "epoch_tokens": null},
            "training": {"optimizer": "adamw", "betas": [0.9, 0.999], "eps": 1e-8,
                "weight_decay": 0.0, "schedule": "constant", "warmup_fraction": 0.0,
                "warmup_steps": null, "cooldown_fraction": 0.2, "t_scale": null,
                "final_lr_fraction": 0.1, "batch_size": 4, "micro_batch_size": 2, "seq_len": 16,
                "grad_clip": 1.0, "precision": "auto", "rslora": false,
                "freeze_embeddings_and_norms": false, "max_loss": null, "checkpoint_every": 0,
                "log_every": 5},
            "evaluation": {"metrics": ["target_loss", "source_loss", "spectral_rank", "diversity"],
                "checkpoints": [], "eval_tokens": 256, "problems": 1,
                "diversity_samples": 1, "temperature": 1.0, "rank_threshold": 0.9,
                "multiple_choice": null, "humaneval": null},
            "method": "full", "learning_rate": 0.01, "token_budget": 1920,
            "eval_at": [960, 1920]
        });
        edit(&mut v);
        let rd = d.join(name);
        std::fs::create_dir_all(&rd).unwrap();
        let p = rd.join("run.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        p
    }

    fn opts(&self) -> TrainOptions {
        TrainOptions {
            // One intra-op thread: on a small shared machine libtorch's default oversubscribes
            // the cores and a tiny model's many small ops (generation above all) run 5x slower.
            threads: Some(1),
            data_dir: self.dir.path().join("data"),
            cache_dir: self.dir.path().join("cache"),
            stop_after_steps: None,
            model_override: Some(tiny_cfg()),
            stop: None,
            device: "cpu".into(),
            min_step: None,
            retrain: false,
            world: Arc::new(crate::dist::World::single()),
            kernels: crate::train::kernels::Kernels::Fused,
            progress: false,
        }
    }
}

fn lora(v: &mut serde_json::Value) {
    v["method"] = "lora".into();
    v["rank"] = 4.into();
    v["alpha"] = 8.0.into();
    v["target_modules"] = serde_json::json!(["q", "v", "down"]);
    v["dropout"] = 0.0.into();
    v["learning_rate"] = 0.01.into();
}

fn read_lines(p: &Path) -> Vec<MetricsLine> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn loss_decreases_and_outputs_are_written() {
    let f = Fixture::new();
    let run = f.run("full", |_| {});
    let r = train(&run, &f.opts()).unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert_eq!((r.step, r.tokens, r.total_steps), (30, 1920, 30));
    let dir = run.parent().unwrap();
    let lines = read_lines(&dir.join("metrics.jsonl"));
    let first = lines.iter().find_map(|l| l.train_loss).unwrap();
    let last = r.final_train_loss.unwrap();
    assert!(last < first * 0.6, "loss {first} -> {last}");
    // Base, 960 and 1920 tokens, each with both losses.
    let toks: Vec<u64> = r.evals.iter().map(|e| e.tokens).collect();
    assert_eq!(toks, vec![0, 960, 1920]);
    assert!(r
        .evals
        .iter()
        .all(|e| e.metrics.contains_key("target_loss") && e.metrics.contains_key("source_loss")));
    assert!(r.evals[2].metrics["target_loss"] < r.evals[0].metrics["target_loss"]);
    assert!(r.metrics_not_measured.is_empty());
    // One prompt, one sample: every completion is unique, and there is no pair to compare.
    assert!(r
        .evals
        .iter()
        .all(|e| e.metrics["diversity_unique"] == 1.0
            && !e.metrics.contains_key("diversity_similarity")));
    assert_eq!(r.evals[0].metrics["spectral_rank"], 0.0);
    assert!(r.evals[2].metrics["spectral_rank_q"] > 1.0);
    let saved: RunResult =
        serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(saved.status, RunStatus::Completed);
    assert_eq!(checkpoint::list(&dir.join("checkpoints")).unwrap().len(), 1);
}

#[test]
fn lora_training_changes_only_the_adapter() {
    let f = Fixture::new();
    let run = f.run("lora", |v| {
        lora(v);
        v["token_budget"] = 320.into();
        v["eval_at"] = serde_json::json!([320]);
    });
    let file = read_run_file(&run).unwrap();
    let (before, _) = build_model(&file, &f.opts(), Device::Cpu).unwrap();
    let r = train(&run, &f.opts()).unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    let ranks = &r.evals.last().unwrap().metrics;
    assert!(
        ranks["spectral_rank_q"] >= 1.0 && ranks["spectral_rank_q"] <= 4.0,
        "{ranks:?}"
    );
    assert!(!ranks.contains_key("spectral_rank_k"));
    let adapter = checkpoint::load_latest(&run.parent().unwrap().join("checkpoints"))
        .unwrap()
        .unwrap();
    // The checkpoint holds exactly the adapter: 3 modules x 2 layers x (A, B).
    assert_eq!(adapter.model.len(), 12);
    let (after, _) = build_model(&file, &f.opts(), Device::Cpu).unwrap();
    after.load_named(&adapter.model, false, "ckpt").unwrap();
    for ((name, a), (_, b)) in before.variables().iter().zip(after.variables().iter()) {
        let changed = !a.equal(b);
        assert_eq!(
            changed,
            name.contains(".lora_"),
            "{name} changed: {changed}"
        );
    }
    // The PEFT export holds the same tensors under PEFT's names.
    let peft: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(
        run.parent()
            .unwrap()
            .join("adapter/adapter_model.safetensors"),
    )
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(peft.len(), 12);
    let key = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
    assert!(peft[key].equal(&adapter.model["model.layers.1.mlp.down_proj.lora_B.weight"]));
    // Merged weights reproduce the adapter's output.
    let merged = Llama::new(&tiny_cfg(), &BuildOptions::default(), Device::Cpu).unwrap();
    merged
        .load_named(
            &after.merged_weights().unwrap().into_iter().collect(),
            true,
            "merged",
        )
        .unwrap();
    let x = Tensor::from_slice(&[256i64, 116, 104, 101, 32, 113]).unsqueeze(0);
    let d = (after.forward(&x, false).unwrap() - merged.forward(&x, false).unwrap())
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-5, "{d}");
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    resume_matches(|_| {});
}

#[test]
fn resumed_lora_run_equals_uninterrupted_run() {
    resume_matches(lora);
}

fn resume_matches(method: fn(&mut serde_json::Value)) {
    let f = Fixture::new();
    let edit = |v: &mut serde_json::Value| {
        method(v);
        v["training"]["schedule"] = "cosine".into();
        v["training"]["warmup_steps"] = 2.into();
        v["token_budget"] = 640.into();
        v["eval_at"] = serde_json::json!([640]);
    };
    let whole = f.run("whole", edit);
    let split = f.run("split", edit);
    let a = train(&whole, &f.opts()).unwrap();
    let mut half = f.opts();
    half.stop_after_steps = Some(5);
    let first = train(&split, &half).unwrap();
    assert_eq!((first.status, first.step), (RunStatus::Interrupted, 5));
    assert!(!split.parent().unwrap().join("result.json").exists());
    let b = train(&split, &f.opts()).unwrap();
    assert_eq!((b.status, b.step), (RunStatus::Completed, 10));
    assert!(a.resumed_from.is_empty());
    assert_eq!(b.resumed_from, vec![5], "the result says where it resumed");
    let (la, lb) = (a.final_train_loss.unwrap(), b.final_train_loss.unwrap());
    assert!((la - lb).abs() < 1e-5, "{la} vs {lb}");
    let (ea, eb) = (&a.evals[1].metrics, &b.evals[1].metrics);
    assert!((ea["target_loss"] - eb["target_loss"]).abs() < 1e-5);
    // One metrics line per step 5 and 10, plus the base line: no duplicates after resuming.
    let steps: Vec<u64> = read_lines(&split.parent().unwrap().join("metrics.jsonl"))
        .iter()
        .map(|l| l.step)
        .collect();
    assert_eq!(steps, vec![0, 5, 10]);
}

/// A truncated checkpoint (a full disk, a copy cut short) is named, with what to do.
#[test]
fn a_truncated_checkpoint_is_named_with_the_fix() {
    let f = Fixture::new();
    let run = f.run("cut", |_| {});
    let mut half = f.opts();
    half.stop_after_steps = Some(3);
    train(&run, &half).unwrap();
    let ckpt = run.parent().unwrap().join("checkpoints/step-00000003");
    let model = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let e = train(&run, &f.opts()).unwrap_err().to_string();
    assert!(
        e.contains("checkpoint step-00000003")
            && e.contains("is corrupt (model.safetensors")
            && e.contains("truncated")
            && e.contains("delete it to start the run over"),
        "{e}"
    );
}

/// A run stopped at a checkpoint does not resume on data that changed since: the second half
/// would train on other inputs than the first.
#[test]
fn a_checkpoint_does_not_resume_on_changed_data() {
    let f = Fixture::new();
    let run = f.run("changed", |_| {});
    let mut half = f.opts();
    half.stop_after_steps = Some(3);
    let first = train(&run, &half).unwrap();
    assert_eq!(first.status, RunStatus::Interrupted);
    std::fs::write(
        f.dir.path().join("target.txt"),
        "a different corpus entirely.\n".repeat(300),
    )
    .unwrap();
    let e = train(&run, &f.opts()).unwrap_err().to_string();
    assert!(
        e.contains("changed since its checkpoint") && e.contains("target.txt was 13500 bytes"),
        "{e}"
    );
    assert!(e.contains("--force"), "{e}");
}

/// `--min-step-ms`: every step takes at least the minimum, and the run computes what an unpaced
/// one does (the Slurm fault tests rely on both).
#[test]
fn paced_steps_take_their_minimum_and_change_nothing() {
    let f = Fixture::new();
    let edit = |v: &mut serde_json::Value| {
        v["token_budget"] = 320.into();
        v["eval_at"] = serde_json::json!([320]);
        v["evaluation"]["metrics"] = serde_json::json!(["target_loss"]);
    };
    let plain = f.run("plain", edit);
    let paced = f.run("paced", edit);
    let a = train(&plain, &f.opts()).unwrap();
    let mut slow = f.opts();
    slow.min_step = Some(std::time::Duration::from_millis(60));
    let t0 = std::time::Instant::now();
    let b = train(&paced, &slow).unwrap();
    assert_eq!(b.step, 5);
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(5 * 60),
        "5 steps of at least 60 ms: {:?}",
        t0.elapsed()
    );
    assert_eq!(a.final_train_loss, b.final_train_loss);
    assert_eq!(a.evals[1].metrics, b.evals[1].metrics);
}

/// A learning rate so large that the weights overflow f32 after one step: the loss is NaN on
/// every machine (lr 1e4 only flattened the logits on some CPUs, a finite loss of ln V).
#[test]
fn huge_learning_rate_diverges_cleanly() {
    let f = Fixture::new();
    let run = f.run("div", |v| {
        v["learning_rate"] = 1e30.into();
        v["training"]["grad_clip"] = 0.0.into();
    });
    let r = train(&run, &f.opts()).unwrap();
    assert_eq!(r.status, RunStatus::Diverged, "{r:?}");
    assert!(r.step < 30);
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("training loss")),
        "{r:?}"
    );
    let dir = run.parent().unwrap();
    assert!(dir.join("result.json").exists());
    assert!(!read_lines(&dir.join("metrics.jsonl")).is_empty());
}

/// A loss above `max_loss` is a divergence too, at the step it happens.
#[test]
fn a_loss_above_max_loss_diverges_at_that_step() {
    let f = Fixture::new();
    let run = f.run("maxloss", |v| {
        v["training"]["max_loss"] = 1.0.into();
    });
    let r = train(&run, &f.opts()).unwrap();
    assert_eq!((r.status, r.step), (RunStatus::Diverged, 0), "{r:?}");
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("max_loss Some(1.0)")),
        "{r:?}"
    );
}

#[test]
fn ift_trains_on_responses() {
    let f = Fixture::new();
    let mut jsonl = String::new();
    for i in 0..40 {
        jsonl.push_str(&format!(
            "{{\"prompt\":\"what is {i} plus 1? \",\"response\":\"{}\"}}\n",
            i + 1
        ));
    }
    std::fs::write(f.dir.path().join("math.jsonl"), jsonl).unwrap();
    let target = f.dir.path().join("math.jsonl");
    let run = f.run("ift", |v| {
        v["data"]["regime"] = "ift".into();
        v["data"]["target"] = serde_json::json!(target);
        v["training"]["seq_len"] = 32.into();
        v["token_budget"] = 640.into();
        v["eval_at"] = serde_json::json!([640]);
    });
    let r = train(&run, &f.opts()).unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{r:?}");
    assert!(r.evals[1].metrics["target_loss"].is_finite());
}

#[test]
fn bf16_mixed_precision_trains_like_f32() {
    let f = Fixture::new();
    let exact = train(&f.run("f32", |_| {}), &f.opts()).unwrap();
    let mixed = train(
        &f.run("bf16", |v| v["training"]["precision"] = "bf16".into()),
        &f.opts(),
    )
    .unwrap();
    assert_eq!(exact.device.as_deref(), Some("cpu f32"));
    assert_eq!(mixed.device.as_deref(), Some("cpu bf16"));
    assert_eq!(mixed.status, RunStatus::Completed);
    let (a, b) = (
        exact.final_train_loss.unwrap(),
        mixed.final_train_loss.unwrap(),
    );
    assert!(a != b, "bf16 must compute in bf16");
    assert!((a - b).abs() < 0.1 * a, "f32 ends at {a}, bf16 at {b}");
    let first = mixed.evals[0].metrics["target_loss"];
    let last = mixed.evals[2].metrics["target_loss"];
    assert!(last < first * 0.6, "bf16 held-out loss {first} -> {last}");
}

#[test]
fn asking_for_a_missing_gpu_is_an_error() {
    let f = Fixture::new();
    let mut opts = f.opts();
    opts.device = "cuda".into();
    if tch::Cuda::is_available() {
        return;
    }
    let e = train(&f.run("gpu", |_| {}), &opts).unwrap_err().to_string();
    assert!(
        e.contains("device `cuda`") && e.contains("--device cpu"),
        "{e}"
    );
    // It names the libtorch this process loaded, and that it is CPU-only.
    assert!(
        e.contains("libtorch_cpu.so without libtorch_cuda.so") && e.contains("scripts/build-cuda"),
        "{e}"
    );
    // Ranks: auto is the CPU here; an explicit GPU is refused the same way.
    assert_eq!(rank_device("auto", 3, Some(4)).unwrap(), Device::Cpu);
    let e = rank_device("cuda", 0, Some(2)).unwrap_err().to_string();
    assert!(e.contains("libtorch_cpu.so"), "{e}");
    opts.device = "tpu".into();
    let e = train(&f.run("tpu", |_| {}), &opts).unwrap_err().to_string();
    assert!(e.contains("use auto, cpu, cuda or cuda:N"), "{e}");
}

#[test]
fn export_writes_a_hugging_face_folder_that_reproduces_the_run() {
    let f = Fixture::new();
    for (name, edit) in [
        ("full", (|_: &mut serde_json::Value| {}) as fn(&mut _)),
        ("lora", lora),
    ] {
        let run = f.run(name, edit);
        let out = f.dir.path().join(format!("{name}-hf"));
        let dir = run.parent().unwrap();
        let e = export::write_hf_model(dir, &out, &f.opts(), tch::Kind::Float).unwrap_err();
        assert!(e.to_string().contains("no checkpoint yet"), "{e}");
        train(&run, &f.opts()).unwrap();
        let w = export::write_hf_model(dir, &out, &f.opts(), tch::Kind::Float).unwrap();
        assert_eq!(
            (w.step, w.merged_lora, w.tokenizer),
            (30, name == "lora", false)
        );
        // The trained model, rebuilt from its checkpoint, against the exported folder.
        let rf = read_run_file(&run).unwrap();
        let (trained, _) = build_model(&rf, &f.opts(), Device::Cpu).unwrap();
        let ck = checkpoint::load_latest(&dir.join("checkpoints"))
            .unwrap()
            .unwrap();
        trained.load_named(&ck.model, false, "checkpoint").unwrap();
        let hf = Llama::from_hf_dir(&out, &BuildOptions::default(), Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[116i64, 104, 101, 32, 113, 117]).unsqueeze(0);
        let a = trained.forward(&x, false).unwrap();
        let b = hf.forward(&x, false).unwrap();
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{name}: exported logits differ by {diff}");
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
        assert_eq!(cfg["hidden_size"], 32);
        let again = export::write_hf_model(dir, &out, &f.opts(), tch::Kind::Float).unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again}");
    }
}

#[test]
fn refusals_are_clear() {
    let f = Fixture::new();
    let newer = f.run("newer", |v| v["schema"] = 99.into());
    let e = train(&newer, &f.opts()).unwrap_err().to_string();
    assert!(e.contains("newer") && e.contains("newer/run.json"), "{e}");
    let pre = f.run("pre", |v| v["model"]["init"] = "pretrained".into());
    let e = train(&pre, &f.opts()).unwrap_err().to_string();
    assert!(
        e.contains("sweep pretrain") && e.contains("tiny.safetensors"),
        "{e}"
    );
    let failed: RunResult = serde_json::from_str(
        &std::fs::read_to_string(pre.parent().unwrap().join("result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    let missing = f.run("missing", |v| v["data"]["target"] = "builtin:python".into());
    let e = train(&missing, &f.opts()).unwrap_err().to_string();
    assert!(e.contains("scripts/setup-data"), "{e}");
}

#[test]
fn a_stop_signal_checkpoints_and_the_next_session_finishes() {
    let f = Fixture::new();
    let run = f.run("stop", |v| {
        v["token_budget"] = 320.into();
        v["eval_at"] = serde_json::json!([320]);
    });
    let mut opts = f.opts();
    opts.stop = Some(Arc::new(AtomicBool::new(true)));
    let r = train(&run, &opts).unwrap();
    assert_eq!((r.status, r.step), (RunStatus::Interrupted, 0));
    let ckpts = checkpoint::list(&run.parent().unwrap().join("checkpoints")).unwrap();
    assert_eq!(ckpts.len(), 1);
    let r = train(&run, &f.opts()).unwrap();
    assert_eq!((r.status, r.step), (RunStatus::Completed, 5));
    // The base evaluation of the first session is kept.
    assert_eq!(r.evals.first().map(|e| e.tokens), Some(0));
}

#[test]
fn generation_and_choice_metrics_are_measured_at_every_eval() {
    let f = Fixture::new();
    let mc = f.dir.path().join("mc.jsonl");
    let items = [
        r#"{"context":"the quick brown fox jumps over the","choices":[" lazy dog."," qzx vwk."],"label":0}"#,
        r#"{"context":"over the lazy dog.\nthe quick","choices":[" zpqj"," brown"],"label":1}"#,
    ];
    std::fs::write(&mc, items.join("\n")).unwrap();
    let he = f.dir.path().join("he.jsonl");
    let task = serde_json::json!({"task_id": "t/0", "prompt": "def one():\n",
        "entry_point": "one", "test": "def check(f):\n    assert f() == 1\n"});
    std::fs::write(&he, task.to_string()).unwrap();
    let run = f.run("gen", |v| {
        v["evaluation"]["metrics"] = serde_json::json!([
            "target_loss",
            "math_accuracy",
            "next_line",
            "diversity",
            "multiple_choice",
            "humaneval"
        ]);
        v["evaluation"]["problems"] = 1.into();
        v["evaluation"]["diversity_samples"] = 2.into();
        v["evaluation"]["multiple_choice"] = mc.to_str().unwrap().into();
        v["evaluation"]["humaneval"] = he.to_str().unwrap().into();
        v["evaluation"]["humaneval_samples"] = 2.into();
        v["eval_at"] = serde_json::json!([1920]);
    });
    let mut opts = f.opts();
    if let Some(cfg) = opts.model_override.as_mut() {
        cfg.max_position_embeddings = 128;
    }
    let r = train(&run, &opts).unwrap();
    assert_eq!(r.status, RunStatus::Completed);
    assert!(r.metrics_not_measured.is_empty());
    assert_eq!(r.evals.len(), 2);
    for e in &r.evals {
        for name in [
            "math_accuracy",
            "next_line_match",
            "diversity_unique",
            "distinct_1",
            "distinct_2",
            "diversity_similarity",
            "multiple_choice_accuracy",
            "humaneval_pass@1",
            "humaneval_pass@1_sampled",
        ] {
            let v = e.metrics[name];
            assert!((0.0..=1.0).contains(&v), "{name} = {v}");
        }
    }
    // A few steps on the fox sentence teach it to prefer its words over noise.
    assert_eq!(r.evals[1].metrics["multiple_choice_accuracy"], 1.0);
    // Each proportion says how many items it is of (problems = 1: one of each; the diversity
    // scores are no proportions of items).
    let items: Vec<(&str, u64)> = r
        .metric_items
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        items,
        [
            ("humaneval_pass@1", 1),
            ("humaneval_pass@1_sampled", 1),
            ("math_accuracy", 1),
            ("multiple_choice_accuracy", 1),
            ("next_line_match", 1),
        ]
    );

    // Without a file, the metric is refused before training.
    let bad = f.run("nomc", |v| {
        v["evaluation"]["metrics"] = serde_json::json!(["multiple_choice"]);
    });
    let err = train(&bad, &f.opts()).unwrap_err().to_string();
    assert!(err.contains("evaluation.multiple_choice"), "{err}");
}

#[test]
fn gguf_and_hf_models_train_with_their_tokenizers() {
    use crate::model::llama::{BuildOptions, Llama};
    let f = Fixture::new();
    // tiny_cfg's vocabulary (264) is the size of the test BPE vocabulary.
    let cfg = tiny_cfg();
    let build = BuildOptions {
        seed: 2,
        ..Default::default()
    };
    let m = Llama::new(&cfg, &build, Device::Cpu).unwrap();
    let gguf = f.dir.path().join("m.gguf");
    crate::model::gguf_tests::write_gguf(&m, &gguf);
    let opts = TrainOptions {
        model_override: None,
        ..f.opts()
    };

    let run = f.run("gguf", |v| {
        v["model"] = serde_json::json!({"kind": "gguf", "path": gguf});
        v["evaluation"]["metrics"] =
            serde_json::json!(["target_loss", "source_loss", "diversity", "next_line"]);
        lora(v);
    });
    let file = read_run_file(&run).unwrap();
    let (_, tok) = build_model(&file, &opts, Device::Cpu).unwrap();
    // The data is tokenized with the model's BPE ("the" is one token), framed by its EOS.
    assert_eq!(tok.encode("the").unwrap(), vec![258]);
    assert_eq!((tok.specials().bos, tok.specials().eos), (None, 262));
    let r = train(&run, &opts).unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    let first = r.evals.first().unwrap().metrics["target_loss"];
    let last = r.evals.last().unwrap().metrics["target_loss"];
    assert!(last < first, "target loss {first} -> {last}");
    // The generation metrics decode with the model's own tokenizer.
    assert!(
        r.metrics_not_measured.is_empty(),
        "{:?}",
        r.metrics_not_measured
    );
    for e in &r.evals {
        assert!(
            e.metrics.contains_key("diversity_unique"),
            "{:?}",
            e.metrics
        );
        assert!(e.metrics.contains_key("next_line_match"), "{:?}", e.metrics);
    }

    let hf = f.dir.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    Tensor::write_safetensors(&m.variables(), hf.join("model.safetensors")).unwrap();
    let crate::model::tokenizer::Tokenizer::Hf { inner, .. } = tok else {
        panic!("a GGUF model has a BPE tokenizer")
    };
    inner.save(hf.join("tokenizer.json"), false).unwrap();
    std::fs::write(
        hf.join("tokenizer_config.json"),
        r#"{"eos_token": "<|endoftext|>"}"#,
    )
    .unwrap();
    let run = f.run("hf", |v| {
        v["model"] = serde_json::json!({"kind": "hf", "path": hf});
        lora(v);
    });
    let r = train(&run, &opts).unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert!(
        r.inputs.keys().any(|k| k.ends_with("hf/model.safetensors")),
        "the base weights are fingerprinted: {:?}",
        r.inputs.keys()
    );
    // Base weights replaced in place after training: the adapter is never merged into them.
    let other = Llama::new(
        &cfg,
        &BuildOptions {
            seed: 3,
            ..Default::default()
        },
        Device::Cpu,
    )
    .unwrap();
    Tensor::write_safetensors(&other.variables(), hf.join("model.safetensors")).unwrap();
    let e = export::write_hf_model(
        run.parent().unwrap(),
        &f.dir.path().join("exported"),
        &opts,
        tch::Kind::Float,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("the base model changed") && e.contains("model.safetensors has other content"),
        "{e}"
    );
    assert!(!f.dir.path().join("exported").exists(), "nothing written");

    let missing = f.run("nogguf", |v| {
        v["model"] = serde_json::json!({"kind": "gguf", "path": "nowhere/x.gguf"});
    });
    let e = train(&missing, &opts).unwrap_err().to_string();
    assert!(e.contains("nowhere/x.gguf"), "{e}");
}

/// A Qwen3 checkpoint (per-head q/k norms, a head wider than hidden/heads, attention biases)
/// trains with full fine-tuning (its biases and norms train) and with LoRA, and `sweep export`
/// writes back the config.json it read, field for field, with only the dtype changed; the
/// exported folder computes the trained model.
#[test]
fn qwen_checkpoints_train_and_export_the_config_they_were_read_from() {
    let f = Fixture::new();
    let hf = f.dir.path().join("qwen3");
    std::fs::create_dir_all(&hf).unwrap();
    let mut c = serde_json::to_value(tiny_cfg()).unwrap();
    for (k, v) in serde_json::json!({
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "head_dim": 16,
        "attention_bias": true, "tie_word_embeddings": false, "use_sliding_window": false,
        "sliding_window": null, "max_window_layers": 28, "dtype": "bfloat16",
        "layer_types": ["full_attention", "full_attention"], "eos_token_id": 262,
    })
    .as_object()
    .unwrap()
    {
        c[k] = v.clone();
    }
    let text = serde_json::to_string(&c).unwrap();
    std::fs::write(hf.join("config.json"), &text).unwrap();
    let cfg = crate::model::config::parse_hf_config(&text, "config.json").unwrap();
    let m = Llama::new(
        &cfg,
        &BuildOptions {
            seed: 2,
            ..Default::default()
        },
        Device::Cpu,
    )
    .unwrap();
    let names: Vec<String> = m.variables().into_iter().map(|(n, _)| n).collect();
    for want in [
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.1.self_attn.k_norm.weight",
        "model.layers.0.self_attn.o_proj.bias",
        "model.layers.1.self_attn.v_proj.bias",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    Tensor::write_safetensors(&m.variables(), hf.join("model.safetensors")).unwrap();
    let crate::model::tokenizer::Tokenizer::Hf { inner, .. } =
        crate::model::tokenizer::tests::tiny_gguf_tokenizer()
    else {
        panic!("the test tokenizer is a BPE one")
    };
    inner.save(hf.join("tokenizer.json"), false).unwrap();
    let opts = TrainOptions {
        model_override: None,
        ..f.opts()
    };
    for (name, edit) in [
        ("full", (|_: &mut serde_json::Value| {}) as fn(&mut _)),
        ("lora", lora),
    ] {
        let run = f.run(name, |v| {
            v["model"] = serde_json::json!({"kind": "hf", "path": hf});
            edit(v);
        });
        let r = train(&run, &opts).unwrap();
        assert_eq!(r.status, RunStatus::Completed, "{name}: {:?}", r.error);
        let (first, last) = (
            r.evals.first().unwrap().metrics["target_loss"],
            r.evals.last().unwrap().metrics["target_loss"],
        );
        assert!(last < first, "{name}: target loss {first} -> {last}");
        let dir = run.parent().unwrap();
        let out = f.dir.path().join(format!("{name}-exported"));
        export::write_hf_model(dir, &out, &opts, tch::Kind::Float).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        let mut want = c.clone();
        want["dtype"] = "float32".into();
        assert_eq!(written, want, "{name}: config.json written back as read");
        let (trained, _) = build_model(&read_run_file(&run).unwrap(), &opts, Device::Cpu).unwrap();
        let ck = checkpoint::load_latest(&dir.join("checkpoints"))
            .unwrap()
            .unwrap();
        trained.load_named(&ck.model, false, "checkpoint").unwrap();
        if name == "full" {
            let bias = |m: &Llama| {
                m.variables()
                    .into_iter()
                    .find(|(n, _)| n == "model.layers.0.self_attn.q_proj.bias")
                    .unwrap()
                    .1
            };
            let moved = (bias(&trained) - bias(&m)).abs().max().double_value(&[]);
            assert!(moved > 0.0, "full fine-tuning trains the biases");
        }
        let exported = Llama::from_hf_dir(&out, &BuildOptions::default(), Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[116i64, 104, 101, 32, 113, 117]).unsqueeze(0);
        let a = trained.forward(&x, false).unwrap();
        let b = exported.forward(&x, false).unwrap();
        let diff = (&a - &b).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "{name}: exported logits differ by {diff}");
    }

    // Instruction tuning with the model's own chat template (tokenizer_config.json).
    let mut jsonl = String::new();
    for i in 0..30 {
        jsonl.push_str(&format!(
            "{{\"prompt\":\"the {i}\",\"response\":\"the {}\"}}\n",
            i + 1
        ));
    }
    std::fs::write(f.dir.path().join("pairs.jsonl"), jsonl).unwrap();
    let ift_with = |name: &str, template: &str, apply: Option<bool>| {
        f.run(name, |v| {
            v["model"] = serde_json::json!({"kind": "hf", "path": hf});
            v["data"]["regime"] = "ift".into();
            v["data"]["target"] = serde_json::json!(f.dir.path().join("pairs.jsonl"));
            v["data"]["chat_template"] = template.into();
            v["training"]["seq_len"] = 64.into();
            v["token_budget"] = 1280.into();
            v["eval_at"] = serde_json::json!([1280]);
            v["evaluation"]["metrics"] =
                serde_json::json!(["target_loss", "math_accuracy", "diversity"]);
            v["evaluation"]["diversity_samples"] = 1.into();
            if let Some(a) = apply {
                v["evaluation"]["apply_chat_template"] = a.into();
            }
            lora(v);
        })
    };
    let ift = |name: &str, template: &str| ift_with(name, template, None);
    let e = train(&ift("no-template", "model"), &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data.chat_template") && e.contains("tokenizer_config.json"),
        "{e}"
    );
    std::fs::write(
        hf.join("tokenizer_config.json"),
        serde_json::json!({"chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"})
            .to_string(),
    )
    .unwrap();
    let run = ift("chat", "model");
    let tok = crate::train::load_tokenizer(&read_run_file(&run).unwrap()).unwrap();
    let ex = crate::train::data::tokenize(
        &crate::train::data::RawDoc::Pair("the 1".into(), "the 2".into()),
        &tok,
    )
    .unwrap();
    assert_eq!(
        tok.decode(&ex.tokens[..ex.prompt_len]).unwrap(),
        "<|im_start|>user\nthe 1<|im_start|>assistant\n"
    );
    let r = train(&run, &opts).unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    // Questions are framed by the template by default, plain when the spec says so.
    let framed = |r: &crate::results::RunResult, what: &str| {
        assert!(
            r.evals
                .iter()
                .all(|e| e.metrics.contains_key("math_accuracy")),
            "{:?}",
            r.evals
        );
        r.notes.iter().any(|n| n.contains(what))
    };
    assert!(
        framed(&r, "framed by data.chat_template as a user turn"),
        "{:?}",
        r.notes
    );
    let r = train(&ift_with("chat-plain-eval", "model", Some(false)), &opts).unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    assert!(framed(&r, "questions are plain text"), "{:?}", r.notes);
    let e = train(&ift("missing", "nowhere/chat.jinja"), &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nowhere/chat.jinja"), "{e}");
}

/// The base model is evaluated once per sweep: the second run (another learning rate, LoRA
/// instead of full) reads the first run's step-0 metrics from results/NAME/base_evals/ instead
/// of evaluating, and still records them as its own step 0.
#[test]
fn the_base_model_is_evaluated_once_per_sweep() {
    let f = Fixture::new();
    let short = |v: &mut serde_json::Value| {
        v["token_budget"] = 320.into();
        v["eval_at"] = serde_json::json!([320]);
    };
    let a = f.run("results/s/runs/a-s0", |v| {
        short(v);
        v["id"] = "a-s0".into();
        v["config_id"] = "a".into();
    });
    let b = f.run("results/s/runs/b-s0", |v| {
        short(v);
        lora(v);
        v["learning_rate"] = 0.03.into();
        v["id"] = "b-s0".into();
        v["config_id"] = "b".into();
    });
    let ra = train(&a, &f.opts()).unwrap();
    let read = |p: &Path| -> base_eval::BaseEvalFile {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let mut caches: Vec<PathBuf> = std::fs::read_dir(f.dir.path().join("results/s/base_evals"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // One file for the greedy metrics, one for the sampled (diversity) ones.
    assert_eq!(caches.len(), 2, "{caches:?}");
    caches.sort_by_key(|p| !read(p).metrics.contains_key("target_loss"));
    let cached = read(&caches[0]);
    assert!(read(&caches[1]).metrics.contains_key("diversity_unique"));
    // The metrics of outputs are shared; the spectral rank, of the weights, is not.
    let base_a = &ra.evals[0].metrics;
    for (k, v) in cached.metrics.iter().chain(&read(&caches[1]).metrics) {
        assert_eq!(base_a[k], *v, "{k}");
    }
    assert!(cached.metrics.contains_key("source_loss"));
    assert!(!cached.metrics.contains_key("spectral_rank"));
    assert!(ra.notes.is_empty(), "{:?}", ra.notes);

    // Mark the cache so that reading it is visible: the second run reports the marked value.
    let mut marked = cached.clone();
    marked.metrics.insert("target_loss".into(), 123.0);
    std::fs::write(&caches[0], serde_json::to_vec(&marked).unwrap()).unwrap();
    let rb = train(&b, &f.opts()).unwrap();
    assert_eq!(rb.status, RunStatus::Completed);
    let base_b = &rb.evals[0].metrics;
    assert_eq!(base_b["target_loss"], 123.0);
    assert_eq!(base_b["source_loss"], base_a["source_loss"]);
    assert_eq!(base_b["spectral_rank"], 0.0);
    assert!(rb.notes[0].contains("read from"), "{:?}", rb.notes);
    let first = &read_lines(&b.parent().unwrap().join("metrics.jsonl"))[0];
    assert_eq!((first.step, first.eval["target_loss"]), (0, 123.0));

    // Another evaluation setting is another key: a third run evaluates for itself.
    let c = f.run("results/s/runs/c-s0", |v| {
        short(v);
        v["evaluation"]["eval_tokens"] = 128.into();
        v["id"] = "c-s0".into();
        v["config_id"] = "c".into();
    });
    let rc = train(&c, &f.opts()).unwrap();
    assert_ne!(rc.evals[0].metrics["target_loss"], 123.0);
    assert_eq!(
        std::fs::read_dir(f.dir.path().join("results/s/base_evals"))
            .unwrap()
            .count(),
        4
    );
}

/// The key leaves out what does not change the model at init, and keeps the rest.
#[test]
fn base_eval_keys_follow_what_changes_the_base_evaluation() {
    let f = Fixture::new();
    let key = |name: &str, edit: fn(&mut serde_json::Value)| {
        let file = read_run_file(&f.run(name, edit)).unwrap();
        let metrics = file.shared.evaluation.metrics.clone().unwrap();
        base_eval::key(&file, &f.opts(), &[], &metrics, "Cpu", false)
    };
    let base = key("k0", |_| {});
    assert_eq!(base, key("k1", |v| v["learning_rate"] = 0.5.into()));
    assert_eq!(base, key("k2", lora));
    // The fixture's weights are random: another seed is another model.
    assert_ne!(base, key("k3", |v| v["seed"] = 1.into()));
    assert_ne!(base, key("k4", |v| v["training"]["seq_len"] = 32.into()));
    assert_ne!(
        base,
        key("k5", |v| v["evaluation"]["temperature"] = 0.5.into())
    );
    assert_ne!(base, key("k6", |v| v["data"]["text_field"] = "body".into()));
    // Pretrained weights are the same for every seed: only the sampled metrics' key has it.
    let pretrained = |seed: u64, sampled: bool| {
        let file = read_run_file(&f.run(&format!("p{seed}"), |v| {
            v["model"]["init"] = "pretrained".into();
            v["seed"] = seed.into();
        }))
        .unwrap();
        let metrics = file.shared.evaluation.metrics.clone().unwrap();
        base_eval::key(&file, &f.opts(), &[], &metrics, "Cpu", sampled)
    };
    assert_eq!(pretrained(0, false), pretrained(1, false));
    assert_ne!(pretrained(0, true), pretrained(1, true));
    assert_ne!(pretrained(0, false), pretrained(0, true));
}

/// Pre-tokenized .npy shards train a CPT run like text does.
#[test]
fn token_shards_train_a_cpt_run() {
    let f = Fixture::new();
    let text = std::fs::read_to_string(f.dir.path().join("target.txt")).unwrap();
    let shards = f.dir.path().join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    // Eight shards of byte ids, one document each.
    for (i, chunk) in text.as_bytes().chunks(text.len() / 8 + 1).enumerate() {
        let ids: Vec<u16> = chunk.iter().map(|&b| b as u16).collect();
        std::fs::write(
            shards.join(format!("{i:02}.npy")),
            shards::npy_bytes_u16(&ids),
        )
        .unwrap();
    }
    let run = f.run("npy", |v| {
        v["data"]["target"] = serde_json::json!(shards);
        v["token_budget"] = 640.into();
        v["eval_at"] = serde_json::json!([640]);
    });
    let r = train(&run, &f.opts()).unwrap();
    assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
    let (first, last) = (
        r.evals[0].metrics["target_loss"],
        r.evals[1].metrics["target_loss"],
    );
    assert!(last < first, "target loss {first} -> {last}");
}

/// Sets a stop flag on its `at`-th call: a signal that arrives during an evaluation.
struct SignalDuringEval {
    flag: Arc<AtomicBool>,
    calls: std::cell::Cell<usize>,
    at: usize,
}

impl super::eval::Evaluator for SignalDuringEval {
    fn evaluate(
        &self,
        _: &Llama,
        _: &crate::model::tokenizer::Tokenizer,
        _: super::eval::Stop<'_>,
    ) -> Result<std::collections::BTreeMap<String, f64>, TrainError> {
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() == self.at {
            self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(Default::default())
    }

    fn of_outputs_only(&self) -> bool {
        false
    }
}

#[test]
fn a_stop_during_an_evaluation_ends_it_and_the_resumed_run_evaluates_first() {
    let f = Fixture::new();
    let edit = |v: &mut serde_json::Value| {
        v["token_budget"] = 640.into();
        v["eval_at"] = serde_json::json!([320, 640]);
        v["evaluation"]["metrics"] = serde_json::json!(["target_loss", "source_loss"]);
    };
    let whole = train(&f.run("whole", edit), &f.opts()).unwrap();
    let run = f.run("cut", edit);
    let flag = Arc::new(AtomicBool::new(false));
    let mut opts = f.opts();
    opts.stop = Some(flag.clone());
    let (file, hash) = read_run_file_hashed(&run).unwrap();
    let dir = run.parent().unwrap();
    let mut t = super::trainer::Trainer::new(&file, &hash, dir, &opts).unwrap();
    // Call 1 is the base evaluation; call 2 begins the evaluation at 320 tokens (step 5), and
    // the loss evaluations after it stop at their first batch.
    t.evaluators.insert(
        0,
        Box::new(SignalDuringEval {
            flag,
            calls: Default::default(),
            at: 2,
        }),
    );
    let r = t.run(std::time::Instant::now()).unwrap();
    assert_eq!((r.status, r.step), (RunStatus::Interrupted, 5));
    assert_eq!(
        r.evals.iter().map(|e| e.tokens).collect::<Vec<_>>(),
        vec![0]
    );
    assert!(!dir.join("result.json").exists());
    let ckpts = checkpoint::list(&dir.join("checkpoints")).unwrap();
    assert_eq!(ckpts.len(), 1);
    assert!(ckpts[0].ends_with("step-00000005"), "{ckpts:?}");
    // Resumed: the cut evaluation first, then the rest; the same numbers as the whole run.
    let r = train(&run, &f.opts()).unwrap();
    assert_eq!((r.status, r.step), (RunStatus::Completed, 10));
    assert_eq!(r.evals.len(), 3);
    for (a, b) in whole.evals.iter().zip(&r.evals) {
        assert_eq!((a.step, a.tokens), (b.step, b.tokens));
        for (k, x) in &a.metrics {
            assert!(
                (x - b.metrics[k]).abs() < 1e-5,
                "{k} at {}: {x} vs {}",
                a.tokens,
                b.metrics[k]
            );
        }
    }
    let lines = read_lines(&dir.join("metrics.jsonl"));
    let steps: Vec<u64> = lines.iter().map(|l| l.step).collect();
    assert_eq!(steps, vec![0, 5, 10], "one line per evaluation, none twice");
    assert!(lines[1].eval.contains_key("target_loss"));
}

#[test]
fn a_loss_evaluation_stops_at_its_first_batch_once_asked() {
    let rows: Vec<super::rows::Row> = (0..4).map(|_| (vec![1; 8], vec![2; 8])).collect();
    let e = super::eval::LossEval {
        name: "target".into(),
        rows,
        seq_len: 8,
        micro_batch: 1,
    };
    let model = Llama::new(&tiny_cfg(), &BuildOptions::default(), Device::Cpu).unwrap();
    let tok = crate::model::tokenizer::Tokenizer::Byte;
    use super::eval::Evaluator;
    let flag = AtomicBool::new(false);
    assert!(e
        .evaluate(&model, &tok, Some(&flag))
        .unwrap()
        .contains_key("target_loss"));
    flag.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = e.evaluate(&model, &tok, Some(&flag)).unwrap_err();
    assert!(super::eval::interrupted(&err), "{err}");
    // The generation metrics stop at their next completion or score.
    let mut lm = crate::metrics::lm::LlamaText::new(&model, &tok, Some(&flag));
    use crate::metrics::TextModel;
    assert!(matches!(
        lm.loglikelihood("a", "b"),
        Err(crate::metrics::MetricsError::Interrupted)
    ));
}
