//! Creating directories durably: a file fsynced inside a directory that was
//! just created is not yet safe, since the directory's own entry in its
//! parent may be lost in a power failure.

use std::fs::File;
use std::io;
use std::path::Path;

/// `create_dir_all` that fsyncs the parent of every directory it creates,
/// and the parent of `dir` even if it exists: a run killed between creating
/// it and that fsync leaves an entry later runs must not take as durable.
pub fn create_dir_all_synced(dir: &Path) -> io::Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let existed = dir.is_dir();
    if !existed {
        if let Some(p) = parent {
            create_dir_all_synced(p)?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    match File::open(parent.unwrap_or(Path::new("."))) {
        Ok(p) => p.sync_all(),
        // A parent this process may pass through but not read (mode 0711)
        // held the directory before this run: nothing to make durable.
        Err(e) if existed && e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn creates_every_missing_level_and_accepts_an_existing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        super::create_dir_all_synced(&deep).unwrap();
        assert!(deep.is_dir());
        super::create_dir_all_synced(&deep).unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        assert!(super::create_dir_all_synced(&tmp.path().join("f/g")).is_err());
    }
}
