//! The metrics as trainer [`Evaluator`]s: each holds its fixed inputs (problems, lines,
//! prompts, items), chosen once when the run starts, and scores the model at every evaluation.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::data::Example;
use super::eval::{Evaluator, Stop};
use super::TrainError;
use crate::data::math::MathProblem;
use crate::metrics::diversity::{diversity_scores, sample, text_prompt};
use crate::metrics::humaneval::{humaneval_pass_at_1, HumanEvalTask, Outcome, Sandbox};
use crate::metrics::lm::{Framing, LlamaText};
use crate::metrics::math::math_accuracy;
use crate::metrics::multiple_choice::{multiple_choice_accuracy, read_items, ChoiceItem};
use crate::metrics::next_line::{next_line_match, select_cases, NextLineCase};
use crate::metrics::tasks::{Task, TaskItem};
use crate::model::llama::Llama;
use crate::model::tokenizer::Tokenizer;
use crate::spec::{EvaluationSpec, Metric, Regime};

/// The metrics this module measures.
pub const METRICS: [Metric; 9] = [
    Metric::MathAccuracy,
    Metric::Humaneval,
    Metric::NextLine,
    Metric::Diversity,
    Metric::MultipleChoice,
    Metric::Gsm8k,
    Metric::Hellaswag,
    Metric::ArcChallenge,
    Metric::Winogrande,
];

/// `math_accuracy` on fixed held-out problems.
#[derive(Debug)]
pub struct MathAccuracyEval {
    /// The problems.
    pub problems: Vec<MathProblem>,
}

impl Evaluator for MathAccuracyEval {
    fn scoring(&self) -> Option<String> {
        Some(format!(
            "math_accuracy: exact match of the number after \"####\" in a greedy completion (to the end of that line, at most {} bytes) of the problem's prompt as IFT training shows it, {} generated held-out problems",
            crate::metrics::math::MAX_SOLUTION_BYTES,
            self.problems.len()
        ))
    }

    fn items(&self) -> BTreeMap<String, u64> {
        counted(&["math_accuracy"], self.problems.len())
    }

    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let acc = math_accuracy(&self.problems, &mut LlamaText::new(model, tok, stop))?;
        Ok(acc
            .map(|a| ("math_accuracy".to_string(), a))
            .into_iter()
            .collect())
    }
}

/// `next_line_match` on fixed held-out lines.
#[derive(Debug)]
pub struct NextLineEval {
    /// The lines and their contexts.
    pub cases: Vec<NextLineCase>,
}

impl Evaluator for NextLineEval {
    fn scoring(&self) -> Option<String> {
        Some(format!(
            "next_line_match: exact match (whitespace-trimmed) of a greedy completion, to its first line end, with the held-out line that follows the text before it, {} lines",
            self.cases.len()
        ))
    }

    fn items(&self) -> BTreeMap<String, u64> {
        counted(&["next_line_match"], self.cases.len())
    }

    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let mut lm = LlamaText::new(model, tok, stop).framed(Framing::Plain);
        let m = next_line_match(&self.cases, &mut lm)?;
        Ok(m.map(|a| ("next_line_match".to_string(), a))
            .into_iter()
            .collect())
    }
}

/// The diversity metrics of `samples` seeded samples per prompt.
#[derive(Debug)]
pub struct DiversityEval {
    /// The prompts.
    pub prompts: Vec<String>,
    /// Samples per prompt.
    pub samples: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Seed of the sampler, the same at every evaluation.
    pub seed: u64,
    /// How the prompts are framed: plain, or known tokens where a chat template framed them.
    pub framing: Framing,
    /// The tokens of prompts framed by a chat template, by their text.
    pub known: HashMap<String, Vec<i64>>,
}

impl Evaluator for DiversityEval {
    fn samples(&self) -> bool {
        true
    }

    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let groups = sample(
            &self.prompts,
            self.samples,
            self.temperature,
            self.seed,
            &mut LlamaText::new(model, tok, stop)
                .framed(self.framing)
                .with_known(&self.known),
        )?;
        Ok(diversity_scores(&groups)
            .map(|s| s.named())
            .unwrap_or_default())
    }
}

