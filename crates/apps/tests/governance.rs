//! Governance through the executor on a real store: three members propose,
//! vote, withdraw and let proposals expire; the constitution decides; actions
//! apply all together or not at all; every unauthorized path is refused with
//! its code; and a replay of the ledger reproduces the same state root.

mod common;

use comity_apps::audit::Audit;
use comity_apps::genesis::node_info;
use comity_apps::gov::constitution::{Constitution, Rule, Threshold};
use comity_apps::gov::proposal::{Proposal, ProposalState};
use comity_apps::gov::{self, state, Id};
use comity_apps::registry::{self, Role, Status};
use comity_apps::{Command, Genesis, IdentitySpec};
use comity_core::cbor::{self, Value};
use comity_core::checkpoint::{self, NODE_SET_CONTENT_TYPE};
use comity_core::crypto::{Alg, SigningKey};
use comity_core::network::NodeSet;
use comity_core::Hash;
use serde_json::json;

const T0: u64 = 1_763_000_000_000;
const EXPIRY: u64 = 60_000;

struct Gov {
    l: common::Ledger,
    m: Vec<SigningKey>,
    user: SigningKey,
    /// The genesis node set's only node.
    node: SigningKey,
}

impl std::ops::Deref for Gov {
    type Target = common::Ledger;
    fn deref(&self) -> &common::Ledger {
        &self.l
    }
}

impl std::ops::DerefMut for Gov {
    fn deref_mut(&mut self) -> &mut common::Ledger {
        &mut self.l
    }
}

impl Gov {
    fn new() -> Gov {
        let m: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(Alg::EdDsa)).collect();
        let user = SigningKey::generate(Alg::Es256);
        let node = SigningKey::generate(Alg::EdDsa);
        let mut g = Genesis::new(
            "gov",
            T0,
            m.iter()
                .enumerate()
                .map(|(i, k)| IdentitySpec::new(k.public().to_spki_der(), &format!("m{i}")))
                .collect(),
            vec![IdentitySpec::new(user.public().to_spki_der(), "u")],
            NodeSet(vec![node_info(&node.public(), m[0].public().fingerprint())]),
        );
        g.constitution.expiry_ms = EXPIRY;
        Gov {
            l: common::Ledger::start(&g),
            m,
            user,
            node,
        }
    }

    fn sign(&mut self, key: &SigningKey, app: &str, op: &str, args: Value) -> Vec<u8> {
        let kid = key.public().fingerprint();
        self.sign_as(key, &kid, app, op, args)
    }

    fn propose(&mut self, who: usize, actions: serde_json::Value) -> (Hash, String) {
        let args = cbor::map([("actions", cbor::from_serde(&actions).unwrap())]);
        let tx = self.sign(&self.m[who].clone(), "gov", "propose", args);
        self.run(tx)
    }

    fn vote(&mut self, who: &SigningKey, p: &Hash, vote: &str) -> String {
        let args = cbor::map([
            ("proposal", cbor::text(hex::encode(p))),
            ("vote", cbor::text(vote)),
        ]);
        let tx = self.sign(who, "gov", "vote", args);
        self.run(tx).1
    }

    fn proposal(&self, id: &Hash) -> Proposal {
        gov::load(&self.store.read().unwrap(), id).unwrap().unwrap()
    }

    /// m0 proposes, m1 approves: passes under a majority rule.
    fn pass(&mut self, actions: serde_json::Value) -> Proposal {
        let (id, code) = self.propose(0, actions);
        assert_eq!(code, "ok");
        let m1 = self.m[1].clone();
        assert_eq!(self.vote(&m1, &id, "approve"), "ok");
        self.proposal(&id)
    }

    fn put(&mut self, key: &SigningKey, kid: Option<Hash>) -> String {
        let args = cbor::map([("key", cbor::text("k")), ("value", cbor::bytes(vec![1]))]);
        let kid = kid.unwrap_or_else(|| key.public().fingerprint());
        let tx = self.sign_as(key, &kid, "kv", "put", args);
        self.run(tx).1
    }

    fn status(&self, id: &Hash) -> Status {
        registry::get(&self.store.read().unwrap(), id)
            .unwrap()
            .unwrap()
            .status
    }
}

fn id_of(k: &SigningKey) -> String {
    hex::encode(k.public().fingerprint())
}

fn add_user(k: &SigningKey) -> serde_json::Value {
    json!([{"action": "user.add", "args": {"key": hex::encode(k.public().to_spki_der()), "name": "new"}}])
}

