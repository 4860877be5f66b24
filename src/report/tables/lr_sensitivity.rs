//! Table 3: learning-rate sensitivity at the largest budget, with the runs that diverged, the
//! best and near-best learning rates and how wide that range is; and its plot's lines.

use super::Ctx;
use crate::report::grid::{first_best, metric_value, summary_value, Cell};
use crate::report::stats::summarize;
use crate::report::{Series, TableData, Value};
use crate::spec::values::format_tokens;

/// Margin that defines the near-best learning-rate range: within 2% of the best value.
pub const LR_MARGIN: f64 = 0.02;

/// The learning-rate sensitivity table and one line per configuration for its plot.
pub fn lr_sensitivity(ctx: &Ctx<'_>) -> (TableData, Vec<Series>) {
    let (grid, top) = (ctx.grid, ctx.top);
    let mean = |v: &[f64]| summarize(v).map(|s| s.mean);
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for g in &ctx.groups {
        let mut series: Vec<(f64, Cell, usize)> = grid
            .cells
            .iter()
            .filter(|((k, b), _)| *b == top && &k.group() == g)
            .map(|((k, _), c)| {
                let n = grid.diverged.get(k).copied().unwrap_or(0);
                (k.lr(), c.clone(), n)
            })
            .collect();
        // Learning rates whose runs all diverged have no cell; they still count.
        for (k, n) in &grid.diverged {
            if &k.group() == g && !series.iter().any(|s| s.0 == k.lr()) {
                series.push((k.lr(), Cell::default(), *n));
            }
        }
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        let best = first_best(
            series
                .iter()
                .filter_map(|s| mean(&s.1.learn).map(|m| (s.0, m))),
            grid.higher,
        );
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
            (Some(a), Some(b)) => {
                let decades = (b / a).log10();
                Value::real(decades, format!("{decades:.1}"))
            }
            _ => Value::missing(),
        };
        for (lr, c, nd) in &series {
            rows.push(vec![
                g.as_str().into(),
                Value::lr(*lr),
                metric_value(&c.learn, ctx.learn_items),
                summary_value(summarize(&c.forget)),
                Value::int(*nd),
                if best.is_some_and(|b| b.0 == *lr) {
                    "best".into()
                } else if near.contains(lr) {
                    "near".into()
                } else {
                    "".into()
                },
                width.clone(),
            ]);
        }
        lines.push(Series {
            label: g.clone(),
            points: series
                .iter()
                .filter_map(|s| summarize(&s.1.learn).map(|m| (s.0, m.mean, m.ci95)))
                .collect(),
            dashed: false,
        });
    }
    let table = TableData {
        key: "lr_sensitivity".into(),
        title: format!("Learning-rate sensitivity at {} tokens", format_tokens(top)),
        header: vec![
            "configuration".into(),
            "lr".into(),
            ctx.learn.to_string(),
            ctx.forget_column(),
            "diverged".into(),
            "best or near".into(),
            "near-best width (decades)".into(),
        ],
        rows,
        note: Some(format!(
            "near: within {}% of the best value; diverged: runs whose loss became NaN/inf or exceeded max_loss",
            LR_MARGIN * 100.0
        )),
    };
    (table, lines)
}
