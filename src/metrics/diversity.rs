//! Diversity of sampled generations: `diversity_unique`, `distinct_1`, `distinct_2` and
//! `diversity_similarity`, from k samples per held-out prompt at the spec's temperature.
//!
//! Tokens here are whitespace-separated words of the completions.

use std::collections::{BTreeMap, HashSet};

use super::{Completion, MetricsError, StopRule, TextModel};
use crate::rng::Rng;

/// Most bytes sampled per completion.
pub const MAX_SAMPLE_BYTES: usize = 96;

/// Most bytes of a plain-text document used as a prompt.
pub const MAX_PROMPT_BYTES: usize = 256;

/// The diversity of a set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct DiversityScores {
    /// Unique completions over k, averaged over prompts.
    pub unique: f64,
    /// Distinct words over all words of all samples (0 when there are none).
    pub distinct_1: f64,
    /// Distinct word pairs over all word pairs within samples (0 when there are none).
    pub distinct_2: f64,
    /// Mean Jaccard similarity of the word sets of two samples of the same prompt, over every
    /// such pair (two empty sets are identical: 1); None when no prompt has two samples.
    pub similarity: Option<f64>,
}

impl DiversityScores {
    /// The scores by metric name.
    pub fn named(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::from([
            ("diversity_unique".to_string(), self.unique),
            ("distinct_1".to_string(), self.distinct_1),
            ("distinct_2".to_string(), self.distinct_2),
        ]);
        if let Some(s) = self.similarity {
            m.insert("diversity_similarity".into(), s);
        }
        m
    }
}

/// Distinct n-grams over all n-grams of the samples (n-grams do not cross samples).
pub fn distinct_n(samples: &[&str], n: usize) -> f64 {
    let mut seen = HashSet::new();
    let mut total = 0usize;
    for s in samples {
        let words: Vec<&str> = s.split_whitespace().collect();
        for g in words.windows(n.max(1)) {
            total += 1;
            seen.insert(g.to_vec());
        }
    }
    if total == 0 {
        0.0
    } else {
        seen.len() as f64 / total as f64
    }
}

