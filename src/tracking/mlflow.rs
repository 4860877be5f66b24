//! MLflow: with `[tracking] mlflow = "http://HOST:PORT"` every run is an MLflow run of the
//! sweep's experiment (run name = run id, params = the run's resolved run.json flattened to
//! dotted keys, metrics = the scalars of its metrics.jsonl at step = training tokens, as in the
//! TensorBoard files), logged over MLflow's REST API (`/api/2.0/mlflow/...`).
//!
//! Like the TensorBoard file, what is logged is a function of the run's metrics.jsonl: [`sync`]
//! sends the lines the server has not had yet, so it can be called any number of times, from
//! anywhere that holds the run folder (the trainer while it trains, the local executor after
//! a run, `sweep collect` on the laptop after a Slurm run), and sends nothing twice. What has
//! been sent is kept in `runs/ID/mlflow.json`; without it (a folder collected from a cluster
//! whose nodes could not reach the server, a lost file) the run is found on the server by its
//! tags, one of which says how far it was sent (set in the same request as the metrics). A run
//! trained again from scratch ([`retire`]), or whose first metrics line differs, is a new MLflow
//! run; a resumed one continues its own.
//!
//! A server that is down or refuses never fails a run: the trainer's [`Live`] logs from a
//! thread of its own, says once that the server cannot be reached, retries with a growing
//! pause and says how many lines it could not send at the end; the next sync sends them.
//!
//! MLFLOW_TRACKING_TOKEN (a Bearer token) or MLFLOW_TRACKING_USERNAME and
//! MLFLOW_TRACKING_PASSWORD (basic auth) are sent as MLflow's own clients send them.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::plan::run::RunFile;
use crate::results::MetricsLine;

/// What has been sent of a run, in its folder.
pub const STATE_FILE: &str = "mlflow.json";

/// The most metrics one log-batch request carries (MLflow's limit).
const MAX_METRICS: usize = 1000;
/// The most params one log-batch request carries (MLflow's limit).
const MAX_PARAMS: usize = 100;
/// The longest param value MLflow stores.
const MAX_PARAM_VALUE: usize = 6000;

/// How a run ended, as MLflow's run status says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunEnd {
    /// Trained to its budget (or diverged, which is a finished measurement).
    Finished,
    /// Failed with an error.
    Failed,
    /// Stopped by a signal; it resumes.
    Killed,
}

impl RunEnd {
    /// How a run that ended with `status` ended, for MLflow.
    pub fn of(status: crate::results::RunStatus) -> RunEnd {
        use crate::results::RunStatus::*;
        match status {
            Completed | Diverged => RunEnd::Finished,
            Failed => RunEnd::Failed,
            Interrupted => RunEnd::Killed,
        }
    }
}

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    /// The server could not be reached or did not answer in time.
    #[error("MLflow at {uri} cannot be reached ({why})")]
    Unreachable {
        /// The server.
        uri: String,
        /// What the connection said.
        why: String,
    },
    /// The server answered with an error.
    #[error("MLflow at {uri} refused {what}: {why}")]
    Refused {
        /// The server.
        uri: String,
        /// The API call.
        what: String,
        /// Its answer.
        why: String,
    },
    /// The run folder could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// The state file: which MLflow run holds this run, and how far it has been sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    uri: String,
    experiment_id: String,
    run_id: String,
    /// A digest of the first metrics line: which start of the run this MLflow run logs.
    origin: String,
    /// Training tokens of the last line sent.
    sent_tokens: Option<u64>,
    /// How many lines at `sent_tokens` were sent (a trainer may log two lines at one count of
    /// tokens, a sync between them: the second is sent later, not lost). None (a state file of
    /// an earlier version): every line at `sent_tokens` was sent.
    #[serde(default)]
    sent_at_tokens: Option<usize>,
    /// The status last set on the server.
    status: Option<RunEnd>,
    /// MLflow runs of earlier starts of this run (trained again from scratch): never
    /// continued, even when a new start logs the same first line.
    #[serde(default)]
    retired: Vec<String>,
}

impl State {
    /// What this state says was sent, as the tag each metrics request sets with it.
    fn sent_tag(&self) -> String {
        format!(
            "{}:{}",
            self.sent_tokens.unwrap_or(0),
            self.sent_at_tokens.unwrap_or(0)
        )
    }
}

