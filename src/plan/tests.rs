//! Planner unit tests: conditional axes, overrides, include/exclude, sampling and id stability.

use super::*;
use crate::spec::Spec;

fn spec(text: &str) -> Spec {
    toml::from_str(text).unwrap()
}

const BASE: &str = r#"
name = "t"
[model]
builtin = "tiny"
[data]
regime = "cpt"
domain = "code"
target = "builtin:python"
[training]
batch_size = 2
seq_len = 16
"#;

fn plan_of(grid: &str) -> Result<Plan, Problem> {
    plan(
        &spec(&format!("{BASE}{grid}")),
        &PlanOptions {
            shape: LlamaConfig::builtin("tiny"),
            force: false,
        },
    )
}

fn ok(grid: &str) -> Plan {
    plan_of(grid).unwrap_or_else(|p| panic!("{}: {}", p.dotted(), p.message))
}

fn err(grid: &str) -> Problem {
    match plan_of(grid) {
        Ok(p) => panic!("expected an error, got {} runs", p.runs.len()),
        Err(p) => p,
    }
}

#[test]
fn full_fine_tuning_ignores_lora_axes() {
    let p = ok(r#"
[grid]
method = ["full", "lora"]
learning_rate = [1e-4, 1e-3]
rank = [4, 8]
target_modules = ["attention", "mlp", "all"]
token_budget = "1k"
"#);
    let full = p
        .points
        .iter()
        .filter(|p| p.method == MethodConfig::Full)
        .count();
    let lora = p.points.len() - full;
    assert_eq!(
        full, 2,
        "one full run per learning rate, not per rank x modules"
    );
    assert_eq!(lora, 2 * 2 * 3);
    assert_eq!(p.runs.len(), 14);
}

#[test]
fn method_tables_override_grid_axes_and_union() {
    let p = ok(r#"
[grid]
method = ["full", "lora"]
learning_rate = [1e-5]
token_budget = ["1k", "2k"]
budget_mode = "separate_runs"
[grid.full]
learning_rate = [1e-5, 2e-5]
[[grid.lora]]
rank = [16, 64]
learning_rate = 2e-4
[[grid.lora]]
rank = 32
learning_rate = 1e-4
"#);
    let full: Vec<&Point> = p
        .points
        .iter()
        .filter(|p| p.method == MethodConfig::Full)
        .collect();
    assert_eq!(full.len(), 4, "2 learning rates x 2 separate budgets");
    let lora_lr = |r: u64| -> Vec<f64> {
        p.points
            .iter()
            .filter_map(|pt| match pt.method {
                MethodConfig::Lora { rank, .. } if rank == r => Some(pt.learning_rate),
                _ => None,
            })
            .collect()
    };
    assert_eq!(lora_lr(16), vec![2e-4, 2e-4]);
    assert_eq!(lora_lr(32), vec![1e-4, 1e-4]);
    // Alpha defaults to the paper's 2r, modules to all.
    let MethodConfig::Lora {
        alpha,
        target_modules,
        ..
    } = &p.points.last().unwrap().method
    else {
        panic!()
    };
    assert_eq!(*alpha, 64.0);
    assert_eq!(target_modules.len(), 7);
}

#[test]
fn budgets_as_checkpoints_or_separate_runs() {
    let grid = |mode: &str| {
        format!("[grid]\nmethod = [\"full\"]\nlearning_rate = 1e-4\ntoken_budget = [\"2k\", \"1k\", 4096]\nbudget_mode = \"{mode}\"\n")
    };
    let c = ok(&grid("checkpoints"));
    assert_eq!(c.points.len(), 1);
    assert_eq!(c.points[0].token_budget, 4096);
    assert_eq!(c.points[0].eval_at, vec![1000, 2000, 4096]);
    let s = ok(&grid("separate_runs"));
    assert_eq!(s.points.len(), 3);
    assert_eq!(s.points[1].eval_at, vec![1000]);
}

#[test]
fn epochs_need_epoch_tokens() {
    let g = "[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=[\"1ep\", \"2ep\"]\nbudget_mode=\"separate_runs\"\n";
    let e = err(g);
    assert!(e.message.contains("data.epoch_tokens"), "{}", e.message);
    let text = format!("{BASE}{g}").replace(
        "target = \"builtin:python\"",
        "target = \"builtin:python\"\nepoch_tokens = \"10k\"",
    );
    let p = plan(&spec(&text), &PlanOptions::default()).unwrap();
    assert_eq!(
        p.points.iter().map(|p| p.token_budget).collect::<Vec<_>>(),
        vec![10_000, 20_000]
    );
}

#[test]
fn include_and_exclude() {
    let p = ok(r#"
[grid]
method = ["full", "lora"]
learning_rate = [1e-4, 1e-3]
rank = [4, 8]
token_budget = "1k"
[[exclude]]
method = "lora"
rank = 8
learning_rate = 1e-3
[[exclude]]
method = "full"
learning_rate = 1e-4
[[include]]
method = "lora"
rank = 2
learning_rate = 5e-3
target_modules = "mlp"
"#);
    let desc: Vec<String> = p
        .points
        .iter()
        .map(crate::commands::plan::describe)
        .collect();
    assert_eq!(
        desc,
        vec![
            "full lr=1e-3 budget=1k",
            "lora r4 a8 all lr=1e-4 budget=1k",
            "lora r4 a8 all lr=1e-3 budget=1k",
            "lora r8 a16 all lr=1e-4 budget=1k",
            "lora r2 a4 mlp lr=5e-3 budget=1k",
        ]
    );
}

#[test]
fn an_include_equal_to_a_grid_point_is_not_a_duplicate() {
    let p = ok("[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n[[include]]\nmethod=\"full\"\nlearning_rate=1e-4\n");
    assert_eq!(p.points.len(), 1);
}

#[test]
fn sampling_is_seeded_and_keeps_grid_order() {
    let g = |seed: u64| {
        format!("[grid]\nmethod=[\"lora\"]\nlearning_rate={{ log_range = [1e-5, 1e-2], points = 10 }}\nrank=[1,2,4,8]\ntoken_budget=\"1k\"\nseeds=2\n[sample]\npoints=7\nseed={seed}\n")
    };
    let a = ok(&g(1));
    let b = ok(&g(1));
    let c = ok(&g(2));
    assert_eq!(a.points.len(), 7);
    assert_eq!(
        a.runs.len(),
        14,
        "sampling picks configurations; each keeps its seeds"
    );
    assert_eq!(a.config_ids, b.config_ids);
    assert_ne!(a.config_ids, c.config_ids);
    let full = ok(&g(1).replace("[sample]\npoints=7", "[sample]\npoints=1000"));
    let pos: Vec<usize> = a
        .config_ids
        .iter()
        .map(|id| full.config_ids.iter().position(|x| x == id).unwrap())
        .collect();
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "sampled points keep grid order: {pos:?}"
    );
}

#[test]
fn ids_are_stable_across_key_order_and_formatting() {
    let a = ok(
        "[grid]\nmethod=[\"lora\"]\nlearning_rate=[1e-4]\nrank=[4]\ntoken_budget=\"1k\"\nseeds=2\n",
    );
    let reordered = format!(
        "# a comment\nname = 't'\n[grid]\ntoken_budget = 1000\nrank = 4\nseeds = [0, 1]\nlearning_rate = 0.0001\nmethod = [\"lora\"]\n\n{}",
        BASE.replace("name = \"t\"", "").replace("domain = \"code\"\ntarget = \"builtin:python\"", "target = 'builtin:python'\ndomain = 'code'")
    );
    let b = plan(&spec(&reordered), &PlanOptions::default()).unwrap();
    assert_eq!(
        a.runs.iter().map(|r| &r.id).collect::<Vec<_>>(),
        b.runs.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    assert_eq!(
        a.runs[0].config_id, a.runs[1].config_id,
        "seed replicates share a config id"
    );
    assert_ne!(a.runs[0].id, a.runs[1].id);
    assert!(a.runs[0].id.ends_with("-s0") && a.runs[0].id.len() == 13);
}

#[test]
fn ids_change_with_anything_that_changes_training_only() {
    let base = ok("[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n");
    let id = |text: &str| {
        plan(&spec(text), &PlanOptions::default())
            .unwrap()
            .config_ids[0]
            .clone()
    };
    let grid = "[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n";
    assert_eq!(id(&format!("{BASE}{grid}")), base.config_ids[0]);
    assert_ne!(
        id(&format!("{BASE}{grid}").replace("1e-4", "2e-4")),
        base.config_ids[0]
    );
    assert_ne!(
        id(&format!("{BASE}{grid}").replace("seq_len = 16", "seq_len = 32")),
        base.config_ids[0]
    );
    assert_ne!(
        id(&format!("{BASE}{grid}").replace("\"1k\"", "\"2k\"")),
        base.config_ids[0]
    );
    // The sweep's name and description do not change what a run trains.
    assert_eq!(
        id(&format!("{BASE}{grid}")
            .replace("name = \"t\"", "name = \"renamed\"\ndescription = \"x\"")),
        base.config_ids[0]
    );
}

#[test]
fn replanning_an_edited_spec_keeps_unchanged_ids() {
    let a = ok("[grid]\nmethod=[\"full\"]\nlearning_rate=[1e-4, 1e-3]\ntoken_budget=\"1k\"\n");
    let b = ok("[grid]\nmethod=[\"full\"]\nlearning_rate=[1e-3, 1e-2]\ntoken_budget=\"1k\"\n");
    let d = diff::diff(
        a.runs.iter().map(|r| r.id.as_str()),
        b.runs.iter().map(|r| r.id.as_str()),
    );
    assert_eq!((d.new.len(), d.unchanged.len(), d.gone.len()), (1, 1, 1));
    assert_eq!(d.unchanged[0], a.runs[1].id);
}

#[test]
fn jsonl_lines_are_whole_run_files() {
    let p = ok("[grid]\nmethod=[\"full\",\"lora\"]\nlearning_rate=1e-4\nrank=4\ntoken_budget=\"1k\"\nseeds=2\n");
    let mut buf = Vec::new();
    p.write_jsonl(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let files: Vec<RunFile> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(files.len(), 4);
    for (f, r) in files.iter().zip(&p.runs) {
        assert_eq!(*f, p.run_file(r));
    }
}

#[test]
fn spec_errors_name_the_offending_value() {
    let cases: &[(&str, &str, &str)] = &[
        ("[grid]\nmethod=[\"full\"]\nlearning_rate=[1e-4, -1e-3]\ntoken_budget=\"1k\"\n", "grid.learning_rate[1]", "> 0"),
        ("[grid]\nmethod=[\"full\"]\nlearning_rate=nan\ntoken_budget=\"1k\"\n", "grid.learning_rate", "> 0"),
        ("[grid]\nmethod=[\"lora\"]\nlearning_rate=1e-4\nrank=[4, 0]\ntoken_budget=\"1k\"\n", "grid.rank[1]", "rank 0"),
        ("[grid]\nmethod=[\"lora\"]\nlearning_rate=1e-4\nrank=4096\ntoken_budget=\"1k\"\n", "grid.rank", "above the model's width"),
        ("[grid]\nmethod=[\"lora\"]\nlearning_rate=1e-4\nrank=4\ntarget_modules=[\"mlp\", \"ffn\"]\ntoken_budget=\"1k\"\n", "grid.target_modules[1]", "unknown target module `ffn`"),
        ("[grid]\nmethod=[]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n", "grid.method", "at least one method"),
        ("[grid]\nmethod=[\"full\"]\nlearning_rate=[]\ntoken_budget=\"1k\"\n", "grid.learning_rate", "empty"),
        ("[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=[\"1k\", 16]\n", "grid.token_budget[1]", "below one batch"),
        ("[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\nseeds=[1,2,1]\n", "grid.seeds[2]", "twice"),
        ("[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n[grid.full]\nrank=[4]\n", "grid.full.rank", "LoRA only"),
        ("[grid]\nmethod=[\"lora\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n", "grid.rank", "needs a rank"),
        ("[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n[[exclude]]\nmethod=\"full\"\n", "exclude", "every point"),
    ];
    for (grid, path, msg) in cases {
        let e = err(grid);
        assert_eq!(e.dotted(), *path, "{grid}");
        assert!(e.message.contains(msg), "{grid}: {}", e.message);
    }
}

#[test]
fn huge_grids_need_force() {
    let g = "[grid]\nmethod=[\"lora\"]\nlearning_rate={ log_range=[1e-6,1e-2], points=1000 }\nrank={r}\ntarget_modules=[\"all\",\"mlp\",\"attention\"]\nalpha=[1.0,2.0,4.0,8.0]\nlora_dropout=[0.0,0.1]\ntoken_budget=\"1k\"\nseeds=100\n";
    let ranks = format!(
        "[{}]",
        (1..=100)
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let text = format!("{BASE}{}", g.replace("{r}", &ranks));
    let e = plan(&spec(&text), &PlanOptions::default()).unwrap_err();
    assert!(e.message.contains("--force"), "{}", e.message);
    assert_eq!(e.dotted(), "grid");
}

#[test]
fn ranks_divide_the_batch_and_leave_single_process_ids_alone() {
    let grid = "[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n";
    let with = |training: &str| {
        plan(
            &spec(&format!("{BASE}{grid}").replace("batch_size = 2\n", training)),
            &PlanOptions::default(),
        )
    };
    let base = with("batch_size = 2\n").unwrap();
    // Writing the defaults changes no id: they are not serialized.
    let explicit = with("batch_size = 2\nnodes = 1\nranks_per_node = 1\n").unwrap();
    assert_eq!(explicit.config_ids, base.config_ids);
    // Two ranks: micro-batch 1 each by default.
    let two = with("batch_size = 2\nranks_per_node = 2\n").unwrap();
    assert_eq!(two.shared.training.ranks(), 2);
    assert_eq!(two.shared.training.micro_batch_size, 1);
    // 6 sequences over 2 nodes x 2 ranks do not divide; micro-batch 2 x 4 ranks needs 8k.
    let e = with("batch_size = 6\nnodes = 2\nranks_per_node = 2\n").unwrap_err();
    assert_eq!(e.dotted(), "training.batch_size");
    assert!(
        e.message.contains("does not divide over 4 ranks"),
        "{}",
        e.message
    );
    let e = with("batch_size = 8\nmicro_batch_size = 4\nranks_per_node = 4\n").unwrap_err();
    assert!(
        e.message
            .contains("with 4 ranks, micro_batch_size can be 1, 2"),
        "{}",
        e.message
    );
    let e = with("batch_size = 8\nnodes = 0\n").unwrap_err();
    assert_eq!(e.dotted(), "training.nodes");
    // ZeRO stage 2 is stage 1's sharding applied to the gradients too.
    let e = with("batch_size = 2\nranks_per_node = 2\nshard_gradients = true\n").unwrap_err();
    assert_eq!(e.dotted(), "training.shard_gradients");
    assert!(
        e.message
            .contains("set training.shard_optimizer = true too"),
        "{}",
        e.message
    );
    let zero2 = with(
        "batch_size = 2\nranks_per_node = 2\nshard_optimizer = true\nshard_gradients = true\n",
    )
    .unwrap();
    assert!(zero2.shared.training.shard_gradients);
    assert_ne!(zero2.config_ids, two.config_ids);
}

/// A chat template frames instruction pairs of a model that has a tokenizer: refused, naming
/// the key, for CPT and for the byte-level builtin models; left out, run ids are unchanged.
#[test]
fn chat_templates_need_ift_and_a_real_tokenizer() {
    let g = "[grid]\nmethod=[\"full\"]\nlearning_rate=1e-4\ntoken_budget=\"1k\"\n";
    let with = |regime: &str| {
        let text = format!("{BASE}{g}")
            .replace("regime = \"cpt\"", &format!("regime = \"{regime}\""))
            .replace(
                "target = \"builtin:python\"",
                "target = \"builtin:python\"\nchat_template = \"model\"",
            );
        plan(&spec(&text), &PlanOptions::default()).unwrap_err()
    };
    let e = with("cpt");
    assert_eq!(e.dotted(), "data.chat_template");
    assert!(e.message.contains("regime = \"ift\""), "{}", e.message);
    let e = with("ift");
    assert_eq!(e.dotted(), "data.chat_template");
    assert!(
        e.message.contains("model.hf or model.gguf"),
        "{}",
        e.message
    );
    let plain = ok(g);
    let json = serde_json::to_string(&plain.shared).unwrap();
    assert!(!json.contains("chat_template"), "{json}");
    // Evaluation prompts framed by a template the data does not name: refused, naming the key.
    let text = format!("{BASE}{g}[evaluation]\napply_chat_template = true\n");
    let e = plan(&spec(&text), &PlanOptions::default()).unwrap_err();
    assert_eq!(e.dotted(), "evaluation.apply_chat_template");
    assert!(e.message.contains("data.chat_template"), "{}", e.message);
}

#[test]
fn tracking_changes_no_id_or_hash_and_travels_in_every_run_json() {
    let grid = "[grid]\nmethod = [\"lora\"]\nlearning_rate = [1e-4, 1e-3]\nrank = 4\ntoken_budget = \"1k\"\n";
    let plain = ok(grid);
    let tracked = ok(&format!(
        "{grid}[tracking]\nmlflow = \"http://127.0.0.1:5000\"\n"
    ));
    assert_eq!(plain.config_ids, tracked.config_ids);
    let t = tracked.tracking.clone().unwrap();
    assert_eq!(
        t.mlflow_experiment.as_deref(),
        Some("t"),
        "the sweep's name"
    );
    let mut jsonl = Vec::new();
    tracked.write_jsonl(&mut jsonl).unwrap();
    for (line, r) in String::from_utf8(jsonl).unwrap().lines().zip(&tracked.runs) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = tracked.run_file(r);
        assert_eq!(v, serde_json::to_value(&file).unwrap());
        assert_eq!(file.tracking.as_ref(), Some(&t));
        let other = plain.run_file(&plain.runs[tracked.runs.iter().position(|x| x == r).unwrap()]);
        assert_eq!(file.hash(), other.hash(), "a tracked run is the same run");
    }
}

#[test]
fn tracking_without_a_server_address_is_refused() {
    let grid = "[grid]\nmethod = [\"full\"]\nlearning_rate = 1e-3\ntoken_budget = \"1k\"\n";
    let p = err(&format!("{grid}[tracking]\nmlflow = \"mlruns\"\n"));
    assert_eq!(p.dotted(), "tracking.mlflow");
    assert!(p.message.contains("http://HOST:PORT"), "{}", p.message);
    let p = err(&format!("{grid}[tracking]\nmlflow_experiment = \"x\"\n"));
    assert_eq!(p.dotted(), "tracking.mlflow_experiment");
}

/// Intruder scaling takes factors >= 0 and needs a loss to measure again; a spec without it
/// keeps its ids.
#[test]
fn intruder_scaling_is_checked() {
    let grid = "[grid]\nmethod=[\"lora\"]\nlearning_rate=1e-3\nrank=4\ntoken_budget=\"1k\"\n";
    let with = |evaluation: &str| {
        plan(
            &spec(&format!("{BASE}[evaluation]\n{evaluation}\n{grid}")),
            &PlanOptions::default(),
        )
    };
    let plain = with("").unwrap();
    let scaled = with("intruder_scaling = [0.0, 0.5]").unwrap();
    assert_eq!(
        scaled.shared.evaluation.intruder_scaling,
        Some(vec![0.0, 0.5])
    );
    assert_ne!(scaled.config_ids, plain.config_ids);
    for bad in ["intruder_scaling = []", "intruder_scaling = [-1.0]"] {
        let e = with(bad).unwrap_err();
        assert_eq!(e.dotted(), "evaluation.intruder_scaling", "{bad}");
        assert!(e.message.contains("factors >= 0"), "{}", e.message);
    }
    let e = with("metrics = [\"spectral_rank\"]\nintruder_scaling = [0.0]").unwrap_err();
    assert!(
        e.message.contains("add them to evaluation.metrics"),
        "{}",
        e.message
    );
}
