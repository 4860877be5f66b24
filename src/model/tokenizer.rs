//! Tokenizers behind one [`Tokenizer`] type: the byte-level one of the builtin models (ids
//! 0..=255 are bytes, then BOS, EOS, PAD) and, with the `torch` feature, byte-level BPE built
//! from a GGUF vocabulary or read from a Hugging Face `tokenizer.json`.

use super::config::BYTE_VOCAB;

/// Beginning of a document (byte tokenizer).
pub const BOS: i64 = 256;
/// End of a document (byte tokenizer).
pub const EOS: i64 = 257;
/// Padding, never a target (byte tokenizer).
pub const PAD: i64 = 258;

/// Byte-level tokenizer: lossless for any UTF-8 text, vocabulary [`BYTE_VOCAB`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// The vocabulary size a model needs to use this tokenizer.
    pub const VOCAB: usize = BYTE_VOCAB;

    /// The token ids of a text (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        text.bytes().map(i64::from).collect()
    }

    /// The text of token ids; special and out-of-range ids are dropped, invalid UTF-8 replaced.
    pub fn decode(&self, ids: &[i64]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&i| u8::try_from(i).ok()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// An error building a tokenizer or running it.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer cannot be built from its source.
    #[error("tokenizer of {source_name}: {msg}")]
    Build {
        /// The GGUF file or Hugging Face folder.
        source_name: String,
        /// What is wrong.
        msg: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Run(String),
}

/// The ids that frame and pad documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    /// Put before every document, when the model's tokenizer adds one.
    pub bos: Option<i64>,
    /// Put after every document (the separator of packed documents).
    pub eos: i64,
    /// Pads instruction rows (never a target).
    pub pad: i64,
}

/// The special token a chat template writes right after an assistant's content (ChatML's
/// `<|im_end|>`, Llama 3's `<|eot_id|>`), if it writes one: what a model tuned on its pairs
/// ends a turn with.
#[cfg(feature = "torch")]
fn turn_end(inner: &tokenizers::Tokenizer, template: &super::chat::ChatTemplate) -> Option<i64> {
    const MARK: &str = "sweep-response-mark";
    let text = template
        .render(&[("user", "q"), ("assistant", MARK)], false)
        .ok()?;
    let after = &text[text.find(MARK)? + MARK.len()..];
    let first = *inner.encode_fast(after, false).ok()?.get_ids().first()?;
    inner
        .get_added_tokens_decoder()
        .get(&first)
        .filter(|t| t.special)
        .map(|_| i64::from(first))
}

/// A tokenizer of some model.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// The builtin byte-level tokenizer.
    Byte,
    /// A Hugging Face `tokenizers` tokenizer (from a GGUF vocabulary or a tokenizer.json).
    #[cfg(feature = "torch")]
    Hf {
        /// The tokenizer.
        inner: Box<tokenizers::Tokenizer>,
        /// Its document framing.
        specials: SpecialIds,
        /// The chat template instruction pairs are framed with (`data.chat_template`), if any.
        chat: Option<std::sync::Arc<super::chat::ChatTemplate>>,
        /// Other ids that end a generated turn besides EOS (Llama 3's `<|eot_id|>`): the rest of
        /// config.json's and generation_config.json's `eos_token_id` lists and
        /// tokenizer_config.json's `eos_token`, or a GGUF's EOT and EOM tokens.
        ends: Vec<i64>,
    },
}

