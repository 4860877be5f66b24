//! The sweep as a grid of cells: each series of runs (everything but the seed and the budget)
//! at each budget, holding its seeds' values of the learning metric and of forgetting. The tables
//! and the findings read the same grid.

use std::collections::BTreeMap;

use super::stats::{summarize, Summary};
use super::{CellNumbers, Interval, ReportInput, RunData, TableData, Value};
use crate::plan::MethodConfig;
use crate::results::RunStatus;
use crate::spec::values::module_set_label;

/// Task metrics that are proportions of items answered right.
pub const PROPORTIONS: &[&str] = &[
    "forgetting_score",
    "multiple_choice_accuracy",
    "gsm8k_strict",
    "gsm8k_flexible",
    "math_accuracy",
    "humaneval_pass@1",
    "next_line_match",
];

/// Whether `metric` is a proportion of items: one of [`PROPORTIONS`], a forgetting benchmark's
/// accuracy (`<task>_acc`, `<task>_acc_norm`) or HumanEval's sampled pass@k (a mean over tasks
/// of each task's estimated chance, within [0, 1]).
pub fn is_proportion(metric: &str) -> bool {
    PROPORTIONS.contains(&metric)
        || metric.ends_with("_acc")
        || metric.ends_with("_acc_norm")
        || (metric.starts_with("humaneval_pass@") && metric.ends_with("_sampled"))
}

/// The items behind each value of `metric` when it is a proportion measured on a known number
/// of items (its cells then show a Wilson interval).
pub fn proportion_items(input: &ReportInput, metric: &str) -> Option<u64> {
    is_proportion(metric)
        .then(|| input.metric_items.get(metric).copied())
        .flatten()
}

/// Whether larger values of a metric are better (losses and perplexities are not).
pub fn higher_is_better(metric: &str) -> bool {
    !(metric.ends_with("_loss")
        || metric.contains("perplexity")
        || metric.ends_with("_increase")
        || metric.ends_with("_drop"))
}

/// What a series of runs shares: everything but the seed and the budget.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    /// `full` or `lora`.
    pub method: String,
    /// LoRA's rank.
    pub rank: Option<u64>,
    /// LoRA's target modules, as a label.
    pub modules: Option<String>,
    /// LoRA's alpha and dropout, in the group's name, where the sweep has several of them for
    /// one rank and module set ([`Keys`]).
    variant: Option<String>,
    alpha_bits: u64,
    dropout_bits: u64,
    lr_bits: u64,
}

/// The series keys of a sweep's runs: a LoRA group is named by its rank and modules, and by its
/// alpha and dropout too where the sweep has several of them for that rank and module set, so
/// that variants are never pooled into one group.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    /// (rank, modules) of the LoRA series with more than one (alpha, dropout).
    varied: std::collections::BTreeSet<(u64, String)>,
    /// Whether the sweep has several alphas (then named), several dropouts (then named).
    names: (bool, bool),
}

impl Keys {
    /// The keys of `input`'s runs.
    pub fn new(input: &ReportInput) -> Keys {
        let mut variants: BTreeMap<(u64, String), std::collections::BTreeSet<(u64, u64)>> =
            BTreeMap::new();
        let (mut alphas, mut dropouts) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for r in &input.runs {
            let k = SeriesKey::of(r);
            if let (Some(rank), Some(m)) = (k.rank, k.modules) {
                variants
                    .entry((rank, m))
                    .or_default()
                    .insert((k.alpha_bits, k.dropout_bits));
                alphas.insert(k.alpha_bits);
                dropouts.insert(k.dropout_bits);
            }
        }
        Keys {
            varied: variants
                .into_iter()
                .filter(|(_, v)| v.len() > 1)
                .map(|(k, _)| k)
                .collect(),
            names: (alphas.len() > 1, dropouts.len() > 1),
        }
    }

    /// The series of a run.
    pub fn of(&self, run: &RunData) -> SeriesKey {
        let mut k = SeriesKey::of(run);
        if let (Some(rank), Some(m)) = (k.rank, &k.modules) {
            if self.varied.contains(&(rank, m.clone())) {
                let mut parts = Vec::new();
                if self.names.0 {
                    parts.push(format!("alpha={}", f64::from_bits(k.alpha_bits)));
                }
                if self.names.1 {
                    parts.push(format!("dropout={}", f64::from_bits(k.dropout_bits)));
                }
                k.variant = Some(parts.join(" "));
            }
        }
        k
    }
}

