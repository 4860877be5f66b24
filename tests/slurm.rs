//! The Slurm executor against the real dev cluster (`scripts/dev-cluster start`) over its real
//! sshd: the real binary submits noop runs (`sweep train --noop`), follows and collects them.
//! Every test is skipped, with a message saying so, when the cluster is not running.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    repo().join(".cache/dev-cluster")
}

/// Held (written) while a test has killed a node: the cluster is not up then, and a test
/// starting meanwhile waits for the node rather than skipping.
static NODE_OUTAGE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Whether skipping is an error: `scripts/test` (and so CI) starts the dev cluster and sets
/// SWEEP_TESTS_REQUIRE_SETUP=1, so that a cluster that failed to come up fails these tests
/// rather than letting them pass without checking anything.
fn skipping_is_an_error() -> bool {
    std::env::var("SWEEP_TESTS_REQUIRE_SETUP").is_ok_and(|v| v == "1")
}

/// Skip a test (a message saying why), or fail it where skipping is an error.
fn skip(test: &str, why: &str) {
    assert!(
        !skipping_is_an_error(),
        "{test}: {why}, and SWEEP_TESTS_REQUIRE_SETUP=1 (scripts/test) says it must run"
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// Whether the dev cluster runs; says why a test is skipped when not.
fn cluster_up(test: &str) -> bool {
    // A node may be busy completing jobs or coming back from another test's outage for a
    // moment: only a cluster that stays down for a while is down.
    let t0 = Instant::now();
    loop {
        let status = {
            let _no_outage = NODE_OUTAGE.read().unwrap_or_else(|e| e.into_inner());
            Command::new(repo().join("scripts/dev-cluster"))
                .arg("status")
                .output()
        };
        if status.as_ref().is_ok_and(|o| o.status.success()) {
            return true;
        }
        let missing = status.as_ref().map_or(true, |o| {
            String::from_utf8_lossy(&o.stdout).contains("not running")
        });
        if missing || t0.elapsed() > Duration::from_secs(30) {
            let said = status
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            skip(
                test,
                &format!("the dev Slurm cluster is not running (start it with `scripts/dev-cluster start`): {said}"),
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// How long a test waits for the cluster to reach a state before failing. Generous: it bounds
/// how long a broken test hangs, not how fast a machine must be.
const WAIT_S: u64 = 300;

const SPEC: &str = r#"name = "NAME"
[model]
builtin = "tiny"
[data]
regime = "ift"
domain = "math"
target = "builtin:math"
[training]
batch_size = 4
seq_len = 64
[grid]
method = ["full", "lora"]
token_budget = ["4k", "8k"]
seeds = 2
[grid.full]
learning_rate = [1e-4]
[grid.lora]
learning_rate = [1e-3]
rank = [2]
target_modules = ["attention"]
"#;

/// A test folder with spec.toml (4 runs) and clusters.toml (cluster `dev` with `extra` keys and
/// its own remote work dir).
struct Case {
    dir: tempfile::TempDir,
    results: PathBuf,
    work_dir: String,
}

fn case(name: &str, work_dir: &str, extra: &str) -> Case {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), SPEC.replace("NAME", name)).unwrap();
    let base = std::fs::read_to_string(cache().join("clusters.toml")).unwrap();
    let mut base = base.replace(
        "work_dir = \"sweep-work\"",
        &format!("work_dir = {}", toml_str(work_dir)),
    );
    // A key given in `extra` replaces the dev cluster's.
    for line in extra.lines() {
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            base = base
                .lines()
                .filter(|l| l.split_once('=').is_none_or(|(k, _)| k.trim() != key))
                .map(|l| format!("{l}\n"))
                .collect();
        }
    }
    // `train_args = []` in `extra` makes the jobs really train.
    let noop = if extra.contains("train_args") {
        ""
    } else {
        "train_args = [\"--noop\"]\n"
    };
    std::fs::write(
        dir.path().join("clusters.toml"),
        format!("{base}{noop}{extra}"),
    )
    .unwrap();
    let results = dir.path().join("results");
    Case {
        dir,
        results,
        work_dir: work_dir.to_string(),
    }
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn unique(tag: &str) -> String {
    format!(
        "sweep-it/{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    )
}

impl Case {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sweep"));
        c.arg("--results")
            .arg(&self.results)
            .args(args)
            .current_dir(self.dir.path())
            .env("SWEEP_CLUSTERS", self.dir.path().join("clusters.toml"));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "sweep {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `sweep status --json` until every run is completed.
    fn wait_completed(&self, n: usize) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let v: serde_json::Value =
                serde_json::from_str(&self.ok(&["--json", "status", "spec.toml"])).unwrap();
            let done = v
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["state"] == "completed")
                .count();
            if done == n {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(WAIT_S),
                "runs did not complete: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The remote sweep folder as seen from this host (the dev cluster is local).
    /// Submit the sweep `name` of `n` runs (installing), wait until all completed, collect
    /// them; each collected run folder here with its result.json.
    fn submit_and_collect(&self, name: &str, n: usize) -> Vec<(PathBuf, serde_json::Value)> {
        self.submit_and_wait(n);
        self.collect_all(name, n)
    }

    /// Submit the sweep's `n` runs (installing the binary) and wait until all completed.
    fn submit_and_wait(&self, n: usize) {
        let out = self.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
        assert!(out.contains(&format!("submitted {n} of {n} runs")), "{out}");
        self.wait_completed(n);
    }

    /// Collect the `n` runs of sweep `name`: each run's folder here and its result.json.
    fn collect_all(&self, name: &str, n: usize) -> Vec<(PathBuf, serde_json::Value)> {
        let out = self.ok(&["collect", "spec.toml"]);
        assert!(out.contains(&format!("collected {n} runs")), "{out}");
        std::fs::read_dir(self.results.join(name).join("runs"))
            .unwrap()
            .map(|e| {
                let dir = e.unwrap().path();
                let text = std::fs::read_to_string(dir.join("result.json")).unwrap();
                (dir, serde_json::from_str(&text).unwrap())
            })
            .collect()
    }

    fn remote_sweep(&self, name: &str) -> PathBuf {
        Path::new("/home/sweeptest")
            .join(&self.work_dir)
            .join("sweeps")
            .join(name)
    }
}

#[test]
fn submit_status_collect_with_hostile_paths_executes_nothing() {
    if !cluster_up("submit_status_collect_with_hostile_paths_executes_nothing") {
        return;
    }
    let marker = format!("/tmp/sweep-pwned-{}", std::process::id());
    let work = format!(
        "{} it's \"q\" $(touch {marker}) `touch {marker}` ; touch {marker}",
        unique("hostile")
    );
    let mut c = case("hostile", &work, "");
    c.results = c.dir.path().join(format!("res dir $(touch {marker})"));
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    assert!(out.contains("submitted 4 of 4 runs"), "{out}");
    let status = c.wait_completed(4);
    assert!(status[0]["id"].is_string());
    let out = c.ok(&["collect", "spec.toml"]);
    assert!(out.contains("collected 4 runs"), "{out}");
    // --json: one JSON document on stdout; a second collect finds them here already.
    let j: serde_json::Value =
        serde_json::from_str(&c.ok(&["--json", "collect", "spec.toml"])).unwrap();
    assert_eq!(
        (j["collected"].as_u64(), j["already_here"].as_u64()),
        (Some(0), Some(4)),
        "{j}"
    );
    let runs = c.results.join("hostile/runs");
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 4);
    for e in std::fs::read_dir(&runs).unwrap() {
        let r = std::fs::read_to_string(e.unwrap().path().join("result.json")).unwrap();
        assert!(r.contains("\"completed\""));
    }
    // Nothing was executed: not on the cluster side, not here.
    assert!(!Path::new(&marker).exists(), "{marker} was created");
    assert!(c.remote_sweep("hostile").join("jobs.log").exists());
    // Resubmitting sends nothing: every run has a result.
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 0 of 4"), "{out}");
    let log = std::fs::read_to_string(c.remote_sweep("hostile").join("jobs.log")).unwrap();
    assert_eq!(log.lines().count(), 4, "{log}");
}

#[test]
fn kill_9_mid_submit_then_rerun_submits_each_run_once() {
    if !cluster_up("kill_9_mid_submit_then_rerun_submits_each_run_once") {
        return;
    }
    for (i, delay_ms) in [150u64, 350, 600, 900].into_iter().enumerate() {
        let name = format!("crash{i}");
        let c = case(&name, &unique(&name), "");
        let mut child = c
            .cmd(&["submit", "spec.toml", "--cluster", "dev", "--install"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The rerun reconciles with the cluster and submits only what is missing.
        c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
        c.wait_completed(4);
        // Late jobs of the killed submit would show up here as a second line for a run.
        std::thread::sleep(Duration::from_secs(2));
        let log = std::fs::read_to_string(c.remote_sweep(&name).join("jobs.log")).unwrap();
        let mut ids: Vec<&str> = log
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        assert_eq!(
            n, 4,
            "delay {delay_ms} ms: every run ran exactly once:\n{log}"
        );
        assert_eq!(ids.len(), 4);
    }
}

#[test]
fn unknown_host_key_is_refused_with_its_fingerprint() {
    if !cluster_up("unknown_host_key_is_refused_with_its_fingerprint") {
        return;
    }
    for transport in ["ssh2", "openssh"] {
        let c = case("unknownhost", &unique("unknownhost"), "");
        let empty = c.dir.path().join("empty_known_hosts");
        std::fs::write(&empty, "").unwrap();
        let text = std::fs::read_to_string(c.dir.path().join("clusters.toml"))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("known_hosts"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(
            c.dir.path().join("clusters.toml"),
            format!(
                "{text}\nknown_hosts = {}\ntransport = \"{transport}\"\n",
                toml_str(&empty.display().to_string())
            ),
        )
        .unwrap();
        let o = c.run(&["submit", "spec.toml", "--cluster", "dev"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains("host key of 127.0.0.1:"), "{transport}: {err}");
        assert!(err.contains("is unknown"), "{transport}: {err}");
        assert!(err.contains("ssh-keyscan"), "{transport}: {err}");
        if transport == "ssh2" {
            assert!(err.contains("SHA256:"), "{err}");
            // Nothing reached the cluster, so nothing binds the sweep to it: the same sweep
            // goes to another cluster.
            let other = std::fs::read_to_string(cache().join("clusters.toml"))
                .unwrap()
                .replace("[clusters.dev]", "[clusters.dev2]")
                .replace(
                    "work_dir = \"sweep-work\"",
                    &format!("work_dir = {}", toml_str(&c.work_dir)),
                );
            let path = c.dir.path().join("clusters.toml");
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, format!("{text}\n{other}train_args = [\"--noop\"]\n")).unwrap();
            let out = c.ok(&["submit", "spec.toml", "--cluster", "dev2", "--install"]);
            assert!(out.contains("submitted 4 of 4 runs to dev2"), "{out}");
        }
    }
}

#[test]
fn wrong_key_is_refused_with_a_clear_error() {
    if !cluster_up("wrong_key_is_refused_with_a_clear_error") {
        return;
    }
    for transport in ["ssh2", "openssh"] {
        let c = case("wrongkey", &unique("wrongkey"), "");
        let text = std::fs::read_to_string(c.dir.path().join("clusters.toml")).unwrap();
        let text = text.replace("id_ed25519\"", "wrong_key\"");
        std::fs::write(
            c.dir.path().join("clusters.toml"),
            format!("{text}transport = \"{transport}\"\n"),
        )
        .unwrap();
        let o = c.run(&["submit", "spec.toml", "--cluster", "dev"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            err.contains("authentication as sweeptest on 127.0.0.1:"),
            "{transport}: {err}"
        );
        assert!(err.contains("wrong_key"), "{transport}: {err}");
    }
}

#[test]
fn openssh_transport_submits_and_collects() {
    if !cluster_up("openssh_transport_submits_and_collects") {
        return;
    }
    let c = case(
        "viaopenssh",
        &unique("viaopenssh"),
        "transport = \"openssh\"\n",
    );
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    assert!(out.contains("submitted 4 of 4 runs"), "{out}");
    c.wait_completed(4);
    let out = c.ok(&["collect", "spec.toml"]);
    assert!(out.contains("collected 4 runs"), "{out}");
}

#[test]
fn bad_input_is_explained() {
    if !cluster_up("bad_input_is_explained") {
        return;
    }
    // An unknown cluster lists the known ones.
    let c = case("badinput", &unique("badinput"), "partition = \"nope\"\n");
    let o = c.run(&["submit", "spec.toml", "--cluster", "nosuch"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("unknown cluster `nosuch`") && err.contains("known clusters: dev"),
        "{err}"
    );
    // A missing remote binary says how to install it.
    let o = c.run(&["submit", "spec.toml", "--cluster", "dev"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--cluster dev --install"), "{err}");
    // A partition that does not exist: sbatch's error with the run ids.
    let o = c.run(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("invalid partition"), "{err}");
    assert!(err.contains("-s0"), "run ids are named: {err}");
    // An unreachable host: a timeout or refusal naming the address.
    let text = std::fs::read_to_string(c.dir.path().join("clusters.toml")).unwrap();
    std::fs::write(
        c.dir.path().join("clusters.toml"),
        text.replace("port = 2222", "port = 1")
            .replace("partition = \"nope\"\n", ""),
    )
    .unwrap();
    let o = c.run(&["submit", "spec.toml", "--cluster", "dev"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}

/// `sweep --json status` as id -> (state, attempts).
fn states(c: &Case) -> std::collections::BTreeMap<String, (String, u64)> {
    let v: serde_json::Value =
        serde_json::from_str(&c.ok(&["--json", "status", "spec.toml"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                (
                    r["state"].as_str().unwrap().to_string(),
                    r["attempts"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn wait_for(
    c: &Case,
    what: &str,
    pred: impl Fn(&std::collections::BTreeMap<String, (String, u64)>) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let s = states(c);
        if pred(&s) {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(WAIT_S), "{what}: {s:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_failed_run_is_kept_until_retry_failed_reruns_it() {
    if !cluster_up("a_failed_run_is_kept_until_retry_failed_reruns_it") {
        return;
    }
    // Exactly one task fails, once (mkdir is atomic).
    let c = case(
        "failonce",
        &unique("failonce"),
        "setup = [\"if mkdir fail-once 2>/dev/null; then echo failing on purpose >&2; exit 3; fi\"]\n",
    );
    c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    wait_for(&c, "one failed, three completed", |s| {
        s.values().filter(|v| v.0 == "failed").count() == 1
            && s.values().filter(|v| v.0 == "completed").count() == 3
    });
    let out = c.ok(&["status", "spec.toml"]);
    assert!(out.contains("FAILED exit 3:0"), "{out}");
    // While another sweep process (a follow) holds the sweep, status shows the last state
    // polled instead of failing on the lock.
    {
        let lock = std::fs::File::open(c.results.join("failonce/.lock")).unwrap();
        lock.lock().unwrap();
        let out = c.ok(&["status", "spec.toml"]);
        assert!(
            out.contains("not polled now: another sweep process"),
            "{out}"
        );
        assert!(out.contains("FAILED exit 3:0"), "{out}");
    }
    // Failed runs are not retried by default...
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 0 of 4"), "{out}");
    // ...but --retry-failed reruns exactly the failed one.
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--retry-failed"]);
    assert!(out.contains("submitted 1 of 4"), "{out}");
    c.wait_completed(4);
    let s = states(&c);
    assert_eq!(s.values().filter(|v| v.1 == 2).count(), 1, "{s:?}");
}

/// `sweep submit --follow` keeps a sweep moving to its end with no other command: it exits
/// non-zero naming the run that failed (failures are not retried by default), and with
/// `--retry-failed` reruns it and exits 0 once every run is final, with every result collected
/// here and the report written.
#[test]
fn follow_runs_the_sweep_to_its_end_and_names_what_failed() {
    if !cluster_up("follow_runs_the_sweep_to_its_end_and_names_what_failed") {
        return;
    }
    let c = case(
        "follow",
        &unique("follow"),
        "setup = [\"if mkdir fail-once 2>/dev/null; then echo failing on purpose >&2; exit 3; fi\"]\n",
    );
    let follow = |args: &[&str]| -> Output {
        let mut child = c
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(WAIT_S) {
                let _ = child.kill();
                panic!("sweep {args:?} still following after {WAIT_S} s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        child.wait_with_output().unwrap()
    };
    let o = follow(&[
        "submit",
        "spec.toml",
        "--cluster",
        "dev",
        "--follow",
        "--install",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(!o.status.success(), "one run failed: {out}\n{err}");
    assert!(
        err.contains("1 of 4 runs ended without completing"),
        "{err}"
    );
    assert!(err.contains("--retry-failed --follow"), "{err}");
    // It told each run's way as the polls saw it, as `sweep run` does.
    assert!(
        err.contains("sweep follow on dev: 4 runs, 0 already done"),
        "{err}"
    );
    assert_eq!(err.matches(" queued as job ").count(), 4, "{err}");
    assert!(err.contains(" failed"), "{err}");
    assert!(err.contains("done: 3 completed, 1 failed"), "{err}");
    // Attached later by `sweep follow`, which finds the cluster in the sweep's slurm.json; with
    // --json, the events are those of the local executor (one schema, README).
    let o = follow(&["--json", "follow", "spec.toml", "--retry-failed"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events[0]["event"], "start", "{out}");
    assert_eq!(events[0]["executor"], "slurm:dev", "{out}");
    assert_eq!(events[0]["done"], 3, "{out}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    let queued: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "run_queued")
        .collect();
    assert_eq!(queued.len(), 1, "only the failed run is sent again: {out}");
    assert_eq!(queued[0]["attempt"], 2, "{out}");
    assert!(
        queued[0]["job_id"]
            .as_str()
            .is_some_and(|j| j.contains('_')),
        "{out}"
    );
    let id = queued[0]["id"].clone();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "run_ended" && e["id"] == id && e["state"] == "completed"),
        "{out}"
    );
    assert!(kinds.contains(&"report"), "{out}");
    assert_eq!(kinds.last(), Some(&"finish"), "{out}");
    assert_eq!(
        events.last().unwrap()["counts"][2],
        serde_json::json!(["completed", 4]),
        "{out}"
    );
    let runs = c.results.join("follow/runs");
    let collected = std::fs::read_dir(&runs)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("result.json").exists())
        .count();
    assert_eq!(
        collected,
        4,
        "every result collected into {}",
        runs.display()
    );
    assert!(c.results.join("follow/report/report.md").exists());
}

/// A user's training program (`[trainer] command`) runs in the Slurm jobs as it does locally:
/// its arguments filled in per run on the node, its metrics.jsonl turned into result.json there,
/// and both collected here with their TensorBoard events. The jobs log each run to the
/// sweep's MLflow server (a real one on 127.0.0.1) from the nodes, before anything is collected.
#[test]
fn a_users_trainer_runs_in_the_slurm_jobs_and_is_collected() {
    if !cluster_up("a_users_trainer_runs_in_the_slurm_jobs_and_is_collected") {
        return;
    }
    let Some(python) = common::test_python("MLflow from Slurm jobs") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let server = common::MlflowServer::start(&python, store.path());
    let src = SharedSource::new("usertrainer");
    // The program and the data are on the shared filesystem, readable by the cluster's user.
    let program = src.0.join("trainer.py");
    std::fs::write(&program, common::USER_TRAINER).unwrap();
    let c = case("usertrainer", &unique("usertrainer"), "train_args = []\n");
    let data = toml_str(&src.file().display().to_string());
    std::fs::write(
        c.dir.path().join("spec.toml"),
        format!(
            r#"name = "usertrainer"
[model]
builtin = "tiny"
init = "random"
[data]
regime = "cpt"
domain = "english"
target = {data}
source = {data}
[training]
batch_size = 2
seq_len = 32
[trainer]
command = ["python3", {program}, "--lr", "{{learning_rate}}", "--out", "{{run_dir}}", "--eval-at", "{{eval_at}}"]
[grid]
method = ["full"]
token_budget = [128, 256]
[grid.full]
learning_rate = [1e-3, 2e-3]
[tracking]
mlflow = "{uri}"
"#,
            program = toml_str(&program.display().to_string()),
            uri = server.uri
        ),
    )
    .unwrap();
    c.submit_and_wait(2);
    // Logged from the nodes: each run finished on the server with every metrics line of its
    // folder on the cluster (collect, which sends what a trainer could not, has not run).
    let logged = common::mlflow_runs_by_name(&python, &server.uri, "usertrainer");
    assert_eq!(logged.len(), 2, "{logged:?}");
    for (id, r) in &logged {
        assert_eq!(r["status"], "FINISHED", "{id}: {r}");
        let metrics = std::fs::read_to_string(
            c.remote_sweep("usertrainer")
                .join("runs")
                .join(id)
                .join("metrics.jsonl"),
        )
        .unwrap();
        let want: Vec<(u64, f64)> = metrics
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| Some((v["tokens"].as_u64()?, v["target_loss"].as_f64()?)))
            .collect();
        let have: Vec<(u64, f64)> =
            serde_json::from_value(r["metrics"]["eval/target_loss"].clone()).unwrap();
        assert_eq!(have.len(), 3, "{id}: {have:?}");
        for (h, w) in have.iter().zip(&want) {
            assert!(
                h.0 == w.0 && (h.1 - w.1).abs() < 1e-9,
                "{id}: {have:?} vs {want:?}"
            );
        }
    }
    for (dir, r) in c.collect_all("usertrainer", 2) {
        let id = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(r["status"], "completed", "{r:#}");
        let evals = r["evals"].as_array().unwrap();
        assert_eq!(
            evals.len(),
            3,
            "the base and both budgets, from its metrics: {r:#}"
        );
        // It ran in a Slurm job, with this run's values substituted on the node.
        let seen: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                c.remote_sweep("usertrainer")
                    .join("runs")
                    .join(&id)
                    .join("seen.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(
            seen["job"].as_str().is_some_and(|j| !j.is_empty()),
            "{seen}"
        );
        let argv: Vec<&str> = seen["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(argv[5], "128,256", "{argv:?}");
        assert!(argv[3].ends_with(&format!("runs/{id}")), "{argv:?}");
        assert!(
            std::fs::read_dir(dir.join("tb")).unwrap().any(|f| f
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents")),
            "TensorBoard events written here from the collected metrics"
        );
    }
}

#[test]
fn cancel_one_run_then_submit_resumes_it() {
    if !cluster_up("cancel_one_run_then_submit_resumes_it") {
        return;
    }
    // The first start of every run waits until the test releases it (or 5 minutes), so that
    // all four are running when one is cancelled, however fast or slow the machine.
    let c = case(
        "cancelone",
        &unique("cancelone"),
        "setup = [\"if mkdir \\\"slow-$SLURM_ARRAY_TASK_ID\\\" 2>/dev/null; then i=0; while [ ! -e release ] && [ $i -lt 1500 ]; do sleep 0.2; i=$((i+1)); done; fi\"]\n",
    );
    c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    wait_for(&c, "all running", |s| s.values().all(|v| v.0 == "running"));
    let victim = states(&c).keys().next().unwrap().clone();
    let out = c.ok(&["cancel", "spec.toml", &victim]);
    assert!(out.contains(&format!("cancelled {victim}\n")), "{out}");
    assert!(out.contains("1 runs cancelled (slurm:dev)"), "{out}");
    remote(&format!(
        "touch {}",
        shell_word(
            &c.remote_sweep("cancelone")
                .join("release")
                .display()
                .to_string()
        )
    ));
    wait_for(&c, "one cancelled, three completed", |s| {
        s[&victim].0 == "cancelled" && s.values().filter(|v| v.0 == "completed").count() == 3
    });
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 1 of 4"), "{out}");
    c.wait_completed(4);
    assert_eq!(
        states(&c)[&victim].1,
        2,
        "the cancelled run's second attempt"
    );
}

/// A real training job, not a noop: the installed binary and the libtorch that `--install`
/// copied train a tiny model on the cluster, and collect brings its evaluations back.
#[test]
fn a_real_sweep_trains_on_the_cluster_and_is_collected() {
    if !cluster_up("a_real_sweep_trains_on_the_cluster_and_is_collected") {
        return;
    }
    let c = case("trains", &unique("trains"), "train_args = []\n");
    // The source domain must be readable by the cluster's user: a world-readable file.
    let shared = PathBuf::from(format!("/tmp/sweep-it-source-{}", std::process::id()));
    std::fs::create_dir_all(&shared).unwrap();
    let english: String = (0..300)
        .map(|i| format!("The {i}th knight rode to the castle and spoke of honour.\n"))
        .collect();
    std::fs::write(shared.join("english.txt"), english).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = SPEC
        .replace("NAME", "trains")
        .replace(
            "target = \"builtin:math\"",
            &format!(
                "target = \"builtin:math\"\nsource = \"{}\"",
                shared.join("english.txt").display()
            ),
        )
        .replace(
            "batch_size = 4\nseq_len = 64",
            "batch_size = 2\nseq_len = 512\n[evaluation]\nmetrics = [\"target_loss\", \"source_loss\"]\neval_tokens = 2048",
        )
        .replace(
            "builtin = \"tiny\"",
            "builtin = \"tiny\"\ninit = \"random\"",
        );
    std::fs::write(c.dir.path().join("spec.toml"), spec).unwrap();
    for (dir, r) in c.submit_and_collect("trains", 4) {
        assert_eq!(r["status"], "completed", "{}", dir.display());
        let evals = r["evals"].as_array().unwrap();
        assert_eq!(evals.len(), 3, "base, 4k and 8k: {r:#}");
        let first = evals[0]["metrics"]["target_loss"].as_f64().unwrap();
        let last = evals[2]["metrics"]["target_loss"].as_f64().unwrap();
        assert!(
            last < first,
            "the model learned on the cluster: {first} -> {last}"
        );
        assert!(dir.join("metrics.jsonl").exists());
        // Its TensorBoard events, written here from the metrics.jsonl collect brought back.
        let events = std::fs::read_dir(dir.join("tb")).unwrap().count();
        assert_eq!(events, 1, "one event file in {}", dir.display());
    }
    // The report reads what collect brought back.
    let out = c.ok(&["report", "spec.toml"]);
    assert!(out.contains("Findings of the paper"), "{out}");
    // The LoRA runs' adapters on request, for runs collected earlier too; full runs have none.
    let adapters = || {
        std::fs::read_dir(c.results.join("trains/runs"))
            .unwrap()
            .filter(|e| {
                let a = e.as_ref().unwrap().path().join("adapter");
                a.join("adapter_model.safetensors").exists()
                    && a.join("adapter_config.json").exists()
            })
            .count()
    };
    assert_eq!(adapters(), 0, "not without --adapters");
    let out = c.ok(&["collect", "spec.toml", "--adapters"]);
    assert!(out.contains("and 2 LoRA adapters"), "{out}");
    assert_eq!(adapters(), 2);
    for e in std::fs::read_dir(c.results.join("trains/runs")).unwrap() {
        let a = e.unwrap().path().join("adapter/adapter_config.json");
        if let Ok(text) = std::fs::read_to_string(&a) {
            let cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(cfg["peft_type"], "LORA", "{}", a.display());
            assert_eq!(cfg["r"], 2);
        }
    }
    let out = c.ok(&["collect", "spec.toml", "--adapters"]);
    assert!(out.contains("and 0 LoRA adapters"), "already here: {out}");
    let _ = std::fs::remove_dir_all(&shared);
}

/// A world-readable source-domain file (the cluster's user must read it), removed on drop.
struct SharedSource(PathBuf);

impl SharedSource {
    fn new(tag: &str) -> SharedSource {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from(format!("/tmp/sweep-it-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let english: String = (0..300)
            .map(|i| format!("The {i}th knight rode to the castle and spoke of honour.\n"))
            .collect();
        std::fs::write(dir.join("english.txt"), english).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        SharedSource(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("english.txt")
    }
}

impl Drop for SharedSource {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One real training run (continued pretraining of a random tiny model on the shared file, one
/// thread) of `tokens` tokens, 256 a step, with a checkpoint every `checkpoint_every` steps and the target loss
/// measured at the end only.
fn training_spec(name: &str, tokens: &str, checkpoint_every: u32, source: &Path) -> String {
    format!(
        r#"name = "{name}"
[model]
builtin = "tiny"
init = "random"
[data]
regime = "cpt"
domain = "english"
target = {source}
source = {source}
[training]
batch_size = 4
seq_len = 64
checkpoint_every = {checkpoint_every}
log_every = 10
[evaluation]
metrics = ["target_loss"]
eval_tokens = 1024
[grid]
method = ["full"]
token_budget = ["{tokens}"]
seeds = 1
[grid.full]
learning_rate = [1e-4]
"#,
        source = toml_str(&source.display().to_string())
    )
}

impl Case {
    /// A case whose spec is one real training run (see [`training_spec`]); its jobs train
    /// (`train_args = []`) unless `extra` gives train_args of its own.
    fn training(name: &str, extra: &str, tokens: &str, every: u32, src: &SharedSource) -> Case {
        let extra = if extra.contains("train_args") {
            extra.to_string()
        } else {
            format!("train_args = []\n{extra}")
        };
        let c = case(name, &unique(name), &extra);
        std::fs::write(
            c.dir.path().join("spec.toml"),
            training_spec(name, tokens, every, &src.file()),
        )
        .unwrap();
        c
    }

    /// The only run's id and its folder on the cluster.
    /// A one-run training sweep `name` of `tokens` tokens on the data in `src`, with the
    /// cluster keys `extra`, submitted (installing the binary): the case, the run's id and its
    /// folder on the cluster.
    fn one_run_submitted(
        name: &str,
        extra: &str,
        tokens: &str,
        src: &SharedSource,
    ) -> (Case, String, PathBuf) {
        let c = Case::training(name, extra, tokens, 0, src);
        let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
        assert!(out.contains("submitted 1 of 1"), "{out}");
        let (id, run) = c.only_run(name);
        (c, id, run)
    }

    fn only_run(&self, name: &str) -> (String, PathBuf) {
        let s = states(self);
        assert_eq!(s.len(), 1, "{s:?}");
        let id = s.keys().next().unwrap().clone();
        let dir = self.remote_sweep(name).join("runs").join(&id);
        (id, dir)
    }

    /// The collected result.json of a run.
    fn result(&self, name: &str, id: &str) -> serde_json::Value {
        let path = self
            .results
            .join(name)
            .join("runs")
            .join(id)
            .join("result.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// `sweep --json status` detail of a run.
    fn detail(&self, id: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["--json", "status", "spec.toml"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["detail"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    }

    /// The job script of the sweep's (first) batch on the cluster.
    fn sbatch_script(&self, name: &str) -> String {
        std::fs::read_dir(self.remote_sweep(name).join("batches"))
            .unwrap()
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".sbatch"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .unwrap()
    }

    /// Replace one key of clusters.toml.
    fn set_cluster_key(&self, key: &str, value: &str) {
        let path = self.dir.path().join("clusters.toml");
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| l.split_once('=').is_none_or(|(k, _)| k.trim() != key))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, format!("{text}{key} = {value}\n")).unwrap();
    }
}

/// The jobs.log lines (`RAW ARRAY_TASK RUN`) of a run: one per start of a job.
fn starts(c: &Case, name: &str, id: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(c.remote_sweep(name).join("jobs.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[2] == id).then(|| (w[0].to_string(), w[1].to_string()))
        })
        .collect()
}

/// Run a shell command on the dev cluster as its user, over SSH; it must succeed.
fn remote(command: &str) -> String {
    let o = Command::new("ssh")
        .arg("-i")
        .arg(cache().join("id_ed25519"))
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            cache().join("known_hosts").display()
        ))
        .args([
            "-o",
            "BatchMode=yes",
            "-p",
            &ssh_port(),
            "sweeptest@127.0.0.1",
        ])
        .arg(command)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A string as one single-quoted shell word.
fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The dev cluster's sshd port (clusters.toml).
fn ssh_port() -> String {
    std::fs::read_to_string(cache().join("clusters.toml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("port = ").map(|p| p.trim().to_string()))
        .unwrap()
}

/// Whether a run folder on the cluster holds a checkpoint.
fn has_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints")).is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
    })
}

fn wait_until(what: &str, limit_s: u64, mut pred: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !pred() {
        assert!(t0.elapsed() < Duration::from_secs(limit_s), "{what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The collected result completed every step, after resuming from a checkpoint past step 0.
fn assert_resumed(c: &Case, name: &str, id: &str) -> u64 {
    let r = c.result(name, id);
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["step"], r["total_steps"], "{r:#}");
    let resumed = r["resumed_from"].as_array().cloned().unwrap_or_default();
    assert!(
        !resumed.is_empty(),
        "the run resumed from a checkpoint: {r:#}"
    );
    let from = resumed[0].as_u64().unwrap();
    assert!(
        from > 0 && from < r["total_steps"].as_u64().unwrap(),
        "resumed mid-run: {r:#}"
    );
    from
}

/// A 2-minute time limit: the job is warned (--signal=B:USR1@60), the trainer checkpoints and
/// the task ends as a timeout; `sweep submit` resubmits it (with a longer limit, as a user
/// would) and the second attempt resumes from the checkpoint.
#[test]
fn a_timeout_is_classified_and_resubmitted_and_resumes_from_its_checkpoint() {
    let name = "timeout";
    if !cluster_up("a_timeout_is_classified_and_resubmitted_and_resumes_from_its_checkpoint") {
        return;
    }
    let src = SharedSource::new(name);
    // slurmctld sends the warning at its first time-limit check (every 30 s) at which no more
    // than checkpoint_signal_s + 30 s are left: here 30-60 s after the start, time enough for
    // the trainer to start on a loaded machine. The first attempt's 625 steps are paced to at
    // least 300 ms each (187 s): on any machine the warning comes mid-run.
    let (c, id, run) = Case::one_run_submitted(
        name,
        "time_limit = \"00:02:00\"\ncheckpoint_signal_s = 60\ntrain_args = [\"--min-step-ms\", \"300\"]\nretry = { max_attempts = 1 }\n",
        "160k",
        &src,
    );
    wait_for(&c, "the run times out", |s| {
        s[&id].0 == "timeout" || s[&id].0 == "completed"
    });
    assert_eq!(
        states(&c)[&id].0,
        "timeout",
        "a run paced to outlast its time limit ended as a timeout"
    );
    let out = c.ok(&["status", "spec.toml"]);
    assert!(out.contains("timeout"), "{out}");
    assert!(out.contains("time-limit warning"), "{out}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("stopped by a signal after step"), "{log}");
    assert!(has_checkpoint(&run), "checkpointed before the limit");
    // Timeouts are retried by default, and one that checkpointed further is a continuation,
    // sent again though max_attempts = 1; this attempt gets the time it needs, unpaced.
    c.set_cluster_key("time_limit", "\"00:10:00\"");
    c.set_cluster_key("train_args", "[]");
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 1 of 1"), "{out}");
    c.wait_completed(1);
    c.ok(&["collect", "spec.toml"]);
    let from = assert_resumed(&c, name, &id);
    assert!(
        log.contains(&format!("after step {from};")),
        "{from}: {log}"
    );
    assert_eq!(states(&c)[&id].1, 2, "two attempts");
    let v: serde_json::Value =
        serde_json::from_str(&c.ok(&["--json", "status", "spec.toml"])).unwrap();
    assert_eq!(v[0]["continuations"], 1, "the second a continuation: {v}");
    let s = starts(&c, name, &id);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_ne!(s[0].0, s[1].0, "two jobs: {s:?}");
}

/// `scontrol requeue` of a running job: Slurm sends SIGTERM (the trainer checkpoints), puts the
/// same job back in the queue and starts it again; the tool follows the one job, submits
/// nothing, and the run resumes from the checkpoint.
#[test]
fn a_requeued_job_resumes_from_its_checkpoint_and_runs_once() {
    let name = "requeue";
    if !cluster_up("a_requeued_job_resumes_from_its_checkpoint_and_runs_once") {
        return;
    }
    let src = SharedSource::new(name);
    // 390 steps of at least 100 ms: still training when the requeue comes, on any machine.
    let (c, id, run) = Case::one_run_submitted(
        name,
        "train_args = [\"--min-step-ms\", \"100\"]\n",
        "100k",
        &src,
    );
    // Training has begun: a metrics line past the base evaluation.
    wait_until("training starts", WAIT_S, || {
        std::fs::read_to_string(run.join("metrics.jsonl")).is_ok_and(|m| m.lines().count() > 1)
    });
    // Requeued as the cluster's user can: over SSH.
    let raw = starts(&c, name, &id)[0].0.clone();
    remote(&format!("scontrol requeue {raw}"));
    wait_until("the job starts again", WAIT_S, || {
        starts(&c, name, &id).len() == 2
    });
    let detail = c.detail(&id);
    assert!(detail.contains("requeued by Slurm"), "{detail}");
    // Nothing to resubmit: the job is Slurm's to restart.
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 0 of 1"), "{out}");
    c.wait_completed(1);
    c.ok(&["collect", "spec.toml"]);
    assert_resumed(&c, name, &id);
    assert_eq!(states(&c)[&id].1, 1, "one attempt");
    let s = starts(&c, name, &id);
    assert_eq!(s.len(), 2, "{s:?}");
    assert_eq!(s[0], s[1], "one job, started twice: {s:?}");
}

/// `requeue_on_timeout = true`: a job warned before its 2-minute time limit checkpoints and
/// puts itself back in the queue; Slurm starts the same job again (as many time slots as it
/// needs) and it completes from its checkpoint, with no `sweep submit` in between: the tool only
/// looks (`sweep status`) and collects.
#[test]
fn a_job_at_its_time_limit_requeues_itself_and_completes_unattended() {
    let name = "selfrequeue";
    if !cluster_up("a_job_at_its_time_limit_requeues_itself_and_completes_unattended") {
        return;
    }
    let src = SharedSource::new(name);
    // Warned 30-60 s into each slot (as in the timeout test above); 235 steps paced to at
    // least 300 ms (70 s) outlast the first slot on any machine, and get further in each.
    let (c, id, run) = Case::one_run_submitted(
        name,
        "time_limit = \"00:02:00\"\ncheckpoint_signal_s = 60\ntrain_args = [\"--min-step-ms\", \"300\"]\nrequeue_on_timeout = true\nretry = { max_attempts = 1 }\n",
        "60k",
        &src,
    );
    let t0 = Instant::now();
    loop {
        let s = states(&c);
        if s[&id].0 == "completed" {
            break;
        }
        assert!(
            !matches!(s[&id].0.as_str(), "timeout" | "failed"),
            "it requeued itself instead of ending: {s:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(2 * WAIT_S), "{s:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    c.ok(&["collect", "spec.toml"]);
    assert_resumed(&c, name, &id);
    assert_eq!(
        states(&c)[&id].1,
        1,
        "one attempt: the requeues were Slurm's"
    );
    let s = starts(&c, name, &id);
    assert!(s.len() >= 2, "started again after the requeue: {s:?}");
    assert!(s.iter().all(|x| *x == s[0]), "one job: {s:?}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("requeued itself to go on from there"), "{log}");
}

/// A node outage: holds [`NODE_OUTAGE`], and restarts the killed slurmd (waiting until the
/// node is back) when dropped, also when a test fails.
struct NodeOutage {
    _held: std::sync::RwLockWriteGuard<'static, ()>,
}

impl NodeOutage {
    fn begin() -> NodeOutage {
        NodeOutage {
            _held: NODE_OUTAGE.write().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

impl Drop for NodeOutage {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/dev-cluster"))
            .arg("start")
            .stdout(Stdio::null())
            .status();
    }
}

/// Kill node n3 as a power cut would: its slurmd, the slurmstepd of its jobs and every process
/// of those jobs, with SIGKILL.
fn kill_node(node: &str) {
    let pid_file = format!("/run/slurmd-{node}.pid");
    let slurmd = std::fs::read_to_string(&pid_file).unwrap();
    let o = Command::new("squeue")
        .args(["-h", "-w", node, "-o", "%A"])
        .output()
        .unwrap();
    let jobs: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(!jobs.is_empty(), "jobs run on {node}");
    let mut pids = vec![slurmd.trim().to_string()];
    for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let on_node = environ
            .split(|b| *b == 0)
            .any(|v| v == format!("SLURMD_NODENAME={node}").as_bytes());
        let stepd = jobs
            .iter()
            .any(|j| cmdline.starts_with(&format!("slurmstepd: [{j}.")));
        if on_node || stepd {
            pids.push(pid);
        }
    }
    let o = Command::new("kill").arg("-9").args(&pids).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A node dies under two training runs (node n3, alone in partition `faults`, so that no other
/// test's jobs are there). Slurm marks the node down and the jobs NODE_FAIL after SlurmdTimeout:
/// the job submitted with --requeue (the default) is requeued by Slurm, and the tool says so;
/// the one submitted with --no-requeue ends node_fail, and `sweep submit` resubmits it. When the
/// node is back, both resume from their last periodic checkpoint and complete.
#[test]
fn a_node_failure_is_classified_and_both_runs_resume_from_checkpoints() {
    if !cluster_up("a_node_failure_is_classified_and_both_runs_resume_from_checkpoints") {
        return;
    }
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        skip(
            "a_node_failure_is_classified_and_both_runs_resume_from_checkpoints",
            "killing a node takes root (the dev cluster's daemons are root's)",
        );
        return;
    }
    if !Path::new("/run/slurmd-n3.pid").exists() {
        skip(
            "a_node_failure_is_classified_and_both_runs_resume_from_checkpoints",
            "no node n3 (restart the dev cluster with this checkout's scripts/dev-cluster)",
        );
        return;
    }
    let src = SharedSource::new("nodefail");
    let (a, b) = ("nodefail-requeue", "nodefail-resubmit");
    // 312 steps of at least 100 ms: both still train when the node dies, on any machine.
    let paced = "train_args = [\"--min-step-ms\", \"100\"]\npartition = \"faults\"\n";
    let ca = Case::training(a, paced, "80k", 20, &src);
    let cb = Case::training(
        b,
        &format!("{paced}sbatch_extra = [\"--no-requeue\"]\n"),
        "80k",
        20,
        &src,
    );
    for c in [&ca, &cb] {
        let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
        assert!(out.contains("submitted 1 of 1"), "{out}");
    }
    let (ia, ra) = ca.only_run(a);
    let (ib, rb) = cb.only_run(b);
    wait_until("both runs checkpoint", WAIT_S, || {
        has_checkpoint(&ra) && has_checkpoint(&rb)
    });
    let outage = NodeOutage::begin();
    kill_node("n3");
    let killed = Instant::now();
    wait_for(&cb, "the --no-requeue run ends node_fail", |s| {
        s[&ib].0 == "node_fail"
    });
    wait_until("Slurm requeues the other", WAIT_S, || {
        ca.detail(&ia).contains("requeued by Slurm after NODE_FAIL")
    });
    eprintln!("node failure seen after {:.0?}", killed.elapsed());
    let out = cb.ok(&["status", "spec.toml"]);
    assert!(
        out.contains("node_fail") && out.contains("NODE_FAIL"),
        "{out}"
    );
    // The tool resubmits the ended one, and only that one.
    let out = cb.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 1 of 1"), "{out}");
    let out = ca.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 0 of 1"), "{out}");
    drop(outage);
    for (c, name, id, attempts) in [(&ca, a, &ia, 1), (&cb, b, &ib, 2)] {
        c.wait_completed(1);
        c.ok(&["collect", "spec.toml"]);
        assert_resumed(c, name, id);
        assert_eq!(states(c)[id].1, attempts, "{name}");
    }
    let (sa, sb) = (starts(&ca, a, &ia), starts(&cb, b, &ib));
    assert!(
        sa.len() == 2 && sa[0] == sa[1],
        "one job started twice: {sa:?}"
    );
    assert!(sb.len() == 2 && sb[0] != sb[1], "two jobs: {sb:?}");
}

/// What `--install` puts in one remote folder: the local file and its remote name.
struct Installed {
    /// The remote folder, relative to the cluster user's home.
    dir: String,
    files: Vec<(PathBuf, String)>,
}

/// The folders `--install` fills for a case whose libtorch goes to `lib_dir` and binary to
/// `work/bin`: libtorch's lib/ (in a build with libtorch) and the binary.
fn installed(work: &str, lib_dir: &str) -> Vec<Installed> {
    let mut out = Vec::new();
    if let Some(lib) = option_env!("SWEEP_LIBTORCH_LIB") {
        let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(lib)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| (e.path(), e.file_name().to_string_lossy().into_owned()))
            .filter(|(_, n)| n.contains(".so"))
            .collect();
        files.sort();
        out.push(Installed {
            dir: format!("{lib_dir}/lib"),
            files,
        });
    }
    out.push(Installed {
        dir: format!("{work}/bin"),
        files: vec![(
            PathBuf::from(env!("CARGO_BIN_EXE_sweep")),
            format!("sweep-{}", env!("CARGO_PKG_VERSION")),
        )],
    });
    out
}

fn sha256_of(path: &Path) -> String {
    let o = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)[..64].to_string()
}

/// Every file is on the cluster under its name with this machine's bytes (sha256), and nothing
/// of an install in progress is left: no part file, no lock.
fn assert_complete_install(set: &[Installed]) {
    for inst in set {
        let dir = Path::new("/home/sweeptest").join(&inst.dir);
        for (local, name) in &inst.files {
            let remote = dir.join(name);
            assert!(remote.is_file(), "{} is installed", remote.display());
            assert_eq!(sha256_of(&remote), sha256_of(local), "{}", remote.display());
        }
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".part") || n.contains("install-lock"))
            .collect();
        assert!(left.is_empty(), "{}: left behind {left:?}", dir.display());
        assert!(dir.join(".sweep-manifest").is_file());
    }
}

/// The number of files an install said it uploaded into `dir` (its stderr line).
fn uploaded_into(stderr: &str, dir: &str) -> usize {
    let prefix = format!("installed into {dir}: ");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("sweep: ")?.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{stderr}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// A new cluster as far as `--install` is concerned: a fresh work folder and libtorch folder,
/// and the clusters.toml line that points the libtorch install there.
fn fresh_install(tag: &str) -> (String, String, String) {
    let work = unique(tag);
    let lib_dir = format!("{work}-libtorch");
    let extra = format!("libtorch_install_dir = {}\n", toml_str(&lib_dir));
    (work, lib_dir, extra)
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// Two `sweep submit --install` at once into a new cluster (a fresh work and libtorch folder).
/// The test holds both folders' install locks, as a live installer of this host would, until
/// both installers wait on them, so that they really meet: then each file is uploaded by one
/// of them only, the other reuses it, and the install is complete and verified.
#[test]
fn two_installs_at_once_end_in_one_complete_install() {
    let test = "two_installs_at_once_end_in_one_complete_install";
    if !cluster_up(test) {
        return;
    }
    let (work, lib_dir, extra) = fresh_install("install2");
    let cases = [
        case("installa", &work, &extra),
        case("installb", &work, &extra),
    ];
    let set = installed(&work, &lib_dir);
    let owner = format!("{}:{}:test", this_host(), std::process::id());
    for inst in &set {
        let d = shell_word(&inst.dir);
        remote(&format!(
            "mkdir -p {d}/.install-lock && printf '%s\\n' {} > {d}/.install-lock/owner",
            shell_word(&owner)
        ));
    }
    let children: Vec<_> = cases
        .iter()
        .map(|c| {
            let err = std::fs::File::create(c.dir.path().join("install.err")).unwrap();
            c.cmd(&["submit", "spec.toml", "--cluster", "dev", "--install"])
                .stdout(Stdio::piped())
                .stderr(err)
                .spawn()
                .unwrap()
        })
        .collect();
    let stderr = |c: &Case| std::fs::read_to_string(c.dir.path().join("install.err")).unwrap();
    let lock = |inst: &Installed| {
        Path::new("/home/sweeptest")
            .join(&inst.dir)
            .join(".install-lock")
    };
    for (i, inst) in set.iter().enumerate() {
        let waiting = format!("waiting for another install into {}", inst.dir);
        wait_until(
            &format!("both installers wait on {}", inst.dir),
            WAIT_S,
            || {
                // The locks still held look alive (touched), as a working installer's do.
                for held in &set[i..] {
                    let _ = Command::new("touch").arg(lock(held)).status();
                }
                cases.iter().all(|c| stderr(c).contains(&waiting))
            },
        );
        remote(&format!("rm -rf {}/.install-lock", shell_word(&inst.dir)));
    }
    for (c, child) in cases.iter().zip(children) {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(c));
        assert!(String::from_utf8_lossy(&o.stdout).contains("submitted 4 of 4"));
    }
    for inst in &set {
        let counts: Vec<usize> = cases
            .iter()
            .map(|c| uploaded_into(&stderr(c), &inst.dir))
            .collect();
        assert_eq!(
            counts.iter().sum::<usize>(),
            inst.files.len(),
            "{}: each file uploaded once, by one installer: {counts:?}",
            inst.dir
        );
    }
    assert_complete_install(&set);
    for c in &cases {
        c.wait_completed(4);
    }
}

/// An install killed (SIGKILL) half-way through uploading its largest file leaves no file
/// under a final name half-written; the next install takes over the dead one's lock, finishes,
/// and the install is complete and verified.
#[test]
fn an_install_killed_mid_upload_is_completed_by_the_next() {
    let test = "an_install_killed_mid_upload_is_completed_by_the_next";
    if !cluster_up(test) {
        return;
    }
    let (work, lib_dir, extra) = fresh_install("installkill");
    let c = case("installkill", &work, &extra);
    let set = installed(&work, &lib_dir);
    let (dir, name, size) = set
        .iter()
        .flat_map(|i| {
            i.files.iter().map(move |(p, n)| {
                let size = std::fs::metadata(p).unwrap().len();
                (Path::new("/home/sweeptest").join(&i.dir), n.clone(), size)
            })
        })
        .max_by_key(|f| f.2)
        .unwrap();
    let mut child = c
        .cmd(&["submit", "spec.toml", "--cluster", "dev", "--install"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part_prefix = format!("{name}.part-");
    let t0 = Instant::now();
    loop {
        let partial = std::fs::read_dir(&dir).ok().is_some_and(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_string_lossy().starts_with(&part_prefix)
                    && e.metadata().is_ok_and(|m| m.len() > 0 && m.len() < size)
            })
        });
        if partial {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(WAIT_S),
            "the upload of {name} began"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the install ended before it was seen uploading {name}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !dir.join(&name).exists(),
        "a half-uploaded {name} never has its final name"
    );
    let o = c.run(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("taking over the install lock") && err.contains("that process is gone"),
        "{err}"
    );
    assert_complete_install(&set);
    c.wait_completed(4);
}

/// One run over two nodes (n1 and n2, one rank each): the job asks for --nodes=2, srun starts
/// the ranks, they meet at the first node's address through c10d, and they train as
/// `sweep train --nproc 2` does on this machine.
#[test]
fn a_two_node_run_trains_through_srun_like_two_local_ranks() {
    let name = "twonode";
    if !cluster_up("a_two_node_run_trains_through_srun_like_two_local_ranks") {
        return;
    }
    let src = SharedSource::new(name);
    let c = Case::training(name, "", "10k", 0, &src);
    let spec = std::fs::read_to_string(c.dir.path().join("spec.toml"))
        .unwrap()
        .replace("[training]\n", "[training]\nnodes = 2\n");
    std::fs::write(c.dir.path().join("spec.toml"), spec).unwrap();
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    assert!(out.contains("submitted 1 of 1"), "{out}");
    let (id, run) = c.only_run(name);
    let script = c.sbatch_script(name);
    assert!(script.contains("#SBATCH --nodes=2"), "{script}");
    c.wait_completed(1);
    c.ok(&["collect", "spec.toml"]);
    let remote = c.result(name, &id);
    assert_eq!(remote["status"], "completed", "{remote:#}");
    assert_eq!(remote["world"], "2 ranks, gloo", "{remote:#}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap_or_default();

    // The same run.json, two ranks on this machine.
    let here = c.dir.path().join("local");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::copy(run.join("run.json"), here.join("run.json")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(["train", here.join("run.json").to_str().unwrap()])
        .args(["--nproc", "2", "--threads", "1"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let collected = c
        .results
        .join(name)
        .join("runs")
        .join(&id)
        .join("metrics.jsonl");
    let (a, b) = (
        common::train_losses(&collected),
        common::train_losses(&here.join("metrics.jsonl")),
    );
    assert!(!a.is_empty() && a.len() == b.len(), "{a:?} vs {b:?}\n{log}");
    for ((sa, la), (sb, lb)) in a.iter().zip(&b) {
        assert_eq!(sa, sb);
        assert!((la - lb).abs() < 1e-5, "step {sa}: srun {la} vs local {lb}");
    }
}

/// A cluster whose runs train on GPUs (`gpu = true`): `--install` of this CPU build is refused
/// before anything is submitted, naming the fix; a job on the dev cluster's fake GPUs (Slurm
/// schedules them, CUDA sees none) with a CPU-only libtorch fails at start, naming the libtorch
/// it loaded, and never trains on the CPU.
#[test]
fn a_run_that_asks_for_gpus_never_trains_on_the_cpu() {
    let name = "gpurun";
    if !cluster_up("a_run_that_asks_for_gpus_never_trains_on_the_cpu") {
        return;
    }
    let src = SharedSource::new(name);
    let c = Case::training(name, "train_args = [\"--noop\"]\n", "10k", 0, &src);
    c.set_cluster_key("gpu", "true");
    let o = c.run(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("trains on GPUs")
            && err.contains("is a CPU build: build one with scripts/build-cuda"),
        "{err}"
    );
    assert!(
        !c.remote_sweep(name).join("batches").exists(),
        "nothing submitted"
    );
    // This binary and libtorch on the cluster (a CPU entry, a noop run), then a GPU entry that
    // names that libtorch as the cluster's own.
    c.set_cluster_key("gpu", "false");
    c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    c.wait_completed(1);
    let gpu_name = "gpurun2";
    std::fs::write(
        c.dir.path().join("spec.toml"),
        training_spec(gpu_name, "10k", 0, &src.file()),
    )
    .unwrap();
    c.set_cluster_key("gpu", "true");
    c.set_cluster_key("libtorch", "\".cache/sweep/libtorch-2.11.0\"");
    c.set_cluster_key("train_args", "[]");
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 1 of 1"), "{out}");
    wait_for(&c, "the GPU run fails at start", |s| {
        !s.is_empty() && s.values().all(|v| v.0 == "failed")
    });
    let (id, run) = c.only_run(gpu_name);
    let detail = c.detail(&id);
    assert!(
        detail.contains("libtorch sees no CUDA device")
            && detail.contains("libtorch_cpu.so without libtorch_cuda.so"),
        "{detail}"
    );
    assert!(!run.join("metrics.jsonl").exists(), "it never trained");
    let script = c.sbatch_script(gpu_name);
    assert!(script.contains("#SBATCH --gpus-per-node=1\n"), "{script}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap_or_default();
    assert!(log.contains("libtorch_cpu.so"), "{log}");
}
