//! Archived WAL older than the oldest kept base backup is of no use to a
//! restore (`restore --until` starts from a base): it goes when retention
//! runs. The base records where its WAL starts (`wal_start_segment`, from
//! the postgresql hook, taken before pg_basebackup's checkpoint, so at or
//! before the base's own start); a base without it (taken by an older
//! volsnap) keeps everything. MariaDB's binary logs: [`super::binlog_window::prune`].

use anyhow::{anyhow, Context, Result};

use super::store::Store;
use super::wal::{self, Kind};
use crate::config::Settings;
use crate::openstack::Swift;

/// The metadata key the hook's `wal_start_segment=` line becomes.
pub const WAL_START: &str = "wal_start_segment";

/// Whether an archived file lies wholly before segment `start` (any
/// timeline: a later timeline's segment numbers continue the same WAL
/// positions). History files are always kept.
pub fn before(name: &str, start: &str) -> bool {
    match wal::kind(name) {
        Some(Kind::Segment | Kind::Partial | Kind::BackupLabel) => name[8..24] < start[8..24],
        Some(Kind::History) | None => false,
    }
}

/// Deletes (or with `dry_run` lists) the archived files before the start of
/// `oldest_kept`, this host's oldest base that retention keeps; returns
/// their object names.
pub fn prune(
    settings: &Settings,
    swift: &Swift,
    oldest_kept: &str,
    dry_run: bool,
) -> Result<Vec<String>> {
    if settings.datastore == crate::config::Datastore::Mysql {
        return super::binlog_window::prune(settings, swift, oldest_kept, dry_run);
    }
    let meta =
        crate::agent::swift::catalog::read_meta(swift, &settings.swift.container, oldest_kept)?;
    let Some(start) = meta.hook.get(WAL_START).filter(|s| !s.is_empty()) else {
        log::info!(
            "archive retention: {oldest_kept} does not record where its WAL starts; \
             archived WAL kept"
        );
        return Ok(Vec::new());
    };
    if wal::kind(start) != Some(Kind::Segment) {
        return Err(anyhow!(
            "{oldest_kept}: {WAL_START} {start:?} is not a segment name"
        ));
    }
    let store = Store::open(settings)?;
    let mut deleted = Vec::new();
    for entry in store.list()? {
        let Some(name) = entry.name.strip_prefix(&store.prefix) else {
            continue;
        };
        if !before(name, start) {
            continue;
        }
        if !dry_run {
            store
                .swift
                .delete_object(&store.container, &entry.name)
                .map_err(|e| anyhow!(e))
                .with_context(|| format!("deleting {}/{}", store.container, entry.name))?;
        }
        deleted.push(entry.name.clone());
    }
    if !deleted.is_empty() {
        log::info!(
            "archive retention: {} {} archived WAL file(s) before {start}, the start of {oldest_kept}",
            if dry_run { "would delete" } else { "deleted" },
            deleted.len()
        );
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_lies_before_the_start_goes() {
        let start = "000000010000000A00000010";
        assert!(before("00000001000000090000FFFF", start));
        assert!(before("000000010000000A0000000F", start));
        assert!(before("00000002000000090000FFFF.partial", start));
        assert!(before("00000001000000090000FFFF.00000028.backup", start));
        assert!(!before("000000010000000A00000010", start));
        assert!(!before("000000020000000A00000011", start));
        assert!(!before("00000002.history", start));
        assert!(!before("junk", start));
    }
}