impl SeriesKey {
    /// The series of a run, its group named by rank and modules alone.
    fn of(run: &RunData) -> SeriesKey {
        let (rank, modules, alpha, dropout) = match &run.point.method {
            MethodConfig::Full => (None, None, 0.0, 0.0),
            MethodConfig::Lora {
                rank,
                alpha,
                target_modules,
                dropout,
            } => (
                Some(*rank),
                Some(module_set_label(target_modules)),
                *alpha,
                *dropout,
            ),
        };
        SeriesKey {
            method: run.point.method.method_name().to_string(),
            rank,
            modules,
            variant: None,
            alpha_bits: f64::to_bits(alpha),
            dropout_bits: f64::to_bits(dropout),
            lr_bits: run.point.learning_rate.to_bits(),
        }
    }
    /// Its learning rate.
    pub fn lr(&self) -> f64 {
        f64::from_bits(self.lr_bits)
    }
    /// Its alpha and dropout as the group's name gives them, where the sweep varies them.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }
    /// LoRA's dropout.
    pub fn dropout(&self) -> Option<f64> {
        self.rank.map(|_| f64::from_bits(self.dropout_bits))
    }
    /// LoRA's alpha.
    pub fn alpha(&self) -> Option<f64> {
        self.rank.map(|_| f64::from_bits(self.alpha_bits))
    }
    /// Its group: the method, or LoRA with its rank and modules, and its alpha or dropout where
    /// the sweep varies them (every learning rate).
    pub fn group(&self) -> String {
        match (&self.rank, &self.modules, &self.variant) {
            (Some(r), Some(m), Some(v)) => format!("lora r{r} {m} {v}"),
            (Some(r), Some(m), None) => format!("lora r{r} {m}"),
            _ => self.method.clone(),
        }
    }
    /// Group and learning rate, for tables.
    pub fn describe(&self) -> String {
        format!("{} lr={}", self.group(), fmt_lr(self.lr()))
    }
}

/// A learning rate as 1e-4.
pub fn fmt_lr(v: f64) -> String {
    format!("{v:.0e}")
}

/// The x of the vertex of the parabola through three points, `b` between `a` and `c` in x and
/// the extreme of the three in y, so that the vertex lies within [a.x, c.x] (clamped there
/// against rounding). None when the points are on a line.
pub fn parabola_vertex(a: (f64, f64), b: (f64, f64), c: (f64, f64)) -> Option<f64> {
    let (p, q) = ((b.0 - a.0) * (b.1 - c.1), (b.0 - c.0) * (b.1 - a.1));
    let den = p - q;
    if den == 0.0 || !den.is_finite() {
        return None;
    }
    let num = (b.0 - a.0) * p - (b.0 - c.0) * q;
    let x = b.0 - 0.5 * num / den;
    x.is_finite().then(|| x.clamp(a.0.min(c.0), a.0.max(c.0)))
}

/// How [`Grid::best_lr_between`] found a best learning rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Between {
    /// The parabola's vertex.
    Vertex,
    /// The grid's best, at the end of its grid: the best may lie beyond it.
    EndOfGrid,
    /// The grid's best, beside (or at) a learning rate with diverged runs.
    Diverged,
    /// The grid's best, with its neighbours on a line through it.
    Line,
}

impl Between {
    /// What a table says beside a best that is not a vertex.
    pub fn mark(self) -> &'static str {
        match self {
            Between::Vertex => "",
            Between::EndOfGrid => " (end of grid)",
            Between::Diverged => " (beside diverged runs)",
            Between::Line => " (on a line)",
        }
    }
}

/// A cell: one series at one budget, over seeds.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    /// The learning metric of each seed's run, in run order.
    pub learn: Vec<f64>,
    /// The seed of each value in `learn`.
    pub seeds: Vec<u64>,
    /// The run id of each value in `learn`.
    pub ids: Vec<String>,
    /// The config id of the series (the same for every seed).
    pub config_id: String,
    /// The forgetting measure of each run that has one.
    pub forget: Vec<f64>,
}

/// A metric's values over seeds: for a proportion of `items` items per value, its mean with the
/// interval of [`interval_of`] (within [0, 1], and an interval even for one seed); else
/// [`fmt_summary`]'s mean ± Student-t half-width.
pub fn fmt_metric(values: &[f64], items: Option<u64>) -> String {
    match (interval_of(values, items), proportion(values, items)) {
        (Some(i), Some(k)) => format!(
            "{:.4} [{:.4}, {:.4}] ({}x{k} items)",
            i.mean,
            i.ci_low.unwrap_or(f64::NAN),
            i.ci_high.unwrap_or(f64::NAN),
            i.n
        ),
        _ => fmt_summary(super::stats::summarize(values)),
    }
}

