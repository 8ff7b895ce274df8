//! HTTPS client for the node API (docs/api.md).

use crate::types::*;
use crate::ClientError;
use comity_core::cbor::{self, MapView, Value};
use comity_core::entry::Record;
use comity_core::network::NetworkIdentity;
use comity_core::Hash;
use reqwest::{RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest response body the client reads (a page of 1000 ledger entries with
/// large values fits comfortably).
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Content type of transactions and receipts.
pub const COSE_CONTENT_TYPE: &str = "application/cose";

/// A connection (pool) to one node. Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// Whether a client certificate is presented: the node shows whole
    /// transactions (ledger entries, receipt bodies) only to an identity.
    identified: bool,
}

impl Client {
    /// Connects to the node at `url` (e.g. `https://127.0.0.1:8701`), trusting
    /// only the CA certificate(s) in `ca_pem`. `identity` = (certificate PEM,
    /// PKCS#8 private key PEM) of a registered identity, presented as a TLS
    /// client certificate for authenticated reads (`/v1/kv/...`).
    pub fn new(
        url: &str,
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Client, ClientError> {
        let base = parse_base(url)?;
        // Over plain HTTP the CA would check nothing, and signed
        // transactions and answers would cross the network unprotected;
        // only this machine's loopback may go without TLS (a test double).
        let loopback = base
            .host_str()
            .and_then(|h| h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().ok())
            .is_some_and(|a| a.is_loopback());
        if base.scheme() != "https" && !loopback {
            return Err(ClientError::Config(format!(
                "node URL {url:?} must be https:// (a CA certificate is checked only over TLS)"
            )));
        }
        let cas = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| ClientError::Config(format!("CA certificate: {e}")))?;
        if cas.is_empty() {
            return Err(ClientError::Config(
                "CA PEM holds no certificate".to_string(),
            ));
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .https_only(!loopback)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .tcp_nodelay(true)
            // The API never redirects; following one would send signed
            // transactions or credentials wherever a response pointed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("comity-client/", env!("CARGO_PKG_VERSION")));
        for ca in cas {
            b = b.add_root_certificate(ca);
        }
        if let Some((cert, key)) = identity {
            let mut pem = Vec::with_capacity(cert.len() + key.len() + 1);
            pem.extend_from_slice(cert);
            pem.push(b'\n');
            pem.extend_from_slice(key);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| ClientError::Config(format!("client identity: {e}")))?;
            b = b.identity(id);
        }
        let http = b
            .build()
            .map_err(|e| ClientError::Config(format!("building the HTTPS client: {e}")))?;
        Ok(Client {
            http,
            base,
            identified: identity.is_some(),
        })
    }

    /// Like [`Client::new`] with the CA and identity read from files.
    pub fn from_files(
        url: &str,
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<Client, ClientError> {
        let read = |p: &Path, what: &str| {
            std::fs::read(p).map_err(|e| {
                ClientError::Config(format!("cannot read {what} {}: {e}", p.display()))
            })
        };
        let ca_pem = read(ca, "CA certificate")?;
        let ident = match identity {
            Some((c, k)) => Some((read(c, "certificate")?, read(k, "key")?)),
            None => None,
        };
        Client::new(
            url,
            &ca_pem,
            ident.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
    }

    /// Uses an already configured `reqwest::Client` (for custom TLS or
    /// timeouts); `identified` says whether it presents a client certificate.
    pub fn with_http(
        url: &str,
        http: reqwest::Client,
        identified: bool,
    ) -> Result<Client, ClientError> {
        Ok(Client {
            http,
            base: parse_base(url)?,
            identified,
        })
    }

    /// The node's base URL.
    pub fn url(&self) -> &Url {
        &self.base
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        {
            let mut p = u
                .path_segments_mut()
                .expect("base URL checked to be hierarchical");
            p.pop_if_empty();
            for s in segments {
                p.push(s);
            }
        }
        u
    }

    // ---- transactions ----

    /// `POST /v1/tx`: submits signed transaction bytes. With `wait`, returns once
    /// the transaction is durably committed and applied (`index` set); without,
    /// as soon as the node accepted it (status usually `pending`).
    pub async fn submit(&self, tx: &[u8], wait: bool) -> Result<TxStatus, ClientError> {
        let mut req = self
            .http
            .post(self.endpoint(&["v1", "tx"]))
            .header(reqwest::header::CONTENT_TYPE, COSE_CONTENT_TYPE)
            .body(tx.to_vec());
        if !wait {
            req = req.query(&[("wait", "false")]);
        }
        let st: TxStatus = self.json(req).await?;
        // The id is the hash of the bytes sent, never the node's word.
        if st.id != comity_core::crypto::sha256(tx) {
            return Err(ClientError::Decode(format!(
                "the node answered for transaction {}, not the one sent",
                hex::encode(st.id)
            )));
        }
        Ok(st)
    }

    /// `GET /v1/tx/{id}`; status `unknown` if the node never saw it.
    pub async fn tx_status(&self, id: &Hash) -> Result<TxStatus, ClientError> {
        let st: TxStatus = self
            .json(
                self.http
                    .get(self.endpoint(&["v1", "tx", &hex::encode(id)])),
            )
            .await?;
        if st.id != *id {
            return Err(ClientError::Decode(format!(
                "asked for transaction {}, the node answered for {}",
                hex::encode(id),
                hex::encode(st.id)
            )));
        }
        Ok(st)
    }

    /// `GET /v1/tx/{id}/receipt`: the COSE receipt bytes, or `None` while the
    /// covering checkpoint is not final (202 `pending` / 503 `not_ready`).
    /// 404 (unknown transaction) is an error.
    /// The receipt carries the transaction when this client presents an
    /// identity; without one it proves the leaf only (the node shows
    /// transactions to members and users).
    pub async fn receipt(&self, id: &Hash) -> Result<Option<Vec<u8>>, ClientError> {
        self.receipt_opts(id, self.identified).await
    }

    /// Like [`Client::receipt`]; `body = false` asks for a receipt without the
    /// transaction body (smaller; still proves the leaf).
    pub async fn receipt_opts(
        &self,
        id: &Hash,
        body: bool,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        self.receipt_waiting(id, body, Duration::ZERO).await
    }

    /// Like [`Client::receipt_opts`], but the node holds the request up to
    /// `wait` until a final checkpoint covers the transaction.
    pub async fn receipt_waiting(
        &self,
        id: &Hash,
        body: bool,
        wait: Duration,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let mut req = self
            .http
            .get(self.endpoint(&["v1", "tx", &hex::encode(id), "receipt"]));
        if !body {
            req = req.query(&[("body", "false")]);
        }
        if !wait.is_zero() {
            req = req.query(&[("wait_ms", wait.as_millis().to_string())]);
        }
        self.maybe_bytes(req).await
    }

    /// `GET /v1/ledger/receipt/{index}`: receipt for any ledger position,
    /// with the transaction, `None` while pending. Needs a member's or
    /// user's identity (walking indexes would list who transacted when).
    pub async fn ledger_receipt(&self, index: u64) -> Result<Option<Vec<u8>>, ClientError> {
        let req = self
            .http
            .get(self.endpoint(&["v1", "ledger", "receipt", &index.to_string()]));
        self.maybe_bytes(req).await
    }

    /// Polls [`Client::receipt`] every `poll` until it is available or `timeout` passes.
    pub async fn wait_receipt(
        &self,
        id: &Hash,
        poll: Duration,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(5));
            if let Some(r) = self.receipt_waiting(id, self.identified, left).await? {
                return Ok(r);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Api {
                    status: 202,
                    error: Some(crate::ApiError {
                        code: "pending".into(),
                        message: format!(
                            "receipt still pending after {:.1} s",
                            timeout.as_secs_f64()
                        ),
                    }),
                    body: String::new(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    // ---- ledger ----

    /// `GET /v1/checkpoint`: the latest final checkpoint.
    pub async fn checkpoint(&self) -> Result<CheckpointInfo, ClientError> {
        self.json(self.http.get(self.endpoint(&["v1", "checkpoint"])))
            .await
    }

    /// `GET /v1/proof/consistency?from=M&to=N`.
    pub async fn consistency(&self, from: u64, to: u64) -> Result<ConsistencyProof, ClientError> {
        self.json(
            self.http
                .get(self.endpoint(&["v1", "proof", "consistency"]))
                .query(&[("from", from), ("to", to)]),
        )
        .await
    }

    /// `GET /v1/ledger/entries?from=I&count=K` (K <= 1000): ledger records of
    /// positions I..I+K. A user is sent other identities' notary
    /// transactions with an empty `body` (withheld); a member gets them all.
    pub async fn entries(&self, from: u64, count: u64) -> Result<Vec<Record>, ClientError> {
        let bytes = self
            .bytes(
                self.http
                    .get(self.endpoint(&["v1", "ledger", "entries"]))
                    .query(&[("from", from), ("count", count)]),
            )
            .await?;
        decode_records(&bytes)
    }

    /// `GET /v1/ledger/size`: size and root of the applied ledger.
    pub async fn ledger_size(&self) -> Result<LedgerSize, ClientError> {
        self.json(self.http.get(self.endpoint(&["v1", "ledger", "size"])))
            .await
    }

    // ---- kv ----

    /// `GET /v1/kv/{key}` (needs a client identity): value proved at the
    /// latest final checkpoint. Each identity has a key space of its own:
    /// `owner` reads another identity's, which only members may.
    pub async fn kv_get(&self, owner: Option<&Hash>, key: &str) -> Result<KvRead, ClientError> {
        check_path_key(key)?;
        let req = self.http.get(self.endpoint(&["v1", "kv", key]));
        self.json(with_owner(req, owner)).await
    }

    /// `GET /v1/kv/{key}/history` (needs a client identity): one page of
    /// versions, oldest first, after ledger index `after` (from the start
    /// when `None`); the page's `next` is the following page's `after`.
    /// `owner` as in [`Client::kv_get`].
    pub async fn kv_history(
        &self,
        owner: Option<&Hash>,
        key: &str,
        after: Option<u64>,
    ) -> Result<KvHistory, ClientError> {
        check_path_key(key)?;
        let mut req = self.http.get(self.endpoint(&["v1", "kv", key, "history"]));
        if let Some(a) = after {
            req = req.query(&[("after", a)]);
        }
        self.json(with_owner(req, owner)).await
    }

    // ---- governance ----

    /// `GET /v1/gov/...` (needs a client identity), e.g. `["proposals", id]`,
    /// `["members"]`, `["constitution"]`, `["history", id]`. The documents are
    /// described in docs/api.md.
    pub async fn gov_get(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, ClientError> {
        let mut segs = vec!["v1", "gov"];
        segs.extend_from_slice(path);
        self.json(self.http.get(self.endpoint(&segs)).query(query))
            .await
    }

    // ---- notary ----

    /// `GET /v1/notary/...` (needs a client identity), e.g. `["documents", id]`,
    /// `["digests", digest]`, `["documents", id, "events"]`, `["documents"]`
    /// with `party`/`matter`/`status`/time query parameters. The documents are
    /// described in docs/api.md.
    pub async fn notary_get(
        &self,
        path: &[&str],
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, ClientError> {
        let mut segs = vec!["v1", "notary"];
        segs.extend_from_slice(path);
        self.json(self.http.get(self.endpoint(&segs)).query(query))
            .await
    }

    fn personal_url(&self, document: &Hash) -> Url {
        self.endpoint(&[
            "v1",
            "notary",
            "documents",
            &hex::encode(document),
            "personal",
        ])
    }

    /// `GET /v1/notary/documents/{id}/personal`: the personal data this node
    /// holds (for the registrant, custodian and parties; 410 once erased).
    pub async fn notary_personal(&self, document: &Hash) -> Result<Vec<u8>, ClientError> {
        self.bytes(self.http.get(self.personal_url(document))).await
    }

    /// `PUT /v1/notary/documents/{id}/personal`: stores the personal data
    /// whose SHA-256 the record names on this node (erasable later).
    pub async fn notary_put_personal(
        &self,
        document: &Hash,
        blob: &[u8],
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            self.http
                .put(self.personal_url(document))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(blob.to_vec()),
        )
        .await
    }

    // ---- network ----

    /// `GET /v1/network/identity`. For offline verification prefer a copy of
    /// this document obtained out of band: the node is not its own witness.
    pub async fn network_identity(&self) -> Result<NetworkIdentity, ClientError> {
        self.json(self.http.get(self.endpoint(&["v1", "network", "identity"])))
            .await
    }

    /// `GET /v1/network/nodes`: the trusted node set now (unverified: a
    /// joining node checks its chain when it replays the ledger).
    pub async fn trusted_nodes(&self) -> Result<TrustedNodes, ClientError> {
        self.json(self.http.get(self.endpoint(&["v1", "network", "nodes"])))
            .await
    }

    /// `GET /v1/health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(self.http.get(self.endpoint(&["v1", "health"])))
            .await
    }

    /// `GET /v1/health` whatever the node's state: a node that is starting,
    /// has no quorum or has diverged answers 503 with the same document,
    /// which this returns instead of an error.
    pub async fn health_report(&self) -> Result<Health, ClientError> {
        let req = self.http.get(self.endpoint(&["v1", "health"]));
        match self.send_any(req).await? {
            (s, body) if s.is_success() || s == StatusCode::SERVICE_UNAVAILABLE => decode(&body),
            (s, body) => Err(ClientError::from_body(s.as_u16(), &body)),
        }
    }

    /// `GET /v1/openapi.json`.
    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.http.get(self.endpoint(&["v1", "openapi.json"])))
            .await
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let b = self
            .bytes(self.http.get(self.endpoint(&["metrics"])))
            .await?;
        String::from_utf8(b).map_err(|e| ClientError::Decode(format!("metrics: {e}")))
    }

    // ---- plumbing ----

    /// Sends `req`; returns the status and body of a 2xx answer, an `Api` error otherwise.
    async fn send(&self, req: RequestBuilder) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let (status, body) = self.send_any(req).await?;
        if !status.is_success() {
            return Err(ClientError::from_body(status.as_u16(), &body));
        }
        Ok((status, body))
    }

    /// The status and (bounded) body, whatever the status.
    async fn send_any(&self, req: RequestBuilder) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let mut resp = req.send().await?;
        let status = resp.status();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ClientError::Decode(format!(
                    "response larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body))
    }

    async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T, ClientError> {
        let (_, body) = self.send(req).await?;
        decode(&body)
    }

    async fn bytes(&self, req: RequestBuilder) -> Result<Vec<u8>, ClientError> {
        Ok(self.send(req).await?.1)
    }

    /// 200 → bytes, 202 or 503 `not_ready`/`pending` → None.
    async fn maybe_bytes(&self, req: RequestBuilder) -> Result<Option<Vec<u8>>, ClientError> {
        match self.send(req).await {
            Ok((StatusCode::OK, body)) => Ok(Some(body)),
            Ok((StatusCode::ACCEPTED, _)) => Ok(None),
            Ok((s, _)) => Err(ClientError::Decode(format!("unexpected status {s}"))),
            Err(e)
                if e.status() == Some(503)
                    && matches!(e.code(), Some("not_ready") | Some("pending")) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Adds `?owner=` for a read of another identity's kv key.
fn with_owner(req: RequestBuilder, owner: Option<&Hash>) -> RequestBuilder {
    match owner {
        Some(o) => req.query(&[("owner", hex::encode(o))]),
        None => req,
    }
}

/// Keys travel as one percent-encoded path segment; `.` and `..` cannot (URL
/// normalization would drop them and address another resource).
fn check_path_key(key: &str) -> Result<(), ClientError> {
    if key.is_empty() || key == "." || key == ".." {
        return Err(ClientError::Config(format!(
            "key {key:?} cannot be read over the HTTP API"
        )));
    }
    Ok(())
}

fn parse_base(url: &str) -> Result<Url, ClientError> {
    let u = Url::parse(url).map_err(|e| ClientError::Config(format!("node URL {url:?}: {e}")))?;
    if !matches!(u.scheme(), "https" | "http") || u.cannot_be_a_base() || u.host().is_none() {
        return Err(ClientError::Config(format!(
            "node URL {url:?} must look like https://host:port"
        )));
    }
    Ok(u)
}

/// Decodes the `application/cbor` body of `/v1/ledger/entries`.
pub fn decode_records(bytes: &[u8]) -> Result<Vec<Record>, ClientError> {
    let bad = |m: String| ClientError::Decode(format!("ledger entries: {m}"));
    let v = cbor::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let items = match v {
        Value::Array(a) => a,
        _ => return Err(bad("expected a CBOR array".into())),
    };
    items
        .iter()
        .map(|item| {
            let m = MapView::new(item).map_err(|e| bad(e.to_string()))?;
            Ok(Record {
                leaf: m.bytes("leaf").map_err(|e| bad(e.to_string()))?.to_vec(),
                body: m.bytes("body").map_err(|e| bad(e.to_string()))?.to_vec(),
            })
        })
        .collect()
}

/// A JSON answer, or what it was instead.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| {
        ClientError::Decode(format!(
            "{e} in {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(url: &str) -> Client {
        Client::with_http(url, reqwest::Client::new(), false).unwrap()
    }

    #[test]
    fn endpoints_escape_keys() {
        let c = client("https://127.0.0.1:8701");
        assert_eq!(
            c.endpoint(&["v1", "kv", "a/b c?"]).as_str(),
            "https://127.0.0.1:8701/v1/kv/a%2Fb%20c%3F"
        );
        let c = client("https://node.example:1/prefix/");
        assert_eq!(
            c.endpoint(&["v1", "health"]).as_str(),
            "https://node.example:1/prefix/v1/health"
        );
    }

    #[test]
    fn dot_keys_are_refused() {
        assert!(check_path_key("..").is_err());
        assert!(check_path_key(".").is_err());
        assert!(check_path_key("").is_err());
        assert!(check_path_key("...").is_ok());
    }

    #[test]
    fn bad_urls_and_pems_are_config_errors() {
        assert!(matches!(
            Client::with_http("not a url", reqwest::Client::new(), false),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(
            Client::with_http("mailto:x@y", reqwest::Client::new(), false),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(
            Client::new("https://127.0.0.1:1", b"nothing here", None),
            Err(ClientError::Config(_))
        ));
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])
            .unwrap()
            .cert
            .pem();
        assert!(Client::new("https://127.0.0.1:1", ca.as_bytes(), None).is_ok());
        let e = Client::new("http://10.0.0.1:1", ca.as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("must be https://"), "{e}");
        let e = Client::new("http://node.example:1", ca.as_bytes(), None).unwrap_err();
        assert!(e.to_string().contains("must be https://"), "{e}");
        assert!(Client::new("http://127.0.0.1:1", ca.as_bytes(), None).is_ok());
    }

    #[test]
    fn records_decode() {
        let recs = vec![
            Record {
                leaf: vec![1],
                body: vec![2, 3],
            },
            Record {
                leaf: vec![4],
                body: vec![],
            },
        ];
        let arr = Value::Array(
            recs.iter()
                .map(|r| cbor::from_slice(&r.to_cbor()).unwrap())
                .collect(),
        );
        let bytes = cbor::to_vec(arr).unwrap();
        assert_eq!(decode_records(&bytes).unwrap(), recs);
        assert!(decode_records(&[0x01]).is_err());
    }
}
