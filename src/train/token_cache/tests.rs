use std::path::Path;

use super::*;
use crate::model::tokenizer::{Tokenizer, PAD};
use crate::rng::Rng;
use crate::train::data::{self, RawDoc};
use crate::train::rows::Rows;

fn spec(regime: Regime) -> DataSpec {
    let mut s = crate::train::data::tests::spec();
    s.regime = regime;
    s
}

/// Small shards and blocks, so that documents, windows and checks cross their edges.
const SMALL: Layout = Layout {
    shard_tokens: 300,
    block_tokens: 64,
};

/// A JSONL corpus of `n` documents of varied lengths, as text or prompt/response pairs.
fn corpus(dir: &Path, n: usize, pairs: bool) -> std::path::PathBuf {
    let mut rng = Rng::new(11, 0);
    let mut lines = String::new();
    for i in 0..n {
        let words = 1 + rng.below(30) as usize;
        let text: String = (0..words)
            .map(|k| format!("w{}-{k} ", i * 7 % 13))
            .collect();
        let line = if pairs {
            serde_json::json!({"prompt": format!("q{i}"), "response": text})
        } else {
            serde_json::json!({"text": format!("doc {i}: {text}")})
        };
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    let p = dir.join(if pairs { "pairs.jsonl" } else { "text.jsonl" });
    std::fs::write(&p, lines).unwrap();
    p
}

/// The held-out split as the in-memory reader drew it: documents by their text's full sha256,
/// held out until they hold `eval_tokens`, at most half of them.
fn reference_split(docs: &[RawDoc], eval_tokens: u64, tok: &Tokenizer) -> Vec<u32> {
    let mut order: Vec<(Vec<u8>, usize)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (Sha256::digest(d.key()).to_vec(), i))
        .collect();
    order.sort();
    let mut held = Vec::new();
    let mut tokens = 0u64;
    for (_, i) in order.iter().take(docs.len() / 2) {
        if tokens >= eval_tokens {
            break;
        }
        held.push(*i as u32);
        tokens += data::tokenize(&docs[*i], tok).unwrap().tokens.len() as u64;
    }
    held.sort();
    held
}

fn all_rows(rows: &Rows) -> Vec<crate::train::rows::Row> {
    (0..rows.len()).map(|i| rows.row(i).unwrap()).collect()
}

#[test]
fn cached_rows_are_the_rows_of_the_documents_read_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let tok = Tokenizer::Byte;
    for (regime, pairs) in [(Regime::Cpt, false), (Regime::Ift, true)] {
        let src = corpus(dir.path(), 60, pairs);
        let sp = spec(regime);
        let (cache, built) =
            prepare(&src, regime, &sp, &tok, &dir.path().join("c"), 2, SMALL).unwrap();
        let built = built.expect("built on first use");
        assert_eq!(built.threads, 2);
        let docs = data::read_documents(&src, regime, &sp, &tok).unwrap().docs;
        assert_eq!(cache.doc_count(), docs.len());
        assert!(
            cache.meta().shards.len() > 2,
            "{:?}",
            cache.meta().shards.len()
        );
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(cache.example(i).unwrap(), data::tokenize(d, &tok).unwrap());
        }
        // Every size of held-out set, small ones too (whose first hash threshold can fall short).
        for eval_tokens in (0..cache.meta().tokens).step_by(7) {
            let held = cache.held_out(eval_tokens).unwrap();
            assert_eq!(
                held,
                reference_split(&docs, eval_tokens, &tok),
                "{eval_tokens}"
            );
        }
        for eval_tokens in [0, 1, 200, 1_000, 1_000_000] {
            let held = cache.held_out(eval_tokens).unwrap();
            assert_eq!(
                held,
                reference_split(&docs, eval_tokens, &tok),
                "{eval_tokens}"
            );
            let train: Vec<_> = (0..docs.len())
                .filter(|i| !held.contains(&(*i as u32)))
                .map(|i| data::tokenize(&docs[i], &tok).unwrap())
                .collect();
            for seq in [5, 16, 64] {
                let mem = Rows::new(train.clone(), regime, seq, PAD, "t").unwrap();
                let cached = Rows::cached(cache.clone(), &held, regime, seq, PAD, "t").unwrap();
                assert_eq!(mem.len(), cached.len(), "{regime:?} {eval_tokens} {seq}");
                assert_eq!(
                    all_rows(&mem),
                    all_rows(&cached),
                    "{regime:?} {eval_tokens} {seq}"
                );
                for i in 0..mem.len() {
                    assert_eq!(mem.target_tokens(i), cached.target_tokens(i));
                }
            }
        }
    }
}

