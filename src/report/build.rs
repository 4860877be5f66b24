//! Building the report from run data: pure, no I/O.

use std::collections::BTreeMap;

use super::stats::{log_fit, pareto_front, summarize, welch, Summary};
use super::{Finding, Plot, Report, ReportInput, RunData, Series, TableData, Verdict};
use crate::plan::MethodConfig;
use crate::results::RunStatus;
use crate::spec::values::{format_tokens, module_set_label};

/// Learning metrics in order of preference: a task metric when one was measured, else the loss.
const LEARNING_METRICS: &[&str] = &[
    "math_accuracy",
    "humaneval_pass@1",
    "next_line_match",
    "target_loss",
];

/// Margin that defines the near-best learning-rate range: within 2% of the best value.
pub const LR_MARGIN: f64 = 0.02;

/// Whether larger values of a metric are better (losses and perplexities are not).
pub fn higher_is_better(metric: &str) -> bool {
    !(metric.ends_with("_loss")
        || metric.contains("perplexity")
        || metric.ends_with("_increase")
        || metric.ends_with("_drop"))
}

/// What a series of runs shares: everything but the seed and the budget.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SeriesKey {
    method: String,
    rank: Option<u64>,
    modules: Option<String>,
    alpha_bits: u64,
    dropout_bits: u64,
    lr_bits: u64,
}

impl SeriesKey {
    fn of(run: &RunData) -> SeriesKey {
        let (rank, modules, alpha, dropout) = match &run.point.method {
            MethodConfig::Full => (None, None, 0.0, 0.0),
            MethodConfig::Lora {
                rank,
                alpha,
                target_modules,
                dropout,
            } => (
                Some(*rank),
                Some(module_set_label(target_modules)),
                *alpha,
                *dropout,
            ),
        };
        SeriesKey {
            method: run.point.method.method_name().to_string(),
            rank,
            modules,
            alpha_bits: f64::to_bits(alpha),
            dropout_bits: f64::to_bits(dropout),
            lr_bits: run.point.learning_rate.to_bits(),
        }
    }
    fn lr(&self) -> f64 {
        f64::from_bits(self.lr_bits)
    }
    fn group(&self) -> String {
        match (&self.rank, &self.modules) {
            (Some(r), Some(m)) => format!("lora r{r} {m}"),
            _ => self.method.clone(),
        }
    }
    fn describe(&self) -> String {
        format!("{} lr={}", self.group(), fmt_lr(self.lr()))
    }
}

fn fmt_lr(v: f64) -> String {
    format!("{v:.0e}")
}

/// A cell: one series at one budget, over seeds.
#[derive(Debug, Clone, Default)]
struct Cell {
    learn: Vec<f64>,
    forget: Vec<f64>,
}

fn fmt_summary(s: Option<Summary>) -> String {
    match s {
        None => "-".into(),
        Some(s) => match s.ci95 {
            Some(ci) => format!("{:.4} ± {:.4} (n={})", s.mean, ci, s.n),
            None => format!("{:.4} (n=1, no interval)", s.mean),
        },
    }
}

/// A metric at a budget: the first evaluation at or after it (the trainer evaluates at the end
/// of the step that reaches the budget, so 16k tokens in steps of 1,024 is evaluated at 16,384).
fn metric_at(run: &RunData, metric: &str, tokens: u64) -> Option<f64> {
    run.evals
        .iter()
        .filter(|e| e.tokens >= tokens && (tokens > 0 || e.tokens == 0))
        .min_by_key(|e| e.tokens)
        .and_then(|e| e.metrics.get(metric))
        .copied()
        .filter(|v| v.is_finite())
}

/// The forgetting measure of a run at a budget: the rise of the source-domain loss over the base
/// model's, or the fall of a multiple-choice accuracy. Lower is less forgetting.
fn forgetting_at(run: &RunData, metric: &str, tokens: u64) -> Option<f64> {
    let base = metric_at(run, metric, 0)?;
    let now = metric_at(run, metric, tokens)?;
    Some(if higher_is_better(metric) {
        base - now
    } else {
        now - base
    })
}

