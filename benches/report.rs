//! Benchmark: build the report over 100,000 synthetic run results and print the time beside
//! pandas' groupby and aggregation of the same data as CSV (when python3 has pandas).
//! Run with `cargo bench --bench report` (target: under 2 s).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use sweep::model::config::Module;
use sweep::plan::{MethodConfig, Point};
use sweep::report::{build, ReportInput, RunData};
use sweep::results::{EvalRecord, RunStatus};

fn synthetic(n: usize) -> ReportInput {
    let budgets = [1_000u64, 4_000, 16_000, 64_000];
    let lrs = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2];
    let sets = [
        Module::ATTENTION.to_vec(),
        Module::MLP.to_vec(),
        Module::ALL.to_vec(),
    ];
    let mut runs = Vec::with_capacity(n);
    let mut state = 0x1234_5678_u64;
    let mut noise = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 1000) as f64 / 1e4
    };
    for i in 0..n {
        let seed = (i % 5) as u64;
        let c = i / 5;
        let lr = lrs[c % lrs.len()];
        let method = if c % 8 == 0 {
            MethodConfig::Full
        } else {
            MethodConfig::Lora {
                rank: [4u64, 16, 64, 256][(c / 8) % 4],
                alpha: 8.0,
                target_modules: sets[(c / 32) % 3].clone(),
                dropout: ((c / 96) % 50) as f64 / 100.0,
            }
        };
        let evals = std::iter::once(0)
            .chain(budgets)
            .map(|t| EvalRecord {
                step: t / 100,
                tokens: t,
                metrics: BTreeMap::from([
                    (
                        "target_loss".to_string(),
                        3.0 - 0.1 * (t as f64 + 1.0).ln() + noise(),
                    ),
                    (
                        "source_loss".to_string(),
                        2.0 + 0.02 * (t as f64 + 1.0).ln() + noise(),
                    ),
                ]),
            })
            .collect();
        runs.push(RunData {
            id: format!("c{c:06}-s{seed}"),
            config_id: format!("c{c:06}"),
            seed,
            point: Point {
                method,
                learning_rate: lr,
                token_budget: 64_000,
                eval_at: budgets.to_vec(),
            },
            status: Some(RunStatus::Completed),
            evals,
            tokens: 64_000,
            wall_s: 1.0,
            error: None,
            trainable_params: None,
        });
    }
    ReportInput {
        sweep: "bench".into(),
        domain: "code".into(),
        runs,
        unreadable: vec![],
        foreign: vec![],
        dir: None,
        ..ReportInput::default()
    }
}

fn main() {
    let n = 100_000;
    let input = synthetic(n);
    let t = Instant::now();
    let report = build(&input);
    let rust_s = t.elapsed().as_secs_f64();
    assert!(report.tables.len() > 5);

    // The same data as a CSV, one row per run and budget, for pandas.
    let dir = std::env::temp_dir().join(format!("sweep-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("runs.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
    writeln!(
        w,
        "config_id,seed,method,rank,modules,lr,tokens,target_loss,source_loss"
    )
    .unwrap();
    for r in &input.runs {
        let (m, rank, mods) = match &r.point.method {
            MethodConfig::Full => ("full", 0, "-".to_string()),
            MethodConfig::Lora {
                rank,
                target_modules,
                ..
            } => (
                "lora",
                *rank,
                sweep::spec::values::module_set_label(target_modules),
            ),
        };
        for e in &r.evals {
            writeln!(
                w,
                "{},{},{m},{rank},{mods},{},{},{},{}",
                r.config_id,
                r.seed,
                r.point.learning_rate,
                e.tokens,
                e.metrics["target_loss"],
                e.metrics["source_loss"]
            )
            .unwrap();
        }
    }
    drop(w);
    let script = r#"
import sys, time
try:
    import pandas as pd
except ImportError:
    print("n/a (pandas not importable)"); sys.exit(0)
t = time.perf_counter()
df = pd.read_csv(sys.argv[1])
g = df.groupby(["config_id", "tokens", "method", "rank", "modules", "lr"]).agg(
    target_mean=("target_loss", "mean"), target_std=("target_loss", "std"), n=("target_loss", "size"),
    source_mean=("source_loss", "mean"))
best = g.reset_index().sort_values("target_mean").groupby(["method", "rank", "modules", "tokens"]).head(1)
print(f"{time.perf_counter() - t:.3f}")
"#;
    let py = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&csv)
        .output();
    let pandas = match py {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "n/a (python3 failed)".into(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    println!("{:<52} {:>10}", "case", "seconds");
    println!(
        "{:<52} {:>10.3}",
        format!("sweep report build, {n} runs x 5 evaluations"),
        rust_s
    );
    println!(
        "{:<52} {:>10}",
        "pandas read_csv + groupby/agg of the same rows", pandas
    );
}
