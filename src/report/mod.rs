//! The report: turns a sweep's run results into the paper's answers. [`load`] reads the results
//! folder (the only I/O); [`build`] is pure and produces tables, plot data and findings;
//! [`render`] and [`svg`] turn a [`Report`] into terminal, Markdown, CSV, JSON and HTML.

pub mod build;
pub mod findings;
pub mod grid;
pub mod importance;
pub mod load;
pub mod render;
pub mod stats;
pub mod summary;
pub mod svg;
pub mod tables;
pub mod value;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::plan::Point;
use crate::results::{EvalRecord, RunStatus};
pub use build::build;
pub use value::Value;

/// One planned run with whatever result it has.
#[derive(Debug, Clone, PartialEq)]
pub struct RunData {
    /// Run id.
    pub id: String,
    /// Config id.
    pub config_id: String,
    /// Seed.
    pub seed: u64,
    /// What the run varies.
    pub point: Point,
    /// How it ended; None when it has no result yet.
    pub status: Option<RunStatus>,
    /// Its evaluations (the first at 0 tokens is the base model).
    pub evals: Vec<EvalRecord>,
    /// Tokens trained.
    pub tokens: u64,
    /// Wall time in seconds.
    pub wall_s: f64,
    /// The error or divergence.
    pub error: Option<String>,
    /// Parameters the run trained (its result.json's), if known.
    pub trainable_params: Option<i64>,
}

/// Everything the report is built from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportInput {
    /// The sweep.
    pub sweep: String,
    /// Target domain name (`code`, `math`, ...).
    pub domain: String,
    /// The training regime (`cpt`, `ift`).
    pub regime: String,
    /// The planned runs.
    pub runs: Vec<RunData>,
    /// Runs whose result.json could not be read: (id, reason).
    pub unreadable: Vec<(String, String)>,
    /// Run folders that are not in the current plan (another version of the spec).
    pub foreign: Vec<String>,
    /// The results folder, as the user named it (for the commands the report suggests).
    pub dir: Option<String>,
    /// Items per evaluation of the task metrics (`evaluation.problems`: an upper bound, a
    /// data set with fewer has fewer); None when unknown.
    pub items: Option<u64>,
    /// Items each proportion metric was measured on, as the runs' result.json say (the fewest
    /// of any run): exact where `items` is a bound.
    pub metric_items: BTreeMap<String, u64>,
    /// Whether the sweep scales LoRA by alpha / sqrt(rank) (rsLoRA) instead of alpha / rank.
    pub rslora: bool,
}

impl ReportInput {
    /// The items behind each value of proportion metric `metric`: the runs' own count, else
    /// the spec's bound.
    pub fn items_of(&self, metric: &str) -> Option<u64> {
        self.metric_items.get(metric).copied().or(self.items)
    }
}

/// A table, already formatted: every renderer shows the same rows; report.json and the CSV
/// carry the numbers behind its cells.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableData {
    /// A short key: the CSV file name and the JSON key.
    pub key: String,
    /// The heading.
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells: the text shown and the numbers behind it.
    pub rows: Vec<Vec<Value>>,
    /// A note under the table (why it is empty, what a mark means).
    pub note: Option<String>,
}

/// The verdict on one of the paper's findings ([`findings`] says how each is decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its test, after Holm's correction, excludes no effect, in the paper's direction.
    Supported,
    /// Its test excludes no effect in the other direction.
    Contradicted,
    /// Tested (or testable with more seeds), but undecided.
    NotEnoughEvidence,
    /// The sweep lacks what the comparison needs (a method, a metric, budgets).
    NotEnoughData,
}

impl Verdict {
    /// Words for tables.
    pub fn words(self) -> &'static str {
        match self {
            Verdict::Supported => "supported",
            Verdict::Contradicted => "contradicted",
            Verdict::NotEnoughEvidence => "not enough evidence",
            Verdict::NotEnoughData => "not enough data",
        }
    }
}

