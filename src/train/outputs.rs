//! What a run leaves in its folder: `metrics.jsonl` lines and the final `result.json`.

use std::io::Write;
use std::path::Path;

use super::TrainError;

pub use crate::results::{EvalRecord, MetricsLine, RunResult, RunStatus, RESULT_SCHEMA};

/// Peak resident set size in KiB from `/proc/self/status` (None off Linux).
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vmhwm(&s)
}

/// The VmHWM line of a /proc status text, in KiB.
pub fn parse_vmhwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Append one line to metrics.jsonl.
pub fn append_metrics(path: &Path, line: &MetricsLine) -> Result<(), TrainError> {
    let json = serde_json::to_string(line).map_err(|e| TrainError::Output(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| TrainError::Output(format!("{}: {e}", path.display())))?;
    writeln!(f, "{json}").map_err(|e| TrainError::Output(format!("{}: {e}", path.display())))
}

/// Keep only the metrics lines up to `step` (a resumed run redoes the steps after it).
pub fn truncate_metrics(path: &Path, step: u64) -> Result<(), TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::Output(format!("{}: {e}", path.display()))),
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<MetricsLine>(l).is_ok_and(|m| m.step <= step))
        .collect();
    crate::util::write_atomic(path, |w| {
        for l in &kept {
            writeln!(w, "{l}")?;
        }
        Ok(())
    })
    .map_err(|e| TrainError::Output(format!("{}: {e}", path.display())))
}

/// Write result.json atomically.
pub fn write_result(path: &Path, result: &RunResult) -> Result<(), TrainError> {
    let json = serde_json::to_vec_pretty(result).map_err(|e| TrainError::Output(e.to_string()))?;
    crate::util::write_atomic(path, |w| w.write_all(&json))
        .map_err(|e| TrainError::Output(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn vmhwm_parses_and_nan_loss_is_null() {
        assert_eq!(parse_vmhwm("Name:\tx\nVmHWM:\t  12345 kB\n"), Some(12345));
        let mut eval = BTreeMap::new();
        eval.insert("target_loss".to_string(), 2.5);
        let line = MetricsLine {
            step: 3,
            tokens: 96,
            lr: 0.1,
            train_loss: Some(f64::NAN),
            grad_norm: None,
            tokens_per_s: None,
            comm_ms_per_step: None,
            time: None,
            eval,
        };
        let json = serde_json::to_string(&line).unwrap();
        assert!(json.contains("\"train_loss\":null"), "{json}");
        assert!(json.contains("\"target_loss\":2.5"), "{json}");
    }
}
