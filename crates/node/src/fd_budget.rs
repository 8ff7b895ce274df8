//! File descriptors. Each client connection holds one, and so do the state
//! database's table files, the ledger and Raft log segments and the
//! connections to peers. When none is left, the next file the storage opens
//! fails and the node stops, so a flood of connections must never take
//! them all: the node raises its soft limit to the hard one and splits it
//! between the database's file cache, a reserve for everything else, and
//! client connections, which get at most what remains.

use anyhow::bail;

/// Descriptors kept for the ledger, the Raft log, peers and the rest.
pub const RESERVE: u64 = 256;
/// The smallest open-file limit a node runs with.
pub const MIN_FILES: u64 = 512;
/// The soft limit is raised at most to this.
const RAISE_AT_MOST: libc::rlim_t = 1 << 20;
/// Most table files the state database keeps open (its own default).
const DB_FILES_MAX: u64 = 900;

/// How a node spends its open-file limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// The process's (soft) limit on open files.
    pub limit: u64,
    /// Table files the state database may keep open.
    pub db_files: usize,
    /// Client and peer connections accepted at once.
    pub connections: usize,
}

impl FdBudget {
    /// Splits `limit`, giving connections at most `max_connections`.
    pub fn split(limit: u64, max_connections: usize) -> anyhow::Result<FdBudget> {
        if limit < MIN_FILES {
            bail!(
                "this process may open only {limit} files; a node needs at least {MIN_FILES}: \
                 raise the limit (`ulimit -n`, or LimitNOFILE= in a systemd unit)"
            );
        }
        let db_files = (limit / 4).min(DB_FILES_MAX);
        let connections = (limit - db_files - RESERVE).min(max_connections as u64);
        Ok(FdBudget {
            limit,
            db_files: db_files as usize,
            connections: connections as usize,
        })
    }

    /// Raises this process's soft limit on open files to its hard limit
    /// and splits the result.
    pub fn of_process(max_connections: usize) -> anyhow::Result<FdBudget> {
        Self::split(raise_open_files()?, max_connections)
    }
}

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit in force.
fn raise_open_files() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // An unlimited hard limit is not a valid soft one for open files.
    let target = lim.rlim_max.min(RAISE_AT_MOST);
    if lim.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = target;
        }
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_and_connections_get_what_remains() {
        let b = FdBudget::split(1024, 4096).unwrap();
        assert_eq!((b.db_files, b.connections), (256, 1024 - 256 - 256));
        let b = FdBudget::split(512, 4096).unwrap();
        assert_eq!((b.db_files, b.connections), (128, 128));
        // A high limit: the database keeps its own default, connections their cap.
        let b = FdBudget::split(1 << 20, 4096).unwrap();
        assert_eq!((b.db_files, b.connections), (900, 4096));
        let e = FdBudget::split(256, 4096).unwrap_err().to_string();
        assert!(
            e.contains("only 256 files") && e.contains("LimitNOFILE"),
            "{e}"
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let soft = raise_open_files().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in `raise_open_files`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur, "the limit in force");
        assert_eq!(lim.rlim_cur, lim.rlim_max.min(RAISE_AT_MOST));
    }
}
