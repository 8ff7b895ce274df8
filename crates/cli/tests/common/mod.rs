//! Shared helpers for the real-process integration tests: a `comity up`
//! child process that is always killed on drop, clients for it, and raw
//! HTTPS requests.
#![allow(dead_code)]

pub mod cluster;
pub mod load;

use comity_client::{Client, Health, Signer};
use comity_core::network::NetworkIdentity;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `comity` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_comity");

/// Longest a node may take to become healthy (generous: slow, noisy 2-core machines).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Tests of one binary run one at a time: each starts a node process and
/// the machine has few cores.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Sends SIGTERM to process `pid` (a clean stop, as Ctrl-C or systemd would).
pub fn sigterm(pid: u32) {
    signal(pid, libc::SIGTERM);
}

/// Sends signal `sig` to process `pid`, which must exist.
pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) only reads its two integer arguments.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "signal {sig} to {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// `n` consecutive TCP ports, and 3 after them (for nodes added later), that
/// were free a moment ago: below the kernel's ephemeral range, so that no
/// outgoing connection takes one while a killed node is down.
pub fn free_ports(n: usize) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let span = n as u16 + 3;
    let (low, high) = (10_000, ephemeral_low.max(12_000) - span);
    loop {
        let base = low + (random_u64() % u64::from(high - low)) as u16;
        let free = (0..span).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
}

/// Some random bytes (the tests need no stronger randomness than this).
pub fn random_u64() -> u64 {
    let n = comity_core::crypto::random_nonce();
    u64::from_le_bytes(n[..8].try_into().expect("8 bytes"))
}

/// A uniformly-ish random duration in `[lo, hi)`.
pub fn random_duration(lo: Duration, hi: Duration) -> Duration {
    let span = (hi - lo).as_millis().max(1) as u64;
    lo + Duration::from_millis(random_u64() % span)
}

/// The last `n` lines of a log file, for failure messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `s` without ANSI colour escapes (the node's log is coloured).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A local one-node network made by `comity --data <tmp>/comity-data up
/// --nodes 1 --port <port>`, run as a child process (see `cluster` for several). The child is killed (SIGKILL) when this is dropped.
pub struct Network {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    starts: u32,
    /// The open-file limit (soft and hard) `up` runs under, if set.
    pub open_files: Option<u64>,
    /// stderr of the most recent `up` process.
    pub stderr_path: PathBuf,
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Network {
    /// A fresh temporary directory and port; nothing runs yet.
    pub fn new() -> Network {
        let tmp = tempfile::Builder::new()
            .prefix("comity-it-")
            .tempdir()
            .expect("temp dir");
        let data = tmp.path().join("comity-data");
        let port = free_port();
        Network {
            stderr_path: tmp.path().join("up-0.err"),
            tmp,
            data,
            port,
            url: format!("https://127.0.0.1:{port}"),
            child: None,
            starts: 0,
            open_files: None,
        }
    }

    /// Creates (first time) or restarts the network and waits until it is healthy.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_healthy(START_TIMEOUT).await;
    }

