//! A Llama and its tokenizer as a [`TextModel`]: a KV cache for decoding, and left truncation
//! of whatever does not fit the model's positions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::{Kind, Tensor};

use super::{Completion, MetricsError, TextModel};
use crate::model::llama::{next_tokens, sample_rows, KvCache, Llama};
use crate::model::tokenizer::Tokenizer;
use crate::model::ModelError;
use crate::rng::Rng;

impl From<ModelError> for MetricsError {
    fn from(e: ModelError) -> Self {
        MetricsError::Model(e.to_string())
    }
}

impl From<tch::TchError> for MetricsError {
    fn from(e: tch::TchError) -> Self {
        MetricsError::Model(format!("libtorch: {e}"))
    }
}

/// The prompt tokens and the number of new tokens that fit `max_len` positions: BOS (when the
/// tokenizer has one) and the prompt, keeping the prompt's end when it is too long, and at most
/// `max_new` new tokens. At least half the window stays for the prompt when both do not fit.
pub fn fit_window(
    prompt: &[i64],
    max_new: usize,
    max_len: usize,
    bos: Option<i64>,
) -> (Vec<i64>, usize) {
    let max_len = max_len.max(2);
    let head = usize::from(bos.is_some());
    let new = max_new.min(max_len - head - (prompt.len().min((max_len - head) / 2)));
    let room = max_len - new - head;
    let kept = &prompt[prompt.len().saturating_sub(room)..];
    let mut tokens = Vec::with_capacity(kept.len() + head);
    tokens.extend(bos);
    tokens.extend_from_slice(kept);
    (tokens, new)
}

/// How a prompt becomes the tokens the model sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// BOS (when the tokenizer has one), then the text: a document's start.
    Plain,
    /// The tokenizer's chat template's rendering of the text as a user turn with the generation
    /// prompt (BOS and turn markers as the template writes them): an instruction pair's prompt.
    Chat,
    /// The run's own tokenized examples: each prompt is looked up in the texts whose tokens
    /// are known ([`LlamaText::with_known`]), and those tokens are the prompt, as they are (a
    /// chat template's BOS and markup in them). Decoding and encoding again would not always
    /// give them back (SentencePiece's dummy prefix after a special token).
    Known,
}

/// The tokens of a prompt framed as `framing` says, and the BOS that goes before them (only
/// plain ones have one); `known` holds the tokens of [`Framing::Known`] prompts.
pub fn frame(
    prompt: &str,
    framing: Framing,
    tok: &Tokenizer,
    known: Option<&HashMap<String, Vec<i64>>>,
) -> Result<(Vec<i64>, Option<i64>), MetricsError> {
    Ok(match framing {
        Framing::Plain => (tok.encode(prompt)?, tok.specials().bos),
        Framing::Known => {
            let ids = known.and_then(|k| k.get(prompt)).ok_or_else(|| {
                MetricsError::Model(format!("no tokens known for the prompt {prompt:?}"))
            })?;
            (ids.clone(), None)
        }
        Framing::Chat => {
            let chat = tok.chat().ok_or_else(|| {
                MetricsError::Model("chat framing without a chat template".into())
            })?;
            let text = chat
                .render(&[("user", prompt)], true)
                .map_err(|e| MetricsError::Model(format!("data.chat_template: {e}")))?;
            (tok.encode(&text)?, None)
        }
    })
}

/// A Llama seen as text in, text or log-likelihood out, through its tokenizer. `complete` samples
/// from libtorch's global generator (seed it with `tch::manual_seed` for repeatable samples);
/// `samples` from generators seeded by its caller, whatever the batch.
#[derive(Debug)]
pub struct LlamaText<'a> {
    /// The model.
    pub model: &'a Llama,
    /// Its tokenizer.
    pub tok: &'a Tokenizer,
    /// When set, every later completion or score fails with [`MetricsError::Interrupted`]: an
    /// evaluation stops within one decoding step, or one batch of scores, of a stop signal.
    pub stop: Option<&'a AtomicBool>,
    /// How prompts and contexts are framed.
    pub framing: Framing,
    /// The tokens of [`Framing::Known`] prompts, by their text.
    pub known: Option<&'a HashMap<String, Vec<i64>>>,
    /// Most positions (rows x the longest row) one batch of log-likelihood requests, or of
    /// prompts decoded together, holds.
    pub batch_tokens: usize,
    /// Most prompts decoded together (greedy ones; samples are drawn one prompt at a time).
    pub decode_rows: usize,
}

