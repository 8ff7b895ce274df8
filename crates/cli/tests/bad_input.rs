//! Bad input never panics a node: against one running node, over real HTTPS,
//! every kind of bad request gets the documented status and a JSON
//! `{code, message}` body (docs/api.md), and the node keeps serving.

mod common;

use comity_client::{Signer, TxState};
use comity_core::cbor;
use comity_core::crypto::{Alg, SigningKey};
use comity_core::tx::Tx;
use common::{http_client, raw_tcp, raw_tls, Network, RawResponse};
use coset::{iana, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Collects mismatches so one run reports every failing case.
#[derive(Default)]
struct Cases {
    failures: Vec<String>,
    passed: usize,
}

impl Cases {
    /// Checks a response's status and (if given) its JSON error code.
    fn check(
        &mut self,
        name: &str,
        got: (u16, Vec<u8>),
        status: u16,
        code: Option<&str>,
    ) -> Option<Value> {
        let (s, body) = got;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        let mut bad = Vec::new();
        if s != status {
            bad.push(format!("status {s}, expected {status}"));
        }
        if let Some(code) = code {
            match json.as_ref() {
                Some(j) if j["code"] == code && j["message"].is_string() => {}
                Some(j) => bad.push(format!("JSON {j}, expected code {code:?} and a message")),
                None => bad.push(format!("body is not JSON: {text:?}")),
            }
        }
        if bad.is_empty() {
            self.passed += 1;
            eprintln!(
                "ok   {name}: {s} {}",
                json.as_ref()
                    .map(|j| j["code"].to_string())
                    .unwrap_or_default()
            );
        } else {
            eprintln!("FAIL {name}: {}", bad.join("; "));
            self.failures.push(format!("{name}: {}", bad.join("; ")));
        }
        json
    }

    fn fail(&mut self, name: &str, why: String) {
        eprintln!("FAIL {name}: {why}");
        self.failures.push(format!("{name}: {why}"));
    }

    fn ok(&mut self, name: &str, what: String) {
        self.passed += 1;
        eprintln!("ok   {name}: {what}");
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n  {}",
            self.failures.len(),
            self.failures.len() + self.passed,
            self.failures.join("\n  ")
        );
    }
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Vec<u8>) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

fn post_tx(http: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    http.post(format!("{url}/v1/tx"))
        .header("content-type", "application/cose")
        .body(body)
}

fn raw_parts(r: &RawResponse) -> (u16, Vec<u8>) {
    (r.status().unwrap_or(0), r.body())
}

/// A COSE_Sign1 carrying a valid payload but an algorithm Comity does not accept.
fn with_alg(signer: &Signer, alg: iana::Algorithm, sig_len: usize) -> Vec<u8> {
    let payload = signer.payload(
        "kv",
        "put",
        cbor::map([
            ("key", cbor::text("alg")),
            ("value", cbor::bytes(b"x".to_vec())),
        ]),
    );
    CoseSign1Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(alg)
                .key_id(signer.id.to_vec())
                .build(),
        )
        .payload(payload.to_cbor())
        .signature(vec![0xa5; sig_len])
        .build()
        .to_tagged_vec()
        .unwrap()
}

/// Asserts the node still answers `GET /v1/health` with 200.
async fn healthy(net: &Network, cases: &mut Cases, after: &str) {
    match tokio::time::timeout(Duration::from_secs(20), net.public_client().health()).await {
        Ok(Ok(h)) if h.status == "ok" => {
            cases.ok(&format!("healthy after {after}"), "200 ok".into())
        }
        other => cases.fail(&format!("healthy after {after}"), format!("{other:?}")),
    }
}

