//! `comity gov`: propose, vote, withdraw, acknowledge, and read governance.
//! Transactions are signed with `--key` if given, else the member key of
//! client.json.

use crate::config::{fmt_time, parse_hash, Config, Global};
use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use comity_apps::gov::action::Action;
use comity_apps::gov::constitution::Constitution;
use comity_client::{Client, Signer, TxState};
use comity_core::cbor;
use comity_core::Hash;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum GovCmd {
    /// Propose one action (or several with --actions); proposing counts as your approval.
    Propose(Box<ProposeArgs>),
    /// Vote on an open proposal.
    Vote {
        proposal: String,
        #[arg(value_enum)]
        vote: VoteArg,
    },
    /// Withdraw your own open proposal.
    Withdraw { proposal: String },
    /// Turn down a pending node's join request that names you as its
    /// operator: no vote is needed, the node is retired and its key may not ask again.
    Dismiss {
        /// The pending node's id (`comity gov list nodes`).
        #[arg(value_name = "NODE_ID")]
        id: String,
    },
    /// As a newly added member, accept the current constitution and become active.
    Ack,
    /// Show a proposal: its actions, ballots and outcome.
    Show {
        proposal: String,
        /// Print the node's JSON document instead.
        #[arg(long)]
        json: bool,
    },
    /// List proposals, members, users or nodes.
    List {
        #[arg(value_enum, default_value_t = ListWhat::Proposals)]
        what: ListWhat,
        /// Only proposals in this state (open, accepted, rejected, withdrawn, expired, failed).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the constitution in force and its digest.
    Constitution,
    /// The ledger entries that changed an identity, a proposal, or
    /// `constitution`, `config`, `network`, `protocol`; receipts are verified offline.
    History { subject: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VoteArg {
    Approve,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListWhat {
    Proposals,
    Members,
    Users,
    Nodes,
}

#[derive(clap::Args, Debug)]
pub struct ProposeArgs {
    /// The action, e.g. member.add, user.remove, constitution.set, config.set, network.close.
    pub action: Option<String>,
    /// Certificate or key PEM of the identity to add, the node to trust, or the new key.
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
    /// Id of the identity acted on; for node.trust without --certificate, a
    /// node that asked to join (its request supplies key, member, name and data).
    #[arg(long)]
    pub id: Option<String>,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Descriptive data, e.g. --info org="Bank Four plc" (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub info: Vec<String>,
    /// Operating member of a node to trust.
    #[arg(long)]
    pub member: Option<String>,
    /// A constitution (TOML or JSON) for constitution.set.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Numeric settings for config.set and protocol.switch, e.g. --set checkpoint_ms=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// A JSON file with a list of {"action", "args"} objects, instead of one action.
    #[arg(long, value_name = "FILE", conflicts_with = "action")]
    pub actions: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub description: String,
}

fn pairs(list: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for kv in list {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("{kv:?}: expected KEY=VALUE"))?;
        m.insert(k.trim().to_string(), Value::String(v.to_string()));
    }
    Ok(m)
}

fn key_hex(path: &Path) -> anyhow::Result<String> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(
        crate::keys::inspect(&pem)?.public.to_spki_der(),
    ))
}

fn need<'a, T>(v: &'a Option<T>, flag: &str, action: &str) -> anyhow::Result<&'a T> {
    v.as_ref().with_context(|| format!("{action} needs {flag}"))
}

