//! Renderers of executor events: plain progress lines for a terminal or a log, and JSON lines.

use std::io::Write;

use super::{Event, EventSink};

/// Human progress lines: `[3/42] 2f6a023cf3-s0 completed in 12.3s`. `[ENDED/TOTAL]` counts
/// the runs that have ended and not been sent again.
pub struct TextRenderer<W: Write> {
    out: W,
    total: usize,
    ended: std::collections::HashSet<String>,
    done: usize,
    quiet: bool,
    verbose: bool,
}

impl<W: Write> TextRenderer<W> {
    /// A renderer writing to `out`; `quiet` keeps only the final summary.
    pub fn new(out: W, quiet: bool) -> Self {
        TextRenderer {
            out,
            total: 0,
            ended: Default::default(),
            done: 0,
            quiet,
            verbose: false,
        }
    }

    /// With `verbose` (`-v`), also how far each running run has got.
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// `[ENDED/TOTAL]`.
    fn count(&self) -> String {
        format!("[{}/{}]", self.done + self.ended.len(), self.total)
    }

    /// The line of an event, if it has one (always for the summaries, which `quiet` keeps).
    pub fn line(&mut self, event: &Event) -> Option<String> {
        let loud = !self.quiet;
        match event {
            Event::Start {
                sweep,
                executor,
                total,
                done,
                parallel,
            } => {
                self.total = *total;
                self.done = *done;
                self.ended.clear();
                let place = match executor.strip_prefix("slurm:") {
                    Some(c) => format!(" on {c}"),
                    None => String::new(),
                };
                loud.then(|| {
                    format!(
                        "sweep {sweep}{place}: {total} runs, {done} already done, {parallel} at a time"
                    )
                })
            }
            Event::RunQueued {
                id,
                attempt,
                job_id,
            } => {
                self.ended.remove(id);
                loud.then(|| {
                    format!(
                        "{} {id} queued{}{}",
                        self.count(),
                        job_id
                            .as_ref()
                            .map(|j| format!(" as job {j}"))
                            .unwrap_or_default(),
                        attempt_note(*attempt)
                    )
                })
            }
            Event::RunStarted { id, attempt } => {
                self.ended.remove(id);
                loud.then(|| format!("{} {id} started{}", self.count(), attempt_note(*attempt)))
            }
            Event::RunSkipped { id, state, detail } => {
                Some(format!("{id} not trained ({}): {detail}", state.name()))
            }
            Event::RunWaiting { id, detail } => {
                loud.then(|| format!("{} {id} waits: {detail}", self.count()))
            }
            Event::RunProgress {
                id,
                step,
                total_steps,
                tokens,
                train_loss,
                tokens_per_s,
            } => (loud && self.verbose).then(|| {
                let p = crate::progress::Progress {
                    step: *step,
                    total_steps: *total_steps,
                    tokens: *tokens,
                    train_loss: *train_loss,
                    tokens_per_s: *tokens_per_s,
                };
                format!(
                    "{} {id}: {}",
                    self.count(),
                    p.describe(tokens / step.max(&1))
                )
            }),
            Event::RunEnded {
                id,
                state,
                wall_s,
                detail,
            } => {
                self.ended.insert(id.clone());
                let detail = detail
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                let took = wall_s.map(|w| format!(" in {w:.1}s")).unwrap_or_default();
                loud.then(|| format!("{} {id} {}{took}{detail}", self.count(), state.name()))
            }
            Event::Note { message } => Some(format!("sweep: {message}")),
            Event::Report { path } => loud.then(|| format!("{} report in {path}", self.count())),
            Event::Submitted {
                sweep,
                cluster,
                runs,
                submitted,
                done,
                round_trips,
                wall_s,
                ..
            } => loud.then(|| {
                format!(
                    "sweep {sweep}: submitted {submitted} of {runs} runs to {cluster} ({done} already done, the rest queued or waiting for a retry); {round_trips} SSH round trips in {wall_s:.1}s"
                )
            }),
            Event::Finish {
                counts,
                wall_s,
                interrupted,
            } => {
                let parts: Vec<String> = counts
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, n)| format!("{n} {}", s.name()))
                    .collect();
                Some(format!(
                    "{}: {} in {wall_s:.1}s",
                    if *interrupted {
                        "interrupted (rerun to resume)"
                    } else {
                        "done"
                    },
                    parts.join(", ")
                ))
            }
        }
    }
}

/// ` (attempt N)` past the first.
fn attempt_note(attempt: u32) -> String {
    if attempt > 1 {
        format!(" (attempt {attempt})")
    } else {
        String::new()
    }
}

impl<W: Write> EventSink for TextRenderer<W> {
    fn emit(&mut self, event: &Event) {
        if let Some(line) = self.line(event) {
            let _ = writeln!(self.out, "{line}");
            let _ = self.out.flush();
        }
    }
}