#[test]
fn propose_vote_accept_reject_withdraw_expire() {
    let mut g = Gov::new();
    let (m1, m2) = (g.m[1].clone(), g.m[2].clone());

    // Accepted by a majority: the proposer's implicit approval and one ballot.
    let alice = SigningKey::generate(Alg::EdDsa);
    let (p, code) = g.propose(0, add_user(&alice));
    assert_eq!(code, "ok");
    assert_eq!(g.proposal(&p).state, ProposalState::Open);
    assert_eq!(g.put(&alice, None), "unknown_signer");
    assert_eq!(g.vote(&m1, &p, "approve"), "ok");
    let accepted = g.proposal(&p);
    assert_eq!(accepted.state, ProposalState::Accepted);
    assert_eq!(accepted.ballots.len(), 2);
    assert_eq!(g.put(&alice, None), "ok");
    // A ballot after the decision, and a duplicate ballot.
    assert_eq!(g.vote(&m2, &p, "approve"), "proposal_closed");
    let bob = SigningKey::generate(Alg::EdDsa);
    let (p2, _) = g.propose(0, add_user(&bob));
    assert_eq!(g.vote(&m1, &p2, "reject"), "ok");
    assert_eq!(g.vote(&m1, &p2, "approve"), "already_voted");
    // Rejected as soon as a majority can no longer be reached.
    assert_eq!(g.vote(&m2, &p2, "reject"), "ok");
    assert_eq!(g.proposal(&p2).state, ProposalState::Rejected);
    assert_eq!(g.put(&bob, None), "unknown_signer");

    // Withdrawn by its proposer only.
    let (p3, _) = g.propose(0, add_user(&bob));
    let withdraw = |g: &mut Gov, who: &SigningKey| {
        let tx = g.sign(
            who,
            "gov",
            "withdraw",
            cbor::map([("proposal", cbor::text(hex::encode(p3)))]),
        );
        g.run(tx).1
    };
    assert_eq!(withdraw(&mut g, &m1), "not_proposer");
    let m0 = g.m[0].clone();
    assert_eq!(withdraw(&mut g, &m0), "ok");
    assert_eq!(g.proposal(&p3).state, ProposalState::Withdrawn);
    assert_eq!(g.vote(&m1, &p3, "approve"), "proposal_closed");

    // Expired by ledger time, even with no transaction touching it, and in
    // deadline order: batches before a deadline leave its proposal open.
    let (p4, _) = g.propose(0, add_user(&bob));
    let expires = g.proposal(&p4).expires;
    g.time = expires - 100; // each transaction moves the clock by 10 ms
    let (p5, _) = g.propose(0, add_user(&SigningKey::generate(Alg::EdDsa)));
    let later = g.proposal(&p5).expires;
    assert!(later > expires);
    let tick = |g: &mut Gov, time: u64| {
        g.time = time;
        g.apply(Command::Batch { time, txs: vec![] });
    };
    tick(&mut g, expires - 1);
    tick(&mut g, expires - 1); // nothing due: the scan is skipped
    assert_eq!(g.proposal(&p4).state, ProposalState::Open);
    tick(&mut g, expires);
    let expired = g.proposal(&p4);
    assert_eq!(expired.state, ProposalState::Expired);
    assert_eq!(expired.resolved.unwrap().time, expires);
    tick(&mut g, later - 1);
    assert_eq!(g.proposal(&p5).state, ProposalState::Open);
    tick(&mut g, later);
    assert_eq!(g.proposal(&p5).state, ProposalState::Expired);
    assert_eq!(g.vote(&m1, &p4, "approve"), "proposal_expired");
    assert_eq!(
        gov::next_expiry(&g.store.read().unwrap()).unwrap(),
        None,
        "no open proposal left"
    );

    // An unknown proposal.
    assert_eq!(g.vote(&m1, &[9; 32], "approve"), "not_found");
}

#[test]
fn failing_actions_apply_nothing() {
    let mut g = Gov::new();
    let carol = SigningKey::generate(Alg::EdDsa);
    let mut actions = add_user(&carol);
    actions
        .as_array_mut()
        .unwrap()
        .push(json!({"action": "member.remove", "args": {"id": hex::encode([7u8; 32])}}));
    let p = g.pass(actions);
    assert_eq!(p.state, ProposalState::Failed);
    assert!(
        p.resolved
            .unwrap()
            .reason
            .unwrap()
            .contains("action 1 (member.remove)"),
        "the reason names the failing action"
    );
    assert_eq!(
        g.put(&carol, None),
        "unknown_signer",
        "the user.add before it was not applied"
    );

    // Removing every active member is refused, and so is leaving a rule unsatisfiable.
    let all: Vec<_> =
        g.m.iter()
            .map(|k| json!({"action": "member.remove", "args": {"id": id_of(k)}}))
            .collect();
    let p = g.pass(json!(all));
    assert_eq!(p.state, ProposalState::Failed);
    // Member m0 operates the only node: it cannot be removed before the node is retired.
    let p = g.pass(json!([{"action": "member.remove", "args": {"id": id_of(&g.m[0])}}]));
    assert_eq!(p.state, ProposalState::Failed);
    assert!(p
        .resolved
        .unwrap()
        .reason
        .unwrap()
        .contains("retire the node first"));
    assert_eq!(g.status(&g.m[0].public().fingerprint()), Status::Active);

    // A constitution naming someone who is not a member fails when accepted...
    let mut c = Constitution::default();
    c.rules.insert(
        "network.close".into(),
        Rule {
            approve: Some(Threshold::AtLeast(1)),
            of: Some(vec![Id([5; 32])]),
            ..Rule::default()
        },
    );
    let c_json = serde_json::to_value(&c).unwrap();
    let (p, code) = g.propose(0, json!([{"action": "constitution.set", "args": c_json}]));
    assert_eq!(code, "ok");
    for k in [g.m[1].clone(), g.m[2].clone()] {
        g.vote(&k, &p, "approve");
    }
    assert_eq!(g.proposal(&p).state, ProposalState::Failed);
    // ...and one that cannot be satisfied at all is refused when proposed.
    c.rules.get_mut("network.close").unwrap().approve = Some(Threshold::AtLeast(300));
    let (_, code) = g.propose(
        0,
        json!([{"action": "constitution.set", "args": serde_json::to_value(&c).unwrap()}]),
    );
    assert_eq!(code, "bad_args");
}

