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

use super::TrainError;
use crate::model::tokenizer::Tokenizer;
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
    /// The bytes the held-out split hashes: the text (a pair's prompt and response with a NUL
    /// between), or the ids' little-endian bytes.
    pub fn key(&self) -> Vec<u8> {
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

/// Cuts a text, line by line, into pieces of about `max` bytes at line ends; a short tail
/// joins the previous piece rather than become a tiny document.
struct Chunker {
    max: usize,
    cur: String,
    /// The last piece cut, held until it is known whether the tail joins it.
    pending: Option<String>,
}

impl Chunker {
    fn new(max: usize) -> Chunker {
        Chunker {
            max,
            cur: String::new(),
            pending: None,
        }
    }

    /// Add one line (with its newline); returns a piece when one is complete.
    fn line(&mut self, line: &str) -> Option<String> {
        let mut out = None;
        if !self.cur.is_empty() && self.cur.len() + line.len() > self.max {
            out = self.pending.replace(std::mem::take(&mut self.cur));
        }
        self.cur.push_str(line);
        out
    }

    /// The last pieces.
    fn finish(self) -> Vec<String> {
        let cur = self.cur;
        match (self.pending, cur.trim().is_empty()) {
            (prev, true) => prev.into_iter().collect(),
            (Some(prev), false) if cur.len() < self.max / 4 => vec![prev + &cur],
            (prev, false) => prev.into_iter().chain([cur]).collect(),
        }
    }
}

/// Cut text into pieces of about `max` bytes at line ends.
pub fn chunk_text(text: &str, max: usize) -> Vec<String> {
    let mut c = Chunker::new(max);
    let mut out: Vec<String> = text
        .split_inclusive('\n')
        .filter_map(|l| c.line(l))
        .collect();
    out.extend(c.finish());
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
    let mut docs = Vec::new();
    let warnings = for_each_document(path, regime, spec, tok, &mut |d| {
        docs.push(d);
        Ok(())
    })?;
    Ok(Documents { docs, warnings })
}

/// The lines of a file, newline included, read as they are needed; the text must be UTF-8.
fn for_each_line(
    path: &Path,
    f: &mut dyn FnMut(&str) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    use std::io::BufRead;
    let io = |e: std::io::Error| TrainError::Data(format!("reading {}: {e}", path.display()));
    let mut r = std::io::BufReader::with_capacity(
        1 << 20,
        crate::util::open_regular_file(path).map_err(io)?,
    );
    let mut buf = Vec::new();
    let mut at = 0u64;
    loop {
        buf.clear();
        if r.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            return Ok(());
        }
        let line = std::str::from_utf8(&buf).map_err(|e| {
            TrainError::Data(format!(
                "reading {}: it is not UTF-8 text (invalid byte at offset {})",
                path.display(),
                at + e.valid_up_to() as u64
            ))
        })?;
        f(line)?;
        at += buf.len() as u64;
    }
}

/// Hand each document of a source to `f`, in the source's order, reading no more of the source
/// at a time than one file of a folder, one line of a JSONL file or one piece of a text file;
/// returns the warnings about what was left out. Token shards are checked against `tok`.
pub fn for_each_document(
    path: &Path,
    regime: Regime,
    spec: &DataSpec,
    tok: &Tokenizer,
    f: &mut dyn FnMut(RawDoc) -> Result<(), TrainError>,
) -> Result<Vec<String>, TrainError> {
    let io = |e: std::io::Error| TrainError::Data(format!("reading {}: {e}", path.display()));
    let ift_needs_jsonl = || {
        TrainError::Data(format!(
            "{}: instruction data must be a .jsonl file with `{}` and `{}` fields",
            path.display(),
            spec.prompt_field,
            spec.response_field
        ))
    };
    let mut n = 0usize;
    let mut count = |d: RawDoc| {
        n += 1;
        f(d)
    };
    if path.is_dir() {
        if regime == Regime::Ift {
            return Err(ift_needs_jsonl());
        }
        let mut files = Vec::new();
        collect_files(path, &mut files).map_err(io)?;
        files.sort();
        for file in files {
            if is_token_shard(&file) {
                for d in read_shard(&file, tok)? {
                    count(d)?;
                }
                continue;
            }
            let bytes = crate::util::read_regular_file(&file)
                .map_err(|e| TrainError::Data(format!("reading {}: {e}", file.display())))?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if !text.trim().is_empty() {
                count(RawDoc::Text(text))?;
            }
        }
        if n == 0 {
            return Err(TrainError::Data(format!(
                "{} holds no .txt, .md, .py or .npy files with content",
                path.display()
            )));
        }
        return Ok(Vec::new());
    }
    if is_token_shard(path) {
        if regime == Regime::Ift {
            return Err(ift_needs_jsonl());
        }
        for d in read_shard(path, tok)? {
            count(d)?;
        }
        if n == 0 {
            return Err(TrainError::Data(format!(
                "{} holds no tokens",
                path.display()
            )));
        }
        return Ok(Vec::new());
    }
    if path.extension().and_then(|e| e.to_str()) == Some("jsonl") {
        let mut lines = JsonlLines::new(path, regime, spec);
        for_each_line(path, &mut |line| match lines.line(line)? {
            Some(d) => count(d),
            None => Ok(()),
        })?;
        return lines.finish(n);
    }
    if regime == Regime::Ift {
        return Err(ift_needs_jsonl());
    }
    let mut chunker = Chunker::new(CHUNK_BYTES);
    for_each_line(path, &mut |line| match chunker.line(line) {
        Some(piece) => count(RawDoc::Text(piece)),
        None => Ok(()),
    })?;
    for piece in chunker.finish() {
        count(RawDoc::Text(piece))?;
    }
    Ok(Vec::new())
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

/// JSONL documents line by line: `text_field` for CPT, `prompt_field`/`response_field` for IFT.
/// A malformed line is an error naming the file and line (`data.on_bad_line = "fail"`), or is
/// left out with one warning for all of them (`"skip"`).
struct JsonlLines<'a> {
    path: &'a Path,
    regime: Regime,
    spec: &'a DataSpec,
    line_no: usize,
    /// The first skipped lines (number, what was wrong), and how many were skipped.
    skipped: Vec<(usize, String)>,
    skipped_count: usize,
}

