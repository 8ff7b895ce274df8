//! `comity status`: the network at a glance, from every node's health.

use crate::config::{Config, Global};
use comity_client::Health;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print each node's health as JSON lines.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, args: StatusArgs) -> anyhow::Result<()> {
    let cfg = Config::load(g)?;
    let mut rows: Vec<(String, Result<Health, String>)> = Vec::new();
    for url in &cfg.nodes {
        let health = match cfg.public_client_of(url) {
            Ok(c) => match tokio::time::timeout(Duration::from_secs(3), c.health_report()).await {
                Ok(Ok(h)) => Ok(h),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 3 s".into()),
            },
            Err(e) => Err(format!("{e:#}")),
        };
        rows.push((url.clone(), health));
    }
    if args.json {
        for (url, h) in &rows {
            let v = match h {
                Ok(h) => serde_json::json!({"url": url, "health": h}),
                Err(e) => serde_json::json!({"url": url, "error": e}),
            };
            println!("{v}");
        }
        if rows.iter().all(|(_, h)| h.is_err()) {
            anyhow::bail!("no node answers");
        }
        return Ok(());
    }
    let leader = rows.iter().find_map(|(_, h)| {
        h.as_ref()
            .ok()
            .filter(|h| h.role.as_deref() == Some("leader"))
    });
    println!(
        "{:<28} {:<9} {:<10} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "node", "status", "role", "term", "committed", "applied", "ledger", "final", "age", "lag"
    );
    for (url, h) in &rows {
        match h {
            Ok(h) => {
                let lag = leader
                    .zip(h.node_id)
                    .and_then(|(l, id)| l.followers.get(&id.to_string()))
                    .map_or("-".to_string(), |f| f.lag.to_string());
                let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                println!(
                    "{:<28} {:<9} {:<10} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
                    url.trim_start_matches("https://"),
                    h.status,
                    h.role.as_deref().unwrap_or("?"),
                    opt(h.term),
                    opt(h.commit_index),
                    opt(h.applied_index),
                    opt(h.ledger_size),
                    opt(h.final_size),
                    final_age(h),
                    lag
                );
            }
            Err(e) => println!(
                "{:<28} {:<9} {e}",
                url.trim_start_matches("https://"),
                "down"
            ),
        }
    }
    let up = rows.iter().filter(|(_, h)| h.is_ok()).count();
    match leader {
        Some(l) => println!(
            "{up} of {} nodes answer; leader {} (term {})",
            rows.len(),
            l.node_identity
                .as_deref()
                .map_or("?", |s| &s[..12.min(s.len())]),
            l.term.unwrap_or(0)
        ),
        None => println!("{up} of {} nodes answer; no leader among them", rows.len()),
    }
    if let Some(warning) = leader.and_then(receipts_stalled) {
        println!("{warning}");
    }
    let evidence = rows
        .iter()
        .filter_map(|(_, h)| h.as_ref().ok()?.evidence)
        .max()
        .unwrap_or(0);
    if evidence > 0 {
        println!(
            "evidence of misbehaviour: {evidence} pair(s) of conflicting checkpoint signatures (GET /v1/evidence)"
        );
    }
    if let Some(n) = leader.and_then(|l| l.join_requests).filter(|n| *n > 0) {
        println!("{n} node(s) asked to join and wait for a vote (comity gov list nodes)");
    }
    // For scripts: a network with no node answering is not a status.
    if up == 0 {
        anyhow::bail!("no node answers");
    }
    Ok(())
}

/// Ledger time the latest final checkpoint may trail the last entry by
/// before `status` warns: under load, markers come tens of ms apart.
const RECEIPTS_STALLED_MS: u64 = 5_000;

/// A warning when writes go on but no checkpoint has become final for a
/// while. Entries after the latest final checkpoint that are only the
/// nodes' signatures (an idle network, or a clock tick for a proposal's
/// deadline, which moves ledger time without entries) do not count.
fn receipts_stalled(h: &Health) -> Option<String> {
    let (time, final_time) = (h.ledger_time?, h.final_time?);
    let (size, final_size) = (h.ledger_size?, h.final_size?);
    let behind_ms = time.saturating_sub(final_time);
    let signatures = 2 * h.members.len() as u64 + 2;
    (behind_ms > RECEIPTS_STALLED_MS && size > final_size + signatures).then(|| {
        format!(
            "receipts are behind: the latest final checkpoint (tree size {final_size}) is {:.1} s older than the last of {size} ledger entries; check that nodes of a majority of members are up and signing (their logs say why not)",
            behind_ms as f64 / 1000.0
        )
    })
}

/// How much older, in ledger time, the latest final checkpoint is than the
/// node's last entry: it grows while writes go on and receipts fall behind.
fn final_age(h: &Health) -> String {
    match (h.ledger_time, h.final_time) {
        (Some(now), Some(f)) => format!("{:.1}s", now.saturating_sub(f) as f64 / 1000.0),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(ledger: (u64, u64), fin: (u64, u64), nodes: usize) -> Health {
        let members: Vec<_> = (0..nodes)
            .map(|i| serde_json::json!({"id": i, "address": "a", "voter": true}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "status": "ok",
            "ledger_size": ledger.0, "ledger_time": ledger.1,
            "final_size": fin.0, "final_time": fin.1,
            "members": members,
        }))
        .unwrap()
    }

    #[test]
    fn warns_only_when_writes_outrun_final_checkpoints() {
        // Busy and keeping up: the final checkpoint trails by a marker interval.
        assert_eq!(
            receipts_stalled(&health((5000, 100_040), (4900, 100_000), 3)),
            None
        );
        // Writes went on for a minute with no checkpoint becoming final.
        let w = receipts_stalled(&health((9000, 160_000), (4900, 100_000), 3)).unwrap();
        assert!(w.contains("tree size 4900") && w.contains("60.0 s"), "{w}");
        // Idle for an hour, then a clock tick: only signatures follow the checkpoint.
        assert_eq!(
            receipts_stalled(&health((4903, 3_700_000), (4900, 100_000), 3)),
            None
        );
        // No final checkpoint yet: nothing to compare.
        let mut h = health((10, 100_000), (0, 0), 3);
        h.final_size = None;
        h.final_time = None;
        assert_eq!(receipts_stalled(&h), None);
    }
}
