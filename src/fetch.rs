//! Download one model or dataset file into a cache: resume with `Range` + `If-Range` (by length
//! where the server has no validator and a SHA-256 checks the result), a SHA-256 check, and Hugging Face resolve URLs as plain URLs. The downloader never prints: it reports
//! [`FetchEvent`]s to its caller, which decides what a terminal sees.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, AUTHORIZATION, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE,
};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long to wait for a connection, and for each read, before giving up.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);
/// Hosts that receive `HF_TOKEN` (with their subdomains), besides `HF_ENDPOINT`'s host.
const HF_HOSTS: [&str; 2] = ["huggingface.co", "hf.co"];

/// Why a download failed. Each renders as one line that names the URL, host or file involved.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL cannot be downloaded from (not http(s), no file name, ...).
    #[error("{url}: {reason}")]
    BadUrl {
        /// What the user gave.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--sha256` is not 64 hexadecimal digits.
    #[error("--sha256 must be 64 hexadecimal digits, got {0:?}")]
    BadSha256(String),
    /// No connection could be made (refused, unknown host, timeout).
    #[error("cannot reach {host_port} ({reason}) for {url}")]
    Unreachable {
        /// `host:port` that did not answer.
        host_port: String,
        /// Why, as the operating system said it.
        reason: String,
        /// The URL.
        url: String,
    },
    /// The server answered with an error status.
    #[error("HTTP {status} for {url}{hint}")]
    Http {
        /// The status code.
        status: u16,
        /// The URL the user gave.
        url: String,
        /// What to do about it, starting with " (" or empty.
        hint: String,
    },
    /// The transfer broke off; the bytes so far are kept for a resume.
    #[error("download of {url} broke off after {got} of {expected} bytes ({reason}); {next}")]
    Interrupted {
        /// The URL.
        url: String,
        /// Bytes in the partial file.
        got: u64,
        /// Bytes expected, or "?" when the server did not say.
        expected: String,
        /// Why, as the network layer said it.
        reason: String,
        /// What running the same command again will do: resume, or start over and why.
        next: String,
    },
    /// Any other failure of the HTTP exchange.
    #[error("downloading {url}: {reason}")]
    Network {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The HTTP client could not be built (no TLS roots, ...).
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// The downloaded bytes do not have the expected SHA-256; nothing was kept.
    #[error(
        "checksum mismatch for {url}: expected sha256 {expected}, got {got}; nothing was kept \
         at {}",
        path.display()
    )]
    ChecksumMismatch {
        /// The URL.
        url: String,
        /// What `--sha256` said.
        expected: String,
        /// What the bytes hash to.
        got: String,
        /// The final path, left empty.
        path: PathBuf,
    },
    /// A file could not be written (disk full, permissions, ...).
    #[error("writing {}: {io}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        io: std::io::Error,
    },
    /// A file could not be read.
    #[error("reading {}: {io}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        io: std::io::Error,
    },
}

/// One download, resolved: what to get, where to put it, how to check it.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    /// The URL (redirects are followed).
    pub url: Url,
    /// The final path of the file; the partial download lies beside it.
    pub dest: PathBuf,
    /// Expected SHA-256, 64 lowercase hex digits.
    pub sha256: Option<String>,
    /// Sent as `Authorization: Bearer ...` (to the first host only: redirects to other hosts
    /// drop it).
    pub bearer: Option<String>,
    /// The URL is the Hugging Face Hub's (or its mirror's): refusals hint at `HF_TOKEN`.
    pub hf: bool,
}

/// What happened, for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// Another process is downloading the same file: waiting for it to finish.
    WaitingForOther,
    /// An existing file is being hashed to compare with `--sha256`.
    Verifying {
        /// Its size.
        bytes: u64,
    },
    /// An existing file does not match `--sha256`: it is downloaded again.
    ExistingMismatch {
        /// Its SHA-256.
        got: String,
    },
    /// The request asks for the rest of a partial download.
    Resuming {
        /// Bytes already there.
        from: u64,
    },
    /// The server sent the whole file (it changed, or ignores ranges): starting over.
    Restarting,
    /// Bytes are arriving.
    Progress {
        /// Bytes in the file so far (including resumed ones).
        done: u64,
        /// The file's size, when the server said.
        total: Option<u64>,
        /// Bytes that were already there when this transfer began.
        resumed_from: u64,
    },
}

