//! Tables 7 and 8: metrics measured beside learning and forgetting (the spectral rank and
//! intruder dimensions of the weight change, generation diversity), per configuration.

use std::collections::BTreeMap;

use crate::report::grid::{metric_at, metric_value, proportion_items, Keys};
use crate::report::{ReportInput, TableData, Value};
use crate::spec::values::format_tokens;

/// One line per configuration of `metric` at budget `top` against the learning rate: its mean
/// over seeds with the Student-t half-width (for a plot).
pub fn lines_by_lr(input: &ReportInput, metric: &str, top: u64) -> Vec<crate::report::Series> {
    let mut by: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    let keys = Keys::new(input);
    for r in &input.runs {
        if let Some(v) = metric_at(r, metric, top) {
            let k = keys.of(r);
            by.entry(k.group())
                .or_default()
                .entry(k.lr().to_bits())
                .or_default()
                .push(v);
        }
    }
    by.into_iter()
        .map(|(g, lrs)| crate::report::Series {
            label: g,
            points: lrs
                .into_iter()
                .filter_map(|(lr, v)| {
                    let s = crate::report::stats::summarize(&v)?;
                    Some((f64::from_bits(lr), s.mean, s.ci95))
                })
                .collect(),
            dashed: false,
        })
        .collect()
}

/// The values of `metrics` at budget `top`, per configuration and learning rate, over seeds.
pub fn measured(
    input: &ReportInput,
    key: &str,
    title: &str,
    metrics: &[&String],
    top: u64,
) -> TableData {
    // (group, learning rate as ordered bits: learning rates are positive) -> metric -> values.
    let mut by: BTreeMap<(String, u64), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let keys = Keys::new(input);
    for r in &input.runs {
        let k = keys.of(r);
        for m in metrics {
            if let Some(v) = metric_at(r, m, top) {
                by.entry((k.group(), k.lr().to_bits()))
                    .or_default()
                    .entry((*m).clone())
                    .or_default()
                    .push(v);
            }
        }
    }
    let mut header = vec!["configuration".to_string(), "lr".to_string()];
    header.extend(metrics.iter().map(|m| m.to_string()));
    let rows = by
        .into_iter()
        .map(|((g, lr), ms)| {
            let mut row = vec![Value::words(g), Value::lr(f64::from_bits(lr))];
            row.extend(metrics.iter().map(|m| match ms.get(*m) {
                Some(v) => metric_value(v, proportion_items(input, m)),
                None => Value::missing(),
            }));
            row
        })
        .collect();
    TableData {
        key: key.into(),
        title: format!("{title} at {} tokens", format_tokens(top)),
        header,
        rows,
        note: Some("mean over the seeds of each configuration and learning rate".into()),
    }
}
