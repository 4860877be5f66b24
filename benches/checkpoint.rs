//! Writing and reading a checkpoint of full fine-tuning with AdamW at a shape's size: the
//! trainable weights and the two moments (12 bytes a parameter), through the trainer's own
//! checkpoint code (streamed safetensors, one tensor off the device at a time) beside tch's
//! `write_safetensors`/`read_safetensors` of the same tensors, in one run; and the time-limit
//! warning that `sweep submit` gives such runs by default. Run by scripts/bench-checkpoint;
//! prints a Markdown table. `cargo bench --bench checkpoint -- SHAPE [DIR]` (default llama-1b in
//! target/bench-checkpoint).

use std::path::PathBuf;
use std::time::Instant;

use sweep::model::config::LlamaConfig;
use sweep::model::llama::{BuildOptions, Llama};
use sweep::train::checkpoint::{self, TrainState};
use tch::{Device, Tensor};

fn peak_rss_gb() -> f64 {
    // VmHWM in KiB, over 1e6, as the README's table was measured.
    sweep::train::outputs::peak_rss_kib().map_or(0.0, |kib| kib as f64 / 1e6)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    sweep::fingerprint::of_path("x", dir)
        .map(|m| m.values().map(|f| f.size).sum())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let shape = args.first().cloned().unwrap_or_else(|| "llama-1b".into());
    let root = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench-checkpoint"));
    let cfg = LlamaConfig::builtin(&shape).unwrap_or_else(|| {
        eprintln!("checkpoint: unknown shape {shape}");
        std::process::exit(2)
    });
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let t0 = Instant::now();
    let model = Llama::new(&cfg, &BuildOptions::default(), Device::Cpu).unwrap();
    let weights = model.trainable();
    let optim: Vec<(String, Tensor)> = weights
        .iter()
        .flat_map(|(n, t)| {
            [
                (format!("exp_avg.{n}"), t.zeros_like()),
                (format!("exp_avg_sq.{n}"), t.zeros_like()),
            ]
        })
        .collect();
    let params: i64 = weights.iter().map(|(_, t)| t.numel() as i64).sum();
    eprintln!(
        "checkpoint: {shape}, {:.2}B parameters, built in {:.1} s; peak RSS {:.1} GB",
        params as f64 / 1e9,
        t0.elapsed().as_secs_f64(),
        peak_rss_gb()
    );
    let state = TrainState {
        config_id: "bench".into(),
        step: 1,
        tokens: 0,
        data_position: 0,
        seed: 0,
        evals: Vec::new(),
        wall_s: 0.0,
        last_train_loss: None,
        resumed_from: Vec::new(),
        inputs: Default::default(),
        optim_shards: 0,
    };
    // Both writers first, from the tensors in memory; then, those dropped, both readers (a
    // reader's tensors and the originals would not fit together at this size).
    // Each writer twice, alternating, so that neither meets only the page cache the other left
    // (the faster of its two writes counts).
    let dir = root.join("checkpoints");
    let (a, b) = (
        root.join("model.safetensors"),
        root.join("optim.safetensors"),
    );
    let (mut ours_write, mut tch_write) = (f64::INFINITY, f64::INFINITY);
    let (mut after_ours, mut after_tch) = (0.0, 0.0);
    for _ in 0..2 {
        let _ = std::fs::remove_dir_all(&dir);
        let t = Instant::now();
        checkpoint::save(&dir, &state, &weights, &optim).unwrap();
        ours_write = ours_write.min(t.elapsed().as_secs_f64());
        after_ours = peak_rss_gb();
        let _ = (std::fs::remove_file(&a), std::fs::remove_file(&b));
        let t = Instant::now();
        Tensor::write_safetensors(&weights, &a).unwrap();
        Tensor::write_safetensors(&optim, &b).unwrap();
        tch_write = tch_write.min(t.elapsed().as_secs_f64());
        after_tch = peak_rss_gb();
    }
    let bytes = dir_bytes(&dir);
    drop((weights, optim, model));
    let t = Instant::now();
    let loaded = checkpoint::load_latest(&dir).unwrap().unwrap();
    let ours_read = t.elapsed().as_secs_f64();
    drop(loaded);
    let after_ours_read = peak_rss_gb();
    let t = Instant::now();
    drop(Tensor::read_safetensors(&a).unwrap());
    drop(Tensor::read_safetensors(&b).unwrap());
    let tch_read = t.elapsed().as_secs_f64();
    let after_tch_read = peak_rss_gb();
    let gb = bytes as f64 / 1e9;
    println!("| | bytes | write s | GB/s | peak RSS after writing | read s | GB/s | peak RSS after reading |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, w, rw, r, rr) in [
        (
            "sweep checkpoint (streamed write, mapped read)",
            ours_write,
            after_ours,
            ours_read,
            after_ours_read,
        ),
        (
            "tch write_safetensors / read_safetensors",
            tch_write,
            after_tch,
            tch_read,
            after_tch_read,
        ),
    ] {
        println!(
            "| {name} | {gb:.1} GB | {w:.1} | {:.2} | {rw:.1} GB | {r:.1} | {:.2} | {rr:.1} GB |",
            gb / w,
            gb / r
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    println!();
    println!(
        "default time-limit warning for such runs (sweep submit): {} s ({:.0} GB at {:.0} MB/s plus 60 s)",
        sweep::executor::slurm::config::default_signal_s(bytes as f64),
        gb,
        sweep::executor::slurm::config::CHECKPOINT_WRITE_BPS / 1e6
    );
}
