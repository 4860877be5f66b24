//! The planner: expands a [`Spec`] into runs with stable ids. Pure: no I/O; the caller resolves
//! the model's shape (for rank checks and cost) and reads any previous plan (for the diff).

pub mod cost;
pub mod diff;
pub mod memory;
pub mod run;

use std::collections::HashSet;

use crate::model::config::{LlamaConfig, Module};
use crate::spec::error::{PathSeg, Problem};
use crate::spec::values::{Alpha, LrAxis, ModuleSetSpec, OneOrMany, TokenAmount, TokenCount};
use crate::spec::{BudgetMode, Method, MethodGrid, Optimizer, PointMatch, Spec};
pub use run::{MethodConfig, ModelSource, Point, RunFile, SharedConfig, TrainingConfig};

/// Above this many runs `sweep plan` refuses without `--force`.
pub const MAX_RUNS_WITHOUT_FORCE: u64 = 10_000_000;

/// One run of a plan: a point and a seed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// Run id.
    pub id: String,
    /// Config id (shared by seeds).
    pub config_id: String,
    /// Seed.
    pub seed: u64,
    /// Index into [`Plan::points`].
    pub point: usize,
}

/// An expanded sweep.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Sweep name.
    pub name: String,
    /// Description from the spec.
    pub description: String,
    /// What every run shares.
    pub shared: SharedConfig,
    /// Distinct configurations, in grid order.
    pub points: Vec<Point>,
    /// Config id of each point.
    pub config_ids: Vec<String>,
    /// Runs: each point times each seed.
    pub runs: Vec<PlannedRun>,
    /// The model shape used for checks and cost, when known.
    pub shape: Option<LlamaConfig>,
    /// Where the runs are logged besides their folders (not part of any id or hash).
    pub tracking: Option<crate::spec::TrackingSpec>,
    /// Each token budget and checkpoint as the spec wrote it (`0.25B`, `1ep`), by its tokens.
    pub budgets_written: std::collections::BTreeMap<u64, String>,
}

impl Plan {
    /// The whole run.json of a run.
    pub fn run_file(&self, run: &PlannedRun) -> RunFile {
        RunFile {
            schema: run::RUN_SCHEMA,
            sweep: self.name.clone(),
            id: run.id.clone(),
            config_id: run.config_id.clone(),
            seed: run.seed,
            shared: self.shared.clone(),
            point: self.points[run.point].clone(),
            tracking: self.tracking.clone(),
        }
    }

    /// Write plan.jsonl: one line per run, each a whole [`RunFile`]. The shared part is
    /// serialized once, each point once, so that a million-run plan writes in seconds.
    pub fn write_jsonl(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let inner = |v: serde_json::Result<Vec<u8>>| -> std::io::Result<Vec<u8>> {
            let mut v = v.map_err(std::io::Error::other)?;
            // Strip the braces of an object so that fields can be spliced into a line.
            v.pop();
            v.remove(0);
            Ok(v)
        };
        let shared = inner(serde_json::to_vec(&self.shared))?;
        let sweep = serde_json::to_string(&self.name).map_err(std::io::Error::other)?;
        let tracking = match &self.tracking {
            Some(t) => format!(
                ",\"tracking\":{}",
                serde_json::to_string(t).map_err(std::io::Error::other)?
            ),
            None => String::new(),
        };
        let mut point_json: Vec<Option<Vec<u8>>> = vec![None; self.points.len()];
        for r in &self.runs {
            let pj = match &mut point_json[r.point] {
                Some(v) => v,
                slot => slot.insert(inner(serde_json::to_vec(&self.points[r.point]))?),
            };
            write!(
                w,
                "{{\"schema\":{},\"sweep\":{sweep},\"id\":\"{}\",\"config_id\":\"{}\",\"seed\":{},",
                run::RUN_SCHEMA,
                r.id,
                r.config_id,
                r.seed
            )?;
            w.write_all(&shared)?;
            w.write_all(b",")?;
            w.write_all(pj)?;
            w.write_all(tracking.as_bytes())?;
            w.write_all(b"}\n")?;
        }
        Ok(())
    }
}

/// Options of the planner that are not in the spec.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// The base model's shape, when the caller could resolve it.
    pub shape: Option<LlamaConfig>,
    /// Allow grids over [`MAX_RUNS_WITHOUT_FORCE`] runs.
    pub force: bool,
}

fn key(k: &str) -> PathSeg {
    PathSeg::Key(k.to_string())
}

fn problem(path: &[&str], msg: impl Into<String>) -> Problem {
    Problem::new(path.iter().map(|k| key(k)).collect(), msg)
}