impl Tokenizer {
    /// The token ids of a text, without BOS or EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        match self {
            Tokenizer::Byte => Ok(ByteTokenizer.encode(text)),
            #[cfg(feature = "torch")]
            Tokenizer::Hf { inner, .. } => {
                let enc = inner
                    .encode_fast(text, false)
                    .map_err(|e| TokenizerError::Run(e.to_string()))?;
                Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
            }
        }
    }

    /// The text of token ids, special tokens left out.
    pub fn decode(&self, ids: &[i64]) -> Result<String, TokenizerError> {
        self.decode_skipping(ids, true)
    }

    // Bytes have no special tokens to skip or keep: only the Hugging Face tokenizers read it.
    #[cfg_attr(not(feature = "torch"), allow(unused_variables))]
    fn decode_skipping(&self, ids: &[i64], skip_special: bool) -> Result<String, TokenizerError> {
        match self {
            Tokenizer::Byte => Ok(ByteTokenizer.decode(ids)),
            #[cfg(feature = "torch")]
            Tokenizer::Hf { inner, .. } => {
                let ids: Vec<u32> = ids.iter().filter_map(|&i| u32::try_from(i).ok()).collect();
                inner
                    .decode(&ids, skip_special)
                    .map_err(|e| TokenizerError::Run(e.to_string()))
            }
        }
    }

    /// BOS, EOS and PAD.
    pub fn specials(&self) -> SpecialIds {
        match self {
            Tokenizer::Byte => SpecialIds {
                bos: Some(BOS),
                eos: EOS,
                pad: PAD,
            },
            #[cfg(feature = "torch")]
            Tokenizer::Hf { specials, .. } => *specials,
        }
    }

    /// What makes its output what it is, for caches of its tokens: `byte`, or the sha256 of a
    /// Hugging Face tokenizer's full serialization and its BOS/EOS/PAD. Two tokenizers with one
    /// identity give the same tokens for every text.
    pub fn identity(&self) -> String {
        match self {
            Tokenizer::Byte => "byte".into(),
            #[cfg(feature = "torch")]
            Tokenizer::Hf {
                inner,
                specials,
                chat,
                ..
            } => {
                use sha2::{Digest, Sha256};
                let mut h = Sha256::new();
                h.update(inner.to_string(false).unwrap_or_default());
                h.update(format!(
                    "{:?}/{}/{}",
                    specials.bos, specials.eos, specials.pad
                ));
                if let Some(c) = chat {
                    h.update(format!("chat:{}", c.source));
                }
                let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                format!("hf:{}", &hex[..16])
            }
        }
    }

    /// The same tokenizer, framing instruction pairs with `template`: the byte tokenizer has no
    /// special tokens for one to use.
    #[cfg(feature = "torch")]
    pub fn with_chat_template(
        self,
        template: super::chat::ChatTemplate,
    ) -> Result<Tokenizer, TokenizerError> {
        match self {
            Tokenizer::Byte => Err(TokenizerError::Build {
                source_name: "data.chat_template".into(),
                msg: "the builtin byte tokenizer has no chat template; use a Hugging Face or GGUF model, or leave data.chat_template out".into(),
            }),
            Tokenizer::Hf {
                inner,
                specials,
                mut ends,
                ..
            } => {
                // A base model's files name no end of turn, but its template writes one.
                if let Some(id) = turn_end(&inner, &template) {
                    if id != specials.eos && !ends.contains(&id) {
                        ends.push(id);
                    }
                }
                Ok(Tokenizer::Hf {
                    inner,
                    specials,
                    chat: Some(std::sync::Arc::new(template)),
                    ends,
                })
            }
        }
    }

    /// The same tokenizer with no chat template.
    #[cfg(feature = "torch")]
    pub fn without_chat(&self) -> Tokenizer {
        match self {
            Tokenizer::Byte => Tokenizer::Byte,
            Tokenizer::Hf {
                inner,
                specials,
                ends,
                ..
            } => Tokenizer::Hf {
                inner: inner.clone(),
                specials: *specials,
                chat: None,
                ends: ends.clone(),
            },
        }
    }

    /// Whether a generated token ends the turn: EOS, or another end the model's files name.
    pub fn is_end(&self, id: i64) -> bool {
        match self {
            Tokenizer::Byte => id == EOS,
            #[cfg(feature = "torch")]
            Tokenizer::Hf { specials, ends, .. } => id == specials.eos || ends.contains(&id),
        }
    }

    /// The text of token ids with their special tokens written out (`<|im_start|>`, BOS): the
    /// text that encodes to the same ids again, where [`Tokenizer::decode`] leaves them out.
    pub fn decode_verbatim(&self, ids: &[i64]) -> Result<String, TokenizerError> {
        self.decode_skipping(ids, false)
    }

    /// The text of a token id (its vocabulary entry), if it has one.
    #[cfg(feature = "torch")]
    pub fn token_text(&self, id: i64) -> Option<String> {
        match self {
            Tokenizer::Byte => None,
            Tokenizer::Hf { inner, .. } => {
                u32::try_from(id).ok().and_then(|i| inner.id_to_token(i))
            }
        }
    }

    /// The text of its BOS (empty without one) and of its EOS, what a chat template's
    /// `bos_token` and `eos_token` render as where nothing else says.
    #[cfg(feature = "torch")]
    pub fn special_texts(&self) -> (String, String) {
        let s = self.specials();
        let text = |id: Option<i64>| id.and_then(|i| self.token_text(i)).unwrap_or_default();
        (text(s.bos), text(Some(s.eos)))
    }

    /// The chat template instruction pairs are framed with, if any.
    #[cfg(feature = "torch")]
    pub fn chat(&self) -> Option<&super::chat::ChatTemplate> {
        match self {
            Tokenizer::Byte => None,
            Tokenizer::Hf { chat, .. } => chat.as_deref(),
        }
    }

    /// One more than the largest id it can produce: the smallest vocabulary a model needs.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte => ByteTokenizer::VOCAB,
            #[cfg(feature = "torch")]
            Tokenizer::Hf {
                inner, specials, ..
            } => {
                let n = inner.get_vocab_size(true);
                let top = [specials.bos.unwrap_or(0), specials.eos, specials.pad]
                    .into_iter()
                    .max()
                    .unwrap_or(0);
                n.max(top as usize + 1)
            }
        }
    }

    /// A byte-level BPE tokenizer from a GGUF file's `tokenizer.ggml.*` metadata (model
    /// `gpt2`: tokens, merges, token types, special ids, and the pre-tokenizer named by
    /// `tokenizer.ggml.pre`).
    #[cfg(feature = "torch")]
    pub fn from_gguf(file: &super::gguf::GgufFile) -> Result<Tokenizer, TokenizerError> {
        hf::from_gguf(file)
    }

    /// The tokenizer of a Hugging Face model folder: `tokenizer.json`, with EOS from
    /// `config.json` or `tokenizer_config.json`, and BOS when the tokenizer's post-processor
    /// adds one.
    #[cfg(feature = "torch")]
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Tokenizer, TokenizerError> {
        hf::from_hf_dir(dir)
    }
}

