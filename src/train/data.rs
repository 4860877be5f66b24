//! Training and evaluation data: reading sources, the held-out split, and batches.
//!
//! A source is a `.txt`/`.md`/`.py` file (cut into documents of about [`CHUNK_BYTES`] at line
//! boundaries), a folder of such files (one document each), a `.jsonl` file (one document per
//! line, from the configured fields; a malformed line fails the run or is skipped, as
//! `data.on_bad_line` says), or pre-tokenized `.npy` token shards, a file or among a folder's
//! files ([`super::shards`]: documents end at the EOS id). `builtin:NAME` is `NAME` under the
//! data folder. Documents
//! are held out for evaluation by the hash of their text, so the split is the same for every run
//! and seed. CPT packs documents into one token stream cut into windows; IFT puts one
//! prompt/response pair per row, padded, with the loss only on the response.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::Tensor;

use super::TrainError;
use crate::model::tokenizer::Tokenizer;
use crate::rng::Rng;
use crate::spec::{BadLine, DataSpec, Regime};

/// Target id that the loss ignores.
pub const IGNORE: i64 = -100;

/// Size a single text file is cut into, so that it has documents to hold out.
pub const CHUNK_BYTES: usize = 4096;

/// One raw document.
#[derive(Debug, Clone, PartialEq)]
pub enum RawDoc {
    /// Plain text (CPT).
    Text(String),
    /// A prompt and its response (IFT).
    Pair(String, String),
    /// Token ids of the model's tokenizer, checked to be in its vocabulary (CPT).
    Tokens(Vec<i64>),
}

impl RawDoc {
    fn key(&self) -> Vec<u8> {
        match self {
            RawDoc::Text(t) => t.as_bytes().to_vec(),
            RawDoc::Pair(p, r) => [p.as_bytes(), b"\0", r.as_bytes()].concat(),
            RawDoc::Tokens(ids) => ids.iter().flat_map(|t| t.to_le_bytes()).collect(),
        }
    }
}

/// The documents of a source, and warnings about what was left out of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Documents {
    /// The documents, in the source's order.
    pub docs: Vec<RawDoc>,
    /// One line per problem that did not stop the reading (skipped malformed lines).
    pub warnings: Vec<String>,
}

/// A tokenized example: tokens, and which of them are targets of the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids, BOS first and EOS last.
    pub tokens: Vec<i64>,
    /// Tokens before this index are prompt (not predicted); 0 for plain text.
    pub prompt_len: usize,
}

/// Resolve a data source: `builtin:NAME` under `data_dir` (trying `.jsonl` and `.txt`
/// extensions too), anything else a path.
pub fn resolve_source(source: &str, data_dir: &Path) -> Result<PathBuf, TrainError> {
    let Some(name) = source.strip_prefix("builtin:") else {
        let p = PathBuf::from(source);
        return if p.exists() {
            Ok(p)
        } else {
            Err(TrainError::Data(format!(
                "data source {source} does not exist"
            )))
        };
    };
    if let Some(p) = crate::data::materialize(name, data_dir).map_err(|e| {
        TrainError::Data(format!(
            "generating builtin:{name} in {}: {e}",
            data_dir.display()
        ))
    })? {
        return Ok(p);
    }
    let base = data_dir.join(name);
    for candidate in [
        base.clone(),
        base.with_extension("jsonl"),
        base.with_extension("txt"),
    ] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    Err(TrainError::Data(format!(
        "builtin data set `{name}` is not at {} (set SWEEP_DATA, or run scripts/setup-data to fetch it)",
        base.display()
    )))
}

fn is_text_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("txt" | "md" | "py")
    )
}

fn is_token_shard(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()) == Some("npy")
}

/// The documents of a `.npy` token shard.
fn read_shard(path: &Path, tok: &Tokenizer) -> Result<Vec<RawDoc>, TrainError> {
    let bytes = crate::util::read_regular_file(path)
        .map_err(|e| TrainError::Data(format!("reading {}: {e}", path.display())))?;
    let ids = super::shards::parse_npy(&bytes, path)?;
    let docs = super::shards::documents(&ids, tok.specials().eos, tok.vocab_size(), path)?;
    Ok(docs.into_iter().map(RawDoc::Tokens).collect())
}