impl<'a> JsonlLines<'a> {
    fn new(path: &'a Path, regime: Regime, spec: &'a DataSpec) -> JsonlLines<'a> {
        JsonlLines {
            path,
            regime,
            spec,
            line_no: 0,
            skipped: Vec::new(),
            skipped_count: 0,
        }
    }

    /// The document of the next line (newline included), if it is not blank or skipped.
    fn line(&mut self, line: &str) -> Result<Option<RawDoc>, TrainError> {
        self.line_no += 1;
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            return Ok(None);
        }
        match parse_jsonl_line(line, self.regime, self.spec) {
            Ok(d) => Ok(Some(d)),
            Err(what) => match self.spec.on_bad_line {
                BadLine::Fail => Err(TrainError::Data(format!(
                    "{}:{}: {what} (fix the line, or set data.on_bad_line = \"skip\" to \
                     leave malformed lines out)",
                    self.path.display(),
                    self.line_no
                ))),
                BadLine::Skip => {
                    self.skipped_count += 1;
                    if self.skipped.len() <= SKIPPED_SHOWN {
                        self.skipped.push((self.line_no, what));
                    }
                    Ok(None)
                }
            },
        }
    }

    /// The warnings, once `docs` documents were read; no document at all is an error.
    fn finish(self, docs: usize) -> Result<Vec<String>, TrainError> {
        let skipped = self.skipped_count;
        if docs == 0 {
            return Err(TrainError::Data(format!(
                "{} has no records{}",
                self.path.display(),
                if skipped == 0 {
                    String::new()
                } else {
                    format!(" ({skipped} malformed lines skipped)")
                }
            )));
        }
        let Some((first_line, first_what)) = self.skipped.first() else {
            return Ok(Vec::new());
        };
        let mut lines: Vec<String> = self
            .skipped
            .iter()
            .take(SKIPPED_SHOWN)
            .map(|(n, _)| n.to_string())
            .collect();
        if skipped > SKIPPED_SHOWN {
            lines.push("...".into());
        }
        Ok(vec![format!(
            "{}: skipped {skipped} malformed line{} of {} (lines {}; line {first_line}: {first_what})",
            self.path.display(),
            if skipped == 1 { "" } else { "s" },
            docs + skipped,
            lines.join(", ")
        )])
    }
}

/// Parse JSONL documents held in memory (see [`JsonlLines`]).
pub fn parse_jsonl(
    text: &str,
    path: &Path,
    regime: Regime,
    spec: &DataSpec,
) -> Result<Documents, TrainError> {
    let mut lines = JsonlLines::new(path, regime, spec);
    let mut docs = Vec::new();
    for line in text.split_inclusive('\n') {
        docs.extend(lines.line(line)?);
    }
    let warnings = lines.finish(docs.len())?;
    Ok(Documents { docs, warnings })
}