/// Expand and check a spec. The first problem found is returned, with the path of the offending
/// value so that the caller can point at it in the file.
pub fn plan(spec: &Spec, opts: &PlanOptions) -> Result<Plan, Problem> {
    let shared = resolve_shared(spec)?;
    let seeds = check_seeds(spec)?;
    let tokens_per_step = shared.training.tokens_per_step();
    let epoch_tokens = spec.data.epoch_tokens.as_ref().map(|t| t.amount());

    let subgrids = method_subgrids(spec)?;
    let mut count: u64 = 0;
    for sg in &subgrids {
        count = count.saturating_add(sg.size());
    }
    count = count.saturating_add(spec.include.len() as u64);
    let configs = match &spec.sample {
        Some(s) => count.min(s.points as u64),
        None => count,
    };
    let total = configs.saturating_mul(seeds.len() as u64);
    if total > MAX_RUNS_WITHOUT_FORCE && !opts.force {
        return Err(problem(
            &["grid"],
            format!("the grid has {total} runs, over the limit of {MAX_RUNS_WITHOUT_FORCE}: shrink it, add [sample], or pass --force"),
        ));
    }

    let mut points: Vec<Point> = Vec::new();
    for sg in &subgrids {
        sg.expand(spec, opts, tokens_per_step, epoch_tokens, &mut points)?;
    }
    if points.is_empty() && spec.include.is_empty() {
        return Err(problem(
            &["grid"],
            "the grid is empty: every method needs at least one learning rate and one token budget",
        ));
    }
    // Exclusions apply to the grid; explicit includes are added after them.
    for (i, rule) in spec.exclude.iter().enumerate() {
        let rule = ResolvedMatch::new(rule, epoch_tokens, i)?;
        points.retain(|p| !rule.matches(p));
    }
    for (i, inc) in spec.include.iter().enumerate() {
        points.push(include_point(
            spec,
            opts,
            inc,
            i,
            tokens_per_step,
            epoch_tokens,
        )?);
    }
    if points.is_empty() {
        return Err(problem(
            &["exclude"],
            "the exclude rules remove every point of the grid",
        ));
    }

    let digest = shared.digest();
    let all_ids = config_ids(&digest, &points);
    let mut seen = HashSet::with_capacity(points.len());
    let mut kept = Vec::with_capacity(points.len());
    let mut ids = Vec::with_capacity(points.len());
    for (p, id) in points.into_iter().zip(all_ids) {
        // Ids are 10 hex digits: as a number they make a cheap set key.
        if seen.insert(u64::from_str_radix(&id, 16).unwrap_or(0)) {
            kept.push(p);
            ids.push(id);
        }
    }
    let (points, config_ids) = match &spec.sample {
        Some(s) => sample(kept, ids, s.points, s.seed),
        None => (kept, ids),
    };
    let mut runs = Vec::with_capacity(points.len() * seeds.len());
    for (i, cid) in config_ids.iter().enumerate() {
        for &seed in &seeds {
            runs.push(PlannedRun {
                id: run::run_id(cid, seed),
                config_id: cid.clone(),
                seed,
                point: i,
            });
        }
    }
    Ok(Plan {
        name: spec.name.clone(),
        description: spec.description.clone(),
        shared,
        points,
        config_ids,
        runs,
        shape: opts.shape.clone(),
        tracking: check_tracking(spec)?,
        budgets_written: budgets_written(spec, epoch_tokens),
    })
}

/// Every token budget and checkpoint of a spec as written, by the tokens it stands for.
fn budgets_written(
    spec: &Spec,
    epoch_tokens: Option<TokenAmount>,
) -> std::collections::BTreeMap<u64, String> {
    let g = &spec.grid;
    let methods = g.full.iter().chain(&g.lora).flat_map(OneOrMany::to_vec);
    let mut values: Vec<TokenCount> = g.token_budget.to_vec();
    values.extend(
        methods
            .filter_map(|m| m.token_budget)
            .flat_map(|b| b.to_vec()),
    );
    values.extend(
        spec.include
            .iter()
            .filter_map(|i| i.token_budget.as_ref())
            .flat_map(OneOrMany::to_vec),
    );
    values.extend(spec.evaluation.checkpoints.iter().cloned());
    values
        .into_iter()
        .filter_map(|v| {
            let tokens = resolve_budgets(&[], std::slice::from_ref(&v), 0, epoch_tokens).ok()?[0];
            Some((tokens, v.written()))
        })
        .collect()
}

impl Plan {
    /// A budget as the spec wrote it, with its tokens where the two differ in more than
    /// spelling (`1ep (103M)`); a budget no spec value names in tokens (`48k`).
    pub fn budget_label(&self, tokens: u64) -> String {
        let short = crate::spec::values::format_tokens(tokens);
        match self.budgets_written.get(&tokens) {
            Some(w) if w.ends_with("ep") => format!("{w} ({short})"),
            Some(w) => w.clone(),
            None => short,
        }
    }
}

