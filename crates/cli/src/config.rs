//! Global flags and the client defaults `comity up` leaves in `<data>/client.json`.

use anyhow::{bail, Context};
use clap::Args;
use comity_client::{Client, Signer};
use comity_core::network::NetworkIdentity;
use comity_core::Hash;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Default node URL when neither a flag nor client.json names one.
pub const DEFAULT_URL: &str = "https://127.0.0.1:8701";
/// Name of the defaults file inside the data directory.
pub const CLIENT_JSON: &str = "client.json";

/// Flags accepted by every subcommand (before or after it).
#[derive(Args, Clone, Debug, Default)]
pub struct Global {
    /// Node URL [default: from <data>/client.json, else https://127.0.0.1:8701]
    #[arg(long, global = true, env = "COMITY_NODE", value_name = "URL")]
    pub node: Option<String>,
    /// CA certificate (PEM) the node's TLS certificate must chain to [default: from client.json, else <data>/ca.pem]
    #[arg(long, global = true, env = "COMITY_CA", value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// Private key (PKCS#8 PEM) that signs transactions and authenticates reads [default: from client.json]
    #[arg(long, global = true, env = "COMITY_KEY", value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// Certificate (PEM) of --key, presented as TLS client certificate [default: from client.json]
    #[arg(long, global = true, env = "COMITY_CERT", value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// Identity id to sign as with --key, once that key was rotated in by
    /// `identity.rotate_key` [default: the key's fingerprint, the id of an
    /// identity whose first key it is]
    #[arg(long, global = true, env = "COMITY_IDENTITY", value_name = "HEX")]
    pub identity: Option<String>,
    /// Data directory of the local network
    #[arg(
        long,
        global = true,
        env = "COMITY_DATA",
        value_name = "DIR",
        default_value = "comity-data"
    )]
    pub data: PathBuf,
}

static GLOBAL: OnceLock<Global> = OnceLock::new();

/// Records the parsed global flags (main does this once) so that subcommands
/// whose `run` takes only their own arguments can still read `--data` & co.
pub fn set_global(g: Global) {
    let _ = GLOBAL.set(g);
}

/// The global flags of this invocation.
#[allow(dead_code)]
pub fn global() -> &'static Global {
    GLOBAL
        .get()
        .expect("global flags are set by main before any subcommand runs")
}

/// `<data>/client.json`: written by `comity up`, read by client commands.
/// Paths may be absolute, relative to the working directory, or relative to
/// the data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Every node of the network (clients may use any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The network identity JSON (what offline verifiers trust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// A user identity: key and certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// A member identity (may register users, vote).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_cert: Option<String>,
}

impl ClientJson {
    pub fn path(data: &Path) -> PathBuf {
        data.join(CLIENT_JSON)
    }

