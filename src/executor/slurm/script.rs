//! The sbatch script of a batch of runs, and how a batch is split into job arrays: pure
//! functions of the cluster config, checked against golden files in tests/golden/.

use super::config::ClusterConfig;
use super::quote::{from_home, sh_quote};

/// One job array of a batch: array indices 0..len, run `offset + index` of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// The batch line of index 0.
    pub offset: usize,
    /// Array tasks.
    pub len: usize,
}

/// Split `n` runs into arrays that fit `max_array_size` (Slurm's MaxArraySize: the largest index
/// is MaxArraySize - 1, so every chunk is indexed from 0 and carries an offset).
pub fn chunks(n: usize, max_array_size: u32) -> Vec<Chunk> {
    let size = (max_array_size as usize).max(1);
    (0..n)
        .step_by(size)
        .map(|offset| Chunk {
            offset,
            len: size.min(n - offset),
        })
        .collect()
}

/// The `--array` value of a chunk: `0-(len-1)` and the `%N` throttle.
pub fn array_spec(chunk: Chunk, max_concurrent: Option<u32>) -> String {
    let mut s = format!("0-{}", chunk.len.saturating_sub(1));
    if let Some(n) = max_concurrent.filter(|n| *n > 0) {
        s.push_str(&format!("%{n}"));
    }
    s
}

/// The exit code of a task whose trainer stopped with a checkpoint on the time-limit warning
/// (SIGUSR1 from `--signal`) before finishing: the job ends before Slurm's time limit, so Slurm
/// would call it COMPLETED (or FAILED with this code); the parsers read it as a timeout, which the
/// retry policy resubmits to resume from the checkpoint. EX_TEMPFAIL of sysexits.h.
pub const CHECKPOINTED_EXIT: u8 = 75;

/// What one run of a batch asks for: data-parallel ranks over nodes (the spec's
/// `training.nodes` and `training.ranks_per_node`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    /// Nodes per run.
    pub nodes: u32,
    /// Ranks (srun tasks) per node.
    pub ranks_per_node: u32,
    /// The largest checkpoint of the batch's runs, in bytes (the time-limit warning's default
    /// leaves time to write it).
    pub checkpoint_bytes: f64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            nodes: 1,
            ranks_per_node: 1,
            checkpoint_bytes: 0.0,
        }
    }
}

impl Resources {
    /// More than one rank: the trainer is started by srun, one task per rank.
    pub fn multi(&self) -> bool {
        self.nodes * self.ranks_per_node > 1
    }
}

/// The rendezvous and the srun prefix of a multi-rank run's trainer line.
const MULTI_RANK_LAUNCH: &str = r#"first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first" -o | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')
export MASTER_ADDR=${MASTER_ADDR:-$first}
export MASTER_PORT=$((15000 + SLURM_JOB_ID % 10000))
srun --kill-on-bad-exit=1 bash -c 'export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID LOCAL_WORLD_SIZE=${SLURM_NTASKS_PER_NODE:-}; exec "$@"' rank "#;