/// Tokenize a document with the model's tokenizer: BOS (when the tokenizer uses one), text,
/// EOS; a pair's prompt is not a target. With a chat template, a pair is the template's
/// rendering of a user turn and an assistant turn (BOS, EOS and turn markers as the template
/// writes them), and the prompt is everything up to the assistant's content.
pub fn tokenize(doc: &RawDoc, tok: &Tokenizer) -> Result<Example, TrainError> {
    #[cfg(feature = "torch")]
    if let (RawDoc::Pair(p, r), Some(chat)) = (doc, tok.chat()) {
        return chat_example(p, r, tok, chat);
    }
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

/// An instruction pair framed by a chat template: the prompt is the rendering of the user turn
/// with the generation prompt, which must begin the rendering of the whole exchange, in text
/// and in tokens (else the template cannot mark where the response starts: an error).
#[cfg(feature = "torch")]
fn chat_example(
    prompt: &str,
    response: &str,
    tok: &Tokenizer,
    chat: &crate::model::chat::ChatTemplate,
) -> Result<Example, TrainError> {
    let bad = |why: String| TrainError::Data(format!("data.chat_template: {why}"));
    let head = chat.render(&[("user", prompt)], true).map_err(bad)?;
    let whole = chat
        .render(&[("user", prompt), ("assistant", response)], false)
        .map_err(bad)?;
    if !whole.starts_with(&head) {
        return Err(bad(format!(
            "the rendering of a user turn with add_generation_prompt ({head:?}) does not begin the rendering of the exchange, so the response's start cannot be marked; use another template"
        )));
    }
    let prompt_tokens = tok.encode(&head)?;
    let tokens = tok.encode(&whole)?;
    if !tokens.starts_with(&prompt_tokens) {
        return Err(bad(format!(
            "the prompt {head:?} tokenizes differently alone and before its response, so the response's start cannot be marked"
        )));
    }
    Ok(Example {
        prompt_len: prompt_tokens.len(),
        tokens,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::tokenizer::{EOS, PAD};
    use crate::rng::Rng;
    use crate::train::rows::Rows;

    pub(crate) fn spec() -> DataSpec {
        serde_json::from_str(
            r#"{"regime":"ift","domain":"math","target":"x","source":"y","text_field":"text",
            "prompt_field":"prompt","response_field":"response","epoch_tokens":null}"#,
        )
        .unwrap()
    }

    #[test]
    fn text_is_cut_at_line_ends_with_a_short_tail_joined() {
        assert_eq!(chunk_text("a\nb\nc\n", 4), vec!["a\nb\n", "c\n"]);
        assert_eq!(chunk_text("aaaaaaaaaaa\nb\n", 12), vec!["aaaaaaaaaaa\nb\n"]);
        assert_eq!(chunk_text("aaaa\nbbbb\n  \n", 5), vec!["aaaa\n", "bbbb\n"]);
        assert_eq!(chunk_text("", 5), Vec::<String>::new());
        // The line-by-line chunker cuts as the whole-text one it replaced did.
        fn whole(text: &str, max: usize) -> Vec<String> {
            let mut out = Vec::new();
            let mut cur = String::new();
            for line in text.split_inclusive('\n') {
                if !cur.is_empty() && cur.len() + line.len() > max {
                    out.push(std::mem::take(&mut cur));
                }
                cur.push_str(line);
            }
            if !cur.trim().is_empty() {
                match out.last_mut() {
                    Some(prev) if cur.len() < max / 4 => prev.push_str(&cur),
                    _ => out.push(cur),
                }
            }
            out
        }
        let mut rng = Rng::new(7, 0);
        for _ in 0..300 {
            let text: String = (0..rng.below(40))
                .map(|_| ["a", "bb", " ", "\n", "cccccc", "\n\n"][rng.below(6) as usize])
                .collect();
            let max = 1 + rng.below(16) as usize;
            assert_eq!(chunk_text(&text, max), whole(&text, max), "{text:?} {max}");
        }
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
        assert_eq!(
            rows.row(0).unwrap(),
            (vec![104, 105, EOS], vec![105, EOS, 111])
        );
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

    /// With a chat template, a pair is the template's rendering of the exchange, and the
    /// targets start where the assistant's content does; a template whose generation prompt
    /// does not begin the exchange is an error naming the setting.
    #[cfg(feature = "torch")]
    #[test]
    fn chat_templates_frame_pairs_and_mark_the_response() {
        use crate::model::chat::ChatTemplate;
        let tok = crate::model::tokenizer::tests::tiny_gguf_tokenizer();
        let chml = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<|endoftext|>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";
        let framed = tok
            .clone()
            .with_chat_template(ChatTemplate::new(chml, "", "<|endoftext|>").unwrap())
            .unwrap();
        assert_ne!(framed.identity(), tok.identity(), "caches tell them apart");
        let ex = tokenize(&RawDoc::Pair("the q".into(), "the a".into()), &framed).unwrap();
        assert_eq!(
            framed.decode(&ex.tokens).unwrap(),
            "<user>the q<assistant>the a"
        );
        let eot = tok.specials().eos;
        assert_eq!(ex.tokens.iter().filter(|&&t| t == eot).count(), 2);
        assert_eq!(ex.tokens.last(), Some(&eot), "the turn's end closes it");
        assert_eq!(
            framed.decode(&ex.tokens[..ex.prompt_len]).unwrap(),
            "<user>the q<assistant>"
        );
        let plain = tokenize(&RawDoc::Pair("the q".into(), "the a".into()), &tok).unwrap();
        assert_ne!(plain, ex);
        // Text documents are not framed.
        let text = RawDoc::Text("the q".into());
        assert_eq!(
            tokenize(&text, &framed).unwrap(),
            tokenize(&text, &tok).unwrap()
        );
        let odd = "{% if add_generation_prompt %}<go>{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}";
        let framed = tok
            .with_chat_template(ChatTemplate::new(odd, "", "").unwrap())
            .unwrap();
        let e = tokenize(&RawDoc::Pair("q".into(), "a".into()), &framed)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("data.chat_template") && e.contains("does not begin"),
            "{e}"
        );
    }
}