/// The test behind a verdict, as numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestResult {
    /// The test.
    pub name: String,
    /// Its unit of replication.
    pub unit: String,
    /// What the effect measures (positive: the paper's direction).
    pub effect: String,
    /// The effect, its standard error, 95% interval and two-sided p-value.
    pub estimate: stats::Estimate,
    /// The p-value that decides (for an equivalence test, of being inside or outside the margin).
    pub p: f64,
    /// That p-value after Holm's correction over the findings tested.
    pub p_holm: f64,
    /// For an equivalence test, its margin.
    pub equivalence_margin: Option<f64>,
    /// Seeds per configuration behind it (the smallest group's).
    pub seeds: usize,
    /// Seeds per configuration that would decide it, when undecided.
    pub seeds_needed: Option<usize>,
}

impl TestResult {
    /// Whether the estimate lies in the paper's direction: a positive effect, or for an
    /// equivalence test, inside its margin.
    pub fn in_paper_direction(&self) -> bool {
        match self.equivalence_margin {
            None => self.estimate.effect > 0.0,
            Some(m) => self.estimate.effect.abs() < m,
        }
    }
}

/// One finding of the paper tested on this sweep.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// 1 to 6, as in the paper notes.
    pub number: u8,
    /// The claim.
    pub claim: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The numbers behind it.
    pub evidence: String,
    /// The test that decided it, if it could be tested.
    pub test: Option<TestResult>,
}

/// A series of points for a line plot, with optional interval half-widths.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y, interval half-width).
    pub points: Vec<(f64, f64, Option<f64>)>,
    /// Draw it dashed (fits).
    pub dashed: bool,
}

/// A plot, as data; [`svg`] draws it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plot {
    /// File stem of the SVG.
    pub key: String,
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis.
    pub log_x: bool,
    /// Lines (with bands where intervals exist).
    pub lines: Vec<Series>,
    /// Scatter series (no lines).
    pub scatter: Vec<Series>,
}

/// Mean and 95% Student-t interval over seeds, as numbers (no interval from one seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Mean.
    pub mean: f64,
    /// Lower end of the interval.
    pub ci_low: Option<f64>,
    /// Upper end of the interval.
    pub ci_high: Option<f64>,
    /// Seeds.
    pub n: usize,
}

impl Interval {
    /// The interval of a [`stats::Summary`].
    pub fn of(s: stats::Summary) -> Interval {
        Interval {
            mean: s.mean,
            ci_low: s.ci95.map(|c| s.mean - c),
            ci_high: s.ci95.map(|c| s.mean + c),
            n: s.n,
        }
    }
}

/// One configuration at one budget, as numbers: what the tables show, for programs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellNumbers {
    /// Config id (shared by the seeds).
    pub config_id: String,
    /// `full` or `lora`.
    pub method: String,
    /// The method, or LoRA with its rank and modules.
    pub group: String,
    /// Learning rate.
    pub learning_rate: f64,
    /// LoRA's rank.
    pub rank: Option<u64>,
    /// LoRA's target modules.
    pub modules: Option<String>,
    /// Tokens trained at this evaluation.
    pub budget_tokens: u64,
    /// The learning metric over seeds.
    pub learning: Option<Interval>,
    /// Forgetting over seeds.
    pub forgetting: Option<Interval>,
    /// Runs of the configuration that diverged.
    pub diverged: usize,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The sweep.
    pub sweep: String,
    /// Its target domain (`code`, `math`, ...).
    pub domain: String,
    /// Its training regime (`cpt`, `ift`).
    pub regime: String,
    /// The learning metric used (target domain).
    pub learning_metric: Option<String>,
    /// The forgetting metric used (source domain).
    pub forgetting_metric: Option<String>,
    /// Tables in order.
    pub tables: Vec<TableData>,
    /// Findings 1-6.
    pub findings: Vec<Finding>,
    /// Every configuration at every budget, as numbers.
    pub cells: Vec<CellNumbers>,
    /// Each method's best configuration at the largest budget and its run to export, the best
    /// of them marked `overall` (what `sweep export --best` exports).
    pub best: Vec<tables::BestRun>,
    /// Plots.
    pub plots: Vec<Plot>,
    /// Notes: runs not reported and why, metrics nobody measured.
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests;
