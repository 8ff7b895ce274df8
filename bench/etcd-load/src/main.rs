//! Drives an etcd cluster the way `comity bench` drives Comity: N clients,
//! each putting a 256-byte value under a random key and waiting for the
//! answer before the next put. Prints one JSON object.
//!
//! Usage: etcd-load ENDPOINTS(comma-separated) CLIENTS SECONDS [VALUE_BYTES]

use etcd_client::Client;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: etcd-load ENDPOINTS CLIENTS SECONDS [VALUE_BYTES]");
        std::process::exit(2);
    }
    let endpoints: Vec<String> = args[1].split(',').map(str::to_string).collect();
    let clients: usize = args[2].parse()?;
    let secs: u64 = args[3].parse()?;
    let value_bytes: usize = args.get(4).map_or(Ok(256), |v| v.parse())?;

    let start = Instant::now() + Duration::from_millis(500);
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        // One connection per client, to the endpoints in turn (like Comity's clients).
        let ep = endpoints[c % endpoints.len()].clone();
        let mut client = Client::connect([ep], None).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
            tokio::time::sleep_until(start.into()).await;
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("bench/{}", x % 1_000_000);
                let value = vec![b'v'; value_bytes];
                let t = Instant::now();
                match client.put(key, value, None).await {
                    Ok(_) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        lat.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        // Nearest rank, as `comity bench` computes its percentiles.
        let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    println!(
        "{{\"puts\": {}, \"errors\": {}, \"elapsed_secs\": {:.3}, \"throughput\": {:.1}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}}}",
        lat.len(),
        errors,
        elapsed,
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