#[cfg(feature = "torch")]
mod hf {
    use std::path::Path;

    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

    use super::{SpecialIds, Tokenizer, TokenizerError};
    use crate::model::gguf::{GgufError, GgufFile};

    /// Show a path in messages.
    fn shown(p: &Path) -> String {
        p.display().to_string()
    }

    /// Llama 3's pre-tokenizer pattern (`tokenizer.ggml.pre = "llama-bpe"`).
    const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// Qwen2's (and Qwen2.5's, Qwen3's) pattern (`tokenizer.ggml.pre = "qwen2"`): Llama 3's with
    /// single digits.
    const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// The pre-tokenizers of the `tokenizer.ggml.pre` names handled here.
    pub(super) fn pre_tokenizer(name: &str) -> Result<PreTokenizerWrapper, String> {
        let byte_level = |regex: bool| ByteLevel::new(false, true, regex);
        Ok(match name {
            "default" | "gpt2" | "gpt-2" => byte_level(true).into(),
            "smollm" => {
                Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into()
            }
            "llama-bpe" | "llama3" | "qwen2" => {
                let pattern = if name == "qwen2" {
                    QWEN2_SPLIT
                } else {
                    LLAMA3_SPLIT
                };
                let split = Split::new(
                    SplitPattern::Regex(pattern.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| e.to_string())?;
                Sequence::new(vec![split.into(), byte_level(false).into()]).into()
            }
            other => {
                return Err(format!(
                    "pre-tokenizer {other:?} (tokenizer.ggml.pre) is not supported; known: \
                     default, gpt2, smollm, llama-bpe, qwen2"
                ))
            }
        })
    }

    pub(super) fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let bad = |msg: String| TokenizerError::Build {
            source_name: shown(&file.path),
            msg,
        };
        let meta = |e: GgufError| bad(e.to_string());
        let model = file.get_str("tokenizer.ggml.model").map_err(meta)?;
        let tokens = file
            .get_str_array("tokenizer.ggml.tokens")
            .map_err(meta)?
            .ok_or_else(|| bad("tokenizer.ggml.tokens is missing".into()))?;
        let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .map(|a| a.iter().map(|x| x.as_i64().unwrap_or(1)).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let mut inner = match model {
            Some("gpt2") => byte_level_bpe(file, &tokens).map_err(bad)?,
            Some("llama") => sentencepiece_bpe(file, &tokens, &types).map_err(bad)?,
            other => {
                return Err(bad(format!(
                    "tokenizer.ggml.model is {other:?}; supported: \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece BPE)"
                )))
            }
        };
        add_special_tokens(&mut inner, &tokens, &types);
        // llama.cpp (and transformers' GGUF loader) add BOS to SentencePiece vocabularies unless
        // the file says not to; older Llama 2 and Mistral files have no add_bos_token key.
        specials(file, inner, tokens.len(), model == Some("llama"))
    }

    /// A byte-level BPE (GGUF model `gpt2`): the file's merges, and the pre-tokenizer named by
    /// `tokenizer.ggml.pre`.
    fn byte_level_bpe(file: &GgufFile, tokens: &[&str]) -> Result<tokenizers::Tokenizer, String> {
        let meta = |e: GgufError| e.to_string();
        let merges = file
            .get_str_array("tokenizer.ggml.merges")
            .map_err(meta)?
            .ok_or_else(|| "tokenizer.ggml.merges is missing".to_string())?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| format!("merge {m:?} is not two tokens"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab_of(tokens), merges)
            .build()
            .map_err(|e| format!("building BPE: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = file
            .get_str("tokenizer.ggml.pre")
            .map_err(meta)?
            .unwrap_or("default");
        inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
        inner.with_decoder(Some(ByteLevel::default()));
        Ok(inner)
    }

    fn vocab_of(tokens: &[&str]) -> Vocab {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect()
    }

    /// GGUF's token types: normal, unknown, control, user-defined, unused, byte.
    const NORMAL: i64 = 1;
    const UNKNOWN: i64 = 2;
    const CONTROL: i64 = 3;
    const USER_DEFINED: i64 = 4;

    /// SentencePiece's BPE (GGUF model `llama`: Llama 2, TinyLlama, Mistral v0.1) from the
    /// file's pieces and scores: SentencePiece merges the adjacent pair whose union is the
    /// highest-scoring piece, so each piece that splits into two pieces becomes a merge, ranked
    /// by its score. Equal scores (user-defined pieces score 0) are ranked by the ids of the
    /// parts, where sentencepiece takes the leftmost pair: the two can differ only there. Text
    /// has spaces written as U+2581 and one prefixed (`tokenizer.ggml.add_space_prefix`, default
    /// on); characters outside the vocabulary fall back to the `<0xNN>` byte pieces.
    fn sentencepiece_bpe(
        file: &GgufFile,
        tokens: &[&str],
        types: &[i64],
    ) -> Result<tokenizers::Tokenizer, String> {
        use tokenizers::decoders::byte_fallback::ByteFallback;
        use tokenizers::decoders::fuse::Fuse;
        use tokenizers::decoders::sequence::Sequence as Decoders;
        use tokenizers::decoders::strip::Strip;
        use tokenizers::normalizers::{Prepend, Replace, Sequence as Normalizers};
        use tokenizers::DecoderWrapper;

        let scores: Vec<f64> = file
            .get("tokenizer.ggml.scores")
            .and_then(|v| v.as_array())
            .ok_or("tokenizer.ggml.scores is missing (a SentencePiece vocabulary ranks by it)")?
            .iter()
            .map(|x| x.as_f64().ok_or("tokenizer.ggml.scores holds a non-number"))
            .collect::<Result<_, _>>()?;
        if scores.len() != tokens.len() {
            return Err(format!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                scores.len(),
                tokens.len()
            ));
        }
        let ty = |i: usize| types.get(i).copied().unwrap_or(NORMAL);
        let vocab = vocab_of(tokens);
        // (score, left id, right id, left, right), one per split of a normal piece.
        let mut merges: Vec<(f64, u32, u32, &str, &str)> = Vec::new();
        for (i, piece) in tokens.iter().enumerate() {
            if ty(i) != NORMAL && ty(i) != USER_DEFINED {
                continue;
            }
            for (at, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(at);
                if let (Some(&a), Some(&b)) = (vocab.get(l), vocab.get(r)) {
                    merges.push((scores[i], a, b, l, r));
                }
            }
        }
        merges.sort_by(|x, y| y.0.total_cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
        let merges = merges
            .into_iter()
            .map(|(_, _, _, l, r)| (l.to_string(), r.to_string()))
            .collect();
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(unk) = (0..tokens.len()).find(|&i| ty(i) == UNKNOWN) {
            builder = builder.unk_token(tokens[unk].to_string());
        }
        let bpe = builder.build().map_err(|e| format!("building BPE: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let prefix = file
            .get("tokenizer.ggml.add_space_prefix")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let space = Replace::new(" ", "\u{2581}").map_err(|e| e.to_string())?;
        let mut normalizers = vec![space.into()];
        let mut decoders: Vec<DecoderWrapper> = vec![
            Replace::new("\u{2581}", " ")
                .map_err(|e| e.to_string())?
                .into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if prefix {
            normalizers.insert(0, Prepend::new("\u{2581}".into()).into());
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        inner.with_normalizer(Some(Normalizers::new(normalizers)));
        inner.with_decoder(Some(Decoders::new(decoders)));
        Ok(inner)
    }

    /// Control tokens (type 3) are special; user-defined ones (type 4) are added tokens.
    fn add_special_tokens(inner: &mut tokenizers::Tokenizer, tokens: &[&str], types: &[i64]) {
        let added = |ty: i64, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(types)
                .filter(|(_, &t)| t == ty)
                .map(|(s, _)| AddedToken::from(s.to_string(), special))
                .collect()
        };
        inner.add_special_tokens(&added(CONTROL, true));
        inner.add_tokens(&added(USER_DEFINED, false));
    }

    /// BOS (when the file adds one), EOS and PAD from the file's `tokenizer.ggml.*_token_id`.
    fn specials(
        file: &GgufFile,
        inner: tokenizers::Tokenizer,
        n_tokens: usize,
        bos_by_default: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        let bad = |msg: String| TokenizerError::Build {
            source_name: shown(&file.path),
            msg,
        };
        let meta = |e: GgufError| bad(e.to_string());
        let id = |key: &str| -> Result<Option<i64>, TokenizerError> {
            let v = file.get_int(key).map_err(meta)?;
            match v {
                Some(i) if i < 0 || i as usize >= n_tokens => Err(bad(format!(
                    "{key} {i} is outside the vocabulary of {n_tokens}"
                ))),
                v => Ok(v),
            }
        };
        let eos = id("tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| bad("tokenizer.ggml.eos_token_id is missing".into()))?;
        let add_bos = file
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(bos_by_default);
        let bos = if add_bos && bos_by_default {
            Some(id("tokenizer.ggml.bos_token_id")?.unwrap_or(1))
        } else if add_bos {
            Some(id("tokenizer.ggml.bos_token_id")?.ok_or_else(|| {
                bad("add_bos_token is set but tokenizer.ggml.bos_token_id is missing".into())
            })?)
        } else {
            None
        };
        let pad = id("tokenizer.ggml.padding_token_id")?.unwrap_or(eos);
        let mut ends = Vec::new();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            ends.extend(id(key)?.filter(|&i| i != eos && !ends.contains(&i)));
        }
        Ok(Tokenizer::Hf {
            inner: Box::new(inner),
            specials: SpecialIds { bos, eos, pad },
            chat: None,
            ends,
        })
    }

    fn read_json(path: &Path) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// A token given in tokenizer_config.json, as a string or as `{"content": ...}`.
    fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
        let v = v?;
        v.as_str()
            .or_else(|| v.get("content").and_then(|c| c.as_str()))
            .map(str::to_owned)
    }

    /// An id given in config.json, as a number or a list (the first).
    fn config_id(v: Option<&serde_json::Value>) -> Option<i64> {
        config_ids(v).first().copied()
    }

    /// The ids given in config.json, as a number or a list.
    fn config_ids(v: Option<&serde_json::Value>) -> Vec<i64> {
        match v {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_i64()).collect(),
            Some(v) => v.as_i64().into_iter().collect(),
            None => Vec::new(),
        }
    }

    pub(super) fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let bad = |msg: String| TokenizerError::Build {
            source_name: shown(dir),
            msg,
        };
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(bad("tokenizer.json is missing".into()));
        }
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| bad(format!("tokenizer.json: {e}")))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| bad(format!("tokenizer.json: {e}")))?;
        let config = read_json(&dir.join("config.json"));
        let tok_config = read_json(&dir.join("tokenizer_config.json"));
        let by_text = |key: &str| {
            token_text(tok_config.as_ref().and_then(|c| c.get(key)))
                .and_then(|t| inner.token_to_id(&t))
                .map(i64::from)
        };
        let by_config = |key: &str| config_id(config.as_ref().and_then(|c| c.get(key)));
        let eos = by_config("eos_token_id")
            .or_else(|| by_text("eos_token"))
            .ok_or_else(|| {
                bad("no EOS token: neither config.json's eos_token_id nor \
                     tokenizer_config.json's eos_token names one"
                    .into())
            })?;
        // BOS is what the post-processor puts before a text, if anything.
        let probe = |special: bool| -> Result<Vec<u32>, TokenizerError> {
            inner
                .encode_fast("a", special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| bad(format!("encoding a probe: {e}")))
        };
        let (with, without) = (probe(true)?, probe(false)?);
        let bos = match (with.first(), without.first()) {
            (Some(&w), Some(&wo)) if with.len() > without.len() && w != wo => Some(i64::from(w)),
            _ => None,
        };
        let pad = by_config("pad_token_id")
            .or_else(|| by_text("pad_token"))
            .unwrap_or(eos);
        // Every other end of a turn the folder names: the rest of the eos_token_id lists, and
        // tokenizer_config.json's eos_token (an instruct model's end of turn).
        let generation = read_json(&dir.join("generation_config.json"));
        let mut ends = Vec::new();
        let listed = [&config, &generation]
            .into_iter()
            .flat_map(|c| config_ids(c.as_ref().and_then(|c| c.get("eos_token_id"))));
        for id in listed.chain(by_text("eos_token")) {
            if id != eos && !ends.contains(&id) {
                ends.push(id);
            }
        }
        Ok(Tokenizer::Hf {
            inner: Box::new(inner),
            specials: SpecialIds { bos, eos, pad },
            chat: None,
            ends,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[cfg(feature = "torch")]
    use std::path::Path;

    use super::*;

    #[test]
    fn round_trip_and_specials() {
        let t = ByteTokenizer;
        let ids = t.encode("héllo\n");
        assert_eq!(ids.len(), 7);
        let mut with = vec![BOS];
        with.extend(&ids);
        with.push(EOS);
        assert_eq!(t.decode(&with), "héllo\n");
        assert!(PAD < BYTE_VOCAB as i64);
        let e = Tokenizer::Byte;
        assert_eq!(e.encode("hé").unwrap(), t.encode("hé"));
        assert_eq!(e.specials().bos, Some(BOS));
        assert_eq!(e.vocab_size(), BYTE_VOCAB);
    }

    /// A GPT-2 style vocabulary: the 256 byte-level characters, a few merges, and two control
    /// tokens; returned as GGUF metadata.
    #[cfg(feature = "torch")]
    pub(crate) fn tiny_bpe_metadata() -> Vec<(String, crate::model::gguf::GgufValue)> {
        use crate::model::gguf::GgufValue as V;
        // GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
        let mut chars = Vec::new();
        let mut n = 0;
        for b in 0..=255u32 {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
            chars.push(if printable {
                char::from_u32(b)
            } else {
                n += 1;
                char::from_u32(255 + n)
            });
        }
        let mut tokens: Vec<String> = chars.into_iter().flatten().map(String::from).collect();
        let merges = ["t h", "Ġ th", "th e", "Ġth e", "o r", "Ġ b"];
        for m in merges {
            tokens.push(m.replace(' ', ""));
        }
        tokens.push("<|endoftext|>".into());
        tokens.push("<|pad|>".into());
        let n = tokens.len();
        let mut types = vec![V::I32(1); n];
        types[n - 2] = V::I32(3);
        types[n - 1] = V::I32(3);
        let strs = |v: Vec<String>| V::Array(v.into_iter().map(V::String).collect());
        vec![
            ("tokenizer.ggml.model".into(), V::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), V::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), strs(tokens)),
            ("tokenizer.ggml.token_type".into(), V::Array(types)),
            (
                "tokenizer.ggml.merges".into(),
                strs(merges.iter().map(|s| s.to_string()).collect()),
            ),
            ("tokenizer.ggml.eos_token_id".into(), V::U32(n as u32 - 2)),
            (
                "tokenizer.ggml.padding_token_id".into(),
                V::U32(n as u32 - 1),
            ),
        ]
    }

    #[cfg(feature = "torch")]
    pub(crate) fn tiny_gguf_tokenizer() -> Tokenizer {
        use crate::model::gguf::{writer::GgufWriter, GgufFile};
        let mut w = GgufWriter::new();
        for (k, v) in tiny_bpe_metadata() {
            w.kv(&k, v);
        }
        let f = GgufFile::parse(w.bytes(), Path::new("t.gguf")).unwrap();
        Tokenizer::from_gguf(&f).unwrap()
    }

    /// The special token a chat template writes after an assistant's content ends a generated
    /// turn once the template is attached (a base model's files name none).
    #[cfg(feature = "torch")]
    #[test]
    fn a_chat_templates_turn_end_ends_generation() {
        let t = tiny_gguf_tokenizer();
        assert!(!t.is_end(263));
        let template = crate::model::chat::ChatTemplate::new(
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|pad|>\n{% endfor %}",
            "",
            "<|endoftext|>",
        )
        .unwrap();
        let t = t.with_chat_template(template).unwrap();
        assert!(t.is_end(263) && t.is_end(262) && !t.is_end(258));
        // A template that ends turns with plain text adds nothing.
        let plain = crate::model::chat::ChatTemplate::new(
            "{% for m in messages %}{{ m['content'] }}\n### end\n{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let t = tiny_gguf_tokenizer().with_chat_template(plain).unwrap();
        assert!(!t.is_end(263) && !t.is_end(10));
    }

    /// A GGUF's end-of-turn token (Llama 3's <|eot_id|>) ends a generated turn beside EOS.
    #[cfg(feature = "torch")]
    #[test]
    fn gguf_end_of_turn_tokens_end_generation() {
        use crate::model::gguf::{writer::GgufWriter, GgufFile, GgufValue};
        assert!(!tiny_gguf_tokenizer().is_end(263));
        let mut w = GgufWriter::new();
        for (k, v) in tiny_bpe_metadata() {
            w.kv(&k, v);
        }
        w.kv("tokenizer.ggml.eot_token_id", GgufValue::U32(263));
        let t = Tokenizer::from_gguf(&GgufFile::parse(w.bytes(), Path::new("t.gguf")).unwrap())
            .unwrap();
        assert!(t.is_end(262) && t.is_end(263) && !t.is_end(258));
        assert_eq!(t.specials().eos, 262);
    }

    #[cfg(feature = "torch")]
    #[test]
    fn gguf_bpe_merges_splits_digits_and_round_trips() {
        let t = tiny_gguf_tokenizer();
        // Ids 0..256 are the bytes; then th, Ġth, the, Ġthe, or, Ġb, and the two controls.
        assert_eq!(t.encode("the the").unwrap(), vec![258, 259]);
        // Digits are single tokens (smollm's pre-tokenizer): "42" is bytes 52, 50.
        assert_eq!(t.encode("42").unwrap(), vec![52, 50]);
        let text = "the 42 borders, naïve\n\tthé<|endoftext|>";
        let ids = t.encode(text).unwrap();
        assert!(ids.contains(&262), "<|endoftext|> is one token: {ids:?}");
        assert_eq!(t.decode(&ids).unwrap(), "the 42 borders, naïve\n\tthé");
        let s = t.specials();
        assert_eq!((s.bos, s.eos, s.pad), (None, 262, 263));
        assert_eq!(t.vocab_size(), 264);
    }

    /// A SentencePiece vocabulary in a GGUF (Llama 2's kind: pieces and scores, no merges)
    /// encodes as sentencepiece itself does, byte fallback included, and decodes back
    /// (tests/fixtures/spm, written by scripts/make-parity-fixtures with the sentencepiece
    /// package).
    #[cfg(feature = "torch")]
    #[test]
    fn sentencepiece_gguf_vocabularies_encode_as_sentencepiece_does() {
        use crate::model::gguf::GgufFile;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm");
        let t = Tokenizer::from_gguf(&GgufFile::open(&dir.join("tiny-spm.gguf")).unwrap()).unwrap();
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let cases = expected["cases"].as_array().unwrap();
        assert!(cases.len() >= 8);
        let mut byte_fallbacks = 0;
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want: Vec<i64> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_i64().unwrap())
                .collect();
            let ids = t.encode(text).unwrap();
            assert_eq!(ids, want, "{text:?}");
            byte_fallbacks += ids.iter().filter(|&&i| (3..259).contains(&i)).count();
            assert_eq!(
                t.decode(&ids).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{text:?}"
            );
        }
        assert!(byte_fallbacks > 0, "the fixture exercises byte fallback");
        let s = t.specials();
        assert_eq!((s.bos, s.eos), (Some(1), 2));
        assert_eq!(t.vocab_size(), 400);
        // A file without add_bos_token (older Llama 2 GGUFs) adds BOS, as llama.cpp does.
        let mut f = GgufFile::open(&dir.join("tiny-spm.gguf")).unwrap();
        f.metadata.remove("tokenizer.ggml.add_bos_token");
        assert_eq!(Tokenizer::from_gguf(&f).unwrap().specials().bos, Some(1));

        // Another tokenizer model is refused by name, with the ones that are read.
        use crate::model::gguf::{writer::GgufWriter, GgufValue};
        let mut w = GgufWriter::new();
        for (k, v) in tiny_bpe_metadata() {
            let v = match k.as_str() {
                "tokenizer.ggml.model" => GgufValue::String("bert".into()),
                _ => v,
            };
            w.kv(&k, v);
        }
        let f = GgufFile::parse(w.bytes(), Path::new("t.gguf")).unwrap();
        let e = Tokenizer::from_gguf(&f).unwrap_err().to_string();
        assert!(
            e.contains("t.gguf") && e.contains("\"bert\"") && e.contains("\"llama\""),
            "{e}"
        );
    }

