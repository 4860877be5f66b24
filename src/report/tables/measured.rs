//! Tables 7 and 8: metrics measured beside learning and forgetting (the spectral rank and
//! intruder dimensions of the weight change, generation diversity), per configuration.

use std::collections::BTreeMap;

use crate::report::grid::{fmt_metric, fmt_summary, metric_at, proportion_items, Keys};
use crate::report::{ReportInput, TableData};
use crate::spec::values::format_tokens;

/// The values of `metrics` at budget `top`, per configuration over every learning rate.
pub fn measured(
    input: &ReportInput,
    key: &str,
    title: &str,
    metrics: &[&String],
    top: u64,
) -> TableData {
    let mut by: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let keys = Keys::new(input);
    for r in &input.runs {
        let g = keys.of(r).group();
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
            row.extend(metrics.iter().map(|m| match ms.get(*m) {
                Some(v) => fmt_metric(v, proportion_items(input, m)),
                None => fmt_summary(None),
            }));
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
