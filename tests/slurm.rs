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

/// Held (written) while a test has killed a node: the cluster is not up then, and a test
/// starting meanwhile waits for the node rather than skipping.
static NODE_OUTAGE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Whether the dev cluster runs; prints why a test is skipped when not.
fn cluster_up(test: &str) -> bool {
    let _no_outage = NODE_OUTAGE.read().unwrap_or_else(|e| e.into_inner());
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
    /// A case whose spec is one real training run (see [`training_spec`]).
    fn training(name: &str, extra: &str, tokens: &str, every: u32, src: &SharedSource) -> Case {
        let c = case(name, &unique(name), &format!("train_args = []\n{extra}"));
        std::fs::write(
            c.dir.path().join("spec.toml"),
            training_spec(name, tokens, every, &src.file()),
        )
        .unwrap();
        c
    }

    /// The only run's id and its folder on the cluster.
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

/// A 1-minute time limit: the job is warned (--signal=B:USR1@20), the trainer checkpoints and
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
    // than checkpoint_signal_s + 30 s are left: here 10-40 s after the start. 938 steps take
    // 55 s on an idle core of this machine (17 steps/s), 120 s on a busy one.
    let c = Case::training(
        name,
        "time_limit = \"00:01:00\"\ncheckpoint_signal_s = 20\n",
        "240k",
        0,
        &src,
    );
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    assert!(out.contains("submitted 1 of 1"), "{out}");
    let (id, run) = c.only_run(name);
    wait_for(&c, "the run times out", |s| {
        s[&id].0 == "timeout" || s[&id].0 == "completed"
    });
    assert_eq!(
        states(&c)[&id].0,
        "timeout",
        "the run finished before the time-limit warning: this machine trains faster than the test assumes (raise its token budget)"
    );
    let out = c.ok(&["status", "spec.toml"]);
    assert!(out.contains("timeout"), "{out}");
    assert!(out.contains("time-limit warning"), "{out}");
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("stopped by a signal after step"), "{log}");
    assert!(has_checkpoint(&run), "checkpointed before the limit");
    // Timeouts are retried by default; this attempt gets the time it needs.
    c.set_cluster_key("time_limit", "\"00:10:00\"");
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
    let c = Case::training(name, "", "100k", 0, &src);
    let out = c.ok(&["submit", "spec.toml", "--cluster", "dev", "--install"]);
    assert!(out.contains("submitted 1 of 1"), "{out}");
    let (id, run) = c.only_run(name);
    // Training has begun: a metrics line past the base evaluation.
    wait_until("training starts", 90, || {
        std::fs::read_to_string(run.join("metrics.jsonl")).is_ok_and(|m| m.lines().count() > 1)
    });
    // Requeued as the cluster's user can: over SSH.
    let raw = starts(&c, name, &id)[0].0.clone();
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
        .args(["scontrol", "requeue", &raw])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until("the job starts again", 90, || {
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
        eprintln!("SKIPPED: killing a node takes root (the dev cluster's daemons are root's)");
        return;
    }
    if !Path::new("/run/slurmd-n3.pid").exists() {
        eprintln!("SKIPPED: no node n3 (restart the dev cluster with this checkout's scripts/dev-cluster)");
        return;
    }
    let src = SharedSource::new("nodefail");
    let (a, b) = ("nodefail-requeue", "nodefail-resubmit");
    let ca = Case::training(a, "partition = \"faults\"\n", "80k", 20, &src);
    let cb = Case::training(
        b,
        "partition = \"faults\"\nsbatch_extra = [\"--no-requeue\"]\n",
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
    wait_until("both runs checkpoint", 90, || {
        has_checkpoint(&ra) && has_checkpoint(&rb)
    });
    let outage = NodeOutage::begin();
    kill_node("n3");
    let killed = Instant::now();
    wait_for(&cb, "the --no-requeue run ends node_fail", |s| {
        s[&ib].0 == "node_fail"
    });
    wait_until("Slurm requeues the other", 60, || {
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
