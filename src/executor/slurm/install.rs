//! `sweep submit --install`: put files of this machine (the sweep binary, the libtorch it was
//! built against) into a folder on the cluster, safely when several installers run at once or
//! one is killed half-way.
//!
//! - Every file is uploaded under a name of its own (`NAME.part-UNIQUE`), its sha256 is checked
//!   on the cluster, and only then is it renamed over NAME: a half-written file never has a
//!   final name, and two installers never share a temporary file.
//! - The folder's manifest (`.sweep-manifest`: sha256, size, this machine's mtime and name per
//!   file) is written the same way, last. A file counts as installed when the manifest lists it
//!   with the local size and mtime and the remote file has that size; any other file already
//!   there is hashed on the cluster and kept only when its sha256 matches.
//! - A lock folder (`.install-lock`, holding its owner's `host:pid:token`) makes a second
//!   installer wait for the first and then reuse what it installed. A lock is taken over when
//!   its holder is a dead process of this host, or when neither the lock nor any part file has
//!   changed for [`STALE_S`] seconds. The lock saves work; correctness does not depend on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::quote::{from_home, join, sh_quote};
use super::transport::{Transport, TransportError};

/// Seconds without any sign of progress (the lock touched, a part file growing) after which a
/// lock whose holder cannot be checked is taken as abandoned.
pub const STALE_S: u64 = 60;
/// Seconds between looks at a lock held by another installer.
const WAIT_POLL_S: u64 = 2;
const LOCK: &str = ".install-lock";
const MANIFEST: &str = ".sweep-manifest";
const MANIFEST_HEADER: &str = "# sweep install manifest v1: sha256 size mtime_ns name";

/// Install failures.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// SSH.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A remote command of the install failed.
    #[error("installing into {dir} on the cluster: {what}: {detail}")]
    Remote {
        /// The remote folder.
        dir: String,
        /// The step.
        what: String,
        /// What the cluster said.
        detail: String,
    },
    /// A local file could not be read.
    #[error("reading {path} (to install it on the cluster): {source}")]
    Local {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// One file of this machine to install, under `name` in the remote folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFile {
    /// The name in the remote folder.
    pub name: String,
    /// Where it is here.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time (ns since the epoch): with the size, how a manifest entry is known
    /// to describe this very file without hashing it.
    pub mtime_ns: u128,
    /// The remote file mode.
    pub mode: u32,
}

impl LocalFile {
    /// Describe the file at `path`, to be installed as `name` with `mode`.
    pub fn new(path: &Path, name: &str, mode: u32) -> Result<LocalFile, InstallError> {
        let meta = std::fs::metadata(path).map_err(|source| InstallError::Local {
            path: path.to_path_buf(),
            source,
        })?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(LocalFile {
            name: name.to_string(),
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns,
            mode,
        })
    }

    fn read(&self) -> Result<Vec<u8>, InstallError> {
        std::fs::read(&self.path).map_err(|source| InstallError::Local {
            path: self.path.clone(),
            source,
        })
    }
}

/// What an install did in one folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct InstallReport {
    /// The remote folder.
    pub dir: String,
    /// Files uploaded.
    pub uploaded: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
    /// Files that were already there, complete.
    pub reused: usize,
    /// Whether it waited for another installer.
    pub waited: bool,
}

impl std::fmt::Display for InstallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "installed into {}: {} uploaded ({:.1} MB), {} already there{}",
            self.dir,
            self.uploaded,
            self.uploaded_bytes as f64 / 1e6,
            self.reused,
            if self.waited {
                " (after waiting for another install)"
            } else {
                ""
            }
        )
    }
}

/// One manifest line: a file as it was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ManifestEntry {
    sha256: String,
    size: u64,
    mtime_ns: u128,
}

/// What the folder holds: file sizes and the manifest.
#[derive(Debug, Default, PartialEq, Eq)]
struct Listing {
    sizes: BTreeMap<String, u64>,
    manifest: BTreeMap<String, ManifestEntry>,
}

/// Parse the listing command's output: `F size name` and `M sha size mtime name` lines.
fn parse_listing(text: &str) -> Listing {
    let mut l = Listing::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("F ") {
            if let Some((size, name)) = rest.split_once(' ') {
                if let Ok(size) = size.trim().parse() {
                    l.sizes.insert(name.to_string(), size);
                }
            }
        } else if let Some(rest) = line.strip_prefix("M ") {
            if let Some((name, e)) = parse_manifest_line(rest) {
                l.manifest.insert(name, e);
            }
        }
    }
    l
}

