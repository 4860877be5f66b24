//! `multiple_choice_accuracy`: HellaSwag/ARC/WinoGrande-style accuracy by log-likelihood, on a
//! JSONL of `{"context": ..., "choices": [...], "label": i}`.
//!
//! Each choice is scored by the sum of the log-probabilities of its tokens after the context,
//! divided by its length in bytes, as lm-evaluation-harness's `acc_norm` does; the item is right
//! when the best-scoring choice is the label. The choice follows the context directly, so a
//! file whose choices should be separated by a space writes the space into the choice.

use std::path::Path;

use serde::Deserialize;

use super::{MetricsError, TextModel};

/// One question.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChoiceItem {
    /// The text before a choice.
    pub context: String,
    /// The candidate continuations.
    pub choices: Vec<String>,
    /// The index of the right one.
    pub label: usize,
}

/// Parse a multiple-choice JSONL (blank lines skipped); a malformed line is an error naming it.
pub fn parse_items(text: &str, path: &Path) -> Result<Vec<ChoiceItem>, MetricsError> {
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| MetricsError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let item: ChoiceItem = serde_json::from_str(line).map_err(|e| {
            bad(format!(
                "expected {{\"context\": str, \"choices\": [str], \"label\": int}}: {e}"
            ))
        })?;
        if item.choices.len() < 2 {
            return Err(bad("needs at least two choices".into()));
        }
        if item.label >= item.choices.len() {
            return Err(bad(format!(
                "label {} is not the index of one of the {} choices",
                item.label,
                item.choices.len()
            )));
        }
        if item.choices.iter().any(String::is_empty) {
            return Err(bad("a choice is empty".into()));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(MetricsError::File {
            path: path.to_path_buf(),
            msg: "no multiple-choice items".into(),
        });
    }
    Ok(items)
}

/// Read and parse a multiple-choice JSONL.
pub fn read_items(path: &Path) -> Result<Vec<ChoiceItem>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|e| MetricsError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    parse_items(&text, path)
}

/// The index of the best choice by log-likelihood per byte, from each choice's summed
/// log-likelihood and its byte length; the first wins a tie. None for no choices.
pub fn best_normalized(scores: &[(f64, usize)]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &(ll, bytes)) in scores.iter().enumerate() {
        let v = ll / bytes.max(1) as f64;
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// The share of items whose best normalized choice is the label (None for no items).
pub fn multiple_choice_accuracy(
    items: &[ChoiceItem],
    model: &mut dyn TextModel,
) -> Result<Option<f64>, MetricsError> {
    if items.is_empty() {
        return Ok(None);
    }
    let requests: Vec<(&str, &str)> = items
        .iter()
        .flat_map(|it| it.choices.iter().map(|c| (it.context.as_str(), c.as_str())))
        .collect();
    let mut all = model.loglikelihoods(&requests)?.into_iter();
    let mut right = 0usize;
    for item in items {
        let scores: Vec<(f64, usize)> = item
            .choices
            .iter()
            .map(|c| (all.next().unwrap_or(f64::NEG_INFINITY), c.len()))
            .collect();
        if best_normalized(&scores) == Some(item.label) {
            right += 1;
        }
    }
    Ok(Some(right as f64 / items.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Completion;

    #[test]
    fn normalization_by_bytes_changes_the_pick() {
        // Sums -6 over 3 bytes (-2/byte) and -4 over 1 byte (-4/byte): the raw sum prefers the
        // second, the normalized score the first.
        assert_eq!(best_normalized(&[(-6.0, 3), (-4.0, 1)]), Some(0));
        assert_eq!(best_normalized(&[(-1.0, 1), (-1.0, 1)]), Some(0));
        assert_eq!(best_normalized(&[(-9.0, 3), (-2.0, 1)]), Some(1));
        assert_eq!(best_normalized(&[]), None);
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let p = Path::new("mc.jsonl");
        let good = r#"{"context":"1 2 3","choices":[" 4"," x"],"label":0}"#;
        assert_eq!(
            parse_items(&format!("{good}\n\n{good}\n"), p)
                .unwrap()
                .len(),
            2
        );
        for (bad, want) in [
            ("{\"context\":\"a\"}", "mc.jsonl:3: expected"),
            (
                r#"{"context":"a","choices":["b","c"],"label":2}"#,
                "mc.jsonl:3: label 2",
            ),
            (
                r#"{"context":"a","choices":["b"],"label":0}"#,
                "mc.jsonl:3: needs at least",
            ),
            (
                r#"{"context":"a","choices":["b",""],"label":0}"#,
                "mc.jsonl:3: a choice",
            ),
            (
                r#"{"context":"a","choices":["b","c"],"label":-1}"#,
                "mc.jsonl:3: expected",
            ),
            ("not json", "mc.jsonl:3: expected"),
        ] {
            let err = parse_items(&format!("{good}\n\n{bad}\n"), p)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{err}");
        }
        assert!(parse_items("\n", p)
            .unwrap_err()
            .to_string()
            .contains("no multiple"));
    }

    /// Log-likelihood -1 per byte for a continuation that repeats the context's last word,
    /// -3 per byte for anything else.
    struct Repeats;

    impl TextModel for Repeats {
        fn complete(&mut self, _: &str, _: &Completion) -> Result<String, MetricsError> {
            unreachable!()
        }
        fn loglikelihood(&mut self, context: &str, cont: &str) -> Result<f64, MetricsError> {
            let last = context.split_whitespace().last().unwrap_or("");
            let per = if cont.trim() == last { -1.0 } else { -3.0 };
            Ok(per * cont.len() as f64)
        }
    }

    #[test]
    fn accuracy_is_the_share_of_labels_picked() {
        let text = [
            r#"{"context":"ab ab ab","choices":[" zz"," ab"],"label":1}"#,
            r#"{"context":"cd cd cd","choices":[" cd"," q"],"label":0}"#,
            r#"{"context":"ef ef ef","choices":[" ef"," q"],"label":1}"#,
        ]
        .join("\n");
        let items = parse_items(&text, Path::new("x")).unwrap();
        let acc = multiple_choice_accuracy(&items, &mut Repeats).unwrap();
        assert_eq!(acc, Some(2.0 / 3.0));
    }
}
