//! `comity tx`: transaction status and raw submission.

use crate::config::{fmt_time, parse_hash, Config, Global};
use anyhow::Context;
use clap::Subcommand;
use comity_client::{TxState, TxStatus};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum TxCmd {
    /// Show where a transaction stands (committed, rejected, pending, unknown).
    Status {
        /// Transaction id (hex SHA-256 of its bytes).
        id: String,
        /// Print the node's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Submit already signed transaction bytes (COSE_Sign1) from a file.
    Submit {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Return once accepted, without waiting for the commit.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(g: &Global, cmd: TxCmd) -> anyhow::Result<()> {
    let cfg = Config::load(g)?;
    match cmd {
        TxCmd::Status { id, json } => {
            let id = parse_hash(&id)?;
            let st = cfg.public_client()?.tx_status(&id).await?;
            print(&st, json)
        }
        TxCmd::Submit {
            file,
            no_wait,
            json,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let st = cfg.public_client()?.submit(&bytes, !no_wait).await?;
            print(&st, json)?;
            // A script must see a refusal in the exit status.
            match st.status {
                TxState::Rejected => anyhow::bail!(
                    "the transaction was recorded but rejected: {}",
                    st.outcome.as_deref().unwrap_or("?")
                ),
                TxState::Unknown => anyhow::bail!("the node answered status unknown"),
                _ => Ok(()),
            }
        }
    }
}

fn print(st: &TxStatus, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(st)?);
        return Ok(());
    }
    println!("tx {}", hex::encode(st.id));
    println!("  status:      {}", st.status);
    if let Some(i) = st.index {
        println!("  index:       {i}");
    }
    if let Some(o) = &st.outcome {
        println!("  outcome:     {o}");
    }
    if let Some(t) = st.ledger_time {
        println!("  ledger time: {} ({t})", fmt_time(t));
    }
    Ok(())
}
