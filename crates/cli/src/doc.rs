//! `comity doc`: document provenance with the notary application. Writes are
//! signed with `--key` (else client.json's user key); reads authenticate
//! with the matching certificate. Identities are named by id (64 hex), by a
//! key or certificate PEM file, or by a key name in `<data>/keys`.

use crate::config::{fmt_time, parse_hash, read_network_identity, Config, Global};
use crate::evidence::{self, Bundle, Content, EventEvidence};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comity_apps::notary::document::{self, Document};
use comity_client::{Client, Signer, TxState, TxStatus};
use comity_core::crypto::random_nonce;
use comity_core::Hash;
use serde_json::{json, Value};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum DocCmd {
    /// Register FILE by its SHA-256 (streamed; the content stays here) with its metadata.
    Register(Box<Meta>),
    /// Register FILE as a new version of an executed document; it supersedes
    /// that one when its signing parties (all of the old one's among them) have signed.
    Amend {
        /// The document this version supersedes.
        predecessor: String,
        #[command(flatten)]
        meta: Box<Meta>,
    },
    /// Sign a document's digest as one of its parties; with --file, only if
    /// FILE is the content registered.
    Sign {
        document: String,
        /// The copy reviewed: refused unless its digest is the document's.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// The salt (hex) of a salted registration [default: FILE.salt if present]
        #[arg(long, requires = "file")]
        salt: Option<String>,
    },
    /// Declare an executed document expired.
    Expire(Reasoned),
    /// Revoke a draft or executed document.
    Revoke(Reasoned),
    /// Place a legal hold (members), or lift one this member placed.
    Hold {
        #[command(subcommand)]
        cmd: HoldCmd,
    },
    /// Offer or accept custody.
    Custody {
        #[command(subcommand)]
        cmd: CustodyCmd,
    },
    /// Approve the destruction of a document that has left force.
    Approve(Reasoned),
    /// Destroy a document (custodian; after retention, with its approvals, without holds).
    Destroy(Reasoned),
    /// Erase the personal data a record commits to (custodian or registrant).
    Erase(Reasoned),
    /// Show a document's record and events.
    Show {
        document: String,
        #[arg(long)]
        json: bool,
    },
    /// List documents by party, matter, status or registration time.
    List(ListArgs),
    /// Find the record of FILE by its digest and tell its story, each receipt verified.
    Verify {
        file: PathBuf,
        /// The salt (hex) of a salted registration [default: FILE.salt if present]
        #[arg(long)]
        salt: Option<String>,
    },
    /// Export a self-contained evidence bundle of a document.
    Evidence {
        document: String,
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check an evidence bundle with no network access; with --file, also the content.
    VerifyEvidence {
        bundle: PathBuf,
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[arg(long)]
        salt: Option<String>,
        /// A network identity JSON obtained out of band that the bundle must match.
        #[arg(long, value_name = "FILE")]
        network_identity: Option<PathBuf>,
    },
    /// Ordered collections of documents (a matter's file).
    Collection {
        #[command(subcommand)]
        cmd: CollectionCmd,
    },
}

#[derive(Args, Debug)]
pub struct Reasoned {
    pub document: String,
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Subcommand, Debug)]
pub enum HoldCmd {
    Place {
        document: String,
        #[arg(long)]
        reason: String,
    },
    Lift {
        document: String,
        /// The hold's id (the transaction that placed it).
        hold: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CustodyCmd {
    Offer {
        document: String,
        /// The recipient: identity id, PEM file, or key name.
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    Accept(Reasoned),
}

#[derive(Subcommand, Debug)]
pub enum CollectionCmd {
    Create {
        name: String,
        #[arg(long, default_value = "")]
        matter: String,
    },
    /// Set the order of a collection's documents.
    Order {
        collection: String,
        documents: Vec<String>,
    },
    Show {
        collection: String,
    },
}

#[derive(Args, Debug)]
pub struct Meta {
    pub file: PathBuf,
    /// Title [default: the file name]
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long = "type", default_value = "")]
    pub kind: String,
    /// Matter or case reference.
    #[arg(long, default_value = "")]
    pub matter: String,
    /// Owning organization.
    #[arg(long, default_value = "")]
    pub org: String,
    /// A party that signs, as WHO=ROLE (repeatable).
    #[arg(long, value_name = "WHO=ROLE")]
    pub party: Vec<String>,
    /// A party that does not sign (witness, recipient), as WHO=ROLE.
    #[arg(long, value_name = "WHO=ROLE")]
    pub observer: Vec<String>,
    /// Retention after the document leaves force, e.g. 7y, 30d, 12h, 2s, 500ms.
    #[arg(long, default_value = "0s")]
    pub retention: String,
    /// Approvals destruction needs.
    #[arg(long, default_value_t = 1)]
    pub approvals: u64,
    /// Who may approve destruction (repeatable) [default: custodian and parties].
    #[arg(long, value_name = "WHO")]
    pub approver: Vec<String>,
    /// Register a salted digest; the salt is written to FILE.salt (keep it with the parties).
    #[arg(long)]
    pub salted: bool,
    /// Personal data kept off the ledger (committed to by digest, erasable);
    /// stored after 32 random bytes, so its digest reveals nothing once erased
    /// (kept in FILE.prefix until the data is stored, for a rerun).
    #[arg(long, value_name = "FILE")]
    pub personal: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(long, value_name = "WHO")]
    pub party: Option<String>,
    #[arg(long)]
    pub matter: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
    /// Registered at or after this ledger time (ms since the epoch).
    #[arg(long)]
    pub from_time: Option<u64>,
    /// Registered before this ledger time (ms since the epoch).
    #[arg(long)]
    pub to_time: Option<u64>,
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Cursor printed after the previous page.
    #[arg(long)]
    pub after: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// Files larger than this get a progress bar while hashing.
const PROGRESS_ABOVE: u64 = 16 << 20;

/// SHA-256 of a file, read in chunks (constant memory for any size).
pub fn hash_file(path: &Path) -> anyhow::Result<Hash> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let len = f.metadata()?.len();
    let bar = if len > PROGRESS_ABOVE {
        let b = indicatif::ProgressBar::new(len);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "hashing {bar:40} {bytes}/{total_bytes} ({eta})",
            )
            .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut h = comity_core::hash::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(h.finish())
}

