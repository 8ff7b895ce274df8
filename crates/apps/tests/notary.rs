//! The notary through the executor on a real store: a contract's whole life
//! (register, sign, execute, amend, custody, holds, retention, approvals,
//! destruction), every forbidden transition and unauthorized actor refused
//! with its own code, idempotent duplicates, the hash chain and the record
//! proved against the state root, queries, collections, erasure of personal
//! data, and a replay that reproduces the same state root.

mod common;

use comity_apps::audit::Audit;
use comity_apps::genesis::node_info;
use comity_apps::notary::collection;
use comity_apps::notary::document::{self, Document, Status};
use comity_apps::notary::event::{self, Event, GENESIS_PREV};
use comity_apps::notary::query::{self, Filter};
use comity_apps::{keys, Command, Genesis, IdentitySpec};
use comity_core::cbor;
use comity_core::crypto::{sha256, Alg, SigningKey};
use comity_core::network::NodeSet;
use comity_core::Hash;
use serde_json::json;

const T0: u64 = 1_763_000_000_000;
const DAY: u64 = 24 * 3600 * 1000;

struct Net {
    l: common::Ledger,
    m: Vec<SigningKey>,
    /// alice, bob, carol: users.
    alice: SigningKey,
    bob: SigningKey,
    carol: SigningKey,
    node: SigningKey,
}

impl std::ops::Deref for Net {
    type Target = common::Ledger;
    fn deref(&self) -> &common::Ledger {
        &self.l
    }
}

impl std::ops::DerefMut for Net {
    fn deref_mut(&mut self) -> &mut common::Ledger {
        &mut self.l
    }
}

fn id(k: &SigningKey) -> Hash {
    k.public().fingerprint()
}

fn hx(k: &SigningKey) -> String {
    hex::encode(id(k))
}

impl Net {
    /// The three users and the first member, to sign as.
    fn people(&self) -> (SigningKey, SigningKey, SigningKey, SigningKey) {
        (
            self.alice.clone(),
            self.bob.clone(),
            self.carol.clone(),
            self.m[0].clone(),
        )
    }

