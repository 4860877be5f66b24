//! The paper's forgetting benchmarks as lm-evaluation-harness scores them, from local JSONL files
//! in the Hugging Face datasets' layouts. Each item is a multiple choice by log-likelihood of a
//! continuation after a context (the harness puts one space between them):
//! - HellaSwag (`hellaswag`, validation split): context = preprocess(activity_label + ": " +
//!   ctx_a + " " + ctx_b.capitalize()), choices = preprocess(each ending), where preprocess
//!   strips, turns " [title]" into ". ", drops bracketed text and collapses double spaces;
//!   acc and acc_norm.
//! - ARC-Challenge (`arc_challenge`, test split): context = "Question: {question}\nAnswer:",
//!   choices = choices.text, gold = the index of answerKey in choices.label; acc and acc_norm.
//! - WinoGrande (`winogrande`, validation split, partial scoring): the contexts are the sentence
//!   up to "_" with each option put in, the continuation the rest after "_" (stripped), the same
//!   for both; acc only.
//!
//! acc is the argmax of the summed log-likelihood; acc_norm the argmax of it divided by the
//! choice's length in characters (not tokens). The first best wins a tie, as numpy's argmax.
//! The forgetting score reports HellaSwag's and ARC's acc_norm and WinoGrande's acc, averaged.

use std::path::Path;

use regex::Regex;
use serde_json::Value;

use super::{MetricsError, TextModel};

/// A benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// HellaSwag.
    Hellaswag,
    /// ARC-Challenge.
    ArcChallenge,
    /// WinoGrande.
    Winogrande,
}

impl Task {
    /// The metric prefix.
    pub fn name(self) -> &'static str {
        match self {
            Task::Hellaswag => "hellaswag",
            Task::ArcChallenge => "arc_challenge",
            Task::Winogrande => "winogrande",
        }
    }

    /// The accuracy the forgetting score takes from this task.
    pub fn reported(self) -> &'static str {
        match self {
            Task::Hellaswag | Task::ArcChallenge => "acc_norm",
            Task::Winogrande => "acc",
        }
    }
}

/// One item: contexts and continuations to score (one context and a continuation per choice,
/// or, partial scoring, a context per choice and one continuation), the gold choice, and each
/// choice's length in characters for acc_norm.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskItem {
    /// Contexts: one, or one per choice.
    pub contexts: Vec<String>,
    /// Continuations: one per choice, or one.
    pub continuations: Vec<String>,
    /// The right choice.
    pub gold: usize,
    /// Characters of each choice (acc_norm's denominator).
    pub lengths: Vec<usize>,
}

impl TaskItem {
    fn choices(&self) -> usize {
        self.contexts.len().max(self.continuations.len())
    }
}

/// HellaSwag's text clean-up.
pub fn preprocess(text: &str) -> String {
    let brackets = Regex::new(r"\[.*?\]").unwrap_or_else(|e| unreachable!("{e}"));
    let t = text.trim().replace(" [title]", ". ");
    brackets.replace_all(&t, "").replace("  ", " ")
}

/// Python's str.capitalize: the first character upper-case, the rest lower-case.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// The item of one JSON line of `task`'s file.
pub fn item(task: Task, v: &Value) -> Result<TaskItem, String> {
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("no string field \"{k}\""))
    };
    match task {
        Task::Hellaswag => {
            let ctx = format!("{} {}", s("ctx_a")?, capitalize(&s("ctx_b")?));
            let query = preprocess(&format!("{}: {ctx}", s("activity_label")?));
            let endings: Vec<String> = v
                .get("endings")
                .and_then(Value::as_array)
                .ok_or("no list field \"endings\"")?
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(preprocess)
                        .ok_or("an ending is not a string")
                })
                .collect::<Result<_, _>>()?;
            let label = v.get("label").ok_or("no field \"label\"")?;
            let gold = label
                .as_u64()
                .map(|x| x as usize)
                .or_else(|| label.as_str().and_then(|x| x.parse().ok()))
                .ok_or("\"label\" is not an index")?;
            Ok(one_context(query, endings, gold))
        }
        Task::ArcChallenge => {
            let choices = v.get("choices").ok_or("no field \"choices\"")?;
            let list = |k: &str| -> Result<Vec<String>, String> {
                choices
                    .get(k)
                    .and_then(Value::as_array)
                    .ok_or(format!("no list \"choices.{k}\""))?
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or(format!("choices.{k} holds a non-string"))
                    })
                    .collect()
            };
            let (text, labels) = (list("text")?, list("label")?);
            let key = s("answerKey")?;
            let gold = labels.iter().position(|l| *l == key).ok_or(format!(
                "answerKey {key:?} is not among choices.label {labels:?}"
            ))?;
            Ok(one_context(
                format!("Question: {}\nAnswer:", s("question")?),
                text,
                gold,
            ))
        }
        Task::Winogrande => {
            let sentence = s("sentence")?;
            let at = sentence.find('_').ok_or("the sentence has no \"_\"")?;
            let options = [s("option1")?, s("option2")?];
            let gold = match s("answer")?.as_str() {
                "1" => 0,
                "2" => 1,
                other => return Err(format!("\"answer\" is {other:?}, not \"1\" or \"2\"")),
            };
            let target = sentence[at + 1..].trim().to_string();
            Ok(TaskItem {
                contexts: options
                    .iter()
                    .map(|o| format!("{}{o}", &sentence[..at]))
                    .collect(),
                lengths: options.iter().map(|o| o.chars().count()).collect(),
                continuations: vec![format!(" {target}")],
                gold,
            })
        }
    }
}

