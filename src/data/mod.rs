//! The tool's own data: generated math word problems and answer extraction, and the builtin data
//! sets that are generated rather than fetched. (Fetched corpora come from scripts/setup-data;
//! loading and tokenizing them is the trainer's.)

pub mod math;

use std::path::{Path, PathBuf};

/// Training problems written for `builtin:math`.
pub const MATH_TRAIN_PROBLEMS: usize = 20_000;

/// Make a generated builtin data set exist under `data_dir`, returning its path, or None when
/// `name` is not a generated one. `math` becomes `math.jsonl`: prompt/response pairs of the
/// generator's train split (the report's accuracy uses its disjoint eval split).
pub fn materialize(name: &str, data_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    if name != "math" {
        return Ok(None);
    }
    let path = data_dir.join("math.jsonl");
    if path.exists() {
        return Ok(Some(path));
    }
    let problems = math::generate(math::Split::Train, MATH_TRAIN_PROBLEMS, 0);
    crate::util::write_atomic(&path, |w| {
        for p in &problems {
            let line = serde_json::to_string(p).map_err(std::io::Error::other)?;
            writeln!(w, "{line}")?;
        }
        Ok(())
    })?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn math_is_generated_once_into_the_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let p = materialize("math", dir.path()).unwrap().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), MATH_TRAIN_PROBLEMS);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert!(
            first["prompt"].is_string() && first["response"].as_str().unwrap().contains("####")
        );
        assert_eq!(materialize("python", dir.path()).unwrap(), None);
    }
}
