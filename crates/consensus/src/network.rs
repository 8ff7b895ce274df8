//! The peer network: Raft RPCs between trusted nodes over mutually
//! authenticated TLS.
//!
//! A node presents a certificate for its own node key. Each side accepts the
//! other only if the SHA-256 of the certificate's public key is a node in the
//! current trusted set (the [`Trust`] check, which the node crate defines),
//! so no CA is involved; a retired node is shut out once it has left the
//! Raft group.

use crate::TypeConfig;
use comity_core::crypto::sha256;
use comity_core::Hash;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Whether a key fingerprint belongs to a node this node currently trusts.
pub type Trust = Arc<dyn Fn(&Hash) -> bool + Send + Sync>;

/// Paths of the peer RPCs, served by every node under its HTTPS listener.
pub mod path {
    pub const APPEND: &str = "/raft/append";
    pub const VOTE: &str = "/raft/vote";
    pub const SNAPSHOT: &str = "/raft/snapshot";
    /// Client transactions a follower forwards to the leader.
    pub const SUBMIT: &str = "/raft/submit";
    /// The leader's read index, for linearizable reads on followers.
    pub const READ_INDEX: &str = "/raft/read-index";
    /// Ledger records, for a node catching up by snapshot.
    pub const LEDGER: &str = "/raft/ledger";
    /// The latest final checkpoint, for a node whose state is behind to
    /// recognise nodes trusted since.
    pub const CHECKPOINT: &str = "/raft/checkpoint";
}

/// A quorum-signed checkpoint (COSE_Sign) and the chain of endorsed
/// node-set changes up to it: verifiable from a node set the receiver
/// holds, whoever relays it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct FinalCheckpoint {
    /// The checkpoint's tree size, unverified: lets a receiver that needs
    /// nothing that old skip the checks.
    pub size: u64,
    pub signed: serde_bytes::ByteBuf,
    pub chain: Vec<serde_bytes::ByteBuf>,
}

/// Asks a peer for ledger records `from..to` (it sends a prefix of them,
/// bounded in count and size, and none it does not have).
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct LedgerRequest {
    pub from: u64,
    pub to: u64,
}

/// Content type of peer RPC bodies (serde CBOR of openraft's messages).
pub const CONTENT_TYPE: &str = "application/cbor";
/// Largest reply read from a peer: far above any Raft reply or page of
/// ledger records a peer sends.
pub const MAX_REPLY: usize = 128 << 20;

/// The length a definite-length CBOR array's head declares.
pub fn array_len(b: &[u8]) -> Option<u64> {
    let first = *b.first()?;
    if first >> 5 != 4 {
        return None;
    }
    let be = |k: usize| {
        b.get(1..1 + k)
            .map(|s| s.iter().fold(0u64, |n, &x| n << 8 | u64::from(x)))
    };
    match first & 0x1f {
        n @ 0..=23 => Some(n.into()),
        24 => be(1),
        25 => be(2),
        26 => be(4),
        27 => be(8),
        _ => None,
    }
}

/// What a peer's reply may hold: at most `bytes`, and, if `items` is set, a
/// list of at most that many items.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    pub bytes: usize,
    pub items: Option<u64>,
}

impl Default for Bound {
    fn default() -> Bound {
        Bound {
            bytes: MAX_REPLY,
            items: None,
        }
    }
}

/// The Raft id of a node: the first 8 bytes of its key fingerprint.
pub fn raft_id(node: &Hash) -> u64 {
    u64::from_be_bytes(node[..8].try_into().expect("8 bytes"))
}

/// Fingerprint of a certificate's public key (its SubjectPublicKeyInfo).
pub fn cert_fingerprint(cert: &CertificateDer<'_>) -> Option<Hash> {
    use x509_cert::der::{Decode, Encode};
    let c = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let spki = c.tbs_certificate.subject_public_key_info.to_der().ok()?;
    Some(sha256(&spki))
}

/// Accepts a server certificate whose key is a trusted node's.
struct TrustedServer {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for TrustedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrustedServer")
    }
}

impl ServerCertVerifier for TrustedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match cert_fingerprint(end_entity) {
            Some(fp) if (self.trust)(&fp) => Ok(ServerCertVerified::assertion()),
            Some(fp) => Err(rustls::Error::General(format!(
                "peer key {} is not a trusted node",
                hex::encode(fp)
            ))),
            None => Err(rustls::Error::General("unreadable peer certificate".into())),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Could not connect or the connection broke: back off.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// Connected, but no answer within the call's time: a busy peer, not a
    /// dead one. Raft retries at once rather than backing off, since a
    /// follower left without appends for the backoff calls an election.
    #[error("peer did not answer in time: {0}")]
    TimedOut(String),
    /// The peer answered, but not with a readable reply.
    #[error("peer error: {0}")]
    Protocol(String),
}

impl PeerError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<u64, BasicNode, E> {
        match self {
            PeerError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&self)),
            PeerError::TimedOut(_) | PeerError::Protocol(_) => {
                RPCError::Network(NetworkError::new(&self))
            }
        }
    }
}

/// A client for calling trusted peers. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    http: reqwest::Client,
    /// Fingerprints of the peer certificates seen (a few: one per peer),
    /// so that a call does not parse its answerer's certificate again.
    seen: Arc<std::sync::Mutex<Vec<SeenCert>>>,
}

