//! Building a token cache: the source is read document by document on one thread, batches of
//! documents are tokenized on every other, and one writer puts them back in the source's order
//! into the shards and the index. Bounded queues keep memory flat however large the source.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{doc_hash, DocEntry, Layout, Meta, ShardMeta, FORMAT};
use crate::model::tokenizer::Tokenizer;
use crate::spec::{DataSpec, Regime};
use crate::train::data::{self, Example, RawDoc};
use crate::train::TrainError;

/// Text bytes (or documents) per batch handed to a tokenizing thread.
const BATCH_BYTES: usize = 1 << 20;
const BATCH_DOCS: usize = 4096;

/// How a build went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BuildStats {
    /// Seconds from the first byte read to the cache in place.
    pub seconds: f64,
    /// Threads that tokenized.
    pub threads: usize,
    /// Bytes of text (or of token ids) read from the source.
    pub source_bytes: u64,
}

impl BuildStats {
    /// Source megabytes per second per tokenizing thread.
    pub fn mb_per_s_per_thread(&self) -> f64 {
        self.source_bytes as f64 / 1e6 / self.seconds.max(1e-9) / self.threads.max(1) as f64
    }
}

/// An exclusive flock on `path`, held until dropped (or the process dies).
pub(super) fn lock(path: &Path) -> Result<File, TrainError> {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| {
            TrainError::Data(format!(
                "{}: cannot open the token cache's lock: {e}",
                path.display()
            ))
        })?;
    // SAFETY: flock on a descriptor we own; blocks until the lock is ours.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(TrainError::Data(format!(
            "{}: cannot lock the token cache ({}): put SWEEP_CACHE on a filesystem with flock, or build the caches first with `sweep tokenize SPEC` (runs then only read them, without the lock)",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(f)
}

type Tokenized = Result<Vec<(Example, u64)>, TrainError>;
/// Batches of documents to tokenize, numbered in the source's order.
type Jobs = Arc<Mutex<Receiver<(u64, Vec<RawDoc>)>>>;

fn tokenize_batch(docs: Vec<RawDoc>, tok: &Tokenizer) -> Tokenized {
    docs.into_iter()
        .map(|d| Ok((data::tokenize(&d, tok)?, doc_hash(&d.key()))))
        .collect()
}

fn worker(jobs: Jobs, done: SyncSender<(u64, Tokenized)>, tok: &Tokenizer) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((seq, docs)) = job else { return };
        // A tokenizer that panics fails the build at once, naming it, instead of leaving a gap
        // that the writer would wait on to the end of the source.
        let out =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tokenize_batch(docs, tok)))
                .unwrap_or_else(|_| {
                    Err(TrainError::Data(
                        "the tokenizer panicked on a document of this source".into(),
                    ))
                });
        if done.send((seq, out)).is_err() {
            return;
        }
    }
}

/// Writes documents in order into shards and the index.
struct Writer<'a> {
    dir: &'a Path,
    layout: Layout,
    token_bytes: usize,
    shards: Vec<ShardMeta>,
    out: Option<BufWriter<File>>,
    /// Tokens in the current shard, and the CRC of its current block.
    in_shard: u64,
    block: crc32fast::Hasher,
    docs: BufWriter<File>,
    docs_crc: crc32fast::Hasher,
    count: u64,
    tokens: u64,
    buf: Vec<u8>,
}

