//! The token cache: a data source tokenized once, into memory-mapped shards that training reads
//! windows from, so that memory does not grow with the corpus and a resume does not tokenize
//! again.
//!
//! A cache is a folder `CACHE/tokens/KEY/` (KEY: a sha256 of the source's fingerprints, the
//! tokenizer's identity and the reading settings, so another tokenizer or a changed file gets a
//! cache of its own and is never served another's tokens) holding:
//! - `tokens-NNNNN.bin`: the token ids of the documents in the source's order, little-endian
//!   u16 (vocabularies up to 65536) or u32, each document framed as [`super::data::tokenize`]
//!   frames it (BOS, text, EOS); a document never spans two shards;
//! - `docs.bin`: per document 24 bytes, little-endian: its first token's global offset (u64),
//!   its length (u32), its prompt length (u32, 0 for text) and the first 8 bytes of the sha256
//!   of its text (u64, big-endian order), by which the held-out split is drawn;
//! - `meta.json` ([`Meta`]): counts, the checksum of `docs.bin`, a CRC32 of every block of
//!   [`Meta::block_tokens`] tokens of each shard (checked the first time a block is read), and
//!   the warnings of the reading.
//!
//! Pages of the shards that were read are handed back to the kernel's page cache at once, so a
//! run's resident memory does not grow with what it has read.
//!
//! It is built into `KEY.partial/` under an flock on `KEY.lock` (ranks and runs that need the
//! same cache wait for one builder), then renamed into place: a cache is complete or absent.

mod build;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::data::Example;
use super::TrainError;
use crate::model::tokenizer::Tokenizer;
use crate::spec::{DataSpec, Regime};

pub use build::BuildStats;

/// The layout version; a cache of another is rebuilt.
const FORMAT: u32 = 1;
/// Bytes per document record in `docs.bin`.
const DOC_BYTES: usize = 24;

/// How a cache is cut: shard and checksum block sizes, in tokens.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// A new shard starts at the first document boundary past this many tokens.
    pub shard_tokens: u64,
    /// Tokens per checksummed block.
    pub block_tokens: u64,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            shard_tokens: 1 << 28,
            block_tokens: 1 << 16,
        }
    }
}

/// One shard as `meta.json` describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardMeta {
    /// File name in the cache folder.
    pub file: String,
    /// Tokens in it.
    pub tokens: u64,
    /// CRC32 of each block of `block_tokens` tokens (the last may be shorter).
    pub block_crc32: Vec<u32>,
}

/// `meta.json`: what a cache holds and how it was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// The cache's key (its folder name).
    pub key: String,
    /// The tokenizer's identity ([`Tokenizer::identity`]).
    pub tokenizer: String,
    /// The source, as read.
    pub source: String,
    /// Bytes per token id: 2 or 4.
    pub token_bytes: usize,
    /// Tokens in all.
    pub tokens: u64,
    /// Documents.
    pub docs: u64,
    /// CRC32 of `docs.bin`.
    pub docs_crc32: u32,
    /// Tokens per checksummed block.
    pub block_tokens: u64,
    /// The shards, in order.
    pub shards: Vec<ShardMeta>,
    /// What the reading left out (skipped malformed lines), said again by every run.
    pub warnings: Vec<String>,
    /// How the build went.
    pub built: BuildStats,
}

/// One document's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocEntry {
    /// Global offset of its first token.
    pub start: u64,
    /// Tokens.
    pub len: u32,
    /// Prompt tokens (not targets); 0 for text.
    pub prompt_len: u32,
    /// The first 8 bytes of the sha256 of its text.
    pub hash: u64,
}

impl DocEntry {
    fn to_bytes(self) -> [u8; DOC_BYTES] {
        let mut b = [0u8; DOC_BYTES];
        b[..8].copy_from_slice(&self.start.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.prompt_len.to_le_bytes());
        b[16..].copy_from_slice(&self.hash.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> DocEntry {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or_default());
        DocEntry {
            start: u64_at(0),
            len: u32_at(8),
            prompt_len: u32_at(12),
            hash: u64_at(16),
        }
    }

    /// End offset (exclusive).
    pub fn end(&self) -> u64 {
        self.start + u64::from(self.len)
    }
}

/// The sort key of a document's text for the held-out split.
pub fn doc_hash(key: &[u8]) -> u64 {
    let d = Sha256::digest(key);
    u64::from_be_bytes(d[..8].try_into().unwrap_or_default())
}

struct Shard {
    path: PathBuf,
    /// Global offset of its first token.
    start: u64,
    tokens: u64,
    map: Option<memmap2::Mmap>,
    crc: Vec<u32>,
    verified: Vec<AtomicBool>,
}

/// An opened cache: its meta, its shards mapped into memory and its document index.
pub struct TokenCache {
    dir: PathBuf,
    meta: Meta,
    shards: Vec<Shard>,
    docs: Option<memmap2::Mmap>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenCache({})", self.dir.display())
    }
}

