//! The Slurm executor against the real dev cluster (`scripts/dev-cluster start`) over its real
//! sshd: the real binary submits noop runs (`sweep train --noop`), follows and collects them.
//! Every test is skipped, with a message saying so, when the cluster is not running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    repo().join(".cache/dev-cluster")
}

/// Whether the dev cluster runs; prints why a test is skipped when not.
fn cluster_up(test: &str) -> bool {
    let ok = Command::new(repo().join("scripts/dev-cluster"))
        .arg("status")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED {test}: the dev Slurm cluster is not running (start it with `scripts/dev-cluster start`)"
        );
    }
    ok
}

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
                t0.elapsed() < Duration::from_secs(90),
                "runs did not complete: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The remote sweep folder as seen from this host (the dev cluster is local).
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
        assert!(t0.elapsed() < Duration::from_secs(90), "{what}: {s:?}");
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

#[test]
fn cancel_one_run_then_submit_resumes_it() {
    if !cluster_up("cancel_one_run_then_submit_resumes_it") {
        return;
    }
    // The first start of every run sleeps, so that there is something running to cancel.
    let c = case(
        "cancelone",
        &unique("cancelone"),
        "setup = [\"if mkdir \\\"slow-$SLURM_ARRAY_TASK_ID\\\" 2>/dev/null; then sleep 8; fi\"]\n",
    );
    c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    wait_for(&c, "all running", |s| s.values().all(|v| v.0 == "running"));
    let victim = states(&c).keys().next().unwrap().clone();
    let out = c.ok(&["cancel", "spec.toml", "--run", &victim]);
    assert!(out.contains("cancelled 1 jobs"), "{out}");
    wait_for(&c, "one cancelled, three completed", |s| {
        s[&victim].0 == "cancelled" && s.values().filter(|v| v.0 == "completed").count() == 3
    });
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev"]);
    assert!(out.contains("submitted 1 of 4"), "{out}");
    c.wait_completed(4);
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
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    assert!(out.contains("submitted 4 of 4 runs"), "{out}");
    c.wait_completed(4);
    let out = c.ok(&["collect", "spec.toml"]);
    assert!(out.contains("collected 4 runs"), "{out}");
    for e in std::fs::read_dir(c.results.join("trains/runs")).unwrap() {
        let dir = e.unwrap().path();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).unwrap())
                .unwrap();
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
    }
    // The report reads what collect brought back.
    let out = c.ok(&["report", "spec.toml"]);
    assert!(out.contains("Findings of the paper"), "{out}");
    let _ = std::fs::remove_dir_all(&shared);
}