/// The tag that says how far a run's metrics were sent (`TOKENS:LINES_AT_TOKENS`): set in the
/// same request as the metrics, so that a run folder that lost its mlflow.json continues where
/// the server is.
const SENT_TAG: &str = "sweep_sent";

/// A run folder is trained again from scratch: its MLflow run is finished with, and the next
/// start logs to a new one even if its first line is the same (a user's trainer whose lines
/// have no time). Nothing to do where the run was never logged.
pub fn retire(dir: &Path) -> Result<(), MlflowError> {
    let path = dir.join(STATE_FILE);
    let Some(mut s) = read_state(&path) else {
        return Ok(());
    };
    if !s.run_id.is_empty() && !s.retired.contains(&s.run_id) {
        s.retired.push(std::mem::take(&mut s.run_id));
    }
    s.origin = String::new();
    s.sent_tokens = None;
    s.sent_at_tokens = None;
    s.status = None;
    save_state(&path, &s)
}

/// A run's metrics.jsonl was cut back to lines up to `last` (the tokens of its last kept line
/// and how many kept lines are at them), to be measured again from a checkpoint: what was sent
/// past that is sent again (MLflow then holds both measurements at those steps, the later
/// one last). Nothing to do where less was sent or the run was never logged.
pub fn rewind(dir: &Path, last: (u64, usize)) -> Result<(), MlflowError> {
    let path = dir.join(STATE_FILE);
    let Some(mut s) = read_state(&path) else {
        return Ok(());
    };
    let past = match s.sent_tokens {
        Some(t) if t > last.0 => true,
        Some(t) if t == last.0 => s.sent_at_tokens.is_none_or(|n| n > last.1),
        _ => false,
    };
    if past {
        s.sent_tokens = Some(last.0);
        s.sent_at_tokens = Some(last.1);
        s.status = None;
        save_state(&path, &s)?;
    }
    Ok(())
}

/// Where a run is logged.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The server, without a trailing slash.
    pub uri: String,
    /// The experiment's name.
    pub experiment: String,
}

impl Target {
    /// The target of a run.json's `[tracking]`, if it names a server.
    pub fn of(run: &RunFile) -> Option<Target> {
        let t = run.tracking.as_ref()?;
        let uri = t.mlflow.as_ref()?.trim_end_matches('/').to_string();
        Some(Target {
            uri,
            experiment: t
                .mlflow_experiment
                .clone()
                .unwrap_or_else(|| run.sweep.clone()),
        })
    }
}

/// What one sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Synced {
    /// Metrics lines sent.
    pub lines: usize,
    /// Lines not sent yet (0 once the server has everything).
    pub left: usize,
}

/// Send what the server has not had of the run in `dir` (its metrics.jsonl), and set its
/// status to `end` when given. Nothing is sent when the server already has it all.
pub fn sync(
    dir: &Path,
    run: &RunFile,
    target: &Target,
    end: Option<RunEnd>,
) -> Result<Synced, MlflowError> {
    let lines = read_lines(dir);
    let Some(origin) = lines.first().map(|(_, text)| digest(text)) else {
        return Ok(Synced::default());
    };
    let state_path = dir.join(STATE_FILE);
    let saved = read_state(&state_path);
    let retired = saved
        .as_ref()
        .map(|s| s.retired.clone())
        .unwrap_or_default();
    let mut state = saved.filter(|s| s.uri == target.uri && s.origin == origin);
    let all: Vec<&MetricsLine> = lines.iter().map(|(l, _)| l).collect();
    if let Some(s) = &state {
        if unsent(&all, s).is_empty() && (end.is_none() || s.status == end) {
            return Ok(Synced::default());
        }
    }
    let api = Api::new(&target.uri);
    let mut st = match state.take() {
        Some(s) => s,
        None => {
            let s = api.find_or_create(run, target, &origin, retired)?;
            save_state(&state_path, &s)?;
            s
        }
    };
    let pending = unsent(&all, &st);
    // A run stopped and resumed is running again once it logs.
    if end.is_none() && st.status.is_some() && !pending.is_empty() {
        api.update(&st.run_id, "RUNNING")?;
        st.status = None;
        save_state(&state_path, &st)?;
    }
    let mut sent = 0;
    for batch in line_batches(&pending) {
        let metrics: Vec<Value> = batch.iter().flat_map(|l| metric_values(l)).collect();
        let mut next = st.clone();
        for l in &batch {
            next.sent_at_tokens = Some(match next.sent_at_tokens {
                Some(n) if next.sent_tokens == Some(l.tokens) => n + 1,
                _ => 1,
            });
            next.sent_tokens = Some(l.tokens);
        }
        let tags = [json!({"key": SENT_TAG, "value": next.sent_tag()})];
        let result = api.post(
            "runs/log-batch",
            &json!({"run_id": st.run_id, "metrics": metrics, "tags": tags}),
            "the run's metrics",
        );
        if let Err(e) = result {
            let _ = save_state(&state_path, &st);
            return Err(e);
        }
        sent += batch.len();
        st = next;
        save_state(&state_path, &st)?;
    }
    if let Some(end) = end {
        if st.status != Some(end) {
            api.update(&st.run_id, status_name(end))?;
            st.status = Some(end);
            save_state(&state_path, &st)?;
        }
    }
    Ok(Synced {
        lines: sent,
        left: pending.len() - sent,
    })
}