/// [`fmt_metric`] with the interval behind it ([`interval_of`]).
pub fn metric_value(values: &[f64], items: Option<u64>) -> Value {
    match interval_of(values, items) {
        Some(i) => Value::spread(i, fmt_metric(values, items)),
        None => Value::missing(),
    }
}

/// [`fmt_summary`] with the interval behind it.
pub fn summary_value(s: Option<Summary>) -> Value {
    match s {
        Some(s) => Value::spread(Interval::of(s), fmt_summary(Some(s))),
        None => Value::missing(),
    }
}

/// The items per value when `values` are proportions of that many (all within [0, 1]: a
/// percentage is not one, and keeps Student-t's interval).
fn proportion(values: &[f64], items: Option<u64>) -> Option<u64> {
    items.filter(|&k| k > 0 && values.iter().all(|v| (0.0..=1.0).contains(v)))
}

/// A metric's mean and 95% interval over seeds. For a proportion of `items` items per value:
/// the wider of the Wilson interval of all the seeds' items together (the items' noise; the
/// only interval one seed has) and Student-t's over the seeds (their spread, which the pooled
/// items do not see), within [0, 1]. Else Student-t's.
pub fn interval_of(values: &[f64], items: Option<u64>) -> Option<Interval> {
    let s = super::stats::summarize(values)?;
    let t = Interval::of(s);
    Some(match proportion(values, items) {
        Some(k) => {
            let (lo, hi) = super::stats::wilson(s.mean, (k * s.n as u64) as f64);
            Interval {
                mean: s.mean,
                ci_low: Some(t.ci_low.map_or(lo, |t| t.max(0.0).min(lo))),
                ci_high: Some(t.ci_high.map_or(hi, |t| t.min(1.0).max(hi))),
                n: s.n,
            }
        }
        None => t,
    })
}

/// A summary as mean ± 95% half-width (n), to about four significant digits of the mean
/// ([`decimals`]); [`fold_seed_counts`] moves the (n) that most cells of a table share into its
/// note.
pub fn fmt_summary(s: Option<Summary>) -> String {
    match s {
        None => "-".into(),
        Some(s) => {
            let d = decimals(s.mean);
            match s.ci95 {
                // The half-width to at least two significant digits (at most 4 decimals), so
                // that a small one does not read as none.
                Some(ci) => {
                    let h = if ci > 0.0 && ci.is_finite() {
                        d.max(((1 - ci.log10().floor() as i64).clamp(0, 4)) as usize)
                    } else {
                        d
                    };
                    format!("{:.h$} ± {:.h$} (n={})", s.mean, ci, s.n)
                }
                None => format!("{:.d$} (n=1)", s.mean),
            }
        }
    }
}

/// Decimals that show `x` to about four significant digits, at most 4: a loss of 2.2550 as
/// 2.255, a rank of 21.0071 as 21.01, an accuracy of 0.1250 as 0.1250.
pub fn decimals(x: f64) -> usize {
    if !x.is_finite() || x == 0.0 {
        return 4;
    }
    (3 - x.abs().log10().floor() as i64).clamp(0, 4) as usize
}

/// The seed count most cells of `table` end with, " (n=K)" ([`fmt_summary`]), said once in
/// its note instead; a cell with another count keeps its own.
pub fn fold_seed_counts(table: &mut TableData) {
    fn count(cell: &str) -> Option<(usize, usize)> {
        let start = cell.rfind(" (n=")?;
        let n = cell[start + 4..].strip_suffix(')')?.parse().ok()?;
        Some((start, n))
    }
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for cell in table.rows.iter().flatten() {
        if let Some((_, n)) = count(&cell.shown) {
            *counts.entry(n).or_default() += 1;
        }
    }
    // The most common count; on a tie the larger.
    let Some((&common, _)) = counts.iter().max_by_key(|&(n, c)| (*c, *n)) else {
        return;
    };
    for cell in table.rows.iter_mut().flatten() {
        if let Some((start, n)) = count(&cell.shown) {
            if n == common {
                cell.shown.truncate(start);
            }
        }
    }
    let said = if common == 1 {
        "values are one seed's: no interval".to_string()
    } else {
        format!("a ± is the 95% Student-t half-width over {common} seeds")
    };
    let marked = if counts.len() > 1 {
        "; (n=K) marks a value over another number of seeds"
    } else {
        ""
    };
    table.note = Some(match table.note.take() {
        Some(note) => format!("{said}{marked}. {note}"),
        None => format!("{said}{marked}"),
    });
}

