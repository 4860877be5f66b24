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
