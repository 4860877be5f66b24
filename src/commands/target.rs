//! What a command is pointed at, resolved once before it runs: every command that acts on a
//! sweep takes its spec or its results folder (results/NAME, which holds a copy of the spec and
//! the path it was planned from), and `export` takes a run's folder or its id.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::UsageError;
use crate::plan::Plan;
use crate::spec::SpecSource;
use crate::util::write_atomic;

/// The copy of the spec a results folder was planned from.
pub const SPEC_COPY: &str = "spec.toml";
/// The absolute path of the spec a results folder was planned from (one line).
pub const SPEC_ORIGIN: &str = "spec.origin";

/// Write a sweep's plan.jsonl, the copy of its spec and the path of that spec into its results
/// folder: what lets a later command be pointed at the folder instead of the spec.
pub fn write_plan_files(dir: &Path, plan: &Plan, src: &SpecSource) -> anyhow::Result<()> {
    let plan_file = dir.join("plan.jsonl");
    write_atomic(&plan_file, |w| plan.write_jsonl(w))
        .with_context(|| format!("writing {}", plan_file.display()))?;
    let copy = dir.join(SPEC_COPY);
    write_atomic(&copy, |w| w.write_all(src.text.as_bytes()))
        .with_context(|| format!("writing {}", copy.display()))?;
    // The copy itself is not an origin: a command pointed at the folder keeps the first one.
    let origin = std::path::absolute(&src.path).unwrap_or_else(|_| src.path.clone());
    if std::fs::canonicalize(&origin).ok() != std::fs::canonicalize(&copy).ok() {
        let file = dir.join(SPEC_ORIGIN);
        write_atomic(&file, |w| writeln!(w, "{}", origin.display()))
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// A sweep named by its results folder.
#[derive(Debug, PartialEq)]
pub struct SweepFolder {
    /// The spec to plan: the one the folder was planned from when it is still there unchanged
    /// (its relative model paths then resolve as they did), else the folder's copy of it.
    pub spec: PathBuf,
    /// The results root holding the folder.
    pub root: PathBuf,
    /// What to say when the origin spec was edited since: the command acts on the copy.
    pub note: Option<String>,
}

/// The sweep of results folder `arg`; `None` when `arg` is not a folder (a spec file, planned
/// as it is).
pub fn sweep_folder(arg: &Path) -> anyhow::Result<Option<SweepFolder>> {
    if !arg.is_dir() {
        return Ok(None);
    }
    let copy = arg.join(SPEC_COPY);
    let text = match std::fs::read_to_string(&copy) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(UsageError(format!(
                "{} is a folder but not a sweep's results folder (it has no {SPEC_COPY}): give the sweep's spec, or its results/NAME folder",
                arg.display()
            ))
            .into())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", copy.display())),
    };
    let origin = std::fs::read_to_string(arg.join(SPEC_ORIGIN))
        .ok()
        .map(|l| PathBuf::from(l.trim_end_matches('\n')));
    let origin_text = origin
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let (spec, note) = match (origin, origin_text) {
        (Some(o), Some(t)) if t == text => (o, None),
        (Some(o), Some(_)) => (
            copy.clone(),
            Some(format!(
                "{} changed since {} was planned: this acts on the sweep as planned ({}); `sweep plan {}` shows what the change would do",
                o.display(),
                arg.display(),
                copy.display(),
                o.display()
            )),
        ),
        _ => (copy, None),
    };
    // The folder itself, through any symlink or `..`: its name is the sweep's.
    let dir = std::fs::canonicalize(arg).with_context(|| format!("locating {}", arg.display()))?;
    let root = dir.parent().map(Path::to_path_buf).unwrap_or(dir.clone());
    Ok(Some(SweepFolder { spec, root, note }))
}

/// Check that a plan made from a results folder's spec is the one the folder holds: same sweep
/// name as the folder, same run ids as its plan.jsonl.
pub fn check_folder_plan(dir: &Path, plan: &Plan, spec: &Path) -> anyhow::Result<()> {
    let folder = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    if folder.as_deref() != Some(plan.name.as_str()) {
        return Err(UsageError(format!(
            "{} holds sweep `{}` but is named `{}`: results live in results/NAME; point the command at the spec with --results set to the folder's parent",
            dir.display(),
            plan.name,
            folder.unwrap_or_default()
        ))
        .into());
    }
    let planned: Vec<&str> = plan.runs.iter().map(|r| r.id.as_str()).collect();
    if let Some(ids) = super::previous_run_ids(&dir.join("plan.jsonl"))? {
        if ids.iter().map(String::as_str).ne(planned.iter().copied()) {
            return Err(UsageError(format!(
                "{} plans other runs than {}/plan.jsonl holds (the spec or a file it names changed since): point the command at the spec itself",
                spec.display(),
                dir.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// A run named by its folder (results/NAME/runs/ID) or by its id, looked up in every sweep of
/// the results root.
pub fn run_folder(results: &Path, arg: &Path) -> anyhow::Result<PathBuf> {
    if arg.is_dir() || arg.components().count() > 1 {
        return Ok(arg.to_path_buf());
    }
    let id = arg.to_string_lossy();
    let mut found: Vec<PathBuf> = std::fs::read_dir(results)
        .into_iter()
        .flatten()
        .flatten()
        .map(|sweep| sweep.path().join("runs").join(&*id))
        .filter(|d| d.join("run.json").is_file())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(UsageError(format!(
            "no run `{id}` in {}: give the run's folder (results/NAME/runs/ID) or an id `sweep status SPEC -v` lists (with --results DIR where the sweep's results are elsewhere)",
            results.display()
        ))
        .into()),
        _ => Err(UsageError(format!(
            "run `{id}` is in {} sweeps ({}): give the run's folder",
            found.len(),
            found
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_is_found_in_the_one_sweep_that_holds_it() {
        let root = tempfile::tempdir().unwrap();
        for (sweep, id) in [("a", "r1"), ("b", "r2"), ("c", "r2")] {
            let d = root.path().join(sweep).join("runs").join(id);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("run.json"), "{}").unwrap();
        }
        let found = run_folder(root.path(), Path::new("r1")).unwrap();
        assert_eq!(found, root.path().join("a/runs/r1"));
        let twice = run_folder(root.path(), Path::new("r2")).unwrap_err();
        assert!(format!("{twice}").contains("is in 2 sweeps"), "{twice}");
        let none = run_folder(root.path(), Path::new("r9")).unwrap_err();
        assert!(format!("{none}").contains("no run `r9`"), "{none}");
    }

    #[test]
    fn a_folder_names_its_origin_spec_while_unchanged_else_its_copy() {
        let root = tempfile::tempdir().unwrap();
        let spec = root.path().join("s.toml");
        std::fs::write(&spec, "name = \"x\"\n").unwrap();
        let dir = root.path().join("results/x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SPEC_COPY), "name = \"x\"\n").unwrap();
        std::fs::write(dir.join(SPEC_ORIGIN), format!("{}\n", spec.display())).unwrap();
        let found = sweep_folder(&dir).unwrap().unwrap();
        assert_eq!(found.spec, spec);
        assert_eq!(found.root, root.path().join("results"));
        assert_eq!(found.note, None);
        // Edited since: the copy, and a note that says so and how to see the change.
        std::fs::write(&spec, "name = \"x\"\n# edited\n").unwrap();
        let found = sweep_folder(&dir).unwrap().unwrap();
        assert_eq!(found.spec, dir.join(SPEC_COPY));
        let note = found.note.unwrap();
        assert!(
            note.contains("s.toml changed since") && note.contains("`sweep plan "),
            "{note}"
        );
        // Gone: the copy, silently (nothing was edited).
        std::fs::remove_file(&spec).unwrap();
        let found = sweep_folder(&dir).unwrap().unwrap();
        assert_eq!((found.spec, found.note), (dir.join(SPEC_COPY), None));
        assert!(sweep_folder(&spec).unwrap().is_none());
        let bare = root.path().join("bare");
        std::fs::create_dir_all(&bare).unwrap();
        let e = sweep_folder(&bare).unwrap_err();
        assert!(
            format!("{e}").contains("not a sweep's results folder"),
            "{e}"
        );
    }
}
