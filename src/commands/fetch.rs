//! `sweep fetch URL`: download a model or dataset file into the cache, resumable and checked;
//! a progress line on a terminal, one result line (or JSON) on stdout.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cli::{FetchArgs, GlobalArgs};
use crate::commands::UsageError;
use crate::fetch::{self, FetchError, FetchEvent, FetchRequest, Fetched};

/// The least time between two redraws of the progress line.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// `sweep fetch`.
pub fn run(g: &GlobalArgs, args: &FetchArgs) -> anyhow::Result<()> {
    let req = resolve(args)?;
    let mut bar = (!g.quiet && !g.json && std::io::stderr().is_terminal())
        .then(|| ProgressLine::new(&req.dest));
    let result = fetch::fetch(&req, &mut |e| {
        if let Some(b) = bar.as_mut() {
            b.event(e);
        }
    });
    if let Some(b) = bar.as_mut() {
        b.clear();
    }
    let got = result?;
    if g.json {
        println!("{}", serde_json::to_string(&got)?);
    } else if !g.quiet {
        println!("{}", summary(&got));
    }
    Ok(())
}

/// Resolve the arguments and the environment (`HF_TOKEN`, `HF_ENDPOINT`, `SWEEP_CACHE`) into
/// one download; a bad URL or checksum is a usage error.
fn resolve(args: &FetchArgs) -> anyhow::Result<FetchRequest> {
    let usage = |e: FetchError| UsageError(e.to_string());
    let url = fetch::parse_url(&args.url).map_err(usage)?;
    let sha256 = args
        .sha256
        .as_deref()
        .map(fetch::parse_sha256)
        .transpose()
        .map_err(usage)?;
    let dest = match &args.out {
        Some(out) if !out.is_dir() && !out.as_os_str().to_string_lossy().ends_with('/') => {
            out.clone()
        }
        Some(dir) => dir.join(fetch::file_name(&url).map_err(usage)?),
        None => {
            let cache = args
                .cache
                .clone()
                .unwrap_or_else(|| fetch::default_cache_dir(std::env::var_os("SWEEP_CACHE")));
            cache.join(fetch::file_name(&url).map_err(usage)?)
        }
    };
    let endpoint = std::env::var("HF_ENDPOINT").ok();
    let hf = fetch::is_hf_url(&url, endpoint.as_deref());
    let bearer = std::env::var("HF_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| hf && !t.is_empty());
    Ok(FetchRequest {
        url,
        dest,
        sha256,
        bearer,
        hf,
    })
}

/// The line printed when the file is in place.
fn summary(f: &Fetched) -> String {
    let size = human_bytes(f.bytes);
    let path = f.path.display();
    match (&f.sha256, f.downloaded) {
        (Some(sum), true) if f.resumed_from > 0 => format!(
            "fetched {path} ({size}, resumed at {}, sha256 {sum})",
            human_bytes(f.resumed_from)
        ),
        (Some(sum), true) => format!("fetched {path} ({size}, sha256 {sum})"),
        (Some(sum), false) => format!("{path} is already here ({size}, sha256 {sum} verified)"),
        (None, _) => format!("{path} is already here ({size}; not verified: no --sha256)"),
    }
}

/// A size in binary units: `512 B`, `1.5 KiB`, `12.3 GiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// The text of the progress line: name, bytes, percent and speed (of this transfer only).
fn progress_text(
    name: &str,
    done: u64,
    total: Option<u64>,
    resumed_from: u64,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64();
    let speed = if secs > 0.0 {
        format!(
            "  {}/s",
            human_bytes(((done.saturating_sub(resumed_from)) as f64 / secs) as u64)
        )
    } else {
        String::new()
    };
    match total {
        Some(t) if t > 0 => format!(
            "{name}  {} / {}  {:.0}%{speed}",
            human_bytes(done),
            human_bytes(t),
            100.0 * done as f64 / t as f64
        ),
        _ => format!("{name}  {}{speed}", human_bytes(done)),
    }
}

/// A progress line redrawn in place on stderr, at most ten times a second.
struct ProgressLine {
    name: String,
    start: Instant,
    last: Option<Instant>,
    drawn: bool,
}

impl ProgressLine {
    fn new(dest: &std::path::Path) -> ProgressLine {
        ProgressLine {
            name: dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| PathBuf::from(dest).display().to_string()),
            start: Instant::now(),
            last: None,
            drawn: false,
        }
    }

    fn event(&mut self, e: &FetchEvent) {
        let text = match e {
            FetchEvent::WaitingForOther => {
                format!(
                    "{}  waiting for another sweep fetch of this file",
                    self.name
                )
            }
            FetchEvent::Verifying { bytes } => {
                format!("{}  checking sha256 of {}", self.name, human_bytes(*bytes))
            }
            FetchEvent::ExistingMismatch { .. } => {
                format!("{}  differs from --sha256: downloading again", self.name)
            }
            FetchEvent::Resuming { from } => {
                format!("{}  resuming at {}", self.name, human_bytes(*from))
            }
            FetchEvent::Restarting => format!("{}  the file changed: starting over", self.name),
            FetchEvent::Progress {
                done,
                total,
                resumed_from,
            } => {
                let now = Instant::now();
                let finished = total.is_some_and(|t| *done >= t);
                if self.last.is_some_and(|l| now - l < REDRAW_EVERY) && !finished {
                    return;
                }
                self.last = Some(now);
                progress_text(&self.name, *done, *total, *resumed_from, now - self.start)
            }
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{text}\x1b[K");
        let _ = err.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }

    #[test]
    fn progress_shows_percent_and_speed() {
        let t = progress_text("m.bin", 512 << 20, Some(1 << 30), 0, Duration::from_secs(2));
        assert_eq!(t, "m.bin  512.0 MiB / 1.0 GiB  50%  256.0 MiB/s");
        let t = progress_text("m.bin", 2048, None, 1024, Duration::from_secs(1));
        assert_eq!(t, "m.bin  2.0 KiB  1.0 KiB/s");
        assert_eq!(progress_text("m", 0, Some(0), 0, Duration::ZERO), "m  0 B");
    }

    #[test]
    fn summaries_say_what_happened() {
        let f = Fetched {
            path: PathBuf::from("c/m.bin"),
            bytes: 2048,
            sha256: Some("ab".into()),
            downloaded: true,
            resumed_from: 1024,
        };
        assert_eq!(
            summary(&f),
            "fetched c/m.bin (2.0 KiB, resumed at 1.0 KiB, sha256 ab)"
        );
        let f = Fetched {
            sha256: None,
            downloaded: false,
            resumed_from: 0,
            ..f
        };
        assert!(summary(&f).contains("not verified"));
    }
}