fn one_context(context: String, choices: Vec<String>, gold: usize) -> TaskItem {
    TaskItem {
        lengths: choices.iter().map(|c| c.chars().count()).collect(),
        continuations: choices.iter().map(|c| format!(" {c}")).collect(),
        contexts: vec![context],
        gold,
    }
}

/// Read `task`'s JSONL file.
pub fn read_task(task: Task, path: &Path) -> Result<Vec<TaskItem>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|e| MetricsError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut items = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |msg: String| MetricsError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            msg: format!(
                "{msg} (a {} line as the Hugging Face dataset has it)",
                task.name()
            ),
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let it = item(task, &v).map_err(bad)?;
        if it.gold >= it.choices() {
            return Err(bad(format!("the gold choice {} is out of range", it.gold)));
        }
        items.push(it);
    }
    if items.is_empty() {
        return Err(MetricsError::File {
            path: path.to_path_buf(),
            msg: format!("no {} items", task.name()),
        });
    }
    Ok(items)
}

/// The index of the largest value, the first of equals (numpy's argmax).
fn argmax(v: &[f64]) -> Option<usize> {
    (0..v.len()).fold(None, |best: Option<usize>, i| match best {
        Some(b) if v[i] <= v[b] => Some(b),
        _ => Some(i),
    })
}

