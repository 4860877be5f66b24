//! Building the report from run data: pure, no I/O.

use std::collections::BTreeMap;

pub use super::grid::higher_is_better;
use super::grid::{better, fmt_lr, fmt_metric, fmt_summary, metric_at, Cell, Grid, SeriesKey};
use super::stats::{log_fit, pareto_front, summarize, Summary};
use super::{Plot, Report, ReportInput, RunData, Series, TableData};
use crate::results::RunStatus;
use crate::spec::values::format_tokens;

/// Learning metrics in order of preference: a task metric when one was measured, else the loss.
const LEARNING_METRICS: &[&str] = &[
    "gsm8k_strict",
    "math_accuracy",
    "humaneval_pass@1",
    "next_line_match",
    "target_loss",
];

/// Margin that defines the near-best learning-rate range: within 2% of the best value.
pub const LR_MARGIN: f64 = 0.02;

/// Forgetting metrics in order of preference.
const FORGETTING_METRICS: &[&str] = &[
    "forgetting_score",
    "source_loss",
    "multiple_choice_accuracy",
];

/// Task metrics that are proportions of items answered right.
const PROPORTIONS: &[&str] = &[
    "forgetting_score",
    "multiple_choice_accuracy",
    "gsm8k_strict",
    "gsm8k_flexible",
    "math_accuracy",
    "humaneval_pass@1",
    "next_line_match",
];

/// The items behind each value of `metric` when it is a proportion measured on a known number
/// of items (its cells then show a Wilson interval).
fn proportion_items(input: &ReportInput, metric: &str) -> Option<u64> {
    PROPORTIONS
        .contains(&metric)
        .then(|| input.metric_items.get(metric).copied())
        .flatten()
}

/// Why a proportion metric has too few items to rank configurations, if it has: the binomial
/// noise of one evaluation, sqrt(p (1 - p) / n) at its mean p over trained evaluations and its
/// n items, exceeds the standard deviation of the configurations' means at the largest budget
/// (the differences it would rank are its own noise).
fn too_few_items(input: &ReportInput, metric: &str) -> Option<String> {
    let n = input
        .items_of(metric)
        .filter(|_| PROPORTIONS.contains(&metric))? as f64;
    let grid = Grid::new(input, metric, None);
    let top = grid.top()?;
    let means: Vec<f64> = grid
        .cells
        .iter()
        .filter(|((_, b), _)| *b == top)
        .filter_map(|(_, c)| summarize(&c.learn).map(|s| s.mean))
        .collect();
    let spread = summarize(&means).and_then(|s| s.sd)?;
    let p = summarize(&means)?.mean.clamp(0.0, 1.0);
    let noise = (p * (1.0 - p) / n).sqrt();
    (noise > spread).then(|| {
        format!(
            "with {n} items per evaluation its noise is ±{noise:.3} (binomial, at its mean {p:.3}), more than the {spread:.3} that separates the configurations' means"
        )
    })
}

