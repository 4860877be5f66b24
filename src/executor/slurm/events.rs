//! The events of a sweep on a cluster. The local executor sees its runs start and end; the Slurm
//! executor only sees each poll's state, so [`Watcher`] tells the same [`Event`]s from how the
//! sweep state changed since it last looked: a run sent again is `run_queued`, a run the
//! scheduler started is `run_started`, a run that left the queue is `run_ended`, and a run the
//! retry policy leaves is `run_skipped`, once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use crate::executor::state::{RunRecord, SweepState};
use crate::executor::{Event, EventSink, JobState};

/// What the sweep state was when last looked at, and when each run was seen to start.
#[derive(Debug)]
pub struct Watcher {
    last: BTreeMap<String, RunRecord>,
    running_since: HashMap<String, Instant>,
    /// The step of each run's last `run_progress` event.
    told: HashMap<String, u64>,
    /// The runs told as left (`run_skipped`) since they were last sent.
    left: HashSet<String>,
}

impl Watcher {
    /// A watcher that takes `state` as what was already known: it tells nothing of it.
    pub fn new(state: &SweepState) -> Watcher {
        Watcher {
            last: state.runs.clone(),
            running_since: HashMap::new(),
            told: HashMap::new(),
            left: HashSet::new(),
        }
    }

    /// The `run_skipped` event of run `id`, which is not sent again (`why`, from
    /// [`super::retry::why_left`]), unless it was told since the run was last sent.
    pub fn left(&mut self, id: &str, state: JobState, why: String) -> Option<Event> {
        self.left.insert(id.to_string()).then(|| Event::RunSkipped {
            id: id.to_string(),
            state,
            detail: why,
        })
    }

    /// The `run_progress` event of run `id` at `p`, if it got further than last told.
    pub fn progress(&mut self, id: &str, p: &crate::progress::Progress) -> Option<Event> {
        let told = self.told.entry(id.to_string()).or_insert(0);
        (p.step > *told).then(|| {
            *told = p.step;
            Event::progress(id, p)
        })
    }

    /// Start telling a sweep of the runs `ids` on `executor` (`parallel` at a time): the
    /// `start` event, with the runs `state` already has final; what it holds is known from then.
    pub fn start(
        state: &SweepState,
        sweep: &str,
        ids: &[String],
        executor: &str,
        parallel: usize,
        sink: &mut dyn EventSink,
    ) -> Watcher {
        let done = ids
            .iter()
            .filter(|id| state.runs.get(*id).is_some_and(|r| r.state.is_final()))
            .count();
        sink.emit(&Event::Start {
            sweep: sweep.to_string(),
            executor: executor.to_string(),
            total: ids.len(),
            done,
            parallel,
        });
        Watcher::new(state)
    }

    /// Tell `sink` the events that take the runs `ids` from what was last seen to `state`.
    pub fn tell(&mut self, state: &SweepState, ids: &[String], sink: &mut dyn EventSink) {
        for e in self.update(state, ids) {
            sink.emit(&e);
        }
    }

    /// The events that take the runs `ids` (in this order) from what was last seen to `state`.
    pub fn update(&mut self, state: &SweepState, ids: &[String]) -> Vec<Event> {
        self.update_at(state, ids, Instant::now())
    }

