//! GGUF files, llama.cpp's format: header, metadata, tensor infos and data; dequantization of
//! F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K to Q6_K; and the mapping of a Llama GGUF onto Hugging Face names,
//! shapes and configuration (undoing llama.cpp's Q/K row permutation).
//!
//! Parsing and dequantization are pure functions over bytes; [`GgufFile::open`] reads the file
//! and, with the `torch` feature, [`load_llama`] builds a [`crate::model::llama::Llama`] from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use super::config::LlamaConfig;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// An error reading a GGUF file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not start with `GGUF`.
    #[error("{path}: not a GGUF file (starts with {found:?}, expected \"GGUF\")")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first bytes found.
        found: String,
    },
    /// A GGUF version other than 2 or 3 (or a big-endian file).
    #[error(
        "{path}: GGUF version {version} is not supported (versions 2 and 3, little-endian, are)"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version field as read.
        version: u32,
    },
    /// The file ends before something it declares.
    #[error("{path}: truncated file: {what} needs bytes {start}..{end}, the file has {len}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Where it starts.
        start: u64,
        /// Where it ends.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// A tensor's quantization type cannot be dequantized here.
    #[error(
        "{path}: tensor {tensor} has quantization type {ty}, which is not supported \
         (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)"
    )]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The ggml type's name.
        ty: String,
    },
    /// A tensor's shape is not what the model needs, or does not fit its type's blocks.
    #[error("{path}: tensor {tensor}: {msg}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// Malformed or missing metadata, or an unsupported model.
    #[error("{path}: {msg}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// uint8
    U8(u8),
    /// int8
    I8(i8),
    /// uint16
    U16(u16),
    /// int16
    I16(i16),
    /// uint32
    U32(u32),
    /// int32
    I32(i32),
    /// float32
    F32(f32),
    /// bool
    Bool(bool),
    /// UTF-8 string
    String(String),
    /// uint64
    U64(u64),
    /// int64
    I64(i64),
    /// float64
    F64(f64),
    /// An array of values of one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an integer, if it is one (of any width) and fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A ggml tensor type, by its numeric id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// 32-bit float.
    pub const F32: GgmlType = GgmlType(0);
    /// 16-bit float.
    pub const F16: GgmlType = GgmlType(1);
    /// 4-bit blocks of 32 with a scale: (q - 8) * d.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// 4-bit blocks of 32 with a scale and a minimum: q * d + m.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// 5-bit blocks of 32 with a scale: (q - 16) * d, the fifth bits in a 32-bit word.
    pub const Q5_0: GgmlType = GgmlType(6);
    /// 5-bit blocks of 32 with a scale and a minimum: q * d + m.
    pub const Q5_1: GgmlType = GgmlType(7);
    /// 8-bit blocks of 32 with a scale: q * d.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// bfloat16.
    pub const BF16: GgmlType = GgmlType(30);
    /// 2-bit super-blocks of 256: 16 sub-blocks with 4-bit scales and minimums.
    pub const Q2_K: GgmlType = GgmlType(10);
    /// 3-bit super-blocks of 256: 16 sub-blocks with 6-bit signed scales, no minimum.
    pub const Q3_K: GgmlType = GgmlType(11);
    /// 4-bit super-blocks of 256: 8 sub-blocks with 6-bit scales and minimums.
    pub const Q4_K: GgmlType = GgmlType(12);
    /// 5-bit super-blocks of 256: Q4_K's layout plus one high bit per element.
    pub const Q5_K: GgmlType = GgmlType(13);
    /// 6-bit super-blocks of 256: 16 sub-blocks with 8-bit signed scales.
    pub const Q6_K: GgmlType = GgmlType(14);

    /// ggml's name for the type (`Q4_K`, ...), or `type N` for an id unknown here.
    pub fn name(self) -> String {
        let known = match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            6 => "Q5_0",
            7 => "Q5_1",
            8 => "Q8_0",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16 => "IQ2_XXS",
            17 => "IQ2_XS",
            18 => "IQ3_XXS",
            19 => "IQ1_S",
            20 => "IQ4_NL",
            21 => "IQ3_S",
            22 => "IQ2_S",
            23 => "IQ4_XS",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            29 => "IQ1_M",
            30 => "BF16",
            34 => "TQ1_0",
            35 => "TQ2_0",
            _ => return format!("type {}", self.0),
        };
        known.to_string()
    }

    /// (elements per block, bytes per block) for the types whose layout is known here, so that
    /// a file's extent can be checked even for tensors that cannot be dequantized.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        Some(match self.0 {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            6 => (32, 22),
            7 => (32, 24),
            8 => (32, 34),
            9 => (32, 36),
            10 => (256, 84),
            11 => (256, 110),
            12 => (256, 144),
            13 => (256, 176),
            14 => (256, 210),
            15 => (256, 292),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 | 28 => (1, 8),
            _ => return None,
        })
    }

    /// Bytes of `n` elements, when the layout is known and `n` is whole blocks.
    pub fn byte_size(self, n: u64) -> Option<u64> {
        let (block, bytes) = self.block_layout()?;
        n.is_multiple_of(block)
            .then(|| (n / block).checked_mul(bytes))
            .flatten()
    }

    /// Whether [`dequantize`] handles the type.
    pub fn is_supported(self) -> bool {
        matches!(self.0, 0..=3 | 6..=8 | 10..=14 | 30)
    }
}

/// Where a tensor is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous one (a weight's input width).
    pub dims: Vec<u64>,
    /// Its type.
    pub ty: GgmlType,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape in row-major (PyTorch) order: ggml's dims reversed.
    pub fn torch_shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// Dequantize `data`, the exact bytes of whole blocks of type `ty`, to f32. Returns None for a