/// "7y", "30d", "12h", "15m", "2s", "500ms" in milliseconds.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .with_context(|| format!("{s:?}: expected e.g. 7y, 30d, 2s"))?;
    let ms = match unit {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "y" => 365 * 86_400_000,
        other => bail!("{s:?}: unknown unit {other:?} (ms, s, m, h, d, y)"),
    };
    n.checked_mul(ms).context("duration too long")
}

/// An identity: 64 hex, a PEM file (key or certificate), or `<data>/keys/<name>`.
fn resolve(g: &Global, who: &str) -> anyhow::Result<Hash> {
    if who.len() == 64 {
        if let Ok(h) = parse_hash(who) {
            return Ok(h);
        }
    }
    let keys = g.data.join("keys");
    let candidates = [
        PathBuf::from(who),
        keys.join(format!("{who}.cert.pem")),
        keys.join(format!("{who}.key.pem")),
    ];
    let path = candidates.iter().find(|p| p.is_file()).with_context(|| {
        format!(
            "{who:?} is neither an identity id, a PEM file, nor a key in {}",
            keys.display()
        )
    })?;
    let pem = std::fs::read_to_string(path)?;
    Ok(crate::keys::inspect(&pem)?.public.fingerprint())
}

fn parties(g: &Global, list: &[String], signs: bool) -> anyhow::Result<Vec<Value>> {
    list.iter()
        .map(|p| {
            let (who, role) = p
                .split_once('=')
                .with_context(|| format!("{p:?}: expected WHO=ROLE"))?;
            Ok(json!({"id": hex::encode(resolve(g, who)?), "role": role, "signs": signs}))
        })
        .collect()
}

