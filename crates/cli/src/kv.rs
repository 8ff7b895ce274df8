//! `comity kv`: the key-value application.

use crate::config::{fmt_time, parse_hash, show_bytes, stale_checkpoint_warning, Config, Global};
use anyhow::{bail, Context};
use clap::{ArgGroup, Subcommand};
use comity_client::verify::verify_kv_read;
use comity_client::{Client, KvRead, TxState, TxStatus};
use comity_core::Hash;
use std::io::Write;
use std::path::PathBuf;

// Positional keys are named `kv_key` because `key` is the global --key flag.
#[derive(Subcommand, Debug)]
pub enum KvCmd {
    /// Write VALUE (or the bytes of --file) under KEY; waits for the commit.
    #[command(group(ArgGroup::new("src").required(true).args(["value", "file"])))]
    Put {
        #[arg(value_name = "KEY", id = "kv_key")]
        key: String,
        /// The value, as text.
        value: Option<String>,
        /// Read the value from this file instead.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Return once the node accepted the transaction, without waiting for the commit.
        #[arg(long)]
        no_wait: bool,
    },
    /// Read KEY as of the latest final checkpoint (needs a registered identity's certificate).
    /// Each identity has a key space of its own; members may read another's with --owner.
    Get {
        #[arg(value_name = "KEY", id = "kv_key")]
        key: String,
        /// Identity id (hex) whose key to read [default: the reader's own].
        #[arg(long, value_name = "ID", value_parser = parse_hash)]
        owner: Option<Hash>,
        /// Check the checkpoint's signatures against the network identity and the state proof.
        #[arg(long)]
        verify: bool,
        /// Write only the raw value bytes to stdout.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// Print the node's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List every version of KEY, oldest first (fetched a page at a time).
    History {
        #[arg(value_name = "KEY", id = "kv_key")]
        key: String,
        /// Identity id (hex) whose key to list [default: the reader's own].
        #[arg(long, value_name = "ID", value_parser = parse_hash)]
        owner: Option<Hash>,
        /// Print the node's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Delete KEY (rejected with not_found if absent); waits for the commit.
    Delete {
        #[arg(value_name = "KEY", id = "kv_key")]
        key: String,
        #[arg(long)]
        no_wait: bool,
    },
}

pub async fn run(g: &Global, cmd: KvCmd) -> anyhow::Result<()> {
    let cfg = Config::load(g)?;
    match cmd {
        KvCmd::Put {
            key,
            value,
            file,
            no_wait,
        } => {
            let value = match (value, file) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?
                }
                _ => bail!("give either VALUE or --file"),
            };
            check_key(&key)?;
            if value.len() > 64 * 1024 {
                bail!(
                    "value is {} bytes; the kv application accepts at most 64 KiB",
                    value.len()
                );
            }
            let client = cfg.client()?;
            let signer = cfg.signer(cfg.network_id(&client).await?)?;
            let st = client
                .submit(&signer.kv_put(&key, &value), !no_wait)
                .await?;
            report(&format!("put {key:?} ({} bytes)", value.len()), &st)
        }
        KvCmd::Delete { key, no_wait } => {
            check_key(&key)?;
            let client = cfg.client()?;
            let signer = cfg.signer(cfg.network_id(&client).await?)?;
            let st = client.submit(&signer.kv_delete(&key), !no_wait).await?;
            report(&format!("delete {key:?}"), &st)
        }
        KvCmd::Get {
            key,
            owner,
            verify,
            raw,
            json,
        } => {
            let client = authed_client(&cfg)?;
            let mut r = client.kv_get(owner.as_ref(), &key).await?;
            // A write moments ago may not be under a final checkpoint yet: give
            // the next checkpoint a moment, so the proved value is the latest.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while r.value != r.latest_value && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                r = client.kv_get(owner.as_ref(), &key).await?;
            }
            if r.key != key || owner.is_some_and(|o| o != r.owner) {
                bail!(
                    "asked for {key:?}, the node answered for {:?} of {}",
                    r.key,
                    hex::encode(r.owner)
                );
            }
            let verdict = if verify {
                match verify_read(&cfg, &client, owner, &r).await {
                    // Nothing unverified is written where a program reads it.
                    Err(e) if raw || json => return Err(e.context("verification FAILED")),
                    v => Some(v),
                }
            } else {
                None
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if raw {
                if let Some(v) = &r.value {
                    std::io::stdout().write_all(v)?;
                }
            } else {
                print_read(&r);
            }
            match verdict {
                Some(Ok(lines)) => {
                    for l in lines {
                        // Keep stdout to the value alone when it is meant for a program.
                        if raw || json {
                            eprintln!("{l}");
                        } else {
                            println!("{l}");
                        }
                    }
                }
                Some(Err(e)) => return Err(e.context("verification FAILED")),
                None => {}
            }
            if r.value.is_none() && raw {
                bail!("{key:?} is absent at checkpoint {}", r.checkpoint.seq);
            }
            Ok(())
        }
        KvCmd::History { key, owner, json } => {
            let client = authed_client(&cfg)?;
            let owner = owner.as_ref();
            let mut h = client.kv_history(owner, &key, None).await?;
            while let Some(after) = h.next {
                let page = client.kv_history(owner, &key, Some(after)).await?;
                if page.versions.first().is_none_or(|v| v.index <= after) {
                    bail!("the node's history page after index {after} does not move on");
                }
                h.versions.extend(page.versions);
                h.next = page.next;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&h)?);
                return Ok(());
            }
            if h.versions.is_empty() {
                println!("{key:?} has no history");
            }
            for v in &h.versions {
                let what = match &v.value {
                    Some(b) => show_bytes(b),
                    None => "(deleted)".to_string(),
                };
                println!(
                    "index {:>8}  {}  tx {}  {what}",
                    v.index,
                    fmt_time(v.time),
                    hex::encode(v.tx)
                );
            }
            Ok(())
        }
    }
}

