//! Rows of training and evaluation: inputs and targets of one sequence each, from examples held
//! in memory (held-out data) or read from the token cache as they are needed (training data),
//! and the seeded order in which training visits them.

use std::sync::Arc;

use tch::Tensor;

use super::data::{Example, IGNORE};
use super::token_cache::TokenCache;
use super::TrainError;
use crate::rng::Rng;
use crate::spec::Regime;

/// Rows of a batch: inputs and targets (IGNORE where no loss), each (rows, seq_len).
#[derive(Debug)]
pub struct Batch {
    /// Input ids.
    pub inputs: Tensor,
    /// Target ids, IGNORE where there is no loss.
    pub targets: Tensor,
    /// Rows.
    pub rows: usize,
}

/// One row: `seq_len` inputs and targets.
pub type Row = (Vec<i64>, Vec<i64>);

/// Make a batch from rows.
pub fn batch_of(rows: &[Row], seq_len: usize) -> Result<Batch, TrainError> {
    let n = rows.len() as i64;
    let t = seq_len as i64;
    let inputs: Vec<i64> = rows.iter().flat_map(|r| r.0.iter().copied()).collect();
    let targets: Vec<i64> = rows.iter().flat_map(|r| r.1.iter().copied()).collect();
    Ok(Batch {
        inputs: Tensor::f_from_slice(&inputs)?.f_reshape([n, t])?,
        targets: Tensor::f_from_slice(&targets)?.f_reshape([n, t])?,
        rows: rows.len(),
    })
}

/// The row of one instruction example: the prompt and response, truncated and padded to
/// `seq_len`, with targets only on the response.
fn example_row(tokens: &[i64], prompt_len: usize, seq_len: usize, pad: i64) -> Row {
    let mut inputs = vec![pad; seq_len];
    let mut targets = vec![IGNORE; seq_len];
    let n = tokens.len().saturating_sub(1).min(seq_len);
    for j in 0..n {
        inputs[j] = tokens[j];
        // Token j + 1 is a target when it belongs to the response.
        if j + 1 >= prompt_len {
            targets[j] = tokens[j + 1];
        }
    }
    (inputs, targets)
}

/// Target tokens of [`example_row`] without building it.
fn example_targets(len: usize, prompt_len: usize, seq_len: usize) -> usize {
    let n = len.saturating_sub(1).min(seq_len);
    n - n.min(prompt_len.saturating_sub(1))
}

/// Whether an instruction example has anything to learn from in a window of `seq_len`: its
/// response starts inside it.
fn learnable(len: usize, prompt_len: usize, seq_len: usize) -> bool {
    prompt_len.max(1) <= seq_len && len > prompt_len
}

/// A run of the training token stream that lies in one piece of the cache.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// Offset in the training stream.
    stream: u64,
    /// Offset in the cache.
    cache: u64,
    len: u64,
}

/// The rows of a data set in their underlying order.
#[derive(Debug)]
pub enum Rows {
    /// CPT: one token stream, cut into non-overlapping windows of seq_len + 1.
    Packed {
        /// The stream.
        stream: Vec<i64>,
        /// Sequence length.
        seq_len: usize,
    },
    /// IFT: one example per row, truncated and padded.
    Examples {
        /// The examples.
        examples: Vec<Example>,
        /// Sequence length.
        seq_len: usize,
        /// The padding id of the tokenizer.
        pad: i64,
    },
    /// CPT from the token cache: the stream of every document not held out.
    CachedStream {
        /// The cache.
        cache: Arc<TokenCache>,
        /// The stream's pieces, in order.
        segments: Vec<Segment>,
        /// Its length in tokens.
        tokens: u64,
        /// Sequence length.
        seq_len: usize,
    },
    /// IFT from the token cache: one document per row.
    CachedExamples {
        /// The cache.
        cache: Arc<TokenCache>,
        /// The documents, by index in the cache.
        docs: Vec<u32>,
        /// Sequence length.
        seq_len: usize,
        /// The padding id of the tokenizer.
        pad: i64,
    },
}

impl Rows {
    /// These rows, unless there is not a single one.
    fn at_least_one(self, what: &str, seq_len: usize) -> Result<Rows, TrainError> {
        if self.is_empty() {
            return Err(TrainError::Data(format!(
                "{what} has too little data for one sequence of {seq_len} tokens"
            )));
        }
        Ok(self)
    }

    /// Rows for a regime from examples in memory, instruction rows padded with `pad`; fails
    /// when there is not a single full row.
    pub fn new(
        examples: Vec<Example>,
        regime: Regime,
        seq_len: usize,
        pad: i64,
        what: &str,
    ) -> Result<Rows, TrainError> {
        let rows = match regime {
            Regime::Cpt => Rows::Packed {
                stream: examples.into_iter().flat_map(|e| e.tokens).collect(),
                seq_len,
            },
            Regime::Ift => Rows::Examples {
                examples: examples
                    .into_iter()
                    .filter(|e| learnable(e.tokens.len(), e.prompt_len, seq_len))
                    .collect(),
                seq_len,
                pad,
            },
        };
        rows.at_least_one(what, seq_len)
    }