fn salt_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".salt");
    PathBuf::from(s)
}

fn personal_prefix_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".prefix");
    PathBuf::from(s)
}

/// The random prefix of a personal-data blob: the one an earlier run left
/// beside `file` (it stopped before storing the blob), or a new one, kept
/// there (0600) until the blob is stored.
fn personal_prefix(file: &Path) -> anyhow::Result<Vec<u8>> {
    let p = personal_prefix_path(file);
    if let Ok(text) = std::fs::read_to_string(&p) {
        println!(
            "using the personal-data prefix an earlier run left in {}",
            p.display()
        );
        return hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .with_context(|| format!("{}: not 32 bytes of hex", p.display()));
    }
    let prefix = [random_nonce(), random_nonce()].concat();
    // Written whole or not at all (temp file, fsync, rename): a partial
    // one would be taken for a short prefix by the next run.
    let tmp = personal_prefix_path(&p);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut out| {
            std::io::Write::write_all(&mut out, hex::encode(&prefix).as_bytes())?;
            out.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &p));
    written.with_context(|| format!("writing {}", p.display()))?;
    Ok(prefix)
}

/// Once the blob is stored its prefix goes: kept, it would let whoever
/// reads it match guesses against the digest after an erasure.
fn remove_personal_prefix(file: &Path) -> anyhow::Result<()> {
    let p = personal_prefix_path(file);
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", p.display()))
        }
        _ => Ok(()),
    }
}

/// The salt given, or the one beside the file.
fn salt_for(file: &Path, salt: Option<&str>) -> anyhow::Result<Option<Vec<u8>>> {
    let text = match salt {
        Some(s) => s.to_string(),
        None => match std::fs::read_to_string(salt_path(file)) {
            Ok(s) => s,
            Err(_) => return Ok(None),
        },
    };
    Ok(Some(hex::decode(text.trim()).context("the salt is hex")?))
}

struct Ctx {
    cfg: Config,
    client: Client,
    g: Global,
}

impl Ctx {
    async fn signer(&self) -> anyhow::Result<Signer> {
        self.cfg.signer(self.cfg.network_id(&self.client).await?)
    }

    /// Submits, reports, and fails unless committed.
    async fn submit(&self, tx: &[u8], what: &str) -> anyhow::Result<TxStatus> {
        let st = self.client.submit(tx, true).await?;
        crate::kv::report(what, &st)?;
        if st.status != TxState::Committed {
            bail!("{what} is not committed yet");
        }
        Ok(st)
    }

    async fn record(&self, id: &Hash) -> anyhow::Result<Document> {
        let v = self
            .client
            .notary_get(&["documents", &hex::encode(id)], &[])
            .await?;
        Ok(serde_json::from_value(v["document"].clone())?)
    }

