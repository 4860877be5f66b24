//! Fingerprints of the files a run is trained from (base weights, tokenizer, data): each file's
//! size and a sha256 of evenly spaced samples of it, so that a 14 GB model is checked in
//! milliseconds and a file replaced or changed in place is caught before a resumed run, a
//! result or an export relies on it.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Files up to this size are hashed whole.
const WHOLE_BELOW: u64 = 4 << 20;
/// Samples of a larger file, each this long, spread from its start to its end.
const SAMPLES: u64 = 16;
const SAMPLE_BYTES: u64 = 64 << 10;

/// One file's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Size in bytes.
    pub size: u64,
    /// sha256 (hex) of the size and the sampled bytes (the whole file when small).
    pub digest: String,
}

/// The fingerprint of a regular file.
pub fn of_file(path: &Path) -> std::io::Result<Fingerprint> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let size = meta.len();
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    if size <= WHOLE_BELOW {
        let mut buf = Vec::with_capacity(size as usize);
        f.read_to_end(&mut buf)?;
        h.update(&buf);
    } else {
        let mut buf = vec![0u8; SAMPLE_BYTES as usize];
        let span = size - SAMPLE_BYTES;
        for i in 0..SAMPLES {
            let at = span * i / (SAMPLES - 1);
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut buf)?;
            h.update(at.to_le_bytes());
            h.update(&buf);
        }
    }
    Ok(Fingerprint {
        size,
        digest: h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// Fingerprints of a file, or of every regular file under a folder, keyed by `role:path`.
pub fn of_path(role: &str, path: &Path) -> std::io::Result<BTreeMap<String, Fingerprint>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        } else if p.is_file() {
            out.insert(format!("{role}:{}", p.display()), of_file(&p)?);
        }
    }
    Ok(out)
}

/// What changed between the fingerprints recorded (`then`) and those of today (`now`), for the
/// keys recorded; None when nothing did.
pub fn changes(
    then: &BTreeMap<String, Fingerprint>,
    now: &BTreeMap<String, Fingerprint>,
) -> Option<String> {
    let mut what = Vec::new();
    for (key, old) in then {
        let path = key.split_once(':').map_or(key.as_str(), |(_, p)| p);
        match now.get(key) {
            None => what.push(format!("{path} is gone")),
            Some(new) if new.size != old.size => what.push(format!(
                "{path} was {} bytes and is {} now",
                old.size, new.size
            )),
            Some(new) if new.digest != old.digest => {
                what.push(format!("{path} has other content (same size)"))
            }
            Some(_) => {}
        }
    }
    for key in now.keys().filter(|k| !then.contains_key(*k)) {
        let path = key.split_once(':').map_or(key.as_str(), |(_, p)| p);
        what.push(format!("{path} is new"));
    }
    (!what.is_empty()).then(|| what.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_anywhere_in_a_small_file_or_in_a_sample_of_a_large_one_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("s.bin");
        std::fs::write(&small, b"hello world").unwrap();
        let a = of_file(&small).unwrap();
        std::fs::write(&small, b"hello World").unwrap();
        assert_ne!(a, of_file(&small).unwrap());

        let big = dir.path().join("b.bin");
        let mut data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&big, &data).unwrap();
        let b = of_file(&big).unwrap();
        assert_eq!(b, of_file(&big).unwrap(), "stable");
        // The last byte lies in the last sample; a replaced file changes everywhere.
        let n = data.len();
        data[n - 1] ^= 1;
        std::fs::write(&big, &data).unwrap();
        assert_ne!(b, of_file(&big).unwrap());
        data.truncate(n - 10);
        std::fs::write(&big, &data).unwrap();
        assert_ne!(b.size, of_file(&big).unwrap().size);
    }

    #[test]
    fn changes_name_the_file_and_how() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "1").unwrap();
        std::fs::write(dir.path().join("b"), "2").unwrap();
        let then = of_path("model", dir.path()).unwrap();
        assert_eq!(then.len(), 2);
        assert_eq!(changes(&then, &then), None);
        std::fs::write(dir.path().join("a"), "11").unwrap();
        std::fs::write(dir.path().join("b"), "3").unwrap();
        let c = changes(&then, &of_path("model", dir.path()).unwrap()).unwrap();
        assert!(c.contains("/a was 1 bytes and is 2 now"), "{c}");
        assert!(c.contains("/b has other content"), "{c}");
        std::fs::remove_file(dir.path().join("b")).unwrap();
        let c = changes(&then, &of_path("model", dir.path()).unwrap()).unwrap();
        assert!(c.contains("/b is gone"), "{c}");
    }
}
