//! Building the report from run data: pure, no I/O.

pub use super::grid::higher_is_better;
use super::grid::{is_proportion, proportion_items, Grid};
use super::stats::summarize;
use super::{Plot, Report, ReportInput, RunData, TableData};
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

/// Forgetting metrics in order of preference.
const FORGETTING_METRICS: &[&str] = &[
    "forgetting_score",
    "source_loss",
    "multiple_choice_accuracy",
];

/// Why a proportion metric has too few items to rank configurations, if it has: the binomial
/// noise of one evaluation, sqrt(p (1 - p) / n) at its mean p over trained evaluations and its
/// n items, exceeds the standard deviation of the configurations' means at the largest budget
/// (the differences it would rank are its own noise).
fn too_few_items(input: &ReportInput, metric: &str) -> Option<String> {
    let n = input.items_of(metric).filter(|_| is_proportion(metric))? as f64;
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

/// A finding's row of the findings table: its words, with its test's effect, interval and
/// p-values behind the numbers.
fn finding_row(f: &super::Finding) -> Vec<super::Value> {
    use super::value::Spread;
    use super::Value;
    vec![
        Value::count(u64::from(f.number), f.number.to_string()),
        f.claim.as_str().into(),
        f.verdict.words().into(),
        match &f.test {
            Some(t) => {
                let spread = Spread {
                    p: Some(t.p),
                    p_holm: Some(t.p_holm),
                    n: Some(t.seeds),
                    ..Spread::from(t.estimate)
                };
                Value::spread(spread, f.evidence.clone()).described()
            }
            None => Value::words(f.evidence.clone()),
        },
    ]
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

    tables.push(super::tables::overview(input));
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
            domain: input.domain.clone(),
            regime: input.regime.clone(),
            learning_metric: None,
            forgetting_metric: forgetting,
            tables,
            findings: super::findings::not_enough("no results yet"),
            cells: vec![],
            best: vec![],
            plots: vec![],
            notes,
        };
    };
    let learn_items = proportion_items(input, &learn);
    if let Some(n) = learn_items {
        notes.push(format!(
            "{learn} is a proportion of {n} items per evaluation: its cells show the wider of the Wilson 95% interval over the items of all seeds (seeds x {n}) and the Student-t interval over the seeds, within [0, 1]"
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
    let Some(&top) = grid.budgets.last() else {
        notes.push(format!("no completed run has a {learn} evaluation yet"));
        return Report {
            sweep: input.sweep.clone(),
            domain: input.domain.clone(),
            regime: input.regime.clone(),
            learning_metric: Some(learn),
            forgetting_metric: forget_name,
            tables,
            findings: super::findings::not_enough("no results yet"),
            cells: vec![],
            best: vec![],
            plots: vec![],
            notes,
        };
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v.dedup();
        v
    };
    let ctx = super::tables::Ctx {
        input,
        grid: &grid,
        learn: &learn,
        learn_items,
        forget_name: forget_name.as_deref(),
        top,
        groups: sorted(grid.cells.keys().map(|k| k.0.group()).collect()),
        methods: sorted(grid.cells.keys().map(|k| k.0.method.clone()).collect()),
    };
    tables.push(super::tables::best(&ctx));
    let (table, lr_plot) = super::tables::lr_sensitivity(&ctx);
    tables.push(table);
    tables.push(super::tables::rank_modules(&ctx));
    let (table, scaling_lines) = super::tables::data_scaling(&ctx);
    tables.push(table);
    let super::tables::Frontier {
        table,
        scatter: frontier_scatter,
        lines: frontier_lines,
        any: frontier_points,
    } = super::tables::frontier(&ctx);
    tables.push(table);
    tables.extend(super::tables::forgetting(&ctx));

    // Tables 7 and 8: spectral rank and diversity, when measured.
    let spectral: Vec<&String> = all_metrics
        .iter()
        .filter(|m| m.starts_with("spectral_rank") || m.starts_with("intruder_dimensions"))
        .collect();
    if spectral.is_empty() {
        notes.push("spectral rank: no run measured it, table left out".into());
    } else {
        tables.push(super::tables::measured(
            input,
            "spectral_rank",
            "Spectral rank of the weight change (rank for 90% of the variance) and intruder dimensions",
            &spectral,
            top,
        ));
    }
    tables.extend(super::tables::intruder_scaling(&ctx));
    let diversity: Vec<&String> = all_metrics
        .iter()
        .filter(|m| m.starts_with("diversity") || m.starts_with("distinct_"))
        .collect();
    if diversity.is_empty() {
        notes.push("diversity: no run measured it, table left out".into());
    } else {
        tables.push(super::tables::measured(
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
        rows: findings.iter().map(finding_row).collect(),
        note: Some(format!(
            "each finding's effect is signed so that > 0 is the paper's direction, with its 95% interval; supported or contradicted when its p-value, Holm-corrected over the findings tested, is below {}",
            super::findings::ALPHA
        )),
    });

    tables.insert(2, super::tables::winners(&ctx));
    tables.insert(3, super::findings::by_budget(&grid, forget_name.as_deref()));
    let mut next = 4;
    if let Some(t) = super::tables::matched(&ctx) {
        tables.insert(next, t);
        next += 1;
    }
    if let Some(t) = super::findings::lr_ratios(&grid, input.rslora) {
        tables.insert(next, t);
    }
    tables.extend(super::importance::importance(&grid));
    for t in &mut tables {
        super::grid::fold_seed_counts(t);
    }

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
    if spectral.iter().any(|m| m.as_str() == "spectral_rank") {
        plots.push(Plot {
            key: "spectral_rank".into(),
            title: format!(
                "Spectral rank of the weight change vs learning rate at {} tokens",
                format_tokens(top)
            ),
            x_label: "learning rate".into(),
            y_label: "spectral_rank".into(),
            log_x: true,
            lines: super::tables::lines_by_lr(input, "spectral_rank", top),
            scatter: vec![],
        });
    }
    if frontier_points {
        plots.push(Plot {
            key: "learning_forgetting".into(),
            title: "Learning vs forgetting".into(),
            x_label: learn.clone(),
            y_label: forget_name.clone().unwrap_or_default(),
            log_x: false,
            lines: frontier_lines,
            scatter: frontier_scatter,
        });
    }
    Report {
        sweep: input.sweep.clone(),
        domain: input.domain.clone(),
        regime: input.regime.clone(),
        learning_metric: Some(learn),
        forgetting_metric: forget_name,
        tables,
        findings,
        cells: grid.numbers(learn_items),
        best: super::tables::best_runs(&grid),
        plots,
        notes,
    }
}
