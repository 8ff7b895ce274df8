//! `comity keys`: identity key pairs and their self-signed certificates.

use crate::config::Global;
use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use comity_core::crypto::{Alg, PublicKey, SigningKey};
use comity_core::Hash;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a private key (<name>.key.pem, mode 0600) and a self-signed
    /// certificate (<name>.cert.pem); prints the identity id.
    New {
        /// Name of the identity: file names and certificate CN.
        #[arg(long)]
        name: String,
        /// Signature algorithm.
        #[arg(long, value_enum, default_value_t = AlgArg::Ed25519)]
        alg: AlgArg,
        /// Directory for the files [default: <data>/keys]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Print the identity id and algorithm of a private key, certificate or public key PEM.
    Show {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AlgArg {
    /// EdDSA over Ed25519 (COSE -8).
    Ed25519,
    /// ECDSA over P-256 with SHA-256 (COSE -7).
    Es256,
}

impl From<AlgArg> for Alg {
    fn from(a: AlgArg) -> Alg {
        match a {
            AlgArg::Ed25519 => Alg::EdDsa,
            AlgArg::Es256 => Alg::Es256,
        }
    }
}

pub fn run(g: &Global, cmd: KeysCmd) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::New { name, alg, out } => {
            let dir = out.unwrap_or_else(|| g.data.join("keys"));
            let k = new_identity(&dir, &name, alg.into())?;
            println!("created identity {name:?} ({})", k.alg.name());
            println!("  id:          {}", hex::encode(k.id));
            println!("  private key: {} (mode 0600)", k.key_path.display());
            println!("  certificate: {}", k.cert_path.display());
            Ok(())
        }
        KeysCmd::Show { file } => show(&file),
    }
}

/// Files written by [`new_identity`].
#[derive(Clone, Debug)]
pub struct NewIdentity {
    pub id: Hash,
    pub alg: Alg,
    #[allow(dead_code)] // for callers such as `comity up`
    pub key: SigningKey,
    pub key_path: PathBuf,
    pub cert_path: PathBuf,
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("identity name {name:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ . and not start with a dot");
    }
    Ok(())
}

/// Creates `<dir>/<name>.key.pem` (PKCS#8, mode 0600 from creation) and
/// `<dir>/<name>.cert.pem` (self-signed X.509, CN = name, made from that
/// key). Refuses to overwrite either file.
pub fn new_identity(dir: &Path, name: &str, alg: Alg) -> anyhow::Result<NewIdentity> {
    check_name(name)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let key_path = dir.join(format!("{name}.key.pem"));
    let cert_path = dir.join(format!("{name}.cert.pem"));
    for p in [&key_path, &cert_path] {
        if p.symlink_metadata().is_ok() {
            bail!("{} already exists; refusing to overwrite it", p.display());
        }
    }
    let key = SigningKey::generate(alg);
    let key_pem = key.to_pkcs8_pem();
    let cert_pem = self_signed_cert(&key_pem, name)?;
    write_new(&key_path, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert_path, cert_pem.as_bytes(), 0o644) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok(NewIdentity {
        id: key.public().fingerprint(),
        alg,
        key,
        key_path,
        cert_path,
    })
}

/// A self-signed certificate (CN = `cn`) for the PKCS#8 PEM key.
pub fn self_signed_cert(key_pem: &str, cn: &str) -> anyhow::Result<String> {
    let kp = rcgen::KeyPair::from_pem(key_pem).context("loading the key into rcgen")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    Ok(params.self_signed(&kp)?.pem())
}

/// Creates `path` with `mode` (never wider, even briefly), failing if it exists.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// What a PEM file says about an identity.
#[derive(Debug)]
pub struct ShownKey {
    pub kind: &'static str,
    pub public: PublicKey,
    pub subject: Option<String>,
}