    fn new() -> Net {
        let m: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(Alg::EdDsa)).collect();
        let users: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(Alg::EdDsa)).collect();
        let node = SigningKey::generate(Alg::EdDsa);
        let g = Genesis::new(
            "notary",
            T0,
            m.iter()
                .enumerate()
                .map(|(i, k)| IdentitySpec::new(k.public().to_spki_der(), &format!("m{i}")))
                .collect(),
            users
                .iter()
                .enumerate()
                .map(|(i, k)| IdentitySpec::new(k.public().to_spki_der(), &format!("u{i}")))
                .collect(),
            NodeSet(vec![node_info(&node.public(), m[0].public().fingerprint())]),
        );
        Net {
            l: common::Ledger::start(&g),
            m,
            alice: users[0].clone(),
            bob: users[1].clone(),
            carol: users[2].clone(),
            node,
        }
    }

    /// Applies `notary.op(args)` signed by `who`; returns the tx id and outcome code.
    fn op(&mut self, who: &SigningKey, op: &str, args: serde_json::Value) -> (Hash, String) {
        let tx = self.sign_as(
            who,
            &id(who),
            "notary",
            op,
            cbor::from_serde(&args).unwrap(),
        );
        self.run(tx)
    }

    /// Like [`Net::op`], expecting outcome `code`.
    fn expect(&mut self, who: &SigningKey, op: &str, args: serde_json::Value, code: &str) -> Hash {
        let (tx, got) = self.op(who, op, args.clone());
        assert_eq!(got, code, "{op} {args}");
        tx
    }

    /// Registers (`op` is `register` or `amend`); returns the document id,
    /// which is the id of the registered digest.
    fn register(&mut self, who: &SigningKey, op: &str, args: serde_json::Value) -> Hash {
        let digest: Hash = hex::decode(args["digest"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let tx = self.expect(who, op, args, "ok");
        let doc = document::id_of(&digest);
        assert_eq!(query::document_of_tx(&self.store, &tx).unwrap(), Some(doc));
        doc
    }

    /// `doc` op with a reason, expecting `code`.
    fn act(&mut self, who: &SigningKey, op: &str, doc: &Hash, code: &str) -> Hash {
        let args = json!({"document": hex::encode(doc), "reason": format!("{op} test")});
        self.expect(who, op, args, code)
    }

    fn sign(&mut self, who: &SigningKey, doc: &Hash, code: &str) -> Hash {
        let digest = self.doc(doc).digest.0;
        let args = json!({"document": hex::encode(doc), "digest": hex::encode(digest)});
        self.expect(who, "sign", args, code)
    }

    fn doc(&self, id: &Hash) -> Document {
        document::load(&self.store.read().unwrap(), id)
            .unwrap()
            .expect("document")
    }

    fn events(&self, subject: &Hash) -> Vec<Vec<u8>> {
        event::stored(&self.store.read().unwrap(), subject, 0, 10_000).unwrap()
    }

    fn kinds(&self, subject: &Hash) -> Vec<String> {
        self.events(subject)
            .iter()
            .map(|b| decode_event(b).kind)
            .collect()
    }

    fn checkpoint(&mut self) -> Hash {
        self.time += 10;
        let time = self.time;
        let out = self.apply(Command::Checkpoint { time });
        out.checkpoints.last().expect("checkpoint").state_root
    }
}

fn decode_event(b: &[u8]) -> Event {
    cbor::to_serde(&cbor::from_slice(b).unwrap()).unwrap()
}

/// Registration arguments: `parties` as (identity, role), retention in ms.
fn reg(
    digest: Hash,
    title: &str,
    parties: &[(&SigningKey, &str)],
    retention: u64,
    approvals: u64,
) -> serde_json::Value {
    json!({
        "digest": hex::encode(digest),
        "title": title,
        "type": "contract",
        "matter": "M-2026-001",
        "org": "Firm LLP",
        "parties": parties.iter().map(|(k, role)| json!({"id": hx(k), "role": role})).collect::<Vec<_>>(),
        "retention": {"period_ms": retention, "approvals": approvals},
    })
}

/// Recomputes a chain from its stored events; returns (count, head).
fn walk(subject: &Hash, events: &[Vec<u8>]) -> (u64, Hash) {
    let mut prev = GENESIS_PREV;
    for (i, b) in events.iter().enumerate() {
        let e = decode_event(b);
        assert_eq!(e.subject.0, *subject);
        assert_eq!(e.seq, i as u64);
        assert_eq!(e.prev.0, prev, "event {i} does not name its predecessor");
        assert_eq!(
            cbor::to_vec(cbor::from_slice(b).unwrap()).unwrap(),
            *b,
            "canonical"
        );
        prev = sha256(b);
    }
    (events.len() as u64, prev)
}

#[test]
fn a_contracts_whole_life() {
    let mut n = Net::new();
    let (alice, bob, carol, m0, m1) = (
        n.alice.clone(),
        n.bob.clone(),
        n.carol.clone(),
        n.m[0].clone(),
        n.m[1].clone(),
    );
    let digest = sha256(b"sale agreement v1");
    let a = n.register(
        &alice,
        "register",
        reg(
            digest,
            "Sale agreement",
            &[(&alice, "seller"), (&bob, "buyer")],
            DAY,
            2,
        ),
    );
    let d = n.doc(&a);
    assert_eq!(
        (d.status, d.registrant.0, d.custodian.0),
        (Status::Draft, id(&alice), id(&alice))
    );
    assert_eq!(d.registered, n.time);
    assert_eq!(
        document::by_digest(&n.store.read().unwrap(), &digest).unwrap(),
        Some(a)
    );

    // The first signature leaves it a draft; the last executes it atomically.
    n.sign(&alice, &a, "ok");
    assert_eq!(n.doc(&a).status, Status::Draft);
    n.sign(&alice, &a, "ok"); // idempotent: no second signature, no event
    assert_eq!(n.doc(&a).signatures.len(), 1);
    n.sign(&bob, &a, "ok");
    let d = n.doc(&a);
    assert_eq!(d.status, Status::Executed);
    assert_eq!(d.executed, Some(n.time));
    assert_eq!(n.kinds(&a), ["registered", "signed", "signed", "executed"]);
    let signed_at = decode_event(&n.events(&a)[2]);
    let executed_at = decode_event(&n.events(&a)[3]);
    assert_eq!(
        signed_at.tx, executed_at.tx,
        "executed by the last signature"
    );
    assert_eq!(signed_at.details["role"], "buyer");

    // Amended by a new version naming its predecessor.
    let v2 = sha256(b"sale agreement v2");
    let mut args = reg(
        v2,
        "Sale agreement (amended)",
        &[(&alice, "seller"), (&bob, "buyer")],
        DAY,
        2,
    );
    args["predecessor"] = json!(hex::encode(a));
    let b = n.register(&bob, "amend", args);
    let (old, new) = (n.doc(&a), n.doc(&b));
    // The signed version stays in force until every party signs the new one.
    assert_eq!(old.status, Status::Executed);
    assert_eq!(old.successor.map(|s| s.0), Some(b));
    assert_eq!(new.predecessor.map(|p| p.0), Some(a));
    assert_eq!(new.status, Status::Draft);
    n.sign(&alice, &b, "ok");
    assert_eq!(n.doc(&a).status, Status::Executed);
    n.time += 1000;
    let last = n.sign(&bob, &b, "ok");
    assert_eq!(n.doc(&b).status, Status::Executed);
    let old = n.doc(&a);
    assert_eq!(old.status, Status::Amended);
    assert_eq!(old.retain_until, Some(n.time + DAY));
    let amended = decode_event(n.events(&a).last().unwrap());
    assert_eq!((amended.kind.as_str(), amended.tx.0), ("amended", last));

    // Custody passes from alice's organization to carol's.
    n.expect(
        &alice,
        "custody.offer",
        json!({"document": hex::encode(a), "to": hx(&carol)}),
        "ok",
    );
    assert_eq!(
        n.doc(&a).offer.as_ref().and_then(|o| o.to).map(|t| t.0),
        Some(id(&carol))
    );
    n.act(&carol, "custody.accept", &a, "ok");
    let d = n.doc(&a);
    assert_eq!((d.custodian.0, d.offer.is_none()), (id(&carol), true));

    // Destruction: approvals by the custodian and parties, refused before
    // retention ends and while a hold stands.
    n.act(&alice, "destroy.approve", &a, "ok");
    n.act(&alice, "destroy.approve", &a, "ok"); // idempotent
    assert_eq!(n.doc(&a).approvals.len(), 1);
    n.act(&carol, "destroy", &a, "retention_not_ended");
    n.act(&carol, "destroy.approve", &a, "ok");
    n.act(&carol, "destroy", &a, "retention_not_ended");
    n.time += DAY;
    let hold = n.act(&m0, "hold.place", &a, "ok");
    n.act(&carol, "destroy", &a, "legal_hold");
    let lift = json!({"document": hex::encode(a), "hold": hex::encode(hold)});
    // Another member cannot undo the hold; the member that placed it can.
    n.expect(&m1, "hold.lift", lift.clone(), "not_hold_placer");
    n.act(&carol, "destroy", &a, "legal_hold");
    n.expect(&m0, "hold.lift", lift, "ok");
    let destroy = n.act(&carol, "destroy", &a, "ok");
    let d = n.doc(&a);
    assert_eq!(d.status, Status::Destroyed);
    let gone = d.destroyed.expect("destruction record");
    assert_eq!((gone.by.0, gone.time), (id(&carol), n.time));
    assert_eq!(gone.reason, "destroy test");
    assert_eq!(
        n.kinds(&a),
        [
            "registered",
            "signed",
            "signed",
            "executed",
            "amendment_proposed",
            "amended",
            "custody_offered",
            "custody_accepted",
            "destruction_approved",
            "destruction_approved",
            "hold_placed",
            "hold_lifted",
            "destroyed"
        ]
    );
    let last = decode_event(n.events(&a).last().unwrap());
    assert_eq!(last.tx.0, destroy);
    assert_eq!(last.index, gone.index);
    assert_eq!(last.actor.0, id(&carol));
    assert_eq!(
        last.details["approvers"],
        format!("{},{}", hx(&alice), hx(&carol))
    );
    // The digest still leads to the (destroyed) record.
    assert_eq!(
        document::by_digest(&n.store.read().unwrap(), &digest).unwrap(),
        Some(a)
    );
    for subject in [a, b] {
        let (count, head) = walk(&subject, &n.events(&subject));
        let chain = n.doc(&subject).chain;
        assert_eq!((count, head), (chain.events, chain.head.0));
    }
}

#[test]
fn forbidden_transitions_and_actors() {
    let mut n = Net::new();
    let (alice, bob, carol, m0) = n.people();
    let stranger = SigningKey::generate(Alg::EdDsa);
    let a = n.register(
        &alice,
        "register",
        reg(
            sha256(b"a"),
            "A",
            &[(&alice, "seller"), (&bob, "buyer")],
            DAY,
            1,
        ),
    );
    let hexa = hex::encode(a);

    // Signing: only listed signing parties, only this digest.
    n.sign(&carol, &a, "not_found"); // not named in it: as if there were none
    n.expect(
        &alice,
        "sign",
        json!({"document": hexa, "digest": hex::encode([7u8; 32])}),
        "digest_mismatch",
    );
    let mut w = reg(sha256(b"w"), "W", &[(&alice, "seller")], DAY, 1);
    w["parties"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": hx(&carol), "role": "witness", "signs": false}));
    let wd = n.register(&alice, "register", w);
    n.sign(&carol, &wd, "not_a_party");
    n.sign(&alice, &wd, "ok");
    assert_eq!(
        n.doc(&wd).status,
        Status::Executed,
        "the witness need not sign"
    );
    // Nor may a witness, bound by nothing, end the document's force.
    n.act(&carol, "revoke", &wd, "not_authorized");
    n.act(&carol, "expire", &wd, "not_authorized");

    // Draft: not yet amendable, expirable or destroyable.
    let mut am = reg(sha256(b"a2"), "A2", &[(&alice, "seller")], DAY, 1);
    am["predecessor"] = json!(hexa);
    n.expect(&alice, "amend", am.clone(), "doc_not_executed");
    n.act(&alice, "expire", &a, "doc_not_executed");
    n.act(&alice, "destroy.approve", &a, "doc_in_force");
    n.act(&alice, "destroy", &a, "doc_in_force");
    n.act(&carol, "destroy.approve", &a, "not_found");

    // Unauthorized actors.
    n.act(&carol, "expire", &a, "not_found"); // not named in it
    n.act(&carol, "revoke", &a, "not_found");
    n.act(&alice, "hold.place", &a, "not_authorized"); // users do not place holds
    n.expect(
        &bob,
        "custody.offer",
        json!({"document": hexa, "to": hx(&carol)}),
        "not_custodian",
    );
    n.expect(
        &alice,
        "custody.offer",
        json!({"document": hexa, "to": hex::encode(id(&stranger))}),
        "unknown_identity",
    );
    n.expect(
        &alice,
        "custody.offer",
        json!({"document": hexa, "to": hx(&alice)}),
        "bad_args",
    );
    n.act(&carol, "custody.accept", &a, "not_found");
    n.expect(
        &alice,
        "custody.offer",
        json!({"document": hexa, "to": hx(&bob)}),
        "ok",
    );
    n.act(&carol, "custody.accept", &a, "not_found");
    n.expect(
        &m0,
        "hold.lift",
        json!({"document": hexa, "hold": hex::encode([1u8; 32])}),
        "no_such_hold",
    );
    n.act(&alice, "metadata.erase", &a, "no_personal_data");
    n.act(&carol, "metadata.erase", &a, "not_found");
    // A node may not use the notary at all.
    let node = n.node.clone();
    n.act(&node, "revoke", &a, "forbidden");

    // Executed: no more signing by a party that had not signed before it ended.
    n.sign(&alice, &a, "ok");
    n.sign(&bob, &a, "ok");
    let hold = n.act(&m0, "hold.place", &a, "ok");
    n.act(&alice, "revoke", &a, "legal_hold");
    n.expect(&carol, "amend", am.clone(), "not_found");
    n.expect(
        &m0,
        "hold.lift",
        json!({"document": hexa, "hold": hex::encode(hold)}),
        "ok",
    );
    n.act(&alice, "expire", &a, "ok");
    n.act(&alice, "revoke", &a, "doc_not_in_force");
    n.act(&alice, "expire", &a, "doc_not_executed");
    n.expect(&alice, "amend", am, "doc_not_executed");
    // Offered but not accepted: bob is not the custodian yet.
    n.act(&bob, "destroy", &a, "not_custodian");
    n.act(&alice, "destroy", &a, "retention_not_ended");
}

#[test]
fn destruction_rules() {
    let mut n = Net::new();
    let (alice, bob, carol, m0, m1) = (
        n.alice.clone(),
        n.bob.clone(),
        n.carol.clone(),
        n.m[0].clone(),
        n.m[1].clone(),
    );
    let mut args = reg(sha256(b"deed"), "Deed", &[(&alice, "grantor")], 1000, 2);
    args["retention"]["approvers"] = json!([hex::encode(id(&m0)), hex::encode(id(&m1))]);
    let d = n.register(&alice, "register", args);
    n.sign(&alice, &d, "ok");
    let refused = n.act(&bob, "revoke", &d, "not_found");
    let revoked = n.act(&alice, "revoke", &d, "ok");
    // Only an applied transaction concerns a document.
    assert_eq!(query::document_of_tx(&n.store, &refused).unwrap(), None);
    assert_eq!(query::document_of_tx(&n.store, &revoked).unwrap(), Some(d));
    assert_eq!(n.doc(&d).status, Status::Revoked);
    // Only the named approvers approve; the custodian still destroys.
    n.act(&alice, "destroy.approve", &d, "not_approver");
    n.act(&m0, "destroy.approve", &d, "ok");
    n.time += 2000;
    n.act(&alice, "destroy", &d, "approvals_missing");
    n.act(&m1, "destroy.approve", &d, "ok");
    n.act(&m1, "destroy", &d, "not_custodian");
    n.act(&alice, "destroy", &d, "ok");
    // Nothing changes a destroyed document; to a user it does not name,
    // its state shows in no outcome.
    n.sign(&alice, &d, "doc_destroyed");
    n.sign(&carol, &d, "not_found");
    n.act(&alice, "revoke", &d, "doc_destroyed");
    n.act(&m0, "hold.place", &d, "doc_destroyed");
    n.act(&alice, "destroy", &d, "doc_destroyed");
    n.expect(
        &alice,
        "custody.offer",
        json!({"document": hex::encode(d), "to": hx(&carol)}),
        "doc_destroyed",
    );

    // Without named approvers, the custodian and the signing parties
    // approve, and only approvals by those who may approve now count: a
    // custodian that handed custody on takes its approval with it.
    let e = n.register(
        &alice,
        "register",
        reg(sha256(b"lease"), "Lease", &[(&bob, "lessor")], 1000, 2),
    );
    n.sign(&bob, &e, "ok");
    n.act(&bob, "revoke", &e, "ok");
    n.time += 2000;
    n.act(&alice, "destroy.approve", &e, "ok");
    n.expect(
        &alice,
        "custody.offer",
        json!({"document": hex::encode(e), "to": hx(&carol)}),
        "ok",
    );
    n.act(&carol, "custody.accept", &e, "ok");
    n.act(&carol, "destroy.approve", &e, "ok");
    assert_eq!(n.doc(&e).approvals.len(), 2);
    n.act(&carol, "destroy", &e, "approvals_missing");
    n.act(&bob, "destroy.approve", &e, "ok");
    n.act(&carol, "destroy", &e, "ok");
    let destroyed = decode_event(n.events(&e).last().unwrap());
    assert_eq!(
        destroyed.details["approvers"],
        format!("{},{}", hx(&carol), hx(&bob)),
        "alice's approval did not count"
    );

    // Arguments that do not parse or do not make sense.
    n.expect(
        &alice,
        "register",
        json!({"digest": "zz", "title": "x", "retention": {"period_ms": 0, "approvals": 1}}),
        "bad_args",
    );
    n.expect(
        &alice,
        "register",
        reg(sha256(b"z"), "", &[], 0, 1),
        "bad_args",
    );
    n.expect(
        &alice,
        "register",
        reg(sha256(b"z"), "Z", &[], 0, 0),
        "bad_args",
    );
    n.expect(
        &alice,
        "register",
        reg(sha256(b"z"), "Z", &[(&bob, "x"), (&bob, "y")], 0, 1),
        "bad_args",
    );
    let mut with_pred = reg(sha256(b"z"), "Z", &[], 0, 1);
    with_pred["predecessor"] = json!(hex::encode(d));
    n.expect(&alice, "register", with_pred, "bad_args");
    n.expect(
        &alice,
        "amend",
        reg(sha256(b"z"), "Z", &[], 0, 1),
        "bad_args",
    );
    let stranger = SigningKey::generate(Alg::EdDsa);
    n.expect(
        &alice,
        "register",
        reg(sha256(b"z"), "Z", &[(&stranger, "x")], 0, 1),
        "unknown_identity",
    );
    n.expect(&alice, "register", json!({"digest": hex::encode([1u8; 32]), "title": "x", "retention": {"period_ms": 0, "approvals": 1}, "extra": 1}), "bad_args");
    n.act(&alice, "revoke", &[9; 32], "not_found");
    n.act(&alice, "rewrite", &d, "unknown_op");
    let long = "x".repeat(2000);
    n.expect(
        &alice,
        "revoke",
        json!({"document": hex::encode(d), "reason": long}),
        "bad_args",
    );
}

#[test]
fn duplicate_registration_is_a_retry_or_refused() {
    let mut n = Net::new();
    let (alice, bob) = (n.alice.clone(), n.bob.clone());
    let digest = sha256(b"same bytes");
    let first = n.register(&alice, "register", reg(digest, "First", &[], DAY, 1));
    let before = n.doc(&first);
    assert_eq!(
        before.status,
        Status::Executed,
        "no signing party: executed at once"
    );
    // Another identity is refused: an applied receipt for its own terms
    // would contradict the record that stands.
    n.expect(
        &bob,
        "register",
        reg(digest, "Second title", &[(&bob, "x")], 0, 1),
        "digest_registered",
    );
    // The registrant's retry (a new transaction) is a no-op; with other
    // terms it is refused like anyone's.
    n.expect(
        &alice,
        "register",
        reg(digest, "First", &[(&bob, "buyer")], 0, 1),
        "digest_registered",
    );
    let again = n.expect(&alice, "register", reg(digest, "First", &[], DAY, 1), "ok");
    assert_eq!(n.doc(&first), before, "unchanged, no new event");
    let r = n.store.read().unwrap();
    assert!(
        document::load(&r, &again).unwrap().is_none(),
        "no record under the second transaction's id"
    );
    assert_eq!(
        query::document_of_tx(&n.store, &again).unwrap(),
        Some(first)
    );
    let all = query::documents(
        &r,
        &Filter::Time {
            from: 0,
            to: u64::MAX,
        },
        None,
        &id(&alice),
        None,
        10,
    )
    .unwrap();
    assert_eq!(all.items.len(), 1);

    // An amendment cannot take a digest registered on its own: it is refused
    // rather than silently doing nothing to the predecessor.
    let v2 = sha256(b"version two");
    let mut am = reg(v2, "Second version", &[], DAY, 1);
    n.register(&bob, "register", am.clone());
    am["predecessor"] = json!(hex::encode(first));
    n.expect(&alice, "amend", am.clone(), "digest_registered");
    assert_eq!(n.doc(&first), before, "the predecessor is untouched");
    // A retry of an amendment that went through is a no-op.
    let v3 = sha256(b"version three");
    let mut am = reg(v3, "Third version", &[], DAY, 1);
    am["predecessor"] = json!(hex::encode(first));
    let third = n.register(&alice, "amend", am.clone());
    n.expect(&alice, "amend", am, "ok");
    assert_eq!(n.doc(&first).successor.map(|s| s.0), Some(third));
}

#[test]
fn an_amendment_needs_every_signing_party_and_respects_holds() {
    let mut n = Net::new();
    let (alice, bob, carol, m0) = n.people();
    let both = [(&alice, "seller"), (&bob, "buyer")];
    let a = n.register(&alice, "register", reg(sha256(b"v1"), "V1", &both, DAY, 1));
    n.sign(&alice, &a, "ok");
    n.sign(&bob, &a, "ok");
    let amend = |digest: &[u8], parties: &[(&SigningKey, &str)]| {
        let mut am = reg(sha256(digest), "V2", parties, DAY, 1);
        am["predecessor"] = json!(hex::encode(a));
        am
    };
    // Bob alone cannot replace what alice signed: she must sign the new version.
    n.expect(
        &bob,
        "amend",
        amend(b"v2", &[(&bob, "buyer")]),
        "signers_missing",
    );
    let mut witness = amend(b"v2", &[(&bob, "buyer")]);
    witness["parties"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": hx(&alice), "role": "seller", "signs": false}));
    n.expect(&bob, "amend", witness, "signers_missing");
    // New signing parties may be added.
    let three = [(&alice, "seller"), (&bob, "buyer"), (&carol, "guarantor")];
    let b = n.register(&bob, "amend", amend(b"v2", &three));
    assert_eq!(n.doc(&a).status, Status::Executed);
    // One amendment at a time: a second draft cannot fork the chain.
    n.expect(
        &alice,
        "amend",
        amend(b"v2-bis", &both),
        "amendment_pending",
    );
    // A hold on the signed version keeps it in force: the last signature
    // that would supersede it waits, and expiry and a new amendment too.
    n.sign(&alice, &b, "ok");
    n.sign(&carol, &b, "ok");
    let hold = n.act(&m0, "hold.place", &a, "ok");
    n.sign(&bob, &b, "legal_hold");
    assert_eq!(n.doc(&b).status, Status::Draft);
    n.act(&alice, "expire", &a, "legal_hold");
    let lift = json!({"document": hex::encode(a), "hold": hex::encode(hold)});
    n.expect(&m0, "hold.lift", lift, "ok");
    // Revoked unsigned, the draft no longer blocks another amendment.
    n.act(&bob, "revoke", &b, "ok");
    let c = n.register(&alice, "amend", amend(b"v2-ter", &both));
    assert_eq!(n.doc(&a).successor.map(|s| s.0), Some(c));
    n.sign(&alice, &c, "ok");
    n.sign(&bob, &c, "ok");
    assert_eq!(n.doc(&a).status, Status::Amended);
    assert_eq!(n.doc(&c).status, Status::Executed);
    assert_eq!(
        n.kinds(&a),
        [
            "registered",
            "signed",
            "signed",
            "executed",
            "amendment_proposed",
            "hold_placed",
            "hold_lifted",
            "amendment_proposed",
            "amended"
        ]
    );
    // Amended: no further amendment of the old version.
    n.expect(&alice, "amend", amend(b"v3", &both), "doc_not_executed");

    // An amendment of a version revoked while it waited cannot be executed.
    let x = n.register(&alice, "register", reg(sha256(b"x1"), "X", &both, DAY, 1));
    n.sign(&alice, &x, "ok");
    n.sign(&bob, &x, "ok");
    let mut am = reg(sha256(b"x2"), "X2", &both, DAY, 1);
    am["predecessor"] = json!(hex::encode(x));
    let y = n.register(&alice, "amend", am);
    n.act(&bob, "revoke", &x, "ok");
    n.sign(&alice, &y, "ok");
    n.sign(&bob, &y, "doc_not_in_force");
    assert_eq!(n.doc(&y).status, Status::Draft);
    assert_eq!(n.doc(&x).status, Status::Revoked);
}

#[test]
fn holds_are_bounded_and_lifted_by_their_placer() {
    let mut n = Net::new();
    let (alice, m0, m1) = (n.alice.clone(), n.m[0].clone(), n.m[1].clone());
    let a = n.register(&alice, "register", reg(sha256(b"held"), "Held", &[], 0, 1));
    let first = n.act(&m0, "hold.place", &a, "ok");
    for _ in 1..document::MAX_HOLDS {
        n.act(&m1, "hold.place", &a, "ok");
    }
    n.act(&m1, "hold.place", &a, "too_many_holds");
    assert_eq!(n.doc(&a).holds.len(), document::MAX_HOLDS);
    let lift = json!({"document": hex::encode(a), "hold": hex::encode(first)});
    n.expect(&m1, "hold.lift", lift.clone(), "not_hold_placer");
    n.expect(&alice, "hold.lift", lift.clone(), "not_authorized");
    n.expect(&m0, "hold.lift", lift.clone(), "ok");
    n.expect(&m0, "hold.lift", lift, "no_such_hold");
    n.act(&m1, "hold.place", &a, "ok");

    // Once its placer is no longer a member, any member may lift a hold.
    let m2 = n.m[2].clone();
    let b = n.register(&alice, "register", reg(sha256(b"b"), "B", &[], 0, 1));
    let held = n.act(&m2, "hold.place", &b, "ok");
    let lift = json!({"document": hex::encode(b), "hold": hex::encode(held)});
    n.expect(&m1, "hold.lift", lift.clone(), "not_hold_placer");
    let remove = json!([{"action": "member.remove", "args": {"id": hx(&m2)}}]);
    let args = cbor::map([("actions", cbor::from_serde(&remove).unwrap())]);
    let tx = n.sign_as(&m0, &id(&m0), "gov", "propose", args);
    let (proposal, code) = n.run(tx);
    assert_eq!(code, "ok");
    let args = cbor::map([
        ("proposal", cbor::text(hex::encode(proposal))),
        ("vote", cbor::text("approve")),
    ]);
    let tx = n.sign_as(&m1, &id(&m1), "gov", "vote", args);
    assert_eq!(n.run(tx).1, "ok");
    n.expect(&m1, "hold.lift", lift, "ok");
}

#[test]
fn record_and_events_are_provable() {
    let mut n = Net::new();
    let (alice, bob) = (n.alice.clone(), n.bob.clone());
    let a = n.register(
        &alice,
        "register",
        reg(sha256(b"p"), "P", &[(&bob, "buyer")], DAY, 1),
    );
    n.sign(&bob, &a, "ok");
    let root = n.checkpoint();
    let seq = n.ex.checkpoint_seq();
    let r = n.store.read().unwrap();
    let key = keys::notary_doc(&a);
    let p = r.state_proof(&key, seq).unwrap();
    assert_eq!(p.root, root);
    let value = p.value.clone().expect("record in the state tree");
    comity_core::state::verify(&root, &key, Some(&value), &p.proof).unwrap();
    let d = Document::from_cbor(&value).unwrap();
    assert_eq!(d.status, Status::Executed);
    let events = n.events(&a);
    assert_eq!(walk(&a, &events), (d.chain.events, d.chain.head.0));
    // An event left out, or any byte changed, no longer reaches the proved head.
    assert_eq!(events.len(), 3, "registered, signed, executed");
    let mut omitted = events.clone();
    omitted.remove(1);
    assert_ne!(omitted.len() as u64, d.chain.events);
    assert_ne!(
        decode_event(&omitted[1]).prev.0,
        sha256(&omitted[0]),
        "the event after the gap names the omitted one"
    );
    let mut changed = decode_event(&events[1]);
    changed.actor.0 = id(&alice);
    assert_ne!(changed.hash(), sha256(&events[1]));
    // The record's key follows from its digest, so the same proof answers a
    // lookup by digest, and an unregistered digest is proved absent.
    assert_eq!(a, document::id_of(&d.digest.0));
    let absent = keys::notary_doc(&document::id_of(&sha256(b"never registered")));
    let p = r.state_proof(&absent, seq).unwrap();
    assert_eq!(p.value, None);
    comity_core::state::verify(&root, &absent, None, &p.proof).unwrap();
    assert!(comity_core::state::verify(&root, &absent, Some(&value), &p.proof).is_err());
}

#[test]
fn collections_order_changes_are_events() {
    let mut n = Net::new();
    let (alice, bob) = (n.alice.clone(), n.bob.clone());
    let docs: Vec<Hash> = (0..3)
        .map(|i| {
            let d = sha256(format!("exhibit {i}").as_bytes());
            n.register(
                &alice,
                "register",
                reg(d, &format!("Exhibit {i}"), &[], 0, 1),
            )
        })
        .collect();
    let c = n.expect(
        &alice,
        "collection.create",
        json!({"name": "Pleadings", "matter": "M-1"}),
        "ok",
    );
    let order = |ds: &[Hash]| json!({"collection": hex::encode(c), "documents": ds.iter().map(hex::encode).collect::<Vec<_>>()});
    n.expect(&alice, "collection.set_order", order(&docs), "ok");
    n.expect(
        &alice,
        "collection.set_order",
        order(&[docs[2], docs[0], docs[1]]),
        "ok",
    );
    // bob may read none of its documents: it is not told the collection exists.
    n.expect(&bob, "collection.set_order", order(&docs), "not_found");
    n.expect(
        &alice,
        "collection.set_order",
        order(&[docs[0], docs[0]]),
        "bad_args",
    );
    n.expect(
        &alice,
        "collection.set_order",
        order(&[docs[0], [5; 32]]),
        "not_found",
    );
    n.expect(
        &alice,
        "collection.set_order",
        json!({"collection": hex::encode([4u8; 32]), "documents": []}),
        "not_found",
    );
    n.expect(&alice, "collection.create", json!({"name": ""}), "bad_args");
    let col = collection::load(&n.store.read().unwrap(), &c)
        .unwrap()
        .unwrap();
    assert_eq!(
        col.documents.iter().map(|d| d.0).collect::<Vec<_>>(),
        [docs[2], docs[0], docs[1]]
    );
    assert_eq!(
        n.kinds(&c),
        ["collection_created", "order_set", "order_set"]
    );
    let events = n.events(&c);
    assert_eq!(walk(&c, &events), (col.chain.events, col.chain.head.0));
    let last = decode_event(&events[2]);
    assert_eq!(
        last.details["documents"],
        [docs[2], docs[0], docs[1]]
            .iter()
            .map(hex::encode)
            .collect::<Vec<_>>()
            .join(",")
    );

    // bob may read the collection once it holds only a document he is
    // party to, but a proof showing the earlier order (as of a checkpoint
    // before the change) would name one he may not read.
    let shared = n.register(
        &alice,
        "register",
        reg(sha256(b"shared"), "Shared", &[(&bob, "party")], 0, 1),
    );
    n.expect(
        &alice,
        "collection.set_order",
        order(&[shared, docs[0]]),
        "ok",
    );
    let state = |n: &Net| {
        n.store
            .read()
            .unwrap()
            .get(&keys::notary_collection(&c))
            .unwrap()
            .unwrap()
    };
    let then = state(&n);
    n.expect(&alice, "collection.set_order", order(&[shared]), "ok");
    let now = state(&n);
    let r = n.store.read().unwrap();
    let current = collection::load(&r, &c).unwrap().unwrap();
    let (a, b) = (id(&alice), id(&bob));
    assert!(collection::readable_by(&r, &current, &b).unwrap());
    assert!(!collection::proof_readable_by(&r, &current, Some(&then), &b).unwrap());
    assert!(collection::proof_readable_by(&r, &current, Some(&now), &b).unwrap());
    assert!(collection::proof_readable_by(&r, &current, None, &b).unwrap());
    assert!(
        collection::proof_readable_by(&r, &current, Some(&then), &a).unwrap(),
        "the owner is shown every order"
    );
}

#[test]
fn queries_by_party_matter_status_and_time_in_pages() {
    let mut n = Net::new();
    let (alice, bob, carol) = (n.alice.clone(), n.bob.clone(), n.carol.clone());
    let mut ids = Vec::new();
    let mut times = Vec::new();
    for i in 0..7u8 {
        let parties: Vec<(&SigningKey, &str)> = if i % 2 == 0 {
            vec![(&bob, "buyer")]
        } else {
            vec![(&carol, "buyer")]
        };
        let mut args = reg(sha256(&[i]), &format!("D{i}"), &parties, 0, 1);
        args["matter"] = json!(if i < 3 { "alpha" } else { "beta" });
        ids.push(n.register(&alice, "register", args));
        times.push(n.time);
    }
    n.sign(&bob, &ids[0], "ok");
    n.sign(&bob, &ids[2], "ok");
    let r = n.store.read().unwrap();
    let as_reader = |reader: &SigningKey, f: Filter, status: Option<Status>, limit: usize| {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let p = query::documents(&r, &f, status, &id(reader), after.as_deref(), limit).unwrap();
            assert!(p.items.len() <= limit);
            out.extend(p.items.iter().map(|d| d.id.0));
            match p.next {
                Some(c) => after = Some(c),
                None => return out,
            }
        }
    };
    let all = |f: Filter, status: Option<Status>, limit: usize| as_reader(&alice, f, status, limit);
    let pick = |is: &[usize]| is.iter().map(|&i| ids[i]).collect::<Vec<_>>();
    assert_eq!(all(Filter::Party(id(&bob)), None, 2), pick(&[0, 2, 4, 6]));
    assert_eq!(all(Filter::Party(id(&carol)), None, 1), pick(&[1, 3, 5]));
    assert_eq!(all(Filter::Party(id(&alice)), None, 5), pick(&[]));
    assert_eq!(
        all(Filter::Matter("alpha".into()), None, 2),
        pick(&[0, 1, 2])
    );
    assert_eq!(
        all(Filter::Status(Status::Executed), None, 1),
        pick(&[0, 2])
    );
    assert_eq!(
        all(Filter::Status(Status::Draft), None, 3),
        pick(&[1, 3, 4, 5, 6])
    );
    assert_eq!(
        all(Filter::Party(id(&bob)), Some(Status::Draft), 1),
        pick(&[4, 6])
    );
    assert_eq!(
        all(
            Filter::Time {
                from: times[2],
                to: times[5]
            },
            None,
            2
        ),
        pick(&[2, 3, 4])
    );
    assert_eq!(
        all(
            Filter::Time {
                from: 0,
                to: u64::MAX
            },
            None,
            3
        ),
        ids
    );
    // A reader sees only the records it is party to: bob the even ones,
    // carol the odd ones, whatever the filter.
    let alpha = || Filter::Matter("alpha".into());
    assert_eq!(as_reader(&bob, alpha(), None, 2), pick(&[0, 2]));
    assert_eq!(as_reader(&carol, alpha(), None, 2), pick(&[1]));
    assert_eq!(
        as_reader(&carol, Filter::Party(id(&bob)), None, 2),
        pick(&[])
    );
    let d0 = n.doc(&ids[0]);
    assert!(d0.may_read(&id(&alice)) && d0.may_read(&id(&bob)));
    assert!(!d0.may_read(&id(&carol)));
}

#[test]
fn a_status_filter_over_a_long_listing_pages_with_bounded_reads() {
    let mut n = Net::new();
    let alice = n.alice.clone();
    // MAX_SCAN executed documents (no signing party), then one draft.
    let mut txs: Vec<_> = (0..query::MAX_SCAN as u32)
        .map(|i| {
            let args = reg(sha256(&i.to_be_bytes()), "Exec", &[], DAY, 1);
            n.sign_as(
                &alice,
                &id(&alice),
                "notary",
                "register",
                cbor::from_serde(&args).unwrap(),
            )
        })
        .collect();
    let draft = reg(sha256(b"the draft"), "Draft", &[(&alice, "a")], DAY, 1);
    txs.push(n.sign_as(
        &alice,
        &id(&alice),
        "notary",
        "register",
        cbor::from_serde(&draft).unwrap(),
    ));
    for chunk in txs.chunks(512) {
        n.time += 10;
        let time = n.time;
        let out = n.apply(Command::Batch {
            time,
            txs: chunk
                .iter()
                .cloned()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
        });
        assert!(out.txs.iter().all(|t| t.outcome.code() == "ok"));
    }
    let r = n.store.read().unwrap();
    let f = Filter::Matter("M-2026-001".into());
    let me = id(&alice);
    let first = query::documents(&r, &f, Some(Status::Draft), &me, None, 10).unwrap();
    assert!(first.items.is_empty(), "the page ends after MAX_SCAN reads");
    let after = first.next.expect("a cursor to go on");
    let rest = query::documents(&r, &f, Some(Status::Draft), &me, Some(&after), 10).unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].id.0, document::id_of(&sha256(b"the draft")));
    assert_eq!(rest.next, None);
}