    async fn register(&self, m: &Meta, predecessor: Option<Hash>) -> anyhow::Result<()> {
        let h = hash_file(&m.file)?;
        let salt = if m.salted {
            let p = salt_path(&m.file);
            // An earlier salt is used again, never overwritten: a retry then
            // names the same digest, and no registration loses its salt.
            if let Some(s) = salt_for(&m.file, None)? {
                println!("using the salt already in {}", p.display());
                Some(s)
            } else {
                let s = [random_nonce(), random_nonce()].concat();
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .with_context(|| format!("creating {}", p.display()))?;
                std::io::Write::write_all(&mut out, hex::encode(&s).as_bytes())
                    .and_then(|()| out.sync_all())
                    .with_context(|| format!("writing {}", p.display()))?;
                println!(
                    "salt written to {} (keep it with the parties: it is needed to verify)",
                    p.display()
                );
                Some(s)
            }
        } else {
            None
        };
        let digest = evidence::registered_digest(&h, salt.as_deref());
        // 32 random bytes first: once the blob is erased, the digest left in
        // the record cannot be matched by guessing its content (a name, a date).
        // They are kept beside the file until the blob is stored, so that a
        // run cut short in between can be run again.
        let personal = match &m.personal {
            Some(p) => {
                let data = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                Some([personal_prefix(p)?, data].concat())
            }
            None => None,
        };
        let mut all = parties(&self.g, &m.party, true)?;
        all.extend(parties(&self.g, &m.observer, false)?);
        let approvers = m
            .approver
            .iter()
            .map(|a| resolve(&self.g, a).map(hex::encode))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let title = m.title.clone().unwrap_or_else(|| {
            m.file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let mut args = json!({
            "digest": hex::encode(digest), "salted": salt.is_some(), "title": title,
            "type": m.kind, "matter": m.matter, "org": m.org, "parties": all,
            "retention": {"period_ms": parse_duration(&m.retention)?, "approvals": m.approvals, "approvers": approvers},
        });
        if let Some(p) = &personal {
            args["personal"] = json!(hex::encode(comity_core::crypto::sha256(p)));
        }
        let s = self.signer().await?;
        let id = document::id_of(&digest);
        if let Some(p) = predecessor {
            args["predecessor"] = json!(hex::encode(p));
        }
        let already = || {
            println!(
                "already registered: this digest is document {}",
                hex::encode(id)
            )
        };
        // Registered by this identity already, as the same kind of version
        // (an earlier run): nothing is sent, and terms other than the
        // record's are an error, not a silent no-op.
        if let Ok(existing) = self.record(&id).await {
            if existing.registrant.0 == s.id && existing.predecessor.map(|p| p.0) == predecessor {
                let mut asked: document::RegisterArgs = serde_json::from_value(args.clone())?;
                // Personal data asked for and recorded: the digests differ
                // if the earlier run's prefix was lost (said below).
                if asked.personal.is_some() && existing.personal.is_some() {
                    asked.personal = existing.personal;
                }
                if !existing.registered_with(&asked) {
                    bail!(
                        "you registered this digest already, as document {}, with other terms than these; its terms stand (a registration is not changed: amend the document instead)",
                        hex::encode(id)
                    );
                }
                already();
                if let (Some(blob), Some(path)) = (&personal, &m.personal) {
                    // An earlier run that stopped before storing the blob
                    // left its prefix: the same blob is stored now (again,
                    // if it was; storing is idempotent).
                    let digest = comity_core::crypto::sha256(blob);
                    let matches = existing.personal.map(|d| d.0) == Some(digest);
                    remove_personal_prefix(path)?;
                    if existing.personal_erased {
                        println!("  (its personal data was erased)");
                    } else if matches {
                        self.client.notary_put_personal(&id, blob).await?;
                        println!("personal data stored off the ledger ({} bytes)", blob.len());
                    } else if self
                        .client
                        .notary_personal(&id)
                        .await
                        .is_ok_and(|stored| stored.get(32..) == blob.get(32..))
                    {
                        println!("  (its personal data, this file's, is stored)");
                    } else {
                        bail!(
                            "document {} commits to personal data under a random prefix this run no longer has ({} is gone): this file cannot be stored against it",
                            hex::encode(id),
                            personal_prefix_path(path).display()
                        );
                    }
                }
                println!("document {}", hex::encode(id));
                println!("  digest {}", hex::encode(digest));
                return Ok(());
            }
        }
        let tx = match predecessor {
            Some(_) => s.notary_amend(&args)?,
            None => s.notary_register(&args)?,
        };
        let st = self.submit(&tx, "registration").await?;
        if self.record(&id).await?.index != st.index.unwrap_or_default() {
            already();
        } else if let (Some(blob), Some(path)) = (personal, &m.personal) {
            self.client.notary_put_personal(&id, &blob).await?;
            remove_personal_prefix(path)?;
            println!("personal data stored off the ledger ({} bytes)", blob.len());
        }
        println!("document {}", hex::encode(id));
        println!("  digest {}", hex::encode(digest));
        Ok(())
    }

    /// Submits a change to document `id` and shows the document after it.
    async fn change(&self, tx: Vec<u8>, what: &str, id: &Hash) -> anyhow::Result<()> {
        self.submit(&tx, what).await?;
        // The record is shown to those it names; an actor it no longer names
        // (a hold lifted, custody handed over) is done once the change commits.
        match self.show(id, false).await {
            Err(e)
                if e.downcast_ref::<comity_client::ClientError>()
                    .is_some_and(|e| e.status() == Some(404)) =>
            {
                println!("(the record is no longer shown to this identity)");
                Ok(())
            }
            r => r,
        }
    }

    async fn act(&self, op: &str, r: &Reasoned, what: &str) -> anyhow::Result<()> {
        let id = parse_hash(&r.document)?;
        let tx = self.signer().await?.notary_act(op, &id, &r.reason);
        self.change(tx, what, &id).await
    }

    async fn show(&self, id: &Hash, json_out: bool) -> anyhow::Result<()> {
        let v = self
            .client
            .notary_get(&["documents", &hex::encode(id)], &[])
            .await?;
        let ev = self
            .client
            .notary_get(&["documents", &hex::encode(id), "events"], &[])
            .await?;
        if json_out {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"document": v["document"], "events": ev["items"]})
                )?
            );
            return Ok(());
        }
        let d: Document = serde_json::from_value(v["document"].clone())?;
        println!("document {}", hex::encode(d.id.0));
        println!("  title:     {}", d.title);
        println!("  status:    {}", d.status.as_str());
        println!(
            "  digest:    {}{}",
            hex::encode(d.digest.0),
            if d.salted { " (salted)" } else { "" }
        );
        println!("  custodian: {}", hex::encode(d.custodian.0));
        for p in &d.parties {
            let signed = if d.has_signed(&p.id.0) {
                "signed"
            } else if p.signs {
                "to sign"
            } else {
                "does not sign"
            };
            println!("  party:     {} {} ({signed})", hex::encode(p.id.0), p.role);
        }
        for h in &d.holds {
            println!(
                "  hold:      {} by {}: {}",
                hex::encode(h.id.0),
                hex::encode(h.by.0),
                h.reason
            );
        }
        if let Some(t) = d.retain_until {
            println!("  retained until {}", fmt_time(t));
        }
        for (k, v) in [("predecessor", d.predecessor), ("successor", d.successor)] {
            if let Some(x) = v {
                println!("  {k}: {}", hex::encode(x.0));
            }
        }
        for i in ev["items"].as_array().into_iter().flatten() {
            let e = &i["event"];
            println!(
                "  event {:>3}  {}  {:<22} by {}  {}",
                e["seq"],
                fmt_time(e["time"].as_u64().unwrap_or(0)),
                e["kind"].as_str().unwrap_or("?"),
                e["actor"]
                    .as_str()
                    .map_or("?", |a| a.get(..16).unwrap_or(a)),
                e["details"]
            );
        }
        Ok(())
    }

    /// Collects a bundle: the record proved at the latest final checkpoint
    /// once it covers every event, and every event with its receipt.
    async fn bundle(&self, id: &Hash) -> anyhow::Result<Bundle> {
        let genesis = self
            .client
            .entries(0, 1)
            .await?
            .pop()
            .context("the ledger is empty")?
            .body;
        let deadline = Instant::now() + Duration::from_secs(30);
        let hexid = hex::encode(id);
        loop {
            let v = self.client.notary_get(&["documents", &hexid], &[]).await?;
            let latest: Document = serde_json::from_value(v["document"].clone())?;
            if latest.id.0 != *id {
                bail!(
                    "asked for document {hexid}, the node answered with {}",
                    hex::encode(latest.id.0)
                );
            }
            let p = &v["proof"];
            let proved = p["value_hex"].as_str().map(hex::decode).transpose()?;
            if proved.as_deref() == Some(latest.to_cbor().as_slice()) {
                let mut events = Vec::new();
                while (events.len() as u64) < latest.chain.events {
                    let from = events.len().to_string();
                    let page = self
                        .client
                        .notary_get(&["documents", &hexid, "events"], &[("from", from)])
                        .await?;
                    let items = page["items"].as_array().cloned().unwrap_or_default();
                    if items.is_empty() {
                        bail!("the node lists fewer events than the record has");
                    }
                    for i in items {
                        let receipt = i["receipt"]
                            .as_str()
                            .context("an event has no receipt yet")?;
                        events.push(EventEvidence {
                            event: hex::decode(i["event_hex"].as_str().unwrap_or_default())?,
                            receipt: hex::decode(receipt)?,
                        });
                    }
                }
                events.truncate(latest.chain.events as usize);
                // The node-set changes up to the record's checkpoint, which
                // may be later than every event's.
                let chain = p["checkpoint"]["chain"]
                    .as_array()
                    .context("the proof's checkpoint has no node-set chain")?
                    .iter()
                    .map(|c| hex::decode(c.as_str().unwrap_or_default()))
                    .collect::<Result<Vec<_>, _>>()?;
                let hexfield = |k: &str| hex::decode(p[k].as_str().unwrap_or_default());
                return Ok(Bundle {
                    genesis,
                    chain,
                    checkpoint: hex::decode(
                        p["checkpoint"]["signed"].as_str().unwrap_or_default(),
                    )?,
                    record: proved.expect("checked above"),
                    state_proof: hexfield("state_proof")?,
                    events,
                });
            }
            if Instant::now() > deadline {
                bail!("no final checkpoint covers the latest state of the document yet; retry shortly");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn print_story(s: &evidence::Story) {
    println!(
        "VERIFIED: the story of this document on network {:?} ({})",
        s.identity.name,
        hex::encode(s.identity.network_id)
    );
    for l in &s.lines {
        println!("{l}");
    }
}

pub async fn run(g: &Global, cmd: DocCmd) -> anyhow::Result<()> {
    if let DocCmd::VerifyEvidence {
        bundle,
        file,
        salt,
        network_identity,
    } = &cmd
    {
        return verify_evidence(
            bundle,
            file.as_deref(),
            salt.as_deref(),
            network_identity.as_deref(),
        );
    }
    let cfg = Config::load(g)?;
    let client = crate::gov::read_client(g, &cfg)?;
    let c = Ctx {
        cfg,
        client,
        g: g.clone(),
    };
    match cmd {
        DocCmd::Register(m) => c.register(&m, None).await,
        DocCmd::Amend { predecessor, meta } => {
            c.register(&meta, Some(parse_hash(&predecessor)?)).await
        }
        DocCmd::Sign {
            document,
            file,
            salt,
        } => {
            let id = parse_hash(&document)?;
            let d = c.record(&id).await?;
            // The id commits to the digest, so no node can pass off another.
            if document::id_of(&d.digest.0) != id {
                bail!("the node answered with a record whose digest is not document {document}'s");
            }
            match file {
                Some(f) => {
                    let salt = match d.salted {
                        true => Some(salt_for(&f, salt.as_deref())?.with_context(|| {
                            format!(
                                "{document} was registered salted: pass --salt, or keep {} beside the file",
                                salt_path(&f).display()
                            )
                        })?),
                        false => None,
                    };
                    let digest = evidence::registered_digest(&hash_file(&f)?, salt.as_deref());
                    if digest != d.digest.0 {
                        bail!(
                            "{} is not the content registered as {document}: not signed",
                            f.display()
                        );
                    }
                }
                None => eprintln!(
                    "note: signing digest {} unchecked; pass --file with your copy to check it first",
                    hex::encode(d.digest.0)
                ),
            }
            let tx = c.signer().await?.notary_sign(&id, &d.digest.0);
            c.change(tx, "signature", &id).await
        }
        DocCmd::Expire(r) => c.act("expire", &r, "expiry").await,
        DocCmd::Revoke(r) => c.act("revoke", &r, "revocation").await,
        DocCmd::Approve(r) => c.act("destroy.approve", &r, "destruction approval").await,
        DocCmd::Destroy(r) => c.act("destroy", &r, "destruction").await,
        DocCmd::Erase(r) => {
            c.act("metadata.erase", &r, "erasure of personal data")
                .await
        }
        DocCmd::Hold {
            cmd: HoldCmd::Place { document, reason },
        } => {
            let id = parse_hash(&document)?;
            let tx = c.signer().await?.notary_act("hold.place", &id, &reason);
            let hold = c.submit(&tx, "legal hold").await?.id;
            println!("hold {}", hex::encode(hold));
            Ok(())
        }
        DocCmd::Hold {
            cmd:
                HoldCmd::Lift {
                    document,
                    hold,
                    reason,
                },
        } => {
            let id = parse_hash(&document)?;
            let tx = c
                .signer()
                .await?
                .notary_hold_lift(&id, &parse_hash(&hold)?, &reason);
            c.change(tx, "lifting the hold", &id).await
        }
        DocCmd::Custody {
            cmd:
                CustodyCmd::Offer {
                    document,
                    to,
                    reason,
                },
        } => {
            let id = parse_hash(&document)?;
            let tx = c
                .signer()
                .await?
                .notary_custody_offer(&id, &resolve(g, &to)?, &reason);
            c.change(tx, "custody offer", &id).await
        }
        DocCmd::Custody {
            cmd: CustodyCmd::Accept(r),
        } => c.act("custody.accept", &r, "custody acceptance").await,
        DocCmd::Show { document, json } => c.show(&parse_hash(&document)?, json).await,
        DocCmd::List(a) => list(&c, a).await,
        DocCmd::Verify { file, salt } => {
            let h = hash_file(&file)?;
            let salt = salt_for(&file, salt.as_deref())?;
            let digest = evidence::registered_digest(&h, salt.as_deref());
            let v = c
                .client
                .notary_get(&["digests", &hex::encode(digest)], &[])
                .await
                .map_err(|e| {
                    if e.status() == Some(404) {
                        anyhow::anyhow!(
                            "{} (digest {}) is not registered, or not to a record this identity may read",
                            file.display(),
                            hex::encode(digest)
                        )
                    } else {
                        e.into()
                    }
                })?;
            let id = parse_hash(v["document"]["id"].as_str().unwrap_or_default())?;
            let b = c.bundle(&id).await?;
            let trusted = c.cfg.local_network_identity()?;
            if trusted.is_none() {
                eprintln!("note: no local network identity; trusting the genesis the node serves");
            }
            let name = file.display().to_string();
            let story = evidence::verify(
                &b,
                trusted.as_ref(),
                Content::File {
                    name: &name,
                    sha256: h,
                    salt: salt.as_deref(),
                },
            )?;
            print_story(&story);
            if let Some(w) = crate::config::stale_checkpoint_warning(story.checkpoint_time) {
                println!("{w}");
            }
            Ok(())
        }
        DocCmd::Evidence { document, out } => {
            let id = parse_hash(&document)?;
            let b = c.bundle(&id).await?;
            let trusted = c.cfg.local_network_identity()?;
            if trusted.is_none() {
                eprintln!("note: no local network identity; trusting the genesis the node serves");
            }
            let story = evidence::verify(&b, trusted.as_ref(), Content::None)
                .context("the collected evidence does NOT verify")?;
            let bytes = b.to_cbor();
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote evidence of document {} ({} events, {} bytes) to {}; verified against checkpoint {}",
                hex::encode(id),
                b.events.len(),
                bytes.len(),
                out.display(),
                story.checkpoint_seq
            );
            if let Some(w) = crate::config::stale_checkpoint_warning(story.checkpoint_time) {
                println!("{w}");
            }
            Ok(())
        }
        DocCmd::Collection { cmd } => collection(&c, cmd).await,
        DocCmd::VerifyEvidence { .. } => unreachable!("handled above"),
    }
}

fn verify_evidence(
    bundle: &Path,
    file: Option<&Path>,
    salt: Option<&str>,
    trusted: Option<&Path>,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(bundle).with_context(|| format!("reading {}", bundle.display()))?;
    let fail = |e: anyhow::Error| anyhow::anyhow!("evidence NOT verified: {e:#}");
    let b = Bundle::from_cbor(&bytes).map_err(fail)?;
    let trusted = trusted.map(read_network_identity).transpose()?;
    let (name, h, salt) = match file {
        Some(f) => (
            f.display().to_string(),
            Some(hash_file(f)?),
            salt_for(f, salt)?,
        ),
        None => (String::new(), None, None),
    };
    let content = match h {
        Some(h) => Content::File {
            name: &name,
            sha256: h,
            salt: salt.as_deref(),
        },
        None => Content::None,
    };
    let story = evidence::verify(&b, trusted.as_ref(), content).map_err(fail)?;
    print_story(&story);
    if trusted.is_none() {
        println!("note: checked against the genesis inside the bundle (network id {}); pass --network-identity to compare with one you trust", hex::encode(story.identity.network_id));
    }
    Ok(())
}

async fn list(c: &Ctx, a: ListArgs) -> anyhow::Result<()> {
    let mut q: Vec<(&str, String)> = vec![("limit", a.limit.to_string())];
    if let Some(p) = &a.party {
        q.push(("party", hex::encode(resolve(&c.g, p)?)));
    }
    for (k, v) in [
        ("matter", a.matter),
        ("status", a.status),
        ("after", a.after),
    ] {
        if let Some(v) = v {
            q.push((k, v));
        }
    }
    for (k, v) in [("from_time", a.from_time), ("to_time", a.to_time)] {
        if let Some(v) = v {
            q.push((k, v.to_string()));
        }
    }
    let v = c.client.notary_get(&["documents"], &q).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let items = v["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("(none)");
    }
    for i in items {
        let d: Document = serde_json::from_value(i)?;
        println!(
            "{}  {:<9} {}  {}  {}",
            hex::encode(d.id.0),
            d.status.as_str(),
            fmt_time(d.registered),
            d.matter,
            d.title
        );
    }
    if let Some(n) = v["next"].as_str() {
        println!("more: --after {n}");
    }
    Ok(())
}

async fn collection(c: &Ctx, cmd: CollectionCmd) -> anyhow::Result<()> {
    let id = match cmd {
        CollectionCmd::Create { name, matter } => {
            let tx = c.signer().await?.notary_collection_create(&name, &matter);
            c.submit(&tx, "collection").await?.id
        }
        CollectionCmd::Order {
            collection,
            documents,
        } => {
            let id = parse_hash(&collection)?;
            let docs = documents
                .iter()
                .map(|d| parse_hash(d))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let tx = c.signer().await?.notary_collection_order(&id, &docs);
            c.submit(&tx, "new order").await?;
            id
        }
        CollectionCmd::Show { collection } => parse_hash(&collection)?,
    };
    let v = c
        .client
        .notary_get(&["collections", &hex::encode(id)], &[])
        .await?;
    let col = &v["collection"];
    println!(
        "collection {} {:?} (matter {:?})",
        hex::encode(id),
        col["name"].as_str().unwrap_or("?"),
        col["matter"].as_str().unwrap_or("")
    );
    for (i, d) in col["documents"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        println!("  {:>3}. {}", i + 1, d.as_str().unwrap_or("?"));
    }
    Ok(())
}