#[test]
fn a_second_use_reads_the_cache_and_another_tokenizer_or_file_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let src = corpus(dir.path(), 20, false);
    let sp = spec(Regime::Cpt);
    let (a, built) = prepare(&src, Regime::Cpt, &sp, &Tokenizer::Byte, &root, 1, SMALL).unwrap();
    assert!(built.is_some());
    let (again, built) =
        prepare(&src, Regime::Cpt, &sp, &Tokenizer::Byte, &root, 1, SMALL).unwrap();
    assert!(built.is_none(), "the second use tokenizes nothing");
    assert_eq!(again.dir(), a.dir());
    // Another tokenizer: a cache of its own, with its tokens.
    let bpe = crate::model::tokenizer::tests::tiny_gguf_tokenizer();
    let (b, built) = prepare(&src, Regime::Cpt, &sp, &bpe, &root, 1, SMALL).unwrap();
    assert!(built.is_some());
    assert_ne!(b.dir(), a.dir());
    assert_ne!(b.meta().tokens, a.meta().tokens);
    assert_eq!(b.meta().token_bytes, 2);
    // A cache whose meta names another tokenizer is rebuilt, never served.
    let meta_path = a.dir().join("meta.json");
    let forged = std::fs::read_to_string(&meta_path).unwrap().replace(
        "\"tokenizer\": \"byte\"",
        &format!("\"tokenizer\": \"{}\"", bpe.identity()),
    );
    std::fs::write(&meta_path, forged).unwrap();
    let (_, built) = prepare(&src, Regime::Cpt, &sp, &Tokenizer::Byte, &root, 1, SMALL).unwrap();
    assert!(built.is_some(), "rebuilt");
    // An edit in place that keeps the size, in a file large enough to be fingerprinted by
    // samples: a new cache all the same (its modification time changed).
    let big = dir.path().join("big.txt");
    let line = "a line of a large text file, cut into documents\n";
    std::fs::write(&big, line.repeat(100_000)).unwrap(); // 5 MB: fingerprinted by samples
    let (before, _) = prepare(&big, Regime::Cpt, &sp, &Tokenizer::Byte, &root, 1, SMALL).unwrap();
    let mut bytes = std::fs::read(&big).unwrap();
    // Between the fingerprint's 7th and 8th 64 KiB samples, a letter of the text.
    let gap = (bytes.len() - 65_536) * 7 / 15 + 150_000;
    let at = gap + bytes[gap..].iter().position(|&b| b == b'l').unwrap();
    bytes[at] = b'L';
    let fp = crate::fingerprint::of_file(&big).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&big, &bytes).unwrap();
    assert_eq!(
        fp,
        crate::fingerprint::of_file(&big).unwrap(),
        "the samples miss the edit"
    );
    let (after, built) =
        prepare(&big, Regime::Cpt, &sp, &Tokenizer::Byte, &root, 1, SMALL).unwrap();
    assert!(
        built.is_some(),
        "an edit between the fingerprint's samples is seen"
    );
    assert_ne!(before.dir(), after.dir());
    // A changed source file: a new cache.
    std::fs::write(
        &src,
        "{\"text\": \"another text\"}\n{\"text\": \"and more\"}\n",
    )
    .unwrap();
    let (c, built) = prepare(&src, Regime::Cpt, &sp, &Tokenizer::Byte, &root, 1, SMALL).unwrap();
    assert!(built.is_some());
    assert_ne!(c.dir(), a.dir());
    assert_eq!(c.doc_count(), 2);
}

