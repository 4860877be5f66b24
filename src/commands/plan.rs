//! `sweep plan`: expand a spec, show runs grouped with their cost, and write plan.jsonl.

use std::collections::BTreeMap;
use std::io::Write;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;

use super::{load_plan, previous_run_ids, sweep_dir};
use crate::cli::{GlobalArgs, PlanArgs};
use crate::plan::cost::{cost, flops_per_token, Cost, DEFAULT_TFLOPS};
use crate::plan::diff::{diff, PlanDiff};
use crate::plan::memory::{estimate, Memory};
use crate::plan::{MethodConfig, Plan, Point};
use crate::spec::values::{format_tokens, module_set_label};

/// One row of the grouped view: runs that share method, rank and module set.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// `full` or `lora`.
    pub method: String,
    /// LoRA rank.
    pub rank: Option<u64>,
    /// LoRA module set label.
    pub target_modules: Option<String>,
    /// Learning rates in the group, ascending.
    pub learning_rates: Vec<f64>,
    /// Token budgets trained to, ascending.
    pub token_budgets: Vec<u64>,
    /// Every budget the group is evaluated at, ascending: its budgets and, in checkpoint mode,
    /// the smaller budgets each run is evaluated at on its way to the largest.
    pub evaluated_at: Vec<u64>,
    /// Cost of the group.
    pub cost: Cost,
    /// Memory of one rank of a run of the group (None when the model shape is unknown).
    pub memory: Option<Memory>,
}

/// Group key of a point.
fn group_key(p: &Point) -> (u8, u64, String) {
    match &p.method {
        MethodConfig::Full => (0, 0, String::new()),
        MethodConfig::Lora {
            rank,
            target_modules,
            ..
        } => (1, *rank, module_set_label(target_modules)),
    }
}

/// The grouped view of a plan: pure, for the table and the JSON output. One pass over the runs.
pub fn groups(plan: &Plan, tflops: f64) -> Vec<Group> {
    let mut runs_per_point = vec![0u64; plan.points.len()];
    for r in &plan.runs {
        runs_per_point[r.point] += 1;
    }
    let seq = plan.shared.training.seq_len;
    let mut keys: BTreeMap<(u8, u64, String), Group> = BTreeMap::new();
    for (p, &n) in plan.points.iter().zip(&runs_per_point) {
        let k = group_key(p);
        let g = keys.entry(k.clone()).or_insert_with(|| Group {
            method: p.method.method_name().to_string(),
            rank: (k.0 == 1).then_some(k.1),
            target_modules: (k.0 == 1).then(|| k.2.clone()),
            learning_rates: Vec::new(),
            token_budgets: Vec::new(),
            evaluated_at: Vec::new(),
            cost: Cost {
                tflops,
                flops: plan.shape.as_ref().map(|_| 0.0),
                ..Cost::default()
            },
            memory: plan
                .shape
                .as_ref()
                .map(|s| estimate(s, &p.method, &plan.shared.training, true)),
        });
        g.learning_rates.push(p.learning_rate);
        g.token_budgets.push(p.token_budget);
        g.evaluated_at.push(p.token_budget);
        g.evaluated_at.extend(&p.eval_at);
        g.cost.configs += 1;
        g.cost.runs += n;
        let trained = plan.shared.training.trained_tokens(p.token_budget);
        g.cost.tokens += n * trained;
        if let (Some(f), Some(shape)) = (g.cost.flops.as_mut(), plan.shape.as_ref()) {
            *f += n as f64 * trained as f64 * flops_per_token(shape, p, seq);
        }
    }
    keys.into_values()
        .map(|mut g| {
            g.learning_rates.sort_by(f64::total_cmp);
            g.learning_rates.dedup();
            g.token_budgets.sort_unstable();
            g.token_budgets.dedup();
            g.evaluated_at.sort_unstable();
            g.evaluated_at.dedup();
            g.cost.gpu_hours = g.cost.flops.map(|f| f / (tflops * 1e12) / 3600.0);
            g
        })
        .collect()
}

