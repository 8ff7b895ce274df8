//! `comity node run` and `comity node join`: one node, configured by a TOML
//! file, for deployments on separate machines.

use crate::config::{parse_hash, Config, Global};
use crate::up::{init_tracing, install_metrics};
use anyhow::Context;
use comity_client::TxState;
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
    /// Join a running network: learn its trusted nodes from one of them, ask
    /// to join (a `node.join` request signed by the node key), then run,
    /// waiting until members trust this node by a vote.
    Join {
        /// Node configuration (TOML, without `genesis`).
        #[arg(long)]
        config: std::path::PathBuf,
        /// URL of any node of the network (its CA is `--ca`).
        #[arg(long, value_name = "URL")]
        network: String,
        /// Id of the member operating this node (default: client.json's member).
        #[arg(long, value_name = "HEX")]
        member: Option<String>,
        /// host:port where the other nodes reach this one (default: the
        /// `listen` address, unless that is a wildcard).
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<String>,
        /// Display name (default: "node" and the start of its id).
        #[arg(long)]
        name: Option<String>,
    },
}

pub async fn run(g: &Global, args: NodeArgs) -> anyhow::Result<()> {
    init_tracing();
    let config = match args.cmd {
        NodeCmd::Run { config } => config,
        NodeCmd::Join {
            config,
            network,
            member,
            address,
            name,
        } => {
            let request = Request {
                member,
                address,
                name,
            };
            join(g, &config, &network, request).await?;
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
        why = node.raft_stopped() => {
            let _ = node.shutdown().await;
            anyhow::bail!("Raft stopped ({why}); the node exits (a restart recovers from its Raft log)");
        }
    }
    node.shutdown().await
}

/// What `node join` asks for; unset fields take their defaults.
struct Request {
    member: Option<String>,
    address: Option<String>,
    name: Option<String>,
}

/// Records the network's trusted nodes for this node and asks to join.
async fn join(
    g: &Global,
    config: &std::path::Path,
    url: &str,
    request: Request,
) -> anyhow::Result<()> {
    let cfg = NodeConfig::load(config)?;
    if cfg.genesis.is_some() {
        anyhow::bail!(
            "{}: a joining node has no `genesis`; remove it",
            config.display()
        );
    }
    let client_cfg = Config::load(g)?;
    let member = match (&request.member, &client_cfg.member_key) {
        (Some(hex), _) => parse_hash(hex).context("--member")?,
        (None, Some(key)) => key_id(key)?,
        (None, None) => anyhow::bail!(
            "pass --member <id of the member operating this node> (no client.json member here)"
        ),
    };
    // A wildcard listen address is not where peers can reach this node.
    let address = match request.address {
        Some(a) => a,
        None if cfg.listen.ip().is_unspecified() => anyhow::bail!(
            "{}: `listen` is {}, which peers cannot dial; pass --address <host:port>",
            config.display(),
            cfg.listen
        ),
        None => cfg.listen.to_string(),
    };
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
    if let Some(joined) = comity_node::join::load(&cfg.data_dir)? {
        if joined.network_id != nodes.network_id {
            anyhow::bail!(
                "{url} serves network {}, but this node joined network {} ({}): join that network, or empty {} to join another",
                hex::encode(nodes.network_id),
                hex::encode(joined.network_id),
                cfg.data_dir.join("join.json").display(),
                cfg.data_dir.display()
            );
        }
    } else {
        comity_node::join::save(
            &cfg.data_dir,
            &Join {
                network_id: nodes.network_id,
                nodes: nodes.nodes.clone(),
            },
        )?;
    }
    let signer = comity_client::Signer::from_pem_file(&cfg.node_key, nodes.network_id)?;
    let id = hex::encode(signer.id);
    let name = request
        .name
        .unwrap_or_else(|| format!("node {}", &id[..12]));
    let data = [("address".to_string(), address)].into();
    let request = signer.node_join(&member, &name, &data);
    // `already_exists`: pending or trusted already (`join` run again, or
    // the vote came first), refused at submission or, after a race, at apply.
    let known = comity_apps::codes::ALREADY_EXISTS;
    match client.submit(&request, true).await {
        Ok(st) if st.status != TxState::Rejected => eprintln!(
            "node {id} asked to join network {} ({} trusted nodes) for member {}.\n\
             It stays pending until members trust it; the member proposes:\n  \
             comity gov propose node.trust --id {id}\n\
             and once the vote passes the leader adds it to the Raft group and sends it the ledger.",
            hex::encode(nodes.network_id),
            nodes.nodes.0.len(),
            hex::encode(member),
        ),
        Ok(st) if st.outcome.as_deref() == Some(known) => eprintln!("{}", already(&id)),
        Ok(st) => anyhow::bail!(
            "the join request of node {id} was rejected: {}",
            st.outcome.as_deref().unwrap_or("no outcome")
        ),
        Err(e) if e.code() == Some(known) => eprintln!("{} ({e})", already(&id)),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("sending the join request to {url}")))
        }
    }
    Ok(())
}

/// What `join` says of a node the network knows already.
fn already(id: &str) -> String {
    format!(
        "node {id} is already known to the network (pending or trusted); running it. A \
         pending request stays as it was: members may correct its address when trusting it \
         (comity gov propose node.trust --id {id} --info address=HOST:PORT)"
    )
}

/// The identity id of the key in a PEM file.
fn key_id(path: &std::path::Path) -> anyhow::Result<comity_core::Hash> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(crate::keys::inspect(&pem)?.public.fingerprint())
}
