//! `sweep run`, `status` and `report` end to end: the real binary trains a tiny sweep on this
//! machine with the local executor, then reports it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn sweep(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the sweep binary runs")
}

/// SPEC cut down to one full fine-tuning run of `tokens` tokens (64 a step).
fn one_run_spec(tokens: u64) -> String {
    let spec = SPEC
        .replace("method = [\"full\", \"lora\"]", "method = [\"full\"]")
        .replace(
            "token_budget = [128, 256]",
            &format!("token_budget = [{tokens}]"),
        )
        .replace("seeds = 2", "seeds = 1")
        .replace("learning_rate = [1e-3, 3e-3]", "learning_rate = [1e-3]");
    spec[..spec.find("[grid.lora]").unwrap()].to_string()
}

/// `sweep ARGS` in `dir`, started with its output piped.
fn spawn_piped(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The output of `child` once it exits; fails the test when it runs past `limit_s`.
fn wait_exit(mut child: std::process::Child, limit_s: u64, what: &str) -> Output {
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(limit_s) {
            let _ = child.kill();
            panic!("{what} did not end within {limit_s} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const SPEC: &str = r#"name = "tinyrun"
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
[evaluation]
eval_tokens = 256
metrics = ["target_loss", "source_loss", "spectral_rank"]
[grid]
method = ["full", "lora"]
token_budget = [128, 256]
seeds = 2
rank = 2
target_modules = "all"
[grid.full]
learning_rate = [1e-3, 3e-3]
[grid.lora]
learning_rate = [3e-3, 1e-2]
"#;

#[test]
fn run_status_report_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();

    // --json: the events, one per line (the schema the Slurm executor shares, README).
    let o = sweep(dir.path(), &["--json", "run", "spec.toml", "--jobs", "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        events[0],
        serde_json::json!({"event": "start", "sweep": "tinyrun", "executor": "local",
            "total": 8, "done": 0, "parallel": 2})
    );
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["event"] == kind).collect()
    };
    assert_eq!(of("run_started").len(), 8, "{events:?}");
    let ended = of("run_ended");
    assert_eq!(ended.len(), 8, "{events:?}");
    assert!(ended
        .iter()
        .all(|e| e["state"] == "completed" && e["wall_s"].as_f64().unwrap() > 0.0));
    let finish = of("finish");
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["counts"][2], serde_json::json!(["completed", 8]));
    let last = events.last().unwrap();
    assert_eq!(last["event"], "report", "{last}");
    assert!(dir
        .path()
        .join(last["path"].as_str().unwrap())
        .join("report.json")
        .exists());

    let runs = dir.path().join("results/tinyrun/runs");
    let ids: Vec<String> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(ids.len(), 8);
    for id in &ids {
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(runs.join(id).join("result.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(r["status"], "completed", "{id}");
        assert_eq!(
            r["evals"].as_array().unwrap().len(),
            3,
            "base, 128 and 256 tokens: {id}"
        );
        assert!(runs.join(id).join("train.log").exists());
    }

    // A rerun never trains a finished run again.
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let log = err(&o);
    assert!(
        log.contains("sweep tinyrun: 8 runs, 8 already done"),
        "{log}"
    );
    assert!(log.contains("done: 8 completed"), "{log}");

    let o = sweep(dir.path(), &["--json", "status", "spec.toml"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["state"] == "completed"));
    // The results folder names the sweep as well as its spec does.
    let o = sweep(dir.path(), &["--json", "status", "results/tinyrun"]);
    assert!(o.status.success(), "{}", err(&o));
    let by_folder: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(by_folder, rows);
    assert!(err(&o).is_empty(), "nothing to say: {}", err(&o));
    // --results elsewhere beside the folder names two places: refused, not one of them used.
    std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
    let o = sweep(
        dir.path(),
        &["--results", "elsewhere", "status", "results/tinyrun"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("but --results says elsewhere"),
        "{}",
        err(&o)
    );
    // The spec edited since (a comment: the same runs): the folder's copy is used, and said.
    let text = std::fs::read_to_string(dir.path().join("spec.toml")).unwrap();
    std::fs::write(dir.path().join("spec.toml"), format!("{text}# edited\n")).unwrap();
    let o = sweep(dir.path(), &["--json", "status", "results/tinyrun"]);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap(),
        rows
    );
    assert!(
        err(&o).contains("spec.toml changed since results/tinyrun was planned"),
        "{}",
        err(&o)
    );
    std::fs::write(dir.path().join("spec.toml"), text).unwrap();
    // A run is named by its id: export finds its folder among the sweeps of --results.
    let lora = ids
        .iter()
        .find(|id| {
            std::fs::read_to_string(runs.join(id).join("run.json"))
                .unwrap()
                .contains("\"lora\"")
        })
        .unwrap();
    let o = sweep(dir.path(), &["export", lora, "--out", "exported"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(dir.path().join("exported/config.json").exists());
    // --best exports the run the report names: LoRA's, and the best of both methods.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("results/tinyrun/report/report.json")).unwrap(),
    )
    .unwrap();
    let named = |pick: &dyn Fn(&serde_json::Value) -> bool| {
        let best = report["best"].as_array().unwrap();
        best.iter().find(|b| pick(b)).unwrap()["run_id"].clone()
    };
    for (how, out, want) in [
        ("lora", "best-lora", named(&|b| b["method"] == "lora")),
        ("any", "best-any", named(&|b| b["overall"] == true)),
    ] {
        let o = sweep(
            dir.path(),
            &[
                "--json",
                "export",
                "spec.toml",
                &format!("--best={how}"),
                "--out",
                out,
            ],
        );
        assert!(o.status.success(), "{}", err(&o));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(doc["best"]["run_id"], want, "{doc}");
        assert!(dir.path().join(out).join("config.json").exists());
    }
    // The flag's value is given with "=", so a bare --best before the sweep takes none.
    let o = sweep(
        dir.path(),
        &["export", "--best", "results/tinyrun", "--out", "best"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    let overall = named(&|b| b["overall"] == true);
    assert!(
        said.starts_with("best ")
            && said.contains(&format!(" run: {} (config ", overall.as_str().unwrap())),
        "{said}"
    );

    // Corrupt one result: the report lists it as unreadable and reports the rest.
    let kept = std::fs::read(runs.join(&ids[0]).join("result.json")).unwrap();
    std::fs::write(
        runs.join(&ids[0]).join("result.json"),
        "{\"schema\": 1, \"id\"",
    )
    .unwrap();
    let o = sweep(dir.path(), &["report", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Findings of the paper"), "{out}");
    assert!(
        out.contains(&format!("run {}: unreadable result.json", ids[0])),
        "{out}"
    );
    let report = dir.path().join("results/tinyrun/report");
    for f in [
        "report.md",
        "report.html",
        "report.json",
        "lr_sensitivity.svg",
        "data_scaling.svg",
        "learning_forgetting.svg",
        "tables/findings.csv",
    ] {
        assert!(report.join(f).exists(), "{f}");
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(
        md.contains("Learning metric: `target_loss`. Forgetting metric: `source_loss_increase`."),
        "{md}"
    );
    assert!(
        md.contains("Spectral rank"),
        "spectral rank measured and reported: {md}"
    );

    std::fs::write(runs.join(&ids[0]).join("result.json"), kept).unwrap();

    // Two sweeps in one report: each its own, and their findings side by side, corrected
    // together; one JSON document with --json. The same sweep twice is refused.
    let other = one_run_spec(64)
        .replace("name = \"tinyrun\"", "name = \"tinyone\"")
        .replace("domain = \"code\"", "domain = \"math\"");
    std::fs::write(dir.path().join("one.toml"), other).unwrap();
    let o = sweep(dir.path(), &["-q", "run", "one.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = sweep(dir.path(), &["--json", "report", "spec.toml", "one.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let both: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(both["reports"].as_array().unwrap().len(), 2);
    let summary = &both["summary"];
    let labels: Vec<String> = summary["sweeps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {} {}", s["sweep"], s["domain"], s["regime"]))
        .collect();
    assert_eq!(
        labels,
        [
            "\"tinyrun\" \"code\" \"cpt\"",
            "\"tinyone\" \"math\" \"cpt\""
        ]
    );
    let rows = summary["findings"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{summary}");
    assert!(rows
        .iter()
        .all(|r| r["cells"].as_array().unwrap().len() == 2));
    let tested = |i: usize| -> usize {
        both["reports"][i]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !f["test"].is_null())
            .count()
    };
    assert!(tested(0) > 0, "the 2-seed sweep tests some findings");
    assert_eq!(
        summary["tests"].as_u64().unwrap() as usize,
        tested(0) + tested(1)
    );
    let md = std::fs::read_to_string(dir.path().join("results/summary/summary.md")).unwrap();
    assert!(
        md.contains("[tinyrun](../tinyrun/report/report.md): code cpt"),
        "{md}"
    );
    assert!(
        md.contains("| finding | tinyrun (code cpt) | tinyone (math cpt) | across sweeps |"),
        "{md}"
    );
    assert!(dir.path().join("results/summary/summary.json").exists());
    assert!(dir
        .path()
        .join("results/tinyone/report/report.html")
        .exists());
    let o = sweep(dir.path(), &["report", "spec.toml", "results/tinyrun"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("spec.toml and results/tinyrun are the same sweep's results"),
        "{}",
        err(&o)
    );
}

#[test]
fn a_second_process_on_the_same_sweep_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    let sweep_dir = dir.path().join("results/tinyrun");
    std::fs::create_dir_all(&sweep_dir).unwrap();
    // Hold the lock as another process would.
    let f = std::fs::File::create(sweep_dir.join(".lock")).unwrap();
    f.try_lock().unwrap();
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("another sweep process"), "{}", err(&o));
}

/// `sweep follow` of a sweep never sent to a cluster: a usage error that says what to run.
#[test]
fn follow_of_a_sweep_never_submitted_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    let o = sweep(dir.path(), &["follow", "spec.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let e = err(&o);
    assert!(e.contains("was never submitted to a cluster"), "{e}");
    assert!(
        e.contains("sweep submit spec.toml --cluster NAME --follow"),
        "{e}"
    );
    assert!(e.contains("sweep run spec.toml"), "{e}");
}

/// On a terminal (a pseudo-terminal from util-linux's `script`), `sweep run` draws a bar of its
/// runs and `sweep train` a bar of its steps; the trainer's train.log stays plain lines.
#[test]
fn progress_bars_are_drawn_on_a_terminal_and_logs_stay_plain() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    std::fs::write(dir.path().join("spec.toml"), one_run_spec(256)).unwrap();
    let on_terminal = |command: &str| -> String {
        let o = Command::new("script")
            .args(["-qec", command, "/dev/null"])
            .current_dir(dir.path())
            .env("TERM", "xterm")
            .output()
            .expect("util-linux's script");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{command}: {out}");
        out
    };
    let bin = env!("CARGO_BIN_EXE_sweep");
    let out = on_terminal(&format!("{bin} run spec.toml --jobs 1"));
    assert!(out.contains("runs ["), "the runs' bar: {out}");
    assert!(out.contains("/1 ended"), "{out}");
    assert!(out.contains("done: 1 completed"), "{out}");
    let run = common::first_run_dir(&dir.path().join("results/tinyrun/runs"));
    let id = run.file_name().unwrap().to_string_lossy().into_owned();
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.contains(&format!("{id}: step 4/4 (100%)")), "{log}");
    assert!(
        !log.contains('\x1b') && !log.contains('\r'),
        "plain lines: {log:?}"
    );
    let out = on_terminal(&format!(
        "{bin} train {} --force",
        run.join("run.json").display()
    ));
    assert!(out.contains(&format!("{id} [")), "the steps' bar: {out}");
    assert!(out.contains("step 4/4 (100%)"), "{out}");
    assert!(
        !out.contains(&format!("{id}: step 1/4")),
        "no plain line per step: {out}"
    );
}

/// `status --watch` of a sweep that is planned but that no sweep process runs ends at once,
/// saying how it resumes, instead of watching pending runs forever.
#[test]
fn watch_of_a_sweep_nobody_runs_ends_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    let o = sweep(dir.path(), &["plan", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let watch = spawn_piped(dir.path(), &["status", "results/tinyrun", "--watch", "0.2"]);
    let o = wait_exit(watch, 30, "status --watch of a sweep nobody runs");
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("pending ┆ 8"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        err(&o).contains("8 runs pending and no sweep process runs them: `sweep run ")
            && err(&o).contains("results/tinyrun` resumes them"),
        "{}",
        err(&o)
    );
}

#[test]
fn report_without_results_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    let o = sweep(dir.path(), &["report", "spec.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err(&o).contains("no plan.jsonl: run `sweep plan SPEC` or `sweep run SPEC` first"),
        "{}",
        err(&o)
    );
}

#[test]
fn tokenize_builds_the_caches_runs_read_and_a_second_time_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    std::fs::write(dir.path().join("spec.toml"), SPEC).unwrap();
    let o = sweep(dir.path(), &["tokenize", "spec.toml", "--json"]);
    assert!(o.status.success(), "{}", err(&o));
    let caches: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let caches = caches.as_array().unwrap();
    assert_eq!(caches.len(), 2);
    for (c, role) in caches.iter().zip(["target", "source"]) {
        assert_eq!(c["role"], role);
        assert!(c["built"]["seconds"].as_f64().is_some(), "built now: {c}");
        assert!(c["tokens"].as_u64().unwrap() > 10_000, "{c}");
        let cache = Path::new(c["cache"].as_str().unwrap());
        assert!(
            dir.path().join(cache).join("meta.json").is_file() || cache.join("meta.json").is_file(),
            "{c}"
        );
    }
    // Again: read as it is; the human form says so.
    let o = sweep(dir.path(), &["tokenize", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches(", cached -> ").count(), 2, "{out}");
    // A run trains from those caches without tokenizing again.
    let o = sweep(dir.path(), &["run", "spec.toml", "--jobs", "2"]);
    assert!(o.status.success(), "{}", err(&o));
    let logs: String = std::fs::read_dir(dir.path().join("results/tinyrun/runs"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path().join("train.log")).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("Completed after"),
        "the runs' logs are read: {logs}"
    );
    assert!(!logs.contains("tokenized "), "{logs}");
    // A data file that is not there: one line naming it.
    std::fs::remove_file(dir.path().join("english.txt")).unwrap();
    let o = sweep(dir.path(), &["tokenize", "spec.toml"]);
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert!(e.contains("data source english.txt does not exist"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn status_and_the_log_say_how_far_a_running_run_has_got() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    // One run of 16 paced steps (0.4 s each), logging every step.
    std::fs::write(dir.path().join("spec.toml"), one_run_spec(1024)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(["--json", "run", "spec.toml", "--jobs", "1"])
        .current_dir(dir.path())
        .env("SWEEP_MIN_STEP_MS", "400")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = None;
    let started = std::time::Instant::now();
    while seen.is_none() && started.elapsed() < std::time::Duration::from_secs(120) {
        let o = sweep(dir.path(), &["status", "spec.toml"]);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if let Some(line) = out.lines().find(|l| l.contains("running: step ")) {
            seen = Some(line.to_string());
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // `status --watch` beside it once it runs, not on a terminal: a status after another,
    // until it settles (by the spec).
    let watch = spawn_piped(dir.path(), &["status", "spec.toml", "--watch", "0.3"]);
    let run = child.wait_with_output().unwrap();
    assert!(run.status.success());
    // Its events told how far the run got as it trained (run_progress, read from its metrics).
    let steps: Vec<u64> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "run_progress")
        .map(|e| {
            assert_eq!(e["total_steps"], 16, "{e}");
            e["step"].as_u64().unwrap()
        })
        .collect();
    assert!(steps.len() >= 2, "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    let watched = wait_exit(watch, 30, "status --watch once the run completed");
    let out = String::from_utf8_lossy(&watched.stdout);
    assert!(watched.status.success(), "{}", err(&watched));
    assert!(out.matches("sweep tinyrun: 1 runs").count() >= 2, "{out}");
    assert!(out.contains("running: step "), "{out}");
    let last = &out[out.rfind("sweep tinyrun").unwrap()..];
    assert!(last.contains("completed ┆ 1"), "it ends settled: {out}");
    let line = seen.expect("status showed the running run's progress");
    assert!(line.contains("/16 ("), "{line}");
    assert!(line.contains(", loss "), "{line}");
    // The trainer's log grew a line per logged step, the last at 16 of 16.
    let run = common::first_run_dir(&dir.path().join("results/tinyrun/runs"));
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(log.matches(": step ").count() >= 16, "{log}");
    assert!(log.contains("step 16/16 (100%)"), "{log}");
}

/// A user cancels one of two running runs by its id, naming the sweep by its results folder:
/// that run stops (resumable), the other trains to the end, and the run command says which
/// did not complete and how to rerun it.
#[test]
fn one_running_run_is_cancelled_by_its_id_through_the_results_folder() {
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    // Two runs of 16 paced steps (0.4 s each).
    let spec = SPEC
        .replace("method = [\"full\", \"lora\"]", "method = [\"full\"]")
        .replace("token_budget = [128, 256]", "token_budget = [1024]")
        .replace("seeds = 2", "seeds = 1");
    let spec = &spec[..spec.find("[grid.lora]").unwrap()];
    std::fs::write(dir.path().join("spec.toml"), spec).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(["run", "spec.toml", "--jobs", "2"])
        .current_dir(dir.path())
        .env("SWEEP_MIN_STEP_MS", "400")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let running = loop {
        let o = sweep(dir.path(), &["--json", "status", "results/tinyrun"]);
        let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let running: Vec<String> = rows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["state"] == "running")
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        if running.len() == 2 {
            break running;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "both runs never ran at once: {rows}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let (victim, other) = (&running[0], &running[1]);
    let o = sweep(dir.path(), &["cancel", "results/tinyrun", victim]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out.contains(&format!("cancelled {victim}")) && !out.contains(other.as_str()),
        "{out}"
    );
    let o = child.wait_with_output().unwrap();
    let log = err(&o);
    assert!(!o.status.success(), "one run did not complete: {log}");
    assert!(
        log.contains("1 of 2 runs did not complete")
            && log.contains("`sweep run results/tinyrun --retry-failed`"),
        "{log}"
    );
    let o = sweep(dir.path(), &["--json", "status", "results/tinyrun"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let state = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state(other), "completed", "{rows}");
    assert_ne!(state(victim), "completed", "{rows}");
    // --json: one JSON document; nothing is running any more.
    let o = sweep(dir.path(), &["--json", "cancel", "results/tinyrun"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["runs"], serde_json::json!([]), "{j}");
    assert_eq!(j["executor"], "local", "{j}");
    // A run named that is not running is said, not silently counted as 0.
    let o = sweep(dir.path(), &["--json", "cancel", "results/tinyrun", other]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["not_running"], serde_json::json!([other]), "{j}");
    let o = sweep(dir.path(), &["cancel", "results/tinyrun", other]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains(&format!(
            "{other} is not queued or running: nothing to stop"
        )),
        "{out}"
    );
    let o = sweep(dir.path(), &["cancel", "results/tinyrun", "nosuchrun-s0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(err(&o).contains("has no run `nosuchrun-s0`"), "{}", err(&o));
}

/// A training program of the user's own (`[trainer] command`, here a standard-library Python
/// script) trains every run of a sweep through `sweep run`: its placeholders and SWEEP_*
/// variables carry the run's settings, its metrics.jsonl lines become result.json's
/// evaluations and the report's, a failing exit is a failed run naming it, and a rerun
/// trains nothing twice.
#[test]
fn a_users_training_program_runs_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trainer.py"), common::USER_TRAINER).unwrap();
    let spec = trainer_sweep(
        dir.path(),
        "own",
        r#"command = ["python3", "trainer.py", "--lr", "{learning_rate}", "--out", "{run_dir}", "--eval-at", "{eval_at}", "--id", "{id}"]
[grid]
method = ["full", "lora"]
token_budget = [128, 256]
rank = 4
[grid.full]
learning_rate = [1e-3]
[grid.lora]
learning_rate = [2e-3, 0.1]
"#,
    );
    std::fs::write(dir.path().join("spec.toml"), &spec).unwrap();
    // `-q status` answers by its exit code alone: 3 while runs are pending, 4 once none is but
    // some failed (0 when all completed: the test below).
    let quiet_status = |dir: &Path| {
        let o = sweep(dir, &["-q", "status", "spec.toml"]);
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{o:?}");
        o.status.code()
    };
    assert_eq!(quiet_status(dir.path()), Some(3));
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    let log = err(&o);
    assert!(!o.status.success(), "the lr 0.1 runs fail: {log}");
    assert_eq!(quiet_status(dir.path()), Some(4));
    let o = sweep(dir.path(), &["status", "spec.toml"]);
    assert!(o.status.success(), "without -q, status exits 0: {o:?}");
    assert!(log.contains("done: 2 completed, 1 failed"), "{log}");
    assert!(
        log.contains("`sweep status results/own` lists them")
            && log.contains("`sweep run results/own --retry-failed` reruns them"),
        "the hint names the results folder and --retry-failed: {log}"
    );
    let runs = dir.path().join("results/own/runs");
    let mut completed = 0;
    for e in std::fs::read_dir(&runs).unwrap() {
        let run = e.unwrap().path();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap())
                .unwrap();
        let plan: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
        if r["status"] == "failed" {
            assert!(
                r["error"]
                    .as_str()
                    .unwrap()
                    .contains("exited with exit status: 3"),
                "{r}"
            );
            continue;
        }
        completed += 1;
        let budget = plan["token_budget"].as_u64().unwrap();
        assert_eq!(r["tokens"], budget, "{r}");
        let evals = r["evals"].as_array().unwrap();
        let at: Vec<u64> = evals
            .iter()
            .map(|e| e["tokens"].as_u64().unwrap())
            .collect();
        assert_eq!(at, [0, 128, 256], "the base, then each budget: {r}");
        let lr = plan["learning_rate"].as_f64().unwrap();
        let last = evals.last().unwrap()["metrics"]["target_loss"]
            .as_f64()
            .unwrap();
        assert!((last - (3.0 - lr * budget as f64)).abs() < 1e-9, "{r}");
        let seen: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("seen.json")).unwrap()).unwrap();
        assert!(seen["argv"]
            .to_string()
            .contains(&format!("\"{}\"", plan["id"].as_str().unwrap())));
        let lora = plan["method"] == "lora";
        assert_eq!(seen["method"], if lora { "lora" } else { "full" });
        assert_eq!(seen["rank"], if lora { "4" } else { "" });
    }
    assert_eq!(completed, 2);
    // The report reads the program's results like the builtin trainer's.
    let o = sweep(dir.path(), &["report", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(dir.path().join("results/own/report/report.md").exists());
    // A rerun trains nothing that completed; the failed runs stay failed.
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(err(&o).contains("2 already done"), "{}", err(&o));
    // `sweep train` of a completed run (a requeue, by hand) leaves it as it is, without
    // starting the program; --nproc is the builtin trainer's and refused.
    let completed_run = || {
        std::fs::read_dir(&runs)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                std::fs::read_to_string(p.join("result.json"))
                    .unwrap()
                    .contains("completed")
            })
            .unwrap()
    };
    let done = completed_run();
    std::fs::remove_file(done.join("seen.json")).unwrap();
    let o = sweep(
        dir.path(),
        &["train", done.join("run.json").to_str().unwrap()],
    );
    assert!(
        o.status.success() && err(&o).contains("already Completed"),
        "{}",
        err(&o)
    );
    assert!(
        !done.join("seen.json").exists(),
        "the program was not started again"
    );
    let o = sweep(
        dir.path(),
        &[
            "train",
            done.join("run.json").to_str().unwrap(),
            "--nproc",
            "2",
        ],
    );
    assert!(
        !o.status.success() && err(&o).contains("--nproc"),
        "{}",
        err(&o)
    );
    // SIGTERM (a time limit, a cancel) reaches the program, which checkpoints and exits; no
    // result is written, so the run resumes instead of counting.
    let run = completed_run();
    std::fs::remove_file(run.join("result.json")).unwrap();
    std::fs::remove_file(run.join("metrics.jsonl")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(["train"])
        .arg(run.join("run.json"))
        .current_dir(dir.path())
        .env("SLOW", "1")
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !run.join("started").exists() {
        assert!(t0.elapsed().as_secs() < 60, "the program started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) of the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(
        run.join("checkpointed").exists(),
        "the program got the signal"
    );
    assert!(
        !run.join("result.json").exists(),
        "no result for a stopped run"
    );
    // A placeholder the tool does not know is refused at plan, naming the key.
    std::fs::write(
        dir.path().join("spec.toml"),
        spec.replace("{learning_rate}", "{lr}")
            .replace("name = \"own\"", "name = \"own2\""),
    )
    .unwrap();
    let o = sweep(dir.path(), &["plan", "spec.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("trainer.command") && err(&o).contains("unknown placeholder {lr}"),
        "{}",
        err(&o)
    );
}

/// A stand-in for a Hugging Face Trainer (standard library only): `checkpoint-N` folders in
/// its output_dir, each whole once its trainer_state.json is written, and
/// `--resume_from_checkpoint` to go on from one. With SLOW set it stops at step 3, a save of
/// checkpoint-4 begun, until a signal.
const HF_STYLE_TRAINER: &str = r#"import json, os, signal, sys, time
a = sys.argv[1:]
out = a[a.index("--output_dir") + 1]
resume = a[a.index("--resume_from_checkpoint") + 1] if "--resume_from_checkpoint" in a else None
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
with open(os.path.join(out, "argv.jsonl"), "a") as f:
    f.write(json.dumps(a) + "\n")
start = json.load(open(os.path.join(resume, "trainer_state.json")))["global_step"] if resume else 0
m = open(os.path.join(out, "metrics.jsonl"), "a")
def line(step):
    m.write(json.dumps({"tokens": 64 * step, "step": step, "target_loss": 3.0 - step / 10}) + "\n")
    m.flush()
if not resume:
    line(0)
for step in range(start + 1, 7):
    line(step)
    if step % 2 == 0:
        os.makedirs(os.path.join(out, f"checkpoint-{step}"), exist_ok=True)
        with open(os.path.join(out, f"checkpoint-{step}", "trainer_state.json"), "w") as f:
            json.dump({"global_step": step}, f)
    if step == 3 and os.environ.get("SLOW"):
        os.makedirs(os.path.join(out, "checkpoint-4"))
        open(os.path.join(out, "started"), "w").close()
        while not stop:
            time.sleep(0.05)
        sys.exit(0)
"#;

/// A Hugging Face Trainer run stopped by `sweep cancel` goes on from its newest whole
/// checkpoint-N when the sweep runs again: `[trainer] resume` adds `--resume_from_checkpoint`
/// with it (a save cut short is passed over, and said), and the steps it measures again are in
/// result.json once. `resume` arguments that do not name the checkpoint are refused at plan.
#[test]
fn a_hf_trainer_run_goes_on_from_its_newest_whole_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trainer.py"), HF_STYLE_TRAINER).unwrap();
    let spec = trainer_sweep(
        dir.path(),
        "hf",
        r#"command = ["python3", "trainer.py", "--output_dir", "{run_dir}"]
resume = ["--resume_from_checkpoint", "{resume_from}"]
[grid]
method = ["full"]
token_budget = [384]
learning_rate = [1e-3]
"#,
    );
    std::fs::write(dir.path().join("spec.toml"), &spec).unwrap();
    let first = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(["run", "spec.toml"])
        .current_dir(dir.path())
        .env("SLOW", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let runs = dir.path().join("results/hf/runs");
    let t0 = std::time::Instant::now();
    let run = loop {
        let started = std::fs::read_dir(&runs)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
            .find(|p| p.join("started").exists());
        if let Some(run) = started {
            break run;
        }
        assert!(t0.elapsed().as_secs() < 60, "the program started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let o = sweep(dir.path(), &["cancel", "results/hf"]);
    assert!(o.status.success(), "{}", err(&o));
    let o = wait_exit(first, 60, "the cancelled sweep run");
    assert!(!run.join("result.json").exists(), "{}", err(&o));

    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    let argv: Vec<Vec<String>> = std::fs::read_to_string(run.join("argv.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rel = run.strip_prefix(dir.path()).unwrap();
    let out = rel.display().to_string();
    assert_eq!(
        argv[0],
        ["--output_dir", out.as_str()],
        "first from scratch"
    );
    let from = rel.join("checkpoint-2").display().to_string();
    assert_eq!(
        argv[1],
        [
            "--output_dir",
            out.as_str(),
            "--resume_from_checkpoint",
            from.as_str()
        ],
        "then from the newest whole checkpoint (checkpoint-4 was cut short)"
    );
    let log = std::fs::read_to_string(run.join("train.log")).unwrap();
    assert!(
        log.contains("checkpoint-4 has no readable trainer_state.json")
            && log.contains("goes on from")
            && log.contains("(1 later ones dropped"),
        "{log}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "completed", "{r}");
    let at: Vec<(u64, f64)> = r["evals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["tokens"].as_u64().unwrap(),
                e["metrics"]["target_loss"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, f64)> = (0..=6).map(|s| (64 * s, 3.0 - s as f64 / 10.0)).collect();
    assert_eq!(at, want, "every step once, step 3 from the second start");
    let o = sweep(dir.path(), &["-q", "status", "results/hf", "--watch", "1"]);
    assert_eq!(o.status.code(), Some(0), "every run has its result: {o:?}");
    assert!(o.stdout.is_empty());
    // Trained again from scratch (--force): no checkpoint passed, and the lines of before go,
    // so that the new start's are there once.
    let o = sweep(
        dir.path(),
        &["train", rel.join("run.json").to_str().unwrap(), "--force"],
    );
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("starts over (7 lines of metrics.jsonl from before dropped)"),
        "{}",
        err(&o)
    );
    let argv = std::fs::read_to_string(run.join("argv.jsonl")).unwrap();
    let third: Vec<String> = serde_json::from_str(argv.lines().nth(2).unwrap()).unwrap();
    assert_eq!(third, ["--output_dir", out.as_str()], "from scratch");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["evals"].as_array().unwrap().len(), 7, "{r}");

    std::fs::write(
        dir.path().join("spec.toml"),
        spec.replace("\"{resume_from}\"]", "\"last\"]")
            .replace("name = \"hf\"", "name = \"hf2\""),
    )
    .unwrap();
    let o = sweep(dir.path(), &["plan", "spec.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).contains("trainer.resume") && err(&o).contains("{resume_from}"),
        "{}",
        err(&o)
    );
}

/// Each run of a sweep with `[tracking] mlflow` is an MLflow run on a real server, read back
/// with MLflow's own client: its params, its status and every metrics.jsonl value at its
/// tokens, none doubled by a second `sweep run` that has lost its record of what was sent.
/// A server that is down fails nothing and is said.
#[test]
fn runs_are_logged_to_a_real_mlflow_server() {
    let Some(python) = common::test_python("MLflow") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    common::write_corpora(dir.path());
    let server = common::MlflowServer::start(&python, dir.path());
    let spec = |name: &str, uri: &str| {
        let s = SPEC
            .replace("name = \"tinyrun\"", &format!("name = \"{name}\""))
            .replace(
                "token_budget = [128, 256]\nseeds = 2",
                "token_budget = 128\nseeds = 1",
            )
            .replace("learning_rate = [1e-3, 3e-3]", "learning_rate = 1e-3")
            .replace("learning_rate = [3e-3, 1e-2]", "learning_rate = 1e-2");
        format!("{s}[tracking]\nmlflow = \"{uri}\"\n")
    };
    std::fs::write(dir.path().join("spec.toml"), spec("logged", &server.uri)).unwrap();
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!err(&o).contains("MLflow"), "{}", err(&o));

    let logged = || common::mlflow_runs_by_name(&python, &server.uri, "logged");
    let got = logged();
    let runs = dir.path().join("results/logged/runs");
    let ids: Vec<String> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(got.len(), 2, "{got:?}");
    for id in &ids {
        let r = &got[id];
        assert_eq!(r["status"], "FINISHED", "{id}: {r}");
        let run: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(runs.join(id).join("run.json")).unwrap())
                .unwrap();
        assert_eq!(r["params"]["id"], id.as_str());
        assert_eq!(
            r["params"]["learning_rate"]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap(),
            run["learning_rate"].as_f64().unwrap()
        );
        assert_eq!(r["params"]["training.seq_len"], "32");
        let metrics = std::fs::read_to_string(runs.join(id).join("metrics.jsonl")).unwrap();
        for (key, field) in [
            ("train/loss", "train_loss"),
            ("eval/target_loss", "target_loss"),
        ] {
            let want: Vec<(u64, f64)> = metrics
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter_map(|v| Some((v["tokens"].as_u64()?, v[field].as_f64()?)))
                .collect();
            let have: Vec<(u64, f64)> = serde_json::from_value(r["metrics"][key].clone()).unwrap();
            assert!(!want.is_empty(), "{id}: no {field} in metrics.jsonl");
            assert_eq!(have.len(), want.len(), "{id} {key}: {have:?} vs {want:?}");
            for (h, w) in have.iter().zip(&want) {
                assert_eq!(h.0, w.0, "{id} {key}: steps are tokens");
                assert!(
                    (h.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0),
                    "{id} {key}: {h:?} vs {w:?}"
                );
            }
        }
    }
    // What was sent is found again on the server when its record is lost: nothing doubles.
    for id in &ids {
        std::fs::remove_file(runs.join(id).join("mlflow.json")).unwrap();
    }
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(logged(), got);

    // A server that is down: the runs complete, the warning names the server.
    let down = server.uri.clone();
    drop(server);
    std::fs::write(dir.path().join("down.toml"), spec("unlogged", &down)).unwrap();
    let o = sweep(dir.path(), &["run", "down.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("done: 2 completed"), "{}", err(&o));
    assert!(
        err(&o).contains(&format!(
            "2 run(s) not wholly logged to MLflow (MLflow at {down} cannot be reached"
        )),
        "{}",
        err(&o)
    );
}

/// With a user's trainer whose metrics lines carry no time: two lines at one count of tokens
/// both reach MLflow although a sync fell between them; the run trained again from scratch
/// (`sweep train --force`) is a new MLflow run with all of its lines, although its first line
/// is the old start's; and an experiment deleted on the server is said, with how to restore it.
#[test]
fn mlflow_keeps_equal_token_lines_and_a_retrained_run_is_a_new_mlflow_run() {
    let Some(python) = common::test_python("MLflow") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = common::MlflowServer::start(&python, dir.path());
    // The second line at 128 tokens is written only once the first has been sent (the
    // run's mlflow.json says so), so that a sync falls between them ("wait"; "go" writes it
    // at once, for a server that takes nothing).
    std::fs::write(
        dir.path().join("trainer.py"),
        r#"import json, os, sys, time
out = sys.argv[1]
def line(v):
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(v) + "\n")
open(os.path.join(out, "metrics.jsonl"), "w").close()
line({"tokens": 0, "target_loss": 3.0})
line({"tokens": 128, "step": 2, "train_loss": 2.5})
def sent():
    try:
        return json.load(open(os.path.join(out, "mlflow.json"))).get("sent_tokens") == 128
    except (OSError, ValueError):
        return False
t0 = time.time()
while sys.argv[2] == "wait" and not sent():
    if time.time() - t0 > 60:
        sys.exit("the first line at 128 tokens was never sent")
    time.sleep(0.1)
line({"tokens": 128, "target_loss": 2.0})
"#,
    )
    .unwrap();
    let spec = |name: &str, wait: &str| {
        let body = format!(
            r#"command = ["{python}", "trainer.py", "{{run_dir}}", "{wait}"]
[grid]
method = ["full"]
token_budget = 128
seeds = 1
[grid.full]
learning_rate = 1e-3
[tracking]
mlflow = "{uri}"
mlflow_experiment = "shared"
"#,
            python = python.replace('\\', "\\\\"),
            wait = wait,
            uri = server.uri
        );
        trainer_sweep(dir.path(), name, &body)
    };
    std::fs::write(dir.path().join("spec.toml"), spec("own", "wait")).unwrap();
    let o = sweep(dir.path(), &["run", "spec.toml"]);
    assert!(o.status.success(), "{}", err(&o));
    assert!(!err(&o).contains("MLflow"), "{}", err(&o));
    let run_dir = common::first_run_dir(&dir.path().join("results/own/runs"));
    let id = run_dir.file_name().unwrap().to_str().unwrap().to_string();
    let o = sweep(
        dir.path(),
        &[
            "train",
            run_dir.join("run.json").to_str().unwrap(),
            "--force",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));

    let runs = common::mlflow_runs(&python, &server.uri, "shared");
    let got = serde_json::Value::from(runs.clone());
    assert_eq!(
        runs.len(),
        2,
        "the first start and the retrained one: {got}"
    );
    for r in runs {
        assert_eq!(r["name"], id.as_str(), "{got}");
        assert_eq!(r["status"], "FINISHED", "{got}");
        assert_eq!(
            r["metrics"]["eval/target_loss"],
            serde_json::json!([[0, 3.0], [128, 2.0]]),
            "both lines at 128 tokens arrived: {got}"
        );
        assert_eq!(
            r["metrics"]["train/loss"],
            serde_json::json!([[128, 2.5]]),
            "{got}"
        );
    }

    // The experiment deleted on the server: a new sweep logging to it says so.
    let delete = r#"
import json, sys
from mlflow import MlflowClient
c = MlflowClient(sys.argv[1])
c.delete_experiment(c.get_experiment_by_name("shared").experiment_id)
print(json.dumps(True))
"#;
    let _: serde_json::Value = common::python_json(&python, delete, &[server.uri.as_ref()]);
    std::fs::write(dir.path().join("again.toml"), spec("again", "go")).unwrap();
    let o = sweep(dir.path(), &["run", "again.toml"]);
    assert!(
        o.status.success(),
        "a tracker never fails a sweep: {}",
        err(&o)
    );
    assert!(
        err(&o).contains("experiment `shared`: it is deleted on the server: restore it"),
        "{}",
        err(&o)
    );
}

/// The spec of a sweep `name` trained by a user's program (`tail`: its `command = ...` line and
/// the rest of the spec), with the two small data files it names written into `dir`.
fn trainer_sweep(dir: &Path, name: &str, tail: &str) -> String {
    std::fs::write(dir.join("code.txt"), "x = 1\n").unwrap();
    std::fs::write(dir.join("english.txt"), "to be\n").unwrap();
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
[trainer]
{tail}"#
    )
}
