//! `comity bench`: closed-loop write benchmark of the `kv.put` workload
//! (docs/api.md), with a receipt-latency probe and offline receipt checks.

use crate::config::{Config, Global};
use anyhow::{bail, Context};
use clap::Args;
use comity_client::verify::verify_receipt;
use comity_client::{tx_id, Client, Signer, TxState};
use comity_core::crypto::{random_nonce, Alg, SigningKey};
use comity_core::network::NetworkIdentity;
use comity_core::Hash;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrent clients; each waits for the durable acknowledgement of its
    /// transaction before sending the next.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Length of the timed run.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Sign every transaction before the timed run instead of just before sending it.
    #[arg(long)]
    pub presign: bool,
    /// Transactions presigned per client [default: duration × 30000 / clients]
    #[arg(long, requires = "presign")]
    pub txs_per_client: Option<usize>,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 1_000_000)]
    pub keyspace: u64,
    /// Fresh Ed25519 user identities to register (member-signed) and sign with.
    #[arg(long, default_value_t = 64)]
    pub identities: usize,
    /// Receipts fetched and verified offline after the run.
    #[arg(long, default_value_t = 200)]
    pub receipt_sample: usize,
    /// Probe the receipt latency of about one transaction in this many.
    #[arg(long, default_value_t = 50)]
    pub receipt_probe_every: u64,
    /// Poll interval of the receipt probe.
    #[arg(long, default_value_t = 2)]
    pub receipt_poll_ms: u64,
    /// Most probes polling at once (a probe is skipped while all are busy), so
    /// polling does not swamp the node under test.
    #[arg(long, default_value_t = 8)]
    pub receipt_probes_max: usize,
    /// Member key that proposes the identities [default: member_key of client.json]
    #[arg(long, value_name = "PATH")]
    pub member_key: Option<PathBuf>,
    /// Member keys that approve the proposal (repeatable) [default: the other member*.key.pem beside --member-key]
    #[arg(long, value_name = "PATH")]
    pub voter_key: Vec<PathBuf>,
    /// Print the report as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Node URLs the clients are spread over (repeatable) [default: every
    /// node in client.json, else the configured node]
    #[arg(long, value_name = "URL")]
    pub target: Vec<String>,
    /// `kv` (signed kv.put), `notary` (60% registrations, 30% party
    /// signatures, 10% custody transfers), `both` (kv for half the
    /// duration, notary, kv for the other half, and the ratio), or
    /// `notary-register` (registrations only, to grow the number of
    /// documents).
    #[arg(long, value_enum, default_value_t = Workload::Kv)]
    pub workload: Workload,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Kv,
    Notary,
    Both,
    NotaryRegister,
}

/// Expected peak rate used to size the presigned pool.
const PRESIGN_RATE: u64 = 30_000;
/// How long a receipt may take before the probe or the sample gives up on it.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_ERROR_SAMPLES: usize = 10;

/// SplitMix64: fast, good enough for uniform keys and filler bytes.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let n = random_nonce();
        Rng(u64::from_le_bytes(
            n[..8].try_into().expect("16-byte nonce"),
        ))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift; the bias is negligible for benchmark keys.
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

fn kv_tx(signer: &Signer, rng: &mut Rng, keyspace: u64, value_size: usize) -> Vec<u8> {
    let key = format!("bench-{}", rng.below(keyspace));
    let mut value = vec![0u8; value_size];
    rng.fill(&mut value);
    signer.kv_put(&key, &value)
}

/// What one client saw.
#[derive(Default)]
struct ClientResult {
    latencies_us: Vec<u32>,
    acked: Vec<(Hash, u64)>,
    rejected: u64,
    errors: u64,
    error_samples: Vec<String>,
    ran_out: bool,
    probes: Vec<tokio::task::JoinHandle<Result<Duration, String>>>,
    probes_skipped: usize,
}

#[derive(Serialize, Debug, Default, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Percentiles in ms of durations in µs (sorts `v`).
fn percentiles(v: &mut [u32]) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        f64::from(v[i]) / 1000.0
    };
    let sum: u64 = v.iter().map(|&x| u64::from(x)).sum();
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        max: f64::from(v[v.len() - 1]) / 1000.0,
        mean: sum as f64 / v.len() as f64 / 1000.0,
    }
}

#[derive(Serialize, Debug)]
pub struct ReceiptLatency {
    pub probes: usize,
    pub answered: usize,
    /// Probes with no receipt within the timeout: in the percentiles at the timeout.
    pub timeouts: usize,
    /// Probes drawn while every probe slot was busy, so not taken.
    pub skipped: usize,
    #[serde(flatten)]
    pub ms: Percentiles,
}

#[derive(Serialize, Debug)]
pub struct ReceiptCheck {
    pub sampled: usize,
    pub verified: usize,
    pub failed: usize,
    pub unavailable: usize,
    pub failures: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub workload: Workload,
    pub node: String,
    pub clients: usize,
    pub identities: usize,
    pub duration_secs: u64,
    pub elapsed_secs: f64,
    pub presign: bool,
    pub value_size: usize,
    pub keyspace: u64,
    /// Acknowledged with status committed and a ledger index.
    pub committed: u64,
    /// Recorded but rejected by the application.
    pub rejected: u64,
    /// Failed requests and answers without a commit index.
    pub errors: u64,
    /// Committed transactions per second.
    pub tps: f64,
    /// Submit → durable acknowledgement.
    pub latency_ms: Percentiles,
    /// Submit → receipt available (GET /v1/tx/{id}/receipt returns 200).
    pub receipt_latency_ms: ReceiptLatency,
    pub receipts: ReceiptCheck,
    /// Clients that used up their presigned transactions before the end.
    pub clients_out_of_presigned: usize,
    pub error_samples: Vec<String>,
}

