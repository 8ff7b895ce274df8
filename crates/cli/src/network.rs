//! `comity network init`: a network's genesis from a TOML file naming its
//! members (by certificate), users, nodes, constitution and configuration.

use crate::keys::write_new;
use anyhow::{bail, Context};
use clap::Subcommand;
use comity_apps::genesis::{node_info, NodeMeta};
use comity_apps::gov::action::ConfigChange;
use comity_apps::gov::constitution::Constitution;
use comity_apps::{Config, Genesis, IdentitySpec};
use comity_core::network::{NetworkIdentity, NodeSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create genesis.cbor and network.json from a genesis TOML file.
    Init {
        /// The genesis file (see docs/governance.md for its format).
        #[arg(long, value_name = "FILE")]
        genesis: PathBuf,
        /// Directory for genesis.cbor and network.json [default: the genesis file's directory]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// The genesis file. Paths are relative to the file's directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisToml {
    pub name: String,
    /// Whether users may transact from the start.
    #[serde(default = "yes")]
    pub open: bool,
    pub members: Vec<IdentityToml>,
    #[serde(default)]
    pub users: Vec<IdentityToml>,
    pub nodes: Vec<NodeToml>,
    #[serde(default)]
    pub config: ConfigChange,
    #[serde(default)]
    pub constitution: Option<Constitution>,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityToml {
    pub name: String,
    /// Certificate (or public or private key) PEM.
    pub cert: PathBuf,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeToml {
    /// The node's signing key: certificate, public or private key PEM.
    pub key: PathBuf,
    /// Name of the member that operates it.
    pub member: String,
    /// The node's name (default `node<i>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Where the other nodes reach it (`host:port` of its HTTPS listener);
    /// required when the network has more than one node.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

pub fn run(cmd: NetworkCmd) -> anyhow::Result<()> {
    let NetworkCmd::Init { genesis, out } = cmd;
    let out = match out {
        Some(o) => o,
        None => genesis.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let (g, identity) = init(&genesis, &out)?;
    println!("created network {:?}", g.name);
    println!("  network id:       {}", hex::encode(identity.network_id));
    println!("  members:          {}", g.members.len());
    println!("  nodes:            {}", g.nodes.0.len());
    println!("  genesis:          {}", out.join("genesis.cbor").display());
    println!("  network identity: {}", out.join("network.json").display());
    Ok(())
}

fn public_key(base: &Path, file: &Path) -> anyhow::Result<Vec<u8>> {
    let path = base.join(file);
    let pem =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(crate::keys::inspect(&pem)
        .with_context(|| format!("{}", path.display()))?
        .public
        .to_spki_der())
}

/// Builds the genesis from `file`, writes genesis.cbor and network.json in `out`.
pub fn init(file: &Path, out: &Path) -> anyhow::Result<(Genesis, NetworkIdentity)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let t: GenesisToml = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid genesis file", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    let spec = |i: &IdentityToml| -> anyhow::Result<IdentitySpec> {
        let mut s = IdentitySpec::new(public_key(base, &i.cert)?, &i.name);
        s.data = i.data.clone();
        Ok(s)
    };
    let members = t
        .members
        .iter()
        .map(spec)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let users = t
        .users
        .iter()
        .map(spec)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut nodes = Vec::new();
    let mut node_meta = Vec::new();
    for (i, n) in t.nodes.iter().enumerate() {
        let Some(m) = members.iter().find(|m| m.name == n.member) else {
            bail!(
                "node {} names member {:?}, which is not in [[members]]",
                n.key.display(),
                n.member
            );
        };
        let key = comity_core::crypto::PublicKey::from_spki_der(&public_key(base, &n.key)?)?;
        nodes.push(node_info(&key, comity_core::crypto::sha256(&m.key)));
        let mut data = n.data.clone();
        match &n.address {
            Some(a) => {
                data.insert(comity_apps::genesis::ADDRESS.into(), a.clone());
            }
            None if t.nodes.len() > 1 => {
                bail!(
                    "node {} needs an `address` (host:port) so that the other nodes can reach it",
                    n.key.display()
                )
            }
            None => {}
        }
        node_meta.push(NodeMeta {
            name: n.name.clone().unwrap_or_else(|| format!("node{i}")),
            data,
        });
    }
    let config = Config::default()
        .apply(&t.config)
        .map_err(|e| anyhow::anyhow!("[config]: {e}"))?;
    let mut g = Genesis::new(
        &t.name,
        comity_node::ingress::now_ms(),
        members,
        users,
        NodeSet(nodes),
    );
    g.node_meta = node_meta;
    g.config = config;
    g.open = t.open;
    if let Some(c) = t.constitution {
        g.constitution = c;
    }
    let doc = g.to_cbor();
    // Parsing back applies every check a node will make at genesis.
    Genesis::from_cbor(&doc).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let identity = NetworkIdentity {
        name: g.name.clone(),
        network_id: g.network_id(),
        nodes: g.nodes.clone(),
    };
    std::fs::create_dir_all(out)?;
    write_new(&out.join("genesis.cbor"), &doc, 0o644)?;
    write_new(
        &out.join("network.json"),
        &serde_json::to_vec_pretty(&identity)?,
        0o644,
    )?;
    Ok((g, identity))
}
