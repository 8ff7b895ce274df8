//! `comity node run`: one node, configured by a TOML file, for deployments.

use crate::up::{init_tracing, install_metrics};

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(subcommand)]
    pub cmd: NodeCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeCmd {
    /// Run a node until Ctrl-C or SIGTERM.
    Run {
        /// Node configuration (TOML; see docs/operations.md).
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let NodeCmd::Run { config } = args.cmd;
    init_tracing();
    let cfg = comity_node::config::NodeConfig::load(&config)?;
    let node = comity_node::Node::start(cfg, install_metrics()).await?;
    println!("node listening on https://{}", node.addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    node.shutdown().await
}