fn parse_manifest_line(line: &str) -> Option<(String, ManifestEntry)> {
    let mut it = line.splitn(4, ' ');
    let sha256 = it.next()?.to_string();
    let size = it.next()?.parse().ok()?;
    let mtime_ns = it.next()?.parse().ok()?;
    let name = it.next()?.to_string();
    (sha256.len() == 64 && !name.is_empty()).then_some((
        name,
        ManifestEntry {
            sha256,
            size,
            mtime_ns,
        },
    ))
}

fn manifest_text(entries: &BTreeMap<String, ManifestEntry>) -> String {
    let mut s = format!("{MANIFEST_HEADER}\n");
    for (name, e) in entries {
        s.push_str(&format!("{} {} {} {name}\n", e.sha256, e.size, e.mtime_ns));
    }
    s
}

/// Whether a manifest entry describes this local file, installed complete.
fn confirmed(f: &LocalFile, l: &Listing) -> Option<ManifestEntry> {
    let e = l.manifest.get(&f.name)?;
    (e.size == f.size && e.mtime_ns == f.mtime_ns && l.sizes.get(&f.name) == Some(&f.size))
        .then(|| e.clone())
}

/// The answer to an attempt to take the lock.
#[derive(Debug, PartialEq, Eq)]
enum LockAnswer {
    Acquired,
    Held {
        owner: String,
        /// Seconds since the lock or a part file last changed (remote clock).
        idle_s: u64,
    },
}

fn parse_lock_answer(text: &str) -> Option<LockAnswer> {
    let mut lines = text.lines();
    match lines.next()? {
        "acquired" => Some(LockAnswer::Acquired),
        "held" => {
            let owner = lines.next().unwrap_or("").trim().to_string();
            let now: u64 = lines.next()?.trim().parse().ok()?;
            let newest: u64 = lines
                .next()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            Some(LockAnswer::Held {
                owner,
                idle_s: now.saturating_sub(newest),
            })
        }
        _ => None,
    }
}

/// This host's name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// Whether a lock owner is certainly gone: a process of this host that no longer exists.
fn owner_is_dead(owner: &str, this_host: &str) -> bool {
    let mut it = owner.split(':');
    let (Some(host), Some(pid)) = (it.next(), it.next().and_then(|p| p.parse::<i32>().ok())) else {
        return false;
    };
    if host != this_host || pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// A token unique to this process and call.
fn unique_token() -> String {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos:x}-{n}", std::process::id())
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An installer for one remote folder.
struct Installer<'a> {
    t: &'a mut dyn Transport,
    dir: String,
    /// `dir` as a shell word (from the remote home when relative).
    dir_q: String,
    owner: String,
}