/// The file, once it is in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fetched {
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, when it was computed (always after a download; for an existing file only
    /// with `--sha256`).
    pub sha256: Option<String>,
    /// False when the file was already there and nothing was requested.
    pub downloaded: bool,
    /// Bytes reused from a partial download.
    pub resumed_from: u64,
}

/// The sidecar beside `NAME.part`: what the partial bytes are, so a rerun can ask for the rest
/// of the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSidecar {
    /// The URL the user gave.
    pub url: String,
    /// The server's `ETag` for the file.
    pub etag: Option<String>,
    /// The server's `Last-Modified` for the file.
    pub last_modified: Option<String>,
    /// The file's full size, when known.
    pub total: Option<u64>,
}

/// Check a URL: http or https, with a file name as its last path segment.
pub fn parse_url(url: &str) -> Result<Url, FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = Url::parse(url).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// URLs can be fetched"));
    }
    if parsed.host_str().is_none() {
        return Err(bad("the URL has no host"));
    }
    Ok(parsed)
}

/// The file name a URL downloads to: its last path segment, percent-decoded (for a Hugging
/// Face `.../resolve/REV/dir/FILE` URL, `FILE`). The query string does not count.
pub fn file_name(url: &Url) -> Result<String, FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let last = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("");
    let name = percent_decode(last);
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad(
            "no file name at the end of its path; give one with --out",
        ));
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(bad(
            "its file name has a path separator; give one with --out",
        ));
    }
    Ok(name)
}

/// Decode `%XX` escapes (invalid ones stay as they are; invalid UTF-8 is replaced).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalize `--sha256`: 64 hex digits, any case, to lowercase.
pub fn parse_sha256(hex: &str) -> Result<String, FetchError> {
    let h = hex.trim();
    if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(FetchError::BadSha256(hex.to_string()))
    }
}

/// The downloads cache: `$SWEEP_CACHE/downloads`, else `.cache/sweep/downloads`.
pub fn default_cache_dir(sweep_cache: Option<OsString>) -> PathBuf {
    sweep_cache
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache/sweep"))
        .join("downloads")
}

/// Whether a URL's host should receive `HF_TOKEN`: huggingface.co, hf.co and their
/// subdomains, or the host (and port) of `HF_ENDPOINT`, the Hub's mirror setting. A token is
/// never sent anywhere else.
pub fn is_hf_url(url: &Url, hf_endpoint: Option<&str>) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    if url.scheme() == "https"
        && HF_HOSTS
            .iter()
            .any(|h| host == *h || host.ends_with(&format!(".{h}")))
    {
        return true;
    }
    hf_endpoint
        .and_then(|e| Url::parse(e).ok())
        .is_some_and(|e| {
            e.scheme() == url.scheme()
                && e.host_str().map(str::to_ascii_lowercase) == Some(host)
                && e.port_or_known_default() == url.port_or_known_default()
        })
}

/// `NAME.part`: the bytes downloaded so far.
pub fn part_path(dest: &Path) -> PathBuf {
    append_to_name(dest, ".part")
}

/// `NAME.part.json`: the [`PartSidecar`].
pub fn sidecar_path(dest: &Path) -> PathBuf {
    append_to_name(dest, ".part.json")
}

