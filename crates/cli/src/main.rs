//! `comity`: run a local network, manage keys, read and write data, fetch and
//! verify receipts, and benchmark a network.

mod bench;
mod config;
mod doc;
mod evidence;
mod gov;
mod keys;
mod kv;
mod ledger;
mod network;
mod node;
mod notary_load;
mod receipt;
mod recovery;
mod status;
mod txcmd;
mod up;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc: the node allocates many small, short-lived buffers per transaction.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys
/// exports no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays mapped before mimalloc returns it to the OS.
/// With its default (1 s) a loaded node kept giving memory back and faulting
/// it in again, zeroing fresh huge pages each time (about 5% of a three-node
/// network's CPU under `perf`). At 10 s a node takes 4–8 times fewer page
/// faults under `comity bench`, and memory left idle is still returned.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Applies [`PURGE_DELAY_MS`] unless `MIMALLOC_PURGE_DELAY` chose otherwise.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's integer options; callable at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "comity",
    version,
    about = "Comity: a permissioned consortium ledger",
    long_about = "Comity: a permissioned consortium ledger.\n\n\
        Client commands read their defaults (node URL, CA, keys, network identity) from \
        <data>/client.json, written by `comity up`; flags and environment variables override them."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: config::Global,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start a local network on this machine (a node that crashes is
    /// restarted; Ctrl-C stops them all).
    Up(up::UpArgs),
    /// Run one node.
    Node(node::NodeArgs),
    /// Inspect and audit ledger files.
    Ledger(ledger::LedgerArgs),
    /// Create and inspect identity keys.
    Keys {
        #[command(subcommand)]
        cmd: keys::KeysCmd,
    },
    /// Create a network's genesis from a genesis file.
    Network {
        #[command(subcommand)]
        cmd: network::NetworkCmd,
    },
    /// Governance: proposals, ballots, members, users, nodes, the constitution.
    Gov {
        #[command(subcommand)]
        cmd: gov::GovCmd,
    },
    /// Document provenance: register, sign, amend, hold, custody, destroy, verify, evidence.
    Doc {
        #[command(subcommand)]
        cmd: doc::DocCmd,
    },
    /// Write and read the key-value application.
    Kv {
        #[command(subcommand)]
        cmd: kv::KvCmd,
    },
    /// Submit transactions and look up their status.
    Tx {
        #[command(subcommand)]
        cmd: txcmd::TxCmd,
    },
    /// Fetch receipts and verify them offline.
    Receipt {
        #[command(subcommand)]
        cmd: receipt::ReceiptCmd,
    },
    /// Measure write throughput and latency against a running network.
    Bench(bench::BenchArgs),
    /// The network at a glance: each node's role, term, progress and lag.
    Status(status::StatusArgs),
    /// Disaster recovery: restart from a surviving ledger copy with a new
    /// node set, by a decision a majority of members sign.
    Recovery {
        #[command(subcommand)]
        cmd: recovery::RecoveryCmd,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    config::set_global(cli.global.clone());
    let g = &cli.global;
    match cli.cmd {
        Command::Up(args) => up::run(args).await,
        Command::Node(args) => node::run(g, args).await,
        Command::Ledger(args) => ledger::run(args).await,
        Command::Keys { cmd } => keys::run(g, cmd),
        Command::Network { cmd } => network::run(cmd),
        Command::Gov { cmd } => gov::run(g, cmd).await,
        Command::Doc { cmd } => doc::run(g, cmd).await,
        Command::Kv { cmd } => kv::run(g, cmd).await,
        Command::Tx { cmd } => txcmd::run(g, cmd).await,
        Command::Receipt { cmd } => receipt::run(g, cmd).await,
        Command::Bench(args) => bench::run(g, args).await,
        Command::Status(args) => status::run(g, args).await,
        Command::Recovery { cmd } => recovery::run(cmd),
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("comity").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_anywhere() {
        let c = parse(&[
            "kv",
            "get",
            "some/key",
            "--verify",
            "--node",
            "https://10.0.0.1:1",
            "--data",
            "/tmp/d",
            "--key",
            "k.pem",
            "--cert",
            "c.pem",
            "--ca",
            "ca.pem",
        ]);
        assert_eq!(c.global.node.as_deref(), Some("https://10.0.0.1:1"));
        assert_eq!(c.global.data, std::path::PathBuf::from("/tmp/d"));
        assert_eq!(c.global.key.as_deref(), Some(std::path::Path::new("k.pem")));
        match c.cmd {
            Command::Kv {
                cmd: kv::KvCmd::Get { key, verify, .. },
            } => {
                assert_eq!(key, "some/key");
                assert!(verify);
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["--data", "x", "keys", "new", "--name", "alice"]);
        assert_eq!(c.global.data, std::path::PathBuf::from("x"));
    }

    /// `up`/`node`/`ledger` own their argument structs; one of them may define
    /// its own `--data` or `--node`, which then shadows the global flag there.
    #[test]
    fn subcommand_may_shadow_global_flags() {
        #[derive(clap::Args, Debug)]
        struct Own {
            #[arg(long)]
            data: Option<std::path::PathBuf>,
            #[arg(long)]
            node: Option<String>,
        }
        #[derive(Subcommand, Debug)]
        enum Sub {
            Ledger(Own),
        }
        #[derive(Parser, Debug)]
        struct T {
            #[command(flatten)]
            global: config::Global,
            #[command(subcommand)]
            cmd: Sub,
        }
        T::command().debug_assert();
        let t =
            T::try_parse_from(["t", "ledger", "--data", "z", "--node", "u", "--ca", "c"]).unwrap();
        let Sub::Ledger(own) = t.cmd;
        assert_eq!(own.data.as_deref(), Some(std::path::Path::new("z")));
        assert_eq!(own.node.as_deref(), Some("u"));
        assert_eq!(t.global.ca.as_deref(), Some(std::path::Path::new("c")));
    }

    #[test]
    fn subcommands_parse() {
        let c = parse(&[
            "keys", "new", "--name", "bob", "--alg", "es256", "--out", "d",
        ]);
        assert!(matches!(
            c.cmd,
            Command::Keys {
                cmd: keys::KeysCmd::New {
                    alg: keys::AlgArg::Es256,
                    ..
                }
            }
        ));
        parse(&["keys", "show", "f.pem"]);
        parse(&["kv", "put", "k", "v"]);
        parse(&["kv", "put", "k", "--file", "f"]);
        assert!(Cli::try_parse_from(["comity", "kv", "put", "k", "v", "--file", "f"]).is_err());
        assert!(Cli::try_parse_from(["comity", "kv", "put", "k"]).is_err());
        parse(&["kv", "history", "k"]);
        parse(&[
            "doc",
            "register",
            "f.pdf",
            "--party",
            "alice=seller",
            "--party",
            "bob=buyer",
            "--retention",
            "7y",
            "--approvals",
            "2",
            "--salted",
        ]);
        parse(&["doc", "hold", "place", "00", "--reason", "litigation"]);
        parse(&["doc", "custody", "offer", "00", "--to", "carol"]);
        parse(&["doc", "verify-evidence", "b.cbor", "--file", "f.pdf"]);
        parse(&["doc", "evidence", "00", "-o", "b.cbor"]);
        parse(&["kv", "delete", "k"]);
        parse(&["tx", "status", &"ab".repeat(32)]);
        parse(&["receipt", "get", "00", "-o", "r.cose", "--wait"]);
        parse(&[
            "receipt",
            "verify",
            "--receipt",
            "r",
            "--network-identity",
            "n.json",
            "--file",
            "doc",
        ]);
        let c = parse(&["bench", "--clients", "8", "--presign", "--json"]);
        match c.cmd {
            Command::Bench(b) => {
                assert_eq!(b.clients, 8);
                assert!(b.presign && b.json);
                assert_eq!(b.duration_secs, 10);
                assert_eq!(b.value_size, 256);
                assert_eq!(b.keyspace, 1_000_000);
                assert_eq!(b.identities, 64);
                assert_eq!(b.receipt_sample, 200);
            }
            other => panic!("{other:?}"),
        }
        let c = parse(&["bench"]);
        assert!(matches!(c.cmd, Command::Bench(ref b) if b.clients == 64 && !b.presign));
    }

    #[test]
    fn the_purge_delay_option_is_the_one_tuned() {
        // mimalloc's purge delay defaults to 1,000 ms; no other option has
        // that default, so index 15 names it in the mimalloc this links.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads one of mimalloc's integer options.
            let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(before, 1_000);
        }
        tune_allocator();
        // SAFETY: as above.
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert!(std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() || after == PURGE_DELAY_MS);
    }
}