/// A raw exchange must end (answer or close) well before the timeout, never hang.
fn ended(cases: &mut Cases, name: &str, r: &RawResponse, allow_ok: bool) {
    let status = r.status();
    if r.timed_out {
        cases.fail(
            name,
            format!(
                "no answer and no close within the timeout (read {} bytes)",
                r.bytes.len()
            ),
        );
    } else if !allow_ok && status.is_some_and(|s| s < 400) {
        cases.fail(
            name,
            format!("answered {status:?}, expected an error or a closed connection"),
        );
    } else {
        cases.ok(
            name,
            match status {
                Some(s) => format!("answered {s}"),
                None => format!(
                    "connection closed ({})",
                    r.read_error.as_deref().unwrap_or("EOF")
                ),
            },
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_precise_errors_and_the_node_keeps_serving() {
    let _serial = common::serial().await;
    let t0 = Instant::now();
    let mut net = Network::new();
    net.start().await;
    let url = net.url.clone();
    let ca = net.ca_pem();
    let http = http_client(&ca, None);
    let user = net.signer("user0");
    let mut c = Cases::default();

    // --- transactions ---
    let good = user.kv_put("bad-input/good", b"v1");
    let first = c.check(
        "valid kv.put",
        send(post_tx(&http, &url, good.clone())).await,
        200,
        None,
    );
    let first = first.expect("JSON status");
    assert_eq!(first["status"], "committed", "{first}");

    if let Some(j) = c.check(
        "replay of the same bytes",
        send(post_tx(&http, &url, good.clone())).await,
        200,
        None,
    ) {
        if j["id"] != first["id"] || j["index"] != first["index"] || j["status"] != "committed" {
            c.fail("replay is idempotent", format!("first {first}, replay {j}"));
        }
    }

    // The committed transaction re-encoded (same signature, other bytes, so
    // another id): must never be ordered a second time.
    let sign1 = coset::CoseSign1::from_tagged_slice(&good).unwrap();
    let untagged = coset::CborSerializable::to_vec(sign1.clone()).unwrap();
    let mut with_header = sign1.clone();
    with_header.unprotected.content_type = Some(coset::ContentType::Text("x".into()));
    let with_header = with_header.to_tagged_vec().unwrap();
    for (name, bytes) in [
        ("committed tx re-encoded untagged", untagged),
        ("committed tx with an unprotected header added", with_header),
    ] {
        let (s, body) = send(post_tx(&http, &url, bytes)).await;
        let j: Value = serde_json::from_slice(&body).unwrap_or_default();
        if (s == 400 && j["code"] == "malformed") || (s == 409 && j["code"] == "nonce_reused") {
            c.ok(name, format!("{s} {}", j["code"]));
        } else {
            c.fail(
                name,
                format!("{s} {j}: expected 400 malformed or 409 nonce_reused"),
            );
        }
    }

    c.check(
        "truncated COSE",
        send(post_tx(&http, &url, good[..good.len() / 2].to_vec())).await,
        400,
        Some("malformed"),
    );
    // Malformed kv arguments are refused at submission, never queued nor
    // recorded: an extra field, an empty key, an unknown operation.
    for (name, op, args, code) in [
        (
            "kv.put with an extra field",
            "put",
            cbor::map([
                ("key", cbor::text("k")),
                ("value", cbor::bytes(b"v".to_vec())),
                ("pad", cbor::bytes(vec![0; 1000])),
            ]),
            "bad_args",
        ),
        (
            "kv.put with an empty key",
            "put",
            cbor::map([
                ("key", cbor::text("")),
                ("value", cbor::bytes(b"v".to_vec())),
            ]),
            "bad_args",
        ),
        (
            "kv.rename",
            "rename",
            cbor::map([("key", cbor::text("k"))]),
            "unknown_op",
        ),
    ] {
        let tx = user.tx("kv", op, args);
        c.check(name, send(post_tx(&http, &url, tx)).await, 400, Some(code));
    }
    c.check(
        "not CBOR at all",
        send(post_tx(&http, &url, b"hello, node".to_vec())).await,
        400,
        Some("malformed"),
    );
    c.check(
        "empty body",
        send(post_tx(&http, &url, Vec::new())).await,
        400,
        Some("malformed"),
    );
    c.check(
        "alg ES384",
        send(post_tx(
            &http,
            &url,
            with_alg(&user, iana::Algorithm::ES384, 96),
        ))
        .await,
        400,
        Some("unsupported_alg"),
    );
    c.check(
        "alg PS256",
        send(post_tx(
            &http,
            &url,
            with_alg(&user, iana::Algorithm::PS256, 256),
        ))
        .await,
        400,
        Some("unsupported_alg"),
    );

    // Deeply nested CBOR inside the payload.
    let mut deep = vec![0x81u8; 100_000];
    deep.push(0x00);
    let nested = CoseSign1Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .key_id(user.id.to_vec())
                .build(),
        )
        .payload(deep)
        .signature(vec![0; 64])
        .build()
        .to_tagged_vec()
        .unwrap();
    c.check(
        "100k-deep nested payload",
        send(post_tx(&http, &url, nested)).await,
        400,
        Some("malformed"),
    );

    // Over the ledger's max_tx_bytes (128 KiB): a validly signed 200 KiB transaction.
    let big = user.kv_put("bad-input/big", &vec![7u8; 200 * 1024]);
    c.check(
        "200 KiB transaction",
        send(post_tx(&http, &url, big)).await,
        413,
        Some("too_large"),
    );

    // Over the HTTP body limit: 5 MiB, with a Content-Length and chunked.
    let five = 5 << 20;
    let mut req = format!(
        "POST /v1/tx HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/cose\r\n\
         Content-Length: {five}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(0x42u8, five));
    let r = raw_tls(net.port, &ca, req, Duration::from_secs(30)).await;
    c.check(
        "5 MiB body (Content-Length)",
        raw_parts(&r),
        413,
        Some("too_large"),
    );
    let mut req = b"POST /v1/tx HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/cose\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for _ in 0..80 {
        req.extend_from_slice(b"10000\r\n");
        req.extend(std::iter::repeat_n(0x42u8, 0x10000));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw_tls(net.port, &ca, req, Duration::from_secs(30)).await;
    c.check(
        "5 MiB body (chunked)",
        raw_parts(&r),
        413,
        Some("too_large"),
    );
    // A transaction announced over max_tx_bytes is refused before its body
    // is read: the answer comes although the announced 1 MiB never does.
    let r = raw_tls(
        net.port,
        &ca,
        format!(
            "POST /v1/tx HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/cose\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            1 << 20
        )
        .into_bytes(),
        Duration::from_secs(10),
    )
    .await;
    c.check(
        "1 MiB transaction announced, body not sent",
        raw_parts(&r),
        413,
        Some("too_large"),
    );
    healthy(&net, &mut c, "huge bodies").await;

    // A page of ledger entries, and of a key's history, ends at 4 MiB: 70
    // versions of 64 KiB make more, and a reader following on from each
    // short page still gets them all.
    let mut written = Vec::new();
    for k in 0..70u8 {
        let tx = user.kv_put("bad-input/big", &vec![k; 64 * 1024]);
        let (status, body) = send(post_tx(&http, &url, tx)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let st: serde_json::Value = serde_json::from_slice(&body).unwrap();
        written.push(st["index"].as_u64().expect("committed at an index"));
    }
    let member = net.client_as("member0");
    let first = member
        .kv_history(Some(&user.id), "bad-input/big", None)
        .await
        .unwrap();
    let rest = match first.next {
        Some(after) => member
            .kv_history(Some(&user.id), "bad-input/big", Some(after))
            .await
            .unwrap(),
        None => first.clone(),
    };
    let indexes: Vec<u64> = first
        .versions
        .iter()
        .chain(&rest.versions)
        .map(|v| v.index)
        .collect();
    let values_ok = first
        .versions
        .iter()
        .chain(&rest.versions)
        .enumerate()
        .all(|(k, v)| v.value.as_deref() == Some(&vec![k as u8; 64 * 1024][..]));
    if first.next.is_some()
        && first.versions.len() < 70
        && indexes == written
        && values_ok
        && rest.next.is_none()
    {
        c.ok(
            "kv history paged by size",
            format!(
                "{} + {} versions",
                first.versions.len(),
                rest.versions.len()
            ),
        );
    } else {
        c.fail(
            "kv history paged by size",
            format!("pages of {} (next {:?}) and {} (next {:?}); indexes {indexes:?}, written {written:?}, values ok {values_ok}",
                first.versions.len(), first.next, rest.versions.len(), rest.next),
        );
    }
    let out = net
        .cli(&["kv", "history", "bad-input/big"], Duration::from_secs(60))
        .await;
    let listed = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("index "))
        .count();
    if !out.status.success() || listed != 70 {
        c.fail(
            "kv history lists every page",
            format!("{listed} lines; {}", out.stderr),
        );
    }
    let member_cert = std::fs::read(net.cert_path("member0")).unwrap();
    let member_key = std::fs::read(net.key_path("member0")).unwrap();
    c.check(
        "kv history with a malformed cursor",
        send(
            http_client(&ca, Some((&member_cert, &member_key)))
                .get(format!("{url}/v1/kv/bad-input%2Fbig/history?after=x")),
        )
        .await,
        400,
        Some("malformed"),
    );
    let size = member.ledger_size().await.unwrap().size;
    let page = member.entries(0, 1000).await.unwrap();
    let bytes: usize = page.iter().map(|r| r.to_cbor().len()).sum();
    if (page.len() as u64) < size && bytes <= (4 << 20) + (128 << 10) {
        c.ok(
            "ledger entries page bounded by size",
            format!("{} of {size} entries, {bytes} bytes", page.len()),
        );
    } else {
        c.fail(
            "ledger entries page bounded by size",
            format!("{} of {size} entries, {bytes} bytes", page.len()),
        );
    }
    let out = net
        .cli(
            &["ledger", "verify", "--node", &url],
            Duration::from_secs(120),
        )
        .await;
    if !out.status.success() {
        c.fail("ledger verify over short pages", out.stderr.clone());
    }

    // A peer route called without a node's certificate is refused before its
    // body is read: the answer comes although the announced 50 MiB never do.
    let r = raw_tls(
        net.port,
        &ca,
        format!(
            "POST /raft/append HTTP/1.1\r\nHost: localhost\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            50 << 20
        )
        .into_bytes(),
        Duration::from_secs(10),
    )
    .await;
    c.check(
        "peer route without a node certificate, body not yet sent",
        raw_parts(&r),
        403,
        Some("not_a_peer"),
    );

    let other_net = Signer::new(user.key.clone(), [0x5a; 32]);
    c.check(
        "wrong network id",
        send(post_tx(
            &http,
            &url,
            other_net.kv_put("bad-input/net", b"x"),
        ))
        .await,
        400,
        Some("wrong_network"),
    );

    // The nonce of the committed transaction, on a different transaction.
    let committed = Tx::parse(&good).unwrap();
    let mut p = committed.payload.clone();
    p.args = cbor::map([
        ("key", cbor::text("bad-input/nonce")),
        ("value", cbor::bytes(b"v2".to_vec())),
    ]);
    c.check(
        "reused nonce",
        send(post_tx(&http, &url, user.sign(&p))).await,
        409,
        Some("nonce_reused"),
    );

    let mut p = user.payload(
        "kv",
        "put",
        cbor::map([
            ("key", cbor::text("bad-input/stale")),
            ("value", cbor::bytes(b"x".to_vec())),
        ]),
    );
    p.created -= 2 * 3600 * 1000;
    c.check(
        "created 2 h ago",
        send(post_tx(&http, &url, user.sign(&p))).await,
        409,
        Some("outside_window"),
    );
    p.created += 4 * 3600 * 1000;
    p.nonce = comity_core::crypto::random_nonce().to_vec();
    c.check(
        "created 2 h ahead",
        send(post_tx(&http, &url, user.sign(&p))).await,
        409,
        Some("outside_window"),
    );

    let stranger = Signer::new(SigningKey::generate(Alg::EdDsa), user.network_id);
    c.check(
        "unknown signer",
        send(post_tx(&http, &url, stranger.kv_put("bad-input/who", b"x"))).await,
        403,
        Some("unknown_signer"),
    );

    let mut forged = user.kv_put("bad-input/sig", b"x");
    *forged.last_mut().unwrap() ^= 0x01;
    c.check(
        "flipped signature byte",
        send(post_tx(&http, &url, forged)).await,
        401,
        Some("bad_signature"),
    );

    // Signed by user0's key but naming member0 as signer.
    let member = net.signer("member0");
    let mut impostor = user.clone();
    impostor.id = member.id;
    c.check(
        "signed with another identity's kid",
        send(post_tx(&http, &url, impostor.kv_put("bad-input/kid", b"x"))).await,
        401,
        Some("bad_signature"),
    );

    // A user may not propose; a forged proposal learns only that its
    // signature is bad, not the signer's role or status.
    let propose = user.gov_propose(cbor::Value::Array(vec![]), "users may not");
    c.check(
        "signed proposal by a user",
        send(post_tx(&http, &url, propose)).await,
        403,
        Some("forbidden"),
    );
    let mut forged = user.gov_propose(cbor::Value::Array(vec![]), "users may not");
    *forged.last_mut().unwrap() ^= 0x01;
    if let Some(j) = c.check(
        "forged proposal by a user",
        send(post_tx(&http, &url, forged)).await,
        401,
        Some("bad_signature"),
    ) {
        if j["message"].as_str().unwrap_or_default().contains("user") {
            c.fail(
                "forged proposal by a user",
                format!("the answer names the role: {j}"),
            );
        }
    }

    let tx = user.kv_put("bad-input/ct", b"x");
    c.check(
        "no Content-Type",
        send(http.post(format!("{url}/v1/tx")).body(tx.clone())).await,
        415,
        Some("unsupported_media_type"),
    );
    c.check(
        "Content-Type application/json",
        send(
            http.post(format!("{url}/v1/tx"))
                .header("content-type", "application/json")
                .body(tx.clone()),
        )
        .await,
        415,
        Some("unsupported_media_type"),
    );
    c.check(
        "bad wait parameter",
        send(post_tx(&http, &url, tx.clone()).query(&[("wait", "perhaps")])).await,
        400,
        Some("malformed"),
    );

    // Valid, signed, but refused by the application: recorded as rejected.
    if let Some(j) = c.check(
        "kv.delete of an absent key",
        send(post_tx(
            &http,
            &url,
            user.kv_delete("bad-input/never-written"),
        ))
        .await,
        200,
        None,
    ) {
        if j["status"] != "rejected" || j["outcome"] != "not_found" {
            c.fail(
                "kv.delete of an absent key is recorded as rejected",
                j.to_string(),
            );
        }
    }
    c.check(
        "kv.put with a 300-byte key",
        send(post_tx(&http, &url, user.kv_put(&"k".repeat(300), b"x"))).await,
        400,
        Some("bad_args"),
    );

    // --- garbage on the wire ---
    let health_req = |extra: &str| {
        format!("GET /v1/health HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n")
            .into_bytes()
    };
    let r = raw_tls(
        net.port,
        &ca,
        health_req(&format!("X-Big: {}\r\n", "a".repeat(60 * 1024))),
        Duration::from_secs(40),
    )
    .await;
    ended(&mut c, "60 KB header value", &r, true);
    let r = raw_tls(
        net.port,
        &ca,
        health_req(&format!("X-Big: {}\r\n", "a".repeat(200 * 1024))),
        Duration::from_secs(40),
    )
    .await;
    ended(&mut c, "200 KB header value", &r, false);
    let many: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = raw_tls(net.port, &ca, health_req(&many), Duration::from_secs(40)).await;
    ended(&mut c, "500 headers", &r, false);
    let r = raw_tls(
        net.port,
        &ca,
        b"\x00\x01\x02 THIS IS NOT HTTP \xff\xfe\r\n\r\n".to_vec(),
        Duration::from_secs(40),
    )
    .await;
    ended(&mut c, "request line that is not HTTP (TLS)", &r, false);
    let r = raw_tls(
        net.port,
        &ca,
        b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\nContent-Length: banana\r\n\r\n".to_vec(),
        Duration::from_secs(40),
    )
    .await;
    ended(&mut c, "non-numeric Content-Length", &r, false);
    let r = raw_tcp(
        net.port,
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(40),
    )
    .await;
    ended(&mut c, "plain HTTP on the TLS port", &r, false);
    let r = raw_tcp(
        net.port,
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0x01, 0x00],
        Duration::from_secs(40),
    )
    .await;
    ended(&mut c, "garbage TLS record", &r, false);
    healthy(&net, &mut c, "garbage on the wire").await;

    // --- reads ---
    c.check(
        "unknown path",
        send(http.get(format!("{url}/v1/no/such/thing"))).await,
        404,
        Some("not_found"),
    );
    c.check(
        "kv read without a client certificate",
        send(http.get(format!("{url}/v1/kv/x"))).await,
        401,
        Some("unauthenticated"),
    );
    let keys_dir = net.tmp.path().join("stranger");
    let out = net
        .cli(
            &[
                "keys",
                "new",
                "--name",
                "stranger",
                "--out",
                keys_dir.to_str().unwrap(),
            ],
            Duration::from_secs(30),
        )
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    let stranger_http = http_client(
        &ca,
        Some((
            &std::fs::read(keys_dir.join("stranger.cert.pem")).unwrap(),
            &std::fs::read(keys_dir.join("stranger.key.pem")).unwrap(),
        )),
    );
    c.check(
        "kv read with the certificate of an unregistered key",
        send(stranger_http.get(format!("{url}/v1/kv/x"))).await,
        403,
        Some("forbidden"),
    );
    let user_http = http_client(
        &ca,
        Some((
            &std::fs::read(net.cert_path("user0")).unwrap(),
            &std::fs::read(net.key_path("user0")).unwrap(),
        )),
    );
    c.check(
        "kv read as user0",
        send(user_http.get(format!("{url}/v1/kv/bad-input%2Fgood"))).await,
        200,
        None,
    );
    c.check(
        "consistency from=0",
        send(http.get(format!("{url}/v1/proof/consistency?from=0&to=5"))).await,
        400,
        Some("bad_range"),
    );
    c.check(
        "consistency beyond the ledger",
        send(http.get(format!("{url}/v1/proof/consistency?from=1&to=999999999"))).await,
        400,
        Some("bad_range"),
    );
    c.check(
        "consistency with a non-number",
        send(http.get(format!("{url}/v1/proof/consistency?from=x&to=5"))).await,
        400,
        Some("malformed"),
    );
    let honest = c.check(
        "evidence on an honest network",
        send(http.get(format!("{url}/v1/evidence"))).await,
        200,
        None,
    );
    match honest {
        Some(j) if j["evidence"] == serde_json::json!([]) && j["next"].is_null() => {
            c.ok("evidence on an honest network is empty", j.to_string())
        }
        other => c.fail(
            "evidence on an honest network is empty",
            format!("{other:?}"),
        ),
    }
    match c.check(
        "health",
        send(http.get(format!("{url}/v1/health"))).await,
        200,
        None,
    ) {
        Some(j) if j["evidence"] == 0 => {
            c.ok("health counts no evidence", j["evidence"].to_string())
        }
        other => c.fail("health counts no evidence", format!("{other:?}")),
    }
    c.check(
        "evidence cursor without its sequence number",
        send(http.get(format!("{url}/v1/evidence?after_node={}", "00".repeat(32)))).await,
        400,
        Some("bad_args"),
    );
    c.check(
        "evidence cursor not hex",
        send(http.get(format!("{url}/v1/evidence?after_node=zz&after_seq=1"))).await,
        400,
        Some("malformed"),
    );
    c.check(
        "tx id not hex",
        send(http.get(format!("{url}/v1/tx/nothex"))).await,
        400,
        Some("malformed"),
    );
    c.check(
        "tx id too short",
        send(http.get(format!("{url}/v1/tx/abcd"))).await,
        400,
        Some("malformed"),
    );
    if let Some(j) = c.check(
        "unknown tx",
        send(http.get(format!("{url}/v1/tx/{}", "00".repeat(32)))).await,
        200,
        None,
    ) {
        if j["status"] != "unknown" {
            c.fail("unknown tx has status unknown", j.to_string());
        }
    }
    c.check(
        "receipt of an unknown tx",
        send(http.get(format!(
            "{url}/v1/tx/{}/receipt?body=false",
            "00".repeat(32)
        )))
        .await,
        404,
        Some("not_found"),
    );
    let authed = http_client(&ca, Some((&member_cert, &member_key)));
    c.check(
        "ledger entries far beyond the end",
        send(authed.get(format!(
            "{url}/v1/ledger/entries?from=18446744073709551615&count=1000"
        )))
        .await,
        200,
        None,
    );
    c.check(
        "ledger receipt far beyond the end",
        send(authed.get(format!(
            "{url}/v1/ledger/receipt/18446744073709551615?body=false"
        )))
        .await,
        404,
        Some("not_found"),
    );
    // Transactions are shown to members and users only: without a client
    // certificate there are no entries and no receipt bodies, and no walk
    // of receipts by index (their leaves name signers and times); a receipt
    // asked for by transaction id, proving the leaf alone, is public.
    c.check(
        "ledger entries without a certificate",
        send(http.get(format!("{url}/v1/ledger/entries?from=0&count=1"))).await,
        401,
        Some("unauthenticated"),
    );
    c.check(
        "receipt body without a certificate",
        send(http.get(format!("{url}/v1/ledger/receipt/1"))).await,
        401,
        Some("unauthenticated"),
    );
    c.check(
        "receipt by index without a certificate, even without its body",
        send(http.get(format!("{url}/v1/ledger/receipt/1?body=false"))).await,
        401,
        Some("unauthenticated"),
    );

    // --- still serving ---
    healthy(&net, &mut c, "all bad input").await;
    let s = net
        .public_client()
        .submit(&user.kv_put("bad-input/after", b"fine"), true)
        .await
        .expect("a normal write after the bad input");
    if s.status == TxState::Committed {
        c.ok(
            "normal kv.put afterwards",
            format!("committed at {:?}", s.index),
        );
    } else {
        c.fail("normal kv.put afterwards", format!("{s:?}"));
    }

    // --- metrics: how far receipts reach ---
    let public = net.public_client();
    public
        .receipt_waiting(&s.id, false, Duration::from_secs(10))
        .await
        .expect("receipt request")
        .expect("a receipt for the last write");
    let text = public.metrics().await.expect("GET /metrics");
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    match (
        gauge("comity_ledger_size"),
        gauge("comity_checkpoint_final_size"),
        gauge("comity_checkpoint_final_age_seconds"),
    ) {
        (Some(len), Some(size), Some(age))
            if size > s.index.unwrap_or(u64::MAX) as f64
                && size <= len
                && (0.0..60.0).contains(&age) =>
        {
            c.ok(
                "metrics show the latest final checkpoint",
                format!("ledger {len}, final size {size}, age {age} s"),
            )
        }
        found => c.fail(
            "metrics show the latest final checkpoint",
            format!("{found:?} for the write at {:?}:\n{text}", s.index),
        ),
    }
    match public.health().await {
        Ok(h)
            if h.final_size
                .is_some_and(|f| f > s.index.unwrap_or(u64::MAX) && Some(f) <= h.ledger_size)
                && h.final_time.is_some_and(|t| Some(t) <= h.ledger_time) =>
        {
            c.ok(
                "health shows the latest final checkpoint",
                format!("final size {:?} at {:?}", h.final_size, h.final_time),
            )
        }
        other => c.fail(
            "health shows the latest final checkpoint",
            format!("{other:?} for the write at {:?}", s.index),
        ),
    }
    // `comity status` prints it in its `final` column.
    let out = net.cli(&["status"], Duration::from_secs(30)).await;
    let lines: Vec<&str> = out.stdout.lines().collect();
    let column = lines
        .first()
        .and_then(|h| h.split_whitespace().position(|c| c == "final"));
    let row_final = lines.iter().find(|l| l.contains(" ok ")).and_then(|l| {
        l.split_whitespace()
            .nth(column?)
            .and_then(|v| v.parse::<u64>().ok())
    });
    if out.status.success() && row_final.is_some_and(|f| f > s.index.unwrap_or(u64::MAX)) {
        c.ok(
            "comity status shows the final size",
            format!("{row_final:?}"),
        )
    } else {
        c.fail(
            "comity status shows the final size",
            format!("{:?}\n{}{}", out.status, out.stdout, out.stderr),
        )
    }
    let _ = net.stop(Duration::from_secs(30)).await;
    eprintln!(
        "{} cases in {:.1} s",
        c.passed + c.failures.len(),
        t0.elapsed().as_secs_f64()
    );
    c.finish();
}

/// Requests that never reach a handler: path parameters of the wrong type
/// (400 `malformed`) and a wrong method (405 `method_not_allowed`), both JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unparsable_path_parameters_and_wrong_methods() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.start().await;
    let url = net.url.clone();
    let http = http_client(&net.ca_pem(), None);
    let user_http = http_client(
        &net.ca_pem(),
        Some((
            &std::fs::read(net.cert_path("user0")).unwrap(),
            &std::fs::read(net.key_path("user0")).unwrap(),
        )),
    );
    let mut c = Cases::default();
    for (name, got, status, code) in [
        (
            "ledger receipt index not a number",
            send(http.get(format!("{url}/v1/ledger/receipt/notanumber"))).await,
            400,
            "malformed",
        ),
        (
            "ledger receipt index past u64",
            send(http.get(format!("{url}/v1/ledger/receipt/99999999999999999999999"))).await,
            400,
            "malformed",
        ),
        (
            "kv key that is not UTF-8",
            send(user_http.get(format!("{url}/v1/kv/%FF%FE"))).await,
            400,
            "malformed",
        ),
        (
            "GET on POST-only /v1/tx",
            send(http.get(format!("{url}/v1/tx"))).await,
            405,
            "method_not_allowed",
        ),
        (
            "DELETE on /v1/health",
            send(http.delete(format!("{url}/v1/health"))).await,
            405,
            "method_not_allowed",
        ),
    ] {
        c.check(name, got, status, Some(code));
    }
    healthy(&net, &mut c, "unparsable paths").await;
    let _ = net.stop(Duration::from_secs(30)).await;
    c.finish();
}

/// An operator's impossible limit is refused at start with the setting and
/// the file named; with the setting fixed, the node starts on its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impossible_limits_in_node_toml_are_refused_by_name() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.start().await;
    let s = net
        .public_client()
        .submit(&net.signer("user0").kv_put("limits/before", b"1"), true)
        .await
        .expect("a write before the change");
    assert_eq!(s.status, TxState::Committed, "{s:?}");
    net.stop(Duration::from_secs(30)).await;

    let toml = net.data.join("node0").join("node.toml");
    let good = std::fs::read_to_string(&toml).expect("node.toml");
    assert!(good.contains("state_cache_mib = 256"), "{good}");
    std::fs::write(
        &toml,
        good.replace("state_cache_mib = 256", "state_cache_mib = 4"),
    )
    .expect("write node.toml");
    let (status, stderr) = net
        .start_expect_exit(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("limits.state_cache_mib") && stderr.contains("node.toml"),
        "the refusal names neither the setting nor the file:\n{stderr}"
    );

    std::fs::write(&toml, good).expect("restore node.toml");
    net.start().await;
    // Reads are proved against a final checkpoint: wait for one covering the write.
    let user = net.client_as("user0");
    user.receipt_waiting(&s.id, false, Duration::from_secs(10))
        .await
        .expect("receipt request")
        .expect("a receipt for the write made before the refusal");
    let read = user
        .kv_get(None, "limits/before")
        .await
        .expect("read after the restart");
    assert_eq!(read.value.as_deref(), Some(b"1".as_slice()));
    net.stop(Duration::from_secs(30)).await;
}

