//! Modes of the state folder and the databases in it, set explicitly: a daemon started from a
//! shell (outside systemd's `UMask=0027`) usually runs with umask 022, which would leave the
//! spool — every queued message — readable by every local user.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The state folder: only the service user lists or reads it; others may pass through (`x`)
/// to reach the world-connectable `submit.sock` and the group's `admin.sock` by name. 0700
/// would lock local callers out of the default socket path.
pub const STATE_DIR_MODE: u32 = 0o711;

/// Folders holding only databases (the spool's folder).
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// redb files: queued mail, drafts, uploads.
pub const DATABASE_MODE: u32 = 0o600;

/// Creates `path` (and missing parents) so that a folder created here has exactly `mode`,
/// whatever the umask. An existing folder is left as it is: the operator chose it.
pub fn create_dir(path: &Path, mode: u32) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes sure the database file at `path` exists with mode [`DATABASE_MODE`] before redb opens
/// it (redb creates files with the process umask and initialises an empty file as a new
/// database). An existing file is narrowed to the mode too: it holds the same mail.
pub fn prepare_database(path: &Path) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(DATABASE_MODE)
        .open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(DATABASE_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Rule: the spool's folder and both databases get their modes whatever the umask (the
    /// test process has its shell's, usually 022), and an existing database left 0644 by an
    /// older version is narrowed.
    #[test]
    fn spool_and_store_are_private_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create_dir(&state, STATE_DIR_MODE).unwrap();
        let spool = state.join("spool");
        let clock: std::sync::Arc<dyn crate::clock::Clock> =
            std::sync::Arc::new(crate::clock::SystemClock);
        let options = crate::spool::SpoolOptions::from(&crate::config::SpoolConfig::default());
        drop(crate::spool::redb::open(&spool, options, clock).unwrap());
        let jmap = state.join("jmap.redb");
        drop(crate::jmap::Store::open(&jmap).unwrap());
        assert_eq!(mode(&state), 0o711);
        assert_eq!(mode(&spool), 0o700);
        assert_eq!(mode(&spool.join("spool.redb")), 0o600);
        assert_eq!(mode(&jmap), 0o600);

        std::fs::set_permissions(&jmap, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(crate::jmap::Store::open(&jmap).unwrap());
        assert_eq!(mode(&jmap), 0o600);
    }
}
