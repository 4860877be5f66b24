//! Results that cannot lie, through the real binary: one trainer per run, no orphans after a
//! killed `sweep run`, finished work never overwritten, every result checked against its run,
//! and bad input answered with one line that says what to do.
#![cfg(feature = "torch")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for something to happen before failing: it bounds a broken test,
/// it does not ask the machine to be fast.
const WAIT: Duration = Duration::from_secs(120);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
}

fn sweep(dir: &Path, args: &[&str]) -> Output {
    bin()
        .args(args)
        .current_dir(dir)
        .env_remove("SWEEP_MIN_STEP_MS")
        .output()
        .expect("the sweep binary runs")
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A sweep folder with data and a spec of `runs` ("full", or "full,lora") of `tokens` tokens
/// (64 a step).
fn setup(methods: &str, tokens: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    std::fs::write(
        dir.path().join("spec.toml"),
        spec("integrity", methods, tokens),
    )
    .unwrap();
    dir
}

fn spec(name: &str, methods: &str, tokens: u32) -> String {
    let grids: String = methods
        .split(',')
        .map(|m| match m {
            "full" => "[grid.full]\nlearning_rate = [1e-3]\n",
            _ => "[grid.lora]\nlearning_rate = [3e-3]\n",
        })
        .collect();
    let methods: Vec<String> = methods.split(',').map(|m| format!("\"{m}\"")).collect();
    format!(
        r#"name = "{name}"
[model]
builtin = "tiny"
init = "random"
[data]
regime = "cpt"
domain = "code"
target = "code.txt"
source = "english.txt"
[training]
batch_size = 2
seq_len = 32
log_every = 1
checkpoint_every = 2
[evaluation]
eval_tokens = 128
metrics = ["target_loss", "source_loss"]
[grid]
method = [{}]
token_budget = [{tokens}]
seeds = 1
rank = 2
target_modules = "all"
{grids}"#,
        methods.join(", ")
    )
}

fn runs_dir(dir: &Path) -> PathBuf {
    dir.join("results/integrity/runs")
}

/// The run folders, sorted.
fn run_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(runs_dir(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn status(dir: &Path) -> Vec<serde_json::Value> {
    let o = sweep(dir, &["--json", "status", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    serde_json::from_slice::<serde_json::Value>(&o.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn state_of(dir: &Path, run: &Path) -> (String, String) {
    let id = run.file_name().unwrap().to_str().unwrap();
    let row = status(dir).into_iter().find(|r| r["id"] == id).unwrap();
    (
        row["state"].as_str().unwrap().to_string(),
        row["detail"].as_str().unwrap_or("").to_string(),
    )
}

fn wait_until(what: &str, mut pred: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !pred() {
        assert!(t0.elapsed() < WAIT, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The steps of a run's metrics.jsonl lines.
fn metric_steps(run: &Path) -> Vec<u64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// The pid in a run's trainer lock file, while a trainer holds it.
fn trainer_pid(run: &Path) -> Option<i32> {
    std::fs::read_to_string(run.join(".train.lock"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    // A zombie (exited, not yet reaped) counts as gone.
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            == Some("Z")
    });
    exists && !zombie
}

/// `sweep run` in the background, its trainers paced (100 ms a step) so that they are
/// mid-training when the test acts, on any machine.
fn paced_run(dir: &Path) -> Child {
    bin()
        .args(["run", "spec.toml", "--jobs", "1"])
        .current_dir(dir)
        .env("SWEEP_MIN_STEP_MS", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait until the only run trains (a metrics line past step 2, so a checkpoint exists);
/// returns its folder and its trainer's pid.
fn wait_training(dir: &Path) -> (PathBuf, i32) {
    wait_until("the run trains", || {
        runs_dir(dir).exists()
            && run_dirs(dir)
                .first()
                .is_some_and(|r| metric_steps(r).iter().any(|&s| s > 2))
    });
    let run = run_dirs(dir).remove(0);
    let pid = trainer_pid(&run).expect("the trainer holds its lock");
    (run, pid)
}

fn assert_resumed_once(dir: &Path, run: &Path) {
    let steps = metric_steps(run);
    let mut dedup = steps.clone();
    dedup.dedup();
    assert_eq!(steps, dedup, "no step recorded twice");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "completed", "{r:#}");
    assert!(
        !r["resumed_from"].as_array().unwrap().is_empty(),
        "resumed from the checkpoint: {r:#}"
    );
    assert_eq!(state_of(dir, run).0, "completed");
}

#[test]
fn kill_9_of_sweep_run_stops_its_trainer_and_a_rerun_resumes_once() {
    let dir = setup("full", 4096);
    let mut child = paced_run(dir.path());
    let (run, pid) = wait_training(dir.path());
    child.kill().unwrap(); // SIGKILL: no handler runs in `sweep run`
    child.wait().unwrap();
    // The kernel tells the trainer its parent died (SIGTERM): it checkpoints and stops.
    wait_until("the orphaned trainer stops", || !alive(pid));
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains("stopped by a signal after step"), "{log}");
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_resumed_once(dir.path(), &run);
}

#[test]
fn sigterm_of_sweep_run_checkpoints_its_trainer_before_it_exits() {
    let dir = setup("full", 4096);
    let mut child = paced_run(dir.path());
    let (run, pid) = wait_training(dir.path());
    // SAFETY: SIGTERM to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let code = child.wait().unwrap();
    assert!(!code.success(), "an interrupted run is not a success");
    assert!(!alive(pid), "`sweep run` waited for its trainer");
    assert_eq!(state_of(dir.path(), &run).0, "cancelled");
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_resumed_once(dir.path(), &run);
}

#[test]
fn a_second_trainer_of_a_run_is_refused_while_the_first_trains() {
    let dir = setup("full", 4096);
    let mut child = paced_run(dir.path());
    let (run, pid) = wait_training(dir.path());
    let second = sweep(
        dir.path(),
        &["train", run.join("run.json").to_str().unwrap()],
    );
    assert_eq!(second.status.code(), Some(1), "{}", err(&second));
    assert!(
        err(&second).contains(&format!("another trainer (pid {pid}) is training the run")),
        "{}",
        err(&second)
    );
    assert!(child.wait().unwrap().success());
    let steps = metric_steps(&run);
    let mut dedup = steps.clone();
    dedup.dedup();
    assert_eq!(steps, dedup, "only one trainer wrote metrics");
}

#[test]
fn a_finished_run_is_kept_when_trained_again() {
    let dir = setup("full", 256);
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let run = run_dirs(dir.path()).remove(0);
    let result = std::fs::read(run.join("result.json")).unwrap();
    let run_json = run.join("run.json");
    // Its data gone: training it again is a no-op, not a failure that replaces the result.
    std::fs::remove_file(dir.path().join("code.txt")).unwrap();
    let o = sweep(dir.path(), &["train", run_json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("already completed"), "{}", err(&o));
    assert!(err(&o).contains("--force"), "{}", err(&o));
    assert_eq!(std::fs::read(run.join("result.json")).unwrap(), result);
    // --force trains it again from scratch.
    write_code(dir.path());
    let o = sweep(
        dir.path(),
        &["train", run_json.to_str().unwrap(), "--force"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "completed");
    assert!(r.get("resumed_from").is_none(), "from scratch: {r:#}");
    assert_eq!(metric_steps(&run).first(), Some(&0));
}

fn write_code(dir: &Path) {
    common::write_corpora(dir);
}

#[test]
fn results_that_are_not_the_runs_own_are_invalid_until_retrained() {
    let dir = setup("full,lora", 256);
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let runs = run_dirs(dir.path());
    let (a, b) = (&runs[0], &runs[1]);
    let b_result = std::fs::read(b.join("result.json")).unwrap();

    // Another run's result copied over: invalid, with the reason.
    std::fs::write(a.join("result.json"), &b_result).unwrap();
    let (st, detail) = state_of(dir.path(), a);
    assert_eq!(st, "invalid", "{detail}");
    let b_id = b.file_name().unwrap().to_str().unwrap();
    assert!(detail.contains(&format!("it is run {b_id}'s")), "{detail}");
    assert!(detail.contains("--retrain-invalid"), "{detail}");
    // The report does not count it as a's.
    let o = sweep(dir.path(), &["report", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    // Notes wrap at 100 columns, continued on lines indented by two spaces.
    let out = String::from_utf8_lossy(&o.stdout).replace("\n  ", " ");
    assert!(out.contains("not this run's result"), "{out}");

    // Truncated: invalid too.
    std::fs::write(a.join("result.json"), &b_result[..b_result.len() / 2]).unwrap();
    assert_eq!(state_of(dir.path(), a).0, "invalid");

    // Deleted after it completed here: invalid, and `sweep run` does not silently retrain it.
    std::fs::remove_file(a.join("result.json")).unwrap();
    let (st, detail) = state_of(dir.path(), a);
    assert_eq!(st, "invalid", "{detail}");
    assert!(detail.contains("result.json is gone"), "{detail}");
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(!o.status.success());
    assert!(
        !a.join("result.json").exists(),
        "not retrained without asking"
    );
    assert!(err(&o).contains("1 invalid"), "{}", err(&o));
    // The hint says how an invalid run is trained again (not --retry-failed).
    assert!(
        err(&o).contains("--retrain-invalid` trains the 1 invalid ones again")
            && !err(&o).contains("--retry-failed"),
        "{}",
        err(&o)
    );

    // Retrained on request, from scratch.
    let o = sweep(dir.path(), &["run", "spec.toml", "--retrain-invalid"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(state_of(dir.path(), a).0, "completed");
    assert_eq!(
        std::fs::read(b.join("result.json")).unwrap(),
        b_result,
        "b untouched"
    );
}

#[test]
fn another_runs_run_json_is_refused_and_never_trained_as_this_run() {
    let dir = setup("full,lora", 256);
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let runs = run_dirs(dir.path());
    let (a, b) = (&runs[0], &runs[1]);
    std::fs::copy(b.join("run.json"), a.join("run.json")).unwrap();
    let o = sweep(dir.path(), &["train", a.join("run.json").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let b_id = b.file_name().unwrap().to_str().unwrap();
    assert!(
        err(&o).contains(&format!("it holds run {b_id}")),
        "{}",
        err(&o)
    );
    let (st, detail) = state_of(dir.path(), a);
    assert_eq!(st, "completed", "its own result still stands: {detail}");
    // `sweep run` sees that the folder's run.json is not the plan's.
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(!o.status.success());
    assert!(
        err(&o).contains("is not the plan's run.json"),
        "{}",
        err(&o)
    );
    let o = sweep(dir.path(), &["run", "spec.toml", "--retrain-invalid"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(state_of(dir.path(), a).0, "completed");
}

#[test]
fn a_copied_spec_that_would_drop_finished_runs_is_refused() {
    let dir = setup("full,lora", 256);
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let plan = dir.path().join("results/integrity/plan.jsonl");
    let before = std::fs::read(&plan).unwrap();
    // The copy keeps the name and trains something else.
    std::fs::write(dir.path().join("copy.toml"), spec("integrity", "full", 512)).unwrap();
    for args in [
        vec!["plan", "copy.toml"],
        vec!["run", "copy.toml"],
        vec!["submit", "copy.toml"],
    ] {
        let o = sweep(dir.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        let e = err(&o);
        assert!(
            e.contains("holds 2 finished runs") && e.contains("a `name` of its own"),
            "{args:?}: {e}"
        );
        assert_eq!(std::fs::read(&plan).unwrap(), before, "{args:?}: plan kept");
    }
    let o = sweep(dir.path(), &["plan", "copy.toml", "--force"]);
    assert!(o.status.success(), "{}", err(&o));
    // Renamed, the copy is a sweep of its own.
    std::fs::write(dir.path().join("copy.toml"), spec("copy", "full", 512)).unwrap();
    let o = sweep(dir.path(), &["plan", "copy.toml"]);
    assert!(o.status.success(), "{}", err(&o));
}

#[test]
fn a_fifo_as_data_is_refused_at_once() {
    let dir = setup("full", 256);
    std::fs::remove_file(dir.path().join("code.txt")).unwrap();
    let fifo = std::ffi::CString::new(dir.path().join("code.txt").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path in our temp dir.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let mut child = bin()
        .args(["run", "spec.toml"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > WAIT {
            let _ = child.kill();
            panic!("a FIFO target hung the run");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    let run = run_dirs(dir.path()).remove(0);
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(
        log.contains("a FIFO (named pipe), not a regular file"),
        "{log}"
    );
}

#[test]
fn counts_below_one_are_usage_errors() {
    let dir = setup("full", 256);
    for args in [
        vec!["run", "spec.toml", "--jobs", "0"],
        vec!["run", "spec.toml", "--jobs", "-1"],
        vec!["run", "spec.toml", "--threads", "0"],
        vec!["train", "run.json", "--threads", "0"],
        vec!["pretrain", "--threads", "-3"],
    ] {
        let o = sweep(dir.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        assert!(err(&o).contains("give 1 or more"), "{args:?}: {}", err(&o));
        assert!(
            !dir.path().join("results").exists(),
            "{args:?}: nothing done"
        );
    }
}

#[test]
fn a_first_submit_that_never_reached_the_cluster_binds_nothing() {
    let dir = setup("full", 256);
    std::fs::write(
        dir.path().join("clusters.toml"),
        "[clusters.far]\nhost = \"127.0.0.1\"\nport = 1\nuser = \"nobody\"\nwork_dir = \"w\"\nconnect_timeout_s = 5\n",
    )
    .unwrap();
    let o = bin()
        .args(["submit", "spec.toml", "--cluster", "far"])
        .current_dir(dir.path())
        .env("SWEEP_CLUSTERS", dir.path().join("clusters.toml"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(err(&o).contains("127.0.0.1:1"), "{}", err(&o));
    // The sweep still runs here, and status, cancel and collect treat it as a local sweep.
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(status(dir.path()).iter().all(|r| r["state"] == "completed"));
    let o = sweep(dir.path(), &["collect", "spec.toml"]);
    assert!(
        err(&o).contains("was not submitted to a cluster"),
        "{}",
        err(&o)
    );
}

/// A small tmpfs mounted for one test (root only), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap().keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("SWEEP_TESTS_REQUIRE_SETUP").as_deref() != Ok("1"),
                "mounting a tmpfs failed, and SWEEP_TESTS_REQUIRE_SETUP=1 (scripts/test, as root) says this test must run"
            );
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_full_disk_is_one_line_and_leaves_no_partial_checkpoint() {
    let dir = setup("full", 256);
    // Room for the run's small files, not for a checkpoint of the ~1M-parameter model.
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    let o = sweep(
        dir.path(),
        &["--results", fs.0.to_str().unwrap(), "run", "spec.toml"],
    );
    assert!(!o.status.success());
    let run = common::first_run_dir(&fs.0.join("integrity/runs"));
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    let error: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "one error line: {log}");
    assert!(
        error[0].contains("No space left on device")
            && error[0].contains("partial one was removed"),
        "{log}"
    );
    assert!(log.lines().count() < 10, "no dump: {log}");
    let left: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "no partial checkpoint: {left:?}");
}

/// Mistakes in what the user wrote exit 2, runtime failures 1, as the README says.
#[test]
fn usage_and_config_errors_exit_2() {
    let dir = setup("full", 256);
    std::fs::write(
        dir.path().join("bad-clusters.toml"),
        "[clusters.x]\nhost = 1\n",
    )
    .unwrap();
    let o = bin()
        .args(["submit", "spec.toml", "--cluster", "x"])
        .current_dir(dir.path())
        .env("SWEEP_CLUSTERS", dir.path().join("bad-clusters.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "clusters.toml: {}", err(&o));
    // A device that does not exist.
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let run = run_dirs(dir.path()).remove(0);
    let o = sweep(
        dir.path(),
        &[
            "train",
            run.join("run.json").to_str().unwrap(),
            "--force",
            "--device",
            "tpu",
        ],
    );
    assert_eq!(o.status.code(), Some(2), "device: {}", err(&o));
    assert!(
        err(&o).contains("use auto, cpu, cuda or cuda:N"),
        "{}",
        err(&o)
    );
    assert_eq!(
        state_of(dir.path(), &run).0,
        "completed",
        "a bad --force loses nothing"
    );
    // A spec whose results folder holds another sweep's plan.
    let plan = dir.path().join("results/integrity/plan.jsonl");
    let text = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(
        &plan,
        text.replace("\"sweep\":\"integrity\"", "\"sweep\":\"other\""),
    )
    .unwrap();
    let o = sweep(dir.path(), &["report", "spec.toml"]);
    assert_eq!(o.status.code(), Some(2), "report: {}", err(&o));
    assert!(
        err(&o).contains("holds the plan of sweep `other`"),
        "{}",
        err(&o)
    );
}

/// `sweep` with the test's data and cache folders.
fn sweep_with_cache(dir: &Path, args: &[&str]) -> Output {
    bin()
        .args(args)
        .current_dir(dir)
        .env("SWEEP_DATA", dir.join("data"))
        .env("SWEEP_CACHE", dir.join("cache"))
        .env_remove("SWEEP_MIN_STEP_MS")
        .output()
        .unwrap()
}

/// The base model replaced in place after a LoRA run trained on it: `sweep export` refuses to
/// merge the adapter into it. A truncated pretrained cache is not taken for a cached model.
#[test]
fn replaced_base_weights_are_refused_by_export_and_a_truncated_cache_is_remade() {
    let dir = setup("lora", 256);
    let play: String = (0..400)
        .map(|i| format!("KING. Speak, speak, my lord {i}!\nLORD. I will, my liege.\n"))
        .collect();
    std::fs::create_dir_all(dir.path().join("data/shakespeare")).unwrap();
    std::fs::write(dir.path().join("data/shakespeare/play.md"), play).unwrap();
    let pretrain = |tokens: &str| {
        let o = sweep_with_cache(
            dir.path(),
            &["pretrain", "--shape", "tiny", "--tokens", tokens, "--force"],
        );
        assert!(o.status.success(), "{}", err(&o));
    };
    pretrain("4k");
    let spec = std::fs::read_to_string(dir.path().join("spec.toml")).unwrap();
    std::fs::write(
        dir.path().join("spec.toml"),
        spec.replace("init = \"random\"", "init = \"pretrained\""),
    )
    .unwrap();
    let o = sweep_with_cache(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let run = run_dirs(dir.path()).remove(0);
    let out = dir.path().join("exported");
    let export = || {
        sweep_with_cache(
            dir.path(),
            &[
                "export",
                run.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    // Another pretraining writes other weights at the same path.
    pretrain("8k");
    let o = export();
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert!(err(&o).contains("the base model changed"), "{}", err(&o));
    assert!(!out.exists(), "nothing exported");

    let cached = dir.path().join("cache/pretrained/tiny.safetensors");
    let bytes = std::fs::read(&cached).unwrap();
    std::fs::write(&cached, &bytes[..bytes.len() / 3]).unwrap();
    let o = sweep_with_cache(
        dir.path(),
        &["pretrain", "--shape", "tiny", "--tokens", "8k"],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("is corrupt"), "{}", err(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("is cached"),
        "a truncated file is not a cached model"
    );
    assert_eq!(
        std::fs::read(&cached).unwrap().len(),
        bytes.len(),
        "made again"
    );
    // --json: one JSON document on stdout, saying the model is the cached one.
    let o = sweep_with_cache(
        dir.path(),
        &["--json", "pretrain", "--shape", "tiny", "--tokens", "8k"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["cached"], true, "{j}");
    assert_eq!(j["shape"], "tiny", "{j}");
    assert!(
        j["weights"].as_str().unwrap().ends_with("tiny.safetensors"),
        "{j}"
    );
}

/// A run whose data changed after it trained here is invalid in `sweep status` (its result is
/// not the result of today's data), and counts again when the data is put back.
#[test]
fn a_result_of_data_that_changed_since_is_invalid() {
    let dir = setup("full", 256);
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let run = run_dirs(dir.path()).remove(0);
    let source = dir.path().join("english.txt");
    let original = std::fs::read(&source).unwrap();
    std::fs::write(&source, "Other words entirely.\n".repeat(500)).unwrap();
    let (st, detail) = state_of(dir.path(), &run);
    assert_eq!(st, "invalid", "{detail}");
    assert!(
        detail.contains("english.txt") && detail.contains("changed since"),
        "{detail}"
    );
    // The report does not count it either.
    let o = sweep(dir.path(), &["report", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("trained from files that changed since"),
        "{out}"
    );
    std::fs::write(&source, original).unwrap();
    assert_eq!(state_of(dir.path(), &run).0, "completed");
}