/// `multiple_choice_accuracy` on a fixed set of items.
#[derive(Debug)]
pub struct MultipleChoiceEval {
    /// The items.
    pub items: Vec<ChoiceItem>,
}

impl Evaluator for MultipleChoiceEval {
    fn scoring(&self) -> Option<String> {
        Some(format!(
            "multiple_choice_accuracy: the choice with the highest log-likelihood after the context per byte (acc_norm) is the label's, {} items",
            self.items.len()
        ))
    }

    fn items(&self) -> BTreeMap<String, u64> {
        counted(&["multiple_choice_accuracy"], self.items.len())
    }

    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let acc = multiple_choice_accuracy(&self.items, &mut LlamaText::new(model, tok, stop))?;
        Ok(acc
            .map(|a| ("multiple_choice_accuracy".to_string(), a))
            .into_iter()
            .collect())
    }
}

/// `gsm8k_strict` and `gsm8k_flexible` (lm-evaluation-harness's strict-match and
/// flexible-extract) on the first items of a GSM8K file.
#[derive(Debug)]
pub struct Gsm8kEval {
    /// The few-shot examples.
    pub shots: Vec<crate::metrics::gsm8k::Gsm8kItem>,
    /// The items scored.
    pub items: Vec<crate::metrics::gsm8k::Gsm8kItem>,
}

impl Evaluator for Gsm8kEval {
    fn items(&self) -> BTreeMap<String, u64> {
        counted(&["gsm8k_strict", "gsm8k_flexible"], self.items.len())
    }

    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let acc = crate::metrics::gsm8k::gsm8k_accuracy(
            &self.shots,
            &self.items,
            &mut LlamaText::new(model, tok, stop),
        )?;
        Ok(acc
            .map(|(strict, flexible)| {
                [
                    ("gsm8k_strict".to_string(), strict),
                    ("gsm8k_flexible".to_string(), flexible),
                ]
            })
            .into_iter()
            .flatten()
            .collect())
    }
}

/// What the GSM8K evaluation of `spec` scores and how, for result.json's notes; the evaluator.
pub fn gsm8k(spec: &EvaluationSpec, n: usize) -> Result<(Gsm8kEval, String), TrainError> {
    use crate::metrics::gsm8k::read_items;
    let path = spec.gsm8k.as_ref().ok_or_else(|| {
        TrainError::Data(
            "the gsm8k metric needs evaluation.gsm8k, a JSONL of {\"question\", \"answer\"} \
             (GSM8K's test split; answers end in \"#### N\")"
                .into(),
        )
    })?;
    let shots_n = spec.gsm8k_shots.unwrap_or(5) as usize;
    let mut items = read_items(path)?;
    let (shots, from) = match &spec.gsm8k_train {
        Some(train) => {
            let mut t = read_items(train)?;
            t.truncate(shots_n);
            (t, format!("the first {shots_n} of {}", train.display()))
        }
        None => {
            let rest = items.split_off(shots_n.min(items.len()));
            (
                std::mem::replace(&mut items, rest),
                format!("the first {shots_n} of {} (not scored)", path.display()),
            )
        }
    };
    if shots.len() < shots_n {
        return Err(TrainError::Data(format!(
            "evaluation.gsm8k_shots = {shots_n}, but only {} examples are there for it",
            shots.len()
        )));
    }
    items.truncate(n);
    if items.is_empty() {
        return Err(TrainError::Data(format!(
            "{}: no GSM8K items left to score after the few-shot examples",
            path.display()
        )));
    }
    let note = format!(
        "gsm8k: lm-evaluation-harness's gsm8k (v3) format and scoring: {shots_n}-shot ({from}), \
         \"Question: ...\\nAnswer:\", greedy to \"Question:\"/</s>/<|im_end|> (at most {} tokens), \
         strict-match (gsm8k_strict) and flexible-extract (gsm8k_flexible), {} items of {}",
        crate::metrics::gsm8k::MAX_NEW_TOKENS,
        items.len(),
        path.display()
    );
    Ok((Gsm8kEval { shots, items }, note))
}

