//! How far a run in training has got: its step of all, its last training loss, its speed and
//! the time left, from the run's own metrics.jsonl. The trainer prints it as it logs (so that
//! train.log grows as training goes), and `sweep status` shows it for runs that are running.

use std::path::Path;

/// A running run's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// The last training loss.
    pub train_loss: Option<f64>,
    /// Training tokens per second since the previous log line.
    pub tokens_per_s: Option<f64>,
}

/// A duration in words: `45 s`, `12 min`, `3.5 h`.
pub fn duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("{:.0} s", secs.max(0.0))
    } else if secs < 5400.0 {
        format!("{:.0} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

impl Progress {
    /// The progress of the last line with a step past 0 of a metrics.jsonl's text, for a run of
    /// `total_steps` steps.
    pub fn from_metrics(text: &str, total_steps: u64) -> Option<Progress> {
        let last = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["step"].as_u64().is_some_and(|s| s > 0))?;
        Some(Progress {
            step: last["step"].as_u64()?,
            total_steps,
            tokens: last["tokens"].as_u64().unwrap_or(0),
            train_loss: last["train_loss"].as_f64(),
            tokens_per_s: last["tokens_per_s"].as_f64(),
        })
    }

    /// The progress of the run in `run_dir`, if it has logged a step.
    pub fn of_run(run_dir: &Path, total_steps: u64) -> Option<Progress> {
        let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).ok()?;
        Progress::from_metrics(&text, total_steps)
    }

    /// `step 5/10 (50%), loss 4.1234, 1234 tokens/s, about 12 s left`.
    pub fn describe(&self, tokens_per_step: u64) -> String {
        let total = self.total_steps.max(1);
        let mut s = format!(
            "step {}/{} ({:.0}%)",
            self.step,
            total,
            100.0 * self.step as f64 / total as f64
        );
        if let Some(l) = self.train_loss {
            s.push_str(&format!(", loss {l:.4}"));
        }
        if let Some(tps) = self.tokens_per_s.filter(|t| *t > 0.0) {
            let left = total.saturating_sub(self.step) * tokens_per_step;
            s.push_str(&format!(", {tps:.0} tokens/s"));
            if left > 0 {
                s.push_str(&format!(", about {} left", duration(left as f64 / tps)));
            }
        }
        s
    }
}

/// A run's progress as it trains: a bar of its steps redrawn in place when stderr is a
/// terminal (`sweep train` or `sweep pretrain` by hand), one line per log otherwise (the run's
/// train.log under an executor, or a job's Slurm log).
pub struct StepBar {
    bar: indicatif::ProgressBar,
}

impl StepBar {
    /// A bar of `total_steps` for the run `id`, at `step` already (a resumed run).
    pub fn new(id: &str, total_steps: u64, step: u64) -> StepBar {
        let bar = indicatif::ProgressBar::new(total_steps.max(1)).with_position(step);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:24}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(id.to_string());
        StepBar { bar }
    }

    /// Whether the bar is drawn (stderr is a terminal).
    pub fn is_drawn(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Show `p` (described for `tokens_per_step`) and `extra` (the evaluations at this step):
    /// the bar and, for evaluations, a line above it; or a line on stderr.
    pub fn show(&self, id: &str, p: &Progress, tokens_per_step: u64, extra: &str) {
        let text = p.describe(tokens_per_step);
        if self.is_drawn() {
            self.bar.set_position(p.step);
            self.bar.set_message(text.clone());
            if !extra.is_empty() {
                self.bar.println(format!("{id}: {text}{extra}"));
            }
        } else {
            eprintln!("{id}: {text}{extra}");
        }
    }

    /// Leave the bar as last drawn.
    pub fn finish(&self) {
        self.bar.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_step_line_says_how_far_and_how_long() {
        let text = r#"{"step":0,"tokens":0,"lr":0.0,"train_loss":null,"target_loss":5.5}
{"step":5,"tokens":320,"lr":0.01,"train_loss":4.25,"tokens_per_s":64.0}
{"step":10,"tokens":640,"lr":0.01,"train_loss":3.5,"tokens_per_s":32.0,"target_loss":3.9}
"#;
        let p = Progress::from_metrics(text, 40).unwrap();
        assert_eq!((p.step, p.tokens, p.train_loss), (10, 640, Some(3.5)));
        // 30 steps of 64 tokens left at 32 tokens/s: 60 s.
        assert_eq!(
            p.describe(64),
            "step 10/40 (25%), loss 3.5000, 32 tokens/s, about 60 s left"
        );
        assert_eq!(
            Progress::from_metrics(text.lines().next().unwrap(), 40),
            None
        );
        assert_eq!(Progress::from_metrics("", 40), None);
        assert_eq!(duration(7200.0), "2.0 h");
        assert_eq!(duration(600.0), "10 min");
    }
}
