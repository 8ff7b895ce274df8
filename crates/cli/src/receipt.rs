//! `comity receipt`: fetch receipts, and verify them offline with `comity_core` alone.

use crate::config::{fmt_time, parse_hash, read_network_identity, Config, Global};
use anyhow::{bail, Context};
use clap::Subcommand;
use comity_core::cbor::{MapView, Value};
use comity_core::crypto::{sha256, PublicKey};
use comity_core::entry::{EntryKind, Outcome};
use comity_core::network::NetworkIdentity;
use comity_core::receipt::{node_set_at, Receipt, Verified};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum ReceiptCmd {
    /// Download the receipt of a transaction.
    Get {
        /// Transaction id (hex).
        id: String,
        /// Where to write it [default: <id>.receipt.cose]
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: Option<PathBuf>,
        /// Poll until the receipt is available (its checkpoint is final).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Verify a receipt offline against a network identity; with --file, also
    /// check that the document is what the transaction recorded.
    Verify {
        #[arg(long, value_name = "FILE")]
        receipt: PathBuf,
        /// The network identity JSON you trust (not fetched from any node).
        #[arg(long, value_name = "FILE")]
        network_identity: PathBuf,
        /// A document whose bytes must equal the transaction's kv value, or
        /// whose SHA-256 must equal its `digest` argument.
        #[arg(long, value_name = "DOC")]
        file: Option<PathBuf>,
    },
}

pub async fn run(g: &Global, cmd: ReceiptCmd) -> anyhow::Result<()> {
    match cmd {
        ReceiptCmd::Get {
            id,
            out,
            wait,
            timeout_secs,
        } => {
            let cfg = Config::load(g)?;
            let hash = parse_hash(&id)?;
            // With an identity the receipt carries the transaction too.
            let client = cfg.client()?;
            let bytes = if wait {
                client
                    .wait_receipt(
                        &hash,
                        Duration::from_millis(100),
                        Duration::from_secs(timeout_secs),
                    )
                    .await?
            } else {
                match client.receipt(&hash).await? {
                    Some(b) => b,
                    None => bail!(
                        "the receipt is not available yet (its checkpoint is not final); retry, or pass --wait"
                    ),
                }
            };
            let out =
                out.unwrap_or_else(|| PathBuf::from(format!("{}.receipt.cose", hex::encode(hash))));
            // Checked before it is written: a receipt that does not verify is not kept.
            let verified = match cfg.local_network_identity()? {
                Some(identity) => {
                    // A valid receipt of another transaction is no receipt of this one.
                    let v = comity_client::verify::verify_receipt_for(&bytes, &identity, &hash)
                        .context("the downloaded receipt does NOT verify; not written")?;
                    Some(format!(
                        "verified against {}: ledger index {}, checkpoint {}, {} member(s) signed",
                        cfg.network.as_deref().unwrap_or(Path::new("?")).display(),
                        v.leaf.index,
                        v.checkpoint.seq,
                        v.members
                    ))
                }
                None => None,
            };
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote the receipt of tx {} ({} bytes) to {}",
                hex::encode(hash),
                bytes.len(),
                out.display()
            );
            match verified {
                Some(line) => println!("{line}"),
                None => println!(
                    "not verified: no local network identity (check it with `comity receipt verify --network-identity FILE`)"
                ),
            }
            Ok(())
        }
        ReceiptCmd::Verify {
            receipt,
            network_identity,
            file,
        } => {
            let bytes = std::fs::read(&receipt)
                .with_context(|| format!("reading {}", receipt.display()))?;
            let identity = read_network_identity(&network_identity)?;
            let doc = match &file {
                Some(f) => Some((
                    f.display().to_string(),
                    std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
                )),
                None => None,
            };
            match explain(
                &bytes,
                &identity,
                doc.as_ref().map(|(n, b)| (n.as_str(), b.as_slice())),
            ) {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Verifies a receipt (and optionally a document) and says in plain words what
/// it proved; `Err` carries the exact reason it does not verify.
pub fn explain(
    bytes: &[u8],
    identity: &NetworkIdentity,
    doc: Option<(&str, &[u8])>,
) -> anyhow::Result<Vec<String>> {
    let not = |e: &dyn std::fmt::Display| anyhow::anyhow!("receipt NOT verified: {e}");
    let r = Receipt::from_cose(bytes).map_err(|e| not(&e))?;
    let v = r.verify(identity).map_err(|e| not(&e))?;
    let set = node_set_at(identity, &r.chain, v.checkpoint.size).map_err(|e| not(&e))?;
    let leaf = &v.leaf;
    let cp = &v.checkpoint;
    let net = hex::encode(identity.network_id);
    let mut out = vec![
        format!(
            "VERIFIED: receipt for ledger index {} of network {:?}",
            leaf.index, identity.name
        ),
        format!("  network id:   {net}"),
        format!(
            "  entry:        {} at index {}",
            leaf.kind.as_str(),
            leaf.index
        ),
        format!("  ledger time:  {} ({} ms)", fmt_time(leaf.time), leaf.time),
        format!(
            "  outcome:      {}",
            match &leaf.outcome {
                Outcome::Applied => "ok (applied)".to_string(),
                Outcome::Rejected(c) => format!("rejected with {c} (recorded, not applied)"),
            }
        ),
        format!("  entry digest: {}", hex::encode(leaf.digest)),
    ];
    if let Some((signer, key)) = &leaf.signer {
        let alg = PublicKey::from_spki_der(key)
            .map(|k| k.alg().name())
            .unwrap_or("?");
        out.push(format!(
            "  signed by:    identity {} ({alg} key)",
            hex::encode(signer)
        ));
    }
    match &v.tx {
        Some(tx) => out.push(format!(
            "  transaction:  {} app {:?} op {:?}, created {} (signature checked)",
            hex::encode(tx.id),
            tx.payload.app,
            tx.payload.op,
            fmt_time(tx.payload.created)
        )),
        None if leaf.kind == EntryKind::Tx => {
            out.push("  transaction:  body not included (only its digest is proved)".into())
        }
        None => {}
    }
    out.push(format!(
        "  checkpoint:   seq {} covering the first {} entries, time {}",
        cp.seq,
        cp.size,
        fmt_time(cp.time)
    ));
    out.push(format!("    tx root:    {}", hex::encode(cp.tx_root)));
    out.push(format!("    state root: {}", hex::encode(cp.state_root)));
    out.push(format!(
        "  co-signed by {} node(s) of {} member(s) out of {} (quorum {}):",
        v.signers.len(),
        v.members,
        set.members().len(),
        set.quorum()
    ));
    for n in &v.signers {
        let member = set
            .get(n)
            .map(|i| hex::encode(i.member))
            .unwrap_or_else(|| "?".into());
        out.push(format!("    node {} of member {member}", hex::encode(n)));
    }
    out.push(format!(
        "  node-set changes since genesis: {}",
        r.chain.len()
    ));
    if let Some((name, doc)) = doc {
        let line = check_document(&v, name, doc).map_err(|e| {
            anyhow::anyhow!("the receipt verifies, but the document does NOT match: {e}")
        })?;
        out.push(line);
    }
    Ok(out)
}

/// The document must be the transaction's `value` bytes, or hash to its `digest`.
fn check_document(v: &Verified, name: &str, doc: &[u8]) -> anyhow::Result<String> {
    let tx = v.tx.as_ref().ok_or_else(|| {
        anyhow::anyhow!("the receipt does not include the transaction body, so {name} cannot be matched (fetch it without body=false)")
    })?;
    if let Outcome::Rejected(code) = &v.leaf.outcome {
        bail!("the transaction was recorded but rejected ({code}): {name} was not applied");
    }
    let args = MapView::new(&tx.payload.args)
        .map_err(|e| anyhow::anyhow!("transaction arguments: {e}"))?;
    let digest = sha256(doc);
    if let Some(Value::Bytes(value)) = args.get("value") {
        if value.as_slice() == doc {
            return Ok(format!(
                "  document:     {name} ({} bytes, sha256 {}) is exactly the value this transaction wrote",
                doc.len(),
                hex::encode(digest)
            ));
        }
        bail!(
            "{name} differs from the value in the transaction ({} bytes vs {} bytes, sha256 {} vs {})",
            doc.len(),
            value.len(),
            hex::encode(digest),
            hex::encode(sha256(value))
        );
    }
    let recorded: Option<Vec<u8>> = match args.get("digest") {
        Some(Value::Bytes(b)) => Some(b.clone()),
        Some(Value::Text(t)) => hex::decode(t).ok(),
        _ => None,
    };
    match recorded {
        Some(d) if d == digest => Ok(format!(
            "  document:     {name} has SHA-256 {}, the digest this transaction recorded",
            hex::encode(digest)
        )),
        Some(d) => bail!(
            "{name} has SHA-256 {} but the transaction recorded digest {}",
            hex::encode(digest),
            hex::encode(d)
        ),
        None => bail!(
            "the transaction ({}.{}) has neither a `value` nor a `digest` argument to compare {name} with",
            tx.payload.app,
            tx.payload.op
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_client::Signer;
    use comity_core::cbor;
    use comity_core::checkpoint::{self, Checkpoint, CHECKPOINT_CONTENT_TYPE};
    use comity_core::crypto::{Alg, SigningKey};
    use comity_core::entry::{Leaf, PROTOCOL_VERSION};
    use comity_core::merkle;
    use comity_core::network::{NodeInfo, NodeSet};

    struct Net {
        identity: NetworkIdentity,
        nodes: Vec<([u8; 32], SigningKey)>,
    }

    fn net() -> Net {
        let nodes: Vec<_> = (0..3)
            .map(|_| {
                let k = SigningKey::generate(Alg::EdDsa);
                (k.public().fingerprint(), k)
            })
            .collect();
        let identity = NetworkIdentity {
            name: "test".into(),
            network_id: [7; 32],
            nodes: NodeSet(
                nodes
                    .iter()
                    .enumerate()
                    .map(|(i, (id, k))| NodeInfo {
                        id: *id,
                        member: [i as u8 + 1; 32],
                        key: k.public().to_spki_der(),
                    })
                    .collect(),
            ),
        };
        Net { identity, nodes }
    }

    /// A two-entry ledger (genesis, tx) and the receipt of the tx, signed by `signers` nodes.
    fn receipt(n: &Net, tx: &[u8], user: &SigningKey, outcome: Outcome, signers: usize) -> Vec<u8> {
        let genesis = b"genesis".to_vec();
        let l0 = Leaf {
            version: PROTOCOL_VERSION,
            index: 0,
            time: 1,
            kind: EntryKind::Genesis,
            digest: sha256(&genesis),
            outcome: Outcome::Applied,
            signer: None,
        }
        .to_cbor();
        let l1 = Leaf {
            version: PROTOCOL_VERSION,
            index: 1,
            time: 1_763_712_000_123,
            kind: EntryKind::Tx,
            digest: sha256(tx),
            outcome,
            signer: Some((user.public().fingerprint(), user.public().to_spki_der())),
        }
        .to_cbor();
        let (h0, h1) = (merkle::leaf_hash(&l0), merkle::leaf_hash(&l1));
        let cp = Checkpoint {
            network_id: n.identity.network_id,
            seq: 1,
            size: 2,
            tx_root: merkle::node_hash(&h0, &h1),
            state_root: [9; 32],
            time: 1_763_712_000_200,
            version: 1,
        }
        .to_cbor();
        let signatures = n.nodes[..signers]
            .iter()
            .map(|(id, k)| {
                checkpoint::parse_signature(&checkpoint::sign(CHECKPOINT_CONTENT_TYPE, &cp, k, id))
                    .unwrap()
            })
            .collect();
        Receipt {
            checkpoint: cp,
            signatures,
            index: 1,
            path: vec![h0],
            leaf: l1,
            body: Some(tx.to_vec()),
            chain: vec![],
        }
        .to_cose()
    }

    #[test]
    fn explains_a_good_receipt_and_matches_documents() {
        let n = net();
        let user = SigningKey::generate(Alg::EdDsa);
        let s = Signer::new(user.clone(), n.identity.network_id);
        let tx = s.kv_put("contract", b"the document");
        let r = receipt(&n, &tx, &user, Outcome::Applied, 2);
        let lines = explain(&r, &n.identity, Some(("doc", b"the document"))).unwrap();
        let text = lines.join("\n");
        assert!(text.starts_with("VERIFIED"), "{text}");
        assert!(text.contains("index 1"), "{text}");
        assert!(text.contains("2025-11-21 08:00:00.123 UTC"), "{text}");
        assert!(text.contains("app \"kv\" op \"put\""), "{text}");
        assert!(
            text.contains(&hex::encode(user.public().fingerprint())),
            "{text}"
        );
        assert!(
            text.contains("2 node(s) of 2 member(s) out of 3 (quorum 2)"),
            "{text}"
        );
        assert!(text.contains("exactly the value"), "{text}");

        let e = explain(&r, &n.identity, Some(("doc", b"another document"))).unwrap_err();
        assert!(e.to_string().contains("differs"), "{e}");

        // A digest-carrying transaction.
        let d = sha256(b"pdf bytes");
        let tx = s.tx(
            "notary",
            "register",
            cbor::map([("digest", cbor::bytes(d))]),
        );
        let r = receipt(&n, &tx, &user, Outcome::Applied, 3);
        assert!(explain(&r, &n.identity, Some(("f", b"pdf bytes"))).is_ok());
        let e = explain(&r, &n.identity, Some(("f", b"pdf bytez"))).unwrap_err();
        assert!(e.to_string().contains("recorded digest"), "{e}");
    }

    #[test]
    fn failures_name_the_reason() {
        let n = net();
        let user = SigningKey::generate(Alg::EdDsa);
        let s = Signer::new(user.clone(), n.identity.network_id);
        let tx = s.kv_put("k", b"v");
        // One member of three is not a quorum.
        let r = receipt(&n, &tx, &user, Outcome::Applied, 1);
        let e = explain(&r, &n.identity, None).unwrap_err();
        assert!(e.to_string().contains("not enough signatures"), "{e}");
        // Another network.
        let mut other = n.identity.clone();
        other.network_id = [8; 32];
        let r = receipt(&n, &tx, &user, Outcome::Applied, 2);
        let e = explain(&r, &other, None).unwrap_err();
        assert!(e.to_string().contains("network"), "{e}");
        // Flipped byte anywhere: never verifies as the same thing silently.
        let mut bad = r.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(explain(&bad, &n.identity, None).is_err());
        // Rejected transactions do not vouch for the document.
        let r = receipt(&n, &tx, &user, Outcome::Rejected("not_found".into()), 2);
        assert!(explain(&r, &n.identity, None).is_ok());
        let e = explain(&r, &n.identity, Some(("d", b"v"))).unwrap_err();
        assert!(e.to_string().contains("rejected"), "{e}");
        assert!(explain(b"garbage", &n.identity, None).is_err());
    }
}
