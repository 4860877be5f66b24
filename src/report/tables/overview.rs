//! Table 1: the sweep's runs by how they ended, the tokens they trained and their compute.

use crate::report::{ReportInput, RunData, TableData, Value};
use crate::results::RunStatus;

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
        vec!["planned runs".into(), Value::int(input.runs.len())],
        vec![
            "completed".into(),
            Value::int(count(&|r| r.status == Some(RunStatus::Completed))),
        ],
        vec![
            "diverged".into(),
            Value::int(count(&|r| r.status == Some(RunStatus::Diverged))),
        ],
        vec![
            "failed".into(),
            Value::int(count(&|r| r.status == Some(RunStatus::Failed))),
        ],
        vec![
            "no result yet".into(),
            Value::int(count(&|r| {
                r.status.is_none() || r.status == Some(RunStatus::Interrupted)
            })),
        ],
        vec![
            "unreadable results".into(),
            Value::int(input.unreadable.len()),
        ],
        vec!["tokens trained".into(), Value::tokens(tokens)],
        vec![
            "compute (run-hours)".into(),
            Value::real(wall / 3600.0, format!("{:.2}", wall / 3600.0)),
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
