//! `[archive]`: continuous archiving of the database's log into Swift, for
//! point-in-time recovery (PostgreSQL's WAL; MariaDB's binlog next).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{absolute_path, Compression, ConfigDuration, ConfigError, Datastore, ErrAt};

pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/volsnap/wal-spool";
pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(300);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArchiveFile {
    container: Option<String>,
    compression: Option<Compression>,
    compression_level: Option<i32>,
    max_lag: Option<ConfigDuration>,
    spool_dir: Option<PathBuf>,
    spool_owner: Option<String>,
}

#[derive(Clone, Debug)]
pub struct ArchiveSettings {
    /// Where the log's objects go: `PREFIX/HOST/wal/NAME`, `PREFIX` being
    /// `swift.prefix`. Encrypted to `swift`'s age recipients.
    pub container: String,
    pub compression: Compression,
    pub compression_level: i32,
    /// The most a commit may wait before it is in Swift: `check` wants
    /// PostgreSQL's `archive_timeout` at most this, and the lag metric
    /// is judged against it.
    pub max_lag: Duration,
    /// Where `volsnap wal push` (run by PostgreSQL as its OS user) leaves
    /// each WAL file for the root `volsnap archive` service to ship.
    pub spool_dir: PathBuf,
    /// The database's OS user, who alone (with root) may write the spool.
    pub spool_owner: String,
}

pub(super) fn validate(
    err: &ErrAt,
    file: ArchiveFile,
    datastore: Datastore,
) -> Result<ArchiveSettings, ConfigError> {
    if datastore != Datastore::Postgresql {
        return Err(err(
            "archive",
            format!(
                "archiving is built for datastore \"postgresql\" only so far, not {:?}",
                datastore.name()
            ),
        ));
    }
    let container = file.container.unwrap_or_else(|| "volsnap-wal".into());
    if container.is_empty() || container.len() > 256 || container.contains('/') {
        return Err(err(
            "archive.container",
            format!("{container:?} is not a valid container name (1 to 256 characters, no '/')"),
        ));
    }
    let compression = file.compression.unwrap_or_default();
    let (range, default_level) = match compression {
        Compression::Zstd => (1..=19, 3),
        Compression::Gzip => (1..=9, 6),
        Compression::None => (0..=0, 0),
    };
    let compression_level = file.compression_level.unwrap_or(default_level);
    if !range.contains(&compression_level) {
        return Err(err(
            "archive.compression_level",
            format!(
                "{compression_level} is outside {}..{} for {compression:?}",
                range.start(),
                range.end()
            ),
        ));
    }
    let max_lag = match file.max_lag {
        None => DEFAULT_MAX_LAG,
        Some(ConfigDuration(d)) if d < Duration::from_secs(1) => {
            return Err(err("archive.max_lag", "must be at least 1s".into()))
        }
        Some(ConfigDuration(d)) => d,
    };
    let spool_dir = absolute_path(err, "archive.spool_dir", file.spool_dir)?
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR));
    if spool_dir == std::path::Path::new("/") {
        return Err(err("archive.spool_dir", "cannot be \"/\"".into()));
    }
    let spool_owner = file.spool_owner.unwrap_or_else(|| "postgres".into());
    let valid_user = !spool_owner.is_empty()
        && spool_owner.len() <= 32
        && spool_owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !valid_user || spool_owner == "root" {
        return Err(err(
            "archive.spool_owner",
            format!("{spool_owner:?} is not the database's OS user (e.g. \"postgres\")"),
        ));
    }
    Ok(ArchiveSettings {
        container,
        compression,
        compression_level,
        max_lag,
        spool_dir,
        spool_owner,
    })
}
