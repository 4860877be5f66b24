//! `sweep plan` and the CLI as a user runs them: the real binary on real spec files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sweep(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the sweep binary runs")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const SPEC: &str = r#"name = "demo"
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
learning_rate = [1e-4, 3e-4]
[grid.lora]
learning_rate = [1e-3]
rank = [2, 8]
target_modules = ["attention", "all"]
"#;

fn write_spec(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("spec.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn plan_prints_groups_and_writes_plan_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), SPEC);
    let o = sweep(dir.path(), &["plan", "spec.toml"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("sweep demo: 12 runs (6 configurations x 2 seeds)"),
        "{out}"
    );
    assert!(
        out.contains("attention") && out.contains("GPU time"),
        "{out}"
    );
    let plan = std::fs::read_to_string(dir.path().join("results/demo/plan.jsonl")).unwrap();
    assert_eq!(plan.lines().count(), 12);
    let first: serde_json::Value = serde_json::from_str(plan.lines().next().unwrap()).unwrap();
    assert_eq!(first["training"]["batch_size"], 4);
    assert_eq!(first["eval_at"], serde_json::json!([4000, 8000]));
    assert!(dir.path().join("results/demo/spec.toml").exists());

    // Re-planning an edited spec reports what changed and keeps unchanged ids.
    write_spec(dir.path(), &SPEC.replace("[1e-4, 3e-4]", "[1e-4, 1e-3]"));
    let (out, _) = text(&sweep(dir.path(), &["plan", "spec.toml"]));
    assert!(
        out.contains("since the last plan: 2 new, 10 unchanged, 2 gone"),
        "{out}"
    );
}

/// `plan` shows each budget as the spec wrote it, with the evaluations each run makes on the
/// way in checkpoint mode, counts the tokens the runs train (whole steps of batch x seq, as
/// the trainer does: 4k at 256 a step is 16 steps, 4,096 tokens), shows a tiny CPU sweep's GPU
/// time as under a second rather than "0.0s", and a budget that does not parse says the forms
/// a budget takes.
#[test]
fn plan_shows_budgets_as_written_and_counts_the_tokens_trained() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(
        dir.path(),
        &SPEC.replace(
            r#"token_budget = ["4k", "8k"]"#,
            r#"token_budget = ["4k", "0.008M"]"#,
        ),
    );
    let o = sweep(dir.path(), &["plan", "spec.toml", "--dry-run"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("4k 0.008M"), "budgets as written: {out}");
    assert!(
        out.contains("evaluated at every budget on the way"),
        "{out}"
    );
    assert!(
        out.contains("4k trains 16 steps, 4096 tokens"),
        "the rounding said: {out}"
    );
    assert!(out.contains("<1 s") && !out.contains("0.0s"), "{out}");
    let o = sweep(dir.path(), &["--json", "plan", "spec.toml", "--dry-run"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // 12 runs, each trained to 8,000 tokens rounded up to 32 steps of 256.
    assert_eq!(j["total"]["tokens"], 12 * 8192, "{j}");
    assert_eq!(
        j["groups"][0]["evaluated_at"],
        serde_json::json!([4000, 8000])
    );

    write_spec(
        dir.path(),
        &SPEC.replace(
            r#"token_budget = ["4k", "8k"]"#,
            r#"token_budget = ["4k", "16kk"]"#,
        ),
    );
    let o = sweep(dir.path(), &["plan", "spec.toml"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`16kk` is not a token count") && err.contains("\"250M\""),
        "{err}"
    );
}

/// A run of several ranks: GPU-hours count every rank, and the plan says the wall time per run.
#[test]
fn plan_counts_every_rank_of_a_multi_rank_run() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one");
    let four = dir.path().join("four");
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&four).unwrap();
    write_spec(&one, SPEC);
    write_spec(
        &four,
        &SPEC.replace("batch_size = 4\n", "batch_size = 4\nranks_per_node = 4\n"),
    );
    let total = |o: &Output| -> String {
        let (out, err) = text(o);
        assert!(o.status.success(), "{err}");
        out.lines()
            .find(|l| l.contains("total"))
            .unwrap()
            .rsplit('│')
            .nth(1)
            .unwrap()
            .trim()
            .to_string()
    };
    let (o1, o4) = (
        sweep(&one, &["plan", "spec.toml"]),
        sweep(&four, &["plan", "spec.toml"]),
    );
    assert_eq!(total(&o1), total(&o4), "the same GPU-hours, over more GPUs");
    let (out, _) = text(&o4);
    assert!(
        out.contains("each run trains on 4 ranks (nodes x ranks_per_node), one GPU each"),
        "{out}"
    );
    assert!(!text(&o1).0.contains("each run trains on"));
}

/// The plan prints each run shape's memory per GPU; `sweep submit` to a cluster whose GPUs are
/// too small refuses before connecting, saying what would fit.
#[test]
fn memory_is_planned_and_a_run_that_cannot_fit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(
        dir.path(),
        r#"name = "big"
[model]
shape = "llama2-7b"
hf = "/nonexistent"
[data]
regime = "cpt"
domain = "code"
target = "builtin:python"
[training]
batch_size = 192
micro_batch_size = 8
seq_len = 4096
[grid]
method = ["lora"]
token_budget = ["1B"]
[grid.lora]
learning_rate = [1e-4]
rank = [16]
target_modules = ["all"]
"#,
    );
    let o = sweep(dir.path(), &["plan", "spec.toml", "--dry-run"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("memory per rank (GB)") && out.contains("lora r16 all"),
        "{out}"
    );
    std::fs::write(
        dir.path().join("clusters.toml"),
        "[clusters.small]\nhost = \"127.0.0.1\"\nport = 1\nuser = \"u\"\nwork_dir = \"w\"\ngpu = true\ngpu_memory_gb = 80\nconnect_timeout_s = 2\n",
    )
    .unwrap();
    let submit = |extra: &[&str]| {
        let mut args = vec![
            "submit",
            "spec.toml",
            "--cluster",
            "small",
            "--clusters",
            "clusters.toml",
        ];
        args.extend_from_slice(extra);
        sweep(dir.path(), &args)
    };
    let o = submit(&[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("lora runs need about") && err.contains("has 80 GB (gpu_memory_gb)"),
        "{err}"
    );
    assert!(
        err.contains("training.activation_checkpointing = true ("),
        "{err}"
    );
    // Forced, it goes on to the cluster (unreachable here): no memory refusal.
    let (_, err) = text(&submit(&["--no-memory-check"]));
    assert!(!err.contains("gpu_memory_gb"), "{err}");
    // --show-settings: the entry with its defaults filled in, the flags and the environment,
    // and nothing sent (the cluster is not even reached).
    let o = submit(&[
        "--show-settings",
        "--install",
        "--no-memory-check",
        "--json",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["executor"], "slurm:small", "{v}");
    assert_eq!(v["cluster"]["entry"]["host"], "127.0.0.1", "{v}");
    assert_eq!(
        v["cluster"]["entry"]["poll_floor_s"], 30,
        "the default: {v}"
    );
    assert_eq!(v["cluster"]["install"], true, "{v}");
    assert_eq!(v["cluster"]["memory_check"], false, "{v}");
    assert_eq!(
        v["environment"]["SWEEP_CACHE"], ".cache/sweep (default)",
        "{v}"
    );
    assert!(!dir.path().join("results/big/slurm.json").exists());
}

/// `sweep run --show-settings` prints the local settings as resolved (TOML) and trains nothing.
#[test]
fn run_shows_its_settings_and_does_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(
        dir.path(),
        "name = \"s\"\n[model]\nbuiltin = \"tiny\"\n[data]\nregime = \"cpt\"\ndomain = \"code\"\ntarget = \"builtin:python\"\n[training]\nbatch_size = 2\nseq_len = 16\n[grid]\nmethod = [\"full\"]\ntoken_budget = [64]\n[grid.full]\nlearning_rate = [1e-3, 3e-3]\n",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_sweep"))
        .args([
            "run",
            "spec.toml",
            "--jobs",
            "3",
            "--threads",
            "2",
            "--gpus",
            "none",
            "--show-settings",
        ])
        .current_dir(dir.path())
        .env("SWEEP_CACHE", "/tmp/elsewhere")
        .env("HF_TOKEN", "secret-value")
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: toml::Value = toml::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["executor"].as_str(), Some("local"), "{out}");
    assert_eq!(v["runs"].as_integer(), Some(2), "{out}");
    assert_eq!(v["local"]["jobs"].as_integer(), Some(3), "{out}");
    assert_eq!(v["local"]["threads"].as_integer(), Some(2), "{out}");
    assert_eq!(
        v["environment"]["SWEEP_CACHE"].as_str(),
        Some("/tmp/elsewhere"),
        "{out}"
    );
    assert_eq!(v["environment"]["HF_TOKEN"].as_str(), Some("set"), "{out}");
    assert!(!out.contains("secret-value"), "{out}");
    assert!(
        !dir.path().join("results").exists(),
        "nothing planned or run"
    );
}

#[test]
fn plan_json_and_csv() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), SPEC);
    let o = sweep(dir.path(), &["--json", "plan", "spec.toml", "--dry-run"]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["total"]["runs"], 12);
    // 8k trained as 32 whole steps of 256 tokens.
    assert_eq!(j["total"]["tokens"], 12 * 8192);
    assert_eq!(j["groups"].as_array().unwrap().len(), 5);
    assert!(j["total"]["flops"].as_f64().unwrap() > 0.0);
    assert!(
        !dir.path().join("results").exists(),
        "--dry-run writes nothing"
    );

    let o = sweep(dir.path(), &["plan", "spec.toml", "--csv", "--dry-run"]);
    let mut r = csv::Reader::from_reader(&o.stdout[..]);
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 12);
    assert_eq!(&r.headers().unwrap()[0], "run_id");
}

