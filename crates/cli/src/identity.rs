//! `comity identity register`: a member registers a new user identity.
//! (Governance replaces this with a vote of the members.)

use crate::config::{Config, Global};
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum IdentityCmd {
    /// Register the key of a certificate, public or private key file (e.g.
    /// from `comity keys new`) as an active user, signed with the member key.
    Register {
        /// The identity's `.cert.pem` (or key) file.
        file: PathBuf,
        /// Display name recorded with the identity.
        #[arg(long)]
        name: String,
    },
}

pub async fn run(g: &Global, cmd: IdentityCmd) -> anyhow::Result<()> {
    let IdentityCmd::Register { file, name } = cmd;
    let pem =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let key = crate::keys::inspect(&pem)?.public;
    let cfg = Config::load(g)?;
    let client = cfg.client()?;
    let member = cfg.member_signer(cfg.network_id(&client).await?)?;
    let st = client
        .submit(&member.register_user(&key.to_spki_der(), &name), true)
        .await?;
    let id = hex::encode(key.fingerprint());
    crate::kv::report(
        &format!("registration of user {name:?}, identity {id},"),
        &st,
    )
}