#[test]
fn constitution_change_applies_to_the_next_proposal_only() {
    let mut g = Gov::new();
    let (m1, m2) = (g.m[1].clone(), g.m[2].clone());
    let dave = SigningKey::generate(Alg::EdDsa);
    let (before, _) = g.propose(0, add_user(&dave));
    // A constitution proposed now, under version 1, but decided later.
    let mut stale = Constitution::default();
    stale
        .rules
        .insert("member.remove".into(), Rule::unanimous());
    let (stale, code) = g.propose(
        1,
        json!([{"action": "constitution.set", "args": serde_json::to_value(&stale).unwrap()}]),
    );
    assert_eq!(code, "ok");
    let (_, code) = g.propose(
        1,
        json!([
            {"action": "constitution.set", "args": serde_json::to_value(Constitution::default()).unwrap()},
            {"action": "constitution.set", "args": serde_json::to_value(Constitution::default()).unwrap()}
        ]),
    );
    assert_eq!(code, "bad_args", "two constitutions in one proposal");

    // Unanimity for user.add, and m2 alone may close the network.
    let mut c = Constitution::default();
    c.rules.insert("user.add".into(), Rule::unanimous());
    c.rules.insert(
        "network.close".into(),
        Rule {
            approve: Some(Threshold::AtLeast(1)),
            of: Some(vec![Id(m2.public().fingerprint())]),
            ..Rule::default()
        },
    );
    let (cs, _) = g.propose(
        0,
        json!([{"action": "constitution.set", "args": serde_json::to_value(&c).unwrap()}]),
    );
    assert_eq!(g.vote(&m1, &cs, "approve"), "ok");
    assert_eq!(
        g.proposal(&cs).state,
        ProposalState::Open,
        "constitution.set needs unanimity"
    );
    assert_eq!(g.vote(&m2, &cs, "approve"), "ok");
    assert_eq!(g.proposal(&cs).state, ProposalState::Accepted);
    assert_eq!(
        state::current_constitution(&g.store.read().unwrap())
            .unwrap()
            .0,
        2
    );

    // The open proposal is still decided by the constitution it was made under.
    assert_eq!(g.vote(&m1, &before, "approve"), "ok");
    assert_eq!(g.proposal(&before).state, ProposalState::Accepted);
    // But a constitution proposed under version 1 may not replace version 2:
    // it fails at its next ballot.
    let m0 = g.m[0].clone();
    assert_eq!(g.vote(&m0, &stale, "approve"), "ok");
    let p = g.proposal(&stale);
    assert_eq!(p.state, ProposalState::Failed);
    let why = p.resolved.unwrap().reason.unwrap();
    assert!(why.contains("version 2 was adopted since"), "{why}");
    // A new one follows the new rule.
    let erin = SigningKey::generate(Alg::EdDsa);
    let (after, _) = g.propose(0, add_user(&erin));
    assert_eq!(g.vote(&m1, &after, "approve"), "ok");
    assert_eq!(g.proposal(&after).state, ProposalState::Open);
    assert_eq!(g.vote(&m2, &after, "approve"), "ok");
    assert_eq!(g.proposal(&after).state, ProposalState::Accepted);

    // Only m2's approval counts for network.close.
    let (close, _) = g.propose(0, json!([{"action": "network.close"}]));
    assert_eq!(g.vote(&m1, &close, "approve"), "ok");
    assert_eq!(g.proposal(&close).state, ProposalState::Open);
    assert_eq!(g.vote(&m2, &close, "approve"), "ok");
    assert_eq!(g.proposal(&close).state, ProposalState::Accepted);
    let user = g.user.clone();
    assert_eq!(g.put(&user, None), "network_closed");
    let m0 = g.m[0].clone();
    assert_eq!(g.put(&m0, None), "ok", "members still transact");

    // Removing m2 would leave network.close with no one to approve it.
    let p = g.pass(json!([{"action": "member.remove", "args": {"id": id_of(&m2)}}]));
    assert_eq!(p.state, ProposalState::Failed);
    assert!(p
        .resolved
        .unwrap()
        .reason
        .unwrap()
        .contains("never be satisfied"));
}

