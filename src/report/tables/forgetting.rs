//! Forgetting by every source-domain measure the runs took, side by side: the source-domain
//! loss's rise, the paper's forgetting score's fall (the mean of HellaSwag's and ARC-Challenge's
//! acc_norm and WinoGrande's acc) and each benchmark's own, each configuration at its best
//! learning rate at the largest budget. The findings use one of them ([`Ctx::forget_name`]);
//! this table shows whether the others agree.

use super::Ctx;
use crate::report::grid::{forgetting_at, summary_value, SeriesKey};
use crate::report::stats::summarize;
use crate::report::{TableData, Value};

/// The source-domain measures, in the order shown: the loss, the forgetting score, then each
/// benchmark's accuracy the score takes and the pooled multiple-choice accuracy.
const MEASURES: &[&str] = &[
    "source_loss",
    "forgetting_score",
    "hellaswag_acc_norm",
    "arc_challenge_acc_norm",
    "winogrande_acc",
    "multiple_choice_accuracy",
];

/// The table, when the runs took two source-domain measures or more.
pub fn forgetting(ctx: &Ctx<'_>) -> Option<TableData> {
    let measured: Vec<&str> = MEASURES
        .iter()
        .copied()
        .filter(|m| {
            ctx.input
                .runs
                .iter()
                .any(|r| r.evals.iter().any(|e| e.metrics.contains_key(*m)))
        })
        .collect();
    if measured.len() < 2 {
        return None;
    }
    let mut rows = Vec::new();
    for g in &ctx.groups {
        let Some((k, c)) = ctx.grid.best_in(&|k: &SeriesKey| &k.group() == g, ctx.top) else {
            continue;
        };
        let runs: Vec<_> = ctx
            .input
            .runs
            .iter()
            .filter(|r| c.ids.contains(&r.id))
            .collect();
        let mut row = vec![Value::words(g.as_str()), Value::lr(k.lr())];
        for m in &measured {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| forgetting_at(r, m, ctx.top))
                .collect();
            row.push(summary_value(summarize(&values)));
        }
        rows.push(row);
    }
    let mut header = vec!["configuration".to_string(), "best lr".to_string()];
    header.extend(measured.iter().map(|m| {
        if crate::report::grid::higher_is_better(m) {
            format!("{m}_drop")
        } else {
            format!("{m}_increase")
        }
    }));
    Some(TableData {
        key: "forgetting_measures".into(),
        title: format!(
            "Forgetting by each source-domain measure at {} tokens (each configuration's best learning rate by {})",
            crate::spec::values::format_tokens(ctx.top),
            ctx.learn
        ),
        header,
        rows,
        note: Some(format!(
            "each measure's change from the base model, over the seeds of the configuration (> 0: forgot); forgetting_score is the paper's: the mean of HellaSwag's and ARC-Challenge's acc_norm and WinoGrande's acc; the findings use {}",
            ctx.forget_name.unwrap_or("none")
        )),
    })
}