#[derive(Serialize)]
struct PlanJson<'a> {
    sweep: &'a str,
    /// The process overhead that each group's memory total adds to its parts (bytes).
    process_bytes: f64,
    description: &'a str,
    seeds: usize,
    total: Cost,
    groups: Vec<Group>,
    diff: Option<DiffCounts>,
    plan_file: Option<String>,
}

#[derive(Serialize)]
struct DiffCounts {
    new: usize,
    unchanged: usize,
    gone: usize,
    gone_ids: Vec<String>,
}

/// Run `sweep plan`.
pub fn run(g: &GlobalArgs, args: &PlanArgs) -> anyhow::Result<()> {
    let (src, plan) = load_plan(&args.spec, args.force)?;
    let tflops = args.tflops.unwrap_or(DEFAULT_TFLOPS);
    if !(tflops.is_finite() && tflops > 0.0) {
        return Err(super::UsageError(format!(
            "--tflops {tflops}: give the achieved TFLOP/s per GPU, a number > 0"
        ))
        .into());
    }
    let dir = sweep_dir(g, &plan.name);
    if !args.dry_run {
        super::guard_replan(&dir, &plan, args.force)?;
    }
    let plan_file = dir.join("plan.jsonl");
    let previous = previous_run_ids(&plan_file)?;
    let change = previous.as_ref().map(|prev| {
        diff(
            prev.iter().map(String::as_str),
            plan.runs.iter().map(|r| r.id.as_str()),
        )
    });
    if !args.dry_run {
        super::target::write_plan_files(&dir, &plan, &src)?;
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    if args.csv {
        write_csv(&plan, &mut out)?;
    } else if g.json {
        let j = PlanJson {
            sweep: &plan.name,
            process_bytes: crate::plan::memory::PROCESS_BYTES,
            description: &plan.description,
            seeds: plan.runs.len() / plan.points.len().max(1),
            total: cost(&plan, tflops, |_| true),
            groups: groups(&plan, tflops),
            diff: change.as_ref().map(|d| DiffCounts {
                new: d.new.len(),
                unchanged: d.unchanged.len(),
                gone: d.gone.len(),
                gone_ids: d.gone.clone(),
            }),
            plan_file: (!args.dry_run).then(|| plan_file.display().to_string()),
        };
        serde_json::to_writer_pretty(&mut out, &j)?;
        writeln!(out)?;
    } else if !g.quiet {
        write!(
            out,
            "{}",
            render_text(&plan, tflops, change.as_ref(), args.runs)
        )?;
        if !args.dry_run {
            writeln!(out, "wrote {}", plan_file.display())?;
        }
    }
    Ok(())
}

fn fmt_lr(v: f64) -> String {
    format!("{v:.0e}").replace("e-", "e-")
}

/// The memory of one rank per group (GB), or nothing when the shape is unknown.
fn memory_table(plan: &Plan, tflops: f64) -> String {
    let groups: Vec<Group> = groups(plan, tflops)
        .into_iter()
        .filter(|g| g.memory.is_some())
        .collect();
    if groups.is_empty() {
        return String::new();
    }
    let t = &plan.shared.training;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "memory per rank (GB)",
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "total",
    ]);
    let gb = |b: f64| format!("{:.2}", b / 1e9);
    for g in &groups {
        let m = g.memory.unwrap_or_default();
        let name = match (&g.rank, &g.target_modules) {
            (Some(r), Some(mods)) => format!("{} r{r} {mods}", g.method),
            _ => g.method.clone(),
        };
        table.add_row(vec![
            name,
            gb(m.weights),
            gb(m.gradients),
            gb(m.optimizer),
            gb(m.activations),
            gb(m.total()),
        ]);
    }
    format!(
        "{table}\nmemory: micro-batch {} x {} tokens, {}{}{}, f32 master weights; total includes {:.2} GB of process overhead (an estimate; scripts/bench-memory compares it with measured peaks)\n",
        t.micro_batch_size,
        t.seq_len,
        match t.precision {
            crate::spec::Precision::F32 => "f32 compute",
            _ => "bf16 compute (on a GPU)",
        },
        if t.activation_checkpointing { ", activation checkpointing" } else { "" },
        if t.shard_optimizer && t.ranks() > 1 {
            format!(
                ", optimizer state{} sharded over {} ranks",
                if t.shard_gradients { " and gradients" } else { "" },
                t.ranks()
            )
        } else {
            String::new()
        },
        crate::plan::memory::PROCESS_BYTES / 1e9
    )
}