/// A metric at a budget: the first evaluation at or after it (the trainer evaluates at the end
/// of the step that reaches the budget, so 16k tokens in steps of 1,024 is evaluated at 16,384).
pub fn metric_at(run: &RunData, metric: &str, tokens: u64) -> Option<f64> {
    run.evals
        .iter()
        .filter(|e| e.tokens >= tokens && (tokens > 0 || e.tokens == 0))
        .min_by_key(|e| e.tokens)
        .and_then(|e| e.metrics.get(metric))
        .copied()
        .filter(|v| v.is_finite())
}

/// The forgetting measure of a run at a budget: the rise of the source-domain loss over the base
/// model's, or the fall of a multiple-choice accuracy. Lower is less forgetting.
pub fn forgetting_at(run: &RunData, metric: &str, tokens: u64) -> Option<f64> {
    let base = metric_at(run, metric, 0)?;
    let now = metric_at(run, metric, tokens)?;
    Some(if higher_is_better(metric) {
        base - now
    } else {
        now - base
    })
}

/// Better of two values under a metric's direction.
pub fn better(a: f64, b: f64, higher: bool) -> bool {
    if higher {
        a > b
    } else {
        a < b
    }
}

/// The first of `items` with the best value: the tie rule of every table. Callers give the
/// items lowest learning rate first, so that of equal means the lowest learning rate wins.
pub fn first_best<T>(items: impl IntoIterator<Item = (T, f64)>, higher: bool) -> Option<(T, f64)> {
    items.into_iter().fold(None, |best, x| match best {
        Some(b) if !better(x.1, b.1, higher) => Some(b),
        _ => Some(x),
    })
}

/// The grid of a sweep under one learning metric and one forgetting metric.
#[derive(Debug, Clone)]
pub struct Grid {
    /// The learning metric.
    pub learn: String,
    /// Whether larger values of it are better.
    pub higher: bool,
    /// The source-domain metric forgetting is measured on, if any run has one.
    pub forgetting: Option<String>,
    /// Series x budget.
    pub cells: BTreeMap<(SeriesKey, u64), Cell>,
    /// Diverged runs per series.
    pub diverged: BTreeMap<SeriesKey, usize>,
    /// Budgets with at least one value, ascending.
    pub budgets: Vec<u64>,
}

impl Grid {
    /// The grid of the completed and diverged runs.
    pub fn new(input: &ReportInput, learn: &str, forgetting: Option<&str>) -> Grid {
        let mut cells: BTreeMap<(SeriesKey, u64), Cell> = BTreeMap::new();
        let mut diverged: BTreeMap<SeriesKey, usize> = BTreeMap::new();
        let keys = Keys::new(input);
        for r in &input.runs {
            let key = keys.of(r);
            if matches!(r.status, Some(RunStatus::Diverged)) {
                *diverged.entry(key.clone()).or_default() += 1;
            }
            if !matches!(r.status, Some(RunStatus::Completed | RunStatus::Diverged)) {
                continue;
            }
            for &b in &r.point.eval_at {
                if let Some(v) = metric_at(r, learn, b) {
                    let c = cells.entry((key.clone(), b)).or_default();
                    c.learn.push(v);
                    c.seeds.push(r.seed);
                    c.ids.push(r.id.clone());
                    c.config_id.clone_from(&r.config_id);
                    if let Some(f) = forgetting.and_then(|f| forgetting_at(r, f, b)) {
                        c.forget.push(f);
                    }
                }
            }
        }
        let mut budgets: Vec<u64> = cells.keys().map(|k| k.1).collect();
        budgets.sort_unstable();
        budgets.dedup();
        Grid {
            learn: learn.to_string(),
            higher: higher_is_better(learn),
            forgetting: forgetting.map(str::to_string),
            cells,
            diverged,
            budgets,
        }
    }

    /// Every cell as numbers, in key order; the learning metric's interval is Wilson's when it is a
    /// proportion of `learn_items` items ([`interval_of`]).
    pub fn numbers(&self, learn_items: Option<u64>) -> Vec<CellNumbers> {
        self.cells
            .iter()
            .map(|((k, b), c)| CellNumbers {
                config_id: c.config_id.clone(),
                method: k.method.clone(),
                group: k.group(),
                learning_rate: k.lr(),
                rank: k.rank,
                modules: k.modules.clone(),
                budget_tokens: *b,
                learning: interval_of(&c.learn, learn_items),
                forgetting: summarize(&c.forget).map(Interval::of),
                diverged: self.diverged.get(k).copied().unwrap_or(0),
            })
            .collect()
    }

