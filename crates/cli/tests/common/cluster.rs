//! A local network of several node processes, each started, killed (-9) and
//! restarted on its own, optionally with a TCP proxy in front of every node's
//! peer address so that a node can be cut off from the others and healed.
//!
//! Node i listens on `base + i` (clients talk to it there directly). With
//! proxies, the genesis advertises proxy j as node j's peer address, and node
//! i makes its peer connections from 127.0.0.(10 + i), so a proxy knows which
//! node each connection comes from.

use super::{free_ports, run_cli, tail, BIN, START_TIMEOUT};
use comity_client::{Client, Signer};
use comity_core::network::NetworkIdentity;
use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub base: u16,
    pub n: usize,
    children: Vec<Option<Child>>,
    starts: Vec<u32>,
    /// Nodes cut off from all others; bumping the watch ends their open links.
    cut: Arc<Mutex<BTreeSet<usize>>>,
    cut_changed: watch::Sender<u64>,
    proxies: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.proxies {
            p.abort();
        }
    }
}

fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i as u8)
}

impl Cluster {
    /// Creates an `n`-node network (`comity up --init-only`) and starts every node.
    pub async fn start(n: usize, proxied: bool) -> Cluster {
        Cluster::start_with_limits(n, proxied, "").await
    }

    /// Like [`Cluster::start`], with `limits` (TOML lines) added to every
    /// node's `[limits]` table.
    pub async fn start_with_limits(n: usize, proxied: bool, limits: &str) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("comity-cluster-")
            .tempdir()
            .expect("temp dir");
        let data = tmp.path().join("comity-data");
        let base = free_ports(n);
        let out = run_cli(
            &data,
            tmp.path(),
            &[
                "up",
                "--init-only",
                "--nodes",
                &n.to_string(),
                "--port",
                &base.to_string(),
            ],
            Duration::from_secs(60),
        )
        .await;
        assert!(out.status.success(), "up --init-only: {}", out.stderr);
        let (cut_changed, _) = watch::channel(0);
        let mut c = Cluster {
            tmp,
            data,
            base,
            n,
            children: (0..n).map(|_| None).collect(),
            starts: vec![0; n],
            cut: Arc::default(),
            cut_changed,
            proxies: Vec::new(),
        };
        if proxied {
            c.insert_proxies().await;
        }
        for i in 0..n {
            let toml = c.node_dir(i).join("node.toml");
            let mut cfg = std::fs::read_to_string(&toml).expect("node.toml");
            assert!(cfg.contains("[limits]\n"), "node.toml has a [limits] table");
            for line in limits.lines() {
                let key = line.split('=').next().unwrap_or_default().trim();
                cfg = cfg
                    .lines()
                    .filter(|l| l.split('=').next().unwrap_or_default().trim() != key)
                    .map(|l| format!("{l}\n"))
                    .collect();
                cfg = cfg.replace("[limits]\n", &format!("[limits]\n{line}\n"));
            }
            std::fs::write(&toml, cfg).expect("write node.toml");
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_healthy(i, START_TIMEOUT).await;
        }
        c
    }

    /// Re-creates the genesis with proxy addresses and starts the proxies.
    async fn insert_proxies(&mut self) {
        let proxy_base = free_ports(self.n);
        let genesis = self.data.join("genesis.toml");
        let mut text = std::fs::read_to_string(&genesis).expect("genesis.toml");
        for i in 0..self.n {
            text = text.replace(
                &format!("\"127.0.0.1:{}\"", self.base + i as u16),
                &format!("\"127.0.0.1:{}\"", proxy_base + i as u16),
            );
            let toml = self.node_dir(i).join("node.toml");
            let cfg = std::fs::read_to_string(&toml).expect("node.toml");
            std::fs::write(&toml, format!("peer_bind = \"{}\"\n{cfg}", peer_ip(i)))
                .expect("write node.toml");
        }
        std::fs::write(&genesis, text).expect("write genesis.toml");
        std::fs::remove_file(self.data.join("genesis.cbor")).expect("rm genesis.cbor");
        std::fs::remove_file(self.data.join("network.json")).expect("rm network.json");
        let out = run_cli(
            &self.data,
            self.tmp.path(),
            &[
                "network",
                "init",
                "--genesis",
                genesis.to_str().expect("utf-8"),
            ],
            Duration::from_secs(60),
        )
        .await;
        assert!(out.status.success(), "network init: {}", out.stderr);
        for j in 0..self.n {
            let listener = TcpListener::bind(("127.0.0.1", proxy_base + j as u16))
                .await
                .expect("proxy bind");
            let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.base + j as u16);
            let (cut, changed, n) = (self.cut.clone(), self.cut_changed.clone(), self.n);
            self.proxies.push(tokio::spawn(async move {
                while let Ok((inbound, from)) = listener.accept().await {
                    let source = (0..n).find(|i| IpAddr::V4(peer_ip(*i)) == from.ip());
                    let blocked = {
                        let cut = cut.clone();
                        move || {
                            let c = cut.lock().unwrap();
                            c.contains(&j) || source.is_some_and(|s| c.contains(&s))
                        }
                    };
                    if blocked() {
                        continue;
                    }
                    let mut changed = changed.subscribe();
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut a, mut b) = (inbound, outbound);
                        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
                        tokio::pin!(copy);
                        loop {
                            tokio::select! {
                                _ = &mut copy => return,
                                r = changed.changed() => {
                                    if r.is_err() || blocked() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            }));
        }
    }

    /// Cuts node `i` off from every other node (clients still reach it).
    pub fn isolate(&self, i: usize) {
        self.cut.lock().unwrap().insert(i);
        self.cut_changed.send_modify(|g| *g += 1);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
        self.cut_changed.send_modify(|g| *g += 1);
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.data.join(format!("node{i}"))
    }

    pub fn url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.base + i as u16)
    }

    /// What node `i` has logged since it was last started.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.stderr_path(i)).unwrap_or_default()
    }

    fn stderr_path(&self, i: usize) -> PathBuf {
        self.tmp
            .path()
            .join(format!("node{i}-{}.err", self.starts[i]))
    }

    /// Creates node `n` (key, TLS certificate from the network's CA, a
    /// configuration without genesis, listening on `base + n`) and starts it
    /// with `comity node join` against node `via`. Returns its number.
    pub fn join_new_node(&mut self, via: usize) -> usize {
        let i = self.new_node("");
        let (url, data) = (self.url(via), self.data.display().to_string());
        self.spawn_with(i, &["--data", &data, "node", "join", "--network", &url]);
        i
    }

    /// Creates node `n`'s files (key, certificate from the network's CA, a
    /// configuration without genesis plus `extra_toml`, listening on
    /// `base + n`) without starting it. Returns its number.
    pub fn new_node(&mut self, extra_toml: &str) -> usize {
        let i = self.n;
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir).expect("node dir");
        let key = comity_core::crypto::SigningKey::generate(comity_core::crypto::Alg::EdDsa);
        let pem = key.to_pkcs8_pem();
        std::fs::write(dir.join("node.key.pem"), &pem).expect("node key");
        // Re-create the CA certificate from its key and name to issue the node's certificate.
        let ca_key = rcgen::KeyPair::from_pem(
            &std::fs::read_to_string(self.data.join("ca.key.pem")).expect("ca key"),
        )
        .expect("ca key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Comity local network CA");
        let ca = ca.self_signed(&ca_key).expect("ca");
        let node_key = rcgen::KeyPair::from_pem(&pem).expect("node key for rcgen");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = vec![rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        let cert = p.signed_by(&node_key, &ca, &ca_key).expect("node cert");
        std::fs::write(dir.join("tls.pem"), cert.pem()).expect("tls cert");
        let listen = format!("127.0.0.1:{}", self.base + i as u16);
        let toml = format!(
            "{extra_toml}listen = \"{listen}\"\ndata_dir = \"{}\"\nnode_key = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            dir.join("data").display(),
            dir.join("node.key.pem").display(),
            dir.join("tls.pem").display(),
            dir.join("node.key.pem").display()
        );
        std::fs::write(dir.join("node.toml"), toml).expect("node.toml");
        self.n += 1;
        self.children.push(None);
        self.starts.push(0);
        i
    }

    /// Starts node `i` without waiting for it.
    pub fn spawn(&mut self, i: usize) {
        self.spawn_with(i, &["node", "run"]);
    }

    fn spawn_with(&mut self, i: usize, args: &[&str]) {
        assert!(self.children[i].is_none(), "node{i} is already running");
        self.starts[i] += 1;
        let log = File::create(self.stderr_path(i)).expect("node log file");
        let child = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.node_dir(i).join("node.toml"))
            .env_remove("COMITY_LOG") // the node's default filter
            .stdin(Stdio::null())
            // The node logs to stdout: keep it with stderr for failure messages.
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn comity node run");
        self.children[i] = Some(child);
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// SIGTERM to node `i`, waiting for a clean exit.
    pub async fn stop(&mut self, i: usize) {
        // Kept in `children` until it has exited, so a failure here still
        // kills it when the cluster is dropped.
        let c = self.children[i].as_mut().expect("node running");
        super::sigterm(c.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "node{i} did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.children[i] = None;
    }

    /// `kill -9` node `i`.
    pub fn kill9(&mut self, i: usize) {
        let mut c = self.children[i].take().expect("node running");
        c.kill().expect("SIGKILL");
        c.wait().expect("wait");
    }

    /// Panics with the node's log if it has exited.
    fn check_alive(&mut self, i: usize) {
        let c = self.children[i].as_mut().expect("node running");
        if let Some(status) = c.try_wait().expect("try_wait") {
            self.children[i] = None;
            panic!(
                "node{i} exited with {status}; stderr:\n{}",
                tail(&self.stderr_path(i), 40)
            );
        }
    }

    /// Waits for node `i` to exit on its own; its exit status.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.children[i].as_mut().expect("node running");
            if let Some(status) = c.try_wait().expect("try_wait") {
                self.children[i] = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node{i} did not exit; stderr:\n{}",
                tail(&self.stderr_path(i), 40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls node `i`'s health until it answers `ok`.
    pub async fn wait_healthy(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let client = self.client(i);
        loop {
            self.check_alive(i);
            let last = match tokio::time::timeout(Duration::from_secs(5), client.health()).await {
                Ok(Ok(h)) if h.status == "ok" => return,
                Ok(Ok(h)) => format!("{h:?}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "health request timed out".into(),
            };
            if Instant::now() > deadline {
                panic!(
                    "node{i} not healthy after {timeout:?}: {last}; stderr:\n{}",
                    tail(&self.stderr_path(i), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data.join("ca.pem")).expect("read ca.pem")
    }

    /// A client of node `i` as `user0`, as an application would connect
    /// (receipts with their transactions need an identity).
    pub fn client(&self, i: usize) -> Client {
        self.client_as(i, "user0")
    }

    /// A client of node `i` presenting identity `name`'s certificate.
    pub fn client_as(&self, i: usize, name: &str) -> Client {
        let (cert, key) = self.identity_pem(name);
        Client::new(&self.url(i), &self.ca_pem(), Some((&cert, &key))).expect("client")
    }

    /// Identity `name`'s certificate and private key (PEM).
    pub fn identity_pem(&self, name: &str) -> (Vec<u8>, Vec<u8>) {
        let keys = self.data.join("keys");
        let cert = std::fs::read(keys.join(format!("{name}.cert.pem"))).expect("cert");
        let key = std::fs::read(keys.join(format!("{name}.key.pem"))).expect("key");
        (cert, key)
    }

    /// Clients of every node, as `user0`.
    pub fn clients(&self) -> Vec<Client> {
        (0..self.n).map(|i| self.client(i)).collect()
    }

    pub fn identity(&self) -> NetworkIdentity {
        let b = std::fs::read(self.data.join("network.json")).expect("network.json");
        serde_json::from_slice(&b).expect("network identity JSON")
    }

    pub fn signer(&self, name: &str) -> Signer {
        let key = self.data.join("keys").join(format!("{name}.key.pem"));
        Signer::from_pem_file(key, self.identity().network_id).expect("signer")
    }

    /// The node that node `i` says leads, as a node number.
    pub async fn leader_seen_by(&self, i: usize) -> Option<usize> {
        let h = tokio::time::timeout(Duration::from_secs(2), self.client(i).health())
            .await
            .ok()?
            .ok()?;
        let leader = h.leader?;
        let mut nodes = Vec::new();
        for j in 0..self.n {
            nodes.push(self.node_id(j));
        }
        nodes.iter().position(|id| *id == leader)
    }

    /// Node `j`'s Raft id (from its health), read once from its key.
    pub fn node_id(&self, j: usize) -> u64 {
        let pem = std::fs::read_to_string(self.node_dir(j).join("node.key.pem")).expect("node key");
        let key = comity_core::crypto::SigningKey::from_pkcs8_pem(&pem).expect("node key");
        comity_consensus_id(&key.public().fingerprint())
    }

    /// Waits until the running nodes not in `exclude` agree on a leader that
    /// is not in `exclude`; returns it.
    pub async fn wait_leader(&self, exclude: &[usize], timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> = (0..self.n)
                .filter(|i| self.is_running(*i) && !exclude.contains(i))
                .collect();
            let mut seen = Vec::new();
            for &i in &running {
                seen.push(self.leader_seen_by(i).await);
            }
            if let Some(Some(l)) = seen.first() {
                if !exclude.contains(l) && seen.iter().all(|s| s == &Some(*l)) {
                    return *l;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `comity ledger verify` against node `i`'s API.
    pub async fn ledger_verify(&self, i: usize) -> String {
        self.cli(&["ledger", "verify", "--node", &self.url(i)])
            .await
    }

    /// Runs `comity ARGS` with the network's client.json; its standard
    /// output, once it has succeeded within two minutes.
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = run_cli(&self.data, self.tmp.path(), args, Duration::from_secs(120)).await;
        assert!(
            out.status.success(),
            "comity {args:?}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        out.stdout
    }
}

/// The Raft id of a node: the first 8 bytes of its key fingerprint.
fn comity_consensus_id(fp: &[u8; 32]) -> u64 {
    u64::from_be_bytes(fp[..8].try_into().expect("8 bytes"))
}