/// A peer certificate (DER) and its key's fingerprint.
type SeenCert = (Vec<u8>, Hash);

/// Most certificates [`Peers`] remembers before it starts afresh.
const SEEN_CERTS: usize = 64;

impl Peers {
    /// `cert`/`key` are this node's TLS certificate (for its node key) and
    /// key, PEM; `bind` is the local address to connect from, if not the default.
    pub fn new(
        cert: &[u8],
        key: &[u8],
        trust: Trust,
        bind: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Peers> {
        let certs = rustls_pemfile::certs(&mut &cert[..]).collect::<Result<Vec<_>, _>>()?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key[..])?
            .ok_or_else(|| anyhow::anyhow!("no private key in the TLS key file"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustedServer { trust, provider }))
            .with_client_auth_cert(certs, key)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            // The answering node's certificate, to check it is the node called.
            .tls_info(true)
            // A peer answers; it never sends a node elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .local_address(bind)
            .build()?;
        Ok(Peers {
            http,
            seen: Arc::default(),
        })
    }

    fn fingerprint(&self, der: &[u8]) -> Option<Hash> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, fp)) = seen.iter().find(|(d, _)| d == der) {
            return Some(*fp);
        }
        let fp = cert_fingerprint(&CertificateDer::from(der))?;
        if seen.len() >= SEEN_CERTS {
            seen.clear();
        }
        seen.push((der.to_vec(), fp));
        Some(fp)
    }

    /// POSTs `req` (CBOR) to `https://{addr}{path}` and decodes the CBOR
    /// reply (at most [`MAX_REPLY`] bytes: a peer is trusted, not infallible).
    /// With `node`, the answer must come from the node of that Raft id: any
    /// trusted key passes the TLS check, so another trusted node at that
    /// address (a hijacked name) could otherwise answer, say, for a vote or
    /// an fsync it never did.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: Option<u64>,
        addr: &str,
        path: &'static str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        self.call_bounded(node, addr, path, req, timeout, Bound::default())
            .await
    }

    /// [`Peers::call`] for a reply within `bound`, checked before it is
    /// decoded: a long list of tiny items decodes to many times its size.
    pub async fn call_bounded<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        node: Option<u64>,
        addr: &str,
        path: &'static str,
        req: &Req,
        timeout: Duration,
        bound: Bound,
    ) -> Result<Resp, PeerError> {
        let max = bound.bytes;
        let t0 = std::time::Instant::now();
        let mut body = Vec::new();
        ciborium::into_writer(req, &mut body).map_err(|e| PeerError::Protocol(e.to_string()))?;
        let mut resp = self
            .http
            .post(format!("https://{addr}{path}"))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| failed(addr, e))?;
        if let Some(want) = node {
            let got = resp
                .extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|t| t.peer_certificate())
                .and_then(|der| self.fingerprint(der));
            if got.map(|fp| raft_id(&fp)) != Some(want) {
                return Err(PeerError::Protocol(format!(
                    "{addr}{path}: answered by key {}, not by node {want}",
                    got.map_or("(none)".into(), hex::encode)
                )));
            }
        }
        let status = resp.status();
        let too_large = || PeerError::Protocol(format!("{addr}{path}: reply over {max} bytes"));
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| failed(addr, e))? {
            if bytes.len() + chunk.len() > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(PeerError::Protocol(format!(
                "{addr}{path}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )));
        }
        if let Some(items) = bound.items {
            if array_len(&bytes).is_none_or(|n| n > items) {
                return Err(PeerError::Protocol(format!(
                    "{addr}{path}: reply is not a list of at most {items} items"
                )));
            }
        }
        let reply = ciborium::from_reader(&bytes[..])
            .map_err(|e| PeerError::Protocol(format!("{addr}{path}: bad reply: {e}")));
        metrics::histogram!("comity_peer_call_seconds", "path" => path)
            .record(t0.elapsed().as_secs_f64());
        reply
    }
}

fn failed(addr: &str, e: reqwest::Error) -> PeerError {
    let what = format!("{addr}: {e:#}");
    if e.is_timeout() {
        PeerError::TimedOut(what)
    } else {
        PeerError::Unreachable(what)
    }
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = PeerClient;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            peers: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The connection to one peer, as openraft sees it.
pub struct PeerClient {
    peers: Peers,
    target: u64,
    addr: String,
}

impl PeerClient {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        path: &'static str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let r: Result<Resp, RaftError<u64, E>> = self
            .peers
            .call(Some(self.target), &self.addr, path, req, option.hard_ttl())
            .await
            .map_err(PeerError::into_rpc)?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(path::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.rpc(path::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(path::VOTE, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;

    #[test]
    fn array_heads_give_their_declared_length() {
        let enc = |n: usize| {
            let mut out = Vec::new();
            ciborium::into_writer(&vec![ByteBuf::from(vec![1u8]); n], &mut out).unwrap();
            out
        };
        for n in [0, 23, 24, 255, 256, 70_000] {
            assert_eq!(array_len(&enc(n)), Some(n as u64));
        }
        assert_eq!(array_len(&[0x9f, 0xff]), None, "indefinite length");
        assert_eq!(array_len(&[0xa0]), None, "a map");
        assert_eq!(array_len(&[0x9a, 0, 1]), None, "cut short");
        assert_eq!(array_len(&[]), None);
    }
}