impl<'a> Writer<'a> {
    fn new(dir: &'a Path, layout: Layout, token_bytes: usize) -> Result<Writer<'a>, TrainError> {
        Ok(Writer {
            dir,
            layout,
            token_bytes,
            shards: Vec::new(),
            out: None,
            in_shard: 0,
            block: crc32fast::Hasher::new(),
            docs: BufWriter::new(create(&dir.join("docs.bin"))?),
            docs_crc: crc32fast::Hasher::new(),
            count: 0,
            tokens: 0,
            buf: Vec::new(),
        })
    }

    fn close_shard(&mut self) -> Result<(), TrainError> {
        if let Some(mut out) = self.out.take() {
            out.flush().map_err(|e| write_err(self.dir, e))?;
            sync(out.get_ref(), self.dir)?;
            let shard = self.shards.last_mut().expect("a shard is open");
            if !self.in_shard.is_multiple_of(self.layout.block_tokens) {
                shard
                    .block_crc32
                    .push(std::mem::take(&mut self.block).finalize());
            }
            shard.tokens = self.in_shard;
        }
        Ok(())
    }

    fn doc(&mut self, ex: &Example, hash: u64) -> Result<(), TrainError> {
        let len = u32::try_from(ex.tokens.len()).map_err(|_| {
            TrainError::Data(format!(
                "a document of {} tokens is too long for the token cache (at most {})",
                ex.tokens.len(),
                u32::MAX
            ))
        })?;
        if self.out.is_none() || self.in_shard >= self.layout.shard_tokens {
            self.close_shard()?;
            let file = format!("tokens-{:05}.bin", self.shards.len());
            self.out = Some(BufWriter::with_capacity(
                1 << 20,
                create(&self.dir.join(&file))?,
            ));
            self.shards.push(ShardMeta {
                file,
                tokens: 0,
                block_crc32: Vec::new(),
            });
            self.in_shard = 0;
        }
        let entry = DocEntry {
            start: self.tokens,
            len,
            prompt_len: ex.prompt_len as u32,
            hash,
        };
        let rec = entry.to_bytes();
        self.docs
            .write_all(&rec)
            .map_err(|e| write_err(self.dir, e))?;
        self.docs_crc.update(&rec);
        self.count += 1;
        let bt = self.layout.block_tokens;
        let mut rest = &ex.tokens[..];
        while !rest.is_empty() {
            // Up to the end of the current block, so that each block's CRC is its own.
            let room = (bt - self.in_shard % bt) as usize;
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.clear();
            let limit = 1i64 << (8 * self.token_bytes);
            for &t in now {
                if !(0..limit).contains(&t) {
                    return Err(TrainError::Data(format!(
                        "token id {t} does not fit the token cache's {}-byte ids (the tokenizer's vocabulary size puts its ids below {limit}): the tokenizer is inconsistent",
                        self.token_bytes
                    )));
                }
                if self.token_bytes == 2 {
                    self.buf.extend_from_slice(&(t as u16).to_le_bytes());
                } else {
                    self.buf.extend_from_slice(&(t as u32).to_le_bytes());
                }
            }
            self.block.update(&self.buf);
            let out = self.out.as_mut().expect("a shard is open");
            out.write_all(&self.buf)
                .map_err(|e| write_err(self.dir, e))?;
            self.in_shard += now.len() as u64;
            self.tokens += now.len() as u64;
            if self.in_shard.is_multiple_of(bt) {
                let crc = std::mem::take(&mut self.block).finalize();
                self.shards
                    .last_mut()
                    .expect("a shard is open")
                    .block_crc32
                    .push(crc);
            }
            rest = later;
        }
        Ok(())
    }
}

fn create(path: &Path) -> Result<File, TrainError> {
    File::create(path).map_err(|e| TrainError::Data(format!("creating {}: {e}", path.display())))
}

fn write_err(dir: &Path, e: std::io::Error) -> TrainError {
    TrainError::Data(format!("writing the token cache {}: {e}", dir.display()))
}

/// A stop of the reading because the writer or a tokenizer failed (its error is the one told).
const STOPPED: &str = "token cache build stopped";

/// Build the cache of `source` into `dir` (replacing whatever is there), through
/// `dir.partial/` renamed into place at the end.
/// A failed build leaves nothing behind.
#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    source: &Path,
    regime: Regime,
    spec: &DataSpec,
    tok: &Tokenizer,
    dir: &Path,
    key: &str,
    threads: usize,
    layout: Layout,
    valid: &dyn Fn(&Path) -> bool,
) -> Result<BuildStats, TrainError> {
    // A folder of this builder's own (host and pid), so that builders on two nodes whose shared
    // filesystem does not honour the lock never write into or delete each other's.
    let me = format!(
        "{}-{}",
        crate::results::this_host().replace(['/', ' '], "_"),
        std::process::id()
    );
    let partial = dir.with_file_name(format!("{key}.partial-{me}"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| write_err(&partial, e))?;
    let built = build_into(source, regime, spec, tok, &partial, key, threads, layout)
        .and_then(|stats| publish(&partial, dir, &me, valid).map(|()| stats));
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    built
}

/// Rename a complete build into place. A valid cache already there was published by another
/// builder: it is kept, and this one discarded. An invalid one (another format or tokenizer
/// under the key) is first moved aside, so that no reader ever sees a half-replaced folder.
fn publish(
    partial: &Path,
    dir: &Path,
    me: &str,
    valid: &dyn Fn(&Path) -> bool,
) -> Result<(), TrainError> {
    if dir.exists() {
        if valid(dir) {
            let _ = std::fs::remove_dir_all(partial);
            return Ok(());
        }
        let aside = dir.with_extension(format!("stale-{me}"));
        std::fs::rename(dir, &aside).map_err(|e| write_err(dir, e))?;
        let _ = std::fs::remove_dir_all(&aside);
    }
    match std::fs::rename(partial, dir) {
        Ok(()) => Ok(()),
        // Another builder published between the check and the rename.
        Err(_) if valid(dir) => {
            let _ = std::fs::remove_dir_all(partial);
            Ok(())
        }
        Err(e) => Err(write_err(dir, e)),
    }
}

/// Flush a file's data to the disk: a published cache is whole even after a crash.
fn sync(file: &File, dir: &Path) -> Result<(), TrainError> {
    file.sync_all().map_err(|e| write_err(dir, e))
}

#[allow(clippy::too_many_arguments)]
fn build_into(
    source: &Path,
    regime: Regime,
    spec: &DataSpec,
    tok: &Tokenizer,
    partial: &Path,
    key: &str,
    threads: usize,
    layout: Layout,
) -> Result<BuildStats, TrainError> {
    let started = Instant::now();
    let token_bytes = if tok.vocab_size() <= 1 << 16 { 2 } else { 4 };
    let mut writer = Writer::new(partial, layout, token_bytes)?;
    let (job_tx, job_rx) = sync_channel::<(u64, Vec<RawDoc>)>(threads * 2);
    let (done_tx, done_rx) = sync_channel::<(u64, Tokenized)>(threads * 2);
    // Owned by the workers alone: when they are gone (the writer failed), the reading's next
    // send fails instead of waiting forever.
    let jobs = Arc::new(Mutex::new(job_rx));
    let mut source_bytes = 0u64;
    let (read, written) = std::thread::scope(|s| {
        for _ in 0..threads {
            let done = done_tx.clone();
            let jobs = Arc::clone(&jobs);
            s.spawn(move || worker(jobs, done, tok));
        }
        drop(done_tx);
        drop(jobs);
        let writer = &mut writer;
        let write = s.spawn(move || -> Result<(), TrainError> {
            let mut next = 0u64;
            let mut waiting = BTreeMap::new();
            for (seq, batch) in done_rx {
                waiting.insert(seq, batch?);
                while let Some(batch) = waiting.remove(&next) {
                    for (ex, hash) in &batch {
                        writer.doc(ex, hash.to_owned())?;
                    }
                    next += 1;
                }
            }
            if !waiting.is_empty() {
                return Err(TrainError::Data(format!(
                    "token cache build: batch {next} of the source was never tokenized"
                )));
            }
            writer.close_shard()
        });
        let mut seq = 0u64;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut send = |batch: Vec<RawDoc>| {
            let r = job_tx
                .send((seq, batch))
                .map_err(|_| TrainError::Data(STOPPED.into()));
            seq += 1;
            r
        };
        let read = data::for_each_document(source, regime, spec, tok, &mut |d| {
            let n = d.key().len();
            source_bytes += n as u64;
            bytes += n;
            batch.push(d);
            if bytes >= BATCH_BYTES || batch.len() >= BATCH_DOCS {
                bytes = 0;
                send(std::mem::take(&mut batch))?;
            }
            Ok(())
        })
        .and_then(|w| {
            if !batch.is_empty() {
                send(std::mem::take(&mut batch))?;
            }
            Ok(w)
        });
        drop(job_tx);
        let written = write
            .join()
            .unwrap_or_else(|_| Err(TrainError::Data("the token cache writer panicked".into())));
        (read, written)
    });
    // The writer's or a tokenizer's error is the cause of a stopped reading.
    let warnings = match (read, written) {
        (_, Err(e)) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(w), Ok(())) => w,
    };
    writer.docs.flush().map_err(|e| write_err(partial, e))?;
    sync(writer.docs.get_ref(), partial)?;
    let stats = BuildStats {
        seconds: started.elapsed().as_secs_f64(),
        threads,
        source_bytes,
    };
    let meta = Meta {
        format: FORMAT,
        key: key.to_string(),
        tokenizer: tok.identity(),
        source: source.display().to_string(),
        token_bytes,
        tokens: writer.tokens,
        docs: writer.count,
        docs_crc32: writer.docs_crc.clone().finalize(),
        block_tokens: layout.block_tokens,
        shards: writer.shards.clone(),
        warnings,
        built: stats.clone(),
    };
    let json = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    let mut meta_file = create(&partial.join("meta.json"))?;
    meta_file
        .write_all(&json)
        .map_err(|e| write_err(partial, e))?;
    sync(&meta_file, partial)?;
    if let Ok(d) = File::open(partial) {
        let _ = d.sync_all();
    }
    Ok(stats)
}
