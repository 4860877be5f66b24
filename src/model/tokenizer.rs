//! The byte-level tokenizer of the builtin models: ids 0..=255 are bytes, then BOS, EOS, PAD.

use super::config::BYTE_VOCAB;

/// Beginning of a document.
pub const BOS: i64 = 256;
/// End of a document.
pub const EOS: i64 = 257;
/// Padding (never a target).
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

#[cfg(test)]
mod tests {
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
    }
}