/// Prompts decoded together by default (at most [`BATCH_TOKENS`] prompt positions).
pub const DECODE_ROWS: usize = 16;

/// Positions of one batch of log-likelihood requests by default: 64 rows of 64 positions, or 2
/// rows of 2,048 (the logits of a 32k vocabulary at 4,096 positions are 0.5 GB in f32).
pub const BATCH_TOKENS: usize = 4096;

impl From<crate::model::tokenizer::TokenizerError> for MetricsError {
    fn from(e: crate::model::tokenizer::TokenizerError) -> Self {
        MetricsError::Model(e.to_string())
    }
}

impl<'a> LlamaText<'a> {
    /// The model as text, stopping at `stop`; prompts are framed as chat turns when the
    /// tokenizer has a chat template, else plain.
    pub fn new(model: &'a Llama, tok: &'a Tokenizer, stop: Option<&'a AtomicBool>) -> Self {
        let framing = if tok.chat().is_some() {
            Framing::Chat
        } else {
            Framing::Plain
        };
        LlamaText {
            model,
            tok,
            stop,
            framing,
            known: None,
            batch_tokens: BATCH_TOKENS,
            decode_rows: DECODE_ROWS,
        }
    }

    /// The same, batching log-likelihood requests up to `positions` positions (1: one by one).
    pub fn batched(self, positions: usize) -> Self {
        LlamaText {
            batch_tokens: positions.max(1),
            ..self
        }
    }

    /// The same, decoding at most `rows` greedy prompts together (1: one by one).
    pub fn decoding_rows(self, rows: usize) -> Self {
        LlamaText {
            decode_rows: rows.max(1),
            ..self
        }
    }

    /// The same, framing prompts as `framing` says.
    pub fn framed(self, framing: Framing) -> Self {
        LlamaText { framing, ..self }
    }

    /// The same, with the tokens of [`Framing::Known`] prompts.
    pub fn with_known(self, known: &'a HashMap<String, Vec<i64>>) -> Self {
        LlamaText {
            known: Some(known),
            ..self
        }
    }

    fn prompt_tokens(&self, prompt: &str) -> Result<(Vec<i64>, Option<i64>), MetricsError> {
        frame(prompt, self.framing, self.tok, self.known)
    }

    /// The longest sequence the model computes exactly: its positions, and its sliding window.
    fn max_len(&self) -> usize {
        let cfg = &self.model.cfg;
        cfg.max_position_embeddings
            .min(cfg.sliding_window.unwrap_or(usize::MAX))
            .max(2)
    }

    /// The tokens `prompt` is decoded from (fitted to the model's positions) and the most new
    /// tokens after them; an empty prompt (no BOS to start from) is refused.
    fn decode_job(
        &self,
        prompt: &str,
        how: &Completion,
    ) -> Result<(Vec<i64>, usize), MetricsError> {
        let (tokens, bos) = self.prompt_tokens(prompt)?;
        let job = fit_window(&tokens, how.max_new, self.max_len(), bos);
        if job.0.is_empty() {
            return Err(MetricsError::Model(
                "generation needs a non-empty prompt (this tokenizer has no BOS to start from)"
                    .into(),
            ));
        }
        Ok(job)
    }
}