/// The spec's `[tracking]`, its MLflow address checked and its experiment named (the sweep's
/// name unless given).
fn check_tracking(spec: &Spec) -> Result<Option<crate::spec::TrackingSpec>, Problem> {
    let Some(t) = &spec.tracking else {
        return Ok(None);
    };
    let mut t = t.clone();
    if let Some(uri) = &t.mlflow {
        crate::spec::tracking::check_mlflow_uri(uri)
            .map_err(|m| problem(&["tracking", "mlflow"], m))?;
        if t.mlflow_experiment.is_none() {
            t.mlflow_experiment = Some(spec.name.clone());
        }
    } else if t.mlflow_experiment.is_some() {
        return Err(problem(
            &["tracking", "mlflow_experiment"],
            "names an MLflow experiment but no server: add mlflow = \"http://HOST:PORT\"",
        ));
    }
    Ok(Some(t))
}

/// Config ids of all points, hashed on every core (a million-point grid hashes in well under a
/// second). Deterministic: each id depends only on its point.
fn config_ids(digest: &[u8; 32], points: &[Point]) -> Vec<String> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if points.len() < 4096 || threads == 1 {
        return points.iter().map(|p| run::config_id(digest, p)).collect();
    }
    let chunk = points.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = points
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|p| run::config_id(digest, p))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn resolve_shared(spec: &Spec) -> Result<SharedConfig, Problem> {
    if spec.name.trim().is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || spec.name.starts_with('.')
    {
        return Err(problem(
            &["name"],
            "a sweep name is letters, digits, '-', '_' and '.', and names the results folder",
        ));
    }
    let m = &spec.model;
    let set = [m.builtin.is_some(), m.hf.is_some(), m.gguf.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    let model = match (&m.builtin, &m.hf, &m.gguf) {
        _ if set != 1 => {
            return Err(problem(&["model"], "set exactly one of builtin (a shape such as \"tiny\"), hf (a Hugging Face directory) or gguf (a file)"))
        }
        (Some(shape), _, _) => {
            if LlamaConfig::builtin(shape).is_none() {
                return Err(problem(&["model", "builtin"], format!("unknown builtin shape `{shape}` (allowed: {})", crate::model::config::BUILTIN_SHAPES.join(", "))));
            }
            ModelSource::Builtin { shape: shape.clone(), init: m.init }
        }
        (_, Some(path), _) => ModelSource::Hf { path: path.clone() },
        (_, _, Some(path)) => ModelSource::Gguf { path: path.clone() },
        _ => unreachable!("exactly one source is set"),
    };
    if let Some(shape) = &m.shape {
        if LlamaConfig::builtin(shape).is_none() {
            return Err(problem(
                &["model", "shape"],
                format!(
                    "unknown shape `{shape}` (allowed: {})",
                    crate::model::config::BUILTIN_SHAPES.join(", ")
                ),
            ));
        }
    }
    if spec.data.target.trim().is_empty() {
        return Err(problem(
            &["data", "target"],
            "name the target data: builtin:python, builtin:math or a path",
        ));
    }
    // A template's path may name a file on the cluster only: it is read when the run starts.
    if spec.data.chat_template.is_some() {
        if spec.data.regime != crate::spec::Regime::Ift {
            return Err(problem(
                &["data", "chat_template"],
                "a chat template frames instruction pairs: set data.regime = \"ift\" or leave it out",
            ));
        }
        if matches!(model, ModelSource::Builtin { .. }) {
            return Err(problem(
                &["data", "chat_template"],
                "the builtin byte-level models have no chat template: use model.hf or model.gguf, or leave it out",
            ));
        }
    }
    if spec.evaluation.apply_chat_template == Some(true) && spec.data.chat_template.is_none() {
        return Err(problem(
            &["evaluation", "apply_chat_template"],
            "evaluation prompts are framed by data.chat_template: set it (\"model\" or a Jinja file) or leave apply_chat_template out",
        ));
    }
    let t = &spec.training;
    let positive = |v: f64, name: &str, what: &str| -> Result<(), Problem> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(problem(
                &["training", name],
                format!("must be a number > 0 ({what})"),
            ))
        }
    };
    let in_unit = |v: f64, name: &str| -> Result<(), Problem> {
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(problem(&["training", name], "must be between 0 and 1"))
        }
    };
    let betas = t.betas.unwrap_or(match t.optimizer {
        Optimizer::Adamw => [0.9, 0.999],
        Optimizer::Lionw | Optimizer::DecoupledLionw => [0.9, 0.95],
    });
    for b in betas {
        if !(b.is_finite() && (0.0..1.0).contains(&b)) {
            return Err(problem(
                &["training", "betas"],
                "each beta must be in [0, 1)",
            ));
        }
    }
    positive(t.eps, "eps", "AdamW epsilon")?;
    if !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
        return Err(problem(&["training", "weight_decay"], "must be >= 0"));
    }
    in_unit(t.warmup_fraction, "warmup_fraction")?;
    in_unit(t.cooldown_fraction, "cooldown_fraction")?;
    in_unit(t.final_lr_fraction, "final_lr_fraction")?;
    if t.batch_size == 0 {
        return Err(problem(
            &["training", "batch_size"],
            "must be at least 1 sequence",
        ));
    }
    if t.seq_len < 2 {
        return Err(problem(
            &["training", "seq_len"],
            "must be at least 2 tokens",
        ));
    }
    let ranks_default = u64::from(t.nodes.max(1)) * u64::from(t.ranks_per_node.max(1));
    let micro = t
        .micro_batch_size
        .unwrap_or((t.batch_size / ranks_default).max(1));
    if micro == 0 || !t.batch_size.is_multiple_of(micro) {
        return Err(problem(
            &["training", "micro_batch_size"],
            format!(
                "must divide batch_size ({}) so that gradient accumulation reaches it exactly",
                t.batch_size
            ),
        ));
    }
    for (key, n) in [("nodes", t.nodes), ("ranks_per_node", t.ranks_per_node)] {
        if n == 0 {
            return Err(problem(&["training", key], "must be at least 1"));
        }
    }
    let ranks = u64::from(t.nodes) * u64::from(t.ranks_per_node);
    if ranks > 1 && !t.batch_size.is_multiple_of(micro * ranks) {
        let per_rank = t.batch_size / ranks;
        let fits: Vec<String> = (1..=per_rank.max(1))
            .filter(|m| t.batch_size.is_multiple_of(m * ranks))
            .map(|m| m.to_string())
            .collect();
        return Err(problem(
            &["training", "batch_size"],
            if fits.is_empty() {
                format!(
                    "{} does not divide over {ranks} ranks (nodes x ranks_per_node): give a multiple of {ranks}",
                    t.batch_size
                )
            } else {
                format!(
                    "{} must be micro_batch_size ({micro}) x {ranks} ranks x accumulation steps; with {ranks} ranks, micro_batch_size can be {}",
                    t.batch_size,
                    fits.join(", ")
                )
            },
        ));
    }
    if !(t.grad_clip.is_finite() && t.grad_clip >= 0.0) {
        return Err(problem(
            &["training", "grad_clip"],
            "must be >= 0 (0 turns clipping off)",
        ));
    }
    if let Some(l) = t.max_loss {
        positive(l, "max_loss", "a training loss bound")?;
    }
    if t.shard_gradients && !t.shard_optimizer {
        return Err(problem(
            &["training", "shard_gradients"],
            "shards the gradients of the optimizer's shards (ZeRO stage 2): set training.shard_optimizer = true too, or shard_gradients = false",
        ));
    }
    if t.log_every == 0 {
        return Err(problem(
            &["training", "log_every"],
            "must be at least 1 step",
        ));
    }
    let e = &spec.evaluation;
    if !(e.rank_threshold > 0.0 && e.rank_threshold <= 1.0) {
        return Err(problem(
            &["evaluation", "rank_threshold"],
            "must be in (0, 1]",
        ));
    }
    if !(e.temperature.is_finite() && e.temperature >= 0.0) {
        return Err(problem(&["evaluation", "temperature"], "must be >= 0"));
    }
    let training = TrainingConfig {
        optimizer: t.optimizer,
        betas,
        eps: t.eps,
        weight_decay: t.weight_decay,
        schedule: t.schedule,
        warmup_fraction: t.warmup_fraction,
        warmup_steps: t.warmup_steps,
        cooldown_fraction: t.cooldown_fraction,
        cooldown_steps: t.cooldown_steps,
        t_scale: t.t_scale,
        final_lr_fraction: t.final_lr_fraction,
        batch_size: t.batch_size,
        micro_batch_size: micro,
        seq_len: t.seq_len,
        grad_clip: t.grad_clip,
        precision: t.precision,
        rslora: t.rslora,
        freeze_embeddings_and_norms: t.freeze_embeddings_and_norms,
        max_loss: t.max_loss,
        checkpoint_every: t.checkpoint_every,
        log_every: t.log_every,
        nodes: t.nodes,
        ranks_per_node: t.ranks_per_node,
        activation_checkpointing: t.activation_checkpointing,
        shard_optimizer: t.shard_optimizer,
        shard_gradients: t.shard_gradients,
    };
    let mut evaluation = spec.evaluation.clone();
    evaluation.metrics = Some(
        evaluation
            .metrics
            .clone()
            .unwrap_or_else(|| default_metrics(&spec.data.domain)),
    );
    if let Some(lambdas) = &evaluation.intruder_scaling {
        if lambdas.is_empty() || lambdas.iter().any(|l| !(l.is_finite() && *l >= 0.0)) {
            return Err(problem(
                &["evaluation", "intruder_scaling"],
                "must be a list of factors >= 0 for the intruders' singular values (0 removes them, 1 is the run as trained), e.g. [0.0, 0.5]",
            ));
        }
        let metrics = evaluation.metrics.as_deref().unwrap_or_default();
        if !metrics.contains(&crate::spec::Metric::TargetLoss)
            && !metrics.contains(&crate::spec::Metric::SourceLoss)
        {
            return Err(problem(
                &["evaluation", "intruder_scaling"],
                "measures target_loss and source_loss again with the intruders scaled: add them to evaluation.metrics",
            ));
        }
    }
    if let Some(t) = &spec.trainer {
        crate::spec::trainer::check(&t.command)
            .map_err(|m| problem(&["trainer", "command"], &m))?;
        crate::spec::trainer::check_resume(&t.resume)
            .map_err(|m| problem(&["trainer", "resume"], &m))?;
    }
    Ok(SharedConfig {
        model,
        data: spec.data.clone(),
        training,
        evaluation,
        trainer: spec.trainer.clone(),
    })
}

