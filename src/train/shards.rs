//! Pre-tokenized token shards: numpy `.npy` files of token ids, read without numpy.
//!
//! A shard is a one-dimensional array of `uint16`, `uint32`, `int32` or `int64` ids in the model
//! tokenizer's numbering, saved with `np.save("shard.npy", ids)` (little-endian, as numpy writes
//! on every common machine). Documents inside a shard are separated by the tokenizer's EOS id;
//! a shard without one is one document. The held-out split is by these documents.
//!
//! The `.npy` layout (format versions 1 to 3): the magic `\x93NUMPY`, two version bytes, the
//! header's length (u16 for version 1, u32 after), then a Python dict literal such as
//! `{'descr': '<u2', 'fortran_order': False, 'shape': (1000,), }` and the raw data.

use std::path::Path;

use super::TrainError;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The element types a shard may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    U16,
    U32,
    I32,
    I64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::U16 => 2,
            Dtype::U32 | Dtype::I32 => 4,
            Dtype::I64 => 8,
        }
    }
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Data(format!("{}: {msg}", path.display()))
}

/// The value of `'key': VALUE` in a numpy header dict, up to the next top-level comma or brace.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    // A tuple runs to its closing parenthesis; anything else to the next comma or brace.
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// The token ids of a `.npy` shard, as i64. `bytes` is the whole file, `path` names it in errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<Vec<i64>, TrainError> {
    const HOW: &str = "save token ids with numpy: np.save(path, np.asarray(ids, dtype=np.uint32))";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, format!("not a .npy file; {HOW}")));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(path, format!(".npy format version {v} is not known"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .map(String::from_utf8_lossy)
        .ok_or_else(|| bad(path, "truncated .npy header"))?;
    let descr = header_value(&header, "descr")
        .map(|d| d.trim_matches(['\'', '"']))
        .ok_or_else(|| bad(path, "the .npy header has no 'descr'"))?;
    let dtype = match descr {
        "<u2" => Dtype::U16,
        "<u4" => Dtype::U32,
        "<i4" => Dtype::I32,
        "<i8" => Dtype::I64,
        other => {
            return Err(bad(
                path,
                format!(
                    "token ids of dtype '{other}' are not supported; use little-endian uint16, \
                     uint32, int32 or int64 ({HOW})"
                ),
            ))
        }
    };
    let shape = header_value(&header, "shape").ok_or_else(|| bad(path, "no 'shape'"))?;
    let dims: Vec<&str> = shape
        .trim_matches(['(', ')'])
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let n: usize = match dims.as_slice() {
        [d] => d
            .parse()
            .map_err(|_| bad(path, format!("unreadable shape {shape}")))?,
        _ => {
            return Err(bad(
                path,
                format!(
                    "shape {shape} is not one-dimensional; save one flat array of ids with the \
                     tokenizer's EOS id between documents (ids.reshape(-1))"
                ),
            ))
        }
    };
    let data = &bytes[start + header_len..];
    let want = n.checked_mul(dtype.size());
    if want != Some(data.len()) {
        return Err(bad(
            path,
            format!(
                "holds {} bytes of data but its header says {n} ids of {} bytes; the file is \
                 truncated or not written by np.save",
                data.len(),
                dtype.size()
            ),
        ));
    }
    let ids: Vec<i64> = match dtype {
        Dtype::U16 => data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        Dtype::U32 => data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    };
    Ok(ids)
}

/// The documents of a shard's ids: cut after every `eos` (which each keeps), empty ones
/// dropped; ids are checked to be token ids of a tokenizer of `vocab` tokens.
pub fn documents(
    ids: &[i64],
    eos: i64,
    vocab: usize,
    path: &Path,
) -> Result<Vec<Vec<i64>>, TrainError> {
    if let Some((i, id)) = ids
        .iter()
        .enumerate()
        .find(|(_, id)| **id < 0 || **id as u64 >= vocab as u64)
    {
        return Err(bad(
            path,
            format!(
                "token id {id} at index {i} is not in 0..{vocab}, the vocabulary of the model's \
                 tokenizer; make the shards with the model's own tokenizer"
            ),
        ));
    }
    Ok(ids
        .split_inclusive(|&t| t == eos)
        .filter(|d| d.iter().any(|&t| t != eos))
        .map(<[i64]>::to_vec)
        .collect())
}

/// A `.npy` file (format 1.0) of `n` elements of `descr` as numpy writes it: the header padded
/// with spaces to a multiple of 64 bytes and ended by a newline, then `data`. For tests.
#[cfg(test)]
pub(crate) fn npy_v1(descr: &str, n: usize, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({n},), }}");
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = MAGIC.to_vec();
    out.extend([1, 0]);
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// A `.npy` file of uint16 `ids`, for tests.
#[cfg(test)]
pub(crate) fn npy_bytes_u16(ids: &[u16]) -> Vec<u8> {
    let data: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    npy_v1("<u2", ids.len(), &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `np.save(f, np.array([5, 256, 7], dtype=np.int32))` writes.
    fn numpy_int32() -> Vec<u8> {
        let data: Vec<u8> = [5i32, 256, 7]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        npy_v1("<i4", 3, &data)
    }

    #[test]
    fn reads_numpy_arrays_of_each_dtype() {
        let p = Path::new("s.npy");
        // numpy 2.x writes a 118-byte header for this array: 128 bytes before the data.
        assert_eq!(&numpy_int32()[6..10], b"\x01\x00v\x00");
        assert_eq!(numpy_int32().len(), 128 + 12);
        assert_eq!(parse_npy(&numpy_int32(), p).unwrap(), vec![5, 256, 7]);
        assert_eq!(
            parse_npy(&npy_bytes_u16(&[1, 65535, 0]), p).unwrap(),
            vec![1, 65535, 0]
        );
        // Version 2 (u32 header length) and uint32.
        let header = "{'descr': '<u4', 'fortran_order': False, 'shape': (2,), }\n";
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend((header.len() as u32).to_le_bytes());
        v2.extend(header.as_bytes());
        v2.extend(70_000u32.to_le_bytes());
        v2.extend(3u32.to_le_bytes());
        assert_eq!(parse_npy(&v2, p).unwrap(), vec![70_000, 3]);
    }

    #[test]
    fn bad_shards_say_what_is_wrong() {
        let p = Path::new("s.npy");
        let err = |b: &[u8]| parse_npy(b, p).unwrap_err().to_string();
        assert!(err(b"hello world, not numpy").contains("s.npy: not a .npy file; save"));
        // The header with one piece replaced by another of the same length.
        let edit = |from: &str, to: &str| {
            let mut b = numpy_int32();
            let at = b
                .windows(from.len())
                .position(|w| w == from.as_bytes())
                .unwrap();
            b[at..at + from.len()].copy_from_slice(to.as_bytes());
            b
        };
        assert!(err(&edit("<i4", "<f4")).contains("dtype '<f4' are not supported"));
        assert!(err(&edit("<i4", ">i4")).contains("dtype '>i4' are not supported"));
        assert!(err(&edit("(3,),", "(1,3)")).contains("not one-dimensional"));
        let mut short = numpy_int32();
        short.pop();
        assert!(err(&short).contains("truncated"));
        let e = documents(&[1, 2, 300], 2, 259, p).unwrap_err().to_string();
        assert!(
            e.contains("s.npy: token id 300 at index 2 is not in 0..259"),
            "{e}"
        );
        assert!(documents(&[-1], 2, 259, p).is_err());
    }

    #[test]
    fn documents_end_at_eos() {
        let p = Path::new("s.npy");
        assert_eq!(
            documents(&[1, 5, 9, 1, 6, 9, 9, 7], 9, 10, p).unwrap(),
            vec![vec![1, 5, 9], vec![1, 6, 9], vec![7]]
        );
        assert_eq!(documents(&[3, 4], 9, 10, p).unwrap(), vec![vec![3, 4]]);
    }
}