    fn update_at(&mut self, state: &SweepState, ids: &[String], now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for id in ids {
            let Some(cur) = state.runs.get(id) else {
                continue;
            };
            let prev = self.last.get(id);
            // Sent (again): every submission counts an attempt.
            let queued = cur.attempts > prev.map_or(0, |p| p.attempts);
            let before = match prev {
                Some(p) if !queued => p.state,
                _ => JobState::Pending,
            };
            if queued {
                self.running_since.remove(id);
                // A new attempt may start over (from its checkpoint, or from scratch).
                self.told.remove(id);
                self.left.remove(id);
                events.push(Event::RunQueued {
                    id: id.clone(),
                    attempt: cur.attempts,
                    job_id: cur.job_id.clone(),
                });
            }
            if cur.state == JobState::Running && before != JobState::Running {
                self.running_since.insert(id.clone(), now);
                events.push(Event::RunStarted {
                    id: id.clone(),
                    attempt: cur.attempts.max(1),
                });
            }
            let ended = !matches!(cur.state, JobState::Pending | JobState::Running);
            if ended && cur.state != before {
                events.push(Event::RunEnded {
                    id: id.clone(),
                    state: cur.state,
                    wall_s: self
                        .running_since
                        .remove(id)
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    detail: cur.detail.clone(),
                });
            }
            self.last.insert(id.clone(), cur.clone());
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn rec(state: JobState, attempts: u32, job: &str) -> RunRecord {
        RunRecord {
            state,
            attempts,
            backend: "slurm:dev".into(),
            job_id: Some(job.into()),
            detail: (state == JobState::Failed).then(|| "exit 3".to_string()),
            progress: Default::default(),
        }
    }

    fn state(runs: &[(&str, RunRecord)]) -> SweepState {
        let mut s = SweepState::new("s");
        for (id, r) in runs {
            s.runs.insert(id.to_string(), r.clone());
        }
        s
    }

    fn names(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let v = serde_json::to_value(e).unwrap();
                format!(
                    "{} {}",
                    v["event"].as_str().unwrap(),
                    v["id"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn each_change_of_a_poll_is_one_event_in_order() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let t0 = Instant::now();
        // Known already: a completed run tells nothing; b was never sent.
        let mut w = Watcher::new(&state(&[("a", rec(JobState::Completed, 1, "1_0"))]));
        let s1 = state(&[
            ("a", rec(JobState::Completed, 1, "1_0")),
            ("b", rec(JobState::Pending, 1, "2_0")),
        ]);
        let e = w.update_at(&s1, &ids, t0);
        assert_eq!(names(&e), ["run_queued b"]);
        assert_eq!(
            e[0],
            Event::RunQueued {
                id: "b".into(),
                attempt: 1,
                job_id: Some("2_0".into())
            }
        );
        // Nothing changed: nothing told.
        assert!(w.update_at(&s1, &ids, t0).is_empty());
        let s2 = state(&[
            ("a", rec(JobState::Completed, 1, "1_0")),
            ("b", rec(JobState::Running, 1, "2_0")),
        ]);
        assert_eq!(names(&w.update_at(&s2, &ids, t0)), ["run_started b"]);
        let s3 = state(&[
            ("a", rec(JobState::Completed, 1, "1_0")),
            ("b", rec(JobState::Failed, 1, "2_0")),
        ]);
        let e = w.update_at(&s3, &ids, t0 + Duration::from_secs(7));
        assert_eq!(
            e,
            [Event::RunEnded {
                id: "b".into(),
                state: JobState::Failed,
                wall_s: Some(7.0),
                detail: Some("exit 3".into())
            }]
        );
        // Sent again, then it failed again before a poll saw it run: queued, then ended with
        // no time (it was not seen to start).
        let s4 = state(&[
            ("a", rec(JobState::Completed, 1, "1_0")),
            ("b", rec(JobState::Failed, 2, "3_0")),
        ]);
        let e = w.update_at(&s4, &ids, t0 + Duration::from_secs(9));
        assert_eq!(names(&e), ["run_queued b", "run_ended b"]);
        assert!(matches!(e[1], Event::RunEnded { wall_s: None, .. }));
    }

    #[test]
    fn progress_is_told_once_per_step_and_again_for_a_new_attempt() {
        let p = |step| crate::progress::Progress {
            step,
            total_steps: 9,
            tokens: step * 8,
            train_loss: None,
            tokens_per_s: None,
        };
        let ids = vec!["a".to_string()];
        let mut w = Watcher::new(&state(&[("a", rec(JobState::Running, 1, "1_0"))]));
        assert!(w.progress("a", &p(3)).is_some());
        assert!(w.progress("a", &p(3)).is_none(), "not twice");
        assert!(w.progress("a", &p(2)).is_none(), "never backwards");
        // Sent again (it failed): its steps from the start are news again.
        w.update_at(
            &state(&[("a", rec(JobState::Pending, 2, "2_0"))]),
            &ids,
            Instant::now(),
        );
        assert!(w.progress("a", &p(1)).is_some());
    }

    #[test]
    fn a_run_already_running_when_attached_ends_without_a_time() {
        let ids = vec!["a".to_string()];
        let mut w = Watcher::new(&state(&[("a", rec(JobState::Running, 1, "1_0"))]));
        let e = w.update_at(
            &state(&[("a", rec(JobState::Timeout, 1, "1_0"))]),
            &ids,
            Instant::now(),
        );
        assert_eq!(names(&e), ["run_ended a"]);
        assert!(matches!(
            e[0],
            Event::RunEnded {
                state: JobState::Timeout,
                wall_s: None,
                ..
            }
        ));
    }
}