/// Jaccard similarity of the word sets of two texts (1 for two empty sets).
pub fn jaccard(a: &str, b: &str) -> f64 {
    let a: HashSet<&str> = a.split_whitespace().collect();
    let b: HashSet<&str> = b.split_whitespace().collect();
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

/// The scores of samples grouped by prompt (None when there are no samples).
pub fn diversity_scores(groups: &[Vec<String>]) -> Option<DiversityScores> {
    let groups: Vec<&Vec<String>> = groups.iter().filter(|g| !g.is_empty()).collect();
    if groups.is_empty() {
        return None;
    }
    let unique = groups
        .iter()
        .map(|g| g.iter().collect::<HashSet<_>>().len() as f64 / g.len() as f64)
        .sum::<f64>()
        / groups.len() as f64;
    let all: Vec<&str> = groups
        .iter()
        .flat_map(|g| g.iter().map(String::as_str))
        .collect();
    let mut sim_sum = 0.0;
    let mut pairs = 0usize;
    for g in &groups {
        for i in 0..g.len() {
            for j in i + 1..g.len() {
                sim_sum += jaccard(&g[i], &g[j]);
                pairs += 1;
            }
        }
    }
    Some(DiversityScores {
        unique,
        distinct_1: distinct_n(&all, 1),
        distinct_2: distinct_n(&all, 2),
        similarity: (pairs > 0).then(|| sim_sum / pairs as f64),
    })
}

/// A diversity prompt from a plain-text document: its start, up to the first line end after
/// 32 bytes, at most [`MAX_PROMPT_BYTES`] (at a character boundary).
pub fn text_prompt(doc: &str) -> String {
    let mut end = doc.len().min(MAX_PROMPT_BYTES);
    if let Some(nl) = doc.get(32.min(doc.len())..).and_then(|t| t.find('\n')) {
        end = end.min(32 + nl + 1);
    }
    while !doc.is_char_boundary(end) {
        end -= 1;
    }
    doc[..end].to_string()
}

/// Sample `k` completions of each prompt at `temperature`, together ([`TextModel::samples`]):
/// prompt i's draws come from generators seeded by `seed` and i, so that they repeat at every
/// evaluation and do not depend on how the model batches them.
pub fn sample(
    prompts: &[String],
    k: usize,
    temperature: f64,
    seed: u64,
    model: &mut dyn TextModel,
) -> Result<Vec<Vec<String>>, MetricsError> {
    let how = Completion {
        max_new: MAX_SAMPLE_BYTES,
        temperature,
        stop: StopRule::Eos,
    };
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| model.samples(p, k, &how, Rng::new(seed, i as u64).next_u64()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn hand_computed_scores() {
        let groups = vec![
            vec!["a b".to_string(), "a b".into(), "a c".into()],
            vec!["x".to_string(), "y".into(), "".into()],
        ];
        let s = diversity_scores(&groups).unwrap();
        // Unique: (2/3 + 3/3) / 2.
        close(s.unique, 5.0 / 6.0);
        // Words: a b a b a c x y = 8, distinct a b c x y = 5.
        close(s.distinct_1, 5.0 / 8.0);
        // Pairs: (a b), (a b), (a c) = 3, distinct 2.
        close(s.distinct_2, 2.0 / 3.0);
        // Group 1: J(ab,ab)=1, J(ab,ac)=1/3, J(ab,ac)=1/3; group 2: J(x,y)=0, J(x,"")=0,
        // J(y,"")=0. Mean over 6 pairs: (1 + 2/3) / 6.
        close(s.similarity.unwrap(), (5.0 / 3.0) / 6.0);
        let named = s.named();
        assert_eq!(
            named.keys().collect::<Vec<_>>(),
            vec![
                "distinct_1",
                "distinct_2",
                "diversity_similarity",
                "diversity_unique"
            ]
        );
    }

    #[test]
    fn edge_cases() {
        assert_eq!(diversity_scores(&[]), None);
        let one = diversity_scores(&[vec!["".to_string()]]).unwrap();
        assert_eq!(
            (one.unique, one.distinct_1, one.distinct_2),
            (1.0, 0.0, 0.0)
        );
        assert_eq!(one.similarity, None);
        assert!(!one.named().contains_key("diversity_similarity"));
        close(jaccard("", ""), 1.0);
        close(jaccard("a b c", "c d"), 0.25);
        assert_eq!(text_prompt("short"), "short");
        let doc = format!("{}\nsecond line\nthird\n", "x".repeat(40));
        assert_eq!(text_prompt(&doc), format!("{}\n", "x".repeat(40)));
        assert_eq!(text_prompt(&"é".repeat(300)).len(), 256);
    }

    /// Cycles through fixed completions.
    struct Cycle(usize);

    impl TextModel for Cycle {
        fn complete(&mut self, _: &str, how: &Completion) -> Result<String, MetricsError> {
            assert_eq!(how.temperature, 0.7);
            self.0 += 1;
            Ok(["p q", "p r"][self.0 % 2].to_string())
        }
        fn loglikelihood(&mut self, _: &str, _: &str) -> Result<f64, MetricsError> {
            unreachable!()
        }
    }

    #[test]
    fn samples_k_per_prompt() {
        let groups = sample(&["a".into(), "b".into()], 2, 0.7, 5, &mut Cycle(0)).unwrap();
        assert_eq!(groups.len(), 2);
        assert!(groups.iter().all(|g| g.len() == 2));
        let s = diversity_scores(&groups).unwrap();
        close(s.unique, 1.0);
        close(s.similarity.unwrap(), 1.0 / 3.0);
    }

    /// Records the seed each prompt's samples are asked with.
    struct Seeds(Vec<(String, usize, u64)>);

    impl TextModel for Seeds {
        fn complete(&mut self, _: &str, _: &Completion) -> Result<String, MetricsError> {
            unreachable!("diversity asks for its samples together")
        }
        fn samples(
            &mut self,
            prompt: &str,
            n: usize,
            _: &Completion,
            seed: u64,
        ) -> Result<Vec<String>, MetricsError> {
            self.0.push((prompt.to_string(), n, seed));
            Ok(vec![String::new(); n])
        }
        fn loglikelihood(&mut self, _: &str, _: &str) -> Result<f64, MetricsError> {
            unreachable!()
        }
    }

    #[test]
    fn each_prompt_samples_together_from_its_own_seed() {
        let prompts: Vec<String> = vec!["a".into(), "a".into(), "b".into()];
        let asked = |seed| {
            let mut m = Seeds(Vec::new());
            sample(&prompts, 3, 0.7, seed, &mut m).unwrap();
            m.0
        };
        let first = asked(5);
        assert_eq!(first.len(), 3, "one call per prompt");
        assert!(first.iter().all(|(_, n, _)| *n == 3));
        let seeds: HashSet<u64> = first.iter().map(|(_, _, s)| *s).collect();
        assert_eq!(
            seeds.len(),
            3,
            "every prompt, repeated or not, has its own seed"
        );
        assert_eq!(asked(5), first, "the same seed asks the same");
        assert!(asked(6).iter().zip(&first).all(|(a, b)| a.2 != b.2));
    }
}