impl Installer<'_> {
    fn exec(&mut self, what: &str, script: &str) -> Result<String, InstallError> {
        let out = self.t.exec(script)?;
        if out.code != 0 {
            return Err(InstallError::Remote {
                dir: self.dir.clone(),
                what: what.to_string(),
                detail: format!("exit {}: {}", out.code, out.stderr.trim()),
            });
        }
        Ok(out.stdout)
    }

    /// Take the folder's lock, waiting while another live installer holds it; true when it
    /// waited.
    fn lock(&mut self, notify: &mut dyn FnMut(&str)) -> Result<bool, InstallError> {
        let this_host = hostname();
        let acquire = format!(
            "mkdir -p {d} && cd {d} || exit 3\n\
             if mkdir {LOCK} 2>/dev/null; then printf '%s\\n' {o} > {LOCK}/owner; echo acquired; exit 0; fi\n\
             echo held\n\
             head -n 1 {LOCK}/owner 2>/dev/null || echo\n\
             date +%s\n\
             stat -c %Y {LOCK} {LOCK}/owner *.part-* 2>/dev/null | sort -n | tail -n 1\n",
            d = self.dir_q,
            o = sh_quote(&self.owner)
        );
        let mut waited = false;
        loop {
            let out = self.exec("taking the install lock", &acquire)?;
            let answer = parse_lock_answer(&out).ok_or_else(|| InstallError::Remote {
                dir: self.dir.clone(),
                what: "taking the install lock".into(),
                detail: format!("unexpected answer {:?}", out.trim()),
            })?;
            let LockAnswer::Held { owner, idle_s } = answer else {
                return Ok(waited);
            };
            if owner_is_dead(&owner, &this_host) || idle_s > STALE_S {
                notify(&format!(
                    "taking over the install lock of {} on the cluster from {} ({})",
                    self.dir,
                    if owner.is_empty() {
                        "an unknown installer"
                    } else {
                        &owner
                    },
                    if idle_s > STALE_S {
                        format!("no progress for {idle_s} s")
                    } else {
                        "that process is gone".to_string()
                    }
                ));
                let stale = format!("{LOCK}.stale-{}", unique_token());
                self.exec(
                    "taking over a stale install lock",
                    &format!(
                        "cd {d} || exit 3\n\
                         if [ \"$(head -n 1 {LOCK}/owner 2>/dev/null)\" = {seen} ] && mv {LOCK} {stale} 2>/dev/null; then rm -rf {stale}; fi\n\
                         true\n",
                        d = self.dir_q,
                        seen = sh_quote(&owner)
                    ),
                )?;
                continue;
            }
            if !waited {
                notify(&format!(
                    "waiting for another install into {} on the cluster ({owner}) to finish",
                    self.dir
                ));
                waited = true;
            }
            std::thread::sleep(std::time::Duration::from_secs(WAIT_POLL_S));
        }
    }

    /// Give the lock back, when it is still ours.
    fn unlock(&mut self) {
        let _ = self.t.exec(&format!(
            "cd {d} && [ \"$(head -n 1 {LOCK}/owner 2>/dev/null)\" = {o} ] && rm -rf {LOCK}; true",
            d = self.dir_q,
            o = sh_quote(&self.owner)
        ));
    }

    /// Remove what dead installers left (part files), then list sizes and the manifest.
    fn listing(&mut self) -> Result<Listing, InstallError> {
        let out = self.exec(
            "listing what is installed",
            &format!(
                "cd {d} || exit 3\n\
                 rm -f -- *.part-* *.part 2>/dev/null\n\
                 for f in *; do [ -f \"$f\" ] && printf 'F %s %s\\n' \"$(wc -c < \"$f\")\" \"$f\"; done\n\
                 [ -f {MANIFEST} ] && grep -v '^#' {MANIFEST} | sed 's/^/M /'\n\
                 true\n",
                d = self.dir_q
            ),
        )?;
        Ok(parse_listing(&out))
    }

    /// sha256 of remote files (by name).
    fn remote_hashes(&mut self, names: &[&str]) -> Result<BTreeMap<String, String>, InstallError> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let args: Vec<String> = names.iter().map(|n| sh_quote(n)).collect();
        let out = self.exec(
            "hashing installed files",
            &format!(
                "cd {d} && touch {LOCK} && sha256sum -- {}",
                args.join(" "),
                d = self.dir_q
            ),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(h, n)| (n.to_string(), h.to_string()))
            .collect())
    }

    /// Upload `data` as `name`: under a name of its own, checked, then renamed into place.
    fn put(&mut self, name: &str, data: &[u8], sha: &str, mode: u32) -> Result<(), InstallError> {
        let part = format!("{name}.part-{}", unique_token());
        self.t.upload(data, &join(&self.dir, &part), mode as i32)?;
        self.exec(
            &format!("placing {name}"),
            &format!(
                "cd {d} || exit 3\n\
                 touch {LOCK} 2>/dev/null\n\
                 got=$(sha256sum < {p} | cut -c1-64)\n\
                 if [ \"$got\" != {sha} ]; then rm -f {p}; printf '%s: the upload arrived with sha256 %s, not %s\\n' {n} \"$got\" {sha} >&2; exit 4; fi\n\
                 chmod {mode:o} {p} && mv -f {p} {n}\n",
                d = self.dir_q,
                p = sh_quote(&part),
                n = sh_quote(name),
                sha = sh_quote(sha),
            ),
        )
        .map(|_| ())
    }

    fn install(&mut self, files: &[LocalFile]) -> Result<InstallReport, InstallError> {
        let listing = self.listing()?;
        let mut report = InstallReport {
            dir: self.dir.clone(),
            ..Default::default()
        };
        let mut manifest = listing.manifest.clone();
        // Files the manifest does not vouch for: hashed here, and on the cluster when a file of
        // that size is there.
        let mut unconfirmed = Vec::new();
        for f in files {
            match confirmed(f, &listing) {
                Some(_) => report.reused += 1,
                None => unconfirmed.push(f),
            }
        }
        let mut local = Vec::with_capacity(unconfirmed.len());
        for f in &unconfirmed {
            let data = f.read()?;
            let sha = sha256_hex(&data);
            local.push((*f, sha));
        }
        let same_size: Vec<&str> = local
            .iter()
            .filter(|(f, _)| listing.sizes.get(&f.name) == Some(&f.size))
            .map(|(f, _)| f.name.as_str())
            .collect();
        let remote = self.remote_hashes(&same_size)?;
        for (f, sha) in &local {
            if remote.get(&f.name) == Some(sha) {
                report.reused += 1;
            } else {
                // Read again rather than hold every file in memory at once.
                let data = f.read()?;
                if sha256_hex(&data) != *sha {
                    return Err(InstallError::Remote {
                        dir: self.dir.clone(),
                        what: format!("uploading {}", f.name),
                        detail: format!(
                            "{} changed while it was being installed",
                            f.path.display()
                        ),
                    });
                }
                self.put(&f.name, &data, sha, f.mode)?;
                report.uploaded += 1;
                report.uploaded_bytes += f.size;
            }
            manifest.insert(
                f.name.clone(),
                ManifestEntry {
                    sha256: sha.clone(),
                    size: f.size,
                    mtime_ns: f.mtime_ns,
                },
            );
        }
        if manifest != listing.manifest {
            let text = manifest_text(&manifest);
            let sha = sha256_hex(text.as_bytes());
            self.put(MANIFEST, text.as_bytes(), &sha, 0o644)?;
        }
        Ok(report)
    }
}