/// On a terminal: a bar of the runs that have ended, with the runs by state beside it, and the
/// text lines printed above it.
pub struct BarRenderer {
    text: TextRenderer<std::io::Sink>,
    bar: indicatif::ProgressBar,
    done: u64,
    states: std::collections::BTreeMap<String, super::JobState>,
}

impl BarRenderer {
    /// A renderer on stderr (with `verbose`, the runs' progress lines too), or None when stderr
    /// is not a terminal (use [`TextRenderer`]).
    pub fn on_terminal(verbose: bool) -> Option<BarRenderer> {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("runs [{bar:24}] {pos}/{len} ended {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        Some(BarRenderer {
            text: TextRenderer::new(std::io::sink(), false).verbose(verbose),
            bar,
            done: 0,
            states: Default::default(),
        })
    }

    /// `(2 running, 1 queued, 1 failed)`.
    fn by_state(&self) -> String {
        use super::JobState;
        let parts: Vec<String> = JobState::ALL
            .iter()
            .filter(|s| !s.is_final())
            .filter_map(|s| {
                let n = self.states.values().filter(|v| *v == s).count();
                let name = if *s == JobState::Pending {
                    "queued"
                } else {
                    s.name()
                };
                (n > 0).then(|| format!("{n} {name}"))
            })
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("({})", parts.join(", "))
        }
    }
}

impl EventSink for BarRenderer {
    fn emit(&mut self, event: &Event) {
        use super::JobState;
        let line = self.text.line(event);
        match event {
            Event::Start { total, done, .. } => {
                self.bar.set_length(*total as u64);
                self.done = *done as u64;
            }
            Event::RunQueued { id, .. } => {
                self.states.insert(id.clone(), JobState::Pending);
            }
            Event::RunStarted { id, .. } => {
                self.states.insert(id.clone(), JobState::Running);
            }
            Event::RunEnded { id, state, .. } => {
                self.states.insert(id.clone(), *state);
            }
            _ => {}
        }
        let ended = self
            .states
            .values()
            .filter(|s| !matches!(s, JobState::Pending | JobState::Running))
            .count() as u64;
        self.bar.set_position(self.done + ended);
        self.bar.set_message(self.by_state());
        if let Some(line) = line {
            if matches!(event, Event::Finish { .. }) {
                self.bar.finish_and_clear();
                eprintln!("{line}");
            } else {
                self.bar.println(line);
            }
        }
    }
}

/// One JSON object per event, for machines (`--json`).
pub struct JsonLinesRenderer<W: Write> {
    out: W,
}

impl<W: Write> JsonLinesRenderer<W> {
    /// A renderer writing to `out`.
    pub fn new(out: W) -> Self {
        JsonLinesRenderer { out }
    }
}

impl<W: Write> EventSink for JsonLinesRenderer<W> {
    fn emit(&mut self, event: &Event) {
        if let Ok(s) = serde_json::to_string(event) {
            let _ = writeln!(self.out, "{s}");
            let _ = self.out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::JobState;

    fn events() -> Vec<Event> {
        vec![
            Event::Start {
                sweep: "s".into(),
                executor: "local".into(),
                total: 2,
                done: 0,
                parallel: 2,
            },
            Event::RunStarted {
                id: "a-s0".into(),
                attempt: 1,
            },
            Event::RunEnded {
                id: "a-s0".into(),
                state: JobState::Completed,
                wall_s: Some(1.25),
                detail: None,
            },
            Event::RunEnded {
                id: "b-s0".into(),
                state: JobState::Diverged,
                wall_s: Some(0.5),
                detail: Some("loss is NaN at step 3".into()),
            },
            Event::Finish {
                counts: vec![
                    (JobState::Completed, 1),
                    (JobState::Diverged, 1),
                    (JobState::Failed, 0),
                ],
                wall_s: 2.0,
                interrupted: false,
            },
        ]
    }

    #[test]
    fn text_lines() {
        let mut buf = Vec::new();
        let mut r = TextRenderer::new(&mut buf, false);
        for e in events() {
            r.emit(&e);
        }
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "sweep s: 2 runs, 0 already done, 2 at a time\n[0/2] a-s0 started\n[1/2] a-s0 completed in 1.2s\n\
             [2/2] b-s0 diverged in 0.5s: loss is NaN at step 3\ndone: 1 completed, 1 diverged in 2.0s\n"
        );
    }

    #[test]
    fn json_lines() {
        let mut buf = Vec::new();
        let mut r = JsonLinesRenderer::new(&mut buf);
        for e in events() {
            r.emit(&e);
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[2]["event"], "run_ended");
        assert_eq!(lines[2]["state"], "completed");
    }
}
