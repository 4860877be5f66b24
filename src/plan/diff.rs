//! Re-planning: which runs of a new plan are new, unchanged, or gone since the last plan.

use std::collections::HashSet;

/// How a new plan relates to the previous one, by run id.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlanDiff {
    /// Runs in the new plan only.
    pub new: Vec<String>,
    /// Runs in both.
    pub unchanged: Vec<String>,
    /// Runs in the previous plan only.
    pub gone: Vec<String>,
}

/// Compare run ids; order follows the new plan (then the old one for `gone`).
pub fn diff<'a>(
    previous: impl IntoIterator<Item = &'a str>,
    current: impl IntoIterator<Item = &'a str>,
) -> PlanDiff {
    let prev: Vec<&str> = previous.into_iter().collect();
    let prev_set: HashSet<&str> = prev.iter().copied().collect();
    let mut d = PlanDiff::default();
    let mut cur_set = HashSet::new();
    for id in current {
        cur_set.insert(id);
        if prev_set.contains(id) {
            d.unchanged.push(id.to_string());
        } else {
            d.new.push(id.to_string());
        }
    }
    d.gone = prev
        .into_iter()
        .filter(|id| !cur_set.contains(id))
        .map(String::from)
        .collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_runs_into_new_unchanged_gone() {
        let d = diff(["a", "b", "c"], ["b", "c", "d"]);
        assert_eq!(d.new, vec!["d"]);
        assert_eq!(d.unchanged, vec!["b", "c"]);
        assert_eq!(d.gone, vec!["a"]);
    }
}