/// The metrics measured when a spec names none.
pub fn default_metrics(domain: &str) -> Vec<crate::spec::Metric> {
    use crate::spec::Metric::*;
    let mut m = vec![TargetLoss, SourceLoss];
    match domain {
        "math" => m.push(MathAccuracy),
        "code" => m.push(NextLine),
        _ => {}
    }
    m.extend([SpectralRank, Diversity]);
    m
}

fn check_seeds(spec: &Spec) -> Result<Vec<u64>, Problem> {
    let seeds = spec.grid.seeds.values();
    if seeds.is_empty() {
        return Err(problem(
            &["grid", "seeds"],
            "at least one seed is needed (seeds = 1, or a list)",
        ));
    }
    let mut seen = HashSet::new();
    for (i, s) in seeds.iter().enumerate() {
        if !seen.insert(*s) {
            return Err(Problem::new(
                vec![key("grid"), key("seeds"), PathSeg::Index(i)],
                format!("seed {s} is listed twice: seeds are replicates, each once"),
            ));
        }
    }
    Ok(seeds)
}

/// One method's sub-grid, with the axes it resolved from the grid and a `[grid.METHOD]` table.
struct SubGrid {
    method: Method,
    /// Path of the table the axes came from, for messages.
    table: Vec<PathSeg>,
    lr: (Vec<PathSeg>, Vec<f64>),
    rank: (Vec<PathSeg>, Vec<u64>),
    alpha: (Vec<PathSeg>, Vec<Alpha>),
    modules: (Vec<PathSeg>, Vec<ModuleSetSpec>),
    dropout: (Vec<PathSeg>, Vec<f64>),
    budgets: (Vec<PathSeg>, Vec<TokenCount>),
}

