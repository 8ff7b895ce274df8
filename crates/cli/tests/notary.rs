//! The notary end to end over HTTPS against a real `comity up` network: a
//! contract's life with several identities through the CLI and the SDK,
//! forbidden transitions and unauthorized actors refused, queries, personal
//! data, `doc verify`, and evidence bundles that verify offline, fail with a
//! reason when any byte or an event is changed, and still verify after the
//! document is destroyed.

mod common;

use comity_client::{Client, Signer, TxState};
use comity_core::crypto::{sha256, Alg, SigningKey};
use comity_core::Hash;
use common::{CliOutput, Network};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

struct N {
    net: Network,
    /// user0 reads.
    client: Client,
}

impl N {
    /// `comity --data … <args>` signed as `who` (a key name in comity-data/keys).
    async fn cli(&self, who: &str, args: &[&str]) -> CliOutput {
        let key = self.net.key_path(who);
        let cert = self.net.cert_path(who);
        let mut all = vec![
            "--key",
            key.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        self.net.cli(&all, T).await
    }

    async fn ok(&self, who: &str, args: &[&str]) -> String {
        let o = self.cli(who, args).await;
        assert!(
            o.status.success(),
            "comity {args:?} as {who}:\n{}\n{}",
            o.stdout,
            o.stderr
        );
        o.stdout
    }

    /// Fails with the given rejection code.
    async fn refused(&self, who: &str, args: &[&str], code: &str) {
        let o = self.cli(who, args).await;
        assert!(
            !o.status.success(),
            "comity {args:?} as {who} succeeded:\n{}",
            o.stdout
        );
        assert!(o.stderr.contains(code), "expected {code}: {}", o.stderr);
    }

    async fn doc(&self, id: &str) -> Value {
        self.client
            .notary_get(&["documents", id], &[])
            .await
            .unwrap()["document"]
            .clone()
    }

    async fn submit(&self, tx: Vec<u8>, code: &str) -> Hash {
        let st = self.client.submit(&tx, true).await.unwrap();
        assert!(
            matches!(st.status, TxState::Committed | TxState::Rejected),
            "{st:?}"
        );
        assert_eq!(st.outcome.as_deref(), Some(code), "{st:?}");
        st.id
    }

    fn path(&self, name: &str) -> PathBuf {
        self.net.tmp.path().join(name)
    }
}

fn doc_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("document "))
        .expect("document id printed")
        .trim()
        .to_string()
}