/// The job script of batch `tag`, run from the remote sweep folder with the chunk offset as $1.
/// Task i trains line `offset + i + 1` of batches/TAG.jsonl (its run id on the same line of
/// batches/TAG.ids), records its job ids in jobs.log, and forwards SIGUSR1 (sent
/// `checkpoint_signal_s` before the time limit) and SIGTERM to the trainer so it checkpoints.
/// A task stopped by SIGUSR1 without a final result exits [`CHECKPOINTED_EXIT`].
/// A run of several ranks asks for `--nodes` and `--ntasks-per-node` and starts them with srun;
/// each task gets torchrun's variables from Slurm's (RANK = SLURM_PROCID, WORLD_SIZE =
/// SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID) and meets the others at the first node's address
/// (its NodeAddr) on a port derived from the job id, so jobs sharing a node differ.
pub fn render(c: &ClusterConfig, binary: &str, tag: &str, res: Resources) -> String {
    let mut s = String::new();
    s.push_str("#!/bin/bash\n");
    s.push_str(&format!(
        "# Written by `sweep submit`: one array task per run of batch {tag}; $1 is the chunk offset.\n"
    ));
    let mut opt = |k: &str, v: &str| s.push_str(&format!("#SBATCH --{k}={v}\n"));
    opt("output", "logs/%A_%a.out");
    opt("open-mode", "append");
    s.push_str("#SBATCH --requeue\n");
    let mut opt = |k: &str, v: &str| s.push_str(&format!("#SBATCH --{k}={v}\n"));
    let warning = c
        .checkpoint_signal_s
        .unwrap_or_else(|| super::config::default_signal_s(res.checkpoint_bytes));
    opt("signal", &format!("B:USR1@{warning}"));
    for (k, v) in [
        ("partition", &c.partition),
        ("account", &c.account),
        ("qos", &c.qos),
        ("time", &c.time_limit),
        ("mem", &c.mem),
        ("gres", &c.gres),
    ] {
        if let Some(v) = v {
            opt(k, v);
        }
    }
    if let Some(n) = c.cpus_per_task {
        opt("cpus-per-task", &n.to_string());
    }
    if res.multi() {
        opt("nodes", &res.nodes.to_string());
        opt("ntasks-per-node", &res.ranks_per_node.to_string());
    }
    if c.gpu {
        opt("gpus-per-node", &res.ranks_per_node.to_string());
    }
    for l in &c.sbatch_extra {
        s.push_str(&format!("#SBATCH {l}\n"));
    }
    s.push_str("set -u\n");
    // Slurm may send the time-limit warning at any moment, even before the trainer starts:
    // remember it, and pass it and SIGTERM on once there is a trainer.
    s.push_str(
        r#"child=
warned=0
trap 'warned=1; [ -z "$child" ] || kill -USR1 "$child" 2>/dev/null' USR1
trap '[ -n "$child" ] || exit 143; kill -TERM "$child" 2>/dev/null' TERM
"#,
    );
    // The task records which run it is before anything can fail, so that accounting without
    // array ids (jobcomp/filetxt) still maps its end to the run.
    s.push_str(&format!(
        r#"offset=${{1:?the chunk offset}}
line=$((SLURM_ARRAY_TASK_ID + offset + 1))
id=$(sed -n "${{line}}p" batches/{tag}.ids)
if [ -z "$id" ]; then echo "no run on line $line of batches/{tag}.ids" >&2; exit 2; fi
echo "$SLURM_JOB_ID ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} $id" >> jobs.log
run=runs/$id
mkdir -p "$run"
sed -n "${{line}}p" batches/{tag}.jsonl > "$run/.run.json.tmp" && mv "$run/.run.json.tmp" "$run/run.json"
"#
    ));
    for l in &c.setup {
        s.push_str(l);
        s.push('\n');
    }
    // The configured libtorch, or the one `--install` copied (harmless for a build without it).
    s.push_str(&format!(
        "export LD_LIBRARY_PATH={}/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}\n",
        from_home(&c.remote_libtorch())
    ));
    // A run that asked for GPUs trains on them or fails at start, naming the libtorch it loaded;
    // each rank takes the GPU of its LOCAL_RANK.
    if c.asks_gpus() {
        s.push_str("export SWEEP_DEVICE=cuda\n");
    }
    // Stopped at the warning without a final result (checkpointed and exited 0, or killed by
    // the signal before its handler was installed: 128 + SIGUSR1), the task ends as a timeout.
    s.push_str(&format!(
        r#"if [ "$warned" = 1 ]; then
    echo "sweep: $id got the time-limit warning before training started; exit {checkpointed} (a timeout)" >&2
    exit {checkpointed}
fi
{started}{launch}{bin} train "$run/run.json"{extra} --threads "${{SLURM_CPUS_PER_TASK:-1}}" >> "$run/train.log" 2>&1 &
child=$!
[ "$warned" = 0 ] || kill -USR1 "$child" 2>/dev/null
while true; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
done
if [ "$warned" = 1 ] && {{ [ "$code" = 0 ] || [ "$code" = 138 ]; }} && ! grep -qE '"status": *"(completed|diverged)"' "$run/result.json" 2>/dev/null; then
{requeue}    echo "sweep: $id stopped at the time-limit warning; exit {checkpointed} (a timeout)" >&2
    exit {checkpointed}
fi
exit "$code"
"#,
        started = if c.requeue_on_timeout {
            "newest_checkpoint() { ls -d \"$run\"/checkpoints/step-* \"$run\"/checkpoint-*/trainer_state.json 2>/dev/null | sort -V | tail -n 1; }\nstarted_from=$(newest_checkpoint)\n"
        } else {
            ""
        },
        requeue = if c.requeue_on_timeout {
            r#"    reached=$(newest_checkpoint)
    if [ -n "$reached" ] && [ "$reached" != "$started_from" ]; then
        echo "sweep: $id stopped at the time-limit warning at ${reached#"$run"/}; requeued itself to go on from there (requeue_on_timeout)" | tee -a "$run/train.log" >&2
        scontrol requeue "$SLURM_JOB_ID" && exit 0
    fi
"#
        } else {
            ""
        },
        bin = from_home(binary),
        launch = if res.multi() { MULTI_RANK_LAUNCH } else { "" },
        checkpointed = CHECKPOINTED_EXIT,
        extra = c
            .train_args
            .iter()
            .map(|a| format!(" {}", sh_quote(a)))
            .collect::<String>()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::slurm::config::ClustersFile;

    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", path.display()));
        assert_eq!(
            actual, expected,
            "{name} changed; rerun with UPDATE_GOLDEN=1 if that is intended"
        );
    }

    #[test]
    fn full_script_matches_its_golden_file() {
        let f = ClustersFile::parse(
            include_str!("../../../sweeps/clusters.toml"),
            "sweeps/clusters.toml",
        )
        .unwrap();
        let mut c = f.clusters["mycluster"].clone();
        c.libtorch = Some("/opt/lib torch".into());
        golden(
            "sbatch_full.sh",
            &render(
                &c,
                "/opt/my sweep/bin/sweep",
                "18c0ffee",
                Resources::default(),
            ),
        );
    }

    /// The time-limit warning leaves time to write the sweep's largest checkpoint, unless the
    /// cluster entry says how long.
    #[test]
    fn the_warning_covers_the_checkpoint() {
        let f = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\n[clusters.b]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\ncheckpoint_signal_s = 90\n",
            "c",
        )
        .unwrap();
        // Llama-2-7B full fine-tuning with AdamW (plan::memory's tests): 81 GB.
        let res = Resources {
            checkpoint_bytes: 81e9,
            ..Resources::default()
        };
        let warning = |c: &str, res: Resources| {
            let text = render(&f.clusters[c], "w/bin/sweep", "t", res);
            text.lines()
                .find_map(|l| l.strip_prefix("#SBATCH --signal=B:USR1@"))
                .unwrap()
                .to_string()
        };
        // 60 s and 81 GB at 250 MB/s: 384 s, in tens.
        assert_eq!(warning("a", res), "390");
        assert_eq!(warning("a", Resources::default()), "120");
        assert_eq!(warning("b", res), "90");
    }

    #[test]
    fn multi_rank_script_matches_its_golden_file() {
        let f = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\ngres = \"gpu:4\"\n",
            "c",
        )
        .unwrap();
        let res = Resources {
            nodes: 2,
            ranks_per_node: 4,
            ..Resources::default()
        };
        let text = render(&f.clusters["a"], "w/bin/sweep-0.1.0", "abc123", res);
        assert!(text.contains("#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=4\n"));
        golden("sbatch_multi_rank.sh", &text);
    }

    #[test]
    fn gpu_script_matches_its_golden_file() {
        let f = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\ngpu = true\nlibtorch = \"/opt/torch\"\n",
            "c",
        )
        .unwrap();
        let res = Resources {
            nodes: 2,
            ranks_per_node: 4,
            ..Resources::default()
        };
        let text = render(&f.clusters["a"], "w/bin/sweep-0.1.0", "abc123", res);
        assert!(text.contains("#SBATCH --ntasks-per-node=4\n#SBATCH --gpus-per-node=4\n"));
        assert!(text.contains("export SWEEP_DEVICE=cuda\n"));
        golden("sbatch_gpu.sh", &text);
        let both = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\ngpu = true\ngres = \"gpu:4\"\n",
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(both.contains("gres") && both.contains("keep one"), "{both}");
        // GPUs asked in sbatch_extra count too; a constraint that names GPUs does not.
        let extra = |line: &str| {
            ClustersFile::parse(
                &format!("[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\nsbatch_extra = [\"{line}\"]\n"),
                "c",
            )
            .unwrap()
            .clusters["a"]
            .asks_gpus()
        };
        assert!(extra("--gpus-per-node=4") && extra("-G 2") && extra("--gres=gpu:a100:2"));
        assert!(!extra("--constraint=a100-GPU") && !extra("--mem=8G"));
        let relative = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\ninstall_binary = \"target/cuda/release/sweep\"\nlibtorch = \"/t\"\n",
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(relative.contains("not an absolute path"), "{relative}");
        let alone = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\ninstall_binary = \"/b/sweep\"\n",
            "c",
        )
        .unwrap_err()
        .to_string();
        assert!(alone.contains("needs `libtorch`"), "{alone}");
    }

    #[test]
    fn minimal_script_matches_its_golden_file() {
        let f = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\n",
            "c",
        )
        .unwrap();
        golden(
            "sbatch_minimal.sh",
            &render(
                &f.clusters["a"],
                "w/bin/sweep-0.1.0",
                "abc123",
                Resources::default(),
            ),
        );
    }

    #[test]
    fn requeue_on_timeout_requeues_only_a_task_that_checkpointed_further() {
        let f = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\nrequeue_on_timeout = true\n",
            "c",
        )
        .unwrap();
        let on = render(&f.clusters["a"], "b", "t", Resources::default());
        let before = on.find("started_from=").unwrap();
        let launch = on.find(" train \"$run/run.json\"").unwrap();
        assert!(
            before < launch,
            "the checkpoint it starts from is read before it trains"
        );
        let requeue = on
            .find("scontrol requeue \"$SLURM_JOB_ID\" && exit 0")
            .unwrap();
        assert!(on[..requeue].contains("[ \"$reached\" != \"$started_from\" ]"));
        // Else, and when it got no further, a timeout for the retry policy.
        assert!(on[requeue..].contains("exit 75"));
        let off = render(
            &ClustersFile::parse(
                "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w\"\n",
                "c",
            )
            .unwrap()
            .clusters["a"],
            "b",
            "t",
            Resources::default(),
        );
        assert!(!off.contains("scontrol requeue") && !off.contains("started_from"));

        // The newest checkpoint, the builtin trainer's or a Hugging Face Trainer's whole
        // checkpoint-N (by number; one without trainer_state.json is a save cut short).
        let function = on
            .lines()
            .find(|l| l.starts_with("newest_checkpoint()"))
            .unwrap();
        let newest = |run: &std::path::Path| {
            let o = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "run={}\n{function}\nnewest_checkpoint",
                    run.display()
                ))
                .output()
                .unwrap();
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        };
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(newest(dir.path()), "");
        for (d, whole) in [
            ("checkpoint-9", true),
            ("checkpoint-10", true),
            ("checkpoint-11", false),
        ] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
            if whole {
                std::fs::write(dir.path().join(d).join("trainer_state.json"), "{}").unwrap();
            }
        }
        let hf = dir.path().join("checkpoint-10/trainer_state.json");
        assert_eq!(newest(dir.path()), hf.display().to_string());
        let builtin = tempfile::tempdir().unwrap();
        for d in ["checkpoints/step-00000009", "checkpoints/step-00000010"] {
            std::fs::create_dir_all(builtin.path().join(d)).unwrap();
        }
        assert!(newest(builtin.path()).ends_with("checkpoints/step-00000010"));
    }

    #[test]
    fn arrays_fit_max_array_size_and_carry_offsets() {
        assert_eq!(chunks(0, 1001), vec![]);
        assert_eq!(chunks(5, 1001), vec![Chunk { offset: 0, len: 5 }]);
        assert_eq!(
            chunks(2500, 1001),
            vec![
                Chunk {
                    offset: 0,
                    len: 1001
                },
                Chunk {
                    offset: 1001,
                    len: 1001
                },
                Chunk {
                    offset: 2002,
                    len: 498
                }
            ]
        );
        assert_eq!(chunks(2, 0).len(), 2, "a zero limit still submits");
        assert_eq!(
            array_spec(
                Chunk {
                    offset: 1001,
                    len: 498
                },
                Some(16)
            ),
            "0-497%16"
        );
        assert_eq!(array_spec(Chunk { offset: 0, len: 1 }, None), "0-0");
    }
}