    #[cfg(feature = "torch")]
    #[test]
    fn pre_tokenizers_by_gguf_name() {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let pieces = |name: &str, text: &str| -> Vec<String> {
            let pre = hf::pre_tokenizer(name).unwrap();
            let mut s = PreTokenizedString::from(text);
            pre.pre_tokenize(&mut s).unwrap();
            s.get_splits(OffsetReferential::Original, OffsetType::Byte)
                .into_iter()
                .map(|(p, _, _)| p.to_string())
                .collect()
        };
        // Llama 3 groups digits by three and keeps a space with the following word.
        assert_eq!(
            pieces("llama-bpe", "Hi 12345!"),
            vec!["Hi", "Ġ", "123", "45", "!"]
        );
        assert_eq!(pieces("smollm", "a 12"), vec!["a", "Ġ", "1", "2"]);
        assert_eq!(pieces("gpt2", "a 12"), vec!["a", "Ġ12"]);
        // Qwen2's splits every digit.
        assert_eq!(
            pieces("qwen2", "Hi 12345!"),
            vec!["Hi", "Ġ", "1", "2", "3", "4", "5", "!"]
        );
        let e = hf::pre_tokenizer("deepseek-llm").unwrap_err();
        assert!(
            e.contains("\"deepseek-llm\"") && e.contains("not supported") && e.contains("qwen2"),
            "{e}"
        );
    }

    #[cfg(feature = "torch")]
    #[test]
    fn hf_tokenizer_json_reads_back_with_its_specials() {
        let Tokenizer::Hf { inner, .. } = tiny_gguf_tokenizer() else {
            panic!("not a BPE tokenizer")
        };
        let dir = tempfile::tempdir().unwrap();
        inner
            .save(dir.path().join("tokenizer.json"), false)
            .unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"eos_token": "<|endoftext|>", "pad_token": {"content": "<|pad|>"}}"#,
        )
        .unwrap();
        let t = Tokenizer::from_hf_dir(dir.path()).unwrap();
        assert_eq!(t.encode("the the").unwrap(), vec![258, 259]);
        let s = t.specials();
        assert_eq!((s.bos, s.eos, s.pad), (None, 262, 263));
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"eos_token_id": [263, 1]}"#,
        )
        .unwrap();
        assert_eq!(
            Tokenizer::from_hf_dir(dir.path()).unwrap().specials().eos,
            263
        );
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let e = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json is missing"), "{e}");
    }
}
