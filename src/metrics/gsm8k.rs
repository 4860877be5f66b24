//! GSM8K as lm-evaluation-harness scores it (its `gsm8k` task, version 3), from local JSONL
//! files of {"question", "answer"} where the answer ends in "#### N":
//! - prompt: the few-shot examples, each "Question: {question}\nAnswer: {answer}", joined by a
//!   blank line, then a blank line and "Question: {question}\nAnswer:";
//! - greedy decoding until "Question:", "</s>" or "<|im_end|>" (excluded), at most 256 tokens;
//! - strict-match: the first `#### (-?[0-9.,]+)`; flexible-extract: the last match of
//!   `(-?[$0-9.,]{2,})|(-?[0-9]+)`; no match is "[invalid]";
//! - exact match, ignoring case, after removing from both the answer and the reference ",",
//!   "$", everything through the last "#### ", and a trailing ".".
//!
//! The traps are the harness's too: "$29.00" is not "29", and a run-on continuation is cut at
//! the next "Question:". The harness draws its shots at random from the train split; here they are
//! the first N of the train file (or of the test file, whose first N are then not scored).

use std::path::Path;

use regex::Regex;

use super::{Completion, MetricsError, StopRule, TextModel};

/// Most new tokens of an answer (the harness's max_gen_toks).
pub const MAX_NEW_TOKENS: usize = 256;

/// Where decoding stops (the harness's `until`).
pub const STOP_SEQUENCES: &[&str] = &["Question:", "</s>", "<|im_end|>"];

/// The harness's answer for a completion with no number to extract.
pub const INVALID: &str = "[invalid]";

/// How answers are decoded.
pub const DECODING: Completion = Completion {
    max_new: MAX_NEW_TOKENS,
    temperature: 0.0,
    stop: StopRule::Gsm8k,
};

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gsm8kItem {
    /// The question.
    pub question: String,
    /// The reference solution, ending in "#### N".
    pub answer: String,
}

/// The prompt of `item` after the few-shot examples `shots`.
pub fn prompt(shots: &[Gsm8kItem], item: &Gsm8kItem) -> String {
    let mut p = String::new();
    for s in shots {
        p.push_str(&format!(
            "Question: {}\nAnswer: {}\n\n",
            s.question, s.answer
        ));
    }
    p.push_str(&format!("Question: {}\nAnswer:", item.question));
    p
}

/// The completion up to the first stop sequence (excluded).
pub fn cut(text: &str) -> &str {
    let end = STOP_SEQUENCES
        .iter()
        .filter_map(|s| text.find(s))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// The two extractions: strict-match and flexible-extract.
pub struct Extractors {
    strict: Regex,
    flexible: Regex,
    ignore: Vec<Regex>,
}

impl Default for Extractors {
    fn default() -> Self {
        Extractors::new()
    }
}

impl Extractors {
    /// The harness's patterns.
    pub fn new() -> Extractors {
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| unreachable!("fixed pattern {p}: {e}"));
        Extractors {
            strict: re(r"#### (\-?[0-9\.\,]+)"),
            flexible: re(r"(-?[$0-9.,]{2,})|(-?[0-9]+)"),
            ignore: vec![re(","), re(r"\$"), re(r"(?s).*#### "), re(r"\.$")],
        }
    }

    /// strict-match: the first group of the first match.
    pub fn strict(&self, completion: &str) -> String {
        self.strict
            .captures(completion)
            .and_then(|c| c.get(1))
            .map_or_else(|| INVALID.to_string(), |m| m.as_str().to_string())
    }

    /// flexible-extract: the last match, its first non-empty group.
    pub fn flexible(&self, completion: &str) -> String {
        self.flexible
            .captures_iter(completion)
            .last()
            .and_then(|c| c.get(1).or_else(|| c.get(2)))
            .map_or_else(|| INVALID.to_string(), |m| m.as_str().to_string())
    }

    /// The exact-match normalisation applied to predictions and references alike.
    pub fn normalize(&self, s: &str) -> String {
        let mut s = s.to_string();
        for r in &self.ignore {
            s = r.replace_all(&s, "").into_owned();
        }
        s.to_lowercase()
    }

    /// Whether `prediction` matches the reference solution `answer`.
    pub fn matches(&self, prediction: &str, answer: &str) -> bool {
        self.normalize(prediction) == self.normalize(answer)
    }
}

/// strict-match and flexible-extract accuracy over `items` (None for no items).
pub fn gsm8k_accuracy(
    shots: &[Gsm8kItem],
    items: &[Gsm8kItem],
    model: &mut dyn TextModel,
) -> Result<Option<(f64, f64)>, MetricsError> {
    if items.is_empty() {
        return Ok(None);
    }
    let x = Extractors::new();
    let (mut strict, mut flexible) = (0usize, 0usize);
    let prompts: Vec<String> = items.iter().map(|item| prompt(shots, item)).collect();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    for (item, out) in items.iter().zip(model.completions(&prompts, &DECODING)?) {
        let out = cut(&out);
        strict += usize::from(x.matches(&x.strict(out), &item.answer));
        flexible += usize::from(x.matches(&x.flexible(out), &item.answer));
    }
    let n = items.len() as f64;
    Ok(Some((strict as f64 / n, flexible as f64 / n)))
}