/// Builds the action's `{action, args}` document from the flags and, for
/// `node.trust --id`, the pending node's record (`joining`).
fn action_json(a: &ProposeArgs, action: &str, joining: Option<&Value>) -> anyhow::Result<Value> {
    let data = Value::Object(pairs(&a.info)?);
    let name = |cert: &Path| -> String {
        a.name.clone().unwrap_or_else(|| {
            cert.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.split('.').next().unwrap_or(n).to_string())
                .unwrap_or_default()
        })
    };
    let args = match action {
        "member.add" | "user.add" => {
            let cert = need(&a.certificate, "--certificate", action)?;
            json!({"key": key_hex(cert)?, "name": name(cert), "data": data})
        }
        "member.remove" | "user.remove" | "node.retire" => {
            json!({"id": need(&a.id, "--id", action)?})
        }
        "member.set_data" | "user.set_data" => json!({
            "id": need(&a.id, "--id", action)?,
            "name": need(&a.name, "--name", action)?,
            "data": data,
        }),
        "node.trust" => match (&a.certificate, joining) {
            (Some(cert), _) => {
                let mut v = json!({
                    "key": key_hex(cert)?,
                    "member": need(&a.member, "--member", action)?,
                    "data": data,
                });
                if let Some(n) = &a.name {
                    v["name"] = json!(n);
                }
                v
            }
            // A node that asked to join: its request fills what flags leave
            // out, but not its operator, which only the operator's approval binds.
            (None, Some(node)) => {
                if let Some(m) = &a.member {
                    if node["operator"].as_str() != Some(hex::encode(parse_hash(m)?).as_str()) {
                        bail!(
                            "node {} asked to join for member {}; --member cannot change that",
                            node["id"].as_str().unwrap_or("?"),
                            node["operator"].as_str().unwrap_or("?")
                        );
                    }
                }
                let mut merged = node["data"].as_object().cloned().unwrap_or_default();
                merged.extend(pairs(&a.info)?);
                json!({
                    "key": node["keys"][0]["key"],
                    "member": node["operator"],
                    "name": a.name.as_deref().map_or(node["name"].clone(), |n| json!(n)),
                    "data": merged,
                })
            }
            (None, None) => {
                bail!("node.trust needs --certificate, or --id of a node that asked to join")
            }
        },
        "identity.rotate_key" => json!({
            "id": need(&a.id, "--id", action)?,
            "key": key_hex(need(&a.certificate, "--certificate", action)?)?,
        }),
        "constitution.set" => {
            let f = need(&a.file, "--file", action)?;
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let c: Constitution = if f.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text)?
            } else {
                toml::from_str(&text)?
            };
            serde_json::to_value(c)?
        }
        "config.set" | "protocol.switch" => {
            let mut m = Map::new();
            for (k, v) in pairs(&a.set)? {
                let n: u64 = v
                    .as_str()
                    .unwrap_or_default()
                    .replace('_', "")
                    .parse()
                    .with_context(|| format!("--set {k}: expected a whole number"))?;
                m.insert(k, json!(n));
            }
            Value::Object(m)
        }
        "network.open" | "network.close" => return Ok(json!({ "action": action })),
        other => bail!(
            "unknown action {other:?}; one of {}",
            comity_apps::gov::action::ACTION_NAMES.join(", ")
        ),
    };
    Ok(json!({"action": action, "args": args}))
}

fn actions(a: &ProposeArgs, joining: Option<&Value>) -> anyhow::Result<Vec<Action>> {
    let docs: Vec<Value> = match (&a.actions, &a.action) {
        (Some(f), _) => serde_json::from_slice(
            &std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        )
        .with_context(|| format!("{}: expected a JSON list of actions", f.display()))?,
        (None, Some(action)) => vec![action_json(a, action, joining)?],
        (None, None) => bail!("name an action, or pass --actions FILE"),
    };
    docs.into_iter()
        .map(|d| {
            serde_json::from_value::<Action>(d).map_err(|e| anyhow::anyhow!("invalid action: {e}"))
        })
        .collect()
}

/// The member signer: `--key` if given, else client.json's member key.
fn signer(g: &Global, cfg: &Config, net: Hash) -> anyhow::Result<Signer> {
    match &g.key {
        Some(k) => cfg.key_signer(k, net),
        None => cfg.member_signer(net),
    }
}

