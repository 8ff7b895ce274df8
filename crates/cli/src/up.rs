//! `comity up`: a local network on this machine, created on first run and
//! restarted from its data directory afterwards.

use crate::config::{global, ClientJson};
use crate::keys::{new_identity, write_new};
use crate::network::{GenesisToml, IdentityToml, NodeToml};
use anyhow::{bail, Context};
use comity_apps::gov::constitution::Constitution;
use comity_core::crypto::{Alg, SigningKey};
use comity_node::config::{Limits, NodeConfig};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Client HTTPS port of the first node.
    #[arg(long, default_value_t = 8701)]
    pub port: u16,
    /// Network name used when the network is created.
    #[arg(long, default_value = "local")]
    pub name: String,
    /// Number of members created with the network (so that voting is real).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub members: u8,
    /// Number of nodes, each its own process with its own data directory and
    /// TLS certificate; node i listens on port + i (`--nodes 1` runs the
    /// single node inside this process).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub nodes: u8,
    /// Create the network's files (keys, genesis, node configurations) and
    /// exit without starting it: `comity node run --config <data>/nodeI/node.toml`
    /// then runs each node.
    #[arg(long)]
    pub init_only: bool,
}

/// Everything `up` creates, relative to the data directory.
struct Layout {
    data: PathBuf,
}

impl Layout {
    fn node_dir(&self, i: usize) -> PathBuf {
        self.data.join(format!("node{i}"))
    }
    fn node_toml(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("node.toml")
    }
    /// Nodes of an existing network (node0, node1, ... with a node.toml).
    fn existing_nodes(&self) -> usize {
        (0..).take_while(|i| self.node_toml(*i).exists()).count()
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COMITY_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,fjall=warn,lsm_tree=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

pub fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .ok()
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    init_tracing();
    let l = Layout {
        data: global().data.clone(),
    };
    let fresh = l.existing_nodes() == 0;
    if fresh {
        create(&l, &args).with_context(|| {
            format!(
                "creating a network in {} (if an earlier `comity up` there was cut short, delete the directory first)",
                l.data.display()
            )
        })?;
    } else if !l.data.join("client.json").exists() {
        // `create` writes client.json last.
        bail!(
            "{} holds a network whose creation was cut short (it has no client.json): delete the directory and run `comity up` again",
            l.data.display()
        );
    }
    if args.init_only {
        println!(
            "created {} node configurations in {}; run each with `comity node run --config <nodeI>/node.toml`",
            l.existing_nodes(),
            l.data.display()
        );
        return Ok(());
    }
    match l.existing_nodes() {
        1 => run_in_process(&l, fresh).await,
        n => supervise(&l, n, fresh).await,
    }
}

async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// One node, in this process.
async fn run_in_process(l: &Layout, fresh: bool) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(&l.node_toml(0))?;
    let node = comity_node::Node::start(cfg, install_metrics()).await?;
    wait_ready(&node).await?;
    print_summary(l, &[node.addr], fresh);
    tokio::select! {
        r = stop_signal() => r?,
        why = node.raft_stopped() => {
            let _ = node.shutdown().await;
            anyhow::bail!("Raft stopped ({why}); the node exits (a restart recovers from its Raft log)");
        }
    }
    eprintln!("\nstopping…");
    node.shutdown().await?;
    eprintln!(
        "stopped cleanly; `comity up` restarts the same network from {}",
        l.data.display()
    );
    Ok(())
}