#[test]
fn personal_data_is_erasable_without_touching_proofs() {
    let mut n = Net::new();
    let (alice, bob) = (n.alice.clone(), n.bob.clone());
    let blob = b"{\"client\": \"Jane Doe, born 1980-01-01\"}".to_vec();
    let mut args = reg(sha256(b"will"), "Will", &[(&bob, "testator")], 0, 1);
    args["personal"] = json!(hex::encode(sha256(&blob)));
    let d = n.register(&alice, "register", args);
    // The node keeps the blob beside the state (as its API does on upload).
    {
        let t = n.store.begin().unwrap();
        t.batch()
            .unwrap()
            .aux_put(&keys::notary_personal(&d), &blob)
            .unwrap();
        t.commit(false).unwrap();
    }
    let before = n.doc(&d);
    n.act(&bob, "metadata.erase", &d, "not_authorized");
    // Under a legal hold the personal data is evidence.
    let m0 = n.m[0].clone();
    let hold = n.act(&m0, "hold.place", &d, "ok");
    n.act(&alice, "metadata.erase", &d, "legal_hold");
    let lift = json!({"document": hex::encode(d), "hold": hex::encode(hold)});
    n.expect(&m0, "hold.lift", lift, "ok");
    n.act(&alice, "metadata.erase", &d, "ok");
    n.act(&alice, "metadata.erase", &d, "ok"); // idempotent
    let after = n.doc(&d);
    assert!(n
        .store
        .read()
        .unwrap()
        .aux_get(&keys::notary_personal(&d))
        .unwrap()
        .is_none());
    assert!(after.personal_erased);
    assert_eq!(
        (after.personal, after.digest),
        (before.personal, before.digest)
    );
    assert_eq!(
        n.kinds(&d),
        [
            "registered",
            "hold_placed",
            "hold_lifted",
            "personal_data_erased"
        ]
    );
}

