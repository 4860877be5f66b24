//! Post-hoc intruder scaling: each configuration's best learning rate at the largest budget,
//! as trained and with its intruder dimensions' singular values scaled by each lambda the runs
//! measured (`evaluation.intruder_scaling`), as extra learning-forgetting points of the same
//! runs, with no retraining.

use super::Ctx;
use crate::report::grid::{metric_at, summary_value, Grid, SeriesKey};
use crate::report::stats::summarize;
use crate::report::{TableData, Value};
use crate::spec::values::format_tokens;

/// The lambdas the runs measured, from their metrics' names (`intruders_x<lambda>_<loss>`).
fn lambdas(ctx: &Ctx<'_>) -> Vec<f64> {
    let mut out: Vec<f64> = ctx
        .input
        .runs
        .iter()
        .flat_map(|r| r.evals.iter().flat_map(|e| e.metrics.keys()))
        .filter_map(|m| {
            m.strip_prefix("intruders_x")?
                .split_once('_')?
                .0
                .parse()
                .ok()
        })
        .collect();
    out.sort_by(f64::total_cmp);
    out.dedup();
    out
}

/// The table, when the runs measured intruder scaling. It reads the losses scaling measures
/// (target_loss, and source_loss's rise over the base model's) whatever metrics the rest of the
/// report chose, each configuration at its best learning rate by target_loss.
pub fn intruder_scaling(ctx: &Ctx<'_>) -> Option<TableData> {
    let lambdas = lambdas(ctx);
    if lambdas.is_empty() {
        return None;
    }
    let grid = Grid::new(ctx.input, "target_loss", Some("source_loss"));
    let top = grid.top()?;
    let groups: std::collections::BTreeSet<String> =
        grid.cells.keys().map(|k| k.0.group()).collect();
    let mut rows = Vec::new();
    for g in &groups {
        let Some((k, c)) = grid.best_in(&|k: &SeriesKey| &k.group() == g, top) else {
            continue;
        };
        let runs: Vec<_> = ctx
            .input
            .runs
            .iter()
            .filter(|r| c.ids.contains(&r.id))
            .collect();
        rows.push(vec![
            g.as_str().into(),
            Value::lr(k.lr()),
            Value::real(1.0, "1 (as trained)"),
            summary_value(summarize(&c.learn)),
            summary_value(summarize(&c.forget)),
        ]);
        for &lambda in &lambdas {
            let learn: Vec<f64> = runs
                .iter()
                .filter_map(|r| metric_at(r, &format!("intruders_x{lambda}_target_loss"), top))
                .collect();
            let forget: Vec<f64> = runs
                .iter()
                .filter_map(|r| {
                    let scaled = metric_at(r, &format!("intruders_x{lambda}_source_loss"), top)?;
                    Some(scaled - metric_at(r, "source_loss", 0)?)
                })
                .collect();
            rows.push(vec![
                g.as_str().into(),
                Value::lr(k.lr()),
                Value::real(lambda, lambda.to_string()),
                summary_value(summarize(&learn)),
                summary_value(summarize(&forget)),
            ]);
        }
    }
    Some(TableData {
        key: "intruder_scaling".into(),
        title: format!(
            "Post-hoc intruder scaling at {} tokens (each configuration's best learning rate)",
            format_tokens(top)
        ),
        header: vec![
            "configuration".into(),
            "lr".into(),
            "intruders x".into(),
            "target_loss".into(),
            "source_loss_increase".into(),
        ],
        rows,
        note: Some("the same runs with the singular values of each tuned matrix's intruder dimensions multiplied by the factor (0 removes them), no retraining; '-': a run that did not measure that factor".into()),
    })
}