fn corrupt(dir: &Path, what: String) -> TrainError {
    TrainError::Data(format!(
        "token cache {}: {what}: remove that folder and run again (it is rebuilt from the source)",
        dir.display()
    ))
}

fn map(file: &std::fs::File) -> std::io::Result<Option<memmap2::Mmap>> {
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: cache files are never written after the cache is renamed into place; a file
    // removed while mapped stays readable until unmapped.
    let m = unsafe { memmap2::Mmap::map(file)? };
    #[cfg(unix)]
    let _ = m.advise(memmap2::Advice::Random);
    Ok(Some(m))
}

impl TokenCache {
    /// Open the cache in `dir` (its meta already read), checking that every file has the size
    /// the meta says and that the document index is intact.
    fn open(dir: &Path, meta: Meta) -> Result<TokenCache, TrainError> {
        let io = |p: &Path, e: std::io::Error| corrupt(dir, format!("{}: {e}", p.display()));
        let mut shards = Vec::new();
        let mut start = 0u64;
        for s in &meta.shards {
            let path = dir.join(&s.file);
            let file = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
            let want = s.tokens * meta.token_bytes as u64;
            let have = file.metadata().map_err(|e| io(&path, e))?.len();
            if have != want {
                return Err(corrupt(
                    dir,
                    format!(
                        "shard {} is {have} bytes, but its {} tokens need {want} (truncated at byte offset {})",
                        s.file,
                        s.tokens,
                        have.min(want)
                    ),
                ));
            }
            let blocks = s.tokens.div_ceil(meta.block_tokens) as usize;
            if s.block_crc32.len() != blocks {
                return Err(corrupt(dir, format!("meta.json lists {} block checksums for shard {}, which has {blocks} blocks", s.block_crc32.len(), s.file)));
            }
            shards.push(Shard {
                map: map(&file).map_err(|e| io(&path, e))?,
                path,
                start,
                tokens: s.tokens,
                crc: s.block_crc32.clone(),
                verified: (0..blocks).map(|_| AtomicBool::new(false)).collect(),
            });
            start += s.tokens;
        }
        if start != meta.tokens {
            return Err(corrupt(
                dir,
                format!(
                    "its shards hold {start} tokens, meta.json says {}",
                    meta.tokens
                ),
            ));
        }
        let path = dir.join("docs.bin");
        let file = std::fs::File::open(&path).map_err(|e| io(&path, e))?;
        let want = meta.docs * DOC_BYTES as u64;
        let have = file.metadata().map_err(|e| io(&path, e))?.len();
        if have != want {
            return Err(corrupt(
                dir,
                format!(
                    "docs.bin is {have} bytes, but {} documents need {want}",
                    meta.docs
                ),
            ));
        }
        let cache = TokenCache {
            docs: map(&file).map_err(|e| io(&path, e))?,
            dir: dir.to_path_buf(),
            meta,
            shards,
        };
        let mut crc = crc32fast::Hasher::new();
        let mut end = 0u64;
        cache.scan_docs(&mut |i, d| {
            if d.start != end || d.end() > cache.meta.tokens {
                return Err(corrupt(&cache.dir, format!("docs.bin: document {i} at offset {} does not follow the one before (ends at {end})", d.start)));
            }
            end = d.end();
            crc.update(&d.to_bytes());
            Ok(())
        })?;
        if crc.finalize() != cache.meta.docs_crc32 || end != cache.meta.tokens {
            return Err(corrupt(&cache.dir, "docs.bin fails its checksum".into()));
        }
        Ok(cache)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its meta.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Documents.
    pub fn doc_count(&self) -> usize {
        self.meta.docs as usize
    }

    /// Document `i`'s record.
    pub fn doc(&self, i: usize) -> DocEntry {
        let b = self.docs.as_deref().unwrap_or(&[]);
        DocEntry::from_bytes(&b[i * DOC_BYTES..(i + 1) * DOC_BYTES])
    }

    /// Every document's record in order, read through a buffer (not the map, so that a pass
    /// over millions of documents leaves nothing resident).
    pub fn scan_docs(
        &self,
        f: &mut dyn FnMut(usize, DocEntry) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let path = self.dir.join("docs.bin");
        let file =
            std::fs::File::open(&path).map_err(|e| corrupt(&self.dir, format!("docs.bin: {e}")))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, file);
        let mut rec = [0u8; DOC_BYTES];
        for i in 0..self.doc_count() {
            r.read_exact(&mut rec)
                .map_err(|e| corrupt(&self.dir, format!("docs.bin at document {i}: {e}")))?;
            f(i, DocEntry::from_bytes(&rec))?;
        }
        Ok(())
    }

