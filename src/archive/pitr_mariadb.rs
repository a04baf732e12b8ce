//! `volsnap restore --until TIME --datadir DIR` for MariaDB: the newest
//! Swift base backup that finished before TIME, extracted into DIR and
//! prepared (`mbstream -x`, `mariadb-backup --prepare`, as the hook's
//! restore does), then the archived binary logs from the base's position
//! (mariadb-backup's binlog info file) replayed up to TIME
//! ([`super::binlog_replay`]). DIR is then a data directory to start
//! MariaDB on, owned by `archive.spool_owner` (mysql).
//!
//! Before anything is downloaded, the archive is checked from the file the
//! base recorded as being written when it started (`binlog_start_file`):
//! a missing file is a gap, named, and an archive whose last file was
//! closed before TIME does not reach it yet (unless the service marked
//! the server quiet since: [`quiet_until`]). The same check runs again
//! from the base's exact position once the base is extracted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::binlog::{self, Name};
use super::pitr::{chown_tree, clean, fresh_dir, newest_base, stream_into, write_file};
use super::store::{Store, WRITTEN_KEY};
use crate::agent::swift as swift_agent;
use crate::config::Settings;
use crate::time::Timestamp;

/// The metadata key the hook's `binlog_start_file=` line becomes.
pub const BINLOG_START: &str = "binlog_start_file";

/// A file closed this long after TIME surely holds every commit before it
/// (the commit of a statement started before TIME may be written a little
/// after it).
const MARGIN: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
pub struct Report {
    pub until: String,
    pub base: String,
    pub base_finished: String,
    pub datadir: String,
    pub start_file: String,
    pub start_position: u64,
    pub last_file: String,
    pub binlogs_fetched: usize,
    pub stop_datetime: String,
    pub replay_seconds: f64,
    pub owner: String,
}

/// `DIR.volsnap-binlog`, beside the data directory: the fetched files,
/// removed once replayed.
pub fn binlog_dir_for(datadir: &Path) -> PathBuf {
    let mut name = datadir.file_name().unwrap_or_default().to_os_string();
    name.push(".volsnap-binlog");
    datadir.with_file_name(name)
}

/// This base's archived files: number → name.
fn archived(store: &Store, base: &str) -> Result<BTreeMap<u64, String>> {
    Ok(store
        .list()?
        .iter()
        .filter_map(|e| e.name.strip_prefix(&store.prefix))
        .filter_map(Name::parse)
        .filter(|n| n.base == base)
        .map(|n| (n.number, n.to_string()))
        .collect())
}

/// The files to replay, from `start` to the first closed after `until`:
/// a missing one is a gap (later ones are archived) or the end of the
/// archive (none are).
pub fn plan(store: &Store, start: &Name, until: Timestamp) -> Result<Vec<String>> {
    let listed = archived(store, &start.base)?;
    let enough = until.checked_add(MARGIN).unwrap_or(until);
    let mut out = Vec::new();
    let mut last: Option<(String, Timestamp)> = None;
    let mut number = start.number;
    loop {
        let Some(name) = listed.get(&number) else {
            let missing = start.with_number(number);
            if let Some((_, next)) = listed.range(number + 1..).next() {
                bail!(
                    "gap in the archived binary logs between the base and {until}: {missing} is \
                     missing from {}/{} (the archive goes on at {next}); the replay cannot cross it",
                    store.container,
                    store.prefix
                );
            }
            if !out.is_empty() && quiet_until(store, &missing).is_some_and(|at| at > enough) {
                // The server wrote nothing into this file up to past TIME.
                return Ok(out);
            }
            let reached = last.map_or(
                "nothing is archived from the base's file on".into(),
                |(n, w)| format!("the last, {n}, was closed at {w}"),
            );
            bail!(
                "the archived binary logs do not reach {until} yet: {missing} is not archived \
                 ({reached}); wait for the archive service (archive.max_lag) or choose an earlier time"
            );
        };
        let info = store
            .swift
            .head_object(&store.container, &store.object(name))
            .map_err(|e| anyhow!(e))
            .with_context(|| format!("HEAD {}", store.object(name)))?;
        let written = info
            .metadata
            .get(WRITTEN_KEY)
            .and_then(|t| t.parse::<Timestamp>().ok());
        out.push(name.clone());
        if let Some(w) = written {
            if w > enough {
                return Ok(out);
            }
            last = Some((name.clone(), w));
        }
        number += 1;
    }
}