/// [`sync`] of the run `run` in `dir`, if it names a server (None: it names none), ended as
/// its result.json says (a folder without one is still running, or was stopped).
pub fn sync_run(dir: &Path, run: &RunFile) -> Result<Option<Synced>, MlflowError> {
    let Some(target) = Target::of(run) else {
        return Ok(None);
    };
    let end = crate::results::read_result(&dir.join("result.json"))
        .ok()
        .map(|r| RunEnd::of(r.status));
    sync(dir, run, &target, end).map(Some)
}

/// [`sync_run`] of a sweep's runs (folder, run.json): what the trainers could not send (a
/// server that was down, cluster nodes that cannot reach it) is sent from here. Stops at a
/// server that cannot be reached; returns a warning line when something is left unsent (a
/// tracker never fails a sweep).
pub fn sync_runs(runs: impl IntoIterator<Item = (std::path::PathBuf, RunFile)>) -> Option<String> {
    let (mut failed, mut first) = (0usize, None);
    let mut unreachable = false;
    for (dir, run) in runs {
        if unreachable {
            failed += usize::from(Target::of(&run).is_some());
            continue;
        }
        if let Err(e) = sync_run(&dir, &run) {
            unreachable = matches!(e, MlflowError::Unreachable { .. });
            failed += 1;
            first.get_or_insert(e.to_string());
        }
    }
    first.map(|e| {
        format!(
            "{failed} run(s) not wholly logged to MLflow ({e}): nothing is lost; the next `sweep run` or `sweep collect` of the sweep sends the rest"
        )
    })
}

/// The run's status as MLflow names it.
fn status_name(end: RunEnd) -> &'static str {
    match end {
        RunEnd::Finished => "FINISHED",
        RunEnd::Failed => "FAILED",
        RunEnd::Killed => "KILLED",
    }
}

/// The trainer's MLflow logger: a thread that syncs the run's metrics.jsonl as it grows (every
/// two seconds at most), so that a slow or absent server never holds training up.
pub struct Live {
    tx: mpsc::Sender<RunEnd>,
    done: mpsc::Receiver<()>,
}

impl Live {
    /// Start logging the run in `dir`, if its run.json names a server.
    pub fn start(dir: &Path, run: &RunFile) -> Option<Live> {
        let target = Target::of(run)?;
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        let (dir, run) = (dir.to_path_buf(), run.clone());
        std::thread::Builder::new()
            .name("mlflow".into())
            .spawn(move || {
                live_loop(&dir, &run, &target, &rx);
                let _ = done_tx.send(());
            })
            .ok()?;
        Some(Live { tx, done })
    }

    /// Send the rest and the run's status; wait at most `wait` for the server.
    pub fn finish(self, end: RunEnd, wait: Duration) {
        let _ = self.tx.send(end);
        let _ = self.done.recv_timeout(wait);
    }
}