fn method_subgrids(spec: &Spec) -> Result<Vec<SubGrid>, Problem> {
    let g = &spec.grid;
    if g.method.is_empty() {
        return Err(problem(
            &["grid", "method"],
            "list at least one method: \"full\", \"lora\"",
        ));
    }
    let mut seen = HashSet::new();
    for (i, m) in g.method.iter().enumerate() {
        if !seen.insert(*m) {
            return Err(Problem::new(
                vec![key("grid"), key("method"), PathSeg::Index(i)],
                "each method once",
            ));
        }
    }
    for (m, t) in [(Method::Full, &g.full), (Method::Lora, &g.lora)] {
        if t.is_some() && !g.method.contains(&m) {
            let name = if m == Method::Full { "full" } else { "lora" };
            return Err(problem(
                &["grid", name],
                format!("[grid.{name}] is set but grid.method does not list \"{name}\""),
            ));
        }
    }
    let mut out = Vec::new();
    for &method in &g.method {
        let (name, tables) = match method {
            Method::Full => ("full", &g.full),
            Method::Lora => ("lora", &g.lora),
        };
        let tables: Vec<(Vec<PathSeg>, MethodGrid)> = match tables {
            None => vec![(vec![key("grid")], MethodGrid::default())],
            Some(OneOrMany::One(t)) => vec![(vec![key("grid"), key(name)], t.clone())],
            Some(OneOrMany::Many(ts)) => ts
                .iter()
                .enumerate()
                .map(|(i, t)| (vec![key("grid"), key(name), PathSeg::Index(i)], t.clone()))
                .collect(),
        };
        for (table, t) in tables {
            if method == Method::Full {
                for (set, field) in [
                    (t.rank.is_some(), "rank"),
                    (t.alpha.is_some(), "alpha"),
                    (t.target_modules.is_some(), "target_modules"),
                    (t.lora_dropout.is_some(), "lora_dropout"),
                ] {
                    if set {
                        let mut p = table.clone();
                        p.push(key(field));
                        return Err(Problem::new(
                            p,
                            "applies to LoRA only: move it to [grid.lora]",
                        ));
                    }
                }
            }
            out.push(SubGrid::new(method, table, g, t)?);
        }
    }
    Ok(out)
}

fn list<T: Clone>(o: Option<OneOrMany<T>>) -> Option<Vec<T>> {
    o.map(|x| x.to_vec())
}