pub fn inspect(pem: &str) -> anyhow::Result<ShownKey> {
    use x509_cert::der::{Decode, DecodePem, Encode};
    let label = pem
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
        })
        .ok_or_else(|| anyhow::anyhow!("not a PEM file"))?;
    match label {
        "PRIVATE KEY" => {
            let k = SigningKey::from_pkcs8_pem(pem)?;
            Ok(ShownKey {
                kind: "private key",
                public: k.public(),
                subject: None,
            })
        }
        "CERTIFICATE" => {
            let c = x509_cert::Certificate::from_pem(pem.as_bytes())
                .context("parsing the certificate")?;
            let spki = c.tbs_certificate.subject_public_key_info.to_der()?;
            Ok(ShownKey {
                kind: "certificate",
                public: PublicKey::from_any_spki_der(&spki)?,
                subject: Some(c.tbs_certificate.subject.to_string()),
            })
        }
        "PUBLIC KEY" => {
            let (_, der) = x509_cert::der::pem::decode_vec(pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("bad PEM: {e}"))?;
            // Validate the DER shape before using it.
            x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(&der)?;
            Ok(ShownKey {
                kind: "public key",
                public: PublicKey::from_any_spki_der(&der)?,
                subject: None,
            })
        }
        other => bail!(
            "unsupported PEM type {other:?} (expected PRIVATE KEY, CERTIFICATE or PUBLIC KEY)"
        ),
    }
}

fn show(file: &Path) -> anyhow::Result<()> {
    let pem =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let k = inspect(&pem).with_context(|| file.display().to_string())?;
    println!("{}: {}", file.display(), k.kind);
    println!("  id:  {}", hex::encode(k.public.fingerprint()));
    println!("  alg: {}", k.public.alg().name());
    if let Some(s) = k.subject {
        println!("  subject: {s}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_keys_are_private_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        for (name, alg) in [("alice", Alg::EdDsa), ("bob", Alg::Es256)] {
            let k = new_identity(dir.path(), name, alg).unwrap();
            let mode = std::fs::metadata(&k.key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
            let pem = std::fs::read_to_string(&k.key_path).unwrap();
            let loaded = SigningKey::from_pkcs8_pem(&pem).unwrap();
            assert_eq!(loaded.public(), k.key.public());
            assert_eq!(loaded.public().fingerprint(), k.id);
            // The certificate is for the same key, with CN = name.
            let cert = inspect(&std::fs::read_to_string(&k.cert_path).unwrap()).unwrap();
            assert_eq!(cert.public, k.key.public());
            assert_eq!(cert.subject.as_deref(), Some(format!("CN={name}").as_str()));
            let shown = inspect(&pem).unwrap();
            assert_eq!(shown.public.fingerprint(), k.id);
            // A signer from the file signs as this identity.
            let s = comity_client::Signer::from_pem_file(&k.key_path, [0; 32]).unwrap();
            assert_eq!(s.id, k.id);
        }
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let k = new_identity(dir.path(), "carol", Alg::EdDsa).unwrap();
        let before = std::fs::read(&k.key_path).unwrap();
        let e = new_identity(dir.path(), "carol", Alg::EdDsa).unwrap_err();
        assert!(e.to_string().contains("refusing"), "{e}");
        assert_eq!(std::fs::read(&k.key_path).unwrap(), before);
        // Only the certificate present: still refused, and no key is left behind.
        std::fs::remove_file(&k.key_path).unwrap();
        assert!(new_identity(dir.path(), "carol", Alg::EdDsa).is_err());
        assert!(!k.key_path.exists());
    }

    #[test]
    fn bad_names_refused() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(new_identity(dir.path(), n, Alg::EdDsa).is_err(), "{n}");
        }
    }

    #[test]
    fn keys_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("keys");
        new_identity(&sub, "dave", Alg::EdDsa).unwrap();
        let mode = std::fs::metadata(&sub).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn inspect_rejects_garbage() {
        assert!(inspect("hello").is_err());
        assert!(
            inspect("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
                .is_err()
        );
    }
}