fn live_loop(dir: &Path, run: &RunFile, target: &Target, rx: &mpsc::Receiver<RunEnd>) {
    let metrics = dir.join("metrics.jsonl");
    let mut seen = None;
    let mut pause = Duration::from_secs(2);
    let mut failing = false;
    let mut next_try = Instant::now();
    loop {
        let end = match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(end) => Some(end),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            // The trainer went away without saying how the run ended.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let size = std::fs::metadata(&metrics).map(|m| m.len()).ok();
        if end.is_none() && (Instant::now() < next_try || (size == seen && !failing)) {
            continue;
        }
        match sync(dir, run, target, end) {
            Ok(s) => {
                seen = size;
                if failing {
                    eprintln!(
                        "{}: MLflow at {} reachable again ({} lines sent)",
                        run.id, target.uri, s.lines
                    );
                }
                failing = false;
                pause = Duration::from_secs(2);
            }
            Err(e) => {
                if end.is_some() {
                    eprintln!(
                        "{}: not all of it logged to MLflow: {e}; the next `sweep run`/`sweep collect` of the sweep sends the rest",
                        run.id
                    );
                } else if !failing {
                    eprintln!(
                        "{}: {e}; training goes on, and the lines are sent once it answers",
                        run.id
                    );
                }
                failing = true;
                next_try = Instant::now() + pause;
                pause = (pause * 2).min(Duration::from_secs(120));
            }
        }
        if end.is_some() {
            return;
        }
    }
}

/// Metrics lines, each with its text, that parse (as the [trainer] contract allows).
fn read_lines(dir: &Path) -> Vec<(MetricsLine, String)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|t| {
            let v: Value = serde_json::from_str(t).ok()?;
            Some((MetricsLine::lenient(v.as_object()?)?, t.to_string()))
        })
        .collect()
}

fn digest(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_state(path: &Path) -> Option<State> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn save_state(path: &Path, s: &State) -> Result<(), MlflowError> {
    let json = serde_json::to_vec_pretty(s).map_err(|e| MlflowError::Io(e.to_string()))?;
    crate::util::write_atomic(path, |w| std::io::Write::write_all(w, &json))
        .map_err(|e| MlflowError::Io(format!("{}: {e}", path.display())))
}

/// The lines the server has not had: past the tokens of the last line sent, and those at its
/// tokens beyond the ones sent.
fn unsent<'a>(lines: &[&'a MetricsLine], st: &State) -> Vec<&'a MetricsLine> {
    let mut at = 0;
    lines
        .iter()
        .copied()
        .filter(|l| match st.sent_tokens {
            None => true,
            Some(s) if l.tokens == s => {
                at += 1;
                st.sent_at_tokens.is_some_and(|n| at > n)
            }
            Some(s) => l.tokens > s,
        })
        .collect()
}

/// Lines in requests of at most [`MAX_METRICS`] metrics, never parting lines of equal tokens
/// (what has been sent is known by tokens and the lines at them).
fn line_batches<'a>(lines: &[&'a MetricsLine]) -> Vec<Vec<&'a MetricsLine>> {
    let mut out: Vec<Vec<&MetricsLine>> = Vec::new();
    let mut count = 0;
    for l in lines {
        let n = super::tensorboard::scalars(l).len();
        let same_tokens = out
            .last()
            .and_then(|b| b.last())
            .is_some_and(|p| p.tokens == l.tokens);
        if out.is_empty() || (count + n > MAX_METRICS && !same_tokens) {
            out.push(Vec::new());
            count = 0;
        }
        count += n;
        if let Some(b) = out.last_mut() {
            b.push(l);
        }
    }
    out
}

fn metric_values(l: &MetricsLine) -> Vec<Value> {
    let ms = l.time.map_or_else(now_ms, |t| (t * 1000.0) as i64);
    super::tensorboard::scalars(l)
        .into_iter()
        .map(|(key, value)| {
            json!({"key": metric_key(&key), "value": value, "timestamp": ms, "step": l.tokens})
        })
        .collect()
}

