//! `comity up`: a local network on this machine, created on first run and
//! restarted from its data directory afterwards.

use crate::config::{global, ClientJson};
use crate::keys::{new_identity, write_new};
use crate::network::{GenesisToml, IdentityToml, NodeToml};
use anyhow::Context;
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
}

/// Everything `up` creates, relative to the data directory.
struct Layout {
    data: PathBuf,
}

impl Layout {
    fn node_dir(&self) -> PathBuf {
        self.data.join("node0")
    }
    fn node_toml(&self) -> PathBuf {
        self.node_dir().join("node.toml")
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COMITY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
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
    let fresh = !l.node_toml().exists();
    if fresh {
        create(&l, &args).with_context(|| format!("creating a network in {}", l.data.display()))?;
    }
    let cfg = NodeConfig::load(&l.node_toml())?;
    let node = comity_node::Node::start(cfg, install_metrics()).await?;
    wait_ready(&node).await?;
    print_summary(&l, &node, fresh);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    eprintln!("\nstopping…");
    node.shutdown().await?;
    eprintln!(
        "stopped cleanly; `comity up` restarts the same network from {}",
        l.data.display()
    );
    Ok(())
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

fn print_summary(l: &Layout, node: &comity_node::Node, fresh: bool) {
    let d = l.data.display();
    println!(
        "Comity is running{}.",
        if fresh { " (new network)" } else { "" }
    );
    println!("  node API        https://{}", node.addr);
    println!("  network identity {d}/network.json");
    println!("  TLS CA          {d}/ca.pem");
    println!("  member keys     {d}/keys/member*.key.pem (three members vote on changes)");
    println!("  user key        {d}/keys/user0.key.pem");
    println!("  node data       {d}/node0/data");
    println!("Try:  comity kv put hello world && comity kv get hello --verify");
    println!(
        "      curl --cacert {d}/ca.pem https://{}/v1/health",
        node.addr
    );
    println!("Ctrl-C stops the network.");
}

fn create(l: &Layout, args: &UpArgs) -> anyhow::Result<()> {
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

    let nd = l.node_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&nd)?;
    let node_key = SigningKey::generate(Alg::EdDsa);
    write_new(
        &nd.join("node.key.pem"),
        node_key.to_pkcs8_pem().as_bytes(),
        0o600,
    )?;
    let tls_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.subject_alt_names = vec![
        rcgen::SanType::DnsName("localhost".try_into()?),
        rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "comity node0");
    let tls_cert = p.signed_by(&tls_key, &ca, &ca_key)?;
    write_new(
        &nd.join("tls.key.pem"),
        tls_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_new(&nd.join("tls.pem"), tls_cert.pem().as_bytes(), 0o644)?;

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
        nodes: vec![NodeToml {
            key: PathBuf::from("node0/node.key.pem"),
            member: "member0".into(),
        }],
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

    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let cfg = NodeConfig {
        id: 1,
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.port),
        data_dir: abs(&nd.join("data")),
        node_key: abs(&nd.join("node.key.pem")),
        tls_cert: abs(&nd.join("tls.pem")),
        tls_key: abs(&nd.join("tls.key.pem")),
        genesis: Some(abs(&l.data.join("genesis.cbor"))),
        limits: Limits::default(),
    };
    write_new(
        &l.node_toml(),
        toml::to_string_pretty(&cfg)?.as_bytes(),
        0o600,
    )?;

    let s = |p: PathBuf| Some(abs(&p).display().to_string());
    ClientJson {
        url: Some(format!("https://127.0.0.1:{}", args.port)),
        ca: s(l.data.join("ca.pem")),
        network: s(l.data.join("network.json")),
        key: s(user.key_path.clone()),
        cert: s(user.cert_path.clone()),
        member_key: s(member.key_path.clone()),
        member_cert: s(member.cert_path.clone()),
    }
    .write(&l.data)?;
    Ok(())
}

use std::os::unix::fs::DirBuilderExt;