#[test]
fn authorization_membership_and_keys() {
    let mut g = Gov::new();
    let (m2, user) = (g.m[2].clone(), g.user.clone());
    let frank = SigningKey::generate(Alg::EdDsa);
    let (p, _) = g.propose(0, add_user(&frank));

    // Users may not propose or vote; strangers are unknown.
    let args = cbor::map([("actions", cbor::from_serde(&add_user(&frank)).unwrap())]);
    let tx = g.sign(&user, "gov", "propose", args.clone());
    assert_eq!(g.run(tx).1, "forbidden");
    assert_eq!(g.vote(&user, &p, "approve"), "forbidden");
    let tx = g.sign(&frank, "gov", "propose", args);
    assert_eq!(g.run(tx).1, "unknown_signer");

    // A removed member's ballot is refused, and its earlier ballots stop counting.
    assert_eq!(g.vote(&m2, &p, "reject"), "ok");
    let removed = g.pass(json!([{"action": "member.remove", "args": {"id": id_of(&m2)}}]));
    assert_eq!(removed.state, ProposalState::Accepted);
    assert_eq!(g.status(&m2.public().fingerprint()), Status::Removed);
    assert_eq!(g.vote(&m2, &p, "approve"), "inactive_identity");
    assert_eq!(g.put(&m2, None), "inactive_identity");

    // A new member is accepted, must acknowledge the constitution, then votes.
    let gina = SigningKey::generate(Alg::EdDsa);
    let added = g.pass(json!([{"action": "member.add", "args": {
        "key": hex::encode(gina.public().to_spki_der()), "name": "Gina", "data": {"org": "Bank G"}}}]));
    assert_eq!(added.state, ProposalState::Accepted);
    let gid = gina.public().fingerprint();
    assert_eq!(g.status(&gid), Status::Accepted);
    assert_eq!(g.vote(&gina, &p, "approve"), "not_acknowledged");
    let ack = |g: &mut Gov, digest: Hash| {
        let tx = g.sign(
            &gina,
            "gov",
            "ack",
            cbor::map([("constitution", cbor::text(hex::encode(digest)))]),
        );
        g.run(tx).1
    };
    assert_eq!(ack(&mut g, [0; 32]), "stale_constitution");
    let (_, c) = state::current_constitution(&g.store.read().unwrap()).unwrap();
    assert_eq!(ack(&mut g, state::constitution_digest(&c)), "ok");
    assert_eq!(g.status(&gid), Status::Active);
    assert_eq!(
        ack(&mut g, state::constitution_digest(&c)),
        "already_active"
    );
    // Active members now: m0, m1, gina; m0 and gina approve.
    assert_eq!(g.vote(&gina, &p, "approve"), "ok");
    assert_eq!(g.proposal(&p).state, ProposalState::Accepted);

    // Removing a user stops its transactions from the next entry on.
    assert_eq!(g.put(&user, None), "ok");
    let uid = hex::encode(user.public().fingerprint());
    g.pass(json!([{"action": "user.remove", "args": {"id": uid}}]));
    assert_eq!(g.put(&user, None), "inactive_identity");

    // Key rotation: the id stays, the old key stops, the new key works.
    let fk2 = SigningKey::generate(Alg::EdDsa);
    let fid = frank.public().fingerprint();
    // Two rotations of one identity in one proposal: the first key would
    // never be in force, yet bound to frank for good.
    let rotate = |k: &SigningKey| {
        json!({"action": "identity.rotate_key", "args": {
            "id": hex::encode(fid), "key": hex::encode(k.public().to_spki_der())}})
    };
    let (_, code) = g.propose(0, json!([rotate(&fk2), rotate(&frank)]));
    assert_eq!(code, "bad_args", "two rotations of one identity");
    let rotated = g.pass(json!([{"action": "identity.rotate_key", "args": {
        "id": hex::encode(fid), "key": hex::encode(fk2.public().to_spki_der())}}]));
    assert_eq!(rotated.state, ProposalState::Accepted);
    assert_eq!(g.put(&frank, None), "bad_signature");
    assert_eq!(g.put(&fk2, Some(fid)), "ok");
    let ident = registry::get(&g.store.read().unwrap(), &fid)
        .unwrap()
        .unwrap();
    assert_eq!(ident.id(), fid);
    assert_eq!(ident.keys.len(), 2);
    // A member's key is its vote: a majority without it cannot rotate it.
    // The accepted proposal waits for the member, and fails if it refuses.
    let rotate_gina = |k: &SigningKey| {
        json!([{"action": "identity.rotate_key", "args": {
            "id": hex::encode(gid), "key": hex::encode(k.public().to_spki_der())}}])
    };
    let taken = SigningKey::generate(Alg::EdDsa);
    let waits = g.pass(rotate_gina(&taken));
    assert_eq!(waits.state, ProposalState::Open, "waits for gina");
    assert_eq!(g.vote(&gina, &waits.id.0, "reject"), "ok");
    let failed = g.proposal(&waits.id.0);
    assert_eq!(failed.state, ProposalState::Failed);
    let why = failed.resolved.and_then(|r| r.reason).unwrap_or_default();
    assert!(why.contains("the member whose key it rotates"), "{why}");
    let gina_new = SigningKey::generate(Alg::EdDsa);
    let agreed = g.pass(rotate_gina(&gina_new));
    assert_eq!(g.vote(&gina, &agreed.id.0, "approve"), "ok");
    assert_eq!(g.proposal(&agreed.id.0).state, ProposalState::Accepted);
    assert_eq!(
        registry::get(&g.store.read().unwrap(), &gid)
            .unwrap()
            .unwrap()
            .keys
            .len(),
        2
    );

    // A rotated key cannot become a node's key.
    let m0 = hex::encode(g.m[0].public().fingerprint());
    let p = g.pass(json!([{"action": "node.trust", "args": {
        "key": hex::encode(fk2.public().to_spki_der()), "member": m0}}]));
    assert_eq!(p.state, ProposalState::Failed);
    // Nor can another encoding of a used key make a new identity: the user's
    // P-256 key with its point compressed is refused when proposed.
    let der = g.user.public().to_spki_der();
    assert_eq!((der.len(), der[26]), (91, 0x04), "uncompressed P-256 SPKI");
    let mut compressed = vec![0x30, 0x39];
    compressed.extend_from_slice(&der[2..23]); // the algorithm identifier
    compressed.extend_from_slice(&[0x03, 0x22, 0x00, 0x02 | (der[90] & 1)]);
    compressed.extend_from_slice(&der[27..59]);
    assert!(comity_core::crypto::PublicKey::from_spki_der(&compressed).is_err());
    let (_, code) = g.propose(
        0,
        json!([{"action": "user.add", "args": {
        "key": hex::encode(&compressed), "name": "again"}}]),
    );
    assert_ne!(code, "ok", "a second encoding of a registered key");

    // Settings: configuration.
    let p = g.pass(json!([{"action": "config.set", "args": {"checkpoint_ms": 200}}]));
    assert_eq!(p.state, ProposalState::Accepted);
    assert_eq!(g.ex.config().checkpoint_ms, 200);
    let (_, code) = g.propose(
        0,
        json!([{"action": "config.set", "args": {"checkpoint_ms": 0}}]),
    );
    assert_eq!(code, "bad_args");
}

