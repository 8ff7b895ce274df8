//! The SDK against a tiny mock HTTPS node on loopback: CA-only trust, client
//! certificates made from Comity keys, error mapping, receipt polling.

use comity_client::{Client, ClientError, Signer, TxState};
use comity_core::crypto::{sha256, Alg, SigningKey};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Pki {
    ca_pem: String,
    server_cert: rcgen::Certificate,
    server_key: KeyPair,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(vec![]).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca_cert, &ca_key)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert,
        server_key,
    }
}

/// A user identity as `comity keys new` makes it: Comity PKCS#8 key, rcgen self-signed cert.
fn user(alg: Alg) -> (SigningKey, String, String) {
    let key = SigningKey::generate(alg);
    let key_pem = key.to_pkcs8_pem();
    let kp = KeyPair::from_pem(&key_pem).unwrap();
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "alice");
    let cert = p.self_signed(&kp).unwrap();
    (key, cert.pem(), key_pem)
}

/// Serves HTTP/1.1 over TLS; requests a client certificate (optional) and
/// reports the SHA-256 of the presented certificate's SPKI in `/v1/health`'s role.
async fn serve(pki: &Pki, client_roots: Vec<Vec<u8>>) -> String {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for r in client_roots {
        roots.add(CertificateDer::from(r)).unwrap();
    }
    let verifier = if roots.is_empty() {
        rustls::server::WebPkiClientVerifier::no_client_auth()
    } else {
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap()
    };
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(pki.server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let polls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let polls = polls.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| hex::encode(sha256(c[0].as_ref())));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = tls.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = &buf[head_end..head_end + len];
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let (status, ctype, out): (&str, &str, Vec<u8>) = if target == "/v1/health" {
                    let role = peer.unwrap_or_else(|| "anonymous".into());
                    (
                        "200 OK",
                        "application/json",
                        format!(r#"{{"status":"ok","role":"{role}"}}"#).into_bytes(),
                    )
                } else if target == "/v1/tx?wait=false" && head.contains("application/cose") {
                    let id = hex::encode(sha256(body));
                    (
                        "202 Accepted",
                        "application/json",
                        format!(r#"{{"id":"{id}","status":"pending"}}"#).into_bytes(),
                    )
                } else if target
                    .split('?')
                    .next()
                    .is_some_and(|p| p.ends_with("/receipt"))
                {
                    if polls.fetch_add(1, Ordering::SeqCst) < 2 {
                        (
                            "202 Accepted",
                            "application/json",
                            br#"{"code":"pending","message":"not final"}"#.to_vec(),
                        )
                    } else {
                        ("200 OK", "application/cose", b"RECEIPT".to_vec())
                    }
                } else if target == "/v1/kv/a%2Fb/history" {
                    (
                        "403 Forbidden",
                        "application/json",
                        br#"{"code":"forbidden","message":"client certificate required"}"#.to_vec(),
                    )
                } else {
                    ("404 Not Found", "text/plain", b"no such route".to_vec())
                };
                let mut resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    out.len()
                )
                .into_bytes();
                resp.extend_from_slice(&out);
                let _ = tls.write_all(&resp).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    format!("https://{addr}")
}

#[tokio::test]
async fn trusts_only_the_given_ca_and_presents_identities() {
    let pki = pki();
    for alg in [Alg::EdDsa, Alg::Es256] {
        let (_key, cert_pem, key_pem) = user(alg);
        let cert_der = rustls_pemfile_first(&cert_pem);
        let url = serve(&pki, vec![cert_der.clone()]).await;

        let anon = Client::new(&url, pki.ca_pem.as_bytes(), None).unwrap();
        assert_eq!(
            anon.health().await.unwrap().role.as_deref(),
            Some("anonymous")
        );

        let authed = Client::new(
            &url,
            pki.ca_pem.as_bytes(),
            Some((cert_pem.as_bytes(), key_pem.as_bytes())),
        )
        .unwrap();
        let role = authed.health().await.unwrap().role.unwrap();
        assert_eq!(role, hex::encode(sha256(&cert_der)), "{alg:?}");

        // Another CA: the server is not trusted.
        let other = pki_other_ca();
        let c = Client::new(&url, other.as_bytes(), None).unwrap();
        let e = c.health().await.unwrap_err();
        assert!(matches!(e, ClientError::Transport(_)), "{e}");
    }
}

#[tokio::test]
async fn submit_errors_and_receipt_polling() {
    let pki = pki();
    let url = serve(&pki, vec![]).await;
    let c = Client::new(&url, pki.ca_pem.as_bytes(), None).unwrap();
    let s = Signer::new(SigningKey::generate(Alg::EdDsa), [1; 32]);
    let tx = s.kv_put("k", b"v");
    let st = c.submit(&tx, false).await.unwrap();
    assert_eq!(st.id, sha256(&tx));
    assert_eq!(st.status, TxState::Pending);

    let e = c.kv_history(None, "a/b", None).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    assert_eq!(e.code(), Some("forbidden"));
    let e = c.checkpoint().await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(e.code(), None);
    assert!(e.to_string().contains("no such route"), "{e}");

    assert_eq!(c.receipt(&st.id).await.unwrap(), None);
    let r = c
        .wait_receipt(
            &st.id,
            std::time::Duration::from_millis(2),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(r, b"RECEIPT");
}

fn rustls_pemfile_first(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&b64)
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|t| *t == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn pki_other_ca() -> String {
    let k = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![]).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.self_signed(&k).unwrap().pem()
}