    /// Append the tokens at global offsets `start..start + len` to `out`, checking each block
    /// they touch the first time it is read.
    pub fn tokens(&self, start: u64, len: usize, out: &mut Vec<i64>) -> Result<(), TrainError> {
        let end = start + len as u64;
        if end > self.meta.tokens {
            return Err(corrupt(
                &self.dir,
                format!(
                    "tokens {start}..{end} asked for, it holds {}",
                    self.meta.tokens
                ),
            ));
        }
        let mut at = start;
        let mut k = self.shards.partition_point(|s| s.start + s.tokens <= at);
        while at < end {
            let s = &self.shards[k];
            let from = at - s.start;
            let to = (end - s.start).min(s.tokens);
            self.check_blocks(s, from, to)?;
            let bytes = s.map.as_deref().unwrap_or(&[]);
            let w = self.meta.token_bytes;
            let (lo, hi) = (from as usize * w, to as usize * w);
            let raw = &bytes[lo..hi];
            if w == 2 {
                out.extend(
                    raw.chunks_exact(2)
                        .map(|c| i64::from(u16::from_le_bytes([c[0], c[1]]))),
                );
            } else {
                out.extend(
                    raw.chunks_exact(4)
                        .map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
                );
            }
            if let Some(m) = &s.map {
                crate::util::release_pages(m, lo, hi);
            }
            at = s.start + to;
            k += 1;
        }
        Ok(())
    }