/// type not handled here (see [`GgmlType::is_supported`]); a trailing partial block is ignored.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Option<Vec<f32>> {
    let f16_at = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let out = match ty {
        GgmlType::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        GgmlType::F16 => data.chunks_exact(2).map(|b| f16_at(b, 0)).collect(),
        GgmlType::BF16 => data
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        GgmlType::Q8_0 => {
            let mut out = Vec::with_capacity(data.len() / 34 * 32);
            for b in data.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
            out
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let with_min = ty == GgmlType::Q4_1;
            let size = if with_min { 20 } else { 18 };
            let mut out = Vec::with_capacity(data.len() / size * 32);
            for b in data.chunks_exact(size) {
                let d = f16_at(b, 0);
                let (m, qs, shift) = if with_min {
                    (f16_at(b, 2), &b[4..], 0.0)
                } else {
                    (0.0, &b[2..], 8.0)
                };
                // Low nibbles are elements 0..16 of the block, high nibbles 16..32.
                out.extend(qs.iter().map(|&q| (f32::from(q & 0x0f) - shift) * d + m));
                out.extend(qs.iter().map(|&q| (f32::from(q >> 4) - shift) * d + m));
            }
            out
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let with_min = ty == GgmlType::Q5_1;
            let size = if with_min { 24 } else { 22 };
            let mut out = vec![0f32; data.len() / size * 32];
            for (b, o) in data.chunks_exact(size).zip(out.chunks_exact_mut(32)) {
                let d = f16_at(b, 0);
                let (m, at, shift) = if with_min {
                    (f16_at(b, 2), 4, 0.0)
                } else {
                    (0.0, 2, 16.0)
                };
                // Bit j of qh is element j's fifth bit, bit j + 16 element j + 16's.
                let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                for (j, &q) in b[at + 4..at + 20].iter().enumerate() {
                    let lo = u32::from(q & 0x0f) | (((qh >> j) & 1) << 4);
                    let hi = u32::from(q >> 4) | (((qh >> (j + 16)) & 1) << 4);
                    o[j] = (lo as f32 - shift) * d + m;
                    o[j + 16] = (hi as f32 - shift) * d + m;
                }
            }
            out
        }
        GgmlType::Q2_K => k_quant(data, 84, dequantize_q2_k),
        GgmlType::Q3_K => k_quant(data, 110, dequantize_q3_k),
        GgmlType::Q4_K => k_quant(data, 144, |b, out| dequantize_q45_k(b, false, out)),
        GgmlType::Q5_K => k_quant(data, 176, |b, out| dequantize_q45_k(b, true, out)),
        GgmlType::Q6_K => k_quant(data, 210, dequantize_q6_k),
        _ => return None,
    };
    Some(out)
}

/// Elements in a K-quant super-block.
const QK_K: usize = 256;