/// A client for governance reads, authenticated as the signing member if its
/// certificate sits beside its key, else as client.json's identity.
pub(crate) fn read_client(g: &Global, cfg: &Config) -> anyhow::Result<Client> {
    if let (Some(k), None) = (&g.key, &g.cert) {
        let cert = PathBuf::from(k.to_string_lossy().replace(".key.pem", ".cert.pem"));
        let mut cfg = cfg.clone();
        if cert.exists() && cert != *k {
            cfg.cert = Some(cert);
        } else {
            let defaults = Global {
                key: None,
                cert: None,
                ..g.clone()
            };
            cfg = Config::load(&defaults)?;
        }
        return cfg.client();
    }
    cfg.client()
}

/// The record of a node that asked to join (`comity node join`).
async fn pending_node(client: &Client, id: &str) -> anyhow::Result<Value> {
    let id = hex::encode(parse_hash(id)?);
    let v = client.gov_get(&["identities", &id], &[]).await?;
    let node = &v["identity"];
    if node["role"] != "node" || node["status"] != "pending" {
        bail!(
            "{id} is a {} {}, not a node waiting to join",
            node["status"].as_str().unwrap_or("?"),
            node["role"].as_str().unwrap_or("?")
        );
    }
    Ok(node.clone())
}

async fn submit(client: &Client, tx: &[u8], what: &str) -> anyhow::Result<Hash> {
    let st = client.submit(tx, true).await?;
    crate::kv::report(what, &st)?;
    if st.status != TxState::Committed {
        bail!("{what} is not committed yet");
    }
    Ok(st.id)
}