/// Build the report.
pub fn build(input: &ReportInput) -> Report {
    let mut notes = Vec::new();
    let mut tables = Vec::new();
    let all_metrics: std::collections::BTreeSet<String> = input
        .runs
        .iter()
        .flat_map(|r| r.evals.iter().flat_map(|e| e.metrics.keys().cloned()))
        .collect();
    // A task metric that every trained evaluation scored the same (a tiny model that never
    // gets an answer right) cannot rank anything: fall back to the next, down to the loss.
    let informative = |m: &str| -> bool {
        let mut vals = input
            .runs
            .iter()
            .flat_map(|r| r.evals.iter().filter(|e| e.tokens > 0))
            .filter_map(|e| e.metrics.get(m).copied())
            .filter(|v| v.is_finite());
        match vals.next() {
            Some(first) => vals.any(|v| (v - first).abs() > 1e-12) || m == "target_loss",
            None => false,
        }
    };
    let coarse = |m: &str| too_few_items(input, m);
    let learning = LEARNING_METRICS
        .iter()
        .find(|m| all_metrics.contains(**m) && informative(m) && coarse(m).is_none())
        .map(|m| m.to_string());
    for m in LEARNING_METRICS {
        if !all_metrics.contains(*m) || learning.as_deref() == Some(*m) {
            continue;
        }
        let next = learning.as_deref().unwrap_or("no learning metric");
        if !informative(m) {
            notes.push(format!("{m} was measured but is the same for every run, so it cannot rank configurations; the tables use {next}"));
        } else if let Some(why) = coarse(m) {
            notes.push(format!(
                "{m} cannot separate the configurations: {why}; the tables use {next}"
            ));
        }
    }
    // The paper's forgetting score (the mean of the three benchmarks) when it has the items to
    // rank configurations, else the source-domain loss.
    let forgetting = FORGETTING_METRICS
        .iter()
        .find(|m| all_metrics.contains(**m) && coarse(m).is_none())
        .map(|m| m.to_string());
    for m in FORGETTING_METRICS {
        if all_metrics.contains(*m) && forgetting.as_deref() != Some(*m) {
            if let Some(why) = coarse(m) {
                notes.push(format!(
                    "{m} cannot separate the configurations: {why}; forgetting is measured by {}",
                    forgetting.as_deref().unwrap_or("nothing")
                ));
            }
        }
    }

    tables.push(overview(input));
    for (id, why) in &input.unreadable {
        notes.push(format!(
            "run {id}: unreadable result.json ({why}); left out"
        ));
    }
    if !input.foreign.is_empty() {
        notes.push(format!(
            "{} run folders are not in the current plan (another version of the spec), reported apart and left out: {}",
            input.foreign.len(),
            input.foreign.join(", ")
        ));
    }
    let failed: Vec<&RunData> = input
        .runs
        .iter()
        .filter(|r| matches!(r.status, Some(RunStatus::Failed)))
        .collect();
    for r in &failed {
        notes.push(format!(
            "run {} failed: {}",
            r.id,
            r.error
                .clone()
                .unwrap_or_else(|| "no error recorded".into())
        ));
    }
    let missing = input
        .runs
        .iter()
        .filter(|r| r.status.is_none() || matches!(r.status, Some(RunStatus::Interrupted)))
        .count();
    if missing > 0 {
        notes.push(format!(
            "{missing} runs have no result yet; the tables use the {} that do",
            input.runs.len() - missing
        ));
    }

    let Some(learn) = learning.clone() else {
        notes.push("no run measured a learning metric yet: only the overview is shown".into());
        return Report {
            sweep: input.sweep.clone(),
            learning_metric: None,
            forgetting_metric: forgetting,
            tables,
            findings: super::findings::not_enough("no results yet"),
            cells: vec![],
            plots: vec![],
            notes,
        };
    };
    let higher = higher_is_better(&learn);
    let learn_items = proportion_items(input, &learn);
    if let Some(n) = learn_items {
        notes.push(format!(
            "{learn} is a proportion of {n} items per evaluation: its cells show the Wilson 95% interval over the items of all seeds (seeds x {n}), which stays within [0, 1]"
        ));
    }
    let forget_name = forgetting.as_deref().map(|f| {
        if higher_is_better(f) {
            format!("{f}_drop")
        } else {
            format!("{f}_increase")
        }
    });

    let grid = Grid::new(input, &learn, forgetting.as_deref());
    let (cells, diverged, budgets) = (&grid.cells, &grid.diverged, &grid.budgets);
    let Some(&top) = budgets.last() else {
        notes.push(format!("no completed run has a {learn} evaluation yet"));
        return Report {
            sweep: input.sweep.clone(),
            learning_metric: Some(learn),
            forgetting_metric: forget_name,
            tables,
            findings: super::findings::not_enough("no results yet"),
            cells: vec![],
            plots: vec![],
            notes,
        };
    };
    let mean = |v: &[f64]| summarize(v).map(|s| s.mean);
    let best_in = |filter: &dyn Fn(&SeriesKey) -> bool, b: u64| grid.best_in(filter, b);
    let methods: Vec<String> = {
        let mut m: Vec<String> = cells.keys().map(|k| k.0.method.clone()).collect();
        m.dedup();
        m.sort();
        m.dedup();
        m
    };

    // Table 2: best configuration per method and per LoRA group, at each budget.
    let mut rows = Vec::new();
    let groups: Vec<String> = {
        let mut g: Vec<String> = cells.keys().map(|k| k.0.group()).collect();
        g.sort();
        g.dedup();
        g
    };
    for &b in budgets {
        for g in &groups {
            if let Some((k, c)) = best_in(&|k: &SeriesKey| &k.group() == g, b) {
                rows.push(vec![
                    format_tokens(b),
                    g.clone(),
                    fmt_lr(k.lr()),
                    fmt_metric(&c.learn, learn_items),
                    fmt_summary(summarize(&c.forget)),
                ]);
            }
        }
    }
    tables.push(TableData {
        key: "best".into(),
        title: format!(
            "Best learning rate per configuration at each budget ({learn}, {})",
            if higher {
                "higher is better"
            } else {
                "lower is better"
            }
        ),
        header: vec![
            "budget".into(),
            "configuration".into(),
            "best lr".into(),
            learn.clone(),
            forget_name.clone().unwrap_or_else(|| "forgetting".into()),
        ],
        rows,
        note: Some("mean ± 95% Student-t interval over seeds".into()),
    });

    // Table 3: learning-rate sensitivity at the top budget.
    let mut rows = Vec::new();
    let mut lr_plot = Vec::new();
    for g in &groups {
        let mut series: Vec<(f64, Cell, usize)> = cells
            .iter()
            .filter(|((k, b), _)| *b == top && &k.group() == g)
            .map(|((k, _), c)| (k.lr(), c.clone(), diverged.get(k).copied().unwrap_or(0)))
            .collect();
        // Learning rates whose runs all diverged have no cell; they still count.
        for (k, n) in diverged {
            if &k.group() == g && !series.iter().any(|s| s.0 == k.lr()) {
                series.push((k.lr(), Cell::default(), *n));
            }
        }
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        let best = series
            .iter()
            .filter_map(|s| mean(&s.1.learn).map(|m| (s.0, m)))
            .fold(None::<(f64, f64)>, |acc, x| match acc {
                Some(a) if !better(x.1, a.1, higher) => Some(a),
                _ => Some(x),
            });
        let near: Vec<f64> = match best {
            Some((_, bm)) => series
                .iter()
                .filter(|s| {
                    mean(&s.1.learn)
                        .is_some_and(|m| (m - bm).abs() <= LR_MARGIN * bm.abs().max(1e-12))
                })
                .map(|s| s.0)
                .collect(),
            None => vec![],
        };
        let width = match (near.first(), near.last()) {
            (Some(a), Some(b)) => format!("{:.1}", (b / a).log10()),
            _ => "-".into(),
        };
        for (lr, c, nd) in &series {
            rows.push(vec![
                g.clone(),
                fmt_lr(*lr),
                fmt_metric(&c.learn, learn_items),
                fmt_summary(summarize(&c.forget)),
                nd.to_string(),
                if best.is_some_and(|b| b.0 == *lr) {
                    "best".into()
                } else if near.contains(lr) {
                    "near".into()
                } else {
                    String::new()
                },
                width.clone(),
            ]);
        }
        lr_plot.push(Series {
            label: g.clone(),
            points: series
                .iter()
                .filter_map(|s| summarize(&s.1.learn).map(|m| (s.0, m.mean, m.ci95)))
                .collect(),
            dashed: false,
        });
    }
    tables.push(TableData {
        key: "lr_sensitivity".into(),
        title: format!("Learning-rate sensitivity at {} tokens", format_tokens(top)),
        header: vec!["configuration".into(), "lr".into(), learn.clone(), forget_name.clone().unwrap_or_else(|| "forgetting".into()), "diverged".into(), "".into(), "near-best width (decades)".into()],
        rows,
        note: Some(format!("near: within {}% of the best value; diverged: runs whose loss became NaN/inf or exceeded max_loss", LR_MARGIN * 100.0)),
    });

    // Table 4: rank and target modules, each at its best learning rate, with its capacity:
    // trainable parameters against the tokens it trained on.
    let params: BTreeMap<&str, i64> = input
        .runs
        .iter()
        .filter_map(|r| r.trainable_params.map(|p| (r.config_id.as_str(), p)))
        .collect();
    let mut rows = Vec::new();
    for g in &groups {
        if let Some((k, c)) = best_in(&|k: &SeriesKey| &k.group() == g, top) {
            let p = params.get(c.config_id.as_str()).copied();
            rows.push(vec![
                k.method.clone(),
                k.rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                k.modules.clone().unwrap_or_else(|| "-".into()),
                fmt_lr(k.lr()),
                fmt_metric(&c.learn, learn_items),
                fmt_summary(summarize(&c.forget)),
                p.map(|p| format_tokens(p as u64))
                    .unwrap_or_else(|| "-".into()),
                p.map(|p| format!("{:.3}", p as f64 / top as f64))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    tables.push(TableData {
        key: "rank_modules".into(),
        title: format!(
            "Rank and target modules at their best learning rate ({} tokens)",
            format_tokens(top)
        ),
        header: vec![
            "method".into(),
            "rank".into(),
            "modules".into(),
            "lr".into(),
            learn.clone(),
            forget_name.clone().unwrap_or_else(|| "forgetting".into()),
            "trainable params".into(),
            "params per token".into(),
        ],
        rows,
        note: Some("capacity: LoRA works about as well as full fine-tuning while its trainable parameters exceed what the data must teach it (Thinking Machines, 2025); params per token = trainable parameters / tokens trained".into()),
    });

    // Table 5: data scaling of each method's best series, with a fit a + b ln(tokens).
    let mut rows = Vec::new();
    let mut scaling_lines = Vec::new();
    for m in &methods {
        let Some((k, _)) = best_in(&|k: &SeriesKey| &k.method == m, top) else {
            continue;
        };
        let pts: Vec<(f64, Summary)> = budgets
            .iter()
            .filter_map(|&b| {
                cells
                    .get(&(k.clone(), b))
                    .and_then(|c| summarize(&c.learn))
                    .map(|s| (b as f64, s))
            })
            .collect();
        let fit = log_fit(&pts.iter().map(|(x, s)| (*x, s.mean)).collect::<Vec<_>>());
        rows.push(vec![
            m.clone(),
            k.describe(),
            pts.iter()
                .map(|(x, s)| format!("{}: {:.4}", format_tokens(*x as u64), s.mean))
                .collect::<Vec<_>>()
                .join(", "),
            fit.map(|f| match f.b_ci95 {
                Some(ci) => format!("{:.4} ± {:.4}", f.b, ci),
                None => format!("{:.4} (2 points, no interval)", f.b),
            })
            .unwrap_or_else(|| "- (one budget)".into()),
            fit.map(|f| format!("{:.3}", f.r2))
                .unwrap_or_else(|| "-".into()),
        ]);
        scaling_lines.push(Series {
            label: k.describe(),
            points: pts.iter().map(|(x, s)| (*x, s.mean, s.ci95)).collect(),
            dashed: false,
        });
        if let Some(f) = fit {
            let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
            scaling_lines.push(Series {
                label: format!("{m} fit"),
                points: xs.iter().map(|x| (*x, f.a + f.b * x.ln(), None)).collect(),
                dashed: true,
            });
        }
    }
    tables.push(TableData {
        key: "data_scaling".into(),
        title: format!(
            "Data scaling: {learn} = a + b ln(tokens), each method's best configuration"
        ),
        header: vec![
            "method".into(),
            "configuration".into(),
            "by budget".into(),
            "slope b ± 95%".into(),
            "R²".into(),
        ],
        rows,
        note: None,
    });

    // Table 6: learning vs forgetting, the Pareto frontier.
    let mut pts = Vec::new();
    let mut labels = Vec::new();
    if forgetting.is_some() {
        for ((k, b), c) in cells {
            if let (Some(l), Some(f)) = (mean(&c.learn), mean(&c.forget)) {
                // The frontier maximises learning: flip losses so that larger is better.
                pts.push((if higher { l } else { -l }, f));
                labels.push((k.clone(), *b, l, f));
            }
        }
    }
    let front = pareto_front(&pts);
    let mut rows = Vec::new();
    for (i, (k, b, l, f)) in labels.iter().enumerate() {
        rows.push(vec![
            k.describe(),
            format_tokens(*b),
            format!("{l:.4}"),
            format!("{f:.4}"),
            if front.contains(&i) {
                "frontier".into()
            } else {
                String::new()
            },
        ]);
    }
    let on_front = |m: &str| front.iter().filter(|&&i| labels[i].0.method == m).count();
    tables.push(TableData {
        key: "learning_forgetting".into(),
        title: "Learning vs forgetting: every configuration and budget".into(),
        header: vec!["configuration".into(), "budget".into(), learn.clone(), forget_name.clone().unwrap_or_else(|| "forgetting".into()), "".into()],
        rows,
        note: if forgetting.is_none() {
            Some("no run measured a source-domain metric (source_loss or multiple_choice): no forgetting, no frontier".into())
        } else {
            Some(format!("frontier: no other point learns more and forgets less; on it: {} full, {} lora", on_front("full"), on_front("lora")))
        },
    });
    let mut frontier_scatter: Vec<Series> = methods
        .iter()
        .map(|m| Series {
            label: m.clone(),
            points: labels
                .iter()
                .filter(|x| &x.0.method == m)
                .map(|x| (x.2, x.3, None))
                .collect(),
            dashed: false,
        })
        .collect();
    frontier_scatter.retain(|s| !s.points.is_empty());
    let mut front_line: Vec<(f64, f64, Option<f64>)> = front
        .iter()
        .map(|&i| (labels[i].2, labels[i].3, None))
        .collect();
    front_line.sort_by(|a, b| a.0.total_cmp(&b.0));

    // Tables 7 and 8: spectral rank and diversity, when measured.
    let spectral: Vec<&String> = all_metrics
        .iter()
        .filter(|m| m.starts_with("spectral_rank") || m.starts_with("intruder_dimensions"))
        .collect();
    if spectral.is_empty() {
        notes.push("spectral rank: no run measured it, table left out".into());
    } else {
        tables.push(metric_table(
            input,
            "spectral_rank",
            "Spectral rank of the weight change (rank for 90% of the variance) and intruder dimensions",
            &spectral,
            top,
        ));
    }
    let diversity: Vec<&String> = all_metrics
        .iter()
        .filter(|m| m.starts_with("diversity") || m.starts_with("distinct_"))
        .collect();
    if diversity.is_empty() {
        notes.push("diversity: no run measured it, table left out".into());
    } else {
        tables.push(metric_table(
            input,
            "diversity",
            "Generation diversity",
            &diversity,
            top,
        ));
    }

    // Findings, each decided by its test.
    let findings = super::findings::findings(&grid, input, forget_name.as_deref());
    // The findings lead, right after the overview.
    tables.insert(1, TableData {
        key: "findings".into(),
        title: "Findings of the paper, tested on this sweep".into(),
        header: vec![
            "#".into(),
            "claim".into(),
            "verdict".into(),
            "numbers".into(),
        ],
        rows: findings
            .iter()
            .map(|f| {
                vec![
                    f.number.to_string(),
                    f.claim.clone(),
                    f.verdict.words().into(),
                    f.evidence.clone(),
                ]
            })
            .collect(),
        note: Some(format!(
            "each finding's effect is signed so that > 0 is the paper's direction, with its 95% interval; supported or contradicted when its p-value, Holm-corrected over the findings tested, is below {}",
            super::findings::ALPHA
        )),
    });

    tables.insert(2, winners(input, &grid, top, forget_name.as_deref()));
    tables.insert(3, super::findings::by_budget(&grid, forget_name.as_deref()));
    if let Some(t) = super::findings::lr_ratios(&grid) {
        tables.insert(4, t);
    }
    tables.extend(super::importance::importance(&grid));

    let mut plots = vec![
        Plot {
            key: "lr_sensitivity".into(),
            title: format!("{learn} vs learning rate at {} tokens", format_tokens(top)),
            x_label: "learning rate".into(),
            y_label: learn.clone(),
            log_x: true,
            lines: lr_plot,
            scatter: vec![],
        },
        Plot {
            key: "data_scaling".into(),
            title: format!("{learn} vs training tokens"),
            x_label: "tokens".into(),
            y_label: learn.clone(),
            log_x: true,
            lines: scaling_lines,
            scatter: vec![],
        },
    ];
    if !labels.is_empty() {
        plots.push(Plot {
            key: "learning_forgetting".into(),
            title: "Learning vs forgetting".into(),
            x_label: learn.clone(),
            y_label: forget_name.clone().unwrap_or_default(),
            log_x: false,
            lines: vec![Series {
                label: "frontier".into(),
                points: front_line,
                dashed: true,
            }],
            scatter: frontier_scatter,
        });
    }
    Report {
        sweep: input.sweep.clone(),
        learning_metric: Some(learn),
        forgetting_metric: forget_name,
        tables,
        findings,
        cells: grid.numbers(),
        plots,
        notes,
    }
}

fn metric_table(
    input: &ReportInput,
    key: &str,
    title: &str,
    metrics: &[&String],
    top: u64,
) -> TableData {
    let mut by: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for r in &input.runs {
        let g = SeriesKey::of(r).group();
        for m in metrics {
            if let Some(v) = metric_at(r, m, top) {
                by.entry(g.clone())
                    .or_default()
                    .entry((*m).clone())
                    .or_default()
                    .push(v);
            }
        }
    }
    let mut header = vec!["configuration".to_string()];
    header.extend(metrics.iter().map(|m| m.to_string()));
    let rows = by
        .into_iter()
        .map(|(g, ms)| {
            let mut row = vec![g];
            row.extend(metrics.iter().map(|m| match ms.get(*m) {
                Some(v) => fmt_metric(v, proportion_items(input, m)),
                None => fmt_summary(None),
            }));
            row
        })
        .collect();
    TableData {
        key: key.into(),
        title: format!("{title} at {} tokens", format_tokens(top)),
        header,
        rows,
        note: None,
    }
}

/// The best configuration of each method at the largest budget, with its best seed's run and
/// the command that exports it.
fn winners(input: &ReportInput, grid: &Grid, top: u64, forget_name: Option<&str>) -> TableData {
    let learn_items = proportion_items(input, &grid.learn);
    let mut rows = Vec::new();
    let mut commands = Vec::new();
    for method in ["full", "lora"] {
        let Some((k, c)) = grid.best_in(&|k: &SeriesKey| k.method == method, top) else {
            continue;
        };
        // The seed whose run learned most: the one to export.
        let best = (0..c.learn.len()).fold(None::<usize>, |acc, i| match acc {
            Some(a) if !better(c.learn[i], c.learn[a], grid.higher) => Some(a),
            _ => Some(i),
        });
        let Some(b) = best else { continue };
        let run = &c.ids[b];
        let hyper = match (&k.rank, &k.modules) {
            (Some(r), Some(m)) => format!("lr {}, rank {r}, modules {m}", fmt_lr(k.lr())),
            _ => format!("lr {}", fmt_lr(k.lr())),
        };
        rows.push(vec![
            method.into(),
            c.config_id.clone(),
            hyper,
            fmt_metric(&c.learn, learn_items),
            fmt_summary(summarize(&c.forget)),
            run.clone(),
        ]);
        let dir = input.dir.as_deref().unwrap_or("results/NAME");
        commands.push(format!(
            "{method}: sweep export {dir}/runs/{run} --out {run}-export"
        ));
    }
    TableData {
        key: "winners".into(),
        title: format!(
            "Best configuration per method at {} tokens",
            format_tokens(top)
        ),
        header: vec![
            "method".into(),
            "config".into(),
            "hyperparameters".into(),
            grid.learn.clone(),
            forget_name.unwrap_or("forgetting").to_string(),
            "best seed's run".into(),
        ],
        rows,
        note: (!commands.is_empty()).then(|| {
            format!(
                "export the best run as a Hugging Face folder (LoRA merged): {}",
                commands.join("; ")
            )
        }),
    }
}

fn overview(input: &ReportInput) -> TableData {
    let count = |f: &dyn Fn(&RunData) -> bool| input.runs.iter().filter(|r| f(r)).count();
    let tokens: u64 = input
        .runs
        .iter()
        .filter(|r| r.status.is_some())
        .map(|r| r.tokens)
        .sum();
    let wall: f64 = input
        .runs
        .iter()
        .filter(|r| r.status.is_some())
        .map(|r| r.wall_s)
        .sum();
    let rows = vec![
        vec!["planned runs".into(), input.runs.len().to_string()],
        vec![
            "completed".into(),
            count(&|r| r.status == Some(RunStatus::Completed)).to_string(),
        ],
        vec![
            "diverged".into(),
            count(&|r| r.status == Some(RunStatus::Diverged)).to_string(),
        ],
        vec![
            "failed".into(),
            count(&|r| r.status == Some(RunStatus::Failed)).to_string(),
        ],
        vec![
            "no result yet".into(),
            count(&|r| r.status.is_none() || r.status == Some(RunStatus::Interrupted)).to_string(),
        ],
        vec![
            "unreadable results".into(),
            input.unreadable.len().to_string(),
        ],
        vec!["tokens trained".into(), format_tokens(tokens)],
        vec![
            "compute (run-hours)".into(),
            format!("{:.2}", wall / 3600.0),
        ],
    ];
    TableData {
        key: "overview".into(),
        title: format!("Sweep {}: overview", input.sweep),
        header: vec!["".into(), "".into()],
        rows,
        note: None,
    }
}
