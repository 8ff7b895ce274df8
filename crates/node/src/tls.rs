//! HTTPS for clients: the node's certificate, and optional client
//! certificates that identify registered members and users.
//!
//! A client certificate is accepted if the client proves possession of its
//! key in the handshake; who it is comes from the registry (the SHA-256 of
//! the certificate's public key is its identity id), not from a CA.

use comity_core::Hash;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug)]
struct AnyClientCert(Arc<CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Installs the process-wide rustls crypto provider (ring). Idempotent.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    install_provider();
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?,
    ))
    .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("{}: no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(AnyClientCert(provider)))
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Identity id of a client certificate: SHA-256 of its SubjectPublicKeyInfo.
pub fn client_id(cert: &CertificateDer<'_>) -> Option<Hash> {
    comity_consensus::network::cert_fingerprint(cert)
}

/// Checks that the first certificate in `pem` is for the node key, since
/// peers recognise each other by the key of the certificate presented.
pub fn check_node_cert(pem: &[u8], node: &Hash) -> anyhow::Result<()> {
    let cert = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .ok_or_else(|| anyhow::anyhow!("no certificate"))??;
    match client_id(&cert) {
        Some(fp) if &fp == node => Ok(()),
        _ => anyhow::bail!(
            "the TLS certificate is not for the node key {} (peers recognise nodes by it); issue it for node.key.pem",
            hex::encode(node)
        ),
    }
}
