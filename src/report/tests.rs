//! Report tests on synthetic sweeps whose answers are known.

use std::collections::BTreeMap;

use super::*;
use crate::model::config::Module;
use crate::plan::{MethodConfig, Point};
use crate::results::{EvalRecord, RunStatus};

fn ev(tokens: u64, pairs: &[(&str, f64)]) -> EvalRecord {
    EvalRecord {
        step: tokens / 100,
        tokens,
        metrics: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A run whose target loss falls with tokens (faster for full) and whose source loss rises
/// (faster for full): the paper's picture.
fn run(method: &str, lr: f64, seed: u64, status: RunStatus) -> RunData {
    let m = if method == "full" {
        MethodConfig::Full
    } else {
        MethodConfig::Lora {
            rank: 8,
            alpha: 16.0,
            target_modules: Module::ALL.to_vec(),
            dropout: 0.0,
        }
    };
    let full = method == "full";
    // Best lr: 1e-4 for full, 1e-3 for LoRA.
    let best = if full { 1e-4 } else { 1e-3 };
    let lr_pen = (lr / best).log10().abs() * 0.3;
    let noise = seed as f64 * 0.01;
    let evals = [0u64, 1000, 4000, 16000]
        .iter()
        .map(|&t| {
            let x = (t as f64 + 1.0).ln();
            let (learn, forget) = if full { (0.12, 0.05) } else { (0.08, 0.02) };
            ev(
                t,
                &[
                    ("target_loss", 3.0 - learn * x + lr_pen + noise),
                    ("source_loss", 2.0 + forget * x + noise),
                ],
            )
        })
        .collect();
    RunData {
        id: format!("{method}-{lr}-s{seed}"),
        config_id: format!("{method}-{lr}"),
        seed,
        point: Point {
            method: m,
            learning_rate: lr,
            token_budget: 16000,
            eval_at: vec![1000, 4000, 16000],
        },
        status: Some(status),
        evals,
        tokens: 16000,
        wall_s: 10.0,
        error: None,
    }
}

fn sweep(seeds: u64) -> ReportInput {
    let mut runs = Vec::new();
    for s in 0..seeds {
        for lr in [1e-5, 1e-4, 1e-3] {
            runs.push(run("full", lr, s, RunStatus::Completed));
        }
        for lr in [1e-4, 1e-3, 1e-2] {
            runs.push(run("lora", lr, s, RunStatus::Completed));
        }
    }
    ReportInput {
        sweep: "synthetic".into(),
        domain: "code".into(),
        runs,
        unreadable: vec![],
        foreign: vec![],
    }
}

#[test]
fn findings_match_a_sweep_built_to_show_them() {
    let r = build(&sweep(3));
    let v: Vec<Verdict> = r.findings.iter().map(|f| f.verdict).collect();
    assert_eq!(r.learning_metric.as_deref(), Some("target_loss"));
    assert_eq!(r.forgetting_metric.as_deref(), Some("source_loss_increase"));
    assert_eq!(v[0], Verdict::Supported, "{:?}", r.findings[0]);
    assert_eq!(v[1], Verdict::Supported, "{:?}", r.findings[1]);
    assert_eq!(v[2], Verdict::Supported, "{:?}", r.findings[2]);
    assert_eq!(v[3], Verdict::NotEnoughData, "no spectral rank measured");
    assert_eq!(v[4], Verdict::Supported, "{:?}", r.findings[4]);
    assert!(
        r.findings[4].evidence.contains("(10.0x)"),
        "{}",
        r.findings[4].evidence
    );
    assert_eq!(v[5], Verdict::Supported, "{:?}", r.findings[5]);
    assert!(r
        .notes
        .iter()
        .any(|n| n.contains("spectral rank: no run measured it")));
    let lr = r.tables.iter().find(|t| t.key == "lr_sensitivity").unwrap();
    let best: Vec<(&str, &str)> = lr
        .rows
        .iter()
        .filter(|row| row[5] == "best")
        .map(|row| (row[0].as_str(), row[1].as_str()))
        .collect();
    assert_eq!(best, vec![("full", "1e-4"), ("lora r8 all", "1e-3")]);
}

#[test]
fn one_seed_has_no_interval_never_zero_width() {
    let r = build(&sweep(1));
    let best = r.tables.iter().find(|t| t.key == "best").unwrap();
    assert!(
        best.rows
            .iter()
            .all(|row| row[3].contains("n=1, no interval")),
        "{:?}",
        best.rows
    );
    assert!(r.findings[0]
        .evidence
        .contains("no test (fewer than 2 seeds)"));
}

#[test]
fn failed_diverged_and_missing_runs_are_listed() {
    let mut input = sweep(2);
    input.runs[0].status = Some(RunStatus::Failed);
    input.runs[0].error = Some("out of memory".into());
    input.runs[1].status = Some(RunStatus::Diverged);
    input.runs[1].evals.truncate(2);
    input.runs[2].status = None;
    input
        .unreadable
        .push(("x-s0".into(), "EOF while parsing".into()));
    input.foreign.push("old-s0".into());
    let r = build(&input);
    let notes = r.notes.join("\n");
    assert!(notes.contains("failed: out of memory"), "{notes}");
    assert!(notes.contains("1 runs have no result yet"), "{notes}");
    assert!(notes.contains("x-s0: unreadable result.json"), "{notes}");
    assert!(notes.contains("another version of the spec"), "{notes}");
    let lr = r.tables.iter().find(|t| t.key == "lr_sensitivity").unwrap();
    let diverged: usize = lr
        .rows
        .iter()
        .map(|row| row[4].parse::<usize>().unwrap())
        .sum();
    assert_eq!(diverged, 1);
}

#[test]
fn an_empty_sweep_reports_not_enough_data() {
    let r = build(&ReportInput {
        sweep: "empty".into(),
        ..Default::default()
    });
    assert!(r
        .findings
        .iter()
        .all(|f| f.verdict == Verdict::NotEnoughData));
    assert_eq!(r.tables.len(), 1);
    assert!(render::markdown(&r).contains("no run measured a learning metric yet"));
}

#[test]
fn markdown_and_html_render_every_table_and_plot() {
    let r = build(&sweep(2));
    let md = render::markdown(&r);
    for t in &r.tables {
        assert!(md.contains(&format!("## {}", t.title)), "{}", t.title);
    }
    assert!(md.contains("![Learning vs forgetting](learning_forgetting.svg)"));
    let html = render::html(&r);
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg").count(), r.plots.len());
    assert!(
        !html.contains("http://")
            || html.matches("http://").count()
                == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "no external resources"
    );
    for p in &r.plots {
        let s = svg::plot(p);
        assert!(
            s.contains("<polyline") || s.contains("<circle"),
            "{} draws something",
            p.key
        );
    }
    let csvs = render::csv_tables(&r);
    assert_eq!(csvs.len(), r.tables.len());
}

/// The Markdown of a fixed synthetic sweep, checked against tests/golden/report.md
/// (regenerate with UPDATE_GOLDEN=1 when a change is intended).
#[test]
fn markdown_matches_its_golden_file() {
    let md = render::markdown(&build(&sweep(2)));
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/report.md");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &md).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        md, want,
        "report.md changed; rerun with UPDATE_GOLDEN=1 if that is intended"
    );
}

#[test]
fn a_task_metric_that_never_varies_falls_back_to_the_loss() {
    let mut input = sweep(2);
    for r in &mut input.runs {
        for e in &mut r.evals {
            e.metrics.insert("next_line_match".into(), 0.0);
        }
    }
    let r = build(&input);
    assert_eq!(r.learning_metric.as_deref(), Some("target_loss"));
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("next_line_match was measured but is the same for every run")),
        "{:?}",
        r.notes
    );
    // When it varies, it is preferred to the loss.
    for (i, r) in input.runs.iter_mut().enumerate() {
        for e in &mut r.evals {
            e.metrics
                .insert("next_line_match".into(), (i % 3) as f64 / 10.0);
        }
    }
    assert_eq!(
        build(&input).learning_metric.as_deref(),
        Some("next_line_match")
    );
}