/// Cut text into pieces of about `max` bytes at line ends.
pub fn chunk_text(text: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.split_inclusive('\n') {
        if !cur.is_empty() && cur.len() + line.len() > max {
            out.push(std::mem::take(&mut cur));
        }
        cur.push_str(line);
    }
    if !cur.trim().is_empty() {
        // A short tail joins the previous piece rather than become a tiny document.
        match out.last_mut() {
            Some(prev) if cur.len() < max / 4 => prev.push_str(&cur),
            _ => out.push(cur),
        }
    }
    out
}

/// Read the documents of a source in the given regime; token shards are checked against the
/// model's tokenizer `tok`.
pub fn read_documents(
    path: &Path,
    regime: Regime,
    spec: &DataSpec,
    tok: &Tokenizer,
) -> Result<Documents, TrainError> {
    let io = |e: std::io::Error| TrainError::Data(format!("reading {}: {e}", path.display()));
    let ift_needs_jsonl = || {
        TrainError::Data(format!(
            "{}: instruction data must be a .jsonl file with `{}` and `{}` fields",
            path.display(),
            spec.prompt_field,
            spec.response_field
        ))
    };
    let docs = |docs| Documents {
        docs,
        warnings: Vec::new(),
    };
    if path.is_dir() {
        if regime == Regime::Ift {
            return Err(ift_needs_jsonl());
        }
        let mut files = Vec::new();
        collect_files(path, &mut files).map_err(io)?;
        files.sort();
        let mut out = Vec::new();
        for f in files {
            if is_token_shard(&f) {
                out.extend(read_shard(&f, tok)?);
                continue;
            }
            let bytes = crate::util::read_regular_file(&f)
                .map_err(|e| TrainError::Data(format!("reading {}: {e}", f.display())))?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if !text.trim().is_empty() {
                out.push(RawDoc::Text(text));
            }
        }
        if out.is_empty() {
            return Err(TrainError::Data(format!(
                "{} holds no .txt, .md, .py or .npy files with content",
                path.display()
            )));
        }
        return Ok(docs(out));
    }
    if is_token_shard(path) {
        if regime == Regime::Ift {
            return Err(ift_needs_jsonl());
        }
        let out = read_shard(path, tok)?;
        if out.is_empty() {
            return Err(TrainError::Data(format!(
                "{} holds no tokens",
                path.display()
            )));
        }
        return Ok(docs(out));
    }
    let text = crate::util::read_regular_text(path).map_err(io)?;
    if path.extension().and_then(|e| e.to_str()) == Some("jsonl") {
        return parse_jsonl(&text, path, regime, spec);
    }
    if regime == Regime::Ift {
        return Err(ift_needs_jsonl());
    }
    Ok(docs(
        chunk_text(&text, CHUNK_BYTES)
            .into_iter()
            .map(RawDoc::Text)
            .collect(),
    ))
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if is_text_file(&p) || is_token_shard(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// The document of one JSONL line, or what is wrong with it.
fn parse_jsonl_line(line: &str, regime: Regime, spec: &DataSpec) -> Result<RawDoc, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let field = |name: &str| -> Result<String, String> {
        v.get(name)
            .and_then(|x| x.as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("no string field `{name}`"))
    };
    Ok(match regime {
        Regime::Cpt => match field(&spec.text_field) {
            Ok(t) => RawDoc::Text(t),
            // Instruction data read as plain text (a source set for forgetting).
            Err(e) => match (field(&spec.prompt_field), field(&spec.response_field)) {
                (Ok(p), Ok(r)) => RawDoc::Text(p + &r),
                _ => return Err(e),
            },
        },
        Regime::Ift => RawDoc::Pair(field(&spec.prompt_field)?, field(&spec.response_field)?),
    })
}

/// Line numbers a skip warning lists before "...".
const SKIPPED_SHOWN: usize = 5;

/// Parse JSONL documents: `text_field` for CPT, `prompt_field`/`response_field` for IFT. A
/// malformed line is an error naming the file and line (`data.on_bad_line = "fail"`), or is left
/// out with one warning for all of them (`"skip"`).
pub fn parse_jsonl(
    text: &str,
    path: &Path,
    regime: Regime,
    spec: &DataSpec,
) -> Result<Documents, TrainError> {
    let mut docs = Vec::new();
    let mut skipped: Vec<(usize, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_jsonl_line(line, regime, spec) {
            Ok(d) => docs.push(d),
            Err(what) => match spec.on_bad_line {
                BadLine::Fail => {
                    return Err(TrainError::Data(format!(
                        "{}:{}: {what} (fix the line, or set data.on_bad_line = \"skip\" to \
                         leave malformed lines out)",
                        path.display(),
                        i + 1
                    )))
                }
                BadLine::Skip => skipped.push((i + 1, what)),
            },
        }
    }
    let mut warnings = Vec::new();
    if let Some((first_line, first_what)) = skipped.first() {
        let mut lines: Vec<String> = skipped
            .iter()
            .take(SKIPPED_SHOWN)
            .map(|(n, _)| n.to_string())
            .collect();
        if skipped.len() > SKIPPED_SHOWN {
            lines.push("...".into());
        }
        warnings.push(format!(
            "{}: skipped {} malformed line{} of {} (lines {}; line {first_line}: {first_what})",
            path.display(),
            skipped.len(),
            if skipped.len() == 1 { "" } else { "s" },
            docs.len() + skipped.len(),
            lines.join(", ")
        ));
    }
    if docs.is_empty() {
        return Err(TrainError::Data(format!(
            "{} has no records{}",
            path.display(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({} malformed lines skipped)", skipped.len())
            }
        )));
    }
    Ok(Documents { docs, warnings })
}

/// Tokenize a document with the model's tokenizer: BOS (when the tokenizer uses one), text,
/// EOS; a pair's prompt is not a target.
pub fn tokenize(doc: &RawDoc, tok: &Tokenizer) -> Result<Example, TrainError> {
    let specials = tok.specials();
    let mut tokens: Vec<i64> = specials.bos.into_iter().collect();
    let prompt_len = match doc {
        RawDoc::Text(t) => {
            tokens.extend(tok.encode(t)?);
            0
        }
        RawDoc::Pair(p, r) => {
            tokens.extend(tok.encode(p)?);
            let n = tokens.len();
            tokens.extend(tok.encode(r)?);
            n
        }
        // Already tokens: as they are, with an EOS at the end to separate them from the next.
        RawDoc::Tokens(ids) => {
            let mut tokens = ids.clone();
            if tokens.last() != Some(&specials.eos) {
                tokens.push(specials.eos);
            }
            return Ok(Example {
                tokens,
                prompt_len: 0,
            });
        }
    };
    tokens.push(specials.eos);
    Ok(Example { tokens, prompt_len })
}

/// Split documents into (train, held out): documents ordered by the hash of their text are held
/// out until they hold `eval_tokens` tokens, but never more than half of them (and none when
/// there is a single document). Training documents keep their order.
pub fn split_heldout(
    docs: Vec<RawDoc>,
    eval_tokens: u64,
    tok: &Tokenizer,
) -> Result<(Vec<Example>, Vec<Example>), TrainError> {
    let examples = docs
        .iter()
        .map(|d| tokenize(d, tok))
        .collect::<Result<Vec<Example>, TrainError>>()?;
    let mut order: Vec<(Vec<u8>, usize)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (Sha256::digest(d.key()).to_vec(), i))
        .collect();
    order.sort();
    let mut held = vec![false; docs.len()];
    let mut tokens = 0u64;
    for (_, i) in order.iter().take(docs.len() / 2) {
        if tokens >= eval_tokens {
            break;
        }
        held[*i] = true;
        tokens += examples[*i].tokens.len() as u64;
    }
    let mut train = Vec::new();
    let mut heldout = Vec::new();
    for (ex, h) in examples.into_iter().zip(held) {
        if h {
            heldout.push(ex);
        } else {
            train.push(ex);
        }
    }
    Ok((train, heldout))
}

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