#[test]
fn replay_reproduces_governance_state() {
    let mut g = Gov::new();
    let m1 = g.m[1].clone();
    let h = SigningKey::generate(Alg::EdDsa);
    g.pass(add_user(&h));
    let (p, _) = g.propose(0, add_user(&SigningKey::generate(Alg::EdDsa)));
    g.vote(&m1, &p, "reject");
    let (p2, _) = g.propose(1, add_user(&SigningKey::generate(Alg::EdDsa)));
    // Expired by an idle tick the ledger does not record.
    g.time = g.proposal(&p2).expires + 5;
    let time = g.time;
    g.apply(Command::Batch { time, txs: vec![] });
    g.time += 10;
    let time = g.time;
    let out = g.apply(Command::Checkpoint { time });
    let root = out.checkpoints.last().expect("checkpoint").state_root;

    let scratch = tempfile::tempdir().unwrap();
    let mut audit = Audit::new(scratch.path()).unwrap();
    let len = g.store.read().unwrap().ledger_len().unwrap();
    for i in 0..len {
        audit.feed(i, &g.store.record(i).unwrap()).unwrap();
    }
    let summary = audit.finish().unwrap();
    assert_eq!(summary.last_state_root, Some(root));
}

#[test]
fn listings_page_with_cursors_and_bounded_reads() {
    use comity_apps::query::MAX_SCAN;
    use comity_apps::registry::Role;
    let mut g = Gov::new();
    // More users than one request reads: 16 proposals of 256 additions.
    let mut users: Vec<Hash> = vec![g.user.public().fingerprint()];
    let mut proposals = Vec::new();
    for _ in 0..MAX_SCAN / gov::MAX_ACTIONS {
        let keys: Vec<SigningKey> = (0..gov::MAX_ACTIONS)
            .map(|_| SigningKey::generate(Alg::EdDsa))
            .collect();
        users.extend(keys.iter().map(|k| k.public().fingerprint()));
        let actions: Vec<_> = keys
            .iter()
            .flat_map(|k| add_user(k).as_array().unwrap().clone())
            .collect();
        let p = g.pass(json!(actions));
        assert_eq!(p.state, ProposalState::Accepted);
        proposals.push(p.id);
    }
    users.sort();
    let r = g.store.read().unwrap();

    // Every user once, in id order, a page of 100 at a time.
    let (mut listed, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let (items, next) = gov::query::identities(&r, Role::User, after, 100).unwrap();
        assert!(items.len() <= 100);
        listed.extend(items.iter().map(|i| i.id()));
        pages += 1;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(listed, users);
    assert!(pages >= users.len() / 100);

    // The one node, hidden among the users: no request reads more than
    // MAX_SCAN identities, so reaching the end takes more than one page.
    let (mut nodes, mut after, mut pages) = (Vec::new(), None, 0);
    loop {
        let (items, next) = gov::query::identities(&r, Role::Node, after, 10).unwrap();
        nodes.extend(items.iter().map(|i| i.id()));
        pages += 1;
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(nodes.len(), 1);
    assert!(
        pages >= 2,
        "{pages} page(s) for {} identities",
        users.len() + 4
    );

    // Proposals in ledger order, two at a time, and none open.
    let (mut seen, mut from) = (Vec::new(), 0);
    loop {
        let (items, next) = gov::query::proposals(&r, None, from, 2).unwrap();
        seen.extend(items.iter().map(|p| p.id));
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    assert_eq!(seen, proposals);
    let (all, next) = gov::query::proposals(&r, None, 0, proposals.len()).unwrap();
    assert_eq!(all.len(), proposals.len());
    assert_eq!(next, None, "a page that ends the listing has no cursor");
    let (open, next) = gov::query::proposals(&r, Some(ProposalState::Open), 0, 2).unwrap();
    assert!(open.is_empty() && next.is_none());

    // A subject's history from an index on: a user changed once, when added.
    let all = gov::query::history(&r, &users[0], 0, 10).unwrap();
    assert_eq!(all.len(), 1);
    assert!(gov::query::history(&r, &users[0], all[0].0 + 1, 10)
        .unwrap()
        .is_empty());
}

/// `node.join` arguments for `key`, operated by `member`.
fn join_args(key: &SigningKey, member: Hash, address: &str) -> Value {
    cbor::map([
        ("key", cbor::bytes(key.public().to_spki_der())),
        ("member", cbor::bytes(member)),
        ("name", cbor::text("node-d")),
        (
            "data",
            Value::Map(vec![(cbor::text("address"), cbor::text(address))]),
        ),
    ])
}

#[test]
fn a_node_asks_to_join_and_members_trust_or_dismiss_it() {
    let mut g = Gov::new();
    let m0 = g.m[0].public().fingerprint();
    let pending = |g: &Gov| comity_apps::join::pending_nodes(&g.store.read().unwrap()).unwrap();
    let node = SigningKey::generate(Alg::EdDsa);
    let id = node.public().fingerprint();

    // Signed by the key it carries, naming an active member: a pending node.
    let tx = g.sign(&node, "node", "join", join_args(&node, m0, "10.0.0.4:8701"));
    assert_eq!(g.run(tx).1, "ok");
    let ident = registry::get(&g.store.read().unwrap(), &id)
        .unwrap()
        .unwrap();
    assert_eq!((ident.role, ident.status), (Role::Node, Status::Pending));
    assert_eq!(ident.operator, Some(m0));
    assert_eq!(ident.data["address"], "10.0.0.4:8701");
    assert_eq!(pending(&g), 1);
    // It may do nothing more, not even ask again.
    let tx = g.sign(&node, "node", "join", join_args(&node, m0, "10.0.0.5:8701"));
    assert_eq!(g.run(tx).1, "already_exists");
    assert_eq!(pending(&g), 1);
    assert_eq!(g.put(&node, None), "inactive_identity");
    let tx = g.sign(&node, "node", "checkpoint", cbor::map([]));
    assert_eq!(g.run(tx).1, "inactive_identity");

    // Refused: a key that is not the signer's, a member that is not one,
    // malformed arguments, and a key another identity already has.
    let other = SigningKey::generate(Alg::EdDsa);
    let tx = g.sign(&other, "node", "join", join_args(&node, m0, "x:1"));
    assert_eq!(g.run(tx).1, "unknown_signer");
    let user_id = g.user.public().fingerprint();
    let tx = g.sign(&other, "node", "join", join_args(&other, user_id, "x:1"));
    assert_eq!(g.run(tx).1, "not_found");
    let bad = cbor::map([("key", cbor::bytes(other.public().to_spki_der()))]);
    let tx = g.sign(&other, "node", "join", bad);
    assert_eq!(g.run(tx).1, "bad_args");
    let m1 = g.m[1].clone();
    let tx = g.sign(&m1, "node", "join", join_args(&m1, m0, "x:1"));
    assert_eq!(g.run(tx).1, "forbidden", "a member is not a node");
    assert_eq!(pending(&g), 1);

    // Trusted by a vote that names only its key and operator, once the
    // operator approves: m1 and m2 are a majority, but m0 operates it.
    let trust = json!([{"action": "node.trust", "args": {
        "key": hex::encode(node.public().to_spki_der()),
        "member": hex::encode(m0),
        "data": {"address": "10.0.0.5:8701"}}}]);
    let (pid, code) = g.propose(1, trust);
    assert_eq!(code, "ok");
    let m2 = g.m[2].clone();
    assert_eq!(g.vote(&m2, &pid, "approve"), "ok");
    assert_eq!(g.proposal(&pid).state, ProposalState::Open);
    assert_eq!(g.status(&id), Status::Pending);
    let m0k = g.m[0].clone();
    assert_eq!(g.vote(&m0k, &pid, "approve"), "ok");
    assert_eq!(g.proposal(&pid).state, ProposalState::Accepted);
    // The set before the change (the genesis node) owes its endorsement,
    // which every later receipt needs, until the endorsement is applied.
    let first = g.node.clone();
    let first_id = first.public().fingerprint();
    let owed = |g: &Gov, who: &Hash| {
        comity_apps::node_set::unendorsed(&g.store.read().unwrap(), who).unwrap()
    };
    let changes = owed(&g, &first_id);
    assert_eq!(changes.len(), 1);
    assert!(changes[0].nodes.get(&id).is_some());
    assert!(owed(&g, &id).is_empty(), "not in the set before the change");
    let body = changes[0].to_cbor();
    let sig = checkpoint::sign(NODE_SET_CONTENT_TYPE, &body, &first, &first_id);
    let args = comity_apps::node::signature_args(&body, &sig);
    let tx = g.sign(&first, "node", "endorse", args);
    assert_eq!(g.run(tx).1, "ok");
    assert!(owed(&g, &first_id).is_empty());
    // An operator that refuses fails the proposal the others accepted.
    let other = SigningKey::generate(Alg::EdDsa);
    let m2_id = g.m[2].public().fingerprint();
    let tx = g.sign(&other, "node", "join", join_args(&other, m2_id, "x:1"));
    assert_eq!(g.run(tx).1, "ok");
    let p = g.pass(json!([{"action": "node.trust", "args": {
        "key": hex::encode(other.public().to_spki_der()), "member": hex::encode(m2_id)}}]));
    assert_eq!(p.state, ProposalState::Open, "waits for m2");
    assert_eq!(g.vote(&m2, &p.id.0, "reject"), "ok");
    let p = g.proposal(&p.id.0);
    assert_eq!(p.state, ProposalState::Failed);
    let why = p.resolved.and_then(|r| r.reason).unwrap_or_default();
    assert!(why.contains("rejected it"), "{why}");
    assert_eq!(g.status(&other.public().fingerprint()), Status::Pending);
    // It fails at once, before the others have voted: it can no longer pass.
    let (pid, code) = g.propose(
        0,
        json!([{"action": "node.trust", "args": {
            "key": hex::encode(other.public().to_spki_der()), "member": hex::encode(m2_id)}}]),
    );
    assert_eq!(code, "ok");
    assert_eq!(g.proposal(&pid).state, ProposalState::Open);
    assert_eq!(g.vote(&m2, &pid, "reject"), "ok");
    assert_eq!(g.proposal(&pid).state, ProposalState::Failed);
    let dismiss = json!([{"action": "node.retire", "args": {
        "id": hex::encode(other.public().fingerprint())}}]);
    assert_eq!(g.pass(dismiss).state, ProposalState::Accepted);
    assert_eq!(g.status(&id), Status::Trusted);
    assert_eq!(pending(&g), 0);
    assert!(state::node_set(&g.store.read().unwrap())
        .unwrap()
        .get(&id)
        .is_some());
    let tx = g.sign(&node, "node", "join", join_args(&node, m0, "x:1"));
    assert_eq!(
        g.run(tx).1,
        "already_exists",
        "a trusted node cannot re-ask"
    );

    // At most MAX_PENDING_NODES wait; dismissing one (retiring it) frees a place.
    let max = comity_apps::join::MAX_PENDING_NODES;
    let nodes: Vec<SigningKey> = (0..=max)
        .map(|_| SigningKey::generate(Alg::EdDsa))
        .collect();
    for (i, k) in nodes.iter().enumerate() {
        let tx = g.sign(k, "node", "join", join_args(k, m0, "x:1"));
        let want = if (i as u64) < max {
            "ok"
        } else {
            "too_many_pending_nodes"
        };
        assert_eq!(g.run(tx).1, want, "request {i}");
    }
    assert_eq!(pending(&g), max);
    let first = nodes[0].public().fingerprint();
    let p = g.pass(json!([{"action": "node.retire", "args": {"id": hex::encode(first)}}]));
    assert_eq!(p.state, ProposalState::Accepted);
    assert_eq!(g.status(&first), Status::Retired);
    assert_eq!(pending(&g), max - 1);
    let last = &nodes[max as usize];
    let tx = g.sign(last, "node", "join", join_args(last, m0, "x:1"));
    assert_eq!(g.run(tx).1, "ok");
    let tx = g.sign(&nodes[0], "node", "join", join_args(&nodes[0], m0, "x:1"));
    assert_eq!(
        g.run(tx).1,
        "inactive_identity",
        "a dismissed node stays out"
    );
}

#[test]
fn the_operator_named_by_a_join_request_dismisses_it_alone() {
    let mut g = Gov::new();
    let m0 = g.m[0].public().fingerprint();
    let (m0k, m1k) = (g.m[0].clone(), g.m[1].clone());
    let pending = |g: &Gov| comity_apps::join::pending_nodes(&g.store.read().unwrap()).unwrap();
    let dismiss = |g: &mut Gov, by: &SigningKey, node: &Hash| {
        let tx = g.sign(
            by,
            "gov",
            "dismiss",
            cbor::map([("node", cbor::text(hex::encode(node)))]),
        );
        g.run(tx).1
    };
    let node = SigningKey::generate(Alg::EdDsa);
    let id = node.public().fingerprint();
    let tx = g.sign(&node, "node", "join", join_args(&node, m0, "10.0.0.4:8701"));
    assert_eq!(g.run(tx).1, "ok");
    // Another member proposes to trust it; that needs m0's approval.
    let (pid, code) = g.propose(
        1,
        json!([{"action": "node.trust", "args": {
            "key": hex::encode(node.public().to_spki_der()), "member": hex::encode(m0)}}]),
    );
    assert_eq!(code, "ok");

    // Only the operator may dismiss it, and only a pending node.
    assert_eq!(dismiss(&mut g, &m1k, &id), "not_operator");
    assert_eq!(dismiss(&mut g, &m0k, &[7; 32]), "not_found");
    assert_eq!(
        dismiss(&mut g, &m0k, &m0),
        "not_found",
        "a member is not a node"
    );
    let tx = g.sign(
        &m0k,
        "gov",
        "dismiss",
        cbor::map([("id", cbor::text(hex::encode(id)))]),
    );
    assert_eq!(g.run(tx).1, "bad_args");
    let tx = g.sign(
        &node,
        "gov",
        "dismiss",
        cbor::map([("node", cbor::text(hex::encode(id)))]),
    );
    assert_eq!(g.run(tx).1, "inactive_identity", "not the node itself");
    assert_eq!((g.status(&id), pending(&g)), (Status::Pending, 1));

    assert_eq!(dismiss(&mut g, &m0k, &id), "ok");
    assert_eq!((g.status(&id), pending(&g)), (Status::Retired, 0));
    assert_eq!(dismiss(&mut g, &m0k, &id), "not_pending");
    // The dismissal is in the node's governance history, after its request.
    let history = gov::query::history(&g.store.read().unwrap(), &id, 0, 10).unwrap();
    assert_eq!(history.len(), 2);
    // The key may not ask again, and the open proposal can no longer trust it.
    let tx = g.sign(&node, "node", "join", join_args(&node, m0, "10.0.0.4:8701"));
    assert_eq!(g.run(tx).1, "inactive_identity");
    assert_eq!(g.vote(&m0k, &pid, "approve"), "ok");
    let p = g.proposal(&pid);
    assert_eq!(p.state, ProposalState::Failed);
    let why = p.resolved.and_then(|r| r.reason).unwrap_or_default();
    assert!(why.contains("retired, not pending"), "{why}");
    assert_eq!(g.status(&id), Status::Retired);
}

/// A protocol switch needs every member (the default constitution); one not
/// yet reached is replaced by the next, which may cancel it.
#[test]
fn protocol_switches_need_every_member_and_can_be_cancelled() {
    let mut g = Gov::new();
    let schedule = |g: &Gov| state::protocol_schedule(&g.store.read().unwrap()).unwrap();
    let unanimous = |g: &mut Gov, version: u64| {
        let (id, code) = g.propose(
            0,
            json!([{"action": "protocol.switch", "args": {"version": version, "at": 1_000_000}}]),
        );
        assert_eq!(code, "ok");
        let (m1, m2) = (g.m[1].clone(), g.m[2].clone());
        assert_eq!(g.vote(&m1, &id, "approve"), "ok");
        assert_eq!(
            g.proposal(&id).state,
            ProposalState::Open,
            "a majority is not enough"
        );
        assert_eq!(g.vote(&m2, &id, "approve"), "ok");
        g.proposal(&id).state
    };
    assert_eq!(unanimous(&mut g, 2), ProposalState::Accepted);
    assert_eq!(schedule(&g), vec![(0, 1), (1_000_000, 2)]);
    assert_eq!(unanimous(&mut g, 1), ProposalState::Accepted, "cancelled");
    assert_eq!(schedule(&g), vec![(0, 1)]);
    // Only the next version: one no build knows would stop every node.
    assert_eq!(unanimous(&mut g, u64::MAX), ProposalState::Failed);
    assert_eq!(unanimous(&mut g, 3), ProposalState::Failed);
    assert_eq!(schedule(&g), vec![(0, 1)]);
}
