//! The best configuration of each method at the largest budget, with its best seed's run and
//! the command that exports it.

use serde::Serialize;

use super::Ctx;
use crate::report::grid::{first_best, fmt_lr, metric_value, summary_value, Cell, Grid, SeriesKey};
use crate::report::stats::summarize;
use crate::report::TableData;
use crate::spec::values::format_tokens;

/// A method's best configuration at the largest budget and the run of it that learned most.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BestRun {
    /// `full` or `lora`.
    pub method: String,
    /// The configuration's id.
    pub config_id: String,
    /// Its learning rate.
    pub learning_rate: f64,
    /// LoRA's rank and target modules.
    pub rank: Option<u64>,
    /// LoRA's target modules, as a label.
    pub modules: Option<String>,
    /// The budget it is best at, in tokens.
    pub budget_tokens: u64,
    /// The learning metric's mean over its seeds there.
    pub learning_mean: f64,
    /// Its seed whose run learned most: the one to export.
    pub run_id: String,
    /// Whether it is the best of every method's (of equal means, the lowest learning rate).
    pub overall: bool,
}

/// Each method's best configuration at the largest budget ([`Grid::best_in`]), the best of
/// them marked `overall`.
pub fn best_runs(grid: &Grid) -> Vec<BestRun> {
    best_cells(grid).into_iter().map(|(b, _)| b).collect()
}

/// [`best_runs`], each with its cell.
fn best_cells(grid: &Grid) -> Vec<(BestRun, Cell)> {
    let Some(top) = grid.top() else {
        return Vec::new();
    };
    let of = |method: &str, k: SeriesKey, c: Cell| -> Option<(BestRun, Cell)> {
        let (seed, _) = first_best(c.learn.iter().copied().enumerate(), grid.higher)?;
        let best = BestRun {
            method: method.into(),
            config_id: c.config_id.clone(),
            learning_rate: k.lr(),
            rank: k.rank,
            modules: k.modules.clone(),
            budget_tokens: top,
            learning_mean: summarize(&c.learn)?.mean,
            run_id: c.ids[seed].clone(),
            overall: false,
        };
        Some((best, c))
    };
    let mut best: Vec<(BestRun, Cell)> = ["full", "lora"]
        .into_iter()
        .filter_map(|m| {
            let (k, c) = grid.best_in(&|k: &SeriesKey| k.method == m, top)?;
            of(m, k, c)
        })
        .collect();
    if let Some((k, _)) = grid.best_in(&|_| true, top) {
        for (b, _) in &mut best {
            b.overall = b.method == k.method;
        }
    }
    best
}

/// Each method's best configuration, the run to export and how.
pub fn winners(ctx: &Ctx<'_>) -> TableData {
    let (grid, top) = (ctx.grid, ctx.top);
    let mut rows = Vec::new();
    let mut commands = Vec::new();
    for (b, c) in best_cells(grid) {
        let hyper = match (&b.rank, &b.modules) {
            (Some(r), Some(m)) => format!("lr {}, rank {r}, modules {m}", fmt_lr(b.learning_rate)),
            _ => format!("lr {}", fmt_lr(b.learning_rate)),
        };
        rows.push(vec![
            if b.overall {
                format!("{} (best)", b.method)
            } else {
                b.method.clone()
            }
            .into(),
            b.config_id.as_str().into(),
            hyper.into(),
            metric_value(&c.learn, ctx.learn_items),
            summary_value(summarize(&c.forget)),
            b.run_id.as_str().into(),
        ]);
        let dir = ctx.input.dir.as_deref().unwrap_or("results/NAME");
        commands.push(format!(
            "{}: sweep export {dir}/runs/{} --out {}-export",
            b.method, b.run_id, b.run_id
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
            ctx.forget_column(),
            "best seed's run".into(),
        ],
        rows,
        note: (!commands.is_empty()).then(|| {
            let dir = ctx.input.dir.as_deref().unwrap_or("results/NAME");
            format!(
                "export the best run as a Hugging Face folder (LoRA merged): {}; or the best of both: sweep export {dir} --best --out best-export",
                commands.join("; ")
            )
        }),
    }
}