/// The forgetting benchmarks (lm-evaluation-harness's formats): `<task>_acc`, `<task>_acc_norm`
/// (not WinoGrande) and, when all three are measured, `forgetting_score`: the mean of
/// HellaSwag's and ARC-Challenge's acc_norm and WinoGrande's acc, the paper's forgetting score.
#[derive(Debug)]
pub struct SourceTasksEval {
    /// Each task with its first items.
    pub tasks: Vec<(Task, Vec<TaskItem>)>,
}

impl Evaluator for SourceTasksEval {
    /// Each task's metrics count its items; the forgetting score, a mean of three tasks, counts
    /// the fewest of them.
    fn items(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (task, items) in &self.tasks {
            let n = items.len() as u64;
            out.insert(format!("{}_acc", task.name()), n);
            if *task != Task::Winogrande {
                out.insert(format!("{}_acc_norm", task.name()), n);
            }
        }
        if self.tasks.len() == 3 {
            let fewest = self.tasks.iter().map(|(_, i)| i.len() as u64).min();
            out.extend(fewest.map(|n| ("forgetting_score".to_string(), n)));
        }
        out
    }

    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let mut out = BTreeMap::new();
        let mut reported = Vec::new();
        for (task, items) in &self.tasks {
            let Some((acc, norm)) =
                crate::metrics::tasks::score(items, &mut LlamaText::new(model, tok, stop))?
            else {
                continue;
            };
            out.insert(format!("{}_acc", task.name()), acc);
            if *task != Task::Winogrande {
                out.insert(format!("{}_acc_norm", task.name()), norm);
            }
            reported.push(if task.reported() == "acc" { acc } else { norm });
        }
        if reported.len() == 3 {
            out.insert(
                "forgetting_score".into(),
                reported.iter().sum::<f64>() / 3.0,
            );
        }
        Ok(out)
    }
}

/// The forgetting benchmarks asked for in `metrics`, each read from its file (first `n` items),
/// and a note of how they are scored; None when none is asked for.
pub fn source_tasks(
    metrics: &[Metric],
    spec: &EvaluationSpec,
    n: usize,
) -> Result<Option<(SourceTasksEval, String)>, TrainError> {
    let wanted = [
        (
            Metric::Hellaswag,
            Task::Hellaswag,
            &spec.hellaswag,
            "hellaswag",
        ),
        (
            Metric::ArcChallenge,
            Task::ArcChallenge,
            &spec.arc_challenge,
            "arc_challenge",
        ),
        (
            Metric::Winogrande,
            Task::Winogrande,
            &spec.winogrande,
            "winogrande",
        ),
    ];
    let mut tasks = Vec::new();
    let mut said = Vec::new();
    for (metric, task, path, key) in wanted {
        if !metrics.contains(&metric) {
            continue;
        }
        let path = path.as_ref().ok_or_else(|| {
            TrainError::Data(format!(
                "the {key} metric needs evaluation.{key}, the path of a JSONL of its Hugging Face \
                 dataset's lines"
            ))
        })?;
        let mut items = crate::metrics::tasks::read_task(task, path)?;
        items.truncate(n);
        said.push(format!(
            "{key} ({} items of {}, reports {})",
            items.len(),
            path.display(),
            task.reported()
        ));
        tasks.push((task, items));
    }
    if tasks.is_empty() {
        return Ok(None);
    }
    let note = format!(
        "forgetting benchmarks in lm-evaluation-harness's formats (log-likelihood of \" \" + choice; \
         acc_norm per character; WinoGrande by partial scoring): {}{}",
        said.join(", "),
        if tasks.len() == 3 {
            "; forgetting_score = their mean"
        } else {
            "; forgetting_score needs all three"
        }
    );
    Ok(Some((SourceTasksEval { tasks }, note)))
}

