//! `comity recovery`: restart a network whose majority of nodes is lost for
//! good, from a surviving ledger copy, with a new node set, by a decision a
//! majority of the members sign. See docs/operations.md, "Disaster recovery".

use crate::keys::inspect;
use anyhow::{bail, Context};
use comity_apps::query;
use comity_core::checkpoint;
use comity_core::crypto::{PublicKey, SigningKey};
use comity_core::network::{NodeInfo, NodeSet};
use comity_core::recovery::{self, Recovery, MEMBER_KEYS_STATE_KEY, RECOVERY_CONTENT_TYPE};
use comity_store::Store;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand, Debug)]
pub enum RecoveryCmd {
    /// Write an unsigned decision from a stopped surviving node's data directory.
    Prepare {
        /// The surviving node's data directory (its `data_dir`); the node must be stopped.
        #[arg(long)]
        from: PathBuf,
        /// The new node set (TOML: [[nodes]] key, member, address).
        #[arg(long)]
        nodes: PathBuf,
        /// Why the network is recovered (recorded on the ledger).
        #[arg(long)]
        reason: String,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Add a member's signature to a decision file: signed with --key (the
    /// member's current key, required here) as --identity if that key was
    /// rotated in [default: the key's fingerprint].
    Sign { decision: PathBuf },
    /// Show a decision: what it restarts from, the new nodes, who signed.
    Show { decision: PathBuf },
    /// Seed a new node's data directory from the surviving copy (ledger and
    /// state; a fresh Raft log). Run once per node of the new set.
    Seed {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodesToml {
    nodes: Vec<NewNode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNode {
    /// The node's key or certificate (PEM); relative to the TOML file.
    key: PathBuf,
    /// Hex id of the member operating it.
    member: String,
    /// host:port where its peers reach it.
    address: String,
}

pub fn run(cmd: RecoveryCmd) -> anyhow::Result<()> {
    match cmd {
        RecoveryCmd::Prepare {
            from,
            nodes,
            reason,
            out,
        } => prepare(&from, &nodes, &reason, &out),
        RecoveryCmd::Sign { decision } => {
            let g = crate::config::global();
            let key = g
                .key
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("pass the member's current key with --key <PEM>"))?;
            sign(&decision, key, g.identity.as_deref())
        }
        RecoveryCmd::Show { decision } => show(&decision),
        RecoveryCmd::Seed { from, to } => seed(&from, &to),
    }
}

fn open(data_dir: &Path) -> anyhow::Result<Store> {
    let (store, _) = Store::open(
        &data_dir.join("ledger"),
        comity_store::segments::DEFAULT_ROLL_BYTES,
    )
    .with_context(|| {
        format!(
            "opening the ledger in {} (is its node stopped?)",
            data_dir.display()
        )
    })?;
    Ok(store)
}

fn hash_hex(s: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .with_context(|| format!("{s:?} is not a 64-hex-digit id"))
}

fn prepare(from: &Path, nodes: &Path, reason: &str, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(nodes).with_context(|| format!("reading {}", nodes.display()))?;
    let spec: NodesToml = toml::from_str(&text).with_context(|| format!("{}", nodes.display()))?;
    let base = nodes.parent().unwrap_or(Path::new("."));
    let mut set = Vec::new();
    let mut addresses = Vec::new();
    for n in &spec.nodes {
        let path = base.join(&n.key);
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let key: PublicKey = inspect(&pem)
            .with_context(|| format!("{}", path.display()))?
            .public;
        set.push(NodeInfo {
            id: key.fingerprint(),
            member: hash_hex(&n.member)?,
            key: key.to_spki_der(),
        });
        addresses.push(n.address.clone());
    }
    if set.is_empty() {
        bail!("{}: the new node set is empty", nodes.display());
    }
    let store = open(from)?;
    let r = store.read()?;
    let set = NodeSet(set);
    if let Err((_, why)) = comity_apps::recovery::check_new_nodes(&r, &set)? {
        bail!("{}: {why}", nodes.display());
    }
    let size = r.ledger_len()?;
    let network_id = comity_node::network_identity(&store)?
        .context("the surviving copy has no genesis")?
        .network_id;
    let cp = query::latest_final(&r)?.context("the surviving copy has no final checkpoint")?;
    if cp.chain.is_none() {
        bail!("the surviving copy's latest checkpoint lacks endorsements of a node-set change");
    }
    let proved = query::proved_state(&store, MEMBER_KEYS_STATE_KEY)?
        .context("no final checkpoint to prove the member keys against")?;
    let members = proved.value.context(
        "the surviving copy's state has no member keys (a ledger older than this build?)",
    )?;
    let decision = Recovery {
        network_id,
        size,
        tx_root: store.tree_root_at(size)?,
        checkpoint: query::checkpoint_cose(&cp),
        members,
        members_proof: proved.proof,
        nodes: set,
        addresses,
        reason: reason.to_string(),
    };
    let signed = checkpoint::signed_statement(RECOVERY_CONTENT_TYPE, &decision.to_cbor(), &[]);
    crate::keys::write_new(out, &signed, 0o644)?;
    println!(
        "wrote {}: continue network {} from its {size} entries (checkpoint {} of size {}) with {} nodes.\n\
         Each member signs it with `comity recovery sign {} --key <member key>`; a majority is needed, including the operator of every node it names.",
        out.display(),
        hex::encode(network_id),
        cp.checkpoint.seq,
        cp.checkpoint.size,
        decision.nodes.0.len(),
        out.display()
    );
    Ok(())
}

fn sign(path: &Path, key: &Path, id: Option<&str>) -> anyhow::Result<()> {
    let signed = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (sign, r) = recovery::parse(&signed)?;
    let key_path = key;
    let pem = std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let key = SigningKey::from_pkcs8_pem(&pem)?;
    let id = match id {
        Some(h) => hash_hex(h)?,
        None => key.public().fingerprint(),
    };
    let members = recovery::MemberKeys::from_cbor(&r.members)?;
    match members.0.iter().find(|(m, _)| *m == id) {
        Some((_, k)) if *k == key.public().to_spki_der() => {}
        Some(_) => bail!(
            "{} is not the current key of member {}",
            key_path.display(),
            hex::encode(id)
        ),
        None => bail!(
            "{} is not an active member in the surviving copy (pass --identity if the key was rotated)",
            hex::encode(id)
        ),
    }
    let body = r.to_cbor();
    let mut sigs: Vec<Vec<u8>> = recovery::signatures(&sign)
        .into_iter()
        .filter(|s| {
            checkpoint::parse_signature(s)
                .ok()
                .and_then(|p| checkpoint::signer(&p).ok())
                != Some(id)
        })
        .collect();
    sigs.push(checkpoint::sign(RECOVERY_CONTENT_TYPE, &body, &key, &id));
    // Replaced whole (written beside it, synced, renamed over it): a crash
    // mid-write must not lose the signatures collected so far.
    let tmp = path.with_extension("signing");
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(&checkpoint::signed_statement(
            RECOVERY_CONTENT_TYPE,
            &body,
            &sigs,
        ))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    println!(
        "signed as {}; {} signature(s) now",
        hex::encode(id),
        sigs.len()
    );
    Ok(())
}

fn show(path: &Path) -> anyhow::Result<()> {
    let signed = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (sign, r) = recovery::parse(&signed)?;
    println!("network   {}", hex::encode(r.network_id));
    println!(
        "continues from {} entries (root {})",
        r.size,
        hex::encode(r.tx_root)
    );
    println!("reason    {}", r.reason);
    for (n, a) in r.nodes.0.iter().zip(&r.addresses) {
        println!(
            "node      {} at {a} (member {})",
            hex::encode(n.id),
            hex::encode(n.member)
        );
    }
    let members = recovery::MemberKeys::from_cbor(&r.members)?;
    let body = r.to_cbor();
    let mut valid = std::collections::BTreeSet::new();
    for s in &sign.signatures {
        let id = checkpoint::signer(s)?;
        let ok = members.0.iter().any(|(m, k)| {
            *m == id
                && PublicKey::from_spki_der(k)
                    .is_ok_and(|k| checkpoint::verify(RECOVERY_CONTENT_TYPE, &body, s, &k).is_ok())
        });
        if ok {
            valid.insert(id);
        }
        println!(
            "signed by {}{}",
            hex::encode(id),
            if ok {
                ""
            } else {
                "  (NOT a valid member signature)"
            }
        );
    }
    let needed = members.0.len() / 2 + 1;
    let unsigned: std::collections::BTreeSet<_> = r
        .nodes
        .0
        .iter()
        .map(|n| n.member)
        .filter(|m| !valid.contains(m))
        .collect();
    for m in &unsigned {
        println!(
            "operator  {} runs a node of the new set and must sign too",
            hex::encode(m)
        );
    }
    println!(
        "{} valid member signature(s) of {needed} needed ({} active members in the surviving copy){}",
        valid.len(),
        members.0.len(),
        if valid.len() >= needed && unsigned.is_empty() {
            ": ready"
        } else {
            ""
        }
    );
    Ok(())
}

fn seed(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.join("ledger").exists() {
        bail!("{} already has a ledger", to.display());
    }
    if to.join("raft").exists() {
        // The new group's log would continue an old one under the copy.
        bail!(
            "{} has a Raft log: seed into a new, empty data directory",
            to.display()
        );
    }
    // A running node changes its files while they are copied: the copy
    // would be torn. Its state database holds this lock while it runs.
    let lock = from.join("ledger").join("state").join("lock");
    let held = std::fs::File::open(&lock)
        .with_context(|| format!("{}: not a node's data directory", from.display()))?;
    if let Err(std::fs::TryLockError::WouldBlock) = held.try_lock() {
        bail!(
            "{} is in use by a running node: stop it before seeding from its copy",
            from.display()
        );
    }
    // The copy is made and prepared aside, then renamed into place: a
    // seed cut short by a crash leaves no ledger a node would start from
    // (with the old group's Raft position), and can be run again.
    let staging = to.join("ledger.seeding");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing an unfinished copy {}", staging.display()))?;
    }
    let seeded = || -> anyhow::Result<u64> {
        copy_dir(&from.join("ledger"), &staging)?;
        let (store, _) = Store::open(&staging, comity_store::segments::DEFAULT_ROLL_BYTES)
            .with_context(|| format!("opening the copy in {}", staging.display()))?;
        if let Some(seq) = comity_apps::node::diverged_at(&store.read()?)? {
            bail!(
                "{}: nodes of a quorum of members signed checkpoint {seq} with other roots than this copy computed; its state is not the one they agreed to: seed from another survivor's copy",
                from.display()
            );
        }
        comity_consensus::state_machine::forget_raft_log(&store)?;
        let len = store.read()?.ledger_len()?;
        drop(store);
        std::fs::rename(&staging, to.join("ledger"))?;
        std::fs::File::open(to)?.sync_all()?;
        // `to` itself may have been made by this seed.
        if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(len)
    };
    let len = seeded().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&staging);
    })?;
    println!(
        "seeded {} from {} ({len} entries); start the node with `recovery = \"<decision>\"` in its configuration",
        to.display(),
        from.display(),
    );
    Ok(())
}

/// Copies a directory tree durably (files, then each directory's entries,
/// fsynced): the seeded store records the copied ledger's length as durable.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)
                .and_then(|_| std::fs::File::open(&dest)?.sync_all())
                .with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    for dir in [Some(to), to.parent()].into_iter().flatten() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}
