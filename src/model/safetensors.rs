//! A check that a safetensors file is whole, without libtorch: its 8-byte header length, its
//! JSON header and the tensor data that header promises. A truncated or corrupt file is named
//! as such, rather than met later as the reader library's own words.

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

#[cfg(test)]
mod tests {
    use super::*;

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