/// Install `files` into the remote folder `dir` (relative to the remote home unless absolute):
/// under its lock, each file checked by sha256 before it gets its final name. `notify` hears
/// waits and lock take-overs.
pub fn install_files(
    t: &mut dyn Transport,
    dir: &str,
    files: &[LocalFile],
    notify: &mut dyn FnMut(&str),
) -> Result<InstallReport, InstallError> {
    let mut inst = Installer {
        t,
        dir: dir.to_string(),
        dir_q: from_home(dir),
        owner: format!("{}:{}:{}", hostname(), std::process::id(), unique_token()),
    };
    let waited = inst.lock(notify)?;
    let result = inst.install(files);
    inst.unlock();
    result.map(|r| InstallReport { waited, ..r })
}

/// The shared libraries of a libtorch `lib/` folder, to install as they are named.
pub fn libtorch_files(lib: &Path) -> Result<Vec<LocalFile>, InstallError> {
    let err = |source| InstallError::Local {
        path: lib.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for e in std::fs::read_dir(lib).map_err(err)? {
        let e = e.map_err(err)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().map_err(err)?.is_file() && name.contains(".so") {
            files.push(LocalFile::new(&e.path(), &name, 0o644)?);
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Whether a binary links libtorch_cuda (a DT_NEEDED entry of its dynamic section): a CUDA build.
pub fn is_cuda_binary(path: &Path) -> std::io::Result<bool> {
    Ok(needed_libraries(&std::fs::read(path)?)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "{} is not a 64-bit little-endian ELF binary (a Linux sweep)",
                path.display()
            ))
        })?
        .iter()
        .any(|n| n == "libtorch_cuda.so"))
}

/// The DT_NEEDED names of a 64-bit little-endian ELF file, or None for another (or a corrupt)
/// file. Every offset is checked: a corrupt file gives None, never a panic.
fn needed_libraries(elf: &[u8]) -> Option<Vec<String>> {
    let bytes = |o: usize, n: usize| elf.get(o..o.checked_add(n)?);
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes(o, 2)?.try_into().ok()?) as usize);
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes(o, 4)?.try_into().ok()?) as usize);
    let u64_at = |o: usize| usize::try_from(u64::from_le_bytes(bytes(o, 8)?.try_into().ok()?)).ok();
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (shoff, shentsize, shnum) = (u64_at(0x28)?, u16_at(0x3A)?, u16_at(0x3C)?);
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let field = |i: usize, at: usize| section(i)?.checked_add(at);
    const SHT_DYNAMIC: usize = 6;
    const DT_NEEDED: usize = 1;
    let dynamic = (0..shnum).find(|&i| field(i, 4).and_then(u32_at) == Some(SHT_DYNAMIC))?;
    let (off, size) = (
        u64_at(field(dynamic, 0x18)?)?,
        u64_at(field(dynamic, 0x20)?)?,
    );
    let strtab = u64_at(field(u32_at(field(dynamic, 0x28)?)?, 0x18)?)?;
    let mut names = Vec::new();
    for e in (off..off.checked_add(size)?).step_by(16) {
        let (tag, val) = (u64_at(e)?, u64_at(e.checked_add(8)?)?);
        if tag == 0 {
            break;
        }
        if tag == DT_NEEDED {
            let start = strtab.checked_add(val)?;
            let len = elf.get(start..)?.iter().position(|&b| b == 0)?;
            names.push(String::from_utf8_lossy(&elf[start..start + len]).into_owned());
        }
    }
    Some(names)
}