    fn check_blocks(&self, s: &Shard, from: u64, to: u64) -> Result<(), TrainError> {
        let bt = self.meta.block_tokens;
        let w = self.meta.token_bytes as u64;
        for b in (from / bt)..to.div_ceil(bt) {
            let flag = &s.verified[b as usize];
            if flag.load(Ordering::Relaxed) {
                continue;
            }
            let lo = b * bt * w;
            let hi = ((b + 1) * bt).min(s.tokens) * w;
            let bytes = &s.map.as_deref().unwrap_or(&[])[lo as usize..hi as usize];
            let ok = crc32fast::hash(bytes) == s.crc[b as usize];
            if let Some(m) = &s.map {
                crate::util::release_pages(m, lo as usize, hi as usize);
            }
            if !ok {
                return Err(corrupt(
                    &self.dir,
                    format!(
                        "shard {} is corrupt: block {b} (byte offset {lo}..{hi}) fails its checksum",
                        s.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                    ),
                ));
            }
            flag.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Document `i` as an example.
    pub fn example(&self, i: usize) -> Result<Example, TrainError> {
        let d = self.doc(i);
        let mut tokens = Vec::with_capacity(d.len as usize);
        self.tokens(d.start, d.len as usize, &mut tokens)?;
        Ok(Example {
            tokens,
            prompt_len: d.prompt_len as usize,
        })
    }

    /// The documents held out for evaluation, in order: those first by the hash of their text
    /// until they hold `eval_tokens` tokens, but never more than half of the documents (none of
    /// a single document). Found without sorting every document: the candidates under a hash
    /// threshold are sorted, and the threshold is raised until the walk ends inside them.
    pub fn held_out(&self, eval_tokens: u64) -> Result<Vec<u32>, TrainError> {
        let cap = self.doc_count() / 2;
        if cap == 0 || eval_tokens == 0 {
            return Ok(Vec::new());
        }
        let share = (eval_tokens as f64 / self.meta.tokens.max(1) as f64) * 4.0 + 1e-3;
        let mut threshold = if share >= 1.0 {
            u64::MAX
        } else {
            (share * u64::MAX as f64) as u64
        };
        loop {
            let mut cands: Vec<(u64, u32, u32)> = Vec::new();
            self.scan_docs(&mut |i, d| {
                if d.hash <= threshold {
                    cands.push((d.hash, i as u32, d.len));
                }
                Ok(())
            })?;
            cands.sort_unstable();
            let mut held = Vec::new();
            let mut tokens = 0u64;
            let mut ended = false;
            for &(_, i, len) in &cands {
                if held.len() == cap || tokens >= eval_tokens {
                    ended = true;
                    break;
                }
                held.push(i);
                tokens += u64::from(len);
            }
            ended |= held.len() == cap || tokens >= eval_tokens;
            if ended || threshold == u64::MAX {
                held.sort_unstable();
                return Ok(held);
            }
            threshold = threshold.saturating_mul(4);
        }
    }
}

/// What the key of a cache is made of.
#[derive(Serialize)]
struct KeyInputs<'a> {
    format: u32,
    source: String,
    data: std::collections::BTreeMap<String, crate::fingerprint::Fingerprint>,
    /// Each file's modification time (ns): the fingerprint samples a large file, so an edit
    /// in place that keeps its size could fall between the samples.
    modified: std::collections::BTreeMap<String, u128>,
    tokenizer: String,
    regime: Regime,
    text_field: &'a str,
    prompt_field: &'a str,
    response_field: &'a str,
    on_bad_line: crate::spec::BadLine,
    chunk_bytes: usize,
}

/// The cache of `source` read in `regime` with `spec`'s fields by `tok`, under `root`: opened
/// when it is there and whole, built (on `threads` threads) when it is not. Returns it and, when
/// it was built now, how that went.
pub fn prepare(
    source: &Path,
    regime: Regime,
    spec: &DataSpec,
    tok: &Tokenizer,
    root: &Path,
    threads: usize,
    layout: Layout,
) -> Result<(Arc<TokenCache>, Option<BuildStats>), TrainError> {
    let canonical = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
    let data = crate::fingerprint::of_path("data", &canonical)
        .map_err(|e| TrainError::Data(format!("fingerprinting {}: {e}", source.display())))?;
    let modified = data
        .keys()
        .map(|k| {
            let path = k.split_once(':').map_or(k.as_str(), |(_, p)| p);
            let ns = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            (k.clone(), ns)
        })
        .collect();
    let inputs = KeyInputs {
        format: FORMAT,
        source: canonical.display().to_string(),
        data,
        modified,
        tokenizer: tok.identity(),
        regime,
        text_field: &spec.text_field,
        prompt_field: &spec.prompt_field,
        response_field: &spec.response_field,
        on_bad_line: spec.on_bad_line,
        chunk_bytes: super::data::CHUNK_BYTES,
    };
    let key_json = serde_json::to_vec(&inputs).unwrap_or_default();
    let key: String = Sha256::digest(&key_json)
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    let tokens_dir = root.join("tokens");
    std::fs::create_dir_all(&tokens_dir).map_err(|e| {
        TrainError::Data(format!(
            "creating the token cache {}: {e} (set SWEEP_CACHE to a writable folder)",
            tokens_dir.display()
        ))
    })?;
    let dir = tokens_dir.join(&key);
    let expect = |meta: &Meta| {
        meta.format == FORMAT && meta.key == key && meta.tokenizer == inputs.tokenizer
    };
    if let Some(meta) = read_meta(&dir).filter(expect) {
        return Ok((Arc::new(TokenCache::open(&dir, meta)?), None));
    }
    let _lock = build::lock(&tokens_dir.join(format!("{key}.lock")))?;
    // Another process may have built it while this one waited.
    if let Some(meta) = read_meta(&dir).filter(expect) {
        return Ok((Arc::new(TokenCache::open(&dir, meta)?), None));
    }
    let stats = build::build(
        source,
        regime,
        spec,
        tok,
        &dir,
        &key,
        threads.max(1),
        layout,
        &|d| read_meta(d).filter(expect).is_some(),
    )?;
    let meta = read_meta(&dir).ok_or_else(|| {
        corrupt(
            &dir,
            "meta.json is unreadable right after it was written".into(),
        )
    })?;
    Ok((Arc::new(TokenCache::open(&dir, meta)?), Some(stats)))
}

/// The meta of the cache in `dir`, if it has a readable one.
fn read_meta(dir: &Path) -> Option<Meta> {
    let bytes = std::fs::read(dir.join("meta.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests;
