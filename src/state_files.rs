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

/// A failed file operation on `path` in the state folder, in words that name the path and
/// the likely cause.
pub fn io_problem(path: &Path, e: &io::Error) -> String {
    let cause = match e.kind() {
        io::ErrorKind::PermissionDenied => format!(
            "permission denied: the state folder must be writable by the user Outbox runs as \
             (uid {}); check the owner and mode of {} and its folders",
            // SAFETY: getuid has no preconditions.
            unsafe { libc::getuid() },
            path.parent().unwrap_or(path).display()
        ),
        io::ErrorKind::ReadOnlyFilesystem => {
            "the file system is read-only (a read-only mount, or systemd's ProtectSystem= \
             without the state folder in ReadWritePaths=/StateDirectory=)"
                .to_string()
        }
        io::ErrorKind::StorageFull => "no space left on the device".to_string(),
        _ => e.to_string(),
    };
    format!("{}: {cause}", path.display())
}

/// A failed open of the redb database at `path`, naming it and the likely cause.
pub fn open_problem(path: &Path, e: &redb::DatabaseError) -> String {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            format!(
                "{} is locked by another process: probably another Outbox instance is using \
                 this state folder; stop it, or give this one its own state_dir",
                path.display()
            )
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => io_problem(path, io),
        e => format!("opening {}: {e}", path.display()),
    }
}

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

    /// Issue 16: the state-folder errors name the path and the likely cause.
    #[test]
    fn problems_name_the_path_and_the_cause() {
        let path = Path::new("/var/lib/outbox/spool/spool.redb");
        let denied = io_problem(path, &io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(
            denied.starts_with("/var/lib/outbox/spool/spool.redb: permission denied: the state folder must be writable by the user Outbox runs as (uid "),
            "{denied}"
        );
        assert!(
            denied.contains("check the owner and mode of /var/lib/outbox/spool"),
            "{denied}"
        );
        let locked = open_problem(path, &redb::DatabaseError::DatabaseAlreadyOpen);
        assert_eq!(
            locked,
            "/var/lib/outbox/spool/spool.redb is locked by another process: probably another Outbox instance is using this state folder; stop it, or give this one its own state_dir"
        );
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
