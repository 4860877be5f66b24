//! Submit, poll, cancel and collect over a [`Transport`]: the Slurm executor's logic. One probe
//! command reads the cluster's config, the remote binary's version, squeue, the accounting
//! source, the results and jobs.log in a single round trip; submit adds three uploads and one
//! command for every sbatch call.

use std::collections::{BTreeMap, HashMap};

use super::config::ClusterConfig;
use super::journal::{Batch, ChunkRecord, Journal};
use super::parse::{self, Accounting, ClusterFacts, JobRow};
use super::quote::{from_home, join, sh_quote};
use super::retry::resubmit_record;
use super::script;
use super::transport::{Transport, TransportError};
use super::SlurmError;
use crate::executor::state::{RunRecord, SweepState};
use crate::executor::JobState;

/// What one probe saw.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// The cluster's facts.
    pub facts: Option<ClusterFacts>,
    /// `sweep --version` of the remote binary, or the error.
    pub version: String,
    /// squeue rows.
    pub live: Vec<JobRow>,
    /// Accounting rows (finished jobs).
    pub done: Vec<JobRow>,
    /// Run results on the cluster.
    pub results: HashMap<String, JobState>,
    /// The error of each failed result on the cluster.
    pub errors: HashMap<String, String>,
    /// Run id and `ARRAY_TASK` job id by raw job id (jobs.log).
    pub jobs_log: HashMap<String, (String, String)>,
    /// The step of each run's latest checkpoint on the cluster.
    pub checkpoints: HashMap<String, u64>,
    /// The last metrics.jsonl line of each run without a final result.json (none yet, or a
    /// failed attempt's while it is tried again).
    pub progress: HashMap<String, String>,
    /// What the accounting command said when it could not be read (finished jobs are then
    /// not seen: runs stay as last seen).
    pub acct_error: Option<String>,
}

/// The probe command (pure): everything status and submit need, in one remote call.
pub fn probe_command(remote_dir: &str, binary: &str, acct_age_s: u64) -> String {
    let d = sh_quote(remote_dir);
    format!(
        "mkdir -p {d}/logs {d}/batches {d}/runs && cd {d} && {{ \
echo @@config; cfg=$(scontrol show config 2>&1); printf '%s\\n' \"$cfg\" | grep -E '^(MaxArraySize|AccountingStorageType|JobCompType) '; \
echo @@version; {bin} --version 2>&1 || echo \"cannot run: exit $?\"; \
echo @@squeue; squeue -h -r -u \"$(id -un)\" -o '{sq}' 2>&1; \
echo @@acct; case \"$cfg\" in *accounting_storage/slurmdbd*) sacct -n -P -X -u \"$(id -un)\" -S now-{age} -o {sa} 2>&1 ;; \
*jobcomp/filetxt*) sacct -c -n -P -o {sa} 2>&1 ;; *) scontrol show job -o 2>/dev/null ;; esac; \
echo @@results; for f in runs/*/result.json; do [ -e \"$f\" ] && grep -H -o -E '\"(status\": *\"[a-z_]*|error\": *\"([^\"\\\\]|\\\\.)*)\"' \"$f\"; done; \
echo @@jobslog; cat jobs.log 2>/dev/null; \
echo @@checkpoints; for c in runs/*/checkpoints/step-* runs/*/checkpoint-*/trainer_state.json; do [ -e \"$c\" ] && echo \"$c\"; done; \
echo @@progress; for f in runs/*/metrics.jsonl; do [ -e \"$f\" ] && ! grep -qE '\"status\": *\"(completed|diverged)\"' \"${{f%metrics.jsonl}}result.json\" 2>/dev/null && printf '%s:%s\\n' \"$f\" \"$(tail -n 1 \"$f\")\"; done; true; }}",
        bin = from_home(binary),
        sq = parse::SQUEUE_FORMAT,
        sa = parse::SACCT_FIELDS,
        age = acct_age_s.max(3600),
    )
}

/// Read the probe's output (pure).
pub fn parse_probe(text: &str) -> Probe {
    let mut sections: HashMap<&str, String> = HashMap::new();
    let mut cur = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            cur = match name {
                "config" => "config",
                "version" => "version",
                "squeue" => "squeue",
                "acct" => "acct",
                "results" => "results",
                "jobslog" => "jobslog",
                "checkpoints" => "checkpoints",
                "progress" => "progress",
                _ => cur,
            };
            if [
                "config",
                "version",
                "squeue",
                "acct",
                "results",
                "jobslog",
                "checkpoints",
                "progress",
            ]
            .contains(&name)
            {
                continue;
            }
        }
        let s = sections.entry(cur).or_default();
        s.push_str(line);
        s.push('\n');
    }
    let get = |k: &str| sections.get(k).map(String::as_str).unwrap_or("");
    let facts = sections
        .contains_key("config")
        .then(|| parse::parse_config(get("config")));
    let acct = get("acct");
    let done = match facts.map(|f| f.accounting) {
        Some(Accounting::Scontrol) => parse::parse_scontrol_jobs(acct),
        _ => parse::parse_sacct(acct),
    };
    Probe {
        facts,
        version: get("version").trim().to_string(),
        live: parse::parse_squeue(get("squeue")),
        done,
        results: parse::parse_results(get("results")),
        errors: parse::parse_result_errors(get("results")),
        jobs_log: parse::parse_jobs_log(get("jobslog")),
        checkpoints: parse::parse_checkpoints(get("checkpoints")),
        progress: parse::parse_progress(get("progress")),
        acct_error: acct
            .lines()
            // (`sacct -c` also says `error: Unknown type ...` of fields it cannot read: not
            // fatal, the rows come all the same.)
            .find(|l| l.starts_with("sacct: fatal"))
            .map(str::to_string),
    }
}

