//! The safetensors format (an 8-byte little-endian header length, a JSON header naming each
//! tensor's dtype, shape and byte range, then the data): a check that a file is whole, without
//! libtorch (a truncated or corrupt file is named as such, rather than met later as the reader
//! library's own words), and a writer that streams tensors to the file one at a time.

use std::io::Read;
use std::path::Path;

/// Check that `path` is a complete safetensors file; the error says what is wrong with it.
pub fn check_complete(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let len = meta.len();
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| format!("only {len} bytes: no safetensors header"))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > len.saturating_sub(8) || header_len > 100 << 20 {
        return Err(format!(
            "its header claims {header_len} bytes, but the file has {len}: truncated or not a safetensors file"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| format!("its header is not JSON ({e}): corrupt"))?;
    let end = v
        .as_object()
        .ok_or("its header is not a JSON object: corrupt")?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let want = 8 + header_len + end;
    if len < want {
        return Err(format!(
            "{len} bytes, but its header promises {want}: truncated"
        ));
    }
    Ok(())
}

/// The safetensors name of a tensor kind.
#[cfg(feature = "torch")]
fn dtype_name(k: tch::Kind) -> Option<&'static str> {
    use tch::Kind::*;
    Some(match k {
        Float => "F32",
        BFloat16 => "BF16",
        Half => "F16",
        Double => "F64",
        Int64 => "I64",
        Int => "I32",
        Int16 => "I16",
        Int8 => "I8",
        Uint8 => "U8",
        Bool => "BOOL",
        _ => return None,
    })
}