/// Better of two values under a metric's direction.
fn better(a: f64, b: f64, higher: bool) -> bool {
    if higher {
        a > b
    } else {
        a < b
    }
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
    let learning = LEARNING_METRICS
        .iter()
        .find(|m| all_metrics.contains(**m) && informative(m))
        .map(|m| m.to_string());
    for m in LEARNING_METRICS {
        if all_metrics.contains(*m) && !informative(m) && learning.as_deref() != Some(*m) {
            notes.push(format!("{m} was measured but is the same for every run, so it cannot rank configurations; the tables use {}", learning.as_deref().unwrap_or("no learning metric")));
        }
    }
    let forgetting = ["source_loss", "multiple_choice_accuracy"]
        .iter()
        .find(|m| all_metrics.contains(**m))
        .map(|m| m.to_string());

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
            findings: not_enough_findings(),
            plots: vec![],
            notes,
        };
    };
    let higher = higher_is_better(&learn);
    let forget_name = forgetting.as_deref().map(|f| {
        if higher_is_better(f) {
            format!("{f}_drop")
        } else {
            format!("{f}_increase")
        }
    });

    // Cells: series x budget, over seeds.
    let mut cells: BTreeMap<(SeriesKey, u64), Cell> = BTreeMap::new();
    let mut diverged: BTreeMap<SeriesKey, usize> = BTreeMap::new();
    for r in &input.runs {
        let key = SeriesKey::of(r);
        if matches!(r.status, Some(RunStatus::Diverged)) {
            *diverged.entry(key.clone()).or_default() += 1;
        }
        if !matches!(r.status, Some(RunStatus::Completed | RunStatus::Diverged)) {
            continue;
        }
        for &b in &r.point.eval_at {
            if let Some(v) = metric_at(r, &learn, b) {
                let c = cells.entry((key.clone(), b)).or_default();
                c.learn.push(v);
                if let Some(f) = forgetting.as_deref().and_then(|f| forgetting_at(r, f, b)) {
                    c.forget.push(f);
                }
            }
        }
    }
    let budgets: Vec<u64> = {
        let mut b: Vec<u64> = cells.keys().map(|k| k.1).collect();
        b.sort_unstable();
        b.dedup();
        b
    };
    let Some(&top) = budgets.last() else {
        notes.push(format!("no completed run has a {learn} evaluation yet"));
        return Report {
            sweep: input.sweep.clone(),
            learning_metric: Some(learn),
            forgetting_metric: forget_name,
            tables,
            findings: not_enough_findings(),
            plots: vec![],
            notes,
        };
    };
    let mean = |v: &[f64]| summarize(v).map(|s| s.mean);
    let best_in = |filter: &dyn Fn(&SeriesKey) -> bool, b: u64| -> Option<(SeriesKey, Cell)> {
        cells
            .iter()
            .filter(|((k, bb), c)| *bb == b && filter(k) && !c.learn.is_empty())
            .max_by(|a, c| {
                let (x, y) = (
                    mean(&a.1.learn).unwrap_or(f64::NAN),
                    mean(&c.1.learn).unwrap_or(f64::NAN),
                );
                if better(x, y, higher) {
                    std::cmp::Ordering::Greater
                } else if better(y, x, higher) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .map(|((k, _), c)| (k.clone(), c.clone()))
    };
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
    for &b in &budgets {
        for g in &groups {
            if let Some((k, c)) = best_in(&|k: &SeriesKey| &k.group() == g, b) {
                rows.push(vec![
                    format_tokens(b),
                    g.clone(),
                    fmt_lr(k.lr()),
                    fmt_summary(summarize(&c.learn)),
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
    let mut best_lr: BTreeMap<String, f64> = BTreeMap::new();
    for g in &groups {
        let mut series: Vec<(f64, Cell, usize)> = cells
            .iter()
            .filter(|((k, b), _)| *b == top && &k.group() == g)
            .map(|((k, _), c)| (k.lr(), c.clone(), diverged.get(k).copied().unwrap_or(0)))
            .collect();
        // Learning rates whose runs all diverged have no cell; they still count.
        for (k, n) in &diverged {
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
        if let Some((lr, _)) = best {
            best_lr.insert(g.clone(), lr);
        }
        let width = match (near.first(), near.last()) {
            (Some(a), Some(b)) => format!("{:.1}", (b / a).log10()),
            _ => "-".into(),
        };
        for (lr, c, nd) in &series {
            rows.push(vec![
                g.clone(),
                fmt_lr(*lr),
                fmt_summary(summarize(&c.learn)),
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

    // Table 4: rank and target modules, each at its best learning rate.
    let mut rows = Vec::new();
    for g in &groups {
        if let Some((k, c)) = best_in(&|k: &SeriesKey| &k.group() == g, top) {
            rows.push(vec![
                k.method.clone(),
                k.rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                k.modules.clone().unwrap_or_else(|| "-".into()),
                fmt_lr(k.lr()),
                fmt_summary(summarize(&c.learn)),
                fmt_summary(summarize(&c.forget)),
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
        ],
        rows,
        note: None,
    });

    // Table 5: data scaling of each method's best series, with a fit a + b ln(tokens).
    let mut rows = Vec::new();
    let mut scaling_lines = Vec::new();
    let mut slopes: BTreeMap<String, super::stats::LogFit> = BTreeMap::new();
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
            slopes.insert(m.clone(), f);
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
        for ((k, b), c) in &cells {
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
        .filter(|m| m.starts_with("spectral_rank"))
        .collect();
    if spectral.is_empty() {
        notes.push("spectral rank: no run measured it, table left out".into());
    } else {
        tables.push(metric_table(
            input,
            "spectral_rank",
            "Spectral rank of the weight change (rank for 90% of the variance)",
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

    // Findings.
    let best_full = best_in(&|k: &SeriesKey| k.method == "full", top);
    let best_lora = best_in(&|k: &SeriesKey| k.method == "lora", top);
    let mut findings = Vec::new();
    findings.push(match (&best_full, &best_lora) {
        (Some((kf, cf)), Some((kl, cl))) => {
            let (mf, ml) = (mean(&cf.learn).unwrap_or(f64::NAN), mean(&cl.learn).unwrap_or(f64::NAN));
            let test = welch(&cf.learn, &cl.learn).map(|w| format!(", Welch p = {:.3}, d = {:.2}", w.p, w.cohens_d)).unwrap_or_else(|| {
                if cf.learn.len() < 2 || cl.learn.len() < 2 {
                    ", no test (fewer than 2 seeds)".into()
                } else {
                    ", no test (no variance between seeds)".into()
                }
            });
            Finding {
                number: 1,
                claim: "LoRA learns less: at equal tokens, full fine-tuning reaches a better target metric".into(),
                verdict: if better(mf, ml, higher) { Verdict::Supported } else { Verdict::NotSupported },
                evidence: format!("at {} tokens, {learn}: best full ({}) {mf:.4} vs best LoRA ({}) {ml:.4}{test}", format_tokens(top), kf.describe(), kl.describe()),
            }
        }
        _ => nef(1, "LoRA learns less", "needs both methods at the same budget"),
    });
    let forget_of = |m: &str| -> Vec<f64> {
        cells
            .iter()
            .filter(|((k, b), _)| *b == top && k.method == m)
            .flat_map(|(_, c)| c.forget.clone())
            .collect()
    };
    let (ff, fl) = (forget_of("full"), forget_of("lora"));
    findings.push(if forgetting.is_some() && !ff.is_empty() && !fl.is_empty() {
        let (mf, ml) = (mean(&ff).unwrap_or(f64::NAN), mean(&fl).unwrap_or(f64::NAN));
        let test = welch(&ff, &fl).map(|w| format!(", Welch p = {:.3}", w.p)).unwrap_or_default();
        Finding {
            number: 2,
            claim: "LoRA forgets less: the source-domain metric drops less".into(),
            verdict: if fl.is_empty() || ml < mf { Verdict::Supported } else { Verdict::NotSupported },
            evidence: format!("mean {} at {} tokens over all runs: full {mf:.4} (n={}), LoRA {ml:.4} (n={}){test}", forget_name.clone().unwrap_or_default(), format_tokens(top), ff.len(), fl.len()),
        }
    } else {
        nef(2, "LoRA forgets less", "needs a source-domain metric for both methods")
    });
    findings.push(if !front.is_empty() && methods.len() >= 2 {
        let (nf, nl) = (on_front("full"), on_front("lora"));
        Finding {
            number: 3,
            claim: "Both methods lie on one learning-forgetting frontier".into(),
            verdict: if nf > 0 && nl > 0 {
                Verdict::Supported
            } else {
                Verdict::NotSupported
            },
            evidence: format!(
                "frontier points: {nf} full, {nl} LoRA of {} points",
                labels.len()
            ),
        }
    } else {
        nef(
            3,
            "Both lie on one frontier",
            "needs learning and forgetting for both methods",
        )
    });
    findings.push(spectral_finding(input, top));
    findings.push(
        match (
            best_lr.get("full"),
            groups
                .iter()
                .filter(|g| g.starts_with("lora"))
                .filter_map(|g| best_lr.get(g).map(|lr| (g, *lr)))
                .max_by(|a, b| a.1.total_cmp(&b.1)),
        ) {
            (Some(&f), Some((g, l))) => Finding {
                number: 5,
                claim: "LoRA's best learning rate is higher than full fine-tuning's".into(),
                verdict: if l > f {
                    Verdict::Supported
                } else {
                    Verdict::NotSupported
                },
                evidence: format!(
                    "best lr at {} tokens: full {}, {g} {} ({:.1}x)",
                    format_tokens(top),
                    fmt_lr(f),
                    fmt_lr(l),
                    l / f
                ),
            },
            _ => nef(
                5,
                "LoRA's best LR is higher",
                "needs an LR sweep of both methods",
            ),
        },
    );
    findings.push(match (slopes.get("full"), slopes.get("lora")) {
        (Some(f), Some(l)) => {
            let sign = if higher { 1.0 } else { -1.0 };
            let (gf, gl) = (sign * f.b, sign * l.b);
            Finding {
                number: 6,
                claim: "More tokens help full fine-tuning more than LoRA".into(),
                verdict: if gf > gl {
                    Verdict::Supported
                } else {
                    Verdict::NotSupported
                },
                evidence: format!(
                    "improvement per ln(tokens) of {learn}: full {gf:.4}, LoRA {gl:.4}"
                ),
            }
        }
        _ => nef(
            6,
            "More tokens help full fine-tuning more",
            "needs at least two budgets for both methods",
        ),
    });
    tables.push(TableData {
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
        note: None,
    });

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
        plots,
        notes,
    }
}

fn nef(n: u8, claim: &str, why: &str) -> Finding {
    Finding {
        number: n,
        claim: claim.into(),
        verdict: Verdict::NotEnoughData,
        evidence: why.into(),
    }
}

fn not_enough_findings() -> Vec<Finding> {
    [
        (1, "LoRA learns less"),
        (2, "LoRA forgets less"),
        (3, "Both lie on one frontier"),
        (4, "Full fine-tuning's weight change is high rank"),
        (5, "LoRA's best LR is higher"),
        (6, "More tokens help full fine-tuning more"),
    ]
    .iter()
    .map(|(n, c)| nef(*n, c, "no results yet"))
    .collect()
}

fn spectral_finding(input: &ReportInput, top: u64) -> Finding {
    let vals = |m: &str| -> Vec<f64> {
        input
            .runs
            .iter()
            .filter(|r| r.point.method.method_name() == m)
            .filter_map(|r| metric_at(r, "spectral_rank", top))
            .collect()
    };
    let (f, l) = (vals("full"), vals("lora"));
    match (summarize(&f), summarize(&l)) {
        (Some(sf), Some(sl)) => Finding {
            number: 4,
            claim: "Full fine-tuning's weight change is high rank; LoRA's is at most r".into(),
            verdict: if sf.mean > sl.mean {
                Verdict::Supported
            } else {
                Verdict::NotSupported
            },
            evidence: format!(
                "mean rank for 90% of the variance: full {:.1}, LoRA {:.1}{}",
                sf.mean,
                sl.mean,
                summarize(
                    &input
                        .runs
                        .iter()
                        .filter(|r| r.point.method.method_name() == "full")
                        .filter_map(|r| metric_at(r, "spectral_rank_random", top))
                        .collect::<Vec<_>>()
                )
                .map(|s| format!(", a Gaussian matrix of the same shapes {:.1}", s.mean))
                .unwrap_or_default()
            ),
        },
        _ => nef(
            4,
            "Full fine-tuning's weight change is high rank",
            "no run measured spectral_rank",
        ),
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
            row.extend(
                metrics
                    .iter()
                    .map(|m| fmt_summary(ms.get(*m).and_then(|v| summarize(v)))),
            );
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
