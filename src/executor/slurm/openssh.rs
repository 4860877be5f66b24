//! The openssh transport: the system `ssh` with a ControlMaster connection that every call of
//! one invocation reuses (and ControlPersist keeps a minute), for clusters that need 2FA,
//! ProxyJump or the user's ssh_config. The first connection may prompt on the terminal.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::config::ClusterConfig;
use super::quote::sh_quote;
use super::transport::{expand_home, ExecOutput, Transport, TransportError};

/// A ControlMaster connection through the system ssh.
pub struct OpensshTransport {
    base: Vec<String>,
    target: String,
    addr: String,
    timeout_s: u64,
    trips: u64,
}

impl OpensshTransport {
    /// Start (or reuse) the master connection; host keys are checked strictly.
    pub fn connect(c: &ClusterConfig) -> Result<OpensshTransport, TransportError> {
        let addr = format!("{}:{}", c.host, c.port);
        // The control socket path must be short (108 bytes): %C is a hash of the connection.
        let dir = std::env::temp_dir().join(format!("sweep-ssh-{}", unsafe_uid()));
        std::fs::create_dir_all(&dir).map_err(|e| TransportError::Connect {
            addr: addr.clone(),
            reason: format!("{}: {e}", dir.display()),
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut base = vec![
            "-p".to_string(),
            c.port.to_string(),
            "-o".into(),
            "ControlMaster=auto".into(),
            "-o".into(),
            format!("ControlPath={}/cm-%C", dir.display()),
            "-o".into(),
            "ControlPersist=60".into(),
            "-o".into(),
            format!("ConnectTimeout={}", c.connect_timeout_s.max(1)),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "ServerAliveInterval=15".into(),
        ];
        if let Some(kh) = &c.known_hosts {
            base.push("-o".into());
            base.push(format!("UserKnownHostsFile={}", expand_home(kh).display()));
        }
        if let Some(id) = &c.identity_file {
            base.push("-o".into());
            base.push("IdentitiesOnly=yes".into());
            base.push("-i".into());
            base.push(expand_home(id).display().to_string());
        }
        // One master per distinct set of options: a master opened with other keys or another
        // known_hosts file must not be reused, since reuse skips authentication and the host check.
        let key = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(format!("{base:?}{}@{}", c.user, c.host).as_bytes());
            d.iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        for a in base.iter_mut() {
            if a.starts_with("ControlPath=") {
                *a = format!("ControlPath={}/cm-{key}", dir.display());
            }
        }
        let mut t = OpensshTransport {
            base,
            target: format!("{}@{}", c.user, c.host),
            addr,
            timeout_s: c.command_timeout_s.max(1),
            trips: 0,
        };
        // Open the master with the terminal attached, so that 2FA prompts can be answered.
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
        let mut cmd = t.command(&["true"], !interactive);
        let limit = if interactive {
            300
        } else {
            c.connect_timeout_s.max(1) + 5
        };
        let out = run(&mut cmd, None, limit, &t.addr, "connecting")?;
        if out.code != 0 {
            return Err(classify_connect_error(&t.addr, c, &out.stderr));
        }
        t.trips = 0;
        Ok(t)
    }

    fn command(&self, remote: &[&str], batch: bool) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(&self.base);
        if batch {
            cmd.args(["-o", "BatchMode=yes"]);
        }
        cmd.arg(&self.target).arg("--");
        cmd.args(remote);
        cmd
    }
}

fn unsafe_uid() -> u32 {
    // SAFETY: getuid(2) cannot fail and has no memory effects.
    unsafe { libc::getuid() }
}

fn classify_connect_error(addr: &str, c: &ClusterConfig, stderr: &str) -> TransportError {
    let s = stderr.trim().to_string();
    if s.contains("Host key verification failed")
        || s.contains("No ED25519 host key is known")
        || s.contains("host key for") && s.contains("is not known")
    {
        TransportError::UnknownHost {
            addr: addr.to_string(),
            host: c.host.clone(),
            port: c.port,
            known_hosts: c
                .known_hosts
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "~/.ssh/known_hosts".into()),
            fingerprint: s
                .split_whitespace()
                .find(|w| w.starts_with("SHA256:"))
                .unwrap_or("(see `ssh-keyscan`)")
                .trim_end_matches('.')
                .to_string(),
        }
    } else if s.contains("Permission denied") {
        TransportError::Auth {
            user: c.user.clone(),
            addr: addr.to_string(),
            how: c
                .identity_file
                .as_ref()
                .map(|p| format!("key {}", p.display()))
                .unwrap_or_else(|| "ssh-agent or ssh_config".into()),
            reason: s,
        }
    } else {
        TransportError::Connect {
            addr: addr.to_string(),
            reason: s,
        }
    }
}