pub async fn run(g: &Global, cmd: GovCmd) -> anyhow::Result<()> {
    let cfg = Config::load(g)?;
    let client = read_client(g, &cfg)?;
    match cmd {
        GovCmd::Propose(a) => {
            let joining = match (a.action.as_deref(), &a.certificate, &a.id) {
                (Some("node.trust"), None, Some(id)) => Some(pending_node(&client, id).await?),
                _ => None,
            };
            let acts = actions(&a, joining.as_ref())?;
            let net = cfg.network_id(&client).await?;
            let s = signer(g, &cfg, net)?;
            let tx = s.gov_propose(cbor::from_serde(&acts)?, &a.description);
            let id = submit(&client, &tx, "proposal").await?;
            print_proposal(&client, &id).await
        }
        GovCmd::Vote { proposal, vote } => {
            let id = parse_hash(&proposal)?;
            let net = cfg.network_id(&client).await?;
            let tx = signer(g, &cfg, net)?.gov_vote(&id, vote == VoteArg::Approve);
            submit(&client, &tx, "ballot").await?;
            match print_proposal(&client, &id).await {
                // A member's approval of its own key's rotation decides it:
                // the key just voted with reads no more.
                Err(e) if client_forbidden(&e) => {
                    println!(
                        "(the proposal cannot be read with this key any more: if it rotated this key, sign with the new one, with --identity)"
                    );
                    Ok(())
                }
                r => r,
            }
        }
        GovCmd::Withdraw { proposal } => {
            let id = parse_hash(&proposal)?;
            let net = cfg.network_id(&client).await?;
            let tx = signer(g, &cfg, net)?.gov_withdraw(&id);
            submit(&client, &tx, "withdrawal").await?;
            print_proposal(&client, &id).await
        }
        GovCmd::Dismiss { id } => {
            let node = parse_hash(&id)?;
            let net = cfg.network_id(&client).await?;
            let tx = signer(g, &cfg, net)?.gov_dismiss(&node);
            submit(&client, &tx, "dismissal").await?;
            println!("node {id} is dismissed: its request no longer waits, and its key may not ask again");
            Ok(())
        }
        GovCmd::Ack => {
            let c = client.gov_get(&["constitution"], &[]).await?;
            let digest = parse_hash(c["digest"].as_str().unwrap_or_default())?;
            let net = cfg.network_id(&client).await?;
            let tx = signer(g, &cfg, net)?.gov_ack(&digest);
            submit(&client, &tx, "acknowledgement").await?;
            println!(
                "accepted constitution version {} ({})",
                c["version"],
                hex::encode(digest)
            );
            Ok(())
        }
        GovCmd::Show { proposal, json } => {
            let id = parse_hash(&proposal)?;
            if json {
                let v = client
                    .gov_get(&["proposals", &hex::encode(id)], &[])
                    .await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            print_proposal(&client, &id).await
        }
        GovCmd::List { what, state, json } => list(&client, what, state, json).await,
        GovCmd::Constitution => {
            let c = client.gov_get(&["constitution"], &[]).await?;
            println!(
                "constitution version {}, digest {}",
                c["version"],
                c["digest"].as_str().unwrap_or("?")
            );
            println!("{}", serde_json::to_string_pretty(&c["constitution"])?);
            Ok(())
        }
        GovCmd::History { subject } => history(&cfg, &client, &subject).await,
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(16)]
}

/// Whether `e` is the node's 403: the caller's key may not read.
fn client_forbidden(e: &anyhow::Error) -> bool {
    e.downcast_ref::<comity_client::ClientError>()
        .and_then(|c| c.status())
        == Some(403)
}

async fn print_proposal(client: &Client, id: &Hash) -> anyhow::Result<()> {
    let v = client
        .gov_get(&["proposals", &hex::encode(id)], &[])
        .await?;
    let p = &v["proposal"];
    println!("proposal {}", p["id"].as_str().unwrap_or("?"));
    println!("  state:       {}", p["state"].as_str().unwrap_or("?"));
    println!("  proposer:    {}", p["proposer"].as_str().unwrap_or("?"));
    if let Some(d) = p["description"].as_str().filter(|d| !d.is_empty()) {
        println!("  description: {d}");
    }
    println!(
        "  proposed:    ledger index {}, {}",
        p["index"],
        fmt_time(p["created"].as_u64().unwrap_or(0))
    );
    println!(
        "  expires:     {}",
        fmt_time(p["expires"].as_u64().unwrap_or(0))
    );
    for a in p["actions"].as_array().into_iter().flatten() {
        println!(
            "  action:      {} {}",
            a["action"].as_str().unwrap_or("?"),
            a.get("args").map(Value::to_string).unwrap_or_default()
        );
    }
    for b in p["ballots"].as_array().into_iter().flatten() {
        println!(
            "  ballot:      {} {} (ledger index {})",
            short(b["member"].as_str().unwrap_or("?")),
            b["vote"].as_str().unwrap_or("?"),
            b["index"]
        );
    }
    if let Some(r) = p.get("resolved") {
        println!(
            "  resolved:    ledger index {}, {}",
            r["index"],
            fmt_time(r["time"].as_u64().unwrap_or(0))
        );
        if let Some(why) = r["reason"].as_str() {
            println!("  reason:      {why}");
        }
    }
    Ok(())
}

async fn list(
    client: &Client,
    what: ListWhat,
    state: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (path, query) = match what {
        ListWhat::Proposals => (
            "proposals",
            state.map(|s| vec![("state", s)]).unwrap_or_default(),
        ),
        ListWhat::Members => ("members", vec![]),
        ListWhat::Users => ("users", vec![]),
        ListWhat::Nodes => ("nodes", vec![]),
    };
    let cursor = match what {
        ListWhat::Proposals => "from",
        _ => "after",
    };
    let items = all_items(client, &[path], query, cursor).await?;
    if json {
        let v = json!({ "items": items });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if items.is_empty() {
        println!("(none)");
    }
    for i in items {
        match what {
            ListWhat::Proposals => println!(
                "{}  {:<9} {}  by {}",
                i["id"].as_str().unwrap_or("?"),
                i["state"].as_str().unwrap_or("?"),
                action_summary(&i["actions"]),
                short(i["proposer"].as_str().unwrap_or("?")),
            ),
            _ => println!(
                "{}  {:<8} {}{}{}",
                i["id"].as_str().unwrap_or("?"),
                i["status"].as_str().unwrap_or("?"),
                i["name"].as_str().unwrap_or("?"),
                i["operator"]
                    .as_str()
                    .map(|m| format!("  (member {})", short(m)))
                    .unwrap_or_default(),
                i["data"]
                    .as_object()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!("  {}", Value::Object(d.clone())))
                    .unwrap_or_default(),
            ),
        }
    }
    Ok(())
}

/// "user.add ×64, network.close": each action once, with its count.
fn action_summary(actions: &Value) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for a in actions.as_array().into_iter().flatten() {
        let name = a["action"].as_str().unwrap_or("?");
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .iter()
        .map(|(n, c)| {
            if *c > 1 {
                format!("{n} ×{c}")
            } else {
                n.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every item of a paged governance listing: follows each page's `next`,
/// passed back as the `cursor` parameter, to the last page.
async fn all_items(
    client: &Client,
    path: &[&str],
    mut query: Vec<(&str, String)>,
    cursor: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut last = None;
    loop {
        let v = client.gov_get(path, &query).await?;
        items.extend(v["items"].as_array().cloned().unwrap_or_default());
        let next = match &v["next"] {
            Value::Null => return Ok(items),
            Value::String(s) => s.clone(),
            n => n.to_string(),
        };
        if last.as_ref() == Some(&next) {
            bail!(
                "the node's {} listing does not move on past {next}",
                path.join("/")
            );
        }
        query.retain(|(k, _)| *k != cursor);
        query.push((cursor, next.clone()));
        last = Some(next);
    }
}

async fn history(cfg: &Config, client: &Client, subject: &str) -> anyhow::Result<()> {
    let items = all_items(client, &["history", subject], Vec::new(), "after").await?;
    let identity = match cfg.local_network_identity()? {
        Some(i) => Some(i),
        None => {
            eprintln!("note: no local network identity; checking receipts against the genesis the node serves");
            client.network_identity().await.ok()
        }
    };
    if items.is_empty() {
        println!("no ledger entries changed {subject}");
    }
    let mut invalid = 0;
    for i in items {
        let receipt = match (i["receipt"].as_str(), &identity) {
            (Some(r), Some(id)) => {
                let bytes = hex::decode(r).context("receipt is not hex")?;
                // The receipt must prove this very entry, not just some entry.
                let proves = |v: &comity_core::receipt::Verified| {
                    let signer = v.leaf.signer.as_ref().map(|(id, _)| hex::encode(id));
                    i["index"].as_u64() == Some(v.leaf.index)
                        && i["time"].as_u64() == Some(v.leaf.time)
                        && i["outcome"].as_str() == Some(v.leaf.outcome.code())
                        && i["tx"].as_str() == Some(hex::encode(v.leaf.digest).as_str())
                        && i["signer"].as_str() == signer.as_deref()
                };
                match comity_client::verify::verify_receipt(&bytes, id) {
                    Ok(v) if proves(&v) => "receipt verified".to_string(),
                    Ok(v) => {
                        invalid += 1;
                        format!(
                            "RECEIPT INVALID: it proves entry {} ({}), not this one",
                            v.leaf.index,
                            v.leaf.outcome.code()
                        )
                    }
                    Err(e) => {
                        invalid += 1;
                        format!("RECEIPT INVALID: {e}")
                    }
                }
            }
            (None, _) => "receipt pending".to_string(),
            (Some(_), None) => "receipt not checked (no network identity)".to_string(),
        };
        println!(
            "{:>8}  {}  {:<16} {:<8} by {}  {}",
            i["index"],
            fmt_time(i["time"].as_u64().unwrap_or(0)),
            i["op"].as_str().unwrap_or("?"),
            i["outcome"].as_str().unwrap_or("?"),
            short(i["signer"].as_str().unwrap_or("?")),
            receipt
        );
    }
    if invalid > 0 {
        bail!("{invalid} receipt(s) did not verify");
    }
    Ok(())
}
