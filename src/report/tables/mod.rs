//! The report's tables, one file each, all read from the same [`Ctx`]: the grid of the sweep
//! and the metrics the report's builder chose. The findings' own tables are in
//! [`super::findings`].

mod best;
mod data_scaling;
mod forgetting;
mod frontier;
mod intruder_scaling;
mod lr_sensitivity;
mod matched;
mod measured;
mod overview;
mod rank_modules;
mod winners;

pub use best::best;
pub use data_scaling::data_scaling;
pub use forgetting::forgetting;
pub use frontier::{frontier, Frontier};
pub use intruder_scaling::intruder_scaling;
pub use lr_sensitivity::lr_sensitivity;
pub use matched::{along_frontier, matched, matched_at, Matched};
pub use measured::{lines_by_lr, measured};
pub use overview::overview;
pub use rank_modules::rank_modules;
pub use winners::{best_runs, winners, BestRun};

use super::grid::Grid;
use super::ReportInput;

/// What every table reads: the sweep, its grid at the chosen metrics, and their names.
pub struct Ctx<'a> {
    /// The sweep's runs.
    pub input: &'a ReportInput,
    /// The grid of the learning metric and forgetting.
    pub grid: &'a Grid,
    /// The learning metric.
    pub learn: &'a str,
    /// Its items per evaluation, when it is a proportion of known items.
    pub learn_items: Option<u64>,
    /// The forgetting column's name (`source_loss_increase`, ...), when forgetting is measured.
    pub forget_name: Option<&'a str>,
    /// The largest budget.
    pub top: u64,
    /// The LoRA groups and `full`, sorted.
    pub groups: Vec<String>,
    /// The methods, sorted.
    pub methods: Vec<String>,
}

impl Ctx<'_> {
    /// The forgetting column's header.
    pub fn forget_column(&self) -> String {
        self.forget_name.unwrap_or("forgetting").to_string()
    }
}
