//! What several integration tests share: the small corpora they train on, and reading the
//! training losses a run wrote.

use std::path::Path;

/// code.txt (a target domain of Python-like lines) and english.txt (a source domain) in `dir`.
#[allow(dead_code)] // not every test binary that includes this module trains
pub fn write_corpora(dir: &Path) {
    let code: String = (0..300)
        .map(|i| format!("def f{i}(x):\n    return x * {i} + {}\n\n", i % 7))
        .collect();
    let english: String = (0..300)
        .map(|i| format!("The {i}th knight rode to the castle and spoke of honour.\n"))
        .collect();
    std::fs::write(dir.join("code.txt"), code).unwrap();
    std::fs::write(dir.join("english.txt"), english).unwrap();
}

/// The (step, train_loss) of every line of a metrics.jsonl past the base evaluation.
#[allow(dead_code)] // not every test binary that includes this module reads losses
pub fn train_losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["step"].as_u64().unwrap() > 0)
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["train_loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The folder of the first run under a sweep's `runs/`.
#[allow(dead_code)] // not every test binary that includes this module reads run folders
pub fn first_run_dir(runs: &Path) -> std::path::PathBuf {
    std::fs::read_dir(runs)
        .unwrap()
        .next()
        .expect("a run folder")
        .unwrap()
        .path()
}

/// The python of the venv scripts/test makes (SWEEP_TEST_PYTHON, with tensorboard and mlflow),
/// or None on a developer's machine without it, where the `what` check is skipped and says so.
/// Under scripts/test (SWEEP_TESTS_REQUIRE_SETUP=1) its absence fails the test.
#[allow(dead_code)] // only the tests that read runs with a python package use it
pub fn test_python(what: &str) -> Option<String> {
    match std::env::var("SWEEP_TEST_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                std::env::var("SWEEP_TESTS_REQUIRE_SETUP").as_deref() != Ok("1"),
                "SWEEP_TEST_PYTHON is unset, and SWEEP_TESTS_REQUIRE_SETUP=1 (scripts/test) says the {what} check must run"
            );
            eprintln!(
                "skipped: the {what} check (SWEEP_TEST_PYTHON is unset; scripts/test sets it)"
            );
            None
        }
    }
}

/// What `python -c script args...` prints, as JSON (the test fails with its stderr if it fails).
#[allow(dead_code)] // only the tests that read runs with a python package use it
pub fn python_json<T: serde::de::DeserializeOwned>(
    python: &str,
    script: &str,
    args: &[&std::ffi::OsStr],
) -> T {
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A user's training program for `[trainer] command` (Python, standard library only): takes
/// `--lr`, `--out` (its run folder) and `--eval-at` (token counts), fails with exit 3 above a
/// learning rate of 0.05, with SLOW set waits for SIGTERM (and says it checkpointed), writes
/// seen.json (its arguments and environment) and a metrics.jsonl of made-up losses.
#[allow(dead_code)]
pub const USER_TRAINER: &str = r#"import json, os, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
lr, out = float(args["--lr"]), args["--out"]
if lr > 0.05:
    sys.exit(3)
if os.environ.get("SLOW"):
    import signal, time
    signal.signal(signal.SIGTERM, lambda *_: (open(os.path.join(out, "checkpointed"), "w").close(), sys.exit(0)))
    open(os.path.join(out, "started"), "w").close()
    time.sleep(60)
with open(os.path.join(out, "seen.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "rank": os.environ.get("SWEEP_RANK"),
               "method": os.environ["SWEEP_METHOD"], "job": os.environ.get("SLURM_JOB_ID")}, f)
with open(os.path.join(out, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"tokens": 0, "target_loss": 3.0, "source_loss": 2.0}) + "\n")
    for t in [int(x) for x in args["--eval-at"].split(",")]:
        f.write(json.dumps({"tokens": t, "step": t // 64, "train_loss": 3.0 - lr * t,
                            "target_loss": 3.0 - lr * t, "source_loss": 2.0 + lr * t / 4}) + "\n")
"#;

/// An `mlflow server` (PyPI's, in the venv scripts/test makes and names in SWEEP_TEST_PYTHON)
/// on a free port of 127.0.0.1, stopped (its whole process group) when dropped.
#[allow(dead_code)] // only the tests that log to MLflow use it
pub struct MlflowServer {
    child: std::process::Child,
    /// http://127.0.0.1:PORT
    pub uri: String,
}

#[allow(dead_code)]
impl MlflowServer {
    /// Start one with its store in `dir`; waits until it answers.
    pub fn start(python: &str, dir: &Path) -> MlflowServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = std::process::Command::new(python);
        cmd.args([
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--workers",
            "1",
        ])
        .args(["--port", &port.to_string()])
        .arg("--backend-store-uri")
        .arg(format!("sqlite:///{}", dir.join("mlflow.db").display()))
        .arg("--default-artifact-root")
        .arg(dir.join("artifacts"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut server = MlflowServer {
            child: cmd.spawn().expect("mlflow server starts"),
            uri: format!("http://127.0.0.1:{port}"),
        };
        let t0 = std::time::Instant::now();
        while reqwest::blocking::get(format!("{}/health", server.uri)).is_err() {
            assert!(
                server.child.try_wait().unwrap().is_none() && t0.elapsed().as_secs() < 120,
                "mlflow server did not come up: {}",
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        server
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the server's own process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The runs of MLflow experiment `experiment` on the server at `uri`, read with MLflow's own
/// client, oldest first: each one's `name`, `status`, `params` and the [step, value] history
/// of `train/loss` and `eval/target_loss`.
#[allow(dead_code)] // only the tests that log to MLflow use it
pub fn mlflow_runs(python: &str, uri: &str, experiment: &str) -> Vec<serde_json::Value> {
    let read = r#"
import json, sys
from mlflow import MlflowClient
c = MlflowClient(sys.argv[1])
e = c.get_experiment_by_name(sys.argv[2])
out = []
for r in c.search_runs([e.experiment_id], order_by=["attributes.start_time ASC"]):
    out.append({
        "name": r.info.run_name,
        "status": r.info.status,
        "params": r.data.params,
        "metrics": {k: sorted([m.step, m.value] for m in c.get_metric_history(r.info.run_id, k))
                    for k in ["train/loss", "eval/target_loss"]},
    })
print(json.dumps(out))
"#;
    python_json(python, read, &[uri.as_ref(), experiment.as_ref()])
}

/// [`mlflow_runs`] by run name (each name once).
#[allow(dead_code)] // only the tests that log to MLflow use it
pub fn mlflow_runs_by_name(
    python: &str,
    uri: &str,
    experiment: &str,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let runs = mlflow_runs(python, uri, experiment);
    let n = runs.len();
    let by: std::collections::BTreeMap<String, serde_json::Value> = runs
        .into_iter()
        .map(|r| (r["name"].as_str().unwrap_or_default().to_string(), r))
        .collect();
    assert_eq!(by.len(), n, "one MLflow run per name: {by:?}");
    by
}
