//! Private key files: read as given, with a warning when others may read
//! them (a key copied with `cp`, or left on a shared mount).

use std::path::Path;

/// Reads private key file `path`, warning if others than its owner may
/// read it. Not refused: secret stores often mount keys readable by all.
pub fn read_private(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(mode) = exposed_mode(path) {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:o}"),
            "a private key file is readable by others than its owner; chmod 600 it"
        );
    }
    Ok(bytes)
}

/// The permission bits of `path`, if they let its group or others read or
/// write it.
pub fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o066 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_others_may_read_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, "secret").unwrap();
        for (mode, exposed) in [
            (0o600, None),
            (0o400, None),
            (0o611, None),
            (0o644, Some(0o644)),
            (0o660, Some(0o660)),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(exposed_mode(&key), exposed, "{mode:o}");
        }
        assert_eq!(read_private(&key).unwrap(), b"secret");
    }
}