fn check_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty() || key.len() > 256 {
        bail!("keys are 1 to 256 bytes of text");
    }
    Ok(())
}

fn authed_client(cfg: &Config) -> anyhow::Result<Client> {
    if cfg.identity_files().is_none() {
        eprintln!(
            "note: no client certificate configured (--key and --cert); the node will refuse private reads"
        );
    }
    cfg.client()
}

/// Prints a write's result; a rejection is an error.
pub(crate) fn report(what: &str, st: &TxStatus) -> anyhow::Result<()> {
    let id = hex::encode(st.id);
    match st.status {
        TxState::Committed => {
            println!(
                "committed {what} at ledger index {}{}",
                st.index.map_or("?".into(), |i| i.to_string()),
                st.ledger_time
                    .map_or(String::new(), |t| format!(", ledger time {}", fmt_time(t)))
            );
            println!("  tx: {id}");
            Ok(())
        }
        TxState::Rejected => bail!(
            "{what} was recorded at ledger index {} but rejected: {} (tx {id})",
            st.index.map_or("?".into(), |i| i.to_string()),
            st.outcome.as_deref().unwrap_or("?")
        ),
        TxState::Pending => {
            println!("accepted {what}, not yet committed");
            println!("  tx: {id}  (check with `comity tx status {id}`)");
            Ok(())
        }
        TxState::Unknown => bail!("node answered status unknown for {what} (tx {id})"),
    }
}

fn print_read(r: &KvRead) {
    let cp = &r.checkpoint;
    match &r.value {
        Some(v) => println!("{:?} = {}", r.key, show_bytes(v)),
        None => println!("{:?} is absent", r.key),
    }
    println!(
        "  as of checkpoint {} (tree size {}, {})",
        cp.seq,
        cp.size,
        fmt_time(cp.time)
    );
    if r.latest_value != r.value {
        match &r.latest_value {
            Some(v) => println!("  newer, not yet checkpointed: {}", show_bytes(v)),
            None => println!("  newer, not yet checkpointed: (absent)"),
        }
    }
}

/// Checks a proved read of `owner`'s key (the reader's own if `None`);
/// returns lines describing what was proved.
async fn verify_read(
    cfg: &Config,
    client: &Client,
    owner: Option<Hash>,
    r: &KvRead,
) -> anyhow::Result<Vec<String>> {
    let (identity, source) = match cfg.local_network_identity()? {
        Some(n) => (n, "local network identity"),
        None => (
            client.network_identity().await?,
            "network identity served by the node (not independent)",
        ),
    };
    let cp = &r.checkpoint;
    // The state key is derived here from the requested owner and key, never taken from the node.
    let (owner, derived) = match owner {
        Some(o) => (o, false),
        None => (cfg.signer(identity.network_id)?.id, true),
    };
    let state_key = comity_apps::keys::kv(&owner, &r.key);
    let v = verify_kv_read(r, &identity, &state_key).map_err(|e| {
        let hint = if derived && owner != r.owner {
            // The reader's id is its key's hash unless --identity says otherwise.
            " (this key's identity was taken to be its fingerprint: after a key rotation pass --identity)"
        } else {
            ""
        };
        anyhow::anyhow!("{e}{hint}")
    })?;
    let mut lines = vec![
        format!(
            "verified: checkpoint {} (size {}) signed by {} node(s) of {} member(s), quorum {} (against the {source})",
            cp.seq,
            cp.size,
            v.signers.len(),
            v.members,
            v.quorum
        ),
        format!(
            "verified: state proof that {:?} {} under state root {}",
            r.key,
            match &r.value {
                Some(b) => format!("= {}", show_bytes(b)),
                None => "is absent".to_string(),
            },
            hex::encode(cp.state_root)
        ),
    ];
    lines.extend(stale_checkpoint_warning(cp.time));
    Ok(lines)
}