    /// Reads `<data>/client.json`; `None` if it does not exist.
    pub fn load(data: &Path) -> anyhow::Result<Option<ClientJson>> {
        let path = Self::path(data);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is not valid client.json", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `<data>/client.json` atomically and durably (temp file,
    /// fsync, rename; the caller fsyncs the directory).
    #[allow(dead_code)]
    pub fn write(&self, data: &Path) -> anyhow::Result<()> {
        let path = Self::path(data);
        let tmp = data.join(format!(".{CLIENT_JSON}.tmp"));
        let written = std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all());
        written.with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// Effective client settings: flags > environment > client.json > defaults.
#[derive(Clone, Debug)]
pub struct Config {
    pub data: PathBuf,
    pub url: String,
    /// Every node's URL: client.json's list, or just `url` when `--node` names another.
    pub nodes: Vec<String>,
    pub ca: PathBuf,
    /// Local copy of the network identity, if known.
    pub network: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub member_key: Option<PathBuf>,
    pub member_cert: Option<PathBuf>,
    /// `--identity`: the id `key` signs as, if not its fingerprint.
    pub identity: Option<Hash>,
}

impl Config {
    pub fn load(g: &Global) -> anyhow::Result<Config> {
        let file = ClientJson::load(&g.data)?.unwrap_or_default();
        let data = g.data.clone();
        let resolve = |p: &Option<String>| p.as_deref().map(|p| resolve_path(&data, p));
        let network = resolve(&file.network).or_else(|| {
            let p = data.join("network.json");
            p.exists().then_some(p)
        });
        let url = g
            .node
            .clone()
            .or(file.url.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let nodes = if file.nodes.contains(&url) {
            file.nodes.clone()
        } else {
            vec![url.clone()]
        };
        Ok(Config {
            url,
            nodes,
            ca: g
                .ca
                .clone()
                .or_else(|| resolve(&file.ca))
                .unwrap_or_else(|| data.join("ca.pem")),
            network,
            // An explicit --key without --cert must not pair with client.json's cert.
            key: g.key.clone().or_else(|| resolve(&file.key)),
            cert: g
                .cert
                .clone()
                .or_else(|| g.key.is_none().then(|| resolve(&file.cert)).flatten()),
            member_key: resolve(&file.member_key),
            member_cert: resolve(&file.member_cert),
            identity: g
                .identity
                .as_deref()
                .map(parse_hash)
                .transpose()
                .context("--identity")?,
            data,
        })
    }

    /// The (key, cert) pair to authenticate reads with: the user identity, else the member one.
    pub fn identity_files(&self) -> Option<(PathBuf, PathBuf)> {
        match (&self.key, &self.cert) {
            (Some(k), Some(c)) => Some((k.clone(), c.clone())),
            (Some(_), None) => None,
            _ => match (&self.member_key, &self.member_cert) {
                (Some(k), Some(c)) => Some((k.clone(), c.clone())),
                _ => None,
            },
        }
    }

    /// A client that trusts only the configured CA, without a client certificate.
    pub fn public_client(&self) -> anyhow::Result<Client> {
        self.public_client_of(&self.url)
    }

    /// A public client of the node at `url`.
    pub fn public_client_of(&self, url: &str) -> anyhow::Result<Client> {
        Client::from_files(url, &self.ca, None).with_context(|| format!("connecting to {url}"))
    }

    /// A client presenting the member identity of client.json, if it has
    /// one: members are shown every transaction (auditing).
    pub fn member_client(&self) -> anyhow::Result<Option<Client>> {
        self.member_client_of(&self.url)
    }

    /// [`Config::member_client`] of the node at `url`.
    pub fn member_client_of(&self, url: &str) -> anyhow::Result<Option<Client>> {
        let (Some(key), Some(cert)) = (&self.member_key, &self.member_cert) else {
            return Ok(None);
        };
        Client::from_files(url, &self.ca, Some((cert.as_path(), key.as_path())))
            .map(Some)
            .with_context(|| format!("connecting to {url}"))
    }

    /// A client presenting the configured identity's certificate, when there is one.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_of(&self.url)
    }

    /// [`Config::client`] of the node at `url`.
    pub fn client_of(&self, url: &str) -> anyhow::Result<Client> {
        let ident = self.identity_files();
        Client::from_files(
            url,
            &self.ca,
            ident.as_ref().map(|(k, c)| (c.as_path(), k.as_path())),
        )
        .with_context(|| format!("connecting to {url}"))
    }

    /// The local network identity file, parsed.
    pub fn local_network_identity(&self) -> anyhow::Result<Option<NetworkIdentity>> {
        match &self.network {
            Some(p) => read_network_identity(p).map(Some),
            None => Ok(None),
        }
    }

    /// The network id transactions must carry: from the local network
    /// identity, else asked of the node.
    pub async fn network_id(&self, client: &Client) -> anyhow::Result<Hash> {
        if let Some(n) = self.local_network_identity()? {
            return Ok(n.network_id);
        }
        Ok(client
            .network_identity()
            .await
            .context("fetching the network identity")?
            .network_id)
    }

    /// Signs as the configured user key (as `--identity`, if given), else
    /// the member key.
    pub fn signer(&self, network_id: Hash) -> anyhow::Result<Signer> {
        match &self.key {
            Some(key) => self.key_signer(key, network_id),
            None if self.member_key.is_none() => anyhow::bail!(
                "no signing key: pass --key (or COMITY_KEY), or run `comity up` to write {}",
                ClientJson::path(&self.data).display()
            ),
            None => self.member_signer(network_id),
        }
    }

    /// Signs with `key` as `--identity`, or as the identity whose first key it is.
    pub fn key_signer(&self, key: &Path, network_id: Hash) -> anyhow::Result<Signer> {
        let mut s = load_signer(key, network_id)?;
        if let Some(id) = self.identity {
            s.id = id;
        }
        Ok(s)
    }

    /// Signs as the member key of client.json (`--identity` goes with `--key`).
    pub fn member_signer(&self, network_id: Hash) -> anyhow::Result<Signer> {
        if self.identity.is_some() {
            anyhow::bail!("--identity names who --key signs as; pass --key too");
        }
        let key = self.member_key.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "no member key: {} has no member_key (written by `comity up`)",
                ClientJson::path(&self.data).display()
            )
        })?;
        load_signer(key, network_id)
    }
}

