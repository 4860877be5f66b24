//! The ssh2 (libssh2) transport: one session per command invocation, reused for every call; the
//! host key checked against known_hosts (unknown hosts refused); key-file or agent
//! authentication; a timeout on every blocking call.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use ssh2::{CheckResult, HashType, KnownHostFileKind, OpenFlags, OpenType, Session, Sftp};

use super::config::ClusterConfig;
use super::transport::{base64_nopad, expand_home, ExecOutput, Transport, TransportError};

/// libssh2's error code for a timed-out blocking call.
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
/// SFTP status "no such file".
const SFTP_NO_SUCH_FILE: i32 = 2;

/// A live ssh2 session.
pub struct Ssh2Transport {
    session: Session,
    sftp: Option<Sftp>,
    addr: String,
    timeout_s: u64,
    trips: u64,
}

impl Ssh2Transport {
    /// Connect, check the host key and authenticate.
    pub fn connect(c: &ClusterConfig) -> Result<Ssh2Transport, TransportError> {
        let addr = format!("{}:{}", c.host, c.port);
        let connect_err = |reason: String| TransportError::Connect {
            addr: addr.clone(),
            reason,
        };
        let timeout = Duration::from_secs(c.connect_timeout_s.max(1));
        let sock = (c.host.as_str(), c.port)
            .to_socket_addrs()
            .map_err(|e| connect_err(format!("cannot resolve the host: {e}")))?
            .next()
            .ok_or_else(|| connect_err("the host has no address".into()))?;
        let tcp = TcpStream::connect_timeout(&sock, timeout).map_err(|e| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                TransportError::Timeout {
                    addr: addr.clone(),
                    what: "connecting".into(),
                    secs: timeout.as_secs(),
                }
            } else {
                connect_err(e.to_string())
            }
        })?;
        let mut session = Session::new().map_err(|e| connect_err(e.to_string()))?;
        session.set_tcp_stream(tcp);
        session.set_timeout(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
        session
            .handshake()
            .map_err(|e| map_err(&addr, "the SSH handshake", timeout.as_secs(), e))?;
        check_host_key(&session, c, &addr)?;
        authenticate(&session, c, &addr)?;
        session.set_timeout(
            u32::try_from(c.command_timeout_s.max(1).saturating_mul(1000)).unwrap_or(u32::MAX),
        );
        Ok(Ssh2Transport {
            session,
            sftp: None,
            addr,
            timeout_s: c.command_timeout_s.max(1),
            trips: 0,
        })
    }

    fn sftp(&mut self) -> Result<&Sftp, TransportError> {
        if self.sftp.is_none() {
            let s = self
                .session
                .sftp()
                .map_err(|e| map_err(&self.addr, "opening SFTP", self.timeout_s, e))?;
            self.sftp = Some(s);
        }
        self.sftp.as_ref().ok_or_else(|| TransportError::Call {
            addr: self.addr.clone(),
            what: "opening SFTP".into(),
            reason: "no SFTP session".into(),
        })
    }
}

fn map_err(addr: &str, what: &str, secs: u64, e: ssh2::Error) -> TransportError {
    if matches!(e.code(), ssh2::ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT)) {
        TransportError::Timeout {
            addr: addr.to_string(),
            what: what.to_string(),
            secs,
        }
    } else {
        TransportError::Call {
            addr: addr.to_string(),
            what: what.to_string(),
            reason: e.message().to_string(),
        }
    }
}

fn io_err(addr: &str, what: &str, secs: u64, e: std::io::Error) -> TransportError {
    if e.kind() == std::io::ErrorKind::TimedOut || e.to_string().contains("timed out") {
        TransportError::Timeout {
            addr: addr.to_string(),
            what: what.to_string(),
            secs,
        }
    } else {
        TransportError::Call {
            addr: addr.to_string(),
            what: what.to_string(),
            reason: e.to_string(),
        }
    }
}

fn known_hosts_path(c: &ClusterConfig) -> PathBuf {
    c.known_hosts
        .as_deref()
        .map(expand_home)
        .unwrap_or_else(|| expand_home(std::path::Path::new("~/.ssh/known_hosts")))
}

