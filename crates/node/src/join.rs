//! What a joining node knows before it has any ledger: the network it joins
//! and the nodes trusted there, so that it accepts the leader's connections.
//! Written by `comity node join` as `<data_dir>/join.json`.

use comity_core::network::{hex32, NodeSet};
use comity_core::Hash;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    #[serde(with = "hex32")]
    pub network_id: Hash,
    pub nodes: NodeSet,
}

const FILE: &str = "join.json";

pub fn load(data_dir: &Path) -> anyhow::Result<Option<Join>> {
    let path = data_dir.join(FILE);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Writes the file whole or not at all (a temporary file, fsynced, renamed
/// over it, the directory fsynced): a crash must not leave a joining node
/// with half a list of the nodes it trusts.
pub fn save(data_dir: &Path, join: &Join) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let (path, tmp) = (data_dir.join(FILE), data_dir.join("join.json.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(join)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
