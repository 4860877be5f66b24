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

/// A synthetic world: how fast each method learns (per ln token) at its best learning rate,
/// how forgetting follows learning, and how noisy a seed is.
#[derive(Clone, Copy)]
struct World {
    full_rate: f64,
    lora_rate: f64,
    best_full: f64,
    best_lora: f64,
    /// Source-loss rise per unit of learning progress (one frontier for both methods).
    forget_per_learn: f64,
    /// LoRA's extra source-loss rise at matched learning (0: one frontier).
    lora_offset: f64,
    /// Standard deviation of a seed's noise on each trained evaluation.
    noise: f64,
    /// The learning rates swept for full fine-tuning and for LoRA.
    full_lrs: [f64; 3],
    lora_lrs: [f64; 3],
}

/// The paper's picture: full learns faster and forgets more along the same frontier; LoRA's
/// best learning rate is 10x full's.
const PAPER: World = World {
    full_rate: 0.12,
    lora_rate: 0.08,
    best_full: 1e-4,
    best_lora: 1e-3,
    forget_per_learn: 0.4,
    lora_offset: 0.0,
    noise: 0.01,
    full_lrs: [1e-5, 1e-4, 1e-3],
    lora_lrs: [1e-4, 1e-3, 1e-2],
};

/// A standard normal draw fixed by the inputs (Box-Muller over SplitMix).
fn gauss(key: &str) -> f64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in key.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut g = stats::SplitMix(h);
    let u1 = (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let u2 = (g.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * (u1.max(1e-300)).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A run of `world`: target loss 3 - progress, source loss 2 + forget_per_learn x progress (+
/// LoRA's offset), progress = rate x ln(tokens + 1), lower away from the best learning rate.
fn run_in(world: &World, method: &str, lr: f64, seed: u64, status: RunStatus) -> RunData {
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
    let (rate, best) = if full {
        (world.full_rate, world.best_full)
    } else {
        (world.lora_rate, world.best_lora)
    };
    let at_lr = 1.0 / (1.0 + 0.5 * (lr / best).log10().powi(2));
    let evals = [0u64, 1000, 4000, 16000]
        .iter()
        .map(|&t| {
            let progress = rate * at_lr * (t as f64 + 1.0).ln();
            let (n1, n2) = if t == 0 {
                (0.0, 0.0)
            } else {
                let key = format!("{method}/{lr}/{seed}/{t}");
                (
                    world.noise * gauss(&format!("{key}/l")),
                    world.noise * gauss(&format!("{key}/f")),
                )
            };
            let offset = if full || t == 0 {
                0.0
            } else {
                world.lora_offset
            };
            ev(
                t,
                &[
                    ("target_loss", 3.0 - progress + n1),
                    (
                        "source_loss",
                        2.0 + world.forget_per_learn * progress + offset + n2,
                    ),
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
        trainable_params: Some(if full { 1_000_000 } else { 20_000 }),
    }
}

fn sweep(seeds: u64) -> ReportInput {
    sweep_in(&PAPER, seeds)
}

fn sweep_in(world: &World, seeds: u64) -> ReportInput {
    let mut runs = Vec::new();
    for s in 0..seeds {
        for lr in world.full_lrs {
            runs.push(run_in(world, "full", lr, s, RunStatus::Completed));
        }
        for lr in world.lora_lrs {
            runs.push(run_in(world, "lora", lr, s, RunStatus::Completed));
        }
    }
    ReportInput {
        sweep: "synthetic".into(),
        domain: "code".into(),
        regime: "cpt".into(),
        runs,
        unreadable: vec![],
        foreign: vec![],
        dir: Some("results/synthetic".into()),
        items: None,
        metric_items: Default::default(),
        rslora: false,
    }
}

fn verdicts(r: &Report) -> Vec<Verdict> {
    r.findings.iter().map(|f| f.verdict).collect()
}

#[test]
fn findings_match_a_sweep_built_to_show_them() {
    // Five seeds: the learning-rate bootstrap needs them.
    let r = build(&sweep(5));
    let v = verdicts(&r);
    assert_eq!(r.learning_metric.as_deref(), Some("target_loss"));
    assert_eq!(r.forgetting_metric.as_deref(), Some("source_loss_increase"));
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(v[i], Verdict::Supported, "{:?}", r.findings[i]);
        let t = r.findings[i].test.as_ref().unwrap();
        assert!(t.p_holm < 0.05, "{t:?}");
        match t.equivalence_margin {
            // One frontier: LoRA's offset shown to be within the margin.
            Some(m) => assert!(
                i == 2 && t.estimate.ci_low > -m && t.estimate.ci_high < m,
                "{t:?}"
            ),
            None => assert!(t.estimate.effect > 0.0, "{t:?}"),
        }
    }
    assert_eq!(v[3], Verdict::NotEnoughData, "no spectral rank measured");
    assert!(
        r.findings[4].evidence.contains("(10.0x)"),
        "{}",
        r.findings[4].evidence
    );
    // The ratio per LoRA group, with its interval at five seeds.
    let ratio = r.tables.iter().find(|t| t.key == "lr_ratio").unwrap();
    assert_eq!(ratio.rows.len(), 2, "{ratio:?}");
    // Full's row first, its best lr between grid points the one the ratios are over.
    assert_eq!(
        (ratio.rows[0][0].as_str(), ratio.rows[0][1].as_str()),
        ("full (the reference)", "1e-4")
    );
    let full = ratio_of(&ratio.rows[0][2]);
    assert!((full / 1e-4 - 1.0).abs() < 0.1, "{ratio:?}");
    assert_eq!(ratio.rows[1][1], "1e-3");
    let between = ratio_of(&ratio.rows[1][3]);
    assert!((between - ratio_of(&ratio.rows[1][2]) / full).abs() < 1e-9);
    assert!(between > 9.5 && between < 10.5, "{ratio:?}");
    assert!(
        ratio.rows[1][4]
            .as_str()
            .starts_with(&format!("{between:.2}x [")),
        "{ratio:?}"
    );
    assert!(
        ratio
            .note
            .as_deref()
            .unwrap()
            .contains("all: 1 rank(s), needs 3 for a slope"),
        "{ratio:?}"
    );
    let f5 = r.findings[4].test.as_ref().unwrap();
    assert!(
        (f5.estimate.effect - between.log10()).abs() < 1e-12
            && f5.estimate.ci_low < f5.estimate.effect
            && f5.estimate.effect < f5.estimate.ci_high,
        "log10 of about 10x, between grid points, with an interval of some width: {f5:?}"
    );
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
    // The report names the winners, with the command that exports each.
    let w = r.tables.iter().find(|t| t.key == "winners").unwrap();
    assert_eq!(w.rows.len(), 2, "{w:?}");
    assert_eq!(
        (w.rows[0][1].as_str(), w.rows[0][2].as_str()),
        ("full-0.0001", "lr 1e-4")
    );
    assert_eq!(w.rows[1][2], "lr 1e-3, rank 8, modules all");
    let note = w.note.as_deref().unwrap();
    for row in &w.rows {
        assert!(
            note.contains(&format!(
                "sweep export results/synthetic/runs/{} --out",
                row[5]
            )),
            "{note}"
        );
    }
    assert_eq!(r.tables[1].key, "findings", "the findings lead");
    // The paper's world: the learning rate moves learning, seeds barely (noise 0.01).
    let imp = r.tables.iter().find(|t| t.key == "importance").unwrap();
    for row in &imp.rows {
        let (lr, noise) = (ratio_of(&row[2]), ratio_of(&row[6]));
        assert!(lr > 0.9 && noise < 0.05, "{row:?}");
    }
    // Findings 1 and 2 at each of the 3 budgets, each with its interval and p.
    let by = r
        .tables
        .iter()
        .find(|t| t.key == "findings_by_budget")
        .unwrap();
    assert_eq!(by.rows.len(), 3);
    assert!(
        by.rows
            .iter()
            .all(|row| row[1].as_str().contains("p = ") && row[2].as_str().contains("p = ")),
        "{by:?}"
    );
}

/// The opposite world: LoRA learns more and forgets more than at matched learning, its best
/// learning rate is lower, and tokens help it more. Every tested finding is contradicted.
#[test]
fn findings_are_contradicted_by_a_sweep_built_against_them() {
    let world = World {
        full_rate: 0.08,
        lora_rate: 0.12,
        best_full: 1e-3,
        best_lora: 1e-4,
        lora_offset: 0.2,
        full_lrs: [1e-4, 1e-3, 1e-2],
        lora_lrs: [1e-5, 1e-4, 1e-3],
        ..PAPER
    };
    let r = build(&sweep_in(&world, 5));
    let v = verdicts(&r);
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(v[i], Verdict::Contradicted, "{:?}", r.findings[i]);
    }
}

/// A noisy world with two seeds: nothing can be decided, and each finding says how many seeds
/// would decide it.
#[test]
fn noisy_seeds_leave_the_findings_undecided_with_the_seeds_needed() {
    let world = World {
        full_rate: 0.085,
        noise: 0.3,
        ..PAPER
    };
    let r = build(&sweep_in(&world, 2));
    for i in [0, 1, 2, 5] {
        let f = &r.findings[i];
        assert_eq!(f.verdict, Verdict::NotEnoughEvidence, "{f:?}");
        let t = f.test.as_ref().unwrap();
        assert!(t.p_holm >= 0.05, "{t:?}");
        let n = t.seeds_needed.unwrap();
        assert!(n > 2, "{t:?}");
        assert!(
            f.evidence
                .contains(&format!("about {n} seeds per configuration")),
            "{}",
            f.evidence
        );
    }
    // Two seeds are too few for the bootstrap (or, here, noise put a best learning rate at the
    // end of its grid): never a verdict from three distinct means.
    let f5 = &r.findings[4];
    assert!(f5.test.is_none(), "{f5:?}");
    assert!(
        f5.evidence.contains("needs at least 5 seeds")
            || f5.evidence.contains("at the end of its grid"),
        "{}",
        f5.evidence
    );
    let two = &build(&sweep(2)).findings[4];
    assert_eq!(two.verdict, Verdict::NotEnoughEvidence, "{two:?}");
    assert!(
        two.evidence.contains("needs at least 5 seeds"),
        "{}",
        two.evidence
    );
}

/// A best learning rate at the end of its grid decides nothing: the grid may not bracket it.
#[test]
fn a_best_learning_rate_at_the_grid_edge_is_not_enough_data() {
    let world = World {
        full_lrs: [1e-6, 1e-5, 1e-4],
        ..PAPER
    };
    let f = &build(&sweep_in(&world, 5)).findings[4];
    assert_eq!(f.verdict, Verdict::NotEnoughData, "{f:?}");
    assert!(
        f.evidence.contains("at the end of its grid"),
        "{}",
        f.evidence
    );
}

/// One seed per configuration: the frontier test would only measure lack of fit.
#[test]
fn the_frontier_test_needs_two_seeds() {
    let f = &build(&sweep(1)).findings[2];
    assert_eq!(f.verdict, Verdict::NotEnoughEvidence, "{f:?}");
    assert!(
        f.evidence.contains("needs at least 2 seeds"),
        "{}",
        f.evidence
    );
}

/// Two budgets are too few for the scaling finding, whatever the seeds say.
#[test]
fn data_scaling_needs_three_budgets() {
    let mut input = sweep(3);
    for r in &mut input.runs {
        r.point.eval_at.retain(|&b| b != 4000);
    }
    let f = &build(&input).findings[5];
    assert_eq!(f.verdict, Verdict::NotEnoughData);
    assert!(
        f.evidence.contains("needs at least 3 (this sweep has 2)"),
        "{}",
        f.evidence
    );
}

/// The same sweep gives the same report, bootstrap included: verdicts are reproducible.
#[test]
fn the_report_is_deterministic() {
    let world = World {
        noise: 0.05,
        ..PAPER
    };
    let a = build(&sweep_in(&world, 3));
    let b = build(&sweep_in(&world, 3));
    assert_eq!(a, b);
}

#[test]
fn one_seed_has_no_interval_never_zero_width() {
    let r = build(&sweep(1));
    let best = r.tables.iter().find(|t| t.key == "best").unwrap();
    assert!(
        best.rows.iter().all(|row| !row[3].as_str().contains('±')),
        "{:?}",
        best.rows
    );
    assert_eq!(
        best.note.as_deref(),
        Some("values are one seed's: no interval"),
        "said once, in the note"
    );
    assert_eq!(r.findings[0].verdict, Verdict::NotEnoughEvidence);
    assert!(
        r.findings[0]
            .evidence
            .contains("no test: needs at least 2 seeds of each configuration"),
        "{}",
        r.findings[0].evidence
    );
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
        .map(|row| row[4].as_str().parse::<usize>().unwrap())
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

/// The terminal report fits 100 columns: long cells, titles and notes wrap.
#[test]
fn the_terminal_report_fits_100_columns() {
    let t = render::terminal(&build(&sweep(5)));
    let widest = t.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(widest <= 100, "a line of {widest} columns");
    assert!(t.contains("Welch's t-test"), "the findings are all there");
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
    assert_eq!(
        csvs.len(),
        r.tables.len() + 1,
        "every table, and the cells as numbers"
    );
    let (_, cells) = csvs.iter().find(|(k, _)| k == "cells").unwrap();
    let mut lines = cells.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("config_id,method,group,learning_rate"));
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    let c = &r.cells[0];
    assert_eq!(first[0], c.config_id);
    assert_eq!(first[7].parse::<f64>().unwrap(), c.learning.unwrap().mean);
    assert_eq!(r.cells.len(), 18, "6 configurations x 3 budgets");
}

/// What a program reads of the tables: no cell of a CSV's numeric columns (means, bounds,
/// p-values, budgets, learning rates) is a display string ("2.55 ± 0.64", "16k", "1e-3",
/// "10.00x"), words sit in columns of their own, the numbers are the tables' own, and
/// report.json holds them as JSON numbers and {mean, ci_low, ci_high, n, p, p_holm} objects.
#[test]
fn every_table_carries_its_numbers_for_programs() {
    let input = sweep(3);
    let r = build(&input);
    let csvs: std::collections::BTreeMap<String, String> =
        render::csv_tables(&r).into_iter().collect();
    let read = |key: &str| -> Vec<std::collections::BTreeMap<String, String>> {
        let mut rd = csv::Reader::from_reader(csvs[key].as_bytes());
        let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
        rd.records()
            .map(|rec| {
                header
                    .iter()
                    .cloned()
                    .zip(rec.unwrap().iter().map(String::from))
                    .collect()
            })
            .collect()
    };
    let display = ['±', '[', 'x'];
    for t in &r.tables {
        for row in read(&t.key) {
            for (col, v) in &row {
                let numeric = col.ends_with("_mean")
                    || col.ends_with("_ci_low")
                    || col.ends_with("_ci_high")
                    || col.ends_with("_p")
                    || col.ends_with("_p_holm")
                    || col == "lr"
                    || col == "best_lr"
                    || col == "budget";
                if numeric && !v.is_empty() {
                    assert!(
                        v.parse::<f64>().is_ok() && !v.contains(display),
                        "{}.csv column {col}: {v:?}",
                        t.key
                    );
                }
            }
        }
    }
    // The best table: budgets in tokens, learning rates and each metric's interval as numbers.
    let best = read("best");
    let grid_best = r.tables.iter().find(|t| t.key == "best").unwrap();
    let learn = r.learning_metric.clone().unwrap();
    for (row, shown) in best.iter().zip(&grid_best.rows) {
        let budget: u64 = row["budget"].parse().unwrap();
        assert!(r.cells.iter().any(|c| c.budget_tokens == budget), "{row:?}");
        let lr: f64 = row["best_lr"].parse().unwrap();
        let cell = r
            .cells
            .iter()
            .find(|c| {
                c.budget_tokens == budget && c.learning_rate == lr && c.group == shown[1].as_str()
            })
            .unwrap_or_else(|| panic!("{row:?}"));
        let l = cell.learning.unwrap();
        assert_eq!(
            row[&format!("{learn}_mean")].parse::<f64>().unwrap(),
            l.mean
        );
        assert_eq!(
            row[&format!("{learn}_ci_low")].parse::<f64>().unwrap(),
            l.ci_low.unwrap()
        );
        assert_eq!(row[&format!("{learn}_n")], "3");
    }
    // The findings: each tested one's effect, interval and both p-values, beside its words.
    let findings = read("findings");
    for (row, f) in findings.iter().zip(&r.findings) {
        assert_eq!(row["number"], f.number.to_string());
        assert_eq!(row["numbers_text"], f.evidence);
        match &f.test {
            Some(t) => {
                assert_eq!(
                    row["numbers_mean"].parse::<f64>().unwrap(),
                    t.estimate.effect
                );
                assert_eq!(row["numbers_p"].parse::<f64>().unwrap(), t.p);
                assert_eq!(row["numbers_p_holm"].parse::<f64>().unwrap(), t.p_holm);
            }
            None => assert_eq!(row["numbers_p_holm"], ""),
        }
    }
    assert!(r.findings.iter().any(|f| f.test.is_some()));
    if std::env::var_os("SWEEP_PRINT_CSV").is_some() {
        for (k, v) in &csvs {
            eprintln!("== {k}.csv\n{v}");
        }
    }
    // report.json: the same numbers, typed.
    let json = serde_json::to_value(&r).unwrap();
    let table = |key: &str| {
        json["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["key"] == key)
            .unwrap()
            .clone()
    };
    let row = &table("best")["rows"][0];
    assert!(row[0].is_u64() && row[2].is_f64(), "{row}");
    assert!(
        row[3]["mean"].is_f64() && row[3]["ci_low"].is_f64() && row[3]["n"] == 3,
        "{row}"
    );
    let overview = table("overview");
    assert_eq!(overview["rows"][0][1], serde_json::json!(input.runs.len()));
    let tested = table("findings")["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row[3].is_object())
        .cloned()
        .unwrap();
    assert!(
        tested[3]["p_holm"].is_f64() && tested[3]["text"].is_string(),
        "{tested}"
    );
}

/// The learning-forgetting plot draws each method's own frontier (no point of the method learns
/// more and forgets less than one on it) and each point's forgetting interval over seeds.
#[test]
fn the_learning_forgetting_plot_has_a_frontier_per_method_and_intervals() {
    let r = build(&sweep(3));
    let p = r
        .plots
        .iter()
        .find(|p| p.key == "learning_forgetting")
        .unwrap();
    let labels: Vec<&str> = p.lines.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(labels, ["full frontier", "lora frontier"]);
    for line in &p.lines {
        let method = line.label.trim_end_matches(" frontier");
        let own: Vec<(f64, f64)> = p
            .scatter
            .iter()
            .filter(|s| s.label.starts_with(method))
            .flat_map(|s| s.points.iter().map(|q| (q.0, q.1)))
            .collect();
        assert!(!line.points.is_empty() && line.dashed);
        // Lower loss is more learning: on the frontier, nothing of the method dominates.
        for &(x, y, _) in &line.points {
            assert!(
                own.contains(&(x, y)),
                "{method}: ({x}, {y}) is one of its points"
            );
            assert!(
                !own.iter().any(|&(a, b)| a < x && b < y),
                "{method}: ({x}, {y}) is dominated"
            );
        }
        // And every point it leaves out is dominated by (or equal to) one on it.
        for &(a, b) in &own {
            assert!(
                line.points.iter().any(|&(x, y, _)| x <= a && y <= b),
                "{method}: ({a}, {b})"
            );
        }
    }
    assert!(p
        .scatter
        .iter()
        .all(|s| s.points.iter().all(|q| q.2.is_some_and(|c| c > 0.0))));
    let svg = svg::plot(p);
    assert_eq!(
        svg.matches("stroke-dasharray").count(),
        2,
        "two dashed frontiers"
    );
    assert!(
        svg.matches("stroke-opacity=\"0.5\"").count() >= 18,
        "an interval bar per point"
    );
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

/// Accuracy on a handful of problems is noise: with 4 items it is not chosen to rank anything,
/// and the report says why; with 1,000 items the same spread is signal.
#[test]
fn a_proportion_with_too_few_items_is_not_the_learning_metric() {
    let mut input = sweep(2);
    for (i, r) in input.runs.iter_mut().enumerate() {
        for e in &mut r.evals {
            // Per configuration (6 per seed): means 0.05 to 0.3, a spread of 0.09.
            e.metrics.insert(
                "math_accuracy".into(),
                [0.1, 0.3, 0.2, 0.05, 0.15, 0.25][i % 6],
            );
        }
    }
    input.items = Some(4);
    let r = build(&input);
    assert_eq!(r.learning_metric.as_deref(), Some("target_loss"));
    assert!(
        r.notes.iter().any(|n| n.contains(
            "math_accuracy cannot separate the configurations: with 4 items per evaluation"
        )),
        "{:?}",
        r.notes
    );
    input.items = Some(1000);
    assert_eq!(
        build(&input).learning_metric.as_deref(),
        Some("math_accuracy")
    );
}

/// A proportion measured on a known number of items (result.json's metric_items) shows its
/// Wilson interval over all the seeds' items: within [0, 1] where mean ± t would leave it, and
/// said once in a note; the runs' own count, not the spec's bound, decides whether it has too
/// few items to rank configurations.
#[test]
fn proportions_are_the_task_accuracies() {
    for m in [
        "math_accuracy",
        "gsm8k_strict",
        "hellaswag_acc",
        "arc_challenge_acc_norm",
        "winogrande_acc",
        "humaneval_pass@1",
        "humaneval_pass@5_sampled",
        "forgetting_score",
    ] {
        assert!(grid::is_proportion(m), "{m}");
    }
    for m in [
        "target_loss",
        "spectral_rank",
        "distinct_1",
        "diversity_unique_loss",
    ] {
        assert!(!grid::is_proportion(m), "{m}");
    }
}

/// With the paper's forgetting score measured beside the source-domain loss, the findings use
/// the score and a table shows both (and each benchmark), each configuration at its best
/// learning rate: the loss's rise and the score's fall, as the runs measured them.
#[test]
fn the_forgetting_score_is_shown_beside_the_source_loss() {
    let mut input = sweep(2);
    // Not the source loss's table alone: one measure gives no table.
    assert!(build(&input)
        .tables
        .iter()
        .all(|t| t.key != "forgetting_measures"));
    for (i, r) in input.runs.iter_mut().enumerate() {
        for e in &mut r.evals {
            // The score falls by 0.01 per 1,000 tokens, more for full fine-tuning; 0.02 apart
            // per run, so that the configurations differ by more than their items' noise.
            let fall = e.tokens as f64 / 1000.0 * if i % 6 < 3 { 0.02 } else { 0.01 };
            let score = 0.6 - fall + 0.001 * (i % 6) as f64;
            e.metrics.insert("forgetting_score".into(), score);
            e.metrics.insert("hellaswag_acc_norm".into(), score);
        }
    }
    input.metric_items.insert("forgetting_score".into(), 5000);
    let r = build(&input);
    assert_eq!(
        r.forgetting_metric.as_deref(),
        Some("forgetting_score_drop")
    );
    let t = r
        .tables
        .iter()
        .find(|t| t.key == "forgetting_measures")
        .unwrap_or_else(|| panic!("{:?}", r.notes));
    assert_eq!(
        t.header,
        [
            "configuration",
            "best lr",
            "source_loss_increase",
            "forgetting_score_drop",
            "hellaswag_acc_norm_drop"
        ]
    );
    assert_eq!(t.rows.len(), 2, "full and one LoRA group: {t:?}");
    let mean = |c: &crate::report::Value| match c.number {
        crate::report::value::Number::Spread(s) => s.mean,
        other => panic!("{other:?}"),
    };
    let loss = grid::Grid::new(&input, "target_loss", Some("source_loss"));
    for row in &t.rows {
        let g = row[0].as_str();
        let (_, c) = loss
            .best_in(&|k: &grid::SeriesKey| k.group() == g, 16000)
            .unwrap();
        let want = c.forget.iter().sum::<f64>() / c.forget.len() as f64;
        assert!((mean(&row[2]) - want).abs() < 1e-12, "{row:?}");
        let fall = if g == "full" { 0.32 } else { 0.16 };
        assert!((mean(&row[3]) - fall).abs() < 1e-9, "{row:?}");
        assert!((mean(&row[4]) - fall).abs() < 1e-9, "{row:?}");
    }
}

#[test]
fn a_proportion_shows_an_interval_within_its_scale() {
    let mut input = sweep(2);
    for (i, r) in input.runs.iter_mut().enumerate() {
        for e in &mut r.evals {
            // Seeds 0.0 and 0.25 of each configuration (mean 0.125: mean ± t leaves [0, 1]),
            // configurations apart by far more than the binomial noise of 400 items.
            let base = [0.0, 0.25][i / 6 % 2];
            e.metrics.insert(
                "math_accuracy".into(),
                (base + (i % 6) as f64 * 0.1).min(1.0),
            );
        }
    }
    input.items = Some(4);
    input.metric_items.insert("math_accuracy".into(), 400);
    let r = build(&input);
    assert_eq!(
        r.learning_metric.as_deref(),
        Some("math_accuracy"),
        "{:?}",
        r.notes
    );
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("Wilson 95% interval over the items of all seeds (seeds x 400)")),
        "{:?}",
        r.notes
    );
    let best = r.tables.iter().find(|t| t.key == "best").unwrap();
    let cell = best.rows[0][3].as_str();
    assert!(cell.contains("(2x400 items)"), "{cell}");
    let (lo, hi) = cell
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .and_then(|(inside, _)| inside.split_once(", "))
        .map(|(a, b)| (a.parse::<f64>().unwrap(), b.parse::<f64>().unwrap()))
        .unwrap();
    assert!(
        (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) && lo < hi,
        "{cell}"
    );
    // Both seeds' values lie inside it: the seeds' spread counts, not only the items' noise.
    let mean: f64 = cell.split(' ').next().unwrap().parse().unwrap();
    assert!(
        lo <= mean - 0.125 + 1e-9 && hi >= mean + 0.125 - 1e-9,
        "{cell}"
    );
    // report.json's and cells.csv's numbers are the same interval.
    let c = r
        .cells
        .iter()
        .find(|c| c.learning.is_some_and(|l| l.n == 2))
        .unwrap();
    let l = c.learning.unwrap();
    assert!(
        l.ci_low.unwrap() >= 0.0 && l.ci_high.unwrap() <= 1.0,
        "{l:?}"
    );
    // The runs measured it on 4 items: too few, whatever the spec's bound says.
    input.items = Some(1000);
    input.metric_items.insert("math_accuracy".into(), 4);
    assert_eq!(
        build(&input).learning_metric.as_deref(),
        Some("target_loss")
    );
}

/// The number behind a ratio's cell.
fn ratio_of(v: &Value) -> f64 {
    match v.number {
        value::Number::Real(x) => x,
        other => panic!("{other:?}"),
    }
}

/// The vertex of a parabola through three of its points, wherever the middle one sits; none on
/// a line.
#[test]
fn the_best_learning_rate_between_grid_points_is_the_parabolas_vertex() {
    let y = |x: f64| -(x - 0.3) * (x - 0.3) + 2.0;
    for (a, b, c) in [(-1.0, 0.0, 1.0), (-2.0, 0.5, 1.0), (0.0, 0.2, 3.0)] {
        let v = grid::parabola_vertex((a, y(a)), (b, y(b)), (c, y(c))).unwrap();
        assert!((v - 0.3).abs() < 1e-12, "{a} {b} {c}: {v}");
    }
    assert_eq!(
        grid::parabola_vertex((0.0, 1.0), (1.0, 2.0), (2.0, 3.0)),
        None
    );
    // On the synthetic sweep, symmetric in log lr around each best (1e-4 full, 1e-3 LoRA),
    // with no seed noise the vertex is the grid's best.
    let world = World {
        noise: 0.0,
        ..PAPER
    };
    let grid = grid::Grid::new(&sweep_in(&world, 1), "target_loss", None);
    let all = |_: &grid::SeriesKey, c: &grid::Cell| c.learn.clone();
    for (g, want) in [("full", 1e-4), ("lora r8 all", 1e-3)] {
        let got = grid.best_lr_interpolated(g, 16000, &all).unwrap();
        assert!((got / want - 1.0).abs() < 1e-9, "{g}: {got}");
    }
    // With noise the vertex moves off the grid; a metric where higher is better (here the
    // loss turned upside down) has the same vertex.
    let mut input = sweep(2);
    let noisy = grid::Grid::new(&input, "target_loss", None);
    let (lr, how) = noisy.best_lr_between("full", 16000, &all).unwrap();
    assert!(how == grid::Between::Vertex && lr != 1e-4 && (lr / 1e-4 - 1.0).abs() < 0.3);
    for r in &mut input.runs {
        for e in &mut r.evals {
            let loss = e.metrics["target_loss"];
            e.metrics.insert("next_line_match".into(), 5.0 - loss);
        }
    }
    let upside_down = grid::Grid::new(&input, "next_line_match", None);
    assert!(upside_down.higher);
    let (up, _) = upside_down.best_lr_between("full", 16000, &all).unwrap();
    assert!((up / lr - 1.0).abs() < 1e-9, "{up} vs {lr}");
    // A best at the end of its grid stays there, and says so.
    let edge = World {
        best_full: 1e-5,
        ..PAPER
    };
    let grid = grid::Grid::new(&sweep_in(&edge, 2), "target_loss", None);
    assert_eq!(
        grid.best_lr_between("full", 16000, &all),
        Some((1e-5, grid::Between::EndOfGrid))
    );
    // Beside a learning rate whose runs diverged (their last loss still finite), too.
    let mut input = sweep(2);
    for r in &mut input.runs {
        if r.point.method.method_name() == "full" && r.point.learning_rate == 1e-3 && r.seed == 0 {
            r.status = Some(RunStatus::Diverged);
        }
    }
    let grid = grid::Grid::new(&input, "target_loss", None);
    assert_eq!(
        grid.best_lr_between("full", 16000, &all),
        Some((1e-4, grid::Between::Diverged))
    );
    assert_eq!(
        grid.best_lr_between("lora r8 all", 16000, &all)
            .map(|x| x.1),
        Some(grid::Between::Vertex)
    );
}

/// A LoRA run `r` at another rank and alpha (its ids marked with both).
fn lora_at(r: &RunData, rank: u64, alpha: f64) -> RunData {
    let mut r = r.clone();
    if let MethodConfig::Lora {
        rank: k, alpha: a, ..
    } = &mut r.point.method
    {
        (*k, *a) = (rank, alpha);
    }
    r.id = format!("{}-r{rank}-a{alpha}", r.id);
    r.config_id = format!("{}-r{rank}-a{alpha}", r.config_id);
    r
}

/// The LoRA runs of `input`.
fn lora_runs(input: &ReportInput) -> Vec<RunData> {
    input
        .runs
        .iter()
        .filter(|r| r.point.method.method_name() == "lora")
        .cloned()
        .collect()
}

/// Three ranks on the same modules give the rank dependence of the best learning rate: here
/// every rank's best is 1e-3, a slope of 0.
#[test]
fn the_best_lr_ratio_is_given_per_rank_with_its_rank_slope() {
    let mut input = sweep(2);
    let lora = lora_runs(&input);
    for rank in [4u64, 16] {
        input
            .runs
            .extend(lora.iter().map(|r| lora_at(r, rank, 16.0)));
    }
    let r = build(&input);
    let t = r.tables.iter().find(|t| t.key == "lr_ratio").unwrap();
    assert_eq!(t.rows.len(), 4, "full's row and 3 LoRA groups: {t:?}");
    // 1e-3 on the grid, about 10x full's between grid points (the seeds' noise moves both).
    assert!(
        t.rows[1..]
            .iter()
            .all(|row| row[1] == "1e-3" && ratio_of(&row[3]) > 9.5 && ratio_of(&row[3]) < 10.5),
        "{t:?}"
    );
    assert!(t.rows[1][4].as_str().contains("2 seeds; 5 needed"), "{t:?}");
    let note = t.note.as_deref().unwrap();
    assert!(
        note.contains("all, alpha = 16: slope")
            && note.contains(" 0.00")
            && note.contains("over 3 ranks"),
        "{note}"
    );
}

/// Alpha variants of one rank are groups of their own, never pooled, and the rank dependence of
/// the best learning rate is given per alpha rule: with alpha = 2r the best lr here halves as the
/// rank doubles (slope -1), with alpha = 16 it stays (slope 0); rsLoRA is named.
#[test]
fn alpha_rules_have_their_own_groups_and_rank_slopes() {
    let mut input = sweep(2);
    let lora = lora_runs(&input);
    input
        .runs
        .retain(|r| r.point.method.method_name() == "full");
    for (rank, alpha) in [(4u64, 8.0), (4, 16.0), (8, 16.0), (16, 32.0), (16, 16.0)] {
        for r in &lora {
            let mut r = lora_at(r, rank, alpha);
            // On the alpha = 2r line the best lr is 8 / rank times the base's.
            if alpha == 2.0 * rank as f64 {
                r.point.learning_rate *= 8.0 / rank as f64;
            }
            input.runs.push(r);
        }
    }
    for rslora in [false, true] {
        input.rslora = rslora;
        let r = build(&input);
        let t = r.tables.iter().find(|t| t.key == "lr_ratio").unwrap();
        let groups: Vec<&str> = t.rows[1..].iter().map(|row| row[0].as_str()).collect();
        assert_eq!(
            groups,
            [
                "lora r16 all alpha=16",
                "lora r16 all alpha=32",
                "lora r4 all alpha=16",
                "lora r4 all alpha=8",
                "lora r8 all"
            ],
            "{t:?}"
        );
        let note = t.note.as_deref().unwrap();
        let rs = if rslora { ", rsLoRA" } else { "" };
        for (rule, slope) in [("2r", "-1.00"), ("16", "0.00")] {
            let part = note
                .split("; ")
                .find(|p| p.contains(&format!("all, alpha = {rule}{rs}: slope")))
                .unwrap_or_else(|| panic!("{rule}: {note}"));
            assert!(
                part.contains(&format!(" {slope}")) && part.contains("over 3 ranks"),
                "{part}"
            );
        }
        // Rules that hold at one rank (alpha = 4r, alpha = 1r, alpha = 8, alpha = 32) are not
        // slopes.
        assert_eq!(note.matches(": slope").count(), 2, "{note}");
    }
}

/// A headless Chromium for [`the_html_loads_offline_in_a_headless_browser`]: SWEEP_TEST_BROWSER,
/// else the first of Debian's chromium-headless-shell or chromium on the PATH.
fn headless_browser() -> Option<std::path::PathBuf> {
    if let Some(b) = std::env::var_os("SWEEP_TEST_BROWSER") {
        return Some(b.into());
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium-headless-shell",
        "chromium",
        "chromium-browser",
        "google-chrome",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
    .find(|p| p.is_file())
}

/// What the page's own script (below) found once the page loaded, as JSON.
const BROWSER_CHECK: &str = r#"<script>
window.addEventListener('load', () => {
  const svgs = [...document.querySelectorAll('svg')];
  const attrs = [...document.querySelectorAll('[src],[href]')]
    .map(e => e.getAttribute('src') || e.getAttribute('href'));
  const out = {
    svgs: svgs.length,
    drawn: svgs.filter(s => {
      const r = s.getBoundingClientRect();
      return r.width >= 100 && r.height >= 100 && s.querySelector('polyline, circle');
    }).length,
    tables: document.querySelectorAll('table').length,
    broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src),
    fetched: performance.getEntriesByType('resource').map(r => r.name),
    external: attrs.filter(u => !u.startsWith('#') && !u.startsWith('data:')),
    dangling: attrs.filter(u => u.startsWith('#') && !document.getElementById(u.slice(1))),
    errors: window.__sweep_errors,
  };
  const pre = document.createElement('pre');
  pre.id = 'sweep-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"#;

/// The report's HTML, opened by a real headless browser from a file with the network cut off:
/// it loads with no error, fetches nothing, references nothing outside itself and no missing
/// anchor, and lays out every table and every figure, each drawn (lines or points) at a
/// readable size.
#[test]
fn the_html_loads_offline_in_a_headless_browser() {
    let browser = headless_browser();
    if !crate::util::setup_present(
        browser.is_some(),
        "no headless browser (SWEEP_TEST_BROWSER, chromium-headless-shell or chromium)",
        "scripts/test, which installs Debian's chromium-headless-shell",
    ) {
        return;
    }
    let r = build(&sweep(2));
    let html = render::html(&r);
    // Errors are caught from the first element on; the check runs after the load event.
    let page = html
        .replacen(
            "<head>",
            "<head><script>window.__sweep_errors = []; window.addEventListener('error', e => window.__sweep_errors.push(String(e.message || (e.target && (e.target.src || e.target.href)))), true);</script>",
            1,
        )
        .replacen("</body>", &format!("{BROWSER_CHECK}</body>"), 1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    std::fs::write(&file, page).unwrap();
    // The DOM goes to a file: a pipe nobody reads would stop the browser at 64 KiB.
    let (dom_file, log_file) = (dir.path().join("dom.html"), dir.path().join("browser.log"));
    let mut child = std::process::Command::new(browser.unwrap())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--virtual-time-budget=10000",
            "--window-size=1280,2000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("file://{}", file.display()))
        .stdout(std::fs::File::create(&dom_file).unwrap())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the browser did not finish within 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let dom = std::fs::read_to_string(&dom_file).unwrap();
    let json = dom
        .split("<pre id=\"sweep-check\">")
        .nth(1)
        .and_then(|t| t.split("</pre>").next())
        .unwrap_or_else(|| {
            panic!(
                "the page's check did not run: {}",
                std::fs::read_to_string(&log_file).unwrap_or_default()
            )
        })
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(!r.plots.is_empty());
    assert_eq!(v["svgs"], r.plots.len(), "{v}");
    assert_eq!(
        v["drawn"],
        r.plots.len(),
        "every figure laid out and drawn: {v}"
    );
    assert_eq!(v["tables"], r.tables.len(), "{v}");
    for empty in ["broken_images", "fetched", "external", "dangling", "errors"] {
        assert_eq!(v[empty], serde_json::json!([]), "{empty}: {v}");
    }
}

/// Where every rank has its own alpha (no rule holds at two ranks) there is no rank slope, and
/// the note says so instead of pooling the alphas into one.
#[test]
fn no_rank_slope_across_unrelated_alphas() {
    let mut input = sweep(2);
    let lora = lora_runs(&input);
    input
        .runs
        .retain(|r| r.point.method.method_name() == "full");
    for (rank, alpha) in [(4u64, 16.0), (8, 8.0), (16, 48.0)] {
        input
            .runs
            .extend(lora.iter().map(|r| lora_at(r, rank, alpha)));
    }
    let r = build(&input);
    let t = r.tables.iter().find(|t| t.key == "lr_ratio").unwrap();
    assert_eq!(t.rows.len(), 4, "full's row and 3 LoRA groups: {t:?}");
    let note = t.note.as_deref().unwrap();
    assert!(!note.contains(": slope"), "{note}");
    assert!(
        note.contains("all: no alpha rule holds at 2 ranks or more (no slope)"),
        "{note}"
    );
}

/// Equal means everywhere: every table, the winners and the best-LR search pick the lowest
/// learning rate, within a configuration and across them.
#[test]
fn of_equal_means_the_lowest_learning_rate_wins_in_every_table() {
    let mut input = sweep(2);
    for r in &mut input.runs {
        for e in &mut r.evals {
            if e.tokens > 0 {
                e.metrics.insert("target_loss".into(), 2.5);
            }
        }
    }
    let report = build(&input);
    let table = |key: &str| report.tables.iter().find(|t| t.key == key).unwrap().clone();
    let col = |t: &TableData, name: &str| t.header.iter().position(|h| h == name).unwrap();
    let lowest = |group: &str| if group == "full" { "1e-5" } else { "1e-4" };

    let best = table("best");
    let lr = col(&best, "best lr");
    assert!(!best.rows.is_empty());
    for row in &best.rows {
        assert_eq!(row[lr], lowest(row[1].as_str()), "best table: {row:?}");
    }
    let sens = table("lr_sensitivity");
    let (lr, mark) = (col(&sens, "lr"), col(&sens, "best or near"));
    let marked: Vec<_> = sens.rows.iter().filter(|r| r[mark] == "best").collect();
    assert_eq!(
        marked.len(),
        2,
        "one best per configuration: {:?}",
        sens.rows
    );
    for row in marked {
        assert_eq!(
            row[lr],
            lowest(row[0].as_str()),
            "sensitivity table: {row:?}"
        );
    }
    let winners = table("winners");
    for row in &winners.rows {
        assert!(
            row[2].as_str().starts_with(&format!(
                "lr {}",
                lowest(row[0].as_str().trim_end_matches(" (best)"))
            )),
            "winners: {row:?}"
        );
    }
    let grid = grid::Grid::new(&input, "target_loss", Some("source_loss"));
    let top = grid.top().unwrap();
    let (k, _) = grid.best_in(&|_| true, top).unwrap();
    assert_eq!(
        (k.method.as_str(), k.lr()),
        ("full", 1e-5),
        "across methods"
    );
    let lr = grid.best_lr_by("lora r8 all", top, &|_, c| c.learn.clone());
    assert_eq!(lr, Some(1e-4));
}

/// Finding 4 replicates over the seeds of each method's best configuration: runs at other
/// learning rates (here with the opposite ranks) are not pooled in, which would reverse it.
#[test]
fn finding_4_compares_the_seeds_of_each_methods_best_configuration() {
    let mut input = sweep(3);
    for r in &mut input.runs {
        let full = r.point.method.method_name() == "full";
        let best = r.point.learning_rate
            == if full {
                PAPER.best_full
            } else {
                PAPER.best_lora
            };
        let rank = match (full, best) {
            (true, true) => 20.0,
            (false, true) => 3.0,
            (true, false) => 2.0,
            (false, false) => 50.0,
        } + 0.1 * r.seed as f64;
        for e in &mut r.evals {
            if e.tokens > 0 {
                e.metrics.insert("spectral_rank".into(), rank);
            }
        }
    }
    let r = build(&input);
    // Its plot: each configuration's spectral rank against the learning rate, under the
    // findings, saying it shows finding 4.
    let p = r.plots.iter().find(|p| p.key == "spectral_rank").unwrap();
    let full = p.lines.iter().find(|l| l.label == "full").unwrap();
    assert_eq!(full.points.len(), 3, "{full:?}");
    assert!(full
        .points
        .iter()
        .any(|q| (q.1 - 20.1).abs() < 1e-9 && q.2.is_some()));
    assert!(
        render::markdown(&r).contains("Finding 4: the rank of each configuration's weight change")
    );
    let f = r.findings[3].clone();
    assert_eq!(f.number, 4);
    assert_eq!(f.verdict, Verdict::Supported, "{f:?}");
    assert!(
        f.evidence.contains("best full (") && f.evidence.contains(") 20.1, best LoRA ("),
        "{}",
        f.evidence
    );
    assert!(f.evidence.contains(") 3.1"), "{}", f.evidence);
    let test = f.test.unwrap();
    assert_eq!(test.seeds, 3);
    assert!((test.estimate.effect - 17.0).abs() < 1e-9, "{test:?}");
    assert_eq!(test.unit, "seeds of each method's best configuration");
}

/// Forgetting at matched learning on worlds built with and without LoRA forgetting less at the
/// same learning: the effect is LoRA's offset (negated), its interval excludes 0 only where
/// there is one, and the table is in the report.
#[test]
fn forgetting_at_matched_learning_finds_the_offset_built_in() {
    for (offset, want) in [(-0.2, 0.2), (0.0, 0.0)] {
        let world = World {
            lora_offset: offset,
            full_lrs: [1e-6, 1e-5, 1e-4],
            ..PAPER
        };
        let input = sweep_in(&world, 3);
        let grid = grid::Grid::new(&input, "target_loss", Some("source_loss"));
        let m = tables::matched_at(&grid, grid.top().unwrap()).unwrap();
        // The matched level is LoRA's best learning (it learns less); full's frontier reaches
        // it between two of its learning rates.
        let lora_best = grid
            .best_in(&|k| k.method == "lora", grid.top().unwrap())
            .map(|(_, c)| c.learn.iter().sum::<f64>() / c.learn.len() as f64)
            .unwrap();
        assert!((m.learning - lora_best).abs() < 1e-12, "{m:?}");
        let e = m.estimate.unwrap();
        assert_eq!(m.seeds, 3);
        assert!((e.effect - want).abs() < 0.03, "offset {offset}: {e:?}");
        assert!((e.effect - (m.full - m.lora)).abs() < 1e-12);
        if want > 0.0 {
            assert!(e.ci_low > 0.0 && e.p < 0.01, "offset {offset}: {e:?}");
        } else {
            assert!(e.ci_low < 0.0 && e.ci_high > 0.0, "offset {offset}: {e:?}");
        }
        let report = build(&input);
        let t = report
            .tables
            .iter()
            .find(|t| t.key == "matched_learning")
            .unwrap();
        assert_eq!(t.rows.len(), grid.budgets.len());
    }
}

#[test]
fn along_a_frontier_is_linear_between_its_points_and_none_outside() {
    // (learning, forgetting); (2, 5) is dominated by (3, 4) and is not on the frontier.
    let points = [(1.0, 1.0), (3.0, 4.0), (2.0, 5.0), (5.0, 6.0)];
    assert_eq!(tables::along_frontier(&points, 1.0), Some(1.0));
    assert_eq!(tables::along_frontier(&points, 2.0), Some(2.5));
    assert_eq!(tables::along_frontier(&points, 4.0), Some(5.0));
    assert_eq!(tables::along_frontier(&points, 5.0), Some(6.0));
    assert_eq!(tables::along_frontier(&points, 0.5), None);
    assert_eq!(tables::along_frontier(&points, 5.5), None);
    assert_eq!(tables::along_frontier(&[(2.0, 3.0)], 2.0), Some(3.0));
}

/// Runs that measured intruder scaling get its table: each configuration at its best learning
/// rate as trained and at each factor, the factor's points being the scaled losses.
#[test]
fn intruder_scaling_points_are_tabled_beside_the_runs_as_trained() {
    let mut input = sweep(2);
    for r in &mut input.runs {
        for e in &mut r.evals {
            let (t, s) = (e.metrics["target_loss"], e.metrics["source_loss"]);
            e.metrics.insert("intruders_x0_target_loss".into(), t + 0.1);
            e.metrics
                .insert("intruders_x0_source_loss".into(), s - 0.05);
        }
    }
    let r = build(&input);
    let t = r
        .tables
        .iter()
        .find(|t| t.key == "intruder_scaling")
        .unwrap_or_else(|| panic!("{:?}", r.notes));
    assert_eq!(
        t.rows.len(),
        4,
        "2 configurations x (as trained, x0): {:?}",
        t.rows
    );
    // The numbers behind the cells (what report.json and the CSV carry).
    let first = |c: &crate::report::Value| match c.number {
        crate::report::value::Number::Spread(s) => s.mean,
        other => panic!("{other:?}"),
    };
    for pair in t.rows.chunks(2) {
        assert_eq!(pair[0][2], "1 (as trained)");
        assert_eq!(pair[1][2], "0");
        assert!(
            (first(&pair[1][3]) - first(&pair[0][3]) - 0.1).abs() < 1e-9,
            "{pair:?}"
        );
        assert!(
            (first(&pair[1][4]) - first(&pair[0][4]) + 0.05).abs() < 1e-9,
            "{pair:?}"
        );
    }
    // With another learning metric chosen for the rest of the report, the table still reads
    // the losses scaling measured.
    for run in &mut input.runs {
        for e in &mut run.evals {
            let v = 1.0 / e.metrics["target_loss"];
            e.metrics.insert("next_line_match".into(), v.min(1.0));
        }
    }
    let r = build(&input);
    assert_eq!(r.learning_metric.as_deref(), Some("next_line_match"));
    let again = r
        .tables
        .iter()
        .find(|t| t.key == "intruder_scaling")
        .unwrap();
    assert_eq!(again.rows, t.rows);
}

/// Hyperparameter importance on a grid built with known effects: LoRA's target loss moves by 1
/// between its two learning rates and by 2 between ranks 4 and 16, seeds by ±0.5. Balanced, so
/// main effects 0.25 (learning rate) and 1.0 (rank), no interaction, seed noise 0.5 (sample
/// variance of ±0.5): shares of 1.75 of 14%, 57%, 0% and 29%. Full fine-tuning has only its
/// learning rate as an axis.
#[test]
fn importance_splits_known_effects_per_method_and_gives_rank_only_to_lora() {
    let base = sweep(2);
    let mut runs = Vec::new();
    let lrs = [1e-4, 1e-3];
    for r in &base.runs {
        let full = r.point.method.method_name() == "full";
        let Some(i) = lrs.iter().position(|&l| l == r.point.learning_rate) else {
            continue;
        };
        let ranks: &[u64] = if full { &[0] } else { &[4, 16] };
        for &rank in ranks {
            let mut run = if full {
                r.clone()
            } else {
                lora_at(r, rank, 16.0)
            };
            let noise = if r.seed == 0 { 0.5 } else { -0.5 };
            let value = 3.0 - i as f64 - if rank == 16 { 2.0 } else { 0.0 } + noise;
            for e in &mut run.evals {
                if e.tokens > 0 {
                    e.metrics.insert("target_loss".into(), value);
                }
            }
            runs.push(run);
        }
    }
    let input = ReportInput { runs, ..base };
    let grid = grid::Grid::new(&input, "target_loss", Some("source_loss"));
    let t = importance::importance(&grid).unwrap();
    let row = |m: &str| t.rows.iter().find(|r| r[0] == m).unwrap().clone();
    let lora = row("lora");
    assert_eq!(
        t.header[2..],
        [
            "learning rate",
            "rank",
            "modules",
            "interactions",
            "seed noise"
        ]
    );
    assert_eq!(lora[1], "4", "2 learning rates x 2 ranks");
    let shown: Vec<&str> = lora[2..].iter().map(Value::as_str).collect();
    assert_eq!(shown, ["14%", "57%", "-", "0%", "29%"], "{lora:?}");
    // The shares as fractions: learning rate 1/7, rank 4/7, seed noise 2/7 of the variance.
    for (i, want) in [(2, 1.0 / 7.0), (3, 4.0 / 7.0), (6, 2.0 / 7.0)] {
        assert!((ratio_of(&lora[i]) - want).abs() < 1e-12, "{lora:?}");
    }
    let full = row("full");
    assert!(
        full[2].as_str().ends_with('%') && full[3] == "-" && full[4] == "-",
        "{full:?}"
    );
}