fn flip(path: &Path, at: usize, out: &Path) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x01;
    std::fs::write(out, b).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contracts_life_over_https() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.start().await;
    let n = N {
        client: net.client_as("user0"),
        net,
    };
    let t0 = Instant::now();
    // Three organizations' people: alice (user0, seller), bob (buyer), carol (records).
    let bob = n.net.add_user("bob").await;
    let _carol = n.net.add_user("carol").await;
    let contract = n.path("contract.pdf");
    std::fs::write(&contract, b"%PDF-1.7 sale of the barge Matilda, v1").unwrap();

    // Register with two signing parties, 10 s retention, 2 destruction approvals.
    let register = [
        "doc",
        "register",
        contract.to_str().unwrap(),
        "--title",
        "Sale agreement",
        "--type",
        "contract",
        "--matter",
        "M-2026-001",
        "--org",
        "Firm LLP",
        "--party",
        "user0=seller",
        "--party",
        "bob=buyer",
        "--retention",
        "10s",
        "--approvals",
        "2",
    ];
    let out = n.ok("user0", &register).await;
    let a = doc_id(&out);
    assert_eq!(n.doc(&a).await["status"], "draft");
    // The registrant registering the same bytes again (a retry) gets the
    // same document; with other terms it is told they stand; anyone else
    // is refused.
    let again = n.ok("user0", &register).await;
    assert!(again.contains("already registered"), "{again}");
    assert_eq!(doc_id(&again), a);
    n.refused(
        "user0",
        &["doc", "register", contract.to_str().unwrap()],
        "with other terms",
    )
    .await;
    n.refused(
        "bob",
        &["doc", "register", contract.to_str().unwrap()],
        "digest_registered",
    )
    .await;

    // Carol is not named in it: she can neither read it nor sign it.
    n.refused("carol", &["doc", "show", &a], "not_found").await;
    n.refused("carol", &["doc", "sign", &a], "not_found").await;
    // Nor does a lookup by digest confirm to her that it is registered.
    n.refused(
        "carol",
        &["doc", "verify", contract.to_str().unwrap()],
        "not registered, or not to a record this identity may read",
    )
    .await;
    // Forbidden before execution.
    n.refused("user0", &["doc", "expire", &a], "doc_not_executed")
        .await;
    n.refused("user0", &["doc", "destroy", &a], "doc_in_force")
        .await;
    n.refused("carol", &["doc", "revoke", &a], "not_found")
        .await;
    n.refused(
        "user0",
        &["doc", "hold", "place", &a, "--reason", "x"],
        "not_authorized",
    )
    .await;

    n.ok("user0", &["doc", "sign", &a]).await;
    assert_eq!(n.doc(&a).await["status"], "draft");
    // Bob signs only the copy he reviewed.
    let other = n.path("other.pdf");
    std::fs::write(&other, b"%PDF-1.7 a different agreement").unwrap();
    let other = other.to_str().unwrap();
    n.refused(
        "bob",
        &["doc", "sign", &a, "--file", other],
        "is not the content registered",
    )
    .await;
    assert_eq!(n.doc(&a).await["status"], "draft");
    let out = n
        .ok(
            "bob",
            &["doc", "sign", &a, "--file", contract.to_str().unwrap()],
        )
        .await;
    assert!(out.contains("status:    executed"), "{out}");
    n.ok("bob", &["doc", "sign", &a]).await; // idempotent

    // Amended by a new version that both sign.
    let v2 = n.path("contract-v2.pdf");
    std::fs::write(
        &v2,
        b"%PDF-1.7 sale of the barge Matilda, v2 (price revised)",
    )
    .unwrap();
    let out = n
        .ok(
            "bob",
            &[
                "doc",
                "amend",
                &a,
                v2.to_str().unwrap(),
                "--title",
                "Sale agreement (amended)",
                "--matter",
                "M-2026-001",
                "--party",
                "user0=seller",
                "--party",
                "bob=buyer",
                "--salted",
            ],
        )
        .await;
    let b = doc_id(&out);
    assert!(n.path("contract-v2.pdf.salt").exists());
    // Registering it salted again uses the same salt, so names the same
    // digest (registered, here as the amendment), and keeps the salt.
    let salt = std::fs::read(n.path("contract-v2.pdf.salt")).unwrap();
    n.refused(
        "bob",
        &[
            "doc",
            "register",
            v2.to_str().unwrap(),
            "--title",
            "again",
            "--salted",
        ],
        "digest_registered",
    )
    .await;
    assert_eq!(std::fs::read(n.path("contract-v2.pdf.salt")).unwrap(), salt);
    // The signed version stays in force until both have signed the new one.
    assert_eq!(n.doc(&a).await["status"], "executed");
    assert_eq!(n.doc(&a).await["successor"], b.as_str());
    n.ok("user0", &["doc", "sign", &b]).await;
    n.ok("bob", &["doc", "sign", &b]).await;
    assert_eq!(n.doc(&a).await["status"], "amended");
    n.refused("user0", &["doc", "expire", &a], "doc_not_executed")
        .await;

    // Custody passes to carol's records department.
    n.refused(
        "bob",
        &["doc", "custody", "offer", &a, "--to", "carol"],
        "not_custodian",
    )
    .await;
    n.ok("user0", &["doc", "custody", "offer", &a, "--to", "carol"])
        .await;
    n.refused("bob", &["doc", "custody", "accept", &a], "not_offered")
        .await;
    n.ok("carol", &["doc", "custody", "accept", &a]).await;
    assert_eq!(
        n.doc(&a).await["custodian"],
        hex::encode(n.net.signer("carol").id)
    );
    // As custodian carol reads the old version's story, but the transaction
    // that superseded it (the last signature on the new version) names only
    // the new version, to which she is not party: its receipt proves the
    // entry without it.
    let amended_body = |events: Value| {
        let e = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"]["kind"] == "amended")
            .cloned()
            .expect("an amended event");
        let r = hex::decode(e["receipt"].as_str().expect("receipt")).unwrap();
        comity_core::receipt::Receipt::from_cose(&r).unwrap().body
    };
    let deadline = Instant::now() + T;
    let events = loop {
        let ev = n
            .client
            .notary_get(&["documents", &a, "events"], &[])
            .await
            .unwrap();
        if ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["receipt"].is_null())
        {
            break ev;
        }
        assert!(Instant::now() < deadline, "receipts never became available");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        amended_body(events).is_some(),
        "a party to both reads it whole"
    );
    let carols = n.net.client_as("carol");
    let events = carols
        .notary_get(&["documents", &a, "events"], &[])
        .await
        .unwrap();
    assert!(amended_body(events).is_none(), "withheld from carol");
    assert_eq!(
        carols
            .notary_get(&["documents", &b], &[])
            .await
            .unwrap_err()
            .status(),
        Some(404)
    );

    // Retention, approvals and a legal hold.
    n.ok("user0", &["doc", "approve", &a, "--reason", "superseded"])
        .await;
    n.refused("carol", &["doc", "destroy", &a], "retention_not_ended")
        .await;
    // Ledger time follows the clock: wait until it passes `retain_until`.
    let until = n.doc(&a).await["retain_until"]
        .as_u64()
        .expect("retain_until");
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        if now > until + 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(until + 600 - now)).await;
    }
    n.refused("carol", &["doc", "destroy", &a], "approvals_missing")
        .await;
    n.ok("carol", &["doc", "approve", &a, "--reason", "file closed"])
        .await;
    let out = n
        .ok(
            "member0",
            &[
                "doc",
                "hold",
                "place",
                &a,
                "--reason",
                "litigation Matilda v. Firm",
            ],
        )
        .await;
    let hold = out
        .lines()
        .find_map(|l| l.strip_prefix("hold "))
        .unwrap()
        .trim()
        .to_string();
    n.refused("carol", &["doc", "destroy", &a], "legal_hold")
        .await;
    // Only the member that placed a hold lifts it.
    n.refused(
        "member1",
        &["doc", "hold", "lift", &a, &hold],
        "not_hold_placer",
    )
    .await;
    n.ok("member0", &["doc", "hold", "lift", &a, &hold]).await;

    // Evidence before destruction: verifies offline; tampering fails with a reason.
    let bundle = n.path("a.evidence");
    let out = n
        .ok(
            "user0",
            &["doc", "evidence", &a, "-o", bundle.to_str().unwrap()],
        )
        .await;
    assert!(out.contains("wrote evidence"), "{out}");
    let out = n
        .ok(
            "user0",
            &[
                "doc",
                "verify-evidence",
                bundle.to_str().unwrap(),
                "--file",
                contract.to_str().unwrap(),
            ],
        )
        .await;
    for s in [
        "VERIFIED",
        "signed by",
        "as buyer",
        "executed",
        "custody accepted",
        "legal hold",
        "matches the registered digest",
    ] {
        assert!(out.contains(s), "{s}: {out}");
    }
    let o = n
        .cli(
            "user0",
            &[
                "doc",
                "verify-evidence",
                bundle.to_str().unwrap(),
                "--file",
                v2.to_str().unwrap(),
            ],
        )
        .await;
    assert!(
        !o.status.success() && o.stderr.contains("does not match"),
        "{}",
        o.stderr
    );
    let len = std::fs::metadata(&bundle).unwrap().len() as usize;
    let bad = n.path("bad.evidence");
    let step = (len / 97).max(1);
    for at in (0..len).step_by(step) {
        flip(&bundle, at, &bad);
        let o = n
            .cli("user0", &["doc", "verify-evidence", bad.to_str().unwrap()])
            .await;
        assert!(
            !o.status.success(),
            "byte {at} of {len} changed, still verified:\n{}",
            o.stdout
        );
        assert!(
            o.stderr.contains("evidence NOT verified: "),
            "byte {at}: {}",
            o.stderr
        );
    }

    // Destroyed: the digest and full history stay provable.
    n.refused("user0", &["doc", "destroy", &a], "not_custodian")
        .await;
    n.ok(
        "carol",
        &["doc", "destroy", &a, "--reason", "retention ended"],
    )
    .await;
    assert_eq!(n.doc(&a).await["status"], "destroyed");
    n.refused("carol", &["doc", "revoke", &a], "doc_destroyed")
        .await;
    n.refused(
        "member0",
        &["doc", "hold", "place", &a, "--reason", "late"],
        "doc_destroyed",
    )
    .await;
    let out = n
        .ok("user0", &["doc", "verify", contract.to_str().unwrap()])
        .await;
    assert!(
        out.contains("status:    destroyed") && out.contains("content destroyed by"),
        "{out}"
    );
    let out = n
        .ok("user0", &["doc", "verify", v2.to_str().unwrap()])
        .await;
    assert!(
        out.contains("new version of") && out.contains("matches"),
        "{out}"
    );
    let destroyed = n.path("destroyed.evidence");
    n.ok(
        "carol",
        &["doc", "evidence", &a, "-o", destroyed.to_str().unwrap()],
    )
    .await;
    let identity = n.net.data.join("network.json");
    let out = n
        .ok(
            "user0",
            &[
                "doc",
                "verify-evidence",
                destroyed.to_str().unwrap(),
                "--network-identity",
                identity.to_str().unwrap(),
                "--file",
                contract.to_str().unwrap(),
            ],
        )
        .await;
    assert!(
        out.contains("content destroyed by") && out.contains("approved by"),
        "{out}"
    );

    // A bundle that leaves out an event (the older one ends before the
    // destruction) cannot pass for the newer record, nor vice versa.
    let splice = n.path("splice.evidence");
    splice_events(&destroyed, &bundle, &splice);
    let o = n
        .cli(
            "user0",
            &["doc", "verify-evidence", splice.to_str().unwrap()],
        )
        .await;
    assert!(!o.status.success(), "{}", o.stdout);
    assert!(o.stderr.contains("events are missing"), "{}", o.stderr);

    // Queries through the API: by party, matter, status, time, in pages.
    let bob_id = hex::encode(bob.id);
    let q = |k: &str, v: String| vec![(k.to_string(), v)];
    let get = |query: Vec<(String, String)>| {
        let c = n.client.clone();
        async move {
            let q: Vec<(&str, String)> =
                query.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            c.notary_get(&["documents"], &q).await.unwrap()
        }
    };
    let ids = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(&get(q("party", bob_id.clone())).await),
        [a.clone(), b.clone()]
    );
    let mut p1 = q("party", bob_id.clone());
    p1.push(("limit".into(), "1".into()));
    let first = get(p1.clone()).await;
    assert_eq!(ids(&first), [a.as_str()]);
    let cursor = first["next"].as_str().unwrap().to_string();
    p1.push(("after".into(), cursor.clone()));
    assert_eq!(ids(&get(p1).await), [b.as_str()]);
    // A cursor serves only its own listing: replayed under another filter
    // it would place where it stopped among that listing's records.
    let mut other = q("matter", "M-2026-001".into());
    other.push(("after".into(), cursor));
    let q2: Vec<(&str, String)> = other.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let e = n.client.notary_get(&["documents"], &q2).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");
    assert!(e.to_string().contains("bad_cursor"), "{e}");
    assert_eq!(
        ids(&get(q("matter", "M-2026-001".into())).await),
        [a.clone(), b.clone()]
    );
    assert_eq!(
        ids(&get(q("status", "executed".into())).await),
        [b.as_str()]
    );
    let reg_b = n.doc(&b).await["registered"].as_u64().unwrap();
    assert_eq!(
        ids(&get(q("from_time", reg_b.to_string())).await),
        [b.as_str()]
    );
    let out = n
        .ok(
            "user0",
            &["doc", "list", "--party", "bob", "--status", "destroyed"],
        )
        .await;
    assert!(out.contains(&a) && !out.contains(&b), "{out}");
    let e = n
        .client
        .notary_get(&["digests", &hex::encode([7u8; 32])], &[])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    let anon = n.net.public_client();
    let e = anon.notary_get(&["documents", &a], &[]).await.unwrap_err();
    assert_eq!(e.status(), Some(401));

    // Personal data: stored off the ledger against its digest, erasable.
    let personal = n.path("personal.json");
    std::fs::write(&personal, br#"{"client": "Jane Doe"}"#).unwrap();
    let will = n.path("will.pdf");
    std::fs::write(&will, b"last will").unwrap();
    let register_will = [
        "doc",
        "register",
        will.to_str().unwrap(),
        "--party",
        "bob=testator",
        "--personal",
        personal.to_str().unwrap(),
    ];
    let out = n.ok("user0", &register_will).await;
    let w = doc_id(&out);
    let wid: Hash = hex::decode(&w).unwrap().try_into().unwrap();
    assert!(
        !n.path("personal.json.prefix").exists(),
        "the blob's random prefix is kept only until the blob is stored"
    );
    // Run again: the blob is already stored, nothing is sent.
    let again = n.ok("user0", &register_will).await;
    assert!(
        again.contains("already registered") && again.contains("is stored"),
        "{again}"
    );
    assert!(!n.path("personal.json.prefix").exists());
    let owner = n.net.client_as("user0");
    let e = owner
        .notary_put_personal(&wid, b"other bytes")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("digest_mismatch"));
    let e = owner
        .notary_put_personal(&wid, &vec![0; 64 * 1024 + 1])
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(413), Some("too_large")),
        "{e}"
    );
    let carol_reads = n.net.client_as("carol");
    let e = carol_reads
        .notary_get(&["documents", &w, "personal"], &[])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404), "as if there were no such document");
    // Stored after 32 random bytes, so the record's digest is not the
    // content's, which a guess could confirm once the blob is erased.
    let stored = owner
        .notary_personal(&wid)
        .await
        .expect("the registrant reads the personal data");
    let content = std::fs::read(&personal).unwrap();
    assert_eq!(
        (stored.len(), &stored[32..]),
        (content.len() + 32, &content[..])
    );
    assert_ne!(
        n.doc(&w).await["personal"],
        hex::encode(comity_core::crypto::sha256(&content))
    );
    let refused = n
        .submit(bob.notary_act("metadata.erase", &wid, ""), "not_authorized")
        .await;
    // Which document a transaction concerned: only applied ones concern one.
    let registered = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("tx: "))
        .expect("registration tx printed");
    let of = n.client.notary_get(&["tx", registered], &[]).await.unwrap();
    assert_eq!(of["document"], w.as_str());
    // The ledger does not go round the notary's check: carol sees the
    // registration's entry without its transaction, and no receipt body.
    let reg: Hash = hex::decode(registered).unwrap().try_into().unwrap();
    let at = owner.tx_status(&reg).await.unwrap().index.unwrap();
    let member = n.net.client_as("member0");
    for (who, c, shown) in [
        ("carol", &carol_reads, false),
        ("the registrant", &owner, true),
        ("a member", &member, true),
    ] {
        let entry = c.entries(at, 1).await.unwrap().pop().unwrap();
        assert_eq!(!entry.body.is_empty(), shown, "{who}");
    }
    let e = carol_reads.receipt(&reg).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let proof = carol_reads
        .receipt_waiting(&reg, false, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        proof.is_some(),
        "the receipt without the transaction is public"
    );
    // An audit over the API reads as client.json's member and replays it
    // all; as a user it stops at the first withheld transaction, and says so.
    let out = n.net.cli(&["ledger", "verify"], T).await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let out = n.cli("carol", &["ledger", "verify"]).await;
    assert!(
        !out.status.success() && out.stderr.contains("audit as a member"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let e = n
        .client
        .notary_get(&["tx", &hex::encode(refused)], &[])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(404));
    n.ok("user0", &["doc", "erase", &w]).await;
    assert_eq!(n.doc(&w).await["personal_erased"], true);
    let e = owner
        .notary_put_personal(&wid, &std::fs::read(&personal).unwrap())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("erased"));

    // Unauthorized signers and bad arguments are refused at submission or recorded.
    let stranger = Signer::new(SigningKey::generate(Alg::EdDsa), bob.network_id);
    let e = n
        .client
        .submit(&stranger.notary_act("revoke", &wid, ""), true)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unknown_signer"));
    let e = n
        .client
        .submit(
            &bob.notary("register", &json!({"digest": "zz"})).unwrap(),
            true,
        )
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some("bad_args")), "{e}");
    n.submit(
        bob.notary_sign(&wid, &sha256(b"another")),
        "digest_mismatch",
    )
    .await;

    // Collections: every order change is an event.
    let out = n
        .ok(
            "user0",
            &[
                "doc",
                "collection",
                "create",
                "Matilda file",
                "--matter",
                "M-2026-001",
            ],
        )
        .await;
    let col = out
        .lines()
        .find_map(|l| l.strip_prefix("collection "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let out = n
        .ok("user0", &["doc", "collection", "order", &col, &b, &a])
        .await;
    assert!(
        out.contains(&format!("1. {b}")) && out.contains(&format!("2. {a}")),
        "{out}"
    );
    let ev = n
        .client
        .notary_get(&["collections", &col, "events"], &[])
        .await
        .unwrap();
    assert_eq!(ev["items"].as_array().unwrap().len(), 2);
    // Bob may read both documents, so the collection, but not its history:
    // earlier orders may name documents since taken out.
    let bobs = n.net.client_as("bob");
    assert!(bobs.notary_get(&["collections", &col], &[]).await.is_ok());
    let refused = bobs
        .notary_get(&["collections", &col, "events"], &[])
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(403), "{refused}");

    // The auditor's replay agrees with every outcome and root.
    let out = n.net.cli(&["ledger", "verify"], T).await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    eprintln!("notary over HTTPS: {:.1} s", t0.elapsed().as_secs_f64());
    let mut net = n.net;
    net.stop(Duration::from_secs(20)).await;
}