/// A flood of connections from one client neither stops the node nor takes
/// the files its storage needs. Under an open-file limit of 512 the node
/// keeps at most 128 connections open, at most 24 from one address (a
/// quarter of the 96 ordinary places), and closes the rest at once; writes
/// go on committing through a connection opened before the flood (before
/// the caps, the flood took every descriptor and the next file the ledger
/// opened failed, which stopped the node).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_connections_leaves_the_node_its_files() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.open_files = Some(512);
    net.start().await;
    let user = net.signer("user0");
    let client = net.public_client();
    // A request may race the return of the pooled connection to the pool
    // and open a new one, which the flood leaves no place for: it is sent
    // again (the same bytes), and the pooled connection serves it.
    let put = |k: String| {
        let (client, tx) = (client.clone(), user.kv_put(&k, &[7; 256]));
        async move {
            let mut s = client.submit(&tx, true).await;
            for _ in 0..5 {
                if !matches!(&s, Err(comity_client::ClientError::Transport(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                s = client.submit(&tx, true).await;
            }
            assert!(
                matches!(&s, Ok(s) if s.status == TxState::Committed),
                "{k}: {s:?}"
            );
        }
    };
    put("flood/before".into()).await;

    let addr = format!("127.0.0.1:{}", net.port);
    let flood = tokio::task::spawn_blocking(move || {
        (0..600)
            .map_while(|_| std::net::TcpStream::connect(&addr).ok())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(
        flood.len(),
        600,
        "the kernel queues what the node has not accepted"
    );
    let flooded = Instant::now();
    for i in 0..10 {
        put(format!("flood/{i}")).await;
    }
    // The node accepted what its budget allows and closed the rest. Counted
    // after the reserve's 2 s handshake limit, well within the 10 s that an
    // ordinary place waits for a handshake.
    tokio::time::sleep_until((flooded + Duration::from_millis(2500)).into()).await;
    let closed = flood
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 1];
            match std::io::Read::read(&mut &**s, &mut buf) {
                Ok(0) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                Ok(_) => false,
            }
        })
        .count();
    // One address holds 24 ordinary places (the test's client a few of
    // them); the 32 of the peers' reserve close 2 s after a socket that does
    // not complete its handshake takes one.
    assert!(
        (600 - 24..=600 - 16).contains(&closed),
        "{closed} of 600 closed; up to 24 should stay open"
    );
    drop(flood);

    // New connections are served again, and the refusals were counted and logged.
    let http = common::http_client(&net.ca_pem(), None);
    let metrics = http
        .get(format!("{}/metrics", net.url))
        .send()
        .await
        .expect("metrics after the flood")
        .text()
        .await
        .unwrap();
    let refused: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("comity_connections_refused_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        refused >= closed as f64,
        "{refused} refusals counted, {closed} seen"
    );
    put("flood/after".into()).await;
    let log = std::fs::read_to_string(&net.stderr_path).unwrap_or_default()
        + &std::fs::read_to_string(net.tmp.path().join("up-1.out")).unwrap_or_default();
    let log = common::strip_ansi(&log);
    assert!(
        log.contains("connections=128")
            && log.contains("closing new connections")
            && log.contains("in_force=24"),
        "the budget and the refusals are not in the log:\n{}",
        &log[log.len().saturating_sub(3000)..]
    );
}

/// Join requests need no identity, so they are capped while still queued:
/// a burst of them never puts more than `MAX_PENDING_NODES` in the ledger
/// (none is recorded as refused), and an over-long one is refused unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_join_requests_stays_within_the_cap() {
    let _serial = common::serial().await;
    let mut net = Network::new();
    net.start().await;
    let member = net.signer("member0");
    let client = net.public_client();
    let max = comity_apps::join::MAX_PENDING_NODES as usize;
    let join = |i: usize| {
        let node = Signer::new(SigningKey::generate(Alg::EdDsa), member.network_id);
        let data = [("address".to_string(), format!("10.0.0.{i}:7000"))].into();
        node.node_join(&member.id, &format!("burst {i}"), &data)
    };
    let mut sent = tokio::task::JoinSet::new();
    for i in 0..max + 16 {
        let (client, tx) = (client.clone(), join(i));
        sent.spawn(async move { client.submit(&tx, false).await });
    }
    let mut queued = 0;
    while let Some(a) = sent.join_next().await {
        match a.unwrap() {
            Ok(_) => queued += 1,
            Err(e) => assert_eq!(e.code(), Some("too_many_pending_nodes"), "{e}"),
        }
    }
    // Requests applied but not yet answered count twice for a moment, so
    // a burst may queue fewer than the cap, never more.
    assert!((1..=max).contains(&queued), "{queued} queued");
    let applied = |n: usize| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while client.health().await.ok().and_then(|h| h.join_requests) != Some(n as u64) {
                assert!(Instant::now() < deadline, "the requests never applied");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    applied(queued).await;
    // Once quiet, the cap is exact.
    for i in queued..max {
        client
            .submit(&join(1000 + i), true)
            .await
            .expect("below the cap");
    }
    applied(max).await;
    let e = client.submit(&join(2000), false).await.unwrap_err();
    assert_eq!(e.code(), Some("too_many_pending_nodes"), "{e}");
    let refused = net
        .client_as("member0")
        .entries(0, 1000)
        .await
        .unwrap()
        .iter()
        .filter_map(|r| comity_core::entry::Leaf::from_cbor(&r.leaf).ok())
        .filter(|l| l.outcome.code() == "too_many_pending_nodes")
        .count();
    assert_eq!(refused, 0, "no join was refused in the ledger");

    let node = Signer::new(SigningKey::generate(Alg::EdDsa), member.network_id);
    let padded = [("address".to_string(), "x".repeat(20_000))].into();
    let tx = node.node_join(&member.id, "padded", &padded);
    // Refused for its size before its signature is checked (anyone may
    // send one, so it costs the node as little as can be).
    let mut forged = tx.clone();
    *forged.last_mut().unwrap() ^= 1;
    for tx in [tx, forged] {
        let e = client.submit(&tx, false).await.unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (Some(413), Some("too_large")),
            "{e}"
        );
    }
}