    /// Rows of every document of `cache` but those in `held` (sorted indices), read from the
    /// cache as they are needed: the same rows, in the same order, as [`Rows::new`] gives for
    /// those documents' examples.
    pub fn cached(
        cache: Arc<TokenCache>,
        held: &[u32],
        regime: Regime,
        seq_len: usize,
        pad: i64,
        what: &str,
    ) -> Result<Rows, TrainError> {
        let rows = match regime {
            Regime::Cpt => {
                let mut segments = Vec::new();
                let mut stream = 0u64;
                let mut from = 0u64;
                let ends = held
                    .iter()
                    .map(|&i| {
                        let d = cache.doc(i as usize);
                        (d.start, d.end())
                    })
                    .chain([(cache.meta().tokens, cache.meta().tokens)]);
                for (start, end) in ends {
                    if start > from {
                        segments.push(Segment {
                            stream,
                            cache: from,
                            len: start - from,
                        });
                        stream += start - from;
                    }
                    from = end;
                }
                Rows::CachedStream {
                    cache,
                    segments,
                    tokens: stream,
                    seq_len,
                }
            }
            Regime::Ift => {
                let mut docs = Vec::new();
                let mut next_held = held.iter().peekable();
                cache.scan_docs(&mut |i, d| {
                    if next_held.peek() == Some(&&(i as u32)) {
                        next_held.next();
                    } else if learnable(d.len as usize, d.prompt_len as usize, seq_len) {
                        docs.push(i as u32);
                    }
                    Ok(())
                })?;
                Rows::CachedExamples {
                    cache,
                    docs,
                    seq_len,
                    pad,
                }
            }
        };
        rows.at_least_one(what, seq_len)
    }

