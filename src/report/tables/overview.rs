//! Table 1: the sweep's runs by how they ended, the tokens they trained and their compute.

use crate::report::{ReportInput, RunData, TableData};
use crate::results::RunStatus;
use crate::spec::values::format_tokens;

/// The overview of the sweep.
pub fn overview(input: &ReportInput) -> TableData {
    let count = |f: &dyn Fn(&RunData) -> bool| input.runs.iter().filter(|r| f(r)).count();
    let tokens: u64 = input
        .runs
        .iter()
        .filter(|r| r.status.is_some())
        .map(|r| r.tokens)
        .sum();
    // Summed from +0.0: an empty f64 sum is -0.0, which would print "-0.00".
    let wall = input
        .runs
        .iter()
        .filter(|r| r.status.is_some())
        .fold(0.0, |sum, r| sum + r.wall_s);
    let rows = vec![
        vec!["planned runs".into(), input.runs.len().to_string()],
        vec![
            "completed".into(),
            count(&|r| r.status == Some(RunStatus::Completed)).to_string(),
        ],
        vec![
            "diverged".into(),
            count(&|r| r.status == Some(RunStatus::Diverged)).to_string(),
        ],
        vec![
            "failed".into(),
            count(&|r| r.status == Some(RunStatus::Failed)).to_string(),
        ],
        vec![
            "no result yet".into(),
            count(&|r| r.status.is_none() || r.status == Some(RunStatus::Interrupted)).to_string(),
        ],
        vec![
            "unreadable results".into(),
            input.unreadable.len().to_string(),
        ],
        vec!["tokens trained".into(), format_tokens(tokens)],
        vec![
            "compute (run-hours)".into(),
            format!("{:.2}", wall / 3600.0),
        ],
    ];
    TableData {
        key: "overview".into(),
        title: format!("Sweep {}: overview", input.sweep),
        header: vec!["measure".into(), "value".into()],
        rows,
        note: None,
    }
}
