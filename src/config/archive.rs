//! `[archive]`: continuous archiving of the database's log into Swift, for
//! point-in-time recovery (PostgreSQL's WAL, MariaDB's binary log).

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
    /// Where the log's objects go: `PREFIX/HOST/wal/NAME` (PostgreSQL) or
    /// `PREFIX/HOST/binlog/NAME` (MariaDB), `PREFIX` being `swift.prefix`. Encrypted to `swift`'s age recipients.
    pub container: String,
    pub compression: Compression,
    pub compression_level: i32,
    /// The most a commit may wait before it is in Swift: `check` wants
    /// PostgreSQL's `archive_timeout` at most this; for MariaDB the
    /// service closes the binary log (FLUSH BINARY LOGS) well within it.
    /// The lag metric is judged against it.
    pub max_lag: Duration,
    /// Where `volsnap wal push` (run by PostgreSQL as its OS user) leaves
    /// each WAL file for the root `volsnap archive` service to ship
    /// (PostgreSQL only: the service reads MariaDB's binlogs in place).
    pub spool_dir: PathBuf,
    /// The database's OS user, who alone (with root) may write the spool,
    /// and who owns what `restore --until` writes.
    pub spool_owner: String,
}

pub(super) fn validate(
    err: &ErrAt,
    file: ArchiveFile,
    datastore: Datastore,
) -> Result<ArchiveSettings, ConfigError> {
    let postgresql = match datastore {
        Datastore::Postgresql => true,
        Datastore::Mysql => false,
        _ => {
            return Err(err(
                "archive",
                format!(
                    "archiving is for datastore \"postgresql\" (WAL) or \"mysql\" (MariaDB's \
                     binary log), not {:?}",
                    datastore.name()
                ),
            ))
        }
    };
    if !postgresql && file.spool_dir.is_some() {
        return Err(err(
            "archive.spool_dir",
            "MariaDB's binary logs are shipped from where the server writes them: there is no \
             spool; remove the key"
                .into(),
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
    let compression_level = super::compression_level(compression, file.compression_level)
        .map_err(|why| err("archive.compression_level", why))?;
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
    let spool_owner = file
        .spool_owner
        .unwrap_or_else(|| if postgresql { "postgres" } else { "mysql" }.into());
    let valid_user = !spool_owner.is_empty()
        && spool_owner.len() <= 32
        && spool_owner
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !valid_user || spool_owner == "root" {
        return Err(err(
            "archive.spool_owner",
            format!("{spool_owner:?} is not the database's OS user (e.g. \"postgres\", \"mysql\")"),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse(source: &str) -> Result<super::super::Settings, ConfigError> {
        super::super::parse(Path::new("/etc/volsnap/volsnap.toml"), source)
    }

    #[test]
    fn defaults_and_every_key() {
        let s = parse("datastore = \"postgresql\"\n").unwrap();
        assert!(s.archive.is_none());
        let s = parse("datastore = \"postgresql\"\n[archive]\n").unwrap();
        let a = s.archive.unwrap();
        assert_eq!(a.container, "volsnap-wal");
        assert_eq!(a.spool_dir, Path::new(DEFAULT_SPOOL_DIR));
        assert_eq!(a.spool_owner, "postgres");
        assert_eq!(a.max_lag, DEFAULT_MAX_LAG);
        assert_eq!((a.compression, a.compression_level), (Compression::Zstd, 3));
        let s = parse(
            "datastore = \"postgresql\"\n[archive]\ncontainer = \"wal\"\ncompression = \"gzip\"\n\
             compression_level = 9\nmax_lag = \"1m\"\nspool_dir = \"/srv/spool/\"\nspool_owner = \"pg\"\n",
        )
        .unwrap();
        let a = s.archive.unwrap();
        assert_eq!(a.container, "wal");
        assert_eq!(a.max_lag, Duration::from_secs(60));
        assert_eq!(a.spool_dir, Path::new("/srv/spool"));
        assert_eq!(a.spool_owner, "pg");
    }

    #[test]
    fn mariadb_has_no_spool_and_runs_as_mysql() {
        let s = parse("datastore = \"mysql\"\n[archive]\nmax_lag = \"2m\"\n").unwrap();
        let a = s.archive.unwrap();
        assert_eq!(a.spool_owner, "mysql");
        assert_eq!(a.max_lag, Duration::from_secs(120));
        let e =
            parse("datastore = \"mysql\"\n[archive]\nspool_dir = \"/srv/spool\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("archive.spool_dir"), "{e}");
        assert!(e.to_string().contains("no spool"), "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
    }

    #[test]
    fn mistakes_name_line_and_key() {
        for (body, key, line) in [
            ("[archive]\nspool = \"/x\"\n", "spool", 4),
            ("[archive]\nmax_lag = \"0s\"\n", "archive.max_lag", 4),
            ("[archive]\nspool_dir = \"spool\"\n", "archive.spool_dir", 4),
            (
                "[archive]\nspool_owner = \"root\"\n",
                "archive.spool_owner",
                4,
            ),
            (
                "[archive]\ncompression_level = 30\n",
                "archive.compression_level",
                4,
            ),
            ("[archive]\ncontainer = \"a/b\"\n", "archive.container", 4),
        ] {
            let e = parse(&format!("datastore = \"postgresql\"\n\n{body}")).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(key), "{key}: {text}");
            assert_eq!(e.position.map(|p| p.0), Some(line), "{key}: {text}");
        }
        let e = parse("datastore = \"redis\"\n[archive]\n").unwrap_err();
        assert!(e.to_string().contains("postgresql"), "{e}");
        assert!(e.to_string().contains("mysql"), "{e}");
        assert_eq!(e.key.as_deref(), Some("archive"));
        assert_eq!(e.position.map(|p| p.0), Some(2), "{e}");
    }
}

#[cfg(test)]
mod sample {
    /// The sample's commented-out `[archive]`, uncommented as it is, parses
    /// (for a PostgreSQL config) to the defaults it shows.
    #[test]
    fn the_sample_archive_section_is_valid_and_shows_the_defaults() {
        let sample = include_str!("../../etc/volsnap.toml");
        let start = sample
            .find("# [archive]\n")
            .expect("[archive] in the sample");
        let section: String = sample[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l.trim_start_matches("# ")))
            .collect();
        let text = format!("datastore = \"postgresql\"\n{section}");
        let s = super::super::parse(std::path::Path::new("sample"), &text).unwrap();
        let a = s.archive.unwrap();
        assert_eq!(a.max_lag, super::DEFAULT_MAX_LAG);
        assert_eq!(a.spool_dir, std::path::Path::new(super::DEFAULT_SPOOL_DIR));
        assert_eq!(a.container, "volsnap-wal");
    }
}