/// A metric's name as MLflow takes it: letters, digits, `_ - . /` and spaces; anything else
/// (the `@` of `humaneval_pass@1`) becomes `_`, or the server refuses the whole batch.
fn metric_key(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-./ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The run's run.json as MLflow params: nested keys joined by dots, lists as JSON, values cut
/// to the length MLflow stores.
fn params(run: &RunFile) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(o) => {
                for (k, v) in o {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Null => {}
            Value::String(s) => out.push((prefix.to_string(), s.clone())),
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let mut value = serde_json::to_value(run).unwrap_or_default();
    if let Some(o) = value.as_object_mut() {
        o.remove("tracking");
    }
    let mut out = Vec::new();
    walk("", &value, &mut out);
    for (_, v) in &mut out {
        if v.chars().count() > MAX_PARAM_VALUE {
            *v = v.chars().take(MAX_PARAM_VALUE - 3).collect::<String>() + "...";
        }
    }
    out
}

/// MLflow's REST API, as much of it as a run needs.
struct Api {
    uri: String,
    http: reqwest::blocking::Client,
}

impl Api {
    fn new(uri: &str) -> Api {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_else(|_| reqwest::blocking::Client::new());
        Api {
            uri: uri.to_string(),
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/2.0/mlflow/{path}", self.uri)
    }

    fn authorized(
        &self,
        r: reqwest::blocking::RequestBuilder,
    ) -> reqwest::blocking::RequestBuilder {
        if let Ok(token) = std::env::var("MLFLOW_TRACKING_TOKEN") {
            return r.bearer_auth(token);
        }
        match std::env::var("MLFLOW_TRACKING_USERNAME") {
            Ok(user) => r.basic_auth(user, std::env::var("MLFLOW_TRACKING_PASSWORD").ok()),
            Err(_) => r,
        }
    }

    fn answer(&self, r: reqwest::blocking::RequestBuilder, what: &str) -> Result<Value, ApiError> {
        let resp = self
            .authorized(r)
            .send()
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        let status = resp.status();
        let body: Value = resp.json().unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        Err(ApiError::Refused {
            code: body["error_code"].as_str().unwrap_or("").to_string(),
            why: format!(
                "{what}: HTTP {status}{}",
                body["message"]
                    .as_str()
                    .map(|m| format!(", {m}"))
                    .unwrap_or_default()
            ),
        })
    }

    fn post(&self, path: &str, body: &Value, what: &str) -> Result<Value, MlflowError> {
        self.answer(self.http.post(self.url(path)).json(body), what)
            .map_err(|e| e.at(&self.uri, path))
    }

    fn update(&self, run_id: &str, status: &str) -> Result<(), MlflowError> {
        let mut body = json!({"run_id": run_id, "status": status});
        // A run that runs again has no end.
        if status != "RUNNING" {
            body["end_time"] = json!(now_ms());
        }
        self.post("runs/update", &body, "the run's status")
            .map(|_| ())
    }

    /// The experiment's id, made if there is none (another run making it at once is fine).
    fn experiment(&self, name: &str) -> Result<String, MlflowError> {
        let get = || {
            self.answer(
                self.http
                    .get(self.url("experiments/get-by-name"))
                    .query(&[("experiment_name", name)]),
                "the experiment",
            )
        };
        let id = |v: &Value| {
            v["experiment"]["experiment_id"]
                .as_str()
                .map(str::to_string)
        };
        match get() {
            Ok(v) => {
                if v["experiment"]["lifecycle_stage"] == "deleted" {
                    return Err(MlflowError::Refused {
                        uri: self.uri.clone(),
                        what: format!("experiment `{name}`"),
                        why: format!(
                            "it is deleted on the server: restore it (`mlflow experiments restore --experiment-id {}`) or log to another with tracking.mlflow_experiment",
                            id(&v).unwrap_or_default()
                        ),
                    });
                }
                if let Some(i) = id(&v) {
                    return Ok(i);
                }
            }
            Err(ApiError::Refused { code, .. }) if code == "RESOURCE_DOES_NOT_EXIST" => {}
            Err(e) => return Err(e.at(&self.uri, "experiments/get-by-name")),
        }
        let made = self.answer(
            self.http
                .post(self.url("experiments/create"))
                .json(&json!({"name": name})),
            "a new experiment",
        );
        match made {
            Ok(v) => v["experiment_id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| MlflowError::Refused {
                    uri: self.uri.clone(),
                    what: "experiments/create".into(),
                    why: "no experiment_id in its answer".into(),
                }),
            Err(ApiError::Refused { code, .. }) if code == "RESOURCE_ALREADY_EXISTS" => {
                let v = get().map_err(|e| e.at(&self.uri, "experiments/get-by-name"))?;
                id(&v).ok_or_else(|| MlflowError::Refused {
                    uri: self.uri.clone(),
                    what: "experiments/get-by-name".into(),
                    why: "no experiment_id in its answer".into(),
                })
            }
            Err(e) => Err(e.at(&self.uri, "experiments/create")),
        }
    }

    /// The run's params, in requests of at most [`MAX_PARAMS`].
    fn log_params(&self, run_id: &str, run: &RunFile) -> Result<(), MlflowError> {
        for chunk in params(run).chunks(MAX_PARAMS) {
            let params: Vec<Value> = chunk
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            self.post(
                "runs/log-batch",
                &json!({"run_id": run_id, "params": params}),
                "the run's params",
            )?;
        }
        Ok(())
    }

    /// The MLflow run of this start of the run: found by its tags (with the last step it
    /// holds), or made with the run's params.
    fn find_or_create(
        &self,
        run: &RunFile,
        target: &Target,
        origin: &str,
        retired: Vec<String>,
    ) -> Result<State, MlflowError> {
        let experiment_id = self.experiment(&target.experiment)?;
        let found = self.post(
            "runs/search",
            &json!({
                "experiment_ids": [experiment_id],
                "filter": format!("tags.sweep_run_id = '{}' and tags.sweep_origin = '{origin}'", run.id),
                "max_results": retired.len() + 1,
            }),
            "a search for the run",
        )?;
        let earlier = found["runs"].as_array().into_iter().flatten().find(|r| {
            r["info"]["run_id"]
                .as_str()
                .is_some_and(|id| !retired.iter().any(|x| x == id))
        });
        if let Some(found) = earlier {
            let info = &found["info"];
            let run_id = info["run_id"].as_str().unwrap_or_default().to_string();
            let sent = sent_on_server(found);
            let status = match info["status"].as_str() {
                Some("FINISHED") => Some(RunEnd::Finished),
                Some("FAILED") => Some(RunEnd::Failed),
                Some("KILLED") => Some(RunEnd::Killed),
                _ => None,
            };
            // Params of a run whose params request failed after it was made; the same values
            // again are accepted.
            self.log_params(&run_id, run)?;
            return Ok(State {
                uri: target.uri.clone(),
                experiment_id,
                run_id,
                origin: origin.to_string(),
                sent_tokens: sent.map(|(t, _)| t),
                sent_at_tokens: sent.and_then(|(_, n)| n),
                status,
                retired,
            });
        }
        let method = run.point.method.method_name();
        let tags = [
            ("mlflow.runName", run.id.clone()),
            ("sweep_run_id", run.id.clone()),
            ("sweep_origin", origin.to_string()),
            ("sweep", run.sweep.clone()),
            ("config_id", run.config_id.clone()),
            ("seed", run.seed.to_string()),
            ("method", method.to_string()),
        ];
        let made = self.post(
            "runs/create",
            &json!({
                "experiment_id": experiment_id,
                "run_name": run.id,
                "start_time": now_ms(),
                "tags": tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
            }),
            "a new run",
        )?;
        let run_id = made["run"]["info"]["run_id"]
            .as_str()
            .ok_or_else(|| MlflowError::Refused {
                uri: self.uri.clone(),
                what: "runs/create".into(),
                why: "no run_id in its answer".into(),
            })?
            .to_string();
        self.log_params(&run_id, run)?;
        Ok(State {
            uri: target.uri.clone(),
            experiment_id,
            run_id,
            origin: origin.to_string(),
            sent_tokens: None,
            sent_at_tokens: None,
            status: None,
            retired,
        })
    }
}

/// An error of one request, before it is told where it happened.
enum ApiError {
    Unreachable(String),
    Refused { code: String, why: String },
}

impl ApiError {
    fn at(self, uri: &str, path: &str) -> MlflowError {
        match self {
            ApiError::Unreachable(why) => MlflowError::Unreachable {
                uri: uri.to_string(),
                why,
            },
            ApiError::Refused { why, .. } => MlflowError::Refused {
                uri: uri.to_string(),
                what: path.to_string(),
                why,
            },
        }
    }
}

/// How far a run found on the server was sent (tokens, and lines at those tokens): the tag set
/// with its last metrics; for a run logged before that tag existed, the newest step of its
/// metrics, every line at it taken as sent.
fn sent_on_server(found: &Value) -> Option<(u64, Option<usize>)> {
    let tagged = found["data"]["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["key"] == SENT_TAG)
        .and_then(|t| t["value"].as_str())
        .and_then(|v| v.split_once(':'))
        .and_then(|(t, n)| Some((t.parse::<u64>().ok()?, Some(n.parse::<usize>().ok()?))));
    tagged.or_else(|| {
        found["data"]["metrics"]
            .as_array()?
            .iter()
            .filter_map(|m| {
                m["step"]
                    .as_u64()
                    .or_else(|| m["step"].as_str()?.parse().ok())
            })
            .max()
            .map(|step| (step, None))
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tokens: u64, evals: usize) -> MetricsLine {
        let mut l: MetricsLine = serde_json::from_value(
            json!({"step": tokens / 10, "tokens": tokens, "lr": 0.001, "train_loss": 2.0}),
        )
        .unwrap();
        for i in 0..evals {
            l.eval.insert(format!("m{i}"), i as f64);
        }
        l
    }

    #[test]
    fn lines_at_the_tokens_last_sent_are_sent_beyond_the_ones_that_were() {
        let lines = [line(0, 1), line(128, 0), line(128, 1), line(256, 0)];
        let all: Vec<&MetricsLine> = lines.iter().collect();
        let mut st = State {
            uri: "http://h".into(),
            experiment_id: "1".into(),
            run_id: "r".into(),
            origin: "o".into(),
            sent_tokens: None,
            sent_at_tokens: None,
            status: None,
            retired: vec![],
        };
        assert_eq!(unsent(&all, &st).len(), 4);
        st.sent_tokens = Some(128);
        assert_eq!(
            unsent(&all, &st).len(),
            1,
            "an earlier version's state: all at 128 sent"
        );
        st.sent_at_tokens = Some(1);
        let left = unsent(&all, &st);
        assert_eq!(left.len(), 2, "the second line at 128 is still to send");
        assert!(std::ptr::eq(left[0], &lines[2]) && std::ptr::eq(left[1], &lines[3]));
        st.sent_at_tokens = Some(2);
        assert_eq!(unsent(&all, &st).len(), 1);
        assert_eq!(st.sent_tag(), "128:2");
    }

    /// How far a run on the server was sent: its tag, or for a run an earlier version logged
    /// without one, its newest metric step (MLflow's REST API sends steps as strings).
    #[test]
    fn a_found_run_says_how_far_it_was_sent_with_or_without_its_tag() {
        let tagged = json!({"data": {"tags": [{"key": "sweep_sent", "value": "256:2"}],
            "metrics": [{"key": "train/loss", "step": "512"}]}});
        assert_eq!(sent_on_server(&tagged), Some((256, Some(2))));
        let old = json!({"data": {"tags": [{"key": "sweep_run_id", "value": "a"}],
            "metrics": [{"key": "train/loss", "step": "384"}, {"key": "eval/m0", "step": 256}]}});
        assert_eq!(sent_on_server(&old), Some((384, None)));
        assert_eq!(sent_on_server(&json!({"data": {}})), None, "nothing sent");
    }

    /// metrics.jsonl cut back to a checkpoint: what was sent past it is sent again; a state
    /// that sent less is left as it is.
    #[test]
    fn a_run_cut_back_to_a_checkpoint_sends_the_rest_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        rewind(dir.path(), (128, 1)).unwrap();
        assert!(!path.exists(), "never logged: nothing to do");
        let st = State {
            uri: "http://h".into(),
            experiment_id: "1".into(),
            run_id: "r".into(),
            origin: "o".into(),
            sent_tokens: Some(384),
            sent_at_tokens: Some(1),
            status: Some(RunEnd::Killed),
            retired: vec![],
        };
        save_state(&path, &st).unwrap();
        rewind(dir.path(), (128, 2)).unwrap();
        let after = read_state(&path).unwrap();
        assert_eq!(
            (after.sent_tokens, after.sent_at_tokens, after.status),
            (Some(128), Some(2), None)
        );
        rewind(dir.path(), (256, 1)).unwrap();
        assert_eq!(
            read_state(&path).unwrap(),
            after,
            "less was sent: unchanged"
        );
    }

    #[test]
    fn a_retired_run_is_not_continued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        retire(dir.path()).unwrap();
        assert!(!path.exists(), "nothing to retire where nothing was logged");
        let st = State {
            uri: "http://h".into(),
            experiment_id: "1".into(),
            run_id: "r1".into(),
            origin: "o".into(),
            sent_tokens: Some(128),
            sent_at_tokens: Some(1),
            status: Some(RunEnd::Finished),
            retired: vec!["r0".into()],
        };
        save_state(&path, &st).unwrap();
        retire(dir.path()).unwrap();
        let after = read_state(&path).unwrap();
        assert_eq!(after.retired, ["r0", "r1"]);
        assert!(after.origin.is_empty() && after.run_id.is_empty() && after.sent_tokens.is_none());
    }

    #[test]
    fn metric_names_are_ones_mlflow_takes() {
        assert_eq!(metric_key("eval/humaneval_pass@1"), "eval/humaneval_pass_1");
        assert_eq!(metric_key("train/loss"), "train/loss");
        assert_eq!(
            metric_key("eval/gsm8k.strict-match"),
            "eval/gsm8k.strict-match"
        );
    }

    #[test]
    fn batches_hold_at_most_a_requests_metrics_and_never_part_equal_tokens() {
        // Each line: lr, loss and 498 evaluation metrics = 500.
        let lines = [line(10, 498), line(20, 498), line(20, 498), line(30, 0)];
        let refs: Vec<&MetricsLine> = lines.iter().collect();
        let b = line_batches(&refs);
        let tokens: Vec<Vec<u64>> = b
            .iter()
            .map(|b| b.iter().map(|l| l.tokens).collect())
            .collect();
        // 10 and 20 fill one request; the second 20 stays with its twin although it overflows.
        assert_eq!(tokens, vec![vec![10, 20, 20], vec![30]]);
        assert!(line_batches(&[]).is_empty());
    }

    /// A LoRA run of a tiny sweep, logged to `uri`.
    pub(crate) fn run_file(uri: &str) -> RunFile {
        let spec: crate::spec::Spec = toml::from_str(&format!(
            "name = \"t\"\n[model]\nbuiltin = \"tiny\"\n[data]\nregime = \"cpt\"\ndomain = \"code\"\ntarget = \"builtin:python\"\n[training]\nbatch_size = 2\nseq_len = 16\n[grid]\nmethod = [\"lora\"]\nlearning_rate = 1e-3\nrank = 4\ntoken_budget = \"1k\"\n[tracking]\nmlflow = \"{uri}\"\n"
        ))
        .unwrap();
        let opts = crate::plan::PlanOptions {
            shape: crate::model::config::LlamaConfig::builtin("tiny"),
            force: false,
        };
        let plan = crate::plan::plan(&spec, &opts).unwrap();
        plan.run_file(&plan.runs[0])
    }

    #[test]
    fn params_are_the_run_json_flattened_without_tracking() {
        let run = run_file("http://127.0.0.1:9");
        let p = params(&run);
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("id"), Some(run.id.clone()));
        assert_eq!(get("learning_rate"), Some("0.001".into()));
        assert_eq!(get("rank"), Some("4".into()));
        assert_eq!(get("training.seq_len"), Some("16".into()));
        assert!(p
            .iter()
            .all(|(k, v)| !k.starts_with("tracking") && v.len() <= MAX_PARAM_VALUE));
        assert_eq!(
            Target::of(&run),
            Some(Target {
                uri: "http://127.0.0.1:9".into(),
                experiment: "t".into()
            })
        );
    }

    #[test]
    fn a_server_that_is_down_is_an_error_that_names_it_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Port 9 (discard) on 127.0.0.1: nothing listens there.
        let run = run_file("http://127.0.0.1:9");
        let l = line(10, 1);
        std::fs::write(
            dir.path().join("metrics.jsonl"),
            serde_json::to_string(&l).unwrap() + "\n",
        )
        .unwrap();
        let e = sync(dir.path(), &run, &Target::of(&run).unwrap(), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("MLflow at http://127.0.0.1:9 cannot be reached"),
            "{e}"
        );
        assert!(!dir.path().join(STATE_FILE).exists());
        let mut plain = run.clone();
        plain.tracking = None;
        assert!(
            sync_run(dir.path(), &plain).unwrap().is_none(),
            "no server: nothing to do"
        );
        let w = sync_runs([
            (dir.path().to_path_buf(), run.clone()),
            (dir.path().to_path_buf(), run),
        ])
        .unwrap();
        assert!(w.starts_with("2 run(s) not wholly logged to MLflow"), "{w}");
    }
}