/// Write `tensors` to `path` as one safetensors file, streaming: the header first (it needs
/// only shapes), then each tensor's bytes, copied off its device one tensor at a time, so that
/// the host never holds more than the largest tensor (a checkpoint of a model on GPUs is not
/// staged whole in host memory).
#[cfg(feature = "torch")]
pub fn write_streamed(path: &Path, tensors: &[(String, tch::Tensor)]) -> std::io::Result<()> {
    use std::io::Write;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, t) in tensors {
        let dtype = dtype_name(t.kind()).ok_or_else(|| {
            bad(format!(
                "{name}: kind {:?} has no safetensors dtype",
                t.kind()
            ))
        })?;
        let bytes = (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    // The data starts 8-byte aligned, as the format's reference writer pads it.
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut w = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    for (name, t) in tensors {
        let cpu = t
            .f_detach()
            .and_then(|t| t.f_to_device(tch::Device::Cpu))
            .and_then(|t| t.f_contiguous())
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let n = cpu.numel() * cpu.kind().elt_size_in_bytes();
        if n == 0 {
            continue;
        }
        // SAFETY: a contiguous CPU tensor of n bytes, alive until the slice is written.
        let data = unsafe { std::slice::from_raw_parts(cpu.data_ptr() as *const u8, n) };
        w.write_all(data)?;
    }
    w.flush()
}

/// The tensor kind of a safetensors dtype name.
#[cfg(feature = "torch")]
fn kind_of(name: &str) -> Option<tch::Kind> {
    use tch::Kind::*;
    Some(match name {
        "F32" => Float,
        "BF16" => BFloat16,
        "F16" => Half,
        "F64" => Double,
        "I64" => Int64,
        "I32" => Int,
        "I16" => Int16,
        "I8" => Int8,
        "U8" => Uint8,
        "BOOL" => Bool,
        _ => return None,
    })
}

/// Read every tensor of a safetensors file (on the CPU) through a memory map, one tensor at a
/// time: the host holds the tensors and nothing more (not a second copy of the file), which is
/// what a resume of a large checkpoint needs. Call [`check_complete`] first for a plain error on
/// a truncated file.
#[cfg(feature = "torch")]
pub fn read_streamed(path: &Path) -> std::io::Result<Vec<(String, tch::Tensor)>> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let file = std::fs::File::open(path)?;
    // SAFETY: a checkpoint's files are not written once renamed into place.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let n = map
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .ok_or_else(|| bad("no safetensors header".into()))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(
        map.get(8..8 + n)
            .ok_or_else(|| bad("truncated header".into()))?,
    )
    .map_err(|e| bad(format!("header: {e}")))?;
    let base = 8 + n;
    let mut out = Vec::with_capacity(header.len());
    for (name, info) in header.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let dtype = info["dtype"].as_str().unwrap_or("");
        let kind = kind_of(dtype).ok_or_else(|| bad(format!("{name}: dtype {dtype:?}")))?;
        let dims = info["shape"]
            .as_array()
            .ok_or_else(|| bad(format!("{name}: no shape")))?;
        let shape: Vec<i64> = dims
            .iter()
            .map(|d| d.as_i64().filter(|d| *d >= 0))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("{name}: shape {dims:?} is not a list of sizes")))?;
        let range = info["data_offsets"]
            .as_array()
            .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)));
        let (lo, hi) = range.ok_or_else(|| bad(format!("{name}: no data_offsets")))?;
        let (lo, hi) = (base + lo as usize, base + hi as usize);
        let bytes = map.get(lo..hi).ok_or_else(|| {
            bad(format!(
                "{name}: bytes {lo}..{hi} lie beyond the file's end"
            ))
        })?;
        // The bytes must be exactly what the shape holds: libtorch copies numel x size bytes.
        let need = shape
            .iter()
            .try_fold(kind.elt_size_in_bytes() as u64, |n, &d| {
                n.checked_mul(d as u64)
            });
        if need != Some(bytes.len() as u64) {
            return Err(bad(format!(
                "{name}: its shape {shape:?} of {dtype} needs {need:?} bytes, its data_offsets give {}",
                bytes.len()
            )));
        }
        let t = tch::Tensor::f_from_data_size(bytes, &shape, kind)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        crate::util::release_pages(&map, lo, hi);
        out.push((name.clone(), t));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streamed writer's files read back through libtorch's own reader, every dtype the
    /// trainer writes, and pass the completeness check.
    #[cfg(feature = "torch")]
    #[test]
    fn streamed_files_read_back_as_written() {
        use tch::{Kind, Tensor};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.safetensors");
        let tensors = vec![
            (
                "w".to_string(),
                Tensor::randn([3, 5], (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "b".to_string(),
                Tensor::randn([7], (Kind::Float, tch::Device::Cpu)).to_kind(Kind::BFloat16),
            ),
            // A transposed view: written in its logical order.
            (
                "t".to_string(),
                Tensor::arange(6, (Kind::Int64, tch::Device::Cpu))
                    .reshape([2, 3])
                    .tr(),
            ),
            (
                "empty".to_string(),
                Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)),
            ),
        ];
        write_streamed(&p, &tensors).unwrap();
        check_complete(&p).unwrap();
        // Read back by libtorch's reader (tch's) and by the streamed one.
        for back in [
            Tensor::read_safetensors(&p).unwrap(),
            read_streamed(&p).unwrap(),
        ] {
            let back: std::collections::HashMap<String, Tensor> = back.into_iter().collect();
            assert_eq!(back.len(), 4);
            for (name, t) in &tensors {
                let b = &back[name];
                assert_eq!((b.size(), b.kind()), (t.size(), t.kind()), "{name}");
                assert!(b.equal(t), "{name}");
            }
        }
        let len = std::fs::metadata(&p).unwrap().len();
        // A header whose shape claims more than its bytes is refused, not read past its data.
        let whole = std::fs::read(&p).unwrap();
        let at = whole
            .windows(13)
            .position(|w| w == b"\"shape\":[3,5]")
            .unwrap();
        let mut lying = whole.clone();
        lying[at + 9] = b'9';
        let q = dir.path().join("lying.safetensors");
        std::fs::write(&q, &lying).unwrap();
        let e = read_streamed(&q).unwrap_err().to_string();
        assert!(e.contains("w: its shape [9, 5]"), "{e}");
        std::fs::write(&p, &whole[..len as usize - 1]).unwrap();
        assert!(check_complete(&p).unwrap_err().contains("truncated"));
    }

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data));
        b
    }

    #[test]
    fn whole_truncated_and_garbage_files_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"__metadata__":{}}"#;
        std::fs::write(&p, file(h, 16)).unwrap();
        check_complete(&p).unwrap();
        std::fs::write(&p, file(h, 10)).unwrap();
        assert!(check_complete(&p).unwrap_err().contains("truncated"));
        std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
        assert!(check_complete(&p).unwrap_err().contains("claims"));
        std::fs::write(&p, file("{not json", 0)).unwrap();
        assert!(check_complete(&p).unwrap_err().contains("not JSON"));
        std::fs::write(&p, b"abc").unwrap();
        assert!(check_complete(&p)
            .unwrap_err()
            .contains("no safetensors header"));
    }
}
