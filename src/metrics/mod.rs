//! Generation- and likelihood-based metrics: math accuracy, next-line match, diversity and
//! multiple-choice accuracy, plus HumanEval's pass@k estimator.
//!
//! Each metric is a pure scoring function over a [`TextModel`], the one thing it asks of a
//! model: complete a prompt, or score a continuation. Tests pass fakes; the trainer passes the
//! Llama behind it (`lm::LlamaText`), through the trainer's evaluators (`train::evaluators`). Texts are bytes
//! and tokens are the model's tokenizer's business (`lm::LlamaText`), so prompts and completions
//! are plain strings here.

pub mod diversity;
pub mod gsm8k;
pub mod humaneval;
#[cfg(feature = "torch")]
pub mod lm;
pub mod math;
pub mod multiple_choice;
pub mod next_line;
pub mod tasks;

use std::path::PathBuf;

/// An error of a metric.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The model failed to generate or score.
    #[error("model: {0}")]
    Model(String),
    /// A stop was asked for (a signal: the run checkpoints and ends) between two items.
    #[error("the evaluation was stopped between two items by a stop signal")]
    Interrupted,
    /// An evaluation file has a malformed line.
    #[error("{path}:{line}: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// An evaluation file could not be read or holds nothing to evaluate.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// When a completion stops, besides the end-of-document token and the length bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRule {
    /// Only at end of document.
    Eos,
    /// At the first newline (which is kept).
    Newline,
    /// At the newline that ends the line holding `####` (the GSM8K answer line).
    AnswerLine,
    /// Before GSM8K's stop sequences ("Question:", "</s>", "<|im_end|>"), which are not kept.
    Gsm8k,
    /// At the start of a new top-level statement (HumanEval's stop sequences).
    FunctionEnd,
}

impl StopRule {
    /// Whether a completion whose bytes so far are `generated` is finished.
    pub fn done(self, generated: &[u8]) -> bool {
        self.cut(&String::from_utf8_lossy(generated)) == Some(generated.len())
    }

    /// Where a completion `text` ends, if it is finished: the length to keep (through the
    /// newline, or through the stop sequence). A token of a real tokenizer may hold several
    /// characters, so the end can lie inside the text, not only at its last byte.
    pub fn cut(self, text: &str) -> Option<usize> {
        match self {
            StopRule::Eos => None,
            StopRule::Newline => text.find('\n').map(|i| i + 1),
            StopRule::AnswerLine => {
                let mark = text.find("####")?;
                text[mark..].find('\n').map(|i| mark + i + 1)
            }
            StopRule::Gsm8k => gsm8k::STOP_SEQUENCES
                .iter()
                .filter_map(|s| text.find(s))
                .min(),
            StopRule::FunctionEnd => humaneval::STOP_SEQUENCES
                .iter()
                .filter_map(|s| text.find(s).map(|i| i + s.len()))
                .min(),
        }
    }
}

/// How to complete a prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Completion {
    /// Most new tokens (bytes) to generate.
    pub max_new: usize,
    /// 0 for greedy decoding, else the sampling temperature.
    pub temperature: f64,
    /// When to stop early.
    pub stop: StopRule,
}

/// A language model as the metrics see it: text in, text or log-likelihood out.
pub trait TextModel {
    /// [`MetricsError::Interrupted`] once a stop was asked for, so that work between the model's
    /// calls (running a program) stops within one item too; never, by default.
    fn check_stop(&self) -> Result<(), MetricsError> {
        Ok(())
    }

    /// The completion of `prompt` (a document's start: the model puts BOS before it), without
    /// the end-of-document token.
    fn complete(&mut self, prompt: &str, how: &Completion) -> Result<String, MetricsError>;

    /// [`TextModel::complete`] of each prompt, in order. A model may decode greedy ones in
    /// batches (the Llama does, left-padded); the texts do not depend on how they are batched.
    /// This one completes them one by one.
    fn completions(
        &mut self,
        prompts: &[&str],
        how: &Completion,
    ) -> Result<Vec<String>, MetricsError> {
        prompts.iter().map(|p| self.complete(p, how)).collect()
    }

    /// `n` samples of the completion of `prompt` at `how.temperature` (> 0), sample i drawn
    /// from a generator seeded by (`seed`, i): the samples depend on the seed only, not on how
    /// a model batches them. This one completes them one by one (for models that draw nothing).
    fn samples(
        &mut self,
        prompt: &str,
        n: usize,
        how: &Completion,
        seed: u64,
    ) -> Result<Vec<String>, MetricsError> {
        let _ = seed;
        (0..n).map(|_| self.complete(prompt, how)).collect()
    }

    /// The sum of the log-probabilities of the tokens of `continuation` after `context`.
    fn loglikelihood(&mut self, context: &str, continuation: &str) -> Result<f64, MetricsError>;

    /// [`TextModel::loglikelihood`] of each (context, continuation) request, in order. A model
    /// may score them in batches (the Llama does, padded); the numbers do not depend on how
    /// they are batched. This one scores them one by one.
    fn loglikelihoods(&mut self, requests: &[(&str, &str)]) -> Result<Vec<f64>, MetricsError> {
        requests
            .iter()
            .map(|(c, x)| self.loglikelihood(c, x))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_rules() {
        assert!(!StopRule::Eos.done(b"a\n"));
        assert!(StopRule::Newline.done(b"x = 1\n"));
        assert!(!StopRule::Newline.done(b"x = 1"));
        assert!(!StopRule::AnswerLine.done(b"2 + 3 = 5.\n"));
        assert!(!StopRule::AnswerLine.done(b"2 + 3 = 5.\n#### 5"));
        assert!(StopRule::AnswerLine.done(b"2 + 3 = 5.\n#### 5\n"));
        assert!(StopRule::FunctionEnd.done(b"    return 1\ndef"));
        assert!(!StopRule::FunctionEnd.done(b"    return 1\n    def"));
        // Multi-character tokens: the end may fall inside the text so far.
        assert_eq!(StopRule::Newline.cut("x = 1\ny = 2"), Some(6));
        assert_eq!(StopRule::AnswerLine.cut("a\n#### 5\nmore"), Some(9));
        assert_eq!(StopRule::AnswerLine.cut("a\nb\n"), None);
        assert_eq!(StopRule::FunctionEnd.cut("  x\ndef f\n#"), Some(7));
        assert_eq!(StopRule::Eos.cut("a\n"), None);
        assert_eq!(
            StopRule::Gsm8k.cut("#### 5\n\nQuestion: x"),
            Some(8),
            "not kept"
        );
        assert_eq!(StopRule::Gsm8k.cut("#### 5\n"), None);
    }
}