#[test]
fn a_truncated_or_corrupt_shard_is_an_error_naming_it_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let src = corpus(dir.path(), 40, false);
    let sp = spec(Regime::Cpt);
    let tok = Tokenizer::Byte;
    let (cache, _) = prepare(&src, Regime::Cpt, &sp, &tok, &root, 1, SMALL).unwrap();
    let shard = cache.dir().join("tokens-00001.bin");
    let bytes = std::fs::read(&shard).unwrap();
    drop(cache);
    // A byte flipped inside block 2 of the second shard: found when that block is read.
    let mut flipped = bytes.clone();
    flipped[2 * 64 * 2 + 5] ^= 0x40;
    std::fs::write(&shard, &flipped).unwrap();
    let (cache, built) = prepare(&src, Regime::Cpt, &sp, &tok, &root, 1, SMALL).unwrap();
    assert!(built.is_none());
    let rows = Rows::cached(cache.clone(), &[], Regime::Cpt, 16, PAD, "t").unwrap();
    let err = (0..rows.len())
        .find_map(|i| rows.row(i).err())
        .expect("the corrupt block is found")
        .to_string();
    assert!(
        err.contains("shard tokens-00001.bin is corrupt: block 2 (byte offset 256..384)"),
        "{err}"
    );
    assert!(err.contains("remove that folder"), "{err}");
    assert!(!err.contains('\n'), "{err}");
    // Truncated: refused at open, naming the shard and the offset.
    std::fs::write(&shard, &bytes[..bytes.len() - 3]).unwrap();
    let err = prepare(&src, Regime::Cpt, &sp, &tok, &root, 1, SMALL)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard tokens-00001.bin is"), "{err}");
    assert!(
        err.contains(&format!("truncated at byte offset {}", bytes.len() - 3)),
        "{err}"
    );
}

#[test]
fn builders_of_one_cache_wait_for_each_other_and_one_builds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let src = corpus(dir.path(), 400, false);
    let sp = spec(Regime::Cpt);
    let built: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    prepare(&src, Regime::Cpt, &sp, &Tokenizer::Byte, &root, 1, SMALL)
                        .unwrap()
                        .1
                        .is_some()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(built.iter().filter(|b| **b).count(), 1, "{built:?}");
    let leftovers: Vec<_> = std::fs::read_dir(root.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_bad_line_fails_the_build_and_leaves_no_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let src = dir.path().join("bad.jsonl");
    let good = "{\"text\": \"fine\"}\n".repeat(5000);
    std::fs::write(&src, format!("{good}not json\n{good}")).unwrap();
    let err = prepare(
        &src,
        Regime::Cpt,
        &spec(Regime::Cpt),
        &Tokenizer::Byte,
        &root,
        2,
        SMALL,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bad.jsonl:5001: not JSON"), "{err}");
    let left: Vec<_> = std::fs::read_dir(root.join("tokens"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Resident bytes of the mappings of files whose path contains `part`, from /proc/self/smaps.
fn resident_of(part: &str) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut total = 0;
    let mut ours = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            ours = line.contains(part);
        } else if ours && line.starts_with("Rss:") {
            total += line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                * 1024;
        }
    }
    total
}

#[test]
fn reading_every_window_leaves_little_of_the_shards_resident() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("c");
    let src = dir.path().join("big.txt");
    let line = "the quick brown fox jumps over the lazy dog, again and again\n";
    std::fs::write(&src, line.repeat(300_000)).unwrap(); // 18 MB
    let sp = spec(Regime::Cpt);
    let (cache, _) = prepare(
        &src,
        Regime::Cpt,
        &sp,
        &Tokenizer::Byte,
        &root,
        2,
        Layout::default(),
    )
    .unwrap();
    let rows = Rows::cached(cache.clone(), &[], Regime::Cpt, 256, PAD, "t").unwrap();
    let mapped = cache.meta().tokens * 2;
    assert!(mapped > 30 << 20, "{mapped}");
    for i in 0..rows.len() {
        rows.row(i).unwrap();
    }
    let resident = resident_of(cache.dir().to_str().unwrap());
    assert!(
        resident < 1 << 20,
        "{resident} of {mapped} bytes resident after reading them all"
    );
}
