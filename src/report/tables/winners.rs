//! The best configuration of each method at the largest budget, with its best seed's run and
//! the command that exports it.

use super::Ctx;
use crate::report::grid::{better, fmt_lr, fmt_metric, fmt_summary, SeriesKey};
use crate::report::stats::summarize;
use crate::report::TableData;
use crate::spec::values::format_tokens;

/// Each method's best configuration, the run to export and how.
pub fn winners(ctx: &Ctx<'_>) -> TableData {
    let (grid, top) = (ctx.grid, ctx.top);
    let mut rows = Vec::new();
    let mut commands = Vec::new();
    for method in ["full", "lora"] {
        let Some((k, c)) = grid.best_in(&|k: &SeriesKey| k.method == method, top) else {
            continue;
        };
        // The seed whose run learned most: the one to export.
        let best = (0..c.learn.len()).fold(None::<usize>, |acc, i| match acc {
            Some(a) if !better(c.learn[i], c.learn[a], grid.higher) => Some(a),
            _ => Some(i),
        });
        let Some(b) = best else { continue };
        let run = &c.ids[b];
        let hyper = match (&k.rank, &k.modules) {
            (Some(r), Some(m)) => format!("lr {}, rank {r}, modules {m}", fmt_lr(k.lr())),
            _ => format!("lr {}", fmt_lr(k.lr())),
        };
        rows.push(vec![
            method.into(),
            c.config_id.clone(),
            hyper,
            fmt_metric(&c.learn, ctx.learn_items),
            fmt_summary(summarize(&c.forget)),
            run.clone(),
        ]);
        let dir = ctx.input.dir.as_deref().unwrap_or("results/NAME");
        commands.push(format!(
            "{method}: sweep export {dir}/runs/{run} --out {run}-export"
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
            format!(
                "export the best run as a Hugging Face folder (LoRA merged): {}",
                commands.join("; ")
            )
        }),
    }
}