/// `humaneval_pass@1` on the first tasks of a HumanEval file.
#[derive(Debug)]
pub struct HumanEvalEval {
    /// The tasks.
    pub tasks: Vec<HumanEvalTask>,
    /// Where their programs run.
    pub sandbox: Sandbox,
    /// Samples per task for pass@k (0: greedy only), their temperature, and the run's seed.
    pub samples: u64,
    /// The sampling temperature.
    pub temperature: f64,
    /// The seed the samples are drawn with.
    pub seed: u64,
}

impl Evaluator for HumanEvalEval {
    fn scoring(&self) -> Option<String> {
        let sampled = if self.samples > 0 {
            format!(
                "; humaneval_pass@k_sampled: the unbiased pass@k estimator over {} samples per task at temperature {}",
                self.samples, self.temperature
            )
        } else {
            String::new()
        };
        Some(format!(
            "humaneval_pass@1: the task's prompt verbatim, a greedy completion to the end of the function, run against the task's tests in the sandbox, {} tasks{sampled}",
            self.tasks.len()
        ))
    }

    fn items(&self) -> BTreeMap<String, u64> {
        let mut out = counted(&["humaneval_pass@1"], self.tasks.len());
        for k in [1, 10, 100].into_iter().filter(|&k| k <= self.samples) {
            out.insert(
                format!("humaneval_pass@{k}_sampled"),
                self.tasks.len() as u64,
            );
        }
        out
    }

    fn evaluate(
        &self,
        model: &Llama,
        tok: &Tokenizer,
        stop: Stop<'_>,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let p = humaneval_pass_at_1(
            &self.tasks,
            &mut LlamaText::new(model, tok, stop),
            &self.sandbox,
        )?;
        let mut out: BTreeMap<String, f64> = p
            .map(|a| ("humaneval_pass@1".to_string(), a))
            .into_iter()
            .collect();
        if self.samples > 0 {
            let sampled = crate::metrics::humaneval::humaneval_pass_at_k_sampled(
                &self.tasks,
                self.samples,
                self.temperature,
                &[1, 10, 100],
                self.seed,
                &mut LlamaText::new(model, tok, stop),
                &self.sandbox,
            )?;
            for (k, v) in sampled.unwrap_or_default() {
                out.insert(format!("humaneval_pass@{k}_sampled"), v);
            }
        }
        Ok(out)
    }

    fn samples(&self) -> bool {
        self.samples > 0
    }
}

/// The metrics `names`, each a proportion of `n` items.
fn counted(names: &[&str], n: usize) -> BTreeMap<String, u64> {
    names.iter().map(|m| (m.to_string(), n as u64)).collect()
}

/// Whether the run's examples are instruction pairs a chat template framed.
fn chat_framed(regime: Regime, tok: &Tokenizer) -> bool {
    regime == Regime::Ift && tok.chat().is_some()
}

/// The prompt of a held-out example: an instruction pair's prompt, or a plain document's start.
/// A prompt framed by a chat template is its text with the markup written out (its tokens are
/// the example's own: [`Framing::Known`]).
pub fn prompt_of(example: &Example, regime: Regime, tok: &Tokenizer) -> Result<String, TrainError> {
    let prompt = &example.tokens[..example.prompt_len.min(example.tokens.len())];
    Ok(match regime {
        Regime::Ift if chat_framed(regime, tok) => tok.decode_verbatim(prompt)?,
        Regime::Ift => tok.decode(prompt)?,
        Regime::Cpt => text_prompt(&tok.decode(&example.tokens)?),
    })
}

