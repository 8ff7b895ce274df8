//! Notary evidence bundles: everything needed to check a document's whole
//! story offline, and the checks. The format is specified in docs/notary.md
//! ("Evidence bundles") so that others can write their own verifier.
//!
//! The proof of completeness: the record is proved against the state root of
//! a checkpoint signed by a quorum of the genesis node set; the record names
//! the number of events and the hash of the last; each event names the hash
//! of the one before. So an omitted, reordered or altered event cannot reach
//! the proved head, and each event's receipt proves the signed transaction
//! that caused it.

use crate::config::fmt_time;
use anyhow::{anyhow, bail, Context};
use comity_apps::notary;
use comity_apps::notary::document::{self, Document};
use comity_apps::notary::event::{self, Event, GENESIS_PREV};
use comity_apps::{keys, Genesis};
use comity_core::cbor::{self, MapView, Value};
use comity_core::crypto::sha256;
use comity_core::entry::Outcome;
use comity_core::network::NetworkIdentity;
use comity_core::receipt::{verify_signed_checkpoint, Receipt};
use comity_core::Hash;
use std::collections::BTreeMap;

pub const FORMAT: &str = "comity-notary-evidence/1";

/// One event with the receipt of the transaction that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventEvidence {
    /// The event's canonical CBOR, exactly as stored in state.
    pub event: Vec<u8>,
    /// COSE receipt of its transaction, body included.
    pub receipt: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// The genesis document (ledger entry 0): the network identity.
    pub genesis: Vec<u8>,
    /// Node-set changes since genesis (COSE_Sign each), as in receipts.
    pub chain: Vec<Vec<u8>>,
    /// The signed checkpoint (COSE_Sign) whose state root proves the record.
    pub checkpoint: Vec<u8>,
    /// The record's canonical CBOR, the value under `d/` ‖ id.
    pub record: Vec<u8>,
    /// Borsh-encoded jmt `SparseMerkleProof` of the record.
    pub state_proof: Vec<u8>,
    pub events: Vec<EventEvidence>,
}

impl Bundle {
    pub fn to_cbor(&self) -> Vec<u8> {
        let bytes_list =
            |l: &[Vec<u8>]| Value::Array(l.iter().map(|b| cbor::bytes(b.clone())).collect());
        let events = Value::Array(
            self.events
                .iter()
                .map(|e| {
                    cbor::map([
                        ("event", cbor::bytes(e.event.clone())),
                        ("receipt", cbor::bytes(e.receipt.clone())),
                    ])
                })
                .collect(),
        );
        cbor::to_vec(cbor::map([
            ("format", cbor::text(FORMAT)),
            ("genesis", cbor::bytes(self.genesis.clone())),
            ("chain", bytes_list(&self.chain)),
            ("checkpoint", cbor::bytes(self.checkpoint.clone())),
            ("record", cbor::bytes(self.record.clone())),
            ("state_proof", cbor::bytes(self.state_proof.clone())),
            ("events", events),
        ]))
        .expect("bundle encodes")
    }