#[test]
fn replay_reproduces_the_state_root() {
    let mut n = Net::new();
    let (alice, bob, carol, m0) = n.people();
    let a = n.register(
        &alice,
        "register",
        reg(sha256(b"r"), "R", &[(&alice, "a"), (&bob, "b")], 0, 1),
    );
    n.sign(&alice, &a, "ok");
    n.sign(&carol, &a, "not_found");
    n.sign(&bob, &a, "ok");
    let h = n.act(&m0, "hold.place", &a, "ok");
    n.expect(
        &m0,
        "hold.lift",
        json!({"document": hex::encode(a), "hold": hex::encode(h)}),
        "ok",
    );
    n.act(&alice, "revoke", &a, "ok");
    n.act(&alice, "destroy.approve", &a, "ok");
    n.act(&alice, "destroy", &a, "ok");
    let c = n.expect(&bob, "collection.create", json!({"name": "File"}), "ok");
    n.expect(
        &bob,
        "collection.set_order",
        json!({"collection": hex::encode(c), "documents": [hex::encode(a)]}),
        "ok",
    );
    let root = n.checkpoint();

    let scratch = tempfile::tempdir().unwrap();
    let mut audit = Audit::new(scratch.path()).unwrap();
    let len = n.store.read().unwrap().ledger_len().unwrap();
    for i in 0..len {
        audit.feed(i, &n.store.record(i).unwrap()).unwrap();
    }
    let summary = audit.finish().unwrap();
    assert_eq!(summary.last_state_root, Some(root));
    assert_eq!(summary.rejected, 1);
}