/// The evaluators of the requested metrics among [`METRICS`], with inputs from the held-out
/// target examples (`evaluation.problems` problems, lines, prompts, items or tasks each).
/// HumanEval reads `evaluation.humaneval`, else `humaneval/HumanEval.jsonl.gz` under `data_dir`.
pub fn build(
    metrics: &[Metric],
    spec: &EvaluationSpec,
    data_dir: &Path,
    regime: Regime,
    held: &[Example],
    seed: u64,
    tok: &Tokenizer,
) -> Result<Vec<Box<dyn Evaluator>>, TrainError> {
    let n = spec.problems as usize;
    let mut out: Vec<Box<dyn Evaluator>> = Vec::new();
    if metrics.contains(&Metric::MathAccuracy) {
        out.push(Box::new(MathAccuracyEval {
            problems: crate::metrics::math::eval_problems(n),
        }));
    }
    if metrics.contains(&Metric::NextLine) {
        // Pairs framed by a chat template: the lines are the responses' (the markup is no line
        // to predict), read as plain text.
        let framed = chat_framed(regime, tok);
        let docs: Vec<String> = held
            .iter()
            .map(|e| match framed {
                true => tok.decode(&e.tokens[e.prompt_len.min(e.tokens.len())..]),
                false => tok.decode(&e.tokens),
            })
            .collect::<Result<_, _>>()?;
        out.push(Box::new(NextLineEval {
            cases: select_cases(&docs, n),
        }));
    }
    if metrics.contains(&Metric::Diversity) {
        let framed = chat_framed(regime, tok);
        let (mut prompts, mut known) = (Vec::new(), HashMap::new());
        for e in held {
            if prompts.len() == n {
                break;
            }
            let p = prompt_of(e, regime, tok)?;
            if p.is_empty() {
                continue;
            }
            if framed {
                known
                    .entry(p.clone())
                    .or_insert_with(|| e.tokens[..e.prompt_len.min(e.tokens.len())].to_vec());
            }
            prompts.push(p);
        }
        out.push(Box::new(DiversityEval {
            prompts,
            samples: spec.diversity_samples as usize,
            temperature: spec.temperature,
            seed,
            framing: if framed {
                Framing::Known
            } else {
                Framing::Plain
            },
            known,
        }));
    }
    if metrics.contains(&Metric::MultipleChoice) {
        let path = spec.multiple_choice.as_ref().ok_or_else(|| {
            TrainError::Data(
                "the multiple_choice metric needs evaluation.multiple_choice, a JSONL of \
                 {\"context\", \"choices\", \"label\"}"
                    .into(),
            )
        })?;
        let mut items = read_items(path)?;
        items.truncate(n);
        out.push(Box::new(MultipleChoiceEval { items }));
    }
    if metrics.contains(&Metric::Humaneval) {
        let path = spec
            .humaneval
            .clone()
            .unwrap_or_else(|| crate::metrics::humaneval::default_path(data_dir));
        let tasks = humaneval_tasks(&path, spec.humaneval_tasks)?;
        let sandbox = Sandbox::detect();
        match sandbox.run("pass\n") {
            Ok(Outcome::Passed) => {}
            other => {
                return Err(TrainError::Unsupported(format!(
                    "the humaneval metric runs generated code in python3, which does not run \
                     here: {other:?}"
                )))
            }
        }
        out.push(Box::new(HumanEvalEval {
            tasks,
            sandbox,
            samples: spec.humaneval_samples.unwrap_or(0),
            temperature: spec.humaneval_temperature.unwrap_or(0.2),
            seed,
        }));
    }
    Ok(out)
}

