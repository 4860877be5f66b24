//! A deterministic generator of GSM8K-style math word problems, the tool's IFT target domain.
//!
//! Each problem is multi-step integer arithmetic told as a short story, with a worked solution
//! ending in `#### N` as in GSM8K. A problem's split (train or eval) is a function of its text, so
//! the two splits never share a problem, whatever the seeds and counts.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rng::Rng;

/// Which split a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training problems (about 90% of all problems).
    Train,
    /// Held-out evaluation problems.
    Eval,
}

/// One problem: the prompt, the worked response, and the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MathProblem {
    /// The question.
    pub prompt: String,
    /// The worked solution, ending with `#### N`.
    pub response: String,
    /// The final answer.
    pub answer: i64,
    /// Number of arithmetic steps (1 to 3).
    pub level: u8,
}

const NAMES: &[(&str, &str)] = &[
    ("Ada", "She"),
    ("Ben", "He"),
    ("Chloe", "She"),
    ("Dev", "He"),
    ("Emma", "She"),
    ("Farid", "He"),
    ("Grace", "She"),
    ("Hugo", "He"),
    ("Ines", "She"),
    ("Jonas", "He"),
    ("Keiko", "She"),
    ("Liam", "He"),
    ("Maya", "She"),
    ("Noah", "He"),
    ("Olga", "She"),
    ("Pablo", "He"),
];
const ITEMS: &[&str] = &[
    "apples", "marbles", "stickers", "pencils", "cookies", "books", "stamps", "shells", "cards",
    "eggs", "flowers", "coins",
];
const CONTAINERS: &[&str] = &["boxes", "bags", "jars", "crates", "packs", "baskets"];

/// Uniform in lo..=hi (lo <= hi).
fn range(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo + 1) as u64) as i64
}

/// One of `xs` (not empty).
fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len() as u64) as usize]
}

/// The split a problem text falls in: eval when the first byte of its sha256 is below 26 (~10%).
pub fn split_of(prompt: &str) -> Split {
    if Sha256::digest(prompt.as_bytes())[0] < 26 {
        Split::Eval
    } else {
        Split::Train
    }
}

fn candidate(rng: &mut Rng, level: u8) -> MathProblem {
    let (name, pron) = *pick(rng, NAMES);
    let item = *pick(rng, ITEMS);
    let cont = *pick(rng, CONTAINERS);
    let a = range(rng, 2, 40);
    let mut prompt = format!("{name} has {a} {item}.");
    let mut steps = Vec::new();
    let mut total = a;
    // Step 1: buy more (add) or boxes (multiply-add).
    let b = range(rng, 2, 12);
    let c = range(rng, 2, 9);
    if rng.next_u64().is_multiple_of(2) {
        prompt.push_str(&format!(" {pron} finds {b} more {item}."));
        steps.push(format!("{name} has {total} + {b} = {} {item}.", total + b));
        total += b;
    } else {
        prompt.push_str(&format!(
            " {pron} buys {b} {cont} of {item} with {c} {item} in each."
        ));
        steps.push(format!("The {cont} hold {b} * {c} = {} {item}.", b * c));
        steps.push(format!(
            "{name} has {total} + {} = {} {item}.",
            b * c,
            total + b * c
        ));
        total += b * c;
    }
    if level >= 2 {
        let d = range(rng, 1, total.max(2) - 1);
        prompt.push_str(&format!(" {pron} gives {d} {item} to a friend."));
        steps.push(format!(
            "After giving some away, {name} has {total} - {d} = {} {item}.",
            total - d
        ));
        total -= d;
    }
    if level >= 3 {
        let k = *pick(rng, &[2i64, 3, 4]);
        prompt.push_str(&format!(
            " Then {name} shares the rest equally among {k} jars, keeping what is left over."
        ));
        let per = total / k;
        steps.push(format!(
            "Each jar gets {total} / {k} = {per} {item}, rounded down."
        ));
        let left = total - per * k;
        steps.push(format!(
            "{name} keeps {total} - {per} * {k} = {left} {item}."
        ));
        prompt.push_str(&format!(" How many {item} does {name} keep?"));
        total = left;
    } else {
        prompt.push_str(&format!(" How many {item} does {name} have now?"));
    }
    let response = format!("{}\n#### {total}", steps.join("\n"));
    MathProblem {
        prompt,
        response,
        answer: total,
        level,
    }
}