/// The signer of key file `key`, with a warning if others may read it.
fn load_signer(key: &Path, network_id: Hash) -> anyhow::Result<Signer> {
    if let Some(mode) = comity_node::key_file::exposed_mode(key) {
        eprintln!(
            "warning: {} is readable by others than its owner (mode {mode:o}); chmod 600 it",
            key.display()
        );
    }
    Ok(Signer::from_pem_file(key, network_id)?)
}

/// Paths in client.json: absolute; or relative to the data directory if
/// that exists; else relative to the working directory. The data directory
/// comes first: a file of the same name left (or planted) where a command
/// happens to run must not become its trust anchor.
fn resolve_path(data: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        return p;
    }
    let in_data = data.join(&p);
    if in_data.exists() {
        in_data
    } else {
        p
    }
}

pub fn read_network_identity(path: &Path) -> anyhow::Result<NetworkIdentity> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&b)
        .with_context(|| format!("{} is not a network identity document", path.display()))
}

/// Parses a 32-byte hex id (transaction, identity, node).
pub fn parse_hash(s: &str) -> anyhow::Result<Hash> {
    let v = hex::decode(s.trim()).with_context(|| format!("{s:?} is not hex"))?;
    match v.try_into() {
        Ok(h) => Ok(h),
        Err(v) => bail!(
            "expected a 32-byte id (64 hex digits), got {} bytes",
            v.len()
        ),
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD hh:mm:ss.mmm UTC`.
pub fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Shows bytes as text when they are printable UTF-8, else as hex.
/// A warning when a checkpoint fetched just now is old: a node can keep
/// serving an old (validly signed) checkpoint, and what it proves, to hide
/// what came later.
pub fn stale_checkpoint_warning(time_ms: u64) -> Option<String> {
    const STALE_MS: u64 = 5 * 60 * 1000;
    let age = comity_client::now_ms().saturating_sub(time_ms);
    (age > STALE_MS).then(|| {
        format!(
            "WARNING: this checkpoint is {} s old; a later one may show more (ask another node)",
            age / 1000
        )
    })
}

pub fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            format!("{s:?}")
        }
        _ => format!("0x{} ({} bytes)", hex::encode(b), b.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(data: &Path) -> Global {
        Global {
            data: data.to_path_buf(),
            ..Global::default()
        }
    }

    #[test]
    fn times() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(fmt_time(1_763_712_000_123), "2025-11-21 08:00:00.123 UTC");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
    }

    #[test]
    fn hashes() {
        assert_eq!(parse_hash(&"0a".repeat(32)).unwrap(), [10; 32]);
        assert!(parse_hash("0a").is_err());
        assert!(parse_hash("zz").is_err());
    }

    #[test]
    fn defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let c = Config::load(&global(d)).unwrap();
        assert_eq!(c.url, DEFAULT_URL);
        assert_eq!(c.ca, d.join("ca.pem"));
        assert!(c.key.is_none() && c.network.is_none());

        std::fs::write(d.join("user.key.pem"), "x").unwrap();
        let cj = ClientJson {
            url: Some("https://127.0.0.1:9999".into()),
            nodes: vec![
                "https://127.0.0.1:9999".into(),
                "https://127.0.0.1:10000".into(),
            ],
            ca: Some(d.join("my-ca.pem").display().to_string()),
            network: Some("network.json".into()),
            key: Some("user.key.pem".into()),
            cert: Some("user.cert.pem".into()),
            member_key: Some("/abs/m.key.pem".into()),
            member_cert: Some("/abs/m.cert.pem".into()),
        };
        cj.write(d).unwrap();
        assert_eq!(ClientJson::load(d).unwrap().unwrap(), cj);
        let c = Config::load(&global(d)).unwrap();
        assert_eq!(c.url, "https://127.0.0.1:9999");
        assert_eq!(c.nodes.len(), 2, "client.json's node list is used");
        assert_eq!(c.ca, d.join("my-ca.pem"));
        // Relative to the data dir because it exists there.
        assert_eq!(c.key.as_deref(), Some(d.join("user.key.pem").as_path()));
        assert_eq!(
            c.identity_files().unwrap().1,
            PathBuf::from("user.cert.pem")
        );

        let mut g = global(d);
        g.node = Some("https://h:1".into());
        g.key = Some("/k.pem".into());
        let c = Config::load(&g).unwrap();
        assert_eq!(c.url, "https://h:1");
        assert_eq!(c.key.as_deref(), Some(Path::new("/k.pem")));
        // --key alone: no certificate pairs with it, and no member fallback for reads.
        assert!(c.cert.is_none());
        assert!(c.identity_files().is_none());
    }

    #[test]
    fn bad_client_json_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CLIENT_JSON), "{nope").unwrap();
        let e = Config::load(&global(dir.path())).unwrap_err();
        assert!(format!("{e:#}").contains("client.json"), "{e:#}");
    }
}