/// The HumanEval tasks a run scores: every task of the file (164 in the real set), or its first
/// `limit` when `evaluation.humaneval_tasks` says so.
fn humaneval_tasks(
    path: &Path,
    limit: Option<u64>,
) -> Result<Vec<crate::metrics::humaneval::HumanEvalTask>, TrainError> {
    let mut tasks = crate::metrics::humaneval::read_tasks(path)?;
    if let Some(m) = limit {
        tasks.truncate(m as usize);
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By default a run scores all 164 HumanEval tasks, not a first few; the spec's bound cuts.
    #[test]
    fn humaneval_scores_every_task_by_default() {
        let path = crate::metrics::humaneval::default_path(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("data"),
        );
        if !crate::util::setup_file_present(&path) {
            return;
        }
        assert_eq!(humaneval_tasks(&path, None).unwrap().len(), 164);
        assert_eq!(humaneval_tasks(&path, Some(50)).unwrap().len(), 50);
    }
    use crate::metrics::lm::fit_window;
    use crate::train::data::{tokenize, RawDoc};

    #[test]
    fn prompts_are_what_training_shows() {
        // Math: BOS then the prompt's bytes, exactly the prompt part of an IFT training row.
        let p = &crate::metrics::math::eval_problems(1)[0];
        let ex = tokenize(
            &RawDoc::Pair(p.prompt.clone(), p.response.clone()),
            &Tokenizer::Byte,
        )
        .unwrap();
        let prompt = Tokenizer::Byte
            .encode(crate::metrics::math::prompt_of(p))
            .unwrap();
        let (window, _) = fit_window(&prompt, 0, 4096, Tokenizer::Byte.specials().bos);
        assert_eq!(window, ex.tokens[..ex.prompt_len]);
        // Diversity: an IFT example's prompt, a plain document's start.
        let pair = tokenize(&RawDoc::Pair("Q?".into(), " A".into()), &Tokenizer::Byte).unwrap();
        assert_eq!(
            prompt_of(&pair, Regime::Ift, &Tokenizer::Byte).unwrap(),
            "Q?"
        );
        let doc = format!("{}\nmore\n", "w".repeat(40));
        let text = tokenize(&RawDoc::Text(doc.clone()), &Tokenizer::Byte).unwrap();
        assert_eq!(
            prompt_of(&text, Regime::Cpt, &Tokenizer::Byte).unwrap(),
            text_prompt(&doc)
        );
    }

    /// With a chat template, a math question is framed as the training pairs were (the
    /// template's user turn opened for the answer, no BOS of the tokenizer's own), and a
    /// held-out example's prompt is read back with its special tokens, the same tokens again.
    #[test]
    fn chat_framed_prompts_are_what_training_shows() {
        use crate::metrics::lm::frame;
        use crate::model::chat::ChatTemplate;
        let template = ChatTemplate::new(
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}\
             {% if add_generation_prompt %}assistant: {% endif %}",
            "",
            "<|endoftext|>",
        )
        .unwrap();
        let tok = crate::model::tokenizer::tests::tiny_gguf_tokenizer()
            .with_chat_template(template)
            .unwrap();
        let p = &crate::metrics::math::eval_problems(1)[0];
        let ex = tokenize(&RawDoc::Pair(p.prompt.clone(), p.response.clone()), &tok).unwrap();
        let (prompt, bos) = frame(
            crate::metrics::math::prompt_of(p),
            Framing::Chat,
            &tok,
            None,
        )
        .unwrap();
        assert_eq!(bos, None);
        assert_eq!(prompt, ex.tokens[..ex.prompt_len]);
        assert!(
            prompt.contains(&262),
            "the template's <|endoftext|>: {prompt:?}"
        );
        // Unframed, the same question is other tokens: the framing is not a no-op.
        let (plain, _) = frame(
            crate::metrics::math::prompt_of(p),
            Framing::Plain,
            &tok,
            None,
        )
        .unwrap();
        assert_ne!(plain, prompt);
        // Diversity's prompts are the run's own examples, with their own tokens.
        let text = prompt_of(&ex, Regime::Ift, &tok).unwrap();
        assert!(text.contains("<|endoftext|>assistant: "), "{text:?}");
        let known = HashMap::from([(text.clone(), ex.tokens[..ex.prompt_len].to_vec())]);
        let (again, bos) = frame(&text, Framing::Known, &tok, Some(&known)).unwrap();
        assert_eq!((again.as_slice(), bos), (&ex.tokens[..ex.prompt_len], None));
        assert!(frame("other", Framing::Known, &tok, Some(&known)).is_err());
    }
}