/// acc and acc_norm of `items` (None for no items).
pub fn score(
    items: &[TaskItem],
    model: &mut dyn TextModel,
) -> Result<Option<(f64, f64)>, MetricsError> {
    if items.is_empty() {
        return Ok(None);
    }
    // Every choice of every item in one list: the model batches them as it can.
    let requests: Vec<(&str, &str)> = items
        .iter()
        .flat_map(|it| {
            (0..it.choices()).map(|i| {
                let ctx = &it.contexts[i.min(it.contexts.len() - 1)];
                let cont = &it.continuations[i.min(it.continuations.len() - 1)];
                (ctx.as_str(), cont.as_str())
            })
        })
        .collect();
    let all = model.loglikelihoods(&requests)?;
    let (mut acc, mut norm) = (0usize, 0usize);
    let mut at = 0;
    for it in items {
        let lls = &all[at..at + it.choices()];
        at += it.choices();
        let normed: Vec<f64> = lls
            .iter()
            .zip(&it.lengths)
            .map(|(ll, len)| ll / (*len).max(1) as f64)
            .collect();
        acc += usize::from(argmax(lls) == Some(it.gold));
        norm += usize::from(argmax(&normed) == Some(it.gold));
    }
    let n = items.len() as f64;
    Ok(Some((acc as f64 / n, norm as f64 / n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Completion;
    use std::collections::HashMap;

    /// A model with scripted log-likelihoods per (context, continuation).
    struct Table(HashMap<(String, String), f64>, Vec<(String, String)>);

    impl TextModel for Table {
        fn complete(&mut self, _: &str, _: &Completion) -> Result<String, MetricsError> {
            unreachable!("multiple choice scores")
        }
        fn loglikelihood(&mut self, c: &str, x: &str) -> Result<f64, MetricsError> {
            self.1.push((c.to_string(), x.to_string()));
            Ok(*self
                .0
                .get(&(c.to_string(), x.to_string()))
                .unwrap_or(&-100.0))
        }
    }

    #[test]
    fn hellaswag_preprocessing_as_the_harness_does() {
        let v = serde_json::json!({
            "activity_label": "Baking cookies", "ctx_a": "A woman [header] opens the oven.",
            "ctx_b": "she", "label": "1",
            "endings": ["takes out a tray.", "Lay them out [title] Remove  the cookies [step] now."]
        });
        let it = item(Task::Hellaswag, &v).unwrap();
        assert_eq!(
            it.contexts,
            vec!["Baking cookies: A woman opens the oven. She"]
        );
        // Python's preprocess gives "Lay them out. Remove the cookies now." (37 characters).
        assert_eq!(
            it.continuations,
            vec![
                " takes out a tray.",
                " Lay them out. Remove the cookies now."
            ]
        );
        assert_eq!(it.gold, 1);
        assert_eq!(it.lengths, vec![17, 37]);
    }

    #[test]
    fn arc_gold_is_the_answer_key_index() {
        let v = serde_json::json!({"question": "Which is a gas?", "answerKey": "C",
            "choices": {"text": ["ice", "water", "steam"], "label": ["A", "B", "C"]}});
        let it = item(Task::ArcChallenge, &v).unwrap();
        assert_eq!(it.contexts, vec!["Question: Which is a gas?\nAnswer:"]);
        assert_eq!(it.continuations[2], " steam");
        assert_eq!(it.gold, 2);
        let bad = serde_json::json!({"question": "q", "answerKey": "E",
            "choices": {"text": ["a"], "label": ["A"]}});
        assert!(item(Task::ArcChallenge, &bad)
            .unwrap_err()
            .contains("answerKey \"E\""));
    }

    /// WinoGrande's partial scoring: two contexts, one shared continuation.
    #[test]
    fn winogrande_scores_the_continuation_under_each_context() {
        let v = serde_json::json!({"sentence": "The cup fit in the box because the _ was small.",
            "option1": "cup", "option2": "box", "answer": "1"});
        let it = item(Task::Winogrande, &v).unwrap();
        assert_eq!(
            it.contexts,
            vec![
                "The cup fit in the box because the cup",
                "The cup fit in the box because the box"
            ]
        );
        assert_eq!(it.continuations, vec![" was small."]);
        let mut m = Table(HashMap::new(), vec![]);
        m.0.insert((it.contexts[0].clone(), " was small.".into()), -3.0);
        m.0.insert((it.contexts[1].clone(), " was small.".into()), -5.0);
        assert_eq!(score(&[it], &mut m).unwrap(), Some((1.0, 1.0)));
        assert_eq!(m.1.len(), 2);
    }

    /// acc and acc_norm differ when the shorter choice has the larger total but the smaller
    /// per-character log-likelihood; a tie goes to the first choice.
    #[test]
    fn acc_norm_divides_by_characters() {
        let it = one_context("Q".into(), vec!["ab".into(), "abcdefgh".into()], 0);
        let mut m = Table(HashMap::new(), vec![]);
        m.0.insert(("Q".into(), " ab".into()), -2.0); // the larger total; -1 per character
        m.0.insert(("Q".into(), " abcdefgh".into()), -3.0); // -0.375 per character
        assert_eq!(
            score(std::slice::from_ref(&it), &mut m).unwrap(),
            Some((1.0, 0.0)),
            "acc picks the total, acc_norm the per-character"
        );
        let gold1 = TaskItem {
            gold: 1,
            ..it.clone()
        };
        assert_eq!(score(&[gold1], &mut m).unwrap(), Some((0.0, 1.0)));
        let mut tie = Table(HashMap::new(), vec![]);
        tie.0.insert(("Q".into(), " ab".into()), -1.0);
        tie.0.insert(("Q".into(), " abcdefgh".into()), -1.0);
        assert_eq!(
            score(&[it], &mut tie).unwrap(),
            Some((1.0, 0.0)),
            "first of equals"
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wg.jsonl");
        std::fs::write(&p, "{\"sentence\": \"no blank\", \"option1\": \"a\", \"option2\": \"b\", \"answer\": \"1\"}\n").unwrap();
        let e = read_task(Task::Winogrande, &p).unwrap_err().to_string();
        assert!(e.contains("wg.jsonl:1") && e.contains("no \"_\""), "{e}");
    }
}