/// Hours as a wall time: seconds, minutes or hours.
fn fmt_wall(h: f64) -> String {
    match h * 3600.0 {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        _ => format!("{h:.1} h"),
    }
}

/// GPU time in the unit that reads best: `<1 s`, `40 s`, `12 min`, `3.5 h`, `1200 h`.
fn fmt_gpu_time(h: Option<f64>) -> String {
    match h {
        None => "?".into(),
        Some(h) if h * 3600.0 < 1.0 => "<1 s".into(),
        Some(h) if h < 100.0 => fmt_wall(h),
        Some(h) => format!("{h:.0} h"),
    }
}

fn fmt_flops(f: Option<f64>) -> String {
    f.map(|f| format!("{f:.2e}")).unwrap_or_else(|| "?".into())
}

/// The human view of a plan: a table of groups, the totals and what changed since the last plan.
pub fn render_text(plan: &Plan, tflops: f64, change: Option<&PlanDiff>, list_runs: bool) -> String {
    let mut s = String::new();
    let total = cost(plan, tflops, |_| true);
    let seeds = plan.runs.len() / plan.points.len().max(1);
    s.push_str(&format!(
        "sweep {}: {} runs ({} configurations x {} seed{})\n",
        plan.name,
        total.runs,
        total.configs,
        seeds,
        if seeds == 1 { "" } else { "s" }
    ));
    if !plan.description.is_empty() {
        s.push_str(&format!("{}\n", plan.description));
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "method",
        "rank",
        "modules",
        "learning rates",
        "budgets",
        "runs",
        "tokens",
        "FLOPs",
        "GPU time",
    ]);
    for gr in groups(plan, tflops) {
        t.add_row(vec![
            gr.method.clone(),
            gr.rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            gr.target_modules.clone().unwrap_or_else(|| "-".into()),
            gr.learning_rates
                .iter()
                .map(|&v| fmt_lr(v))
                .collect::<Vec<_>>()
                .join(" "),
            gr.evaluated_at
                .iter()
                .map(|&b| plan.budget_label(b))
                .collect::<Vec<_>>()
                .join(" "),
            gr.cost.runs.to_string(),
            format_tokens(gr.cost.tokens),
            fmt_flops(gr.cost.flops),
            fmt_gpu_time(gr.cost.gpu_hours),
        ]);
    }
    t.add_row(vec![
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        total.runs.to_string(),
        format_tokens(total.tokens),
        fmt_flops(total.flops),
        fmt_gpu_time(total.gpu_hours),
    ]);
    s.push_str(&format!("{t}\n"));
    s.push_str(&budget_notes(plan));
    s.push_str(&memory_table(plan, tflops));
    let ranks = plan.shared.training.nodes.max(1) * plan.shared.training.ranks_per_node.max(1);
    if let (Some(h), true) = (total.gpu_hours, ranks > 1 && total.runs > 0) {
        s.push_str(&format!(
            "each run trains on {ranks} ranks (nodes x ranks_per_node), one GPU each: GPU time counts every rank; a run takes about {} of wall time\n",
            fmt_wall(h / total.runs as f64 / f64::from(ranks))
        ));
    }
    match &plan.shape {
        Some(_) => s.push_str(&format!("GPU time assumes {tflops} TFLOP/s achieved per GPU (--tflops)\n")),
        None => s.push_str("FLOPs unknown: the model's config.json cannot be read here; set model.shape (e.g. \"llama2-7b\") to estimate them\n"),
    }
    if let Some(d) = change {
        s.push_str(&format!(
            "since the last plan: {} new, {} unchanged, {} gone\n",
            d.new.len(),
            d.unchanged.len(),
            d.gone.len()
        ));
    }
    if list_runs {
        for r in &plan.runs {
            let p = &plan.points[r.point];
            s.push_str(&format!("{}  {}\n", r.id, describe(p)));
        }
    }
    s
}

