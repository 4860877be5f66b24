//! Table 4: rank and target modules, each at its best learning rate, with its capacity:
//! trainable parameters against the tokens it trained on.

use std::collections::BTreeMap;

use super::Ctx;
use crate::report::grid::{fmt_lr, fmt_metric, fmt_summary, SeriesKey};
use crate::report::stats::summarize;
use crate::report::TableData;
use crate::spec::values::format_tokens;

/// Each configuration at its best learning rate at the largest budget, with its capacity.
pub fn rank_modules(ctx: &Ctx<'_>) -> TableData {
    let top = ctx.top;
    let params: BTreeMap<&str, i64> = ctx
        .input
        .runs
        .iter()
        .filter_map(|r| r.trainable_params.map(|p| (r.config_id.as_str(), p)))
        .collect();
    let mut rows = Vec::new();
    for g in &ctx.groups {
        if let Some((k, c)) = ctx.grid.best_in(&|k: &SeriesKey| &k.group() == g, top) {
            let p = params.get(c.config_id.as_str()).copied();
            rows.push(vec![
                match k.variant() {
                    Some(v) => format!("{} {v}", k.method),
                    None => k.method.clone(),
                },
                k.rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                k.modules.clone().unwrap_or_else(|| "-".into()),
                fmt_lr(k.lr()),
                fmt_metric(&c.learn, ctx.learn_items),
                fmt_summary(summarize(&c.forget)),
                p.map(|p| format_tokens(p as u64))
                    .unwrap_or_else(|| "-".into()),
                p.map(|p| format!("{:.3}", p as f64 / top as f64))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    TableData {
        key: "rank_modules".into(),
        title: format!(
            "Rank and target modules at their best learning rate ({} tokens)",
            format_tokens(top)
        ),
        header: vec![
            "method".into(),
            "rank".into(),
            "modules".into(),
            "lr".into(),
            ctx.learn.to_string(),
            ctx.forget_column(),
            "trainable params".into(),
            "params per token".into(),
        ],
        rows,
        note: Some("capacity: LoRA works about as well as full fine-tuning while its trainable parameters exceed what the data must teach it (Thinking Machines, 2025); params per token = trainable parameters / tokens trained".into()),
    }
}
