//! `volsnap list` for MariaDB's archive: the window a `restore --until` can
//! reach — from the end of this host's oldest base backup to when the last
//! binary log of the unbroken run after it was closed — and the first gap.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};

use super::binlog::Name;
use super::pitr_mariadb::BINLOG_START;
use super::reach::Window;
use super::store::{Store, WRITTEN_KEY};
use crate::config::Settings;
use crate::openstack::Swift;
use crate::time::Timestamp;

pub fn window(
    settings: &Settings,
    swift: &Swift,
    oldest: Option<(&str, Timestamp)>,
) -> Result<Window> {
    let store = Store::open(settings)?;
    let names: Vec<Name> = store
        .list()?
        .iter()
        .filter_map(|e| e.name.strip_prefix(&store.prefix))
        .filter_map(Name::parse)
        .collect();
    let mut w = Window {
        log: "binlog",
        archived_files: names.len(),
        ..Window::default()
    };
    let Some((base, created)) = oldest else {
        w.note = Some("no base backup: nothing to restore from".into());
        return Ok(w);
    };
    let meta = crate::agent::swift::catalog::read_meta(swift, &settings.swift.container, base)?;
    let finished = super::pitr::base_finished(created, &meta);
    w.from = Some(finished.to_string());
    let Some(start) = meta.hook.get(BINLOG_START).and_then(|s| Name::parse(s)) else {
        w.note = Some(format!(
            "{base} does not record its binary log file (binlog_start_file)"
        ));
        return Ok(w);
    };
    let listed: BTreeMap<u64, &Name> = names
        .iter()
        .filter(|n| n.base == start.base && n.number >= start.number)
        .map(|n| (n.number, n))
        .collect();
    if !listed.contains_key(&start.number) {
        w.note = Some(format!(
            "{start}, the oldest base's binary log file, is not archived"
        ));
        if let Some(next) = listed.values().next() {
            w.gap = Some(start.to_string());
            w.note = Some(format!(
                "{start}, the oldest base's binary log file, is not archived (the archive goes on at {next})"
            ));
        }
        return Ok(w);
    }
    let mut last = start.clone();
    while listed.contains_key(&(last.number + 1)) {
        last = last.next();
    }
    if listed.range(last.number + 2..).next().is_some() {
        w.gap = Some(last.next().to_string());
    }
    let info = store
        .swift
        .head_object(&store.container, &store.object(&last.to_string()))
        .map_err(|e| anyhow!(e))?;
    w.to = info.metadata.get(WRITTEN_KEY).cloned();
    if w.gap.is_none() {
        // A quiet server: nothing written after the last file until then.
        if let Some(at) = super::pitr_mariadb::quiet_until(&store, &last.next()) {
            w.to = Some(at.to_string());
        }
    }
    w.first_segment = Some(start.to_string());
    w.last_segment = Some(last.to_string());
    Ok(w)
}

/// Deletes (or with `dry_run` lists) the archived files before the binary
/// log file `oldest_kept` (this host's oldest base that retention keeps)
/// started in; returns their object names. A base that does not record
/// it keeps everything.
pub fn prune(
    settings: &Settings,
    swift: &Swift,
    oldest_kept: &str,
    dry_run: bool,
) -> Result<Vec<String>> {
    let meta =
        crate::agent::swift::catalog::read_meta(swift, &settings.swift.container, oldest_kept)?;
    let Some(start) = meta.hook.get(BINLOG_START).and_then(|s| Name::parse(s)) else {
        log::info!(
            "archive retention: {oldest_kept} does not record its binary log file; \
             archived binary logs kept"
        );
        return Ok(Vec::new());
    };
    let store = Store::open(settings)?;
    let mut deleted = Vec::new();
    for entry in store.list()? {
        let Some(name) = entry.name.strip_prefix(&store.prefix).and_then(Name::parse) else {
            continue;
        };
        if name.base != start.base || name.number >= start.number {
            continue;
        }
        if !dry_run {
            store
                .swift
                .delete_object(&store.container, &entry.name)
                .map_err(|e| anyhow!(e))
                .map_err(|e| e.context(format!("deleting {}/{}", store.container, entry.name)))?;
        }
        deleted.push(entry.name.clone());
    }
    if !deleted.is_empty() {
        log::info!(
            "archive retention: {} {} archived binary log(s) before {start}, the file {oldest_kept} started in",
            if dry_run { "would delete" } else { "deleted" },
            deleted.len()
        );
    }
    Ok(deleted)
}