/// What the budgets column means: evaluations on the way in checkpoint mode, and budgets that
/// train a little more than written because a run trains whole steps.
fn budget_notes(plan: &Plan) -> String {
    let mut s = String::new();
    if plan
        .points
        .iter()
        .any(|p| p.eval_at.iter().any(|&b| b < p.token_budget))
    {
        s.push_str("budgets: checkpoint mode (grid.budget_mode): each run trains to its group's largest budget and is evaluated at every budget on the way; tokens and FLOPs count the largest\n");
    }
    let t = &plan.shared.training;
    let mut rounded: Vec<u64> = plan
        .points
        .iter()
        .flat_map(|p| std::iter::once(p.token_budget).chain(p.eval_at.iter().copied()))
        .filter(|&b| t.trained_tokens(b) != b)
        .collect();
    rounded.sort_unstable();
    rounded.dedup();
    if let Some(&b) = rounded.first() {
        s.push_str(&format!(
            "budgets round up to whole steps of {} tokens (batch_size x seq_len): {} trains {} steps, {} tokens{}\n",
            t.tokens_per_step(),
            plan.budget_label(b),
            t.trained_tokens(b) / t.tokens_per_step().max(1),
            t.trained_tokens(b),
            if rounded.len() > 1 { ", and so on" } else { "" }
        ));
    }
    s
}

/// A one-line description of a point: `lora r16 all lr=2e-4 budget=1M`.
pub fn describe(p: &Point) -> String {
    let m = match &p.method {
        MethodConfig::Full => "full".to_string(),
        MethodConfig::Lora {
            rank,
            alpha,
            target_modules,
            dropout,
        } => {
            let mut m = format!("lora r{rank} a{alpha} {}", module_set_label(target_modules));
            if *dropout > 0.0 {
                m.push_str(&format!(" drop{dropout}"));
            }
            m
        }
    };
    format!(
        "{m} lr={} budget={}",
        fmt_lr(p.learning_rate),
        format_tokens(p.token_budget)
    )
}

fn write_csv(plan: &Plan, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "run_id",
        "config_id",
        "seed",
        "method",
        "learning_rate",
        "rank",
        "alpha",
        "target_modules",
        "lora_dropout",
        "token_budget",
        "eval_at",
        "train_flops",
    ])?;
    for r in &plan.runs {
        let p = &plan.points[r.point];
        let ([rank, alpha, dropout], modules) = p.method.lora_texts();
        let modules = if modules.is_empty() {
            String::new()
        } else {
            module_set_label(modules)
        };
        let flops = plan
            .shape
            .as_ref()
            .map(|s| {
                format!(
                    "{:.4e}",
                    flops_per_token(s, p, plan.shared.training.seq_len)
                        * plan.shared.training.trained_tokens(p.token_budget) as f64
                )
            })
            .unwrap_or_default();
        w.write_record([
            r.id.clone(),
            r.config_id.clone(),
            r.seed.to_string(),
            p.method.method_name().to_string(),
            p.learning_rate.to_string(),
            rank,
            alpha,
            modules,
            dropout,
            p.token_budget.to_string(),
            p.eval_at
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            flops,
        ])?;
    }
    w.flush()?;
    Ok(())
}