/// Run `cmd` with `input` on stdin, at most `limit_s` seconds.
fn run(
    cmd: &mut Command,
    input: Option<&[u8]>,
    limit_s: u64,
    addr: &str,
    what: &str,
) -> Result<ExecOutput, TransportError> {
    let (stdout, stderr, code) = run_bytes(cmd, input, limit_s, addr, what)?;
    Ok(ExecOutput {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        code,
    })
}

/// [`run`] with the raw bytes of stdout and stderr (a downloaded file need not be text).
fn run_bytes(
    cmd: &mut Command,
    input: Option<&[u8]>,
    limit_s: u64,
    addr: &str,
    what: &str,
) -> Result<(Vec<u8>, Vec<u8>, i32), TransportError> {
    let err = |reason: String| TransportError::Call {
        addr: addr.to_string(),
        what: what.to_string(),
        reason,
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .map_err(|e| err(format!("cannot run ssh: {e}")))?;
    let stdin = child.stdin.take();
    let data = input.map(<[u8]>::to_vec);
    let writer = std::thread::spawn(move || {
        if let (Some(mut s), Some(d)) = (stdin, data) {
            let _ = s.write_all(&d);
        }
    });
    let mut out = child.stdout.take();
    let mut er = child.stderr.take();
    let r1 = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut b);
        }
        b
    });
    let r2 = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(o) = er.as_mut() {
            let _ = o.read_to_end(&mut b);
        }
        b
    });
    let deadline = Instant::now() + Duration::from_secs(limit_s);
    let status = loop {
        match child.try_wait().map_err(|e| err(e.to_string()))? {
            Some(s) => break s,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TransportError::Timeout {
                    addr: addr.to_string(),
                    what: what.to_string(),
                    secs: limit_s,
                });
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let _ = writer.join();
    let stdout = r1.join().unwrap_or_default();
    let stderr = r2.join().unwrap_or_default();
    Ok((stdout, stderr, status.code().unwrap_or(255)))
}

impl Transport for OpensshTransport {
    fn exec(&mut self, command: &str) -> Result<ExecOutput, TransportError> {
        self.trips += 1;
        let mut cmd = self.command(&[command], true);
        let out = run(
            &mut cmd,
            None,
            self.timeout_s,
            &self.addr,
            "a remote command",
        )?;
        if out.code == 255 {
            return Err(TransportError::Call {
                addr: self.addr.clone(),
                what: "a remote command".into(),
                reason: out.stderr.trim().to_string(),
            });
        }
        Ok(out)
    }

    fn upload(&mut self, data: &[u8], remote: &str, mode: i32) -> Result<(), TransportError> {
        self.trips += 1;
        let tmp = format!("{remote}.part");
        // A connection that drops mid-transfer ends cat's input early and cat exits 0: the
        // size check keeps that short file from taking the final name.
        let line = format!(
            "cat > {t} && [ \"$(wc -c < {t})\" -eq {n} ] && chmod {mode:o} {t} && mv -f {t} {r} || {{ rm -f {t}; echo \"the upload arrived incomplete\" >&2; exit 1; }}",
            t = sh_quote(&tmp),
            r = sh_quote(remote),
            n = data.len()
        );
        let mut cmd = self.command(&[&line], true);
        let what = format!("uploading {remote}");
        let out = run(&mut cmd, Some(data), self.timeout_s, &self.addr, &what)?;
        if out.code != 0 {
            return Err(TransportError::Call {
                addr: self.addr.clone(),
                what,
                reason: out.stderr.trim().to_string(),
            });
        }
        Ok(())
    }

    fn download(&mut self, remote: &str) -> Result<Option<Vec<u8>>, TransportError> {
        self.trips += 1;
        let q = sh_quote(remote);
        let line = format!("if [ -e {q} ]; then cat {q}; else exit 44; fi");
        let mut cmd = self.command(&[&line], true);
        cmd.stdout(Stdio::piped());
        let what = format!("downloading {remote}");
        let (stdout, stderr, code) = run_bytes(&mut cmd, None, self.timeout_s, &self.addr, &what)?;
        match code {
            0 => Ok(Some(stdout)),
            44 => Ok(None),
            _ => Err(TransportError::Call {
                addr: self.addr.clone(),
                what,
                reason: String::from_utf8_lossy(&stderr).trim().to_string(),
            }),
        }
    }

    fn round_trips(&self) -> u64 {
        self.trips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_keep_binary_bytes() {
        // A safetensors file is not UTF-8: what the remote `cat` prints must come back as is.
        let mut cmd = Command::new("printf");
        cmd.arg("\\000\\377\\n\\200");
        let (out, _, code) = run_bytes(&mut cmd, None, 10, "local", "printf").unwrap();
        assert_eq!((out, code), (vec![0, 255, b'\n', 128], 0));
    }
}