    /// Starts `comity up` without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "a node is already running");
        self.starts += 1;
        let out = self.tmp.path().join(format!("up-{}.out", self.starts));
        self.stderr_path = self.tmp.path().join(format!("up-{}.err", self.starts));
        let mut cmd = Command::new(BIN);
        if let Some(n) = self.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure only calls setrlimit(2), which is
            // async-signal-safe, on a value it owns.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd
            .arg("--data")
            .arg(&self.data)
            .arg("up")
            .arg("--nodes")
            .arg("1")
            .arg("--port")
            .arg(self.port.to_string())
            .env_remove("COMITY_LOG") // the node's default filter
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&self.stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn comity up");
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Panics (with the node's stderr) if the child has exited.
    fn check_alive(&mut self) {
        let c = self.child.as_mut().expect("node running");
        if let Some(status) = c.try_wait().expect("try_wait") {
            self.child = None;
            panic!(
                "comity up exited with {status}; stderr:\n{}",
                tail(&self.stderr_path, 40)
            );
        }
    }

    /// Polls `GET /v1/health` until it answers 200 `ok`.
    pub async fn wait_healthy(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut client = None;
        let mut last: String;
        loop {
            self.check_alive();
            // ca.pem appears while a new network is being created.
            if client.is_none() {
                client = std::fs::read(self.data.join("ca.pem"))
                    .ok()
                    .and_then(|ca| Client::new(&self.url, &ca, None).ok());
            }
            let Some(client) = &client else {
                if Instant::now() > deadline {
                    panic!("no usable {}/ca.pem after {timeout:?}", self.data.display());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(5), client.health()).await {
                Ok(Ok(h)) if h.status == "ok" => return,
                Ok(Ok(h)) => last = format!("{h:?}"),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "health request timed out".into(),
            }
            if Instant::now() > deadline {
                panic!(
                    "node not healthy after {timeout:?}: {last}; stderr:\n{}",
                    tail(&self.stderr_path, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: no chance to flush anything.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("node running");
        c.kill().expect("SIGKILL");
        c.wait().expect("wait");
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn stop(&mut self, timeout: Duration) -> ExitStatus {
        sigterm(self.pid());
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("node running");
            if let Some(status) = c.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "node did not exit within {timeout:?} of SIGTERM; stderr:\n{}",
                    tail(&self.stderr_path, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `comity up` expecting it to refuse: returns its exit status and
    /// stderr, or `Err(stderr)` if it still runs (or became healthy) after `timeout`.
    pub async fn start_expect_exit(
        &mut self,
        timeout: Duration,
    ) -> Result<(ExitStatus, String), String> {
        self.spawn();
        let client = self.public_client();
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut().expect("node running");
            if let Some(status) = c.try_wait().expect("try_wait") {
                self.child = None;
                let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
                return Ok((status, err));
            }
            let healthy = matches!(
                tokio::time::timeout(Duration::from_secs(2), client.health()).await,
                Ok(Ok(Health { ref status, .. })) if status == "ok"
            );
            if healthy || Instant::now() > deadline {
                let mut c = self.child.take().expect("node running");
                let _ = c.kill();
                let _ = c.wait();
                let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
                return Err(format!(
                    "comity up {} instead of refusing to start; stderr:\n{err}",
                    if healthy {
                        "became healthy"
                    } else {
                        "kept running"
                    }
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data.join("ca.pem")).expect("read ca.pem")
    }

    pub fn key_path(&self, name: &str) -> PathBuf {
        self.data.join("keys").join(format!("{name}.key.pem"))
    }

    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.data.join("keys").join(format!("{name}.cert.pem"))
    }

    /// A client without a client certificate.
    pub fn public_client(&self) -> Client {
        Client::new(&self.url, &self.ca_pem(), None).expect("client")
    }

    /// A client presenting the certificate of identity `name` (`user0`, `member0`).
    pub fn client_as(&self, name: &str) -> Client {
        let cert = std::fs::read(self.cert_path(name)).expect("cert");
        let key = std::fs::read(self.key_path(name)).expect("key");
        Client::new(&self.url, &self.ca_pem(), Some((&cert, &key))).expect("client")
    }

    /// The network identity `up` wrote (what offline verifiers trust).
    pub fn identity(&self) -> NetworkIdentity {
        let b = std::fs::read(self.data.join("network.json")).expect("network.json");
        serde_json::from_slice(&b).expect("network identity JSON")
    }

    /// Signs as identity `name` (`user0`, `member0`) on this network.
    pub fn signer(&self, name: &str) -> Signer {
        Signer::from_pem_file(self.key_path(name), self.identity().network_id).expect("signer")
    }

    /// Runs `comity --data <data> <args>` to completion (killed after `timeout`).
    pub async fn cli(&self, args: &[&str], timeout: Duration) -> CliOutput {
        run_cli(&self.data, self.tmp.path(), args, timeout).await
    }

    /// Registers a new user with the members' votes (user.add by majority).
    pub async fn add_user(&self, name: &str) -> Signer {
        let keys = self.key_path(name).parent().unwrap().to_path_buf();
        self.cli(
            &[
                "keys",
                "new",
                "--name",
                name,
                "--out",
                keys.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        )
        .await;
        let cert = self.cert_path(name);
        let out = self
            .cli(
                &[
                    "gov",
                    "propose",
                    "user.add",
                    "--certificate",
                    cert.to_str().unwrap(),
                    "--name",
                    name,
                ],
                Duration::from_secs(60),
            )
            .await;
        assert!(out.status.success(), "{}", out.stderr);
        let pid = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("proposal "))
            .unwrap()
            .to_string();
        let k1 = self.key_path("member1");
        let out = self
            .cli(
                &[
                    "gov",
                    "vote",
                    &pid,
                    "approve",
                    "--key",
                    k1.to_str().unwrap(),
                ],
                Duration::from_secs(60),
            )
            .await;
        assert!(
            out.stdout.contains("accepted"),
            "{}\n{}",
            out.stdout,
            out.stderr
        );
        self.signer(name)
    }

    pub fn node_data(&self) -> PathBuf {
        self.data.join("node0").join("data")
    }

    /// The first ledger segment file.
    pub fn ledger_segment(&self) -> PathBuf {
        self.node_data()
            .join("ledger")
            .join("ledger")
            .join("ledger-00000000000000000000.seg")
    }

    /// Raft log files, oldest first.
    pub fn raft_logs(&self) -> Vec<PathBuf> {
        let dir = self.node_data().join("raft");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
            })
            .collect();
        v.sort();
        v
    }
}

pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub async fn run_cli(data: &Path, scratch: &Path, args: &[&str], timeout: Duration) -> CliOutput {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out_path = scratch.join(format!("cli-{n}.out"));
    let err_path = scratch.join(format!("cli-{n}.err"));
    let mut child = Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn comity");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "comity {args:?} did not finish within {timeout:?}; stderr:\n{}",
                tail(&err_path, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    CliOutput {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// Raw HTTPS: for requests the SDK and reqwest would not send.

/// A rustls client configuration trusting only `ca_pem`.
pub fn tls_config(ca_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut std::io::BufReader::new(ca_pem)) {
        roots.add(c.expect("CA PEM")).expect("CA cert");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// Everything read before EOF, an error or the timeout.
    pub bytes: Vec<u8>,
    /// How reading ended, when not by a clean EOF.
    pub read_error: Option<String>,
    pub timed_out: bool,
}

impl RawResponse {
    /// The HTTP status of the first response line, if there is one.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let line = text.lines().next()?;
        let mut parts = line.split_whitespace();
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// The body of the response (de-chunked when needed).
    pub fn body(&self) -> Vec<u8> {
        let Some(pos) = self.bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Vec::new();
        };
        let head = String::from_utf8_lossy(&self.bytes[..pos]).to_ascii_lowercase();
        let body = &self.bytes[pos + 4..];
        if !head.contains("transfer-encoding: chunked") {
            return body.to_vec();
        }
        let mut out = Vec::new();
        let mut rest = body;
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            if size == 0 || rest.len() < eol + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[(eol + 2 + size + 2).min(rest.len())..];
        }
        out
    }

    /// The JSON `{code, message}` of an error body, if it is one.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body()).ok()
    }
}

/// Opens a TLS connection to `port`, writes `request` (from a separate task,
/// so an early answer is still read) and reads until EOF or `timeout`.
pub async fn raw_tls(port: u16, ca_pem: &[u8], request: Vec<u8>, timeout: Duration) -> RawResponse {
    let connector = tokio_rustls::TlsConnector::from(tls_config(ca_pem));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = tokio::time::timeout(Duration::from_secs(20), connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        // Keep the write half open: shutting it down would send close_notify.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(wr);
    });
    let mut bytes = Vec::new();
    let mut read_error = None;
    let mut timed_out = false;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                read_error = Some(e.to_string());
                break;
            }
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    writer.abort();
    RawResponse {
        bytes,
        read_error,
        timed_out,
    }
}

/// Sends raw bytes over plain TCP (no TLS) and reads until EOF or `timeout`.
pub async fn raw_tcp(port: u16, request: &[u8], timeout: Duration) -> RawResponse {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = tcp.write_all(request).await;
    let mut bytes = Vec::new();
    let mut read_error = None;
    let mut timed_out = false;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                read_error = Some(e.to_string());
                break;
            }
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    RawResponse {
        bytes,
        read_error,
        timed_out,
    }
}

/// A reqwest client trusting the network CA, optionally presenting an identity.
pub fn http_client(ca_pem: &[u8], identity: Option<(&[u8], &[u8])>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).expect("CA"))
        .timeout(Duration::from_secs(60));
    if let Some((cert, key)) = identity {
        let mut pem = cert.to_vec();
        pem.push(b'\n');
        pem.extend_from_slice(key);
        b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    b.build().expect("reqwest client")
}