    pub fn from_cbor(b: &[u8]) -> anyhow::Result<Bundle> {
        let v = cbor::from_canonical_slice(b).context("the bundle is not canonical CBOR")?;
        let m = MapView::new(&v)?;
        if m.0.len() != 7 {
            bail!("the bundle has unexpected fields");
        }
        let format = m.text("format")?;
        if format != FORMAT {
            bail!("unknown bundle format {format:?} (expected {FORMAT:?})");
        }
        let list = |key: &str| -> anyhow::Result<Vec<Vec<u8>>> {
            m.array(key)?
                .iter()
                .map(|x| match x {
                    Value::Bytes(b) => Ok(b.clone()),
                    _ => bail!("`{key}` must hold byte strings"),
                })
                .collect()
        };
        let events = m
            .array("events")?
            .iter()
            .map(|e| {
                let em = MapView::new(e)?;
                if em.0.len() != 2 {
                    bail!("an event entry has unexpected fields");
                }
                Ok(EventEvidence {
                    event: em.bytes("event")?.to_vec(),
                    receipt: em.bytes("receipt")?.to_vec(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Bundle {
            genesis: m.bytes("genesis")?.to_vec(),
            chain: list("chain")?,
            checkpoint: m.bytes("checkpoint")?.to_vec(),
            record: m.bytes("record")?.to_vec(),
            state_proof: m.bytes("state_proof")?.to_vec(),
            events,
        })
    }
}

/// The identity the genesis document defines, and display names of the
/// identities it registered.
fn identity_of(genesis: &[u8]) -> anyhow::Result<(NetworkIdentity, BTreeMap<Hash, String>)> {
    let g = Genesis::from_cbor(genesis).context("the genesis document does not decode")?;
    let names = g
        .members
        .iter()
        .chain(&g.users)
        .map(|s| (sha256(&s.key), s.name.clone()))
        .collect();
    Ok((
        NetworkIdentity {
            name: g.name.clone(),
            network_id: g.network_id(),
            nodes: g.nodes,
        },
        names,
    ))
}

/// What a verified bundle proves.
pub struct Story {
    pub identity: NetworkIdentity,
    pub checkpoint_seq: u64,
    /// Ledger time of that checkpoint (ms).
    pub checkpoint_time: u64,
    pub lines: Vec<String>,
}

/// How the content is compared with the recorded digest.
pub enum Content<'a> {
    None,
    /// The file's SHA-256 and, for a salted digest, the salt.
    File {
        name: &'a str,
        sha256: Hash,
        salt: Option<&'a [u8]>,
    },
}

/// The digest registered for content with SHA-256 `h`: `h` itself, or
/// SHA-256(salt ‖ h) for a salted registration.
pub fn registered_digest(h: &Hash, salt: Option<&[u8]>) -> Hash {
    match salt {
        Some(s) => sha256(&[s, h.as_slice()].concat()),
        None => *h,
    }
}

/// Checks everything in the bundle; `trusted`, if given, is a network
/// identity obtained out of band that the bundle's genesis must match.
/// The error is the exact reason it fails.
pub fn verify(
    b: &Bundle,
    trusted: Option<&NetworkIdentity>,
    content: Content<'_>,
) -> anyhow::Result<Story> {
    let (identity, names) = identity_of(&b.genesis)?;
    if let Some(t) = trusted {
        if t.network_id != identity.network_id || t.nodes != identity.nodes {
            bail!(
                "the bundle is for network {}, not the trusted network {}",
                hex::encode(identity.network_id),
                hex::encode(t.network_id)
            );
        }
    }
    let (cp, signers) = verify_signed_checkpoint(&b.checkpoint, &identity, &b.chain)
        .map_err(|e| anyhow!("the checkpoint does not verify: {e}"))?;
    let doc =
        Document::from_cbor(&b.record).map_err(|e| anyhow!("the record does not decode: {e}"))?;
    if doc.to_cbor() != b.record {
        bail!("the record is not in canonical form");
    }
    let id = doc.id.0;
    if id != document::id_of(&doc.digest.0) {
        bail!("the record's id is not the id of its digest");
    }
    comity_core::state::verify(
        &cp.state_root,
        &keys::notary_doc(&id),
        Some(&b.record),
        &b.state_proof,
    )
    .map_err(|e| anyhow!("the record is not proved by checkpoint {}: {e}", cp.seq))?;
    if b.events.len() as u64 != doc.chain.events {
        bail!(
            "the record has {} events but the bundle holds {}: events are missing or added",
            doc.chain.events,
            b.events.len()
        );
    }
    let name = |h: &Hash| match names.get(h) {
        Some(n) => format!("{n} ({})", &hex::encode(h)[..12]),
        None => hex::encode(h)[..16].to_string(),
    };
    let mut lines = vec![
        format!("document {}", hex::encode(id)),
        format!(
            "  title:     {} ({})",
            doc.title,
            if doc.kind.is_empty() {
                "no type"
            } else {
                &doc.kind
            }
        ),
        format!("  matter:    {}", doc.matter),
        format!("  org:       {} (as stated at registration)", doc.org),
        format!(
            "  digest:    {}{}",
            hex::encode(doc.digest.0),
            if doc.salted { " (salted)" } else { "" }
        ),
        // A bundle proves the record as of its checkpoint: say when.
        format!(
            "  status:    {} as of {}",
            doc.status.as_str(),
            fmt_time(cp.time)
        ),
        format!("  custodian: {}", name(&doc.custodian.0)),
    ];
    for p in &doc.parties {
        lines.push(format!(
            "  party:     {} as {}{}",
            name(&p.id.0),
            p.role,
            if p.signs { "" } else { " (does not sign)" }
        ));
    }
    lines.push(format!(
        "  proved:    record under state root {} of checkpoint {} ({}), signed by {} node(s)",
        hex::encode(cp.state_root),
        cp.seq,
        fmt_time(cp.time),
        signers.len()
    ));
    lines.push("story:".into());
    let mut prev = GENESIS_PREV;
    for (i, e) in b.events.iter().enumerate() {
        let (ev, whole) =
            check_event(i, e, &id, &prev, &identity).with_context(|| format!("event {i}"))?;
        prev = sha256(&e.event);
        lines.push(format!(
            "  {}  {} (ledger index {}, receipt verified{})",
            fmt_time(ev.time),
            tell(&ev, &name),
            ev.index,
            if whole {
                ""
            } else {
                "; its transaction is not shown to this reader"
            }
        ));
    }
    if prev != doc.chain.head.0 {
        bail!("the last event's hash is not the record's chain head: an event was altered or replaced");
    }
    if let Content::File {
        name,
        sha256: h,
        salt,
    } = content
    {
        let d = registered_digest(&h, salt);
        if d != doc.digest.0 {
            bail!(
                "{name} does not match: its {} is {}, the record's digest is {}",
                if salt.is_some() {
                    "salted digest"
                } else {
                    "SHA-256"
                },
                hex::encode(d),
                hex::encode(doc.digest.0)
            );
        }
        lines.push(format!("content: {name} matches the registered digest"));
    }
    Ok(Story {
        identity,
        checkpoint_seq: cp.seq,
        checkpoint_time: cp.time,
        lines,
    })
}

/// Checks one event: its place in the chain, and that its receipt proves
/// the applied, signed notary transaction it claims. A receipt may withhold
/// the transaction (an amendment, from a reader not party to the new
/// version): then it proves only the applied entry; the second value says so.
fn check_event(
    i: usize,
    e: &EventEvidence,
    subject: &Hash,
    prev: &Hash,
    identity: &NetworkIdentity,
) -> anyhow::Result<(Event, bool)> {
    let v = cbor::from_canonical_slice(&e.event).context("not canonical CBOR")?;
    let ev: Event = cbor::to_serde(&v).context("not an event")?;
    if ev.subject.0 != *subject || ev.seq != i as u64 {
        bail!("it belongs to another document or position");
    }
    if ev.prev.0 != *prev {
        bail!("it does not follow the previous event (an event is missing, reordered or altered)");
    }
    let r = Receipt::from_cose(&e.receipt).map_err(|x| anyhow!("receipt: {x}"))?;
    let got = r
        .verify(identity)
        .map_err(|x| anyhow!("receipt does not verify: {x}"))?;
    let leaf = &got.leaf;
    if leaf.index != ev.index || leaf.digest != ev.tx.0 || leaf.time != ev.time {
        bail!("the receipt proves another transaction than the event names");
    }
    if leaf.outcome != Outcome::Applied {
        bail!(
            "the receipt's transaction was rejected ({})",
            leaf.outcome.code()
        );
    }
    let Some(tx) = got.tx else {
        return Ok((ev, false));
    };
    if tx.kid != ev.actor.0 {
        bail!("the transaction was signed by another identity than the event's actor");
    }
    if tx.payload.app != "notary" || !event::ops_for(&ev.kind).contains(&tx.payload.op.as_str()) {
        bail!(
            "a {}.{} transaction cannot cause a {:?} event",
            tx.payload.app,
            tx.payload.op,
            ev.kind
        );
    }
    // The last signature of an amendment names the new version it executes.
    let about = match (ev.kind.as_str(), tx.payload.op.as_str()) {
        (event::kind::AMENDED, "sign") => ev
            .details
            .get("successor")
            .and_then(|s| hex::decode(s).ok())
            .and_then(|s| Hash::try_from(s).ok())
            .context("an amended event without its successor")?,
        _ => *subject,
    };
    if !notary::documents_named(&tx.payload.op, &tx.payload.args).contains(&about) {
        bail!("the transaction is about another document");
    }
    Ok((ev, true))
}

/// One event in plain words.
fn tell(e: &Event, name: &dyn Fn(&Hash) -> String) -> String {
    let d = |k: &str| e.details.get(k).cloned().unwrap_or_default();
    let who = name(&e.actor.0);
    // An id in the details, by name where the genesis names it.
    let named = |s: &str| {
        let mut h = [0u8; 32];
        match hex::decode_to_slice(s, &mut h) {
            Ok(()) => name(&h),
            Err(_) => s.to_string(),
        }
    };
    let short = |k: &str| d(k).chars().take(12).collect::<String>();
    let why = if d("reason").is_empty() {
        String::new()
    } else {
        format!(": {:?}", d("reason"))
    };
    match e.kind.as_str() {
        event::kind::REGISTERED if !d("predecessor").is_empty() => format!(
            "registered by {who} as a new version of {}",
            d("predecessor")
        ),
        event::kind::REGISTERED => format!("registered by {who}, digest {}", d("digest")),
        event::kind::SIGNED => format!("signed by {who} as {}", d("role")),
        event::kind::EXECUTED => "executed: every required party has signed".into(),
        event::kind::AMENDMENT_PROPOSED => format!(
            "amendment {} proposed by {who}, awaiting its parties' signatures",
            d("successor")
        ),
        event::kind::AMENDED => format!(
            "amended: superseded by {}, executed by {who}'s transaction",
            d("successor")
        ),
        event::kind::EXPIRED => format!("expired, declared by {who}{why}"),
        event::kind::REVOKED => format!("revoked by {who}{why}"),
        event::kind::HOLD_PLACED => format!("legal hold {} placed by {who}{why}", short("hold")),
        event::kind::HOLD_LIFTED => format!("legal hold {} lifted by {who}{why}", short("hold")),
        event::kind::CUSTODY_OFFERED => {
            format!("custody offered by {who} to {}{why}", named(&d("to")))
        }
        event::kind::CUSTODY_ACCEPTED => {
            format!("custody accepted by {who} from {}", named(&d("from")))
        }
        event::kind::DESTRUCTION_APPROVED => format!("destruction approved by {who}{why}"),
        event::kind::DESTROYED => format!(
            "content destroyed by {who}{why}; approved by {}",
            d("approvers")
                .split(',')
                .map(named)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        event::kind::PERSONAL_DATA_ERASED => format!("personal data erased by {who}"),
        other => format!("{other} by {who}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_digest_and_round_trip() {
        let h = sha256(b"content");
        assert_eq!(registered_digest(&h, None), h);
        assert_eq!(
            registered_digest(&h, Some(b"salt")),
            sha256(&[b"salt".as_slice(), &h].concat())
        );
        let b = Bundle {
            genesis: vec![1],
            chain: vec![vec![2]],
            checkpoint: vec![3],
            record: vec![4],
            state_proof: vec![5],
            events: vec![EventEvidence {
                event: vec![6],
                receipt: vec![7],
            }],
        };
        let bytes = b.to_cbor();
        assert_eq!(Bundle::from_cbor(&bytes).unwrap(), b);
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_ne!(Bundle::from_cbor(&bad).ok(), Some(b));
    }
}
