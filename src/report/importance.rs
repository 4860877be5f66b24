//! Hyperparameter importance with conditional axes: rank and target modules exist only for LoRA,
//! so the variance of the learning metric is decomposed per method, over that method's own axes.
//! For each method at the largest budget, the total variance of its runs splits into seed noise
//! (the mean variance within a configuration) and the variance between configurations' means;
//! each axis's share is the variance of its levels' marginal means (a functional-ANOVA main
//! effect, weighted by configurations), and what the main effects leave of the between part is
//! the axes' interactions. On an unbalanced grid the marginal means mix axes: the table says so.

use std::collections::BTreeMap;

use super::grid::{fmt_lr, Grid, SeriesKey};
use super::stats::summarize;
use super::{TableData, Value};
use crate::spec::values::format_tokens;

/// An axis of the grid: its name and the level of a series on it.
type Axis = (&'static str, fn(&SeriesKey) -> String);

fn lr_level(k: &SeriesKey) -> String {
    fmt_lr(k.lr())
}
fn rank_level(k: &SeriesKey) -> String {
    format!("{:?}", k.rank)
}
fn modules_level(k: &SeriesKey) -> String {
    format!("{:?}", k.modules)
}

/// The axes, each a column: the learning rate (both methods), LoRA's rank and modules.
const AXES: [Axis; 3] = [
    ("learning rate", lr_level),
    ("rank", rank_level),
    ("modules", modules_level),
];

/// Population variance of values with weights (None when empty).
fn weighted_var(pts: &[(f64, f64)]) -> Option<f64> {
    let w: f64 = pts.iter().map(|p| p.1).sum();
    if w <= 0.0 {
        return None;
    }
    let mean = pts.iter().map(|p| p.0 * p.1).sum::<f64>() / w;
    Some(pts.iter().map(|p| p.1 * (p.0 - mean).powi(2)).sum::<f64>() / w)
}

/// A share of the variance, shown as a percentage.
fn share(x: f64) -> Value {
    Value::real(x, format!("{:.0}%", 100.0 * x))
}

/// The importance table; None when no method has two configurations.
pub fn importance(grid: &Grid) -> Option<TableData> {
    let top = grid.top()?;
    let mut rows = Vec::new();
    let mut unbalanced = false;
    for method in ["full", "lora"] {
        let cells: Vec<(&SeriesKey, f64, Option<f64>)> = grid
            .cells
            .iter()
            .filter(|((k, b), _)| *b == top && k.method == method)
            .filter_map(|((k, _), c)| {
                let s = summarize(&c.learn)?;
                Some((k, s.mean, s.sd.map(|x| x * x)))
            })
            .collect();
        if cells.len() < 2 {
            continue;
        }
        let between = weighted_var(&cells.iter().map(|c| (c.1, 1.0)).collect::<Vec<_>>())?;
        // Seed noise from the configurations with 2 seeds or more; unmeasured without any.
        let noisy: Vec<f64> = cells.iter().filter_map(|c| c.2).collect();
        let noise = (!noisy.is_empty()).then(|| noisy.iter().sum::<f64>() / noisy.len() as f64);
        let total = between + noise.unwrap_or(0.0);
        if total <= 0.0 {
            continue;
        }
        // Full fine-tuning has no rank or modules: "-" in those columns.
        let axes: &[Axis] = match method {
            "full" => &AXES[..1],
            _ => &AXES,
        };
        let mut main = 0.0;
        let mut shares = vec![Value::missing(); AXES.len()];
        let mut levels_product = 1usize;
        for (i, (_, level)) in axes.iter().enumerate() {
            let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for c in &cells {
                by.entry(level(c.0)).or_default().push(c.1);
            }
            levels_product *= by.len();
            let marginal: Vec<(f64, f64)> = by
                .values()
                .map(|v| (v.iter().sum::<f64>() / v.len() as f64, v.len() as f64))
                .collect();
            let v = weighted_var(&marginal).unwrap_or(0.0);
            main += v;
            if by.len() > 1 {
                shares[i] = share(v / total);
            }
        }
        unbalanced |= levels_product != cells.len();
        let mut row = vec![method.into(), Value::int(cells.len())];
        row.extend(shares);
        row.push(share((between - main).max(0.0) / total));
        row.push(noise.map_or_else(|| "not measured (1 seed)".into(), |n| share(n / total)));
        rows.push(row);
    }
    if rows.is_empty() {
        return None;
    }
    Some(TableData {
        key: "importance".into(),
        title: format!(
            "What moves {} at {} tokens: shares of its variance, per method",
            grid.learn,
            format_tokens(top)
        ),
        header: ["method", "configurations"]
            .into_iter()
            .chain(AXES.iter().map(|a| a.0))
            .chain(["interactions", "seed noise"])
            .map(String::from)
            .collect(),
        rows,
        note: Some(format!(
            "per method, so that LoRA's rank and modules are axes only where they exist; each axis's main effect = variance of its marginal means, seed noise = mean variance within a configuration; '-': not an axis of that method, or one level only; tables/importance.csv and report.json hold the shares as fractions of 1{}",
            if unbalanced {
                "; the grid is not a full cross of its axes, so marginal means mix axes and the split between main effects and interactions is approximate"
            } else {
                ""
            }
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_variance_by_hand() {
        // Values 1 and 3 with weights 1 and 3: mean 2.5, variance (2.25 + 3 x 0.25) / 4 = 0.75.
        assert!((weighted_var(&[(1.0, 1.0), (3.0, 3.0)]).unwrap() - 0.75).abs() < 1e-12);
        assert!(weighted_var(&[]).is_none());
    }
}
