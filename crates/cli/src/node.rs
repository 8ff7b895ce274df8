//! `comity node run` and `comity node join`: one node, configured by a TOML
//! file, for deployments on separate machines.

use crate::config::{Config, Global};
use crate::up::{init_tracing, install_metrics};
use anyhow::Context;
use comity_node::config::NodeConfig;
use comity_node::join::Join;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub cmd: NodeCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeCmd {
    /// Run a node until Ctrl-C or SIGTERM.
    Run {
        /// Node configuration (TOML; see docs/operations.md).
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// Join a running network: learn its trusted nodes from one of them, then
    /// run, waiting until members trust this node by a vote.
    Join {
        /// Node configuration (TOML, without `genesis`).
        #[arg(long)]
        config: std::path::PathBuf,
        /// URL of any node of the network (its CA is `--ca`).
        #[arg(long, value_name = "URL")]
        network: String,
    },
}

pub async fn run(g: &Global, args: NodeArgs) -> anyhow::Result<()> {
    init_tracing();
    let config = match args.cmd {
        NodeCmd::Run { config } => config,
        NodeCmd::Join { config, network } => {
            join(g, &config, &network).await?;
            config
        }
    };
    let cfg = NodeConfig::load(&config)?;
    let node = comity_node::Node::start(cfg, install_metrics()).await?;
    println!("node listening on https://{}", node.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    node.shutdown().await
}

/// Records the network's trusted nodes for this node and says how members trust it.
async fn join(g: &Global, config: &std::path::Path, url: &str) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(config)?;
    if cfg.genesis.is_some() {
        anyhow::bail!(
            "{}: a joining node has no `genesis`; remove it",
            config.display()
        );
    }
    let client_cfg = Config::load(g)?;
    let client = client_cfg.public_client_of(url)?;
    let nodes = client
        .trusted_nodes()
        .await
        .with_context(|| format!("asking {url} for the network's nodes"))?;
    if let Some(local) = client_cfg.local_network_identity()? {
        if local.network_id != nodes.network_id {
            anyhow::bail!(
                "{url} serves network {}, but the local network identity is {}",
                hex::encode(nodes.network_id),
                hex::encode(local.network_id)
            );
        }
    }
    if comity_node::join::load(&cfg.data_dir)?.is_none() {
        comity_node::join::save(
            &cfg.data_dir,
            &Join {
                network_id: nodes.network_id,
                nodes: nodes.nodes.clone(),
            },
        )?;
    }
    let pem = std::fs::read_to_string(&cfg.node_key)
        .with_context(|| format!("reading {}", cfg.node_key.display()))?;
    let id = comity_core::crypto::SigningKey::from_pkcs8_pem(&pem)?
        .public()
        .fingerprint();
    eprintln!(
        "node {} joins network {} ({} trusted nodes).\n\
         It stays pending until members trust it; a member proposes:\n  \
         comity gov propose node.trust --certificate {} --member <operating member> --info address={}\n\
         and once the vote passes the leader adds it to the Raft group and sends it the ledger.",
        hex::encode(id),
        hex::encode(nodes.network_id),
        nodes.nodes.0.len(),
        cfg.tls_cert.display(),
        // A wildcard listen address is not where peers can reach this node.
        if cfg.listen.ip().is_unspecified() {
            format!("<this host>:{}", cfg.listen.port())
        } else {
            cfg.listen.to_string()
        }
    );
    Ok(())
}