/// Pick the method table's axis if set, else the grid's, remembering where it came from.
fn axis<T: Clone>(
    table: &[PathSeg],
    field: &str,
    own: &Option<T>,
    grid: &Option<T>,
) -> (Vec<PathSeg>, Option<T>) {
    let mut p = if own.is_some() {
        table.to_vec()
    } else {
        vec![key("grid")]
    };
    p.push(key(field));
    (p, own.clone().or_else(|| grid.clone()))
}

impl SubGrid {
    fn new(
        method: Method,
        table: Vec<PathSeg>,
        g: &crate::spec::GridSpec,
        t: MethodGrid,
    ) -> Result<SubGrid, Problem> {
        let (lr_path, lr) = axis(&table, "learning_rate", &t.learning_rate, &g.learning_rate);
        let lr = match lr {
            Some(a) => {
                if let LrAxis::LogRange(r) = &a {
                    if r.points == 0 {
                        let mut p = lr_path.clone();
                        p.push(key("points"));
                        return Err(Problem::new(p, "a log range needs at least 1 point"));
                    }
                    for (i, v) in r.log_range.iter().enumerate() {
                        if !(v.is_finite() && *v > 0.0) {
                            let mut p = lr_path.clone();
                            p.extend([key("log_range"), PathSeg::Index(i)]);
                            return Err(Problem::new(
                                p,
                                format!("learning rate {v} must be a number > 0"),
                            ));
                        }
                    }
                }
                a.values()
            }
            None => {
                let mut p = table.clone();
                p.push(key("learning_rate"));
                return Err(Problem::new(p, "no learning rate for this method: set grid.learning_rate or learning_rate in its [grid.METHOD] table"));
            }
        };
        for (i, v) in lr.iter().enumerate() {
            if !(v.is_finite() && *v > 0.0) {
                let mut p = lr_path.clone();
                if lr.len() > 1 || matches!(g.learning_rate, Some(LrAxis::List(_))) {
                    p.push(PathSeg::Index(i));
                }
                return Err(Problem::new(
                    p,
                    format!("learning rate {v} must be a number > 0"),
                ));
            }
        }
        if lr.is_empty() {
            return Err(Problem::new(lr_path, "the learning-rate list is empty"));
        }
        let (rank_path, rank) = axis(&table, "rank", &t.rank, &g.rank);
        let (alpha_path, alpha) = axis(&table, "alpha", &t.alpha, &g.alpha);
        let (mod_path, modules) = axis(
            &table,
            "target_modules",
            &t.target_modules,
            &g.target_modules,
        );
        let (drop_path, dropout) = axis(&table, "lora_dropout", &t.lora_dropout, &g.lora_dropout);
        let (budget_path, budgets) = axis(
            &table,
            "token_budget",
            &t.token_budget,
            &Some(g.token_budget.clone()),
        );
        let lora = method == Method::Lora;
        let rank = if lora {
            list(rank).ok_or_else(|| {
                Problem::new(
                    rank_path.clone(),
                    "LoRA needs a rank: set grid.rank (for example [16, 256])",
                )
            })?
        } else {
            vec![]
        };
        Ok(SubGrid {
            method,
            table,
            lr: (lr_path, lr),
            rank: (rank_path, rank),
            alpha: (
                alpha_path,
                if lora {
                    list(alpha).unwrap_or_else(|| vec![Alpha::TimesRank(2.0)])
                } else {
                    vec![]
                },
            ),
            modules: (
                mod_path,
                if lora {
                    list(modules).unwrap_or_else(|| vec![ModuleSetSpec::Named("all".into())])
                } else {
                    vec![]
                },
            ),
            dropout: (
                drop_path,
                if lora {
                    list(dropout).unwrap_or_else(|| vec![0.0])
                } else {
                    vec![]
                },
            ),
            budgets: (budget_path, list(budgets).unwrap_or_default()),
        })
    }

    fn budget_groups(&self, mode: BudgetMode) -> u64 {
        match mode {
            BudgetMode::Checkpoints => 1,
            BudgetMode::SeparateRuns => self.budgets.1.len() as u64,
        }
    }

    fn size(&self) -> u64 {
        let mut n = self.lr.1.len() as u64;
        if self.method == Method::Lora {
            for k in [
                self.rank.1.len(),
                self.alpha.1.len(),
                self.modules.1.len(),
                self.dropout.1.len(),
            ] {
                n = n.saturating_mul(k as u64);
            }
        }
        n.saturating_mul(self.budget_groups(BudgetMode::SeparateRuns).max(1))
    }