    /// Number of distinct rows (one epoch).
    pub fn len(&self) -> usize {
        match self {
            Rows::Packed { stream, seq_len } => stream.len().saturating_sub(1) / (*seq_len).max(1),
            Rows::CachedStream {
                tokens, seq_len, ..
            } => (tokens.saturating_sub(1) / (*seq_len).max(1) as u64) as usize,
            Rows::Examples { examples, .. } => examples.len(),
            Rows::CachedExamples { docs, .. } => docs.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` of the underlying order (no shuffling).
    pub fn row(&self, i: usize) -> Result<Row, TrainError> {
        match self {
            Rows::Packed { stream, seq_len } => {
                let s = i * seq_len;
                let w = &stream[s..s + seq_len + 1];
                Ok((w[..*seq_len].to_vec(), w[1..].to_vec()))
            }
            Rows::CachedStream {
                cache,
                segments,
                seq_len,
                ..
            } => {
                let mut w = Vec::with_capacity(seq_len + 1);
                let mut at = (i * seq_len) as u64;
                let end = at + *seq_len as u64 + 1;
                let mut k = segments.partition_point(|s| s.stream + s.len <= at);
                while at < end {
                    let s = &segments[k];
                    let n = (end - at).min(s.stream + s.len - at);
                    cache.tokens(s.cache + (at - s.stream), n as usize, &mut w)?;
                    at += n;
                    k += 1;
                }
                Ok((w[..*seq_len].to_vec(), w.split_off(1)))
            }
            Rows::Examples {
                examples,
                seq_len,
                pad,
            } => {
                let ex = &examples[i];
                Ok(example_row(&ex.tokens, ex.prompt_len, *seq_len, *pad))
            }
            Rows::CachedExamples {
                cache,
                docs,
                seq_len,
                pad,
            } => {
                let d = cache.doc(docs[i] as usize);
                let mut tokens = Vec::new();
                cache.tokens(d.start, (d.len as usize).min(seq_len + 1), &mut tokens)?;
                Ok(example_row(&tokens, d.prompt_len as usize, *seq_len, *pad))
            }
        }
    }

    /// Tokens that are targets in row `i` (read from the index alone for cached examples).
    pub fn target_tokens(&self, i: usize) -> usize {
        match self {
            Rows::Packed { seq_len, .. } | Rows::CachedStream { seq_len, .. } => *seq_len,
            Rows::Examples {
                examples, seq_len, ..
            } => example_targets(examples[i].tokens.len(), examples[i].prompt_len, *seq_len),
            Rows::CachedExamples {
                cache,
                docs,
                seq_len,
                ..
            } => {
                let d = cache.doc(docs[i] as usize);
                example_targets(d.len as usize, d.prompt_len as usize, *seq_len)
            }
        }
    }
}

/// Training rows in a seeded order, reshuffled every epoch; the position is the count of rows
/// consumed, so a resumed run continues exactly where it stopped.
#[derive(Debug)]
pub struct Sampler {
    rows: Rows,
    seed: u64,
    epoch: Option<(u64, Vec<u32>)>,
}

impl Sampler {
    /// A sampler over rows.
    pub fn new(rows: Rows, seed: u64) -> Sampler {
        Sampler {
            rows,
            seed,
            epoch: None,
        }
    }

    /// The indices of the rows at positions `pos..pos + n`.
    fn indices(&mut self, pos: u64, n: usize) -> Vec<usize> {
        let len = self.rows.len().max(1) as u64;
        (0..n as u64)
            .map(|k| {
                let p = pos + k;
                let (epoch, idx) = (p / len, (p % len) as usize);
                if self.epoch.as_ref().map(|e| e.0) != Some(epoch) {
                    let mut perm: Vec<u32> = (0..len as u32).collect();
                    Rng::new(self.seed, 1000 + epoch).shuffle(&mut perm);
                    self.epoch = Some((epoch, perm));
                }
                self.epoch.as_ref().map_or(idx, |e| e.1[idx] as usize)
            })
            .collect()
    }

    /// The rows at positions `pos..pos + n`.
    pub fn rows_at(&mut self, pos: u64, n: usize) -> Result<Vec<Row>, TrainError> {
        let idx = self.indices(pos, n);
        idx.into_iter().map(|i| self.rows.row(i)).collect()
    }

    /// The batch of `n` rows at `pos` as rank `rank` of `ranks` sees it: its own slice of the
    /// rows (the ranks' slices are disjoint and make up the batch, in order) and the target
    /// tokens of the whole batch, which normalize every rank's loss alike.
    pub fn batch(
        &mut self,
        pos: u64,
        n: usize,
        rank: usize,
        ranks: usize,
    ) -> Result<(Vec<Row>, usize), TrainError> {
        let idx = self.indices(pos, n);
        let targets = idx.iter().map(|&i| self.rows.target_tokens(i)).sum();
        let per_rank = n / ranks.max(1);
        let mine = idx[rank * per_rank..(rank + 1) * per_rank]
            .iter()
            .map(|&i| self.rows.row(i))
            .collect::<Result<Vec<Row>, TrainError>>()?;
        Ok((mine, targets))
    }
}

/// Evaluation rows: the first rows of held-out data that hold `max_tokens` target tokens.
pub fn eval_rows(rows: &Rows, max_tokens: u64) -> Result<Vec<Row>, TrainError> {
    let mut out = Vec::new();
    let mut tokens = 0u64;
    for i in 0..rows.len() {
        if tokens >= max_tokens {
            break;
        }
        tokens += rows.target_tokens(i) as u64;
        out.push(rows.row(i)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::Tokenizer;
    use crate::model::tokenizer::{BOS, EOS, PAD};
    use crate::train::data::{parse_jsonl, tokenize};
    use std::path::Path;

    #[test]
    fn ift_rows_mask_the_prompt() {
        let spec = crate::train::data::tests::spec();
        let docs = parse_jsonl(
            r#"{"prompt":"ab","response":"cd"}"#,
            Path::new("x.jsonl"),
            Regime::Ift,
            &spec,
        )
        .unwrap()
        .docs;
        let ex = tokenize(&docs[0], &Tokenizer::Byte).unwrap();
        assert_eq!(ex.tokens, vec![BOS, 97, 98, 99, 100, EOS]);
        assert_eq!(ex.prompt_len, 3);
        let rows = Rows::new(vec![ex], Regime::Ift, 8, PAD, "t").unwrap();
        let (x, y) = rows.row(0).unwrap();
        assert_eq!(x, vec![BOS, 97, 98, 99, 100, PAD, PAD, PAD]);
        // Predicting c (after b), d, EOS only.
        assert_eq!(
            y,
            vec![IGNORE, IGNORE, 99, 100, EOS, IGNORE, IGNORE, IGNORE]
        );
        assert_eq!(rows.target_tokens(0), 3);
        // Truncated: the targets counted without the row are those of the row.
        for (len, prompt, seq) in [(6, 3, 2), (6, 3, 3), (6, 0, 4), (2, 1, 8), (9, 9, 4)] {
            let (_, y) = example_row(&vec![7; len], prompt, seq, PAD);
            let n = y.iter().filter(|&&t| t != IGNORE).count();
            assert_eq!(example_targets(len, prompt, seq), n, "{len} {prompt} {seq}");
        }
    }

    #[test]
    fn cpt_windows_and_sampler_are_deterministic() {
        let ex = Example {
            tokens: (0..21).collect(),
            prompt_len: 0,
        };
        let rows = Rows::new(vec![ex], Regime::Cpt, 4, PAD, "t").unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows.row(1).unwrap(), (vec![4, 5, 6, 7], vec![5, 6, 7, 8]));
        let mut a = Sampler::new(rows, 3);
        let first: Vec<Row> = a.rows_at(0, 7).unwrap();
        let again = a.rows_at(3, 2).unwrap();
        assert_eq!(&first[3..5], &again[..]);
        // An epoch visits every row once.
        let mut starts: Vec<i64> = first[..5].iter().map(|r| r.0[0]).collect();
        starts.sort();
        assert_eq!(starts, vec![0, 4, 8, 12, 16]);
        // Ranks read disjoint slices that make up the batch, and agree on its target count.
        let (r0, t0) = a.batch(2, 4, 0, 2).unwrap();
        let (r1, t1) = a.batch(2, 4, 1, 2).unwrap();
        assert_eq!((t0, t1), (16, 16));
        assert_eq!([r0, r1].concat(), a.rows_at(2, 4).unwrap());
    }
}