impl TextModel for LlamaText<'_> {
    fn check_stop(&self) -> Result<(), MetricsError> {
        match self.stop {
            Some(f) if f.load(Ordering::SeqCst) => Err(MetricsError::Interrupted),
            _ => Ok(()),
        }
    }

    fn complete(&mut self, prompt: &str, how: &Completion) -> Result<String, MetricsError> {
        Ok(self.completions(&[prompt], how)?.remove(0))
    }

    /// Greedy prompts sorted by length and decoded in left-padded batches of at most
    /// `decode_rows` rows and `batch_tokens` positions (prompts and new tokens: the KV cache
    /// they grow to), each row masked to its own
    /// tokens and rotated from its own first position, so that the padding changes nothing
    /// (beyond the rounding of a batched product). Sampled ones are decoded one at a time, in
    /// order: each draws from libtorch's global generator as it would alone.
    fn completions(
        &mut self,
        prompts: &[&str],
        how: &Completion,
    ) -> Result<Vec<String>, MetricsError> {
        let _g = tch::no_grad_guard();
        let jobs = prompts
            .iter()
            .map(|p| self.decode_job(p, how))
            .collect::<Result<Vec<_>, MetricsError>>()?;
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        let rows = if how.temperature > 0.0 {
            1
        } else {
            // Longest first: each batch pads little.
            order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].0.len()));
            self.decode_rows
        };
        let mut out = vec![String::new(); jobs.len()];
        let mut rest = &order[..];
        while let Some(&longest) = rest.first() {
            let width = jobs[longest].0.len();
            // Rows join while the batch fits: the positions its cache grows to, and the longest
            // prompt's padded width plus the most new tokens within the model's positions.
            let mut n = 1;
            let mut new = jobs[longest].1;
            while n < rest.len().min(rows) {
                let more = new.max(jobs[rest[n]].1);
                if width + more > self.max_len() || (width + more) * (n + 1) > self.batch_tokens {
                    break;
                }
                new = more;
                n += 1;
            }
            let (batch, later) = rest.split_at(n);
            for (i, text) in batch
                .iter()
                .zip(self.decode_batch(&jobs, batch, how, None)?)
            {
                out[*i] = text;
            }
            rest = later;
        }
        Ok(out)
    }

    /// The samples decoded together, `decode_rows` at a time (one prompt: no padding), each row
    /// drawing from its own generator.
    fn samples(
        &mut self,
        prompt: &str,
        n: usize,
        how: &Completion,
        seed: u64,
    ) -> Result<Vec<String>, MetricsError> {
        let _g = tch::no_grad_guard();
        let job = self.decode_job(prompt, how)?;
        let rows = self
            .decode_rows
            .min((self.batch_tokens / (job.0.len() + job.1)).max(1));
        let jobs = vec![job; n];
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(rows.max(1)) {
            let batch: Vec<usize> = (start..(start + rows).min(n)).collect();
            let mut rngs: Vec<Rng> = batch.iter().map(|&i| Rng::new(seed, i as u64)).collect();
            out.extend(self.decode_batch(&jobs, &batch, how, Some(&mut rngs))?);
        }
        Ok(out)
    }

    fn loglikelihood(&mut self, context: &str, continuation: &str) -> Result<f64, MetricsError> {
        Ok(self.loglikelihoods(&[(context, continuation)])?[0])
    }

    /// Requests sorted by length and scored in right-padded batches of at most `batch_tokens`
    /// positions: the model is causal and each row starts at position 0, so the padding after a
    /// row changes nothing of its logits (beyond the rounding of a batched product).
    fn loglikelihoods(&mut self, requests: &[(&str, &str)]) -> Result<Vec<f64>, MetricsError> {
        let _g = tch::no_grad_guard();
        let windows = requests
            .iter()
            .map(|(c, x)| self.window(c, x))
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = vec![0.0; requests.len()];
        // Longest first, as lm-evaluation-harness orders them: each batch pads little.
        let mut order: Vec<usize> = (0..windows.len())
            .filter(|&i| windows[i].1 < windows[i].0.len())
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(windows[i].0.len()));
        let mut rest = &order[..];
        while let Some(&longest) = rest.first() {
            let width = windows[longest].0.len() - 1;
            let rows = (self.batch_tokens / width.max(1)).clamp(1, rest.len());
            let (batch, later) = rest.split_at(rows);
            self.check_stop()?;
            for (i, ll) in batch.iter().zip(self.score_batch(&windows, batch, width)?) {
                out[*i] = ll;
            }
            rest = later;
        }
        Ok(out)
    }
}