/// Why `--install` cannot set up a cluster whose runs train on GPUs, if it cannot: the binary to
/// install must be a CUDA build, and the libtorch to copy (when the cluster names none of its
/// own) must hold libtorch_cuda and the CUDA libraries it loads (as pytorch.org's libtorch
/// archives do; a torch wheel's lib/ does not: those come in the nvidia wheels).
pub fn gpu_install_problem(
    cluster: &str,
    binary: &Path,
    binary_is_cuda: bool,
    own_libtorch: bool,
    local_lib: Option<&Path>,
) -> Option<String> {
    let head = format!("cluster `{cluster}` trains on GPUs (gpu = true, or a GPU gres)");
    if !binary_is_cuda {
        return Some(format!(
            "{head}, but {} is a CPU build: build one with scripts/build-cuda --release (on Linux, or on the cluster's login node) and name it in the cluster entry as install_binary = \"PATH\" (or set sweep_binary to one on the cluster)",
            binary.display()
        ));
    }
    if own_libtorch {
        return None;
    }
    let fix = "set `libtorch` in the cluster entry to a CUDA libtorch on the cluster (e.g. the torch/ folder of `python3 -m pip install --target DIR torch==2.11.0` run there)";
    let Some(lib) = local_lib else {
        return Some(format!(
            "{head}, but this binary does not know the libtorch it was built against: {fix}"
        ));
    };
    let names: Vec<String> = std::fs::read_dir(lib)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if !names.iter().any(|n| n == "libtorch_cuda.so") {
        return Some(format!(
            "{head}, but --install would copy {}, a CPU-only libtorch: {fix}",
            lib.display()
        ));
    }
    // pytorch.org's archives name them with a hash (libcudart-c3a75b33.so.12); NCCL may be
    // linked into libtorch_cuda itself.
    let missing: Vec<&str> = ["libcudart", "libcublas", "libcudnn"]
        .into_iter()
        .filter(|stem| {
            !names.iter().any(|n| {
                n.strip_prefix(stem)
                    .is_some_and(|rest| rest.starts_with(".so") || rest.starts_with('-'))
            })
        })
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "{head}, but {} has libtorch_cuda.so without the CUDA libraries it loads ({}): a libtorch to build against (like scripts/build-cuda's), not to run: {fix}",
            lib.display(),
            missing.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_cluster_gets_a_cuda_binary_and_a_whole_cuda_libtorch() {
        let d = tempfile::tempdir().unwrap();
        // This test's own executable links no libtorch_cuda (its strings may name it).
        let cpu_bin = std::env::current_exe().unwrap();
        assert!(!is_cuda_binary(&cpu_bin).unwrap());
        let needed = needed_libraries(&std::fs::read(&cpu_bin).unwrap()).unwrap();
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
        // A corrupt header (offsets past the end, or that overflow) is no ELF, not a panic.
        let mut corrupt = std::fs::read(&cpu_bin).unwrap()[..64].to_vec();
        corrupt[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(needed_libraries(&corrupt), None);
        corrupt[0x28..0x30].copy_from_slice(&40u64.to_le_bytes());
        assert_eq!(needed_libraries(&corrupt), None);
        let text = d.path().join("not-elf");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(is_cuda_binary(&text)
            .unwrap_err()
            .to_string()
            .contains("not a 64-bit"));
        // scripts/test builds the CUDA binary (scripts/build-cuda) before the tests.
        let cuda = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cuda/debug/sweep");
        if cuda.exists() {
            assert!(is_cuda_binary(&cuda).unwrap(), "{}", cuda.display());
        } else {
            assert!(
                std::env::var("SWEEP_TESTS_REQUIRE_SETUP").as_deref() != Ok("1"),
                "{} is missing: scripts/build-cuda",
                cuda.display()
            );
        }
        let lib = d.path().join("lib");
        std::fs::create_dir(&lib).unwrap();
        std::fs::write(lib.join("libtorch_cpu.so"), "").unwrap();
        let problem = |cuda: bool, own: bool| {
            gpu_install_problem("g", &cpu_bin, cuda, own, Some(&lib)).unwrap_or_default()
        };
        assert!(problem(false, true).contains("is a CPU build: build one with scripts/build-cuda"));
        assert!(problem(true, true).is_empty(), "the cluster's own libtorch");
        assert!(problem(true, false).contains("a CPU-only libtorch: set `libtorch`"));
        std::fs::write(lib.join("libtorch_cuda.so"), "").unwrap();
        std::fs::write(lib.join("libcudart.so.13"), "").unwrap();
        let p = problem(true, false);
        assert!(p.contains("(libcublas, libcudnn)"), "{p}");
        std::fs::write(lib.join("libcublasLt.so.13"), "").unwrap();
        assert!(
            problem(true, false).contains("(libcublas, libcudnn)"),
            "cublasLt is not cublas"
        );
        // Hashed names, as pytorch.org's libtorch archives have them.
        for l in ["libcublas-5f2b3e11.so.13", "libcudnn.so.9"] {
            std::fs::write(lib.join(l), "").unwrap();
        }
        assert!(
            problem(true, false).is_empty(),
            "a whole CUDA libtorch is copied"
        );
    }

    fn file(name: &str, size: u64, mtime_ns: u128) -> LocalFile {
        LocalFile {
            name: name.into(),
            path: PathBuf::from(name),
            size,
            mtime_ns,
            mode: 0o644,
        }
    }

    const SHA: &str = "ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01ab01";

    #[test]
    fn a_listing_reads_sizes_and_the_manifest() {
        let l = parse_listing(&format!(
            "F 10 libc10.so\nF 3 lib with space.so\nM {SHA} 10 77 libc10.so\nM short 1 2 x\ngarbage\n"
        ));
        assert_eq!(l.sizes["libc10.so"], 10);
        assert_eq!(l.sizes["lib with space.so"], 3);
        assert_eq!(l.manifest.len(), 1, "a malformed manifest line is ignored");
        assert_eq!(l.manifest["libc10.so"].mtime_ns, 77);
    }

    #[test]
    fn the_manifest_round_trips() {
        let mut m = BTreeMap::new();
        m.insert(
            "a b.so".to_string(),
            ManifestEntry {
                sha256: SHA.into(),
                size: 5,
                mtime_ns: 1_700_000_000_123_456_789,
            },
        );
        let text = manifest_text(&m);
        let listed: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("M {l}\n"))
            .collect();
        assert_eq!(parse_listing(&listed).manifest, m);
    }

    #[test]
    fn a_file_is_reused_only_when_manifest_and_remote_size_agree_with_it() {
        let l = parse_listing(&format!(
            "F 10 a.so\nF 9 b.so\nM {SHA} 10 77 a.so\nM {SHA} 10 77 b.so\n"
        ));
        assert!(confirmed(&file("a.so", 10, 77), &l).is_some());
        assert!(
            confirmed(&file("a.so", 10, 78), &l).is_none(),
            "another mtime: hash it"
        );
        assert!(
            confirmed(&file("a.so", 11, 77), &l).is_none(),
            "another size"
        );
        assert!(
            confirmed(&file("b.so", 10, 77), &l).is_none(),
            "the remote file is shorter than its manifest entry"
        );
        assert!(confirmed(&file("c.so", 10, 77), &l).is_none(), "not listed");
    }

    #[test]
    fn lock_answers_parse() {
        assert_eq!(parse_lock_answer("acquired\n"), Some(LockAnswer::Acquired));
        assert_eq!(
            parse_lock_answer("held\nh:12:t\n1000\n990\n"),
            Some(LockAnswer::Held {
                owner: "h:12:t".into(),
                idle_s: 10
            })
        );
        // The holder died between mkdir and writing its name, and nothing has a time.
        assert_eq!(
            parse_lock_answer("held\n\n1000\n"),
            Some(LockAnswer::Held {
                owner: String::new(),
                idle_s: 1000
            })
        );
        assert_eq!(parse_lock_answer("bash: mkdir: not found\n"), None);
    }

    #[test]
    fn a_dead_owner_is_known_only_on_its_own_host() {
        let me = hostname();
        let alive = format!("{me}:{}:t", std::process::id());
        assert!(!owner_is_dead(&alive, &me));
        // A pid that cannot exist (above the kernel's pid_max).
        let dead = format!("{me}:2147483000:t");
        assert!(owner_is_dead(&dead, &me));
        assert!(
            !owner_is_dead("elsewhere:2147483000:t", &me),
            "another host: cannot tell"
        );
        assert!(!owner_is_dead("", &me));
    }

    #[test]
    fn tokens_are_unique_within_a_process() {
        assert_ne!(unique_token(), unique_token());
    }
}
