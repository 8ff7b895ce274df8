//! `comity ledger verify`: an auditor's full replay of a ledger, from a
//! directory of ledger files or from a node's API.

use crate::config::{global, read_network_identity, Config};
use anyhow::{bail, Context};
use comity_apps::audit::Audit;
use comity_store::LedgerFiles;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct LedgerArgs {
    #[command(subcommand)]
    pub cmd: LedgerCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum LedgerCmd {
    /// Replay a ledger from genesis: recompute every hash, outcome, state
    /// root and checkpoint signature; report the first discrepancy, and any
    /// node caught signing two different checkpoints.
    Verify {
        /// A node's ledger directory (its `data/ledger/ledger`); read from a copy, never modified.
        #[arg(long, conflicts_with = "node")]
        dir: Option<PathBuf>,
        /// Fetch the ledger from this node's API instead [default: the
        /// configured node], read as client.json's member (members are shown
        /// every transaction) unless --key is given.
        #[arg(long)]
        node: Option<String>,
        /// Network identity to check the genesis against [default: from client.json].
        #[arg(long)]
        network_identity: Option<PathBuf>,
    },
}

pub async fn run(args: LedgerArgs) -> anyhow::Result<()> {
    let LedgerCmd::Verify {
        dir,
        node,
        network_identity,
    } = args.cmd;
    let scratch = tempfile::tempdir()?;
    let mut audit =
        Audit::new(scratch.path()).context("creating scratch storage for the replay")?;
    let t0 = std::time::Instant::now();
    match dir {
        Some(dir) => {
            // Work on a copy: opening ledger files may cut an unsynced torn tail.
            let copy = scratch.path().join("source");
            std::fs::create_dir_all(&copy)?;
            for e in
                std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
            {
                let e = e?;
                std::fs::copy(e.path(), copy.join(e.file_name()))?;
            }
            let mut err = None;
            let (files, report) = LedgerFiles::open(
                &copy,
                0,
                comity_store::segments::DEFAULT_ROLL_BYTES,
                |i, rec| {
                    if err.is_none() {
                        if let Err(e) = audit.feed(i, rec) {
                            err = Some(e);
                        }
                        progress(i, t0);
                    }
                    Ok::<(), std::io::Error>(())
                },
            )
            .with_context(|| format!("ledger files in {}", dir.display()))?;
            if let Some(e) = err {
                bail!("FAILED: {e}");
            }
            println!("read {} entries from {}", files.len(), dir.display());
            if report.discarded_tail_bytes > 0 {
                // A copy of a running node's files may end mid-write; damage
                // looks the same. Either way the audit stops short of it.
                println!(
                    "WARNING: the last ledger file ends in {} bytes that are not whole, intact records \
                     (a write torn by a crash or a copy taken mid-write, or damage): entries from {} on \
                     were not audited",
                    report.discarded_tail_bytes,
                    files.len()
                );
            }
        }
        None => {
            let mut g = global().clone();
            if node.is_some() {
                g.node = node;
            }
            // Entries carry transactions: the node shows every one only to
            // members (users not other identities' notary and kv transactions), so
            // an audit reads as the member of client.json unless --key says
            // otherwise.
            let config = Config::load(&g)?;
            let client = match config.member_client()? {
                Some(member) if g.key.is_none() => member,
                _ => config.client()?,
            };
            let size = client.ledger_size().await?.size;
            let mut i = 0;
            while i < size {
                let page = client.entries(i, 1000).await?;
                if page.is_empty() {
                    bail!("the node returned no entries at {i} of {size}");
                }
                for rec in page {
                    if rec.body.is_empty() {
                        bail!(
                            "the node withholds the transaction of entry {i} from this identity \
                             (another identity's notary or kv transaction): audit as a member"
                        );
                    }
                    audit
                        .feed(i, &rec.to_cbor())
                        .map_err(|e| anyhow::anyhow!("FAILED: {e}"))?;
                    progress(i, t0);
                    i += 1;
                }
            }
            println!("fetched {size} entries from {}", client.url());
        }
    }
    let s = audit.finish().map_err(|e| anyhow::anyhow!("FAILED: {e}"))?;
    let identity = match network_identity {
        Some(p) => Some(read_network_identity(&p)?),
        None => Config::load(global())
            .ok()
            .and_then(|c| c.local_network_identity().ok().flatten()),
    };
    match (&identity, s.network_id) {
        (Some(id), Some(net)) if id.network_id != net => bail!(
            "FAILED: the ledger's genesis hash {} is not the network id {}",
            hex::encode(net),
            hex::encode(id.network_id)
        ),
        (Some(_), None) => bail!("FAILED: the ledger has no genesis entry"),
        _ => {}
    }
    println!(
        "OK: replayed {} entries in {:.1} s",
        s.entries,
        t0.elapsed().as_secs_f64()
    );
    println!(
        "  network id        {}",
        s.network_id
            .map(hex::encode)
            .unwrap_or_else(|| "(no genesis)".into())
    );
    println!(
        "  transactions      {} ({} rejected, each recorded with its error)",
        s.transactions, s.rejected
    );
    println!(
        "  checkpoints       {} (every state root recomputed)",
        s.checkpoints
    );
    println!(
        "  node signatures   {} (each verified against the node's key)",
        s.checkpoint_signatures
    );
    println!("  ledger root       {}", hex::encode(s.tx_root));
    if let Some(r) = s.last_state_root {
        println!("  last state root   {}", hex::encode(r));
    }
    if identity.is_some() {
        println!("  genesis matches the network identity");
    } else {
        println!(
            "  genesis NOT checked: no network identity (pass --network-identity); \
             a ledger begun from another genesis would replay too"
        );
    }
    println!(
        "  final             entries 0..{} are under a final checkpoint (signed by nodes of a \
         quorum of members){}",
        s.final_size,
        match s.entries.saturating_sub(s.final_size) {
            0 => String::new(),
            n => format!("; the last {n} are not yet, and rest on this copy alone"),
        }
    );
    for (index, node, seq) in &s.faulty_signatures {
        println!(
            "  WARNING: entry {index}: node {} signed checkpoint #{seq} over roots that replay \
             does not reproduce (no quorum signed them: a faulty node, not a faulty ledger)",
            hex::encode(node)
        );
    }
    if s.evidence.is_empty() {
        println!("  evidence          none: no node signed two different checkpoints");
    } else {
        println!(
            "  evidence          {} node signature(s) conflict with an earlier one (both verified):",
            s.evidence.len()
        );
        for (node, seq) in &s.evidence {
            println!(
                "    node {} signed two different checkpoints #{seq}",
                hex::encode(node)
            );
        }
    }
    Ok(())
}

/// A line on stderr every 100,000 entries, so long audits show they are alive.
fn progress(i: u64, t0: std::time::Instant) {
    if i > 0 && i.is_multiple_of(100_000) {
        eprintln!(
            "  … {i} entries replayed ({:.0} s)",
            t0.elapsed().as_secs_f64()
        );
    }
}