    /// The largest budget, if any.
    pub fn top(&self) -> Option<u64> {
        self.budgets.last().copied()
    }

    /// The series with the best mean learning at budget `b` among those `filter` keeps: of
    /// equals the lowest learning rate ([`first_best`]), then the first in key order.
    pub fn best_in(
        &self,
        filter: &dyn Fn(&SeriesKey) -> bool,
        b: u64,
    ) -> Option<(SeriesKey, Cell)> {
        let mut series: Vec<(&SeriesKey, &Cell, f64)> = self
            .cells
            .iter()
            .filter(|((k, bb), _)| *bb == b && filter(k))
            .filter_map(|((k, _), c)| summarize(&c.learn).map(|s| (k, c, s.mean)))
            .collect();
        // A stable sort: equal learning rates stay in key order.
        series.sort_by(|x, y| x.0.lr().total_cmp(&y.0.lr()));
        first_best(series.into_iter().map(|(k, c, m)| ((k, c), m)), self.higher)
            .map(|((k, c), _)| (k.clone(), c.clone()))
    }

    /// The learning rate with the best mean of `values(cell)` among the series of `group` at
    /// budget `b`: the lowest of equals. Learning rates with no value are passed over.
    pub fn best_lr_by(
        &self,
        group: &str,
        b: u64,
        values: &dyn Fn(&SeriesKey, &Cell) -> Vec<f64>,
    ) -> Option<f64> {
        first_best(
            self.lr_series(group, b, values)
                .into_iter()
                .map(|p| (p.0, p.1)),
            self.higher,
        )
        .map(|(lr, _)| lr)
    }

    /// The best learning rate of `group` at budget `b` between the grid's points:
    /// [`Grid::best_lr_between`]'s learning rate.
    pub fn best_lr_interpolated(
        &self,
        group: &str,
        b: u64,
        values: &dyn Fn(&SeriesKey, &Cell) -> Vec<f64>,
    ) -> Option<f64> {
        self.best_lr_between(group, b, values).map(|x| x.0)
    }

    /// The best learning rate of `group` at budget `b` between the grid's points, and how it
    /// was had: the vertex of the parabola in log10(lr) through the best of
    /// [`Grid::best_lr_by`] and its two neighbours, which lies between them. A best at the end
    /// of the grid, one beside a learning rate with diverged runs (a loss near divergence
    /// would drag the vertex), or three points on a line, stay the grid's best. Unlike the
    /// grid's best, a seed bootstrap of the vertex does not collapse onto one grid point when
    /// the grid is coarse.
    pub fn best_lr_between(
        &self,
        group: &str,
        b: u64,
        values: &dyn Fn(&SeriesKey, &Cell) -> Vec<f64>,
    ) -> Option<(f64, Between)> {
        let series = self.lr_series(group, b, values);
        let (best, _) = first_best(series.iter().map(|p| (p.0, p.1)), self.higher)?;
        let i = series.iter().position(|p| p.0 == best)?;
        if i == 0 || i + 1 == series.len() {
            return Some((best, Between::EndOfGrid));
        }
        if series[i - 1..=i + 1].iter().any(|p| p.2) {
            return Some((best, Between::Diverged));
        }
        let [(xa, ya), (xb, yb), (xc, yc)] =
            [&series[i - 1], &series[i], &series[i + 1]].map(|p| (p.0.log10(), p.1));
        Some(match parabola_vertex((xa, ya), (xb, yb), (xc, yc)) {
            Some(x) => (10f64.powf(x), Between::Vertex),
            None => (best, Between::Line),
        })
    }

    /// (learning rate, mean of `values`, whether any of its runs diverged) of the series of
    /// `group` at budget `b`, by learning rate; learning rates with no value are passed over.
    fn lr_series(
        &self,
        group: &str,
        b: u64,
        values: &dyn Fn(&SeriesKey, &Cell) -> Vec<f64>,
    ) -> Vec<(f64, f64, bool)> {
        let mut series: Vec<(f64, f64, bool)> = self
            .cells
            .iter()
            .filter(|((k, bb), _)| *bb == b && k.group() == group)
            .filter_map(|((k, _), c)| {
                let diverged = self.diverged.get(k).is_some_and(|&n| n > 0);
                summarize(&values(k, c)).map(|s| (k.lr(), s.mean, diverged))
            })
            .collect();
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        series
    }
}
