//! `next_line_match`: on held-out target documents, the share of lines that greedy decoding
//! from the text before them reproduces exactly (whitespace-trimmed) — a learning metric for
//! code models too small for HumanEval.

use super::{Completion, MetricsError, StopRule, TextModel};

/// Lines of context a case needs before its line.
pub const MIN_CONTEXT_LINES: usize = 3;

/// Most bytes generated for one line.
pub const MAX_LINE_BYTES: usize = 160;

/// Most bytes of context kept before a line (the model drops what does not fit its window).
pub const MAX_CONTEXT_BYTES: usize = 2048;

/// A line to predict and the text before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextLineCase {
    /// The document up to the line (ends with a newline).
    pub context: String,
    /// The line, without its newline.
    pub expected: String,
}

/// The cases of one document: every line with at least `min_context` lines before it whose
/// trimmed text is not empty and fits [`MAX_LINE_BYTES`]. The context keeps its last
/// [`MAX_CONTEXT_BYTES`] bytes (at a character boundary).
pub fn document_cases(doc: &str, min_context: usize) -> Vec<NextLineCase> {
    let mut out = Vec::new();
    let mut start = 0usize;
    for (i, line) in doc.split_inclusive('\n').enumerate() {
        let end = start + line.len();
        // A last line without a newline cannot be told finished from cut; skip it.
        let body = line.strip_suffix('\n');
        if let Some(body) = body {
            if i >= min_context && !body.trim().is_empty() && body.len() < MAX_LINE_BYTES {
                let mut from = start.saturating_sub(MAX_CONTEXT_BYTES);
                while !doc.is_char_boundary(from) {
                    from += 1;
                }
                out.push(NextLineCase {
                    context: doc[from..start].to_string(),
                    expected: body.to_string(),
                });
            }
        }
        start = end;
    }
    out
}

/// `n` cases spread evenly over all documents' cases (all of them when there are fewer).
pub fn select_cases(docs: &[String], n: usize) -> Vec<NextLineCase> {
    let all: Vec<NextLineCase> = docs
        .iter()
        .flat_map(|d| document_cases(d, MIN_CONTEXT_LINES))
        .collect();
    if all.len() <= n {
        return all;
    }
    (0..n).map(|j| all[j * all.len() / n].clone()).collect()
}

/// Whether a completion's first line is the expected line, both whitespace-trimmed.
pub fn line_matches(completion: &str, expected: &str) -> bool {
    let first = completion.split('\n').next().unwrap_or("");
    first.trim() == expected.trim()
}

/// Greedy decoding of one line.
pub const DECODING: Completion = Completion {
    max_new: MAX_LINE_BYTES,
    temperature: 0.0,
    stop: StopRule::Newline,
};

/// The share of cases whose line the model reproduces (None when there are no cases).
pub fn next_line_match(
    cases: &[NextLineCase],
    model: &mut dyn TextModel,
) -> Result<Option<f64>, MetricsError> {
    if cases.is_empty() {
        return Ok(None);
    }
    let mut hits = 0usize;
    let prompts: Vec<&str> = cases.iter().map(|c| c.context.as_str()).collect();
    for (c, out) in cases.iter().zip(model.completions(&prompts, &DECODING)?) {
        if line_matches(&out, &c.expected) {
            hits += 1;
        }
    }
    Ok(Some(hits as f64 / cases.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_need_context_and_a_finished_nonblank_line() {
        let doc = "a\nb\nc\n  d = 1\n\ne\nunfinished";
        let cases = document_cases(doc, 3);
        assert_eq!(
            cases,
            vec![
                NextLineCase {
                    context: "a\nb\nc\n".into(),
                    expected: "  d = 1".into()
                },
                NextLineCase {
                    context: "a\nb\nc\n  d = 1\n\n".into(),
                    expected: "e".into()
                },
            ]
        );
        let docs = vec!["1\n2\n3\n4\n5\n6\n7\n".to_string(), "x\n".to_string()];
        // Four candidates (lines 4..7), two picked evenly: indices 0 and 2.
        let picked: Vec<String> = select_cases(&docs, 2)
            .into_iter()
            .map(|c| c.expected)
            .collect();
        assert_eq!(picked, vec!["4", "6"]);
        assert_eq!(select_cases(&docs, 10).len(), 4);
    }

    #[test]
    fn matching_trims_and_stops_at_the_newline() {
        assert!(line_matches("  return x  \nmore", "return x"));
        assert!(!line_matches("return y\n", "return x"));
        assert!(!line_matches("", "return x"));
    }

    /// Completes with the true line for contexts ending in an even digit.
    struct Half;

    impl TextModel for Half {
        fn complete(&mut self, prompt: &str, how: &Completion) -> Result<String, MetricsError> {
            assert_eq!(how.stop, StopRule::Newline);
            let last: u32 = prompt
                .trim_end()
                .chars()
                .last()
                .unwrap()
                .to_digit(10)
                .unwrap();
            Ok(if last.is_multiple_of(2) {
                format!(" {}\n", last + 1)
            } else {
                "?\n".into()
            })
        }
        fn loglikelihood(&mut self, _: &str, _: &str) -> Result<f64, MetricsError> {
            unreachable!()
        }
    }

    #[test]
    fn the_score_is_the_share_of_lines_reproduced() {
        let docs = vec!["1\n2\n3\n4\n5\n6\n7\n8\n".to_string()];
        let cases = select_cases(&docs, 10);
        // Lines 4..8: contexts end in 3, 4, 5, 6, 7; the even ones (4, 6) are right: 2/5.
        assert_eq!(next_line_match(&cases, &mut Half).unwrap(), Some(0.4));
        assert_eq!(next_line_match(&[], &mut Half).unwrap(), None);
    }
}
