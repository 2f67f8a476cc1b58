//! One process per SQLite database: the lock file beside it, held by `run`, `serve` and
//! `worker` for as long as they use the file.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use fs4::fs_std::FileExt;
use fusillade::storage;

/// The lock file of a SQLite database (`<file>.lock`), or `None` for PostgreSQL, which many
/// processes share.
pub fn sqlite_lock_path(database: &str) -> Option<PathBuf> {
    if storage::is_postgres(database) {
        return None;
    }
    let file = database.strip_prefix("sqlite://").unwrap_or(database);
    let file = file.split('?').next().unwrap_or(file);
    Some(PathBuf::from(format!("{file}.lock")))
}

/// Takes the lock at `path`, held until the returned file is dropped (or the process dies: the
/// operating system releases it, so a killed process never leaves a stale lock).
pub fn hold(path: &Path) -> anyhow::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create lock file {}", path.display()))?;
    match file.try_lock_exclusive() {
        Ok(true) => Ok(file),
        _ => bail!(
            "another fusillade process is using this database (lock file {} is held); a SQLite \
             database serves one process at a time; use PostgreSQL to run several",
            path.display()
        ),
    }
}

/// For a SQLite database: holds its lock, and says the daemon is alone on it, so that it may
/// return a killed predecessor's requests at once instead of waiting for them to go stale.
pub fn hold_if_sqlite(database: &str) -> anyhow::Result<Option<File>> {
    sqlite_lock_path(database).map(|p| hold(&p)).transpose()
}
