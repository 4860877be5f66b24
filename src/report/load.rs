//! Reading a sweep's results folder into a [`ReportInput`]: plan.jsonl for what was planned,
//! runs/ID/result.json for what happened. The report's only I/O.

use std::collections::HashSet;
use std::path::Path;

use super::{ReportInput, RunData};
use crate::plan::RunFile;
use crate::results::{inputs_changed, read_result_of, ResultError, RunIdentity};

/// Why a results folder cannot be reported.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// There is no plan.jsonl.
    #[error("{0}: no plan.jsonl: run `sweep plan SPEC` or `sweep run SPEC` first")]
    NoPlan(String),
    /// The plan cannot be read.
    #[error("{0}")]
    Io(String),
}

/// Load results/NAME/.
pub fn load(dir: &Path) -> Result<ReportInput, LoadError> {
    let plan_path = dir.join("plan.jsonl");
    let text = std::fs::read_to_string(&plan_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::NoPlan(dir.display().to_string()),
        _ => LoadError::Io(format!("{}: {e}", plan_path.display())),
    })?;
    let mut input = ReportInput {
        dir: Some(dir.display().to_string()),
        ..ReportInput::default()
    };
    let mut planned = HashSet::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let rf: RunFile = serde_json::from_str(line)
            .map_err(|e| LoadError::Io(format!("{}:{}: {e}", plan_path.display(), i + 1)))?;
        if input.sweep.is_empty() {
            input.sweep = rf.sweep.clone();
            input.domain = rf.shared.data.domain.clone();
            input.regime = match rf.shared.data.regime {
                crate::spec::Regime::Cpt => "cpt".into(),
                crate::spec::Regime::Ift => "ift".into(),
            };
            input.items = Some(rf.shared.evaluation.problems);
            input.rslora = rf.shared.training.rslora;
        }
        planned.insert(rf.id.clone());
        let mut run = RunData {
            id: rf.id.clone(),
            config_id: rf.config_id.clone(),
            seed: rf.seed,
            point: rf.point.clone(),
            status: None,
            evals: vec![],
            tokens: 0,
            wall_s: 0.0,
            error: None,
            trainable_params: None,
        };
        let who = RunIdentity {
            id: rf.id.clone(),
            config_id: rf.config_id.clone(),
            run_hash: rf.hash(),
        };
        match read_result_of(&dir.join("runs").join(&rf.id).join("result.json"), &who) {
            // Trained from files that changed since: not the result of these inputs.
            Ok(r) if inputs_changed(&r).is_some() => input.unreadable.push((
                rf.id.clone(),
                format!(
                    "trained from files that changed since ({})",
                    inputs_changed(&r).unwrap_or_default()
                ),
            )),
            Ok(r) => {
                run.status = Some(r.status);
                run.evals = r.evals;
                run.tokens = r.tokens;
                run.wall_s = r.wall_s;
                run.error = r.error;
                run.trainable_params = Some(r.trainable_params);
                for (m, n) in r.metric_items {
                    let e = input.metric_items.entry(m).or_insert(n);
                    *e = (*e).min(n);
                }
            }
            Err(ResultError::Missing(_)) => {}
            Err(ResultError::Corrupt { reason, .. }) => {
                input.unreadable.push((rf.id.clone(), reason))
            }
            // Never counted as this run's: listed with the reason, like an unreadable one.
            Err(e @ (ResultError::NewerSchema { .. } | ResultError::NotThisRun { .. })) => {
                input.unreadable.push((rf.id.clone(), e.to_string()))
            }
        }
        input.runs.push(run);
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("runs")) {
        let mut foreign: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("result.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| !planned.contains(id))
            .collect();
        foreign.sort();
        input.foreign = foreign;
    }
    Ok(input)
}
