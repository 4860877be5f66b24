//! Table 5: data scaling of each method's best series, with a fit metric = a + b ln(tokens);
//! and its plot's lines (the means and the fits).

use super::Ctx;
use crate::report::grid::SeriesKey;
use crate::report::stats::{log_fit, summarize, Summary};
use crate::report::value::Spread;
use crate::report::{Series, TableData, Value};
use crate::spec::values::format_tokens;

/// The data-scaling table and its plot's lines.
pub fn data_scaling(ctx: &Ctx<'_>) -> (TableData, Vec<Series>) {
    let grid = ctx.grid;
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for m in &ctx.methods {
        let Some((k, _)) = grid.best_in(&|k: &SeriesKey| &k.method == m, ctx.top) else {
            continue;
        };
        let pts: Vec<(f64, Summary)> = grid
            .budgets
            .iter()
            .filter_map(|&b| {
                grid.cells
                    .get(&(k.clone(), b))
                    .and_then(|c| summarize(&c.learn))
                    .map(|s| (b as f64, s))
            })
            .collect();
        let fit = log_fit(&pts.iter().map(|(x, s)| (*x, s.mean)).collect::<Vec<_>>());
        rows.push(vec![
            m.as_str().into(),
            k.describe().into(),
            pts.iter()
                .map(|(x, s)| format!("{}: {:.4}", format_tokens(*x as u64), s.mean))
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
            fit.map(|f| {
                let slope = Spread {
                    mean: f.b,
                    ci_low: f.b_ci95.map(|ci| f.b - ci),
                    ci_high: f.b_ci95.map(|ci| f.b + ci),
                    ..Spread::default()
                };
                match f.b_ci95 {
                    Some(ci) => Value::spread(slope, format!("{:.4} ± {:.4}", f.b, ci)),
                    None => Value::spread(slope, format!("{:.4} (2 points, no interval)", f.b)),
                }
            })
            .unwrap_or_else(|| "- (one budget)".into()),
            fit.map(|f| Value::real(f.r2, format!("{:.3}", f.r2)))
                .unwrap_or_else(Value::missing),
        ]);
        lines.push(Series {
            label: k.describe(),
            points: pts.iter().map(|(x, s)| (*x, s.mean, s.ci95)).collect(),
            dashed: false,
        });
        if let Some(f) = fit {
            let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
            lines.push(Series {
                label: format!("{m} fit"),
                points: xs.iter().map(|x| (*x, f.a + f.b * x.ln(), None)).collect(),
                dashed: true,
            });
        }
    }
    let table = TableData {
        key: "data_scaling".into(),
        title: format!(
            "Data scaling: {} = a + b ln(tokens), each method's best configuration",
            ctx.learn
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
    };
    (table, lines)
}