pub async fn run(g: &Global, args: BenchArgs) -> anyhow::Result<()> {
    let reports = execute_all(g, &args).await?;
    if args.json {
        match reports.as_slice() {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            [before, notary, after] => {
                let kv = kv_tps(before, after);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "kv_before": before,
                        "notary": notary,
                        "kv_after": after,
                        "kv_tps": kv,
                        "notary_over_kv": notary.tps / kv.max(f64::MIN_POSITIVE),
                    }))?
                )
            }
            _ => unreachable!("one workload, or kv, notary, kv"),
        }
    } else {
        for r in &reports {
            print_table(r);
        }
        if let [before, notary, after] = reports.as_slice() {
            let kv = kv_tps(before, after);
            println!(
                "notary / kv.put throughput = {:.2} (kv.put {kv:.0} tx/s over both halves)",
                notary.tps / kv.max(f64::MIN_POSITIVE)
            );
        }
    }
    for report in &reports {
        check_report(report)?;
    }
    Ok(())
}

/// kv.put throughput over the halves run before and after the notary mix.
fn kv_tps(before: &Report, after: &Report) -> f64 {
    (before.committed + after.committed) as f64
        / (before.elapsed_secs + after.elapsed_secs).max(f64::MIN_POSITIVE)
}

fn check_report(report: &Report) -> anyhow::Result<()> {
    if report.committed == 0 {
        bail!("no transaction was committed");
    }
    if report.receipts.failed > 0 {
        bail!(
            "{} receipt(s) failed offline verification",
            report.receipts.failed
        );
    }
    if report.receipts.unavailable > 0 {
        bail!(
            "{} acknowledged transaction(s) had no receipt within {RECEIPT_TIMEOUT:?}",
            report.receipts.unavailable
        );
    }
    Ok(())
}

/// Runs the workload with `--workload` (the first kv half when both).
#[cfg(test)]
async fn execute(g: &Global, args: &BenchArgs) -> anyhow::Result<Report> {
    let mut all = execute_all(g, args).await?;
    Ok(all.remove(0))
}

/// Registers the identities, runs the workload(s), checks receipts.
async fn execute_all(g: &Global, args: &BenchArgs) -> anyhow::Result<Vec<Report>> {
    if args.presign && args.workload != Workload::Kv {
        bail!("--presign is for the kv workload (notary transactions depend on earlier ones)");
    }
    if args.clients == 0 || args.identities == 0 || args.keyspace == 0 {
        bail!("--clients, --identities and --keyspace must be at least 1");
    }
    if args.identities > comity_apps::gov::MAX_ACTIONS {
        bail!(
            "--identities is at most {}: they are registered by one proposal",
            comity_apps::gov::MAX_ACTIONS
        );
    }
    if args.value_size > 64 * 1024 {
        bail!("--value-size is at most 65536 (the kv application's limit)");
    }
    let cfg = Config::load(g)?;
    let client = cfg.public_client()?;
    let health = client.health().await.with_context(|| {
        format!(
            "no healthy node at {} (is a network running? try `comity up`)",
            cfg.url
        )
    })?;
    progress(&format!(
        "node {} is {} (role {})",
        cfg.url,
        health.status,
        health.role.as_deref().unwrap_or("?")
    ));
    let identity: NetworkIdentity = match cfg.local_network_identity()? {
        Some(n) => n,
        None => {
            progress("no local network.json: using the network identity the node serves");
            client.network_identity().await?
        }
    };
    let net = identity.network_id;
    let member_path = args
        .member_key
        .clone()
        .or_else(|| cfg.member_key.clone())
        .context("no member key: pass --member-key or run `comity up`")?;
    let member = Signer::from_pem_file(&member_path, net)?;
    let voters = voter_keys(args, &cfg, &member_path, net)?;

    // Governance reads need a registered identity's certificate.
    let gov_client = cfg.client()?;
    let signers = register_identities(&gov_client, &member, &voters, args.identities).await?;
    let targets = if args.target.is_empty() {
        cfg.nodes.clone()
    } else {
        args.target.clone()
    };
    // With an identity the sampled receipts carry their transactions; a
    // member's is shown all of them (a user's not other identities'
    // notary transactions).
    let clients = targets
        .iter()
        .map(|u| match cfg.member_client_of(u)? {
            Some(member) => Ok(member),
            None => cfg.client_of(u),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // `both` runs half the kv.put time before the notary mix and half after:
    // the cost of a transaction grows with the state, so kv first would
    // leave the notary mix the larger state; bracketed, both see the same
    // state on average.
    let d = args.duration_secs;
    let workloads = match args.workload {
        Workload::Both => {
            let half = d.div_ceil(2);
            vec![
                (Workload::Kv, half),
                (Workload::Notary, d),
                (Workload::Kv, half),
            ]
        }
        w => vec![(w, d)],
    };
    let mut reports = Vec::new();
    for (w, duration_secs) in workloads {
        let a = BenchArgs {
            workload: w,
            duration_secs,
            ..args.clone()
        };
        reports.push(
            run_workload(&clients, &identity, signers.clone(), &a, &targets.join(",")).await?,
        );
    }
    Ok(reports)
}

fn progress(msg: &str) {
    eprintln!("[bench] {msg}");
}

/// Registers `n` fresh Ed25519 user identities through governance: one
/// `user.add` proposal by `member`, approved by `voters` as the constitution needs.
async fn register_identities(
    client: &Client,
    member: &Signer,
    voters: &[Signer],
    n: usize,
) -> anyhow::Result<Vec<Signer>> {
    progress(&format!(
        "registering {n} fresh Ed25519 identities by governance proposal"
    ));
    let run = hex::encode(&random_nonce()[..4]);
    let keys: Vec<SigningKey> = (0..n).map(|_| SigningKey::generate(Alg::EdDsa)).collect();
    let actions: Vec<comity_apps::gov::action::Action> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            comity_apps::gov::action::Action::UserAdd(comity_apps::gov::action::NewIdentity {
                key: k.public().to_spki_der(),
                name: format!("bench-{run}-{i}"),
                data: Default::default(),
            })
        })
        .collect();
    let tx = member.gov_propose(
        comity_core::cbor::from_serde(&actions)?,
        &format!("benchmark identities {run}"),
    );
    let st = client
        .submit(&tx, true)
        .await
        .context("proposing bench identities")?;
    if st.status != TxState::Committed {
        bail!(
            "proposing bench identities: {} ({})",
            st.status,
            st.outcome.as_deref().unwrap_or("no outcome")
        );
    }
    let id = hex::encode(st.id);
    let mut voters = voters.iter();
    loop {
        let p = client.gov_get(&["proposals", &id], &[]).await?;
        match p["proposal"]["state"].as_str() {
            Some("accepted") => break,
            Some("open") => match voters.next() {
                Some(v) => {
                    let st = client.submit(&v.gov_vote(&st.id, true), true).await?;
                    if st.status != TxState::Committed {
                        bail!("voting for bench identities: {}", st.outcome.as_deref().unwrap_or("?"));
                    }
                }
                None => bail!(
                    "the bench identities proposal {id} needs more approvals: pass more --voter-key files"
                ),
            },
            other => bail!("the bench identities proposal {id} ended {other:?}: {}", p["proposal"]["resolved"]),
        }
    }
    let net = member.network_id;
    Ok(keys.into_iter().map(|k| Signer::new(k, net)).collect())
}