/// Ports out of range are refused before anything is written: a half-made
/// network would be taken for an existing one by the next `up`.
#[tokio::test]
async fn up_refuses_ports_out_of_range_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("comity-data");
    for args in [
        ["up", "--port", "0", "--nodes", "1"],
        ["up", "--port", "65534", "--nodes", "3"],
    ] {
        let out = common::run_cli(&data, tmp.path(), &args, Duration::from_secs(30)).await;
        assert!(
            !out.status.success() && out.stderr.contains("--port"),
            "{args:?}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(!data.exists(), "{args:?} wrote {}", data.display());
    }
}

/// A network whose creation was cut short (client.json, written last, is
/// missing) is refused by name, not started half-made.
#[tokio::test]
async fn up_refuses_a_network_whose_creation_was_cut_short() {
    let _serial = common::serial().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("comity-data");
    let port = common::free_ports(1).to_string();
    let init = ["up", "--init-only", "--nodes", "1", "--port", &port];
    let out = common::run_cli(&data, tmp.path(), &init, Duration::from_secs(60)).await;
    assert!(out.status.success(), "{}", out.stderr);
    std::fs::remove_file(data.join("client.json")).unwrap();
    let out = common::run_cli(&data, tmp.path(), &init, Duration::from_secs(30)).await;
    assert!(
        !out.status.success() && out.stderr.contains("creation was cut short"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}