    fn expand(
        &self,
        spec: &Spec,
        opts: &PlanOptions,
        tokens_per_step: u64,
        epoch_tokens: Option<TokenAmount>,
        out: &mut Vec<Point>,
    ) -> Result<(), Problem> {
        let budgets = resolve_budgets(
            &self.budgets.0,
            &self.budgets.1,
            tokens_per_step,
            epoch_tokens,
        )?;
        if budgets.is_empty() {
            return Err(Problem::new(
                self.budgets.0.clone(),
                "the token-budget list is empty",
            ));
        }
        let extra = resolve_budgets(
            &[key("evaluation"), key("checkpoints")],
            &spec.evaluation.checkpoints,
            1,
            epoch_tokens,
        )?;
        let groups: Vec<(u64, Vec<u64>)> = match spec.grid.budget_mode {
            BudgetMode::Checkpoints => {
                let max = *budgets.iter().max().unwrap_or(&0);
                vec![(max, eval_points(&budgets, &extra, max))]
            }
            BudgetMode::SeparateRuns => budgets
                .iter()
                .map(|&b| (b, eval_points(&[b], &extra, b)))
                .collect(),
        };
        let methods: Vec<MethodConfig> = match self.method {
            Method::Full => vec![MethodConfig::Full],
            Method::Lora => self.lora_configs(opts)?,
        };
        let _ = &self.table;
        for m in &methods {
            for &lr in &self.lr.1 {
                for (budget, eval_at) in &groups {
                    out.push(Point {
                        method: m.clone(),
                        learning_rate: lr,
                        token_budget: *budget,
                        eval_at: eval_at.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn lora_configs(&self, opts: &PlanOptions) -> Result<Vec<MethodConfig>, Problem> {
        let mut sets = Vec::new();
        for (i, s) in self.modules.1.iter().enumerate() {
            let mut p = self.modules.0.clone();
            if self.modules.1.len() > 1 {
                p.push(PathSeg::Index(i));
            }
            let m = s.resolve().map_err(|bad| {
                Problem::new(p.clone(), format!("unknown target module `{bad}` (allowed: attention, mlp, all, or a list of q, k, v, o, gate, up, down)"))
            })?;
            if m.is_empty() {
                return Err(Problem::new(
                    p,
                    "an empty module list: name at least one of q, k, v, o, gate, up, down",
                ));
            }
            sets.push(m);
        }
        for (i, d) in self.dropout.1.iter().enumerate() {
            if !(d.is_finite() && (0.0..1.0).contains(d)) {
                let mut p = self.dropout.0.clone();
                if self.dropout.1.len() > 1 {
                    p.push(PathSeg::Index(i));
                }
                return Err(Problem::new(p, "LoRA dropout must be in [0, 1)"));
            }
        }
        let mut out = Vec::new();
        for (i, &r) in self.rank.1.iter().enumerate() {
            let mut p = self.rank.0.clone();
            if self.rank.1.len() > 1 {
                p.push(PathSeg::Index(i));
            }
            if r == 0 {
                return Err(Problem::new(p, "rank 0 trains nothing: ranks start at 1"));
            }
            if let Some(shape) = &opts.shape {
                for set in &sets {
                    let max = set.iter().map(|&m| shape.max_rank(m)).min().unwrap_or(0) as u64;
                    if r > max {
                        return Err(Problem::new(p, format!("rank {r} is above the model's width for {} ({max}): LoRA's rank is at most min(out, in) of each matrix", crate::spec::values::module_set_label(set))));
                    }
                }
            }
            for a in &self.alpha.1 {
                let alpha = a.resolve(r);
                if !(alpha.is_finite() && alpha > 0.0) {
                    return Err(Problem::new(self.alpha.0.clone(), "alpha must be > 0"));
                }
                for set in &sets {
                    for &d in &self.dropout.1 {
                        out.push(MethodConfig::Lora {
                            rank: r,
                            alpha,
                            target_modules: set.clone(),
                            dropout: d,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Evaluation points of a run that trains to `max`: its budgets and extra checkpoints up to max.
fn eval_points(budgets: &[u64], extra: &[u64], max: u64) -> Vec<u64> {
    let mut v: Vec<u64> = budgets
        .iter()
        .chain(extra.iter())
        .copied()
        .filter(|&b| b <= max)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn resolve_budgets(
    path: &[PathSeg],
    values: &[TokenCount],
    tokens_per_step: u64,
    epoch_tokens: Option<TokenAmount>,
) -> Result<Vec<u64>, Problem> {
    let mut out = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let mut p = path.to_vec();
        if values.len() > 1 {
            p.push(PathSeg::Index(i));
        }
        let tokens = match v.amount() {
            TokenAmount::Tokens(n) => n,
            TokenAmount::Epochs(e) => match epoch_tokens {
                Some(TokenAmount::Tokens(per)) => (e * per as f64).round() as u64,
                _ => return Err(Problem::new(p, "a budget in epochs needs data.epoch_tokens (tokens in one pass over the target data)")),
            },
        };
        if tokens < tokens_per_step {
            return Err(Problem::new(p, format!("a budget of {tokens} tokens is below one batch ({tokens_per_step} = batch_size x seq_len)")));
        }
        out.push(tokens);
    }
    Ok(out)
}

fn include_point(
    spec: &Spec,
    opts: &PlanOptions,
    inc: &crate::spec::PointSpec,
    i: usize,
    tokens_per_step: u64,
    epoch_tokens: Option<TokenAmount>,
) -> Result<Point, Problem> {
    let base = vec![key("include"), PathSeg::Index(i)];
    let g = &spec.grid;
    let mut t = MethodGrid {
        learning_rate: Some(LrAxis::One(inc.learning_rate)),
        token_budget: inc.token_budget.clone(),
        ..MethodGrid::default()
    };
    if inc.method == Method::Lora {
        let first_rank = g.rank.as_ref().and_then(|r| r.to_vec().first().copied());
        t.rank = inc.rank.or(first_rank).map(OneOrMany::One);
        t.alpha = Some(OneOrMany::One(
            inc.alpha
                .or_else(|| g.alpha.as_ref().and_then(|a| a.to_vec().first().copied()))
                .unwrap_or(Alpha::TimesRank(2.0)),
        ));
        t.target_modules = inc
            .target_modules
            .clone()
            .or_else(|| {
                g.target_modules
                    .as_ref()
                    .and_then(|m| m.to_vec().first().cloned())
            })
            .map(OneOrMany::One);
        t.lora_dropout = Some(OneOrMany::One(inc.lora_dropout.unwrap_or(0.0)));
    } else if inc.rank.is_some()
        || inc.alpha.is_some()
        || inc.target_modules.is_some()
        || inc.lora_dropout.is_some()
    {
        return Err(Problem::new(
            base,
            "rank, alpha, target_modules and lora_dropout apply to LoRA only",
        ));
    }
    let sg = SubGrid::new(inc.method, base.clone(), g, t)?;
    let mut pts = Vec::new();
    sg.expand(spec, opts, tokens_per_step, epoch_tokens, &mut pts)?;
    match pts.len() {
        1 => Ok(pts.remove(0)),
        _ => Err(Problem::new(base, "an include point must be a single configuration (one budget with budget_mode = \"separate_runs\")")),
    }
}

struct ResolvedMatch {
    rule: PointMatch,
    modules: Option<Vec<Module>>,
    budget: Option<u64>,
}

impl ResolvedMatch {
    fn new(
        rule: &PointMatch,
        epoch_tokens: Option<TokenAmount>,
        i: usize,
    ) -> Result<ResolvedMatch, Problem> {
        let path = vec![key("exclude"), PathSeg::Index(i)];
        let modules = match &rule.target_modules {
            Some(s) => Some(s.resolve().map_err(|bad| {
                let mut p = path.clone();
                p.push(key("target_modules"));
                Problem::new(p, format!("unknown target module `{bad}`"))
            })?),
            None => None,
        };
        let budget = match &rule.token_budget {
            Some(b) => {
                let mut p = path.clone();
                p.push(key("token_budget"));
                Some(resolve_budgets(&p, std::slice::from_ref(b), 0, epoch_tokens)?[0])
            }
            None => None,
        };
        Ok(ResolvedMatch {
            rule: rule.clone(),
            modules,
            budget,
        })
    }

    fn matches(&self, p: &Point) -> bool {
        let r = &self.rule;
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
        if r.method.is_some_and(|m| m != p.method.method()) {
            return false;
        }
        if r.learning_rate
            .is_some_and(|lr| !close(lr, p.learning_rate))
        {
            return false;
        }
        if self
            .budget
            .is_some_and(|b| !p.eval_at.contains(&b) && p.token_budget != b)
        {
            return false;
        }
        let lora_field_set = r.rank.is_some() || r.alpha.is_some() || self.modules.is_some();
        match &p.method {
            MethodConfig::Full => !lora_field_set,
            MethodConfig::Lora {
                rank,
                alpha,
                target_modules,
                ..
            } => {
                r.rank.is_none_or(|x| x == *rank)
                    && r.alpha.is_none_or(|a| close(a.resolve(*rank), *alpha))
                    && self.modules.as_ref().is_none_or(|m| m == target_modules)
            }
        }
    }
}

/// Keep `n` of the points, chosen by a seeded shuffle, in their grid order.
fn sample(points: Vec<Point>, ids: Vec<String>, n: usize, seed: u64) -> (Vec<Point>, Vec<String>) {
    if n >= points.len() {
        return (points, ids);
    }
    let mut idx: Vec<usize> = (0..points.len()).collect();
    let mut rng = crate::rng::Rng::from_state(seed ^ 0x5eed_5eed_5eed_5eed);
    for i in 0..n {
        let j = i + rng.below((idx.len() - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut chosen: Vec<usize> = idx[..n].to_vec();
    chosen.sort_unstable();
    let keep: HashSet<usize> = chosen.iter().copied().collect();
    let (mut ps, mut is) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (i, (p, id)) in points.into_iter().zip(ids).enumerate() {
        if keep.contains(&i) {
            ps.push(p);
            is.push(id);
        }
    }
    (ps, is)
}

#[cfg(test)]
mod tests;
