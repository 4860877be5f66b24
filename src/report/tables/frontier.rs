//! Table 6: learning against forgetting for every configuration and budget, with the Pareto
//! frontier; and the points and the frontier line of its plot.

use super::Ctx;
use crate::report::stats::{pareto_front, summarize};
use crate::report::{Series, TableData, Value};

/// The learning-forgetting table and its plot's parts.
pub struct Frontier {
    /// The table.
    pub table: TableData,
    /// Each configuration's points (learning, forgetting, forgetting's 95% half-width over
    /// seeds), for the plot.
    pub scatter: Vec<Series>,
    /// Each method's own frontier, by learning (dashed lines).
    pub lines: Vec<Series>,
    /// Whether there are points at all (forgetting measured).
    pub any: bool,
}

/// Every configuration and budget as (learning, forgetting), and which lie on the frontier.
pub fn frontier(ctx: &Ctx<'_>) -> Frontier {
    let grid = ctx.grid;
    let mean = |v: &[f64]| summarize(v).map(|s| s.mean);
    let mut pts = Vec::new();
    let mut labels = Vec::new();
    if grid.forgetting.is_some() {
        for ((k, b), c) in &grid.cells {
            if let (Some(l), Some(f)) = (mean(&c.learn), summarize(&c.forget)) {
                // The frontier maximises learning: flip losses so that larger is better.
                pts.push((if grid.higher { l } else { -l }, f.mean));
                labels.push((k.clone(), *b, l, f.mean, f.ci95));
            }
        }
    }
    let front = pareto_front(&pts);
    let mut rows = Vec::new();
    for (i, (k, b, l, f, _)) in labels.iter().enumerate() {
        rows.push(vec![
            k.describe().into(),
            Value::tokens(*b),
            Value::real(*l, format!("{l:.4}")),
            Value::real(*f, format!("{f:.4}")),
            if front.contains(&i) { "frontier" } else { "" }.into(),
        ]);
    }
    let on_front = |m: &str| front.iter().filter(|&&i| labels[i].0.method == m).count();
    let table = TableData {
        key: "learning_forgetting".into(),
        title: "Learning vs forgetting: every configuration and budget".into(),
        header: vec![
            "configuration".into(),
            "budget".into(),
            ctx.learn.to_string(),
            ctx.forget_column(),
            "on frontier".into(),
        ],
        rows,
        note: if grid.forgetting.is_none() {
            Some("no run measured a source-domain metric (source_loss or multiple_choice): no forgetting, no frontier".into())
        } else {
            Some(format!(
                "frontier: no other point learns more and forgets less; on it: {} full, {} lora",
                on_front("full"),
                on_front("lora")
            ))
        },
    };
    // One colour per configuration (each LoRA rank and module set apart, and full).
    let mut scatter: Vec<Series> = ctx
        .groups
        .iter()
        .map(|g| Series {
            label: g.clone(),
            points: labels
                .iter()
                .filter(|x| &x.0.group() == g)
                .map(|x| (x.2, x.3, x.4))
                .collect(),
            dashed: false,
        })
        .collect();
    scatter.retain(|s| !s.points.is_empty());
    // Each method's frontier among its own points.
    let lines = ctx
        .methods
        .iter()
        .filter_map(|m| {
            let mine: Vec<usize> = (0..labels.len())
                .filter(|&i| &labels[i].0.method == m)
                .collect();
            let own = pareto_front(&mine.iter().map(|&i| pts[i]).collect::<Vec<_>>());
            let mut line: Vec<(f64, f64, Option<f64>)> = own
                .iter()
                .map(|&j| (labels[mine[j]].2, labels[mine[j]].3, None))
                .collect();
            line.sort_by(|a, b| a.0.total_cmp(&b.0));
            (!line.is_empty()).then(|| Series {
                label: format!("{m} frontier"),
                points: line,
                dashed: true,
            })
        })
        .collect();
    Frontier {
        table,
        scatter,
        lines,
        any: !labels.is_empty(),
    }
}