/// Several nodes, each a `comity node run` child process that dies with
/// this one (so `kill -9` of `up` is a crash of the whole network).
async fn supervise(l: &Layout, n: usize, fresh: bool) -> anyhow::Result<()> {
    // Signals are listened for from here on: one between two waits is
    // not lost, and a second one while stopping kills the nodes at once.
    let mut stop = Stop::listen()?;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..n {
        let cfg = NodeConfig::load(&l.node_toml(i))?;
        addrs.push(cfg.listen);
        children.push(spawn_node(l, &exe, i)?);
    }
    let mut exited: Vec<Option<std::process::ExitStatus>> = vec![None; n];
    let ready = wait_network_ready(l, &addrs, &mut children, &mut exited);
    // A stop asked for while the nodes start stops them at once.
    let started = tokio::select! {
        r = ready => r.map(|()| true),
        () = stop.recv() => Ok(false),
    };
    let mut lost_majority = false;
    if let Ok(true) = started {
        print_summary(l, &addrs, fresh);
        let mut restarts: Vec<Vec<std::time::Instant>> = vec![Vec::new(); n];
        'run: while exited.iter().any(Option::is_none) {
            tokio::select! {
                () = stop.recv() => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            for i in 0..n {
                if exited[i].is_some() {
                    continue;
                }
                let Some(status) = children[i].try_wait()? else {
                    continue;
                };
                let log = l.node_dir(i).join("node.log");
                // A crash is what a restart is for; a node that keeps
                // exiting (damaged files, say) is left down.
                restarts[i].retain(|t| t.elapsed() < RESTART_WINDOW);
                if restarts[i].len() < MAX_RESTARTS {
                    restarts[i].push(std::time::Instant::now());
                    eprintln!(
                        "node{i} exited ({status}); restarting it (see {})",
                        log.display()
                    );
                    children[i] = spawn_node(l, &exe, i)?;
                    continue;
                }
                exited[i] = Some(status);
                eprintln!(
                    "node{i} exited ({status}) again, after {MAX_RESTARTS} restarts in {} minutes: not restarting it (see {})",
                    RESTART_WINDOW.as_secs() / 60,
                    log.display()
                );
                let running = exited.iter().filter(|e| e.is_none()).count();
                if running < n / 2 + 1 {
                    eprintln!("too few nodes are left to commit anything: stopping the network");
                    lost_majority = true;
                    break 'run;
                }
            }
        }
    }
    eprintln!("\nstopping…");
    for (c, _) in children
        .iter()
        .zip(&exited)
        .filter(|(_, gone)| gone.is_none())
    {
        // SAFETY: sending SIGTERM to our own child's pid, not yet reaped (a
        // reaped child's pid may be another process's by now).
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // Set by a second signal or the deadline: every node left is killed.
    let mut force = false;
    let mut killed = Vec::new();
    for (i, c) in children.iter_mut().enumerate() {
        loop {
            if let Some(status) = c.try_wait()? {
                exited[i].get_or_insert(status);
                break;
            }
            if force && !killed.contains(&i) {
                eprintln!("node{i} did not stop; killing it");
                c.kill()?;
                killed.push(i);
            }
            tokio::select! {
                () = stop.recv() => force = true,
                _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {
                    force |= std::time::Instant::now() > deadline;
                }
            }
        }
    }
    started?;
    if lost_majority {
        bail!(
            "a majority of the nodes kept exiting; see node.log in each node's directory under {}",
            l.data.display()
        );
    }
    let mut failed = Vec::new();
    for (i, st) in exited.iter().enumerate() {
        if killed.contains(&i) {
            failed.push(format!("node{i} (killed)"));
        } else if let Some(st) = st.filter(|st| !st.success()) {
            failed.push(format!("node{i} ({st})"));
        }
    }
    if !failed.is_empty() {
        bail!(
            "stopped; not cleanly: {} (see node.log in each node's directory under {})",
            failed.join(", "),
            l.data.display()
        );
    }
    eprintln!(
        "stopped cleanly; `comity up` restarts the same network from {}",
        l.data.display()
    );
    Ok(())
}

/// Starts node `i` as a `comity node run` child process.
fn spawn_node(l: &Layout, exe: &Path, i: usize) -> anyhow::Result<std::process::Child> {
    // Appended to, so the log of a node that crashed survives the restart.
    let log_path = l.node_dir(i).join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("node")
        .arg("run")
        .arg("--config")
        .arg(l.node_toml(i))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: a terminal's Ctrl-C reaches `up` alone,
    // which stops the nodes in order (a node still verifying its ledger
    // at start would otherwise die of it).
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it asks the kernel to SIGKILL
    // the child when this thread (the main thread, which lives as long as
    // `up`) exits.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("starting node{i}"))
}

/// A node that exits is restarted, unless this many restarts of it fall
/// within [`RESTART_WINDOW`].
const MAX_RESTARTS: usize = 3;
const RESTART_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// SIGINT and SIGTERM, listened for once for the whole run.
struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> anyhow::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Waits until every node still running is healthy and a checkpoint is
/// final, noting in `exited` the nodes that exit meanwhile: a minority may
/// fail (a node refusing damaged files, say) and the others still serve.
/// Fails once a majority has exited. Past 60 s it keeps waiting while a
/// majority runs, saying which nodes it waits for every 30 s.
async fn wait_network_ready(
    l: &Layout,
    addrs: &[SocketAddr],
    children: &mut [std::process::Child],
    exited: &mut [Option<std::process::ExitStatus>],
) -> anyhow::Result<()> {
    let ca_path = l.data.join("ca.pem");
    let ca = std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
    let clients = addrs
        .iter()
        .map(|a| comity_client::Client::new(&format!("https://{a}"), &ca, None))
        .collect::<Result<Vec<_>, _>>()?;
    let majority = children.len() / 2 + 1;
    let mut next_notice = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        for (i, c) in children.iter_mut().enumerate() {
            if let (None, Some(status)) = (exited[i], c.try_wait()?) {
                exited[i] = Some(status);
                eprintln!(
                    "node{i} exited ({status}) while starting; see {}",
                    l.node_dir(i).join("node.log").display()
                );
            }
        }
        let running: Vec<usize> = (0..children.len())
            .filter(|i| exited[*i].is_none())
            .collect();
        if running.len() < majority {
            anyhow::bail!(
                "{} of {} nodes exited while starting: too few are left to commit; see the node logs in {}",
                children.len() - running.len(),
                children.len(),
                l.data.display()
            );
        }
        let mut waiting = Vec::new();
        for &i in &running {
            if !matches!(clients[i].health().await, Ok(h) if h.status == "ok") {
                waiting.push(format!("node{i}"));
            }
        }
        if waiting.is_empty() && clients[running[0]].checkpoint().await.is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > next_notice {
            eprintln!(
                "still waiting for {} to be ready (a large ledger is verified at start); see the node logs in {}",
                if waiting.is_empty() { "a final checkpoint".to_string() } else { waiting.join(", ") },
                l.data.display()
            );
            next_notice = std::time::Instant::now() + std::time::Duration::from_secs(30);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn wait_ready(node: &comity_node::Node) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let ready = node.shared.is_leader()
            && comity_apps::query::latest_final(&node.shared.store.read()?)?.is_some();
        if ready {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the node did not become ready within 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn print_summary(l: &Layout, addrs: &[SocketAddr], fresh: bool) {
    let d = l.data.display();
    println!(
        "Comity is running{}: {} node{}.",
        if fresh { " (new network)" } else { "" },
        addrs.len(),
        if addrs.len() == 1 { "" } else { "s" }
    );
    for (i, a) in addrs.iter().enumerate() {
        println!("  node{i} API       https://{a}");
    }
    println!("  network identity {d}/network.json");
    println!("  TLS CA          {d}/ca.pem");
    let members = std::fs::read_dir(l.data.join("keys"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("member") && name.ends_with(".key.pem")
                })
                .count()
        })
        .unwrap_or(0);
    println!("  member keys     {d}/keys/member*.key.pem ({members} members vote on changes)");
    println!("  user key        {d}/keys/user0.key.pem");
    println!("  node data       {d}/node*/data (logs: {d}/node*/node.log)");
    println!("Try:  comity kv put hello world && comity kv get hello --verify");
    println!(
        "      comity status    curl --cacert {d}/ca.pem https://{}/v1/health",
        addrs[0]
    );
    println!("Ctrl-C stops the network.");
}

fn create(l: &Layout, args: &UpArgs) -> anyhow::Result<()> {
    // Checked before anything is written: a half-made network would be
    // taken for an existing one by the next `up`.
    let last_port = u32::from(args.port) + u32::from(args.nodes).saturating_sub(1);
    if args.port == 0 || last_port > u32::from(u16::MAX) {
        bail!(
            "--port {} with {} node(s): the ports (port to port + nodes - 1) must lie in 1..=65535",
            args.port,
            args.nodes
        );
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&l.data)?;
    let keys = l.data.join("keys");
    let members = (0..args.members)
        .map(|i| new_identity(&keys, &format!("member{i}"), Alg::EdDsa))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let member = &members[0];
    let user = new_identity(&keys, "user0", Alg::EdDsa)?;

    // A local CA for the nodes' TLS certificates; clients trust ca.pem.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("Comity {} network CA", args.name),
    );
    let ca = ca_params.self_signed(&ca_key)?;
    write_new(
        &l.data.join("ca.key.pem"),
        ca_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(&l.data.join("ca.pem"), ca.pem().as_bytes(), 0o644)?;

    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut nodes = Vec::new();
    for i in 0..usize::from(args.nodes) {
        let nd = l.node_dir(i);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&nd)?;
        let node_key = SigningKey::generate(Alg::EdDsa);
        let pem = node_key.to_pkcs8_pem();
        write_new(&nd.join("node.key.pem"), pem.as_bytes(), 0o600)?;
        // The TLS certificate is for the node key itself: peers recognise each other by it.
        let tls_key = rcgen::KeyPair::from_pem(&pem)?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = vec![
            rcgen::SanType::DnsName("localhost".try_into()?),
            rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("comity node{i}"));
        let tls_cert = p.signed_by(&tls_key, &ca, &ca_key)?;
        write_new(&nd.join("tls.pem"), tls_cert.pem().as_bytes(), 0o644)?;
        let listen = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            args.port
                .checked_add(i as u16)
                .context("port + node number is over 65535")?,
        );
        let cfg = NodeConfig {
            listen,
            data_dir: abs(&nd.join("data")),
            node_key: abs(&nd.join("node.key.pem")),
            tls_cert: abs(&nd.join("tls.pem")),
            tls_key: abs(&nd.join("node.key.pem")),
            genesis: Some(abs(&l.data.join("genesis.cbor"))),
            peer_bind: None,
            recovery: None,
            limits: Limits::default(),
        };
        write_new(
            &l.node_toml(i),
            toml::to_string_pretty(&cfg)?.as_bytes(),
            0o600,
        )?;
        nodes.push(NodeToml {
            key: PathBuf::from(format!("node{i}/node.key.pem")),
            member: format!("member{}", i % members.len()),
            name: Some(format!("node{i}")),
            address: Some(listen.to_string()),
            data: BTreeMap::new(),
        });
    }

    let genesis = GenesisToml {
        name: args.name.clone(),
        open: true,
        members: members
            .iter()
            .enumerate()
            .map(|(i, _)| IdentityToml {
                name: format!("member{i}"),
                cert: PathBuf::from(format!("keys/member{i}.cert.pem")),
                data: BTreeMap::from([("org".to_string(), format!("Local member {i}"))]),
            })
            .collect(),
        users: vec![IdentityToml {
            name: "user0".into(),
            cert: PathBuf::from("keys/user0.cert.pem"),
            data: BTreeMap::new(),
        }],
        nodes,
        config: Default::default(),
        constitution: Some(Constitution::default()),
    };
    let genesis_toml = l.data.join("genesis.toml");
    write_new(
        &genesis_toml,
        toml::to_string_pretty(&genesis)?.as_bytes(),
        0o644,
    )?;
    crate::network::init(&genesis_toml, &l.data)?;

    // Everything written so far is durable before client.json marks the
    // network whole.
    for dir in std::iter::once(l.data.join("keys"))
        .chain((0..args.nodes).map(|i| l.node_dir(usize::from(i))))
    {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    let s = |p: PathBuf| Some(abs(&p).display().to_string());
    ClientJson {
        url: Some(format!("https://127.0.0.1:{}", args.port)),
        nodes: (0..u16::from(args.nodes))
            .map(|i| format!("https://127.0.0.1:{}", args.port + i))
            .collect(),
        ca: s(l.data.join("ca.pem")),
        network: s(l.data.join("network.json")),
        key: s(user.key_path.clone()),
        cert: s(user.cert_path.clone()),
        member_key: s(member.key_path.clone()),
        member_cert: s(member.cert_path.clone()),
    }
    .write(&l.data)?;
    // Last: client.json marks the network whole (see `run`).
    std::fs::File::open(&l.data)?.sync_all()?;
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
