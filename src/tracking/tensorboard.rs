//! TensorBoard event files: every run keeps `runs/ID/tb/events.out.tfevents.*`, so that
//! `tensorboard --logdir results/NAME/runs` shows a sweep, one run per folder.
//!
//! The file is a function of the run's metrics.jsonl: written again from it whenever that file
//! is reset (a run's start, a resume that cuts it back to the checkpoint, a `sweep collect`),
//! and appended to with each new line. Scalars are indexed by training tokens (TensorBoard's
//! step), the axis the paper's curves use: `train/loss`, `train/lr`, `train/grad_norm`,
//! `train/tokens_per_s`, `train/comm_ms_per_step`, and `eval/METRIC` on evaluation lines.
//!
//! The format: records of a little-endian u64 length, its masked CRC32C, the bytes of an
//! `Event` protocol buffer, and their masked CRC32C. An Event is `wall_time` (field 1, double),
//! `step` (2, int64) and either `file_version` (3, the first record: "brain.Event:2") or a
//! `summary` (5) of `Value`s, each a `tag` (1, string) and a `simple_value` (2, float).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::results::MetricsLine;

/// The folder of a run's event file, in its run folder.
pub const DIR: &str = "tb";

/// The event file of the run in `run_dir`, if it has one.
pub fn event_file(run_dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run_dir.join(DIR))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    files.pop()
}

/// Write the run's event file again from its metrics.jsonl (none or empty: a file with only
/// its header), replacing what `tb/` held.
pub fn rewrite(run_dir: &Path) -> std::io::Result<()> {
    let dir = run_dir.join(DIR);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let wall = now();
    let name = format!("events.out.tfevents.{}.sweep", wall as u64);
    let mut bytes = record(&file_version_event(wall));
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap_or_default();
    for line in text.lines() {
        // A line cut short by a kill is what metrics.jsonl's readers skip too; a [trainer]
        // command's lines are read as its contract allows.
        let m = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.as_object().and_then(MetricsLine::lenient));
        if let Some(m) = m {
            bytes.extend(record(&scalars_event(&m, wall)));
        }
    }
    crate::util::write_atomic(&dir.join(name), |w| w.write_all(&bytes))
}

/// Append one metrics line's scalars to the run's event file (made first if there is none).
pub fn append(run_dir: &Path, line: &MetricsLine) -> std::io::Result<()> {
    let path = match event_file(run_dir) {
        Some(p) => p,
        None => {
            rewrite(run_dir)?;
            // rewrite read metrics.jsonl, this line included when it is there already.
            return Ok(());
        }
    };
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(&record(&scalars_event(line, now())))
}

/// The scalars of a metrics line, by tag.
pub fn scalars(line: &MetricsLine) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut push = |tag: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            out.push((tag.to_string(), v));
        }
    };
    push("train/loss", line.train_loss);
    push("train/lr", Some(line.lr));
    push("train/grad_norm", line.grad_norm);
    push("train/tokens_per_s", line.tokens_per_s);
    push("train/comm_ms_per_step", line.comm_ms_per_step);
    for (k, v) in &line.eval {
        push(&format!("eval/{k}"), Some(*v));
    }
    out
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn file_version_event(wall: f64) -> Vec<u8> {
    let mut e = Vec::new();
    double_field(&mut e, 1, wall);
    bytes_field(&mut e, 3, b"brain.Event:2");
    e
}

fn scalars_event(line: &MetricsLine, wall: f64) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, v) in scalars(line) {
        let mut value = Vec::new();
        bytes_field(&mut value, 1, tag.as_bytes());
        value.push(2 << 3 | 5); // simple_value: fixed32
        value.extend_from_slice(&(v as f32).to_le_bytes());
        bytes_field(&mut summary, 1, &value);
    }
    let mut e = Vec::new();
    double_field(&mut e, 1, line.time.unwrap_or(wall));
    e.push(2 << 3); // step: varint
    varint(&mut e, line.tokens);
    bytes_field(&mut e, 5, &summary);
    e
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn double_field(out: &mut Vec<u8>, field: u64, v: f64) {
    varint(out, field << 3 | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One record: length, masked CRC of the length, data, masked CRC of the data.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's masked CRC32C.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: event files are small.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnolis() {
        // The check value of CRC-32C, and RFC 3720's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
    }

    #[test]
    fn records_frame_and_check_their_bytes() {
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(
            u32::from_le_bytes(r[15..19].try_into().unwrap()),
            masked_crc(b"abc")
        );
    }

    #[test]
    fn a_line_becomes_its_scalars_at_its_tokens() {
        let mut line: MetricsLine = serde_json::from_str(
            r#"{"step":3,"tokens":384,"lr":0.001,"train_loss":2.5,"target_loss":2.25,"time":1.5}"#,
        )
        .unwrap();
        let s = scalars(&line);
        assert!(s.contains(&("train/loss".into(), 2.5)));
        assert!(s.contains(&("eval/target_loss".into(), 2.25)));
        assert!(!s.iter().any(|(t, _)| t.contains("grad_norm")), "{s:?}");
        line.train_loss = Some(f64::NAN);
        assert!(!scalars(&line).iter().any(|(t, _)| t == "train/loss"));
        let e = scalars_event(&line, 9.0);
        // wall_time is the line's own, step its tokens (384 = varint 0x80 0x03).
        assert_eq!(&e[..9], &[0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f]);
        assert_eq!(&e[9..12], &[0x10, 0x80, 0x03]);
    }
}