fn append_to_name(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The `If-Range` value for a partial download: a strong ETag, else Last-Modified (a weak ETag
/// may not be used). None: the bytes cannot be safely resumed.
pub fn if_range(side: &PartSidecar) -> Option<String> {
    match &side.etag {
        Some(e) if !e.starts_with("W/") => Some(e.clone()),
        _ => side.last_modified.clone(),
    }
}

/// Parse `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = end.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end).then_some((start, end, total))
}

/// The hint after an HTTP error status: what to check, given whether the URL is Hugging Face's
/// and whether a token was sent.
pub fn http_hint(status: u16, hf: bool, token_sent: bool) -> String {
    let gated = "gated models also need their terms accepted on the model page";
    match status {
        401 | 403 if hf && token_sent => format!(
            " (HF_TOKEN was sent: check that it is valid and can read this repository; {gated})"
        ),
        401 | 403 if hf => format!(
            " (set HF_TOKEN to a Hugging Face token that can read this repository; {gated}; \
             the Hub also answers 401 for repositories that do not exist)"
        ),
        401 | 403 => " (the server wants credentials; HF_TOKEN is only sent to huggingface.co \
                      and to HF_ENDPOINT's host)"
            .to_string(),
        404 if hf => " (check the repository, the revision and the file path)".to_string(),
        404 => " (no such file on the server)".to_string(),
        _ => String::new(),
    }
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let read_err = |io| FetchError::Read {
        path: path.to_path_buf(),
        io,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let mut h = Sha256::new();
    hash_prefix(&mut f, u64::MAX, &mut h).map_err(read_err)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Feed up to `limit` bytes of `r` to the hasher; returns how many there were.
fn hash_prefix(r: &mut impl Read, limit: u64, h: &mut Sha256) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut taken = r.take(limit);
    let mut n = 0;
    loop {
        match taken.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The HTTP client: native TLS (the system OpenSSL, which ssh2 links already), redirects followed (Authorization dropped when they change host),
/// a timeout per connect and per read rather than per download.
pub fn client() -> Result<Client, FetchError> {
    Client::builder()
        .user_agent(concat!("sweep/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(NETWORK_TIMEOUT)
        .timeout(NETWORK_TIMEOUT)
        .build()
        .map_err(|e| FetchError::Client(chain(&e)))
}

/// Download `req.url` to `req.dest` unless a complete file is already there.
///
/// An existing file at `dest` is complete (only finished downloads are renamed there); with
/// `sha256` it is hashed, and kept without any request when it matches. One process at a time
/// downloads a given file (a lock beside it); the others wait, then find it. Otherwise a partial
/// `NAME.part` with its sidecar is resumed when the sidecar names the same URL and has a
/// validator; the server's 206 appends, a 200 starts over. After the transfer the SHA-256 is
/// checked before the part is renamed into place; on a mismatch nothing is left at `dest`.
pub fn fetch(
    req: &FetchRequest,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<Fetched, FetchError> {
    let dest = &req.dest;
    let existed = std::fs::metadata(dest).is_ok_and(|m| m.is_file());
    if let Some(done) = already_here(req, on_event)? {
        return Ok(done);
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|io| FetchError::Write {
        path: dir.to_path_buf(),
        io,
    })?;
    let lock = DownloadLock::take(dest, on_event)?;
    if lock.waited || !existed {
        // Whoever held the lock may have just finished the file (a stale file that was just
        // hashed is not hashed again unless someone else had the lock).
        if let Some(done) = already_here(req, on_event)? {
            lock.release();
            return Ok(done);
        }
    }
    let result = download(req, on_event);
    lock.release();
    result
}

/// The file at `dest` when it is complete: it exists (only finished downloads are renamed
/// there) and, with `--sha256`, matches.
fn already_here(
    req: &FetchRequest,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<Option<Fetched>, FetchError> {
    let dest = &req.dest;
    let Ok(meta) = std::fs::metadata(dest) else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    let here = |sha256| Fetched {
        path: dest.clone(),
        bytes: meta.len(),
        sha256,
        downloaded: false,
        resumed_from: 0,
    };
    let Some(want) = &req.sha256 else {
        return Ok(Some(here(None)));
    };
    on_event(&FetchEvent::Verifying { bytes: meta.len() });
    let got = sha256_file(dest)?;
    if &got == want {
        return Ok(Some(here(Some(got))));
    }
    on_event(&FetchEvent::ExistingMismatch { got });
    Ok(None)
}

/// An exclusive lock on `NAME.lock` beside the file while one process downloads it, so that
/// array jobs fetching the same file into a shared cache wait for the first and then find the
/// file complete. The lock file is removed when the download ends.
struct DownloadLock {
    file: File,
    path: PathBuf,
    /// Another process held it first.
    waited: bool,
}

impl DownloadLock {
    fn take(dest: &Path, on_event: &mut dyn FnMut(&FetchEvent)) -> Result<Self, FetchError> {
        let path = append_to_name(dest, ".lock");
        let err = |io| FetchError::Write {
            path: path.clone(),
            io,
        };
        let mut waited = false;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(err)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !waited {
                        on_event(&FetchEvent::WaitingForOther);
                        waited = true;
                    }
                    file.lock().map_err(err)?;
                }
                Err(std::fs::TryLockError::Error(io)) => return Err(err(io)),
            }
            // The holder removes the lock file when it is done: a lock on a removed file locks
            // nothing, so take the lock again on the file now at that path.
            if same_file(&file, &path) {
                return Ok(DownloadLock { file, path, waited });
            }
        }
    }

    fn release(self) {
        remove_quietly(&self.path);
        drop(self.file);
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, path: &Path) -> bool {
    path.exists()
}

/// Request the file (resuming a partial download when possible) and put it in place.
fn download(
    req: &FetchRequest,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<Fetched, FetchError> {
    let dest = &req.dest;
    let client = client()?;
    let (part, side) = (part_path(dest), sidecar_path(dest));
    let mut resume = resume_point(&part, &side, req.url.as_str(), req.sha256.is_some());
    // Two tries: a 416 (the part is not a prefix of the file any more) drops it and starts over.
    for _ in 0..2 {
        let mut get = client.get(req.url.clone());
        if let Some(token) = &req.bearer {
            get = get.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(r) = &resume {
            on_event(&FetchEvent::Resuming { from: r.from });
            get = get.header(RANGE, format!("bytes={}-", r.from));
            if let Some(v) = &r.validator {
                get = get.header(IF_RANGE, v.as_str());
            }
        }
        let resp = get.send().map_err(|e| send_error(&req.url, &e))?;
        let status = resp.status();
        let offset = match (status, &resume) {
            (StatusCode::PARTIAL_CONTENT, Some(r)) => {
                let range = header(resp.headers(), CONTENT_RANGE.as_str())
                    .and_then(|v| parse_content_range(&v));
                let from = &r.from;
                // Resumed by length (no validator): a file of another length has changed, so
                // the part is dropped and the file fetched whole.
                if r.validator.is_none() && range.and_then(|(_, _, t)| t) != r.total {
                    remove_quietly(&part);
                    remove_quietly(&side);
                    resume = None;
                    on_event(&FetchEvent::Restarting);
                    continue;
                }
                let start = range.map(|(s, _, _)| s);
                if start != Some(*from) {
                    return Err(FetchError::Network {
                        url: req.url.to_string(),
                        reason: format!(
                            "asked for bytes {from}- and the server sent another range ({})",
                            header(resp.headers(), CONTENT_RANGE.as_str()).unwrap_or_default()
                        ),
                    });
                }
                *from
            }
            (StatusCode::OK, r) => {
                if r.is_some() {
                    on_event(&FetchEvent::Restarting);
                }
                0
            }
            (StatusCode::RANGE_NOT_SATISFIABLE, Some(_)) => {
                remove_quietly(&part);
                remove_quietly(&side);
                resume = None;
                on_event(&FetchEvent::Restarting);
                continue;
            }
            (s, _) => {
                return Err(FetchError::Http {
                    status: s.as_u16(),
                    url: req.url.to_string(),
                    hint: http_hint(s.as_u16(), req.hf, req.bearer.is_some()),
                });
            }
        };
        return transfer(req, resp, offset, &part, &side, on_event);
    }
    Err(FetchError::Network {
        url: req.url.to_string(),
        reason: "the server refused the range of a partial download twice".to_string(),
    })
}

/// Where a partial download resumes.
#[derive(Debug, Clone, PartialEq)]
struct Resume {
    /// Bytes already in the part file.
    from: u64,
    /// The `If-Range` validator; None: resumed by length, which the SHA-256 checks at the end.
    validator: Option<String>,
    /// The whole file's length as the server first said it.
    total: Option<u64>,
}

/// Where a partial download can resume, when the part file and its sidecar exist and name the
/// same URL: with the server's validator, or, where the server gave none, by length when the
/// file's SHA-256 is known (`checked`), so that a file that changed meanwhile is caught.
fn resume_point(part: &Path, side: &Path, url: &str, checked: bool) -> Option<Resume> {
    let len = std::fs::metadata(part).ok()?.len();
    let text = std::fs::read_to_string(side).ok()?;
    let sidecar: PartSidecar = serde_json::from_str(&text).ok()?;
    if len == 0 || sidecar.url != url {
        return None;
    }
    let validator = if_range(&sidecar);
    (validator.is_some() || (checked && sidecar.total.is_some())).then_some(Resume {
        from: len,
        validator,
        total: sidecar.total,
    })
}

/// What the same command does after a download broke off: resume, or start over and why.
fn next_try(sidecar: &PartSidecar, checked: bool) -> String {
    if if_range(sidecar).is_some() || (checked && sidecar.total.is_some()) {
        "run the same command again to resume".to_string()
    } else if checked {
        "the server gave neither an ETag, a Last-Modified nor a length, so the same command starts over".to_string()
    } else {
        "the server gave neither an ETag nor a Last-Modified, so the same command starts over; give --sha256 and it resumes by length and checks the whole file".to_string()
    }
}

/// Stream the body into the part file from `offset`, check it, and rename it into place.
fn transfer(
    req: &FetchRequest,
    mut resp: Response,
    offset: u64,
    part: &Path,
    side: &Path,
    on_event: &mut dyn FnMut(&FetchEvent),
) -> Result<Fetched, FetchError> {
    let headers = resp.headers();
    let total = if offset > 0 {
        header(headers, CONTENT_RANGE.as_str())
            .and_then(|v| parse_content_range(&v))
            .and_then(|(_, _, t)| t)
            .or_else(|| resp.content_length().map(|n| n + offset))
    } else {
        resp.content_length()
    };
    let sidecar = PartSidecar {
        url: req.url.to_string(),
        etag: header(headers, ETAG.as_str()),
        last_modified: header(headers, LAST_MODIFIED.as_str()),
        total,
    };
    let json = serde_json::to_vec_pretty(&sidecar).map_err(|e| FetchError::Write {
        path: side.to_path_buf(),
        io: std::io::Error::other(e),
    })?;
    crate::util::write_atomic(side, |w| w.write_all(&json)).map_err(|io| FetchError::Write {
        path: side.to_path_buf(),
        io,
    })?;
    let write_err = |io| FetchError::Write {
        path: part.to_path_buf(),
        io,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(offset == 0)
        .open(part)
        .map_err(write_err)?;
    let mut hasher = Sha256::new();
    if offset > 0 {
        let had = hash_prefix(&mut file, offset, &mut hasher).map_err(|io| FetchError::Read {
            path: part.to_path_buf(),
            io,
        })?;
        if had != offset {
            return Err(FetchError::Read {
                path: part.to_path_buf(),
                io: std::io::Error::other(format!("it shrank to {had} bytes during the resume")),
            });
        }
        file.set_len(offset).map_err(write_err)?;
        file.seek(SeekFrom::Start(offset)).map_err(write_err)?;
    }
    let mut done = offset;
    let progress = |done| FetchEvent::Progress {
        done,
        total,
        resumed_from: offset,
    };
    on_event(&progress(done));
    let mut buf = vec![0u8; 256 << 10];
    let broke_off = loop {
        match resp.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                file.write_all(&buf[..n]).map_err(write_err)?;
                hasher.update(&buf[..n]);
                done += n as u64;
                on_event(&progress(done));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Some(chain(&e)),
        }
    };
    file.sync_all().map_err(write_err)?;
    drop(file);
    let short = total.is_some_and(|t| done < t);
    if broke_off.is_some() || short {
        return Err(FetchError::Interrupted {
            url: req.url.to_string(),
            got: done,
            expected: total.map_or("?".to_string(), |t| t.to_string()),
            reason: broke_off.unwrap_or_else(|| "the server closed the connection".to_string()),
            next: next_try(&sidecar, req.sha256.is_some()),
        });
    }
    let got = format!("{:x}", hasher.finalize());
    if let Some(want) = &req.sha256 {
        if &got != want {
            // The bytes are wrong, so resuming them would only be wrong again.
            remove_quietly(part);
            remove_quietly(side);
            remove_quietly(&req.dest);
            return Err(FetchError::ChecksumMismatch {
                url: req.url.to_string(),
                expected: want.clone(),
                got,
                path: req.dest.clone(),
            });
        }
    }
    std::fs::rename(part, &req.dest).map_err(|io| FetchError::Write {
        path: req.dest.clone(),
        io,
    })?;
    remove_quietly(side);
    Ok(Fetched {
        path: req.dest.clone(),
        bytes: done,
        sha256: Some(got),
        downloaded: true,
        resumed_from: offset,
    })
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

fn remove_quietly(p: &Path) {
    let _ = std::fs::remove_file(p);
}

/// A failed request, sorted: no connection (naming host:port) or something else.
fn send_error(url: &Url, e: &reqwest::Error) -> FetchError {
    let failed = e.url().unwrap_or(url);
    if e.is_connect() || (e.is_timeout() && !e.is_body()) {
        let host = failed.host_str().unwrap_or("?");
        let port = failed
            .port_or_known_default()
            .map_or(String::new(), |p| format!(":{p}"));
        let reason = if e.is_timeout() {
            format!("no answer within {} s", NETWORK_TIMEOUT.as_secs())
        } else {
            innermost(e)
        };
        return FetchError::Unreachable {
            host_port: format!("{host}{port}"),
            reason,
            url: url.to_string(),
        };
    }
    FetchError::Network {
        url: url.to_string(),
        reason: chain(e),
    }
}

/// The last error in a source chain: the operating system's words, without the layers above.
fn innermost(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// An error and its sources on one line, without repeats.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(next) = cur {
        let s = next.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = next.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        parse_url(s).unwrap()
    }

    #[test]
    fn file_names_come_from_the_last_segment() {
        let hf = url("https://huggingface.co/org/repo/resolve/main/sub/model-00001.safetensors?download=true");
        assert_eq!(file_name(&hf).unwrap(), "model-00001.safetensors");
        assert_eq!(
            file_name(&url("http://h/data/my%20file.jsonl")).unwrap(),
            "my file.jsonl"
        );
        assert!(file_name(&url("http://h/")).is_err());
        assert!(file_name(&url("http://h")).is_err());
        assert!(file_name(&url("http://h/a/..")).is_err());
        assert!(file_name(&url("http://h/a%2Fb")).is_err());
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        assert!(parse_url("ftp://h/x").is_err());
        assert!(parse_url("not a url").is_err());
        assert!(parse_url("file:///etc/passwd").is_err());
        assert!(parse_url("http://127.0.0.1:8080/x").is_ok());
    }

    #[test]
    fn percent_decoding_keeps_invalid_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz"), "a%zz");
        assert_eq!(percent_decode("%41%42"), "AB");
        assert_eq!(percent_decode("%"), "%");
    }

    #[test]
    fn sha256_is_normalized_and_checked() {
        let h = "AB".repeat(32);
        assert_eq!(parse_sha256(&h).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("abc").is_err());
        assert!(parse_sha256(&"g".repeat(64)).is_err());
    }

    #[test]
    fn cache_dir_follows_sweep_cache() {
        assert_eq!(
            default_cache_dir(Some("/scratch/c".into())),
            PathBuf::from("/scratch/c/downloads")
        );
        assert_eq!(
            default_cache_dir(None),
            PathBuf::from(".cache/sweep/downloads")
        );
        assert_eq!(
            default_cache_dir(Some("".into())),
            PathBuf::from(".cache/sweep/downloads")
        );
    }

    #[test]
    fn tokens_go_only_to_the_hub_or_its_endpoint() {
        assert!(is_hf_url(
            &url("https://huggingface.co/a/b/resolve/main/f"),
            None
        ));
        assert!(is_hf_url(&url("https://cdn-lfs.hf.co/x"), None));
        assert!(!is_hf_url(&url("http://huggingface.co/a"), None));
        assert!(!is_hf_url(&url("https://evilhuggingface.co/a"), None));
        assert!(!is_hf_url(&url("https://example.com/a"), None));
        let ep = Some("http://127.0.0.1:9000");
        assert!(is_hf_url(
            &url("http://127.0.0.1:9000/a/b/resolve/main/f"),
            ep
        ));
        assert!(!is_hf_url(&url("http://127.0.0.1:9001/f"), ep));
    }

    #[test]
    fn part_files_sit_beside_the_destination() {
        let d = Path::new("cache/model.bin");
        assert_eq!(part_path(d), PathBuf::from("cache/model.bin.part"));
        assert_eq!(sidecar_path(d), PathBuf::from("cache/model.bin.part.json"));
    }

    #[test]
    fn if_range_prefers_a_strong_etag() {
        let mut s = PartSidecar {
            url: "u".into(),
            etag: Some("\"abc\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            total: None,
        };
        assert_eq!(if_range(&s).as_deref(), Some("\"abc\""));
        s.etag = Some("W/\"abc\"".into());
        assert_eq!(
            if_range(&s).as_deref(),
            Some("Wed, 21 Oct 2015 07:28:00 GMT")
        );
        s.last_modified = None;
        assert_eq!(if_range(&s), None);
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-999/1000"),
            Some((100, 999, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, 9, None)));
        assert_eq!(parse_content_range("bytes 9-0/10"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
    }

    #[test]
    fn hints_name_hf_token_for_refusals() {
        assert!(http_hint(401, true, false).contains("set HF_TOKEN"));
        assert!(http_hint(403, true, true).contains("HF_TOKEN was sent"));
        assert!(http_hint(403, false, false).contains("HF_TOKEN is only sent"));
        assert!(http_hint(404, false, false).contains("no such file"));
        assert_eq!(http_hint(500, true, true), "");
    }

    #[test]
    fn resume_needs_a_matching_sidecar_and_a_validator_or_a_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        let (part, side) = (part_path(&dest), sidecar_path(&dest));
        let url = "http://h/f.bin";
        assert_eq!(resume_point(&part, &side, url, true), None);
        std::fs::write(&part, b"12345").unwrap();
        let mut sc = PartSidecar {
            url: url.into(),
            etag: Some("\"e1\"".into()),
            last_modified: None,
            total: Some(10),
        };
        std::fs::write(&side, serde_json::to_string(&sc).unwrap()).unwrap();
        let with_etag = Resume {
            from: 5,
            validator: Some("\"e1\"".into()),
            total: Some(10),
        };
        assert_eq!(resume_point(&part, &side, url, false), Some(with_etag));
        assert_eq!(
            resume_point(&part, &side, "http://h/other.bin", false),
            None
        );
        // No validator: by length only when the SHA-256 will check the whole file.
        sc.etag = None;
        std::fs::write(&side, serde_json::to_string(&sc).unwrap()).unwrap();
        assert_eq!(resume_point(&part, &side, url, false), None);
        assert!(next_try(&sc, false).contains("starts over; give --sha256"));
        let by_length = Resume {
            from: 5,
            validator: None,
            total: Some(10),
        };
        assert_eq!(resume_point(&part, &side, url, true), Some(by_length));
        assert!(next_try(&sc, true).contains("again to resume"));
        std::fs::write(&side, "{not json").unwrap();
        assert_eq!(resume_point(&part, &side, url, true), None);
    }

    #[test]
    fn an_existing_file_is_kept_without_a_request() {
        // The URL's port is closed: any request would fail.
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        std::fs::write(&dest, b"hello").unwrap();
        let sum = sha256_file(&dest).unwrap();
        assert_eq!(
            sum,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let req = FetchRequest {
            url: url("http://127.0.0.1:1/f.bin"),
            dest: dest.clone(),
            sha256: Some(sum.clone()),
            bearer: None,
            hf: false,
        };
        let mut events = vec![];
        let got = fetch(&req, &mut |e| events.push(e.clone())).unwrap();
        assert!(!got.downloaded);
        assert_eq!(got.sha256.as_deref(), Some(sum.as_str()));
        assert_eq!(events, vec![FetchEvent::Verifying { bytes: 5 }]);
    }

    #[test]
    fn error_chains_drop_repeats() {
        let inner = std::io::Error::other("refused");
        assert_eq!(chain(&inner), "refused");
        assert_eq!(innermost(&inner), "refused");
    }
}