/// Read a GSM8K JSONL file: one {"question", "answer"} object per line, each answer with its
/// "#### N" line.
pub fn read_items(path: &Path) -> Result<Vec<Gsm8kItem>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|e| MetricsError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
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
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    bad(format!(
                        "no string field \"{k}\" (a GSM8K line is {{\"question\", \"answer\"}})"
                    ))
                })
        };
        let (question, answer) = (field("question")?, field("answer")?);
        if !answer.contains("#### ") {
            return Err(bad("the answer has no \"#### N\" line".into()));
        }
        items.push(Gsm8kItem { question, answer });
    }
    if items.is_empty() {
        return Err(MetricsError::File {
            path: path.to_path_buf(),
            msg: "no GSM8K items".into(),
        });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(q: &str, a: &str) -> Gsm8kItem {
        Gsm8kItem {
            question: q.into(),
            answer: a.into(),
        }
    }

    /// A model that answers from a script, and records the prompts it saw.
    struct Scripted {
        answers: Vec<String>,
        prompts: Vec<String>,
    }

    impl TextModel for Scripted {
        fn complete(&mut self, prompt: &str, how: &Completion) -> Result<String, MetricsError> {
            assert_eq!(how.temperature, 0.0, "greedy");
            self.prompts.push(prompt.to_string());
            Ok(self.answers.remove(0))
        }
        fn loglikelihood(&mut self, _: &str, _: &str) -> Result<f64, MetricsError> {
            unreachable!("GSM8K generates")
        }
    }

    #[test]
    fn the_prompt_is_the_harness_few_shot_format() {
        let shots = [item("1+1?", "1+1=2\n#### 2"), item("2+2?", "#### 4")];
        assert_eq!(
            prompt(&shots, &item("3+3?", "#### 6")),
            "Question: 1+1?\nAnswer: 1+1=2\n#### 2\n\nQuestion: 2+2?\nAnswer: #### 4\n\nQuestion: 3+3?\nAnswer:"
        );
        assert_eq!(prompt(&[], &item("q", "#### 1")), "Question: q\nAnswer:");
    }

    /// The extractions and the normalisation, on the traps the harness's users hit.
    #[test]
    fn strict_and_flexible_extraction_as_the_harness_does() {
        let x = Extractors::new();
        let gold = "She pays 3 x 4 = 12 dollars.\n#### 1,200";
        assert_eq!(x.strict("so #### 1,200\n"), "1,200");
        assert!(
            x.matches(&x.strict("so #### 1,200\n"), gold),
            "commas are ignored"
        );
        assert!(x.matches("1200.", gold), "a trailing period is ignored");
        // "$29.00" is not "29": the dollar sign goes, the decimals stay.
        let gold29 = "#### 29";
        assert_eq!(x.flexible("The total is $29.00"), "$29.00");
        assert!(!x.matches(&x.flexible("The total is $29.00"), gold29));
        assert!(x.matches(&x.flexible("The total is $29"), gold29));
        // No "#### " line: strict is invalid, flexible takes the last number (one digit too).
        assert_eq!(x.strict("it is 7"), INVALID);
        assert_eq!(x.flexible("3 apples and 7"), "7");
        assert_eq!(x.flexible("no numbers"), INVALID);
        // strict takes the first answer line, flexible the last number.
        assert_eq!(x.strict("#### 5\n#### 6"), "5");
        assert_eq!(x.flexible("#### 5\n#### -6"), "-6");
    }

    /// A run-on continuation (the model starts the next few-shot question) is cut at
    /// "Question:": without the cut, flexible-extract would take that question's number.
    #[test]
    fn a_run_on_continuation_is_cut_before_scoring() {
        let items = [item("2+3?", "2+3=5\n#### 5"), item("10-4?", "#### 6")];
        let mut m = Scripted {
            answers: vec![
                " 2+3=5\n#### 5\n\nQuestion: Tom has 7 apples and eats 2. #### 5".into(),
                " It is $6.00</s> and 9".into(),
            ],
            prompts: vec![],
        };
        let (strict, flexible) = gsm8k_accuracy(&[], &items, &mut m).unwrap().unwrap();
        // Item 1: both right. Item 2: strict finds no "####"; flexible takes "$6.00" -> "6.00",
        // which is not "6".
        assert_eq!((strict, flexible), (0.5, 0.5));
        assert_eq!(cut("a Question: b"), "a ");
        assert_eq!(cut("a<|im_end|>b</s>"), "a");
        let x = Extractors::new();
        let run_on = " 2+3=5\n#### 5\n\nQuestion: Tom has 7 apples. Answer: 9";
        assert_eq!(
            x.flexible(run_on),
            "9",
            "uncut, the last number is the next question's"
        );
        assert_eq!(x.flexible(cut(run_on)), "5");
    }

    #[test]
    fn bad_files_are_named_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gsm8k.jsonl");
        std::fs::write(
            &p,
            "{\"question\": \"q\", \"answer\": \"#### 1\"}\n{\"question\": \"q\"}\n",
        )
        .unwrap();
        let e = read_items(&p).unwrap_err().to_string();
        assert!(
            e.contains("gsm8k.jsonl:2") && e.contains("\"answer\""),
            "{e}"
        );
        std::fs::write(&p, "{\"question\": \"q\", \"answer\": \"4\"}\n").unwrap();
        assert!(read_items(&p)
            .unwrap_err()
            .to_string()
            .contains("no \"#### N\" line"));
        std::fs::write(&p, "\n").unwrap();
        assert!(read_items(&p)
            .unwrap_err()
            .to_string()
            .contains("no GSM8K items"));
    }
}
