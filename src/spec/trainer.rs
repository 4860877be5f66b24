//! `[trainer]`: a user's training program instead of the builtin trainer, and the placeholders
//! its arguments may use (`crate::external_trainer` runs it).

use serde::{Deserialize, Serialize};

/// `[trainer]`: a user's training program that `sweep train` runs for each run (the contract
/// is in `external_trainer`'s documentation and the README).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerSpec {
    /// The program and its arguments, with `{placeholder}`s of the run's settings.
    pub command: Vec<String>,
    /// Arguments added to the command when the run goes on from a Hugging Face Trainer
    /// checkpoint: the newest complete `{run_dir}/checkpoint-N` folder is `{resume_from}`, e.g.
    /// `["--resume_from_checkpoint", "{resume_from}"]`; metrics.jsonl then keeps its lines up
    /// to that checkpoint's step, since the program measures the rest again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resume: Vec<String>,
}

/// The placeholders a command may use.
pub const PLACEHOLDERS: [&str; 21] = [
    "run_dir",
    "run_json",
    "id",
    "config_id",
    "sweep",
    "seed",
    "method",
    "learning_rate",
    "rank",
    "alpha",
    "dropout",
    "target_modules",
    "token_budget",
    "eval_at",
    "batch_size",
    "micro_batch_size",
    "seq_len",
    "model",
    "target",
    "source",
    "resume_from",
];

/// The placeholders of one argument, or what is wrong with its braces.
fn placeholders(arg: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        let (c, after) = (rest.as_bytes()[i], &rest[i + 1..]);
        if after.as_bytes().first() == Some(&c) {
            rest = &after[1..];
            continue;
        }
        if c == b'}' {
            return Err(format!(
                "{arg:?} has a lone `}}` (write `}}}}` for a brace)"
            ));
        }
        let end = after
            .find('}')
            .ok_or_else(|| format!("{arg:?} has an unclosed `{{` (write `{{{{` for a brace)"))?;
        out.push(&after[..end]);
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// Check a command as the planner does: not empty, and every placeholder known.
pub fn check(command: &[String]) -> Result<(), String> {
    if command.first().is_none_or(|p| p.trim().is_empty()) {
        return Err("give the program and its arguments, e.g. [\"python3\", \"train.py\", \"--lr\", \"{learning_rate}\"]".into());
    }
    check_args(command)
}

/// Check the `resume` arguments: every placeholder known, and `{resume_from}` among them (the
/// checkpoint is what they are for).
pub fn check_resume(args: &[String]) -> Result<(), String> {
    check_args(args)?;
    if !args.is_empty() && !args.iter().any(|a| a.contains("{resume_from}")) {
        return Err(format!(
            "{args:?} does not name the checkpoint: add \"{{resume_from}}\", e.g. [\"--resume_from_checkpoint\", \"{{resume_from}}\"]"
        ));
    }
    Ok(())
}

fn check_args(command: &[String]) -> Result<(), String> {
    for arg in command {
        for p in placeholders(arg)? {
            if !PLACEHOLDERS.contains(&p) {
                return Err(format!(
                    "{arg:?}: unknown placeholder {{{p}}} (known: {})",
                    PLACEHOLDERS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_checked() {
        let ok = |a: &[&str]| check(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        ok(&["python3", "t.py", "--lr={learning_rate}", "{{literal}}"]).unwrap();
        let e = ok(&["t", "{learnig_rate}"]).unwrap_err();
        assert!(
            e.contains("unknown placeholder {learnig_rate}") && e.contains("learning_rate"),
            "{e}"
        );
        assert!(ok(&["t", "{run_dir"]).unwrap_err().contains("unclosed"));
        assert!(ok(&["t", "a}b"]).unwrap_err().contains("lone"));
        assert!(ok(&[]).is_err());
        let resume =
            |a: &[&str]| check_resume(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        resume(&[]).unwrap();
        resume(&["--resume_from_checkpoint", "{resume_from}"]).unwrap();
        assert!(resume(&["--resume"]).unwrap_err().contains("{resume_from}"));
        assert!(resume(&["{resum}"])
            .unwrap_err()
            .contains("unknown placeholder"));
    }
}