/// When the archive service last saw `file` being written with no
/// transaction in it, every file before it shipped (its `reached` mark).
pub fn quiet_until(store: &Store, file: &Name) -> Option<Timestamp> {
    use super::binlog_ship::{REACHED, REACHED_AT, REACHED_FILE};
    let info = store
        .swift
        .head_object(&store.container, &store.object(REACHED))
        .ok()?;
    if info.metadata.get(REACHED_FILE) != Some(&file.to_string()) {
        return None;
    }
    info.metadata.get(REACHED_AT)?.parse().ok()
}

pub fn run(
    settings: &Settings,
    until: Timestamp,
    datadir: &Path,
    identity: Option<&Path>,
    quiet: bool,
) -> Result<Report> {
    let archive = settings.archive.as_ref().ok_or_else(|| {
        anyhow!(
            "restore --until needs archived binary logs: no [archive] section in {}",
            settings.path.display()
        )
    })?;
    if !datadir.is_absolute() {
        bail!("--datadir {}: give an absolute path", datadir.display());
    }
    let owner = archive.spool_owner.clone();
    let swift = swift_agent::connect(settings)?;
    let container = &settings.swift.container;
    let (base_name, meta, finished) = newest_base(settings, &swift, until)?;
    log::info!("base backup {base_name} (finished {finished})");
    let store = Store::open(settings)?;
    if let Some(start) = meta.hook.get(BINLOG_START).and_then(|s| Name::parse(s)) {
        plan(&store, &start, until)?;
    }
    let ids = swift_agent::identities(settings, &meta, identity)?;

    let binlog_dir = binlog_dir_for(datadir);
    let created_data = fresh_dir(datadir)?;
    let created_binlog = match fresh_dir(&binlog_dir) {
        Ok(c) => c,
        Err(e) => {
            clean(datadir, created_data);
            return Err(e);
        }
    };
    let result = (|| -> Result<Report> {
        let mut mbstream = Command::new("mbstream");
        mbstream.arg("-x").arg("-C").arg(datadir);
        stream_into(
            &swift,
            container,
            &base_name,
            &meta,
            ids.as_ref(),
            quiet,
            mbstream,
            datadir,
        )?;
        prepare(datadir)?;
        let position = binlog::read_position(datadir)?;
        log::info!(
            "{base_name}: binary log position {} {}",
            position.file,
            position.pos
        );
        let files = plan(&store, &position.file, until)?;
        for name in &files {
            let (plain, _) = store.fetch(name, ids.as_ref())?;
            write_file(&binlog_dir, name, &plain)?;
        }
        chown_tree(datadir, &owner)?;
        // The InnoDB options the base was taken with (page size, log size…).
        let options = datadir.join("backup-my.cnf");
        let replayed = super::binlog_replay::replay(
            datadir,
            &position,
            &binlog_dir,
            until,
            &owner,
            options.is_file().then_some(options.as_path()),
        )?;
        Ok(Report {
            until: until.to_string(),
            base: base_name.clone(),
            base_finished: finished.to_string(),
            datadir: datadir.display().to_string(),
            start_file: position.file.to_string(),
            start_position: position.pos,
            last_file: files.last().cloned().unwrap_or_default(),
            binlogs_fetched: files.len(),
            stop_datetime: replayed.stop_datetime,
            replay_seconds: replayed.seconds,
            owner: owner.clone(),
        })
    })();
    match &result {
        Ok(_) => clean(&binlog_dir, true),
        Err(_) => {
            clean(datadir, created_data);
            clean(&binlog_dir, created_binlog);
        }
    }
    result
}

/// `mariadb-backup --prepare`, its output kept for the error.
fn prepare(datadir: &Path) -> Result<()> {
    let out = Command::new("mariadb-backup")
        .arg("--prepare")
        .arg(format!("--target-dir={}", datadir.display()))
        .output()
        .context("running mariadb-backup --prepare (is mariadb-backup installed?)")?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        bail!(
            "mariadb-backup --prepare of {} failed ({}): {}",
            datadir.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}