/// Member keys that vote for the bench identities: `--voter-key`, else the
/// other `member*.key.pem` files beside the proposer's key.
fn voter_keys(
    args: &BenchArgs,
    cfg: &Config,
    proposer: &Path,
    net: Hash,
) -> anyhow::Result<Vec<Signer>> {
    let paths: Vec<PathBuf> = if !args.voter_key.is_empty() {
        args.voter_key.clone()
    } else {
        let dir = proposer
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| cfg.data.join("keys"));
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("member") && n.ends_with(".key.pem"))
                            && p.as_path() != proposer
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    };
    paths
        .iter()
        .map(|p| Signer::from_pem_file(p, net).map_err(Into::into))
        .collect()
}

async fn run_workload(
    clients: &[Client],
    identity: &NetworkIdentity,
    signers: Vec<Signer>,
    args: &BenchArgs,
    url: &str,
) -> anyhow::Result<Report> {
    let per_client: Vec<Signer> = (0..args.clients)
        .map(|i| signers[i % signers.len()].clone())
        .collect();
    let partners: Vec<Signer> = (0..args.clients)
        .map(|i| signers[(i + 1) % signers.len()].clone())
        .collect();
    // Each identity writes keys of its own: together they spread over the keyspace.
    let identities = args.clients.min(signers.len());
    let key_range = args.keyspace.div_ceil(identities as u64).max(1);

    // Presign outside the timed run, on blocking threads.
    let mut pools: Vec<Option<Vec<Vec<u8>>>> = vec![None; args.clients];
    if args.presign {
        let n = args.txs_per_client.unwrap_or_else(|| {
            (args.duration_secs * PRESIGN_RATE).div_ceil(args.clients as u64) as usize
        });
        progress(&format!(
            "presigning {n} transactions per client ({} in all)",
            n * args.clients
        ));
        let t = Instant::now();
        let mut set = JoinSet::new();
        for (i, s) in per_client.iter().enumerate() {
            let s = s.clone();
            let (keyspace, vs) = (key_range, args.value_size);
            set.spawn_blocking(move || {
                let mut rng = Rng::seeded();
                (
                    i,
                    (0..n).map(|_| kv_tx(&s, &mut rng, keyspace, vs)).collect(),
                )
            });
        }
        while let Some(r) = set.join_next().await {
            let (i, txs) = r?;
            pools[i] = Some(txs);
        }
        progress(&format!("presigned in {:.1} s", t.elapsed().as_secs_f64()));
    }

    progress(&format!(
        "running {} s with {} clients ({} bytes per value, {} keys)",
        args.duration_secs, args.clients, args.value_size, args.keyspace
    ));
    let probes = Arc::new(Semaphore::new(args.receipt_probes_max.max(1)));
    let start = Instant::now() + Duration::from_millis(100);
    let deadline = start + Duration::from_secs(args.duration_secs);
    let mut set = JoinSet::new();
    for (i, ((signer, pool), partner)) in
        per_client.into_iter().zip(pools).zip(partners).enumerate()
    {
        let client = clients[i % clients.len()].clone();
        let notary =
            matches!(args.workload, Workload::Notary | Workload::NotaryRegister).then(|| {
                let track = args.workload == Workload::Notary;
                crate::notary_load::NotaryLoad::new(signer.clone(), partner, track)
            });
        let probes = probes.clone();
        let a = BenchArgs {
            keyspace: key_range,
            ..args.clone()
        };
        set.spawn(async move {
            // Connections are opened before the timed run, as PostgreSQL's
            // and etcd's clients do.
            let _ = client.health().await;
            tokio::time::sleep_until(start.into()).await;
            client_loop(client, signer, pool, notary, a, deadline, probes).await
        });
    }
    let mut results = Vec::with_capacity(args.clients);
    while let Some(r) = set.join_next().await {
        results.push(r?);
    }
    let elapsed = start.elapsed().as_secs_f64();

    let mut latencies = Vec::new();
    let mut acked = Vec::new();
    let (mut rejected, mut errors, mut out_of_pool, mut probes_skipped) = (0, 0, 0, 0);
    let mut error_samples = Vec::new();
    let mut probe_handles = Vec::new();
    for r in results {
        latencies.extend(r.latencies_us);
        acked.extend(r.acked);
        rejected += r.rejected;
        errors += r.errors;
        out_of_pool += usize::from(r.ran_out);
        probes_skipped += r.probes_skipped;
        probe_handles.extend(r.probes);
        for e in r.error_samples {
            if error_samples.len() < MAX_ERROR_SAMPLES {
                error_samples.push(e);
            }
        }
    }
    if out_of_pool > 0 {
        progress(&format!(
            "{out_of_pool} client(s) used up their presigned transactions early: raise --txs-per-client"
        ));
    }
    let committed = latencies.len() as u64;

    progress(&format!(
        "waiting for {} receipt probe(s)",
        probe_handles.len()
    ));
    let mut probe_us = Vec::new();
    let mut timeouts = 0;
    let probes_taken = probe_handles.len();
    for h in probe_handles {
        let d = h.await?.unwrap_or_else(|_| {
            timeouts += 1;
            RECEIPT_TIMEOUT
        });
        probe_us.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    let receipts = check_receipts(&clients[0], identity, &acked, args.receipt_sample).await;

    Ok(Report {
        workload: args.workload,
        node: url.to_string(),
        clients: args.clients,
        identities,
        duration_secs: args.duration_secs,
        elapsed_secs: elapsed,
        presign: args.presign,
        value_size: args.value_size,
        keyspace: args.keyspace,
        committed,
        rejected,
        errors,
        tps: committed as f64 / elapsed,
        latency_ms: percentiles(&mut latencies),
        receipt_latency_ms: ReceiptLatency {
            probes: probes_taken,
            answered: probes_taken - timeouts,
            timeouts,
            skipped: probes_skipped,
            ms: percentiles(&mut probe_us),
        },
        receipts,
        clients_out_of_presigned: out_of_pool,
        error_samples,
    })
}

async fn client_loop(
    client: Client,
    signer: Signer,
    pool: Option<Vec<Vec<u8>>>,
    mut notary: Option<crate::notary_load::NotaryLoad>,
    args: BenchArgs,
    deadline: Instant,
    probes: Arc<Semaphore>,
) -> ClientResult {
    let mut rng = Rng::seeded();
    let mut pool = pool.map(|p| p.into_iter());
    let mut res = ClientResult::default();
    let poll = Duration::from_millis(args.receipt_poll_ms.max(1));
    let every = args.receipt_probe_every.max(1);
    while Instant::now() < deadline {
        let mut effect = None;
        let tx = match (pool.as_mut(), notary.as_mut()) {
            (Some(p), _) => match p.next() {
                Some(tx) => tx,
                None => {
                    res.ran_out = true;
                    break;
                }
            },
            (None, Some(n)) => {
                let mut digest = [0u8; 32];
                rng.fill(&mut digest);
                let roll = rng.below(100);
                let (tx, e) = n.next(roll, digest);
                effect = Some(e);
                tx
            }
            (None, None) => kv_tx(&signer, &mut rng, args.keyspace, args.value_size),
        };
        let id = tx_id(&tx);
        let probe = rng.below(every) == 0;
        let t0 = Instant::now();
        let r = client.submit(&tx, true).await;
        let lat = t0.elapsed();
        match r {
            Ok(st) if st.status == TxState::Committed && st.index.is_some() => {
                if let (Some(n), Some(e)) = (notary.as_mut(), effect) {
                    n.committed(e);
                }
                res.latencies_us
                    .push(lat.as_micros().min(u128::from(u32::MAX)) as u32);
                res.acked.push((id, st.index.unwrap_or_default()));
                if probe {
                    if let Ok(permit) = probes.clone().try_acquire_owned() {
                        let c = client.clone();
                        res.probes.push(tokio::spawn(async move {
                            let _permit = permit;
                            probe_receipt(&c, id, t0, poll).await
                        }));
                    } else {
                        res.probes_skipped += 1;
                    }
                }
            }
            Ok(st) => {
                if st.status == TxState::Rejected && st.index.is_some() {
                    res.rejected += 1;
                } else {
                    res.errors += 1;
                }
                if res.error_samples.len() < MAX_ERROR_SAMPLES {
                    res.error_samples.push(format!(
                        "tx {}: status {} index {:?} outcome {}",
                        hex::encode(id),
                        st.status,
                        st.index,
                        st.outcome.as_deref().unwrap_or("-")
                    ));
                }
            }
            Err(e) => {
                res.errors += 1;
                if res.error_samples.len() < MAX_ERROR_SAMPLES {
                    res.error_samples.push(e.to_string());
                }
            }
        }
    }
    res
}

/// Time from `t0` (submission) until the receipt is served.
async fn probe_receipt(
    client: &Client,
    id: Hash,
    t0: Instant,
    poll: Duration,
) -> Result<Duration, String> {
    let mut last_err = String::new();
    loop {
        match client
            .receipt_waiting(&id, false, poll.max(Duration::from_secs(2)))
            .await
        {
            Ok(Some(_)) => return Ok(t0.elapsed()),
            Ok(None) => {}
            Err(e) => last_err = e.to_string(),
        }
        if t0.elapsed() > RECEIPT_TIMEOUT {
            return Err(format!("no receipt after {RECEIPT_TIMEOUT:?} {last_err}"));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Fetches `n` random acknowledged transactions' receipts and verifies each
/// offline against the network identity; the leaf must be at the acknowledged
/// index and carry exactly the submitted transaction.
async fn check_receipts(
    client: &Client,
    identity: &NetworkIdentity,
    acked: &[(Hash, u64)],
    n: usize,
) -> ReceiptCheck {
    let mut pick: Vec<(Hash, u64)> = acked.to_vec();
    let mut rng = Rng::seeded();
    let n = n.min(pick.len());
    for i in 0..n {
        let j = i + rng.below((pick.len() - i) as u64) as usize;
        pick.swap(i, j);
    }
    pick.truncate(n);
    if n > 0 {
        progress(&format!("fetching and verifying {n} random receipts"));
    }
    let identity = Arc::new(identity.clone());
    let sem = Arc::new(Semaphore::new(16));
    let mut set = JoinSet::new();
    for (id, index) in pick {
        let client = client.clone();
        let identity = identity.clone();
        let sem = sem.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let bytes = match client
                .wait_receipt(&id, Duration::from_millis(20), RECEIPT_TIMEOUT)
                .await
            {
                Ok(b) => b,
                Err(e) => return (None, format!("tx {}: {e}", hex::encode(id))),
            };
            let verdict = match verify_receipt(&bytes, &identity) {
                Ok(v) if v.leaf.index != index => Err(format!(
                    "leaf index {} but the node acknowledged index {index}",
                    v.leaf.index
                )),
                Ok(v) if v.tx.as_ref().map(|t| t.id) != Some(id) => {
                    Err("the receipt does not carry the submitted transaction".to_string())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            };
            match verdict {
                Ok(()) => (Some(true), String::new()),
                Err(e) => (Some(false), format!("tx {}: {e}", hex::encode(id))),
            }
        });
    }
    let mut c = ReceiptCheck {
        sampled: n,
        verified: 0,
        failed: 0,
        unavailable: 0,
        failures: Vec::new(),
    };
    while let Some(r) = set.join_next().await {
        let (ok, msg) = r.unwrap_or((Some(false), "verification task panicked".into()));
        match ok {
            Some(true) => c.verified += 1,
            Some(false) => c.failed += 1,
            None => c.unavailable += 1,
        }
        if !msg.is_empty() && c.failures.len() < MAX_ERROR_SAMPLES {
            c.failures.push(msg);
        }
    }
    c
}

fn print_table(r: &Report) {
    let l = &r.latency_ms;
    let p = &r.receipt_latency_ms;
    let what = match r.workload {
        Workload::Notary => "notary (60% register, 30% sign, 10% custody)",
        Workload::NotaryRegister => "notary.register",
        _ => "kv.put",
    };
    println!("comity bench: {what} against {}", r.node);
    println!(
        "  clients {}   identities {}   value {} B   keyspace {}   {}",
        r.clients,
        r.identities,
        r.value_size,
        r.keyspace,
        if r.presign {
            "presigned"
        } else {
            "signed inline"
        }
    );
    println!();
    println!("  {:<34} {:>12}", "committed transactions", r.committed);
    println!("  {:<34} {:>12.1}", "elapsed (s)", r.elapsed_secs);
    println!("  {:<34} {:>12.0}", "throughput (tx/s)", r.tps);
    println!("  {:<34} {:>12}", "rejected", r.rejected);
    println!("  {:<34} {:>12}", "errors", r.errors);
    println!();
    println!(
        "  {:<34} {:>9} {:>9} {:>9}",
        "latency (ms)", "p50", "p99", "max"
    );
    println!(
        "  {:<34} {:>9.2} {:>9.2} {:>9.2}",
        "  submit -> durable ack", l.p50, l.p99, l.max
    );
    println!(
        "  {:<34} {:>9.2} {:>9.2} {:>9.2}",
        format!("  submit -> receipt ({} probes)", p.answered),
        p.ms.p50,
        p.ms.p99,
        p.ms.max
    );
    if p.timeouts > 0 {
        println!(
            "  receipt probes timed out: {} (counted at {RECEIPT_TIMEOUT:?})",
            p.timeouts
        );
    }
    if p.skipped > 0 {
        println!(
            "  receipt probes skipped while all probe slots were busy: {}",
            p.skipped
        );
    }
    println!();
    println!(
        "  receipts verified offline: {} of {} sampled ({} failed, {} unavailable)",
        r.receipts.verified, r.receipts.sampled, r.receipts.failed, r.receipts.unavailable
    );
    for f in &r.receipts.failures {
        println!("    {f}");
    }
    if r.clients_out_of_presigned > 0 {
        println!(
            "  note: {} client(s) ran out of presigned transactions",
            r.clients_out_of_presigned
        );
    }
    if !r.error_samples.is_empty() {
        println!("  first errors:");
        for e in &r.error_samples {
            println!("    {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comity_core::cbor::MapView;
    use comity_core::tx::Tx;

    #[test]
    fn percentiles_of_known_data() {
        let mut v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        assert!((p.mean - 50.5).abs() < 1e-9);
        let p = percentiles(&mut []);
        assert_eq!(p.max, 0.0);
        let p = percentiles(&mut [7000]);
        assert_eq!((p.p50, p.p99), (7.0, 7.0));
    }

    #[test]
    fn workload_transactions() {
        let s = Signer::new(SigningKey::generate(Alg::EdDsa), [4; 32]);
        let mut rng = Rng::seeded();
        for _ in 0..50 {
            let bytes = kv_tx(&s, &mut rng, 10, 256);
            let tx = Tx::parse(&bytes).unwrap();
            tx.verify(&s.key.public()).unwrap();
            let m = MapView::new(&tx.payload.args).unwrap();
            let k: u64 = m
                .text("key")
                .unwrap()
                .strip_prefix("bench-")
                .unwrap()
                .parse()
                .unwrap();
            assert!(k < 10);
            assert_eq!(m.bytes("value").unwrap().len(), 256);
        }
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            hits[rng.below(4) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| h > 800), "{hits:?}");
    }

    #[test]
    fn report_json_has_the_headline_fields() {
        let r = Report {
            workload: Workload::Kv,
            node: "https://127.0.0.1:8701".into(),
            clients: 1,
            identities: 1,
            duration_secs: 1,
            elapsed_secs: 1.0,
            presign: false,
            value_size: 256,
            keyspace: 10,
            committed: 5,
            rejected: 0,
            errors: 0,
            tps: 5.0,
            latency_ms: Percentiles::default(),
            receipt_latency_ms: ReceiptLatency {
                probes: 0,
                answered: 0,
                timeouts: 0,
                skipped: 0,
                ms: Percentiles::default(),
            },
            receipts: ReceiptCheck {
                sampled: 0,
                verified: 0,
                failed: 0,
                unavailable: 0,
                failures: vec![],
            },
            clients_out_of_presigned: 0,
            error_samples: vec![],
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["tps"], 5.0);
        assert!(v["latency_ms"]["p99"].is_number());
        assert!(v["receipt_latency_ms"]["p50"].is_number());
        assert_eq!(v["receipts"]["verified"], 0);
    }
}

/// A minimal in-process stand-in for a node (plain HTTP, one request per
/// connection) that really appends leaves to a Merkle tree and serves
/// verifiable receipts, so the bench and client commands run end to end.
#[cfg(test)]
pub(crate) mod mock {
    use comity_client::now_ms;
    use comity_core::cbor::MapView;
    use comity_core::checkpoint::{self, Checkpoint, CHECKPOINT_CONTENT_TYPE};
    use comity_core::crypto::{sha256, Alg, PublicKey, SigningKey};
    use comity_core::entry::{EntryKind, Leaf, Outcome, PROTOCOL_VERSION};
    use comity_core::merkle::{self, MemTree};
    use comity_core::network::{NetworkIdentity, NodeInfo, NodeSet};
    use comity_core::receipt::Receipt;
    use comity_core::tx::Tx;
    use comity_core::Hash;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    pub struct Node {
        pub identity: NetworkIdentity,
        nodes: Vec<(Hash, SigningKey)>,
        state: Mutex<State>,
    }

    struct State {
        tree: MemTree,
        leaves: Vec<Vec<u8>>,
        bodies: Vec<Vec<u8>>,
        times: Vec<u64>,
        by_id: HashMap<Hash, u64>,
        keys: HashMap<Hash, Vec<u8>>,
        polls: u64,
    }

    type Resp = (u16, &'static str, Vec<u8>);

    fn json(status: u16, v: String) -> Resp {
        (status, "application/json", v.into_bytes())
    }

    fn err(status: u16, code: &str) -> Resp {
        json(
            status,
            format!(r#"{{"code":"{code}","message":"mock says {code}"}}"#),
        )
    }

    impl Node {
        fn append(
            &self,
            st: &mut State,
            kind: EntryKind,
            body: &[u8],
            signer: Option<(Hash, Vec<u8>)>,
        ) -> (u64, u64) {
            let index = st.tree.len();
            let time = now_ms();
            let leaf = Leaf {
                version: PROTOCOL_VERSION,
                index,
                time,
                kind,
                digest: sha256(body),
                outcome: Outcome::Applied,
                signer,
            }
            .to_cbor();
            st.tree.push(merkle::leaf_hash(&leaf));
            st.leaves.push(leaf);
            st.bodies.push(body.to_vec());
            st.times.push(time);
            (index, time)
        }

        fn status_json(id: &Hash, index: u64, time: u64) -> String {
            format!(
                r#"{{"id":"{}","status":"committed","index":{index},"outcome":"ok","ledger_time":{time}}}"#,
                hex::encode(id)
            )
        }

        fn submit(&self, body: &[u8]) -> Resp {
            let Ok(tx) = Tx::parse(body) else {
                return err(400, "malformed");
            };
            if tx.payload.net != self.identity.network_id {
                return err(400, "wrong_network");
            }
            let mut st = self.state.lock().unwrap();
            if let Some(&i) = st.by_id.get(&tx.id) {
                let t = st.times[i as usize];
                return json(200, Self::status_json(&tx.id, i, t));
            }
            let Some(spki) = st.keys.get(&tx.kid).cloned() else {
                return err(403, "unknown_signer");
            };
            let key = PublicKey::from_spki_der(&spki).unwrap();
            if tx.verify(&key).is_err() {
                return err(401, "bad_signature");
            }
            if (tx.payload.app.as_str(), tx.payload.op.as_str()) == ("gov", "propose") {
                for a in MapView::new(&tx.payload.args)
                    .unwrap()
                    .array("actions")
                    .unwrap()
                {
                    let args = MapView::new(a).unwrap();
                    let key = MapView::new(args.req("args").unwrap()).unwrap();
                    let k = hex::decode(key.text("key").unwrap()).unwrap();
                    st.keys.insert(sha256(&k), k);
                }
            }
            let (i, t) = self.append(&mut st, EntryKind::Tx, body, Some((tx.kid, spki)));
            st.by_id.insert(tx.id, i);
            json(200, Self::status_json(&tx.id, i, t))
        }

        fn receipt(&self, id: &str, with_body: bool) -> Resp {
            let mut st = self.state.lock().unwrap();
            let Some(&index) = hex::decode(id)
                .ok()
                .and_then(|h| <Hash>::try_from(h).ok())
                .and_then(|h| st.by_id.get(&h))
            else {
                return err(404, "not_found");
            };
            st.polls += 1;
            if st.polls % 2 == 1 {
                return err(202, "pending");
            }
            let size = st.tree.len();
            let cp = Checkpoint {
                network_id: self.identity.network_id,
                seq: size,
                size,
                tx_root: st.tree.root(),
                state_root: [0; 32],
                time: now_ms(),
                version: 1,
            }
            .to_cbor();
            let signatures = self.nodes[..2]
                .iter()
                .map(|(nid, k)| {
                    checkpoint::parse_signature(&checkpoint::sign(
                        CHECKPOINT_CONTENT_TYPE,
                        &cp,
                        k,
                        nid,
                    ))
                    .unwrap()
                })
                .collect();
            let r = Receipt {
                checkpoint: cp,
                signatures,
                index,
                path: merkle::inclusion_proof(&st.tree, index, size).unwrap(),
                leaf: st.leaves[index as usize].clone(),
                body: with_body.then(|| st.bodies[index as usize].clone()),
                chain: vec![],
            };
            (200, "application/cose", r.to_cose())
        }

        fn route(&self, method: &str, target: &str, body: &[u8]) -> Resp {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            match (method, parts.as_slice()) {
                ("GET", ["v1", "health"]) => {
                    json(200, r#"{"status":"ok","role":"leader","term":1}"#.into())
                }
                ("GET", ["v1", "network", "identity"]) => {
                    json(200, serde_json::to_string(&self.identity).unwrap())
                }
                ("POST", ["v1", "tx"]) => self.submit(body),
                ("GET", ["v1", "tx", id]) => {
                    let st = self.state.lock().unwrap();
                    let h: Option<Hash> = hex::decode(id).ok().and_then(|h| h.try_into().ok());
                    match h.and_then(|h| st.by_id.get(&h).map(|i| (h, *i))) {
                        Some((h, i)) => json(200, Self::status_json(&h, i, st.times[i as usize])),
                        None => json(200, format!(r#"{{"id":"{id}","status":"unknown"}}"#)),
                    }
                }
                // One member: every proposal is accepted as it is made.
                ("GET", ["v1", "gov", "proposals", _]) => {
                    json(200, r#"{"proposal":{"state":"accepted"}}"#.into())
                }
                ("GET", ["v1", "tx", id, "receipt"]) => {
                    self.receipt(id, !query.contains("body=false"))
                }
                _ => err(404, "not_found"),
            }
        }
    }

    /// Starts a mock node whose only registered identity is `member`.
    pub async fn start(member: &SigningKey) -> (String, Arc<Node>) {
        let nodes: Vec<(Hash, SigningKey)> = (0..3)
            .map(|_| {
                let k = SigningKey::generate(Alg::EdDsa);
                (k.public().fingerprint(), k)
            })
            .collect();
        let identity = NetworkIdentity {
            name: "mock".into(),
            network_id: sha256(b"mock genesis"),
            nodes: NodeSet(
                nodes
                    .iter()
                    .enumerate()
                    .map(|(i, (id, k))| NodeInfo {
                        id: *id,
                        member: [i as u8; 32],
                        key: k.public().to_spki_der(),
                    })
                    .collect(),
            ),
        };
        let mut keys = HashMap::new();
        keys.insert(member.public().fingerprint(), member.public().to_spki_der());
        let node = Arc::new(Node {
            identity,
            nodes,
            state: Mutex::new(State {
                tree: MemTree::new(),
                leaves: vec![],
                bodies: vec![],
                times: vec![],
                by_id: HashMap::new(),
                keys,
                polls: 0,
            }),
        });
        {
            let mut st = node.state.lock().unwrap();
            node.append(&mut st, EntryKind::Genesis, b"mock genesis", None);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let n = node.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let n = n.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        let Ok(k) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if k == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..k]);
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
                                .and_then(|v| v.trim().parse().ok())
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        let Ok(k) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if k == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..k]);
                    }
                    let mut words = head.split_whitespace();
                    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let (status, ctype, out) =
                        n.route(method, target, &buf[head_end..head_end + len]);
                    let mut resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        out.len()
                    )
                    .into_bytes();
                    resp.extend_from_slice(&out);
                    let _ = sock.write_all(&resp).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (url, node)
    }

    /// A data directory whose client.json points at the mock node.
    pub fn data_dir(url: &str, node: &Node, member: &SigningKey) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&ca_key)
            .unwrap();
        std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(
            d.join("network.json"),
            serde_json::to_vec(&node.identity).unwrap(),
        )
        .unwrap();
        let key_pem = member.to_pkcs8_pem();
        std::fs::write(d.join("member.key.pem"), &key_pem).unwrap();
        let cert = crate::keys::self_signed_cert(&key_pem, "member").unwrap();
        std::fs::write(d.join("member.cert.pem"), cert).unwrap();
        // The member is also the reading identity: receipts carry transactions.
        let cj = crate::config::ClientJson {
            url: Some(url.to_string()),
            ca: Some(d.join("ca.pem").display().to_string()),
            network: Some(d.join("network.json").display().to_string()),
            key: Some(d.join("member.key.pem").display().to_string()),
            cert: Some(d.join("member.cert.pem").display().to_string()),
            member_key: Some(d.join("member.key.pem").display().to_string()),
            ..Default::default()
        };
        cj.write(d).unwrap();
        dir
    }
}

#[cfg(test)]
mod e2e {
    use super::*;

    fn global(d: &std::path::Path) -> Global {
        Global {
            data: d.to_path_buf(),
            ..Global::default()
        }
    }

    fn args() -> BenchArgs {
        BenchArgs {
            clients: 4,
            duration_secs: 1,
            presign: false,
            txs_per_client: None,
            value_size: 64,
            keyspace: 100,
            identities: 3,
            receipt_sample: 10,
            receipt_probe_every: 1,
            receipt_poll_ms: 2,
            receipt_probes_max: 2,
            member_key: None,
            voter_key: vec![],
            json: true,
            target: Vec::new(),
            workload: Workload::Kv,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_runs_against_a_mock_node() {
        let member = SigningKey::generate(Alg::EdDsa);
        let (url, node) = mock::start(&member).await;
        let dir = mock::data_dir(&url, &node, &member);
        let g = global(dir.path());

        let r = execute(&g, &args()).await.unwrap();
        assert!(r.committed > 10, "{r:?}");
        assert_eq!((r.errors, r.rejected), (0, 0), "{r:?}");
        assert_eq!(r.receipts.verified, 10, "{r:?}");
        assert!(r.receipt_latency_ms.answered > 0, "{r:?}");
        assert!(r.latency_ms.p50 > 0.0 && r.tps > 0.0);

        let mut a = args();
        a.presign = true;
        a.txs_per_client = Some(5);
        a.duration_secs = 3;
        let r = execute(&g, &a).await.unwrap();
        assert_eq!(r.committed, 20, "{r:?}");
        assert_eq!(r.clients_out_of_presigned, 4);
        assert_eq!(r.receipts.verified, 10, "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_commands_against_a_mock_node() {
        let member = SigningKey::generate(Alg::EdDsa);
        let (url, node) = mock::start(&member).await;
        let dir = mock::data_dir(&url, &node, &member);
        let g = global(dir.path());
        // Signs with the member key (no user key configured).
        crate::kv::run(
            &g,
            crate::kv::KvCmd::Put {
                key: "greeting".into(),
                value: Some("hello".into()),
                file: None,
                no_wait: false,
            },
        )
        .await
        .unwrap();
        // A second write through the SDK, to know its id.
        let c = Config::load(&g).unwrap().public_client().unwrap();
        let s = Signer::new(member.clone(), node.identity.network_id);
        let id = c.submit(&s.kv_put("k2", b"v2"), true).await.unwrap().id;
        crate::txcmd::run(
            &g,
            crate::txcmd::TxCmd::Status {
                id: hex::encode(id),
                json: false,
            },
        )
        .await
        .unwrap();
        let out = dir.path().join("r.cose");
        crate::receipt::run(
            &g,
            crate::receipt::ReceiptCmd::Get {
                id: hex::encode(id),
                out: Some(out.clone()),
                wait: true,
                timeout_secs: 5,
            },
        )
        .await
        .unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let lines = crate::receipt::explain(&bytes, &node.identity, Some(("doc", b"v2"))).unwrap();
        assert!(
            lines.iter().any(|l| l.contains("exactly the value")),
            "{lines:?}"
        );
        crate::receipt::run(
            &g,
            crate::receipt::ReceiptCmd::Verify {
                receipt: out,
                network_identity: dir.path().join("network.json"),
                file: None,
            },
        )
        .await
        .unwrap();
    }
}
