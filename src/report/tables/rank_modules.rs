//! Table 4: rank and target modules, each at its best learning rate, with its capacity:
//! trainable parameters against the tokens it trained on.

use std::collections::BTreeMap;

use super::Ctx;
use crate::report::grid::{metric_value, summary_value, SeriesKey};
use crate::report::stats::summarize;
use crate::report::{TableData, Value};
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
                }
                .into(),
                k.rank
                    .map(|r| Value::count(r, r.to_string()))
                    .unwrap_or_else(Value::missing),
                k.modules
                    .as_deref()
                    .map(Value::words)
                    .unwrap_or_else(Value::missing),
                Value::lr(k.lr()),
                metric_value(&c.learn, ctx.learn_items),
                summary_value(summarize(&c.forget)),
                p.map(|p| Value::count(p as u64, format_tokens(p as u64)))
                    .unwrap_or_else(Value::missing),
                p.map(|p| {
                    let per = p as f64 / top as f64;
                    Value::real(per, format!("{per:.3}"))
                })
                .unwrap_or_else(Value::missing),
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