impl LlamaText<'_> {
    /// Decode the prompts `batch` (indices into `jobs`: fitted tokens and most new tokens)
    /// together, left-padded to the longest; each row stops at its end token, its stop rule or
    /// its most new tokens, and the batch when every row has. Sampled rows draw from `rngs`
    /// (one per row) when given, else from libtorch's generator.
    fn decode_batch(
        &self,
        jobs: &[(Vec<i64>, usize)],
        batch: &[usize],
        how: &Completion,
        mut rngs: Option<&mut [Rng]>,
    ) -> Result<Vec<String>, MetricsError> {
        let device = self.model.vs.device();
        let width = batch.iter().map(|&i| jobs[i].0.len()).max().unwrap_or(0);
        let mut input = Vec::with_capacity(batch.len() * width);
        let mut pads = Vec::with_capacity(batch.len());
        for &i in batch {
            let tokens = &jobs[i].0;
            let pad = width - tokens.len();
            pads.push(pad as i64);
            input.extend(std::iter::repeat_n(0, pad).chain(tokens.iter().copied()));
        }
        let mut cache = KvCache::left_padded(pads);
        let mut input = Tensor::f_from_slice(&input)?
            .f_to_device(device)?
            .f_view([batch.len() as i64, width as i64])?;
        let mut outs: Vec<Vec<i64>> = vec![Vec::new(); batch.len()];
        // A row's text once it is done; rows with no room to generate are done at once.
        let mut done: Vec<Option<String>> = batch
            .iter()
            .map(|&i| (jobs[i].1 == 0).then(String::new))
            .collect();
        while done.iter().any(Option::is_none) {
            self.check_stop()?;
            let logits = self.model.next_logits(&input, &mut cache)?;
            let next = match rngs.as_deref_mut() {
                Some(rngs) if how.temperature > 0.0 => {
                    let u: Vec<f64> = rngs.iter_mut().map(Rng::next_f64).collect();
                    sample_rows(&logits, how.temperature, &u)?
                }
                _ => next_tokens(&logits, how.temperature)?,
            };
            for (r, &i) in batch.iter().enumerate() {
                if done[r].is_some() {
                    continue;
                }
                if self.tok.is_end(next[r]) {
                    done[r] = Some(self.tok.decode(&outs[r])?);
                    continue;
                }
                // Special tokens decode to nothing; they still condition what follows.
                outs[r].push(next[r]);
                let text = self.tok.decode(&outs[r])?;
                if let Some(end) = how.stop.cut(&text) {
                    done[r] = Some(text[..end].to_string());
                } else if outs[r].len() == jobs[i].1 {
                    done[r] = Some(text);
                }
            }
            input = Tensor::f_from_slice(&next)?
                .f_to_device(device)?
                .f_view([batch.len() as i64, 1])?;
        }
        Ok(done.into_iter().flatten().collect())
    }

    /// The tokens a request is scored on (BOS, the context, the continuation; the window's end
    /// when that is longer than the model's positions) and where in them the continuation's
    /// tokens that have one token before them start. A start at the window's end: nothing to
    /// score (log-likelihood 0).
    fn window(&self, context: &str, continuation: &str) -> Result<(Vec<i64>, usize), MetricsError> {
        let (ctx, cont) = match self.framing {
            // As lm-evaluation-harness encodes a pair: trailing whitespace of the context moves
            // to the continuation, and the continuation's tokens are those of the whole text
            // after the context's, so that a tokenizer that joins a space to the next word
            // (BPE's "Ġbird", SentencePiece's "▁bird") scores the word as it would see it.
            Framing::Plain => {
                let text = context.trim_end();
                let moved = format!("{}{continuation}", &context[text.len()..]);
                let (ctx, bos) = self.prompt_tokens(text)?;
                let whole = self.tok.encode(&format!("{text}{moved}"))?;
                let cont = match whole.strip_prefix(ctx.as_slice()) {
                    Some(rest) => rest.to_vec(),
                    // The two merge across the boundary: the continuation on its own.
                    None => self.tok.encode(&moved)?,
                };
                (bos.into_iter().chain(ctx).collect::<Vec<i64>>(), cont)
            }
            // A framed question's answer opens the assistant's turn: no space between them, as
            // lm-evaluation-harness sets target_delimiter to "" with a chat template.
            Framing::Chat | Framing::Known => {
                let (ctx, bos) = self.prompt_tokens(context)?;
                let continuation = match self.framing {
                    Framing::Chat => continuation.strip_prefix(' ').unwrap_or(continuation),
                    _ => continuation,
                };
                let cont = self.tok.encode(continuation)?;
                (bos.into_iter().chain(ctx).collect(), cont)
            }
        };
        let mut tokens = ctx;
        let cont_start = tokens.len();
        tokens.extend(cont);
        // Keep the window's end: the continuation's tokens, and as much context as fits.
        let from = tokens.len().saturating_sub(self.max_len());
        let first = cont_start.saturating_sub(from).max(1);
        Ok((tokens.split_off(from), first))
    }

    /// The log-likelihoods of the requests `batch` (indices into `windows`), right-padded to
    /// `width` inputs: one forward pass, and a log-softmax of the continuations' rows only.
    fn score_batch(
        &self,
        windows: &[(Vec<i64>, usize)],
        batch: &[usize],
        width: usize,
    ) -> Result<Vec<f64>, MetricsError> {
        let device = self.model.vs.device();
        let mut input = vec![0i64; batch.len() * width];
        for (r, &i) in batch.iter().enumerate() {
            let w = &windows[i].0;
            input[r * width..r * width + w.len() - 1].copy_from_slice(&w[..w.len() - 1]);
        }
        let input = Tensor::f_from_slice(&input)?
            .f_to_device(device)?
            .f_view([batch.len() as i64, width as i64])?;
        let logits = self.model.forward(&input, false)?;
        let mut out = Vec::with_capacity(batch.len());
        for (r, &i) in batch.iter().enumerate() {
            let (w, first) = (&windows[i].0, windows[i].1);
            let rows = logits
                .f_get(r as i64)?
                .f_narrow(0, first as i64 - 1, (w.len() - first) as i64)?
                .f_log_softmax(-1, Kind::Double)?;
            let targets = Tensor::f_from_slice(&w[first..])?.f_to_device(device)?;
            out.push(
                rows.f_gather(1, &targets.f_unsqueeze(1)?, false)?
                    .f_sum(Kind::Double)?
                    .f_double_value(&[])?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::metrics::StopRule;
    use crate::model::llama::tests::tiny_cfg;
    use crate::model::llama::BuildOptions;
    use crate::model::tokenizer::{ByteTokenizer, BOS, EOS};

    #[test]
    fn windows_keep_the_prompt_end_and_room_to_generate() {
        assert_eq!(
            fit_window(&[1, 2, 3], 4, 64, Some(BOS)),
            (vec![BOS, 1, 2, 3], 4)
        );
        // 10 positions: the prompt keeps at least 4 (half of 9, rounded down), new gets 5.
        let p: Vec<i64> = (0..20).collect();
        assert_eq!(
            fit_window(&p, 100, 10, Some(BOS)),
            (vec![BOS, 16, 17, 18, 19], 5)
        );
        // A short prompt leaves the rest to generation.
        assert_eq!(fit_window(&[7], 100, 10, Some(BOS)), (vec![BOS, 7], 8));
        // A small max_new leaves the rest to the prompt.
        assert_eq!(
            fit_window(&p, 2, 10, Some(BOS)),
            (vec![BOS, 13, 14, 15, 16, 17, 18, 19], 2)
        );
        // Without BOS the prompt has one more position.
        assert_eq!(fit_window(&p, 2, 10, None), ((12..20).collect(), 2));
    }

    /// A context and a continuation are tokenized as lm-evaluation-harness's `_encode_pair`
    /// does: the context's trailing space moves to the continuation and the continuation's
    /// tokens are the whole text's after the context's (the BPE's "Ġb" merge, not a lone "Ġ"
    /// then "b"); where the two would merge across the boundary, the continuation alone.
    #[test]
    fn a_pair_is_tokenized_as_the_harness_does() {
        let model = Llama::new(&tiny_cfg(), &BuildOptions::default(), Device::Cpu).unwrap();
        let tok = crate::model::tokenizer::tests::tiny_gguf_tokenizer();
        let lm = LlamaText::new(&model, &tok, None).framed(Framing::Plain);
        let (w, first) = lm.window("I saw the ", "bird").unwrap();
        let ctx = tok.encode("I saw the").unwrap();
        assert_eq!(
            &w[..first],
            ctx.as_slice(),
            "the context without its space (no BOS here)"
        );
        let whole = tok.encode("I saw the bird").unwrap();
        assert_eq!(&w[first..], &whole[ctx.len()..]);
        assert_eq!(w[first..].len(), 4, "Ġb i r d: {:?}", &w[first..]);
        // "th" + "e" is one token "the" when whole: the continuation is scored on its own.
        let (w, first) = lm.window("th", "e").unwrap();
        assert_eq!(&w[first..], tok.encode("e").unwrap().as_slice());
        // The same score through loglikelihood, whatever the space's side.
        let mut lm = lm;
        let a = lm.loglikelihood("I saw the ", "bird").unwrap();
        let b = lm.loglikelihood("I saw the", " bird").unwrap();
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    /// Log-likelihoods scored in right-padded batches are what each request scored alone gives,
    /// whatever the batch (one row, a few, all at once): over-long contexts keep their window's
    /// end, an empty continuation scores 0; and a multiple-choice accuracy is the same.
    #[test]
    fn batched_loglikelihoods_do_not_depend_on_the_batch() {
        let model = Llama::new(&tiny_cfg(), &BuildOptions::default(), Device::Cpu).unwrap();
        let long = "x".repeat(200);
        let requests: Vec<(&str, &str)> = vec![
            ("hello ", "wo"),
            ("a", " a much longer continuation than the rest"),
            (&long, "yz"),
            ("context", ""),
            ("", "abc"),
            ("the quick brown fox", " jumps"),
            ("the quick brown fox", " sleeps"),
        ];
        let alone: Vec<f64> = requests
            .iter()
            .map(|(c, x)| {
                LlamaText::new(&model, &Tokenizer::Byte, None)
                    .batched(1)
                    .loglikelihood(c, x)
                    .unwrap()
            })
            .collect();
        assert_eq!(alone[3], 0.0);
        assert!(
            alone.iter().enumerate().all(|(i, l)| i == 3 || *l < 0.0),
            "{alone:?}"
        );
        for positions in [1, 100, 300, BATCH_TOKENS] {
            let got = LlamaText::new(&model, &Tokenizer::Byte, None)
                .batched(positions)
                .loglikelihoods(&requests)
                .unwrap();
            for (a, b) in got.iter().zip(&alone) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{positions}: {got:?} vs {alone:?}"
                );
            }
        }
        let items: Vec<crate::metrics::multiple_choice::ChoiceItem> = (0..6)
            .map(|i| crate::metrics::multiple_choice::ChoiceItem {
                context: format!("item {i}: the quick brown"),
                choices: vec![" fox".into(), " dog jumps".into(), format!(" {i}")],
                label: i % 3,
            })
            .collect();
        let acc = |positions| {
            crate::metrics::multiple_choice::multiple_choice_accuracy(
                &items,
                &mut LlamaText::new(&model, &Tokenizer::Byte, None).batched(positions),
            )
            .unwrap()
        };
        assert_eq!(acc(1), acc(BATCH_TOKENS));
    }

    /// Greedy completions decoded in left-padded batches are what each prompt decoded alone
    /// gives, whatever the batch (one row, a few, all at once; a prompt-position budget that
    /// splits them): prompts of every length, one longer than the model's positions, one that
    /// stops at a newline, rows that end at different steps.
    #[test]
    fn batched_completions_do_not_depend_on_the_batch() {
        let model = Llama::new(
            &tiny_cfg(),
            &BuildOptions {
                seed: 11,
                ..Default::default()
            },
            Device::Cpu,
        )
        .unwrap();
        let long = "y".repeat(100);
        let prompts: Vec<&str> = vec!["ab", "x = 1\n", &long, "", "the quick brown fox", "q"];
        // 40 new tokens: the long prompt keeps 32 positions and gets 32 new ones, so a short
        // prompt's 40 cannot join its batch (32 + 40 > 64 positions).
        let how = Completion {
            max_new: 40,
            temperature: 0.0,
            stop: StopRule::Newline,
        };
        let alone: Vec<String> = prompts
            .iter()
            .map(|p| {
                LlamaText::new(&model, &Tokenizer::Byte, None)
                    .decoding_rows(1)
                    .complete(p, &how)
                    .unwrap()
            })
            .collect();
        let distinct: std::collections::HashSet<&String> = alone.iter().collect();
        assert!(distinct.len() >= 4, "the prompts decode alike: {alone:?}");
        let lengths: std::collections::HashSet<usize> = alone.iter().map(|t| t.len()).collect();
        assert!(lengths.len() >= 2, "every row ends at one step: {alone:?}");
        for (rows, positions) in [(2, BATCH_TOKENS), (3, 130), (DECODE_ROWS, BATCH_TOKENS)] {
            let got = LlamaText::new(&model, &Tokenizer::Byte, None)
                .decoding_rows(rows)
                .batched(positions)
                .completions(&prompts, &how)
                .unwrap();
            assert_eq!(got, alone, "{rows} rows, {positions} positions");
        }
    }

    /// Seeded samples are the same whatever the batch (one row at a time, 4, all 6 at once) and
    /// the seed decides them: another seed gives other samples; and they do vary.
    #[test]
    fn seeded_samples_do_not_depend_on_the_batch() {
        let model = Llama::new(
            &tiny_cfg(),
            &BuildOptions {
                seed: 12,
                ..Default::default()
            },
            Device::Cpu,
        )
        .unwrap();
        let how = Completion {
            max_new: 12,
            temperature: 1.0,
            stop: StopRule::Newline,
        };
        let draw = |rows: usize, seed: u64| {
            LlamaText::new(&model, &Tokenizer::Byte, None)
                .decoding_rows(rows)
                .samples("def f(x):", 6, &how, seed)
                .unwrap()
        };
        let alone = draw(1, 5);
        assert_eq!(alone.len(), 6);
        let distinct: std::collections::HashSet<&String> = alone.iter().collect();
        assert!(distinct.len() >= 3, "samples alike: {alone:?}");
        assert_eq!(draw(4, 5), alone);
        assert_eq!(draw(DECODE_ROWS, 5), alone);
        assert_ne!(draw(DECODE_ROWS, 6), alone, "the seed decides the samples");
    }

    #[test]
    fn greedy_completion_matches_the_models_generate_and_loglikelihood_chains() {
        let model = Llama::new(&tiny_cfg(), &BuildOptions::default(), Device::Cpu).unwrap();
        let mut lm = LlamaText::new(&model, &Tokenizer::Byte, None);
        let how = Completion {
            max_new: 12,
            temperature: 0.0,
            stop: StopRule::Eos,
        };
        let text = lm.complete("ab", &how).unwrap();
        let mut prompt = vec![BOS];
        prompt.extend(ByteTokenizer.encode("ab"));
        let want = model.generate(&prompt, 12, 0.0, Some(EOS), true).unwrap();
        let want: Vec<i64> = want.into_iter().filter(|&t| t != EOS).collect();
        assert_eq!(text, ByteTokenizer.decode(&want));

        // log p(xy | c) = log p(x | c) + log p(y | cx), and each is negative.
        let whole = lm.loglikelihood("hello ", "wo").unwrap();
        let a = lm.loglikelihood("hello ", "w").unwrap();
        let b = lm.loglikelihood("hello w", "o").unwrap();
        assert!(a < 0.0 && b < 0.0);
        assert!((whole - (a + b)).abs() < 1e-4, "{whole} vs {a} + {b}");
        // Longer than the 64 positions: still scored, on the window's end.
        let long = "x".repeat(200);
        assert!(lm.loglikelihood(&long, "yz").unwrap().is_finite());
        let out = lm
            .complete(
                &long,
                &Completion {
                    max_new: 400,
                    temperature: 1.0,
                    stop: StopRule::Newline,
                },
            )
            .unwrap();
        // At most 64 new tokens: characters, since a sampled byte that is not UTF-8 decodes to
        // U+FFFD, three bytes long.
        assert!(
            out.chars().count() <= 64,
            "{} characters",
            out.chars().count()
        );
    }
}
