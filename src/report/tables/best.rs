//! Table 2: the best learning rate of each configuration (method and LoRA group) at each budget.

use super::Ctx;
use crate::report::grid::{metric_value, summary_value, SeriesKey};
use crate::report::stats::summarize;
use crate::report::{TableData, Value};

/// The best learning rate per configuration at each budget.
pub fn best(ctx: &Ctx<'_>) -> TableData {
    let mut rows = Vec::new();
    for &b in &ctx.grid.budgets {
        for g in &ctx.groups {
            if let Some((k, c)) = ctx.grid.best_in(&|k: &SeriesKey| &k.group() == g, b) {
                rows.push(vec![
                    Value::tokens(b),
                    g.as_str().into(),
                    Value::lr(k.lr()),
                    metric_value(&c.learn, ctx.learn_items),
                    summary_value(summarize(&c.forget)),
                ]);
            }
        }
    }
    TableData {
        key: "best".into(),
        title: format!(
            "Best learning rate per configuration at each budget ({}, {})",
            ctx.learn,
            if ctx.grid.higher {
                "higher is better"
            } else {
                "lower is better"
            }
        ),
        header: vec![
            "budget".into(),
            "configuration".into(),
            "best lr".into(),
            ctx.learn.to_string(),
            ctx.forget_column(),
        ],
        rows,
        note: None,
    }
}
