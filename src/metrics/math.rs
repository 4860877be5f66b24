//! `math_accuracy`: exact-match accuracy of greedy answers to held-out generated math problems.
//!
//! The prompt is what the model sees in IFT training (`data::tokenize` of a prompt/response
//! pair: BOS, the prompt's bytes, then the response with no separator), so the prompt text is
//! the problem's prompt as it is. Decoding stops at end of document or at the end of the
//! `#### N` line; the answer is `extract_answer` of the completion.

use super::{Completion, MetricsError, StopRule, TextModel};
use crate::data::math::{extract_answer, generate, MathProblem, Split};

/// Most bytes (tokens) a solution may take: the longest generated responses are 227 bytes.
pub const MAX_SOLUTION_BYTES: usize = 256;

/// The seed of the held-out problems: every run answers the same ones.
pub const EVAL_SEED: u64 = 0;

/// The held-out problems every run is scored on.
pub fn eval_problems(n: usize) -> Vec<MathProblem> {
    generate(Split::Eval, n, EVAL_SEED)
}

/// The prompt text of a problem, as IFT training presents it.
pub fn prompt_of(problem: &MathProblem) -> &str {
    &problem.prompt
}

/// How a solution is decoded: greedy, to the answer line.
pub const DECODING: Completion = Completion {
    max_new: MAX_SOLUTION_BYTES,
    temperature: 0.0,
    stop: StopRule::AnswerLine,
};

/// Whether a completion's extracted answer is the problem's.
pub fn is_correct(problem: &MathProblem, completion: &str) -> bool {
    extract_answer(completion) == Some(problem.answer)
}

/// The share of `problems` that `model` answers right (None when there are none).
pub fn math_accuracy(
    problems: &[MathProblem],
    model: &mut dyn TextModel,
) -> Result<Option<f64>, MetricsError> {
    if problems.is_empty() {
        return Ok(None);
    }
    let mut right = 0usize;
    let prompts: Vec<&str> = problems.iter().map(prompt_of).collect();
    for (p, out) in problems.iter().zip(model.completions(&prompts, &DECODING)?) {
        if is_correct(p, &out) {
            right += 1;
        }
    }
    Ok(Some(right as f64 / problems.len() as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a table of prompt -> response; a fixed string otherwise.
    struct Oracle(Vec<MathProblem>, &'static str);

    impl TextModel for Oracle {
        fn complete(&mut self, prompt: &str, how: &Completion) -> Result<String, MetricsError> {
            assert_eq!(how.temperature, 0.0);
            Ok(self
                .0
                .iter()
                .find(|p| p.prompt == prompt)
                .map_or(self.1.to_string(), |p| p.response.clone()))
        }
        fn loglikelihood(&mut self, _: &str, _: &str) -> Result<f64, MetricsError> {
            unreachable!("math accuracy only generates")
        }
    }

    #[test]
    fn a_model_that_knows_the_answers_scores_one() {
        let problems = eval_problems(9);
        let mut right = Oracle(problems.clone(), "");
        assert_eq!(math_accuracy(&problems, &mut right).unwrap(), Some(1.0));
        let mut wrong = Oracle(Vec::new(), "I think\n#### -1");
        assert_eq!(math_accuracy(&problems, &mut wrong).unwrap(), Some(0.0));
        // Two of the first three right: 2/3.
        let mut some = Oracle(problems[..2].to_vec(), "");
        assert_eq!(
            math_accuracy(&problems[..3], &mut some).unwrap(),
            Some(2.0 / 3.0)
        );
        assert_eq!(math_accuracy(&[], &mut some).unwrap(), None);
    }

    #[test]
    fn answers_match_exactly_and_solutions_fit_the_bound() {
        let p = &eval_problems(1)[0];
        assert!(is_correct(p, &format!("so\n#### {}\n", p.answer)));
        assert!(!is_correct(p, &format!("#### {}", p.answer + 1)));
        for p in generate(Split::Train, 3000, 1) {
            assert!(p.response.len() < MAX_SOLUTION_BYTES, "{}", p.response);
            assert!(StopRule::AnswerLine.done(format!("{}\n", p.response).as_bytes()));
        }
    }
}