/// The rows of a data set in a deterministic order that depends on the seed and the epoch.
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
}

impl Rows {
    /// Rows for a regime, instruction rows padded with `pad`; fails when there is not a single
    /// full row.
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
            // An example whose response starts beyond the window has nothing to learn from.
            Regime::Ift => Rows::Examples {
                examples: examples
                    .into_iter()
                    .filter(|e| e.prompt_len.max(1) <= seq_len && e.tokens.len() > e.prompt_len)
                    .collect(),
                seq_len,
                pad,
            },
        };
        if rows.is_empty() {
            return Err(TrainError::Data(format!(
                "{what} has too little data for one sequence of {seq_len} tokens"
            )));
        }
        Ok(rows)
    }

    /// Number of distinct rows (one epoch).
    pub fn len(&self) -> usize {
        match self {
            Rows::Packed { stream, seq_len } => stream.len().saturating_sub(1) / (*seq_len).max(1),
            Rows::Examples { examples, .. } => examples.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` of the underlying order (no shuffling).
    pub fn row(&self, i: usize) -> Row {
        match self {
            Rows::Packed { stream, seq_len } => {
                let s = i * seq_len;
                let w = &stream[s..s + seq_len + 1];
                (w[..*seq_len].to_vec(), w[1..].to_vec())
            }
            Rows::Examples {
                examples,
                seq_len,
                pad,
            } => {
                let ex = &examples[i];
                let mut inputs = vec![*pad; *seq_len];
                let mut targets = vec![IGNORE; *seq_len];
                let n = ex.tokens.len().saturating_sub(1).min(*seq_len);
                for j in 0..n {
                    inputs[j] = ex.tokens[j];
                    // Token j + 1 is a target when it belongs to the response.
                    if j + 1 >= ex.prompt_len {
                        targets[j] = ex.tokens[j + 1];
                    }
                }
                (inputs, targets)
            }
        }
    }

    /// Tokens that are targets in row `i`.
    pub fn target_tokens(&self, i: usize) -> usize {
        self.row(i).1.iter().filter(|&&t| t != IGNORE).count()
    }
}

/// Training rows in a seeded order, reshuffled every epoch; the position is the count of rows
/// consumed, so a resumed run continues exactly where it stopped.
#[derive(Debug)]
pub struct Sampler {
    rows: Rows,
    seed: u64,
    epoch: Option<(u64, Vec<usize>)>,
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

    /// The rows at positions `pos..pos + n`.
    pub fn rows_at(&mut self, pos: u64, n: usize) -> Vec<Row> {
        let len = self.rows.len().max(1) as u64;
        (0..n as u64)
            .map(|k| {
                let p = pos + k;
                let (epoch, idx) = (p / len, (p % len) as usize);
                if self.epoch.as_ref().map(|e| e.0) != Some(epoch) {
                    let mut perm: Vec<usize> = (0..len as usize).collect();
                    Rng::new(self.seed, 1000 + epoch).shuffle(&mut perm);
                    self.epoch = Some((epoch, perm));
                }
                let i = self.epoch.as_ref().map_or(idx, |e| e.1[idx]);
                self.rows.row(i)
            })
            .collect()
    }
}

/// Evaluation rows: the first rows of held-out data that hold `max_tokens` target tokens.
pub fn eval_rows(rows: &Rows, max_tokens: u64) -> Vec<Row> {
    let mut out = Vec::new();
    let mut tokens = 0u64;
    for i in 0..rows.len() {
        if tokens >= max_tokens {
            break;
        }
        tokens += rows.target_tokens(i) as u64;
        out.push(rows.row(i));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tokenizer::{BOS, EOS, PAD};

    fn spec() -> DataSpec {
        serde_json::from_str(
            r#"{"regime":"ift","domain":"math","target":"x","source":"y","text_field":"text",
            "prompt_field":"prompt","response_field":"response","epoch_tokens":null}"#,
        )
        .unwrap()
    }

    #[test]
    fn ift_rows_mask_the_prompt() {
        let docs = parse_jsonl(
            r#"{"prompt":"ab","response":"cd"}"#,
            Path::new("x.jsonl"),
            Regime::Ift,
            &spec(),
        )
        .unwrap()
        .docs;
        let ex = tokenize(&docs[0], &Tokenizer::Byte).unwrap();
        assert_eq!(ex.tokens, vec![BOS, 97, 98, 99, 100, EOS]);
        assert_eq!(ex.prompt_len, 3);
        let rows = Rows::new(vec![ex], Regime::Ift, 8, PAD, "t").unwrap();
        let (x, y) = rows.row(0);
        assert_eq!(x, vec![BOS, 97, 98, 99, 100, PAD, PAD, PAD]);
        // Predicting c (after b), d, EOS only.
        assert_eq!(
            y,
            vec![IGNORE, IGNORE, 99, 100, EOS, IGNORE, IGNORE, IGNORE]
        );
    }

    #[test]
    fn cpt_windows_and_sampler_are_deterministic() {
        let ex = Example {
            tokens: (0..21).collect(),
            prompt_len: 0,
        };
        let rows = Rows::new(vec![ex], Regime::Cpt, 4, PAD, "t").unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows.row(1), (vec![4, 5, 6, 7], vec![5, 6, 7, 8]));
        let mut a = Sampler::new(rows, 3);
        let first: Vec<Row> = a.rows_at(0, 7);
        let again = a.rows_at(3, 2);
        assert_eq!(&first[3..5], &again[..]);
        // An epoch visits every row once.
        let mut starts: Vec<i64> = first[..5].iter().map(|r| r.0[0]).collect();
        starts.sort();
        assert_eq!(starts, vec![0, 4, 8, 12, 16]);
    }

    #[test]
    fn heldout_split_is_by_document_and_stable() {
        let docs: Vec<RawDoc> = (0..10)
            .map(|i| RawDoc::Text(format!("doc {i} ").repeat(10)))
            .collect();
        let (train, held) = split_heldout(docs.clone(), 100, &Tokenizer::Byte).unwrap();
        assert_eq!(train.len() + held.len(), 10);
        assert!(!held.is_empty() && held.len() <= 5);
        let (train2, held2) = split_heldout(docs, 100, &Tokenizer::Byte).unwrap();
        assert_eq!((train, held), (train2, held2));
        assert_eq!(chunk_text("a\nb\nc\n", 4), vec!["a\nb\n", "c\n"]);
        assert_eq!(chunk_text("aaaaaaaaaaa\nb\n", 12), vec!["aaaaaaaaaaa\nb\n"]);
    }

    const BAD: &str = "{\"prompt\":\"a\",\"response\":\"b\"}\nnot json\n\n{\"prompt\":\"c\"}\n\
                       {\"prompt\":\"d\",\"response\":\"e\"}\n";

    #[test]
    fn a_malformed_line_fails_with_its_file_and_line_by_default() {
        let err = parse_jsonl(BAD, Path::new("d/x.jsonl"), Regime::Ift, &spec())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("data: d/x.jsonl:2: not JSON: "), "{err}");
        assert!(err.contains("data.on_bad_line = \"skip\""), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        // The first bad line of a valid-JSON kind: a missing field, named.
        let err = parse_jsonl(
            &BAD.replace("not json\n", ""),
            Path::new("x.jsonl"),
            Regime::Ift,
            &spec(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("x.jsonl:3: no string field `response`"),
            "{err}"
        );
    }

    #[test]
    fn malformed_lines_are_skipped_with_one_warning_when_asked() {
        let mut sp = spec();
        sp.on_bad_line = BadLine::Skip;
        let docs = parse_jsonl(BAD, Path::new("x.jsonl"), Regime::Ift, &sp).unwrap();
        assert_eq!(
            docs.docs,
            vec![
                RawDoc::Pair("a".into(), "b".into()),
                RawDoc::Pair("d".into(), "e".into())
            ]
        );
        assert_eq!(docs.warnings.len(), 1);
        let w = &docs.warnings[0];
        assert!(
            w.starts_with("x.jsonl: skipped 2 malformed lines of 4 (lines 2, 4; line 2: not JSON"),
            "{w}"
        );
        // Past five, the line numbers end with "...".
        let many = "x\n".repeat(7) + "{\"prompt\":\"a\",\"response\":\"b\"}\n";
        let w = &parse_jsonl(&many, Path::new("m.jsonl"), Regime::Ift, &sp)
            .unwrap()
            .warnings[0];
        assert!(
            w.contains("skipped 7 malformed lines of 8 (lines 1, 2, 3, 4, 5, ...;"),
            "{w}"
        );
        // Nothing left is still an error, saying why.
        let err = parse_jsonl("x\ny\n", Path::new("e.jsonl"), Regime::Ift, &sp)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("e.jsonl has no records (2 malformed lines skipped)"),
            "{err}"
        );
        // A clean file has no warning.
        let clean = parse_jsonl(
            BAD.lines().next().unwrap(),
            Path::new("c.jsonl"),
            Regime::Ift,
            &sp,
        );
        assert!(clean.unwrap().warnings.is_empty());
    }

    #[test]
    fn token_shards_are_documents_split_at_eos() {
        let dir = tempfile::tempdir().unwrap();
        let mut sp = spec();
        sp.regime = Regime::Cpt;
        let eos = EOS as u16;
        // Two documents in one shard, one (without a final EOS) in another, in a folder beside
        // a text file.
        let shards = dir.path().join("shards");
        std::fs::create_dir_all(&shards).unwrap();
        let a = super::super::shards::npy_bytes_u16(&[104, 105, eos, 111, eos]);
        std::fs::write(shards.join("a.npy"), a).unwrap();
        let b = super::super::shards::npy_bytes_u16(&[120, 121]);
        std::fs::write(shards.join("b.npy"), b).unwrap();
        std::fs::write(shards.join("c.txt"), "text").unwrap();
        let docs = read_documents(&shards, Regime::Cpt, &sp, &Tokenizer::Byte).unwrap();
        assert_eq!(
            docs.docs,
            vec![
                RawDoc::Tokens(vec![104, 105, EOS]),
                RawDoc::Tokens(vec![111, EOS]),
                RawDoc::Tokens(vec![120, 121]),
                RawDoc::Text("text".into()),
            ]
        );
        // Tokens are used as they are, with an EOS closing each document.
        let ex = tokenize(&docs.docs[2], &Tokenizer::Byte).unwrap();
        assert_eq!(ex.tokens, vec![120, 121, EOS]);
        let rows = Rows::new(
            docs.docs[..3]
                .iter()
                .map(|d| tokenize(d, &Tokenizer::Byte).unwrap())
                .collect(),
            Regime::Cpt,
            3,
            PAD,
            "t",
        )
        .unwrap();
        assert_eq!(rows.row(0), (vec![104, 105, EOS], vec![105, EOS, 111]));
        // A single shard file; ids beyond the tokenizer's vocabulary; instruction tuning.
        let one = shards.join("a.npy");
        assert_eq!(
            read_documents(&one, Regime::Cpt, &sp, &Tokenizer::Byte)
                .unwrap()
                .docs
                .len(),
            2
        );
        let big = dir.path().join("big.npy");
        std::fs::write(&big, super::super::shards::npy_bytes_u16(&[1, 2, 5000])).unwrap();
        let err = read_documents(&big, Regime::Cpt, &sp, &Tokenizer::Byte)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("big.npy: token id 5000 at index 2 is not in 0..264"),
            "{err}"
        );
        let err = read_documents(&one, Regime::Ift, &spec(), &Tokenizer::Byte)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("instruction data must be a .jsonl file"),
            "{err}"
        );
    }

    #[test]
    fn builtin_sources_resolve_under_the_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("math.jsonl"), "{}").unwrap();
        assert_eq!(
            resolve_source("builtin:math", dir.path()).unwrap(),
            dir.path().join("math.jsonl")
        );
        let err = resolve_source("builtin:python", dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("scripts/setup-data"), "{err}");
    }
}