/// Every spec error: one line with file:line:column, exit code 2, and nothing written.
#[test]
fn spec_errors_are_located_and_write_nothing() {
    let cases: &[(&str, &str)] = &[
        (r#"lerning_rate = 1"#, "spec.toml:1:1: unknown key `lerning_rate`"),
        ("[grid]\nmethod = [\"full\"]\nlerning_rate = [1e-4]\ntoken_budget = \"1k\"\n", "did you mean `learning_rate`?"),
        ("[grid]\nmethod = [\"full\"]\nlearning_rate = \"fast\"\ntoken_budget = \"1k\"\n", "spec.toml:"),
        ("[grid]\nmethod = [\"full\"]\nlearning_rate = [1e-4, 0.0]\ntoken_budget = \"1k\"\n", "grid.learning_rate[1]: learning rate 0 must be a number > 0"),
        ("[grid]\nmethod = [\"lora\"]\nlearning_rate = 1e-4\nrank = 0\ntoken_budget = \"1k\"\n", "rank 0 trains nothing"),
        ("[grid]\nmethod = [\"lora\"]\nlearning_rate = 1e-4\nrank = 9999\ntoken_budget = \"1k\"\n", "above the model's width"),
        ("[grid]\nmethod = [\"lora\"]\nlearning_rate = 1e-4\nrank = 4\ntarget_modules = \"ffn\"\ntoken_budget = \"1k\"\n", "unknown target module `ffn`"),
        ("[grid]\nmethod = []\nlearning_rate = 1e-4\ntoken_budget = \"1k\"\n", "grid.method: list at least one method"),
        ("[grid]\nmethod = [\"full\"]\nlearning_rate = 1e-4\ntoken_budget = \"10\"\n", "below one batch"),
        ("[grid]\nmethod = [\"full\"]\nlearning_rate = 1e-4\ntoken_budget = \"1k\"\nseeds = [3, 3]\n", "seed 3 is listed twice"),
        ("[grid]\nmethod = [\"full\"]\nlearning_rate = { log_range = [1e-6, 1e-2], points = 11000000 }\ntoken_budget = \"1k\"\n", "--force"),
    ];
    let head = "name = \"bad\"\n[model]\nbuiltin = \"tiny\"\n[data]\nregime = \"cpt\"\ndomain = \"code\"\ntarget = \"x\"\n[training]\nbatch_size = 1\nseq_len = 16\n";
    for (body, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let full = if body.starts_with('[') {
            format!("{head}{body}")
        } else {
            format!("{body}\n{head}[grid]\ntoken_budget=\"1k\"\n")
        };
        write_spec(dir.path(), &full);
        let o = sweep(dir.path(), &["plan", "spec.toml"]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{body}: {err}");
        assert!(err.contains(want), "{body}\nwanted {want:?} in {err:?}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("spec.toml:"), "names the file: {err}");
        assert!(
            !dir.path().join("results").exists(),
            "nothing written for {body}"
        );
    }
}

#[test]
fn wrong_type_points_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    write_spec(dir.path(), &SPEC.replace("seeds = 2", "seeds = \"two\""));
    let o = sweep(dir.path(), &["plan", "spec.toml"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.starts_with("error: spec.toml:14:9: seeds is a count"),
        "{err}"
    );
}

#[test]
fn a_missing_spec_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = sweep(dir.path(), &["plan", "nope.toml"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("nope.toml: no such spec file"), "{err}");
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        "plan",
        "submit",
        "status",
        "cancel",
        "collect",
        "report",
        "train",
        "run",
        "fetch",
        "completions",
    ] {
        let o = sweep(&repo(), &[cmd, "--help"]);
        let (out, _) = text(&o);
        assert!(o.status.success(), "{cmd}");
        assert!(
            out.contains("Example:\n  sweep"),
            "{cmd} --help has an example: {out}"
        );
    }
    let o = sweep(&repo(), &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn completions_are_generated() {
    let o = sweep(&repo(), &["completions", "bash"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("_sweep"));
}

#[test]
fn the_shipped_specs_plan() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("sweeps")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("clusters.toml") {
            let o = sweep(
                dir.path(),
                &["--json", "plan", path.to_str().unwrap(), "--dry-run"],
            );
            let (_, err) = text(&o);
            assert!(o.status.success(), "{}: {err}", path.display());
        }
    }
}

/// The paper specs encode the grid of ../shared/paper-notes.md: CPT 8 budgets x (full + 2 ranks x
/// 3 module sets); IFT 5 durations x (full + 2 ranks x 3 module sets).
#[test]
fn paper_specs_match_the_papers_grid() {
    let dir = tempfile::tempdir().unwrap();
    for (name, runs, lora_lrs) in [
        ("paper-code-cpt", 56, vec![1e-5]),
        ("paper-math-cpt", 56, vec![4e-5]),
        ("paper-code-ift", 35, vec![1e-4, 2e-4]),
        ("paper-math-ift", 35, vec![5e-5, 1e-4]),
    ] {
        let path = repo().join(format!("sweeps/{name}.toml"));
        let o = sweep(
            dir.path(),
            &["--json", "plan", path.to_str().unwrap(), "--dry-run"],
        );
        assert!(o.status.success(), "{name}: {}", text(&o).1);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["total"]["runs"], runs, "{name}");
        // The paper's optimizer (LLM Foundry's DecoupledLionW) and, for CPT, its schedule.
        let spec: toml::Value = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            spec["training"]["optimizer"].as_str(),
            Some("decoupled_lionw"),
            "{name}"
        );
        let schedule = if name.ends_with("cpt") {
            "inverse_sqrt"
        } else {
            "cosine"
        };
        assert_eq!(
            spec["training"]["schedule"].as_str(),
            Some(schedule),
            "{name}"
        );
        let mut lrs: Vec<f64> = j["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["method"] == "lora")
            .flat_map(|g| {
                g["learning_rates"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
            })
            .collect();
        lrs.sort_by(f64::total_cmp);
        lrs.dedup();
        assert_eq!(lrs, lora_lrs, "{name}");
        assert!(
            j["total"]["gpu_hours"].as_f64().unwrap() > 100.0,
            "{name}: a 7B grid costs GPU-hours"
        );
    }
}

/// Every `sweep ...` command shown in the README runs, in order, in a fresh folder. Two are
/// adapted to test size: `pretrain` gets `--tokens 4k` on small corpora, and `run` (minutes of
/// training on the quickstart spec) is planned here and trained end to end on a tiny spec by
/// tests/cli_run.rs; the specs `report` names are planned first. Commands that are not built
/// yet must say so.
#[test]
fn readme_commands_work_or_say_they_are_not_built() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("shakespeare")).unwrap();
    let play: String = (0..400)
        .map(|i| format!("KING. Speak, speak, my lord {i}!\nLORD. I will, my liege.\n"))
        .collect();
    std::fs::write(data.join("shakespeare/play.md"), play).unwrap();
    let mut n = 0;
    for line in readme.lines().filter(|l| l.starts_with("sweep ")) {
        let mut args: Vec<String> = line
            .split_whitespace()
            .skip(1)
            .map(|a| {
                if a.starts_with("sweeps/") {
                    repo().join(a).display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let cmd = args
            .iter()
            .find(|a| !a.starts_with('-'))
            .cloned()
            .unwrap_or_default();
        match cmd.as_str() {
            "pretrain" => args.extend(["--tokens".to_string(), "4k".to_string()]),
            "run" => args[0] = "plan".into(),
            "report" => {
                // A report of sweeps the README never runs (the reference study's, trained by
                // scripts/reference-study) reads their plans, as it would after their runs.
                for spec in args.iter().filter(|a| a.ends_with(".toml")) {
                    let o = Command::new(env!("CARGO_BIN_EXE_sweep"))
                        .args(["plan", spec])
                        .current_dir(dir.path())
                        .env("SWEEP_CACHE", dir.path().join("cache"))
                        .output()
                        .unwrap();
                    assert!(o.status.success(), "sweep plan {spec}: {}", text(&o).1);
                }
            }
            _ => {}
        }
        let o = Command::new(env!("CARGO_BIN_EXE_sweep"))
            .args(&args)
            .current_dir(dir.path())
            .env("SWEEP_DATA", &data)
            .env("SWEEP_CACHE", dir.path().join("cache"))
            .output()
            .unwrap();
        let (_, err) = text(&o);
        n += 1;
        if matches!(cmd.as_str(), "submit" | "collect" | "follow") {
            // The README's cluster `mycluster` is the user's: here it has no clusters file, and
            // the commands say so (tests/slurm.rs submits to a real cluster).
            assert!(
                err.contains("no clusters file at")
                    || err.contains("was not submitted to a cluster")
                    || err.contains("was never submitted to a cluster"),
                "{line}: {err}"
            );
        } else {
            assert!(o.status.success(), "{line}: {err}");
        }
    }
    assert!(n >= 10, "the README shows its commands ({n} found)");
    assert!(
        dir.path()
            .join("cache/pretrained/tiny.safetensors")
            .exists(),
        "sweep pretrain wrote the model"
    );
}

/// Rows of a Markdown table whose first cell is a finding's number: (number, cells).
fn finding_rows(md: &str) -> Vec<(u8, Vec<String>)> {
    md.lines()
        .filter_map(|l| {
            let cells: Vec<String> = l
                .trim()
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .map(|c| c.trim().to_string())
                .collect();
            let n: u8 = cells.first()?.parse().ok()?;
            (1..=6).contains(&n).then_some((n, cells))
        })
        .collect()
}

/// The decimal numbers in a text, with the decimals each was written with.
fn numbers(s: &str) -> Vec<(f64, usize)> {
    s.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        // A sign stays with its number; a trailing period or dash is punctuation.
        .map(|w| {
            w.trim_end_matches(['.', '-'])
                .trim_start_matches('.')
                .trim_start_matches("--")
        })
        .filter(|w| w.contains('.') && !w.is_empty())
        .filter_map(|w| Some((w.parse().ok()?, w.len() - w.find('.')? - 1)))
        .collect()
}

/// The README's table of what the demo finds is the committed reference report's: the same
/// verdict for every finding, and every number it quotes is one of that finding's numbers in
/// the report, rounded as the README writes it. Regenerating the reports (scripts/demo)
/// without updating the README fails here.
#[test]
fn the_readme_quotes_the_committed_report() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("## What the demo finds")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a 'What the demo finds' section");
    let report =
        std::fs::read_to_string(repo().join("results/quickstart/report/report.md")).unwrap();
    let (quoted, reported) = (finding_rows(section), finding_rows(&report));
    assert_eq!(quoted.len(), 6, "the README's table has six findings");
    for (n, cells) in &quoted {
        let (_, row) = reported
            .iter()
            .find(|(m, _)| m == n)
            .unwrap_or_else(|| panic!("finding {n} is in the committed report"));
        assert!(
            cells[2].starts_with(&row[2]),
            "finding {n}: the README says '{}', the committed report '{}'",
            cells[2],
            row[2]
        );
        let theirs = numbers(&row[3]);
        for (x, places) in numbers(&cells[3..].join(" ")) {
            let scale = 10f64.powi(places as i32);
            assert!(
                theirs
                    .iter()
                    .any(|(y, _)| ((y * scale).round() - x * scale).abs() < 0.5 + 1e-9),
                "finding {n}: the README's {x} is not among the report's numbers {:?}",
                theirs
            );
        }
    }
}

/// The README's table of what the reference study finds is the committed summary's
/// (results/reference-summary/summary.md, written by `scripts/reference-study all`), row for
/// row: regenerating the study without updating the README fails here.
#[test]
fn the_readme_quotes_the_committed_reference_summary() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("**The reference study.**")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("the README has a 'The reference study' paragraph");
    let summary =
        std::fs::read_to_string(repo().join("results/reference-summary/summary.md")).unwrap();
    let rows = |md: &str| -> Vec<String> {
        md.lines()
            .map(str::trim)
            .filter(|l| {
                l.strip_prefix("| ")
                    .and_then(|r| r.split_once(". "))
                    .is_some_and(|(n, _)| n.parse::<u8>().is_ok_and(|n| (1..=6).contains(&n)))
            })
            .map(String::from)
            .collect()
    };
    let (quoted, committed) = (rows(section), rows(&summary));
    assert_eq!(committed.len(), 6, "the summary has six findings");
    assert_eq!(
        quoted, committed,
        "the README's reference-study table is the committed summary's"
    );
}