/// What the cluster says about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Its state.
    pub state: JobState,
    /// `ARRAY_TASK` job id.
    pub job_id: Option<String>,
    /// Slurm's words.
    pub detail: Option<String>,
    /// The step of its latest checkpoint on the cluster.
    pub checkpoint_step: Option<u64>,
    /// Its job completed but no result.json was seen: a failure, unless the result shows up
    /// by the next poll (a shared filesystem may show a new file to the login node late).
    pub no_result: bool,
}

/// Join the probe with the journal (pure): run id -> what the cluster says. Finished-job records
/// come first (the newest per run wins), live ones override them, and a result on the cluster
/// overrides both. A job that completed without a result.json is a failure.
pub fn observe(journal: &Journal, probe: &Probe) -> BTreeMap<String, Observed> {
    let prefix = journal.job_prefix();
    let mut by_array: HashMap<&str, (&Batch, &ChunkRecord)> = HashMap::new();
    for b in &journal.batches {
        for c in &b.chunks {
            if let Some(j) = &c.job_id {
                by_array.insert(j.as_str(), (b, c));
            }
        }
    }
    let run_of = |row: &JobRow| -> Option<(String, String)> {
        if !row.name.starts_with(&prefix) {
            return None;
        }
        if let Some((aj, k)) = &row.array {
            if let Some((b, c)) = by_array.get(aj.as_str()) {
                let i = c.offset + *k as usize;
                return b.ids.get(i).map(|id| (id.clone(), format!("{aj}_{k}")));
            }
        }
        probe.jobs_log.get(&row.raw_id).cloned()
    };
    let num = |s: &str| s.parse::<u64>().unwrap_or(0);
    let mut out: BTreeMap<String, Observed> = BTreeMap::new();
    let mut newest: HashMap<String, u64> = HashMap::new();
    for row in &probe.done {
        let Some((id, job)) = run_of(row) else {
            continue;
        };
        let raw = num(&row.raw_id);
        if newest.get(&id).is_some_and(|&n| n > raw) {
            continue;
        }
        newest.insert(id.clone(), raw);
        out.insert(
            id,
            Observed {
                state: row.state,
                job_id: Some(job),
                detail: Some(row.detail.clone()),
                checkpoint_step: None,
                no_result: false,
            },
        );
    }
    // A live job that accounting saw end before is one Slurm requeued (scontrol requeue, or
    // a node failure or preemption of a --requeue job): the same job, not a new attempt. Only
    // jobcomp logs ends alone; slurmdbd's rows include live jobs, so there only a fault counts.
    let jobcomp = probe
        .facts
        .is_some_and(|f| f.accounting == Accounting::Jobcomp);
    let mut ended: HashMap<&str, &JobRow> = HashMap::new();
    for row in &probe.done {
        let live_state = matches!(row.state, JobState::Pending | JobState::Running);
        if row.state != JobState::Running && (jobcomp || !live_state) {
            ended.insert(row.raw_id.as_str(), row);
        }
    }
    for row in &probe.live {
        let Some((id, job)) = run_of(row) else {
            continue;
        };
        let detail = ended.get(row.raw_id.as_str()).map(|e| match e.state {
            JobState::Pending => "requeued by Slurm".to_string(),
            _ => format!("requeued by Slurm after {}", e.detail),
        });
        out.insert(
            id,
            Observed {
                state: row.state,
                job_id: Some(job),
                detail,
                checkpoint_step: None,
                no_result: false,
            },
        );
    }
    for (id, o) in out.iter_mut() {
        match probe.results.get(id) {
            Some(s) if s.is_final() => {
                o.state = *s;
                o.detail = None;
            }
            _ if o.state == JobState::Completed => {
                o.state = JobState::Failed;
                o.detail = Some("the job ended without a result.json; see its train.log".into());
                o.no_result = true;
            }
            // A failed job with the trainer's own words: say them.
            _ if o.state == JobState::Failed => {
                if let Some(e) = probe.errors.get(id) {
                    o.detail = Some(match &o.detail {
                        Some(d) => format!("{d}: {e}"),
                        None => e.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    for (id, s) in &probe.results {
        if s.is_final() {
            out.entry(id.clone()).or_insert(Observed {
                state: *s,
                job_id: None,
                detail: None,
                checkpoint_step: None,
                no_result: false,
            });
        }
    }
    for (id, o) in out.iter_mut() {
        o.checkpoint_step = probe.checkpoints.get(id).copied();
    }
    out
}

/// Find journal chunks without a job id in what the cluster reports (by job name): found ones
/// get their array job id, the rest are dropped (sbatch never ran for them). Returns the chunks
/// found, as (batch index, chunk index).
pub fn reconcile(journal: &mut Journal, probe: &Probe) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for (bi, b) in journal.batches.iter_mut().enumerate() {
        let mut keep = Vec::new();
        for (ci, c) in b.chunks.drain(..).enumerate() {
            if c.job_id.is_some() {
                keep.push(c);
                continue;
            }
            let ids: Vec<u64> = probe
                .live
                .iter()
                .chain(&probe.done)
                .filter(|r| r.name == c.job_name)
                .map(|r| {
                    r.array
                        .as_ref()
                        .map(|a| a.0.as_str())
                        .unwrap_or(r.raw_id.as_str())
                        .parse::<u64>()
                        .unwrap_or(u64::MAX)
                })
                .collect();
            if let Some(min) = ids.into_iter().min() {
                found.push((bi, ci));
                keep.push(ChunkRecord {
                    job_id: Some(min.to_string()),
                    ..c
                });
            }
        }
        b.chunks = keep;
    }
    journal.batches.retain(|b| !b.chunks.is_empty());
    found
}

/// Record the jobs of a chunk in the sweep state: each run pending with its job id.
pub fn record_chunk(state: &mut SweepState, backend: &str, b: &Batch, c: &ChunkRecord) {
    let Some(job) = &c.job_id else { return };
    for k in 0..c.len {
        let Some(id) = b.ids.get(c.offset + k) else {
            continue;
        };
        let rec = state.runs.entry(id.clone()).or_insert_with(|| RunRecord {
            state: JobState::Pending,
            attempts: 0,
            backend: backend.to_string(),
            job_id: None,
            detail: None,
            progress: Default::default(),
        });
        let job_k = format!("{job}_{k}");
        // Recorded already (a submit that crashed after saving the state, before the journal).
        if rec.job_id.as_deref() == Some(job_k.as_str()) {
            continue;
        }
        // A run that timed out after checkpointing further than it had been sent from goes
        // on from there: a continuation, which the retry policy does not count as a failure.
        if rec.continues() {
            rec.progress.continuations += 1;
        }
        rec.progress.submitted_step = rec.progress.checkpoint_step;
        rec.attempts += 1;
        rec.state = JobState::Pending;
        rec.backend = backend.to_string();
        rec.job_id = Some(job_k);
        rec.detail = None;
    }
}

/// How long a job seen completed without its result.json is waited for before it counts as
/// failed: a shared filesystem may show a new file to the login node late (NFS caches a
/// folder's entries for up to 60 s by default).
pub const RESULT_GRACE_S: u64 = 90;

const NO_RESULT_YET: &str = "its job ended; its result.json is not on the cluster's filesystem yet (looked for again at the next polls, for up to 90 s)";

/// Apply observations (made at `now`, epoch seconds) to the sweep state.
pub fn apply(state: &mut SweepState, backend: &str, obs: &BTreeMap<String, Observed>, now: u64) {
    for (id, o) in obs {
        let rec = state.runs.entry(id.clone()).or_insert_with(|| RunRecord {
            state: o.state,
            attempts: 1,
            backend: backend.to_string(),
            job_id: None,
            detail: None,
            progress: Default::default(),
        });
        // Only observations of the run's current job (or a result) change it.
        if o.job_id.is_none()
            || rec.job_id.is_none()
            || o.job_id == rec.job_id
            || o.state.is_final()
        {
            // A job seen ended without its result is looked for again for RESULT_GRACE_S
            // before it counts as failed: one end per attempt, the right one. A run already
            // failed so (the grace spent, or a state written before the grace) stays failed.
            let waiting =
                rec.progress.result_wait.is_some() && rec.progress.result_wait == o.job_id;
            let failed_so = !waiting && rec.state == JobState::Failed && rec.job_id == o.job_id;
            let since = rec
                .progress
                .result_wait_since
                .filter(|_| waiting)
                .unwrap_or(now);
            let wait = o.no_result && !failed_so && now.saturating_sub(since) < RESULT_GRACE_S;
            if wait {
                rec.state = JobState::Running;
                rec.detail = Some(NO_RESULT_YET.into());
                rec.progress.result_wait = o.job_id.clone();
                rec.progress.result_wait_since = Some(since);
            } else {
                rec.state = o.state;
                rec.detail = o.detail.clone();
                rec.progress.result_wait = None;
                rec.progress.result_wait_since = None;
            }
            if o.job_id.is_some() {
                rec.job_id = o.job_id.clone();
            }
        }
        if o.checkpoint_step.is_some() {
            rec.progress.checkpoint_step = rec.progress.checkpoint_step.max(o.checkpoint_step);
        }
    }
    // A run waited for whose job the cluster no longer reports (scontrol forgets a finished
    // job after MinJobAge): it ended without a result.
    for (id, rec) in state.runs.iter_mut() {
        if rec.progress.result_wait.is_some() && !obs.contains_key(id) && rec.backend == backend {
            rec.state = JobState::Failed;
            rec.detail = Some("the job ended without a result.json; see its train.log".into());
            rec.progress.result_wait = None;
            rec.progress.result_wait_since = None;
        }
    }
}

/// Run the probe.
pub fn run_probe(
    t: &mut dyn Transport,
    journal: &Journal,
    binary: &str,
    now: u64,
) -> Result<Probe, SlurmError> {
    let oldest = journal.batches.first().map(|b| b.created).unwrap_or(now);
    let out = t.exec(&probe_command(
        &journal.remote_dir,
        binary,
        now.saturating_sub(oldest) + 3600,
    ))?;
    if out.code != 0 {
        return Err(SlurmError::Remote {
            what: format!("preparing {}", journal.remote_dir),
            detail: format!("{}{}", out.stdout, out.stderr).trim().to_string(),
        });
    }
    Ok(parse_probe(&out.stdout))
}

/// Which runs to submit (pure): those without a final result, not queued or running, never
/// submitted, or ended in a way the retry policy resubmits.
pub fn to_submit(
    ids: &[String],
    state: &SweepState,
    c: &ClusterConfig,
    retry_failed: bool,
) -> Vec<String> {
    ids.iter()
        .filter(|id| match state.runs.get(*id) {
            None => true,
            Some(r) if r.job_id.is_none() && r.state == JobState::Pending => true,
            Some(r) if r.attempts == 0 && !r.state.is_final() => true,
            Some(r) => resubmit_record(r, &c.retry, retry_failed),
        })
        .cloned()
        .collect()
}

/// The sbatch command of a batch (pure): every chunk in turn, stopping at the first refusal;
/// each success prints its job id.
pub fn sbatch_command(remote_dir: &str, b: &Batch, max_concurrent: Option<u32>) -> String {
    let mut s = format!("cd {} && {{ ", sh_quote(remote_dir));
    for c in &b.chunks {
        let chunk = script::Chunk {
            offset: c.offset,
            len: c.len,
        };
        s.push_str(&format!(
            "sbatch --parsable --job-name={} --array={} batches/{}.sbatch {} || exit $?; ",
            sh_quote(&c.job_name),
            script::array_spec(chunk, max_concurrent),
            b.tag,
            c.offset
        ));
    }
    s.push('}');
    s
}

/// Submit `lines` (run id, run.json line) as a new batch: journal first, then three uploads and
/// one command. Returns the run ids submitted.
#[allow(clippy::too_many_arguments)]
pub fn submit_batch(
    t: &mut dyn Transport,
    journal: &mut Journal,
    state: &mut SweepState,
    dir: &std::path::Path,
    backend: &str,
    binary: &str,
    resources: script::Resources,
    lines: &[(String, String)],
    now_ms: u128,
) -> Result<usize, SlurmError> {
    let facts = journal.facts.unwrap_or(ClusterFacts {
        max_array_size: 1001,
        accounting: Accounting::Scontrol,
    });
    let tag = format!("{now_ms:x}");
    let prefix = journal.job_prefix();
    let chunks = script::chunks(lines.len(), facts.max_array_size);
    let batch = Batch {
        tag: tag.clone(),
        created: u64::try_from(now_ms / 1000).unwrap_or(0),
        ids: lines.iter().map(|(id, _)| id.clone()).collect(),
        chunks: chunks
            .iter()
            .enumerate()
            .map(|(k, c)| ChunkRecord {
                offset: c.offset,
                len: c.len,
                job_name: format!("{prefix}{tag}-{k}"),
                job_id: None,
            })
            .collect(),
    };
    // The intent is on disk before anything reaches the cluster.
    journal.batches.push(batch.clone());
    journal.save(dir)?;
    let rd = &journal.remote_dir;
    let mut jsonl = String::new();
    let mut ids = String::new();
    for (id, line) in lines {
        jsonl.push_str(line.trim_end());
        jsonl.push('\n');
        ids.push_str(id);
        ids.push('\n');
    }
    t.upload(
        jsonl.as_bytes(),
        &join(rd, &format!("batches/{tag}.jsonl")),
        0o644,
    )?;
    t.upload(
        ids.as_bytes(),
        &join(rd, &format!("batches/{tag}.ids")),
        0o644,
    )?;
    let text = script::render(&journal.config, binary, &tag, resources);
    t.upload(
        text.as_bytes(),
        &join(rd, &format!("batches/{tag}.sbatch")),
        0o755,
    )?;
    let out = t.exec(&sbatch_command(rd, &batch, journal.config.max_concurrent))?;
    let job_ids: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.split(';').next())
        .map(str::trim)
        .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect();
    let Some(last) = journal.batches.last_mut() else {
        return Err(SlurmError::Remote {
            what: "recording the batch".into(),
            detail: "the journal lost its batch".into(),
        });
    };
    let mut submitted = 0;
    for (k, c) in last.chunks.iter_mut().enumerate() {
        c.job_id = job_ids.get(k).cloned();
    }
    last.chunks.retain(|c| c.job_id.is_some());
    let kept = last.clone();
    for c in &kept.chunks {
        record_chunk(state, backend, &kept, c);
        submitted += c.len;
    }
    if kept.chunks.is_empty() {
        journal.batches.pop();
    }
    // The state first: after a crash between the two saves the journal's chunk has no job id,
    // reconciliation finds the job by name, and record_chunk sees it recorded (nothing is
    // submitted twice, nothing counted twice).
    state.save(dir)?;
    journal.save(dir)?;
    if out.code != 0 {
        let refused: Vec<&String> = batch.ids[submitted..].iter().collect();
        let shown: Vec<&str> = refused.iter().take(5).map(|s| s.as_str()).collect();
        return Err(SlurmError::Sbatch {
            error: out.stderr.trim().to_string(),
            runs: format!(
                "{}{}",
                shown.join(", "),
                if refused.len() > 5 {
                    format!(" and {} more", refused.len() - 5)
                } else {
                    String::new()
                }
            ),
            submitted,
        });
    }
    Ok(submitted)
}

/// Cancel jobs: the whole sweep's arrays, or the given runs' tasks (one scancel call).
pub fn cancel(
    t: &mut dyn Transport,
    journal: &Journal,
    state: &SweepState,
    only: &[String],
) -> Result<usize, SlurmError> {
    let targets: Vec<String> = if only.is_empty() {
        journal
            .batches
            .iter()
            .flat_map(|b| b.chunks.iter().filter_map(|c| c.job_id.clone()))
            .collect()
    } else {
        only.iter()
            .filter_map(|id| state.runs.get(id).and_then(|r| r.job_id.clone()))
            .collect()
    };
    if targets.is_empty() {
        return Ok(0);
    }
    let cmd = format!(
        "scancel {}",
        targets
            .iter()
            .map(|t| sh_quote(t))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = t.exec(&cmd)?;
    if out.code != 0 {
        return Err(SlurmError::Remote {
            what: "scancel".into(),
            detail: out.stderr.trim().to_string(),
        });
    }
    Ok(targets.len())
}

/// Whether a transport error is worth naming the config key for.
pub fn hint(e: &TransportError) -> Option<&'static str> {
    match e {
        TransportError::UnknownHost { .. } => Some("known_hosts"),
        TransportError::Auth { .. } => Some("identity_file"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::slurm::config::ClustersFile;
    use crate::executor::slurm::transport::fake::FakeTransport;
    use crate::executor::slurm::transport::ExecOutput;

    /// A journal with one batch of `ids` submitted as the single array job 9 (`{prefix}t-0`);
    /// returns it and the job name prefix.
    fn journal_with_job_9(ids: &[&str]) -> (Journal, String) {
        let mut j = journal();
        let p = j.job_prefix();
        j.batches.push(Batch {
            tag: "t".into(),
            created: 0,
            ids: ids.iter().map(|s| s.to_string()).collect(),
            chunks: vec![ChunkRecord {
                offset: 0,
                len: ids.len(),
                job_name: format!("{p}t-0"),
                job_id: Some("9".into()),
            }],
        });
        (j, p)
    }

    fn journal() -> Journal {
        let f = ClustersFile::parse(
            "[clusters.a]\nhost = \"h\"\nuser = \"u\"\nwork_dir = \"w d\"\nmax_concurrent = 4\n",
            "c",
        )
        .unwrap();
        Journal {
            schema: 1,
            sweep: "s".into(),
            cluster: "a".into(),
            config: f.clusters["a"].clone(),
            remote_dir: "w d/sweeps/s".into(),
            facts: Some(ClusterFacts {
                max_array_size: 2,
                accounting: Accounting::Jobcomp,
            }),
            last_poll: None,
            batches: vec![],
        }
    }

    fn lines(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("r{i}-s0"), format!("{{\"id\":\"r{i}-s0\"}}")))
            .collect()
    }

    #[test]
    fn a_batch_is_journaled_chunked_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journal();
        let mut st = SweepState::new("s");
        let mut next = 100;
        let mut t = FakeTransport::new(move |cmd, _| {
            let n = cmd.matches("sbatch --parsable").count();
            let ids: Vec<String> = (0..n)
                .map(|_| {
                    next += 1;
                    next.to_string()
                })
                .collect();
            ExecOutput {
                stdout: ids.join("\n") + "\n",
                ..Default::default()
            }
        });
        let n = submit_batch(
            &mut t,
            &mut j,
            &mut st,
            dir.path(),
            "slurm:a",
            "b",
            script::Resources::default(),
            &lines(5),
            0xabc,
        )
        .unwrap();
        assert_eq!(n, 5);
        assert_eq!(t.round_trips(), 4, "three uploads and one sbatch command");
        assert!(t.commands[0].contains("--array=0-1%4 batches/abc.sbatch 0 ||"));
        assert!(t.commands[0].contains("--array=0-0%4 batches/abc.sbatch 4 ||"));
        assert!(t.commands[0].starts_with("cd 'w d/sweeps/s' && "));
        assert_eq!(j.batches[0].chunks.len(), 3);
        assert_eq!(st.runs["r4-s0"].job_id.as_deref(), Some("103_0"));
        assert_eq!(st.runs["r3-s0"].job_id.as_deref(), Some("102_1"));
        assert_eq!(
            Journal::load(dir.path()).unwrap().unwrap(),
            j,
            "the journal is saved"
        );
        assert_eq!(
            t.files["w d/sweeps/s/batches/abc.ids"],
            b"r0-s0\nr1-s0\nr2-s0\nr3-s0\nr4-s0\n"
        );
    }

    #[test]
    fn a_refused_chunk_names_its_runs_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journal();
        let mut st = SweepState::new("s");
        let mut t = FakeTransport::new(|_, _| ExecOutput {
            stdout: "7\n".into(),
            stderr: "sbatch: error: invalid partition specified: nope\n".into(),
            code: 1,
        });
        let e = submit_batch(
            &mut t,
            &mut j,
            &mut st,
            dir.path(),
            "slurm:a",
            "b",
            script::Resources::default(),
            &lines(3),
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid partition"), "{e}");
        assert!(e.contains("r2-s0"), "{e}");
        assert_eq!(st.runs.len(), 2);
        assert_eq!(j.batches[0].chunks.len(), 1);
    }

    #[test]
    fn reconcile_finds_jobs_submitted_before_a_crash_and_drops_the_rest() {
        let mut j = journal();
        let p = j.job_prefix();
        j.batches.push(Batch {
            tag: "t".into(),
            created: 0,
            ids: vec!["a".into(), "b".into(), "c".into()],
            chunks: vec![
                ChunkRecord {
                    offset: 0,
                    len: 2,
                    job_name: format!("{p}t-0"),
                    job_id: None,
                },
                ChunkRecord {
                    offset: 2,
                    len: 1,
                    job_name: format!("{p}t-1"),
                    job_id: None,
                },
            ],
        });
        let probe = parse_probe(&format!(
            "@@config\nJobCompType = jobcomp/filetxt\n@@squeue\n41|40|1|{p}t-0|PENDING|None\n@@acct\n40|40|{p}t-0|COMPLETED|0:0\n@@results\nruns/a/result.json:\"status\":\"completed\"\n@@jobslog\n40 40_0 a\n"
        ));
        let found = reconcile(&mut j, &probe);
        assert_eq!(found, vec![(0, 0)]);
        assert_eq!(j.batches[0].chunks.len(), 1);
        assert_eq!(j.batches[0].chunks[0].job_id.as_deref(), Some("40"));
        let obs = observe(&j, &probe);
        assert_eq!(obs["a"].state, JobState::Completed);
        assert_eq!(obs["b"].state, JobState::Pending);
        assert_eq!(obs["b"].job_id.as_deref(), Some("40_1"));
        assert!(!obs.contains_key("c"));
    }

    #[test]
    fn completed_without_result_is_a_failure_and_other_jobs_are_ignored() {
        let (j, p) = journal_with_job_9(&["a"]);
        let probe = parse_probe(&format!(
            "@@config\nJobCompType = jobcomp/filetxt\n@@acct\n9|9|{p}t-0|COMPLETED|0:0\n3|3|someone-else|FAILED|1:0\n@@jobslog\n9 9_0 a\n3 3_0 a\n"
        ));
        let obs = observe(&j, &probe);
        assert_eq!(obs["a"].state, JobState::Failed);
        assert!(obs["a"].detail.as_deref().unwrap().contains("result.json"));
        assert!(obs["a"].no_result);
        // Applied, it waits up to RESULT_GRACE_S for the result (seen late on a shared
        // filesystem), however many polls come, then fails; a result that shows up by then
        // completes it, and the run ends once.
        let ids = vec!["a".to_string()];
        let mut st = SweepState::new("s");
        let batch = &j.batches[0];
        record_chunk(&mut st, "slurm:a", batch, &batch.chunks[0]);
        let mut watcher = crate::executor::slurm::events::Watcher::new(&st);
        let t0 = 1_000;
        apply(&mut st, "slurm:a", &obs, t0);
        assert_eq!(st.runs["a"].state, JobState::Running);
        assert!(st.runs["a"]
            .detail
            .as_deref()
            .unwrap()
            .contains("not on the cluster's filesystem yet"));
        apply(&mut st, "slurm:a", &obs, t0 + 5);
        assert_eq!(
            st.runs["a"].state,
            JobState::Running,
            "a second probe seconds later"
        );
        let mut late = st.clone();
        let mut gone = st.clone();
        apply(&mut st, "slurm:a", &obs, t0 + RESULT_GRACE_S);
        assert_eq!(st.runs["a"].state, JobState::Failed);
        assert!(st.runs["a"]
            .detail
            .as_deref()
            .unwrap()
            .contains("without a result.json"));
        apply(&mut st, "slurm:a", &obs, t0 + 2 * RESULT_GRACE_S);
        assert_eq!(st.runs["a"].state, JobState::Failed, "failed stays failed");
        // The cluster forgot the job while it was waited for: failed.
        apply(&mut gone, "slurm:a", &BTreeMap::new(), t0 + 30);
        assert_eq!(gone.runs["a"].state, JobState::Failed);
        // A state file of a run failed so before the grace existed does not start again.
        let mut old = SweepState::new("s");
        record_chunk(&mut old, "slurm:a", batch, &batch.chunks[0]);
        apply(&mut old, "slurm:a", &obs, t0);
        old.runs.get_mut("a").unwrap().progress = Default::default();
        old.runs.get_mut("a").unwrap().state = JobState::Failed;
        apply(&mut old, "slurm:a", &obs, t0 + 1);
        assert_eq!(old.runs["a"].state, JobState::Failed);
        let arrived = parse_probe(&format!(
            "@@config\nJobCompType = jobcomp/filetxt\n@@acct\n9|9|{p}t-0|COMPLETED|0:0\n@@results\nruns/a/result.json:\"status\":\"completed\"\n@@jobslog\n9 9_0 a\n"
        ));
        let ended = |w: &mut crate::executor::slurm::events::Watcher, s: &SweepState| {
            w.update(s, &ids)
                .into_iter()
                .filter(|e| matches!(e, crate::executor::Event::RunEnded { .. }))
                .count()
        };
        assert_eq!(ended(&mut watcher, &late), 0);
        apply(&mut late, "slurm:a", &observe(&j, &arrived), t0 + 60);
        assert_eq!(late.runs["a"].state, JobState::Completed);
        assert_eq!(late.runs["a"].progress.result_wait, None);
        assert_eq!(ended(&mut watcher, &late), 1);
        assert_eq!(ended(&mut watcher, &late), 0, "told once");
    }

    #[test]
    fn a_job_slurm_requeued_is_followed_and_says_why() {
        let (j, p) = journal_with_job_9(&["a", "b", "c"]);
        // a: node failure, requeued and pending again; b: `scontrol requeue`, running again
        // (jobcomp logs the requeue as PENDING); c: a node failure without --requeue.
        let probe = parse_probe(&format!(
            "@@config\nJobCompType = jobcomp/filetxt\n@@squeue\n10|9|0|{p}t-0|PENDING|BeginTime\n11|9|1|{p}t-0|RUNNING|None\n@@acct\n10|10|{p}t-0|NODE_FAIL|0:0\n11|11|{p}t-0|PENDING|0:0\n12|12|{p}t-0|NODE_FAIL|0:0\n@@jobslog\n10 9_0 a\n11 9_1 b\n12 9_2 c\n"
        ));
        let obs = observe(&j, &probe);
        assert_eq!(obs["a"].state, JobState::Pending);
        assert_eq!(
            obs["a"].detail.as_deref(),
            Some("requeued by Slurm after NODE_FAIL exit 0:0")
        );
        assert_eq!(obs["b"].state, JobState::Running);
        assert_eq!(obs["b"].detail.as_deref(), Some("requeued by Slurm"));
        assert_eq!(obs["c"].state, JobState::NodeFail);
        // slurmdbd lists live jobs too: a pending row there is not a requeue.
        let dbd = parse_probe(&format!(
            "@@config\nAccountingStorageType = accounting_storage/slurmdbd\n@@squeue\n10|9|0|{p}t-0|PENDING|Priority\n@@acct\n10|9_0|{p}t-0|PENDING|0:0\n"
        ));
        assert_eq!(observe(&j, &dbd)["a"].detail, None);
    }

    /// The probe lists each run's checkpoints; a timed-out run that checkpointed further than
    /// it was sent from is sent again as a continuation, and one sent again from the same
    /// checkpoint is an attempt.
    #[test]
    fn a_timeout_after_progress_is_a_continuation() {
        let (j, p) = journal_with_job_9(&["a"]);
        let probe = |steps: &str| {
            parse_probe(&format!(
                "@@config\nJobCompType = jobcomp/filetxt\n@@acct\n9|9|{p}t-0|TIMEOUT|0:0\n@@jobslog\n9 9_0 a\n@@checkpoints\n{steps}"
            ))
        };
        let obs = observe(
            &j,
            &probe("runs/a/checkpoints/step-00000040\nruns/a/checkpoints/step-00000120\n"),
        );
        assert_eq!(obs["a"].state, JobState::Timeout);
        assert_eq!(obs["a"].checkpoint_step, Some(120));
        // A Hugging Face Trainer's whole checkpoint-N of a user's trainer counts the same.
        let hf = observe(
            &j,
            &probe("runs/a/checkpoint-500/trainer_state.json\nruns/a/checkpoint-1000/trainer_state.json\n"),
        );
        assert_eq!(hf["a"].checkpoint_step, Some(1000));
        let mut st = SweepState::new("s");
        let batch = &j.batches[0];
        record_chunk(&mut st, "slurm:a", batch, &batch.chunks[0]);
        apply(&mut st, "slurm:a", &obs, 0);
        assert!(st.runs["a"].continues());
        let again = ChunkRecord {
            job_id: Some("20".into()),
            ..batch.chunks[0].clone()
        };
        record_chunk(&mut st, "slurm:a", batch, &again);
        let r = &st.runs["a"];
        assert_eq!((r.attempts, r.progress.continuations), (2, 1));
        assert_eq!(r.progress.submitted_step, Some(120));
        // Timed out again without a newer checkpoint: not a continuation.
        let mut stalled = obs.clone();
        stalled.get_mut("a").unwrap().job_id = Some("20_0".into());
        apply(&mut st, "slurm:a", &stalled, 0);
        assert!(!st.runs["a"].continues());
        assert_eq!(st.runs["a"].counted_attempts(), 1);
    }

    #[test]
    fn choosing_runs_follows_the_retry_policy() {
        let j = journal();
        let mut st = SweepState::new("s");
        let rec = |s, a, job: Option<&str>| RunRecord {
            state: s,
            attempts: a,
            backend: "slurm:a".into(),
            job_id: job.map(str::to_string),
            detail: None,
            progress: Default::default(),
        };
        st.runs
            .insert("done".into(), rec(JobState::Completed, 1, Some("1_0")));
        st.runs
            .insert("queued".into(), rec(JobState::Pending, 1, Some("1_1")));
        st.runs
            .insert("to".into(), rec(JobState::Timeout, 1, Some("1_2")));
        st.runs
            .insert("f".into(), rec(JobState::Failed, 1, Some("1_3")));
        let ids: Vec<String> = ["done", "queued", "to", "f", "new"]
            .map(String::from)
            .into();
        assert_eq!(to_submit(&ids, &st, &j.config, false), vec!["to", "new"]);
        assert_eq!(
            to_submit(&ids, &st, &j.config, true),
            vec!["to", "f", "new"]
        );
    }

    #[test]
    fn the_probe_quotes_the_remote_folder_and_binary() {
        let c = probe_command("w/$(touch pwned)/it's", "/b in/sweep", 10);
        assert!(
            c.starts_with("mkdir -p 'w/$(touch pwned)/it'\\''s'/logs "),
            "{c}"
        );
        assert!(c.contains("'/b in/sweep' --version"), "{c}");
        assert!(c.contains("-S now-3600"), "{c}");
    }

    /// The probe runs in a real shell (here, with no Slurm: its sections say so and go on), and
    /// its progress section holds the last metrics line of each run that has no result yet.
    #[test]
    fn the_probe_runs_in_a_shell_and_reads_the_progress_of_unfinished_runs() {
        let d = tempfile::tempdir().unwrap();
        let remote = d.path().join("sweep dir");
        for (id, finished) in [
            ("a-s0", None),
            ("b-s0", Some("completed")),
            ("c-s0", Some("failed")),
        ] {
            let run = remote.join("runs").join(id);
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(
                run.join("metrics.jsonl"),
                "{\"step\":0}\n{\"step\":2,\"note\":\"a: b\"}\n",
            )
            .unwrap();
            if let Some(status) = finished {
                let result = format!("{{\"status\": \"{status}\"}}");
                std::fs::write(run.join("result.json"), result).unwrap();
            }
        }
        // Checkpoints: the builtin trainer's, and a Hugging Face Trainer's whole ones (the
        // cut-short checkpoint-30 has no trainer_state.json).
        let runs = remote.join("runs");
        std::fs::create_dir_all(runs.join("a-s0/checkpoints/step-00000012")).unwrap();
        for (n, whole) in [(10, true), (20, true), (30, false)] {
            let c = runs.join(format!("c-s0/checkpoint-{n}"));
            std::fs::create_dir_all(&c).unwrap();
            if whole {
                std::fs::write(c.join("trainer_state.json"), "{}").unwrap();
            }
        }
        // This host's own Slurm (a dev cluster) is shadowed: commands that answer nothing.
        let bin = d.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["scontrol", "squeue", "sacct"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(bin.join(tool), "#!/bin/sh\nexit 1\n").unwrap();
            std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let cmd = probe_command(&remote.display().to_string(), "/nonexistent/sweep", 60);
        let out = std::process::Command::new("sh")
            .args(["-c", &cmd])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        let probe = parse_probe(&String::from_utf8_lossy(&out.stdout));
        // A failed attempt's result does not hide the next attempt's progress.
        assert_eq!(probe.progress.len(), 2, "{probe:?}");
        assert!(probe.progress.contains_key("c-s0"));
        assert_eq!(probe.progress["a-s0"], "{\"step\":2,\"note\":\"a: b\"}");
        assert_eq!(probe.results["b-s0"], JobState::Completed);
        assert_eq!(probe.acct_error, None);
        assert_eq!(
            probe.checkpoints,
            HashMap::from([("a-s0".to_string(), 12), ("c-s0".to_string(), 20)])
        );
        // An accounting file the user cannot read is said (else a finished job looks queued).
        let probe = parse_probe(
            "@@config\nJobCompType = jobcomp/filetxt\n@@acct\nsacct: fatal: open /var/log/slurm/jobcomp.log: Permission denied\n@@results\n",
        );
        assert!(probe.done.is_empty());
        assert!(probe
            .acct_error
            .is_some_and(|e| e.contains("Permission denied")));
    }
}
