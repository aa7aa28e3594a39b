//! The on-disk format version of Outbox's redb files (the spool and the JMAP store).
//!
//! Each file keeps its format in a table `outbox_meta` (`"format"` → number), checked in the
//! first write transaction after opening, before any other table is touched:
//!
//! - no tables at all (a new file): stamped with the current format;
//! - tables but no `outbox_meta`: a file written before formats were numbered, format 0;
//! - an older format: migrated step by step (each step in the same transaction, so a crash
//!   leaves the old format whole), then stamped;
//! - a newer format than this build knows: refused, with the path and both numbers, so a
//!   downgrade cannot misread (or "repair") data written by a newer Outbox.

use std::path::Path;

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

const META: TableDefinition<&str, u64> = TableDefinition::new("outbox_meta");
const FORMAT_KEY: &str = "format";

/// One migration step: turns format `n` into `n + 1` inside the given transaction.
pub type Step = fn(&WriteTransaction) -> Result<(), String>;

/// What [`check_and_migrate`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The format the file had (0: unnumbered; None: a new file).
    pub found: Option<u64>,
    pub now: u64,
}

/// Checks the file's format against `current` and migrates an older one with `steps`
/// (`steps[n]` turns format `n` into `n + 1`; `steps.len()` must equal `current`).
pub fn check_and_migrate(
    txn: &WriteTransaction,
    what: &str,
    path: &Path,
    current: u64,
    steps: &[Step],
) -> Result<Checked, String> {
    debug_assert_eq!(steps.len() as u64, current);
    let err = |e: &dyn std::fmt::Display| format!("{}: reading its format: {e}", path.display());
    let has_meta = txn
        .list_tables()
        .map_err(|e| err(&e))?
        .any(|t| t.name() == META.name());
    let found = if has_meta {
        let meta = txn.open_table(META).map_err(|e| err(&e))?;
        let stored = meta
            .get(FORMAT_KEY)
            .map_err(|e| err(&e))?
            .map(|v| v.value());
        stored.or(Some(0))
    } else if txn.list_tables().map_err(|e| err(&e))?.next().is_none()
        && txn
            .list_multimap_tables()
            .map_err(|e| err(&e))?
            .next()
            .is_none()
    {
        None
    } else {
        Some(0)
    };
    if let Some(found) = found {
        if found > current {
            return Err(format!(
                "{}: the {what} has format {found}, written by a newer Outbox; this one \
                 (version {}) reads formats up to {current}. Run the newer version again, or \
                 restore a backup taken before the upgrade (see docs/production.md, \"Upgrades\")",
                path.display(),
                env!("CARGO_PKG_VERSION"),
            ));
        }
        for (n, step) in steps.iter().enumerate().skip(found as usize) {
            step(txn).map_err(|e| {
                format!(
                    "{}: migrating the {what} from format {n} to {}: {e}",
                    path.display(),
                    n + 1
                )
            })?;
        }
        if found < current {
            tracing::info!(path = %path.display(), from = found, to = current, "{what} format migrated");
        }
    }
    let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
    meta.insert(FORMAT_KEY, current).map_err(|e| err(&e))?;
    Ok(Checked {
        found,
        now: current,
    })
}

/// The format stored in a file's `outbox_meta` table, if any (for tests and backups).
pub fn stored_format(db: &redb::Database) -> Result<Option<u64>, String> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let value = meta.get(FORMAT_KEY).map_err(|e| e.to_string())?;
    Ok(value.map(|v| v.value()))
}

/// Writes `format` into a file (tests: pretend a newer Outbox wrote it).
#[cfg(test)]
pub fn force_format(db: &redb::Database, format: u64) {
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert(FORMAT_KEY, format)
        .unwrap();
    txn.commit().unwrap();
}

/// Removes the format, as in a file written before formats were numbered (tests).
#[cfg(test)]
pub fn forget_format(db: &redb::Database) {
    let txn = db.begin_write().unwrap();
    txn.delete_table(META).unwrap();
    txn.commit().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::Database;

    const DATA: TableDefinition<&str, &str> = TableDefinition::new("data");

    fn upgrade_data(txn: &WriteTransaction) -> Result<(), String> {
        let mut t = txn.open_table(DATA).map_err(|e| e.to_string())?;
        let old = t
            .get("k")
            .map_err(|e| e.to_string())?
            .map(|v| v.value().to_string());
        if let Some(old) = old {
            t.insert("k", format!("{old}+migrated").as_str())
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn check(db: &Database, path: &Path) -> Result<Checked, String> {
        let txn = db.begin_write().unwrap();
        let checked = check_and_migrate(&txn, "test file", path, 1, &[upgrade_data])?;
        txn.commit().unwrap();
        Ok(checked)
    }

    #[test]
    fn a_new_file_is_stamped_without_migrating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let db = Database::create(&path).unwrap();
        assert_eq!(
            check(&db, &path).unwrap(),
            Checked {
                found: None,
                now: 1
            }
        );
        assert_eq!(stored_format(&db).unwrap(), Some(1));
    }

    #[test]
    fn an_unnumbered_file_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(DATA).unwrap().insert("k", "v").unwrap();
        txn.commit().unwrap();
        assert_eq!(check(&db, &path).unwrap().found, Some(0));
        assert_eq!(check(&db, &path).unwrap().found, Some(1));
        use redb::ReadableDatabase;
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(DATA).unwrap();
        assert_eq!(t.get("k").unwrap().unwrap().value(), "v+migrated");
    }

    #[test]
    fn a_newer_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        let db = Database::create(&path).unwrap();
        force_format(&db, 7);
        let e = check(&db, &path).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{}: the test file has format 7, written by a newer Outbox; this one (version",
                path.display()
            )),
            "{e}"
        );
        assert!(e.contains("reads formats up to 1."), "{e}");
        assert_eq!(stored_format(&db).unwrap(), Some(7));
    }
}