fn check_host_key(s: &Session, c: &ClusterConfig, addr: &str) -> Result<(), TransportError> {
    let path = known_hosts_path(c);
    let fingerprint = s
        .host_key_hash(HashType::Sha256)
        .map(|h| format!("SHA256:{}", base64_nopad(h)))
        .unwrap_or_else(|| "unknown".into());
    let (key, _) = s.host_key().ok_or_else(|| TransportError::Connect {
        addr: addr.to_string(),
        reason: "the server sent no host key".into(),
    })?;
    let mut kh = s.known_hosts().map_err(|e| TransportError::Connect {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    // A missing file is an empty one: the host is then unknown.
    if path.exists() {
        kh.read_file(&path, KnownHostFileKind::OpenSSH)
            .map_err(|e| TransportError::Connect {
                addr: addr.to_string(),
                reason: format!("reading {}: {}", path.display(), e.message()),
            })?;
    }
    match kh.check_port(&c.host, c.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => Err(TransportError::HostKeyMismatch {
            addr: addr.to_string(),
            known_hosts: path.display().to_string(),
            fingerprint,
        }),
        CheckResult::NotFound | CheckResult::Failure => Err(TransportError::UnknownHost {
            addr: addr.to_string(),
            host: c.host.clone(),
            port: c.port,
            known_hosts: path.display().to_string(),
            fingerprint,
        }),
    }
}

fn authenticate(s: &Session, c: &ClusterConfig, addr: &str) -> Result<(), TransportError> {
    let (how, result) = match &c.identity_file {
        Some(p) => {
            let p = expand_home(p);
            if !p.exists() {
                return Err(TransportError::Auth {
                    user: c.user.clone(),
                    addr: addr.to_string(),
                    how: format!("key {}", p.display()),
                    reason: "the key file does not exist".into(),
                });
            }
            (
                format!("key {}", p.display()),
                s.userauth_pubkey_file(&c.user, None, &p, None),
            )
        }
        None => ("ssh-agent".to_string(), s.userauth_agent(&c.user)),
    };
    match result {
        Ok(()) if s.authenticated() => Ok(()),
        Ok(()) => Err(TransportError::Auth {
            user: c.user.clone(),
            addr: addr.to_string(),
            how,
            reason: "the server did not accept it".into(),
        }),
        Err(e) => Err(TransportError::Auth {
            user: c.user.clone(),
            addr: addr.to_string(),
            how,
            reason: format!(
                "{} (is the public key in the remote ~/.ssh/authorized_keys?)",
                e.message()
            ),
        }),
    }
}

impl Transport for Ssh2Transport {
    fn exec(&mut self, command: &str) -> Result<ExecOutput, TransportError> {
        self.trips += 1;
        let (addr, secs) = (self.addr.clone(), self.timeout_s);
        let what = "a remote command";
        let mut ch = self
            .session
            .channel_session()
            .map_err(|e| map_err(&addr, what, secs, e))?;
        ch.exec(command)
            .map_err(|e| map_err(&addr, what, secs, e))?;
        let mut stdout = Vec::new();
        ch.read_to_end(&mut stdout)
            .map_err(|e| io_err(&addr, what, secs, e))?;
        let mut stderr = Vec::new();
        ch.stderr()
            .read_to_end(&mut stderr)
            .map_err(|e| io_err(&addr, what, secs, e))?;
        ch.wait_close().map_err(|e| map_err(&addr, what, secs, e))?;
        let code = ch
            .exit_status()
            .map_err(|e| map_err(&addr, what, secs, e))?;
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            code,
        })
    }

    fn upload(&mut self, data: &[u8], remote: &str, mode: i32) -> Result<(), TransportError> {
        self.trips += 1;
        let (addr, secs) = (self.addr.clone(), self.timeout_s);
        let what = format!("uploading {remote}");
        let sftp = self.sftp()?;
        let mut f = sftp
            .open_mode(
                std::path::Path::new(remote),
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                mode,
                OpenType::File,
            )
            .map_err(|e| map_err(&addr, &what, secs, e))?;
        f.write_all(data)
            .map_err(|e| io_err(&addr, &what, secs, e))?;
        Ok(())
    }

    fn download(&mut self, remote: &str) -> Result<Option<Vec<u8>>, TransportError> {
        self.trips += 1;
        let (addr, secs) = (self.addr.clone(), self.timeout_s);
        let what = format!("downloading {remote}");
        let sftp = self.sftp()?;
        let mut f = match sftp.open(std::path::Path::new(remote)) {
            Ok(f) => f,
            Err(e) if matches!(e.code(), ssh2::ErrorCode::SFTP(SFTP_NO_SUCH_FILE)) => {
                return Ok(None)
            }
            Err(e) => return Err(map_err(&addr, &what, secs, e)),
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(|e| io_err(&addr, &what, secs, e))?;
        Ok(Some(buf))
    }

    fn round_trips(&self) -> u64 {
        self.trips
    }
}