/// The raw ledger shows a user every transaction except other identities'
/// notary and kv ones, so it never goes round the documents' per-record
/// reads or shows one identity's kv values to another.
#[test]
fn users_are_not_shown_other_identities_notary_or_kv_transactions() {
    use comity_apps::query::{record, user_may_read, user_view};
    use comity_core::entry::Record;
    let mut n = Net::new();
    let (alice, bob, carol) = (n.alice.clone(), n.bob.clone(), n.carol.clone());
    n.register(
        &alice,
        "register",
        reg(
            sha256(b"contract"),
            "c",
            &[(&alice, "seller"), (&bob, "buyer")],
            DAY,
            2,
        ),
    );
    let at = n.store.read().unwrap().ledger_len().unwrap() - 1;
    let put = n.sign_as(
        &alice,
        &id(&alice),
        "kv",
        "put",
        cbor::map([("key", cbor::text("k")), ("value", cbor::bytes(b"v"))]),
    );
    assert_eq!(n.run(put).1, "ok");
    let kv_at = at + 1;

    for i in [at, kv_at] {
        let (rec, leaf) = record(&n.store, i).unwrap();
        assert!(user_may_read(&rec, &leaf, &id(&alice)), "the signer");
        for other in [&bob, &carol] {
            assert!(!user_may_read(&rec, &leaf, &id(other)), "entry {i}");
        }
        let shown = user_view(n.store.record(i).unwrap(), i, &id(&carol)).unwrap();
        let shown = Record::from_cbor(&shown).unwrap();
        assert!(shown.body.is_empty(), "withheld");
        assert_eq!(shown.leaf, rec.leaf, "the leaf stays whole");
    }
    // Genesis is not confidential among users.
    let (rec, leaf) = record(&n.store, 0).unwrap();
    assert!(user_may_read(&rec, &leaf, &id(&carol)));
    let raw = n.store.record(0).unwrap();
    assert_eq!(user_view(raw.clone(), 0, &id(&carol)).unwrap(), raw);
    // A body that is not a transaction is withheld too.
    let (rec, leaf) = record(&n.store, at).unwrap();
    let junk = Record {
        leaf: rec.leaf.clone(),
        body: b"not a transaction".to_vec(),
    };
    assert!(!user_may_read(&junk, &leaf, &id(&carol)));
}