/// `n` problems of a split, from a seed; levels cycle 1, 2, 3. The same (split, n, seed) always
/// gives the same problems; train and eval never share one; no problem repeats within a call.
pub fn generate(split: Split, n: usize, seed: u64) -> Vec<MathProblem> {
    let mut rng = Rng::from_state(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x6d61_7468);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut tries = 0usize;
    while out.len() < n && tries < n * 200 + 1000 {
        tries += 1;
        let level = (out.len() % 3) as u8 + 1;
        let p = candidate(&mut rng, level);
        if split_of(&p.prompt) == split && seen.insert(p.prompt.clone()) {
            out.push(p);
        }
    }
    out
}

/// The final answer of a generated solution: the number after the last `####`, else the last
/// number in the text (commas and a trailing period allowed), as GSM8K evaluations do.
pub fn extract_answer(text: &str) -> Option<i64> {
    let tail = match text.rfind("####") {
        Some(i) => &text[i + 4..],
        None => text,
    };
    let numbers = |s: &str| -> Vec<i64> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let flush = |cur: &mut String, out: &mut Vec<i64>| {
            let t = cur.trim_end_matches('.').replace(',', "");
            if let Ok(v) = t.parse::<i64>() {
                out.push(v);
            }
            cur.clear();
        };
        for ch in s.chars() {
            if ch.is_ascii_digit()
                || (ch == '-' && cur.is_empty())
                || ((ch == ',' || ch == '.') && !cur.is_empty())
            {
                cur.push(ch);
            } else {
                flush(&mut cur, &mut out);
            }
        }
        flush(&mut cur, &mut out);
        out
    };
    if text.contains("####") {
        numbers(tail).first().copied()
    } else {
        numbers(tail).last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn problems_are_deterministic_and_answers_check_out() {
        let a = generate(Split::Train, 300, 7);
        assert_eq!(a, generate(Split::Train, 300, 7));
        assert_ne!(a, generate(Split::Train, 300, 8));
        assert_eq!(a.len(), 300);
        for p in &a {
            assert_eq!(extract_answer(&p.response), Some(p.answer), "{p:?}");
            assert!(p.answer >= 0);
        }
        assert_eq!(a.iter().map(|p| p.level).collect::<HashSet<_>>().len(), 3);
    }

    /// The problems are those of the first release (data/math.jsonl materialized then): the
    /// sha256 of the first 200 training problems of seed 0, one JSON line each.
    #[test]
    fn problems_are_those_first_published() {
        let mut text = String::new();
        for p in generate(Split::Train, 200, 0) {
            text.push_str(&serde_json::to_string(&p).unwrap());
            text.push('\n');
        }
        let digest: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            digest,
            "7b4a5c1dc26582256614195e2401f1a503751484fd8b7dc684f0ecf428fe8dfe"
        );
    }

    #[test]
    fn train_and_eval_never_overlap() {
        let train: HashSet<String> = (0..3)
            .flat_map(|s| generate(Split::Train, 2000, s))
            .map(|p| p.prompt)
            .collect();
        let eval: Vec<MathProblem> = (0..3).flat_map(|s| generate(Split::Eval, 300, s)).collect();
        assert!(eval.len() == 900);
        for p in &eval {
            assert!(!train.contains(&p.prompt), "{}", p.prompt);
            assert_eq!(split_of(&p.prompt), Split::Eval);
        }
    }

    #[test]
    fn answer_extraction() {
        assert_eq!(extract_answer("so 3 + 4 = 7.\n#### 7"), Some(7));
        assert_eq!(extract_answer("#### 1,234"), Some(1234));
        assert_eq!(extract_answer("The answer is 42."), Some(42));
        assert_eq!(extract_answer("first 3 then -5"), Some(-5));
        assert_eq!(extract_answer("#### -12 apples"), Some(-12));
        assert_eq!(extract_answer("no number here"), None);
        assert_eq!(extract_answer("#### 8\nthen 9"), Some(8));
    }
}
