//! Small helpers shared by commands: atomic file and folder writes, and reads that refuse
//! special files.

use std::io::Write;
use std::path::Path;

/// Write a file atomically: a temporary file in the same folder, synced, then renamed over the
/// target, so that a reader (or a crash) sees the old content or the new, never a mix.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Unique per process and call, so that two threads writing one file do not share a temp.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    let result = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write a folder whole or not at all: `fill` writes into a temporary sibling folder, which then
/// replaces `dir` (an existing `dir` is removed first). On an error the temporary folder is
/// removed and `dir` is left as it was. `io_err` turns the folder operations' errors into E.
pub fn write_dir_atomic<E>(
    dir: &Path,
    io_err: impl Fn(std::io::Error) -> E,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(&io_err)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let tmp = parent.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(&io_err)?;
    let result = fill(&tmp).and_then(|()| {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(&io_err)?;
        }
        std::fs::rename(&tmp, dir).map_err(&io_err)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Make a child told to stop (SIGTERM, which the trainer answers with a checkpoint) when this
/// process dies, however it dies (kill -9 included): no orphan trains on. Linux only.
pub fn stop_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, getppid, kill).
    unsafe {
        cmd.pre_exec(move || {
            #[cfg(target_os = "linux")]
            {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
            }
            // The parent died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
            Ok(())
        });
    }
}

/// Read a whole regular file. Anything else (a FIFO, a device, a socket) is refused with an
/// error naming what it is, since reading one can block forever or never end.
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut open_regular_file(path)?, &mut buf)?;
    Ok(buf)
}

/// Open a regular file for reading; anything else is refused as [`read_regular_file`] does.
pub fn open_regular_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let t = meta.file_type();
        let what = if t.is_dir() {
            "a folder"
        } else if t.is_fifo() {
            "a FIFO (named pipe)"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {what}, not a regular file: give a file"),
        ));
    }
    std::fs::File::open(path)
}

/// [`read_regular_file`] as UTF-8 text.
pub fn read_regular_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_regular_file(path)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))
}

/// Drop the pages of `map` around bytes `lo..hi` from this process's memory: they stay in the
/// kernel's page cache and fault back in from it when read again, so that what was read through
/// a map does not pile up in the process's resident memory. Whole 2 MiB-aligned spans go: a
/// page fault maps the cached pages around the faulting one too (fault-around, large folios),
/// so dropping only the bytes read would leave their neighbours mapped.
#[cfg(feature = "torch")]
pub fn release_pages(map: &memmap2::Mmap, lo: usize, hi: usize) {
    const SPAN: usize = 2 << 20;
    let lo = lo / SPAN * SPAN;
    let hi = hi.div_ceil(SPAN).saturating_mul(SPAN).min(map.len());
    if hi > lo {
        // SAFETY: a read-only shared mapping: dropped pages are read back from the file
        // unchanged (MADV_DONTNEED loses nothing of a mapping that is never written).
        let _ =
            unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
    }
}

/// Hand the heap's free memory back to the kernel (glibc's malloc_trim): libtorch frees a
/// step's activations into malloc's heap, where, in blocks below the mmap threshold (which glibc
/// raises up to 32 MiB as large blocks are freed), they stay resident and fragment. The trainer
/// trims after every micro-batch on the CPU: LoRA at 135M with checkpointing peaks at 1.2 GB
/// instead of 1.5, but the next step faults the pages in again, 9-17% of the time of a small
/// run (scripts/bench-train, perf). SWEEP_TRIM_HEAP=0 trades the memory for the speed. A
/// no-op elsewhere than glibc.
pub fn trim_heap() {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*ON.get_or_init(|| std::env::var("SWEEP_TRIM_HEAP").as_deref() != Ok("0")) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether a file a test needs from scripts/setup-data is there. Absent, the test skips with a
/// message, except under SWEEP_TESTS_REQUIRE_SETUP=1 (set by scripts/test), where it fails.
#[cfg(test)]
pub fn setup_file_present(path: &Path) -> bool {
    setup_present(
        path.exists(),
        &format!("{} is absent", path.display()),
        "scripts/setup-data",
    )
}

/// Whether something a test needs from the set-up is here (`found`); absent (`absent` says
/// what is missing, `how` what provides it), the test skips with a message, except under
/// SWEEP_TESTS_REQUIRE_SETUP=1 (set by scripts/test), where it fails.
#[cfg(test)]
pub fn setup_present(found: bool, absent: &str, how: &str) -> bool {
    if found {
        return true;
    }
    assert!(
        std::env::var("SWEEP_TESTS_REQUIRE_SETUP").as_deref() != Ok("1"),
        "{absent}, and SWEEP_TESTS_REQUIRE_SETUP=1 (scripts/test) says it must be there: run {how}"
    );
    println!("skipping: {absent} ({how})");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_are_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path we own.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular_file(&fifo).unwrap_err().to_string();
        assert!(e.contains("a FIFO"), "{e}");
        let e = read_regular_file(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a device"), "{e}");
        std::fs::write(dir.path().join("f"), "x").unwrap();
        assert_eq!(read_regular_text(&dir.path().join("f")).unwrap(), "x");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.txt");
        write_atomic(&p, |w| w.write_all(b"one")).unwrap();
        write_atomic(&p, |w| w.write_all(b"two")).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let failed = write_atomic(&p, |_| Err(std::io::Error::other("boom")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
    }
}
