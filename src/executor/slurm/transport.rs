//! The transport to a cluster: run a command, upload and download files. Implemented by
//! [`super::ssh::Ssh2Transport`] (libssh2) and [`super::openssh::OpensshTransport`] (the system
//! ssh); a fake in tests. Every call is one round trip, counted for the benchmark.

/// What a remote command printed and how it exited.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit status.
    pub code: i32,
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection.
    #[error("cannot reach {addr}: {reason}")]
    Connect {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The host key is not in known_hosts.
    #[error("the host key of {addr} is unknown ({known_hosts} has no entry); its fingerprint is {fingerprint}. If that is the cluster's key, accept it with `ssh-keyscan -p {port} {host} >> {known_hosts}` (or by connecting once with `ssh -p {port} {host}`)")]
    UnknownHost {
        /// host:port.
        addr: String,
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The file checked.
        known_hosts: String,
        /// SHA256 fingerprint.
        fingerprint: String,
    },
    /// The host key differs from known_hosts.
    #[error("the host key of {addr} does NOT match {known_hosts} (fingerprint {fingerprint}): refusing to connect; if the cluster's key really changed, remove the old entry")]
    HostKeyMismatch {
        /// host:port.
        addr: String,
        /// The file checked.
        known_hosts: String,
        /// SHA256 fingerprint.
        fingerprint: String,
    },
    /// Authentication failed.
    #[error("authentication as {user} on {addr} failed ({how}): {reason}")]
    Auth {
        /// User.
        user: String,
        /// host:port.
        addr: String,
        /// Key file or agent.
        how: String,
        /// Why.
        reason: String,
    },
    /// A call took longer than its timeout.
    #[error("{what} on {addr} timed out after {secs} s")]
    Timeout {
        /// host:port.
        addr: String,
        /// The call.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// Any other failure of a call.
    #[error("{what} on {addr}: {reason}")]
    Call {
        /// host:port.
        addr: String,
        /// The call.
        what: String,
        /// Why.
        reason: String,
    },
}

/// A connection to a cluster's login node.
pub trait Transport {
    /// Run a command line in the remote user's shell (every argument already shell-quoted).
    fn exec(&mut self, command: &str) -> Result<ExecOutput, TransportError>;
    /// Write a remote file (replacing it) with a mode.
    fn upload(&mut self, data: &[u8], remote: &str, mode: i32) -> Result<(), TransportError>;
    /// Read a remote file; None when it does not exist.
    fn download(&mut self, remote: &str) -> Result<Option<Vec<u8>>, TransportError>;
    /// Round trips so far.
    fn round_trips(&self) -> u64;
}

/// Lowercase base64 without padding, as OpenSSH prints SHA256 fingerprints.
pub fn base64_nopad(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// `~/x` as a path under $HOME (config paths are written the way people write them).
pub fn expand_home(p: &std::path::Path) -> std::path::PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(h)) => std::path::PathBuf::from(h).join(rest),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
pub mod fake {
    //! A scripted transport for unit tests: commands go to a handler, files to a map.

    use std::collections::BTreeMap;

    use super::*;

    /// Answers a command, seeing the remote files.
    pub type Handler = Box<dyn FnMut(&str, &BTreeMap<String, Vec<u8>>) -> ExecOutput>;

    /// The fake.
    pub struct FakeTransport {
        /// Answers commands.
        pub handler: Handler,
        /// Remote files.
        pub files: BTreeMap<String, Vec<u8>>,
        /// Commands run.
        pub commands: Vec<String>,
        trips: u64,
    }

    impl FakeTransport {
        /// A fake answering with `handler`.
        pub fn new(
            handler: impl FnMut(&str, &BTreeMap<String, Vec<u8>>) -> ExecOutput + 'static,
        ) -> Self {
            FakeTransport {
                handler: Box::new(handler),
                files: BTreeMap::new(),
                commands: Vec::new(),
                trips: 0,
            }
        }
    }

    impl Transport for FakeTransport {
        fn exec(&mut self, command: &str) -> Result<ExecOutput, TransportError> {
            self.trips += 1;
            self.commands.push(command.to_string());
            Ok((self.handler)(command, &self.files))
        }
        fn upload(&mut self, data: &[u8], remote: &str, _mode: i32) -> Result<(), TransportError> {
            self.trips += 1;
            self.files.insert(remote.to_string(), data.to_vec());
            Ok(())
        }
        fn download(&mut self, remote: &str) -> Result<Option<Vec<u8>>, TransportError> {
            self.trips += 1;
            Ok(self.files.get(remote).cloned())
        }
        fn round_trips(&self) -> u64 {
            self.trips
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_openssh_style() {
        assert_eq!(base64_nopad(b""), "");
        assert_eq!(base64_nopad(b"f"), "Zg");
        assert_eq!(base64_nopad(b"fo"), "Zm8");
        assert_eq!(base64_nopad(b"foo"), "Zm9v");
        assert_eq!(base64_nopad(b"foobar"), "Zm9vYmFy");
    }
}