/// Writes `base` with the events of `from`: a bundle whose event list does
/// not belong to its proved record.
fn splice_events(base: &Path, from: &Path, out: &Path) {
    use comity_core::cbor::{self, Value};
    let read = |p: &Path| cbor::from_slice(&std::fs::read(p).unwrap()).unwrap();
    let (Value::Map(mut b), Value::Map(f)) = (read(base), read(from)) else {
        panic!("bundles are maps")
    };
    let events = f
        .iter()
        .find(|(k, _)| k == &Value::Text("events".into()))
        .unwrap()
        .1
        .clone();
    for (k, v) in b.iter_mut() {
        if k == &Value::Text("events".into()) {
            *v = events.clone();
        }
    }
    std::fs::write(out, cbor::to_vec(Value::Map(b)).unwrap()).unwrap();
}

/// `comity bench --workload both` runs kv.put, the notary mix
/// (registrations, party signatures, custody transfers) and kv.put again
/// with no rejection: the workload stays a valid sequence of lifecycle steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notary_bench_workload_is_valid() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.start().await;
    let out = net
        .cli(
            &[
                "bench",
                "--workload",
                "both",
                "--duration-secs",
                "2",
                "--clients",
                "4",
                "--identities",
                "4",
                "--receipt-sample",
                "20",
                "--json",
            ],
            Duration::from_secs(120),
        )
        .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("bench JSON");
    for w in ["kv_before", "notary", "kv_after"] {
        assert!(v[w]["committed"].as_u64().unwrap() > 0, "{w}: {v}");
        assert_eq!(v[w]["rejected"], 0, "{w}: {v}");
        assert_eq!(v[w]["errors"], 0, "{w}: {v}");
        assert_eq!(v[w]["receipts"]["failed"], 0, "{w}: {v}");
    }
    let kv = v["kv_tps"].as_f64().unwrap();
    assert!(
        kv > 0.0 && v["notary_over_kv"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}
