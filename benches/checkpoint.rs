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
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1e6)
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
    println!("| writer | bytes | write s | GB/s | read s | GB/s | peak RSS after |");
    println!("|---|---|---|---|---|---|---|");
    // The trainer's checkpoint: streamed writes, mapped reads.
    let dir = root.join("checkpoints");
    let t = Instant::now();
    checkpoint::save(&dir, &state, &weights, &optim).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    let bytes = dir_bytes(&dir);
    let t = Instant::now();
    let loaded = checkpoint::load_latest(&dir).unwrap().unwrap();
    let read_s = t.elapsed().as_secs_f64();
    assert_eq!(loaded.model.len(), weights.len());
    drop(loaded);
    let gb = bytes as f64 / 1e9;
    println!(
        "| sweep checkpoint (streamed) | {gb:.1} GB | {write_s:.1} | {:.2} | {read_s:.1} | {:.2} | {:.1} GB |",
        gb / write_s,
        gb / read_s,
        peak_rss_gb()
    );
    let _ = std::fs::remove_dir_all(&dir);
    // tch's writer and reader of the same tensors (the reader holds the file and the tensors).
    let (a, b) = (
        root.join("model.safetensors"),
        root.join("optim.safetensors"),
    );
    let t = Instant::now();
    Tensor::write_safetensors(&weights, &a).unwrap();
    Tensor::write_safetensors(&optim, &b).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    drop(optim);
    let t = Instant::now();
    let m = Tensor::read_safetensors(&a).unwrap();
    drop(m);
    let o = Tensor::read_safetensors(&b).unwrap();
    let read_s = t.elapsed().as_secs_f64();
    drop(o);
    println!(
        "| tch write_safetensors / read_safetensors | {gb:.1} GB | {write_s:.1} | {:.2} | {read_s:.1} | {:.2} | {:.1} GB |",
        gb / write_s,
        gb / read_s,
        peak_rss_gb()
    );
    let _ = std::fs::remove_dir_all(&root);
    println!();
    println!(
        "default time-limit warning for such runs (sweep submit): {} s ({:.0} GB at {:.0} MB/s plus 60 s)",
        sweep::executor::slurm::config::default_signal_s(bytes as f64),
        gb,
        sweep::executor::slurm::config::CHECKPOINT_WRITE_BPS / 1e6
    );
}