fn f16_le(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Every whole super-block of `size` bytes in `data`, each dequantized into 256 floats.
fn k_quant(data: &[u8], size: usize, block: impl Fn(&[u8], &mut [f32])) -> Vec<f32> {
    let mut out = vec![0f32; data.len() / size * QK_K];
    for (b, o) in data.chunks_exact(size).zip(out.chunks_exact_mut(QK_K)) {
        block(b, o);
    }
    out
}

/// Q2_K: scales[16] (low nibble the scale, high the minimum), qs[64], d, dmin. Each half of
/// 128 elements reads 32 bytes of qs four times, two bits at a time; each 16 elements have a
/// sub-block of their own.
fn dequantize_q2_k(b: &[u8], out: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (f16_le(b, 80), f16_le(b, 82));
    for (i, y) in out.iter_mut().enumerate() {
        let (half, within) = (i / 128, i % 128);
        let (shift, l) = (2 * (within / 32), within % 32);
        let sc = scales[i / 16];
        let q = (qs[32 * half + l] >> shift) & 3;
        *y = d * f32::from(sc & 0x0f) * f32::from(q) - dmin * f32::from(sc >> 4);
    }
}

/// Q3_K: hmask[32] (the third bit, one bit-plane per 32 elements), qs[64] (the low two bits,
/// laid out as Q2_K's), scales[12] (sixteen 6-bit scales, offset by 32), d. An element whose
/// high bit is clear is 4 lower.
fn dequantize_q3_k(b: &[u8], out: &mut [f32]) {
    let (hmask, qs, packed) = (&b[..32], &b[32..96], &b[96..108]);
    let d = f16_le(b, 108);
    // Scale j: its low four bits from byte j % 8 (low nibble for j < 8, high above), its top two
    // from byte 8 + j % 4, at bit 2 * (j / 4).
    let scale = |j: usize| -> f32 {
        let low = if j < 8 {
            packed[j] & 0x0f
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        f32::from((low | (high << 4)) as i8 - 32)
    };
    for (i, y) in out.iter_mut().enumerate() {
        let (half, within) = (i / 128, i % 128);
        let (shift, l) = (2 * (within / 32), within % 32);
        let low = (qs[32 * half + l] >> shift) & 3;
        let plane = i / 32;
        let high = hmask[l] >> plane & 1;
        let q = f32::from(low) - if high == 1 { 0.0 } else { 4.0 };
        *y = d * scale(i / 16) * q;
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of Q4_K and Q5_K, packed in 12 bytes:
/// sub-blocks 0-3 in the low six bits of bytes 0-3 (scales) and 4-7 (minimums); 4-7 in the
/// nibbles of bytes 8-11, with their top two bits in the top bits of bytes 0-7.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

/// Q4_K: d, dmin, scales[12], qs[128]; Q5_K has qh[32] before qs, one high bit per element (bit
/// j of qh[l] for sub-block j). Each 64 elements read 32 bytes of qs: low nibbles for the first
/// sub-block of 32, high for the second. y = d * scale * q - dmin * min.
fn dequantize_q45_k(b: &[u8], five: bool, out: &mut [f32]) {
    let (d, dmin, scales) = (f16_le(b, 0), f16_le(b, 2), &b[4..16]);
    let (qh, qs) = if five {
        (&b[16..48], &b[48..176])
    } else {
        (&b[0..0], &b[16..144])
    };
    for (i, y) in out.iter_mut().enumerate() {
        let (sub, l) = (i / 32, i % 32);
        let byte = qs[32 * (sub / 2) + l];
        let mut q = if sub % 2 == 0 { byte & 0x0f } else { byte >> 4 };
        if five {
            q |= ((qh[l] >> sub) & 1) << 4;
        }
        let (sc, m) = scale_min_k4(sub, scales);
        *y = d * sc * f32::from(q) - dmin * m;
    }
}

/// Q6_K: ql[128] (low four bits), qh[64] (high two), scales[16] (signed, one per 16 elements),
/// d. Each half of 128 elements reads 64 bytes of ql and 32 of qh: quarter k of it takes the
/// low (k even) or high nibble of ql[l + 32 * (k % 2)] and bits 2k..2k+2 of qh[l].
fn dequantize_q6_k(b: &[u8], out: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = f16_le(b, 208);
    for (i, y) in out.iter_mut().enumerate() {
        let (half, within) = (i / 128, i % 128);
        let (k, l) = (within / 32, within % 32);
        let byte = ql[64 * half + l + 32 * (k % 2)];
        let low = if k < 2 { byte & 0x0f } else { byte >> 4 };
        let high = (qh[32 * half + l] >> (2 * k)) & 3;
        let q = i32::from(low | (high << 4)) - 32;
        *y = d * f32::from(scales[i / 16] as i8) * q as f32;
    }
}

/// Reads little-endian values from the bytes of a file, reporting truncation by name.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let end = (self.pos as u64).saturating_add(n);
        if end > self.buf.len() as u64 {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                start: self.pos as u64,
                end,
                len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Invalid {
            path: self.path.to_path_buf(),
            msg: format!("{what} is not UTF-8"),
        })
    }

    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<GgufValue, GgufError> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 if depth < 8 => {
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least a byte: a count beyond the file is truncation,
                // caught before allocating for it.
                let left = (self.buf.len() - self.pos) as u64;
                if n > left {
                    return Err(GgufError::Truncated {
                        path: self.path.to_path_buf(),
                        what: format!("{what} ({n} elements)"),
                        start: self.pos as u64,
                        end: self.pos as u64 + n,
                        len: self.buf.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            _ => {
                return Err(GgufError::Invalid {
                    path: self.path.to_path_buf(),
                    msg: format!("{what} has unknown value type {ty}"),
                })
            }
        })
    }
}

/// A parsed GGUF file and its bytes.
#[derive(Debug)]
pub struct GgufFile {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data.
    pub alignment: u64,
    /// Offset of the data section in the file.
    pub data_start: u64,
    bytes: Vec<u8>,
}

impl GgufFile {
    /// Read and parse a file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let bytes = crate::util::read_regular_file(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        GgufFile::parse(bytes, path)
    }

    /// Parse the bytes of a file; `path` names it in errors. Checks that every tensor of a known
    /// layout lies inside the file.
    pub fn parse(bytes: Vec<u8>, path: &Path) -> Result<GgufFile, GgufError> {
        GgufFile::parse_checked(bytes, path, true)
    }

    /// The Llama configuration of a GGUF file, reading only the start of it that holds the
    /// header (for the planner, which should not read gigabytes of weights).
    pub fn read_llama_config(path: &Path) -> Result<LlamaConfig, GgufError> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        let mut want: u64 = 1 << 20;
        loop {
            let mut buf = Vec::new();
            f.seek(SeekFrom::Start(0)).map_err(io)?;
            (&mut f).take(want).read_to_end(&mut buf).map_err(io)?;
            match GgufFile::parse_checked(buf, path, false) {
                Ok(header) => {
                    // Llama 3's rope_freqs lies among the weights, past the header: read it alone.
                    let freqs = match header.tensor("rope_freqs.weight") {
                        None => None,
                        Some(t) => {
                            let size = t.ty.byte_size(t.n_elements()).unwrap_or(0);
                            let mut bytes = Vec::new();
                            f.seek(SeekFrom::Start(header.data_start.saturating_add(t.offset)))
                                .map_err(io)?;
                            (&mut f).take(size).read_to_end(&mut bytes).map_err(io)?;
                            let values = dequantize(t.ty, &bytes).filter(|v| {
                                bytes.len() as u64 == size && v.len() as u64 == t.n_elements()
                            });
                            Some(values.ok_or_else(|| {
                                header.invalid(format!(
                                    "rope_freqs ({} x {:?}) cannot be read",
                                    t.ty.name(),
                                    t.dims
                                ))
                            })?)
                        }
                    };
                    return header.config_with(freqs);
                }
                Err(GgufError::Truncated { .. }) if want < len => want = want.saturating_mul(4),
                Err(e) => return Err(e),
            }
        }
    }

    fn parse_checked(
        bytes: Vec<u8>,
        path: &Path,
        check_extents: bool,
    ) -> Result<GgufFile, GgufError> {
        let mut r = Reader {
            buf: &bytes,
            pos: 0,
            path,
        };
        let magic: [u8; 4] = r.array("the magic")?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(&magic).into_owned(),
            });
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}"))?;
            let ty = r.u32(&format!("the type of {key}"))?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name {i}"))?;
            let n_dims = r.u32(&format!("dimensions of {name}"))?;
            if n_dims > 8 {
                return Err(GgufError::Invalid {
                    path: path.to_path_buf(),
                    msg: format!("tensor {name} has {n_dims} dimensions"),
                });
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&format!("dimensions of {name}")))
                .collect::<Result<Vec<_>, _>>()?;
            let ty = GgmlType(r.u32(&format!("type of {name}"))?);
            let offset = r.u64(&format!("offset of {name}"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i64() {
                Some(a) if a > 0 => a as u64,
                _ => {
                    return Err(GgufError::Invalid {
                        path: path.to_path_buf(),
                        msg: format!("general.alignment is {v:?}, not a positive integer"),
                    })
                }
            },
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file = GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_start,
            bytes,
        };
        for t in file.tensors.iter().filter(|_| check_extents) {
            if t.ty.block_layout().is_some() {
                file.tensor_bytes(t)?;
            }
        }
        Ok(file)
    }

    fn invalid(&self, msg: String) -> GgufError {
        GgufError::Invalid {
            path: self.path.clone(),
            msg,
        }
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// An integer metadata value; an error if present with another type.
    pub fn get_int(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| self.invalid(format!("{key} is {v:?}, not an integer")))
            })
            .transpose()
    }

    /// A numeric metadata value; an error if present with another type.
    pub fn get_float(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| self.invalid(format!("{key} is {v:?}, not a number")))
            })
            .transpose()
    }

    /// A string metadata value; an error if present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| self.invalid(format!("{key} is not a string")))
            })
            .transpose()
    }

    /// An array of strings; an error if present with another type.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let bad = || self.invalid(format!("{key} is not an array of strings"));
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_str().ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A tensor's info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, checked to lie inside the file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let n = t.n_elements();
        let size = match t.ty.byte_size(n) {
            Some(s) => s,
            None if t.ty.block_layout().is_some() => {
                return Err(GgufError::Shape {
                    path: self.path.clone(),
                    tensor: t.name.clone(),
                    msg: format!(
                        "{n} elements ({:?}) are not whole {} blocks",
                        t.dims,
                        t.ty.name()
                    ),
                })
            }
            None => {
                return Err(GgufError::UnsupportedType {
                    path: self.path.clone(),
                    tensor: t.name.clone(),
                    ty: t.ty.name(),
                })
            }
        };
        let start = self.data_start.saturating_add(t.offset);
        let end = start.saturating_add(size);
        if end > self.bytes.len() as u64 {
            return Err(GgufError::Truncated {
                path: self.path.clone(),
                what: format!("tensor {} ({} x {:?})", t.name, t.ty.name(), t.dims),
                start,
                end,
                len: self.bytes.len() as u64,
            });
        }
        Ok(&self.bytes[start as usize..end as usize])
    }

    /// A tensor's values as f32, in row-major order of [`TensorInfo::torch_shape`].
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let unsupported = || GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: t.name.clone(),
            ty: t.ty.name(),
        };
        if !t.ty.is_supported() {
            return Err(unsupported());
        }
        let values = dequantize(t.ty, self.tensor_bytes(t)?).ok_or_else(unsupported)?;
        if values.len() as u64 != t.n_elements() {
            return Err(GgufError::Shape {
                path: self.path.clone(),
                tensor: t.name.clone(),
                msg: format!(
                    "dequantized to {} values, dims {:?} need {}",
                    values.len(),
                    t.dims,
                    t.n_elements()
                ),
            });
        }
        Ok(values)
    }

    /// The model's configuration from its `ARCH.*` metadata (ARCH = `general.architecture`:
    /// llama, qwen2 or qwen3; vocabulary from the token list, tied embeddings when there is no
    /// `output.weight`, the head width from `ARCH.attention.key_length` where it is given,
    /// biases and Qwen3's q/k norms from the tensors present).
    pub fn llama_config(&self) -> Result<LlamaConfig, GgufError> {
        self.config_with(None)
    }

    /// [`GgufFile::llama_config`] with the rope_freqs values read already (by a reader that
    /// holds only the header), or read here.
    fn config_with(&self, rope_freqs: Option<Vec<f32>>) -> Result<LlamaConfig, GgufError> {
        let arch = self.get_str("general.architecture")?.unwrap_or("");
        if !GGUF_ARCHITECTURES.contains(&arch) {
            return Err(self.invalid(format!(
                "general.architecture is {arch:?}; supported: {}",
                GGUF_ARCHITECTURES.join(", ")
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let required = |k: &str| -> Result<usize, GgufError> {
            let full = key(k);
            match self.get_int(&full)? {
                Some(v) if v > 0 => Ok(v as usize),
                Some(v) => Err(self.invalid(format!("{full} is {v}"))),
                None => Err(self.invalid(format!("metadata {full} is missing"))),
            }
        };
        let hidden = required("embedding_length")?;
        let heads = required("attention.head_count")?;
        let kv = match self.get_int(&key("attention.head_count_kv"))? {
            Some(v) if v > 0 => v as usize,
            _ => heads,
        };
        let vocab = match self.get_str_array("tokenizer.ggml.tokens")? {
            Some(t) => t.len(),
            None => match self.get_int(&key("vocab_size"))? {
                Some(v) if v > 0 => v as usize,
                _ => {
                    return Err(self.invalid(format!(
                        "no tokenizer.ggml.tokens or {arch}.vocab_size to size the vocabulary"
                    )))
                }
            },
        };
        let head_dim = match self.get_int(&key("attention.key_length"))? {
            Some(k) if k > 0 && k as usize != hidden / heads => Some(k as usize),
            _ => None,
        };
        let width = head_dim.unwrap_or(hidden / heads);
        if let Some(v) = self.get_int(&key("attention.value_length"))? {
            if v as usize != width {
                return Err(self.invalid(format!(
                    "{arch}.attention.value_length {v} differs from the key width {width}, which is not supported"
                )));
            }
        }
        if let Some(rot) = self.get_int(&key("rope.dimension_count"))? {
            if rot as usize != width {
                return Err(self.invalid(format!(
                    "{arch}.rope.dimension_count {rot} differs from the head width {width}; partial \
                     rotary embeddings are not supported"
                )));
            }
        }
        // Llama 3's RoPE scaling travels as a `rope_freqs` tensor: one divisor per rotary pair.
        let rope_scaling = match self.tensor("rope_freqs.weight") {
            None => None,
            Some(t) => {
                let factors = match rope_freqs {
                    Some(v) => v,
                    None => self.tensor_f32(t)?,
                };
                if factors.len() != width / 2 || factors.iter().any(|f| f.is_nan() || *f <= 0.0) {
                    return Err(self.invalid(format!(
                        "rope_freqs has {} values; a head of width {width} needs {} positive ones",
                        factors.len(),
                        width / 2
                    )));
                }
                Some(crate::model::config::RopeScaling {
                    rope_type: "freq_factors".into(),
                    factor: 1.0,
                    freq_factors: Some(factors.iter().map(|&f| f64::from(f)).collect()),
                    ..Default::default()
                })
            }
        };
        if let Some(kind) = self.get_str(&key("rope.scaling.type"))? {
            if kind != "none" {
                return Err(self.invalid(format!(
                    "{arch}.rope.scaling.type is `{kind}` (RoPE scaling), which is not supported yet"
                )));
            }
        }
        // llama.cpp applies a scaling factor with no type as linear scaling: not computed here.
        for k in ["rope.scaling.factor", "rope.scale_linear"] {
            if let Some(x) = self.get_float(&key(k))?.filter(|x| *x != 0.0 && *x != 1.0) {
                return Err(self.invalid(format!(
                    "{arch}.{k} is {x} (linear RoPE scaling), which is not supported from a GGUF yet"
                )));
            }
        }
        let has = |t: &str| self.tensor(&format!("blk.0.{t}")).is_some();
        let attention_bias = match arch {
            // Qwen2's q/k/v biases are its architecture's; Qwen3 has them all or none.
            "qwen3" => has("attn_output.bias"),
            "qwen2" => false,
            _ if ["attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias", "ffn_up.bias"]
                .iter()
                .any(|t| has(t)) =>
            {
                return Err(self.invalid(
                    "its llama blocks have bias tensors, which this model code does not read from a GGUF (llama.cpp's converter does not permute them with Q and K)"
                        .into(),
                ))
            }
            _ => false,
        };
        if arch != "qwen3" && (has("attn_q_norm.weight") || has("attn_k_norm.weight")) {
            return Err(self.invalid(format!(
                "it has q/k norm tensors, which {arch} models do not have"
            )));
        }
        let sliding = self.get_int(&key("attention.sliding_window"))?;
        if let Some(w) = sliding.filter(|w| *w > 0) {
            return Err(self.invalid(format!(
                "{arch}.attention.sliding_window is {w}: a sliding window from a GGUF is not supported yet"
            )));
        }
        let get = |k: &str| self.get_int(&key(k));
        let context = get("context_length")?;
        let eps = self.get_float(&key("attention.layer_norm_rms_epsilon"))?;
        let theta = self.get_float(&key("rope.freq_base"))?;
        Ok(LlamaConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: required("feed_forward_length")?,
            num_hidden_layers: required("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv),
            max_position_embeddings: context.map_or(2048, |v| v.max(1) as usize),
            rms_norm_eps: eps.unwrap_or(1e-5),
            rope_theta: theta.unwrap_or(10_000.0),
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            rope_scaling,
            sliding_window: None,
            model_type: (arch != "llama").then(|| arch.to_string()),
            // Qwen3's config defaults head_dim to 128: an export must say it.
            head_dim: head_dim.or((arch == "qwen3").then_some(width)),
            attention_bias,
            mlp_bias: false,
            source: None,
        })
    }
}

/// The `general.architecture`s whose GGUFs load: Llama's, and Qwen2's and Qwen3's (Hugging Face
/// names; Q and K are not permuted by llama.cpp's converter for Qwen).
pub const GGUF_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3"];

/// The Hugging Face name of a llama.cpp tensor name, or None for one the model does not use.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match name {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.bias" => "self_attn.o_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Row `r` of a head-permuted matrix and the row it comes from: llama.cpp's convert script
/// reshapes (n_head, 2, head_dim/2, in) and swaps axes 1 and 2, so row (h, b, a) of the
/// permuted matrix is row (h, a, b) of the original.
fn permuted_source_row(r: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (h, within) = (r / head_dim, r % head_dim);
    let (b, a) = (within / 2, within % 2);
    h * head_dim + a * half + b
}

fn check_heads(rows: usize, n_head: usize) -> Option<usize> {
    (n_head > 0 && rows.is_multiple_of(n_head) && (rows / n_head).is_multiple_of(2))
        .then_some(rows / n_head)
}

/// llama.cpp's permutation of a Q or K projection's rows (`convert_hf_to_gguf.py`'s `permute`):
/// for rotary embeddings that pair adjacent elements instead of halves. `w` is (rows, cols)
/// row-major; None when rows is not a multiple of 2 * n_head.
pub fn permute_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    let head_dim = check_heads(rows, n_head)?;
    if w.len() != rows * cols {
        return None;
    }
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        let src = permuted_source_row(r, head_dim);
        out[r * cols..(r + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    Some(out)
}

/// The inverse of [`permute_qk`]: back to Hugging Face's row order (rotary halves).
pub fn unpermute_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    let head_dim = check_heads(rows, n_head)?;
    if w.len() != rows * cols {
        return None;
    }
    let mut out = vec![0.0; w.len()];
    for r in 0..rows {
        let dst = permuted_source_row(r, head_dim);
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[r * cols..(r + 1) * cols]);
    }
    Some(out)
}

/// A dequantized tensor: row-major shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTensor {
    /// Row-major (PyTorch) shape.
    pub shape: Vec<i64>,
    /// The values.
    pub values: Vec<f32>,
}

/// The tensors of a Llama GGUF under Hugging Face names, dequantized, with Q and K rows back in
/// Hugging Face's order. Tensors the model does not use are skipped.
pub fn hf_tensors(
    file: &GgufFile,
    cfg: &LlamaConfig,
) -> Result<BTreeMap<String, DenseTensor>, GgufError> {
    let mut out = BTreeMap::new();
    for t in &file.tensors {
        let Some(name) = hf_name(&t.name) else {
            continue;
        };
        let shape = t.torch_shape();
        let mut values = file.tensor_f32(t)?;
        // llama.cpp's converter permutes Llama's Q and K rows only.
        let heads = if cfg.model_type.is_some() {
            None
        } else if name.ends_with("q_proj.weight") {
            Some(cfg.num_attention_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(cfg.kv_heads())
        } else {
            None
        };
        if let Some(n_head) = heads {
            let (rows, cols) = match shape.as_slice() {
                [r, c] => (*r as usize, *c as usize),
                _ => (0, 0),
            };
            values = unpermute_qk(&values, rows, cols, n_head).ok_or_else(|| GgufError::Shape {
                path: file.path.clone(),
                tensor: t.name.clone(),
                msg: format!("shape {shape:?} cannot be split into {n_head} heads of even width"),
            })?;
        }
        out.insert(name, DenseTensor { shape, values });
    }
    Ok(out)
}

/// Load a Llama GGUF as a model with Hugging Face names: configuration from the metadata,
/// weights dequantized to f32. Adapters, if any, start fresh.
#[cfg(feature = "torch")]
pub fn load_llama(
    file: &GgufFile,
    opts: &super::llama::BuildOptions,
    device: tch::Device,
) -> Result<super::llama::Llama, super::ModelError> {
    let cfg = file.llama_config()?;
    let mut tensors = std::collections::HashMap::new();
    for (name, dense) in hf_tensors(file, &cfg)? {
        let t = tch::Tensor::f_from_slice(&dense.values)?.f_reshape(&dense.shape)?;
        tensors.insert(name, t);
    }
    let model = super::llama::Llama::new_for_loading(&cfg, opts, device)?;
    model.load_named(&tensors, true, &file.path.display().to_string())?;
    Ok(model)
}

/// Writes small GGUF files for tests.
#[cfg(test)]
pub(crate) mod writer {
    use super::*;

    /// A GGUF under construction: metadata and tensors (raw bytes of their type).
    #[derive(Default)]
    pub(crate) struct GgufWriter {
        pub kv: Vec<(String, GgufValue)>,
        pub tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
        pub version: u32,
    }

    fn value_type(v: &GgufValue) -> u32 {
        match v {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
        match v {
            GgufValue::U8(x) => out.push(*x),
            GgufValue::I8(x) => out.push(*x as u8),
            GgufValue::U16(x) => out.extend(x.to_le_bytes()),
            GgufValue::I16(x) => out.extend(x.to_le_bytes()),
            GgufValue::U32(x) => out.extend(x.to_le_bytes()),
            GgufValue::I32(x) => out.extend(x.to_le_bytes()),
            GgufValue::F32(x) => out.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::String(s) => put_str(out, s),
            GgufValue::Array(items) => {
                let ty = items.first().map_or(0, value_type);
                out.extend(ty.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    put_value(out, i);
                }
            }
            GgufValue::U64(x) => out.extend(x.to_le_bytes()),
            GgufValue::I64(x) => out.extend(x.to_le_bytes()),
            GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    impl GgufWriter {
        pub fn new() -> GgufWriter {
            GgufWriter {
                version: 3,
                ..Default::default()
            }
        }

        pub fn kv(&mut self, key: &str, v: GgufValue) -> &mut Self {
            self.kv.push((key.into(), v));
            self
        }

        /// An F32 tensor of torch shape `shape` (row-major values).
        pub fn f32_tensor(&mut self, name: &str, shape: &[i64], values: &[f32]) -> &mut Self {
            let dims = shape.iter().rev().map(|&d| d as u64).collect();
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.tensors.push((name.into(), dims, GgmlType::F32, bytes));
            self
        }

        pub fn bytes(&self) -> Vec<u8> {
            let align = DEFAULT_ALIGNMENT as usize;
            let mut out = Vec::new();
            out.extend(MAGIC);
            out.extend(self.version.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.kv.len() as u64).to_le_bytes());
            for (k, v) in &self.kv {
                put_str(&mut out, k);
                out.extend(value_type(v).to_le_bytes());
                put_value(&mut out, v);
            }
            let mut offset = 0usize;
            let mut offsets = Vec::new();
            for (name, dims, ty, data) in &self.tensors {
                put_str(&mut out, name);
                out.extend((dims.len() as u32).to_le_bytes());
                for d in dims {
                    out.extend(d.to_le_bytes());
                }
                out.extend(ty.0.to_le_bytes());
                out.extend((offset as u64).to_le_bytes());
                offsets.push(offset);
                offset = (offset + data.len()).div_ceil(align) * align;
            }
            out.resize(out.len().div_ceil(align) * align, 0);
            let start = out.len();
            for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
                out.resize(start + off, 0);
                out.extend(data);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::writer::GgufWriter;
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    /// Q4_K by hand: d = 1, dmin = 0.5; sub-block 0 has scale 2 and minimum 1 (low six bits of
    /// bytes 0 and 4), sub-block 5 scale 3 + 16 and minimum 4 + 32 (nibbles of byte 9, top bits
    /// of bytes 1 and 5); element 0 is the low nibble 7 of qs[0], element 32 (sub-block 1) its
    /// high nibble 9, element 160 + 3 (sub-block 5) the high nibble of qs[64 + 3].
    #[test]
    fn q4_k_block_by_hand() {
        let mut b = vec![0u8; 144];
        b[..2].copy_from_slice(&h(1.0));
        b[2..4].copy_from_slice(&h(0.5));
        let sc = &mut b[4..16];
        sc[0] = 2;
        sc[4] = 1;
        sc[1] = 1 << 6; // sub-block 5's scale, bit 4
        sc[5] = 2 << 6; // sub-block 5's minimum, bit 5
        sc[9] = 3 | (4 << 4);
        b[16] = 7 | (9 << 4);
        b[16 + 64 + 3] = 0x50;
        let v = dequantize(GgmlType::Q4_K, &b).unwrap();
        assert_eq!(v.len(), 256);
        assert_eq!(v[0], 2.0 * 7.0 - 0.5);
        // Sub-block 1: scale and minimum 0.
        assert_eq!(v[32], 0.0);
        assert_eq!(v[160 + 3], 19.0 * 5.0 - 0.5 * 36.0);
        assert_eq!(v[160 + 4], -0.5 * 36.0);
    }

    /// Each quantization against the gguf Python package's dequantization of the same blocks
    /// (random K-quant super-blocks; blocks of 32 it quantized; scripts/make-parity-fixtures).
    #[test]
    fn quantized_blocks_match_the_gguf_package() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gguf-quants.json"
        );
        let fixture: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for (name, ty) in [
            ("Q2_K", GgmlType::Q2_K),
            ("Q3_K", GgmlType::Q3_K),
            ("Q4_K", GgmlType::Q4_K),
            ("Q5_K", GgmlType::Q5_K),
            ("Q6_K", GgmlType::Q6_K),
            ("Q4_0", GgmlType::Q4_0),
            ("Q4_1", GgmlType::Q4_1),
            ("Q5_0", GgmlType::Q5_0),
            ("Q5_1", GgmlType::Q5_1),
            ("Q8_0", GgmlType::Q8_0),
        ] {
            assert_eq!(ty.name(), name);
            assert!(ty.is_supported(), "{name}");
            let hex = fixture[name]["bytes"].as_str().unwrap();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            let want: Vec<f64> = fixture[name]["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = dequantize(ty, &bytes).unwrap();
            assert_eq!(got.len(), want.len(), "{name}");
            assert_eq!(
                Some(bytes.len() as u64),
                ty.byte_size(got.len() as u64),
                "{name}"
            );
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            assert!(scale > 0.01, "{name}: a fixture of real values");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() <= 1e-6 * scale,
                    "{name}[{i}]: {g} against the gguf package's {w}"
                );
            }
        }
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &b).unwrap();
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], -8.0);
        assert_eq!(v[16], 0.0);
        assert_eq!(v[31], 7.5);
    }

    #[test]
    fn q4_0_block_low_nibbles_first() {
        let mut b = h(2.0).to_vec();
        // Byte j: low nibble j (element j), high nibble 15 - j (element j + 16).
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let v = dequantize(GgmlType::Q4_0, &b).unwrap();
        assert_eq!(v.len(), 32);
        for j in 0..16 {
            assert_eq!(v[j], (j as f32 - 8.0) * 2.0, "element {j}");
            assert_eq!(
                v[j + 16],
                (15.0 - j as f32 - 8.0) * 2.0,
                "element {}",
                j + 16
            );
        }
        assert_eq!(v[0], -16.0);
        assert_eq!(v[16], 14.0);
    }

    #[test]
    fn q4_1_block_with_minimum() {
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend([0x30u8; 16]); // low nibble 0, high nibble 3
        let v = dequantize(GgmlType::Q4_1, &b).unwrap();
        assert_eq!(v.len(), 32);
        assert!(v[..16].iter().all(|&x| x == -1.0));
        assert!(v[16..].iter().all(|&x| x == -0.25));
        // Two blocks decode independently.
        let mut two = b.clone();
        two.extend(h(1.0));
        two.extend(h(0.0));
        two.extend([0xf1u8; 16]);
        let v = dequantize(GgmlType::Q4_1, &two).unwrap();
        assert_eq!(v.len(), 64);
        assert_eq!((v[32], v[48]), (1.0, 15.0));
    }

    #[test]
    fn float_types_and_unsupported() {
        let v = dequantize(GgmlType::F16, &[h(1.5), h(-2.0)].concat()).unwrap();
        assert_eq!(v, vec![1.5, -2.0]);
        let v = dequantize(GgmlType::BF16, &bf16::from_f32(3.0).to_le_bytes()).unwrap();
        assert_eq!(v, vec![3.0]);
        assert!(dequantize(GgmlType(16), &[0; 66]).is_none());
        assert_eq!(GgmlType(16).name(), "IQ2_XXS");
        assert_eq!(GgmlType(12).name(), "Q4_K");
        assert_eq!(GgmlType(12).byte_size(512), Some(288));
    }

    #[test]
    fn qk_permutation_round_trips_and_matches_convert_script() {
        let (rows, cols, heads) = (12, 5, 3);
        let mut rng = crate::rng::Rng::new(1, 0);
        let w: Vec<f32> = rng.normal_vec(rows * cols, 0.0, 1.0);
        let p = permute_qk(&w, rows, cols, heads).unwrap();
        assert_ne!(p, w);
        assert_eq!(unpermute_qk(&p, rows, cols, heads).unwrap(), w);
        // convert_hf_to_gguf: reshape(3, 2, 2, 5).swapaxes(1, 2): permuted rows of head 0 are
        // original rows 0, 2, 1, 3 (pairs of halves interleaved).
        let row = |m: &[f32], r: usize| m[r * cols..(r + 1) * cols].to_vec();
        assert_eq!(row(&p, 0), row(&w, 0));
        assert_eq!(row(&p, 1), row(&w, 2));
        assert_eq!(row(&p, 2), row(&w, 1));
        assert_eq!(row(&p, 5), row(&w, 6));
        assert!(unpermute_qk(&w, rows, cols, 5).is_none());
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
    }

    fn small_file() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", GgufValue::String("llama".into()))
            .kv("llama.embedding_length", GgufValue::U32(8))
            .kv("llama.block_count", GgufValue::U32(1))
            .kv("llama.feed_forward_length", GgufValue::U64(16))
            .kv("llama.attention.head_count", GgufValue::U32(2))
            .kv("llama.attention.head_count_kv", GgufValue::U32(1))
            .kv("llama.rope.freq_base", GgufValue::F32(500.0))
            .kv("llama.context_length", GgufValue::I32(64))
            .kv(
                "tokenizer.ggml.tokens",
                GgufValue::Array(vec![
                    GgufValue::String("a".into()),
                    GgufValue::String("b".into()),
                ]),
            )
            .kv(
                "x.list",
                GgufValue::Array(vec![GgufValue::I16(-3), GgufValue::I16(4)]),
            )
            .kv("x.f64", GgufValue::F64(0.5))
            .kv("x.bool", GgufValue::Bool(true));
        w.f32_tensor("output_norm.weight", &[8], &[1.0; 8]);
        w.f32_tensor("blk.0.attn_k.weight", &[4, 8], &[0.5; 32]);
        w
    }

    /// Llama 3's RoPE scaling as llama.cpp carries it (a rope_freqs tensor: one divisor per
    /// rotary pair) is read; one of the wrong length or not positive is refused, and so is
    /// scaling metadata, never computed as plain RoPE.
    #[test]
    fn rope_scaling_from_gguf() {
        let mut w = small_file();
        w.f32_tensor("rope_freqs.weight", &[2], &[1.0, 4.0]);
        let f = GgufFile::parse(w.bytes(), Path::new("m.gguf")).unwrap();
        let s = f.llama_config().unwrap().rope_scaling.unwrap();
        assert_eq!(s.freq_factors, Some(vec![1.0, 4.0]));
        assert_eq!((s.scale(0, 0.5), s.scale(1, 0.5)), (0.5, 0.125));
        // The planner's reader, which holds only the header, reads rope_freqs too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, w.bytes()).unwrap();
        let s = GgufFile::read_llama_config(&path)
            .unwrap()
            .rope_scaling
            .unwrap();
        assert_eq!(s.freq_factors, Some(vec![1.0, 4.0]));
        let mut w = small_file();
        w.kv("llama.rope.scale_linear", GgufValue::F32(2.0));
        let f = GgufFile::parse(w.bytes(), Path::new("m.gguf")).unwrap();
        let e = f.llama_config().unwrap_err().to_string();
        assert!(e.contains("llama.rope.scale_linear is 2"), "{e}");
        for bad in [&[1.0, 4.0, 2.0][..], &[1.0, 0.0]] {
            let mut w = small_file();
            w.f32_tensor("rope_freqs.weight", &[bad.len() as i64], bad);
            let f = GgufFile::parse(w.bytes(), Path::new("m.gguf")).unwrap();
            let e = f.llama_config().unwrap_err().to_string();
            assert!(e.contains("m.gguf") && e.contains("rope_freqs has"), "{e}");
        }
        let mut w = small_file();
        w.kv(
            "llama.rope.scaling.type",
            GgufValue::String("linear".into()),
        );
        let f = GgufFile::parse(w.bytes(), Path::new("m.gguf")).unwrap();
        let e = f.llama_config().unwrap_err().to_string();
        assert!(e.contains("llama.rope.scaling.type is `linear`"), "{e}");
    }

    #[test]
    fn parses_metadata_tensors_and_config() {
        let w = small_file();
        let f = GgufFile::parse(w.bytes(), Path::new("m.gguf")).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.data_start % 32, 0);
        assert_eq!(
            f.get("x.list"),
            Some(&GgufValue::Array(vec![
                GgufValue::I16(-3),
                GgufValue::I16(4)
            ]))
        );
        assert_eq!(f.get_float("x.f64").unwrap(), Some(0.5));
        assert_eq!(f.get("x.bool").and_then(GgufValue::as_bool), Some(true));
        let k = f.tensor("blk.0.attn_k.weight").unwrap();
        assert_eq!(k.torch_shape(), vec![4, 8]);
        assert_eq!(f.tensor_f32(k).unwrap(), vec![0.5; 32]);
        let cfg = f.llama_config().unwrap();
        assert_eq!(
            (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size),
            (2, 8, 16)
        );
        assert_eq!((cfg.num_attention_heads, cfg.kv_heads()), (2, 1));
        assert_eq!(
            (
                cfg.max_position_embeddings,
                cfg.rope_theta,
                cfg.rms_norm_eps
            ),
            (64, 500.0, 1e-5)
        );
        assert!(cfg.tie_word_embeddings);

        // The planner reads the header only: a file cut inside its tensor data still gives it.
        let dir = tempfile::tempdir().unwrap();
        let bytes = w.bytes();
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() - 8]).unwrap();
        assert_eq!(GgufFile::read_llama_config(&cut).unwrap(), cfg);
        std::fs::write(&cut, &bytes[..100]).unwrap();
        let e = GgufFile::read_llama_config(&cut).unwrap_err().to_string();
        assert!(e.contains("truncated file"), "{e}");
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let p = Path::new("dir/m.gguf");
        let err = |bytes: Vec<u8>| GgufFile::parse(bytes, p).unwrap_err().to_string();
        let good = small_file().bytes();

        let e = err(b"GGML\x03\0\0\0".to_vec());
        assert!(
            e.contains("dir/m.gguf") && e.contains("not a GGUF file"),
            "{e}"
        );
        let mut v1 = good.clone();
        v1[4] = 1;
        let e = err(v1);
        assert!(e.contains("version 1 is not supported"), "{e}");
        let e = err(good[..good.len() - 4].to_vec());
        assert!(
            e.contains("truncated file") && e.contains("blk.0.attn_k.weight"),
            "{e}"
        );
        let e = err(good[..40].to_vec());
        assert!(e.contains("truncated file"), "{e}");

        let mut w = small_file();
        w.tensors[1].2 = GgmlType(9);
        w.tensors[1].1 = vec![32, 1];
        w.tensors[1].3 = vec![0; 36];
        let f = GgufFile::parse(w.bytes(), p).unwrap();
        let e = f
            .tensor_f32(f.tensor("blk.0.attn_k.weight").unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Q8_1") && e.contains("not supported") && e.contains("Q5_1"),
            "named, with the types that are: {e}"
        );

        let mut w = small_file();
        w.kv[0].1 = GgufValue::String("gpt2".into());
        let f = GgufFile::parse(w.bytes(), p).unwrap();
        let e = f.llama_config().unwrap_err().to_string();
        assert!(e.contains("supported: llama, qwen2, qwen3"), "{e}");
    }
}
